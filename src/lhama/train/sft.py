"""Recipe: supervised fine-tuning on chat JSONL, full or LoRA. Loss only on assistant tokens,
examples packed into rows. Also the steps every recipe shares (load, distributed set-up, outputs),
which ``pretrain.py`` reuses.

    lhama finetune --recipe lora --model default --data chat.jsonl --output-dir runs/lora
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from lhama.errors import ConfigError
from lhama.model.lora import LoraConfig, apply_lora
from lhama.parallel.runtime import barrier, init_distributed, is_initialized, is_main_process
from lhama.peft_adapter import save_peft_adapter
from lhama.train.config import TrainConfig
from lhama.train.data import BatchIterator, Row, load_chat_examples, make_rows
from lhama.train.outputs import export_weights, full_state_dict, heldout_loss, merged_state_dict
from lhama.train.trainer import Trainer, causal_lm_loss


@dataclass(frozen=True)
class RecipeOptions:
    """What a recipe trains on and what it writes, beside the TrainConfig."""

    model: str = "default"
    data: tuple[str, ...] = ()
    eval_data: str | None = None  # held-out file, same format as data: loss before and after
    export: str | None = None  # also write merged full weights: "safetensors" (HF folder) or "gguf"
    gguf_type: str = "f16"
    device: str | None = None
    model_dtype: str = "float32"  # weights in this dtype; activations follow TrainConfig.dtype autocast
    tokenizer: str | None = None
    chat_format: str | None = None

    def __post_init__(self) -> None:
        data = (self.data,) if isinstance(self.data, str) else tuple(self.data)
        if not data:
            raise ConfigError("no training data: give --data FILE (or 'data:' in the config file)")
        object.__setattr__(self, "data", data)
        if self.export not in (None, "safetensors", "gguf"):
            raise ConfigError(f"export must be safetensors or gguf, got {self.export!r}")
        if self.model_dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"model_dtype must be float32, bfloat16 or float16, got {self.model_dtype!r}")


RECIPE_KEYS = tuple(f for f in RecipeOptions.__dataclass_fields__)


def load_for_training(opts: RecipeOptions, cfg: TrainConfig):
    from lhama.loader import load_model

    device = opts.device
    if device is None and is_initialized() and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    lm = load_model(opts.model, dtype=getattr(torch, opts.model_dtype), device=device, tokenizer=opts.tokenizer,
                    chat_format=opts.chat_format, seed=cfg.seed)
    if cfg.max_seq_len > lm.args.max_seq_len:
        raise ConfigError(f"max_seq_len {cfg.max_seq_len} exceeds the model's context of {lm.args.max_seq_len} tokens")
    return lm


def pad_id_of(tokenizer) -> int:
    for name in ("pad_id", "eos_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int) and v >= 0:
            return v
    return 0


def run_recipe(opts: RecipeOptions, cfg: TrainConfig, lora: LoraConfig | None, *, resume: bool,
               to_examples: Callable[[Any, str], list], recipe: str) -> dict[str, Any]:
    """Load, (LoRA), train, write outputs; returns the run summary (also in summary.json)."""
    init_distributed()
    lm = load_for_training(opts, cfg)
    pad = pad_id_of(lm.tokenizer)
    examples = [ex for path in opts.data for ex in to_examples(lm, path)]
    rows = make_rows(examples, cfg.max_seq_len, pack=cfg.pack, pad_id=pad, truncate=recipe != "pretrain")
    eval_rows: list[Row] = []
    if opts.eval_data:
        eval_rows = make_rows(to_examples(lm, opts.eval_data), cfg.max_seq_len, pack=False, pad_id=pad,
                              truncate=recipe != "pretrain")
    model = lm.model
    torch.manual_seed(cfg.seed)  # LoRA's A matrices: the same adapter init on every process and run
    params = apply_lora(model, lora) if lora is not None else None
    if params is None:
        for p in model.parameters():
            p.requires_grad_(True)
    summary: dict[str, Any] = {"recipe": recipe, "model": opts.model, "train_rows": len(rows),
                               "train_examples": len(examples), "seq_len": cfg.max_seq_len}
    if eval_rows:
        summary["eval_loss_before"] = heldout_loss(model, eval_rows)
    trainer = Trainer(model, causal_lm_loss, BatchIterator(rows, cfg.batch_size, seed=cfg.seed), cfg, params)
    result = trainer.train(resume=resume)
    model = trainer.model
    summary.update(steps=result.steps, final_loss=result.final_loss, world_size=trainer.world)
    hist = [h for h in result.history if h["step"] > 1]  # step 1 includes one-off warm-up costs
    if hist:
        summary["tokens_per_s"] = sum(h["tokens"] for h in hist) / sum(h["step_s"] for h in hist)
    if eval_rows:
        summary["eval_loss_after"] = heldout_loss(model, eval_rows)
    out = Path(cfg.output_dir)
    state = full_state_dict(model)  # collective under FSDP
    if is_main_process():
        if lora is not None:
            adapter = save_peft_adapter(model, out / "adapter", base_model=str(lm.path or opts.model),
                                        state={k: v for k, v in state.items() if k in lora_state_dict_keys(state)})
            summary["adapter"] = str(adapter)
        if lora is None or opts.export:
            fmt = opts.export or "safetensors"
            target = out / ("model.gguf" if fmt == "gguf" else "model")
            written = export_weights(merged_state_dict(model, state), lm.args, lm.path, target, fmt, opts.gguf_type,
                                     tokenizer=lm.tokenizer)
            summary["model_out"] = str(written)
        summary["metrics"] = str(out / "metrics.jsonl")
        summary["loss_curve"] = str(out / "loss.png")
        summary["config"] = {"train": asdict(cfg), "lora": asdict(lora) if lora else None, "options": asdict(opts)}
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    barrier()
    return summary


def lora_state_dict_keys(state: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in state if ".lora_a." in k or ".lora_b." in k}


def chat_examples(lm, path: str) -> list:
    return load_chat_examples(path, lm.chat_format)


def run_sft(opts: RecipeOptions, cfg: TrainConfig, lora: LoraConfig | None = None, *, resume: bool = False):
    """Full SFT (``lora=None``) or LoRA SFT on chat JSONL."""
    return run_recipe(opts, cfg, lora, resume=resume, to_examples=chat_examples, recipe="lora" if lora else "sft")


__all__ = ["RecipeOptions", "run_sft", "run_recipe", "load_for_training"]
