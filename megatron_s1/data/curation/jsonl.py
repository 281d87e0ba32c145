"""jsonl reading and writing with one-line errors that name the file, the line and the fix."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator

from megatron_s1.atomic import atomic_open
from megatron_s1.data.curation.errors import CurationError


def check_input(path: str, what: str = "input") -> None:
    """Raise CurationError unless ``path`` is an existing, readable file."""
    if not os.path.exists(path):
        raise CurationError(f"{what} {path!r} does not exist", "check the path")
    if os.path.isdir(path):
        raise CurationError(f"{what} {path!r} is a directory", "pass a file")


def iter_jsonl(path: str, require: dict[str, str] | None = None) -> Iterator[dict]:
    """Yield one dict per non-empty line; bad JSON, non-objects or missing required keys raise
    CurationError naming ``path:line``. ``require`` maps a required key to the option that names it."""
    from megatron_s1.data.jsonl_input import text_lines

    check_input(path)
    require = require or {}
    for lineno, line in text_lines(path, CurationError):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise CurationError(f"{path}:{lineno} is not valid JSON ({err.msg})",
                                "each line must be one JSON object, e.g. {\"text\": \"...\"}") from None
        if not isinstance(obj, dict):
            raise CurationError(f"{path}:{lineno} is a JSON {type(obj).__name__}, not an object",
                                "each line must be one JSON object, e.g. {\"text\": \"...\"}")
        for key, option in require.items():
            if key not in obj:
                raise CurationError(f"{path}:{lineno} has no {key!r} field (fields: {', '.join(obj) or 'none'})",
                                    f"add it or name the right field with {option}")
        yield obj


def text_of(obj: dict, key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise CurationError(f"{where}: field {key!r} is {type(value).__name__}, not a string",
                            "point the --text-key option at the field holding the document text")
    return value


class JsonlWriter:
    """Context manager writing one JSON object per line (UTF-8, no ASCII escaping); creates parent dirs.

    Atomic: lines go to a temporary file next to `path`, renamed over it only when the block ends without an error,
    so a failed run neither leaves a partial output nor destroys an existing one."""

    def __init__(self, path: str):
        self.path = path
        self.count = 0

    def __enter__(self):
        self._file = atomic_open(self.path)
        self._f = self._file.__enter__()
        return self

    def write(self, obj: dict) -> None:
        self._f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.count += 1

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)


def write_json(path: str, obj) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
