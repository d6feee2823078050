"""Generative tasks: the model answers a prompt (greedy, through the engine) and an extractor
checks the answer.

- ``exact``:   the whole answer, normalised (case, spacing, quotes, end punctuation), equals one
               of the accepted answers
- ``regex``:   the first match of the item's ``pattern`` (its first group, if it has one),
               normalised, equals one of the accepted answers (first, as lm-evaluation-harness's
               regex filter: an answer usually comes before its explanation)
- ``numeric``: the last number in the answer equals the accepted number (thousands separators,
               decimal commas and non-Latin digits such as Thai or Devanagari are understood)
"""

from __future__ import annotations

import math
import re
import string
import unicodedata

from lhama.eval.context import EvalContext
from lhama.eval.stats import Estimate, wilson

_PUNCT = string.punctuation + "。、！？「」『』“”‘’«»।॥"
# A number: optional sign, digits (any script) with optional grouping, optional decimals, an
# optional "/denominator" (3/4).
_NUMBER = re.compile(r"[-−+]?\d+(?:[,.\u202f\u00a0]\d{3})*(?:[.,]\d+)?(?:/\d+)?")


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold().strip()
    text = " ".join(text.split())
    return text.strip(_PUNCT + " ")


def parse_number(token: str) -> float | None:
    """The value of one number as people write it (see ``_NUMBER``), or None."""
    t = token.strip().removeprefix("$").replace("−", "-").replace("\u202f", "").replace("\u00a0", "")
    if "/" in t:
        num, _, den = t.partition("/")
        a, b = parse_number(num), parse_number(den)
        return a / b if a is not None and b else None
    # "1,234" and "1.234.567" group thousands; "3,5" is a decimal comma.
    if re.fullmatch(r"[-+]?\d+(,\d{3})+(\.\d+)?", t):
        t = t.replace(",", "")
    elif re.fullmatch(r"[-+]?\d+(\.\d{3}){2,}(,\d+)?", t) or re.fullmatch(r"[-+]?\d+(\.\d{3})+,\d+", t):
        t = t.replace(".", "").replace(",", ".")
    elif re.fullmatch(r"[-+]?\d+,\d+", t):
        t = t.replace(",", ".")
    try:
        return float(t)  # float() reads digits of every script: "๔๒" -> 42.0
    except ValueError:
        return None


def numbers_in(text: str) -> list[tuple[str, float]]:
    """Every number of ``text`` (NFKC-normalised) as (its text, its value), in order. The one
    number reader of lhama: generative eval tasks and the rejection-sampling rewards use it."""
    found = ((m.group(), parse_number(m.group())) for m in _NUMBER.finditer(unicodedata.normalize("NFKC", text)))
    return [(t, v) for t, v in found if v is not None]


def extract_number(text: str) -> float | None:
    """The last number of ``text`` (an answer usually ends with it)."""
    nums = numbers_in(text)
    return nums[-1][1] if nums else None


def accepted(item: dict) -> list:
    a = item["answer"]
    return a if isinstance(a, list) else [a]


def extract(item: dict, output: str) -> str | float | None:
    how = item.get("extract", "exact")
    if how == "numeric":
        return extract_number(output)
    if how == "regex":
        m = re.search(item["pattern"], output, flags=re.IGNORECASE | re.MULTILINE)
        if m is None:
            return None
        return normalise(m.group(1) if m.groups() else m.group())
    return normalise(output)


def is_correct(item: dict, extracted) -> bool:
    if extracted is None:
        return False
    if item.get("extract", "exact") == "numeric":
        golds = [g if isinstance(g, (int, float)) else parse_number(str(g)) for g in accepted(item)]
        return any(g is not None and math.isclose(extracted, g, rel_tol=1e-6, abs_tol=1e-9) for g in golds)
    return any(extracted == normalise(str(g)) for g in accepted(item))


def score(ctx: EvalContext, items: list[dict]) -> list[dict]:
    from lhama.generate import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=ctx.cfg.max_tokens)
    outputs = ctx.generate([it["prompt"] for it in items], params)
    out = []
    for it, (text,) in zip(items, outputs):
        got = extract(it, text)
        out.append({"id": it["id"], "output": text, "extracted": got, "correct": is_correct(it, got)})
    return out


def aggregate(records: list[dict]) -> dict[str, Estimate]:
    n = len(records)
    return {
        "accuracy": wilson(sum(r["correct"] for r in records), n),
        "answered": wilson(sum(r["extracted"] is not None for r in records), n),
    }


PRIMARY = "accuracy"
