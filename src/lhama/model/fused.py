"""The small ops of a transformer block, each with one definition in PyTorch and, for CPU decode
steps, the same arithmetic as one fused C++ op (``lhama/quant/kernels/decode_ops.cpp``).

A decode step of a small model is bound by dispatch, not arithmetic: eager PyTorch spends
10-60 ATen calls on a norm and its cast, RoPE and the q/k/v split, a KV write and a one-row
attention. The fused ops run on the CPU with no autograd (inference), not under
``torch.compile``, with an fp32 residual stream; everywhere else (GPUs, training, bf16 models)
the PyTorch code below runs, and tests hold the two paths to each other. They run whatever the
number of rows (prefill too), and attention of single-token rows takes the fused op in the
reference loop and in the engine alike: a token's numbers never depend on how many rows it was
computed with (the engine's sampled outputs equal the reference loop's).

Dtype contract: the residual stream keeps its dtype; a norm may round its result straight to the
dtype the next matmul computes in (a quantized linear's bf16: no cast before the kernel, none
after it); the ops below read their inputs in either dtype and compute in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_OPS: list = []
_ACT = (torch.float32, torch.bfloat16)  # activation dtypes the fused ops read


def _ops():
    """``torch.ops.lhama_decode`` once lhama's kernel library is loaded (built on first use with
    every ``quant/kernels/*.cpp``: ``lhama.quant.ggml``), else None."""
    if not _OPS:
        from lhama.quant import ggml

        _OPS.append(
            torch.ops.lhama_decode if ggml.available() and hasattr(torch.ops.lhama_decode, "rms_norm") else None
        )
    return _OPS[0]


def fused_ops(x: torch.Tensor):
    """The fused op namespace when ``x`` (an fp32 CPU activation, no autograd) qualifies, else
    None. Callers decide once (a block, a cache) and hand the answer to the functions below."""
    if not x.is_cpu or x.dtype != torch.float32 or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None
    return _OPS[0] if _OPS else _ops()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype | None = None, ops=None):
    """RMSNorm of x (normalised in fp32 whatever x's dtype, as the reference does) times
    ``weight``, rounded to ``dtype`` when given. ``ops``: ``fused_ops(x)``."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        if ops is not None and x.is_contiguous():
            return ops.rms_norm(x, weight, eps, dtype or x.dtype)
        # The same arithmetic with the weight inside the op: two calls fewer than the general form.
        out = F.rms_norm(x, (x.shape[-1],), weight, eps)
    else:
        out = F.rms_norm(x.float(), (x.shape[-1],), eps=eps).type_as(x) * weight
    return out if dtype is None else out.to(dtype)


def add_rms_norm(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype | None = None, ops=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = x + y`` (``residual_add``) and ``rms_norm(h)``, rounded to ``dtype`` when given."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        if ops is not None and x.is_contiguous() and y.is_contiguous():
            return ops.add_rms_norm(x, y, weight, eps, dtype or x.dtype)
    h = residual_add(x, y)
    return h, rms_norm(h, weight, eps, dtype)


def residual_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + y`` in x's dtype (the residual stream's); a bf16 y onto an fp32 x is promoted inside
    the add, the same bits as ``x + y.float()`` in one call."""
    return x + y if y.dtype == x.dtype or x.dtype == torch.float32 else x + y.to(x.dtype)


def silu_mul(gate_up: torch.Tensor, dtype: torch.dtype, math_dtype: torch.dtype, ops=None) -> torch.Tensor:
    """SwiGLU's ``silu(gate) * up`` for ``gate_up = [gate | up]`` (the fused w1|w3 output):
    computed in ``math_dtype`` (the residual stream's), rounded to ``dtype``."""
    if math_dtype == torch.float32 and dtype in (torch.float32, torch.bfloat16) and gate_up.dtype in _ACT:
        if ops is not None and gate_up.is_contiguous():
            return ops.silu_mul(gate_up, dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    return silu_mul_split(gate, up, dtype, math_dtype)


def silu_mul_split(gate: torch.Tensor, up: torch.Tensor, dtype: torch.dtype, math_dtype: torch.dtype) -> torch.Tensor:
    """``silu(gate) * up`` computed in ``math_dtype``, rounded to ``dtype``."""
    return (F.silu(gate.to(math_dtype)) * up.to(math_dtype)).to(dtype)


def rope_qkv(
    qkv: torch.Tensor, rotation: torch.Tensor, n_heads: int, n_kv_heads: int, dtype: torch.dtype, ops=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [B, T, H, D], k [B, T, KVH, D] (rotated) and v [B, T, KVH, D] in ``dtype`` from the fused
    projection's output ``qkv`` [B, T, (H + 2 KVH) * D]; ``rotation``: ``rope_rotation``."""
    from lhama.model.rope import rotate

    B, T, W = qkv.shape
    H, KVH = n_heads, n_kv_heads
    D = W // (H + 2 * KVH)
    if dtype == torch.float32 and rotation.dtype == torch.complex64 and qkv.dtype in _ACT:
        if ops is not None and qkv.is_contiguous() and rotation.is_contiguous() and rotation.shape[2] == 1:
            return ops.rope_qkv(qkv, rotation, H, KVH)
    qkv = qkv.to(dtype)
    # q and k are adjacent columns: one rotation for both.
    qk = rotate(qkv[..., : (H + KVH) * D].view(B, T, H + KVH, D), rotation)
    # Caches flatten k and v with .view: contiguous copies (free for a single token).
    return qk[:, :, :H], qk[:, :, H:].contiguous(), qkv[..., (H + KVH) * D :].view(B, T, KVH, D).contiguous()


def linear_input_dtype(linear, default: torch.dtype) -> torch.dtype:
    """The dtype ``linear`` computes in when it casts its input first (weight-only quantized
    modules: ``compute_dtype``), else ``default``: what a norm in front of it may round to."""
    dtype = getattr(linear, "compute_dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else default


_INT_ROWS: list = []  # a function returning ggml.integer_rows' current value


def integer_rows_now() -> int:
    """The row count ``lhama.quant.ggml.integer_rows`` set around this call (-1 for none: rows
    take the path their count picks), for the whole-step op (``decode_layers``) to split rows as
    ``ggml.block_linear`` does."""
    if not _INT_ROWS:
        from lhama.quant import ggml

        _INT_ROWS.append(ggml.current_integer_rows)
    n = _INT_ROWS[0]()
    return -1 if n is None else int(n)
