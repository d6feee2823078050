"""Block bookkeeping: prefix caching, preemption, abort, forks for n > 1, capacity errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from engine_fakes import random_prompts

from lhama.engine import KVCacheCapacityError, KVCacheManager
from lhama.errors import ContextLengthExceededError, SamplingError
from lhama.generate import SamplingParams, generate_tokens


def ref_ids(loaded, prompt, params):
    return [s.token_id for s in generate_tokens(loaded.model, prompt, params, stop_ids=loaded.tokenizer.stop_ids)]


def steps_ids(comp):
    return [s.token_id for s in comp.steps]


def run(eng, prompt, params, rid=None):
    req = eng.add_request(rid, prompt, params)
    while not req.finished:
        eng.step()
    return eng.result(req)


def test_prefix_cache_reuses_blocks(tiny, make_engine):
    eng = make_engine(tiny, block_size=4, max_num_batched_tokens=16)
    system = random_prompts([22], seed=20)[0]  # 5 full blocks + 2 tokens
    a, b = system + [7, 8, 9], system + [100, 101, 102, 103, 104]
    params = SamplingParams(temperature=0, max_tokens=8)
    first = run(eng, a, params)
    computed_before = eng.stats().prompt_tokens_computed_total
    second = run(eng, b, params)
    computed_second = eng.stats().prompt_tokens_computed_total - computed_before
    assert first.cached_tokens == 0
    assert second.cached_tokens == 20  # the 5 full blocks of the shared prefix
    assert computed_second == len(b) - 20
    assert steps_ids(second.completions[0]) == ref_ids(tiny, b, params)
    # The same prompt again: everything but the last token comes from the cache.
    again = run(eng, a, params)
    assert again.cached_tokens == (len(a) - 1) // 4 * 4
    assert again.completions[0].token_ids == first.completions[0].token_ids
    s = eng.stats()
    assert 0 < s.prefix_cache_hit_rate < 1 and s.prefix_cache_hits_total == 20 + again.cached_tokens


def test_multi_turn_history_hits_including_generated_blocks(tiny, make_engine):
    """Blocks filled by generated tokens are cached too: the next turn reuses the whole history."""
    eng = make_engine(tiny, block_size=4)
    params = SamplingParams(temperature=0, max_tokens=13, ignore_eos=True)
    turn1 = random_prompts([9], seed=21)[0]
    out1 = run(eng, turn1, params).completions[0].token_ids
    history = turn1 + out1 + [5, 6, 7]
    res = run(eng, history, params)
    # All full blocks of prompt + output, except the last output token (its KV is never computed).
    assert res.cached_tokens == (len(turn1) + len(out1) - 1) // 4 * 4
    assert steps_ids(res.completions[0]) == ref_ids(tiny, history, params)


def test_lru_eviction_keeps_the_pool_consistent(tiny, make_engine):
    eng = make_engine(tiny, block_size=4, num_blocks=24)
    params = SamplingParams(temperature=0, max_tokens=4)
    prompts = random_prompts([30, 30, 30, 30], seed=22)
    for p in prompts:  # each fills most of the pool: older cached blocks must be evicted
        assert steps_ids(run(eng, p, params).completions[0]) == ref_ids(tiny, p, params)
        eng.kv_manager.check_consistency()
    # The most recent prompt is still cached; the first one has been evicted.
    assert run(eng, prompts[-1], params).cached_tokens == 28
    assert run(eng, prompts[0], params).cached_tokens == 0


def test_preemption_under_a_tiny_pool_completes_everything(tiny, make_engine):
    # 16 blocks of 4 = 64 tokens for 6 requests needing ~40 each: constant preemption.
    eng = make_engine(tiny, block_size=4, num_blocks=16, max_num_batched_tokens=16)
    prompts = random_prompts([10, 25, 3, 18, 31, 7], seed=23)
    params = SamplingParams(temperature=0, max_tokens=14, ignore_eos=True)
    results = eng.generate(prompts, params)
    assert eng.stats().preemptions_total > 0
    for p, r in zip(prompts, results):
        assert steps_ids(r.completions[0]) == ref_ids(tiny, p, params)


def test_preempted_seeded_sampling_is_unchanged(tiny, make_engine):
    prompts = random_prompts([12, 20, 16, 9], seed=24)
    params = [SamplingParams(temperature=1.0, seed=40 + i, max_tokens=16, ignore_eos=True) for i in range(4)]
    roomy = make_engine(tiny).generate(prompts, params)
    tight_eng = make_engine(tiny, block_size=4, num_blocks=14, max_num_batched_tokens=8)
    tight = tight_eng.generate(prompts, params)
    assert tight_eng.stats().preemptions_total > 0
    assert [r.completions[0].token_ids for r in tight] == [r.completions[0].token_ids for r in roomy]


def test_request_that_can_never_fit_is_refused_clearly(tiny, make_engine):
    eng = make_engine(tiny, block_size=4, num_blocks=10)  # 40 tokens of KV
    assert eng.max_model_len == 40
    with pytest.raises(KVCacheCapacityError) as e:
        eng.add_request(None, list(range(30)), SamplingParams(max_tokens=20))
    assert isinstance(e.value, ContextLengthExceededError)
    assert "40 tokens" in str(e.value) and "50" in str(e.value) and "--kv-cache-gb" in str(e.value)
    with pytest.raises(ContextLengthExceededError):  # beyond the model's own context (256)
        make_engine(tiny).add_request(None, list(range(200)), SamplingParams(max_tokens=100))
    with pytest.raises(SamplingError):
        eng.add_request(None, [1, 2, 999], SamplingParams(max_tokens=2))
    with pytest.raises(SamplingError):
        eng.add_request(None, [], SamplingParams(max_tokens=2))
    assert not eng.has_unfinished()


def test_abort_frees_blocks_at_once(tiny, make_engine):
    eng = make_engine(tiny, block_size=4, max_num_batched_tokens=8)
    prompts = random_prompts([21, 13, 30], seed=25)
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    reqs = [eng.add_request(f"r{i}", p, params) for i, p in enumerate(prompts)]
    for _ in range(6):
        eng.step()
    used = eng.kv_manager.num_used_blocks
    held = len(eng.kv_manager.get_blocks(reqs[1].seqs[0]))
    assert held > 0
    assert eng.abort("r1") and not eng.abort("r1")
    assert eng.kv_manager.num_used_blocks == used - held
    assert eng.stats().requests_aborted_total == 1
    while eng.has_unfinished():
        eng.step()
    for i in (0, 2):
        assert steps_ids(eng.result(reqs[i]).completions[0]) == ref_ids(tiny, prompts[i], params)
    assert eng.kv_manager.num_free_blocks == eng.kv_manager.num_blocks
    # Abort while still waiting in the queue.
    eng.add_request("w", prompts[0], params)
    assert eng.abort("w") and eng.kv_manager.num_free_blocks == eng.kv_manager.num_blocks


def test_n_samples_share_prompt_blocks(tiny, make_engine):
    eng = make_engine(tiny, block_size=4)
    prompt = random_prompts([18], seed=26)[0]  # 4 full blocks + a partial one
    params = SamplingParams(temperature=1.0, seed=7, n=3, max_tokens=6, ignore_eos=True)
    req = eng.add_request("n3", prompt, params)
    eng.step()  # the whole prompt, then the fork and three first samples
    seqs = req.seqs
    assert len(seqs) == 3
    kv = eng.kv_manager

    def table(s):
        return kv.get_blocks(s).block_ids

    full = table(seqs[0])[:4]
    for s in seqs[1:]:
        assert table(s)[:4] == full
    assert all(kv.ref_count[b] == 3 for b in full)
    # The fork shares the partial prompt block too; the next write copies it for all but one.
    assert {table(s)[4] for s in seqs} == {table(seqs[0])[4]}
    assert kv.num_used_blocks == 5
    eng.step()
    assert len({table(s)[4] for s in seqs}) == 3
    assert kv.num_used_blocks == 4 + 3
    while eng.has_unfinished():
        eng.step()
    res = eng.result(req)
    assert len(res.completions) == 3
    # Sample i of a seeded request equals a single request seeded seed + i.
    for i, comp in enumerate(res.completions):
        alone = run(eng, prompt, params.with_(n=1, seed=7 + i)).completions[0]
        assert comp.token_ids == alone.token_ids
    assert len({tuple(c.token_ids) for c in res.completions}) > 1


def test_n_samples_greedy_are_identical_and_survive_preemption(tiny, make_engine):
    eng = make_engine(tiny, block_size=4, num_blocks=14, max_num_batched_tokens=8)
    prompts = random_prompts([17, 9], seed=27)
    params = SamplingParams(temperature=0, n=3, max_tokens=12, ignore_eos=True)
    results = eng.generate(prompts, params)
    assert eng.stats().preemptions_total > 0
    for p, r in zip(prompts, results):
        want = ref_ids(tiny, p, params.with_(n=1))
        assert [steps_ids(c) for c in r.completions] == [want] * 3


def test_manager_unit_cow_and_free_order():
    class S:  # the few attributes the manager reads
        def __init__(self, toks):
            self.token_ids, self.num_computed = toks, 0
            self.request = SimpleNamespace(params=SimpleNamespace(lora=None))  # the base model's prefix chain

    kv = KVCacheManager(8, 4)
    a = S(list(range(10)))
    got = kv.allocate_slots(a, 10)
    assert got is not None and got.copies == ()
    a.num_computed = 10
    kv.cache_full_blocks(a)
    a_blocks = kv.get_blocks(a).block_ids
    assert a_blocks == got.block_ids and len(a_blocks) == 3 and len(kv.cached) == 2
    b = S(list(a.token_ids))
    assert kv.fork(a, b).block_ids == a_blocks
    b.num_computed = a.num_computed
    b.token_ids.append(5)
    b_got = kv.allocate_slots(b, 1)  # writes into the shared partial block
    assert b_got.copies == ((a_blocks[2], b_got.block_ids[2]),)
    assert b_got.block_ids[:2] == a_blocks[:2] and kv.get_blocks(b).block_ids == b_got.block_ids
    assert kv.allocate_slots(S(list(range(40))), 40) is None  # too big: nothing changes
    kv.check_consistency()
    prefix = a_blocks[:2]
    assert kv.free(b).block_ids == b_got.block_ids
    kv.free(a)
    assert kv.num_free_blocks == 8 and kv.get_blocks(a).block_ids == ()
    # Unhashed blocks are reused first; the cached prefix survives the next allocations.
    c = S(list(range(100, 120)))
    c_got = kv.allocate_slots(c, 20)  # 5 of the 6 blocks not holding the prefix
    assert not set(c_got.block_ids) & set(prefix)
    d = S(list(range(10)))
    hit = kv.get_computed_blocks(d)
    assert hit.block_ids == prefix
    assert kv.allocate_slots(d, 2, hit).block_ids[:2] == prefix
    assert kv.num_free_blocks == 0
    kv.free(c)
    kv.free(d)
    kv.check_consistency()
    assert kv.num_free_blocks == 8 and len(kv.cached) >= 2
