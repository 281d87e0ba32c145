"""Helper processes that must not outlive the trainer: kill -9 of the trainer runs no cleanup of its own."""
from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Initializer of a spawned helper process: the kernel SIGKILLs it when the process (thread) that started it
    dies. (Kept in this light module: a spawned child imports it before anything else.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
