"""RL preemption: SIGTERM / SIGUSR1 save and exit 0; a run resumed after kill -9 repeats the uninterrupted one's
per-step metrics exactly, and rl_metrics.jsonl never holds a step twice."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TIMINGS = ("step_s", "rollout_s", "logprob_s", "update_s", "rollout_tokens_per_s")


def _cmd(run_dir, *overrides):
    return [sys.executable, "-W", "ignore", "-m", "megatron_s1.cli", "rl", "--config",
            os.path.join(REPO, "examples/rl/tiny_cpu.yaml"), f"run.dir={run_dir}", "rl.prompts_per_step=4",
            "rl.samples_per_prompt=4", "train.log_interval=1", *overrides]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    return dict(env, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _records(run_dir):
    with open(os.path.join(run_dir, "rl_metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in f if line.strip()]


def _wait_steps(run_dir, proc, n, timeout=300):
    path = os.path.join(run_dir, "rl_metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and len(open(path).readlines()) >= n:
            return
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_rl_kill9_resume_is_bit_identical(tmp_path):
    steps = ["train.steps=6", "checkpoint.interval=2"]
    ref = str(tmp_path / "ref")
    subprocess.run(_cmd(ref, *steps), env=_env(), check=True, capture_output=True, cwd=REPO, timeout=600)
    run = str(tmp_path / "run")
    proc = subprocess.Popen(_cmd(run, *steps), env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_steps(run, proc, 3)  # checkpoint of step 2 written, step 3 logged
    proc.kill()
    proc.wait()
    res = subprocess.run(_cmd(run, *steps), env=_env(), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got, expected = _records(run), _records(ref)
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]  # re-run steps replaced, never duplicated
    assert got == expected  # bit-identical per-step metrics (prompt and token samplers restored)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_rl_exit_signal_saves_and_exits_zero(signum, tmp_path):
    run = str(tmp_path)
    proc = subprocess.Popen(_cmd(run, "train.steps=1000"), env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_steps(run, proc, 1)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "(signal)" in out
    last = _records(run)[-1]["step"]
    latest = open(os.path.join(run, "checkpoints", "latest")).read().strip()
    assert json.load(open(os.path.join(run, "checkpoints", latest, "trainer_state.json")))["step"] == last
