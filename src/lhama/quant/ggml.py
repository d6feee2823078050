"""Matmuls straight on llama.cpp's quantized blocks (Q4_0, Q4_1, Q8_0, Q6_K), as stored in a GGUF file.

``blocks`` is a uint8 tensor [N, (K // 32) * block bytes]: row n holds weight row n's blocks
exactly as the file stores them (possibly a read-only, unaligned view onto an mmap):

* Q4_0, 18 B: fp16 d, 16 bytes of nibbles; ``w = (q - 8) * d``
* Q4_1, 20 B: fp16 d, fp16 m, 16 bytes of nibbles; ``w = q * d + m``
* Q8_0, 34 B: fp16 d, 32 int8; ``w = q * d``
* Q6_K, 210 B per 256 weights: 4 + 2 bit q, an int8 scale per 16, fp16 d; ``w = (d * scale) * (q - 32)``;
  its integer path quantizes the activations per 256 values (llama.cpp's Q8_K) instead of 32

Nibble order as ggml: byte j's low nibble is element j, its high nibble element j + 16.

The fast path is a C++ library of torch custom ops (``src/lhama/quant/kernels/*.cpp``), built
once per torch version and source hash (``make install`` runs ``python -m lhama.quant.ggml
--build``; otherwise on first use). Few activation rows (decode) go through llama.cpp's scheme:
each row is quantized to int8 per 32 values and multiplied with integer dot products (512-bit
AVX512 with VBMI/GFNI/VNNI, 256-bit AVX512-VNNI, AVX2 or plain C++, picked at run time by cpuid;
``LHAMA_GGML_ISA=avx512vnni|avx2|scalar|reference`` forces a lower one); from 9 rows (Q6_K: 32)
the 512-bit body sweeps every activation row against 16-row weight panels unpacked once, the
256-bit bodies from 3 rows against 8-row panels (``kernels/ggml_tile.h``; the same numbers as
one row at a time). Many rows (prefill; by row count above 128 rows on the 512-bit and 256-bit
bodies, else 20), the "prompt path", take the integer kernels too: measured faster than
dequantizing slices of the weight to bf16 + one GEMM both where bf16 is native (AVX512_BF16,
Zen 4: 1.1-1.8x) and where it is not (AVX2 laptops: 5-9x). The bf16 GEMM stays where AMX-BF16
tiles run it, and below AVX2 (``set_prompt_path``; ``LHAMA_GGML_PROMPT=bf16|fp32|integer``
forces one).
Without a compiler the same functions run a pure-torch reference (dequantize + matmul), with a
one-line notice.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import gguf
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_T = gguf.GGMLQuantizationType
_INTEGER_ROWS: contextvars.ContextVar[int | None] = contextvars.ContextVar("lhama_ggml_integer_rows", default=None)
# ggml type id -> bytes per block of 32 weights.
QTYPES: dict[int, int] = {int(_T.Q4_0): 18, int(_T.Q4_1): 20, int(_T.Q8_0): 34}
# Every type the kernels take -> (weights, bytes) per block (Q6_K: 256 weights in 210 bytes).
SIZES: dict[int, tuple[int, int]] = {**{t: (32, b) for t, b in QTYPES.items()}, int(_T.Q6_K): (256, 210)}
BLOCK = 32
# Weights the reference path dequantizes at a time (fp32 scratch).
_REF_SLICE_WEIGHTS = 1 << 20

KERNELS_DIR = Path(__file__).parent / "kernels"
LIB_NAME = "lhama_ggml"


def _check(blocks: torch.Tensor, qtype: int) -> tuple[int, int]:
    """(N, K) of a block matrix, or a clear error."""
    qtype = int(qtype)
    if qtype not in SIZES:
        names = ", ".join(_T(t).name for t in SIZES)
        name = _T(qtype).name if qtype in _T._value2member_map_ else str(qtype)
        raise ValueError(f"ggml type {name} has no block kernel (supported: {names})")
    if blocks.dtype != torch.uint8 or blocks.dim() != 2:
        raise ValueError(f"blocks must be a 2-D uint8 tensor, got {blocks.dtype} {tuple(blocks.shape)}")
    per, bb = SIZES[qtype]
    if blocks.shape[1] % bb:
        raise ValueError(f"{_T(qtype).name} rows are whole {bb}-byte blocks; got {blocks.shape[1]} bytes per row")
    return blocks.shape[0], blocks.shape[1] // bb * per


def _fp16(b: torch.Tensor) -> torch.Tensor:
    """[..., 2] bytes (little-endian fp16) -> [..., 1] fp32."""
    return b.contiguous().view(torch.float16).float()


def _ref_dequantize(blocks: torch.Tensor, qtype: int) -> torch.Tensor:
    """Exactly the gguf package's dequantization, in torch (Q6_K: the package's own numpy)."""
    n, k = _check(blocks, qtype)
    if qtype not in QTYPES:
        raw = blocks.contiguous().numpy()
        return torch.from_numpy(gguf.quants.dequantize(raw, _T(qtype)).astype("float32").reshape(n, k))
    b = blocks.reshape(n, k // BLOCK, QTYPES[qtype])
    d = _fp16(b[..., 0:2])
    if qtype == _T.Q8_0:
        w = b[..., 2:].contiguous().view(torch.int8).float() * d
    else:
        nib = b[..., 2:] if qtype == _T.Q4_0 else b[..., 4:]
        q = torch.cat((nib & 15, nib >> 4), dim=-1).float()
        w = (q - 8.0) * d if qtype == _T.Q4_0 else q * d + _fp16(b[..., 2:4])
    return w.reshape(n, k)


def _ref_linear(x: torch.Tensor, blocks: torch.Tensor, qtype: int) -> torch.Tensor:
    n, k = _check(blocks, qtype)
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features, the weight {k}")
    xf = x.reshape(-1, k).float()
    step = max(1, _REF_SLICE_WEIGHTS // k)
    out = torch.cat([F.linear(xf, _ref_dequantize(blocks[i : i + step], qtype)) for i in range(0, n, step)], dim=-1)
    return out.reshape(*x.shape[:-1], n).to(x.dtype)


def _ref_rows(blocks: torch.Tensor, qtype: int, ids: torch.Tensor) -> torch.Tensor:
    _check(blocks, qtype)
    return _ref_dequantize(blocks[ids.reshape(-1).long()], qtype)


# --- the compiled library -------------------------------------------------------------------

_state: dict = {}


def _source_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(KERNELS_DIR.glob("*.cpp")) + sorted(KERNELS_DIR.glob("*.h")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    from lhama.quant import ggml_build

    h.update(" ".join(ggml_build.flags()).encode())
    return h.hexdigest()[:16]


def lib_dirs() -> list[Path]:
    """Where the library may live, in lookup order: inside the environment (``make install``
    builds there), then the user's cache (a pip-installed lhama in a read-only prefix)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lhama" / "kernels"
    return [Path(sys.prefix) / "share" / "lhama" / "kernels", cache]


def lib_path(directory: Path) -> Path:
    ver = torch.__version__.replace("+", "-")
    return directory / f"{LIB_NAME}-torch{ver}-{_source_hash()}.so"


def build(quiet: bool = False) -> Path:
    """Compile ``kernels/*.cpp`` into the first writable library directory (no-op when built)."""
    from lhama.quant import ggml_build

    for d in lib_dirs():
        if lib_path(d).exists():
            return lib_path(d)
    err: Exception | None = None
    for d in lib_dirs():
        try:
            d.mkdir(parents=True, exist_ok=True)
            if not os.access(d, os.W_OK):
                continue
            path = ggml_build.compile_library(sorted(KERNELS_DIR.glob("*.cpp")), lib_path(d), quiet=quiet)
            for old in d.glob(f"{LIB_NAME}-*.so"):  # builds of older sources or torch versions
                if old != path:
                    old.unlink(missing_ok=True)
            for tmp in d.glob(f"{LIB_NAME}-*.tmp"):  # left by a build that was killed
                if time.time() - tmp.stat().st_mtime > 900:
                    tmp.unlink(missing_ok=True)
            return path
        except (OSError, RuntimeError) as e:
            err = e
    raise RuntimeError(f"could not build the ggml block kernels: {err}")


def _load():
    """The ops namespace, or None (with a one-line notice naming the fallback)."""
    if "ops" in _state:
        return _state["ops"]
    _state["ops"] = None
    if os.environ.get("LHAMA_GGML_ISA", "").lower() == "reference":
        return None
    if not any(KERNELS_DIR.glob("*.cpp")):
        return None
    try:
        path = os.environ.get("LHAMA_GGML_LIB") or next((lib_path(d) for d in lib_dirs() if lib_path(d).exists()), None)
        if path is None:
            log.warning("ggml block kernels: not built yet, compiling them once (a few seconds)")
            path = build(quiet=True)
        torch.ops.load_library(str(path))
        ops = torch.ops.lhama_ggml
        _register_fakes()
        want = os.environ.get("LHAMA_GGML_ISA")
        if want:
            ops.set_isa(want.lower())
        _state["ops"] = ops
        set_prompt_path(os.environ.get("LHAMA_GGML_PROMPT") or None)
        _state["ops"], _state["linear"] = ops, ops.block_linear.default
        _state["linear_parts"] = ops.block_linear_parts.default
    except Exception as e:  # no compiler, a broken toolchain: the reference path still runs
        _state["ops"] = None
        log.warning("ggml block kernels unavailable (%s); using the pure-torch reference (dequantize + matmul)", e)
    return _state["ops"]


def _register_fakes() -> None:
    """Shapes without data (meta/fake tensors: torch.compile traces through the ops)."""
    if _state.get("fakes"):
        return
    _state["fakes"] = True
    lib = "lhama_ggml::"

    @torch.library.register_fake(lib + "block_linear")
    def _linear(x, blocks, qtype, path=0):
        return x.new_empty((*x.shape[:-1], blocks.shape[0]))

    @torch.library.register_fake(lib + "block_linear_parts")
    def _linear_parts(x, blocks, qtype, path=0):
        return x.new_empty((*x.shape[:-1], sum(b.shape[0] for b in blocks)))

    @torch.library.register_fake(lib + "block_rows")
    def _rows(blocks, qtype, ids):
        k = blocks.shape[1] // SIZES[qtype][1] * SIZES[qtype][0]
        return blocks.new_empty((ids.numel(), k), dtype=torch.float32)

    @torch.library.register_fake(lib + "dequantize")
    def _dequantize(blocks, qtype):
        k = blocks.shape[1] // SIZES[qtype][1] * SIZES[qtype][0]
        return blocks.new_empty((blocks.shape[0], k), dtype=torch.float32)


def available() -> bool:
    """True when the compiled kernels are loaded (building them first if needed)."""
    return _load() is not None


def isa() -> str:
    """The instruction set the kernels run: ``avx512vbmi`` (512-bit, with VNNI and GFNI),
    ``avx512vnni`` (256-bit), ``avx2``, ``scalar``, or ``reference``."""
    ops = _load()
    return "reference" if ops is None else ops.get_isa()


def set_isa(name: str) -> str:
    """Force an instruction set no higher than the CPU's (tests; ``LHAMA_GGML_ISA`` at start-up).
    Returns the one in effect."""
    ops = _load()
    if ops is None:
        return "reference"
    name = ops.set_isa(name.lower())
    if _state.get("prompt_auto", True):
        set_prompt_path(None)
    return name


def bf16_native() -> bool:
    """True when torch's bf16 GEMM runs on AMX-BF16 tiles: oneDNN takes bf16 (within
    ``ONEDNN_MAX_CPU_ISA``) and the CPU lists amx_bf16 (Linux cpuinfo). AVX512_BF16 alone does not
    count: on a Zen 4 the integer kernels ran 512-token prefills 1.1-1.4x faster than the bf16
    GEMM (2 threads; 1.8x at 160 tokens), docs/performance.md "Prompt rows"."""
    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
    except (AttributeError, RuntimeError):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return True  # not Linux: oneDNN's word
    return "amx_bf16" in flags


def set_prompt_path(name: str | None = None, *, native: bool | None = None) -> str:
    """What prompt rows (``integer_rows``' rest, and row counts above the integer limit) run:
    ``bf16`` (dequantized bf16 slices + GEMM), ``fp32`` (the same in fp32) or ``integer`` (the
    integer kernels, int8-rounded activations, as llama.cpp). ``None``: ``bf16`` where AMX runs
    it (``bf16_native()``; ``native`` forces the answer) or the kernels run below AVX2, else
    ``integer``. Returns the one in effect."""
    ops = _load()
    if ops is None:
        return "reference"
    _state["prompt_auto"] = name is None
    if name is None:
        native = bf16_native() if native is None else native
        name = "bf16" if native or ops.get_isa() == "scalar" else "integer"
    return ops.set_prompt_path(name.lower())


def prompt_path() -> str:
    """The prompt path in effect (``set_prompt_path``), or ``reference``."""
    ops = _load()
    return "reference" if ops is None else ops.get_prompt_path()


# --- the API --------------------------------------------------------------------------------


def block_linear(x: torch.Tensor, blocks: torch.Tensor | Sequence[torch.Tensor], qtype: int) -> torch.Tensor:
    """``x @ W.T`` for x [..., K] (float32 or bfloat16) and W the weight that ``blocks``
    [N, (K // 32) * block bytes] encode: [..., N] in x's dtype, fp32 accumulation.

    ``blocks`` may be a list of such tensors (same K and type, e.g. wq, wk and wv where the file
    does not store them back to back): one call, their outputs concatenated along the last dim,
    each row bit-identical to a call on its own tensor (no copy of the weights is made)."""
    # A decode step makes ~120 of these calls: the checks are the cheapest that decide.
    op = _state.get("linear") if _state.get("ops") is not None else None
    if op is None and "ops" not in _state and _load() is not None:
        op = _state["linear"]
    if not isinstance(blocks, torch.Tensor):
        if len(blocks) == 1:
            blocks = blocks[0]
        elif op is not None:
            op = _state["linear_parts"]
    if op is None or not x.is_cpu or (x.requires_grad and torch.is_grad_enabled()):
        if isinstance(blocks, torch.Tensor):
            return _ref_linear(x, blocks, qtype)
        return torch.cat([_ref_linear(x, b, qtype) for b in blocks], dim=-1)
    if qtype not in SIZES:
        _check(blocks if isinstance(blocks, torch.Tensor) else blocks[0], qtype)  # the error names the type
    n = _INTEGER_ROWS.get()
    if n is None:
        return op(x, blocks, int(qtype))
    m = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if n >= m:
        return op(x, blocks, int(qtype), 1)
    if n <= 0:
        return op(x, blocks, int(qtype), 2)
    x2 = x.reshape(m, x.shape[-1])
    out = torch.cat([op(x2[:n], blocks, int(qtype), 1), op(x2[n:], blocks, int(qtype), 2)])
    return out.view(*x.shape[:-1], out.shape[-1])


@contextlib.contextmanager
def integer_rows(n: int | None):
    """Within the block, the first ``n`` rows of every ``block_linear`` input take the integer
    path (int8-rounded activations) and the rest the prompt path (``set_prompt_path``: the
    integer kernels, or the dequantized bf16 GEMM where AMX runs it), whatever the row
    count; ``None``: picked by row count. The two paths round differently, so with a row-count
    rule a token's numbers would depend on what it is batched with: the engine and the reference
    loop give generated tokens' rows the integer path and prompt rows the prompt path at any
    batch size."""
    token = _INTEGER_ROWS.set(n)
    try:
        yield
    finally:
        _INTEGER_ROWS.reset(token)


def current_integer_rows() -> int | None:
    """The ``n`` of the innermost ``integer_rows`` around this call (None: rows take the path
    their count picks): for fused ops that call ``block_linear`` from C++ and must split alike."""
    return _INTEGER_ROWS.get()


def block_rows(blocks: torch.Tensor, qtype: int, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` of the weight, float32 [len(ids), K] (an embedding lookup that decodes only
    the rows asked for)."""
    ops = _state["ops"] if "ops" in _state else _load()
    if ops is None or blocks.device.type != "cpu":
        return _ref_rows(blocks, qtype, ids)
    if qtype not in SIZES:
        _check(blocks, qtype)  # the error names the type
    return ops.block_rows(blocks, int(qtype), ids.reshape(-1).long())


def dequantize(blocks: torch.Tensor, qtype: int) -> torch.Tensor:
    """The whole weight, float32 [N, K], exactly as the gguf package dequantizes it."""
    ops = _state["ops"] if "ops" in _state else _load()
    if ops is None or blocks.device.type != "cpu":
        return _ref_dequantize(blocks, qtype)
    if qtype not in SIZES:
        _check(blocks, qtype)  # the error names the type
    return ops.dequantize(blocks, int(qtype))


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m lhama.quant.ggml", description=__doc__.split("\n")[0])
    p.add_argument("--build", action="store_true", help="compile the kernels now (no-op when built)")
    args = p.parse_args(argv)
    if args.build:
        t = time.perf_counter()
        try:
            path = build()
        except RuntimeError as e:
            print(f"{e}; lhama will use the pure-torch reference path", file=sys.stderr)
            return 0
        print(f"ggml block kernels: {path} ({time.perf_counter() - t:.1f} s)")
    print(f"ggml block kernels: {'available' if available() else 'reference path'}, isa {isa()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
