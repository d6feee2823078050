"""The batched log-likelihood scorer against a plain full forward pass, and sliding windows."""

from __future__ import annotations

import random

import pytest
import torch

from lhama.errors import ContextLengthExceededError
from lhama.eval.loglik import LogLikelihood, rolling_logprob, sliding_windows


def _reference(model, tokens, first):
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([tokens[:-1]])).double(), -1)[0]
    tgt = tokens[first:]
    rows = logp[first - 1 : len(tokens) - 1]
    lp = rows.gather(1, torch.tensor(tgt)[:, None]).sum().item()
    greedy = bool((rows.argmax(-1) == torch.tensor(tgt)).all())
    return lp, greedy


def test_spans_of_mixed_lengths_match_unbatched_forward(tiny_lm):
    rng = random.Random(0)
    model = tiny_lm.model
    spans = []
    for n in (2, 5, 17, 40, 3, 64, 9):
        toks = [rng.randrange(model.args.vocab_size) for _ in range(n)]
        spans.append((toks, rng.randrange(1, n)))
    # A small token budget forces several batches; a tiny head chunk forces several head passes.
    ll = LogLikelihood(model, max_batch_tokens=70)
    ll._head_rows = 7
    got = ll.score_spans(spans)
    for (toks, first), s in zip(spans, got):
        lp, greedy = _reference(model, toks, first)
        assert s.logprob == pytest.approx(lp, abs=1e-3)
        assert s.num_tokens == len(toks) - first
        assert s.greedy == greedy


def test_greedy_flag_is_true_for_the_models_own_argmax(tiny_lm):
    model = tiny_lm.model
    toks = [5, 9, 11]
    with torch.inference_mode():
        for _ in range(4):
            toks.append(int(model(torch.tensor([toks]))[0, -1].argmax()))
    s = LogLikelihood(model).continuation([(toks[:3], toks[3:])])[0]
    assert s.greedy and s.num_tokens == 4


def test_long_contexts_are_cut_from_the_left(tiny_lm):
    ll = LogLikelihood(tiny_lm.model, max_length=16)
    ctx, cont = list(range(1, 30)), [7, 8, 9]
    got = ll.continuation([(ctx, cont)])[0]
    # 17 tokens fit (16 read + the last one predicted): the last 14 of the context and the 3 scored.
    want = ll.continuation([(ctx[-14:], cont)])[0]
    assert got.logprob == pytest.approx(want.logprob, abs=1e-4)
    with pytest.raises(ContextLengthExceededError):
        ll.continuation([([1], list(range(2, 40)))])


@pytest.mark.parametrize("n,window,stride", [(1, 4, 4), (10, 4, 4), (10, 4, 1), (37, 8, 3), (8, 8, 8), (9, 8, 5)])
def test_sliding_windows_score_every_token_once(n, window, stride):
    scored = []
    for a, b, first in sliding_windows(n, window, stride):
        assert b - a <= window and 1 <= first and a < first <= b
        scored += list(range(first, b + 1))
        if a > 0:  # after the first window every target keeps window - stride tokens of context
            assert first - a >= window - stride
    assert scored == list(range(1, n + 1))


def test_rolling_logprob_equals_full_context_when_the_window_holds_the_document(tiny_lm):
    model, rng = tiny_lm.model, random.Random(3)
    docs = [[rng.randrange(model.args.vocab_size) for _ in range(n)] for n in (30, 12, 1)]
    ll = LogLikelihood(model)
    full = rolling_logprob(ll, docs, prefix=0, window=64, stride=64)
    for d, s in zip(docs, full):
        lp, _ = _reference(model, [0] + d, 1)
        assert s.logprob == pytest.approx(lp, abs=1e-3) and s.num_tokens == len(d)
    # Shorter windows see less context: a different (but per-token complete) score.
    short = rolling_logprob(ll, docs, prefix=0, window=8, stride=4)
    assert [s.num_tokens for s in short] == [30, 12, 1]
    assert short[0].logprob != pytest.approx(full[0].logprob, abs=1e-3)
