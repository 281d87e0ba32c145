import json
import math
import os

import numpy as np
import pytest

from megatron_s1.config.schema import ConfigError
from megatron_s1.training import lr_tuning as lt
from tests.conftest import run_cli

# Ground truth for synthetic sweeps: B_crit(t) = 15 sqrt(t); L = 5 (D_eff/1000)^-0.1 + 0.08 (ln lr - ln lr*)^2 with
# lr* = 3e-3 (B/1024)^0.5 (D/16384)^-0.2.
NOISE = lt.NoiseLaw(15.0, 0.5)
TRUTH = lt.LossFit(np.array([math.log(5.0), 0.1, math.log(0.08), math.log(3e-3), 0.5, -0.2]), (1024.0, 16384.0, 1000.0),
                   NOISE, 0.0)


def test_laws_by_hand():
    assert lt.mean_log_batch([(0, 1024), (4096, 4096)], 8192) == pytest.approx(2048.0)  # geometric, token-weighted
    flat = lt.NoiseLaw(1024.0, 0.0)
    assert lt.effective_tokens([(0, 1024)], 10000, flat) == pytest.approx(5000.0)  # D / (1 + B / B_noise)
    assert lt.effective_tokens([(0, 3072)], 10000, flat) == pytest.approx(2500.0)
    # At lr = e * lr*(B0, D0) the parabola adds C * 1^2 to A (D_eff / D0_eff)^-alpha = 5.
    assert float(lt.predicted_loss(TRUTH.params, 3e-3 * math.e, 1024, 1000.0, 16384, TRUTH.scale)) == pytest.approx(5.08)
    assert float(lt.predicted_loss(TRUTH.params, 3e-3, 4096, 1000.0, 16384, TRUTH.scale)) == pytest.approx(
        5.0 + 0.08 * (0.5 * math.log(4)) ** 2)


def test_batch_schedule_switches_where_the_noise_bound_crosses():
    # 15 sqrt(t): 480 at 1024 tokens (1024 suffices), 1073 at 5120, the first step boundary past 1024; with 2048
    # from there, 2092 at 19456 tokens is the first past 2048.
    assert lt.batch_schedule(NOISE, [2048, 1024, 4096], 10000, 1024) == [(0, 1024), (5120, 2048)]
    assert lt.batch_schedule(NOISE, [1024, 2048, 4096], 20000, 1024) == [(0, 1024), (5120, 2048), (19456, 4096)]
    assert lt.batch_schedule(NOISE, [1024, 2048], 20000, 6400) == [(0, 2048)]  # 1200 > 1024; 2121 > all at the end
    assert lt.batch_schedule(lt.NoiseLaw(5000.0, 0.0), [1024, 2048], 20000, 100) == [(0, 2048)]  # largest if none
    assert lt.batch_schedule(lt.NoiseLaw(1024.0, 0.0), [1024, 2048], 20000, 100) == [(0, 1024)]  # "at or above"
    # A shrinking noise scale, 2^22 / t: 4096 at 1024 tokens, 1024 at the next step boundary (4096 tokens).
    shrinking = lt.NoiseLaw(2.0 ** 22, -1.0)
    assert lt.batch_schedule(shrinking, [1024, 2048, 4096], 10000, 1024) == [(0, 4096), (4096, 1024)]
    assert lt.batch_schedule(shrinking, [1024, 2048, 4096], 4096, 1024) == [(0, 4096)]
    assert lt.batch_schedule(shrinking, [2048, 4096], 10000, 1024) == [(0, 4096), (4096, 2048)]


def write_run(root, lr, batch, tokens, final_loss, first_loss=8.0, noise=NOISE, name=None):
    run_dir = root / (name or f"lr{lr:g}_b{batch}_t{tokens}")
    run_dir.mkdir(parents=True)
    steps = tokens // batch
    with open(run_dir / "metrics.jsonl", "w") as f:
        for step in range(1, steps + 1):
            loss = first_loss + (final_loss - first_loss) * (step - 1) / max(1, steps - 1)
            f.write(json.dumps({"step": step, "consumed_tokens": step * batch, "loss": loss, "lr": lr,
                                "global_batch_tokens": batch,
                                "critical_batch_tokens": float(noise(step * batch))}) + "\n")
    with open(run_dir / "valid_metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": steps, "loss": final_loss}) + "\n")
    return run_dir


def synthetic_sweep(root, lrs=(1e-3, 3e-3, 1e-2), batches=(1024, 2048), budgets=(8192, 16384)):
    for lr in lrs:
        for batch in batches:
            for tokens in budgets:
                write_run(root, lr, batch, tokens, TRUTH.loss(lr, [(0, batch)], tokens))


def test_fit_recovers_the_law_and_the_optimum(tmp_path):
    synthetic_sweep(tmp_path)
    runs = lt.check_sweep([lt.read_run(d) for d in lt.find_runs([str(tmp_path)])])
    assert len(runs) == 12 and all(r.loss_source == "valid" for r in runs)
    fit = lt.fit_sweep(runs, lt.fit_noise_law(runs))
    assert fit.noise.b0 == pytest.approx(15.0) and fit.noise.gamma == pytest.approx(0.5)
    assert fit.residual_rms < 1e-6
    rec = lt.recommend(fit, [1024, 2048], 32768, 1024)
    assert rec.stages == [(0, 1024), (5120, 2048)]
    truth_lr = TRUTH.best_lr(rec.stages, 32768)
    # Hand: mean batch = exp((5120 ln 1024 + 27648 ln 2048) / 32768) = 1024 * 2^(27/32); lr* = 3e-3 2^(27/64) 2^-0.2.
    assert truth_lr == pytest.approx(3e-3 * 2 ** (27 / 64) * 2 ** -0.2)
    assert rec.lr == pytest.approx(truth_lr, rel=1e-4)
    assert rec.loss == pytest.approx(TRUTH.loss(truth_lr, rec.stages, 32768), rel=1e-6)
    # A worse LR is predicted worse, by the parabola.
    assert fit.loss(rec.lr * math.e, rec.stages, 32768) == pytest.approx(rec.loss + 0.08, rel=1e-4)


def test_diverged_runs_are_excluded(tmp_path):
    synthetic_sweep(tmp_path)
    write_run(tmp_path, 0.1, 1024, 8192, float("nan"))
    write_run(tmp_path, 0.05, 1024, 8192, 8.5)  # ended above where it started
    runs = [lt.read_run(d) for d in lt.find_runs([str(tmp_path)])]
    reasons = {r.name: r.diverged for r in runs if r.diverged}
    assert reasons == {"lr0.1_b1024_t8192": "non-finite loss",
                       "lr0.05_b1024_t8192": "final loss 8.5000 not below the first step's 8.0000"}
    assert len(lt.check_sweep(runs)) == 12


@pytest.mark.parametrize("sweep, message", [
    (dict(batches=(1024,)), "one batch size (1024 tokens)"),
    (dict(budgets=(8192,)), "one token budget (8192 tokens)"),
    (dict(lrs=(1e-3, 3e-3)), "2 usable learning rate(s)"),
    (dict(lrs=(1e-3, 3e-3, 1e-2), budgets=(8192,), batches=(1024, 2048, 4096)), "one token budget"),
])
def test_underdetermined_sweeps_say_what_to_add(tmp_path, sweep, message):
    synthetic_sweep(tmp_path, **sweep)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        lt.check_sweep([lt.read_run(d) for d in lt.find_runs([str(tmp_path)])])


def test_too_few_points():
    runs = [lt.SweepRun(f"r{i}", lr, [(0, b)], t, 5.0, "valid") for i, (lr, b, t) in
            enumerate([(1e-3, 1024, 8192), (3e-3, 2048, 8192), (1e-2, 1024, 16384), (1e-3, 2048, 16384)])]
    with pytest.raises(ConfigError, match="4 usable runs.*needs at least 8"):
        lt.check_sweep(runs)


def test_cli_reads_prepared_metrics(tmp_path):
    sweep = tmp_path / "sweep"
    synthetic_sweep(sweep)
    write_run(sweep, 0.1, 1024, 8192, float("nan"))
    proc = run_cli(["tune", "lr", "--runs", str(sweep), "--target-tokens", "32768", "--bootstrap", "20"])
    assert "excluded lr0.1_b1024_t8192 (lr 0.1, batch 1024, 8192 tokens): non-finite loss" in proc.stdout
    assert "train.global_batch_tokens=[[0,1024],[5120,2048]]" in proc.stdout
    report = json.load(open(sweep / "tune_lr.json"))
    assert report["used"] == 12 and list(report["excluded"]) == ["lr0.1_b1024_t8192"]
    assert report["recommended"]["lr"] == pytest.approx(3e-3 * 2 ** (27 / 64) * 2 ** -0.2, rel=1e-4)
    assert f"optimizer.lr={report['recommended']['lr']:.3g}" in proc.stdout
    with open(sweep / "tune_lr.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    one_batch = tmp_path / "one_batch"
    synthetic_sweep(one_batch, batches=(2048,))
    proc = run_cli(["tune", "lr", "--runs", str(one_batch), "--target-tokens", "32768"], check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "add runs at a second batch size" in errors[0]
    assert not os.path.exists(one_batch / "tune_lr.json")

    write_run(tmp_path / "diverged", 0.05, 2048, 8192, 8.5)  # ended above its first loss
    proc = run_cli(["tune", "lr", "--runs", str(sweep / "lr0.1_b1024_t8192"), str(tmp_path / "diverged"),
                    "--target-tokens", "32768"], check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "all 2 sweep runs diverged or failed" in errors[0]
    assert proc.stdout.count("excluded lr0.1_b1024_t8192") == 1


def test_runs_without_noise_scale_need_a_given_bound():
    runs = [lt.SweepRun("r", 1e-3, [(0, 1024)], 8192, 5.0, "valid")]
    with pytest.raises(ConfigError, match="train.noise_scale=true.*--critical-batch"):
        lt.fit_noise_law(runs)


def test_all_runs_diverged_say_so(tmp_path):
    synthetic_sweep(tmp_path)
    for run_dir in tmp_path.iterdir():
        # No validation at the last step, so the last training loss is the final loss: infinite.
        (run_dir / "valid_metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 9.0}) + "\n")
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": 99, "consumed_tokens": 10 ** 6, "loss": float("inf"), "lr": 1e-3,
                                "global_batch_tokens": 1024}) + "\n")
    runs = [lt.read_run(d) for d in lt.find_runs([str(tmp_path)])]
    assert {r.loss_source for r in runs} == {"train"} and all(r.diverged == "non-finite loss" for r in runs)
    with pytest.raises(ConfigError, match=r"all 12 sweep runs diverged or failed .*--lrs 0.000111111,0.000333333"):
        lt.check_sweep(runs)


def test_missing_or_broken_metrics_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty holds no sweep runs"):
        lt.find_runs([str(tmp_path / "empty")])
    with pytest.raises(ConfigError, match="nowhere does not exist"):
        lt.find_runs([str(tmp_path / "nowhere")])
    sweep = tmp_path / "sweep"
    good = write_run(sweep, 1e-3, 1024, 4096, 6.0)
    write_run(sweep, 1e-3, 1024, 4096, 5.0, name="validate_recommended_lr0.001_b1024")  # not a sweep point
    assert lt.find_runs([str(sweep)]) == [str(good)]
    (good / "valid_metrics.jsonl").unlink()
    run = lt.read_run(str(good))
    assert (run.loss_source, run.final_loss) == ("train", 6.0)
    with open(good / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 5.9}\n{"step": 6, "lo')  # a record without the batch, then one cut short
    with pytest.raises(ConfigError, match=r"metrics.jsonl line 5 lacks consumed_tokens, global_batch_tokens, lr"):
        lt.read_run(str(good))
    lines = (good / "metrics.jsonl").read_text().splitlines()
    (good / "metrics.jsonl").write_text("\n".join(lines[:4] + lines[5:]))
    with pytest.raises(ConfigError, match=r"metrics.jsonl line 5 is not a JSON record"):
        lt.read_run(str(good))


def test_holdout_runs_are_compared_not_fitted(tmp_path):
    # The sweep's points and the held-out runs at the target are complete already (the truth's losses), so the
    # sweep trains nothing; the held-out runs must be predicted, not fitted, and the fit is exact here.
    sweep = tmp_path / "sweep"
    synthetic_sweep(sweep)
    for lr in (1e-3, 3e-3, 1e-2):
        for batch in (1024, 2048):
            write_run(sweep, lr, batch, 32768, TRUTH.loss(lr, [(0, batch)], 32768) + (0.05 if lr == 1e-2 else 0.0),
                      name=f"holdout_lr{lr:g}_b{batch}_t32768")
    proc = run_cli(["tune", "lr", "-c", "examples/cpt/tiny_cpu.yaml", "--lrs", "1e-3,3e-3,1e-2", "--batches",
                    "1024,2048", "--tokens", "8192,16384", "--sweep-dir", str(sweep), "--target-tokens", "32768",
                    "--holdout-tokens", "32768", "--bootstrap", "10"])
    assert "sweep: training" not in proc.stdout and "sweep: 12 runs, 12 used" in proc.stdout
    report = json.load(open(sweep / "tune_lr.json"))
    assert report["residual_rms"] < 1e-6 and len(report["holdout"]) == 6
    for name, row in report["holdout"].items():
        offset = 0.05 if name.startswith("holdout_lr0.01_") else 0.0
        assert row["measured"] - row["predicted"] == pytest.approx(offset, abs=1e-5)
    mean = np.mean([row["relative_error"] for row in report["holdout"].values()])
    assert f"holdout: 6 runs, mean error {100 * mean:+.2f}%" in proc.stdout and mean > 0.002


def test_seeds_repeat_every_point(tmp_path):
    args = ["tune", "lr", "-c", "examples/cpt/tiny_cpu.yaml", "--lrs", "1e-3,3e-3", "--batches", "1024",
            "--tokens", "8192", "--sweep-dir", str(tmp_path), "--target-tokens", "32768", "--dry-run"]
    lines = run_cli(args + ["--seeds", "2"]).stdout.splitlines()
    # The recipe's seed (1234) keeps the one-seed folder, so a one-seed sweep is reused.
    assert [(line.split("run.dir=")[1].split()[0], line.split("run.seed=")[-1] if "run.seed=" in line else "")
            for line in lines] == [(f"{tmp_path}/lr0.001_b1024_t8192", ""), (f"{tmp_path}/lr0.001_b1024_t8192_seed1235",
                                    "1235"), (f"{tmp_path}/lr0.003_b1024_t8192", ""),
                                   (f"{tmp_path}/lr0.003_b1024_t8192_seed1235", "1235")]
    proc = run_cli(args + ["--seeds", "0"], check=False)
    assert proc.returncode == 2 and proc.stderr.count("error:") == 1 and "--seeds 0" in proc.stderr


def test_jobs_train_points_concurrently_and_report_each_failure(tmp_path, data_prefix):
    """--jobs 2: two real sweep points train at once; the one that cannot start is reported with its own
    reason and the other still completes (and is then skipped as complete)."""
    import argparse

    from megatron_s1.config import load_config
    from megatron_s1.training.tune_cli import Sweep

    args = argparse.Namespace(seeds=1, jobs=2, nproc=1, config="examples/cpt/tiny_cpu.yaml",
                              overrides=[f"data.blend=[{data_prefix}]"], eval_tokens=1024)
    sweep = Sweep(args, load_config(args.config, args.overrides))
    good, bad = str(tmp_path / "good"), str(tmp_path / "bad")
    points = [(good, sweep.overrides(good, 3e-3, [(0, 1024)], 4096)),
              (bad, sweep.overrides(bad, 3e-3, [(0, 1024)], 4096) + ["train.steps=-1"])]
    failures = sweep.run_all(points)
    assert list(failures) == [bad] and "exited with 2" in failures[bad]
    assert lt.read_run(good).tokens == 4096
    with pytest.raises(ConfigError, match="--jobs 0"):
        Sweep(argparse.Namespace(**{**vars(args), "jobs": 0}), sweep.cfg)
