"""FP8 (e4m3) weights with one scale per output row.

On CUDA GPUs with FP8 tensor cores (compute capability 8.9+), activations are quantized per
token to e4m3 on the fly and multiplied with ``torch._scaled_mm`` (row-wise scales on both
sides, bf16 out) — what vLLM and Meta's reference FP8 path do for Llama 3.1 405B. Elsewhere the
weight stays stored in FP8 (half of bf16's bytes) and is upcast for each matmul: the memory
saving holds, the speed does not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448


def quantize_fp8_rowwise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 [N, K] and fp32 scales [N] with ``weight ~= w8.float() * scale[:, None]``."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=1e-12)
    return (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def _scaled_mm(x: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor, out_dtype) -> torch.Tensor:
    x_scale = (x.abs().amax(dim=1, keepdim=True).float() / FP8_MAX).clamp(min=1e-12)
    x8 = (x.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale.view(1, -1), out_dtype=out_dtype)


def scaled_mm_works(device: torch.device, dtype: torch.dtype) -> bool:
    """True where ``_scaled_mm`` with row-wise scales runs and agrees with the upcast path."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        gen = torch.Generator(device=device).manual_seed(0)
        w = torch.randn(64, 128, device=device, generator=gen)
        x = torch.randn(16, 128, device=device, generator=gen).to(dtype)
        w8, s = quantize_fp8_rowwise(w)
        out = _scaled_mm(x, w8, s, dtype).float()
        ref = x.float() @ (w8.float() * s[:, None]).T
        return bool(torch.allclose(out, ref, atol=0.1 * ref.abs().max().item()))
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


class FP8Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, *, compute_dtype=torch.bfloat16, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=FP8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=torch.float32, device=device))
        self.use_scaled_mm = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, compute_dtype=torch.bfloat16) -> FP8Linear:
        if linear.bias is not None:
            raise ValueError("weight-only quantization here covers bias-free Llama linears")
        w = linear.weight
        mod = cls(w.shape[1], w.shape[0], compute_dtype=compute_dtype, device=w.device)
        w8, scale = quantize_fp8_rowwise(w)
        mod.qweight.copy_(w8)
        mod.scales.copy_(scale)
        # _scaled_mm wants both dims multiples of 16.
        mod.use_scaled_mm = w.shape[0] % 16 == 0 and w.shape[1] % 16 == 0 and scaled_mm_works(w.device, compute_dtype)
        return mod

    def dequantize(self) -> torch.Tensor:
        return self.qweight.float() * self.scales[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(self.compute_dtype)
        if self.use_scaled_mm:
            y = _scaled_mm(x2, self.qweight, self.scales, self.compute_dtype)
        else:
            # Scale the output columns, not the weight: M x N multiplies instead of N x K.
            y = F.linear(x2, self.qweight.to(self.compute_dtype)) * self.scales.to(self.compute_dtype)
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scaled_mm={self.use_scaled_mm}"
