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


def run_batch(a) -> int:
    check_input_file(a.input)
    if a.ray:
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

        summary = run_batch_file(
            load_model_from_args(a), Path(a.input), Path(a.output), engine_config_from_args(a), progress=not a.quiet
        )
    print(json.dumps(asdict(summary)))
    return 0
