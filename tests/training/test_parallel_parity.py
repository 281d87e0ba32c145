"""TP=2, EP=2, PP=2 and DP=2 runs reproduce a single-process run from the same initial weights (fp32, gloo)."""
import pytest

from tests.conftest import losses, run_cli

STEPS = 3


@pytest.fixture(scope="module")
def reference(tmp_path_factory, train_args, init_checkpoint):
    run_dir = str(tmp_path_factory.mktemp("ref"))
    run_cli(train_args(run_dir, f"train.steps={STEPS}", f"checkpoint.pretrained={init_checkpoint}"))
    return losses(run_dir)


@pytest.mark.parametrize("layout", [
    ["parallel.tensor=2"],  # with MoE this turns sequence parallel on
    ["parallel.expert=2"],  # alltoall dispatcher
    ["parallel.expert=2", "model.moe_token_dispatcher_type=allgather"],
    # grouped GEMM experts from the SequentialMLP init checkpoint, experts split over 2 ranks
    ["parallel.expert=2", "model.moe_experts=grouped_mm"],
    ["parallel.pipeline=2"],
    [],  # plain data parallel: DP=2
], ids=["tp2-sp", "ep2-alltoall", "ep2-allgather", "ep2-grouped-mm", "pp2", "dp2"])
def test_layout_matches_single_process(layout, reference, tmp_path, train_args, init_checkpoint):
    run_cli(train_args(str(tmp_path), f"train.steps={STEPS}", f"checkpoint.pretrained={init_checkpoint}", *layout),
            nproc=2)
    got = losses(str(tmp_path))
    assert sorted(got) == list(range(1, STEPS + 1))
    for step, loss in reference.items():
        assert abs(got[step] - loss) <= 1e-5, (step, got[step], loss)


def test_virtual_pipeline_trains(tmp_path, train_args):
    """Interleaved schedule (PP=2 x 2 virtual stages) runs and learns."""
    run_cli(train_args(str(tmp_path), "train.steps=3", "model.num_layers=4", "parallel.pipeline=2",
                       "parallel.virtual_pipeline=2", "train.global_batch_tokens=[[0, 2048]]"), nproc=2)
    got = losses(str(tmp_path))
    assert len(got) == 3 and got[3] < got[1]
