"""One writer per run directory: `run.dir/.lock`, held with flock(2) by rank 0 for the whole run.

The kernel drops a flock when its holder dies (kill -9 included), so a stale lock never blocks a requeued run;
a second live run on the same run.dir fails at start, on every rank, before touching anything. (flock is
node-local on some network file systems: two runs on different nodes sharing one run.dir are not detected there.)
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from typing import Iterator

import torch.distributed as dist

from megatron_s1.config.schema import RunError

LOCK_FILE = ".lock"


def _try_lock(run_dir: str):
    """(fd, None) when locked, (None, holder description) when another process holds it."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's pid stays readable
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        return None, holder
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd, None


@contextlib.contextmanager
def run_dir_lock(run_dir: str) -> Iterator[None]:
    """Hold run_dir's lock (rank 0) for the block; RunError on every rank when another run holds it."""
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    fd, holder = _try_lock(run_dir) if rank0 else (None, None)
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [holder]
        dist.broadcast_object_list(box, src=0)
        holder = box[0]
    if holder is not None:
        raise RunError(f"run.dir {run_dir} is in use by another run ({holder} holds {os.path.join(run_dir, LOCK_FILE)})"
                       "; wait for it to finish or choose another run.dir")
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock
