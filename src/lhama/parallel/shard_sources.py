"""Read *part* of a checkpoint's tensor: the row or column block one tensor-parallel rank owns.

Each source opens a checkpoint without reading its weights, knows every tensor's full shape
(in our names and torch's (out, in) order) and the model's ``ModelArgs``, and ``read(name, dim,
start, stop)`` returns only ``[start, stop)`` along ``dim`` (``dim=None``: the whole tensor).
What comes back may be a view of a memory map; the caller copies it into its parameter.

- HF safetensors: ``get_slice`` reads just the block from the mmapped file. Q/K rows are in
  the "rotate half" layout, permuted per head; a rank's rows are whole heads, so permuting
  within the rows read is the same as permuting the full tensor and slicing (GQA included).
- Meta ``consolidated.NN.pth``: ``torch.load(mmap=True)`` maps every file; a slice may span
  several of Meta's own model-parallel pieces (N files for tp ranks, N != tp), so the pieces
  overlapping the wanted range are cut and concatenated along the dimension fairscale split.
- GGUF: tensors are numpy views of the mmapped file; quantized rows are independent (blocks
  run along a row), so a row block dequantizes alone, and a column block does too when its
  edges fall on quantization-block boundaries. Otherwise the one tensor is dequantized and cut.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lhama.checkpoints.layout import require_file
from lhama.errors import CheckpointError
from lhama.model.args import ModelArgs


class ShardSource:
    format: str
    path: Path
    args: ModelArgs
    shapes: dict[str, tuple[int, ...]]  # our name -> full torch shape (tied head left out)

    def read(self, name: str, dim: int | None, start: int = 0, stop: int = 0) -> torch.Tensor:
        raise NotImplementedError

    _names = None  # the format's NameTable (our names <-> the file's), where it has its own names

    def name_of(self, ours: str) -> str:  # the file's own name, for error messages
        try:
            return self._names.to_theirs(ours) if self._names is not None else ours
        except KeyError:
            return ours

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_source(path: str | Path) -> ShardSource:
    from lhama.checkpoints import detect_format

    path = Path(path)
    fmt = detect_format(path)
    if fmt == "gguf":
        return GGUFSource(next(path.glob("*.gguf")) if path.is_dir() else path)
    if fmt == "hf":
        return HFSource(path)
    return MetaSource(path if path.is_dir() else path.parent)


def _narrow(t: torch.Tensor, dim: int | None, start: int, stop: int) -> torch.Tensor:
    return t if dim is None else t.narrow(dim, start, stop - start)


# -- Hugging Face safetensors ----------------------------------------------------------------
class HFSource(ShardSource):
    format = "hf"

    def __init__(self, path: Path):
        from safetensors import safe_open

        from lhama.checkpoints.hf import (
            HF_NAMES,
            INDEX_FILE,
            SINGLE_FILE,
            _diagnose_safetensors,
            args_from_hf_config,
            read_json,
        )

        self._names = HF_NAMES
        folder = path if path.is_dir() else path.parent
        cfg_path = folder / "config.json"
        self.args = args_from_hf_config(read_json(cfg_path), cfg_path)
        if path.is_file():
            files, wanted = [path], None
        elif (folder / SINGLE_FILE).exists():
            files, wanted = [folder / SINGLE_FILE], None
        elif (folder / INDEX_FILE).exists():
            weight_map = read_json(folder / INDEX_FILE).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointError(folder / INDEX_FILE, "'weight_map' must map tensor names to file names")
            files = [folder / s for s in sorted(set(weight_map.values()))]
            wanted = weight_map
        else:
            raise CheckpointError(folder, f"no {SINGLE_FILE} or {INDEX_FILE} next to config.json (only safetensors "
                                          "weights are read; convert pytorch_model.bin with transformers first)")
        self.path = files[0] if len(files) == 1 else folder
        self._handles, self._where = [], {}  # our name -> (handle, their name, file)
        self.shapes = {}
        for file in files:
            if not file.is_file() or (wanted is not None and file.parent != folder):
                raise CheckpointError(file, "shard listed in model.safetensors.index.json is missing")
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
                    continue  # a stray tensor the index does not point at (read_hf skips it too)
                if theirs.endswith("rotary_emb.inv_freq") or (theirs == "lm_head.weight" and self.args.tie_embeddings):
                    continue
                ours = HF_NAMES.to_ours(theirs)
                if ours is None:
                    raise CheckpointError(file, "unexpected tensor, not part of a Llama model", tensor=theirs)
                self._where[ours] = (f, theirs, file)
                self.shapes[ours] = tuple(f.get_slice(theirs).get_shape())

    def read(self, name, dim, start=0, stop=0):
        from lhama.checkpoints.hf import hf_to_meta_rows

        f, theirs, file = self._where[name]
        try:
            sl = f.get_slice(theirs)
            t = sl[:] if dim is None else sl[start:stop] if dim == 0 else sl[:, start:stop]
        except Exception as e:
            raise CheckpointError(file, f"cannot read tensor data ({e})", tensor=theirs) from None
        heads = self.args.n_heads if name.endswith("attention.wq.weight") else \
            self.args.n_kv_heads if name.endswith("attention.wk.weight") else 0
        if heads:  # rows read are whole heads: permute within them
            heads = heads * t.shape[0] // self.shapes[name][0]
            t = hf_to_meta_rows(t, heads)
        return t

    def close(self):
        self._handles.clear()  # safe_open handles unmap when dropped


# -- Meta consolidated.NN.pth ----------------------------------------------------------------
class MetaSource(ShardSource):
    format = "meta"

    def __init__(self, folder: Path):
        from lhama.checkpoints.meta import (
            IGNORED,
            _read_params,
            args_from_params,
            safe_torch_load,
        )

        params = _read_params(folder)
        files = sorted(folder.glob("consolidated.*.pth"))
        if not files:
            raise CheckpointError(folder, "no consolidated.NN.pth files next to params.json")
        shards = [safe_torch_load(f) for f in files]  # memory-mapped: nothing read yet
        for f, sd in zip(files[1:], shards[1:], strict=True):
            if sd.keys() != shards[0].keys():
                odd = min(sd.keys() ^ shards[0].keys())
                raise CheckpointError(f, f"shards disagree on their tensors (compare with {files[0].name})",
                                      tensor=odd)
        self.path = files[0] if len(files) == 1 else folder
        emb = shards[0].get("tok_embeddings.weight")
        if emb is None:
            raise CheckpointError(files[0], "tensor missing", tensor="tok_embeddings.weight")
        dim = params.get("dim")
        vocab = params.get("vocab_size", -1)
        if not isinstance(vocab, int) or vocab <= 0:  # Llama 2 writes -1: count the embedding rows
            vocab = emb.shape[0] * (len(files) if emb.shape[1] == dim else 1)
        args = args_from_params(params, folder / "params.json", vocab)
        self._pieces: dict[str, tuple[list[torch.Tensor], int | None]] = {}
        self.shapes = {}
        for name in shards[0]:
            if name in IGNORED:
                continue
            pieces = [sd[name] for sd in shards]
            pdim = self._split_dim(name, pieces, args)
            if pdim is not None and name.endswith(("wk.weight", "wv.weight")):
                n_kv_rows = args.n_kv_heads * args.head_dim
                if pieces[0].shape[0] * len(pieces) > n_kv_rows:
                    # More Meta ranks than KV heads: each head sits on consecutive ranks; keep one copy.
                    pieces = pieces[:: pieces[0].shape[0] * len(pieces) // n_kv_rows]
            shape = list(pieces[0].shape)
            if pdim is not None:
                if any(p.shape[1 - pdim] != shape[1 - pdim] for p in pieces):
                    raise CheckpointError(folder, "shards cannot be merged (their shapes disagree)", tensor=name)
                shape[pdim] = sum(p.shape[pdim] for p in pieces)
            self._pieces[name] = (pieces, pdim)
            self.shapes[name] = tuple(shape)
        # Llama 3.2 publishes output.weight as a copy of the embeddings: a tied model (as read_meta says).
        if "output.weight" not in self.shapes or self._same("output.weight", "tok_embeddings.weight"):
            self.shapes.pop("output.weight", None)
            args = args.with_(tie_embeddings=True)
        self.args = args

    @staticmethod
    def _split_dim(name: str, pieces: list[torch.Tensor], args: ModelArgs) -> int | None:
        """The dimension fairscale cut ``name`` along (None: one file, or replicated)."""
        from lhama.checkpoints.meta import COLUMN_PARALLEL, ROW_PARALLEL

        if len(pieces) == 1 or pieces[0].ndim != 2:
            return None
        if name == "tok_embeddings.weight":  # vocab-parallel (Llama 3) or embedding-parallel (Llama 2)
            return 0 if pieces[0].shape[1] == args.dim else 1
        if name.endswith(ROW_PARALLEL):
            return 1
        if name.endswith(COLUMN_PARALLEL):
            return 0
        return None

    def _same(self, a: str, b: str) -> bool:
        """Compare two tensors block by block (one Meta piece at a time, never both whole)."""
        if self.shapes[a] != self.shapes[b]:
            return False
        rows = self.shapes[a][0]
        step = max(1, rows // max(len(self._pieces[a][0]), len(self._pieces[b][0])))
        return all(torch.equal(self.read(a, 0, r, min(rows, r + step)), self.read(b, 0, r, min(rows, r + step)))
                   for r in range(0, rows, step))

    def read(self, name, dim, start=0, stop=0):
        pieces, pdim = self._pieces[name]
        if pdim is None:
            return _narrow(pieces[0], dim, start, stop)
        if dim != pdim:  # cut every piece, put the cuts side by side
            parts = [_narrow(p, dim, start, stop) for p in pieces]
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


# -- GGUF ------------------------------------------------------------------------------------
class GGUFSource(ShardSource):
    format = "gguf"

    def __init__(self, path: Path):
        from lhama.checkpoints.gguf import GGUF_NAMES, _metadata, _open, gguf_model_args, gguf_shape

        self.path, self._names = path, GGUF_NAMES
        reader = _open(path)
        self.args, self._tensors = gguf_model_args(reader, _metadata(reader, path), path)
        self.shapes = {ours: gguf_shape(t) for ours, t in self._tensors.items()}

    def read(self, name, dim, start=0, stop=0):
        import gguf

        from lhama.checkpoints.gguf import _dequantize

        t = self._tensors[name]
        Q = gguf.GGMLQuantizationType
        shape = self.shapes[name]
        if dim is None:
            return _dequantize(t, None, self.path)
        try:
            if t.tensor_type in (Q.F32, Q.F16):  # typed arrays: copy the block out of the map
                return torch.from_numpy(np.array(t.data.reshape(shape)[(slice(None),) * dim + (slice(start, stop),)]))
            # Quantized (BF16 too, as 1-element blocks): t.data is [rows, bytes per row] in torch
            # order, and blocks run along a row.
            per_block, block_bytes = gguf.GGML_QUANT_SIZES[t.tensor_type]
            rows = t.data.reshape(shape[0], -1)
            if dim == 0:
                return torch.from_numpy(gguf.quants.dequantize(rows[start:stop], t.tensor_type)).reshape(
                    stop - start, shape[1])
            if start % per_block == 0 and stop % per_block == 0:
                cut = np.ascontiguousarray(rows[:, start // per_block * block_bytes: stop // per_block * block_bytes])
                return torch.from_numpy(gguf.quants.dequantize(cut, t.tensor_type)).reshape(shape[0], stop - start)
        except NotImplementedError:
            raise CheckpointError(self.path, f"tensor type {t.tensor_type.name} cannot be dequantized by the gguf "
                                             "package; re-quantize the model to a common type (Q8_0, Q4_K, ...)",
                                  tensor=t.name) from None
        except Exception as e:
            raise CheckpointError(self.path, f"cannot decode tensor data ({type(e).__name__}: {e})",
                                  tensor=t.name) from None
        # Column edges inside a quantization block: this one tensor whole, then the slice.
        return _dequantize(t, None, self.path).narrow(dim, start, stop - start)

