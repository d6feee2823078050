"""Deterministic mode on the real default model (quantized, as served): a request's tokens and
logprobs are bitwise the same alone, beside 31 others, and after a prefix-cache hit."""

from __future__ import annotations

import pytest

from lhama.engine import EngineConfig, LLMEngine
from lhama.generate import SamplingParams

SHARED = ("The old harbour town kept its records in a stone tower by the river, where clerks wrote down "
          "every ship, every cargo and every storm")


@pytest.fixture(scope="module")
def default_lm():
    from lhama.loader import load_model

    return load_model("default")  # quantized int4 kernels: the batch-variant case


def _prompts(lm) -> list[list[int]]:
    enc = lm.tokenizer.encode
    shared = enc(SHARED, bos=True, eos=False)
    assert len(shared) > 16  # at least one whole shared KV block: prefix hits happen
    out = []
    for i in range(32):
        tail = enc(f" of year {1700 + 7 * i}, and then", bos=False, eos=False)
        # Half share the long prefix; the others are short distinct prompts.
        out.append(shared + tail if i % 2 == 0 else enc(f"Item {i}: a list of {i + 2} words", bos=True, eos=False))
    return out


def _engine(lm, **kw) -> LLMEngine:
    # A small step budget so that the 32 prompts are chunked differently than alone.
    kw.setdefault("max_num_batched_tokens", 48)
    return LLMEngine.from_loaded(lm, EngineConfig(block_size=16, num_blocks=512, deterministic=True, **kw))


def _outs(results) -> list[tuple[list[int], list[float], list]]:
    return [(c.token_ids, [s.logprob for s in c.steps], [s.top_logprobs for s in c.steps])
            for r in results for c in r.completions]


def _params(i: int) -> SamplingParams:
    if i % 3 == 2:  # seeded sampling beside greedy
        return SamplingParams(temperature=0.8, top_p=0.9, seed=100 + i, max_tokens=4, logprobs=True, top_logprobs=2)
    return SamplingParams(temperature=0, max_tokens=4, logprobs=True, top_logprobs=2)


def test_deterministic_alone_equals_beside_31_others_and_prefix_hits(default_lm):
    prompts = _prompts(default_lm)
    params = [_params(i) for i in range(32)]
    batched = _outs(_engine(default_lm).generate(prompts, params))
    # Alone: each request in its own cold engine with no prefix cache...
    cold = _engine(default_lm, enable_prefix_caching=False)
    # ... and one after another in a warm engine, where the shared prefix is a cache hit.
    warm = _engine(default_lm)
    hits = 0
    for i, (p, sp) in enumerate(zip(prompts, params)):
        alone = cold.generate([p], sp)
        assert alone[0].cached_tokens == 0
        assert _outs(alone)[0] == batched[i], f"request {i}: batched != alone"
        again = warm.generate([p], sp)
        hits += again[0].cached_tokens > 0
        assert _outs(again)[0] == batched[i], f"request {i}: prefix-cache hit != batched"
    assert hits >= 15  # the shared-prefix prompts (after the first) did hit the cache
    assert all(lp is not None for _, lps, _ in batched for lp in lps)


def test_deterministic_recompute_after_full_prompt_hit(default_lm):
    """A prompt run twice in one engine: the second reuses every whole block and recomputes the
    rest one token at a time; its logprobs equal the cold run's, float for float."""
    p = _prompts(default_lm)[0]
    sp = SamplingParams(temperature=0, max_tokens=6, logprobs=True)
    eng = _engine(default_lm)
    first, second = eng.generate([p], sp), eng.generate([p], sp)
    assert first[0].cached_tokens == 0 and second[0].cached_tokens >= 16
    assert _outs(first) == _outs(second)


def test_deterministic_mode_is_a_runner_setting():
    """The flag reaches the runner through the engine config and the shared CLI engine args
    (serve, batch and eval all use them)."""
    from lhama.cli.args import Parser, add_engine_args, engine_config_from_args

    p = Parser()
    add_engine_args(p)
    assert engine_config_from_args(p.parse_args(["--deterministic"])).deterministic is True
    assert engine_config_from_args(p.parse_args([])).deterministic is False
