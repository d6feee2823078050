"""GGUF (llama.cpp) checkpoints: the lazy reader (model shape from ``llama.*`` metadata, tensors
from the memory map on demand).

GGUF keeps Q/K rows in Meta's interleaved RoPE layout (llama.cpp's converter permutes Hugging
Face weights into it), so tensors load without permutation. Dimensions are stored in ggml's
``ne`` order (fastest-varying first), the reverse of torch's; the ``gguf`` reader already hands
out arrays in torch order. Quantization blocks run along a row, so a block of rows (and a block
of columns whose edges fall on block boundaries) decodes alone: one tensor at most is ever
decoded at a time, and quantized loading (``lhama.checkpoints.quantized``) repacks the raw
blocks without decoding them at all.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import gguf  # the PyPI package (absolute import; this module is lhama.checkpoints.gguf)
import numpy as np
import torch

from lhama.checkpoints.bounds import check_bounds
from lhama.checkpoints.layout import NameTable
from lhama.checkpoints.reader import CheckpointReader, narrow
from lhama.errors import CheckpointError, ConfigError
from lhama.gguf_file import drop_pages, gguf_metadata, open_gguf
from lhama.model.args import ModelArgs, RopeScaling
from lhama.model.rope import rope_inv_freq

ARCH = "llama"

# Our name -> GGUF name. The only place GGUF tensor names appear.
GGUF_NAMES = NameTable(
    {
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
    }
)
ROPE_FREQS = "rope_freqs.weight"  # Llama 3.1 scaling as per-dimension frequency divisors


# -- config ----------------------------------------------------------------------------------
def _get(md: dict, key: str, kind: type, path: Path, default: Any = None) -> Any:
    if key not in md:
        if default is None:
            raise CheckpointError(path, f"metadata key '{key}' is missing; cannot tell the model's shape")
        return default
    value = md[key]
    ok = (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is float
        else (isinstance(value, kind) and not (kind is int and isinstance(value, bool)))
    )
    if not ok or (kind is int and value <= 0):
        raise CheckpointError(path, f"metadata key '{key}' should be a positive {kind.__name__}, got {value!r}")
    return kind(value)


def args_from_gguf(
    md: dict[str, Any], path: Path, *, vocab_size: int, tied: bool, rope_freqs: torch.Tensor | None = None
) -> ModelArgs:
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
        raise CheckpointError(
            path,
            f"RoPE covers {rope_dims} of {head_dim} head dimensions; partial rotary "
            "embeddings are not part of the Llama architecture",
        )
    scaling_type = md.get(p + "rope.scaling.type", "none")
    no_op_linear = scaling_type == "linear" and md.get(p + "rope.scaling.factor", 1.0) in (0, 1.0)
    if scaling_type not in ("none", None) and not no_op_linear:
        raise CheckpointError(
            path,
            f"RoPE scaling type {scaling_type!r} is not supported (only Llama 3.1-style "
            "scaling, which GGUF stores as a rope_freqs tensor)",
        )
    try:
        args = ModelArgs(
            dim=dim,
            n_layers=_get(md, p + "block_count", int, path),
            n_heads=n_heads,
            n_kv_heads=_get(md, p + "attention.head_count_kv", int, path, default=n_heads),
            vocab_size=vocab_size,
            hidden_dim=_get(md, p + "feed_forward_length", int, path),
            norm_eps=_get(md, p + "attention.layer_norm_rms_epsilon", float, path, default=1e-5),
            rope_theta=_get(md, p + "rope.freq_base", float, path, default=10000.0),
            max_seq_len=_get(md, p + "context_length", int, path, default=4096),
            tie_embeddings=tied,
            head_dim_override=head_dim if head_dim != dim // n_heads else 0,
        )
    except ConfigError as e:
        raise CheckpointError(path, str(e)) from None
    check_bounds(args, path)  # before anything (the RoPE tables below) is sized from them
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
        x = base[band] / (2 * math.pi)  # 1 / wavelength
        s = (1 / d[band] - 1 / factor) / (1 - 1 / factor)  # blend weight per frequency
        A, B = torch.linalg.lstsq(torch.stack([x, torch.ones_like(x)], 1), s.unsqueeze(1)).solution.flatten().tolist()
        if A > 0:
            low = _snap(-B * orig / A)
            candidates.append(
                RopeScaling(
                    factor=factor, low_freq_factor=low, high_freq_factor=_snap(low + orig / A), original_context=orig
                )
            )
    for cand in candidates:
        if cand.low_freq_factor <= 0:
            continue
        if torch.allclose(rope_divisors(args.with_(rope_scaling=cand)).double(), d, rtol=1e-3):
            return cand
    raise CheckpointError(
        path,
        "per-frequency RoPE divisors do not follow Llama 3.1-style scaling, which "
        "is the only scaling lhama's model represents",
        tensor=ROPE_FREQS,
    )


# -- the reader ------------------------------------------------------------------------------
def gguf_shape(t) -> tuple[int, ...]:
    """A GGUF tensor's shape in PyTorch order (GGUF lists dimensions innermost first)."""
    return tuple(int(n) for n in reversed(t.shape.tolist()))


def _decode(data: np.ndarray, qtype, path: Path, name: str) -> np.ndarray:
    """Raw GGUF data (typed for F32/F16, bytes otherwise) -> a fresh float32 (F32/F16) or
    float32-dequantized array; BF16 comes back as bfloat16 bits in int16."""
    Q = gguf.GGMLQuantizationType
    try:
        if qtype in (Q.F32, Q.F16):
            return np.array(data)
        if qtype == Q.BF16:
            return np.array(data).view(np.int16)
        return gguf.quants.dequantize(data, qtype)
    except NotImplementedError:
        raise CheckpointError(
            path,
            f"tensor type {Q(qtype).name} cannot be dequantized by the gguf package; "
            "re-quantize the model to a common type (Q8_0, Q4_K, ...)",
            tensor=name,
        ) from None
    except Exception as e:
        raise CheckpointError(path, f"cannot decode tensor data ({type(e).__name__}: {e})", tensor=name) from None


def _to_torch(a: np.ndarray, qtype, shape) -> torch.Tensor:
    out = torch.from_numpy(a)
    if qtype == gguf.GGMLQuantizationType.BF16:
        out = out.view(torch.bfloat16)
    return out.reshape(shape)


class GGUFCheckpointReader(CheckpointReader):
    format = "gguf"
    names = GGUF_NAMES

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = file = open_gguf(self.path)
        self._model_md = gguf_metadata(file, self.path, skip=("tokenizer.",))  # what the shape needs
        by_name = {t.name: t for t in file.tensors}
        emb = by_name.get(GGUF_NAMES.to_theirs("tok_embeddings.weight"))
        if emb is None:
            raise CheckpointError(self.path, "tensor missing; not a Llama model file", tensor="token_embd.weight")
        self._tensors = {}
        for name, t in by_name.items():
            if name == ROPE_FREQS:
                continue
            ours = GGUF_NAMES.to_ours(name)
            if ours is None:
                raise CheckpointError(self.path, "unexpected tensor, not part of a Llama model", tensor=name)
            self._tensors[ours] = t
        self.shapes = {ours: gguf_shape(t) for ours, t in self._tensors.items()}
        freqs = None
        if ROPE_FREQS in by_name:  # small: where Llama 3.1 files keep their RoPE scaling
            t = by_name[ROPE_FREQS]
            freqs = torch.from_numpy(_decode(t.data, t.tensor_type, self.path, ROPE_FREQS)).float()
        self.args = args_from_gguf(
            self._model_md,
            self.path,
            vocab_size=int(emb.shape[-1]),
            tied="output.weight" not in self.shapes,
            rope_freqs=freqs,
        )

    @functools.cached_property
    def metadata(self) -> dict[str, Any]:
        """Every key, the vocabulary included (decoded on first use: loading needs none of it)."""
        return gguf_metadata(self._file, self.path)

    def drop_pages(self, view: np.ndarray | None = None) -> None:
        """Unmap the file pages under ``view`` (from ``blocks``; None: the whole file) from this
        process's resident set once they are copied out (``lhama.gguf_file.drop_pages``)."""
        drop_pages(self._file, view)

    def qtype(self, name: str) -> gguf.GGMLQuantizationType:
        return gguf.GGMLQuantizationType(self._tensors[name].tensor_type)

    def blocks(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Raw bytes of rows ``[start, stop)`` as ``[rows, bytes per row]``: a view of the map."""
        t = self._tensors[name]
        rows = t.data.reshape(self.shapes[name][0], -1)
        if rows.dtype != np.uint8:
            rows = rows.view(np.uint8)
        return rows[start:stop]

    def read(self, name, dim=None, start=None, stop=None):
        t, shape = self._tensors[name], self.shapes[name]
        qtype = self.qtype(name)
        if dim is not None:
            start = 0 if start is None else start
            stop = shape[dim] if stop is None else stop
        if dim is None or len(shape) == 1:
            a = _decode(t.data, qtype, self.path, t.name)
            return narrow(_to_torch(a, qtype, shape), dim, start, stop)
        Q = gguf.GGMLQuantizationType
        if qtype in (Q.F32, Q.F16):  # typed arrays: copy only the block out of the map
            cut = t.data.reshape(shape)[(slice(None),) * dim + (slice(start, stop),)]
            return torch.from_numpy(np.array(cut))
        # Quantized (BF16 too, as 1-element blocks): blocks run along a row.
        per_block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        if dim == 0:
            a = _decode(self.blocks(name, start, stop), qtype, self.path, t.name)
            return _to_torch(a, qtype, (stop - start, shape[1]))
        if start % per_block == 0 and stop % per_block == 0:
            cut = np.ascontiguousarray(
                self.blocks(name)[:, start // per_block * block_bytes : stop // per_block * block_bytes]
            )
            return _to_torch(_decode(cut, qtype, self.path, t.name), qtype, (shape[0], stop - start))
        # Column edges inside a quantization block: this one tensor whole, then the slice.
        return _to_torch(_decode(t.data, qtype, self.path, t.name), qtype, shape).narrow(dim, start, stop - start)
