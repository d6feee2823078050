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
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
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


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_count = [0] * num_blocks
        self.hash_of: list[bytes | None] = [None] * num_blocks
        self.free_queue: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.cached: dict[bytes, int] = {}
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

    # -- hashing ------------------------------------------------------------------------
    def _hashes(self, seq: "Sequence", n_blocks: int) -> list[bytes]:
        """The first ``n_blocks`` block hashes of ``seq``'s tokens (computed once, kept on seq)."""
        hs, bs, toks = seq.block_hashes, self.block_size, seq.token_ids
        while len(hs) < n_blocks:
            i = len(hs)
            hs.append(block_hash(hs[-1] if hs else None, toks[i * bs:(i + 1) * bs]))
        return hs

    def find_cached_prefix(self, seq: "Sequence") -> list[int]:
        """Cached blocks holding a prefix of ``seq``. The last token is always left to compute,
        since its logits are needed for the next sample."""
        if not self.enable_prefix_caching:
            return []
        n_full = (len(seq.token_ids) - 1) // self.block_size
        hit: list[int] = []
        for h in self._hashes(seq, n_full):
            b = self.cached.get(h)
            if b is None:
                break
            hit.append(b)
        self.prefix_queries += len(seq.token_ids)
        self.prefix_hits += len(hit) * self.block_size
        return hit

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

    def allocate(self, seq: "Sequence", num_new_tokens: int, cached_blocks: list[int] | None = None,
                 copies: list[tuple[int, int]] | None = None) -> bool:
        """Give ``seq`` room for ``num_new_tokens`` more tokens after its computed ones (after
        ``cached_blocks``, a prefix hit, for a sequence being admitted). Returns False, changing
        nothing, when there are not enough free blocks. Copy-on-write pairs go to ``copies``."""
        bs = self.block_size
        cached_blocks = cached_blocks or []
        start = len(cached_blocks) * bs if cached_blocks else seq.num_computed
        table = seq.block_table
        have = len(table) + len(cached_blocks)
        new = max(0, self.blocks_needed(start + num_new_tokens) - have)
        # The first block written to may be shared (after a fork): it needs a private copy.
        first = start // bs
        cow = first < len(table) and self.ref_count[table[first]] > 1
        revived = sum(1 for b in cached_blocks if self.ref_count[b] == 0)
        if new + cow + revived > len(self.free_queue):
            return False
        for b in cached_blocks:
            if self.ref_count[b] == 0:
                del self.free_queue[b]
            self.ref_count[b] += 1
            table.append(b)
        if cow:
            src = table[first]
            dst = self._pop_free()
            self.ref_count[src] -= 1
            table[first] = dst
            if copies is not None:
                copies.append((src, dst))
        for _ in range(new):
            table.append(self._pop_free())
        return True

    def cache_full_blocks(self, seq: "Sequence") -> None:
        """Register the blocks ``seq`` has filled completely, so later prompts can reuse them."""
        if not self.enable_prefix_caching:
            return
        n_full = min(seq.num_computed // self.block_size, len(seq.block_table))
        if n_full <= seq.num_cached_blocks:
            return
        hashes = self._hashes(seq, n_full)
        for i in range(seq.num_cached_blocks, n_full):
            b, h = seq.block_table[i], hashes[i]
            if self.hash_of[b] is None and h not in self.cached:
                self.cached[h] = b
                self.hash_of[b] = h
        seq.num_cached_blocks = n_full

    def fork(self, parent: "Sequence", child: "Sequence") -> None:
        """``child`` shares every block of ``parent`` (copy on write happens at the next write)."""
        child.block_table = list(parent.block_table)
        for b in child.block_table:
            self.ref_count[b] += 1
        child.block_hashes = list(parent.block_hashes)
        child.num_cached_blocks = parent.num_cached_blocks

    def free(self, seq: "Sequence") -> None:
        for b in reversed(seq.block_table):
            self.ref_count[b] -= 1
            if self.ref_count[b] == 0:
                self.free_queue[b] = None
                if self.hash_of[b] is None:
                    self.free_queue.move_to_end(b, last=False)
        seq.block_table = []
        seq.num_cached_blocks = 0

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (e.g. after the weights changed)."""
        for h, b in self.cached.items():
            self.hash_of[b] = None
        self.cached.clear()

    def check_consistency(self) -> None:
        """Assert the bookkeeping invariants (used by tests)."""
        assert all(r >= 0 for r in self.ref_count), "negative ref count"
        free = set(self.free_queue)
        assert free == {b for b in range(self.num_blocks) if self.ref_count[b] == 0}, "free list out of sync"
        for h, b in self.cached.items():
            assert self.hash_of[b] == h, "cached map out of sync"
