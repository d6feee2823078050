"""``system_fingerprint``: which backend configuration produced a response.

OpenAI's field tells a client whether two responses came from the same setup, so that a seed
or a deterministic server can be trusted to repeat itself. Ours hashes everything that changes
the numbers: the model file's content, the lhama version, the compute dtype, the quantization,
the engine's deterministic mode, and the LoRA adapter a request runs with.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import lhama

# Files up to this size are hashed whole (the 98 MB default GGUF takes a fraction of a second);
# larger ones by their size and SAMPLES evenly spaced 1 MiB slices, so a 16 GB model does not
# delay the server's start by a minute.
FULL_HASH_LIMIT = 512 * 2**20
SAMPLES = 64
_CHUNK = 2**20


def file_digest(path: str | Path) -> str:
    """sha256 hex of the file (whole, or sampled above ``FULL_HASH_LIMIT``), cached per
    (path, size, mtime) so a process hashes a file once."""
    st = Path(path).stat()
    return _digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_LIMIT:
            while block := f.read(_CHUNK):
                h.update(block)
        else:
            h.update(f"sampled:{size}".encode())
            for i in range(SAMPLES):
                f.seek((size - _CHUNK) * i // (SAMPLES - 1))
                h.update(f.read(_CHUNK))
    return h.hexdigest()


def model_settings(loaded, engine_config) -> dict:
    """What of a loaded model and an engine configuration changes outputs, as plain data."""
    quant = getattr(loaded, "quant", None)
    path = getattr(loaded, "path", None)
    return {
        "model": file_digest(path)
        if path is not None and Path(path).is_file()
        else f"{getattr(loaded, 'source', '')}:{getattr(loaded, 'name', '')}",
        "lhama": lhama.__version__,
        "dtype": str(loaded.model.dtype),
        "quant": sorted(set(quant.modules.values())) if quant is not None else None,
        "deterministic": bool(getattr(engine_config, "deterministic", False)),
    }


def system_fingerprint(settings: dict, adapter: str | None = None) -> str:
    """``fp_`` + 12 hex digits of the settings (and the request's adapter name, if any)."""
    text = repr(sorted({**settings, "adapter": adapter}.items()))
    return "fp_" + hashlib.sha256(text.encode()).hexdigest()[:12]
