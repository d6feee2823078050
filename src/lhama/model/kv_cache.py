"""The attention-cache interface and the simple contiguous cache of the reference loop.

The model computes q, k, v (with RoPE applied) and hands them to a cache's ``attend``; the cache
stores k/v wherever it keeps them and returns the attention output. The contiguous
``StaticKVCache`` below serves the single-sequence reference loop; the engine plugs in its paged
cache through the same method.
"""

from __future__ import annotations

import os
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lhama.model.args import ModelArgs
from lhama.model.fused import fused_ops

KV_CACHE_DTYPES = {
    "auto": None,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "int8": torch.int8,
}
# Dtypes the fused C++ decode attention reads in place (lhama/quant/kernels/decode_ops.cpp).
FUSED_KV_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.int8)
# An int8 row's scale: one bf16 after its head_dim values.
INT8_SCALE_BYTES = 2


def kv_cache_dtype(model_dtype: torch.dtype, device, choice: str | torch.dtype | None = "auto") -> torch.dtype:
    """The dtype K and V are stored in. ``"auto"`` (the default): bfloat16 for a float32 model on
    the CPU (half the memory of the cache; the attention widens K/V to fp32 and computes in
    fp32, so only K/V themselves are rounded), else the model's own dtype; the environment
    variable ``LHAMA_KV_CACHE_DTYPE`` (float32, bfloat16, int8) overrides auto. A dtype or its
    name is taken as given. ``"int8"``: each (token, KV head) row stored as int8 values and one
    bf16 scale (``quantize_kv``), about half the bytes of bfloat16."""
    if isinstance(choice, torch.dtype):
        return choice
    choice = choice or "auto"
    where = "kv_cache_dtype"
    if choice == "auto":
        where = "LHAMA_KV_CACHE_DTYPE"
        choice = os.environ.get(where, "auto").strip().lower() or "auto"
    if choice not in KV_CACHE_DTYPES:
        raise ValueError(f"{where}: KV cache dtype must be one of {', '.join(KV_CACHE_DTYPES)}; got {choice!r}")
    if choice != "auto":
        return KV_CACHE_DTYPES[choice]
    on_cpu = torch.device(device if device is not None else "cpu").type == "cpu"
    return torch.bfloat16 if on_cpu and model_dtype == torch.float32 else model_dtype


def kv_row_width(head_dim: int, dtype: torch.dtype) -> int:
    """Elements of ``dtype`` one stored (token, KV head) row takes: ``head_dim``, plus the 2
    bytes of an int8 row's scale."""
    return head_dim + (INT8_SCALE_BYTES if dtype == torch.int8 else 0)


def kv_row_bytes(head_dim: int, dtype: torch.dtype) -> int:
    """Bytes of one stored (token, KV head) row (what the memory plan counts)."""
    return kv_row_width(head_dim, dtype) * torch.empty((), dtype=dtype).element_size()


def quantize_kv(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """K or V rows ``x`` [..., D] as stored in a cache of ``dtype``: rounded to it (nearest
    even), or for int8 symmetric per row (as llama.cpp's q8_0, one scale per row instead of per
    32): scale = absmax / 127 rounded to bf16, q = round(x / scale) in fp32 (nearest even),
    stored as [..., D + 2] int8 with the scale's bytes last. A bf16 scale, not fp32: two
    computations of a row that differ in fp32's last bits (the engine's prefill and the
    reference loop's) then mostly store the same bytes, as with a bf16 cache. The C++ decode
    write (``decode_ops.cpp:store_kv_row``) does the same operations: the same bytes."""
    if dtype != torch.int8:
        return x.to(dtype)
    x = x.float()
    scale = (x.abs().amax(-1, keepdim=True) / 127).to(torch.bfloat16)
    s = scale.float()
    q = torch.where(s > 0, x / s, 0.0).round_().clamp_(-127, 127).to(torch.int8)
    return torch.cat([q, scale.view(torch.int8)], dim=-1)


def dequantize_kv(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Stored rows [..., E] back to values [..., D] in ``dtype`` (int8: q * scale in fp32)."""
    if rows.dtype != torch.int8:
        return rows.to(dtype)
    D = rows.shape[-1] - INT8_SCALE_BYTES
    scale = rows[..., D:].contiguous().view(torch.bfloat16).float()
    return (rows[..., :D].float() * scale).to(dtype)


class AttentionCache(Protocol):
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, T, H, D], k/v [B, T, KVH, D] for the new tokens; returns [B, T, H, D]."""
        ...


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Attention of q [B, T, H, D] over k/v [B, S, KVH, D] where query i sits at position offset+i
    and key j at position j (S = offset + T). Grouped-query heads are shared, not copied."""
    if q.is_cuda:
        # PyTorch would pick cuDNN attention here, which builds a new plan for every new context
        # length: 4 ms of CPU per layer per decode step (an 8B model decoded at 15 tok/s on an H100).
        with sdpa_kernel(_NO_CUDNN):
            return _causal_attention(q, k, v, offset)
    return _causal_attention(q, k, v, offset)


_NO_CUDNN = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _causal_attention(q, k, v, offset):
    T, S = q.shape[1], k.shape[1]
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = qh.shape[1] != kh.shape[1]
    if T == 1:
        out = F.scaled_dot_product_attention(qh, kh, vh, enable_gqa=gqa)
    elif offset == 0 and T == S:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=gqa)
    else:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, enable_gqa=gqa)
    return out.transpose(1, 2)


def grouped_prompt_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offset: int) -> torch.Tensor:
    """``causal_attention`` of one sequence (q [1, T, H, D], k/v [1, S, KVH, D]) in the layout
    the engine's prompt chunks take (``lhama.engine.paged_cache``): the G query heads of a KV head
    as G * T rows over that head's keys, a boolean causal mask. The same SDPA call on the same
    shapes, so a prompt's numbers are the engine's to the bit (an int8 cache's scale carries
    fp32's last bits into every later row: other layouts' rounding made greedy runs part)."""
    _, T, H, D = q.shape
    S, KVH = k.shape[1], k.shape[2]
    G = H // KVH
    qp = q[0].reshape(T, KVH, G, D).permute(1, 2, 0, 3).reshape(KVH, G * T, D)
    kp, vp = k[0].transpose(0, 1).contiguous(), v[0].transpose(0, 1).contiguous()
    mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=offset).repeat(G, 1)
    o = F.scaled_dot_product_attention(qp[None], kp[None], vp[None], attn_mask=mask)[0]
    return o.reshape(KVH, G, T, D).permute(2, 0, 1, 3).reshape(1, T, H, D)


class StaticKVCache:
    """Preallocated [B, max_len, KVH, D] buffers per layer; sequences in a batch share positions.
    ``dtype``: what K/V are stored in (``kv_cache_dtype`` picks the default); int8 rows carry
    their scale (``quantize_kv``): [B, max_len, KVH, D + 2].

    Set ``pos`` to the position of the first new token before each forward (``advance`` after).
    """

    def __init__(self, args: ModelArgs, batch_size: int, max_len: int, *, dtype=torch.float32, device=None):
        shape = (batch_size, max_len, args.n_kv_heads, kv_row_width(args.head_dim, dtype))
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(args.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(args.n_layers)]
        self.max_len = max_len
        self.pos = 0

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, T = q.shape[:2]
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; tried to write up to {end}")
        kc, vc = self.k[layer], self.v[layer]
        if T == 1 and kc.dtype in FUSED_KV_DTYPES:
            ops = fused_ops(q)
            if ops is not None and q.is_contiguous() and k.is_contiguous() and v.is_contiguous():
                # A decode row: the KV write and the attention in one call (the engine's decode
                # rows take the same arithmetic: lhama.engine.paged_cache).
                return ops.attend_static(q, k, v, kc, vc, self.pos, q.dtype)
        kc[:B, self.pos : end] = quantize_kv(k, kc.dtype)  # rounded to the cache's dtype
        vc[:B, self.pos : end] = quantize_kv(v, vc.dtype)
        kc, vc = kc[:B, :end], vc[:B, :end]
        int8 = kc.dtype == torch.int8
        if kc.dtype != q.dtype:  # a bf16 or int8 cache under an fp32 model: attention in fp32
            kc, vc = dequantize_kv(kc, q.dtype), dequantize_kv(vc, q.dtype)
        if int8 and B == 1 and not q.is_cuda:  # (other dtypes keep the arithmetic their tests pin)
            return grouped_prompt_attention(q, kc, vc, self.pos)
        return causal_attention(q, kc, vc, offset=self.pos)

    def decode_layers_args(self, h: torch.Tensor):
        """The cache arguments of the whole-step decode op (``Transformer._fused_layers``) for
        hidden rows ``h`` [B, T, dim], or None when the step is not one token per row in fp32."""
        if h.dim() != 3 or h.shape[1] != 1 or self.pos + 1 > self.max_len or self.k[0].dtype not in FUSED_KV_DTYPES:
            return None
        return self.k, self.v, self.pos, None, None, None

    def advance(self, n: int) -> None:
        self.pos += n

    def truncate(self, n: int) -> None:
        """Forget everything from position ``n`` on (e.g. to reuse a shared prefix)."""
        self.pos = min(self.pos, n)
