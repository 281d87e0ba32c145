"""Atomic file writes: write beside the target, rename over it only when the writing block succeeds.

Every output of the project that a failed run could truncate or leave half-written (checkpoint metadata, the
`latest` pointer, metrics, token tables, preprocessed datasets, curation outputs) goes through here: a failure
leaves the earlier file untouched and no temporary file behind.
"""
from __future__ import annotations

import contextlib
import os
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path`` for a writer that opens files itself; on success it replaces
    ``path`` (``os.replace``: atomic on POSIX), on any exception it is removed and the exception propagates."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", fsync: bool = False) -> Iterator[IO]:
    """``open(path, mode)`` whose content appears at ``path`` only if the block ends without an exception
    (text modes are UTF-8). ``fsync``: flush to disk before the rename (pointers a crash must not lose)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
