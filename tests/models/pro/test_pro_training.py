"""Tiny CPU training with the grouped router + STE + FoPE, EP=2 on 2 gloo processes (single-process training:
test_expand.py trains the expanded grouped model)."""
import glob
import json
import os

from tests.conftest import losses, run_cli

PRO = ["model.moe_router_groups=2", "model.moe_router_ste=true", "model.position_embedding_type=fope",
       "train.global_batch_tokens=[[0, 1024]]"]


def test_pro_options_ep2_exact_balance(tmp_path, train_args, monkeypatch):
    stats = tmp_path / "stats"
    monkeypatch.setenv("MEGATRON_S1_ROUTING_STATS", str(stats))
    run_cli(train_args(str(tmp_path / "run"), "train.steps=3", "parallel.expert=2", *PRO), nproc=2)
    got = losses(str(tmp_path / "run"))
    assert sorted(got) == [1, 2, 3] and got[3] < got[1]
    files = sorted(glob.glob(os.path.join(stats, "rank_*.json")))
    assert len(files) == 2
    per_rank = [json.load(open(f, encoding="utf-8")) for f in files]
    for layer in ("1", "2"):
        # Tokens each EP rank receives = sum over source ranks of the assignments to its 2 experts.
        received = [sum(sum(src[layer][r * 2:(r + 1) * 2]) for src in per_rank) for r in range(2)]
        assert received[0] == received[1] > 0, received
        for src in per_rank:  # and every source rank already sends exactly half to each EP rank
            assert sum(src[layer][:2]) == sum(src[layer][2:])
