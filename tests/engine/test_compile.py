"""``EngineConfig(compile=True)`` gives the same tokens as eager (slow: compiling takes ~1 min)."""

from __future__ import annotations

import pytest
from engine_fakes import random_prompts

from lhama.generate import SamplingParams


@pytest.mark.slow
def test_compiled_decode_gives_the_same_tokens(tiny, make_engine):
    prompts = random_prompts([5, 17, 9, 30], seed=1)
    params = [
        SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=0.9, seed=2, max_tokens=20, ignore_eos=True),
    ] * 2
    eager = make_engine(tiny).generate(prompts, params)
    compiled = make_engine(tiny, compile=True).generate(prompts, params)
    assert [r.completions[0].token_ids for r in compiled] == [r.completions[0].token_ids for r in eager]
