"""What to quantize and how: one frozen dataclass, built from ``--quantize`` / ``--quant-group-size``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lhama.errors import ConfigError

MODES = ("int8", "int4", "fp8")
GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class QuantConfig:
    # int8: symmetric, one scale per output channel. int4: asymmetric (scale + zero point) per
    # group of ``group_size`` input channels. fp8: e4m3 values, one scale per output row.
    mode: str
    # 32 is llama.cpp's Q4 block: on SmolLM2-135M, 64 and 128 raise perplexity by 40% or more.
    group_size: int = 32
    # The LM head is the largest single matrix of small models (49152 x 576 in SmolLM2, 20% of
    # its weights) and is read every step: quantize it too. Tied embeddings keep their own table.
    include_head: bool = True
    # In int4 mode the head is int8 unless this is set: it is the most error-sensitive matrix
    # (llama.cpp's Q4 files keep it at 6-8 bits too); int4 there costs SmolLM2 ~5% perplexity.
    int4_head: bool = False
    # Stack wq/wk/wv and w1/w3 into one quantized matmul each (4 kernel calls per layer instead
    # of 7: the CPU kernels' per-call cost is a visible share of a small model's decode step).
    fuse: bool = True
    # Activation dtype inside the quantized matmuls. None: bfloat16, or float16 for fp16 models.
    # PyTorch's CPU int8/int4 kernels are 50-500x slower with fp32 activations than with bf16.
    compute_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown quantization mode {self.mode!r}: choose one of {', '.join(MODES)}")
        if self.group_size not in GROUP_SIZES:
            raise ConfigError(f"int4 group size must be one of {GROUP_SIZES}, got {self.group_size}")
        if self.compute_dtype not in (None, torch.bfloat16, torch.float16):
            raise ConfigError(f"quantized compute dtype must be bfloat16 or float16, got {self.compute_dtype}")

    def mode_for(self, module_name: str) -> str:
        if module_name == "output" and self.mode == "int4" and not self.int4_head:
            return "int8"
        return self.mode

    def activation_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        if self.compute_dtype is not None:
            return self.compute_dtype
        return torch.float16 if model_dtype == torch.float16 else torch.bfloat16

    @classmethod
    def parse(cls, spec: str | QuantConfig | None, group_size: int | None = None) -> QuantConfig | None:
        """``None``/"none" -> None; "int8", "int4", "fp8"; "int4:128" sets the group size."""
        if spec is None or isinstance(spec, QuantConfig):
            return spec
        text = str(spec).strip().lower()
        if text in ("", "none", "off"):
            return None
        mode, _, group = text.partition(":")
        if group:
            try:
                group_size = int(group)
            except ValueError:
                raise ConfigError(f"--quantize {spec!r}: the group size after ':' must be a number") from None
        return cls(mode, group_size or 32)
