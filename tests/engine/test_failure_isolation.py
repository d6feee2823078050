"""One request's failure inside the engine fails that request alone: the 8 healthy requests beside
it finish with exactly the tokens they get without it, and the counters tell an engine failure
from a client cancellation."""

from __future__ import annotations

import asyncio

import pytest
from engine_fakes import random_prompts

from lhama.engine import AsyncEngine, RequestFailedError
from lhama.errors import SamplingError
from lhama.generate import SamplingParams

HEALTHY_PARAMS = [
    SamplingParams(temperature=0, max_tokens=12),
    SamplingParams(temperature=0.9, seed=11, max_tokens=10),
    SamplingParams(temperature=0, max_tokens=8, logprobs=True, top_logprobs=2),
    SamplingParams(temperature=1.0, seed=12, top_k=20, max_tokens=9, ignore_eos=True),
    SamplingParams(temperature=1.1, seed=13, n=2, max_tokens=7),
    SamplingParams(temperature=0, max_tokens=11, ignore_eos=True),
    SamplingParams(temperature=0.7, seed=14, top_p=0.9, max_tokens=12, ignore_eos=True),
    SamplingParams(temperature=0, max_tokens=6, repetition_penalty=1.3),
]
HEALTHY_PROMPTS = random_prompts([5, 17, 9, 26, 3, 12, 20, 8], seed=60)


class PoisonedSampler:
    """The engine's sampler, except that any batch holding ``poison`` raises once that request has
    been sampled ``after`` times - after the real sampler has run, so the healthy rows' seeded
    generators have already drawn (the engine must rewind them)."""

    def __init__(self, inner, poison: SamplingParams, error: Exception, after: int = 0):
        self.inner, self.poison, self.error, self.after = inner, poison, error, after
        self.calls = 0

    def sample(self, logits, params, **kw):
        res = self.inner.sample(logits, params, **kw)
        if any(p is self.poison for p in params):
            self.calls += 1
            if self.calls > self.after:
                raise self.error
        return res


def outputs(results):
    return [
        [(c.token_ids, c.text, c.finish_reason, [s.logprob for s in c.steps]) for c in r.completions] for r in results
    ]


@pytest.fixture
def expected(tiny, make_engine):
    """What the healthy requests produce on their own."""
    return outputs(make_engine(tiny, max_num_batched_tokens=16).generate(HEALTHY_PROMPTS, HEALTHY_PARAMS))


def run_beside_poison(eng, poison_prompt, poison):
    reqs = [eng.add_request(f"h{i}", p, sp) for i, (p, sp) in enumerate(zip(HEALTHY_PROMPTS, HEALTHY_PARAMS))]
    bad = eng.add_request("bad", poison_prompt, poison)
    errors = []
    while eng.has_unfinished():
        errors += [d for d in eng.step() if d.finish_reason == "error"]
    return [eng.result(r) for r in reqs], bad, errors


@pytest.mark.parametrize("after", [0, 3])
def test_a_request_whose_sampling_raises_fails_alone(tiny, make_engine, expected, after):
    eng = make_engine(tiny, max_num_batched_tokens=16)
    poison = SamplingParams(temperature=0.8, seed=99, max_tokens=20, ignore_eos=True)
    eng.runner.sampler = PoisonedSampler(
        eng.runner.sampler, poison, RuntimeError("Overflow when unpacking long long"), after
    )
    healthy, bad_req, errors = run_beside_poison(eng, random_prompts([14], seed=61)[0], poison)
    bad = eng.result(bad_req)
    assert outputs(healthy) == expected
    assert all(r.error is None for r in healthy)
    err = bad.error
    assert isinstance(err, RequestFailedError) and err.stage == "sample" and err.request_id == "bad"
    assert isinstance(err.cause, RuntimeError) and err.http_status == 500 and err.code == "engine_request_failed"
    assert "long long" not in str(err) and "other requests were not affected" in str(err)
    assert [c.finish_reason for c in bad.completions] == ["error"]
    assert len(bad.completions[0].token_ids) == after  # what it produced before it failed
    assert [(d.request_id, d.index, d.error) for d in errors] == [("bad", 0, err)]
    s = eng.stats()
    assert (s.requests_failed_total, s.requests_aborted_total, s.requests_finished_total) == (1, 0, 8)


def test_a_parameter_error_keeps_its_400(tiny, make_engine):
    eng = make_engine(tiny)
    poison = SamplingParams(temperature=0, max_tokens=5, n=2)
    eng.runner.sampler = PoisonedSampler(
        eng.runner.sampler, poison, SamplingError("logits_processor", "cannot be applied")
    )
    healthy = eng.add_request("ok", [1, 2, 3], SamplingParams(temperature=0, max_tokens=4))
    eng.add_request("bad", [4, 5, 6], poison)
    deltas = []
    while eng.has_unfinished():
        deltas += eng.step()
    bad = [d for d in deltas if d.request_id == "bad"]
    # Both samples (forked in the failing step) end with the error; nothing else was produced.
    assert [(d.index, d.finish_reason, d.token_ids) for d in bad] == [(0, "error", []), (1, "error", [])]
    err = bad[0].error
    assert err.http_status == 400 and err.param == "logits_processor" and err.code == "invalid_sampling_parameter"
    assert str(err) == "logits_processor: cannot be applied"
    assert eng.result(healthy).completions[0].finish_reason in ("stop", "length")
    # Offline, generate() raises a failed request's error once every request is done ...
    with pytest.raises(RequestFailedError) as e:
        eng.generate([[1, 2, 3], [4, 5, 6]], [SamplingParams(temperature=0, max_tokens=4), poison])
    assert e.value.param == "logits_processor" and not eng.has_unfinished()
    # ... or returns it with the results when asked to.
    ok, bad_res = eng.generate(
        [[1, 2, 3], [4, 5, 6]], [SamplingParams(temperature=0, max_tokens=4), poison], return_errors=True
    )
    assert ok.error is None and ok.completions[0].token_ids == eng.result(healthy).completions[0].token_ids
    assert bad_res.error.param == "logits_processor"
    assert [c.finish_reason for c in bad_res.completions] == ["error", "error"]


def test_a_request_whose_forward_raises_fails_alone(tiny, make_engine, expected, monkeypatch):
    """The batched forward fails whenever the poisoned request is in it (its positions pass 40,
    which no healthy request reaches); the engine reruns the batch one request at a time."""
    original = tiny.model.hidden_states

    def hidden_states(tokens, positions, cache=None):
        if int(positions.max()) >= 40:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original(tokens, positions, cache)

    monkeypatch.setattr(tiny.model, "hidden_states", hidden_states)
    eng = make_engine(tiny, max_num_batched_tokens=16)
    poison = SamplingParams(temperature=0, max_tokens=10)
    healthy, bad_req, errors = run_beside_poison(eng, random_prompts([45], seed=62)[0], poison)
    bad = eng.result(bad_req)
    assert outputs(healthy) == expected
    assert bad.error.stage == "forward" and bad.error.http_status == 500
    assert [d.request_id for d in errors] == ["bad"] and bad.completions[0].token_ids == []
    assert eng.stats().requests_failed_total == 1
    # Its prompt chunks before position 40 were computed; the failed chunk was not counted.
    done = bad_req.seqs[0].num_computed
    assert 0 < done <= 40
    assert eng.stats().prompt_tokens_computed_total == sum(map(len, HEALTHY_PROMPTS)) + done


def test_parameters_that_would_overflow_the_sampler_are_refused_at_add(tiny, make_engine):
    eng = make_engine(tiny)
    for param, kw in [
        ("top_k", {"top_k": 2**63}),
        ("seed", {"seed": 2**64}),
        ("seed", {"seed": 2**64 - 2, "n": 3}),
        ("stop_token_ids", {"stop_token_ids": (10**6,), "min_tokens": 1}),
    ]:
        with pytest.raises(SamplingError) as e:  # from SamplingParams itself or from the engine's check
            eng.add_request(None, [1, 2, 3], SamplingParams(max_tokens=4, **kw))
        assert e.value.param == param
    assert not eng.has_unfinished()
    # The largest values that fit still run.
    res = eng.generate([[1, 2, 3]], SamplingParams(top_k=2**63 - 1, seed=2**64 - 1, max_tokens=3))
    assert res[0].error is None and len(res[0].completions[0].steps) >= 1


def test_async_streams_get_only_their_own_error(tiny, make_engine, expected):
    eng = make_engine(tiny, max_num_batched_tokens=16)
    poison = SamplingParams(temperature=0.8, seed=99, max_tokens=20, ignore_eos=True)
    eng.runner.sampler = PoisonedSampler(eng.runner.sampler, poison, RuntimeError("boom"), after=2)
    ae = AsyncEngine(eng)

    async def consume(prompt, params, rid):
        ids: dict[int, list[int]] = {}
        fins: dict[int, str] = {}
        async for d in ae.generate(prompt, params, rid):
            ids.setdefault(d.index, []).extend(d.token_ids)
            if d.finish_reason:
                fins[d.index] = d.finish_reason
        return [(ids[i], fins[i]) for i in sorted(ids)]

    async def main():
        tasks = [consume(p, sp, f"h{i}") for i, (p, sp) in enumerate(zip(HEALTHY_PROMPTS, HEALTHY_PARAMS))]
        tasks.append(consume(random_prompts([14], seed=61)[0], poison, "bad"))
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        got = asyncio.run(main())
    finally:
        ae.shutdown()
    *healthy, bad = got
    assert isinstance(bad, RequestFailedError) and bad.request_id == "bad" and bad.stage == "sample"
    assert healthy == [[(ids, fin) for ids, _, fin, _ in want] for want in expected]
    s = ae.stats()
    assert (s.requests_failed_total, s.requests_aborted_total, s.requests_finished_total) == (1, 0, 8)


def test_cancellations_and_engine_failures_are_counted_apart(tiny, make_engine, monkeypatch):
    ae = AsyncEngine(make_engine(tiny))
    long = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)

    async def main():
        gen = ae.generate([1, 2, 3], long, "cancelled")
        async for _ in gen:
            break
        await gen.aclose()  # the client went away
        # Then the whole step fails (not one request's part): every running request is failed.
        started = asyncio.Event()

        async def consume(rid):
            async for _ in ae.generate([4, 5, 6], long, rid):
                started.set()

        tasks = [asyncio.create_task(consume(f"r{i}")) for i in range(2)]
        await started.wait()
        monkeypatch.setattr(ae.engine.scheduler, "schedule", lambda: 1 / 0)
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        errors = asyncio.run(main())
    finally:
        ae.shutdown()
    assert [type(e).__name__ for e in errors] == ["EngineDeadError"] * 2
    s = ae.engine.stats()
    assert (s.requests_aborted_total, s.requests_failed_total) == (1, 2)
