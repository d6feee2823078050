"""``lhama batch IN OUT``: an OpenAI batch JSONL file offline, in this process or over Ray actors."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from lhama.cli.args import (
    add_engine_args,
    add_model_args,
    engine_config_from_args,
    load_model_from_args,
)


def add_batch_args(p) -> None:
    p.add_argument("input", help="OpenAI batch JSONL: one {custom_id, method, url, body} request per line")
    p.add_argument("output", help="results JSONL (appended; an interrupted run resumes where it stopped)")
    add_model_args(p)
    add_engine_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("Ray (docs/scaling.md)")
    g.add_argument("--ray", action="store_true", help="split the file across Ray actors")
    g.add_argument("--workers", type=int, default=2, help="Ray actors, one model copy each (with --ray)")
    g.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    p.set_defaults(func=run_batch)


def check_input_file(path: str) -> None:
    """Fail in one line before any model loads."""
    from lhama.errors import ConfigError

    p = Path(path)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise ConfigError(f"batch input {path} {what}; give an OpenAI batch JSONL file")


def batch_lora_slots(a, loaded):
    """``--lora NAME=PATH`` adapters (repeatable) in a ``LoraSlots`` over ``loaded.model``, or None:
    lines whose ``model`` is NAME run through that adapter (docs/batch.md)."""
    from lhama.cli.args import split_lora_flags

    _, named = split_lora_flags(getattr(a, "lora", None))
    if not named:
        return None
    from lhama.model.lora_batch import LoraSlots
    from lhama.peft_adapter import read_peft_weights

    read = [(name, path, *read_peft_weights(path, loaded.model.args)) for name, path in named]
    slots = LoraSlots(loaded.model, max_loras=len(read), max_rank=max(cfg.rank for _, _, cfg, _ in read))
    for name, path, cfg, weights in read:
        slots.load(name, path, cfg, weights)
    return slots


def run_batch(a) -> int:
    check_input_file(a.input)
    if a.ray:
        from lhama.cli.args import split_lora_flags
        from lhama.errors import ConfigError

        if split_lora_flags(getattr(a, "lora", None))[1]:
            raise ConfigError("--lora NAME=PATH (adapters per line) runs in one process; drop --ray")
        from lhama.parallel.ray_batch import ModelSpec, run_batch_ray

        spec = ModelSpec(
            model=a.model,
            dtype=a.dtype,
            device=a.device,
            chat_format=a.chat_format,
            tokenizer=a.tokenizer,
            max_seq_len=a.max_seq_len,
        )
        summary = run_batch_ray(
            spec,
            a.input,
            a.output,
            engine_config_from_args(a),
            workers=a.workers,
            address=a.ray_address,
            progress=not a.quiet,
        )
    else:
        from lhama.openai.engine_batch import run_batch_file

        loaded = load_model_from_args(a, named_lora_ok=True)
        summary = run_batch_file(
            loaded,
            Path(a.input),
            Path(a.output),
            engine_config_from_args(a),
            progress=not a.quiet,
            loras=batch_lora_slots(a, loaded),  # before the engine: it wraps the model's projections
        )
    print(json.dumps(asdict(summary)))
    return 0
