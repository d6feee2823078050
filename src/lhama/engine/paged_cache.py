"""Paged KV storage and the attention over it: what the model's ``cache.attend`` calls.

One tensor holds every layer's keys and values as ``[layer, k|v, block * kv_head, block_size,
head_dim]``: the rows of one block and one KV head are contiguous, so gathering a sequence's
blocks (one ``index_select``) yields ``[kv_head, tokens, head_dim]`` ready for attention without
a transpose copy.

A step's tokens arrive flattened as one row ``[1, N]`` (so every linear layer is one matmul):
first the sequences computing a single token (decodes), then the prompt chunks. Decodes attend
in one batched SDPA call over their gathered, padded contexts with a length mask; each prompt
chunk attends over its own context with a causal mask.

An int8 cache (``kv_dtype="int8"``) stores each (token, KV head) row as head_dim int8 values and
their bf16 scale (``lhama.model.kv_cache.quantize_kv``): rows of head_dim + 2 bytes. Decode rows
on the CPU read them in place (the C++ attention scales each key's score and each value's weight);
the other paths dequantize what they gather.

Grouped-query attention without copying K/V: the G query heads that share a KV head are laid
out as G query rows of that head, so K/V are used once per KV head, never repeated.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lhama.model import ModelArgs, kv_cache_dtype
from lhama.model.fused import fused_ops
from lhama.model.kv_cache import FUSED_KV_DTYPES, dequantize_kv, kv_row_width, quantize_kv


@dataclass
class PrefillChunk:
    offset: int  # first row of the chunk in the flattened step
    num_new: int
    context: int  # tokens attended to: computed before + this chunk
    gather_idx: torch.Tensor  # [KVH * n_blocks] rows of the storage, KV head major
    mask: torch.Tensor  # [G * num_new, context] causal mask, one copy per query head of a group


@dataclass
class RowGroup:
    """Deterministic mode: query rows whose keys span the same number of whole blocks."""

    rows: torch.Tensor  # [R] rows of the step
    gather_idx: torch.Tensor  # [R * KVH * blocks] storage rows, per row KV head major
    blocks: int
    valid: torch.Tensor  # [R, 1, 1, blocks * block_size] key at or before the row's position


@dataclass
class AttentionMetadata:
    slots: torch.Tensor  # [N * KVH] storage rows (block * KVH + h) * block_size + offset, per token and head
    num_decode: int = 0
    decode_gather_idx: torch.Tensor | None = None  # [Bd * KVH * max_blocks]
    decode_max_blocks: int = 0
    decode_mask: torch.Tensor | None = None  # [Bd, 1, 1, max_blocks * block_size]
    decode_tables: torch.Tensor | None = None  # [Bd, max_blocks] block ids (int64), zero-padded
    decode_lens: torch.Tensor | None = None  # [Bd] positions attended to (int64)
    prefills: list[PrefillChunk] = field(default_factory=list)
    # Deterministic mode (``attend_rows``): the rows whose K/V are written (padding rows are
    # not), and the query rows grouped by how many blocks their keys span.
    write_rows: torch.Tensor | None = None
    row_groups: list[RowGroup] | None = None


def untouched_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Zeros; on a CPU an anonymous map whose pages the OS provides on first write, so a large
    cache costs resident memory only for the blocks in use (torch.zeros would write every page
    now). Not numpy's zeros: numpy asks for transparent huge pages on large arrays, and the cache
    is one region per layer and K/V, so one short sequence's first write in each region made a
    whole 2 MiB page resident (142 MiB for a 520-token stream that wrote 24 MiB)."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes == 0:
        return torch.zeros(shape, dtype=dtype)
    region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # (THP set to "always" would still use huge pages)
        region.madvise(mmap.MADV_NOHUGEPAGE)
    return torch.frombuffer(region, dtype=torch.uint8).view(dtype).view(shape)  # keeps the map alive


class PagedKVCache:
    def __init__(
        self,
        args: ModelArgs,
        num_blocks: int,
        block_size: int,
        *,
        dtype=torch.float32,
        device="cpu",
        spare_blocks: int = 0,
        kv_dtype: str | torch.dtype = "auto",
    ):
        """``dtype``: the model's; K/V are stored in ``kv_cache_dtype(dtype, device, kv_dtype)``
        (bf16 under an fp32 model on a CPU by default: half the memory, attention in fp32;
        "int8": about half of that again)."""
        self.n_layers, self.n_kv_heads, self.head_dim = args.n_layers, args.n_kv_heads, args.head_dim
        self.n_heads = args.n_heads
        self.group = args.n_heads // args.n_kv_heads
        self.num_blocks, self.block_size = num_blocks, block_size
        self.device = torch.device(device)
        self.dtype = kv_cache_dtype(dtype, self.device, kv_dtype)
        self.row = kv_row_width(self.head_dim, self.dtype)  # stored elements per (token, KV head)
        # Zeros, not empty: padded decode rows read unwritten slots (masked out, but 0 * NaN = NaN).
        # Spare blocks (after the ``num_blocks`` the KV manager hands out) take the writes of the
        # padding rows of CUDA-graph decode steps.
        self.kv = untouched_zeros(
            (self.n_layers, 2, (num_blocks + spare_blocks) * self.n_kv_heads, block_size, self.row),
            self.dtype,
            self.device,
        )
        # True while a CUDA graph is captured: gathers then allocate (from the graph's pool) instead
        # of reusing the eager scratch buffer, which a later eager step may reallocate under it.
        self.fresh_buffers = False
        self.meta: AttentionMetadata | None = None
        self._buf = torch.empty(0, dtype=self.dtype, device=self.device)  # gather scratch, reused by all layers

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: duplicate whole blocks (all layers, K and V) before the step writes."""
        if not copies:
            return
        H = self.n_kv_heads
        h = torch.arange(H, device=self.device)
        src = torch.tensor([s for s, _ in copies], device=self.device).unsqueeze(1) * H + h
        dst = torch.tensor([d for _, d in copies], device=self.device).unsqueeze(1) * H + h
        self.kv[:, :, dst.flatten()] = self.kv[:, :, src.flatten()]

    def _scratch(self, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        per = n_rows * self.block_size * self.row
        if self._buf.numel() < 2 * per:
            self._buf = torch.empty(2 * per, dtype=self.dtype, device=self.device)
        shape = (n_rows, self.block_size, self.row)
        return self._buf[:per].view(shape), self._buf[per : 2 * per].view(shape)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        md = self.meta
        if md.row_groups is not None:
            return self.attend_rows(layer, q, k, v)
        _, N, H, D = q.shape
        KVH, G, E = self.n_kv_heads, self.group, self.row
        Bd = md.num_decode
        kb, vb = self.kv[layer, 0], self.kv[layer, 1]
        fusable = Bd and md.decode_tables is not None and self.kv.dtype in FUSED_KV_DTYPES
        ops = fused_ops(q) if fusable else None
        if ops is not None and not self.fresh_buffers and q.is_contiguous() and k.is_contiguous() and v.is_contiguous():
            # Decode rows: their KV write and attention in one call, each row's blocks read in
            # place through its block table (no gather, no mask); whatever the step's size, so a
            # row's numbers do not depend on what it is batched with.
            dec = ops.attend_paged_decode(
                q[:, :Bd], k[:, :Bd], v[:, :Bd], kb, vb, md.slots[: Bd * KVH], md.decode_tables, md.decode_lens, q.dtype
            )
            if not md.prefills:
                return dec
            kb.view(-1, E).index_copy_(0, md.slots[Bd * KVH :], quantize_kv(k[0, Bd:].reshape(-1, D), kb.dtype))
            vb.view(-1, E).index_copy_(0, md.slots[Bd * KVH :], quantize_kv(v[0, Bd:].reshape(-1, D), vb.dtype))
            out = torch.empty_like(q.view(N, H, D))
            out[:Bd] = dec[0]
            return self._attend_prefills(q.view(N, H, D), kb, vb, out)
        kb.view(-1, E).index_copy_(0, md.slots, quantize_kv(k.view(N * KVH, D), kb.dtype))
        vb.view(-1, E).index_copy_(0, md.slots, quantize_kv(v.view(N * KVH, D), vb.dtype))
        q = q.view(N, H, D)
        dec = None
        if Bd:
            S = md.decode_max_blocks * self.block_size
            if self.fresh_buffers or torch.compiler.is_compiling():  # they plan their own buffers
                kg, vg = kb.index_select(0, md.decode_gather_idx), vb.index_select(0, md.decode_gather_idx)
            else:
                kg, vg = self._scratch(md.decode_gather_idx.numel())
                torch.index_select(kb, 0, md.decode_gather_idx, out=kg)
                torch.index_select(vb, 0, md.decode_gather_idx, out=vg)
            qd = q[:Bd].view(Bd, KVH, G, D)
            dec = F.scaled_dot_product_attention(
                qd,
                dequantize_kv(kg.view(Bd, KVH, S, E), q.dtype),
                dequantize_kv(vg.view(Bd, KVH, S, E), q.dtype),
                attn_mask=md.decode_mask,
            )
            if not md.prefills:
                return dec.reshape(1, Bd, H, D)
        out = torch.empty_like(q)
        if dec is not None:
            out[:Bd] = dec.reshape(Bd, H, D)
        return self._attend_prefills(q, kb, vb, out)

    def decode_layers_args(self, h: torch.Tensor):
        """The cache arguments of the whole-step decode op (``Transformer._fused_layers``) when
        every row of the step is a decode row read through its block table (fp32, 16-bit or int8
        storage), else None (then each layer calls ``attend``)."""
        md = self.meta
        if (
            md is None
            or md.row_groups is not None
            or md.prefills
            or md.decode_tables is None
            or self.fresh_buffers
            or self.kv.dtype not in FUSED_KV_DTYPES
            or h.dim() != 3
            or md.num_decode != h.shape[0] * h.shape[1]
        ):
            return None
        views = self.__dict__.get("_layer_views")
        if views is None or views[0] is not self.kv:
            views = self._layer_views = (self.kv, list(self.kv[:, 0].unbind(0)), list(self.kv[:, 1].unbind(0)))
        return views[1], views[2], 0, md.slots, md.decode_tables, md.decode_lens

    def _attend_prefills(self, q: torch.Tensor, kb: torch.Tensor, vb: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Each prompt chunk of the step over its own context (q [N, H, D], K/V written); fills
        its rows of ``out`` [N, H, D] and returns it as [1, N, H, D]."""
        N, H, D = q.shape
        KVH, G, E = self.n_kv_heads, self.group, self.row
        for p in self.meta.prefills:
            n, ctx = p.num_new, p.context
            kg, vg = self._scratch(p.gather_idx.numel())
            torch.index_select(kb, 0, p.gather_idx, out=kg)
            torch.index_select(vb, 0, p.gather_idx, out=vg)
            kp = dequantize_kv(kg.view(KVH, -1, E)[:, :ctx], q.dtype)  # a bf16/int8 cache: attention in q's dtype
            vp = dequantize_kv(vg.view(KVH, -1, E)[:, :ctx], q.dtype)
            # [n, H, D] -> [KVH, G * n, D]: query row (g, i) is head kvh * G + g at token i.
            qp = q[p.offset : p.offset + n].view(n, KVH, G, D).permute(1, 2, 0, 3).reshape(KVH, G * n, D)
            # 4-D: PyTorch's flash attention for CPU takes a 4-D call with a mask (2.5x faster than
            # the math path a 3-D one falls to: 1.8 vs 4.5 ms for a 256-token chunk, 9 heads)
            o = F.scaled_dot_product_attention(qp[None], kp[None], vp[None], attn_mask=p.mask)[0]
            out[p.offset : p.offset + n] = o.reshape(KVH, G, n, D).permute(2, 0, 1, 3).reshape(n, H, D)
        return out.view(1, N, H, D)

    # Elements of the largest [rows, KVH, G, keys, D] product ``attend_rows`` materializes.
    ROW_CHUNK_ELEMS = 1 << 22

    def attend_rows(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Batch-invariant attention (deterministic mode): a query row at position t attends over
        the whole blocks holding positions 0..t, keys after t masked, with elementwise products
        and last-dim reductions only (no GEMM whose blocking depends on the other rows). The
        reduction length depends on t alone, so the row's output is the same bits whichever
        rows, chunking or step it comes with."""
        md = self.meta
        _, N, H, D = q.shape
        KVH, G, bs, E = self.n_kv_heads, self.group, self.block_size, self.row
        kc = self.kv[layer, 0].view(-1, E)
        vc = self.kv[layer, 1].view(-1, E)
        kn, vn = k.view(N, KVH, D), v.view(N, KVH, D)
        if md.write_rows is not None:
            kn, vn = kn.index_select(0, md.write_rows), vn.index_select(0, md.write_rows)
        kc.index_copy_(0, md.slots, quantize_kv(kn.reshape(-1, D), kc.dtype))
        vc.index_copy_(0, md.slots, quantize_kv(vn.reshape(-1, D), vc.dtype))
        kb, vb = self.kv[layer, 0], self.kv[layer, 1]
        q = q.view(N, KVH, G, D) * (1.0 / math.sqrt(D))
        out = torch.zeros(N, KVH, G, D, dtype=q.dtype, device=q.device)
        for grp in md.row_groups:
            L = grp.blocks * bs
            step = max(1, self.ROW_CHUNK_ELEMS // (KVH * G * L * D))
            for i in range(0, grp.rows.numel(), step):
                rows = grp.rows[i : i + step]
                R = rows.numel()
                idx = grp.gather_idx[i * KVH * grp.blocks : (i + R) * KVH * grp.blocks]
                kg = dequantize_kv(kb.index_select(0, idx).view(R, KVH, 1, L, E), q.dtype)
                vt = dequantize_kv(vb.index_select(0, idx).view(R, KVH, L, E), q.dtype)
                vt = vt.transpose(-1, -2).contiguous().unsqueeze(2)
                s = (q.index_select(0, rows).unsqueeze(3) * kg).sum(-1)  # [R, KVH, G, L]
                p = torch.softmax(s.masked_fill(~grp.valid[i : i + R], float("-inf")), dim=-1)
                out.index_copy_(0, rows, (p.unsqueeze(3) * vt).sum(-1))  # [R, KVH, G, D]
        return out.view(1, N, H, D)
