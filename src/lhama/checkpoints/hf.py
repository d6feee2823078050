"""Hugging Face ``LlamaForCausalLM`` folders: config.json + model.safetensors (or shards with
model.safetensors.index.json).

HF stores Q/K projections in the "rotate half" RoPE layout (channel j pairs with j + head_dim/2)
while our model pairs channels (2i, 2i+1) as Meta does, so wq/wk rows are permuted per head on
load and permuted back on save. Safetensors files are memory-mapped and read tensor by tensor
(or slice by slice) by ``HFCheckpointReader``.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lhama.checkpoints.bounds import check_bounds
from lhama.checkpoints.layout import (
    NameTable,
    check_state_dict,
    drop_tied_head,
    expected_shapes,
    require_file,
)
from lhama.checkpoints.reader import CheckpointReader
from lhama.errors import CheckpointError, ConfigError
from lhama.model.args import ModelArgs, RopeScaling

# Our name -> HF name. The only place HF tensor names appear.
HF_NAMES = NameTable(
    {
        "tok_embeddings.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
        "layers.{i}.attention.wq.weight": "model.layers.{i}.self_attn.q_proj.weight",
        "layers.{i}.attention.wk.weight": "model.layers.{i}.self_attn.k_proj.weight",
        "layers.{i}.attention.wv.weight": "model.layers.{i}.self_attn.v_proj.weight",
        "layers.{i}.attention.wo.weight": "model.layers.{i}.self_attn.o_proj.weight",
        "layers.{i}.feed_forward.w1.weight": "model.layers.{i}.mlp.gate_proj.weight",
        "layers.{i}.feed_forward.w2.weight": "model.layers.{i}.mlp.down_proj.weight",
        "layers.{i}.feed_forward.w3.weight": "model.layers.{i}.mlp.up_proj.weight",
        "layers.{i}.attention_norm.weight": "model.layers.{i}.input_layernorm.weight",
        "layers.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    }
)
SINGLE_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


# -- RoPE layout -----------------------------------------------------------------------------
def hf_to_meta_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rotate-half rows [h][2][hd/2] -> interleaved rows [h][hd/2][2]."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def meta_to_hf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _heads_of(name: str, args: ModelArgs) -> int | None:
    if name.endswith("attention.wq.weight"):
        return args.n_heads
    if name.endswith("attention.wk.weight"):
        return args.n_kv_heads
    return None


# -- config ----------------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any]:
    require_file(path)
    try:
        obj = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, f"not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(path, "expected a JSON object")
    return obj


def args_from_hf_config(cfg: dict[str, Any], path: Path) -> ModelArgs:
    """ModelArgs from a LlamaConfig dict, in transformers 4 (``rope_scaling``, top-level
    ``rope_theta``) or 5 (``rope_parameters``) spelling."""
    try:
        return _args_from_hf_config(cfg, path)
    except CheckpointError:
        raise
    except (ArithmeticError, TypeError, ValueError) as e:  # 0 heads, a string head_dim... (metadata fuzz test)
        raise CheckpointError(path, f"impossible sizes in the metadata ({type(e).__name__}: {e})") from None


def _args_from_hf_config(cfg: dict[str, Any], path: Path) -> ModelArgs:
    def num(key, default=None, kind=int):
        v = cfg.get(key, default)
        if v is None:
            raise CheckpointError(path, f"'{key}' is missing")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
            raise CheckpointError(path, f"'{key}' should be a number, got {v!r}")
        return kind(v)

    if cfg.get("model_type", "llama") != "llama":
        raise CheckpointError(path, f"model_type {cfg.get('model_type')!r} is not supported; lhama runs Llama models")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise CheckpointError(path, "linear layers with biases are not part of the Llama architecture lhama runs")
    if cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointError(path, f"hidden_act {cfg.get('hidden_act')!r} is not SwiGLU's silu")
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise CheckpointError(path, f"rope_scaling should be an object, got {rope!r}")
    theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
    kind = rope.get("rope_type", rope.get("type", "default"))
    scaling = None
    if kind == "llama3":
        try:
            scaling = RopeScaling(
                factor=float(rope["factor"]),
                low_freq_factor=float(rope["low_freq_factor"]),
                high_freq_factor=float(rope["high_freq_factor"]),
                original_context=int(rope["original_max_position_embeddings"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(path, f"llama3 rope_scaling is incomplete or malformed ({e!r})") from None
    elif kind not in ("default", None):
        raise CheckpointError(path, f"RoPE scaling {kind!r} is not supported (only Llama 3.1's 'llama3')")
    dim, n_heads = num("hidden_size"), num("num_attention_heads")
    head_dim = cfg.get("head_dim") or dim // max(n_heads, 1)
    try:
        args = ModelArgs(
            dim=dim,
            n_layers=num("num_hidden_layers"),
            n_heads=n_heads,
            n_kv_heads=num("num_key_value_heads", n_heads),
            vocab_size=num("vocab_size"),
            hidden_dim=num("intermediate_size"),
            norm_eps=num("rms_norm_eps", 1e-6, float),
            rope_theta=float(theta) if isinstance(theta, (int, float)) else num("rope_theta", kind=float),
            rope_scaling=scaling,
            max_seq_len=num("max_position_embeddings", 2048),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            head_dim_override=head_dim if head_dim != dim // n_heads else 0,
        )
    except ConfigError as e:
        raise CheckpointError(path, str(e)) from None
    check_bounds(args, path)
    return args


def hf_config(args: ModelArgs, dtype: torch.dtype, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json for ``args`` (transformers 4 spelling, which transformers 5 also reads)."""
    s = args.rope_scaling
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": args.hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_scaling": None
        if s is None
        else {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_context,
        },
        "max_position_embeddings": args.max_seq_len,
        "tie_word_embeddings": args.tie_embeddings,
        "vocab_size": args.vocab_size,
        "torch_dtype": _DTYPE_NAMES.get(dtype, "float32"),
    }
    cfg.update(extra or {})
    return cfg


# -- reading ---------------------------------------------------------------------------------
def _diagnose_safetensors(file: Path, err: Exception) -> CheckpointError:
    """safetensors reports a bad header without saying which tensor; parse the (JSON) header
    ourselves to name the tensor whose bytes are missing."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n)) if 0 < n <= min(size - 8, 100 << 20) else None
        if isinstance(header, dict):
            for name, info in header.items():
                end = 8 + n + info["data_offsets"][1] if isinstance(info, dict) and "data_offsets" in info else 0
                if end > size:
                    return CheckpointError(
                        file,
                        f"file is truncated: tensor data ends at byte {end} but the "
                        f"file has only {size} bytes (incomplete download?)",
                        tensor=name,
                    )
    except Exception:
        pass
    return CheckpointError(file, f"corrupt or truncated safetensors file ({type(err).__name__}: {err})")


class HFCheckpointReader(CheckpointReader):
    """An HF folder (config.json + model.safetensors or shards with an index), or one
    ``.safetensors`` file with a config.json beside it. Slices come from ``get_slice``, which
    reads just the block from the mapped file; Q/K rows are permuted from rotate-half per head
    as read (a block of rows is whole heads, so permuting within it equals permuting the whole)."""

    format = "hf"
    names = HF_NAMES

    def __init__(self, path: str | Path):
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        cfg_path = folder / "config.json"
        self.metadata = read_json(cfg_path)
        self.args = args_from_hf_config(self.metadata, cfg_path)
        if path.is_file():
            files, wanted = [path], None
        elif (folder / SINGLE_FILE).exists():
            files, wanted = [folder / SINGLE_FILE], None
        elif (folder / INDEX_FILE).exists():
            wanted = read_json(folder / INDEX_FILE).get("weight_map")
            if not isinstance(wanted, dict) or not all(isinstance(v, str) for v in wanted.values()):
                raise CheckpointError(folder / INDEX_FILE, "'weight_map' must map tensor names to file names")
            files = [folder / s for s in sorted(set(wanted.values()))]
        else:
            raise CheckpointError(
                folder,
                f"no {SINGLE_FILE} or {INDEX_FILE} next to config.json (only safetensors "
                "weights are read; convert pytorch_model.bin with transformers first)",
            )
        self.path = files[0] if len(files) == 1 else folder
        self._handles: list = []
        self._where: dict[str, tuple[Any, str, Path]] = {}  # our name -> (handle, their name, file)
        self.shapes = {}
        for file in files:
            if not file.is_file() or (wanted is not None and file.parent != folder):
                raise CheckpointError(file, "shard listed in model.safetensors.index.json is missing")
            self._open(file, wanted, folder)

    def _open(self, file: Path, wanted: dict[str, str] | None, folder: Path) -> None:
        try:
            f = safe_open(str(require_file(file)), framework="pt")
        except Exception as e:
            raise _diagnose_safetensors(file, e) from None
        self._handles.append(f)
        keys = set(f.keys())
        if wanted is not None:
            absent = sorted(n for n, s in wanted.items() if folder / s == file and n not in keys)
            if absent:
                raise CheckpointError(file, "tensor listed in the index is not in this shard", tensor=absent[0])
        for theirs in sorted(keys):
            if wanted is not None and folder / wanted.get(theirs, "") != file:
                continue  # a stray tensor the index does not point at
            if theirs.endswith("rotary_emb.inv_freq") or (theirs == "lm_head.weight" and self.args.tie_embeddings):
                continue  # recomputed buffers (old transformers) / a tied head stored anyway
            ours = HF_NAMES.to_ours(theirs)
            if ours is None:
                raise CheckpointError(file, "unexpected tensor, not part of a Llama model", tensor=theirs)
            self._where[ours] = (f, theirs, file)
            self.shapes[ours] = tuple(f.get_slice(theirs).get_shape())

    def read(self, name, dim=None, start=None, stop=None):
        f, theirs, file = self._where[name]
        try:
            sl = f.get_slice(theirs)
            t = sl[:] if dim is None else sl[start:stop] if dim == 0 else sl[:, start:stop]
        except Exception as e:
            raise CheckpointError(file, f"cannot read tensor data ({e})", tensor=theirs) from None
        heads = _heads_of(name, self.args)
        if heads:  # rows read are whole heads: permute within them
            t = hf_to_meta_rows(t, heads * t.shape[0] // self.shapes[name][0])
        return t

    def close(self):
        self._handles.clear()  # safe_open handles unmap when dropped


# -- writing ---------------------------------------------------------------------------------
def parse_size(size: int | str) -> int:
    """'5GB', '500MB', '2GiB' or a byte count."""
    if isinstance(size, int):
        return size
    s = size.strip().upper()
    for unit, mult in (
        ("GIB", 1 << 30),
        ("MIB", 1 << 20),
        ("KIB", 1 << 10),
        ("GB", 10**9),
        ("MB", 10**6),
        ("KB", 10**3),
        ("B", 1),
    ):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    return int(s)


def chmod_as_created(path: str | os.PathLike) -> None:
    """Give ``path`` the mode ``open()`` gives a new file (0666 minus the umask): the safetensors
    writer leaves its files 0600."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_hf(
    state_dict: dict[str, torch.Tensor],
    args: ModelArgs,
    out_dir: str | os.PathLike,
    max_shard_size: int | str = "5GB",
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """config.json + safetensors in HF layout; sharded with an index past ``max_shard_size``."""
    state_dict = drop_tied_head(state_dict, args)
    check_state_dict(state_dict, args, "<state dict to write>")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    limit = parse_size(max_shard_size)
    shards: list[list[str]] = [[]]
    used = 0
    for name in expected_shapes(args):
        nbytes = state_dict[name].numel() * state_dict[name].element_size()
        if shards[-1] and used + nbytes > limit:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    # A stale model.safetensors would shadow a new index (transformers prefers it): clear old weights.
    for old in [*out_dir.glob("model-*-of-*.safetensors"), out_dir / SINGLE_FILE, out_dir / INDEX_FILE]:
        old.unlink(missing_ok=True)
    n = len(shards)
    weight_map: dict[str, str] = {}
    for k, names in enumerate(shards, 1):
        file = SINGLE_FILE if n == 1 else f"model-{k:05d}-of-{n:05d}.safetensors"
        tensors = {}
        for name in names:
            t = state_dict[name].detach().cpu()
            heads = _heads_of(name, args)
            tensors[HF_NAMES.to_theirs(name)] = (meta_to_hf_rows(t, heads) if heads else t).contiguous()
            weight_map[HF_NAMES.to_theirs(name)] = file
        partial = out_dir / (file + ".partial")
        save_file(tensors, str(partial), metadata={"format": "pt"})  # transformers requires format=pt
        chmod_as_created(partial)
        os.replace(partial, out_dir / file)
    if n > 1:
        total = sum(state_dict[name].numel() * state_dict[name].element_size() for name in expected_shapes(args))
        (out_dir / INDEX_FILE).write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
        )
    dtype = state_dict["tok_embeddings.weight"].dtype
    (out_dir / "config.json").write_text(json.dumps(hf_config(args, dtype, extra_config), indent=2) + "\n")
    return out_dir
