"""The scheduler and KV manager on their own: fake requests, no model, no weights (as vLLM's
tests/v1/core/test_scheduler.py). A step here is what the engine does around the runner:
schedule, report the step computed, append a sampled token, finish at ``max_tokens``."""

from __future__ import annotations

from lhama.engine import EngineConfig, KVCacheManager, Scheduler
from lhama.engine.sequence import Request, SeqStatus, Sequence
from lhama.generate import SamplingParams

VOCAB = 100
TOKEN = 7  # what the fake runner "samples"


def make(num_blocks=16, block_size=4, **config):
    kv = KVCacheManager(num_blocks, block_size)
    return Scheduler(EngineConfig(block_size=block_size, num_blocks=num_blocks, **config), kv), kv


def make_seq(rid, prompt, max_tokens=4, n=1):
    req = Request(rid, list(prompt), SamplingParams(temperature=0, max_tokens=max_tokens, n=n), frozenset())
    seq = Sequence(req, 0, list(prompt), VOCAB)
    req.seqs.append(seq)
    return seq


def step(s: Scheduler):
    """One engine step with a fake runner; returns the scheduler's output."""
    return advance(s, s.schedule())


def advance(s: Scheduler, out):
    """The rest of the step after ``s.schedule()`` gave ``out``."""
    s.update_from_output(out)
    for e in out.scheduled:
        if e.samples:
            e.seq.append_token(TOKEN)
            if e.seq.num_output >= e.seq.params.max_tokens:
                s.finish(e.seq)
    return out


def plan(out):
    return [(e.seq.request.request_id, e.start, e.num_new) for e in out.scheduled]


def test_admission_respects_max_num_seqs_and_the_token_budget():
    s, kv = make(max_num_seqs=2, max_num_batched_tokens=8)
    a, b, c = make_seq("a", range(5)), make_seq("b", range(10, 15)), make_seq("c", range(20, 23))
    for q in (a, b, c):
        s.add(q)
    out = s.schedule()
    # a whole, b chunked to what is left of the budget, c waits (two running already).
    assert plan(out) == [("a", 0, 5), ("b", 0, 3)]
    assert [e.samples for e in out.scheduled] == [True, False]
    assert s.running == [a, b] and list(s.waiting) == [c] and c.status is SeqStatus.WAITING
    # Each scheduled sequence gets the blocks covering what it computes, none shared.
    assert [len(e.blocks) for e in out.scheduled] == [2, 1]
    assert not set(out.scheduled[0].blocks.block_ids) & set(out.scheduled[1].blocks.block_ids)
    assert kv.num_used_blocks == 3 and out.num_tokens == 8


def test_chunked_prefill_runs_beside_decodes_which_go_first():
    s, kv = make(max_num_batched_tokens=4)
    a = make_seq("a", range(3), max_tokens=10)
    s.add(a)
    assert plan(step(s)) == [("a", 0, 3)]
    long = make_seq("long", range(50, 60))
    s.add(long)
    # The decode of a takes one token of the budget every step; the prompt gets the rest, in chunks.
    assert plan(step(s)) == [("a", 3, 1), ("long", 0, 3)]
    assert plan(step(s)) == [("a", 4, 1), ("long", 3, 3)]
    out = s.schedule()
    assert plan(out) == [("a", 5, 1), ("long", 6, 3)] and [e.samples for e in out.scheduled] == [True, False]
    advance(s, out)
    out = s.schedule()
    assert plan(out) == [("a", 6, 1), ("long", 9, 1)] and all(e.samples for e in out.scheduled)
    advance(s, out)
    assert long.num_output == 1 and long.num_computed == 10
    assert len(kv.get_blocks(long)) == 3  # 10 tokens computed, the 11th needs no new block yet


def test_preemption_when_blocks_run_out_takes_the_newest():
    s, kv = make(num_blocks=4, block_size=4)
    a, b = make_seq("a", range(6), max_tokens=6), make_seq("b", range(30, 36), max_tokens=6)
    s.add(a)
    s.add(b)
    step(s)  # both prompts: 2 blocks each, the pool is full
    assert kv.num_free_blocks == 0
    step(s)
    step(s)  # positions 6 and 7 still fit the second blocks
    assert a.num_tokens == b.num_tokens == 9
    out = step(s)  # position 8 needs a third block each: b, the newest, makes room for a
    assert out.preempted == [b] and plan(out) == [("a", 8, 1)]
    assert list(s.waiting) == [b] and s.running == [a]
    assert b.status is SeqStatus.WAITING and b.num_computed == 0 and b.num_preemptions == 1
    assert kv.get_blocks(b).block_ids == () and len(kv.get_blocks(a)) == 3
    assert s.num_preemptions == 1
    kv.check_consistency()
    # No admission in a step that preempted; b comes back, prompt and output recomputed, once a
    # finishes - its first block (still in the prefix cache) is reused.
    while a.status is not SeqStatus.FINISHED:
        assert all(e.seq is a for e in step(s).scheduled)
    out = step(s)
    assert plan(out) == [("b", 4, 5)] and b.num_output == 4  # it sampled again
    while s.has_work():
        step(s)
    assert b.num_output == 6 and kv.num_free_blocks == 4
    kv.check_consistency()


def test_finishing_frees_blocks_and_keeps_full_ones_cached():
    s, kv = make(num_blocks=8, block_size=4)
    a = make_seq("a", range(9), max_tokens=3)
    s.add(a)
    while s.has_work():
        step(s)
    assert a.status is SeqStatus.FINISHED and a.num_output == 3
    assert kv.num_free_blocks == 8 and kv.get_blocks(a).block_ids == ()
    # 11 tokens computed (the last sampled one never is): two full blocks stay findable.
    assert len(kv.cached) == 2
    kv.check_consistency()


def test_prefix_cache_hit_skips_the_shared_blocks():
    s, kv = make(num_blocks=8, block_size=4)
    a = make_seq("a", list(range(8)) + [40], max_tokens=1)
    s.add(a)
    first = step(s)
    a_blocks = first.scheduled[0].blocks.block_ids
    assert not s.has_work()
    b = make_seq("b", list(range(8)) + [50, 51])
    s.add(b)
    out = s.schedule()
    assert plan(out) == [("b", 8, 2)] and b.request.num_cached_tokens == 8
    assert out.scheduled[0].blocks.block_ids[:2] == a_blocks[:2]
    assert kv.prefix_hits == 8 and kv.prefix_queries == 9 + 10  # prompt tokens looked up
    s.finish(b)
    assert kv.num_free_blocks == 8


def test_abort_while_waiting_and_while_running():
    s, kv = make(max_num_seqs=1)
    a, b = make_seq("a", range(6), max_tokens=20), make_seq("b", range(6))
    s.add(a)
    s.add(b)
    step(s)
    assert s.running == [a] and list(s.waiting) == [b] and kv.num_used_blocks == 2
    s.finish(b)  # waiting: leaves the queue, holds nothing
    s.finish(a)  # running: its blocks are free at once
    assert not s.has_work() and kv.num_free_blocks == kv.num_blocks
    assert a.status is b.status is SeqStatus.FINISHED
    assert s.schedule().scheduled == []


def test_fork_shares_blocks_and_copies_the_partial_one_on_write():
    s, kv = make(num_blocks=8, block_size=4)
    parent = make_seq("n2", range(6), n=2)
    s.add(parent)
    step(s)
    child = Sequence(parent.request, 1, list(parent.token_ids), VOCAB)
    parent.request.seqs.append(child)
    s.fork(parent, child)
    assert kv.get_blocks(child) == kv.get_blocks(parent) and child.num_computed == parent.num_computed
    assert all(kv.ref_count[b] == 2 for b in kv.get_blocks(parent).block_ids)
    out = s.schedule()
    # Both write position 6 into the shared second block: the first to ask gets a private copy.
    assert plan(out) == [("n2", 6, 1), ("n2", 6, 1)]
    ((src, dst),) = out.copies
    pb, cb = (e.blocks.block_ids for e in out.scheduled)
    assert pb[0] == cb[0] and {pb[1], cb[1]} == {src, dst}
    s.finish(parent)
    s.finish(child)
    assert kv.num_free_blocks == 8
    kv.check_consistency()
