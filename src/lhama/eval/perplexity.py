"""Perplexity over documents with a sliding window.

Each document is scored token by token after a BOS/EOS prefix; windows of ``window`` tokens move
by ``stride`` so every token keeps at least ``window - stride`` tokens of context. Reported at
corpus level (total log-probability over total units): per token (depends on the tokenizer), per
word and bits per byte (comparable across tokenizers).
"""

from __future__ import annotations

import math

from lhama.eval.context import EvalContext
from lhama.eval.loglik import rolling_logprob
from lhama.eval.stats import Estimate, bootstrap


def window_and_stride(ctx: EvalContext) -> tuple[int, int]:
    window = ctx.cfg.window or min(ctx.loaded.args.max_seq_len, 1024)
    stride = ctx.cfg.stride or max(1, window // 2)
    return window, min(stride, window)


def score(ctx: EvalContext, items: list[dict]) -> list[dict]:
    window, stride = window_and_stride(ctx)
    docs = [ctx.tokenizer.encode(it["text"]) for it in items]
    scores = rolling_logprob(ctx.ll, docs, ctx.prefix, window, stride)
    return [
        {
            "id": it["id"],
            "logprob": s.logprob,
            "tokens": s.num_tokens,
            "words": len(it["text"].split()),
            "bytes": len(it["text"].encode("utf-8")),
        }
        for it, s in zip(items, scores)
    ]


def _corpus(recs, unit: str) -> float:
    return -sum(r["logprob"] for r in recs) / max(1, sum(r[unit] for r in recs))


def aggregate(records: list[dict]) -> dict[str, Estimate]:
    n = len(records)
    per_token = lambda rs: math.exp(_corpus(rs, "tokens"))  # noqa: E731
    return {
        "token_perplexity": bootstrap(records, per_token),
        "word_perplexity": Estimate(math.exp(_corpus(records, "words")), n=n),
        "bits_per_byte": bootstrap(records, lambda rs: _corpus(rs, "bytes") / math.log(2)),
    }


PRIMARY = "bits_per_byte"
