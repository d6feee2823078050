"""Write llama.cpp-loadable GGUF files (f32, f16 or q8_0) with the ``gguf`` package."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from lhama.checkpoints.gguf import ARCH, GGUF_NAMES, ROPE_FREQS, rope_divisors
from lhama.checkpoints.layout import check_state_dict, drop_tied_head, expected_shapes
from lhama.model.args import ModelArgs

WRITE_TYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
# Keys the writer derives itself; never copied from a source file's metadata.
_OWN_KEYS = {"general.architecture", "general.file_type", "general.quantization_version", "general.alignment"}


def _add_value(w: gguf.GGUFWriter, key: str, value: Any) -> None:
    """Python value -> GGUF type with llama.cpp's conventions: scalar ints (token ids, sizes)
    are UINT32, integer arrays (token types) INT32, floats FLOAT32."""
    V = gguf.GGUFValueType
    if isinstance(value, bool):
        w.add_key_value(key, value, V.BOOL)
    elif isinstance(value, int):
        w.add_key_value(key, value, V.UINT32 if 0 <= value < 2**32 else V.INT64)
    elif isinstance(value, float):
        w.add_key_value(key, value, V.FLOAT32)
    elif isinstance(value, str):
        w.add_key_value(key, value, V.STRING)
    elif isinstance(value, (list, tuple)) and value:
        first = value[0]
        sub = (
            V.STRING
            if isinstance(first, str)
            else V.FLOAT32
            if isinstance(first, float)
            else V.BOOL
            if isinstance(first, bool)
            else V.INT32
        )
        w.add_key_value(key, list(value), V.ARRAY, sub_type=sub)


def _encode(t: torch.Tensor, qtype) -> np.ndarray:
    a = t.detach().to("cpu", torch.float32).numpy()
    return gguf.quants.quantize(a, qtype)


def write_gguf(
    state_dict: dict[str, torch.Tensor],
    args: ModelArgs,
    out_path: str | os.PathLike,
    gguf_type: str = "f16",
    metadata: dict[str, Any] | None = None,
    raw: dict[str, tuple[np.ndarray, Any]] | None = None,
) -> Path:
    """Write a llama.cpp-loadable GGUF. Norms stay F32 (as llama.cpp's converter does); Q8_0
    needs rows divisible by 32 and falls back to F16 otherwise. ``metadata`` ``tokenizer.*`` and
    ``general.*`` keys (e.g. from the source GGUF) are carried over so the file is self-contained.
    ``raw``: {name: (blocks uint8 [rows, bytes], ggml type)} written byte for byte in place of
    ``state_dict[name]`` (a quantized model's own blocks: ``lhama.checkpoints.quantized``)."""
    if gguf_type not in WRITE_TYPES:
        raise ValueError(f"gguf_type must be one of {sorted(WRITE_TYPES)}, got {gguf_type!r}")
    out_path = Path(out_path)
    raw = dict(raw or {})
    shapes = expected_shapes(args)
    state_dict = {**state_dict, **{n: torch.empty(shapes[n], device="meta") for n in raw if n in shapes}}
    state_dict = drop_tied_head(state_dict, args)
    check_state_dict(state_dict, args, "<state dict to write>")
    qtype, file_type = WRITE_TYPES[gguf_type]
    Q = gguf.GGMLQuantizationType

    w = gguf.GGUFWriter(None, ARCH)
    p = f"{ARCH}."
    md = dict(metadata or {})
    if "general.name" not in md:
        md["general.name"] = "lhama export"
    w.add_uint32(p + "context_length", args.max_seq_len)
    w.add_uint32(p + "embedding_length", args.dim)
    w.add_uint32(p + "block_count", args.n_layers)
    w.add_uint32(p + "feed_forward_length", args.hidden_dim)
    w.add_uint32(p + "attention.head_count", args.n_heads)
    w.add_uint32(p + "attention.head_count_kv", args.n_kv_heads)
    w.add_float32(p + "rope.freq_base", float(args.rope_theta))
    w.add_float32(p + "attention.layer_norm_rms_epsilon", float(args.norm_eps))
    w.add_uint32(p + "vocab_size", args.vocab_size)
    w.add_uint32(p + "rope.dimension_count", args.head_dim)
    if args.head_dim_override:
        w.add_uint32(p + "attention.key_length", args.head_dim)
        w.add_uint32(p + "attention.value_length", args.head_dim)
    w.add_uint32("general.file_type", int(file_type))
    if qtype not in (Q.F32, Q.F16):
        w.add_uint32("general.quantization_version", gguf.GGML_QUANT_VERSION)
    for key, value in md.items():
        if (key.startswith("tokenizer.") or key.startswith("general.")) and key not in _OWN_KEYS:
            _add_value(w, key, value)
    if "tokenizer.ggml.model" not in md:
        # llama.cpp requires the key; "none" loads the weights with no vocabulary attached.
        w.add_string("tokenizer.ggml.model", "none")

    # Plan every tensor first (names, types, sizes), then stream them one by one.
    plan: list[tuple[str, Any, Any, tuple[int, ...]]] = []
    if args.rope_scaling is not None:
        freqs = rope_divisors(args).float()
        plan.append((ROPE_FREQS, freqs, Q.F32, tuple(freqs.shape)))
    for name in expected_shapes(args):
        t = state_dict[name]
        tq = Q.F32 if t.ndim == 1 else qtype
        if name in raw:
            tq = Q(raw[name][1])
        elif tq == Q.Q8_0 and t.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
            tq = Q.F16
        plan.append((GGUF_NAMES.to_theirs(name), raw[name][0] if name in raw else t, tq, tuple(t.shape)))
    for name, _t, tq, shape in plan:
        block, type_size = gguf.GGML_QUANT_SIZES[tq]
        nbytes = math.prod(shape) // block * type_size
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=tq)

    tmp = out_path.with_name(out_path.name + ".partial")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for _name, t, tq, _shape in plan:
            w.write_tensor_data(np.ascontiguousarray(t) if isinstance(t, np.ndarray) else _encode(t, tq))
        w.close()
        os.replace(tmp, out_path)  # a reader never sees a half-written file under the real name
    finally:
        w.close()
        tmp.unlink(missing_ok=True)
    return out_path
