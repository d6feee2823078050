"""``lhama info`` (shape, parameters, memory) and ``lhama convert`` (between checkpoint formats)."""

from __future__ import annotations

import json
from pathlib import Path


def add_info_args(p) -> None:
    p.add_argument("target", help="config name (llama3.1-8b ...), GGUF file, HF or Meta folder, or 'default'")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=run_info)


def model_args_of(target: str):
    """(ModelArgs, name) of a config name or a checkpoint, without reading its weights."""
    from lhama.model import CONFIGS

    if target.lower() in CONFIGS:
        return CONFIGS[target.lower()].args, target.lower()
    from lhama.checkpoints import read_args
    from lhama.loader import resolve_model_spec

    path = resolve_model_spec(target)
    return read_args(path), str(path)


def run_info(a) -> int:
    from dataclasses import asdict

    from lhama.model.sizing import describe, model_size

    args, name = model_args_of(a.target)
    if a.json:
        print(json.dumps({"model": name, "args": asdict(args), **model_size(args).as_dict()}, indent=2))
    else:
        print(describe(args, name))
    return 0


def add_convert_args(p) -> None:
    p.add_argument("input", help="GGUF file, HF folder, Meta folder, or 'default'")
    p.add_argument("output", help="folder (safetensors, meta) or .gguf file to write")
    p.add_argument(
        "--to",
        choices=["safetensors", "gguf", "meta"],
        required=True,
        help="safetensors: a Hugging Face folder; gguf: one GGUF file; meta: a Meta folder "
        "(consolidated.NN.pth + params.json); see docs/checkpoints.md",
    )
    p.add_argument("--gguf-type", choices=["f32", "f16", "q8_0"], default="f16", help="GGUF tensor precision")
    p.set_defaults(func=run_convert)


def run_convert(a) -> int:
    from lhama.checkpoints.export import convert

    src = a.input
    if src == "default":
        from lhama.loader import default_model_path

        src = default_model_path()
    out = convert(Path(src), Path(a.output), to=a.to, gguf_type=a.gguf_type)
    print(f"wrote {out}")
    return 0
