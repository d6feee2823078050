"""Modules that hold llama.cpp's quantized blocks exactly (``lhama.checkpoints.quantized``
builds them from a GGUF file without a float copy of the weights).

* Q4_0 / Q4_1 linears are ``Int4WeightOnlyLinear.from_groups`` (group 32, fp16 scale and min).
* ``SplitInt8Linear``: Q8_0 (int8 ``q`` times one fp16 ``d`` per 32 weights) has no int8 kernel
  with per-group scales, so ``q = 16 * hi + lo`` (hi in -8..7, lo in 0..15) is split into two
  exact int4 group-32 matrices, ``hi`` scaled by 16d and ``lo`` by d, and summed: two int4
  kernel calls read the same bytes one int8 call would.
* ``BlockLinear``: a linear layer whose weight is the file's raw Q4_0/Q4_1/Q8_0/Q6_K blocks, a view of
  the file's memory map (no copy, no repack), multiplied by ``lhama.quant.ggml.block_linear``.
  The default on a CPU where that library is available; the int4 modules above are the fallback.
* ``BlockLinearParts``: the same over a list of tensors stacked by rows (no copy of the parts).
* ``BlockEmbedding``: an embedding table kept as the file's raw blocks (any ggml type); a lookup
  decodes only the rows it needs (``ggml.block_rows`` for ``BLOCK_TYPES``, else the gguf package's
  own dequantization: exact by definition). A tied head is a ``BlockLinear`` over the same tensor.
"""

from __future__ import annotations

import gguf
import numpy as np
import torch
from torch import nn

from lhama.quant.int4 import Int4WeightOnlyLinear

Q8_GROUP = 32
Q = gguf.GGMLQuantizationType
BLOCK_TYPES = (Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q6_K)  # what ``lhama.quant.ggml`` computes on


def ggml_available() -> bool:
    """True when ``lhama.quant.ggml``'s compiled kernels can run here."""
    try:
        from lhama.quant import ggml
    except ImportError:
        return False
    return bool(ggml.available())


class BlockLinear(nn.Module):
    """``nn.Linear`` (no bias) whose weight is a GGUF tensor's raw blocks: ``blocks`` uint8
    [out_features, in_features / 32 * block bytes], exactly as stored (usually a read-only view of
    the file's memory map: the module neither copies nor writes it). ``forward`` is
    ``ggml.block_linear`` (its compiled kernels on the CPU; elsewhere, or without them, its
    dequantize-and-matmul reference). ``dequantize()`` gives the exact fp32 weight."""

    n_parts = 1

    def __init__(self, blocks: torch.Tensor, qtype: int, in_features: int):
        super().__init__()
        self._init_parts([blocks], qtype, in_features)

    def _init_parts(self, parts: list[torch.Tensor], qtype: int, in_features: int) -> None:
        per_block, block_bytes = gguf.GGML_QUANT_SIZES[Q(qtype)]
        for b in parts:
            if b.dtype != torch.uint8 or b.dim() != 2 or b.shape[1] * per_block != in_features * block_bytes:
                raise ValueError(f"{Q(qtype).name} blocks of {in_features} columns: got {tuple(b.shape)} {b.dtype}")
        self.qtype, self.in_features = int(qtype), in_features
        self.out_features = sum(b.shape[0] for b in parts)
        self.n_parts = len(parts)
        self.register_buffer("blocks", parts[0])
        for i, b in enumerate(parts[1:], 1):
            self.register_buffer(f"blocks_{i}", b)

    @property
    def parts(self) -> list[torch.Tensor]:
        """The row blocks of the weight, in output order (``[blocks]`` but for ``BlockLinearParts``)."""
        return [self.blocks] + [getattr(self, f"blocks_{i}") for i in range(1, self.n_parts)]

    def dequantize(self) -> torch.Tensor:
        """The exact weight [out_features, in_features], fp32."""
        from lhama.quant import ggml

        return torch.cat([ggml.dequantize(b, self.qtype) for b in self.parts])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from lhama.quant import ggml

        return ggml.block_linear(x, self.blocks, self.qtype)

    def extra_repr(self) -> str:
        parts = f", {self.n_parts} parts" if self.n_parts > 1 else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, ggml type {Q(self.qtype).name}{parts}"
        )


class BlockLinearParts(BlockLinear):
    """A ``BlockLinear`` whose weight is stacked by rows from several tensors the file does not
    store back to back (wq|wk|wv, w1|w3 in many files): each part stays a view (buffers
    ``blocks``, ``blocks_1``, ...; no copy at load) and one ``ggml.block_linear`` call over the
    list multiplies them all, each output row bit-identical to the stacked copy's. Code that
    takes a ``BlockLinear``'s single ``blocks`` tensor must check ``n_parts`` (or the type)."""

    def __init__(self, parts: list[torch.Tensor], qtype: int, in_features: int):
        nn.Module.__init__(self)
        self._init_parts(list(parts), qtype, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from lhama.quant import ggml

        return ggml.block_linear(x, self.parts, self.qtype)


class SplitInt8Linear(nn.Module):
    def __init__(self, hi: Int4WeightOnlyLinear, lo: Int4WeightOnlyLinear):
        super().__init__()
        self.hi, self.lo = hi, lo
        self.in_features, self.out_features = hi.in_features, hi.out_features

    @classmethod
    def from_q8(cls, q: torch.Tensor, d: torch.Tensor, compute_dtype=torch.bfloat16) -> SplitInt8Linear:
        """q int8 [N, K], d [N, K / 32] (exact fp16 values): ``w = q * d``."""
        return cls.from_q8_rows([(q, d)], q.shape[0], q.shape[1], compute_dtype)

    @classmethod
    def from_q8_rows(cls, blocks, out_features: int, in_features: int, compute_dtype=torch.bfloat16):
        """``from_q8`` from consecutive row blocks ``(q, d)``; ``blocks`` is a callable returning
        a fresh iterator (each half reads them once, so only one block is unpacked at a time)."""
        blocks = blocks if callable(blocks) else (lambda b=blocks: iter(b))

        def hi():  # arithmetic shift: floor(q / 16) in -8..7, stored +8
            for q, d in blocks():
                yield ((q >> 4) + 8).to(torch.uint8), 16 * d, -128 * d

        def lo():
            for q, d in blocks():
                yield (q & 15).to(torch.uint8), d, torch.zeros_like(d)

        args = (out_features, in_features, Q8_GROUP, compute_dtype)
        return cls(Int4WeightOnlyLinear.from_group_rows(hi(), *args), Int4WeightOnlyLinear.from_group_rows(lo(), *args))

    def dequantize(self) -> torch.Tensor:
        """Exactly ``q * d`` in fp32 (each half is exact and their sum fits fp32's mantissa)."""
        return self.hi.dequantize() + self.lo.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hi(x) + self.lo(x)


class BlockEmbedding(nn.Module):
    """``nn.Embedding`` over raw ggml blocks ([vocab, bytes per row], uint8). ``weight`` is an
    empty tensor of the output dtype: what code asking ``tok_embeddings.weight`` for the model's
    dtype and device reads."""

    def __init__(self, blocks: torch.Tensor, qtype: int, dim: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.qtype, self.embedding_dim, self.num_embeddings = int(qtype), dim, blocks.shape[0]
        self.register_buffer("blocks", blocks)
        self.register_buffer("weight", torch.empty(0, dtype=dtype, device=blocks.device), persistent=False)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """fp32 rows for ``ids`` (any shape) -> [*ids.shape, dim]."""
        if self.qtype in BLOCK_TYPES and self.blocks.device.type == "cpu" and ggml_available():
            from lhama.quant import ggml

            return ggml.block_rows(self.blocks, self.qtype, ids.reshape(-1).cpu()).reshape(*ids.shape, -1)
        flat = ids.reshape(-1).cpu().numpy()
        raw = self.blocks.cpu().numpy()[flat]
        w = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(self.qtype)).astype(np.float32, copy=False)
        return torch.from_numpy(np.ascontiguousarray(w)).reshape(*ids.shape, self.embedding_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rows(ids).to(self.weight.device, self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, ggml type {gguf.GGMLQuantizationType(self.qtype).name}"
