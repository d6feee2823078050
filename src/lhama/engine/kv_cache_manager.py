"""Fixed-size KV blocks: who owns which, which are free, which hold a reusable prefix.

The manager only does bookkeeping on block ids; the tensors live in ``PagedKVCache``. Roles:

* **ref counts**: a block is shared by every sequence whose block table lists it (a cached
  prefix, or the prompt of ``n > 1`` samples after a fork). It is free when the count is 0.
* **prefix cache**: a full block is named by a hash chain over the token ids it and all blocks
  before it hold, so equal prefixes (a shared system prompt, an earlier turn) map to the same
  computed block. Freed blocks keep their hash and stay reusable until evicted.
* **free queue**: least recently freed first. Freed un-hashed blocks go to the front (nothing to
  lose), hashed ones to the back, and a sequence frees its tail first so that the blocks of its
  beginning - the ones most likely shared - are evicted last.
* **copy on write**: a sequence about to write into a block others share gets a private copy;
  the (source, destination) pair is returned for the model runner to copy before the forward.

Block tables are the manager's alone (as in vLLM v1's ``KVCacheManager``): others get
``KVCacheBlocks``, a read-only snapshot, and change tables only by asking the manager.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lhama.engine.sequence import Sequence


def block_hash(parent: bytes | None, tokens) -> bytes:
    """Hash of a full block given the hash of the block before it (128 bits: collisions would
    silently mix prompts, so no 64-bit Python ``hash``)."""
    h = hashlib.blake2b(array("q", tokens).tobytes(), digest_size=16)
    if parent is not None:
        h.update(parent)
    return h.digest()


@dataclass(frozen=True)
class KVCacheBlocks:
    """What the KV manager hands out: a sequence's block ids in position order (block ``i``
    holds positions ``i * block_size`` onwards), and the copy-on-write copies (source,
    destination) the runner must do before the step that writes them. Read-only: only the
    manager changes block tables, so the scheduler and runner cannot corrupt them."""

    block_ids: tuple[int, ...] = ()
    copies: tuple[tuple[int, int], ...] = ()

    def __len__(self) -> int:
        return len(self.block_ids)


@dataclass
class _SeqBlocks:
    """The manager's private record of one sequence."""

    table: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)  # hash chain of its full blocks (kept across preemption)
    num_cached: int = 0  # leading blocks already registered in the prefix cache


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_count = [0] * num_blocks
        self.hash_of: list[bytes | None] = [None] * num_blocks
        self.free_queue: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.cached: dict[bytes, int] = {}
        self._seqs: dict[object, _SeqBlocks] = {}  # by sequence (identity)
        # Prefix-cache counters, in prompt tokens looked up / found.
        self.prefix_queries = 0
        self.prefix_hits = 0

    # -- state --------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds (including evictable cached ones)."""
        return len(self.free_queue)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_queue)

    @property
    def usage(self) -> float:
        return self.num_used_blocks / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _rec(self, seq: Sequence) -> _SeqBlocks:
        rec = self._seqs.get(seq)
        if rec is None:
            rec = self._seqs[seq] = _SeqBlocks()
        return rec

    def get_blocks(self, seq: Sequence) -> KVCacheBlocks:
        """The blocks ``seq`` holds now (empty when it holds none)."""
        rec = self._seqs.get(seq)
        return KVCacheBlocks(tuple(rec.table)) if rec is not None else KVCacheBlocks()

    # -- hashing ------------------------------------------------------------------------
    def _hashes(self, seq: Sequence, n_blocks: int) -> list[bytes]:
        """The first ``n_blocks`` block hashes of ``seq``'s tokens (computed once, kept)."""
        hs, bs, toks = self._rec(seq).hashes, self.block_size, seq.token_ids
        while len(hs) < n_blocks:
            i = len(hs)
            # An adapter's KV differs from the base model's for the same tokens: its salt starts the chain.
            lora = seq.request.params.lora
            hs.append(
                block_hash(hs[-1] if hs else (lora.salt if lora is not None else None), toks[i * bs : (i + 1) * bs])
            )
        return hs

    def get_computed_blocks(self, seq: Sequence) -> KVCacheBlocks:
        """Cached blocks holding a prefix of ``seq`` (a sequence being admitted). The last token
        is always left to compute, since its logits are needed for the next sample. Counts the
        lookup; ``forget_lookup`` takes it back when the sequence is not admitted after all."""
        if not self.enable_prefix_caching:
            return KVCacheBlocks()
        n_full = (len(seq.token_ids) - 1) // self.block_size
        hit: list[int] = []
        for h in self._hashes(seq, n_full):
            b = self.cached.get(h)
            if b is None:
                break
            hit.append(b)
        self.prefix_queries += len(seq.token_ids)
        self.prefix_hits += len(hit) * self.block_size
        return KVCacheBlocks(tuple(hit))

    def forget_lookup(self, seq: Sequence, computed: KVCacheBlocks) -> None:
        if self.enable_prefix_caching:
            self.prefix_queries -= len(seq.token_ids)
            self.prefix_hits -= len(computed) * self.block_size

    # -- allocation ---------------------------------------------------------------------
    def _pop_free(self) -> int:
        b, _ = self.free_queue.popitem(last=False)
        h = self.hash_of[b]
        if h is not None:  # evict: the block is about to be overwritten
            if self.cached.get(h) == b:
                del self.cached[h]
            self.hash_of[b] = None
        self.ref_count[b] = 1
        return b

    def allocate_slots(
        self, seq: Sequence, num_new_tokens: int, computed: KVCacheBlocks | None = None
    ) -> KVCacheBlocks | None:
        """Room for ``num_new_tokens`` more tokens after ``seq``'s computed ones (after
        ``computed``, a prefix hit, for a sequence being admitted). Returns the sequence's
        blocks and the copies to do first, or None, changing nothing, when there are not
        enough free blocks."""
        bs = self.block_size
        hit = computed.block_ids if computed is not None else ()
        rec = self._rec(seq)
        table = rec.table
        start = len(hit) * bs if hit else seq.num_computed
        have = len(table) + len(hit)
        new = max(0, self.blocks_needed(start + num_new_tokens) - have)
        # The first block written to may be shared (after a fork): it needs a private copy.
        first = start // bs
        cow = first < len(table) and self.ref_count[table[first]] > 1
        revived = sum(1 for b in hit if self.ref_count[b] == 0)
        if new + cow + revived > len(self.free_queue):
            return None
        for b in hit:
            if self.ref_count[b] == 0:
                del self.free_queue[b]
            self.ref_count[b] += 1
            table.append(b)
        copies: tuple[tuple[int, int], ...] = ()
        if cow:
            src = table[first]
            dst = self._pop_free()
            self.ref_count[src] -= 1
            table[first] = dst
            copies = ((src, dst),)
        for _ in range(new):
            table.append(self._pop_free())
        return KVCacheBlocks(tuple(table), copies)

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the blocks ``seq`` has filled completely, so later prompts can reuse them."""
        if not self.enable_prefix_caching:
            return
        rec = self._seqs.get(seq)
        if rec is None:
            return
        n_full = min(seq.num_computed // self.block_size, len(rec.table))
        if n_full <= rec.num_cached:
            return
        hashes = self._hashes(seq, n_full)
        for i in range(rec.num_cached, n_full):
            b, h = rec.table[i], hashes[i]
            if self.hash_of[b] is None and h not in self.cached:
                self.cached[h] = b
                self.hash_of[b] = h
        rec.num_cached = n_full

    def fork(self, parent: Sequence, child: Sequence) -> KVCacheBlocks:
        """``child`` shares every block of ``parent`` (copy on write happens at the next write)."""
        p = self._rec(parent)
        self._seqs[child] = _SeqBlocks(list(p.table), list(p.hashes), p.num_cached)
        for b in p.table:
            self.ref_count[b] += 1
        return KVCacheBlocks(tuple(p.table))

    def free(self, seq: Sequence, *, keep_hashes: bool = False) -> KVCacheBlocks:
        """Give back every block of ``seq``; returns what it held. ``keep_hashes``: it will be
        computed again (preemption), so its block hashes are worth keeping."""
        rec = self._seqs.pop(seq, None)
        if rec is None:
            return KVCacheBlocks()
        for b in reversed(rec.table):
            self.ref_count[b] -= 1
            if self.ref_count[b] == 0:
                self.free_queue[b] = None
                if self.hash_of[b] is None:
                    self.free_queue.move_to_end(b, last=False)
        if keep_hashes and rec.hashes:
            self._seqs[seq] = _SeqBlocks(hashes=rec.hashes)
        return KVCacheBlocks(tuple(rec.table))

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (e.g. after the weights changed)."""
        for b in self.cached.values():
            self.hash_of[b] = None
        self.cached.clear()

    def check_consistency(self) -> None:
        """Assert the bookkeeping invariants (used by tests)."""
        assert all(r >= 0 for r in self.ref_count), "negative ref count"
        free = set(self.free_queue)
        assert free == {b for b in range(self.num_blocks) if self.ref_count[b] == 0}, "free list out of sync"
        for h, b in self.cached.items():
            assert self.hash_of[b] == h, "cached map out of sync"
        held: dict[int, int] = {}
        for rec in self._seqs.values():
            for b in rec.table:
                held[b] = held.get(b, 0) + 1
        assert held == {b: r for b, r in enumerate(self.ref_count) if r}, "block tables out of sync with ref counts"
