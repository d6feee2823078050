"""Multiple choice by log-likelihood (the MMLU / HellaSwag / ARC way).

Every choice is scored as a continuation of the question; the prediction is the choice with the
highest log-likelihood (``acc``) or the highest log-likelihood per character (``acc_norm``, which
removes the bias towards short answers). Two prompt formats:

- ``cloze``: "Question: Q\\nAnswer:" continued by " <choice text>"
- ``mmlu``:  the question, the choices lettered "A. ...", then "Answer:" continued by " A", " B"...

An item's ``labels`` ([question label, answer label]) replace "Question:" / "Answer:", so a task
in another language is prompted in that language.
"""

from __future__ import annotations

from lhama.eval.context import EvalContext
from lhama.eval.stats import Estimate, wilson

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def requests(item: dict) -> tuple[str, list[str]]:
    """(context, continuations) of one item."""
    q = item["question"].strip()
    q_label, a_label = item.get("labels") or ("Question:", "Answer:")
    if item.get("format", "cloze") == "mmlu":
        lines = [q] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"])]
        return "\n".join(lines) + f"\n{a_label}", [f" {LETTERS[i]}" for i in range(len(item["choices"]))]
    return f"{q_label} {q}\n{a_label}", [f" {c.strip()}" for c in item["choices"]]


def split_tokens(ctx: EvalContext, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation, cut from the encoding of the whole string so that
    a merge across the boundary is tokenized as the model saw it in training."""
    whole = ctx.encode(context + continuation)
    head = ctx.encode(context)
    return whole[: len(head)], whole[len(head) :] or ctx.tokenizer.encode(continuation)


def score(ctx: EvalContext, items: list[dict]) -> list[dict]:
    pairs, owner = [], []
    conts = []
    for i, it in enumerate(items):
        context, continuations = requests(it)
        conts.append(continuations)
        for c in continuations:
            pairs.append(split_tokens(ctx, context, c))
            owner.append(i)
    scores = ctx.ll.continuation(pairs)
    lls: list[list[float]] = [[] for _ in items]
    for i, s in zip(owner, scores):
        lls[i].append(s.logprob)
    out = []
    for it, ll, cs in zip(items, lls, conts):
        pred = max(range(len(ll)), key=ll.__getitem__)
        normed = [v / len(c.strip()) for v, c in zip(ll, cs)]
        pred_norm = max(range(len(ll)), key=normed.__getitem__)
        out.append(
            {
                "id": it["id"],
                "loglikelihoods": ll,
                "pred": pred,
                "pred_norm": pred_norm,
                "answer": it["answer"],
                "correct": pred == it["answer"],
                "correct_norm": pred_norm == it["answer"],
            }
        )
    return out


def aggregate(records: list[dict]) -> dict[str, Estimate]:
    n = len(records)
    return {
        "acc": wilson(sum(r["correct"] for r in records), n),
        "acc_norm": wilson(sum(r["correct_norm"] for r in records), n),
    }


PRIMARY = "acc"
