"""Weight-only int4, group-wise asymmetric: every ``group_size`` input channels of a row share a
scale and a zero point (the GPTQ/AWQ/gpt-fast layout; llama.cpp's Q4_1 is the same idea with 32).

Value convention (PyTorch's int4 kernels): ``w = (q - 8) * scale + zero`` with q in [0, 15], so
``zero`` is the group's value at mid-range. The packed layout is kernel-specific:

* ``cpu``: ``_convert_weight_to_int4pack_for_cpu`` + ``_weight_int4pack_mm_for_cpu`` (AVX2/512).
* ``cuda``: ``_convert_weight_to_int4pack`` (tinygemm tiles) + ``_weight_int4pack_mm``.
* ``nibbles``: two values per byte, low nibble first; dequantized per call. Used where no kernel
  runs (or the kernel disagrees with the reference on a probe): correct, not fast.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def quantize_int4_groupwise(weight: torch.Tensor, group_size: int):
    """q (int32 [N, K] in 0..15), scales and zeros (fp32 [N, K / group_size])."""
    N, K = weight.shape
    w = weight.detach().float().reshape(N, K // group_size, group_size)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = ((hi - lo) / 15.0).clamp(min=1e-8)
    q = torch.round((w - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
    zero = lo + 8.0 * scale
    return q.reshape(N, K), scale, zero


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    N, K = q.shape
    w = (q.reshape(N, K // group_size, group_size).float() - 8.0) * scale[..., None].float() + zero[..., None].float()
    return w.reshape(N, K)


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, group_size: int) -> torch.Tensor:
    """``q * scale + minimum`` in fp32, as llama.cpp and the gguf package compute Q4_0/Q4_1."""
    N, K = q.shape
    w = q.reshape(N, K // group_size, group_size).float() * scale[..., None].float() + minimum[..., None].float()
    return w.reshape(N, K)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    q = q.to(torch.uint8)
    return q[:, ::2] | (q[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    return torch.stack((packed & 0xF, packed >> 4), dim=-1).reshape(packed.shape[0], -1)


def _pack_for(layout: str, q: torch.Tensor) -> torch.Tensor:
    if layout == "cpu":
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
    if layout == "cuda":
        hi_first = ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8)
        return torch.ops.aten._convert_weight_to_int4pack(hi_first.contiguous(), 8)
    return pack_nibbles(q)


# The CPU kernel's packing interleaves tiles of 64 rows: row blocks that start on a multiple of
# 64 pack independently (the last one may be short). Inside a whole tile, byte (k, i) of its
# [K, 32] bytes holds row i's value k in the low nibble and row i + 32's in the high one.
CPU_TILE_ROWS = 64
# Rows from which the CPU int4 matmul dequantizes the weight to bf16 (a slice at a time) and runs
# a bf16 GEMM: ``_weight_int4pack_mm_for_cpu`` unpacks the whole weight again for every row, so
# its cost grows with the row count at about a one-row decode's cost per row (at 512 rows it was
# slower than an fp32 GEMM; this path 1.5x faster than both; break-even ~100 rows, measured on an
# AMD EPYC with AVX512-BF16: docs/performance.md).
CPU_LARGE_M = 128
# Weights dequantized at a time on that path (bf16 scratch of 2 bytes each, reused per slice).
_CPU_SLICE_WEIGHTS = 1 << 20


def _cpu_tiles_matmul(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int):
    """``x @ W.T`` for x [M, K] (bf16) and a CPU-layout int4 weight of whole 64-row tiles: each
    slice of tiles is dequantized as the kernel defines it, ``(q - 8) * scale + zero`` (fp32, then
    rounded to bf16 once), and multiplied in one batched bf16 GEMM."""
    M, K = x.shape
    N = packed.shape[0]
    T, R = N // CPU_TILE_ROWS, CPU_TILE_ROWS
    tiles = packed.view(T, K, R // 2)
    sz = scales_and_zeros.float().view(K // group_size, T, R, 2).permute(1, 0, 3, 2).contiguous()  # [T, K/g, 2, R]
    scale = sz[:, :, :1].contiguous()
    offset = (sz[:, :, 1:] - 8.0 * scale).contiguous()
    out = torch.empty(M, T, R, dtype=x.dtype, device=x.device)
    step = max(1, _CPU_SLICE_WEIGHTS // (K * R))
    for t in range(0, T, step):
        p = tiles[t : t + step]
        q = torch.stack((p & 15, p >> 4), dim=2).view(p.shape[0], K // group_size, group_size, R)
        w = torch.addcmul(offset[t : t + step], q.float(), scale[t : t + step]).to(x.dtype)
        out[:, t : t + step] = torch.matmul(x, w.view(-1, K, R)).transpose(0, 1)
    return out.view(M, N)


def _pack_cpu_tiles(q: torch.Tensor, variant: str) -> torch.Tensor:
    """What ``_convert_weight_to_int4pack_for_cpu`` makes of q (uint8 [N, K], 0..15), computed on
    uint8 with numpy (the op wants int32 input and was most of a quantized file's load time).
    Each tile of 64 rows becomes [K, 32] bytes: on AVX-512 builds byte j of column k holds rows j
    (low nibble) and j + 32 (high); elsewhere, and in a short last tile, rows 2j and 2j + 1."""
    a = q.numpy()
    N, K = a.shape
    full = N // CPU_TILE_ROWS * CPU_TILE_ROWS
    out = np.empty((N, K // 2), dtype=np.uint8)
    if full:
        t = a[:full].reshape(full // 64, 2, 32, K) if variant == "tile64" else a[:full].reshape(full // 64, 32, 2, K)
        lo, hi = (t[:, 0], t[:, 1]) if variant == "tile64" else (t[:, :, 0], t[:, :, 1])
        out[:full].reshape(full // 64, K, 32)[:] = (lo | (hi << 4)).transpose(0, 2, 1)
    if N > full:
        t = a[full:].reshape(-1, 2, K)
        out[full:].reshape(K, -1)[:] = (t[:, 0] | (t[:, 1] << 4)).T
    return torch.from_numpy(out)


def pack_cpu_nibble_blocks(qs: np.ndarray) -> torch.Tensor | None:
    """The CPU kernel's layout straight from llama.cpp's Q4_0/Q4_1 nibbles: ``qs`` [N, K/32, 16]
    bytes (byte j of a block holds its values j, low nibble, and j + 16, high), as
    ``_pack_cpu_tiles`` would pack the unpacked values, with no unpacked copy; None where this
    build packs differently (then unpack and use ``from_group_rows``)."""
    N, nb, _ = qs.shape
    variant = _cpu_pack_variant()
    if variant == "op" or N % 16:
        return None
    out = np.empty((N, nb * 16), dtype=np.uint8)
    full = N // CPU_TILE_ROWS * CPU_TILE_ROWS
    for start, stop, tile in ((0, full, CPU_TILE_ROWS), (full, N, N - full)):
        if stop == start:
            continue
        g, half = (stop - start) // tile, tile // 2
        src = qs[start:stop]
        if variant == "tile64" and tile == CPU_TILE_ROWS:
            t = src.reshape(g, 2, half, nb, 16)
            a, b = t[:, 0], t[:, 1]
        else:  # row pairs
            t = src.reshape(g, half, 2, nb, 16)
            a, b = t[:, :, 0], t[:, :, 1]
        dst = out[start:stop].reshape(g, nb, 2, 16, half)
        dst[:, :, 0] = ((a & 0x0F) | (b << 4)).transpose(0, 2, 3, 1)
        dst[:, :, 1] = ((a >> 4) | (b & 0xF0)).transpose(0, 2, 3, 1)
    return torch.from_numpy(out)


def pack_cpu_rows(q: np.ndarray) -> torch.Tensor:
    """q (uint8 [N, K], 0..15) in the CPU kernel's layout, as ``_convert_weight_to_int4pack_for_cpu``
    packs it (through the op where this build packs differently from ``_pack_cpu_tiles``)."""
    variant = _cpu_pack_variant()
    if variant == "op" or q.shape[0] % 2:
        return _pack_rows("cpu", torch.from_numpy(q).to(torch.int32))
    return _pack_cpu_tiles(torch.from_numpy(q), variant)


_CPU_PACK: list[str] = []


def _cpu_pack_variant() -> str:
    """Which layout this build's CPU op writes ("tile64", "pairs", or "op": neither, call it)."""
    if not _CPU_PACK:
        q = torch.randint(0, 16, (80, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        want = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        ok = [v for v in ("tile64", "pairs") if torch.equal(_pack_cpu_tiles(q, v), want)]
        _CPU_PACK.append(ok[0] if ok else "op")
    return _CPU_PACK[0]


def _pack_rows(layout: str, q: torch.Tensor, rows: int = 4096) -> torch.Tensor:
    """``_pack_for`` a block of rows at a time (blocks of whole 64-row tiles pack independently):
    the kernels want int32 input, 4 bytes per weight, which whole would be 8x the packed result."""
    if layout == "cpu" and q.dtype == torch.uint8 and q.shape[0] % 2 == 0 and (variant := _cpu_pack_variant()) != "op":
        return _pack_cpu_tiles(q.contiguous(), variant)
    if q.shape[0] <= rows:
        return _pack_for(layout, q.to(torch.int32))
    return torch.cat([_pack_for(layout, q[i : i + rows].to(torch.int32)) for i in range(0, q.shape[0], rows)])


def _exact_fp16(scale: torch.Tensor, minimum: torch.Tensor) -> torch.Tensor:
    pair = torch.stack([scale, minimum], -1)
    exact = pair.to(torch.float16)
    if not torch.equal(exact.float(), pair.float()):
        raise ValueError("scale and minimum must be exact fp16 values")
    return exact


def _kernel_mm(layout: str, x, packed, group_size, sz):
    if layout == "cpu":
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, sz)
    return torch.ops.aten._weight_int4pack_mm(x, packed, group_size, sz)


_PROBED: dict = {}
# Rows from which a CUDA int4 matmul dequantizes to the compute dtype instead of calling tinygemm
# (measured on an H100 with Llama 3.1 8B shapes: docs/quantization.md).
LARGE_M = 32


def kernel_layout(device: torch.device, dtype: torch.dtype, group_size: int) -> str:
    """The fastest layout whose kernel exists here and agrees with the reference dequantization."""
    key = (device.type, dtype, group_size)
    if key not in _PROBED:
        _PROBED[key] = "nibbles"
        candidates = ["cpu"] if device.type == "cpu" else ["cuda"] if device.type == "cuda" else []
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(64, 256, generator=gen)
        x = torch.randn(3, 256, generator=gen)
        q, scale, zero = quantize_int4_groupwise(w, group_size)
        ref = x @ dequantize_int4(q, scale, zero, group_size).T
        for layout in candidates:
            try:
                sz = torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(device, dtype)
                out = _kernel_mm(layout, x.to(device, dtype), _pack_for(layout, q.to(device)), group_size, sz)
                if torch.allclose(out.float().cpu(), ref, atol=0.05 * ref.abs().max().item()):
                    _PROBED[key] = layout
                    break
            except (AttributeError, RuntimeError, NotImplementedError):
                continue
    return _PROBED[key]


def _dequantize_nibbles(packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    N = packed.shape[0]
    q = unpack_nibbles(packed).view(N, -1, group_size).to(scales_and_zeros.dtype)
    sz = scales_and_zeros.transpose(0, 1)  # [N, K / group, 2]
    return ((q - 8) * sz[..., :1] + sz[..., 1:]).view(N, -1)


_FUSED: list = []


def _fused_dequantize():
    """``_dequantize_nibbles`` as one compiled GPU kernel (reads 0.5 byte and writes 2 per
    weight; eagerly its six elementwise passes cost ~18). Eager where compiling fails."""
    if not _FUSED:
        fn = _dequantize_nibbles
        try:
            compiled = torch.compile(_dequantize_nibbles, dynamic=False)
            p = torch.zeros(16, 32, dtype=torch.uint8, device="cuda")
            compiled(p, torch.ones(2, 16, 2, dtype=torch.bfloat16, device="cuda"), 32)
            fn = compiled
        except Exception as e:  # no Triton, no compiler: correct, only slower
            import logging

            logging.getLogger(__name__).warning("int4: compiling the CUDA dequantization failed (%s); eager", e)
        _FUSED.append(fn)
    return _FUSED[0]


class Int4WeightOnlyLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        group_size: int,
        *,
        layout: str = "nibbles",
        compute_dtype=torch.bfloat16,
        device=None,
    ):
        super().__init__()
        if in_features % group_size:
            raise ValueError(f"in_features {in_features} is not a multiple of the group size {group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.layout, self.compute_dtype = layout, compute_dtype
        self.register_buffer("qweight", torch.empty(0, dtype=torch.uint8, device=device))
        self.register_buffer(
            "scales_and_zeros",
            torch.empty(in_features // group_size, out_features, 2, dtype=compute_dtype, device=device),
        )

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, group_size: int, compute_dtype=torch.bfloat16, layout: str | None = None
    ) -> Int4WeightOnlyLinear:
        if linear.bias is not None:
            raise ValueError("weight-only quantization here covers bias-free Llama linears")
        w = linear.weight
        layout = layout or kernel_layout(w.device, compute_dtype, group_size)
        mod = cls(w.shape[1], w.shape[0], group_size, layout=layout, compute_dtype=compute_dtype, device=w.device)
        q, scale, zero = quantize_int4_groupwise(w, group_size)
        return mod._fill(q, scale, zero)

    @classmethod
    def from_groups(
        cls,
        q: torch.Tensor,
        scale: torch.Tensor,
        minimum: torch.Tensor,
        group_size: int,
        compute_dtype=torch.bfloat16,
        layout: str | None = None,
    ) -> Int4WeightOnlyLinear:
        """Exact int4 weights ``w = q * scale + minimum`` (q uint8 [N, K] in 0..15; scale and
        minimum [N, K / group_size], each exactly an fp16 value): llama.cpp's Q4_0 (minimum =
        -8 * scale) and Q4_1 blocks. The fp16 pair is kept, so ``dequantize`` is bit-exact; the
        kernel computes with its own (compute-dtype) copy."""
        return cls.from_group_rows([(q, scale, minimum)], q.shape[0], q.shape[1], group_size, compute_dtype, layout)

    @classmethod
    def from_group_rows(
        cls,
        blocks,
        out_features: int,
        in_features: int,
        group_size: int,
        compute_dtype=torch.bfloat16,
        layout: str | None = None,
    ) -> Int4WeightOnlyLinear:
        """``from_groups`` fed by consecutive row blocks ``(q, scale, minimum)``: the CPU and
        nibble layouts pack rows independently, so only one block is ever unpacked in memory."""
        device = torch.device("cpu")
        layout = layout or kernel_layout(device, compute_dtype, group_size)
        if layout == "cpu" and out_features % 16:  # the CPU kernel packs rows in sixteens
            layout = "nibbles"
        mod = cls(in_features, out_features, group_size, layout=layout, compute_dtype=compute_dtype, device=device)
        if layout not in ("cpu", "nibbles"):  # tinygemm tiles span rows: pack the whole matrix
            q, scale, minimum = (torch.cat(parts) for parts in zip(*blocks, strict=True))
            mod.register_buffer("scale_min_fp16", _exact_fp16(scale, minimum), persistent=False)
            return mod._fill(q, scale.float(), minimum.float() + 8.0 * scale.float())
        exact = torch.empty(out_features, in_features // group_size, 2, dtype=torch.float16)
        packed = torch.empty(out_features, in_features // 2, dtype=torch.uint8)
        row = packed_rows = 0
        pending: list[torch.Tensor] = []  # rows not packed yet: the CPU layout packs 64-row tiles
        for q, scale, minimum in blocks:
            n = q.shape[0]
            exact[row : row + n] = _exact_fp16(scale, minimum)
            mod.scales_and_zeros[:, row : row + n] = (
                torch.stack([scale.float(), minimum.float() + 8.0 * scale.float()], -1)
                .transpose(0, 1)
                .to(compute_dtype)
            )
            row += n
            pending.append(q)
            ready = row - packed_rows if row == out_features else (row - packed_rows) // CPU_TILE_ROWS * CPU_TILE_ROWS
            if ready:
                rows = torch.cat(pending) if len(pending) > 1 else pending[0]
                chunk, rest = rows[:ready], rows[ready:]
                packed[packed_rows : packed_rows + ready] = (
                    _pack_rows(layout, chunk) if layout == "cpu" else pack_nibbles(chunk)
                )
                packed_rows += ready
                pending = [rest] if rest.shape[0] else []
        if row != out_features or packed_rows != out_features:
            raise ValueError(f"row blocks cover {row} rows, expected {out_features}")
        mod.register_buffer("scale_min_fp16", exact, persistent=False)  # [N, K / group, 2]
        mod.qweight = packed
        return mod

    @classmethod
    def from_cpu_packed(
        cls,
        packed: torch.Tensor,
        scale: torch.Tensor,
        minimum: torch.Tensor,
        group_size: int,
        compute_dtype=torch.bfloat16,
    ) -> Int4WeightOnlyLinear:
        """``from_groups`` for weights already in the CPU kernel's layout (``pack_cpu_nibble_blocks``
        or ``_pack_rows``); scale and minimum [N, K / group_size], exact fp16 values."""
        out_features, in_features = packed.shape[0], packed.shape[1] * 2
        mod = cls(in_features, out_features, group_size, layout="cpu", compute_dtype=compute_dtype)
        mod.register_buffer("scale_min_fp16", _exact_fp16(scale, minimum), persistent=False)
        scale32 = scale.float()
        sz = torch.stack([scale32, minimum.float() + 8.0 * scale32], 0).to(compute_dtype)  # [2, N, K / g]
        mod.scales_and_zeros.copy_(sz.permute(2, 1, 0))
        mod.qweight = packed
        return mod

    def _fill(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> Int4WeightOnlyLinear:
        """Pack q [N, K] (0..15) for this module's layout; scale, zero [N, K / group]."""
        # [K / group, N, 2]: the layout both PyTorch kernels take.
        self.scales_and_zeros.copy_(torch.stack([scale, zero], -1).transpose(0, 1).to(self.compute_dtype))
        if self.layout != "nibbles":
            try:  # the probe used one shape; kernels have shape limits of their own
                self.qweight = _pack_rows(self.layout, q)
                _kernel_mm(
                    self.layout,
                    torch.zeros(1, self.in_features, dtype=self.compute_dtype, device=q.device),
                    self.qweight,
                    self.group_size,
                    self.scales_and_zeros,
                )
            except (RuntimeError, NotImplementedError):
                self.layout = "nibbles"
        if self.layout == "nibbles":
            self.qweight = pack_nibbles(q)
        elif self.layout == "cuda":
            # tinygemm is fast for a few rows (decode) but several times slower than a bf16 matmul
            # from ~32 rows on (prefill chunks, large batches): there the weight is dequantized
            # from a plain 4-bit copy (0.5 byte/weight more, not saved with the model) per call.
            self.register_buffer("nibbles", pack_nibbles(q), persistent=False)
        return self

    def _scale_zero(self):
        sz = self.scales_and_zeros.transpose(0, 1).float()  # [N, K / group, 2]
        return sz[..., 0], sz[..., 1]

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight [N, K] this module multiplies by (for ``from_groups`` modules, the
        exact weights they were built from)."""
        exact = getattr(self, "scale_min_fp16", None)
        if exact is not None:
            return dequantize_groups(self.q(), exact[..., 0], exact[..., 1], self.group_size)
        if self.layout == "nibbles":
            return dequantize_int4(unpack_nibbles(self.qweight), *self._scale_zero(), self.group_size)
        # Packed kernel layouts are opaque: multiply the identity through the kernel.
        eye = torch.eye(self.in_features, dtype=self.compute_dtype, device=self.qweight.device)
        return _kernel_mm(self.layout, eye, self.qweight, self.group_size, self.scales_and_zeros).float().T

    def q(self) -> torch.Tensor:
        """The 4-bit values [N, K] (0..15, uint8), read back out of any layout."""
        if self.layout == "nibbles":
            return unpack_nibbles(self.qweight)
        # Packed kernel layouts are opaque: the identity through the kernel with scale 1 and
        # zero 8 gives q itself (small integers are exact in every compute dtype).
        eye = torch.eye(self.in_features, dtype=self.compute_dtype, device=self.qweight.device)
        unit = torch.tensor([1.0, 8.0], dtype=self.compute_dtype, device=eye.device).expand_as(self.scales_and_zeros)
        return _kernel_mm(self.layout, eye, self.qweight, self.group_size, unit.contiguous()).T.round().to(torch.uint8)

    def _dequantize_nibbles(self, packed: torch.Tensor) -> torch.Tensor:
        """The weight [N, K] in the compute dtype, computed as the kernels do (bf16 scales)."""
        fn = _fused_dequantize() if packed.is_cuda else _dequantize_nibbles
        return fn(packed, self.scales_and_zeros, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(self.compute_dtype)
        nibbles = getattr(self, "nibbles", None)
        if nibbles is not None and x2.shape[0] >= LARGE_M:
            y = F.linear(x2, self._dequantize_nibbles(nibbles))
        elif self.layout == "nibbles":
            y = F.linear(x2, self.dequantize().to(self.compute_dtype))
        elif self.layout == "cpu" and x2.shape[0] >= CPU_LARGE_M and self.out_features % CPU_TILE_ROWS == 0:
            y = _cpu_tiles_matmul(x2, self.qweight, self.scales_and_zeros, self.group_size)
        else:
            y = _kernel_mm(self.layout, x2, self.qweight, self.group_size, self.scales_and_zeros)
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"group_size={self.group_size}, layout={self.layout}"
        )
