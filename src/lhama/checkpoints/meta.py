"""Meta's own checkpoint folders: ``params.json`` + ``consolidated.NN.pth`` (one per model-
parallel rank), as published for Llama 2/3/3.1/3.2 and read by ``llama_models``.

Pickles are opened with ``torch.load(weights_only=True)``: a file that tries to run code is
refused, never executed. Files are memory-mapped so a checkpoint costs no RAM until a tensor is
read; several shards are concatenated back along the dimension fairscale split.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from lhama.checkpoints.bounds import check_bounds
from lhama.checkpoints.layout import (
    check_state_dict,
    drop_tied_head,
    expected_shapes,
    require_file,
)
from lhama.checkpoints.reader import CheckpointReader, narrow
from lhama.errors import CheckpointError, ConfigError
from lhama.model.args import ModelArgs, RopeScaling, swiglu_hidden_dim

# How fairscale's model-parallel layers cut each weight: column-parallel layers split their
# output rows (dim 0), row-parallel ones their input columns (dim 1); norms are replicated.
# tok_embeddings is vocab-parallel (dim 0) in Llama 3, embedding-parallel (dim 1) in Llama 2:
# told apart by the shard's shape.
COLUMN_PARALLEL = (
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "feed_forward.w1.weight",
    "feed_forward.w3.weight",
    "output.weight",
)
ROW_PARALLEL = ("attention.wo.weight", "feed_forward.w2.weight")
IGNORED = {"rope.freqs"}  # Llama 2 shards carry the (recomputable) RoPE frequencies

# Llama 3.2 1B/3B (dim, n_layers): params.json says only use_scaled_rope, and llama_models'
# reference hard-codes factor 8, but these models were published (HF config, model card) with
# factor 32. Lacking an explicit "rope_scaling_factor", recognise them by shape.
LLAMA32_SHAPES = {(2048, 16), (3072, 28)}


def safe_torch_load(file: Path) -> dict[str, torch.Tensor]:
    """``torch.load`` that only accepts plain tensor dicts and turns every failure into a
    ``CheckpointError`` naming the file."""
    require_file(file)
    try:
        try:
            obj = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(file, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        # torch's own text advises retrying with weights_only=False; pass on only what was refused.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        culprit = (
            f"it asks for {found.group(1)}"
            if found
            else next((ln.strip() for ln in str(e).splitlines() if "nsupported" in ln), "unsupported pickle content")
        )
        raise CheckpointError(
            file,
            "unsafe file: its pickle tries to execute code or build arbitrary Python "
            f"objects ({culprit}), so it was refused without running anything. Only "
            "plain tensor checkpoints are loaded",
        ) from None
    except Exception as e:
        first = str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(file, f"truncated or corrupt PyTorch checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(file, f"expected a dict of tensors, found {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                file, f"entry is a {type(value).__name__}, not a tensor; not a weights file", tensor=str(key)
            )
    return obj


def _read_params(folder: Path) -> dict[str, Any]:
    path = require_file(folder / "params.json")
    try:
        params = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(path, f"not valid JSON ({e})") from None
    if not isinstance(params, dict):
        raise CheckpointError(path, "expected a JSON object of model parameters")
    return params


def args_from_params(params: dict[str, Any], path: Path, vocab_size: int) -> ModelArgs:
    """ModelArgs from params.json (vocab_size there may be -1 in Llama 2: taken from the weights)."""
    try:
        return _args_from_params(params, path, vocab_size)
    except CheckpointError:
        raise
    except (ArithmeticError, ValueError) as e:  # multiple_of 0, inf/NaN sizes... (metadata fuzz test)
        raise CheckpointError(path, f"impossible sizes in the metadata ({type(e).__name__}: {e})") from None


def _args_from_params(params: dict[str, Any], path: Path, vocab_size: int) -> ModelArgs:
    def num(key, default=None, kind=int):
        v = params.get(key, default)
        if v is None and default is None:
            raise CheckpointError(path, f"'{key}' is missing")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
            raise CheckpointError(path, f"'{key}' should be a number, got {v!r}")
        return kind(v)

    dim, n_layers, n_heads = num("dim"), num("n_layers"), num("n_heads")
    ffn_mult = params.get("ffn_dim_multiplier")
    if ffn_mult is not None:
        ffn_mult = num("ffn_dim_multiplier", kind=float)
    hidden = num("hidden_dim") if "hidden_dim" in params else swiglu_hidden_dim(dim, num("multiple_of", 256), ffn_mult)
    scaling = None
    if params.get("use_scaled_rope"):
        default_factor = 32.0 if (dim, n_layers) in LLAMA32_SHAPES else 8.0
        scaling = RopeScaling(
            factor=num("rope_scaling_factor", default_factor, float),
            low_freq_factor=num("rope_low_freq_factor", 1.0, float),
            high_freq_factor=num("rope_high_freq_factor", 4.0, float),
            original_context=num("rope_original_max_position_embeddings", 8192),
        )
    default_ctx = 131072 if scaling else 8192 if vocab_size >= 128000 else 4096
    try:
        args = ModelArgs(
            dim=dim,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=num("n_kv_heads", n_heads),
            vocab_size=vocab_size,
            hidden_dim=hidden,
            norm_eps=num("norm_eps", 1e-5, float),
            rope_theta=num("rope_theta", 10000.0, float),
            rope_scaling=scaling,
            max_seq_len=num("max_seq_len", default_ctx),
            tie_embeddings=False,
            head_dim_override=num("head_dim", 0),
        )
    except ConfigError as e:
        raise CheckpointError(path, str(e)) from None
    check_bounds(args, path)
    return args


class MetaCheckpointReader(CheckpointReader):
    """A Meta folder. ``torch.load(mmap=True)`` maps every consolidated.NN.pth; a tensor (or a
    slice of it) may span several of Meta's model-parallel pieces, so the pieces overlapping the
    wanted range are cut and put side by side along the dimension fairscale split."""

    format = "meta"

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.metadata = params = _read_params(folder)
        files = sorted(folder.glob("consolidated.*.pth"))
        if not files:
            raise CheckpointError(folder, "no consolidated.NN.pth files next to params.json")
        self.path = files[0] if len(files) == 1 else folder
        # Sizes first (params.json alone), so a hostile file is refused before any mapping.
        vocab = params.get("vocab_size", -1)
        if isinstance(vocab, int) and vocab > 0:
            args_from_params(params, folder / "params.json", vocab)
        shards = [safe_torch_load(f) for f in files]  # memory-mapped: nothing read yet
        for f, sd in zip(files[1:], shards[1:], strict=True):
            if sd.keys() != shards[0].keys():
                odd = sorted(sd.keys() ^ shards[0].keys())[0]
                raise CheckpointError(f, f"shards disagree on their tensors (compare with {files[0].name})", tensor=odd)
        emb = shards[0].get("tok_embeddings.weight")
        if emb is None:
            raise CheckpointError(files[0], "tensor missing", tensor="tok_embeddings.weight")
        if not isinstance(vocab, int) or vocab <= 0:  # Llama 2 writes -1: count the embedding rows
            vocab = emb.shape[0] * (len(files) if emb.ndim == 2 and emb.shape[1] == params.get("dim") else 1)
        args = args_from_params(params, folder / "params.json", vocab)
        self._pieces: dict[str, tuple[list[torch.Tensor], int | None]] = {}
        self.shapes = {}
        for name in shards[0]:
            if name not in IGNORED:
                self._add(name, [sd[name] for sd in shards], args)
        # Llama 3.2 publishes output.weight as a copy of the embeddings (the reference model has
        # an untied output layer): a tied model.
        if "output.weight" not in self.shapes or self._same("output.weight", "tok_embeddings.weight"):
            self.shapes.pop("output.weight", None)
            args = args.with_(tie_embeddings=True)
        self.args = args

    def _add(self, name: str, pieces: list[torch.Tensor], args: ModelArgs) -> None:
        pdim = _split_dim_of(name, pieces, args)
        if pdim is not None and name.endswith(("wk.weight", "wv.weight")):
            n_kv_rows = args.n_kv_heads * args.head_dim
            if pieces[0].shape[0] * len(pieces) > n_kv_rows:
                # More Meta ranks than KV heads: each head sits on consecutive ranks; keep one copy.
                pieces = pieces[:: max(1, pieces[0].shape[0] * len(pieces) // n_kv_rows)]
        shape = list(pieces[0].shape)
        if pdim is not None:
            if any(p.ndim != 2 or p.shape[1 - pdim] != shape[1 - pdim] for p in pieces):
                raise CheckpointError(self.path, "shards cannot be merged (their shapes disagree)", tensor=name)
            shape[pdim] = sum(p.shape[pdim] for p in pieces)
        self._pieces[name] = (pieces, pdim)
        self.shapes[name] = tuple(shape)

    def _same(self, a: str, b: str) -> bool:
        """Compare two tensors block by block (one Meta piece at a time, never both whole)."""
        if self.shapes[a] != self.shapes[b]:
            return False
        rows = self.shapes[a][0]
        step = max(1, rows // max(len(self._pieces[a][0]), len(self._pieces[b][0])))
        return all(
            torch.equal(self.read(a, 0, r, min(rows, r + step)), self.read(b, 0, r, min(rows, r + step)))
            for r in range(0, rows, step)
        )

    def read(self, name, dim=None, start=None, stop=None):
        pieces, pdim = self._pieces[name]
        if pdim is None:
            return narrow(pieces[0], dim, start, stop)
        if dim is None:
            return torch.cat(pieces, dim=pdim)
        start = 0 if start is None else start
        stop = self.shapes[name][dim] if stop is None else stop
        if dim != pdim:  # cut every piece, put the cuts side by side
            parts = [narrow(p, dim, start, stop) for p in pieces]
        else:  # only the pieces that overlap [start, stop)
            parts, offset = [], 0
            for p in pieces:
                n = p.shape[pdim]
                lo, hi = max(start, offset), min(stop, offset + n)
                if lo < hi:
                    parts.append(p.narrow(pdim, lo - offset, hi - lo))
                offset += n
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=pdim)

    def close(self):
        self._pieces.clear()


def _split_dim_of(name: str, pieces: list[torch.Tensor], args: ModelArgs) -> int | None:
    """The dimension fairscale cut ``name`` along (None: one file, or replicated)."""
    if len(pieces) == 1 or pieces[0].ndim != 2:
        return None
    if name == "tok_embeddings.weight":  # vocab-parallel (Llama 3) or embedding-parallel (Llama 2)
        return 0 if pieces[0].shape[1] == args.dim else 1
    if name.endswith(ROW_PARALLEL):
        return 1
    if name.endswith(COLUMN_PARALLEL):
        return 0
    return None


# -- writing ---------------------------------------------------------------------------------
_FFN_CANDIDATES = [(256, None), (1024, 1.3), (4096, 1.3), (4096, 1.2), (256, 1.5), (256, 1.0), (256, 1.3)]


def ffn_params(dim: int, hidden_dim: int) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) that reproduce ``hidden_dim`` under Meta's rule: a
    published pair when one fits, else multiple_of = hidden_dim, which rounds any product to it."""
    for m, f in _FFN_CANDIDATES:
        if swiglu_hidden_dim(dim, m, f) == hidden_dim:
            return m, f
    return hidden_dim, hidden_dim / int(2 * (4 * dim) / 3)


def params_from_args(args: ModelArgs) -> dict[str, Any]:
    multiple_of, ffn_mult = ffn_params(args.dim, args.hidden_dim)
    params: dict[str, Any] = {
        "dim": args.dim,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "n_kv_heads": args.n_kv_heads,
        "vocab_size": args.vocab_size,
        "multiple_of": multiple_of,
        "ffn_dim_multiplier": ffn_mult,
        "norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "use_scaled_rope": args.rope_scaling is not None,
        "max_seq_len": args.max_seq_len,
    }
    if args.head_dim_override:
        params["head_dim"] = args.head_dim
    s = args.rope_scaling
    if s is not None:  # explicit, so no reader has to guess the factor from the shape
        params["rope_scaling_factor"] = s.factor
        if (s.low_freq_factor, s.high_freq_factor, s.original_context) != (1.0, 4.0, 8192):
            params.update(
                rope_low_freq_factor=s.low_freq_factor,
                rope_high_freq_factor=s.high_freq_factor,
                rope_original_max_position_embeddings=s.original_context,
            )
    return params


def _split_dim(name: str, vocab_size: int) -> int | None:
    if name == "tok_embeddings.weight":
        return 1 if vocab_size == 32000 else 0  # Llama 2's ParallelEmbedding vs Llama 3's vocab-parallel
    if name.endswith(ROW_PARALLEL):
        return 1
    if name.endswith(COLUMN_PARALLEL):
        return 0
    return None


def write_meta(
    state_dict: dict[str, torch.Tensor], args: ModelArgs, out_dir: str | os.PathLike, n_shards: int = 1
) -> Path:
    """params.json + ``n_shards`` consolidated.NN.pth, cut the way fairscale cuts them.
    ``output.weight`` is always written (the reference model has an untied output layer)."""
    state_dict = drop_tied_head(state_dict, args)
    check_state_dict(state_dict, args, "<state dict to write>")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    full = dict(state_dict)
    if args.tie_embeddings:
        full["output.weight"] = full["tok_embeddings.weight"]
    for name in expected_shapes(args.with_(tie_embeddings=False)):
        d = _split_dim(name, args.vocab_size)
        if d is not None and full[name].shape[d] % n_shards:
            raise ConfigError(f"{name} (shape {tuple(full[name].shape)}) cannot be split {n_shards} ways")
    for old in out_dir.glob("consolidated.*.pth"):
        old.unlink()
    for rank in range(n_shards):
        shard = {}
        for name, t in full.items():
            d = _split_dim(name, args.vocab_size)
            # clone: a view would drag the whole storage into every shard file
            shard[name] = t.chunk(n_shards, dim=d)[rank].clone() if d is not None and n_shards > 1 else t
        target = out_dir / f"consolidated.{rank:02d}.pth"
        torch.save(shard, target.with_name(target.name + ".partial"))
        os.replace(target.with_name(target.name + ".partial"), target)
    (out_dir / "params.json").write_text(json.dumps(params_from_args(args), indent=2) + "\n")
    return out_dir
