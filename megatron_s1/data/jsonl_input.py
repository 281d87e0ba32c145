"""Reading jsonl inputs (SFT and multimodal data, RL prompts, preprocess and curation inputs) with errors that name
`file:line` and the fix: a line that is not JSON, bytes that are not UTF-8, a missing file."""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator

from megatron_s1.config.schema import ConfigError

ONE_OBJECT = "each line must be one JSON object"


def text_lines(path: str, error: Callable[[str], Exception] = ConfigError, what: str = "input") -> Iterator[tuple[int, str]]:
    """(line number, decoded line) of a UTF-8 text file; `error(message)` builds the exception raised."""
    if not os.path.exists(path):
        raise error(f"{what} {path!r} does not exist; check the path")
    if os.path.isdir(path):
        raise error(f"{what} {path!r} is a directory; pass a .jsonl file")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise error(f"{path}:{number}: byte 0x{raw[err.start]:02x} at column {err.start + 1} is not UTF-8; "
                            "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def json_lines(path: str, error: Callable[[str], Exception] = ConfigError, what: str = "input") -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line of a jsonl file."""
    for number, line in text_lines(path, error, what):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise error(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno}); {ONE_OBJECT}") from None
