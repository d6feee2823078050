"""The streaming front end: deltas, cancellation, aborts, errors, metrics."""

from __future__ import annotations

import asyncio
import time

import pytest
from engine_fakes import random_prompts

from lhama.engine import AsyncEngine
from lhama.errors import ContextLengthExceededError
from lhama.generate import SamplingParams


def wait_until(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def async_engine(tiny, make_engine):
    engines = []

    def make(**cfg):
        ae = AsyncEngine(make_engine(tiny, **cfg))
        engines.append(ae)
        return ae

    yield make
    for ae in engines:
        # Let the engine thread apply any last abort, then stop it (the leak check runs after).
        assert wait_until(lambda: not ae.engine.has_unfinished() and not ae._commands)
        ae.shutdown()


def test_streams_match_the_sync_engine(tiny, make_engine, async_engine):
    prompts = random_prompts([5, 17, 9, 26], seed=30)
    params = [
        SamplingParams(temperature=0, max_tokens=12),
        SamplingParams(temperature=0.8, seed=3, max_tokens=9),
        SamplingParams(temperature=0, max_tokens=5, logprobs=True, top_logprobs=2),
        SamplingParams(temperature=1.0, seed=4, n=2, max_tokens=7),
    ]
    want = make_engine(tiny).generate(prompts, params)
    ae = async_engine(max_num_batched_tokens=8)

    async def consume(p, sp, rid):
        texts, ids, fins = {}, {}, {}
        async for d in ae.generate(p, sp, rid):
            texts[d.index] = texts.get(d.index, "") + d.text
            ids[d.index] = ids.get(d.index, []) + d.token_ids
            if d.finish_reason:
                fins[d.index] = d.finish_reason
            assert d.prompt_tokens == len(p)
        return texts, ids, fins

    async def main():
        return await asyncio.gather(*(consume(p, sp, f"r{i}") for i, (p, sp) in enumerate(zip(prompts, params))))

    got = asyncio.run(main())
    for (texts, ids, fins), res in zip(got, want):
        assert [ids[i] for i in range(len(res.completions))] == [c.token_ids for c in res.completions]
        assert [texts[i] for i in range(len(res.completions))] == [c.text for c in res.completions]
        assert [fins[i] for i in range(len(res.completions))] == [c.finish_reason for c in res.completions]
    s = ae.stats()
    assert s.requests_finished_total == 4 and s.generation_tokens_total > 0 and s.num_running == 0


def test_cancelling_the_consumer_frees_blocks(async_engine):
    ae = async_engine()
    kv = ae.engine.kv_manager
    prompt = random_prompts([40], seed=31)[0]

    async def main():
        got = []

        async def consume():
            async for d in ae.generate(prompt, SamplingParams(temperature=0, max_tokens=200, ignore_eos=True), "c"):
                got.append(d)

        task = asyncio.create_task(consume())
        while len(got) < 3:
            await asyncio.sleep(0.005)
        assert kv.num_used_blocks > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return got

    got = asyncio.run(main())
    assert 3 <= len(got) < 200
    assert wait_until(lambda: kv.num_free_blocks == kv.num_blocks and not ae.engine.has_unfinished())
    assert wait_until(lambda: ae.stats().requests_aborted_total == 1)


def test_abort_by_id_and_breaking_out_early(async_engine):
    ae = async_engine()

    async def main():
        n = 0
        gen = ae.generate([1, 2, 3], SamplingParams(temperature=0, max_tokens=100, ignore_eos=True), "a")
        async for _ in gen:
            n += 1
            if n == 2:
                ae.abort("a")
        m = 0
        gen2 = ae.generate([4, 5], SamplingParams(temperature=0, max_tokens=100, ignore_eos=True), "b")
        async for _ in gen2:
            m += 1
            if m == 3:
                break
        await gen2.aclose()
        return n, m

    n, m = asyncio.run(main())
    assert n < 100 and m == 3
    kv = ae.engine.kv_manager
    assert wait_until(lambda: kv.num_free_blocks == kv.num_blocks and not ae.engine.has_unfinished())


def test_invalid_requests_raise_before_queueing(async_engine):
    ae = async_engine()

    async def main():
        with pytest.raises(ContextLengthExceededError):
            async for _ in ae.generate(list(range(250)), SamplingParams(max_tokens=50)):
                pass

    asyncio.run(main())
    assert ae.queue_depth == 0 and not ae.engine.has_unfinished()
