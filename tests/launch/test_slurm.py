"""slurm/*.sbatch under a real single-node Slurm: a tiny CPT job runs to completion, and a preempted
job saves, requeues itself and resumes to completion.

Both jobs are submitted together (module fixture) so their start-up overlaps; the preemption test
comes first because it has to catch its job mid-training.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, free_port, read_metrics

RECIPE = "examples/cpt/tiny_cpu.yaml"
BASIC_STEPS = 4
PREEMPT_STEPS = 12


def _overrides(data_prefix: str, steps: int, *extra: str) -> list[str]:
    return [f"data.blend=[{data_prefix}]", f"train.steps={steps}", "logging.tensorboard=false",
            "train.eval_interval=0", "train.eval_iters=1", *extra]


def _submit(slurm, name: str, run_dir: str, out_dir: str, overrides: list[str]) -> str:
    # The wrapper asks for 2 GPU nodes, exclusive; a CPU-only single-node cluster gets the same script
    # with command-line overrides, as a user would give them.
    # A free rendezvous port: the default (29500 + job id) would collide with another test session's
    # cluster, whose job ids also start at 1.
    env = dict(slurm.env, S1_RUN_DIR=run_dir, S1_RDZV_HOST="127.0.0.1", S1_RDZV_PORT=str(free_port()),
               OMP_NUM_THREADS="1")
    proc = slurm.run("sbatch", "--parsable", f"--job-name={name}", "--nodes=1", "--gpus-per-node=0",
                     "--cpus-per-task=1", "--oversubscribe", "--time=00:10:00",
                     f"--output={out_dir}/%x-%j.out", "slurm/cpt.sbatch", RECIPE, *overrides,
                     cwd=REPO, env=env)
    return proc.stdout.strip().split(";")[0]


@pytest.fixture(scope="module")
def jobs(slurm, data_prefix, tmp_path_factory):
    base = tmp_path_factory.mktemp("sbatch")
    out = {}
    for key, steps, extra in (("preempt", PREEMPT_STEPS, ("checkpoint.interval=0",)),
                              ("basic", BASIC_STEPS, ())):
        run_dir = str(base / key)
        job_id = _submit(slurm, f"s1-test-{key}", run_dir, str(base), _overrides(data_prefix, steps, *extra))
        out[key] = {"id": job_id, "run_dir": run_dir, "out_dir": str(base)}
    yield out


def _job_log(job: dict) -> str:
    path = os.path.join(job["run_dir"], "logs", f"slurm-{job['id']}.log")
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return f.read()


def _diagnose(slurm, job: dict) -> str:
    noise = ("warn", "Warn", "class MimoModelConfig", "GPTModel IS DEPRECATED")
    lines = [ln for ln in _job_log(job).splitlines() if not any(n in ln for n in noise)]
    log = "\n".join(lines)[-5000:]
    return f"job {slurm.job(job['id'])}\njob log:\n{log}\n{slurm.log_tail(1500)}"


def _metrics_step(run_dir: str) -> int:
    try:
        records = read_metrics(run_dir)
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    return max((r["step"] for r in records if "loss" in r), default=0)


def _latest(run_dir: str) -> str:
    with open(os.path.join(run_dir, "checkpoints", "latest")) as f:
        return f.read().strip()


def test_preemption_saves_requeues_and_resumes(slurm, jobs):
    job = jobs["preempt"]
    import time

    deadline = time.monotonic() + 150
    while _metrics_step(job["run_dir"]) < 1:
        info = slurm.job(job["id"])
        assert info.get("JobState") in ("PENDING", "RUNNING", "CONFIGURING"), _diagnose(slurm, job)
        assert time.monotonic() < deadline, "no training step after 150s\n" + _diagnose(slurm, job)
        time.sleep(0.3)
    # What Slurm does 120 s before the time limit (#SBATCH --signal=USR1@120): SIGUSR1 to the job steps.
    slurm.run("scancel", "--signal=USR1", job["id"])
    try:
        info = slurm.wait_job(job["id"], lambda i: i.get("JobState") == "PENDING" and int(i.get("Restarts", 0)) >= 1,
                              timeout=90, what="requeued (PENDING, Restarts>=1)")
    except TimeoutError as err:
        raise AssertionError(f"{err}\n{_diagnose(slurm, job)}") from None
    log = _job_log(job)
    assert "(signal)" in log and "saved checkpoint" in log, _diagnose(slurm, job)
    assert "requeueing job" in log, _diagnose(slurm, job)
    saved_at = int(_latest(job["run_dir"]).split("_")[-1])
    assert 1 <= saved_at < PREEMPT_STEPS, log[-3000:]

    # A requeued job is held back ~2 minutes by Slurm (BeginTime); the test shortens that wait. Not to
    # zero: slurmd refuses a batch job whose credential is from the same second as the requeue's kill.
    slurm.run("scontrol", "update", f"JobId={job['id']}", "StartTime=now+3")
    try:
        info = slurm.wait_job(job["id"], lambda i: i.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
                              timeout=150, what="finished")
    except TimeoutError as err:
        raise AssertionError(f"{err}\n{_diagnose(slurm, job)}") from None
    log = _job_log(job)
    assert info["JobState"] == "COMPLETED" and info.get("ExitCode") == "0:0", _diagnose(slurm, job)
    assert "start #1" in log and f"resuming from iter_{saved_at:07d}" in log, log[-3000:]
    assert f"resumed from {job['run_dir']}/checkpoints/iter_{saved_at:07d}" in log, log[-3000:]
    assert _latest(job["run_dir"]) == f"iter_{PREEMPT_STEPS:07d}"
    steps = [r["step"] for r in read_metrics(job["run_dir"]) if "loss" in r and "lr" in r]
    # Every step trained exactly once: 1..saved_at before the preemption, saved_at+1..N after it.
    assert sorted(set(steps)) == list(range(1, PREEMPT_STEPS + 1)), steps
    assert steps.index(saved_at + 1) > steps.index(saved_at)


def test_sbatch_tiny_cpt_runs_to_completion(slurm, jobs):
    job = jobs["basic"]
    try:
        info = slurm.wait_job(job["id"], lambda i: i.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
                              timeout=150, what="finished")
    except TimeoutError as err:
        raise AssertionError(f"{err}\n{_diagnose(slurm, job)}") from None
    assert info["JobState"] == "COMPLETED" and info.get("ExitCode") == "0:0", _diagnose(slurm, job)
    run_dir = job["run_dir"]
    assert _latest(run_dir) == f"iter_{BASIC_STEPS:07d}"
    assert os.path.isdir(os.path.join(run_dir, "checkpoints", f"iter_{BASIC_STEPS:07d}"))
    steps = [r["step"] for r in read_metrics(run_dir) if "loss" in r and "lr" in r]
    assert steps == list(range(1, BASIC_STEPS + 1))
    log = _job_log(job)
    assert "rendezvous 127.0.0.1:" in log and "--rdzv-backend=c10d" in log, log[-3000:]
    assert "training step exited with code 0" in log, log[-3000:]
    # The sbatch --output file holds the same lines as the per-job log in the run directory.
    with open(os.path.join(job["out_dir"], f"s1-test-basic-{job['id']}.out"), errors="replace") as f:
        assert "training step exited with code 0" in f.read()


# ---- no Slurm needed ---------------------------------------------------------------------------------
STAGES = ("cpt", "mm_cpt", "sft", "rl")


@pytest.mark.parametrize("stage", STAGES)
def test_stage_wrappers_share_the_launcher(stage):
    with open(os.path.join(REPO, "slurm", f"{stage}.sbatch")) as f:
        text = f.read()
    for line in ("#SBATCH --signal=USR1@120", "#SBATCH --requeue", "#SBATCH --open-mode=append",
                 "#SBATCH --ntasks-per-node=1"):
        assert line in text
    assert 'exec bash "${S1_HOME:-${SLURM_SUBMIT_DIR:-.}}/slurm/launch.sh"' in text
    assert f"examples/{stage}/" in text


def test_scripts_parse():
    for name in ("launch.sh", "node.sh", "env.sh", *(f"{s}.sbatch" for s in STAGES)):
        subprocess.run(["bash", "-n", os.path.join(REPO, "slurm", name)], check=True)


def _dry_run(tmp_path, *overrides: str, **env_vars: str) -> subprocess.CompletedProcess:
    # This environment's megatron-s1 validates the recipe (a container job has no S1_VENV: PATH is used).
    env = dict(os.environ, S1_DRY_RUN="1", S1_RUN_DIR=str(tmp_path / "run"), SLURM_JOB_ID="42",
               SLURM_JOB_NUM_NODES="4", SLURM_JOB_NAME="s1-cpt", S1_RDZV_HOST="head", S1_NPROC_PER_NODE="8",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""), **env_vars)
    env.pop("SLURM_JOB_NODELIST", None)
    return subprocess.run(["bash", "slurm/launch.sh", RECIPE, *overrides], cwd=REPO, env=env, capture_output=True,
                          text=True)


def test_launcher_dry_run(tmp_path):
    """S1_DRY_RUN=1 prints the srun line (one task per node running node.sh, container flags when asked) and the
    torchrun + megatron-s1 command every node runs."""
    proc = _dry_run(tmp_path, "train.steps=3", S1_CONTAINER_IMAGE="nvcr.io#nvidia/pytorch:25.01-py3")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.replace("\\,", ",")  # printf %q escapes commas
    assert out.startswith("srun --nodes=4 --ntasks-per-node=1 --kill-on-bad-exit=1"), out
    assert "--container-image=nvcr.io#nvidia/pytorch:25.01-py3" in out
    assert f"--container-mounts={REPO}:{REPO},{tmp_path}/run:{tmp_path}/run" in out
    assert f"slurm/node.sh {RECIPE} train.steps=3 run.dir={tmp_path}/run" in out
    node = out.splitlines()[out.splitlines().index("# each of the 4 node(s) runs:") + 1]
    for part in ("-m torch.distributed.run --nnodes=4 --nproc-per-node=8 --rdzv-backend=c10d",
                 "--rdzv-endpoint=head:", "--rdzv-id=42-0",
                 f"--no-python megatron-s1 train --config {RECIPE} train.steps=3 run.dir={tmp_path}/run"):
        assert part in node, (part, node)


def test_launcher_dry_run_validates_the_overrides(tmp_path):
    proc = _dry_run(tmp_path, "train.stepz=10")
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    assert proc.stderr.strip().splitlines() == ["error: unknown config key 'train.stepz'; did you mean 'steps'?"]
