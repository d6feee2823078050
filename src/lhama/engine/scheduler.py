"""The scheduler decides what runs in each step; it computes nothing.

Every step it picks sequences and a number of new tokens for each, under two limits:
``max_num_seqs`` running sequences and ``max_num_batched_tokens`` tokens per step. There is no
separate prefill phase: a sequence has ``num_tokens`` tokens of which ``num_computed`` have KV in
the cache, and a step computes some of the rest - one token for a decoding sequence, a chunk of
the prompt for a new one. Decodes are scheduled before prompt chunks so a long prompt never
stalls the running streams; the chunk gets what is left of the token budget.

When a running sequence needs a block and none is free, the newest running sequence is
preempted: its blocks are freed and it waits at the head of the queue, to be recomputed from
its tokens (prompt and output so far) when room returns - its full blocks usually still sit in
the prefix cache, so recomputing is cheap.

The scheduler owns the queues and each sequence's ``num_computed``; block tables belong to the
KV manager, which hands each scheduled sequence its ``KVCacheBlocks`` for the runner.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from lhama.engine.config import EngineConfig
from lhama.engine.kv_cache_manager import KVCacheBlocks, KVCacheManager
from lhama.engine.sequence import SeqStatus, Sequence


@dataclass
class ScheduledSeq:
    seq: Sequence
    start: int  # tokens computed before this step
    num_new: int  # tokens computed in this step
    blocks: KVCacheBlocks  # where its K/V lives (positions 0 .. start + num_new - 1)

    @property
    def samples(self) -> bool:
        """Whether this step ends with all known tokens computed, so the next one is sampled."""
        return self.start + self.num_new == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write (src block, dst block)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new for s in self.scheduled)


class Scheduler:
    def __init__(self, config: EngineConfig, kv: KVCacheManager):
        self.config = config
        self.kv = kv
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # sorted by priority (Sequence.sort_key)
        self.num_preemptions = 0

    # -- queue management ----------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _insert_running(self, seq: Sequence) -> None:
        seq.status = SeqStatus.RUNNING
        keys = [s.sort_key for s in self.running]
        self.running.insert(bisect.bisect(keys, seq.sort_key), seq)

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Start ``child`` running on ``parent``'s blocks (same computed tokens)."""
        self.kv.fork(parent, child)
        child.num_computed = parent.num_computed
        self._insert_running(child)

    def update_from_output(self, out: SchedulerOutput, failed: frozenset = frozenset()) -> None:
        """The runner computed the step: advance what it computed (except for the sequences in
        ``failed``, about to be finished) and offer the newly full blocks to the prefix cache."""
        for e in out.scheduled:
            if e.seq in failed or e.seq.status is not SeqStatus.RUNNING:
                continue
            e.seq.num_computed += e.num_new
            self.kv.cache_full_blocks(e.seq)

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or aborted sequence and free its blocks at once."""
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SeqStatus.WAITING:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        seq.status = SeqStatus.FINISHED
        self.kv.free(seq)

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        freed = set(self.kv.free(seq, keep_hashes=True).block_ids)
        seq.num_computed = 0
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        out.preempted.append(seq)
        # Undo whatever this step had already planned for it.
        out.scheduled = [s for s in out.scheduled if s.seq is not seq]
        out.copies = [(src, dst) for src, dst in out.copies if dst not in freed]

    # -- the decision ----------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        kv = self.kv

        # Running sequences: decodes first, then prompt chunks in priority order.
        order = sorted(self.running, key=lambda s: (s.num_tokens - s.num_computed > 1, s.sort_key))
        for seq in order:
            if seq.status is not SeqStatus.RUNNING:  # preempted earlier in this loop
                continue
            if budget <= 0:
                break
            n = min(seq.num_tokens - seq.num_computed, budget)
            while (blocks := kv.allocate_slots(seq, n)) is None:
                victim = self.running[-1]
                if victim in (s.seq for s in out.scheduled):
                    budget += next(s.num_new for s in out.scheduled if s.seq is victim)
                self._preempt(victim, out)
                if victim is seq:
                    break
            else:
                out.copies.extend(blocks.copies)
                out.scheduled.append(ScheduledSeq(seq, seq.num_computed, n, blocks))
                budget -= n

        # Waiting sequences, first come first served, unless this step already ran out of blocks.
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs and not out.preempted:
            seq = self.waiting[0]
            hit = kv.get_computed_blocks(seq)
            cached = len(hit) * kv.block_size
            n = min(seq.num_tokens - cached, budget)
            blocks = kv.allocate_slots(seq, n, hit)
            if blocks is None:
                kv.forget_lookup(seq, hit)  # the same sequence will ask again next step
                break
            self.waiting.popleft()
            seq.num_computed = cached
            if not seq.request.admitted:
                seq.request.admitted = True
                seq.request.num_cached_tokens = cached
            self._insert_running(seq)
            out.copies.extend(blocks.copies)
            out.scheduled.append(ScheduledSeq(seq, cached, n, blocks))
            budget -= n
        return out
