"""What every training recipe shares, as steps a recipe composes (no base class to inherit).

A recipe is one module with one entry point, ``run_<name>(opts, cfg, ..., *, resume) -> summary``
(``sft.py``, ``pretrain.py``, ``dpo.py``, ``distill.py``), built from these steps:

    start_run(opts, cfg)            join the process group (torchrun), load the model to train
    trainable_params(model, lora)   attach LoRA adapters, or unfreeze every weight
    Trainer(model, loss_fn, ...)    the loop (``trainer.py``), with the recipe's loss and data
    write_run_outputs(...)          adapter and/or merged weights, summary.json (rank 0)

``train_on_examples`` is the causal-LM body built from them, shared by SFT and continued
pretraining: the two differ only in how a data file becomes examples.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lhama.errors import ConfigError
from lhama.model.lora import LoraConfig, apply_lora
from lhama.parallel.runtime import barrier, init_distributed, is_initialized, is_main_process
from lhama.peft_adapter import save_peft_adapter
from lhama.train.config import TrainConfig
from lhama.train.data import BatchIterator, Example, Row, make_rows
from lhama.train.outputs import export_weights, full_state_dict, heldout_loss, merged_state_dict
from lhama.train.trainer import Trainer, causal_lm_loss

# How a recipe turns one data file into examples, given the loaded model (tokenizer, chat format).
ExampleReader = Callable[[Any, str], list[Example]]


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


def start_run(opts: RecipeOptions, cfg: TrainConfig):
    """Join the launcher's process group (if any), then load ``opts.model`` for training: each
    process on its own GPU under torchrun."""
    init_distributed()
    return load_for_training(opts, cfg)


def load_for_training(opts: RecipeOptions, cfg: TrainConfig):
    from lhama.loader import load_model

    device = opts.device
    if device is None and is_initialized() and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    lm = load_model(
        opts.model,
        dtype=getattr(torch, opts.model_dtype),
        device=device,
        tokenizer=opts.tokenizer,
        chat_format=opts.chat_format,
        seed=cfg.seed,
    )
    if cfg.max_seq_len > lm.args.max_seq_len:
        raise ConfigError(f"max_seq_len {cfg.max_seq_len} exceeds the model's context of {lm.args.max_seq_len} tokens")
    return lm


def pad_id_of(tokenizer) -> int:
    for name in ("pad_id", "eos_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int) and v >= 0:
            return v
    return 0


def trainable_params(model: nn.Module, lora: LoraConfig | None, seed: int) -> list[nn.Parameter] | None:
    """LoRA: attach adapters (the base frozen) and return their parameters. Full training: every
    weight trains (None: the Trainer takes all that require grad)."""
    torch.manual_seed(seed)  # LoRA's A matrices: the same adapter init on every process and run
    if lora is not None:
        return apply_lora(model, lora)
    for p in model.parameters():
        p.requires_grad_(True)
    return None


def tokens_per_second(history: list[dict[str, Any]]) -> float | None:
    hist = [h for h in history if h["step"] > 1]  # step 1 includes one-off warm-up costs
    return sum(h["tokens"] for h in hist) / sum(h["step_s"] for h in hist) if hist else None


def write_run_outputs(
    model: nn.Module, lm, opts: RecipeOptions, cfg: TrainConfig, lora: LoraConfig | None, summary: dict[str, Any]
) -> dict[str, Any]:
    """Rank 0 writes the adapter (LoRA) and/or merged full weights (full training, or ``--export``)
    and summary.json; every process returns the summary. ``lm`` gives the base model's args,
    path and (optionally) tokenizer, which the exported files carry along."""
    out = Path(cfg.output_dir)
    state = full_state_dict(model)  # collective under FSDP
    if is_main_process():
        if lora is not None:
            adapter_state = {k: v for k, v in state.items() if ".lora_a." in k or ".lora_b." in k}
            adapter = save_peft_adapter(
                model, out / "adapter", base_model=str(lm.path or opts.model), state=adapter_state
            )
            summary["adapter"] = str(adapter)
        if lora is None or opts.export:
            fmt = opts.export or "safetensors"
            target = out / ("model.gguf" if fmt == "gguf" else "model")
            written = export_weights(
                merged_state_dict(model, state),
                lm.args,
                lm.path,
                target,
                fmt,
                opts.gguf_type,
                tokenizer=getattr(lm, "tokenizer", None),
            )
            summary["model_out"] = str(written)
        summary["metrics"], summary["loss_curve"] = str(out / "metrics.jsonl"), str(out / "loss.png")
        summary["config"] = {"train": asdict(cfg), "lora": asdict(lora) if lora else None, "options": asdict(opts)}
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    barrier()
    return summary


def train_on_examples(
    opts: RecipeOptions,
    cfg: TrainConfig,
    lora: LoraConfig | None,
    *,
    resume: bool,
    to_examples: ExampleReader,
    recipe: str,
) -> dict[str, Any]:
    """The causal-LM recipe: examples packed into rows, loss on labeled tokens, held-out loss
    before and after. Returns the run summary (also in summary.json)."""
    lm = start_run(opts, cfg)
    pad = pad_id_of(lm.tokenizer)
    truncate = recipe != "pretrain"  # pretraining splits long documents across rows instead
    examples = [ex for path in opts.data for ex in to_examples(lm, path)]
    rows = make_rows(examples, cfg.max_seq_len, pack=cfg.pack, pad_id=pad, truncate=truncate)
    eval_rows: list[Row] = []
    if opts.eval_data:
        eval_rows = make_rows(
            to_examples(lm, opts.eval_data), cfg.max_seq_len, pack=False, pad_id=pad, truncate=truncate
        )
    model = lm.model
    params = trainable_params(model, lora, cfg.seed)
    summary: dict[str, Any] = {
        "recipe": recipe,
        "model": opts.model,
        "train_rows": len(rows),
        "train_examples": len(examples),
        "seq_len": cfg.max_seq_len,
    }
    if eval_rows:
        summary["eval_loss_before"] = heldout_loss(model, eval_rows)
    trainer = Trainer(model, causal_lm_loss, BatchIterator(rows, cfg.batch_size, seed=cfg.seed), cfg, params)
    result = trainer.train(resume=resume)
    summary.update(steps=result.steps, final_loss=result.final_loss, world_size=trainer.world)
    if (rate := tokens_per_second(result.history)) is not None:
        summary["tokens_per_s"] = rate
    if eval_rows:
        summary["eval_loss_after"] = heldout_loss(trainer.model, eval_rows)
    return write_run_outputs(trainer.model, lm, opts, cfg, lora, summary)


__all__ = [
    "ExampleReader",
    "RecipeOptions",
    "RECIPE_KEYS",
    "start_run",
    "load_for_training",
    "pad_id_of",
    "trainable_params",
    "tokens_per_second",
    "write_run_outputs",
    "train_on_examples",
]
