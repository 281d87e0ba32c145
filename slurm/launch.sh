#!/bin/bash
# Shared Slurm launcher of megatron-s1: every stage wrapper (cpt.sbatch, mm_cpt.sbatch, sft.sbatch,
# rl.sbatch) runs this script inside its batch allocation.
#
#   usage (inside a batch job):  launch.sh RECIPE.yaml [dotted.override=value ...]
#
# What it does, once per (re)start of the job:
#   1. picks the run directory (S1_RUN_DIR, default runs/<job-name>-<job-id>) and appends this
#      attempt's output to <run dir>/logs/slurm-<job-id>.log;
#   2. starts one task per node with srun (optionally inside a pyxis/enroot container); each task
#      (slurm/node.sh) runs torchrun with a c10d rendezvous on the first node, and torchrun starts
#      one `megatron-s1 <command>` worker per GPU;
#   3. preemption: SIGUSR1 (sbatch --signal=[B:]USR1@120, `scancel -s USR1 JOB`,
#      `scancel --batch -s USR1 JOB`) makes the workers finish the current step, save a checkpoint
#      and exit 0; the launcher then requeues the job (`scontrol requeue`), and the next start
#      resumes from <run dir>/checkpoints/latest (same job id, so the same run directory);
#   4. a run that stops for any other reason (done, crash, scancel, time limit) is not requeued and
#      the job's exit code is the one of the training step.
#
# Environment knobs (all optional; sbatch exports the submitting shell's environment):
#   S1_HOME             repository checkout (default: the directory sbatch was called from)
#   S1_COMMAND          megatron-s1 sub-command run by every worker (default: train)
#   S1_RUN_DIR          run directory (default: $S1_HOME/runs/$SLURM_JOB_NAME-$SLURM_JOB_ID);
#                       a run.dir=... override on the command line wins over it
#   S1_NPROC_PER_NODE   workers per node (default: GPUs of the node, 1 without GPUs)
#   S1_RDZV_HOST        rendezvous host (default: first node of the allocation)
#   S1_RDZV_PORT        rendezvous port (default: 29500 + job id % 2000)
#   S1_MAX_RESTARTS     torchrun --max-restarts, in-job restarts after a worker failure (default: 0)
#   S1_VENV             virtual environment activated on every node (default: $S1_HOME/.venv when
#                       it exists and no container is used; "none" to use the PATH as it is)
#   S1_CONTAINER_IMAGE  run the tasks in this container (pyxis/enroot: srun --container-image)
#   S1_CONTAINER_MOUNTS srun --container-mounts (default: $S1_HOME:$S1_HOME, plus the run dir)
#   S1_SITE_ENV         file sourced on every node before torchrun (module loads, NCCL/IB knobs)
#   S1_SRUN_ARGS        extra srun arguments, word-split (e.g. "--cpu-bind=none --mpi=none")
#   S1_REQUEUE          1 (default): requeue after a preemption save; 0: just stop
#   S1_MAX_REQUEUES     stop requeueing after this many restarts of the job (default: 100)
#   S1_DRY_RUN          1: validate the recipe and overrides (megatron-s1 config, with this host's
#                       megatron-s1), print the srun command line and each node's torchrun command, exit
set -uo pipefail

die() { echo "launch.sh: error: $*" >&2; exit 2; }
log() { echo "[launch $(date '+%F %T')] $*"; }

[ $# -ge 1 ] || die "usage: launch.sh RECIPE.yaml [dotted.override=value ...]"
RECIPE=$1
shift
OVERRIDES=("$@")

S1_HOME=${S1_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$S1_HOME" || die "cannot cd to S1_HOME=$S1_HOME"
[ -f "$S1_HOME/slurm/node.sh" ] || die "$S1_HOME is not a megatron-s1 checkout (no slurm/node.sh); \
submit from the repository root or set S1_HOME"
[ -f "$RECIPE" ] || die "recipe $RECIPE not found (relative paths are relative to $S1_HOME)"

JOB_ID=${SLURM_JOB_ID:-local}
JOB_NAME=${SLURM_JOB_NAME:-megatron-s1}
RESTART=${SLURM_RESTART_COUNT:-0}
S1_COMMAND=${S1_COMMAND:-train}

# Run directory: an explicit run.dir=... override wins, otherwise one directory per job. A requeued
# job keeps its id, so it finds its own checkpoints again and resumes.
RUN_DIR=${S1_RUN_DIR:-$S1_HOME/runs/$JOB_NAME-$JOB_ID}
HAS_RUN_DIR=0
for ov in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do  # (bash < 4.4 calls an empty array unbound)
    case $ov in run.dir=*) RUN_DIR=${ov#run.dir=}; HAS_RUN_DIR=1 ;; esac
done
case $RUN_DIR in /*) ;; *) RUN_DIR=$S1_HOME/$RUN_DIR ;; esac
[ $HAS_RUN_DIR = 1 ] || OVERRIDES+=("run.dir=$RUN_DIR")
[ "${S1_DRY_RUN:-0}" = 1 ] || mkdir -p "$RUN_DIR/logs" || die "cannot create $RUN_DIR/logs"

# Per-job log in the run directory (the sbatch --output file gets the same lines).
JOB_LOG=$RUN_DIR/logs/slurm-$JOB_ID.log
if [ "${S1_DRY_RUN:-0}" != 1 ]; then
    # tee ignores SIGTERM (scancel signals the whole batch step): it must outlive the shell and srun
    # to keep their last lines, and a dead tee would kill srun with SIGPIPE while the workers save.
    exec > >(trap '' TERM INT; exec tee -a "$JOB_LOG") 2>&1
    TEE_PID=$!
fi

# Topology.
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
if [ -z "${S1_RDZV_HOST:-}" ]; then
    if [ -n "${SLURM_JOB_NODELIST:-}" ] && command -v scontrol >/dev/null; then
        S1_RDZV_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    else
        S1_RDZV_HOST=$(hostname)
    fi
fi
if [ -z "${S1_RDZV_PORT:-}" ]; then
    case $JOB_ID in *[!0-9]*|'') S1_RDZV_PORT=29500 ;; *) S1_RDZV_PORT=$((29500 + JOB_ID % 2000)) ;; esac
fi
PREEMPT_MARKER=$RUN_DIR/logs/.preempted-$JOB_ID
export S1_HOME S1_COMMAND S1_RDZV_HOST S1_RDZV_PORT S1_PREEMPT_MARKER=$PREEMPT_MARKER

# One task per node; without --exact a step gets all CPUs (and GPUs) the job holds on each node.
SRUN=(srun --nodes="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 --export=ALL)
if [ -n "${S1_CONTAINER_IMAGE:-}" ]; then
    MOUNTS=${S1_CONTAINER_MOUNTS:-$S1_HOME:$S1_HOME}
    case ",$MOUNTS," in *",$RUN_DIR:"*) ;; *) case $RUN_DIR in "$S1_HOME"/*) ;; *) MOUNTS+=",$RUN_DIR:$RUN_DIR" ;; esac ;; esac
    SRUN+=(--container-image="$S1_CONTAINER_IMAGE" --container-mounts="$MOUNTS" --container-workdir="$S1_HOME")
    export S1_VENV=${S1_VENV:-none}
fi
# shellcheck disable=SC2206  # word splitting of the extra arguments is intended
[ -n "${S1_SRUN_ARGS:-}" ] && SRUN+=($S1_SRUN_ARGS)
SRUN+=(bash "$S1_HOME/slurm/node.sh" "$RECIPE" "${OVERRIDES[@]}")

if [ "${S1_DRY_RUN:-0}" = 1 ]; then
    # node.sh in dry-run mode validates the recipe + overrides (exit 2 and one error line if bad) and prints
    # the torchrun command of a task, as resolved on this host (its megatron-s1, workers per node).
    NODE_CMD=$(S1_DRY_RUN=1 SLURM_JOB_NUM_NODES=$NNODES bash "$S1_HOME/slurm/node.sh" "$RECIPE" "${OVERRIDES[@]}") \
        || exit $?
    printf '%q ' "${SRUN[@]}"
    echo
    echo "# each of the $NNODES node(s) runs:"
    echo "$NODE_CMD"
    exit 0
fi

log "job $JOB_ID ($JOB_NAME) start #$RESTART on $NNODES node(s) [${SLURM_JOB_NODELIST:-$(hostname)}]"
log "recipe $RECIPE, command '$S1_COMMAND', run dir $RUN_DIR, rendezvous $S1_RDZV_HOST:$S1_RDZV_PORT"
[ -e "$RUN_DIR/checkpoints/latest" ] && log "resuming from $(cat "$RUN_DIR/checkpoints/latest" 2>/dev/null)"
rm -f "$PREEMPT_MARKER"

# Signals to the batch shell. USR1 = preemption notice: forward it to the job steps (the workers
# checkpoint and stop) and requeue afterwards. TERM (scancel, time limit) is only logged: the steps
# get their own TERM from Slurm, and a cancelled job must not come back.
PREEMPT=0
on_usr1() {
    touch "$PREEMPT_MARKER"
    [ $PREEMPT = 1 ] && return
    PREEMPT=1
    log "SIGUSR1: asking the workers to save a checkpoint and stop"
    scancel --signal=USR1 "$JOB_ID" 2>/dev/null || kill -USR1 "$SRUN_PID" 2>/dev/null
}
on_term() { log "SIGTERM: job is being cancelled or hit its time limit; waiting for the workers"; }
trap on_usr1 USR1
trap on_term TERM

"${SRUN[@]}" &
SRUN_PID=$!
# `wait` returns early when a trapped signal arrives: keep waiting until srun has really exited.
while :; do
    wait "$SRUN_PID"
    RC=$?
    kill -0 "$SRUN_PID" 2>/dev/null || break
done
trap - USR1 TERM

finish() {
    log "$1"
    if [ -n "${TEE_PID:-}" ]; then
        exec >&- 2>&-
        wait "$TEE_PID" 2>/dev/null
    fi
    exit "$2"
}

if [ -e "$PREEMPT_MARKER" ] && [ "$RC" = 0 ]; then
    rm -f "$PREEMPT_MARKER"
    LATEST=$(cat "$RUN_DIR/checkpoints/latest" 2>/dev/null || echo none)
    if [ "${S1_REQUEUE:-1}" != 1 ]; then
        finish "preempted: saved $LATEST; S1_REQUEUE=0, not requeueing" 0
    fi
    if [ -z "${SLURM_JOB_ID:-}" ]; then
        finish "preempted: saved $LATEST; not in a Slurm job, nothing to requeue" 0
    fi
    if [ "$RESTART" -ge "${S1_MAX_REQUEUES:-100}" ]; then
        finish "preempted: saved $LATEST; restart count $RESTART reached S1_MAX_REQUEUES, not requeueing" 0
    fi
    log "preempted: saved $LATEST; requeueing job $JOB_ID (it resumes from there)"
    if scontrol requeue "$JOB_ID"; then
        # Slurm now stops this batch shell; the job goes back to the queue with the same id.
        sleep 300
        finish "requeue did not stop the job; exiting" 0
    fi
    finish "error: scontrol requeue failed; resubmit with S1_RUN_DIR=$RUN_DIR to resume" 1
fi
rm -f "$PREEMPT_MARKER"
finish "training step exited with code $RC" "$RC"
