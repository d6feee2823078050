"""Checks for the default-model tasks (``lhama.train.default_model_data``): each scores one answer
to one record in [0, 1], and ``TaskReward`` plugs them into rejection sampling.

- ``tool_call``: 1 when the answer is one code-interpreter call (parsed as the agent parses it)
  whose code, run in the sandbox, prints the expected result; 0.5 for a call that prints
  something else; 0 for no call.
- ``tool_answer`` / ``brief`` / ``phrase``: the expected text appears in a short answer.
- ``rag``: the answer states the fact and cites the right source, and no number that is no source.
A long answer (more words than ``MAX_WORDS`` of its task) loses half its score: these tasks all
want short answers that stop.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence

from lhama.rag.answer import parse_citations
from lhama.train.rewards import Reward

MAX_WORDS = {"tool_answer": 30, "brief": 20, "phrase": 25, "rag": 40}
_CALL = re.compile(r"^\s*<tool_call>\s*(\{.*\})\s*</tool_call>\s*$", re.DOTALL)


def parse_tool_call(text: str) -> str | None:
    """The code of a whole-turn code-interpreter call in SmolLM2's ``<tool_call>`` format, or None."""
    m = _CALL.match(text)
    if not m:
        return None
    try:
        call = json.loads(m.group(1))
    except json.JSONDecodeError:
        return None
    args = call.get("arguments") if isinstance(call, dict) else None
    if call.get("name") != "code_interpreter" or not isinstance(args, dict) or not isinstance(args.get("code"), str):
        return None
    return args["code"]


def normalize(text: str) -> str:
    """Case, accents, thousands separators and spacing folded, so "1,234" matches "1234"."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    return re.sub(r"\s+", " ", text).strip()


def contains(answer: str, expected: str) -> bool:
    a, e = normalize(answer), normalize(expected)
    if re.fullmatch(r"-?\d+(\.\d+)?", e):  # a number must not be part of a longer one
        return re.search(rf"(?<![\d.]){re.escape(e)}(?![\d])", a) is not None
    return e in a


def run_printed(code: str) -> str | None:
    """What ``code`` prints in the sandbox (None when it fails)."""
    from lhama.tools.sandbox import SandboxLimits, run_python

    res = run_python(code, limits=SandboxLimits(cpu_seconds=5, wall_seconds=10))
    return res.stdout.strip() if res.ok else None


def check(record: dict, answer: str) -> float:
    task = record["task"]
    if task == "tool_call":
        code = parse_tool_call(answer)
        if code is None:
            return 0.0
        printed = run_printed(code)
        return 1.0 if printed is not None and normalize(printed) == normalize(record["expected"]) else 0.5
    if task == "rag":
        cited, unknown = parse_citations(answer, record["n_sources"])
        score = float(contains(answer, record["expected"]) and record["source"] in cited and not unknown)
    elif task in ("tool_answer", "brief", "phrase"):
        score = float(contains(answer, record["expected"]) and parse_tool_call(answer) is None)
    else:
        raise ValueError(f"unknown default-model task {task!r}")
    if len(answer.split()) > MAX_WORDS[task]:
        score *= 0.5
    return score


class TaskReward(Reward):
    """Rejection-sampling reward: ``check`` for each candidate (the record says which task)."""

    name = "default-model-checks"

    def score(self, record: dict, candidates: Sequence[str]) -> list[float]:
        return [check(record, c) for c in candidates]


__all__ = ["MAX_WORDS", "TaskReward", "check", "contains", "normalize", "parse_tool_call", "run_printed"]
