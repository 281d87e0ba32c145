"""Shared checks of the conversion tests: CLI conversion, logits verification in a fresh process (1 or 2 ranks),
and bit-identical comparison of HF checkpoints."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, free_port, run_cli

TOLERANCE = 1e-4
# The default run keeps to the CPU time budget; CONVERSION_FULL=1 adds the remaining layouts/architectures.
FULL = pytest.mark.skipif(not os.environ.get("CONVERSION_FULL"), reason="set CONVERSION_FULL=1 for every variant")


def convert(hf_dir, out_dir, *extra):
    proc = run_cli(["convert", "hf-to-mcore", "--hf", hf_dir, "--out", out_dir, *extra])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def verify(hf_dir, ckpt, nproc, *layout):
    """megatron_s1.conversion.verify's JSON report (logit differences against the HF model)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    args = ["-m", "megatron_s1.conversion.verify", "--hf", hf_dir, "--ckpt", ckpt, *layout]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}", *args]
    proc = subprocess.run([sys.executable, "-W", "ignore", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def hf_tensors(hf_dir):
    with open(os.path.join(hf_dir, "model.safetensors.index.json")) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for name in files:
        out.update(load_file(os.path.join(hf_dir, name)))
    return out


def assert_same_hf_checkpoint(a, b):
    """Same tensor names, dtypes and bits, and the same config.json."""
    original, exported = hf_tensors(a), hf_tensors(b)
    assert sorted(original) == sorted(exported)
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor), name
    with open(os.path.join(a, "config.json")) as fa, open(os.path.join(b, "config.json")) as fb:
        assert json.load(fa) == json.load(fb)
