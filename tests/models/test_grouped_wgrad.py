"""The grouped experts' weight gradient accumulated into main_grad (models/grouped_wgrad.py), on the CPU through
the Triton interpreter: hand values, partial tiles, empty experts, and equality with autograd + DDP in a model."""
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, cli_env, run_cli

CHECK = os.path.join(REPO, "tests", "models", "_grouped_wgrad_check.py")


@pytest.mark.parametrize("part", ["kernel", "model"])
def test_grouped_wgrad(part):
    env = dict(cli_env(), PYTHONPATH=REPO, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, CHECK, part], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_fusion_with_overlapped_grad_reduce_is_one_clear_error(tmp_path, train_args):
    proc = run_cli(train_args(str(tmp_path), "train.steps=1", "model.moe_wgrad_fusion=true",
                              "parallel.overlap_grad_reduce=true"), check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and errors == ["error: model.moe_wgrad_fusion=true needs "
                                               "parallel.overlap_grad_reduce=false; drop one of the two"], \
        proc.stderr[-3000:]


def test_fusion_that_switches_nothing_says_so(tmp_path, train_args):
    """On the CPU (no Triton interpreter) no expert can take the fused path: the run trains unfused and says so."""
    proc = run_cli(train_args(str(tmp_path), "train.steps=1", "model.moe_wgrad_fusion=true",
                              "parallel.overlap_grad_reduce=false"), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: model.moe_wgrad_fusion=true switched no experts" in proc.stderr, proc.stderr[-3000:]
