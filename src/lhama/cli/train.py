"""Training commands: ``lhama finetune`` (sft, lora, pretrain, dpo), ``lhama distill``,
``lhama synth`` and ``lhama rejection-sample``: flags and config file to the recipes in
``lhama.train``. Every training flag defaults to "not given" (None) so a config file's value
stands unless the flag is passed; the defaults are the config dataclasses' (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import sys

from lhama.cli.args import add_kv_cache_dtype_arg

RECIPES = ("sft", "lora", "pretrain", "dpo")
# Flags of add_recipe_options that go to RecipeOptions.
RECIPE_FLAGS = (
    "model",
    "data",
    "eval_data",
    "export",
    "gguf_type",
    "device",
    "model_dtype",
    "tokenizer",
    "chat_format",
)


def add_train_options(p: argparse.ArgumentParser) -> None:
    """TrainConfig flags, shared by every training subcommand."""
    g = p.add_argument_group("training (override the config file)")
    g.add_argument("--config", help="YAML or JSON file with training options (flags override it)")
    g.add_argument("--output-dir", help="run folder: checkpoints, metrics.jsonl, loss.png, outputs")
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    g.add_argument("--warmup-steps", type=int, help="linear warm-up steps before the cosine schedule")
    g.add_argument("--min-lr-ratio", type=float, help="cosine schedule floor, as a fraction of --lr")
    g.add_argument("--max-steps", type=int, help="optimizer steps (0: --epochs over the data)")
    g.add_argument("--epochs", type=float, help="passes over the data (with --max-steps 0)")
    g.add_argument("--batch-size", type=int, help="sequences per micro-batch (all processes together)")
    g.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step")
    g.add_argument("--max-seq-len", type=int, help="row length in tokens")
    g.add_argument("--max-grad-norm", type=float, help="clip gradients to this norm (0: no clipping)")
    g.add_argument("--seed", type=int, help="seed of initialization, data order and dropout")
    g.add_argument("--save-every", type=int, help="checkpoint every N steps (0: only at the end)")
    g.add_argument("--keep-checkpoints", type=int, help="how many step checkpoints to keep")
    g.add_argument("--log-every", type=int, help="write metrics every N steps")
    g.add_argument(
        "--grad-checkpointing",
        action="store_true",
        default=None,
        help="recompute activations in backward (less memory, ~30%% slower)",
    )
    g.add_argument("--dtype", choices=["auto", "bf16", "fp32"], help="autocast (auto: bf16 on CUDA when supported)")
    g.add_argument(
        "--no-pack",
        dest="pack",
        action="store_false",
        default=None,
        help="one example per row, padded (default: pack examples into full rows)",
    )
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")


def add_lora_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("LoRA")
    g.add_argument("--lora-rank", type=int, help="rank r of the adapters (docs/training.md lists the defaults)")
    g.add_argument("--lora-alpha", type=float, help="scale: the update is multiplied by alpha / rank")
    g.add_argument("--lora-dropout", type=float, help="dropout on the adapter input")
    g.add_argument(
        "--lora-target",
        dest="lora_target_modules",
        action="append",
        help="module to adapt (repeatable): wq wk wv wo w1 w2 w3, HF names (q_proj ...) or 'all'",
    )


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", "-m", help="base model: GGUF, HF folder, Meta folder, config name or 'default'")
    g.add_argument(
        "--data",
        action="append",
        help="training file (repeatable): chat JSONL for sft/lora, .txt or JSONL with 'text' for pretrain",
    )
    g.add_argument("--eval-data", help="held-out file in the same format: loss reported before and after")
    g.add_argument(
        "--export",
        choices=["safetensors", "gguf"],
        help="also write merged full weights (LoRA merged in): HF folder or GGUF file",
    )
    g.add_argument("--gguf-type", choices=["f32", "f16", "q8_0"], help="GGUF export precision (default f16)")
    g.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    g.add_argument(
        "--model-dtype",
        choices=["float32", "bfloat16", "float16"],
        help="dtype the weights are held in (default float32)",
    )
    g.add_argument("--tokenizer", help="tokenizer file/folder when the model has none (config names)")
    g.add_argument("--chat-format", help="override the chat format: llama3, llama2, jinja or a .jinja file")


def add_finetune_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Train on chat JSONL ({'messages': [...]}, loss on assistant turns only), raw text "
        "(--recipe pretrain) or preference pairs (--recipe dpo). Writes checkpoints, metrics.jsonl, "
        "loss.png and the result (PEFT adapter / HF folder / GGUF) to --output-dir. Run under "
        "torchrun for FSDP2 over several processes."
    )
    p.add_argument(
        "--recipe",
        choices=RECIPES,
        help="sft (full weights), lora, pretrain, or dpo (preference pairs) "
        "(default: sft, or 'recipe:' in the config file)",
    )
    add_recipe_options(p)
    add_train_options(p)
    add_lora_options(p)
    add_dpo_options(p)
    p.set_defaults(func=cmd_finetune)


def train_overrides(a: argparse.Namespace) -> dict:
    keys = (
        "output_dir",
        "lr",
        "weight_decay",
        "warmup_steps",
        "min_lr_ratio",
        "max_steps",
        "epochs",
        "batch_size",
        "grad_accum",
        "max_seq_len",
        "max_grad_norm",
        "seed",
        "save_every",
        "keep_checkpoints",
        "log_every",
        "grad_checkpointing",
        "dtype",
        "pack",
        "progress",
    )
    out = {k: getattr(a, k, None) for k in keys}
    for k in ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules"):
        out[k] = getattr(a, k, None)
    if out["lora_target_modules"]:
        out["lora_target_modules"] = tuple(out["lora_target_modules"])
    return out


def recipe_overrides(a: argparse.Namespace) -> dict:
    """The model and data flags (RecipeOptions fields) as given, lists as tuples."""
    out = {}
    for k in RECIPE_FLAGS:
        v = getattr(a, k, None)
        out[k] = tuple(v) if isinstance(v, list) else v
    return out


def print_summary(summary: dict) -> None:
    from lhama.parallel.runtime import is_main_process

    if is_main_process():
        summary = {k: v for k, v in summary.items() if k != "config"}
        print(json.dumps(summary, default=str), file=sys.stdout, flush=True)


def cmd_finetune(a: argparse.Namespace) -> int:
    from lhama.errors import ConfigError
    from lhama.model.lora import LoraConfig
    from lhama.train.config import build_configs, read_config_file
    from lhama.train.recipe import RECIPE_KEYS, RecipeOptions

    file_values = read_config_file(a.config) if a.config else {}
    recipe = a.recipe or file_values.pop("recipe", None) or "sft"
    file_values.pop("recipe", None)
    if recipe not in RECIPES:
        raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    overrides = train_overrides(a)
    overrides.update(recipe_overrides(a))
    if recipe == "dpo":
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
    print_summary(summary)
    return 0


def add_dpo_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DPO (--recipe dpo; data: JSONL with prompt/chosen/rejected)")
    g.add_argument("--beta", type=float, help="DPO temperature β (default 0.1)")
    g.add_argument("--dpo-loss", dest="dpo_loss", choices=["sigmoid", "ipo"], help="default sigmoid")
    g.add_argument("--label-smoothing", type=float, help="cDPO: assumed share of flipped labels (default 0)")
    g.add_argument(
        "--reference",
        choices=["precompute", "model", "adapters_off"],
        help="reference log-probs: computed once before training (default), a frozen model "
        "scored every batch, or (LoRA) the base with adapters disabled",
    )
    g.add_argument("--ref-model", help="a separate reference model (default: the starting policy)")
    g.add_argument(
        "--max-prompt-len", type=int, help="prompt tokens kept when a pair is too long (default: half of --max-seq-len)"
    )


def run_dpo_command(a: argparse.Namespace, file_values: dict, recipe_overrides: dict) -> int:
    """``lhama finetune --recipe dpo``: a ``dpo:`` section and ``ref_model`` may come from the
    config file; LoRA when any LoRA option (or a ``lora:`` section) is given.
    ``recipe_overrides``: every flag of ``lhama finetune`` as ``cmd_finetune`` collects them."""
    from lhama.errors import ConfigError
    from lhama.train.config import build_configs
    from lhama.train.dpo import DPOConfig, run_dpo
    from lhama.train.recipe import RECIPE_KEYS, RecipeOptions

    file_values = dict(file_values)
    section = file_values.pop("dpo", None) or {}
    if not isinstance(section, dict):
        raise ConfigError(
            "the 'dpo' section must be a mapping (beta, loss, label_smoothing, reference, max_prompt_len)"
        )
    ref_model = a.ref_model or file_values.pop("ref_model", None)
    file_values.pop("ref_model", None)
    cfg, lora, extra = build_configs(file_values, recipe_overrides, recipe_keys=RECIPE_KEYS)
    unknown = sorted(set(extra) - set(RECIPE_KEYS))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}")
    flags = {
        "beta": a.beta,
        "loss": a.dpo_loss,
        "label_smoothing": a.label_smoothing,
        "reference": a.reference,
        "max_prompt_len": a.max_prompt_len,
    }
    values = {**section, **{k: v for k, v in flags.items() if v is not None}}
    try:
        dpo = DPOConfig(**values)
    except TypeError as e:
        raise ConfigError(f"dpo config: {e}") from None
    if "data" in extra and isinstance(extra["data"], str):
        extra["data"] = (extra["data"],)
    print_summary(run_dpo(RecipeOptions(**extra), cfg, lora, dpo, ref_model=ref_model, resume=a.resume))
    return 0


def add_distill_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Forward KL to the teacher's distribution (temperature T) plus cross-entropy on the data, "
        "weighted by --kd-ratio. Data: chat JSONL or raw text. Teacher and student share the "
        "teacher's tokenizer."
    )
    add_recipe_options(p)
    p.add_argument("--teacher", dest="model", help="the teacher model (same as --model; default: 'default')")
    p.add_argument(
        "--student",
        help="preset (smollm2-30m, smollm2-8m), config name, .json/.yaml of model "
        "options, or a checkpoint to continue (default smollm2-30m)",
    )
    p.add_argument("--temperature", type=float, help="softmax temperature of both distributions (default 1)")
    p.add_argument(
        "--kd-ratio",
        type=float,
        help="weight of the KL term, 1 - it on cross-entropy (default 0.5; 0 trains without the teacher)",
    )
    add_train_options(p)
    p.set_defaults(func=cmd_distill)


def cmd_distill(a: argparse.Namespace) -> int:
    from lhama.errors import ConfigError
    from lhama.train.config import build_configs, read_config_file
    from lhama.train.distill import DistillConfig, run_distill
    from lhama.train.recipe import RECIPE_KEYS, RecipeOptions

    file_values = read_config_file(a.config) if a.config else {}
    section = file_values.pop("distill", None) or {}
    student = a.student or file_values.pop("student", None) or "smollm2-30m"
    file_values.pop("student", None)
    overrides = {k: v for k, v in train_overrides(a).items() if not k.startswith("lora_")}
    overrides.update(recipe_overrides(a))
    cfg, lora, extra = build_configs(file_values, overrides, recipe_keys=RECIPE_KEYS)
    if lora is not None:
        raise ConfigError("distill trains the whole student; LoRA options do not apply")
    flags = {"temperature": a.temperature, "kd_ratio": a.kd_ratio}
    try:
        dcfg = DistillConfig(**{**section, **{k: v for k, v in flags.items() if v is not None}})
    except TypeError as e:
        raise ConfigError(f"distill config: {e}") from None
    if "data" in extra and isinstance(extra["data"], str):
        extra["data"] = (extra["data"],)
    print_summary(run_distill(RecipeOptions(**extra), cfg, dcfg, student=student, resume=a.resume))
    return 0


def _add_engine_model(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--model", "-m", default="default", help=f"the {what} model")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--max-num-seqs", type=int, default=64, help="sequences decoded together by the engine")
    p.add_argument("--kv-cache-gb", type=float, default=0.5, help="KV cache size in GiB")
    add_kv_cache_dtype_arg(p)
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _engine(lm, a):
    from lhama.engine import EngineConfig, LLMEngine

    config = EngineConfig(max_num_seqs=a.max_num_seqs, kv_cache_gb=a.kv_cache_gb, kv_cache_dtype=a.kv_cache_dtype)
    return LLMEngine.from_loaded(lm, config)


def add_synth_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Self-instruct through the batching engine: the teacher writes instructions per topic, then "
        "answers them; filters (length, garbage, refusals, language) and near-duplicate removal; chat "
        "JSONL out. Resumes an interrupted run."
    )
    _add_engine_model(p, "teacher")
    p.add_argument(
        "--topics", required=True, help="seed topics: .txt (one per line) or JSONL with 'topic' and optional 'examples'"
    )
    p.add_argument("--output", "-o", required=True, help="chat JSONL to write (appended; resumable)")
    p.add_argument("--instructions-per-topic", type=int, default=4, help="instructions written per topic and round")
    p.add_argument("--rounds", type=int, default=1, help="self-instruct rounds (later ones see earlier output)")
    p.add_argument("--answer-max-tokens", type=int, default=256, help="most tokens per answer")
    p.add_argument("--answer-temperature", type=float, default=0.0, help="sampling temperature of answers (0: greedy)")
    p.add_argument(
        "--instruction-temperature",
        type=float,
        default=1.0,
        help="sampling temperature of instructions (varied on purpose)",
    )
    p.add_argument("--dedup-threshold", type=float, default=0.7, help="Jaccard similarity of word 3-grams")
    p.add_argument("--languages", default="en", help="comma-separated ISO codes to keep ('' keeps all)")
    p.add_argument("--keep-refusals", action="store_true", help="keep answers that refuse")
    p.add_argument("--system", help="system prompt for answering")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.set_defaults(func=cmd_synth)


def cmd_synth(a: argparse.Namespace) -> int:
    from lhama.loader import load_model
    from lhama.train.synth import FilterConfig, SynthConfig, read_topics, synthesize

    langs = tuple(x.strip() for x in a.languages.split(",") if x.strip())
    cfg = SynthConfig(
        instructions_per_topic=a.instructions_per_topic,
        rounds=a.rounds,
        answer_max_tokens=a.answer_max_tokens,
        answer_temperature=a.answer_temperature,
        instruction_temperature=a.instruction_temperature,
        dedup_threshold=a.dedup_threshold,
        system=a.system,
        seed=a.seed,
        instruction_filters=FilterConfig(max_chars=400, languages=langs, drop_refusals=not a.keep_refusals),
        answer_filters=FilterConfig(languages=langs, drop_refusals=not a.keep_refusals),
    )
    topics = read_topics(a.topics)
    lm = load_model(a.model, device=a.device)
    counts = synthesize(lm, topics, a.output, cfg, engine=_engine(lm, a), progress=a.progress)
    print(json.dumps({"output": a.output, **counts}), flush=True)
    return 0


def add_rejection_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Prompts JSONL ('prompt' or 'messages', plus what the reward reads: 'answer' for exact, "
        "'tests' for unit-tests). Writes samples.jsonl (resumable ledger), sft.jsonl, dpo.jsonl and "
        "stats.json to --output-dir."
    )
    _add_engine_model(p, "policy")
    p.add_argument("--prompts", required=True, help="prompts JSONL")
    p.add_argument("--output-dir", "-o", required=True, help="folder for the ledger and the JSONL outputs")
    p.add_argument(
        "--reward",
        default="exact",
        help="exact, unit-tests, judge, or module.path:name (a Reward, a factory, or fn(record, candidates) -> scores)",
    )
    p.add_argument("--judge-model", help="the judge for --reward judge")
    p.add_argument("--num-candidates", "-n", type=int, default=4, help="candidates sampled per prompt")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature of the candidates")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling of the candidates")
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens per candidate")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--min-margin", type=float, default=0.0, help="a DPO pair needs best - worst above this")
    p.add_argument("--min-sft-score", type=float, help="keep the best as SFT data only from this score")
    p.add_argument("--keep-truncated", action="store_true", help="let candidates cut by --max-tokens be best")
    p.set_defaults(func=cmd_rejection)


def cmd_rejection(a: argparse.Namespace) -> int:
    from lhama.loader import load_model
    from lhama.train.data import read_jsonl
    from lhama.train.rejection import RejectionConfig, rejection_sample
    from lhama.train.rewards import load_reward

    cfg = RejectionConfig(
        num_candidates=a.num_candidates,
        temperature=a.temperature,
        top_p=a.top_p,
        max_tokens=a.max_tokens,
        seed=a.seed,
        min_margin=a.min_margin,
        min_sft_score=a.min_sft_score,
        drop_truncated=not a.keep_truncated,
    )
    records = read_jsonl(a.prompts)
    reward = load_reward(a.reward, judge_model=a.judge_model)
    lm = load_model(a.model, device=a.device)
    stats = rejection_sample(lm, records, reward, a.output_dir, cfg, engine=_engine(lm, a), progress=a.progress)
    print(json.dumps({k: v for k, v in stats.items() if k != "config"}), flush=True)
    return 0
