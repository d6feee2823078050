"""The engine on a GPU matches the reference loop there too (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch
from engine_fakes import random_prompts, tiny_args

from lhama.engine import EngineConfig, LLMEngine
from lhama.generate import SamplingParams, generate_tokens
from lhama.model import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("kind", ["llama3", "llama2"])
def test_cuda_engine_matches_reference(kind):
    model = build_model(tiny_args(kind), init="random", seed=1, device="cuda").eval()
    eng = LLMEngine(model, None, EngineConfig(block_size=4, num_blocks=64, max_num_batched_tokens=8))
    prompts = random_prompts([1, 3, 5, 13, 29, 47], seed=3)
    for params in (
        SamplingParams(temperature=0, max_tokens=10),
        SamplingParams(temperature=0, max_tokens=10, repetition_penalty=1.3, n=2),
        SamplingParams(temperature=0.8, seed=5, max_tokens=10, logprobs=True),
    ):
        for p, r in zip(prompts, eng.generate(prompts, params)):
            want = [s.token_id for s in generate_tokens(model, p, params.with_(n=1))]
            assert all([s.token_id for s in c.steps] == want for c in r.completions[: 1 if params.seed else None])
    assert eng.kv_manager.num_free_blocks == eng.kv_manager.num_blocks
