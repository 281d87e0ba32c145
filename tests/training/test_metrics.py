import json
import os

import pytest

from tests.conftest import read_metrics, run_cli


def test_metrics_jsonl_and_console(tmp_path, train_args):
    proc = run_cli(train_args(str(tmp_path), "train.steps=4", "train.log_interval=2", "train.eval_interval=2",
                              "logging.tensorboard=true"))
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        for key in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "consumed_tokens", "tflops_per_gpu",
                    "peak_mem_gb", "skipped_steps", "moe_aux_loss", "expert_imbalance", "expert_imbalance_max"):
            assert key in r, key
        assert len(r["expert_imbalance"]) == 2 and all(x >= 1.0 for x in r["expert_imbalance"])
    assert records[0]["consumed_tokens"] == 2 * 1024
    valid = [json.loads(line) for line in open(tmp_path / "valid_metrics.jsonl")]
    assert [v["step"] for v in valid] == [2, 4] and all(set(v) == {"step", "loss"} for v in valid)
    assert "[train] step 2" in proc.stdout and "[valid] step 2" in proc.stdout
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))
    result = json.loads(proc.stdout.strip().splitlines()[-1])["result"]
    assert result["exit_reason"] == "completed" and result["step"] == 4


def test_cli_help_lists_commands():
    proc = run_cli(["--help"])
    for command in ("train", "eval", "preprocess", "config"):
        assert command in proc.stdout
    proc = run_cli(["train", "--help"])
    assert "dotted config overrides" in proc.stdout


def test_unknown_key_on_cli_is_one_error_line(tmp_path, train_args):
    proc = run_cli(train_args(str(tmp_path), "optimizer.learning_rate=1"), check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    assert lines[0].startswith("error: unknown config key 'optimizer.learning_rate'; valid keys: adam_beta1")


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.moment_dtype=bf16"], "optimizer.moment_dtype=bf16 needs optimizer.precision_aware=true"),
    (["optimizer.precision_aware=true"], "optimizer.precision_aware needs the distributed optimizer on a GPU"),
])
def test_optimizer_precision_options_are_one_error_line(overrides, message, tmp_path, train_args):
    proc = run_cli(train_args(str(tmp_path), *overrides), check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
