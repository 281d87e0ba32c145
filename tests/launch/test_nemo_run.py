"""examples/nemo_run.py: --help, the recipe + overrides check, the Slurm dry run (sbatch script with srun +
torchrun), the local dry run (each node's torchrun + megatron-s1 command) and a real LocalExecutor run of the tiny
CPT recipe. The NeMo-Run parts are skipped without nemo-run (pip install nemo-run leptonai==0.27.3)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, read_metrics

SCRIPT = os.path.join(REPO, "examples", "nemo_run.py")


def _has_nemo_run() -> bool:
    try:
        return importlib.util.find_spec("nemo_run") is not None
    except (ImportError, ValueError):
        return False


needs_nemo_run = pytest.mark.skipif(not _has_nemo_run(),
                                    reason="nemo-run not installed (pip install nemo-run leptonai==0.27.3)")


def _run(args: list[str], tmp_path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, NEMORUN_HOME=str(tmp_path / "nemorun_home"), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", COLUMNS="200")
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_help_explains_the_options(tmp_path):
    proc = _run(["--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for option in ("--executor {local,slurm}", "--dryrun", "--nodes", "--gpus-per-node", "--container-image",
                   "--max-requeues", "--run-dir", "{cpt,mm_cpt,rl,sft}", "overrides"):
        assert option in proc.stdout, option


@needs_nemo_run
def test_slurm_dryrun_prints_sbatch_with_srun_and_torchrun(tmp_path):
    proc = _run(["sft", "--executor", "slurm", "--dryrun", "--nodes", "4", "--gpus-per-node", "8",
                 "--partition", "batch", "--run-dir", str(tmp_path / "run"),
                 "train.steps=100"], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=batch", "#SBATCH --signal=USR1@120",
                 "export PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
                 f"source {REPO}/slurm/env.sh", 'scontrol requeue "$SLURM_JOB_ID"'):
        assert line in out, line
    srun = [ln for ln in out.splitlines() if ln.startswith("srun ") and "torchrun" in ln]
    assert len(srun) == 1, out
    cmd = srun[0]
    for part in ("--kill-on-bad-exit=1", "torchrun --rdzv-backend c10d --rdzv-endpoint $head_node_ip:29500",
                 "--nnodes 4 --nproc-per-node 8", "--no-python",
                 f"megatron-s1 train --config {REPO}/examples/sft/tiny_cpu.yaml train.steps=100 "
                 f"run.dir={tmp_path}/run"):
        assert part in cmd, (part, cmd)


@needs_nemo_run
def test_local_dryrun_prints_each_node_command(tmp_path):
    proc = _run(["cpt", "--dryrun", "--nproc-per-node", "2", "--run-dir", str(tmp_path / "run"), "train.steps=3",
                 "data.blend=[a,b]"], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    nodes = [ln for ln in proc.stdout.splitlines() if ln.startswith("[node ")]
    assert len(nodes) == 1 and "PopenRequest" not in proc.stdout, proc.stdout
    assert nodes[0].startswith("[node 0] torchrun "), nodes
    for part in ("--nnodes 1 --nproc-per-node 2", f"--no-python {os.path.dirname(sys.executable)}/megatron-s1 train "
                 f"--config {REPO}/examples/cpt/tiny_cpu.yaml train.steps=3 'data.blend=[a,b]' run.dir={tmp_path}/run"):
        assert part in nodes[0], (part, nodes[0])
    assert not (tmp_path / "run").exists()


def test_dryrun_validates_the_recipe_and_overrides(tmp_path):
    """Before NeMo-Run is involved (no nemo-run needed): a typo is one error line and exit code 2."""
    proc = _run(["cpt", "--dryrun", "train.stepz=10"], tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert proc.stderr.strip().splitlines() == ["error: unknown config key 'train.stepz'; did you mean 'steps'?"]
    proc = _run(["sft", "--executor", "slurm", "--dryrun", "--recipe", "examples/sft/missing.yaml"], tmp_path)
    assert proc.returncode == 2 and "examples/sft/missing.yaml' does not exist" in proc.stderr, proc.stderr


@needs_nemo_run
def test_local_executor_runs_the_tiny_recipe(tmp_path, data_prefix):
    run_dir = tmp_path / "run"
    proc = _run(["cpt", "--run-dir", str(run_dir), f"data.blend=[{data_prefix}]", "train.steps=2",
                 "logging.tensorboard=false", "train.eval_interval=0", "train.eval_iters=1"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "s1-cpt: SUCCEEDED" in proc.stdout
    with open(run_dir / "checkpoints" / "latest") as f:
        assert f.read().strip() == "iter_0000002"
    assert [r["step"] for r in read_metrics(str(run_dir)) if "lr" in r] == [1, 2]
