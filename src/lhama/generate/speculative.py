"""Speculative decoding: a cheap draft model proposes ``k`` tokens, the target checks them all in
one forward pass and keeps the longest prefix it agrees with, plus one token of its own.

Greedy: a draft token is kept when it is the target's argmax at that position, so the output is
the target's own greedy output (up to ties broken differently by a k+1-token matmul than by a
1-token one). Sampling (temperature > 0, with top-k / top-p / min-p): a draft token x drawn from
the draft's distribution q is kept with probability min(1, p(x) / q(x)); on the first rejection a
token is drawn from max(0, p - q) renormalised (Leviathan et al. 2023, "Fast Inference from
Transformers via Speculative Decoding", Theorem 1), so every token is distributed exactly as the
target alone would sample it.

The draft is any model with the target's vocabulary (``--draft-model PATH``), the target's own
checkpoint quantized to int4 (``self:int4``: on a memory-bound CPU ~3.5x cheaper per step than
fp32 and right ~90% of the time), its first N layers (``self:N``, LayerSkip-style early exit), or
no model at all (``ngram``: prompt lookup). ``lhama.generate.drafts`` builds them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from lhama.errors import ConfigError, SamplingError
from lhama.generate.drafts import DEFAULT_K, NgramDraft, build_draft, quantized_self_draft, self_draft
from lhama.generate.outputs import TokenStep, check_context
from lhama.generate.sampling import SamplingParams, apply_logit_bias, filter_logits, make_generator
from lhama.model import StaticKVCache, Transformer
from lhama.model import kv_cache as kv_caches


@dataclass
class SpeculativeStats:
    rounds: int = 0  # target forwards after the prompt
    proposed: int = 0  # draft tokens offered to the target
    accepted: int = 0  # draft tokens the target kept
    emitted: int = 0  # tokens yielded (accepted + one per round from the target)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_target_forward(self) -> float:
        return self.emitted / self.rounds if self.rounds else 0.0


@dataclass
class Speculation:
    """A draft (a model sharing the target's vocabulary, or an ``NgramDraft``) and how many tokens
    it proposes per round. ``lookup``: prompt lookup tried before a model draft in every round;
    the model drafts only when the text has no earlier match (``--draft-model self:int4+ngram``)."""

    draft: Transformer | NgramDraft
    num_speculative_tokens: int = 4
    stats: SpeculativeStats = field(default_factory=SpeculativeStats)
    lookup: NgramDraft | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.num_speculative_tokens <= 32:
            raise ConfigError(f"--num-speculative-tokens must be in 1..32, got {self.num_speculative_tokens}")


def check_draft(target: Transformer, draft: Transformer | NgramDraft) -> None:
    if isinstance(draft, NgramDraft):
        return
    if draft.args.vocab_size != target.args.vocab_size:
        raise ConfigError(
            f"the draft model's vocabulary ({draft.args.vocab_size} tokens) differs from the target's "
            f"({target.args.vocab_size}); a draft must share the target's tokenizer"
        )
    if draft.device != target.device:
        raise ConfigError(
            f"the draft model is on {draft.device}, the target on {target.device}; load both on one device"
        )


def _check_params(params: SamplingParams) -> None:
    # Penalties change the distribution with every accepted token; verifying k tokens at once would
    # need k different penalty states. Refuse rather than silently sample something else.
    for name, off in (("repetition_penalty", 1.0), ("frequency_penalty", 0.0), ("presence_penalty", 0.0)):
        if getattr(params, name) != off:
            raise SamplingError(name, "is not supported with speculative decoding; drop it or the draft model")
    if params.n != 1:
        raise SamplingError("n", "speculative decoding generates one sequence per request")
    if params.logits_processor is not None:  # it would have to judge every drafted position
        raise SamplingError("logits_processor", "is not supported with speculative decoding; drop the draft model")


class _Dist:
    """Per-position sampling distributions for a [T, V] block of logits."""

    def __init__(self, logits: torch.Tensor, params: SamplingParams, banned: list[bool], stop_ids: list[int]):
        logits = logits.float()
        if stop_ids and any(banned):
            logits = logits.clone()
            rows = torch.tensor([i for i, b in enumerate(banned) if b], dtype=torch.long, device=logits.device)
            logits[rows.unsqueeze(1), torch.tensor(stop_ids, dtype=torch.long, device=logits.device)] = float("-inf")
        self.raw = logits  # the logprobs reported
        if params.logit_bias:  # what is sampled: every position gets the bias (as BatchSampler does)
            logits = apply_logit_bias(logits, [params] * logits.shape[0])
        self.pick = logits  # greedy picks its argmax
        if params.greedy:
            self.probs = None
        else:
            T = logits.shape[0]
            col = lambda v, dt=torch.float32: torch.full((T,), v, dtype=dt, device=logits.device)  # noqa: E731
            filtered = filter_logits(
                logits, col(params.temperature), col(params.top_k, torch.long), col(params.top_p), col(params.min_p)
            )
            self.probs = filtered.softmax(-1)


def _draw(probs: torch.Tensor, gen: torch.Generator | None) -> int:
    return int(torch.multinomial(probs, 1, generator=gen))


@torch.inference_mode()
def speculative_tokens(
    target: Transformer,
    spec: Speculation,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    stop_ids: Sequence[int] = (),
    context_length: int | None = None,
    kv_cache_dtype: str | None = None,
) -> Iterator[TokenStep]:
    """Like ``lhama.generate.generate_tokens``, with the draft proposing and the target verifying
    (both caches in ``kv_cache_dtype``, as there)."""
    draft, k_max, stats = spec.draft, spec.num_speculative_tokens, spec.stats
    check_draft(target, draft)
    _check_params(params)
    check_context(len(prompt_ids), params.max_tokens, context_length or target.args.max_seq_len)
    dev = target.device
    stops = (set() if params.ignore_eos else set(stop_ids)) | set(params.stop_token_ids)
    stop_list = sorted(stops)
    gen = make_generator(params.seed, dev)
    max_len = len(prompt_ids) + params.max_tokens + k_max + 1
    t_cache = StaticKVCache(
        target.args, 1, max_len, dtype=kv_caches.kv_cache_dtype(target.dtype, dev, kv_cache_dtype), device=dev
    )  # as the plain loop
    lookup = draft if isinstance(draft, NgramDraft) else spec.lookup
    model_draft = None if isinstance(draft, NgramDraft) else draft
    d_cache = None
    if model_draft is not None:
        d_dtype = kv_caches.kv_cache_dtype(draft.dtype, dev, kv_cache_dtype)
        d_cache = StaticKVCache(draft.args, 1, max_len, dtype=d_dtype, device=dev)

    def run(model, cache, toks: list[int], last_only: bool = False) -> torch.Tensor:
        x = torch.tensor([toks], dtype=torch.long, device=dev)
        logits = model(x, cache.pos, cache, last_only=last_only)[0]
        cache.advance(len(toks))
        return logits

    def step(tok: int, raw_row: torch.Tensor) -> TokenStep:
        s = TokenStep(tok)
        if params.logprobs or params.top_logprobs:
            logp = raw_row.log_softmax(-1)
            s.logprob = float(logp[tok])
            if params.top_logprobs:
                lp, ids = logp.topk(params.top_logprobs)
                s.top_logprobs = [(int(i), float(v)) for i, v in zip(ids, lp)]
        return s

    tokens = list(prompt_ids)
    n_out = 0
    # The first token comes from the target alone (its prefill); the draft prefills the prompt too.
    first = _Dist(run(target, t_cache, tokens, last_only=True), params, [params.min_tokens > 0], stop_list)
    first_tok = int(first.pick.argmax(-1)) if first.probs is None else _draw(first.probs[0], gen)
    if d_cache is not None:
        run(draft, d_cache, tokens, last_only=True)
    pending = [first_tok]
    pending_steps = [step(first_tok, first.raw[0])]
    while True:
        # Emit what the last round decided; stop on a stop token or the token budget.
        for tok, s in zip(pending, pending_steps):
            tokens.append(tok)
            n_out += 1
            stats.emitted += 1
            yield s
            if tok in stops or n_out >= params.max_tokens:
                return
        k = min(k_max, params.max_tokens - n_out - 1)  # proposals beyond the budget would be thrown away
        # The draft catches up on committed tokens it has not seen, then proposes k.
        proposals: list[int] = []
        q_rows: list[torch.Tensor] = []
        if lookup is not None and k > 0:
            proposals = lookup.propose(tokens, k)
        if proposals:
            # A deterministic proposal is a one-hot q: kept with probability p(x), the rest of p otherwise.
            k = len(proposals)
            q_rows = (
                [
                    torch.nn.functional.one_hot(torch.tensor(t, device=dev), target.args.vocab_size).float()
                    for t in proposals
                ]
                if not params.greedy
                else []
            )
        elif model_draft is None:
            k = 0
        elif k > 0:
            # Only the last row's logits are needed: the head is a fifth of a small model's weights.
            logits = run(draft, d_cache, tokens[d_cache.pos :], last_only=True)
            for i in range(k):
                d = _Dist(logits, params, [n_out + i < params.min_tokens], stop_list)
                tok = int(d.pick.argmax(-1)) if d.probs is None else _draw(d.probs[0], gen)
                proposals.append(tok)
                if d.probs is not None:
                    q_rows.append(d.probs[0])
                if i + 1 < k:
                    logits = run(draft, d_cache, [tok])
        # The target scores the last committed token and every proposal in one forward.
        base = t_cache.pos
        t_logits = run(target, t_cache, [tokens[-1]] + proposals)
        p = _Dist(t_logits, params, [n_out + i < params.min_tokens for i in range(k + 1)], stop_list)
        stats.rounds += 1
        stats.proposed += k
        n_acc = 0
        correction = None
        for i, tok in enumerate(proposals):
            if p.probs is None:
                ok = int(p.pick[i].argmax()) == tok
            else:
                ratio = p.probs[i, tok] / q_rows[i][tok].clamp_min(1e-20)
                u = torch.rand((), generator=gen, device=dev) if gen is not None else torch.rand(())
                ok = bool(u < ratio)
                if not ok:
                    resid = (p.probs[i] - q_rows[i]).clamp_min(0)
                    correction = _draw(resid / resid.sum() if resid.sum() > 0 else p.probs[i], gen)
            if not ok:
                break
            n_acc += 1
        if correction is None:  # a rejected greedy token, or every proposal kept: the target's next token
            correction = int(p.pick[n_acc].argmax()) if p.probs is None else _draw(p.probs[n_acc], gen)
        stats.accepted += n_acc
        pending = proposals[:n_acc] + [correction]
        pending_steps = [step(t, p.raw[i]) for i, t in enumerate(pending)]
        # Forget the cache entries of rejected proposals (in both models).
        t_cache.truncate(base + 1 + n_acc)
        if d_cache is not None:
            d_cache.truncate(min(d_cache.pos, base + 1 + n_acc))


def load_speculation(spec: str, loaded, num_speculative_tokens: int | None = None) -> Speculation:
    """``--draft-model`` (spellings in ``lhama.generate.drafts``) for the target ``loaded``; k
    defaults to what suits the kind of draft."""
    draft, kind, lookup = build_draft(spec, loaded)
    check_draft(loaded.model, draft)
    k = DEFAULT_K[kind] if num_speculative_tokens is None else num_speculative_tokens
    return Speculation(draft, k, lookup=lookup)


__all__ = [
    "NgramDraft",
    "Speculation",
    "SpeculativeStats",
    "load_speculation",
    "quantized_self_draft",
    "self_draft",
    "speculative_tokens",
]
