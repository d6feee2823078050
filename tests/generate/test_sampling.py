from __future__ import annotations

import pytest
import torch

from lhama.errors import SamplingError
from lhama.generate import BatchSampler, SamplingParams, StopStringMatcher, make_generator
from lhama.generate.sampling import apply_penalties, filter_logits


def _sample_many(logits, params, n, seed=0):
    sampler = BatchSampler(logits.shape[-1])
    gen = make_generator(seed)
    batch = logits.expand(n, -1).clone()
    res = sampler.sample(batch, [params] * n, generators=[gen] * n)
    return res.tokens


def test_greedy_is_argmax():
    logits = torch.randn(4, 50)
    res = BatchSampler(50).sample(logits, [SamplingParams(temperature=0)] * 4, generators=[None] * 4)
    assert torch.equal(res.tokens, logits.argmax(-1))


def test_sampling_matches_softmax_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    toks = _sample_many(logits, SamplingParams(temperature=1.0, top_p=1.0), 20000)
    freq = torch.bincount(toks, minlength=5).float() / 20000
    assert torch.allclose(freq, logits.softmax(-1)[0], atol=0.015)


def test_temperature_sharpens():
    logits = torch.tensor([[1.0, 0.0]])
    hot = _sample_many(logits, SamplingParams(temperature=2.0, top_p=1.0), 10000).eq(0).float().mean()
    cold = _sample_many(logits, SamplingParams(temperature=0.25, top_p=1.0), 10000).eq(0).float().mean()
    assert cold > 0.95 and 0.55 < hot < 0.68  # softmax([0.5, 0]) = 0.62


def test_top_k_top_p_min_p_restrict_support():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.07, 0.03]]))
    assert set(_sample_many(logits, SamplingParams(top_k=2, top_p=1.0), 3000).tolist()) == {0, 1}
    # Mass before token 2 is 0.75 < 0.8, so tokens 0..2 stay; token 3 starts at 0.9.
    assert set(_sample_many(logits, SamplingParams(top_p=0.8), 3000).tolist()) == {0, 1, 2}
    # min_p 0.2 keeps probabilities >= 0.1 (0.2 x the top 0.5).
    assert set(_sample_many(logits, SamplingParams(min_p=0.2, top_p=1.0), 3000).tolist()) == {0, 1, 2}


def test_per_row_parameters_in_one_batch():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).expand(3, -1).clone()
    params = [SamplingParams(temperature=0), SamplingParams(top_k=1, top_p=1.0), SamplingParams(top_p=1.0)]
    res = BatchSampler(3).sample(logits, params, generators=[None, None, make_generator(1)])
    assert res.tokens[0] == 0 and res.tokens[1] == 0


def test_seed_is_reproducible_and_independent_of_batch():
    torch.manual_seed(0)
    logits = torch.randn(1, 1000)
    p = SamplingParams(temperature=1.0, seed=42)
    alone = [BatchSampler(1000).sample(logits, [p], generators=[make_generator(42)]).tokens[0].item()]
    gen = make_generator(42)
    other = torch.randn(2, 1000)
    batch = torch.cat([other[:1], logits, other[1:]])
    res = BatchSampler(1000).sample(batch, [SamplingParams(), p, SamplingParams()], generators=[None, gen, None])
    assert res.tokens[1].item() == alone[0]


def test_logprobs_are_model_logprobs():
    logits = torch.randn(2, 30)
    p = SamplingParams(temperature=0, logprobs=True, top_logprobs=3)
    res = BatchSampler(30).sample(logits, [p, p], generators=[None, None])
    want = logits.log_softmax(-1)
    assert torch.allclose(res.logprobs, want.max(-1).values)
    assert torch.allclose(res.top_logprobs, want.topk(3).values)


def test_penalties():
    logits = torch.tensor([[2.0, -2.0, 1.0, 1.0]])
    counts = torch.tensor([[0, 0, 3, 1]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_penalties(logits.clone(), counts, seen, torch.tensor([2.0]), torch.tensor([0.5]), torch.tensor([0.25]))
    # repetition: 2/2, -2*2; frequency/presence: 1 - 1.5 - 0.25, 1 - 0.5 - 0.25
    assert torch.allclose(out, torch.tensor([[1.0, -4.0, -0.75, 0.25]]))


def test_logit_bias_bans_and_forces_tokens_per_row_logprobs_stay_the_models():
    logits = torch.randn(3, 40)
    top = logits.argmax(-1)
    ban = SamplingParams(temperature=0, logit_bias={int(top[0]): -100.0}, logprobs=True)
    force = SamplingParams(temperature=1.0, seed=3, logit_bias={7: 100.0})
    plain = SamplingParams(temperature=0)
    res = BatchSampler(40).sample(logits, [ban, force, plain], generators=[None, make_generator(3), None])
    assert int(res.tokens[0]) == int(logits[0].topk(2).indices[1])  # the runner-up
    assert int(res.tokens[1]) == 7 and int(res.tokens[2]) == int(top[2])
    assert torch.isclose(res.logprobs[0], logits[0].log_softmax(-1)[res.tokens[0]])
    assert ban.logit_bias == ((int(top[0]), -100.0),)  # a dict becomes hashable pairs
    many = _sample_many(logits[:1], SamplingParams(temperature=1.0, logit_bias={int(top[0]): -100.0}), 2000)
    assert not bool(many.eq(top[0]).any())
    with pytest.raises(SamplingError) as e:
        BatchSampler(40).sample(logits[:1], [SamplingParams(logit_bias={40: 1.0})], generators=[None])
    assert e.value.param == "logit_bias"


def test_filter_logits_keeps_argmax_even_with_tiny_top_p():
    logits = torch.randn(3, 100)
    out = filter_logits(logits, torch.ones(3), torch.zeros(3, dtype=torch.long), torch.full((3,), 1e-6), torch.zeros(3))
    assert torch.equal(out.argmax(-1), logits.argmax(-1))
    assert torch.isfinite(out).sum(-1).eq(1).all()


@pytest.mark.parametrize(
    "kwargs,param",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_p=0), "top_p"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(top_k=-1), "top_k"),
        (dict(min_p=2), "min_p"),
        (dict(frequency_penalty=3), "frequency_penalty"),
        (dict(presence_penalty=-3), "presence_penalty"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(top_logprobs=99), "top_logprobs"),
        (dict(n=0), "n"),
        (dict(stop=[""]), "stop"),
        (dict(logit_bias={5: 100.5}), "logit_bias"),
        (dict(logit_bias={-1: 1.0}), "logit_bias"),
    ],
)
def test_invalid_params_name_the_parameter(kwargs, param):
    with pytest.raises(SamplingError) as e:
        SamplingParams(**kwargs)
    assert e.value.param == param and param in str(e.value)


def test_stop_string_matcher_holds_back_partial_matches():
    m = StopStringMatcher(["o w", "END"])
    out = m.feed("Hel") + m.feed("lo") + m.feed(" wor")
    assert out == "Hell" and m.stopped_by == "o w"
    m = StopStringMatcher(["END"])
    assert m.feed("the EN") == "the "
    assert m.feed("ding") == "ENding"
    assert m.feed(" E") == " "
    assert m.flush() == "E" and m.stopped_by is None
