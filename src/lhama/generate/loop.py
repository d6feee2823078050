"""The plain single-sequence generation loop: the reference the engine is tested against.

Prefill the prompt into a contiguous KV cache, then decode one token at a time, sampling with
the same ``BatchSampler`` the engine uses (a batch of one).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from lhama.generate.outputs import Completion, StreamDelta, TokenStep, check_context
from lhama.generate.sampling import BatchSampler, SamplingParams, make_generator
from lhama.generate.stops import StopStringMatcher
from lhama.model import StaticKVCache, Transformer
from lhama.model import kv_cache as kv_caches
from lhama.quant.ggml import integer_rows


@torch.inference_mode()
def generate_tokens(
    model: Transformer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    stop_ids: Sequence[int] = (),
    context_length: int | None = None,
    speculation=None,
    kv_cache_dtype: str | None = None,
) -> Iterator[TokenStep]:
    """Yield sampled tokens until a stop id (yielded too) or ``params.max_tokens``.
    With ``speculation`` (``lhama.generate.speculative.Speculation``) a draft proposes tokens.
    ``kv_cache_dtype``: what the KV cache stores (auto, float32, bfloat16, int8; None or "auto":
    ``LHAMA_KV_CACHE_DTYPE``, else bf16 under fp32 weights on a CPU; see
    ``lhama.model.kv_cache_dtype``)."""
    if speculation is not None:
        from lhama.generate.speculative import speculative_tokens

        yield from speculative_tokens(
            model,
            speculation,
            prompt_ids,
            params,
            stop_ids=stop_ids,
            context_length=context_length,
            kv_cache_dtype=kv_cache_dtype,
        )
        return
    args = model.args
    ctx = context_length or args.max_seq_len
    check_context(len(prompt_ids), params.max_tokens, ctx)
    device = model.device
    kv_dtype = kv_caches.kv_cache_dtype(model.dtype, device, kv_cache_dtype)  # auto: bf16 under fp32 on a CPU
    cache = StaticKVCache(args, 1, len(prompt_ids) + params.max_tokens, dtype=kv_dtype, device=device)
    sampler = BatchSampler(args.vocab_size, device)
    gen = make_generator(params.seed, device)
    stops = set() if params.ignore_eos else set(stop_ids)
    stops |= set(params.stop_token_ids)
    need_counts = params.repetition_penalty != 1.0 or params.frequency_penalty or params.presence_penalty
    counts = seen = None
    if need_counts:
        counts = torch.zeros(1, args.vocab_size, dtype=torch.int32, device=device)
        seen = torch.zeros(1, args.vocab_size, dtype=torch.bool, device=device)
        seen[0, torch.tensor(list(prompt_ids), device=device)] = True

    tokens = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    tokens_out: list[int] = []  # what a logits_processor sees
    for i in range(params.max_tokens):
        # GGUF block weights: prompt rows take the GEMM path, generated rows the integer one, as
        # in the engine (ggml.integer_rows); the LM head picks by row count there too.
        T = tokens.shape[1]
        positions = torch.arange(cache.pos, cache.pos + T, device=device).unsqueeze(0)
        with integer_rows(0 if i == 0 else None):
            h = model.hidden_states(tokens, positions, cache)
        logits = model.output(h[:, -1:]).float()[:, -1]
        cache.advance(tokens.shape[1])
        banned = [sorted(stops)] if i < params.min_tokens and stops else None
        res = sampler.sample(
            logits,
            [params],
            generators=[gen],
            output_counts=counts,
            seen_mask=seen,
            banned=banned,
            outputs=[tokens_out],
        )
        tok = int(res.tokens[0])
        step = TokenStep(tok)
        if res.logprobs is not None:
            step.logprob = float(res.logprobs[0])
        if res.top_ids is not None:
            step.top_logprobs = [
                (int(t), float(l))
                for t, l in zip(res.top_ids[0, : params.top_logprobs], res.top_logprobs[0, : params.top_logprobs])
            ]
        if counts is not None:
            counts[0, tok] += 1
            seen[0, tok] = True
        tokens_out.append(tok)
        yield step
        if tok in stops:
            return
        tokens = res.tokens.view(1, 1)


def stream_text(
    model: Transformer,
    tokenizer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    stop_ids: Sequence[int] | None = None,
    speculation=None,
    kv_cache_dtype: str | None = None,
) -> Iterator[StreamDelta]:
    """Text deltas that never split a UTF-8 character and never show a (partial) stop string.
    ``kv_cache_dtype``: as ``generate_tokens`` takes it."""
    from lhama.tokenizer.incremental import IncrementalDecoder

    stop_ids = tokenizer.stop_ids if stop_ids is None else stop_ids
    stop_set = set(stop_ids) | set(params.stop_token_ids)
    if params.ignore_eos:
        stop_set = set(params.stop_token_ids)
    decoder = IncrementalDecoder(tokenizer)
    matcher = StopStringMatcher(params.stop)
    n = 0
    steps = generate_tokens(
        model, prompt_ids, params, stop_ids=stop_ids, speculation=speculation, kv_cache_dtype=kv_cache_dtype
    )
    for step in steps:
        n += 1
        if step.token_id in stop_set:
            tail = matcher.feed(decoder.flush()) + matcher.flush()
            yield StreamDelta(tail, [], [step], "stop", step.token_id)
            return
        text = matcher.feed(decoder.push(step.token_id))
        if matcher.stopped_by is not None:
            yield StreamDelta(text, [step.token_id], [step], "stop", matcher.stopped_by)
            return
        if text or n == params.max_tokens:
            done = n == params.max_tokens
            tail = (matcher.feed(decoder.flush()) + matcher.flush()) if done else ""
            yield StreamDelta(text + tail, [step.token_id], [step], "length" if done else None)
        else:
            yield StreamDelta("", [step.token_id], [step])


def generate(
    model: Transformer,
    tokenizer,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    stop_ids: Sequence[int] | None = None,
    speculation=None,
    kv_cache_dtype: str | None = None,
) -> Completion:
    parts, ids, steps = [], [], []
    finish, reason = "length", None
    deltas = stream_text(
        model, tokenizer, prompt_ids, params, stop_ids=stop_ids, speculation=speculation, kv_cache_dtype=kv_cache_dtype
    )
    for d in deltas:
        parts.append(d.text)
        ids += d.token_ids
        steps += d.steps
        if d.finish_reason:
            finish, reason = d.finish_reason, d.stop_reason
    return Completion("".join(parts), ids, finish, reason, len(prompt_ids), steps)
