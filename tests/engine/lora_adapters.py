"""Random LoRA adapters in PEFT's folder format, made with lhama's own LoRA code (nothing shipped)."""

from __future__ import annotations

from pathlib import Path

import torch

from lhama.model.lora import LoraConfig, apply_lora
from lhama.model.transformer import build_model
from lhama.peft_adapter import save_peft_adapter


def make_adapter(out: Path, args, *, rank: int, targets, seed: int, std: float = 0.05) -> Path:
    """An adapter for a model with ``args`` whose A and B are both random (a fresh adapter's B is
    zero, which would change nothing), large enough to change greedy outputs."""
    model = build_model(args, init="empty")  # base weights are not saved: never touched
    apply_lora(model, LoraConfig(rank=rank, alpha=2.0 * rank, target_modules=tuple(targets)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return save_peft_adapter(model, out)
