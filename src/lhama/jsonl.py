"""Reading JSONL files a user hands us (training data, eval tasks): every bad line is reported
with its file and line number, never skipped, and the error is the caller's typed error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from lhama.errors import ConfigError, LhamaError


def iter_objects(path: str | Path, error: type[LhamaError] = ConfigError) -> Iterator[tuple[int, dict]]:
    """``(line_number, object)`` for each non-blank line of ``path``; raises ``error`` on a line that is
    not UTF-8, not JSON, or not a JSON object."""
    path = Path(path)
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise error(f"{path}:{n}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise error(f"{path}:{n}: each line must be a JSON object")
            yield n, obj
