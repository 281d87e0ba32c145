"""Expert expansion (Pro Fig. 2): placement plan, exactness on covered pairs, CLI round trip + training."""
import json
import os

import torch

from megatron_s1.models.pro.expand import expand_state_dict, expansion_plan, pair_coverage
from megatron_s1.models.pro.routing import grouped_topk_routing
from tests.conftest import losses, run_cli


def test_plan_hand_computed():
    counts = torch.zeros(4, 4, dtype=torch.long)
    counts[0, 1], counts[3, 2], counts[0, 2] = 10, 7, 1
    plan = expansion_plan(counts, num_groups=4, experts_per_group=2)
    # Pairs (0,1) and (2,3); each expert copied twice on consecutive groups, partners on the other half.
    assert plan == [0, 2, 0, 2, 1, 3, 1, 3]
    assert abs(pair_coverage(counts, plan, 4) - 17 / 18) < 1e-9  # (0,2) misses groups 2 and 3


def test_covered_tokens_keep_their_top2_mixture():
    counts = torch.zeros(4, 4, dtype=torch.long)
    counts[0, 1] = counts[2, 3] = 1
    plan = expansion_plan(counts, 4, 2)
    logits = torch.tensor([[3.0, 2.0, -1.0, 0.5], [0.0, -2.0, 1.5, 1.0]])  # top-2 pairs (0,1) and (2,3)
    w, idx = grouped_topk_routing(logits, topk=2)
    w_new, idx_new = grouped_topk_routing(logits[:, plan], topk=4, num_groups=4)
    src = torch.tensor(plan)[idx_new]
    for t in range(2):
        merged = torch.zeros(4).index_add_(0, src[t], w_new[t])
        torch.testing.assert_close(merged, torch.zeros(4).index_put_((idx[t],), w[t]))


def test_expand_state_dict_copies_rows_and_experts():
    state = {"decoder.layers.0.mlp.router.weight": torch.arange(4.0)[:, None].expand(4, 3),
             "decoder.layers.0.mlp.experts.local_experts.1.linear_fc1.weight": torch.ones(2),
             "decoder.layers.0.mlp.experts.local_experts.0.linear_fc1.weight": torch.zeros(2),
             "decoder.layers.0.mlp.experts.local_experts.0.linear_fc1._extra_state": None,
             "embedding.word_embeddings.weight": torch.ones(1)}
    out = expand_state_dict(state, {"decoder.layers.0.mlp.": [1, 0, 1]})
    assert out["decoder.layers.0.mlp.router.weight"][:, 0].tolist() == [1.0, 0.0, 1.0]
    assert out["decoder.layers.0.mlp.experts.local_experts.2.linear_fc1.weight"].tolist() == [1.0, 1.0]
    assert out["decoder.layers.0.mlp.experts.local_experts.1.linear_fc1._extra_state"] is None
    assert "embedding.word_embeddings.weight" in out


def test_expand_experts_cli_and_train(tmp_path, train_args, init_checkpoint, data_prefix):
    out = str(tmp_path / "expanded")
    proc = run_cli(["ckpt", "expand-experts", "--input", init_checkpoint, "--output", out, "--groups", "4",
                    "--experts-per-group", "2", "--data", data_prefix, "--batches", "2"])
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert report["experts"] == [4, 8] and report["topk"] == [2, 4]
    assert report["logits_rel_diff"] < 0.5 and report["argmax_agreement"] > 0.5
    assert all(0 < c <= 1 for c in report["pair_coverage"].values())
    assert os.path.exists(os.path.join(out, "trainer_state.json"))
    run_dir = str(tmp_path / "run")
    run_cli(train_args(run_dir, "train.steps=1", f"checkpoint.pretrained={out}", "model.num_moe_experts=8",
                       "model.moe_router_topk=4", "model.moe_router_groups=4"))
    assert sorted(losses(run_dir)) == [1]
