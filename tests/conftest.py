"""Shared fixtures: real CLI runs (single process or torchrun with gloo) on the bundled corpus."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "examples", "cpt", "tiny_cpu.yaml")
CORPUS = os.path.join(REPO, "megatron_s1", "data", "corpus", "tiny_corpus.jsonl")
# The released model files (oracles for parity tests): ../shared/reference beside the checkout, as CI lays it out.
REFERENCE = os.environ.get("S1_REFERENCE", os.path.join(os.path.dirname(REPO), "shared", "reference"))


def reference_path(*parts: str) -> str:
    """Path of a released reference file; skips the test (with the reason) when the files are absent."""
    path = os.path.join(REFERENCE, *parts)
    if not os.path.exists(path):
        pytest.skip(f"released reference file {path} absent (../shared/reference beside the checkout, or set S1_REFERENCE)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_command(args: list[str], nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-W", "ignore", "-m", "megatron_s1.cli", *args]
    return [sys.executable, "-W", "ignore", "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
            f"--master-port={free_port()}", "-m", "megatron_s1.cli", *args]


def cli_env() -> dict:
    """Environment for a child run: never inherit the rendezvous of an in-process test's process group."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return dict(env, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def run_cli(args: list[str], nproc: int = 1, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = cli_env()
    proc = subprocess.run(cli_command(args, nproc), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"command failed ({proc.returncode}): {' '.join(args)}\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


def read_metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def losses(run_dir: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


@pytest.fixture(scope="session")
def data_prefix(tmp_path_factory) -> str:
    """The bundled corpus preprocessed once per session."""
    prefix = str(tmp_path_factory.mktemp("data") / "corpus")
    run_cli(["preprocess", "--input", CORPUS, "--output-prefix", prefix, "--workers", "1", "--quiet"])
    return prefix


@pytest.fixture(scope="session")
def train_args(data_prefix):
    """Base arguments of a tiny MoE training run; tests add run.dir and their own overrides."""
    def make(run_dir, *overrides: str) -> list[str]:
        return ["train", "--config", RECIPE, f"run.dir={run_dir}", f"data.blend=[{data_prefix}]",
                "logging.tensorboard=false", "train.eval_interval=0", "train.eval_iters=1", *overrides]
    return make


@pytest.fixture(scope="session")
def init_checkpoint(tmp_path_factory, train_args) -> str:
    """Initial weights of the tiny MoE recipe (train.steps=0), shared by the parity tests."""
    run_dir = str(tmp_path_factory.mktemp("init"))
    run_cli(train_args(run_dir, "train.steps=0"))
    return os.path.join(run_dir, "checkpoints")
