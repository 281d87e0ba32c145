import json
import math
import os
import subprocess
import sys

import pytest

from megatron_s1.config.schema import ConfigError
from megatron_s1.training.noise_scale import NoiseScaleEMA, gradient_noise_scale
from tests.conftest import REPO, RECIPE, cli_env, read_metrics, run_cli

CHECK = os.path.join(REPO, "tests", "training", "_noise_scale_check.py")


def test_two_batch_estimator_by_hand():
    # |G|^2 = 2, tr(Sigma) = 8: E|G_4|^2 = 2 + 8/4 = 4 and E|G_16|^2 = 2 + 8/16 = 2.5.
    grad_sq, trace = gradient_noise_scale(small_sq_norm=4.0, small_batch=4, big_sq_norm=2.5, big_batch=16)
    assert grad_sq == pytest.approx(2.0) and trace == pytest.approx(8.0)
    assert trace / grad_sq == pytest.approx(4.0)  # B_simple
    # Asymmetric sizes catch swapped weights: (16*2.5 - 4*4)/12 = 2, not (4*2.5 - 16*4)/-12 = 4.5.
    grad_sq, trace = gradient_noise_scale(small_sq_norm=10.0, small_batch=1, big_sq_norm=3.0, big_batch=8)
    assert grad_sq == pytest.approx((8 * 3.0 - 10.0) / 7) and trace == pytest.approx(7.0 / (1 - 1 / 8))
    with pytest.raises(ValueError):
        gradient_noise_scale(1.0, 8, 1.0, 8)


def test_ema_is_bias_corrected_ratio_of_averages():
    ema = NoiseScaleEMA(0.5)
    ema.update(grad_sq=2.0, trace=8.0)
    assert ema.averages() == pytest.approx((2.0, 8.0))  # bias correction: not 1.0, 4.0
    ema.update(grad_sq=4.0, trace=4.0)
    # raw EMAs 2.5 and 4.0, divided by 1 - 0.5^2 = 0.75
    assert ema.averages() == pytest.approx((2.5 / 0.75, 4.0 / 0.75))
    assert ema.b_simple() == pytest.approx(1.6)  # ratio of averages, not the mean of ratios (4 + 1) / 2
    with pytest.raises(ConfigError):
        NoiseScaleEMA(1.0)


def _overrides(data_prefix, run_dir):
    return [f"run.dir={run_dir}", f"data.blend=[{data_prefix}]", "data.micro_batch_size=1",
            "train.global_batch_tokens=[[0,1024]]", "train.steps=1", "train.noise_scale=true",
            "train.noise_scale_ema=0", "train.eval_iters=0", "logging.tensorboard=false",
            "checkpoint.save_final=false", "checkpoint.resume=false", "logging.progress_bar=off"]


def test_trainer_estimate_equals_per_sample_brute_force_and_dp2(tmp_path, data_prefix):
    """Micro-batches of one sequence: the trainer's two-batch estimate must equal the textbook per-sample one
    (sample covariance of per-sequence gradients); DP=2 (gloo) on the same global batch must give the same."""
    proc = subprocess.run([sys.executable, "-W", "ignore", CHECK, "--config", RECIPE,
                           *_overrides(data_prefix, tmp_path / "dp1")],
                          cwd=REPO, env=dict(cli_env(), PYTHONPATH=REPO), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    brute, trainer = out["brute"], out["trainer"]
    assert trainer["grad_norm"] == pytest.approx(brute["grad_norm"], rel=1e-5)
    assert trainer["trace_per_token"] == pytest.approx(brute["trace_per_token"], rel=1e-4)
    assert trainer["grad_sq"] == pytest.approx(brute["grad_sq"], rel=1e-3, abs=1e-6)
    assert brute["trace_per_token"] > 0

    run_dir = tmp_path / "dp2"
    run_cli(["train", "--config", RECIPE, *_overrides(data_prefix, run_dir)], nproc=2)
    record = read_metrics(str(run_dir))[0]
    assert record["noise_trace_step"] == pytest.approx(trainer["trace_per_token"], rel=1e-4)
    assert record["noise_grad_sq_step"] == pytest.approx(trainer["grad_sq"], rel=1e-3, abs=1e-6)
    assert record["critical_batch_tokens"] == pytest.approx(record["noise_trace"] / record["noise_grad_sq"])
    assert record["critical_batch_sequences"] == pytest.approx(record["critical_batch_tokens"] / 128)


def test_noise_scale_needs_two_micro_batches(tmp_path, train_args):
    proc = run_cli(train_args(str(tmp_path), "train.noise_scale=true", "data.micro_batch_size=8",
                              "train.global_batch_tokens=[[0,1024]]"), check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "at least 2 micro-batches" in errors[0]
