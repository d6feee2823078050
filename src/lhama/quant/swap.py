"""Quantize a loaded model in place by swapping its ``nn.Linear`` modules (gpt-fast style).

Every linear of the transformer blocks and, by default, the LM head becomes a weight-only
quantized module; embeddings and norms keep the model's dtype. With tied embeddings the head
gets its own quantized copy while the embedding lookup keeps the full-precision table.
Training recipes load models without ``quantize`` and keep plain ``nn.Linear``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from lhama.quant.config import GROUP_SIZES, QuantConfig
from lhama.quant.fp8 import FP8Linear
from lhama.quant.int4 import Int4WeightOnlyLinear
from lhama.quant.int8 import Int8WeightOnlyLinear

log = logging.getLogger(__name__)

QUANTIZED_TYPES = (Int8WeightOnlyLinear, Int4WeightOnlyLinear, FP8Linear)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights (parameters and persistent buffers), shared tensors once."""
    seen, total = set(), 0
    for t in model.state_dict(keep_vars=True).values():
        if t.device.type == "meta":
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


@dataclass(frozen=True)
class QuantReport:
    config: QuantConfig
    bytes_before: int
    bytes_after: int
    modules: dict[str, str] = field(default_factory=dict)  # name -> "int4/g64", "int8", "fp8"

    def describe(self) -> str:
        kinds: dict[str, int] = {}
        for k in self.modules.values():
            kinds[k] = kinds.get(k, 0) + 1
        parts = ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items()))
        return (
            f"quantized {len(self.modules)} linear modules ({parts}): weights "
            f"{self.bytes_before / 2**20:,.1f} MiB -> {self.bytes_after / 2**20:,.1f} MiB "
            f"({self.bytes_before / max(self.bytes_after, 1):.2f}x smaller)"
        )


def _int4_group(in_features: int, wanted: int) -> int | None:
    """The requested group size, else the largest smaller one that divides the row."""
    for g in sorted((g for g in GROUP_SIZES if g <= wanted), reverse=True):
        if in_features % g == 0:
            return g
    return None


def _quantized(linear: nn.Linear, mode: str, cfg: QuantConfig, compute_dtype) -> tuple[nn.Module, str]:
    if mode == "int4":
        g = _int4_group(linear.in_features, cfg.group_size)
        if g is not None:
            return Int4WeightOnlyLinear.from_linear(linear, g, compute_dtype), f"int4/g{g}"
        # No group size divides the row (in_features not a multiple of 32): int8 keeps it exact-ish.
        return Int8WeightOnlyLinear.from_linear(linear, compute_dtype), "int8"
    if mode == "int8":
        return Int8WeightOnlyLinear.from_linear(linear, compute_dtype), "int8"
    return FP8Linear.from_linear(linear, compute_dtype), "fp8"


@torch.no_grad()
def quantize_model(model: nn.Module, config: QuantConfig | str) -> QuantReport:
    """Replace the linears of ``model`` (a ``lhama.model.Transformer``) with quantized ones."""
    cfg = QuantConfig.parse(config)
    if getattr(model, "quant_config", None) is not None:
        raise ValueError("this model is already quantized")
    before = weight_bytes(model)
    compute_dtype = cfg.activation_dtype(model.dtype)
    done: dict[str, str] = {}
    if cfg.fuse:
        _fuse_projections(model, cfg, compute_dtype, done)
    targets = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and (cfg.include_head or name != "output")
    ]
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new, kind = _quantized(linear, cfg.mode_for(name), cfg, compute_dtype)
        setattr(parent, attr, new)  # drops the fp weight (unless the embedding shares it)
        done[name] = kind
    model.quant_config = cfg
    report = QuantReport(cfg, before, weight_bytes(model), done)
    log.info("%s", report.describe())
    return report


def _fuse_projections(model: nn.Module, cfg: QuantConfig, compute_dtype, done: dict[str, str]) -> None:
    """wq|wk|wv -> ``attention.wqkv`` and w1|w3 -> ``feed_forward.w13`` (see the model's forward)."""
    for i, layer in enumerate(model.layers):
        for parent, names, fused, pname in (
            (layer.attention, ("wq", "wk", "wv"), "wqkv", "attention"),
            (layer.feed_forward, ("w1", "w3"), "w13", "feed_forward"),
        ):
            parts = [getattr(parent, n) for n in names]
            if not all(isinstance(p, nn.Linear) and p.bias is None for p in parts):
                continue
            stacked = nn.Linear(parts[0].in_features, sum(p.out_features for p in parts), bias=False, device="meta")
            stacked.weight = nn.Parameter(torch.cat([p.weight for p in parts]), requires_grad=False)
            name = f"layers.{i}.{pname}.{fused}"
            new, done[name] = _quantized(stacked, cfg.mode_for(name), cfg, compute_dtype)
            del stacked
            for n in names:
                delattr(parent, n)
            setattr(parent, fused, new)


def is_quantized(model: nn.Module) -> bool:
    return getattr(model, "quant_config", None) is not None
