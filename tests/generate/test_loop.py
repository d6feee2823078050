from __future__ import annotations

import pytest
import torch

from lhama.errors import ContextLengthExceededError, SamplingError
from lhama.generate import SamplingParams, generate_tokens
from lhama.model import build_model, get_config


@pytest.fixture(scope="module")
def tiny():
    args = get_config("tiny-llama3").args.with_(vocab_size=300, max_seq_len=128)
    return build_model(args, init="random", seed=1).eval()


def _greedy_without_cache(model, prompt, n):
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def test_cached_greedy_equals_full_recompute(tiny):
    prompt = [5, 17, 42, 99, 3, 250, 7]
    got = [s.token_id for s in generate_tokens(tiny, prompt, SamplingParams(temperature=0, max_tokens=20))]
    assert got == _greedy_without_cache(tiny, prompt, 20)


def test_stop_ids_and_min_tokens(tiny):
    prompt = [1, 2, 3]
    free = [s.token_id for s in generate_tokens(tiny, prompt, SamplingParams(temperature=0, max_tokens=12))]
    stop = free[3]
    first = free.index(stop)
    got = [
        s.token_id for s in generate_tokens(tiny, prompt, SamplingParams(temperature=0, max_tokens=12), stop_ids=[stop])
    ]
    assert got == free[: first + 1]
    banned = [
        s.token_id
        for s in generate_tokens(
            tiny, prompt, SamplingParams(temperature=0, max_tokens=12, min_tokens=first + 2), stop_ids=[stop]
        )
    ]
    assert stop not in banned[: first + 2]


def test_seeded_sampling_repeats(tiny):
    p = SamplingParams(temperature=1.0, top_p=0.95, seed=7, max_tokens=15)
    a = [s.token_id for s in generate_tokens(tiny, [4, 5, 6], p)]
    b = [s.token_id for s in generate_tokens(tiny, [4, 5, 6], p)]
    c = [s.token_id for s in generate_tokens(tiny, [4, 5, 6], p.with_(seed=8))]
    assert a == b and a != c


def test_context_window_is_enforced_not_truncated(tiny):
    with pytest.raises(ContextLengthExceededError) as e:
        list(generate_tokens(tiny, list(range(100)), SamplingParams(max_tokens=40)))
    assert "128" in str(e.value) and "140" in str(e.value)
    with pytest.raises(SamplingError):
        list(generate_tokens(tiny, [], SamplingParams(max_tokens=4)))


def test_logprobs_reported(tiny):
    steps = list(
        generate_tokens(tiny, [9, 8, 7], SamplingParams(temperature=0, max_tokens=3, logprobs=True, top_logprobs=2))
    )
    for s in steps:
        assert s.logprob is not None and s.logprob <= 0
        assert s.top_logprobs[0][0] == s.token_id and s.top_logprobs[0][1] == pytest.approx(s.logprob)
