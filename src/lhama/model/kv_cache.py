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

KV_CACHE_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def kv_cache_dtype(model_dtype: torch.dtype, device, choice: str | torch.dtype | None = "auto") -> torch.dtype:
    """The dtype K and V are stored in. ``"auto"`` (the default): bfloat16 for a float32 model on
    the CPU (half the memory of the cache; the attention widens K/V to fp32 and computes in
    fp32, so only K/V themselves are rounded), else the model's own dtype; the environment
    variable ``LHAMA_KV_CACHE_DTYPE`` (float32, bfloat16) overrides auto. A dtype or its name
    is taken as given."""
    if isinstance(choice, torch.dtype):
        return choice
    choice = choice or "auto"
    if choice == "auto":
        choice = os.environ.get("LHAMA_KV_CACHE_DTYPE", "auto").strip().lower() or "auto"
    if choice not in KV_CACHE_DTYPES:
        raise ValueError(f"KV cache dtype must be one of {', '.join(KV_CACHE_DTYPES)}; got {choice!r}")
    if choice != "auto":
        return KV_CACHE_DTYPES[choice]
    on_cpu = torch.device(device if device is not None else "cpu").type == "cpu"
    return torch.bfloat16 if on_cpu and model_dtype == torch.float32 else model_dtype


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


class StaticKVCache:
    """Preallocated [B, max_len, KVH, D] buffers per layer; sequences in a batch share positions.
    ``dtype``: what K/V are stored in (``kv_cache_dtype`` picks the default).

    Set ``pos`` to the position of the first new token before each forward (``advance`` after).
    """

    def __init__(self, args: ModelArgs, batch_size: int, max_len: int, *, dtype=torch.float32, device=None):
        shape = (batch_size, max_len, args.n_kv_heads, args.head_dim)
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
        if T == 1 and kc.dtype in (torch.float32, torch.bfloat16, torch.float16):
            ops = fused_ops(q)
            if ops is not None and q.is_contiguous() and k.is_contiguous() and v.is_contiguous():
                # A decode row: the KV write and the attention in one call (the engine's decode
                # rows take the same arithmetic: lhama.engine.paged_cache).
                return ops.attend_static(q, k, v, kc, vc, self.pos, q.dtype)
        kc[:B, self.pos : end] = k  # rounded to the cache's dtype (nearest even)
        vc[:B, self.pos : end] = v
        kc, vc = kc[:B, :end], vc[:B, :end]
        if kc.dtype != q.dtype:  # a bf16 cache under an fp32 model: attention in fp32
            kc, vc = kc.to(q.dtype), vc.to(q.dtype)
        return causal_attention(q, kc, vc, offset=self.pos)

    def decode_layers_args(self, h: torch.Tensor):
        """The cache arguments of the whole-step decode op (``Transformer._fused_layers``) for
        hidden rows ``h`` [B, T, dim], or None when the step is not one token per row in fp32."""
        if (
            h.dim() != 3
            or h.shape[1] != 1
            or self.pos + 1 > self.max_len
            or self.k[0].dtype not in (torch.float32, torch.bfloat16, torch.float16)
        ):
            return None
        return self.k, self.v, self.pos, None, None, None

    def advance(self, n: int) -> None:
        self.pos += n

    def truncate(self, n: int) -> None:
        """Forget everything from position ``n`` on (e.g. to reuse a shared prefix)."""
        self.pos = min(self.pos, n)
