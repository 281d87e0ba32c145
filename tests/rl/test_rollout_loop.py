import json
import math
import os
import subprocess
import sys

import pytest
import torch

from megatron_s1.rl.rollout import OpenAIEngine, filter_logits, pad_batch, token_logprobs
from tests.rl.conftest import run_check

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    return dict(env, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def test_pad_batch_layout():
    tokens, pos, mask, resp, start = pad_batch([[1, 2], [3]], [[7, 8, 9], [6]], pad_id=0)
    assert start == 2
    assert tokens.tolist() == [[1, 2, 7, 8, 9], [0, 3, 6, 0, 0]]
    assert pos.tolist()[1][1:3] == [0, 1]
    # logits at position t predict token t+1: response tokens of row 0 are predicted at positions 1..3
    assert resp.tolist() == [[0, 1, 1, 1, 0], [0, 1, 0, 0, 0]]
    assert mask[1, 0, 2].tolist() == [True, False, False, True, True]  # row 1, query 2: sees 3 and itself


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # top-p 0.7: 0.5 alone < 0.7, 0.5 + 0.3 reaches it -> keep two
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, True, True]]


def test_token_logprobs_with_allowed_set():
    logits = torch.zeros(1, 2, 4)
    tokens = torch.tensor([[0, 2]])
    lp = token_logprobs(logits, tokens)
    assert lp[0, 0].item() == pytest.approx(math.log(0.25)) and lp[0, 1].item() == 0.0
    allowed = torch.tensor([False, False, True, True])
    assert token_logprobs(logits, tokens, allowed=allowed)[0, 0].item() == pytest.approx(math.log(0.5))


def test_openai_engine_client(fake_server):
    eng = OpenAIEngine(fake_server, eos_id=None)
    roll = eng.generate([[5, 6], [7]], n=2, max_new_tokens=3)
    assert roll.prompt_ids == [[5, 6], [5, 6], [7], [7]]
    v0 = roll.response_ids[0][0] - 6
    assert roll.response_ids[2] == [(7 + v0) % 100] * 3 and roll.rollout_logprobs[0] == [-0.5] * 3
    eng.update_weights("/ckpt/iter_1")
    assert eng.generate([[7]], n=1, max_new_tokens=1).response_ids[0] == [(7 + v0 + 1) % 100]


def test_openai_engine_routing(fake_server):
    eng = OpenAIEngine(fake_server, return_routing=True)
    roll = eng.generate([[5, 6], [7]], n=1, max_new_tokens=2)
    r0 = roll.response_ids[0][0]
    assert len(roll.routing) == 2 and list(roll.routing[0].shape) == [4, 2, 2]  # layers x [L, N, k]
    # row 0: tokens 5, 6, r0, (last token not forwarded -> default 0, 1)
    assert roll.routing[1][:, 0].tolist() == [[1, 3], [2, 0], [r0 % 4, (r0 + 2) % 4], [0, 1]]
    # row 1 is left-padded by one position (default ids), then 7, its first response token, default
    assert roll.routing[0][:, 1].tolist()[1] == [3, 0]


def test_routing_replay_generation_and_external_engine(tmp_path, fake_server):
    out = run_check("_replay_check.py", tmp_path, fake_server)
    assert out["n"] == 6 and out["lens_ok"] and out["digits_only"]
    assert out["routing_shape"][0][1:] == [6, 2] and len(out["routing_shape"]) == 2
    assert out["fp32_head_diff"] < 1e-4  # fp32 model: the fp32 head computes the same logits
    assert out["replay_same"] == 0.0 and out["replay_flipped"] > 1e-3 and out["replay_subset"] < 1e-5
    assert out["offline"][:3] == [4, out["offline"][1], 4] and out["offline"][3] == out["offline"][1]
    assert out["offline"][4]
    assert out["local_step_keys"] == ["kl_train_rollout", "kl_train_rollout_replay"]
    assert out["ext_replay_kl"]  # engine-reported expert ids replayed in the training forward
    assert out["ext_steps"] == 2 and out["ext_version"] >= 2  # one weight update per step


def test_rl_cli_reward_rises(tmp_path):
    """Tiny MoE, copy task, IcePop + leave-one-out: mean reward rises within 30 fast CPU steps."""
    cmd = [sys.executable, "-m", "megatron_s1.cli", "rl", "--config", os.path.join(REPO, "examples/rl/tiny_cpu.yaml"),
           f"run.dir={tmp_path}", "rl.task=toy_copy", "rl.prompts_per_step=8", "train.steps=30",
           "train.log_interval=10"]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])["result"]
    assert result["steps"] == 30
    assert result["reward_last"] > result["reward_first"] + 0.15, result
    records = [json.loads(line) for line in open(tmp_path / "rl_metrics.jsonl")]
    assert len(records) == 30 and all("kl_train_rollout_replay" in r for r in records)
    # IcePop statistics and the entropy of the sampled tokens every step (one digit: at most ln 10)
    assert all(0 <= r["icepop_masked_frac"] <= 1 and 0 < r["entropy"] <= math.log(10) + 1e-6 for r in records)
    kept = [r for r in records if "icepop_rho_mean" in r]
    assert kept and all(0.5 < r["icepop_rho_min"] <= r["icepop_rho_mean"] <= r["icepop_rho_max"] < 5 for r in kept)
    assert os.path.exists(tmp_path / "checkpoints" / "latest")


def test_paper_recipes_load():
    from megatron_s1.config import load_config

    cfg = load_config(os.path.join(REPO, "examples/rl/intern_s1.yaml"))
    r = cfg.rl
    assert r.prompts_per_step * r.samples_per_prompt == 4096 and r.mini_batches == 8 and r.samples_per_prompt == 8
    assert cfg.optimizer.lr == 5e-7 and cfg.train.steps == 600 and cfg.train.skip_grad_norm_above == 0.3
    assert r.freeze_router and r.freeze_vision and r.fp32_lm_head and r.algorithm == "oreal"
    assert r.kl_cov_coef == 0.01 and r.kl_cov_fraction == 0.002
    pro = load_config(os.path.join(REPO, "examples/rl/intern_s1_pro.yaml"))
    assert pro.rl.algorithm == "icepop" and pro.rl.baseline == "loo"
    from megatron_s1.rl.trainer import check_objective

    kl_cov = load_config(os.path.join(REPO, "examples/rl/tiny_cpu_kl_cov.yaml")).rl
    check_objective(kl_cov)  # KL-Cov needs mini-batches > 1
    assert kl_cov.kl_cov_coef > 0 and kl_cov.mini_batches == 4
