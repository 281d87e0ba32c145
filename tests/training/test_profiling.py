"""train.profile_steps writes a torch.profiler trace and kernel table for the chosen steps."""
import json
import os

from tests.conftest import run_cli


def test_profile_steps_writes_trace(tmp_path, train_args):
    run_dir = tmp_path / "run"
    run_cli(train_args(run_dir, "train.steps=3", "train.profile_steps=[2,3]"))
    profile = run_dir / "profile"
    with open(profile / "trace_rank0.json") as f:
        trace = json.load(f)
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any(n.startswith("aten::mm") or n.startswith("aten::matmul") for n in names)
    table = (profile / "kernels_rank0.txt").read_text()
    assert "Self CPU" in table and "aten::" in table


def test_profile_steps_bad_value(tmp_path, train_args):
    proc = run_cli(train_args(tmp_path / "bad", "train.profile_steps=[3,2]"), check=False)
    assert proc.returncode != 0
    assert "train.profile_steps must be [first, last]" in proc.stderr
    assert not os.path.exists(tmp_path / "bad" / "profile")
