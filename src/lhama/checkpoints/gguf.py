"""GGUF (llama.cpp) checkpoints, read and written with the ``gguf`` package.

GGUF keeps Q/K rows in Meta's interleaved RoPE layout (llama.cpp's converter permutes Hugging
Face weights into it), so tensors load without permutation. Dimensions are stored in ggml's
``ne`` order (fastest-varying first), the reverse of torch's; the ``gguf`` reader already hands
out arrays in torch order. Tensors are dequantized one at a time so only the file's memory map
and the growing fp32/fp16 state dict are ever resident.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any

import gguf  # the PyPI package (absolute import; this module is lhama.checkpoints.gguf)
import numpy as np
import torch

from lhama.checkpoints.layout import NameTable, cast, check_state_dict, drop_tied_head, expected_shapes, require_file
from lhama.errors import CheckpointError, ConfigError
from lhama.model.args import ModelArgs, RopeScaling
from lhama.model.rope import rope_inv_freq

ARCH = "llama"

# Our name -> GGUF name. The only place GGUF tensor names appear.
GGUF_NAMES = NameTable({
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
    "layers.{i}.attention.wq.weight": "blk.{i}.attn_q.weight",
    "layers.{i}.attention.wk.weight": "blk.{i}.attn_k.weight",
    "layers.{i}.attention.wv.weight": "blk.{i}.attn_v.weight",
    "layers.{i}.attention.wo.weight": "blk.{i}.attn_output.weight",
    "layers.{i}.feed_forward.w1.weight": "blk.{i}.ffn_gate.weight",
    "layers.{i}.feed_forward.w2.weight": "blk.{i}.ffn_down.weight",
    "layers.{i}.feed_forward.w3.weight": "blk.{i}.ffn_up.weight",
    "layers.{i}.attention_norm.weight": "blk.{i}.attn_norm.weight",
    "layers.{i}.ffn_norm.weight": "blk.{i}.ffn_norm.weight",
})
ROPE_FREQS = "rope_freqs.weight"  # Llama 3.1 scaling as per-dimension frequency divisors

WRITE_TYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
# Keys the writer derives itself; never copied from a source file's metadata.
_OWN_KEYS = {"general.architecture", "general.file_type", "general.quantization_version", "general.alignment"}


# -- opening ---------------------------------------------------------------------------------
class _BadTensor(Exception):
    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


class _CheckedReader(gguf.GGUFReader):
    """GGUFReader that checks each tensor's extent and type before mapping it, so a truncated
    file is reported with the tensor that is cut off instead of a numpy reshape error."""

    def _get(self, *args, **kwargs):
        # Slicing an np.memmap runs its __array_finalize__ each time; a plain ndarray view of the
        # same mapping parses a 100k-string vocabulary ~4x faster (cold start).
        if type(self.data) is np.memmap:
            self.data = self.data.view(np.ndarray)
        return super()._get(*args, **kwargs)

    def _build_tensors(self, start_offs: int, fields: list) -> None:
        size = len(self.data)
        for field in fields:
            try:
                name = bytes(field.parts[1]).decode("utf-8", "replace")
                dims, raw_type, offset = field.parts[3], int(field.parts[4][0]), int(field.parts[5][0])
            except Exception:  # layout of the library's internals changed: let it report
                continue
            try:
                qtype = gguf.GGMLQuantizationType(raw_type)
            except ValueError:
                raise _BadTensor(name, f"unknown ggml tensor type id {raw_type}") from None
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            n_elems = math.prod(int(d) for d in dims)
            if n_elems % block:
                raise _BadTensor(name, f"{n_elems} elements are not a whole number of {qtype.name} blocks")
            end = start_offs + offset + n_elems // block * type_size
            if end > size:
                raise _BadTensor(name, f"file is truncated: tensor data ends at byte {end} but the file "
                                       f"has only {size} bytes (incomplete download?)")
        super()._build_tensors(start_offs, fields)


def _open(path: Path) -> gguf.GGUFReader:
    require_file(path)
    st = path.stat()
    return _open_cached(str(path.resolve()), st.st_mtime_ns, st.st_size, path)


@functools.lru_cache(maxsize=2)
def _open_cached(_resolved: str, _mtime: int, _size: int, path: Path) -> gguf.GGUFReader:
    """Model loading and the tokenizer both read the same file; parse its header once."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CheckpointError(path, f"not a GGUF file: it starts with {magic!r}, GGUF files start with b'GGUF'")
    try:
        return _CheckedReader(path)
    except _BadTensor as e:
        raise CheckpointError(path, str(e), tensor=e.name) from None
    except Exception as e:  # any parse failure inside the library is a corrupt file, not our crash
        raise CheckpointError(path, f"corrupt or truncated GGUF header ({type(e).__name__}: {e})") from None


def _metadata(reader: gguf.GGUFReader, path: Path) -> dict[str, Any]:
    md: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):  # the reader's own bookkeeping (version, counts)
            continue
        try:
            value = field.contents()
            if field.types == [gguf.GGUFValueType.FLOAT32]:  # 1e-5, not float32's 9.99999974e-06
                value = float(str(np.float32(value)))
            md[key] = value
        except Exception as e:
            raise CheckpointError(path, f"metadata key '{key}' cannot be decoded ({type(e).__name__}: {e})") from None
    return md


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """All key/value metadata of a GGUF file as Python values: strings decoded, arrays as lists.
    ``tokenizer.ggml.*`` and ``tokenizer.chat_template`` are what the tokenizer needs."""
    path = Path(path)
    return _metadata(_open(path), path)


# -- config ----------------------------------------------------------------------------------
def _get(md: dict, key: str, kind: type, path: Path, default: Any = None) -> Any:
    if key not in md:
        if default is None:
            raise CheckpointError(path, f"metadata key '{key}' is missing; cannot tell the model's shape")
        return default
    value = md[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else (
        isinstance(value, kind) and not (kind is int and isinstance(value, bool)))
    if not ok or (kind is int and value <= 0):
        raise CheckpointError(path, f"metadata key '{key}' should be a positive {kind.__name__}, got {value!r}")
    return kind(value)


def args_from_gguf(md: dict[str, Any], path: Path, *, vocab_size: int, tied: bool,
                   rope_freqs: torch.Tensor | None = None) -> ModelArgs:
    """ModelArgs from ``llama.*`` metadata; vocabulary and tying come from the tensors themselves."""
    arch = md.get("general.architecture")
    if arch != ARCH:
        raise CheckpointError(path, f"architecture {arch!r} is not supported; lhama runs 'llama' GGUF files")
    p = f"{ARCH}."
    dim = _get(md, p + "embedding_length", int, path)
    n_heads = _get(md, p + "attention.head_count", int, path)
    head_dim = _get(md, p + "attention.key_length", int, path, default=dim // n_heads)
    if _get(md, p + "attention.value_length", int, path, default=head_dim) != head_dim:
        raise CheckpointError(path, "attention.value_length differs from key_length; not a Llama layout")
    rope_dims = _get(md, p + "rope.dimension_count", int, path, default=head_dim)
    if rope_dims != head_dim:
        raise CheckpointError(path, f"RoPE covers {rope_dims} of {head_dim} head dimensions; partial rotary "
                                    "embeddings are not part of the Llama architecture")
    scaling_type = md.get(p + "rope.scaling.type", "none")
    no_op_linear = scaling_type == "linear" and md.get(p + "rope.scaling.factor", 1.0) in (0, 1.0)
    if scaling_type not in ("none", None) and not no_op_linear:
        raise CheckpointError(path, f"RoPE scaling type {scaling_type!r} is not supported (only Llama 3.1-style "
                                    "scaling, which GGUF stores as a rope_freqs tensor)")
    try:
        args = ModelArgs(
            dim=dim, n_layers=_get(md, p + "block_count", int, path), n_heads=n_heads,
            n_kv_heads=_get(md, p + "attention.head_count_kv", int, path, default=n_heads),
            vocab_size=vocab_size, hidden_dim=_get(md, p + "feed_forward_length", int, path),
            norm_eps=_get(md, p + "attention.layer_norm_rms_epsilon", float, path, default=1e-5),
            rope_theta=_get(md, p + "rope.freq_base", float, path, default=10000.0),
            max_seq_len=_get(md, p + "context_length", int, path, default=4096),
            tie_embeddings=tied, head_dim_override=head_dim if head_dim != dim // n_heads else 0,
        )
    except ConfigError as e:
        raise CheckpointError(path, str(e)) from None
    if rope_freqs is not None:
        orig = md.get(p + "rope.scaling.original_context_length", 8192)
        args = args.with_(rope_scaling=rope_scaling_from_divisors(rope_freqs, args, path, int(orig)))
    return args


def rope_divisors(args: ModelArgs) -> torch.Tensor:
    """Per-frequency divisors (llama.cpp's ``rope_freqs``) that turn plain RoPE into ``args``'s."""
    return rope_inv_freq(args.with_(rope_scaling=None)) / rope_inv_freq(args)


def _snap(x: float) -> float:
    """Divisors pass through float32; recover the round number (8.0, not 7.9999995) they came from."""
    r = round(x * 64) / 64
    return r if abs(r - x) <= 1e-5 * max(1.0, abs(x)) else x


def rope_scaling_from_divisors(divisors: torch.Tensor, args: ModelArgs, path: Path, orig: int = 8192):
    """Recover RopeScaling from a ``rope_freqs`` tensor: factor = largest divisor; the band edges
    from Llama 3.1's defaults, else fitted to the blended band (only ratios to ``orig`` matter)."""
    d = divisors.double().flatten()
    if d.numel() != args.head_dim // 2 or not torch.isfinite(d).all() or (d <= 0).any():
        raise CheckpointError(path, f"expected {args.head_dim // 2} positive divisors", tensor=ROPE_FREQS)
    if torch.allclose(d, torch.ones_like(d)):
        return None
    factor = _snap(float(d.max()))
    candidates = [RopeScaling(factor=factor, original_context=orig)]
    base = rope_inv_freq(args.with_(rope_scaling=None)).double()
    band = (d > 1 + 1e-4) & (d < factor * (1 - 1e-4))
    if int(band.sum()) >= 2:
        x = (base[band] / (2 * math.pi))  # 1 / wavelength
        s = (1 / d[band] - 1 / factor) / (1 - 1 / factor)  # blend weight per frequency
        A, B = torch.linalg.lstsq(torch.stack([x, torch.ones_like(x)], 1), s.unsqueeze(1)).solution.flatten().tolist()
        if A > 0:
            low = _snap(-B * orig / A)
            candidates.append(RopeScaling(factor=factor, low_freq_factor=low, high_freq_factor=_snap(low + orig / A),
                                          original_context=orig))
    for cand in candidates:
        if cand.low_freq_factor <= 0:
            continue
        if torch.allclose(rope_divisors(args.with_(rope_scaling=cand)).double(), d, rtol=1e-3):
            return cand
    raise CheckpointError(path, "per-frequency RoPE divisors do not follow Llama 3.1-style scaling, which "
                                "is the only scaling lhama's model represents", tensor=ROPE_FREQS)


# -- tensors ---------------------------------------------------------------------------------
def _to_torch(t, dtype: torch.dtype | None) -> torch.Tensor:
    """Dequantize one reader tensor into a fresh torch tensor of ``dtype`` (torch shape)."""
    Q = gguf.GGMLQuantizationType
    shape = gguf_shape(t)
    if t.tensor_type in (Q.F32, Q.F16):  # copy out of the read-only memory map
        out = torch.from_numpy(np.array(t.data)).reshape(shape)
    elif t.tensor_type == Q.BF16:
        out = torch.from_numpy(np.array(t.data).view(np.int16)).view(torch.bfloat16).reshape(shape)
    else:
        out = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type)).reshape(shape)
    return cast(out, dtype)


def gguf_shape(t) -> tuple[int, ...]:
    """A GGUF tensor's shape in PyTorch order (GGUF lists dimensions innermost first)."""
    return tuple(int(n) for n in reversed(t.shape.tolist()))


def gguf_model_args(reader, md: dict, path: Path):
    """(ModelArgs, reader tensors by our names) of an open reader, without reading the weights
    (only the small rope_freqs tensor, where Llama 3.1 files store their RoPE scaling)."""
    by_name = {t.name: t for t in reader.tensors}
    emb = by_name.get(GGUF_NAMES.to_theirs("tok_embeddings.weight"))
    if emb is None:
        raise CheckpointError(path, "tensor missing; not a Llama model file", tensor="token_embd.weight")
    freqs = _dequantize(by_name[ROPE_FREQS], torch.float32, path) if ROPE_FREQS in by_name else None
    args = args_from_gguf(md, path, vocab_size=int(emb.shape[-1]), tied="output.weight" not in by_name,
                          rope_freqs=freqs)
    tensors = {}
    for name, t in by_name.items():
        if name == ROPE_FREQS:
            continue
        ours = GGUF_NAMES.to_ours(name)
        if ours is None:
            raise CheckpointError(path, "unexpected tensor, not part of a Llama model", tensor=name)
        tensors[ours] = t
    return args, tensors


def read_gguf(path: str | os.PathLike, dtype: torch.dtype | None = torch.float32):
    """(ModelArgs, state dict with our names, metadata) from a GGUF file."""
    path = Path(path)
    reader = _open(path)
    md = _metadata(reader, path)
    args, tensors = gguf_model_args(reader, md, path)
    expected = expected_shapes(args)
    state_dict: dict[str, torch.Tensor] = {}
    for ours, t in tensors.items():
        shape = gguf_shape(t)
        if ours in expected and shape != expected[ours]:  # before paying for dequantization
            raise CheckpointError(path, f"shape {shape} does not match the metadata, which needs {expected[ours]}",
                                  tensor=t.name)
        state_dict[ours] = _dequantize(t, dtype, path)
    check_state_dict(state_dict, args, path, name_of=lambda n: GGUF_NAMES.to_theirs(n))
    return args, state_dict, md


def _dequantize(t, dtype: torch.dtype | None, path: Path) -> torch.Tensor:
    try:
        return _to_torch(t, dtype)
    except NotImplementedError:
        raise CheckpointError(path, f"tensor type {t.tensor_type.name} cannot be dequantized by the gguf "
                                    "package; re-quantize the model to a common type (Q8_0, Q4_K, ...)",
                              tensor=t.name) from None
    except Exception as e:
        raise CheckpointError(path, f"cannot decode tensor data ({type(e).__name__}: {e})", tensor=t.name) from None


# -- writing ---------------------------------------------------------------------------------
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
        sub = (V.STRING if isinstance(first, str) else V.FLOAT32 if isinstance(first, float)
               else V.BOOL if isinstance(first, bool) else V.INT32)
        w.add_key_value(key, list(value), V.ARRAY, sub_type=sub)


def _encode(t: torch.Tensor, qtype) -> np.ndarray:
    a = t.detach().to("cpu", torch.float32).numpy()
    return gguf.quants.quantize(a, qtype)


def write_gguf(state_dict: dict[str, torch.Tensor], args: ModelArgs, out_path: str | os.PathLike,
               gguf_type: str = "f16", metadata: dict[str, Any] | None = None) -> Path:
    """Write a llama.cpp-loadable GGUF. Norms stay F32 (as llama.cpp's converter does); Q8_0
    needs rows divisible by 32 and falls back to F16 otherwise. ``metadata`` ``tokenizer.*`` and
    ``general.*`` keys (e.g. from the source GGUF) are carried over so the file is self-contained."""
    if gguf_type not in WRITE_TYPES:
        raise ValueError(f"gguf_type must be one of {sorted(WRITE_TYPES)}, got {gguf_type!r}")
    out_path = Path(out_path)
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
    plan: list[tuple[str, torch.Tensor, Any]] = []
    if args.rope_scaling is not None:
        plan.append((ROPE_FREQS, rope_divisors(args).float(), Q.F32))
    for name in expected_shapes(args):
        t = state_dict[name]
        tq = Q.F32 if t.ndim == 1 else qtype
        if tq == Q.Q8_0 and t.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
            tq = Q.F16
        plan.append((GGUF_NAMES.to_theirs(name), t, tq))
    for name, t, tq in plan:
        block, type_size = gguf.GGML_QUANT_SIZES[tq]
        w.add_tensor_info(name, tuple(t.shape), np.dtype(np.float32), t.numel() // block * type_size, raw_dtype=tq)

    tmp = out_path.with_name(out_path.name + ".partial")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for _name, t, tq in plan:
            w.write_tensor_data(_encode(t, tq))
        w.close()
        os.replace(tmp, out_path)  # a reader never sees a half-written file under the real name
    finally:
        w.close()
        tmp.unlink(missing_ok=True)
    return out_path
