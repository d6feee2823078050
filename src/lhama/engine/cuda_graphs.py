"""Decode steps replayed from CUDA graphs.

A decode step of a small batch on a GPU is launch-bound: an 8B model issues ~15 kernels per layer,
each a few microseconds of work, and Python plus the launches take longer than the kernels. A CUDA
graph records the whole step once and replays it with one launch.

A graph fixes every shape and address, so steps are padded into buckets: the batch up to the next
of 1, 2, 4, 8, 16, 24, 32, ... sequences and the context up to the next power of two of blocks.
Each (batch, blocks) bucket is captured the first time it is needed, into one memory pool shared
by all graphs. Inputs travel as one int64 buffer (tokens, positions, slot bases, lengths, block
tables) copied in with one transfer; slots, gather indices and the length mask are computed
inside the graph. Padding rows write into a spare block that no sequence owns and attend to one
slot of it, so they neither touch real cache rows nor produce NaNs.

``capture=False`` runs the same padded, static-shape step eagerly: that is how the bucketing and
padding are tested on machines without a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lhama.engine.paged_cache import AttentionMetadata, PagedKVCache
from lhama.model import Transformer

log = logging.getLogger("lhama.engine")


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 8 up to ``max_batch`` (always included)."""
    out = [b for b in (1, 2, 4) if b < max_batch]
    out += list(range(8, max_batch, 8))
    return out + [max_batch]


def block_buckets(max_blocks: int) -> list[int]:
    out, b = [], 1
    while b < max_blocks:
        out.append(b)
        b *= 2
    return out + [max_blocks]


def _bucket(buckets: list[int], n: int) -> int:
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} exceeds the largest bucket {buckets[-1]}")


@dataclass
class _Entry:
    graph: torch.cuda.CUDAGraph | None
    inputs: torch.Tensor  # view of the staging buffer this bucket reads
    hidden: torch.Tensor | None  # [B, dim] output written by each replay (graphs only)


class DecodeGraphs:
    """Padded, bucketed decode steps for ``ModelRunner``; ``run`` returns hidden states [B, dim]."""

    def __init__(
        self,
        model: Transformer,
        cache: PagedKVCache,
        hidden_fn: Callable,
        *,
        max_batch: int,
        max_blocks: int,
        spare_block: int,
        capture: bool = True,
    ):
        self.model, self.cache, self.hidden_fn = model, cache, hidden_fn
        self.device = model.device
        self.graphs_enabled = capture
        self.batch_sizes = batch_buckets(max_batch)
        self.block_counts = block_buckets(max_blocks)
        self.spare = spare_block
        bs, KVH = cache.block_size, cache.n_kv_heads
        self._heads = torch.arange(KVH, device=self.device)
        self._staging = torch.zeros(max_batch * (4 + max_blocks), dtype=torch.long, device=self.device)
        self._entries: dict[tuple[int, int], _Entry] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        self._spare_slot = self.spare * bs * KVH  # storage row of (spare block, head 0, offset 0)

    @property
    def max_batch(self) -> int:
        return self.batch_sizes[-1]

    @property
    def num_captured(self) -> int:
        return sum(e.graph is not None for e in self._entries.values())

    def fits(self, batch: int, blocks: int) -> bool:
        return batch <= self.batch_sizes[-1] and blocks <= self.block_counts[-1]

    @torch.inference_mode()
    def capture(self, batch_sizes: list[int], context_lens: list[int]) -> int:
        """Capture ahead of time the buckets that hold these batch sizes, for every context up to
        the largest length (a server's warm-up; otherwise each bucket is captured on first use,
        a one-off pause of a few hundred ms for an 8B model). Returns how many graphs exist."""
        bs = self.cache.block_size
        top = min(max(-(-n // bs) for n in context_lens), self.block_counts[-1])
        for n in sorted({_bucket(self.batch_sizes, min(b, self.max_batch)) for b in batch_sizes}):
            for mb in self.block_counts:
                self._entry(n, mb)
                if mb >= top:
                    break
        return len(self._entries)

    # -- one step ----------------------------------------------------------------------------
    def _forward(self, B: int, MB: int, inputs: torch.Tensor) -> torch.Tensor:
        """The static-shape step: everything derived from ``inputs`` on the device."""
        cache, bs, KVH = self.cache, self.cache.block_size, self.cache.n_kv_heads
        tokens, positions, base, lens = inputs[: 4 * B].view(4, B)
        table = inputs[4 * B :].view(B, MB)
        slots = (base.unsqueeze(1) + self._heads * bs).flatten()
        idx = (table.unsqueeze(1) * KVH + self._heads.view(1, KVH, 1)).flatten()
        mask = torch.arange(MB * bs, device=self.device).unsqueeze(0) < lens.unsqueeze(1)
        cache.meta = AttentionMetadata(
            slots=slots,
            num_decode=B,
            decode_gather_idx=idx,
            decode_max_blocks=MB,
            decode_mask=mask.view(B, 1, 1, MB * bs),
        )
        try:
            return self.hidden_fn(tokens.unsqueeze(0), positions.unsqueeze(0), cache)[0]
        finally:
            cache.meta = None

    def _entry(self, B: int, MB: int) -> _Entry:
        key = (B, MB)
        e = self._entries.get(key)
        if e is not None:
            return e
        inputs = self._staging[: B * (4 + MB)]
        if not self.graphs_enabled:
            e = self._entries[key] = _Entry(None, inputs, None)
            return e
        inputs.copy_(self._host_inputs([], [], [], [], [], B, MB))  # warm-ups write only the spare block
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm-up off the capture stream: lazy inits, autotuning
            for _ in range(2):
                self._forward(B, MB, inputs)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        self.cache.fresh_buffers = True  # the graph's gathers get buffers of its own pool
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                hidden = self._forward(B, MB, inputs)
        finally:
            self.cache.fresh_buffers = False
        log.debug("captured a decode CUDA graph for batch %d, %d blocks", B, MB)
        e = self._entries[key] = _Entry(graph, inputs, hidden)
        return e

    def _host_inputs(self, tokens, positions, bases, lens, tables, B: int, MB: int) -> torch.Tensor:
        pad = B - len(tokens)
        rows = [t + [self.spare] * (MB - len(t)) for t in tables] + [[self.spare] * MB] * pad
        flat = (
            list(tokens)
            + [0] * pad
            + list(positions)
            + [0] * pad
            + list(bases)
            + [self._spare_slot] * pad
            + list(lens)
            + [1] * pad
            + [b for r in rows for b in r]
        )
        return torch.tensor(flat, dtype=torch.long)

    @torch.inference_mode()
    def run(self, tokens: list[int], positions: list[int], tables: list[list[int]]) -> torch.Tensor:
        """Hidden states [len(tokens), dim] of one decode step; ``tables[i]`` holds the blocks of
        sequence i up to and including the one its new token goes into. The result lives in the
        graphs' shared pool: use it before the next ``run`` (another bucket's replay may reuse it)."""
        n = len(tokens)
        bs, KVH = self.cache.block_size, self.cache.n_kv_heads
        B = _bucket(self.batch_sizes, n)
        MB = _bucket(self.block_counts, max(len(t) for t in tables))
        bases = [t[p // bs] * bs * KVH + p % bs for t, p in zip(tables, positions)]
        lens = [p + 1 for p in positions]
        e = self._entry(B, MB)
        host = self._host_inputs(tokens, positions, bases, lens, tables, B, MB)
        e.inputs.copy_(host, non_blocking=False)
        if e.graph is None:
            return self._forward(B, MB, e.inputs)[:n]
        e.graph.replay()
        return e.hidden[:n]
