"""Open a GGUF file once and read its key/value metadata: the one piece of GGUF parsing that
both the checkpoint readers (``lhama.checkpoints``) and the tokenizer (``lhama.tokenizer``)
need, kept below both so neither imports the other.

The header is parsed by the ``gguf`` package; every tensor's extent and type is checked before
it is mapped, so a truncated or edited file is reported with the tensor at fault.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import mmap
import os
import struct
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np

from lhama.errors import CheckpointError, ModelNotFoundError


def defer_import(name: str) -> None:
    """Make ``import name`` cheap until the module is used: a stand-in module goes into
    ``sys.modules`` and imports the real one on its first attribute access (a module-level
    ``__getattr__``, PEP 562), then takes on its contents. For the ``gguf`` package's
    dependencies that reading a file never touches: its package init imports PyYAML
    (``gguf.metadata`` reads model cards with it), 0.1-0.15 s of every start-up.
    (``importlib.util.LazyLoader`` does not help: on Python 3.11 ``import`` itself reads the
    module's ``__spec__``, which runs it.)"""
    spec = None if name in sys.modules else importlib.util.find_spec(name)
    if spec is None:
        return
    stand_in = types.ModuleType(name, f"{name}, imported on first use (lhama.gguf_file.defer_import)")
    # What ``import`` and ``inspect.getmodule`` (a scan of every module) read: no load for them.
    stand_in.__spec__, stand_in.__file__ = None, spec.origin

    def load(attr: str):
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        real = importlib.import_module(name)
        del stand_in.__getattr__
        stand_in.__dict__.update(real.__dict__)
        return getattr(real, attr)

    stand_in.__getattr__ = load
    sys.modules[name] = stand_in


def import_gguf():
    """The ``gguf`` package, without importing PyYAML until something uses it."""
    defer_import("yaml")
    import gguf

    return gguf


gguf = import_gguf()


class _BadTensor(Exception):
    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


_V = gguf.GGUFValueType
_SCALARS = {t: np.dtype(d).newbyteorder("<") for t, d in gguf.GGUFReader.gguf_scalar_to_np.items()}


class _ArrayField(gguf.ReaderField):
    """An array value parsed in one pass: the library builds one numpy view per element (a
    100k-string vocabulary took ~1 s); ``contents()`` gives the same Python values."""

    def contents(self, index_or_slice: int | slice = slice(None)) -> Any:
        values = self.data[0][index_or_slice]
        return values.tolist() if isinstance(values, np.ndarray | np.generic) else values


class _CheckedReader(gguf.GGUFReader):
    """GGUFReader that checks each tensor's extent and type before mapping it, so a truncated
    file is reported with the tensor that is cut off instead of a numpy reshape error."""

    def _get(self, *args, **kwargs):
        # Slicing an np.memmap runs its __array_finalize__ each time; a plain ndarray view of the
        # same mapping parses a 100k-string vocabulary ~4x faster (cold start).
        if type(self.data) is np.memmap:
            self.map = self.data  # the np.memmap: ``drop_pages`` needs its mmap
            self.data = self.data.view(np.ndarray)
        return super()._get(*args, **kwargs)

    def _build_fields(self, offs: int, count: int) -> int:
        """The library's loop, with arrays parsed in one pass (``_read_array``)."""
        if self.byte_order != "I" or sys.byteorder != "little":
            return super()._build_fields(offs, count)
        for _ in range(count):
            orig_offs = offs
            kv_klen, kv_kdata = self._get_str(offs)
            offs += int(kv_klen.nbytes + kv_kdata.nbytes)
            raw_kv_type = self._get(offs, np.uint32)
            offs += int(raw_kv_type.nbytes)
            name = str(bytes(kv_kdata), encoding="utf-8")
            parts = [kv_klen, kv_kdata, raw_kv_type]
            if raw_kv_type[0] == _V.ARRAY:
                size, values, itype = _read_array(memoryview(self.data), offs)
                if values is not None:
                    field = _ArrayField(orig_offs, name, parts, [values], [_V.ARRAY, itype])
                    self._push_field(field, skip_sum=True)
                    offs += size
                    continue
            size, field_parts, idxs, types = self._get_field_parts(offs, raw_kv_type[0])
            field = gguf.ReaderField(orig_offs, name, parts + field_parts, [i + len(parts) for i in idxs], types)
            self._push_field(field, skip_sum=True)
            offs += size
        return offs

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


def _read_strings(buf: memoryview, offs: int, count: int) -> tuple[list[str], int]:
    """``count`` GGUF strings (u64 length + UTF-8 bytes) from ``offs``: the values and the end."""
    size, out, unpack = len(buf), [], struct.Struct("<Q").unpack_from
    if count > (size - offs) // 8:
        raise ValueError(f"array of {count} strings runs past the end of the file")
    append = out.append
    # No bounds test per string (98k of them in the default file's vocabulary: ~25% of the
    # loop): a length past the end makes the next length's read fail, or the end land past it.
    try:
        for _ in range(count):
            (n,) = unpack(buf, offs)
            start = offs + 8
            offs = start + n
            append(str(buf[start:offs], "utf-8"))
    except struct.error:
        raise ValueError("string array runs past the end of the file") from None
    if offs > size:
        raise ValueError("string runs past the end of the file")
    return out, offs


def _read_array(buf: memoryview, offs: int) -> tuple[int, Any, Any]:
    """(bytes, values, item type) of the GGUF array at ``offs``; values None for nested arrays."""
    if offs + 12 > len(buf):
        raise ValueError("array header runs past the end of the file")
    itype, count = struct.unpack_from("<IQ", buf, offs)
    start = offs + 12
    if itype == _V.STRING:
        values, end = _read_strings(buf, start, count)
    elif itype in _SCALARS:
        dtype = _SCALARS[itype]
        if count > (len(buf) - start) // dtype.itemsize:
            raise ValueError(f"array of {count} values runs past the end of the file")
        values, end = np.frombuffer(buf, dtype, count, start), start + count * dtype.itemsize
    else:
        return 0, None, None
    return end - offs, values, _V(itype)


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


def drop_pages(reader: gguf.GGUFReader, view: np.ndarray | None = None) -> None:
    """Take the file pages under ``view`` (a tensor's data; None: the whole file) out of this
    process's resident set. Reading a tensor through the map makes its pages resident, and they
    stay counted in RSS for as long as the (cached) reader lives, on top of the repacked copy;
    MADV_DONTNEED on a read-only file map only unmaps them (they stay in the page cache and fault
    back in on the next read)."""
    mapping = getattr(reader, "map", None)
    mm = getattr(mapping, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    base, size = mapping.ctypes.data, len(mapping)
    start, stop = 0, size
    if view is not None:
        start = view.ctypes.data - base
        stop = start + view.nbytes
        if not 0 <= start <= stop <= size:
            return
    start = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the range only
    stop = stop // mmap.PAGESIZE * mmap.PAGESIZE if stop < size else size
    if stop > start:
        mm.madvise(mmap.MADV_DONTNEED, start, stop - start)


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
