"""GPU runs of the real trainer: TE spec, FP8 recipes, distributed optimizer, alltoall dispatcher,
async checkpointing with resume. Skipped without CUDA + TransformerEngine; run them on a GPU machine with
`make test-gpu` (or `python -m pytest tests/gpu`)."""
import importlib.util
import json

import pytest
import torch

from tests.conftest import losses, read_metrics, run_cli

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None,
    reason="needs a CUDA GPU with TransformerEngine")

# FP8 GEMMs want dimensions that are multiples of 16 (128 for blockwise scaling).
GPU_MODEL = ["model.hidden_size=256", "model.num_attention_heads=4", "model.num_query_groups=2",
             "model.kv_channels=64", "model.ffn_hidden_size=512", "model.moe_ffn_hidden_size=256",
             "model.params_dtype=bf16", "data.seq_length=256", "data.micro_batch_size=4",
             "train.global_batch_tokens=[[0, 4096]]", "logging.tensorboard=false"]


def _result(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])["result"]


@pytest.mark.parametrize("fp8", [None, "delayed", "tensorwise", "blockwise"])
def test_te_spec_trains(fp8, tmp_path, train_args):
    extra = [] if fp8 is None else [f"model.fp8={fp8}"]
    run_cli(train_args(str(tmp_path), "train.steps=8", "model.spec=te", "parallel.distributed_optimizer=true",
                       *GPU_MODEL, *extra))
    records = read_metrics(str(tmp_path))
    assert len(records) == 8
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert records[-1]["loss"] < records[0]["loss"]  # it learns
    assert records[-1]["skipped_steps"] == 0
    state = json.load(open(tmp_path / "checkpoints" / "iter_0000008" / "trainer_state.json"))
    assert state["layout"]["distributed_optimizer"] is True


def test_async_checkpoint_and_resume(tmp_path, train_args):
    common = ["train.steps=6", "checkpoint.interval=2", "checkpoint.async_save=true", "model.spec=te",
              "model.moe_token_dispatcher_type=alltoall", *GPU_MODEL]
    reference = str(tmp_path / "ref")
    run_cli(train_args(reference, *common))
    resumed = str(tmp_path / "resumed")
    run_cli(train_args(resumed, *common, "train.exit_at_step=3"))
    assert (tmp_path / "resumed" / "checkpoints" / "iter_0000002").exists()
    run_cli(train_args(resumed, *common))
    expected, got = losses(reference), losses(resumed)
    assert sorted(got) == list(range(1, 7))
    for step in expected:  # bf16 GPU kernels: same data and state, tolerance for kernel non-determinism
        assert abs(got[step] - expected[step]) < 2e-2, (step, got[step], expected[step])


def test_packed_thd_trains(tmp_path, train_args):
    """VLBS-packed documents run as TE THD sequences (cu_seqlens) and learn."""
    run_cli(train_args(str(tmp_path), "train.steps=6", "model.spec=te", *GPU_MODEL, "data.packing=vlbs",
                       "data.micro_batch_size=1"))
    records = read_metrics(str(tmp_path))
    assert len(records) == 6 and records[-1]["loss"] < records[0]["loss"]
