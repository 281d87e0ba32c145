"""Multimodal CPT end to end on CPU from one initial checkpoint: DP=2 (the square-averaging normaliser is
global across ranks) gives the same losses and grad norms as PP=2 with DP=1 (encoders on the first stage).

A per-rank normaliser would make DP=2 differ from DP=1 (see test_losses for the values); a broken stage
split or embedding merge would make PP=2 differ."""
from __future__ import annotations

import os
import sys

import pytest

from tests.conftest import REPO, losses, read_metrics, run_cli

RECIPE = os.path.join(REPO, "examples", "mm_cpt", "tiny_cpu.yaml")


@pytest.fixture(scope="module")
def mm_data(tmp_path_factory) -> str:
    sys.path.insert(0, os.path.join(REPO, "examples", "mm_cpt"))
    try:
        import make_data
    finally:
        sys.path.pop(0)
    return make_data.main(str(tmp_path_factory.mktemp("mm")), n=24)


def _args(run_dir, data, *extra):
    return ["train", "--config", RECIPE, f"run.dir={run_dir}", f"data.blend=[{data}]", "logging.tensorboard=false",
            "train.steps=2", "train.eval_interval=0", "train.eval_iters=0", "checkpoint.interval=0",
            "data.split=100,0,0", *extra]


def test_dp2_matches_pp2_from_one_init(tmp_path, mm_data):
    init, dp2, pp2 = (str(tmp_path / n) for n in ("init", "dp2", "pp2"))
    run_cli(_args(init, mm_data, "train.steps=0"))
    pretrained = f"checkpoint.pretrained={os.path.join(init, 'checkpoints')}"
    run_cli(_args(dp2, mm_data, pretrained), nproc=2)
    run_cli(_args(pp2, mm_data, pretrained, "parallel.pipeline=2"), nproc=2)
    ref, got = losses(dp2), losses(pp2)
    assert len(ref) == 2 and all(v == v for v in ref.values())
    assert ref[1] == pytest.approx(7.65, abs=0.1)  # ~ln(vocab) at init
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-4), step
    for a, b in zip(read_metrics(pp2), read_metrics(dp2)):
        if "grad_norm" in a:
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
