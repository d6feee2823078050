"""LoRA adapters in PEFT's folder format (``adapter_config.json`` + ``adapter_model.safetensors``):
written after LoRA training, read to attach an adapter for inference or further training.

PEFT's files name tensors the Hugging Face way (``base_model.model.model.layers.0.self_attn.
q_proj.lora_A.weight``). HF keeps q/k projection rows in the rotate-half RoPE layout while ours
are interleaved as Meta's, so the rows of ``lora_B`` (the output side) of q/k are permuted the
same way ``checkpoints/hf.py`` permutes q/k weights; ``lora_A`` (input side) is unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lhama.checkpoints.hf import chmod_as_created, hf_to_meta_rows, meta_to_hf_rows
from lhama.errors import CheckpointError, ConfigError
from lhama.model.lora import (
    BLOCK_PARENT,
    HF_MODULE_NAMES,
    LoraConfig,
    LoRALinear,
    apply_lora,
    lora_state_dict,
    lora_targets,
    projection_shape,
)

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_HF_PARENT = {"attention": "self_attn", "feed_forward": "mlp"}


def _hf_key(i: int, name: str, ab: str) -> str:
    return (
        f"base_model.model.model.layers.{i}.{_HF_PARENT[BLOCK_PARENT[name]]}.{HF_MODULE_NAMES[name]}.lora_{ab}.weight"
    )


def _heads(name: str, args) -> int | None:
    return {"wq": args.n_heads, "wk": args.n_kv_heads}.get(name)


def save_peft_adapter(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    base_model: str | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
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
    for i, name, _ in lora_targets(model, cfg):
        prefix = f"layers.{i}.{BLOCK_PARENT[name]}.{name}"
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
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": sorted(HF_MODULE_NAMES[t] for t in cfg.target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "revision": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
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
    if (
        raw.get("rank_pattern")
        or raw.get("alpha_pattern")
        or raw.get("layers_to_transform")
        or raw.get("modules_to_save")
    ):
        raise CheckpointError(
            cfg_file, "per-layer rank/alpha patterns, layer subsets and modules_to_save are not supported"
        )
    targets = raw.get("target_modules")
    if isinstance(targets, str):  # PEFT allows a regex string; we accept only plain names
        targets = [targets]
    try:
        lora = LoraConfig(
            rank=int(raw["r"]),
            alpha=float(raw.get("lora_alpha", raw["r"])),
            dropout=float(raw.get("lora_dropout", 0.0) or 0.0),
            target_modules=tuple(targets or ()),
        )
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise CheckpointError(cfg_file, f"unusable adapter config ({e})") from None
    return lora, raw


def _read_tensors(path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    weights_file = path / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        raise CheckpointError(
            path,
            f"{ADAPTER_WEIGHTS} is missing (adapter_model.bin is not read: re-save "
            "the adapter with safe_serialization=True)",
        )
    try:
        with safe_open(str(weights_file), framework="pt") as f:
            stored = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(weights_file, f"corrupt or truncated safetensors file ({e})") from None
    # PEFT writes names with or without the adapter name ("lora_A.default.weight") depending on version.
    return weights_file, {k.replace(".default.weight", ".weight"): v for k, v in stored.items()}


def read_peft_weights(path: str | os.PathLike, args) -> tuple[LoraConfig, dict[tuple[int, str], tuple]]:
    """An adapter folder's tensors in our layout, checked against a model with ``args``, without
    touching a model: {(layer, projection): (A [r, in], B [out, r])} in fp32 (serving adapters
    per request, ``lhama.model.lora_batch``)."""
    path = Path(path)
    cfg, _ = read_peft_config(path)
    weights_file, stored = _read_tensors(path)
    out: dict[tuple[int, str], tuple] = {}
    for i in range(args.n_layers):
        for name in cfg.target_modules:
            n_out, n_in = projection_shape(name, args)
            pair = []
            for ab, shape in (("A", (cfg.rank, n_in)), ("B", (n_out, cfg.rank))):
                key = _hf_key(i, name, ab)
                t = stored.pop(key, None)
                if t is None:
                    raise CheckpointError(
                        weights_file, "adapter tensor missing; was it trained for this model?", tensor=key
                    )
                if tuple(t.shape) != shape:
                    raise CheckpointError(
                        weights_file, f"shape {tuple(t.shape)} does not fit the model, which needs {shape}", tensor=key
                    )
                heads = _heads(name, args)
                pair.append(hf_to_meta_rows(t, heads).float() if ab == "B" and heads else t.float())
            out[i, name] = tuple(pair)
    if stored:
        raise CheckpointError(
            weights_file, "unexpected tensor in the adapter (not a LoRA weight of this model)", tensor=min(stored)
        )
    return cfg, out


def load_peft_adapter(model: nn.Module, path: str | os.PathLike) -> LoraConfig:
    """Attach a PEFT LoRA adapter folder to ``model`` (weights mapped to our layout)."""
    path = Path(path)
    cfg, _ = read_peft_config(path)
    weights_file, stored = _read_tensors(path)
    apply_lora(model, cfg)
    expected = set()
    for i, name, parent in lora_targets(model, cfg):
        lora: LoRALinear = getattr(parent, name)
        heads = _heads(name, model.args)
        for ab, lin in (("A", lora.lora_a), ("B", lora.lora_b)):
            key = _hf_key(i, name, ab)
            expected.add(key)
            t = stored.get(key)
            if t is None:
                raise CheckpointError(
                    weights_file, "adapter tensor missing; was it trained for this model?", tensor=key
                )
            if tuple(t.shape) != tuple(lin.weight.shape):
                raise CheckpointError(
                    weights_file,
                    f"shape {tuple(t.shape)} does not fit the model, which needs {tuple(lin.weight.shape)}",
                    tensor=key,
                )
            if ab == "B" and heads:
                t = hf_to_meta_rows(t, heads)
            with torch.no_grad():
                lin.weight.copy_(t.to(lin.weight.dtype))
    extra = sorted(set(stored) - expected)
    if extra:
        raise CheckpointError(
            weights_file, "unexpected tensor in the adapter (not a LoRA weight of this model)", tensor=extra[0]
        )
    for p in model.parameters():
        p.requires_grad_(False)
    return cfg


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "save_peft_adapter",
    "read_peft_config",
    "read_peft_weights",
    "load_peft_adapter",
]
