"""Open a GGUF file once and read its key/value metadata: the one piece of GGUF parsing that
both the checkpoint readers (``lhama.checkpoints``) and the tokenizer (``lhama.tokenizer``)
need, kept below both so neither imports the other.

The header is parsed by the ``gguf`` package; every tensor's extent and type is checked before
it is mapped, so a truncated or edited file is reported with the tensor at fault.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from lhama.errors import CheckpointError, ModelNotFoundError


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
                raise _BadTensor(
                    name,
                    f"file is truncated: tensor data ends at byte {end} but the file "
                    f"has only {size} bytes (incomplete download?)",
                )
        super()._build_tensors(start_offs, fields)


def open_gguf(path: str | os.PathLike) -> gguf.GGUFReader:
    """The parsed (memory-mapped) file; cached, so model loading and the tokenizer parse it once."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{path}: no such file or folder")
    st = path.stat()
    return _open_cached(str(path.resolve()), st.st_mtime_ns, st.st_size, path)


@functools.lru_cache(maxsize=2)
def _open_cached(_resolved: str, _mtime: int, _size: int, path: Path) -> gguf.GGUFReader:
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


def gguf_metadata(reader: gguf.GGUFReader, path: object, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Key/values of an open file as Python values: strings decoded, arrays as lists. Keys
    starting with one of ``skip`` are left out (``tokenizer.``: a vocabulary is ~100k strings)."""
    md: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith(("GGUF.", *skip)):  # GGUF.*: the reader's own bookkeeping (version, counts)
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
    """All key/value metadata of a GGUF file. ``tokenizer.ggml.*`` and ``tokenizer.chat_template``
    are what the tokenizer needs."""
    return gguf_metadata(open_gguf(path), path)
