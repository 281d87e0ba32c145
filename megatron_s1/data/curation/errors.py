"""One error type for the curation tools: the message is one line naming the problem and the fix."""
from __future__ import annotations


class CurationError(Exception):
    """Bad input or configuration. ``str(err)`` is a single line: what is wrong, then how to fix it."""

    def __init__(self, problem: str, fix: str | None = None):
        message = problem if not fix else f"{problem}; {fix}"
        super().__init__(" ".join(message.split()))
