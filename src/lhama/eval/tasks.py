"""Evaluation tasks: a JSONL file of items, shipped with lhama or the user's own.

One line is one item. The task's kind follows from the fields of its items (or ``--kind``):

- perplexity:       ``{"text": ...}``
- multiple_choice:  ``{"question": ..., "choices": [...], "answer": INDEX}`` (+ ``"format": "cloze"|"mmlu"``)
- generative:       ``{"prompt": ..., "answer": STR | NUMBER | [accepted...]}``
                    (+ ``"extract": "exact"|"regex"|"numeric"``, ``"pattern"`` for regex)
- code:             ``{"prompt": ..., "tests": "assert ..."}``
- pairwise:         ``{"prompt": ...}`` (the prompts of ``lhama compare``)

Every item may carry an ``"id"`` (default: its line number); ids must be unique because the
resumable results file is keyed by them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lhama.errors import ConfigError
from lhama.jsonl import iter_objects

KINDS = ("perplexity", "multiple_choice", "generative", "code", "pairwise")
EXTRACTORS = ("exact", "regex", "numeric")
MC_FORMATS = ("cloze", "mmlu")


class EvalTaskError(ConfigError):
    """A task name that is not shipped, a file that is not valid JSONL, or an item without the
    fields its kind needs. Names the file and the line."""

    code = "invalid_eval_task"


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    items: tuple[dict, ...]
    source: str  # the file it came from
    sha256: str  # of the file's bytes: a resumed run must see the same data

    def __len__(self) -> int:
        return len(self.items)

    def limited(self, limit: int | None) -> Task:
        if limit is None or limit >= len(self.items):
            return self
        if limit < 1:
            raise EvalTaskError(f"--limit must be >= 1, got {limit}")
        return Task(self.name, self.kind, self.items[:limit], self.source, self.sha256)


def shipped_dir() -> Path:
    return Path(str(resources.files("lhama") / "data" / "eval"))


def shipped_tasks() -> dict[str, Path]:
    """Name -> file of every task shipped in ``lhama/data/eval``."""
    return {p.stem: p for p in sorted(shipped_dir().glob("*.jsonl"))}


def infer_kind(item: dict) -> str:
    if "text" in item:
        return "perplexity"
    if "choices" in item:
        return "multiple_choice"
    if "tests" in item:
        return "code"
    if "answer" in item:
        return "generative"
    if "prompt" in item:
        return "pairwise"
    raise EvalTaskError(
        f"cannot tell the task kind of an item with fields {sorted(item)}; "
        f"expected one of: text / question+choices+answer / prompt+answer / prompt+tests / prompt"
    )


def _check_item(item: dict, kind: str, where: str) -> None:
    def bad(msg):
        raise EvalTaskError(f"{where}: {msg}")

    def need_str(key):
        if not isinstance(item.get(key), str) or not item[key].strip():
            bad(f"a {kind} item needs a non-empty string '{key}'")

    if kind == "perplexity":
        need_str("text")
    elif kind == "multiple_choice":
        need_str("question")
        ch = item.get("choices")
        if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) and c for c in ch):
            bad("'choices' must be a list of at least two non-empty strings")
        a = item.get("answer")
        if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < len(ch):
            bad(f"'answer' must be the index of the right choice (0..{len(ch) - 1}), got {a!r}")
        if item.get("format", "cloze") not in MC_FORMATS:
            bad(f"'format' must be one of {MC_FORMATS}, got {item['format']!r}")
        lab = item.get("labels")
        if lab is not None and not (isinstance(lab, list) and len(lab) == 2 and all(isinstance(x, str) for x in lab)):
            bad("'labels' must be [question label, answer label]")
    elif kind == "generative":
        need_str("prompt")
        a = item.get("answer")
        ok = (
            isinstance(a, (str, int, float))
            and not isinstance(a, bool)
            or (isinstance(a, list) and a and all(isinstance(x, (str, int, float)) for x in a))
        )
        if not ok:
            bad("'answer' must be a string, a number, or a list of accepted answers")
        ex = item.get("extract", "exact")
        if ex not in EXTRACTORS:
            bad(f"'extract' must be one of {EXTRACTORS}, got {ex!r}")
        if ex == "regex":
            import re

            need_str("pattern")
            try:
                re.compile(item["pattern"])
            except re.error as e:
                bad(f"'pattern' is not a valid regular expression: {e}")
    elif kind == "code":
        need_str("prompt")
        need_str("tests")
    elif kind == "pairwise":
        need_str("prompt")


def load_task(spec: str | Path, *, kind: str | None = None) -> Task:
    """A shipped task by name, or a JSONL file. Validates every item before anything runs."""
    path = Path(spec).expanduser()
    if not path.is_file():
        known = shipped_tasks()
        if str(spec) not in known:
            raise EvalTaskError(
                f"--task '{spec}' is neither a JSONL file nor a shipped task; shipped tasks: "
                f"{', '.join(known)} (see `lhama eval --list`)"
            )
        path = known[str(spec)]
    if kind is not None and kind not in KINDS:
        raise EvalTaskError(f"--kind must be one of {KINDS}, got {kind!r}")
    items: list[dict] = []
    for n, item in iter_objects(path, EvalTaskError):
        item.setdefault("id", str(n))
        item["id"] = str(item["id"])
        items.append(item)
    if not items:
        raise EvalTaskError(f"{path}: the task has no items")
    kind = kind or infer_kind(items[0])
    seen: set[str] = set()
    for item in items:
        _check_item(item, kind, f"{path}: item {item['id']}")
        if item["id"] in seen:
            raise EvalTaskError(f"{path}: item id {item['id']!r} appears twice; ids must be unique")
        seen.add(item["id"])
    return Task(path.stem, kind, tuple(items), str(path), hashlib.sha256(path.read_bytes()).hexdigest())
