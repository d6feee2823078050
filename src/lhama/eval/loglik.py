"""Batched log-likelihoods of token spans: the one primitive behind perplexity, multiple choice,
the log-probability judge and the lm-eval adapter.

A span is ``(tokens, first)``: the model reads ``tokens[:-1]`` and we score ``tokens[first:]``
(``first >= 1``), each token given everything before it. Spans of similar length are batched
with right padding (causal attention: padding after a position never changes it). The LM head
runs only on the scored rows, in chunks, so a 128K vocabulary never materialises [B, T, V].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lhama.errors import ContextLengthExceededError


@dataclass(frozen=True)
class SpanScore:
    logprob: float  # sum over the scored tokens
    num_tokens: int
    greedy: bool  # every scored token is the model's argmax


class LogLikelihood:
    def __init__(self, model, *, max_batch_tokens: int = 4096, max_length: int | None = None):
        self.model = model
        self.max_batch_tokens = max_batch_tokens
        self.max_length = max_length or model.args.max_seq_len
        # Rows of the LM head computed at once: about 256 MB of fp32 logits.
        self._head_rows = max(1, 2**26 // model.args.vocab_size)

    @torch.inference_mode()
    def score_spans(self, spans: Sequence[tuple[Sequence[int], int]]) -> list[SpanScore]:
        for tokens, first in spans:
            if not 1 <= first < len(tokens):
                raise ValueError(f"span needs 1 <= first < len(tokens), got first={first}, len={len(tokens)}")
            if len(tokens) - 1 > self.max_length:
                raise ContextLengthExceededError(len(tokens) - 1, 0, self.max_length)
        order = sorted(range(len(spans)), key=lambda i: -len(spans[i][0]))
        out: list[SpanScore | None] = [None] * len(spans)
        i = 0
        while i < len(order):
            T = len(spans[order[i]][0]) - 1
            B = max(1, min(len(order) - i, self.max_batch_tokens // max(T, 1)))
            batch = order[i : i + B]
            for j, s in zip(batch, self._score_batch([spans[k] for k in batch], T)):
                out[j] = s
            i += B
        return out  # type: ignore[return-value]

    def _score_batch(self, spans, T: int) -> list[SpanScore]:
        model = self.model
        dev = model.device
        inp = torch.zeros(len(spans), T, dtype=torch.long)
        for b, (tokens, _) in enumerate(spans):
            inp[b, : len(tokens) - 1] = torch.tensor(tokens[:-1])
        inp = inp.to(dev)
        positions = torch.arange(T, device=dev).expand(len(spans), T)
        h = model.hidden_states(inp, positions)
        rows, targets, owner = [], [], []
        for b, (tokens, first) in enumerate(spans):
            rows.append(h[b, first - 1 : len(tokens) - 1])
            targets.extend(tokens[first:])
            owner.extend([b] * (len(tokens) - first))
        hs = torch.cat(rows)
        tgt = torch.tensor(targets, device=dev)
        lp = torch.empty(len(targets), dtype=torch.float64)
        hit = torch.empty(len(targets), dtype=torch.bool)
        for s in range(0, len(targets), self._head_rows):
            logits = model.output(hs[s : s + self._head_rows]).float()
            logp = torch.log_softmax(logits, dim=-1)
            t = tgt[s : s + self._head_rows]
            lp[s : s + len(t)] = logp.gather(1, t[:, None])[:, 0].double().cpu()
            hit[s : s + len(t)] = (logits.argmax(-1) == t).cpu()
        own = torch.tensor(owner)
        res = []
        for b in range(len(spans)):
            m = own == b
            res.append(SpanScore(float(lp[m].sum()), int(m.sum()), bool(hit[m].all())))
        return res

    # -- helpers built on spans ---------------------------------------------------------------
    def continuation(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[SpanScore]:
        """log P(continuation | context) for (context ids, continuation ids) pairs. A context
        too long for the window is cut from the left, as every harness does."""
        spans = []
        for ctx, cont in pairs:
            if not cont:
                raise ValueError("empty continuation")
            if not ctx:
                raise ValueError("empty context: give at least a BOS/EOS token")
            toks = list(ctx) + list(cont)
            keep = self.max_length + 1
            if len(toks) > keep:
                if len(cont) > self.max_length:
                    raise ContextLengthExceededError(len(cont), 0, self.max_length)
                cut = len(toks) - keep
                toks, first = toks[cut:], len(ctx) - cut
            else:
                first = len(ctx)
            spans.append((toks, first))
        return self.score_spans(spans)


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows that score every one of ``n_tokens`` targets exactly once.

    Over a sequence ``prefix + tokens`` (index 0 is the prefix token), a window is (a, b, first):
    the model reads seq[a:b] and we keep predictions of seq[first..b]. Each window after the
    first moves by ``stride`` and keeps ``window - stride`` tokens of context: stride == window
    gives disjoint windows (fast), a small stride gives every token a long context (the
    "sliding window perplexity" of the Hugging Face docs)."""
    if not 1 <= stride <= window:
        raise ValueError(f"need 1 <= stride <= window, got stride={stride}, window={window}")
    out, done = [], 0
    while done < n_tokens:
        b = min(done + (window if done == 0 else stride), n_tokens)
        a = max(0, b - window)
        out.append((a, b, done + 1))
        done = b
    return out


def rolling_logprob(
    ll: LogLikelihood, docs: Sequence[Sequence[int]], prefix: int, window: int, stride: int
) -> list[SpanScore]:
    """Total log-probability of each document (every token scored once, the first one after
    ``prefix``), through sliding windows batched across documents."""
    spans, owner = [], []
    for d, toks in enumerate(docs):
        seq = [prefix] + list(toks)
        for a, b, first in sliding_windows(len(toks), window, stride):
            spans.append((seq[a : b + 1], first - a))
            owner.append(d)
    scores = ll.score_spans(spans)
    tot = [[0.0, 0, True] for _ in docs]
    for d, s in zip(owner, scores):
        tot[d][0] += s.logprob
        tot[d][1] += s.num_tokens
        tot[d][2] = tot[d][2] and s.greedy
    return [SpanScore(lp, n, g) for lp, n, g in tot]


def prefix_token(tokenizer) -> int:
    """What an empty context starts from: BOS where the tokenizer has one, else end-of-text
    (lm-evaluation-harness does the same)."""
    return tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id


def perplexity(logprob: float, count: int) -> float:
    return math.exp(-logprob / count) if count else float("nan")
