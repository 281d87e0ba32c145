"""Mixture of rewards in the RL loop: one prompt file mixing two tasks, per-task weights and normalisation."""
import json
import os

import pytest

from tests.conftest import REPO, run_cli

RECIPE = os.path.join(REPO, "examples/rl/tiny_cpu.yaml")


def _prompts(path):
    with open(path, "w") as f:
        for d in range(10):
            prompt = "copy " + "the digit " * (d % 3) + f"{d}="  # three prompt lengths
            f.write(json.dumps({"prompt": prompt, "reference": str(d), "task": "toy_copy"}) + "\n")
        for a, b in [(1, 2), (3, 4), (2, 2), (5, 1), (0, 7)]:
            f.write(json.dumps({"prompt": f"{a}+{b}=", "reference": str(a + b), "task": "toy_add"}) + "\n")
    return path


def test_mixed_task_run_logs_per_task_rewards(tmp_path):
    src = _prompts(tmp_path / "mixed.jsonl")
    run_cli(["rl", "--config", RECIPE, f"run.dir={tmp_path}/run", f"rl.task=jsonl:{src}", "train.steps=3",
             "rl.prompts_per_step=8", "rl.samples_per_prompt=4", "checkpoint.save_final=false",
             "rl.reward_weights={toy_add: 2.0}", "rl.reward_normalisation={toy_copy: running}"])
    records = [json.loads(line) for line in open(tmp_path / "run" / "rl_metrics.jsonl")]
    assert len(records) == 3
    saw_both = False
    for rec in records:
        tasks = sorted(k.split("/", 1)[1] for k in rec if k.startswith("samples/"))
        assert set(tasks) <= {"toy_add", "toy_copy"}
        saw_both |= tasks == ["toy_add", "toy_copy"]
        n = {t: rec[f"samples/{t}"] for t in tasks}
        assert sum(n.values()) == 32 and all(v % 4 == 0 for v in n.values())  # whole groups of G = 4
        # reward_mean is the sample-weighted mean of the per-task raw means
        assert rec["reward_mean"] == pytest.approx(sum(n[t] * rec[f"reward_mean/{t}"] for t in tasks) / 32)
        if "toy_add" in n:  # weight 2, no normalisation
            assert rec["reward_combined/toy_add"] == pytest.approx(2 * rec["reward_mean/toy_add"])
    assert saw_both
    # Prompts of two lengths: the update's log-probs line up with pi_old (the kept rows are taken from the full
    # batch's padded layout; re-padding a subset without the longest prompt would shift them).
    assert all(rec.get("first_update_logp_maxdiff", 0.0) < 1e-5 for rec in records)
    # Step 1: toy_copy's running normaliser has seen only this batch, so its z-scores average to zero.
    first = records[0]
    if "samples/toy_copy" in first and 0 < first["reward_mean/toy_copy"] < 1:
        assert first["reward_combined/toy_copy"] == pytest.approx(0.0, abs=1e-5)
    else:  # all-equal rewards normalise to zero as well
        assert first.get("reward_combined/toy_copy", 0.0) == pytest.approx(0.0, abs=1e-5)
    # guided decoding (digits) holds for a file of toy tasks only, so rewards are non-zero
    assert any(r["reward_mean"] > 0 for r in records)


def test_prompt_file_with_unknown_task_is_one_clear_error(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps({"prompt": "copy 1=", "reference": "1", "task": "toy_copy"}) + "\n"
                   + json.dumps({"prompt": "2+2=", "reference": "4", "task": "toy_ad"}) + "\n")
    proc = run_cli(["rl", "--config", RECIPE, f"run.dir={tmp_path}/run", f"rl.task=jsonl:{src}"], check=False)
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]  # (torch may warn first)
    assert len(err) == 1 and "bad.jsonl:2: task 'toy_ad' has no registered reward" in err[0], proc.stderr[-2000:]
    proc = run_cli(["rl", "--config", RECIPE, f"run.dir={tmp_path}/run", "rl.reward_normalisation=zscore"],
                   check=False)
    assert proc.returncode == 2 and "rl.reward_normalisation for '*' must be none or running" in proc.stderr
