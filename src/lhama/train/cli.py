"""``lhama finetune`` (and the other training subcommands): flags and config file to the recipe.

Registered by ``add_train_parsers(sub)`` from ``lhama/cli.py``. Every training flag defaults to
"not given" (None) so a config file's value stands unless the flag is passed.
"""

from __future__ import annotations

import argparse
import json
import sys

RECIPES = ("sft", "lora", "pretrain", "dpo")


def add_train_options(p: argparse.ArgumentParser) -> None:
    """TrainConfig flags, shared by every training subcommand."""
    g = p.add_argument_group("training (override the config file)")
    g.add_argument("--config", help="YAML or JSON file with training options (flags override it)")
    g.add_argument("--output-dir", help="run folder: checkpoints, metrics.jsonl, loss.png, outputs")
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    g.add_argument("--lr", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--min-lr-ratio", type=float, help="cosine schedule floor, as a fraction of --lr")
    g.add_argument("--max-steps", type=int, help="optimizer steps (0: --epochs over the data)")
    g.add_argument("--epochs", type=float)
    g.add_argument("--batch-size", type=int, help="sequences per micro-batch (all processes together)")
    g.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    g.add_argument("--max-seq-len", type=int, help="row length in tokens")
    g.add_argument("--max-grad-norm", type=float, help="clip gradients to this norm (0: no clipping)")
    g.add_argument("--seed", type=int)
    g.add_argument("--save-every", type=int, help="checkpoint every N steps (0: only at the end)")
    g.add_argument("--keep-checkpoints", type=int, help="how many step checkpoints to keep")
    g.add_argument("--log-every", type=int)
    g.add_argument("--grad-checkpointing", action="store_true", default=None,
                   help="recompute activations in backward (less memory, ~30%% slower)")
    g.add_argument("--dtype", choices=["auto", "bf16", "fp32"], help="autocast (auto: bf16 on CUDA when supported)")
    g.add_argument("--no-pack", dest="pack", action="store_false", default=None,
                   help="one example per row, padded (default: pack examples into full rows)")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None)


def add_lora_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora-rank", type=int)
    g.add_argument("--lora-alpha", type=float)
    g.add_argument("--lora-dropout", type=float)
    g.add_argument("--lora-target", dest="lora_target_modules", action="append",
                   help="module to adapt (repeatable): wq wk wv wo w1 w2 w3, HF names (q_proj ...) or 'all'")


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", "-m", help="base model: GGUF, HF folder, Meta folder, config name or 'default'")
    g.add_argument("--data", action="append", help="training file (repeatable): chat JSONL for sft/lora, "
                                                  ".txt or JSONL with 'text' for pretrain")
    g.add_argument("--eval-data", help="held-out file in the same format: loss reported before and after")
    g.add_argument("--export", choices=["safetensors", "gguf"],
                   help="also write merged full weights (LoRA merged in): HF folder or GGUF file")
    g.add_argument("--gguf-type", choices=["f32", "f16", "q8_0"], help="GGUF export precision (default f16)")
    g.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    g.add_argument("--model-dtype", choices=["float32", "bfloat16", "float16"],
                   help="dtype the weights are held in (default float32)")
    g.add_argument("--tokenizer", help="tokenizer file/folder when the model has none (config names)")
    g.add_argument("--chat-format", help="override the chat format: llama3, llama2, jinja or a .jinja file")


def add_train_parsers(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a model: full SFT, LoRA SFT, continued pretraining",
                       description="Train on chat JSONL ({'messages': [...]}, loss on assistant turns only) "
                                   "or raw text (--recipe pretrain). Writes checkpoints, metrics.jsonl, "
                                   "loss.png and the result (PEFT adapter / HF folder / GGUF) to --output-dir. "
                                   "Run under torchrun for FSDP2 over several processes.")
    p.add_argument("--recipe", choices=RECIPES, help="sft (full weights), lora, or pretrain (default: sft, "
                                                     "or 'recipe:' in the config file)")
    add_recipe_options(p)
    add_train_options(p)
    add_lora_options(p)
    p.set_defaults(func=cmd_finetune)
    from lhama.train.post_cli import add_dpo_options, add_post_training_parsers

    add_dpo_options(p)
    add_post_training_parsers(sub)  # distill, synth, rejection-sample


def train_overrides(a: argparse.Namespace) -> dict:
    keys = ("output_dir", "lr", "weight_decay", "warmup_steps", "min_lr_ratio", "max_steps", "epochs", "batch_size",
            "grad_accum", "max_seq_len", "max_grad_norm", "seed", "save_every", "keep_checkpoints", "log_every",
            "grad_checkpointing", "dtype", "pack", "progress")
    out = {k: getattr(a, k, None) for k in keys}
    for k in ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules"):
        out[k] = getattr(a, k, None)
    if out["lora_target_modules"]:
        out["lora_target_modules"] = tuple(out["lora_target_modules"])
    return out


def cmd_finetune(a: argparse.Namespace) -> int:
    from lhama.errors import ConfigError
    from lhama.train.config import LoraConfig, build_configs, read_config_file
    from lhama.train.sft import RECIPE_KEYS, RecipeOptions

    file_values = read_config_file(a.config) if a.config else {}
    recipe = a.recipe or file_values.pop("recipe", None) or "sft"
    file_values.pop("recipe", None)
    if recipe not in RECIPES:
        raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    overrides = train_overrides(a)
    for k in ("model", "data", "eval_data", "export", "gguf_type", "device", "model_dtype", "tokenizer", "chat_format"):
        v = getattr(a, k, None)
        overrides[k] = tuple(v) if isinstance(v, list) else v
    if recipe == "dpo":
        from lhama.train.post_cli import run_dpo_command

        return run_dpo_command(a, file_values, overrides)
    cfg, lora, extra = build_configs(file_values, overrides, recipe_keys=RECIPE_KEYS)
    unknown = sorted(set(extra) - set(RECIPE_KEYS))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}")
    if recipe == "lora" and lora is None:
        lora = LoraConfig()
    if recipe == "sft" and lora is not None:
        raise ConfigError("LoRA options were given but the recipe is 'sft' (full weights); use --recipe lora")
    if "data" in extra and isinstance(extra["data"], str):
        extra["data"] = (extra["data"],)
    opts = RecipeOptions(**extra)
    if recipe == "pretrain":
        from lhama.train.pretrain import run_pretrain

        summary = run_pretrain(opts, cfg, lora, resume=a.resume)
    else:
        from lhama.train.sft import run_sft

        summary = run_sft(opts, cfg, lora, resume=a.resume)
    from lhama.parallel.runtime import is_main_process

    if is_main_process():
        summary.pop("config", None)
        print(json.dumps(summary, default=str), file=sys.stdout, flush=True)
    return 0
