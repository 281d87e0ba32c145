import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import free_port, run_cli

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
RL_RECIPE = os.path.join(REPO, "examples/rl/tiny_cpu.yaml")


def run_check(script: str, *args: str, nproc: int = 1, timeout: int = 300) -> dict:
    """Run tests/rl/<script> in a fresh process (its own torch.distributed world; ``nproc`` > 1: torchrun, gloo)
    and parse its RESULT line."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    launch = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}"]
    proc = subprocess.Popen([*launch, os.path.join(HERE, script), *map(str, args)],
                            env=dict(env, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # (e.g. ranks hung in a collective) SIGTERM: torchrun passes it on to its workers, which run in sessions
        # of their own (a SIGKILL of torchrun would leave them hanging)
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.split("RESULT ")[-1])


@contextlib.contextmanager
def serve_fake_engine():
    """tests/rl/fake_server.py on a free local port (weight version 0); yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "fake_server.py"), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("fake server did not start")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def fake_server():
    with serve_fake_engine() as url:
        yield url


# ------------------------------------------------------------------ parallel-layout comparisons (real CLI runs)


# toy_add, 1 new token, 4 prompts x 8 samples per data-parallel rank, 2 mini-batches, 3 steps
DP_COMMON = ("rl.prompts_per_step=4", "rl.mini_batches=2", "train.steps=3")
# The DP=2 run the EP layouts with routing replay (test_expert_parallel.py, PP=2 x EP=2) are compared with. (Not a
# reference for no-replay runs: after the first mini-batch's update the training forward routes afresh.)
DP2_REFERENCE = (*DP_COMMON, "rl.routing_replay=true")


def rl_records(run_dir) -> list:
    return [json.loads(line) for line in open(os.path.join(run_dir, "rl_metrics.jsonl"))]


def run_rl(run_dir, init_ckpt: str, *overrides: str, nproc: int = 1) -> list:
    """`megatron-s1 rl` on the tiny recipe from ``init_ckpt`` with an fp32 rollout (torchrun + gloo when nproc > 1;
    later overrides win); returns the rl_metrics.jsonl records."""
    run_cli(["rl", "--config", RL_RECIPE, "--rollout-dtype", "fp32", f"checkpoint.pretrained={init_ckpt}",
             "checkpoint.save_final=false", *overrides, f"run.dir={run_dir}"], nproc=nproc)
    return rl_records(run_dir)


@pytest.fixture(scope="session")
def init_ckpt(tmp_path_factory):
    """Initial weights of the tiny recipe's model, shared by the runs that compare parallel layouts."""
    run_dir = tmp_path_factory.mktemp("rl_init")
    run_cli(["rl", "--config", RL_RECIPE, f"run.dir={run_dir}", "train.steps=0", "checkpoint.save_final=true"])
    return str(run_dir / "checkpoints")


@pytest.fixture(scope="session")
def reference_rl(init_ckpt, tmp_path_factory):
    """``get(*overrides, nproc=1) -> (run_dir, records)``: a reference run that several layout tests compare
    against, trained once per session per (overrides, nproc) from ``init_ckpt``, with its final checkpoint."""
    cache = {}

    def get(*overrides: str, nproc: int = 1):
        key = (overrides, nproc)
        if key not in cache:
            run_dir = tmp_path_factory.mktemp("rl_reference")
            cache[key] = run_dir, run_rl(run_dir, init_ckpt, *overrides, "checkpoint.save_final=true", nproc=nproc)
        return cache[key]

    return get

