"""A quantized GGUF file straight into lhama's modules, with no float copy of the model.

Where ``lhama.quant.ggml``'s compiled kernels are available (CPU), Q4_0, Q4_1, Q8_0 and Q6_K
tensors stay the file's own blocks: each linear is a ``BlockLinear`` whose weight is a copy of
the file's blocks (no repack) in private anonymous memory on transparent huge pages, made tensor
by tensor with the tensor's file pages dropped right after (``anonymous_copy``): the kernels read
those 20-27% faster than the page cache's 4 KiB pages, and the RSS is the same.
``LHAMA_WEIGHTS_MMAP=1`` keeps views of the file's memory map instead (the tied embedding and
head share one buffer either way). The copies take at most ``LHAMA_WEIGHTS_COPY_SECONDS``
(default 1 s) of the load; the tensors after that start as views of the map and a background
thread copies them one at a time after the load, swapping each module's buffer in between kernel
calls (``WeightCopies``; ``LHAMA_WEIGHTS_BACKGROUND_COPY=0`` leaves them in the map).
Elsewhere each tensor's raw blocks are read from the map and repacked:

* Q4_0, Q4_1: exact int4 group-32 (fp16 scale and min per block: ``Int4WeightOnlyLinear.from_groups``);
* Q8_0: exact, as two int4 halves (``SplitInt8Linear``);
* other quantized types have no exact kernel layout: each is decoded one tensor at a time and
  requantized to the nearest layout (int4 group 32 up to ~4.5 bits per weight, int8 per channel
  above), with one notice per type naming the fallback;
* the embedding table stays in its file blocks (``BlockEmbedding``: rows decoded per lookup);
  norms and float linears load at the model's dtype.

wq|wk|wv and w1|w3 are stacked into one module each when they share an exact type (the fusion
``lhama.quant.quantize_model`` does), so a decode step makes 4 kernel calls per layer, not 7. With
raw blocks a stack is a view when the parts lie back to back in the file (w1|w3 in files whose
tensors are in name order: ffn_gate, ffn_up), else a ``BlockLinearParts`` over the parts'
views that one ``block_linear`` call multiplies (no copy at load).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import mmap
import os
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field

import gguf
import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from lhama.checkpoints.gguf import GGUFCheckpointReader
from lhama.model.transformer import Transformer, invalidate_decode_plans
from lhama.quant import Int4WeightOnlyLinear, Int8WeightOnlyLinear, QuantConfig, QuantReport, weight_bytes
from lhama.quant.blocks import BlockEmbedding, BlockLinear, BlockLinearParts, SplitInt8Linear, ggml_available
from lhama.quant.int4 import CPU_TILE_ROWS, kernel_layout, pack_cpu_nibble_blocks, pack_cpu_rows

log = logging.getLogger(__name__)
Q = gguf.GGMLQuantizationType
EXACT = (Q.Q4_0, Q.Q4_1, Q.Q8_0)
FLOAT = (Q.F32, Q.F16, Q.BF16)
GROUP = 32  # llama.cpp's block of 32 weights for Q4_0, Q4_1 and Q8_0
# ggml-common.h's block_q4_0, block_q4_1 and block_q8_0 as numpy records
BLOCK_DTYPES = {
    Q.Q4_0: np.dtype([("d", "<f2"), ("qs", "u1", (16,))]),
    Q.Q4_1: np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", (16,))]),
    Q.Q8_0: np.dtype([("d", "<f2"), ("qs", "i1", (32,))]),
}
KIND_Q8 = "int8 as 2 x int4/g32 (Q8_0, exact)"


def kind_q4(qtype) -> str:
    return f"int4/g32 ({qtype.name}, exact)"


_NOTICED: set[str] = set()


def is_quantized_gguf(reader: GGUFCheckpointReader) -> bool:
    """True when the file's linear weights are (mostly) in quantized ggml types."""
    kinds = [reader.qtype(n) not in FLOAT for n, s in reader.shapes.items() if len(s) == 2]
    return sum(kinds) * 2 > len(kinds)


# -- decoding llama.cpp blocks (layout: ggml-common.h; values as gguf.quants computes them) --------
def _fp16(raw: np.ndarray, at: int) -> np.ndarray:
    return raw[..., at : at + 2].copy().view(np.float16)[..., 0].astype(np.float32)


def decode_q4(raw: np.ndarray, qtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_0/Q4_1 rows [rows, bytes] -> (q uint8 [rows, K] 0..15, scale, minimum [rows, K/32])
    with ``w = q * scale + minimum`` (Q4_0: minimum = -8 * scale)."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, gguf.GGML_QUANT_SIZES[qtype][1])
    d = _fp16(blocks, 0)
    m = -8 * d if qtype == Q.Q4_0 else _fp16(blocks, 2)
    qs = blocks[..., 2 if qtype == Q.Q4_0 else 4 :]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # element j: low nibble of byte j, j+16: high
    return torch.from_numpy(q.reshape(rows, -1)), torch.from_numpy(d), torch.from_numpy(m)


def decode_q8(raw: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Q8_0 rows -> (q int8 [rows, K], d [rows, K/32]) with ``w = q * d``."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, gguf.GGML_QUANT_SIZES[Q.Q8_0][1])
    q = np.ascontiguousarray(blocks[..., 2:]).view(np.int8)
    return torch.from_numpy(q.reshape(rows, -1)), torch.from_numpy(_fp16(blocks, 0))


def _dequantize(raw: np.ndarray, qtype) -> np.ndarray:
    """Rows of any ggml type -> fp32 [rows, K] (the gguf package's own decoding)."""
    return gguf.quants.dequantize(raw, qtype).astype(np.float32, copy=False).reshape(raw.shape[0], -1)


def decode_rows(raw: np.ndarray, qtype) -> torch.Tensor:
    """Rows of any ggml type -> fp32 [rows, K]; Q6_K (llama.cpp's usual type for the embedding
    and head of Q4 files) decoded in torch: the same values as the gguf package's numpy in ~half
    its CPU time (a Llama 3.2 1B head is 128,256 rows)."""
    if qtype != Q.Q6_K:
        return torch.from_numpy(_dequantize(raw, qtype))
    rows = raw.shape[0]
    b = torch.from_numpy(np.array(raw)).view(-1, 210)  # block_q6_K: ql[128] qh[64] scales[16] d
    n = b.shape[0]
    scale = b[:, 208:210].contiguous().view(torch.float16).float() * b[:, 192:208].contiguous().view(torch.int8)
    ql = b[:, :128].reshape(n, 2, 1, 64) >> torch.tensor([0, 4], dtype=torch.uint8).view(1, 1, 2, 1)
    qh = b[:, 128:192].reshape(n, 2, 1, 32) >> torch.tensor([0, 2, 4, 6], dtype=torch.uint8).view(1, 1, 4, 1)
    q = ((ql & 15).reshape(n, 8, 32) | ((qh & 3).reshape(n, 8, 32) << 4)).view(n, 16, 16).to(torch.int8) - 32
    return (scale.view(n, 16, 1) * q).view(rows, -1)


# -- raw blocks in anonymous memory ---------------------------------------------------------
HUGE_PAGE = 2 << 20  # x86-64 / arm64 (4 KiB base pages) transparent huge page
COPY_CHUNK = 16 << 20  # bytes copied between two drops of the file's pages


COPY_SECONDS = 1.0  # default load time the copies may take (LHAMA_WEIGHTS_COPY_SECONDS)


def copy_seconds() -> float:
    """Seconds of load time the copies may take (``LHAMA_WEIGHTS_COPY_SECONDS``, default 1): past
    it, the tensors still to load start as views of the map (same numbers, slower reads) and are
    copied by a background thread after the load (``WeightCopies``). The first
    touch of fresh huge pages is host work on a VM and moves with the minute: 0.1-2.4 s per GiB
    on the bench's 2-core VM, where copying a whole 3B file made its load 5.7-18 s."""
    raw = os.environ.get("LHAMA_WEIGHTS_COPY_SECONDS", "")
    if not raw:
        return COPY_SECONDS
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise ValueError(f"LHAMA_WEIGHTS_COPY_SECONDS={raw!r}: expected a number of seconds") from None


def weights_in_map() -> bool:
    """``LHAMA_WEIGHTS_MMAP=1``: the raw blocks stay views of the file's map (no copy at load)."""
    return os.environ.get("LHAMA_WEIGHTS_MMAP", "") not in ("", "0")


def background_copies_on() -> bool:
    """False with ``LHAMA_WEIGHTS_BACKGROUND_COPY=0``: the tensors past the copy budget stay views
    of the map for the model's life, as before the background copies."""
    return os.environ.get("LHAMA_WEIGHTS_BACKGROUND_COPY", "").strip().lower() not in ("0", "false", "no", "off")


BACKGROUND_NICE = (
    5  # the copying thread's nice increment (Linux: per thread): ~1/4 of a core beside a busy model thread
)


class WeightCopies:
    """The tensors a load left in the file's map (the copy budget ran out) copied into anonymous
    huge-page memory by one daemon thread after the load, one tensor at a time (into the slots
    the load reserved for them in its ``HugePageArena``; the same bytes), at a lower priority than
    the threads serving the model (``BACKGROUND_NICE``).

    Each copy is swapped in by assigning the module buffers that held the map view (``BlockLinear``
    ``blocks``/``blocks_N``, the tied ``BlockEmbedding``'s ``blocks``): one dict store under the
    GIL, so a kernel call sees the old tensor or the new one, never a mix, and a call that already
    took the old tensor keeps it alive until it returns (both hold the same bytes: the numbers do
    not change). The whole-step decode plan holds the buffers too: every swap invalidates it
    (``invalidate_decode_plans``) and the next step rebuilds it over the new ones. The file pages
    under a copied tensor are dropped from the resident set. Modules the caller dropped are
    skipped (the thread holds them weakly). ``wait()`` blocks until the thread is done."""

    def __init__(self, late: list[tuple[torch.Tensor, np.ndarray, np.ndarray]], modules: list[nn.Module], drop) -> None:
        """``late``: (a module buffer that is a view of the map, its blocks, where to copy them)."""
        holders: dict[int, list[tuple[weakref.ref, str]]] = {}
        for mod in modules:
            for name, buf in mod.named_buffers(recurse=False):
                holders.setdefault(id(buf), []).append((weakref.ref(mod), name))
        # (map view's tensor held weakly, its bytes, where it is held); the tensors' own refs go
        self._todo = [(weakref.ref(t), blocks, slot, holders.get(id(t), [])) for t, blocks, slot in late]
        self._drop = drop
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.total = len(self._todo)
        self.bytes_total = sum(b.nbytes for _, b, _, _ in self._todo)
        self.copied = 0  # tensors swapped so far
        self.seconds = 0.0  # the thread's wall time, once done
        self.cpu_seconds = 0.0  # the thread's own CPU time (page faults included), once done
        self.error: BaseException | None = None

    def start(self) -> WeightCopies:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lhama-weight-copies", daemon=True)
            self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """True once every tensor is copied (or skipped); False when ``timeout`` ran out first.
        Starts the thread if nothing did."""
        self.start()
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _run(self) -> None:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            try:  # Linux nice values are per thread: only this one yields to the model's threads
                tid = threading.get_native_id()
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE))
            except (AttributeError, OSError):
                pass
            while self._todo:
                ref, blocks, slot, holders = self._todo.pop(0)
                old = ref()  # None: the model is gone
                live = [(m, n) for r, n in holders if old is not None and getattr(m := r(), n, None) is old]
                del old
                if live:
                    copy = torch.from_numpy(_copy_rows(slot, blocks, self._drop))
                    for m, n in live:
                        setattr(m, n, copy)  # a registered buffer: one store into its _buffers
                    invalidate_decode_plans()  # the next step's plan takes the new buffers
                    self.copied += 1
                    del copy, live
                if self._drop is not None:
                    self._drop(blocks)  # pages a reader of the old view touched meanwhile
                del blocks, slot
        except BaseException as e:  # out of memory, say: the rest stay map views (same numbers)
            self.error = e
            log.warning("weights: background copy into anonymous memory stopped (%s: %s)", type(e).__name__, e)
        finally:
            self._todo.clear()
            self.seconds, self.cpu_seconds = time.perf_counter() - start, time.thread_time() - cpu
            log.info(
                "weights: %d of %d tensors (%.0f MiB) copied into anonymous memory in the background "
                "in %.2f s (%.2f s CPU)",
                self.copied,
                self.total,
                self.bytes_total / 2**20,
                self.seconds,
                self.cpu_seconds,
            )
            self._done.set()


_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weight_copies(model: nn.Module) -> WeightCopies | None:
    """The background copies a load of ``model`` started (``WeightCopies``), or None when it
    started none (every tensor copied within the budget, ``LHAMA_WEIGHTS_MMAP=1``,
    ``LHAMA_WEIGHTS_BACKGROUND_COPY=0``, or not a GGUF of raw blocks)."""
    return _COPIES.get(model)


def wait_for_weight_copies(model: nn.Module, timeout: float | None = None) -> bool:
    """Block until ``model``'s background copies are done (True), or ``timeout`` seconds (False
    if still running). True at once when there are none."""
    copies = weight_copies(model)
    return True if copies is None else copies.wait(timeout)


def _huge_page_mapping(n: int) -> np.ndarray:
    """``n`` bytes of a private anonymous mapping, 2 MiB aligned, asking for transparent huge pages
    on its whole 2 MiB spans (the tail stays on 4 KiB pages). Where THP is off or ``madvise``
    fails it is 4 KiB pages. The array holds the mapping alive (its ``base``)."""
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)
    mm = mmap.mmap(-1, n + HUGE_PAGE, flags=flags)
    whole = np.frombuffer(mm, dtype=np.uint8)
    skip = -whole.ctypes.data % HUGE_PAGE
    huge = n // HUGE_PAGE * HUGE_PAGE
    if huge and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            mm.madvise(mmap.MADV_HUGEPAGE, skip, huge)
        except OSError:  # THP not built in: 4 KiB pages
            pass
    return whole[skip : skip + n]


def _copy_rows(dst: np.ndarray, src: np.ndarray, drop=None) -> np.ndarray:
    """``src`` into ``dst`` ``COPY_CHUNK`` bytes at a time, calling ``drop`` on each chunk of
    ``src`` once copied (its file pages leave the resident set: the peak is the copy plus one
    chunk). Returns ``dst``."""
    n = src.nbytes
    rows = src.shape[0] if src.ndim else 1
    step = max(1, COPY_CHUNK // max(1, n // max(1, rows)))
    for start in range(0, rows, step):
        dst[start : start + step] = src[start : start + step]
        if drop is not None:
            drop(src[start : start + step])
    if drop is not None and rows > step:
        drop(src)  # the pages the chunks' edges shared (one chunk: dropped whole already)
    return dst


def anonymous_copy(src: np.ndarray, drop=None) -> np.ndarray:
    """``src`` (rows of raw blocks, a view of the file's map) copied into its own private
    anonymous mapping that asks for transparent huge pages (``_huge_page_mapping``), calling
    ``drop`` on each chunk of ``src`` once copied (``_copy_rows``)."""
    return _copy_rows(_huge_page_mapping(src.nbytes).reshape(src.shape), src, drop)


class HugePageArena:
    """One private anonymous mapping for all of a load's block copies (``_huge_page_mapping``,
    reserved up front with ``MAP_NORESERVE``: untouched bytes cost nothing), handed out back to
    back at 64-byte boundaries. A model's small tensors (the default model's are all under 2 MiB)
    then sit on huge pages too, where a mapping per tensor left each on 4 KiB pages: one page
    fault per 2 MiB instead of per 4 KiB at load (the default model's copies: 51 -> 15 ms CPU),
    and the kernels read them from huge pages. Every slice holds the whole mapping alive."""

    ALIGN = 64

    def __init__(self, nbytes: int):
        self._free = _huge_page_mapping(nbytes)
        self._at = 0

    def take(self, shape: tuple[int, ...], nbytes: int) -> np.ndarray | None:
        """A fresh slice of ``nbytes`` shaped ``shape``; None when the arena is full."""
        if self._at + nbytes > self._free.shape[0]:
            return None
        out = self._free[self._at : self._at + nbytes].reshape(shape)
        self._at += -(-nbytes // self.ALIGN) * self.ALIGN
        return out


# -- building modules ------------------------------------------------------------------------
@dataclass
class _Builder:
    reader: GGUFCheckpointReader
    dtype: torch.dtype  # norms, float linears and the activations between modules
    compute_dtype: torch.dtype  # inside the quantized kernels
    raw_blocks: bool = False  # Q4_0/Q4_1/Q8_0 as BlockLinear over the map (ggml kernels available)
    copy_blocks: bool = field(default_factory=lambda: not weights_in_map())  # raw blocks: anonymous copies
    kinds: dict[str, str] = field(default_factory=dict)
    views: dict[str, torch.Tensor] = field(default_factory=dict)  # one tensor per file tensor
    mapped: list[np.ndarray] = field(default_factory=list)  # map ranges BlockLinear modules read
    copy_budget: float = field(default_factory=copy_seconds)  # seconds the copies may take
    copy_spent: float = 0.0
    late: list[tuple[torch.Tensor, np.ndarray, np.ndarray]] = field(default_factory=list)  # (view, blocks, slot)
    arena: HugePageArena | None = None  # where the copies go

    def map_weights(self) -> None:
        """Fault in the map's pages under every BlockLinear (one read per page), as llama.cpp's
        mmap does at load: the first token then pays no page faults, and the RSS after loading
        is what a running model holds (the file's pages, shared with the page cache)."""
        for a in self.mapped:
            flat = a.reshape(-1)
            int(flat[:: mmap.PAGESIZE].sum())

    def linear(self, names: list[str], module_name: str) -> nn.Module:
        """One module for the row-stack of ``names`` (all of one ggml type)."""
        qtype = self.reader.qtype(names[0])
        shapes = [self.reader.shapes[n] for n in names]
        rows, cols = sum(s[0] for s in shapes), shapes[0][1]
        if self.raw_blocks and (qtype in EXACT or (qtype == Q.Q6_K and cols % 256 == 0)):
            self.kinds[module_name] = f"{qtype.name} blocks (exact, the file's own)"
            stack = self.stacked_blocks(names)
            if isinstance(stack, list):
                return BlockLinearParts(stack, qtype, cols)
            return BlockLinear(stack, qtype, cols)
        fast = self._exact_on_cpu_tiles(names, qtype, module_name)
        if fast is not None:
            return fast
        if qtype in (Q.Q4_0, Q.Q4_1):
            self.kinds[module_name] = kind_q4(qtype)
            blocks = (decode_q4(raw, qtype) for raw in self._row_blocks(names))
            return Int4WeightOnlyLinear.from_group_rows(blocks, rows, cols, GROUP, self.compute_dtype)
        if qtype == Q.Q8_0:
            self.kinds[module_name] = KIND_Q8
            return SplitInt8Linear.from_q8_rows(
                lambda: (decode_q8(raw) for raw in self._row_blocks(names)), rows, cols, self.compute_dtype
            )
        bits = gguf.GGML_QUANT_SIZES[qtype][1] * 8 / gguf.GGML_QUANT_SIZES[qtype][0]
        if qtype not in FLOAT and (bits > 4.6 or cols % GROUP):  # int8 rows: one row block at a time
            self._notice(qtype, "int8")
            self.kinds[module_name] = f"int8 ({qtype.name}, requantized)"
            floats = (decode_rows(raw, qtype) for raw in self._row_blocks(names, rows=2048))
            return Int8WeightOnlyLinear.from_rows(floats, rows, cols, self.compute_dtype)
        w = torch.cat([self.reader.read(n) for n in names]).float()
        if qtype in FLOAT:
            self.kinds[module_name] = f"dense {self.dtype} ({qtype.name})"
            lin = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
            lin.weight = nn.Parameter(w.to(self.dtype), requires_grad=False)
            return lin
        self._notice(qtype, "int4/g32")
        self.kinds[module_name] = f"int4/g32 ({qtype.name}, requantized)"
        lin = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
        lin.weight = nn.Parameter(w, requires_grad=False)
        return Int4WeightOnlyLinear.from_linear(lin, GROUP, self.compute_dtype)

    def view(self, name: str) -> torch.Tensor:
        """The tensor's raw blocks [rows, bytes per row] as a uint8 tensor: an anonymous copy
        (``anonymous_copy``), or with ``LHAMA_WEIGHTS_MMAP=1`` a view of the file's map
        (read-only: nothing writes to it; the map lives as long as the tensor)."""
        if name not in self.views:
            self.views[name] = self._hold(self.reader.blocks(name))
        return self.views[name]

    def _slot(self, blocks: np.ndarray) -> np.ndarray:
        """Where the copy of ``blocks`` goes: the next slice of the load's arena (made on first
        use, as large as the file: only what is written becomes resident)."""
        if self.arena is None:
            self.arena = HugePageArena(
                os.path.getsize(self.reader.path) + HugePageArena.ALIGN * len(self.reader.shapes)
            )
        slot = self.arena.take(blocks.shape, blocks.nbytes)
        return slot if slot is not None else _huge_page_mapping(blocks.nbytes).reshape(blocks.shape)

    def _hold(self, blocks: np.ndarray) -> torch.Tensor:
        """``blocks`` (a view of the map) as the tensor a module keeps."""
        if self.copy_blocks and self.copy_spent < self.copy_budget:
            start = time.perf_counter()
            copy = torch.from_numpy(_copy_rows(self._slot(blocks), blocks, self.reader.drop_pages))
            self.copy_spent += time.perf_counter() - start
            return copy
        self.mapped.append(blocks)
        with warnings.catch_warnings():  # "non-writable NumPy array": by design
            warnings.simplefilter("ignore", UserWarning)
            view = torch.from_numpy(blocks)
        if self.copy_blocks and background_copies_on():  # copied after the load (``WeightCopies``)
            self.late.append((view, blocks, self._slot(blocks)))
        return view

    def start_late_copies(self, model: nn.Module) -> WeightCopies | None:
        """The background copies of the tensors left in the map by the budget (None: none left,
        or ``LHAMA_WEIGHTS_BACKGROUND_COPY=0``)."""
        if not self.late:
            return None
        held = [m for m in model.modules() if isinstance(m, (BlockLinear, BlockEmbedding))]
        copies = WeightCopies(self.late, held, self.reader.drop_pages)
        self.late = []
        _COPIES[model] = copies
        return copies.start()

    def stacked_blocks(self, names: list[str]) -> torch.Tensor | list[torch.Tensor]:
        """The row stack of ``names``' blocks: one tensor when they lie back to back in the file,
        else the list of the parts' tensors (``BlockLinear`` multiplies them in one call; each is
        an anonymous copy or, with ``LHAMA_WEIGHTS_MMAP=1``, a view of the map: ``view``)."""
        if len(names) == 1:
            return self.view(names[0])
        parts = [self.reader.blocks(n) for n in names]
        rows = sum(p.shape[0] for p in parts)
        if all(p.shape[1] == parts[0].shape[1] and p.flags.c_contiguous for p in parts) and all(
            b.ctypes.data == a.ctypes.data + a.nbytes for a, b in zip(parts, parts[1:], strict=False)
        ):
            span = np.lib.stride_tricks.as_strided(parts[0], (rows, parts[0].shape[1]), parts[0].strides)
            return self._hold(span)
        return [self.view(n) for n in names]

    def _exact_on_cpu_tiles(self, names: list[str], qtype, module_name: str) -> nn.Module | None:
        """Q4_0/Q4_1/Q8_0 rows packed for the CPU kernel in whole tensors straight from the map
        (numpy views of the blocks, no unpacked int32 copy); None where the per-block path applies
        (another kernel layout, or parts whose rows do not end on the kernel's 64-row tiles)."""
        if (
            qtype not in EXACT
            or self.compute_dtype != torch.bfloat16
            or kernel_layout(torch.device("cpu"), self.compute_dtype, GROUP) != "cpu"
        ):
            return None
        shapes = [self.reader.shapes[n] for n in names]
        if any(s[0] % CPU_TILE_ROWS for s in shapes[:-1]) or shapes[0][1] % GROUP or shapes[-1][0] % 16:
            return None
        if pack_cpu_nibble_blocks(np.zeros((16, 1, 16), dtype=np.uint8)) is None:  # this build packs otherwise
            return None
        rows, cols = sum(s[0] for s in shapes), shapes[0][1]
        halves = 2 if qtype == Q.Q8_0 else 1
        packed = [torch.empty(rows, cols // 2, dtype=torch.uint8) for _ in range(halves)]
        d_all = torch.empty(rows, cols // GROUP)
        m_all = torch.empty(rows, cols // GROUP) if qtype == Q.Q4_1 else None
        row = 0
        for n in names:
            total = self.reader.shapes[n][0]
            # 4096-row chunks (whole 64-row tiles) bound the temporaries to a few MB per tensor
            for start in range(0, total, 4096):
                raw = self.reader.blocks(n, start, min(total, start + 4096))
                blocks = raw.view(BLOCK_DTYPES[qtype])  # [rows, K / 32] records over the map
                span = slice(row, row + raw.shape[0])
                d_all[span] = torch.from_numpy(blocks["d"].astype(np.float32))
                if qtype == Q.Q8_0:
                    q = np.ascontiguousarray(blocks["qs"]).reshape(raw.shape[0], -1)
                    packed[0][span] = pack_cpu_rows(((q >> 4) + 8).view(np.uint8))
                    packed[1][span] = pack_cpu_rows((q & 15).view(np.uint8))
                else:
                    if m_all is not None:
                        m_all[span] = torch.from_numpy(blocks["m"].astype(np.float32))
                    packed[0][span] = pack_cpu_nibble_blocks(blocks["qs"])
                self.reader.drop_pages(raw)
                row += raw.shape[0]
        if qtype == Q.Q8_0:
            self.kinds[module_name] = KIND_Q8
            return SplitInt8Linear(
                Int4WeightOnlyLinear.from_cpu_packed(packed[0], 16 * d_all, -128 * d_all, GROUP, self.compute_dtype),
                Int4WeightOnlyLinear.from_cpu_packed(
                    packed[1], d_all, torch.zeros_like(d_all), GROUP, self.compute_dtype
                ),
            )
        self.kinds[module_name] = kind_q4(qtype)
        m_all = -8 * d_all if m_all is None else m_all
        return Int4WeightOnlyLinear.from_cpu_packed(packed[0], d_all, m_all, GROUP, self.compute_dtype)

    def _row_blocks(self, names: list[str], rows: int = 1024):
        """Raw block rows of ``names`` stacked, ``rows`` at a time, straight from the map."""
        for n in names:
            total = self.reader.shapes[n][0]
            for start in range(0, total, rows):
                raw = self.reader.blocks(n, start, min(total, start + rows))
                yield raw
                self.reader.drop_pages(raw)
                release_freed_memory()  # the block's temporaries, before the next one's

    @staticmethod
    def _notice(qtype, target: str) -> None:
        if qtype.name not in _NOTICED:
            _NOTICED.add(qtype.name)
            log.warning(
                "%s weights have no exact kernel layout in lhama: requantized to %s (nearest; docs/quantization.md)",
                qtype.name,
                target,
            )

    def norm_weight(self, name: str) -> nn.Parameter:
        return nn.Parameter(self.reader.read(name).to(self.dtype), requires_grad=False)

    def embedding(self) -> nn.Module:
        name = "tok_embeddings.weight"
        qtype = self.reader.qtype(name)
        if qtype in FLOAT:
            emb = nn.Embedding(*self.reader.shapes[name], device="meta")
            emb.weight = nn.Parameter(self.reader.read(name).to(self.dtype), requires_grad=False)
            return emb
        if self.raw_blocks:  # the map's own blocks, shared with a tied BlockLinear head
            self.kinds["tok_embeddings"] = f"{qtype.name} blocks (exact, the file's own; rows decoded per lookup)"
            return BlockEmbedding(self.view(name), qtype, self.reader.args.dim, self.dtype)
        # A copy, made a row block at a time so that the file pages just read leave the
        # resident set before the next ones come in (else both count at the peak).
        raw = self.reader.blocks(name)
        blocks = torch.empty(raw.shape, dtype=torch.uint8)
        for start in range(0, raw.shape[0], 4096):
            part = raw[start : start + 4096]
            blocks[start : start + part.shape[0]].numpy()[:] = part
            self.reader.drop_pages(part)
        self.kinds["tok_embeddings"] = f"{qtype.name} blocks (exact, rows decoded per lookup)"
        return BlockEmbedding(blocks, qtype, self.reader.args.dim, self.dtype)


# Weight inits the skeleton's modules run; on meta tensors each went through torch's Python
# decompositions (the 211 Linears' kaiming_uniform_: 40-70 ms of every load).
_INITS = (nn.init.normal_, nn.init.kaiming_uniform_, nn.init.uniform_)


class _ParametersOnMeta(TorchFunctionMode):
    """Build the model's skeleton with its parameters on the meta device (each is replaced by a
    kernel-layout module) and its small buffers (RoPE frequencies) computed on the CPU as usual.
    ``with torch.device("meta")`` would run ``normal_`` (the embedding's init) and the RoPE
    formula through torch's Python meta kernels: their first use imports them, 4 s and 74 MB."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.empty:  # what nn.Linear / nn.Embedding allocate their weights with
            kwargs["device"] = "meta"
        elif func in _INITS:  # a meta tensor: nothing to initialise
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``). Repacking frees a
    few MB of temporaries per tensor; glibc raises its mmap threshold after such frees and then
    keeps them in the heap, so without this the load's peak RSS grew ~2x past the model's size."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (macOS, musl): nothing to trim
        return None


_LIBC = _load_libc()


def gguf_tensors(model: Transformer) -> tuple[dict[str, torch.Tensor], dict[str, tuple[np.ndarray, int]]]:
    """A loaded quantized model as what ``write_gguf`` takes: (float tensors, {name: (blocks,
    ggml type)}). ``BlockLinear`` / ``BlockEmbedding`` weights go back as the file's own bytes
    (stacks split by rows), so a GGUF written from them has every block bit-identical to the
    source; other modules (a repacked fallback, float norms) as their exact fp32 values."""
    args, floats, raw = model.args, {}, {}
    parts = {"wqkv": ("wq", "wk", "wv"), "w13": ("w1", "w3")}
    for name, mod in model.named_modules():
        base = getattr(mod, "base", None)  # a LoRA side path keeps its base module's weights
        if base is not None and not isinstance(mod, (BlockLinear, BlockEmbedding)):
            continue
        parent, _, leaf = name.rpartition(".")
        if ".base" in name:
            parent, leaf = parent.rpartition(".")[0], parent.rpartition(".")[2]
        if isinstance(mod, BlockEmbedding):
            raw["tok_embeddings.weight"] = (mod.blocks.numpy(), mod.qtype)
        elif isinstance(mod, (BlockLinear, Int4WeightOnlyLinear, Int8WeightOnlyLinear, SplitInt8Linear, nn.Linear)):
            if name.endswith((".hi", ".lo")) or (name == "output" and args.tie_embeddings):
                continue
            names = [f"{parent}.{p}.weight" for p in parts.get(leaf, (leaf,))] if parent else [f"{leaf}.weight"]
            row = 0
            for n in names:
                rows = projection_rows(n, args)
                if isinstance(mod, BlockLinear):
                    whole = mod.blocks if mod.n_parts == 1 else torch.cat(mod.parts)
                    raw[n] = (whole[row : row + rows].numpy(), mod.qtype)
                else:
                    w = mod.weight if isinstance(mod, nn.Linear) else mod.dequantize()
                    floats[n] = w[row : row + rows].float()
                row += rows
    for name, t in model.state_dict().items():
        if name.endswith("norm.weight"):
            floats[name] = t.float()
    return floats, raw


def projection_rows(name: str, args) -> int:
    """Output rows of the file tensor ``name`` (``layers.N.attention.wk.weight``, ``output.weight``)."""
    leaf = name.rsplit(".", 2)[-2]
    if leaf in ("wk", "wv"):
        return args.n_kv_heads * args.head_dim
    if leaf == "wq":
        return args.n_heads * args.head_dim
    if leaf in ("w1", "w3"):
        return args.hidden_dim
    if leaf == "output":
        return args.vocab_size
    return args.dim  # wo, w2


def _same_exact_type(reader: GGUFCheckpointReader, names: list[str]) -> bool:
    types = {reader.qtype(n) for n in names}
    return len(types) == 1 and types.pop() in EXACT


@contextlib.contextmanager
def _reader_of(source):
    """``source`` itself when it is an open reader (left open), else the checkpoint's validated
    reader, closed on exit: one load opens, parses and validates the file's headers once."""
    from lhama.checkpoints.loader import open_reader
    from lhama.checkpoints.reader import CheckpointReader

    if isinstance(source, CheckpointReader):
        yield source
        return
    with open_reader(source) as reader:
        yield reader


def load_quantized(source, *, max_seq_len: int | None = None) -> tuple[Transformer, QuantReport] | None:
    """The model of a quantized GGUF file (a path, or its open reader) in kernel layouts, or None
    for any other checkpoint (which then loads through ``read_checkpoint``)."""
    if not is_quantized_checkpoint(source):
        return None
    with _reader_of(source) as reader:
        return load_quantized_gguf(reader, max_seq_len=max_seq_len)


@functools.cache
def cpu_computes_bf16() -> bool:
    """True when the CPU has bf16 dot-product instructions (``avx512_bf16``, or AMX's
    ``amx_bf16``): PyTorch's bf16 matmuls then run natively; elsewhere each one converts to fp32
    and is slower than fp32 weights. Linux flags; False where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def sixteen_bit_dtype(source) -> torch.dtype | None:
    """For a GGUF file (a path, or its open reader) whose linears are F16/BF16, the dtype a CPU
    load with no flags keeps them in: bfloat16 where the CPU computes bf16 natively
    (``cpu_computes_bf16``); elsewhere None (the caller's fp32), said once in one line. None for
    any other checkpoint."""
    if not _is_gguf(source):
        return None
    with _reader_of(source) as reader:
        types = [reader.qtype(n) for n, s in reader.shapes.items() if len(s) == 2]
    sixteen = [t for t in types if t in (Q.F16, Q.BF16)]
    if not sixteen or len(sixteen) * 2 <= len(types):
        return None
    if cpu_computes_bf16():
        return torch.bfloat16
    name = sixteen[0].name
    if name not in _NOTICED:
        _NOTICED.add(name)
        log.warning(
            "%s weights: this CPU has no native bf16 (avx512_bf16/amx_bf16), so they are computed in "
            "fp32 (fallback; --dtype bfloat16 keeps them 16-bit; docs/quantization.md)",
            name,
        )
    return None


def _is_gguf(source) -> bool:
    from lhama.checkpoints.loader import detect_format
    from lhama.checkpoints.reader import CheckpointReader

    return source.format == "gguf" if isinstance(source, CheckpointReader) else detect_format(source) == "gguf"


def is_quantized_checkpoint(source) -> bool:
    """A GGUF file (a path, or its open reader) whose linear weights are in quantized ggml types
    (headers only)."""
    if not _is_gguf(source):
        return False
    with _reader_of(source) as reader:
        return is_quantized_gguf(reader)


@torch.no_grad()
def load_quantized_gguf(
    reader: GGUFCheckpointReader,
    *,
    dtype: torch.dtype = torch.float32,
    compute_dtype: torch.dtype = torch.bfloat16,
    max_seq_len: int | None = None,
    raw_blocks: bool | None = None,
) -> tuple[Transformer, QuantReport]:
    """(model on the CPU, report) with every linear in a kernel layout; see the module docstring.
    ``raw_blocks``: Q4_0/Q4_1/Q8_0 as ``BlockLinear`` over the file's map (default: where
    ``lhama.quant.ggml``'s compiled kernels are available), else repacked for the int4 kernels."""
    threads = torch.get_num_threads()
    # Repacking is thousands of small ops: one thread each avoids OpenMP's hand-offs, which on a
    # busy 2-core machine made the load 7x slower than the ops themselves.
    torch.set_num_threads(1)
    try:
        raw = ggml_available() if raw_blocks is None else raw_blocks
        return _build(reader, dtype, compute_dtype, max_seq_len, raw)
    finally:
        torch.set_num_threads(threads)


def _build(
    reader: GGUFCheckpointReader, dtype, compute_dtype, max_seq_len, raw_blocks: bool
) -> tuple[Transformer, QuantReport]:
    args = reader.args.with_(max_seq_len=max_seq_len) if max_seq_len else reader.args
    with _ParametersOnMeta():
        model = Transformer(args)
    b = _Builder(reader, dtype, compute_dtype, raw_blocks=raw_blocks)
    reader.drop_pages()  # the header and vocabulary, read through the map before the weights
    # Order matters for the peak: the head's row blocks come and go while little else is held,
    # and the embedding (copied straight into its final buffer, no temporaries) comes last.
    head = "tok_embeddings.weight" if args.tie_embeddings else "output.weight"
    model.output = b.linear([head], "output")
    for i, layer in enumerate(model.layers):
        p = f"layers.{i}."
        for parent, parts, fused in (
            (layer.attention, ("wq", "wk", "wv"), "wqkv"),
            (layer.feed_forward, ("w1", "w3"), "w13"),
        ):
            sub = "attention" if fused == "wqkv" else "feed_forward"
            names = [f"{p}{sub}.{n}.weight" for n in parts]
            if _same_exact_type(reader, names):
                setattr(parent, fused, b.linear(names, f"{p}{sub}.{fused}"))
                for n in parts:
                    delattr(parent, n)
            else:
                for n, full in zip(parts, names, strict=True):
                    setattr(parent, n, b.linear([full], full.removesuffix(".weight")))
        layer.attention.wo = b.linear([f"{p}attention.wo.weight"], f"{p}attention.wo")
        layer.feed_forward.w2 = b.linear([f"{p}feed_forward.w2.weight"], f"{p}feed_forward.w2")
        layer.attention_norm.weight = b.norm_weight(f"{p}attention_norm.weight")
        layer.ffn_norm.weight = b.norm_weight(f"{p}ffn_norm.weight")
        # What the chunk drops leave: the pages tensors share at their edges and the norms' reads,
        # each faulting in its neighbours (fault-around): ~0.35 MiB a layer, 10 MiB over the
        # default model's 30 layers, all of it above the RSS after loading until the end.
        reader.drop_pages()
        release_freed_memory()
    model.norm.weight = b.norm_weight("norm.weight")
    reader.drop_pages()  # norms and headers read through the map: nothing stays resident
    release_freed_memory()
    model.tok_embeddings = b.embedding()
    reader.drop_pages()
    release_freed_memory()
    b.map_weights()
    b.start_late_copies(model)
    model.quant_config = QuantConfig("int4", GROUP, compute_dtype=compute_dtype)
    report = QuantReport(
        model.quant_config, args.n_params() * torch.finfo(dtype).bits // 8, weight_bytes(model), dict(b.kinds)
    )
    return model.eval(), report
