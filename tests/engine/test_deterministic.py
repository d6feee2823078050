"""Deterministic mode on the real default model (quantized, as served): a request's tokens and
logprobs are bitwise the same alone, beside 31 others, and after a prefix-cache hit."""

from __future__ import annotations

import pytest

from lhama.engine import EngineConfig, LLMEngine
from lhama.generate import SamplingParams

SHARED = "The old harbour town kept its records in a stone tower by the river, where the clerks wrote"


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
        # Half share the prefix; the others are short distinct prompts.
        out.append(
            shared + enc(f" in {1700 + 7 * i}", bos=False, eos=False)
            if i % 2 == 0
            else enc(f"Item {i}: a", bos=True, eos=False)
        )
    return out


def _outs(results) -> list[tuple[list[int], list[float], list]]:
    return [
        (c.token_ids, [s.logprob for s in c.steps], [s.top_logprobs for s in c.steps])
        for r in results
        for c in r.completions
    ]


def _params(i: int, seeded: bool = True) -> SamplingParams:
    if seeded and i % 3 == 2:  # seeded sampling beside greedy
        return SamplingParams(temperature=0.8, top_p=0.9, seed=100 + i, max_tokens=3, logprobs=True, top_logprobs=2)
    return SamplingParams(temperature=0, max_tokens=3, logprobs=True, top_logprobs=2)


def test_deterministic_alone_equals_beside_31_others_and_prefix_hits(default_lm):
    """32 requests together (a small step budget, so prompts are chunked differently than
    alone), then each alone, one after another, in a fresh engine: the first shared-prefix
    request and the short ones run cold, the other 15 shared-prefix ones hit the prefix cache.
    Every token, logprob and top logprob is equal (``==`` on the floats)."""
    prompts = _prompts(default_lm)
    params = [_params(i) for i in range(32)]  # greedy, and seeded sampling every third

    def engine():
        cfg = EngineConfig(block_size=16, num_blocks=256, max_num_batched_tokens=40, deterministic=True)
        return LLMEngine.from_loaded(default_lm, cfg)

    batched = _outs(engine().generate(prompts, params))
    alone_engine = engine()
    cached = []
    for i, (p, sp) in enumerate(zip(prompts, params)):
        alone = alone_engine.generate([p], sp)
        cached.append(alone[0].cached_tokens)
        assert _outs(alone)[0] == batched[i], f"request {i} (cached {cached[-1]} tokens): alone != batched"
    assert sum(c > 0 for c in cached) == 15 and cached[0] == 0 and cached[1::2] == [0] * 16
    assert all(lp is not None for _, lps, _ in batched for lp in lps)


def _engine(lm, **kw) -> LLMEngine:
    return LLMEngine.from_loaded(
        lm, EngineConfig(block_size=16, num_blocks=256, max_num_batched_tokens=40, deterministic=True, **kw)
    )


def test_deterministic_cold_equals_prefix_hit_and_pair_equals_alone(default_lm):
    p = _prompts(default_lm)
    greedy, seeded = _params(0), _params(2)
    cold = _outs(_engine(default_lm, enable_prefix_caching=False).generate([p[2]], greedy))[0]
    warm = _engine(default_lm)
    warm.generate([p[0]], greedy)
    hit = warm.generate([p[2]], greedy)
    assert hit[0].cached_tokens == 16 and _outs(hit)[0] == cold
    alone = _outs(_engine(default_lm).generate([p[2]], seeded))[0]
    pair = _outs(_engine(default_lm).generate([p[2], p[2]], [seeded, greedy]))
    assert pair[0] == alone


def test_deterministic_mode_is_a_runner_setting():
    """The flag reaches the runner through the engine config and the shared CLI engine args
    (serve, batch and eval all use them)."""
    from lhama.cli.args import Parser, add_engine_args, engine_config_from_args

    p = Parser()
    add_engine_args(p)
    assert engine_config_from_args(p.parse_args(["--deterministic"])).deterministic is True
    assert engine_config_from_args(p.parse_args([])).deterministic is False


def test_deterministic_adapters_alone_equal_mixed(tmp_path):
    """Per-request LoRA in deterministic mode (tiny float model: float GEMMs are the row-count
    sensitive ones): an adapter's request gives the same bits alone as beside the base model,
    another adapter and other prompts, with a small step budget that chunks prompts differently."""
    from engine_fakes import tiny_loaded

    from lhama.model.lora_batch import LoraSlots
    from lhama.peft_adapter import read_peft_weights
    from tests.engine.lora_adapters import make_adapter

    loaded = tiny_loaded(seed=3)  # a fresh model: the slots wrap its projections
    slots = LoraSlots(loaded.model, max_loras=2, max_rank=4)
    for name, rank, seed in (("a1", 4, 1), ("a2", 2, 2)):
        path = make_adapter(tmp_path / name, loaded.args, rank=rank, targets=("all",), seed=seed, std=0.2)
        slots.load(name, str(path), *read_peft_weights(path, loaded.args))
    prompts = [[5 + (7 * i + 3 * j) % 250 for j in range(9 + 5 * i)] for i in range(6)]
    names = [None, "a1", "a2", "a1", None, "a2"]
    params = [
        SamplingParams(temperature=0, max_tokens=5, logprobs=True, top_logprobs=2, lora=slots.acquire(n) if n else None)
        for n in names
    ]
    cfg = EngineConfig(block_size=4, num_blocks=256, max_num_batched_tokens=13, deterministic=True)
    mixed = _outs(LLMEngine.from_loaded(loaded, cfg).generate(prompts, params))
    alone_engine = LLMEngine.from_loaded(loaded, cfg)
    alone = [_outs(alone_engine.generate([p], sp))[0] for p, sp in zip(prompts, params)]
    assert alone == mixed
    assert len({tuple(t) for t, _, _ in mixed}) > 1
