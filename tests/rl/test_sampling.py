"""Per-task sampling settings (rl.sampling): per-row truncation, resolution and errors, and a mixed-task batch
decoded in one pass with each row's own temperature / top-k / top-p / length limit."""
import math
import re

import pytest
import torch

from megatron_s1.config import load_config
from megatron_s1.rl.rewards import known_tasks
from megatron_s1.rl.rollout import RowSampling, Sampling, filter_logits, sampling_by_task, token_logprobs
from tests.conftest import run_cli
from tests.rl.conftest import RL_RECIPE, run_check


def test_filter_logits_per_row_settings():
    # probabilities of row 0: 0.5, 0.3, 0.15, 0.05 (as logits: their logs)
    row = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    logits = torch.stack([row, row, row])
    out = filter_logits(logits, top_k=torch.tensor([2, 0, 0]), top_p=torch.tensor([1.0, 0.7, 1.0]))
    assert torch.isinf(out).tolist() == [[False, False, True, True],  # top-2
                                         [False, False, True, True],  # 0.5 + 0.3 reaches 0.7
                                         [False, False, False, False]]  # off
    # per-row values = the same scalar setting applied to that row alone
    for i, (k, p) in enumerate([(2, 1.0), (0, 0.7), (0, 1.0)]):
        assert torch.equal(out[i], filter_logits(logits[i:i + 1], top_k=k, top_p=p)[0])


def test_row_sampling_and_temperatures():
    settings = [Sampling(temperature=0.5, max_new_tokens=2), Sampling(temperature=1.0, top_k=3)]
    rows = RowSampling.from_prompts(settings, 2)
    assert rows.temperature == [0.5, 0.5, 1.0, 1.0] and rows.top_k == [0, 0, 3, 3]
    assert rows.max_new_tokens == [2, 2, 16, 16]
    assert rows.subset([2, 3]).temperature_of_rows() == 1.0  # one shared value stays a float
    temps = rows.temperature_of_rows()
    assert temps.shape == (4, 1, 1)
    # token_logprobs at per-row temperatures: row i equals the row alone at its temperature (hand check: logits
    # [0, ln 3] at T=0.5 -> p(token 1) = 9 / 10)
    logits = torch.tensor([0.0, math.log(3.0)]).expand(4, 2, 2).clone()
    tokens = torch.ones(4, 2, dtype=torch.long)
    lp = token_logprobs(logits, tokens, temps)
    assert lp[0, 0].item() == pytest.approx(math.log(0.9), abs=1e-6)
    assert lp[2, 0].item() == pytest.approx(math.log(0.75), abs=1e-6)


def test_sampling_by_task_resolution_and_errors():
    cfg = load_config(RL_RECIPE, ['rl.sampling={"math": {"temperature": 0.6, "max_new_tokens": 8}}'])
    table = sampling_by_task(cfg.rl, known_tasks())
    assert table["math"] == Sampling(temperature=0.6, top_p=cfg.rl.top_p, top_k=cfg.rl.top_k, max_new_tokens=8)
    assert table[None] == Sampling(cfg.rl.temperature, cfg.rl.top_p, cfg.rl.top_k, cfg.rl.max_new_tokens)
    for bad, message in (({"nosuchtask": {"top_k": 1}}, "has no reward; known:"),
                         ({"math": {"temprature": 0.5}}, "unknown setting(s) ['temprature']; allowed:"),
                         ({"math": {"top_p": 0.0}}, "rl.sampling.math: top_p must be in (0, 1]"),
                         ({"math": {"max_new_tokens": 0}}, "max_new_tokens must be an integer >= 1")):
        cfg.rl.sampling = bad
        with pytest.raises(ValueError, match=re.escape(message)):
            sampling_by_task(cfg.rl, known_tasks())


def test_bad_sampling_setting_is_one_error_line(tmp_path):
    proc = run_cli(["rl", "--config", RL_RECIPE, f"run.dir={tmp_path}", 'rl.sampling={"toy_add": {"top_k": -1}}'],
                   check=False)
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(err) == 1 and "rl.sampling.toy_add: top_k must be" in err[0], proc.stderr[-2000:]


def test_mixed_task_batch_uses_each_tasks_settings(tmp_path):
    """One engine batch with a greedy 5-token prompt and a sampled 2-token prompt (KV cache and re-forward): the
    greedy rows equal the prompt decoded alone, every row stops at its own limit. Two RL steps on a mixed prompt
    file whose toy_copy prompts sample at T=0.5 (top-k 3, 2 tokens) and math prompts at T=1 (6 tokens): the training
    log-probs, taken at each row's temperature, equal the rollout's (one temperature for all rows: 0.53 apart)."""
    res = run_check("_sampling_check.py", tmp_path)
    for kv in ("True", "False"):
        assert res[f"greedy_equal_{kv}"] and res[f"greedy_logp_diff_{kv}"] < 1e-5
        lengths = res[f"lengths_{kv}"]
        assert lengths[:2] == [5, 5] and all(n <= 2 for n in lengths[2:]), lengths
    assert res["temperatures"] == [0.5, 1.0]
    assert res["logp_maxdiff"] < 1e-5 and res["first_update_maxdiff"] < 1e-5 and res["kl_replay"] < 1e-9
