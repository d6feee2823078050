"""LLM-as-judge: the judging prompt, the verdict parser, and how two judgments (both answer
orders) combine into one win / tie / loss with rates and confidence intervals.

Judges prefer whichever answer they read first (or second) more often than chance, so every
pair is judged twice, with the answers swapped; a model wins a prompt only when the two orders
together favour it. The report shows how often the judge picked the first slot, which measures
that bias directly.
"""

from __future__ import annotations

import re

from lhama.eval.stats import Estimate, wilson

JUDGE_SYSTEM = "You are a careful and impartial judge of answers written by AI assistants."

JUDGE_TEMPLATE = """Two assistants answered the same user question. Decide which answer serves the user better: \
correct, helpful, clear, in the language of the question. The order of the answers and the names of the \
assistants mean nothing; longer is not better unless it adds something the user needs.

[Question]
{question}

[Answer of Assistant A]
{first}

[Answer of Assistant B]
{second}

Explain your reasoning in one or two sentences, then write your verdict on the last line as exactly one of: \
[[A]] if Assistant A's answer is better, [[B]] if Assistant B's answer is better, [[C]] if they are equally good."""

_BRACKETED = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_LABELLED = re.compile(r"verdict\s*(?:is)?\s*[:：]?\s*\**\s*\[?\s*(A|B|C|tie)\b", re.IGNORECASE)
_PROSE = re.compile(r"assistant\s+(A|B)(?:'s answer)?\s+is\s+better", re.IGNORECASE)
_TIE = re.compile(r"\b(it'?s a tie|tie|equally good)\b", re.IGNORECASE)


def judge_prompt(question: str, first: str, second: str) -> list[dict]:
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {"role": "user", "content": JUDGE_TEMPLATE.format(question=question, first=first, second=second)},
    ]


def parse_verdict(text: str) -> str | None:
    """ "A", "B" (the first / second answer shown), "tie", or None when the judge gave no verdict.
    The bracketed form wins; the last one counts (judges restate the options before deciding)."""
    for pat in (_BRACKETED, _LABELLED, _PROSE):
        found = pat.findall(text)
        if found:
            v = found[-1].upper()
            return "tie" if v in ("C", "TIE") else v
    return "tie" if _TIE.search(text) else None


_SCORE = {"A": 1, "B": -1, "tie": 0, None: 0}


def combine(verdict_ab: str | None, verdict_ba: str | None) -> str:
    """The outcome for model A from the judgment with A's answer first (``verdict_ab``) and the
    one with B's answer first (``verdict_ba``): each order votes +1 / 0 / -1 for A."""
    score = _SCORE[verdict_ab] - _SCORE[verdict_ba]
    return "win" if score > 0 else "loss" if score < 0 else "tie"


def summarize(records: list[dict]) -> dict[str, Estimate]:
    """Win / tie / loss rates of model A (Wilson 95% intervals), A's win rate over the prompts
    whose two orders agree on a winner, the judge's consistency across orders, its preference
    for the first slot, and how many judgments had no verdict."""
    n = len(records)
    out = {f"{o}_rate": wilson(sum(r["outcome"] == o for r in records), n) for o in ("win", "tie", "loss")}
    # Ties count half: the usual single number for "how often is A preferred".
    out["win_rate_ties_half"] = wilson(sum({"win": 1.0, "tie": 0.5}.get(r["outcome"], 0.0) for r in records), n)
    both = [r for r in records if r["verdict_ab"] is not None and r["verdict_ba"] is not None]
    out["order_consistency"] = wilson(sum(_SCORE[r["verdict_ab"]] == -_SCORE[r["verdict_ba"]] for r in both), len(both))
    # Only the prompts where both orders name the same winner: a position-biased judge's votes
    # cancel out of this one instead of turning into ties (its n says how many prompts it rests on).
    agreed = [r for r in records if {r["verdict_ab"], r["verdict_ba"]} == {"A", "B"}]
    out["consistent_win_rate"] = wilson(sum(r["verdict_ab"] == "A" for r in agreed), len(agreed))
    decisive = [v for r in records for v in (r["verdict_ab"], r["verdict_ba"]) if v in ("A", "B")]
    out["first_slot_preference"] = wilson(sum(v == "A" for v in decisive), len(decisive))
    verdicts = [v for r in records for v in (r["verdict_ab"], r["verdict_ba"])]
    out["no_verdict_rate"] = wilson(sum(v is None for v in verdicts), len(verdicts))
    return out
