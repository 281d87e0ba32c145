"""Tensor parallelism in the RL loop: TP=2 runs (torchrun, gloo) reproduce TP=1 runs from the same weights."""
import json

import pytest

from tests.rl.conftest import run_rl


def _pair(tmp_path, init_ckpt, common, tp2_extra=()):
    return (run_rl(tmp_path / "tp1", init_ckpt, *common),
            run_rl(tmp_path / "tp2", init_ckpt, *common, "parallel.tensor=2", *tp2_extra, nproc=2))


def test_tp2_training_matches_tp1(tmp_path, init_ckpt):
    """Copy task, 2 mini-batches, MoE (TP=2 turns sequence parallel on), routing replay; the TP=2 run also uses
    the fp32 LM head (same logits as the default head on this fp32 model)."""
    tp1, tp2 = _pair(tmp_path, init_ckpt, ["rl.task=toy_copy", "rl.prompts_per_step=4", "rl.samples_per_prompt=4",
                                           "rl.mini_batches=2", "train.steps=3"], ["rl.fp32_lm_head=true"])
    assert len(tp1) == len(tp2) == 3
    assert any(r["loss"] != 0.0 for r in tp1)  # the comparison covers real updates
    for a, b in zip(tp1, tp2):
        # same prompts and sampled tokens (seeded per data-parallel rank; the driver checks the TP ranks agree)
        assert a["rollout_crc"] == b["rollout_crc"] and a["reward_mean"] == b["reward_mean"]
        for key in ("loss", "grad_norm", "kl_train_rollout"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)


def test_tp2_generation_matches_tp1(tmp_path, init_ckpt):
    """Free-form prompts of different lengths, full vocabulary, 6 new tokens through the KV cache."""
    src = tmp_path / "free.jsonl"
    src.write_text("".join(json.dumps({"prompt": t, "reference": "42", "task": "math"}) + "\n" for t in
                           ["Once upon a time", "The capital of France is", "2+2=", "Q: What is 7 times 6? A:"]))
    tp1, tp2 = _pair(tmp_path, init_ckpt, [f"rl.task=jsonl:{src}", "rl.prompts_per_step=4", "rl.samples_per_prompt=2",
                                           "rl.max_new_tokens=6", "rl.online_filter=false", "train.steps=2"])
    for a, b in zip(tp1, tp2):
        assert a["rollout_crc"] == b["rollout_crc"] and a["response_len"] == b["response_len"] == 6.0
        # log-probs of the vocab-parallel training forward = the sampler's (gathered logits), fp32
        assert b["logp_train_rollout_maxdiff"] < 1e-5 and b["routing_mismatch"] == 0.0
        assert b["kl_train_rollout"] == pytest.approx(a["kl_train_rollout"], abs=1e-9)
