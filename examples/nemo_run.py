"""NeMo-Run experiment definitions for the megatron-s1 recipes.

One factory per recipe (cpt, mm_cpt, sft, rl) builds a `run.Script` that calls the `megatron-s1`
entry point (`megatron-s1 train --config RECIPE [overrides]`); an executor decides where it runs:

  local   run.LocalExecutor + torchrun on this machine (the tiny CPU recipes run here as they are)
  slurm   run.SlurmExecutor: NeMo-Run writes an sbatch script (srun + torchrun, c10d rendezvous on the
          first node) and submits it, from a login node (LocalTunnel) or over SSH (--ssh-host)

Examples (from the repository root; needs `pip install nemo-run leptonai==0.27.3`):

  python examples/nemo_run.py cpt                                    # tiny CPT recipe, locally
  python examples/nemo_run.py cpt --nproc-per-node 2 train.steps=10  # 2 workers, dotted overrides
  python examples/nemo_run.py cpt --dryrun train.steps=10            # print the torchrun + megatron-s1 command
  python examples/nemo_run.py sft --executor slurm --dryrun          # print the sbatch script only
  python examples/nemo_run.py cpt --executor slurm --recipe examples/cpt/my_run.yaml \\
      --nodes 16 --gpus-per-node 8 --partition batch --account my-acct --time 24:00:00

Preemption on Slurm: the job asks for SIGUSR1 120 s before its time limit (--signal), torchrun passes
SIGUSR1 on to the workers (PET_SIGNALS_TO_HANDLE = --signals-to-handle), which finish the step, save a checkpoint
and stop; NeMo-Run's sbatch script then requeues the job (up to --max-requeues times) and the next
start resumes from run.dir/checkpoints/latest. The plain sbatch scripts in slurm/ do the same without
NeMo-Run (see docs/cluster.md).
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Stage -> default recipe (relative to the repository root).
RECIPES = {
    "cpt": "examples/cpt/tiny_cpu.yaml",
    "mm_cpt": "examples/mm_cpt/tiny_cpu.yaml",
    "sft": "examples/sft/tiny_cpu.yaml",
    "rl": "examples/rl/tiny_cpu.yaml",
}


def _nemo_run():
    """Import the nemo_run package, not this file (python puts examples/ first on sys.path)."""
    here = os.path.dirname(os.path.abspath(__file__))
    mod = sys.modules.get("nemo_run")
    if mod is not None and os.path.abspath(getattr(mod, "__file__", "") or "") == os.path.abspath(__file__):
        del sys.modules["nemo_run"]
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        import nemo_run
    finally:
        sys.path[:] = saved
    return nemo_run


# Signals torchrun forwards to its workers: its defaults plus SIGUSR1 (Slurm preemption notice).
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def _entry_point(container: bool) -> str:
    """The megatron-s1 console script: this environment's, unless the job runs in a container."""
    if container:
        return "megatron-s1"
    beside_python = os.path.join(os.path.dirname(sys.executable), "megatron-s1")
    if os.path.exists(beside_python):
        return beside_python
    return shutil.which("megatron-s1") or "megatron-s1"


def megatron_s1(recipe: str, overrides: list[str] | None = None, command: str = "train",
                run_dir: str | None = None, container: bool = False):
    """`megatron-s1 COMMAND --config RECIPE OVERRIDES run.dir=RUN_DIR` as a NeMo-Run script.

    torchrun starts it with --no-python, so every worker runs exactly the CLI users run by hand.
    """
    run = _nemo_run()

    args = [command, "--config", recipe, *(overrides or [])]
    if run_dir and not any(o.startswith("run.dir=") for o in overrides or []):
        args.append(f"run.dir={run_dir}")
    return run.Script(path=_entry_point(container), args=args)


def check_recipe(recipe: str, overrides: list[str]) -> str | None:
    """The one `error: ...` line megatron-s1 would end with for this recipe + overrides, or None when they load
    (megatron_s1.config needs only PyYAML: no torch on the submitting host)."""
    if REPO not in sys.path:
        sys.path.append(REPO)  # an installed megatron-s1 first, else this checkout's
    from megatron_s1.config import ConfigError, load_config
    from megatron_s1.console import one_line

    try:
        load_config(recipe, overrides)
    except ConfigError as err:
        return f"error: {one_line(err)}"
    return None


def node_commands(request, command: list[str]) -> list[str]:
    """What each node of a local dry run runs: NeMo-Run's torchrun line with its generated script (`exec
    COMMAND`) replaced by COMMAND itself, shell-quoted."""
    lines = []
    for replicas in request.role_params.values():
        for node, replica in enumerate(replicas):
            args = list(replica.args)
            if "--no-python" in args:  # torchrun ... --no-python SCRIPT: the script is `exec COMMAND`
                at = args.index("--no-python") + 1
                args[at:at + 1] = command
            lines.append(f"[node {node}] {shlex.join(args)}")
    return lines


def as_inline(script):
    """The same command as a small bash script (`exec megatron-s1 ...`).

    NeMo-Run shell-quotes the arguments of a path script for the sbatch script; the local executor
    passes them to the process as they are, quotes included, so overrides such as data.blend=[a,b]
    would arrive mangled. An inline script carries its own (correct) quoting.
    """
    run = _nemo_run()
    return run.Script(inline="exec " + shlex.join([script.path, *script.args]) + "\n", env=dict(script.env))


# ---- one factory per recipe ------------------------------------------------------------------------
def cpt(recipe: str = RECIPES["cpt"], overrides: list[str] | None = None, **kw):
    """Continued pre-training on text (examples/cpt/)."""
    return megatron_s1(recipe, overrides, **kw)


def mm_cpt(recipe: str = RECIPES["mm_cpt"], overrides: list[str] | None = None, **kw):
    """Multimodal continued pre-training (examples/mm_cpt/)."""
    return megatron_s1(recipe, overrides, **kw)


def sft(recipe: str = RECIPES["sft"], overrides: list[str] | None = None, **kw):
    """Supervised fine-tuning (examples/sft/)."""
    return megatron_s1(recipe, overrides, **kw)


def rl(recipe: str = RECIPES["rl"], overrides: list[str] | None = None, **kw):
    """Reinforcement learning (examples/rl/)."""
    return megatron_s1(recipe, overrides, **kw)


FACTORIES = {"cpt": cpt, "mm_cpt": mm_cpt, "sft": sft, "rl": rl}


# ---- executors ---------------------------------------------------------------------------------------
def _path_env() -> dict[str, str]:
    """torchrun and megatron-s1 of this environment first on PATH (the venv need not be activated)."""
    return {"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}


def local_executor(nproc_per_node: int = 1, env: dict[str, str] | None = None):
    """torchrun with NPROC workers on this machine (gloo on CPU, NCCL on GPUs)."""
    run = _nemo_run()

    env_vars = {**_path_env(), "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
    return run.LocalExecutor(ntasks_per_node=nproc_per_node, launcher="torchrun", env_vars=env_vars)


def slurm_executor(nodes: int = 1, gpus_per_node: int = 8, partition: str | None = None,
                   account: str | None = None, time: str = "04:00:00", cpus_per_task: int | None = None,
                   container_image: str | None = None, container_mounts: list[str] | None = None,
                   job_dir: str | None = None, ssh_host: str | None = None, ssh_user: str | None = None,
                   max_requeues: int = 10, rdzv_port: int = 29500, env: dict[str, str] | None = None):
    """One srun task per node running torchrun (c10d rendezvous on the first node), one worker per GPU."""
    run = _nemo_run()

    if ssh_host:
        # NeMo-Run copies the experiment directory (sbatch script, logs) to JOB_DIR on the login node.
        job_dir = job_dir or os.path.join(REPO, "runs", "s1_nemo_jobs")
        tunnel = run.SSHTunnel(host=ssh_host, user=ssh_user or os.environ.get("USER", ""), job_dir=job_dir)
    else:
        # Submitting from a cluster node: the sbatch script is the one NeMo-Run wrote locally, under
        # $NEMORUN_HOME/experiments (which must be on a file system the compute nodes see).
        tunnel = run.LocalTunnel(job_dir=os.path.join(run.config.get_nemorun_home(), "experiments"))
    env_vars = {
        # torchrun --signals-to-handle (PET_* = torchrun options from the environment): forward SIGUSR1
        # to the workers instead of dying from it. torchrun then exits non-zero, which requeues.
        "PET_SIGNALS_TO_HANDLE": FORWARDED_SIGNALS,
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "110",  # workers get 110 s of the 120 s notice to save
        "CUDA_DEVICE_MAX_CONNECTIONS": "1",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "NCCL_DEBUG": "WARN",
        **(env or {}),
    }
    mounts = list(container_mounts or [])
    if container_image and not mounts:
        mounts = [f"{REPO}:{REPO}"]
    # Cluster-specific NCCL/IB settings (NCCL_IB_HCA, NCCL_SOCKET_IFNAME, ...) are documented in
    # slurm/env.sh; sourcing it keeps both launchers on the same defaults.
    setup = f"cd {REPO}\n"
    if not container_image:  # this environment's torchrun and megatron-s1 (shared file system)
        setup += f"export PATH={os.path.dirname(sys.executable)}:$PATH\n"
    setup += f"export S1_NPROC_PER_NODE={max(1, gpus_per_node)}\nsource {REPO}/slurm/env.sh"
    return run.SlurmExecutor(
        account=account, partition=partition, nodes=nodes, ntasks_per_node=1,
        gpus_per_node=gpus_per_node or None, torchrun_nproc_per_node=max(1, gpus_per_node),
        cpus_per_task=cpus_per_task, time=time, exclusive=True if gpus_per_node else None,
        signal="USR1@120", container_image=container_image, container_mounts=mounts,
        tunnel=tunnel, packager=run.Packager(), launcher=run.Torchrun(rdzv_port=rdzv_port),
        retries=max_requeues, env_vars=env_vars, setup_lines=setup, job_name_prefix="megatron-",
    )


# ---- command line ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python examples/nemo_run.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=sorted(FACTORIES), help="which recipe factory to use")
    p.add_argument("overrides", nargs="*",
                   help="dotted config overrides passed to megatron-s1, e.g. train.steps=10 parallel.tensor=2")
    p.add_argument("--recipe", help="recipe YAML (default: the stage's tiny recipe, e.g. %s)" % RECIPES["cpt"])
    p.add_argument("--command", default="train", help="megatron-s1 sub-command (default: train)")
    p.add_argument("--run-dir", help="run directory (checkpoints, metrics.jsonl); keep it fixed to resume "
                   "(default: runs/s1_nemo/<stage>); avoid a path component named nemo_run, NeMo-Run "
                   "rewrites /nemo_run in job arguments")
    p.add_argument("--name", help="experiment name (default: s1-<stage>)")
    p.add_argument("--executor", choices=["local", "slurm"], default="local",
                   help="local: torchrun on this machine; slurm: sbatch via NeMo-Run (default: local)")
    p.add_argument("--dryrun", action="store_true",
                   help="validate the recipe and overrides, print what would run (local: each node's torchrun + "
                   "megatron-s1 command; slurm: the generated sbatch script) and run nothing")
    p.add_argument("--detach", action="store_true", help="return after submitting instead of tailing the logs")
    p.add_argument("--nproc-per-node", type=int, default=1, help="local: worker processes (default: 1)")

    s = p.add_argument_group("slurm executor")
    s.add_argument("--nodes", type=int, default=1, help="nodes (default: 1)")
    s.add_argument("--gpus-per-node", type=int, default=8,
                   help="GPUs per node = torchrun workers per node; 0 for CPU-only nodes (default: 8)")
    s.add_argument("--cpus-per-task", type=int, help="CPUs of the per-node task (default: the partition's)")
    s.add_argument("--partition", help="Slurm partition")
    s.add_argument("--account", help="Slurm account")
    s.add_argument("--time", default="04:00:00", help="time limit per start of the job (default: 04:00:00)")
    s.add_argument("--max-requeues", type=int, default=10,
                   help="requeues after a preemption save or a failure (default: 10)")
    s.add_argument("--container-image", help="run in this container (pyxis/enroot --container-image)")
    s.add_argument("--container-mounts", action="append",
                   help="SRC:DST mount for the container, repeatable (default: the checkout)")
    s.add_argument("--job-dir", help="with --ssh-host: where NeMo-Run copies sbatch scripts and logs on the "
                   "cluster (default: runs/s1_nemo_jobs in the checkout); without it they stay in "
                   "$NEMORUN_HOME/experiments (default ~/.nemo_run)")
    s.add_argument("--ssh-host", help="submit over SSH to this login node instead of locally")
    s.add_argument("--ssh-user", help="SSH user (default: $USER)")
    s.add_argument("--rdzv-port", type=int, default=29500, help="c10d rendezvous port on the first node")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    os.chdir(REPO)  # recipes and run directories are relative to the checkout
    recipe = os.path.abspath(args.recipe or RECIPES[args.stage])  # srun --chdir is NeMo-Run's job dir
    problem = check_recipe(recipe, args.overrides)  # a typo fails here, not after the job starts
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        run = _nemo_run()
    except ImportError:
        print("error: nemo-run is not installed: pip install nemo-run leptonai==0.27.3", file=sys.stderr)
        return 2

    run_dir = os.path.abspath(args.run_dir or os.path.join(REPO, "runs", "s1_nemo", args.stage))
    container = args.executor == "slurm" and bool(args.container_image)
    script = FACTORIES[args.stage](recipe, args.overrides, command=args.command, run_dir=run_dir,
                                   container=container)
    command = [script.path, *script.args]
    if args.executor == "local":
        script = as_inline(script)
        executor = local_executor(args.nproc_per_node)
    else:
        executor = slurm_executor(
            nodes=args.nodes, gpus_per_node=args.gpus_per_node, partition=args.partition,
            account=args.account, time=args.time, cpus_per_task=args.cpus_per_task,
            container_image=args.container_image, container_mounts=args.container_mounts,
            job_dir=args.job_dir, ssh_host=args.ssh_host, ssh_user=args.ssh_user,
            max_requeues=args.max_requeues, rdzv_port=args.rdzv_port)
    name = args.name or f"s1-{args.stage}"
    with run.Experiment(name, executor=executor, log_level="WARN") as exp:
        exp.add(script, name=name, tail_logs=not args.detach)
        if args.dryrun:
            exp.dryrun(log=False)
            for job in exp.jobs:
                info = getattr(job, "_dryrun_info", None)
                request = getattr(info, "request", info)
                if args.executor == "local":  # each node's torchrun + megatron-s1 command
                    print("\n".join(node_commands(request, command)))
                else:  # the sbatch script (its srun line runs torchrun + megatron-s1 on every node)
                    print(request)
            return 0
        exp.run(sequential=True, detach=args.detach)
    if args.detach:
        return 0
    # Leaving the `with` block waited for the job (unless detached); its final state is known now.
    states = [str(getattr(job, "state", "")).rsplit(".", 1)[-1] for job in exp.jobs]
    print(f"{name}: {', '.join(states) or 'done'}; run dir {run_dir}")
    if any(s in ("FAILED", "CANCELLED") for s in states):
        return 1
    if not all(s == "SUCCEEDED" for s in states):
        # NeMo-Run follows Slurm jobs through sacct; without job accounting the end state is unknown.
        print(f"{name}: final state unknown here (squeue/sacct); results are in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
