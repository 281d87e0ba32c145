"""Our Triton cross-entropy (models/cross_entropy.py) against torch and Megatron-Core, on the CPU through the Triton
interpreter: exact values, dtypes, several vocabulary blocks, a TP=2 vocabulary split, and the model's loss."""
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, cli_env, free_port

CHECK = os.path.join(REPO, "tests", "models", "_cross_entropy_check.py")


def _run(args, nproc=1):
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                    f"--nproc-per-node={nproc}", f"--master-port={free_port()}"]
    env = dict(cli_env(), PYTHONPATH=REPO, TRITON_INTERPRET="1")
    proc = subprocess.run([*launcher, CHECK, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_matches_torch_and_hand_computed_values():
    _run(["single"])


@pytest.mark.parametrize("vocab", [4096, 4098])  # two blocks per rank; an odd block tail on each rank
def test_tensor_parallel_vocab_split(vocab):
    _run(["tp", str(vocab)], nproc=2)


def test_model_loss_with_triton_equals_megatron():
    _run(["model"])
