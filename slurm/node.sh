#!/bin/bash
# One Slurm task per node (started by slurm/launch.sh through srun --ntasks-per-node=1): runs torchrun,
# which joins the c10d rendezvous on S1_RDZV_HOST:S1_RDZV_PORT and starts S1_NPROC_PER_NODE workers
# `megatron-s1 $S1_COMMAND --config RECIPE OVERRIDES...`.
#
#   usage: node.sh RECIPE.yaml [dotted.override=value ...]
#   S1_DRY_RUN=1: check the recipe and overrides with `megatron-s1 config`, print the torchrun command, exit
#
# Preemption: SIGUSR1 reaches this task (Slurm signals the job step), the batch shell forwards it, or
# both. torchrun itself ignores SIGUSR1 (its default action would kill it and orphan the workers);
# this script passes the signal on to the workers, which finish the current step, save a checkpoint
# and exit 0, so torchrun and the step end cleanly. The signal is delivered once to
# each worker as soon as it has installed its handler (before that it ignores SIGUSR1).
# SIGTERM (scancel, time limit) is passed to torchrun, which forwards it to the workers (they save too).
set -uo pipefail

RECIPE=$1
shift
S1_HOME=${S1_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
cd "$S1_HOME" || exit 2

# Python environment: the checkout's virtual environment unless told otherwise (containers).
VENV=${S1_VENV:-}
[ -z "$VENV" ] && [ -x "$S1_HOME/.venv/bin/megatron-s1" ] && VENV=$S1_HOME/.venv
if [ -n "$VENV" ] && [ "$VENV" != none ]; then
    export PATH="$VENV/bin:$PATH" VIRTUAL_ENV=$VENV
fi
command -v megatron-s1 >/dev/null || { echo "node.sh: megatron-s1 not on PATH (set S1_VENV)" >&2; exit 2; }
PYTHON=$(command -v python3 || command -v python)
if [ -n "$VENV" ] && [ "$VENV" != none ] && [ -x "$VENV/bin/python" ]; then PYTHON=$VENV/bin/python; fi

# Workers per node: one per GPU.
if [ -z "${S1_NPROC_PER_NODE:-}" ]; then
    GPUS=0
    if [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then
        GPUS=$SLURM_GPUS_ON_NODE
    elif command -v nvidia-smi >/dev/null; then
        GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
    fi
    S1_NPROC_PER_NODE=$GPUS
    [ "$S1_NPROC_PER_NODE" -ge 1 ] 2>/dev/null || S1_NPROC_PER_NODE=1
fi

# Communication settings (NCCL/IB, threads), then site specifics (modules, interfaces).
# shellcheck source=slurm/env.sh
source "$S1_HOME/slurm/env.sh"
if [ -n "${S1_SITE_ENV:-}" ]; then
    # shellcheck disable=SC1090
    source "$S1_SITE_ENV"
fi

NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
RDZV_HOST=${S1_RDZV_HOST:-$(hostname)}
RDZV_PORT=${S1_RDZV_PORT:-29500}
CMD=("$PYTHON" -m torch.distributed.run
     --nnodes="$NNODES" --nproc-per-node="$S1_NPROC_PER_NODE"
     --rdzv-backend=c10d --rdzv-endpoint="$RDZV_HOST:$RDZV_PORT"
     --rdzv-id="${SLURM_JOB_ID:-local}-${SLURM_RESTART_COUNT:-0}"
     --max-restarts="${S1_MAX_RESTARTS:-0}"
     --no-python megatron-s1 "${S1_COMMAND:-train}" --config "$RECIPE" "$@")
if [ "${S1_DRY_RUN:-0}" = 1 ]; then
    # Read the recipe and overrides as every worker will (a bad one: one error line, exit 2), print the command.
    megatron-s1 config --config "$RECIPE" "$@" >/dev/null || exit $?
    printf '%q ' "${CMD[@]}"
    echo
    exit 0
fi
if [ "${SLURM_NODEID:-0}" = 0 ]; then
    echo "[node $(hostname)] $(printf '%q ' "${CMD[@]}")"
fi

# SIG_IGN survives exec: torchrun (and the workers, until they install their handler) ignore USR1.
( trap '' USR1; exec "${CMD[@]}" ) &
TORCHRUN=$!

workers() {
    local f
    for f in /proc/"$TORCHRUN"/task/*/children; do
        [ -r "$f" ] && cat "$f" 2>/dev/null && return 0
    done
    pgrep -P "$TORCHRUN" 2>/dev/null
}
catches_usr1() {  # SigCgt in /proc/PID/status: the process has a handler for SIGUSR1 (bit 10 - 1)
    local key value
    while read -r key value; do
        [ "$key" = SigCgt: ] && { (( 0x$value & 0x200 )); return; }
    done < /proc/"$1"/status 2>/dev/null
    return 1
}
# Each worker gets SIGUSR1 exactly once, as soon as it has a handler for it: not while it still
# ignores it (start-up), and never after Python has put back the default action (interpreter exit).
preempt_workers() {
    local pid done=" "
    while kill -0 "$TORCHRUN" 2>/dev/null; do
        for pid in $(workers); do
            case $done in *" $pid "*) continue ;; esac
            if catches_usr1 "$pid"; then kill -USR1 "$pid" 2>/dev/null; done+="$pid "; fi
        done
        sleep 1
    done
}

REPEATER=
on_usr1() {
    [ -n "${S1_PREEMPT_MARKER:-}" ] && touch "$S1_PREEMPT_MARKER" 2>/dev/null
    [ -n "$REPEATER" ] && return
    echo "[node $(hostname)] SIGUSR1: workers save a checkpoint and stop"
    preempt_workers &
    REPEATER=$!
}
on_term() { kill -TERM "$TORCHRUN" 2>/dev/null; }
trap on_usr1 USR1
trap on_term TERM INT

while :; do
    wait "$TORCHRUN"
    RC=$?
    kill -0 "$TORCHRUN" 2>/dev/null || break
done
[ -n "$REPEATER" ] && kill "$REPEATER" 2>/dev/null
exit "$RC"
