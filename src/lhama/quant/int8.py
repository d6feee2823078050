"""Weight-only int8: symmetric, one scale per output channel (gpt-fast's ``WeightOnlyInt8Linear``).

Decode on a CPU is bound by reading weights; int8 reads a quarter of fp32's bytes. PyTorch's
``_weight_int8pack_mm`` (CPU, and CUDA in recent builds) multiplies bf16/fp16 activations by the
int8 weight and applies the scales in one kernel; elsewhere the weight is upcast per call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def quantize_int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 [N, K] and fp32 scales [N] with ``weight ~= q * scale[:, None]``."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-10)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def _int8_kernel_works(device: torch.device, dtype: torch.dtype) -> bool:
    try:
        x = torch.zeros(1, 64, dtype=dtype, device=device)
        w = torch.zeros(16, 64, dtype=torch.int8, device=device)
        torch.ops.aten._weight_int8pack_mm(x, w, torch.ones(16, dtype=dtype, device=device))
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


class Int8WeightOnlyLinear(nn.Module):
    """``y = (x @ q.T) * scale`` with x in ``compute_dtype``; returns the input's dtype."""

    def __init__(self, in_features: int, out_features: int, *, compute_dtype=torch.bfloat16, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.register_buffer("qweight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=compute_dtype, device=device))
        self.use_kernel = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, compute_dtype=torch.bfloat16) -> Int8WeightOnlyLinear:
        if linear.bias is not None:
            raise ValueError("weight-only quantization here covers bias-free Llama linears")
        w = linear.weight
        mod = cls(w.shape[1], w.shape[0], compute_dtype=compute_dtype, device=w.device)
        q, scale = quantize_int8_per_channel(w)
        mod.qweight.copy_(q)
        mod.scales.copy_(scale.to(compute_dtype))
        # CUDA's _weight_int8pack_mm is a naive kernel (an 8B model decoded at 14 tok/s on an H100,
        # 7x slower than bf16): there the upcast path is faster. CPUs have a real kernel.
        mod.use_kernel = w.device.type == "cpu" and _int8_kernel_works(w.device, compute_dtype)
        return mod

    @classmethod
    def from_rows(
        cls, blocks, out_features: int, in_features: int, compute_dtype=torch.bfloat16
    ) -> Int8WeightOnlyLinear:
        """``from_linear`` fed by consecutive float row blocks (scales are per row, so a block
        quantizes alone): a big matrix (a 128k-row head) is never whole in fp32."""
        mod = cls(in_features, out_features, compute_dtype=compute_dtype)
        row = 0
        for w in blocks:
            q, scale = quantize_int8_per_channel(w)
            mod.qweight[row : row + q.shape[0]] = q
            mod.scales[row : row + q.shape[0]] = scale.to(compute_dtype)
            row += q.shape[0]
        if row != out_features:
            raise ValueError(f"row blocks cover {row} rows, expected {out_features}")
        mod.use_kernel = _int8_kernel_works(torch.device("cpu"), compute_dtype)
        return mod

    def dequantize(self) -> torch.Tensor:
        return self.qweight.float() * self.scales.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(self.compute_dtype)
        if self.use_kernel:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scales)
        else:
            y = F.linear(x2, self.qweight.to(self.compute_dtype)) * self.scales
        return y.to(x.dtype).view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.use_kernel}"
