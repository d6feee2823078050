"""LoRA: a low-rank update ``W + (alpha/r) B A`` on chosen Linear layers of the Llama block, as a
module swap (the base weight stays where it was, frozen), plus PEFT-format save/load and merge.

PEFT's files name tensors the Hugging Face way (``base_model.model.model.layers.0.self_attn.
q_proj.lora_A.weight``). HF keeps q/k projection rows in the rotate-half RoPE layout while ours
are interleaved as Meta's, so the rows of ``lora_B`` (the output side) of q/k are permuted the
same way ``checkpoints/hf.py`` permutes q/k weights; ``lora_A`` (input side) is unchanged.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lhama.checkpoints.hf import chmod_as_created, hf_to_meta_rows, meta_to_hf_rows
from lhama.errors import CheckpointError, ConfigError
from lhama.train.config import HF_MODULE_NAMES, OUR_MODULE_NAMES, LoraConfig

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PARENT = {"wq": "attention", "wk": "attention", "wv": "attention", "wo": "attention",
           "w1": "feed_forward", "w2": "feed_forward", "w3": "feed_forward"}
_HF_PARENT = {"attention": "self_attn", "feed_forward": "mlp"}


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
        return out + F.linear(F.linear(self.dropout(x), a), b) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        delta = (self.lora_b.weight.float() @ self.lora_a.weight.float()) * self.scaling
        return (self.weight.float() + delta).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scaling={self.scaling:g}"


def _targets(model: nn.Module, cfg: LoraConfig):
    for i, layer in enumerate(model.layers):
        for name in cfg.target_modules:
            parent = getattr(layer, _PARENT[name])
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
    for _, name, parent in _targets(model, cfg):
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
                plain = nn.Linear(child.in_features, child.out_features, bias=False,
                                  device=child.weight.device, dtype=child.weight.dtype)
                with torch.no_grad():
                    plain.weight.copy_(child.merged_weight())
                plain.weight.requires_grad_(False)
                setattr(module, child_name, plain)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


# -- PEFT format -------------------------------------------------------------------------------
def _hf_key(i: int, name: str, ab: str) -> str:
    return f"base_model.model.model.layers.{i}.{_HF_PARENT[_PARENT[name]]}.{HF_MODULE_NAMES[name]}.lora_{ab}.weight"


def _heads(name: str, args) -> int | None:
    return {"wq": args.n_heads, "wk": args.n_kv_heads}.get(name)


def save_peft_adapter(model: nn.Module, out_dir: str | os.PathLike, *, base_model: str | None = None,
                      state: dict[str, torch.Tensor] | None = None) -> Path:
    """``adapter_config.json`` + ``adapter_model.safetensors`` that HF peft loads with
    ``PeftModel.from_pretrained`` on top of the same base model in transformers. ``state``: the
    adapter tensors by our names when they come from elsewhere (gathered from FSDP shards)."""
    cfg: LoraConfig | None = getattr(model, "lora_config", None)
    if cfg is None:
        raise ConfigError("the model has no LoRA adapters to save")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = state if state is not None else lora_state_dict(model)
    tensors = {}
    for i, name, _ in _targets(model, cfg):
        prefix = f"layers.{i}.{_PARENT[name]}.{name}"
        a = sd[f"{prefix}.lora_a.weight"].detach().float().cpu()
        b = sd[f"{prefix}.lora_b.weight"].detach().float().cpu()
        heads = _heads(name, model.args)
        tensors[_hf_key(i, name, "A")] = a.contiguous()
        tensors[_hf_key(i, name, "B")] = (meta_to_hf_rows(b, heads) if heads else b).contiguous()
    tmp = out / (ADAPTER_WEIGHTS + ".partial")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    chmod_as_created(tmp)
    os.replace(tmp, out / ADAPTER_WEIGHTS)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": cfg.rank, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
        "target_modules": sorted(HF_MODULE_NAMES[t] for t in cfg.target_modules),
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "modules_to_save": None,
        "use_rslora": False, "use_dora": False, "init_lora_weights": True, "revision": None,
        "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


def read_peft_config(path: Path) -> tuple[LoraConfig, dict[str, Any]]:
    cfg_file = path / ADAPTER_CONFIG
    if not cfg_file.is_file():
        raise CheckpointError(path, f"not a LoRA adapter folder: {ADAPTER_CONFIG} is missing")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(cfg_file, f"not valid JSON ({e})") from None
    if not isinstance(raw, dict) or raw.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(cfg_file, f"only LoRA adapters are supported, got peft_type {raw.get('peft_type')!r}")
    for unsupported in ("use_dora", "use_rslora", "fan_in_fan_out"):
        if raw.get(unsupported):
            raise CheckpointError(cfg_file, f"'{unsupported}' adapters are not supported")
    if raw.get("rank_pattern") or raw.get("alpha_pattern") or raw.get("layers_to_transform") or raw.get("modules_to_save"):
        raise CheckpointError(cfg_file, "per-layer rank/alpha patterns, layer subsets and modules_to_save are not supported")
    targets = raw.get("target_modules")
    if isinstance(targets, str):  # PEFT allows a regex string; we accept only plain names
        targets = [targets]
    try:
        lora = LoraConfig(rank=int(raw["r"]), alpha=float(raw.get("lora_alpha", raw["r"])),
                          dropout=float(raw.get("lora_dropout", 0.0) or 0.0), target_modules=tuple(targets or ()))
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise CheckpointError(cfg_file, f"unusable adapter config ({e})") from None
    return lora, raw


def load_peft_adapter(model: nn.Module, path: str | os.PathLike) -> LoraConfig:
    """Attach a PEFT LoRA adapter folder to ``model`` (weights mapped to our layout)."""
    path = Path(path)
    cfg, _ = read_peft_config(path)
    weights_file = path / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        raise CheckpointError(path, f"{ADAPTER_WEIGHTS} is missing (adapter_model.bin is not read: re-save "
                                    "the adapter with safe_serialization=True)")
    try:
        with safe_open(str(weights_file), framework="pt") as f:
            stored = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(weights_file, f"corrupt or truncated safetensors file ({e})") from None
    # PEFT writes names with or without the adapter name ("lora_A.default.weight") depending on version.
    stored = {k.replace(".default.weight", ".weight"): v for k, v in stored.items()}
    apply_lora(model, cfg)
    expected = set()
    for i, name, parent in _targets(model, cfg):
        lora: LoRALinear = getattr(parent, name)
        heads = _heads(name, model.args)
        for ab, lin in (("A", lora.lora_a), ("B", lora.lora_b)):
            key = _hf_key(i, name, ab)
            expected.add(key)
            t = stored.get(key)
            if t is None:
                raise CheckpointError(weights_file, "adapter tensor missing; was it trained for this model?", tensor=key)
            if tuple(t.shape) != tuple(lin.weight.shape):
                raise CheckpointError(weights_file, f"shape {tuple(t.shape)} does not fit the model, which needs "
                                                    f"{tuple(lin.weight.shape)}", tensor=key)
            if ab == "B" and heads:
                t = hf_to_meta_rows(t, heads)
            with torch.no_grad():
                lin.weight.copy_(t.to(lin.weight.dtype))
    extra = sorted(set(stored) - expected)
    if extra:
        raise CheckpointError(weights_file, "unexpected tensor in the adapter (not a LoRA weight of this model)",
                              tensor=extra[0])
    for p in model.parameters():
        p.requires_grad_(False)
    return cfg


__all__ = ["LoRALinear", "apply_lora", "lora_state_dict", "merge_lora", "save_peft_adapter", "load_peft_adapter",
           "read_peft_config", "OUR_MODULE_NAMES"]
