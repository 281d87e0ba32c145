"""Exact resume after kill -9, SIGTERM save-and-exit, resharding TP=2 -> TP=1, config/checkpoint mismatch
(shapes; non-shape settings of checkpoint.pretrained refused unless checkpoint.allow_model_changes lists them)."""
import json
import os
import random
import shutil
import signal
import subprocess
import time

import pytest

from tests.conftest import REPO, cli_command, cli_env, losses, read_metrics, run_cli

STEPS = 10


def _popen(args):
    return subprocess.Popen(cli_command(args), cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}):\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def _latest(run_dir):
    path = os.path.join(run_dir, "checkpoints", "latest")
    return open(path).read().strip() if os.path.exists(path) else None


def test_resume_after_kill9_is_exact(tmp_path, train_args):
    common = [f"train.steps={STEPS}", "checkpoint.interval=5", "train.global_batch_tokens=[[0, 1024], [4096, 2048]]"]
    uninterrupted = str(tmp_path / "uninterrupted")
    run_cli(train_args(uninterrupted, *common))

    interrupted = str(tmp_path / "interrupted")
    proc = _popen(train_args(interrupted, *common))
    _wait_for(lambda: _latest(interrupted) == "iter_0000005", proc)
    time.sleep(random.uniform(0.0, 1.0))  # somewhere in steps 6..10 (or just after the save)
    proc.kill()  # kill -9: no handler runs
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _latest(interrupted) in ("iter_0000005", "iter_0000010")

    run_cli(train_args(interrupted, *common))
    expected, got = losses(uninterrupted), losses(interrupted)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == expected  # bit-identical per-step losses
    steps_logged = [r["step"] for r in read_metrics(interrupted)]
    assert steps_logged == sorted(set(steps_logged))  # re-run steps replaced, not duplicated


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_exit_signal_saves_and_exits_zero(signum, tmp_path, train_args):
    run_dir = str(tmp_path)
    proc = _popen(train_args(run_dir, "train.steps=1000"))
    metrics = os.path.join(run_dir, "metrics.jsonl")
    _wait_for(lambda: os.path.exists(metrics) and len(open(metrics).readlines()) >= 2, proc)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "(signal)" in out
    last_step = read_metrics(run_dir)[-1]["step"]
    assert last_step < 1000
    state = json.load(open(os.path.join(run_dir, "checkpoints", _latest(run_dir), "trainer_state.json")))
    assert state["step"] == last_step  # the step in flight finished and was saved


def test_tp2_checkpoint_loads_at_tp1(tmp_path, train_args, init_checkpoint):
    common = ["train.steps=4", f"checkpoint.pretrained={init_checkpoint}"]
    reference = str(tmp_path / "ref")
    run_cli(train_args(reference, *common))
    resharded = str(tmp_path / "resharded")
    run_cli(train_args(resharded, *common, "parallel.tensor=2", "train.exit_at_step=2"), nproc=2)
    run_cli(train_args(resharded, *common))  # TP=1 resumes the TP=2 checkpoint (model + optimizer + schedule)
    expected, got = losses(reference), losses(resharded)
    assert sorted(got) == [1, 2, 3, 4]
    for step in expected:
        assert abs(got[step] - expected[step]) <= 1e-5, (step, got[step], expected[step])


def test_checkpoint_shape_mismatch_is_one_clear_error(tmp_path, train_args, init_checkpoint):
    proc = run_cli(train_args(str(tmp_path), "train.steps=1", "model.hidden_size=96",
                              f"checkpoint.pretrained={init_checkpoint}"), check=False)
    assert proc.returncode == 2
    assert "does not match the model config (model.hidden_size: checkpoint 64 vs config 96)" in proc.stderr


@pytest.mark.parametrize("override,saved,stated", [("model.rotary_base=500000", "10000", "500000"),
                                                    ("model.norm_epsilon=1e-05", "1e-06", "1e-05")])
def test_pretrained_model_setting_change_is_refused(tmp_path, train_args, init_checkpoint, capsys, override, saved,
                                                    stated):
    """A stated non-shape model field that differs from checkpoint.pretrained's: one line, before the model build."""
    from megatron_s1.cli import main

    field = override.split("=")[0]
    code = main(train_args(str(tmp_path), "train.steps=1", override, f"checkpoint.pretrained={init_checkpoint}"))
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: "), errors
    assert f"{field}: checkpoint {saved}, config {stated}" in errors[0]
    assert f"checkpoint.allow_model_changes=[{field.split('.')[1]}]" in errors[0]
    assert not os.path.exists(tmp_path / "checkpoints")


def test_pretrained_model_setting_change_when_allowed(tmp_path, train_args, init_checkpoint, capsys):
    from megatron_s1.cli import main

    pretrained = f"checkpoint.pretrained={init_checkpoint}"
    assert main(train_args(str(tmp_path), pretrained, "model.rotary_base=500000",
                           "checkpoint.allow_model_changes=[rotary_bsae]")) == 2
    assert "lists rotary_bsae, not a model field" in capsys.readouterr().err
    proc = run_cli(train_args(str(tmp_path), "train.steps=0", pretrained, "model.rotary_base=500000",
                              "checkpoint.allow_model_changes=[rotary_base]"))
    assert "model.rotary_base: checkpoint 10000, config 500000" in proc.stderr
    state = json.load(open(tmp_path / "checkpoints" / "iter_0000000" / "trainer_state.json"))
    assert state["config"]["model"]["rotary_base"] == 500000


def test_corrupted_pretrained_checkpoint_is_refused(tmp_path, train_args, init_checkpoint):
    """checkpoint.pretrained is verified against its CRC-32 manifest: one flipped byte in a shard, one error line."""
    pretrained = tmp_path / "pretrained"
    shutil.copytree(os.path.join(init_checkpoint, "iter_0000000"), pretrained)
    shard = max(pretrained.glob("*.distcp"), key=lambda p: p.stat().st_size)
    with open(shard, "r+b") as f:
        f.seek(shard.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    run_dir = tmp_path / "run"
    proc = run_cli(train_args(str(run_dir), "train.steps=1", f"checkpoint.pretrained={pretrained}"), check=False)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert f"has a corrupted {shard.name} (CRC-32 mismatch)" in errors[0]
    assert not (run_dir / "checkpoints").exists()


def _result(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])["result"]


def test_grad_norm_threshold_skips_steps(tmp_path, train_args):
    skipped = _result(run_cli(train_args(str(tmp_path / "skip"), "train.steps=3", "train.skip_grad_norm_above=1e-6")))
    records = read_metrics(str(tmp_path / "skip"))
    assert [r["skipped_steps"] for r in records] == [1, 2, 3]
    assert all(r["grad_norm"] > 1e-6 for r in records)
    # Every update was skipped: the weights are still the initial ones (same seed, untrained run).
    untrained = _result(run_cli(train_args(str(tmp_path / "untrained"), "train.steps=0")))
    assert skipped["valid_loss"] == untrained["valid_loss"]


def test_resume_from_step0_checkpoint(tmp_path, train_args):
    """A train.steps=0 run writes initial weights; a longer run in the same run.dir continues from them."""
    run_cli(train_args(str(tmp_path), "train.steps=0"))
    proc = run_cli(train_args(str(tmp_path), "train.steps=2"))
    assert "resumed from" in proc.stdout and sorted(losses(str(tmp_path))) == [1, 2]
    # eval --ckpt: the same weights from any directory give the final validation loss of that run.
    args = train_args(str(tmp_path / "elsewhere"))
    out = run_cli(["eval", "--ckpt", str(tmp_path / "checkpoints"), *args[1:]]).stdout
    evaluated = json.loads(out.splitlines()[-1])
    assert evaluated["checkpoint"] == str(tmp_path / "checkpoints" / "iter_0000002") and evaluated["step"] == 2
    assert evaluated["valid_loss"] == _result(proc)["valid_loss"]
