"""One entry point for every checkpoint format: detect it, read it into our names, put the
weights into a model, write them back out."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lhama.checkpoints.layout import cast, drop_tied_head, expected_shapes, require_file
from lhama.checkpoints.reader import CheckpointReader
from lhama.errors import CheckpointError
from lhama.model.args import ModelArgs

FORMATS = ("gguf", "hf", "meta")


@dataclass
class Checkpoint:
    args: ModelArgs
    state_dict: dict[str, torch.Tensor]  # Meta names; no output.weight when args.tie_embeddings
    format: str  # "gguf" | "hf" | "meta"
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)  # GGUF key/values, HF config or params.json


def detect_format(path: str | os.PathLike) -> str:
    """ "gguf" (by magic), "hf" (config.json, or a .safetensors file beside one) or "meta"
    (params.json). A folder holding exactly one .gguf file counts as that file."""
    path = require_file(Path(path))
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf"
        if (path / "params.json").is_file():
            return "meta"
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return "gguf"
        raise CheckpointError(
            path,
            "folder has no config.json (Hugging Face), params.json (Meta) or single "
            ".gguf file; cannot tell what checkpoint it holds",
        )
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return "gguf"
    if path.suffix == ".safetensors":
        if (path.parent / "config.json").is_file():
            return "hf"
        raise CheckpointError(path, "a .safetensors file needs a config.json beside it to say the model's shape")
    if path.suffix == ".pth" and (path.parent / "params.json").is_file():
        return "meta"
    if path.suffix == ".gguf":
        raise CheckpointError(path, f"not a GGUF file: it starts with {magic!r}, GGUF files start with b'GGUF'")
    raise CheckpointError(
        path,
        "unrecognised checkpoint; expected a .gguf file, a Hugging Face folder "
        "(config.json + safetensors) or a Meta folder (params.json + consolidated.*.pth)",
    )


def open_reader(path: str | os.PathLike) -> CheckpointReader:
    """The lazy reader (``lhama.checkpoints.reader``) for any supported checkpoint, validated:
    its metadata within bounds and matching its tensor table before any weight is read."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "gguf":
        from lhama.checkpoints.gguf import GGUFCheckpointReader

        reader: CheckpointReader = GGUFCheckpointReader(next(path.glob("*.gguf")) if path.is_dir() else path)
    elif fmt == "hf":
        from lhama.checkpoints.hf import HFCheckpointReader

        reader = HFCheckpointReader(path)
    else:
        from lhama.checkpoints.meta import MetaCheckpointReader

        reader = MetaCheckpointReader(path if path.is_dir() else path.parent)
    try:
        reader.validate()
    except BaseException:
        reader.close()
        raise
    return reader


def read_checkpoint(path: str | os.PathLike, dtype: torch.dtype | None = torch.float32) -> Checkpoint:
    """Read any supported checkpoint into our names, dequantized/cast to ``dtype`` (None keeps
    the stored precision; quantized GGUF tensors then come out as float32)."""
    with open_reader(path) as reader:
        sd = {name: cast(reader.read(name), dtype) for name in reader.shapes}
        where = reader.path if reader.format == "gguf" else Path(path)  # a folder stays the folder
        return Checkpoint(args=reader.args, state_dict=sd, format=reader.format, path=where, metadata=reader.metadata)


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: object = "<state dict>") -> None:
    """Put ``state_dict`` (our names) into ``model`` after checking every expected tensor is
    there with the right shape and nothing else is. When dtype and device already match, the
    tensors are adopted rather than copied, so the weights are never held twice."""
    args: ModelArgs = model.args
    state_dict = drop_tied_head(state_dict, args)
    expected = expected_shapes(args)
    for name, shape in expected.items():
        t = state_dict.get(name)
        if t is None:
            raise CheckpointError(source, "tensor missing; the checkpoint does not fit this model", tensor=name)
        if tuple(t.shape) != shape:
            raise CheckpointError(
                source, f"shape {tuple(t.shape)} does not fit the model, which needs {shape}", tensor=name
            )
    extra = sorted(set(state_dict) - set(expected))
    if extra:
        raise CheckpointError(source, "unexpected tensor, not part of this model", tensor=extra[0])
    ref = model.tok_embeddings.weight
    adopt = all(t.dtype == ref.dtype and t.device == ref.device for t in state_dict.values())
    with torch.no_grad():
        model.load_state_dict(state_dict, strict=False, assign=adopt)
    if args.tie_embeddings:  # assign replaced the embedding Parameter; re-share it with the head
        model.output.weight = model.tok_embeddings.weight


def write_checkpoint(
    state_dict: dict[str, torch.Tensor],
    args: ModelArgs,
    out_path: str | os.PathLike,
    fmt: str = "safetensors",
    gguf_type: str = "f16",
    metadata: dict[str, Any] | None = None,
    **options: Any,
) -> Path:
    """Write ``state_dict`` (our names) as ``fmt``: "safetensors" (HF folder; option
    ``max_shard_size``, ``extra_config``), "gguf" (file; ``gguf_type`` f32/f16/q8_0, ``metadata``
    with tokenizer.* keys to carry) or "meta" (folder; option ``n_shards``)."""
    if fmt in ("safetensors", "hf"):
        from lhama.checkpoints.hf import write_hf

        return write_hf(state_dict, args, out_path, **options)
    if fmt == "gguf":
        from lhama.checkpoints.gguf_write import write_gguf

        return write_gguf(state_dict, args, out_path, gguf_type=gguf_type, metadata=metadata)
    if fmt == "meta":
        from lhama.checkpoints.meta import write_meta

        return write_meta(state_dict, args, out_path, **options)
    raise ValueError(f"unknown checkpoint format {fmt!r}; expected safetensors, gguf or meta")


def load_model(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device="cpu"):
    """(model, checkpoint) ready for inference: the usual pairing of read_checkpoint,
    build_model and load_weights."""
    from lhama.model.transformer import build_model

    ckpt = read_checkpoint(path, dtype)
    model = build_model(ckpt.args, dtype=dtype, device=device)
    if device != "cpu":
        ckpt.state_dict = {k: v.to(device) for k, v in ckpt.state_dict.items()}
    load_weights(model, ckpt.state_dict, ckpt.path)
    return model.eval(), ckpt


def read_args(path: str | os.PathLike) -> ModelArgs:
    """The model's shape alone, from headers, without reading the weights: for ``lhama info``."""
    with open_reader(path) as reader:
        return reader.args
