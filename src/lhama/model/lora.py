"""LoRA: a low-rank update ``W + (alpha/r) B A`` on chosen Linear layers of the Llama block, as a
module swap (the base weight stays where it was, frozen), and the merge back into plain Linear
layers. Training attaches fresh adapters; inference attaches trained ones (``lhama.peft_adapter``)
and merges them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lhama.errors import ConfigError

# LoRA targets may be given in our (Meta) names or in Hugging Face/PEFT names.
HF_MODULE_NAMES = {
    "wq": "q_proj",
    "wk": "k_proj",
    "wv": "v_proj",
    "wo": "o_proj",
    "w1": "gate_proj",
    "w2": "down_proj",
    "w3": "up_proj",
}
OUR_MODULE_NAMES = {v: k for k, v in HF_MODULE_NAMES.items()}


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("wq", "wk", "wv", "wo")

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ConfigError(f"lora.rank must be positive, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        targets = (self.target_modules,) if isinstance(self.target_modules, str) else tuple(self.target_modules)
        if targets == ("all",) or targets == ("all-linear",):
            targets = tuple(HF_MODULE_NAMES)
        ours = []
        for t in targets:
            name = OUR_MODULE_NAMES.get(t, t)
            if name not in HF_MODULE_NAMES:
                raise ConfigError(
                    f"lora target module {t!r} is not a projection of the Llama block; choose from "
                    f"{', '.join(HF_MODULE_NAMES)} (or {', '.join(OUR_MODULE_NAMES)}, or 'all')"
                )
            if name not in ours:
                ours.append(name)
        if not ours:
            raise ConfigError("lora.target_modules must name at least one module")
        # Canonical order (the block's), so configs that name the same modules compare equal.
        object.__setattr__(self, "target_modules", tuple(m for m in HF_MODULE_NAMES if m in ours))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


# Which submodule of a block holds each projection.
BLOCK_PARENT = {
    "wq": "attention",
    "wk": "attention",
    "wv": "attention",
    "wo": "attention",
    "w1": "feed_forward",
    "w2": "feed_forward",
    "w3": "feed_forward",
}


def projection_shape(name: str, args) -> tuple[int, int]:
    """(out_features, in_features) of projection ``name`` in a model with ``args``."""
    q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    return {
        "wq": (q, args.dim),
        "wk": (kv, args.dim),
        "wv": (kv, args.dim),
        "wo": (args.dim, q),
        "w1": (args.hidden_dim, args.dim),
        "w3": (args.hidden_dim, args.dim),
        "w2": (args.dim, args.hidden_dim),
    }[name]


class LoRALinear(nn.Module):
    """``y = x W^T + scaling * dropout(x) A^T B^T``. ``weight`` is the original Linear's
    parameter (same object, so state-dict names of the base model do not change); ``lora_b``
    starts at zero, so a fresh adapter leaves the model's outputs exactly as they were."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.rank, self.scaling = rank, alpha / rank
        dev = base.weight.device
        # Adapter weights in fp32 even over a bf16 base: tiny, and Adam updates need the precision.
        self.lora_a = nn.Linear(self.in_features, rank, bias=False, device=dev, dtype=torch.float32)
        self.lora_b = nn.Linear(rank, self.out_features, bias=False, device=dev, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))  # PEFT's / torchtune's default
        nn.init.zeros_(self.lora_b.weight)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight)
        a = self.lora_a.weight.to(x.dtype)
        b = self.lora_b.weight.to(x.dtype)
        # The scaling multiplies the rank-r projection, not the full-width output: one small
        # multiply instead of a large one per call (and per backward).
        return out + F.linear(F.linear(self.dropout(x), a) * self.scaling, b)

    def merged_weight(self) -> torch.Tensor:
        delta = (self.lora_b.weight.float() @ self.lora_a.weight.float()) * self.scaling
        return (self.weight.float() + delta).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scaling={self.scaling:g}"


def lora_targets(model: nn.Module, cfg: LoraConfig):
    """(layer index, projection name, the module holding it) for every projection ``cfg`` adapts."""
    for i, layer in enumerate(model.layers):
        for name in cfg.target_modules:
            parent = getattr(layer, BLOCK_PARENT[name])
            yield i, name, parent


def apply_lora(model: nn.Module, cfg: LoraConfig, *, freeze: bool = True) -> list[nn.Parameter]:
    """Swap the target Linear layers for LoRALinear; freeze everything else (``freeze``).
    Returns the adapter parameters (what to give the optimizer)."""
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ConfigError("the model already has LoRA adapters; merge or reload it before adding more")
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    params = []
    for _, name, parent in lora_targets(model, cfg):
        lora = LoRALinear(getattr(parent, name), cfg.rank, cfg.alpha, cfg.dropout)
        setattr(parent, name, lora)
        params += [lora.lora_a.weight, lora.lora_b.weight]
    model.lora_config = cfg
    return params


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors only, our names (``layers.0.attention.wq.lora_a.weight``)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_a." in k or ".lora_b." in k}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain Linear layers back, so the model
    is an ordinary Transformer again (exportable, servable at full speed)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                plain = nn.Linear(
                    child.in_features,
                    child.out_features,
                    bias=False,
                    device=child.weight.device,
                    dtype=child.weight.dtype,
                )
                with torch.no_grad():
                    plain.weight.copy_(child.merged_weight())
                plain.weight.requires_grad_(False)
                setattr(module, child_name, plain)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


__all__ = [
    "HF_MODULE_NAMES",
    "OUR_MODULE_NAMES",
    "BLOCK_PARENT",
    "LoraConfig",
    "LoRALinear",
    "projection_shape",
    "lora_targets",
    "apply_lora",
    "lora_state_dict",
    "merge_lora",
]
