"""Training configuration as frozen dataclasses, loadable from a YAML/JSON file with flags on top.

A config file holds top-level keys for ``TrainConfig`` fields and, optionally, a ``lora`` section
for ``LoraConfig`` (``lhama.model.lora``) and any recipe-specific keys (``model``, ``data`` ...)
which the recipe reads itself. Unknown keys are an error, not silently ignored: a typo in ``lerning_rate`` would
otherwise train with the default.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from lhama.errors import ConfigError
from lhama.model.lora import LoraConfig


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    max_steps: int = 0  # 0: run ``epochs`` passes over the data
    epochs: float = 1.0
    batch_size: int = 4  # sequences per micro-batch, summed over all processes
    grad_accum: int = 1  # micro-batches per optimizer step
    max_seq_len: int = 512
    pack: bool = True  # concatenate examples into full rows (attention stays within each example)
    seed: int = 0
    output_dir: str = "runs/train"
    save_every: int = 0  # checkpoint every N steps; 0: only at the end
    keep_checkpoints: int = 2  # older step checkpoints are deleted
    log_every: int = 1
    grad_checkpointing: bool = False
    dtype: str = "auto"  # autocast: "auto" (bf16 on CUDA when supported, else fp32), "bf16", "fp32"
    progress: bool = True

    def __post_init__(self) -> None:
        positive = ("lr", "batch_size", "grad_accum", "max_seq_len", "log_every", "epochs")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("weight_decay", "warmup_steps", "max_steps", "save_every", "max_grad_norm", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"dtype must be auto, bf16 or fp32, got {self.dtype!r}")
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", betas)

    def with_(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (.yaml/.yml) or JSON config file as a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            obj = yaml.safe_load(text)
        else:
            obj = json.loads(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError, both with line numbers
        raise ConfigError(f"config file {path} does not parse: {e}") from None
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option names to values")
    return obj


def _coerce(cls, values: dict[str, Any], where: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "betas" in values and isinstance(values["betas"], list):
        values = {**values, "betas": tuple(values["betas"])}
    if "target_modules" in values and isinstance(values["target_modules"], list):
        values = {**values, "target_modules": tuple(values["target_modules"])}
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def build_configs(
    file_values: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    recipe_keys: tuple[str, ...] = (),
) -> tuple[TrainConfig, LoraConfig | None, dict[str, Any]]:
    """(TrainConfig, LoraConfig or None, recipe options) from a config file's dict with flag
    ``overrides`` on top (None values in ``overrides`` mean "flag not given"). ``recipe_keys``
    are the extra top-level keys the calling recipe understands."""
    values = dict(file_values or {})
    lora_values = values.pop("lora", None)
    recipe = {k: values.pop(k) for k in list(values) if k in recipe_keys}
    train_names = {f.name for f in fields(TrainConfig)}
    lora_names = {f.name for f in fields(LoraConfig)}
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k in train_names:
            values[k] = v
        elif k.startswith("lora_") and k[5:] in lora_names:
            lora_values = dict(lora_values or {})
            lora_values[k[5:]] = v
        else:
            recipe[k] = v
    train = _coerce(TrainConfig, values, "training config")
    if lora_values is not None and not isinstance(lora_values, dict):
        raise ConfigError("the 'lora' section must be a mapping (rank, alpha, dropout, target_modules)")
    lora = _coerce(LoraConfig, lora_values, "lora config") if lora_values is not None else None
    return train, lora, recipe
