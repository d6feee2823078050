"""Microbenchmark: ``lhama.quant.ggml.block_linear`` (matmul on raw GGUF blocks) against the int4
path the loader used before it (``Int4WeightOnlyLinear``; the Q8_0 head as ``SplitInt8Linear``,
two int4 halves; a Q6_K head as ``Int8WeightOnlyLinear``) and fp32 ``F.linear``, on the default
model's (SmolLM2-135M, Q4_1 body, Q8_0 tied head) or Llama 3.2 1B's (Q4_0 body, Q6_K tied head,
``--shapes 1b``) matmul shapes. Per call: process CPU time at one thread (a busy machine
inflates it less than wall clock), the fastest single call's wall clock at more; best of
``--rounds``, the three alternated in each round. GB/s is the weight's block bytes per call
time. ``--cold-mb`` cycles ``block_linear`` through copies of the blocks totalling that many MB
(from DRAM, as in a decode step, whose weights are far larger than the L3; the other two columns
stay warm); the same run measures one thread's read bandwidth (``torch.sum`` of 256 MB of fp32)
and the bench's own limit (bench/run.py's ``memory_bandwidth`` at one thread), and each
GB/s is also given as a share of that limit.

``--file model.gguf`` takes the weights from the file itself, as ``load_model`` keeps them: views
of its map, wq|wk|wv and w1|w3 as lists of parts, the tied Q6_K/Q8_0 head; the call cycles
through the file's layers (from DRAM, as a decode step reads them) and the int4/fp32 columns are
left out. ``--memory anon`` copies those tensors into private anonymous memory first (numpy
asks for transparent huge pages from 4 MB): the same kernels read the page cache's pages 20-30%
slower on the 2-core Zen 4 VM (docs/performance.md).

    python bench/ggml_kernels.py [--shapes default|1b] [--threads 1 2] [--rows 1 8 32 512]
        [--cold-mb 256] [--file model.gguf [--memory map|anon]] [--impls ggml int4 fp32] [--json out.json]

``LHAMA_GGML_ISA=avx2`` (or ``avx512vnni``, ``scalar``) forces a lower kernel body for the whole
process (the 256-bit bodies of laptops without AVX-512, measured on an AVX-512 machine);
``LHAMA_GGML_LIB=path.so`` loads another build of the kernels (A/B runs of two versions, with
``--impls ggml`` alone).

The "per token" line is one decode step's matmuls: layers x (w1|w3, w2, wq|wk|wv, wo) + head.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if (REPO / "src" / "lhama").is_dir():
    sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lhama.quant import Int4WeightOnlyLinear, ggml  # noqa: E402
from lhama.quant.blocks import SplitInt8Linear  # noqa: E402
from lhama.quant.int8 import Int8WeightOnlyLinear  # noqa: E402

Q4_0, Q4_1, Q8_0, Q6_K = 2, 3, 8, 14
# (name, N, K, qtype, times per decode token)
SHAPES = {
    "default": [
        ("w1|w3", 3072, 576, Q4_1, 30),
        ("w2", 576, 1536, Q4_1, 30),
        ("wq|wk|wv", 960, 576, Q4_1, 30),
        ("wo", 576, 576, Q4_1, 30),
        ("head (Q8_0)", 49152, 576, Q8_0, 1),
    ],
    "1b": [
        ("w1|w3", 16384, 2048, Q4_0, 16),
        ("w2", 2048, 8192, Q4_0, 16),
        ("wq|wk|wv", 3072, 2048, Q4_0, 16),
        ("wo", 2048, 2048, Q4_0, 16),
        ("head (Q6_K)", 128256, 2048, Q6_K, 1),
    ],
}
FP32_MAX_WEIGHTS = 64 << 20  # no fp32 copy of the 1B head (1 GB)


def random_blocks(rng, n: int, k: int, qtype: int) -> np.ndarray:
    per, bb = ggml.SIZES[qtype]
    nb = k // per
    raw = rng.integers(0, 256, size=(n, nb, bb), dtype=np.uint8)
    if qtype == Q6_K:
        raw[..., 208:210] = rng.uniform(0.0001, 0.001, size=(n, nb, 1)).astype(np.float16).view(np.uint8)
        return raw.reshape(n, nb * bb)
    scales = rng.uniform(0.001, 0.02, size=(n, nb, 2 if qtype == Q4_1 else 1)).astype(np.float16)
    scales[..., 1:] *= -4
    raw[..., : scales.shape[-1] * 2] = scales.view(np.uint8).reshape(n, nb, -1)
    return raw.reshape(n, nb * bb)


def int4_module(blocks: torch.Tensor, qtype: int):
    """The module the loader built for these blocks before ggml kernels (exact same weights; a
    Q6_K head: int8 per channel, requantized)."""
    n = blocks.shape[0]
    if qtype == Q6_K:
        k = blocks.shape[1] // 210 * 256
        rows = (ggml.dequantize(blocks[i : i + 4096], qtype) for i in range(0, n, 4096))
        return Int8WeightOnlyLinear.from_rows(rows, n, k)
    k = blocks.shape[1] // ggml.QTYPES[qtype] * 32
    b = blocks.reshape(n, k // 32, -1)
    d = b[..., 0:2].contiguous().view(torch.float16)[..., 0]
    if qtype == Q8_0:
        return SplitInt8Linear.from_q8(b[..., 2:].contiguous().view(torch.int8).reshape(n, k), d)
    m = -8 * d.float() if qtype == Q4_0 else b[..., 2:4].contiguous().view(torch.float16)[..., 0]
    nib = b[..., 2:] if qtype == Q4_0 else b[..., 4:]
    q = torch.cat((nib & 15, nib >> 4), dim=-1).reshape(n, k)
    return Int4WeightOnlyLinear.from_groups(q, d, m, 32)


def read_bandwidth() -> float:
    """One thread's read rate, GB/s: the best of 5 ``sum`` of a 256 MB fp32 tensor."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    a = torch.ones(64 << 20)
    best = float("inf")
    for _ in range(5):  # process CPU time, as the one-thread columns (a shared machine deschedules a process)
        t = time.process_time()
        a.sum()
        best = min(best, time.process_time() - t)
    torch.set_num_threads(threads)
    return a.numel() * 4 / best / 1e9


def copy_limit() -> float:
    """bench/run.py's bound on streaming weights at one thread (its ``memory_bandwidth``)."""
    from run import memory_bandwidth  # bench/ is this script's directory, so it is on sys.path

    return memory_bandwidth(1)[0]


FILE_SHAPES = [  # (name, GGUF tensors of a layer, times per decode token: 1 per layer)
    ("wq|wk|wv", ("attn_q", "attn_k", "attn_v")),
    ("wo", ("attn_output",)),
    ("w1|w3", ("ffn_gate", "ffn_up")),
    ("w2", ("ffn_down",)),
]


def file_weights(path: str, memory: str):
    """[(name, [per-layer list of part tensors], N, K, qtype, per_token)] from a GGUF file's own
    tensors: views of its map (``memory='map'``) or private anonymous copies."""
    import gguf  # noqa: PLC0415

    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}

    def tensor(name: str) -> torch.Tensor:
        t = tensors[name]
        a = np.asarray(t.data).reshape(int(t.shape[1]), -1)
        if memory == "anon":
            a = a.copy()  # numpy: a fresh private allocation (madvised for huge pages from 4 MB)
        with warnings.catch_warnings():  # a read-only map: the kernels only read it
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(a)

    layers = sorted({int(n.split(".")[1]) for n in tensors if n.startswith("blk.")})
    out = []
    for name, parts in FILE_SHAPES:
        per_layer = [[tensor(f"blk.{i}.{p}.weight") for p in parts] for i in layers]
        first = per_layer[0]
        qt = int(tensors[f"blk.0.{parts[0]}.weight"].tensor_type)
        n = sum(b.shape[0] for b in first)
        k = first[0].shape[1] // ggml.SIZES[qt][1] * ggml.SIZES[qt][0]
        out.append((name, per_layer, n, k, qt, len(layers)))
    head = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    hq = int(tensors[head].tensor_type)
    hb = tensor(head)
    k = hb.shape[1] // ggml.SIZES[hq][1] * ggml.SIZES[hq][0]
    out.append((f"head ({gguf.GGMLQuantizationType(hq).name})", [[hb]], hb.shape[0], k, hq, 1))
    return out


def cpu_us(fn, calls: int, clock=time.process_time) -> float:
    """Mean process CPU time of ``calls`` calls; with ``time.perf_counter``, the fastest single
    call's wall time (on a shared machine the calls that ran with every thread on a core)."""
    if clock is time.perf_counter:
        best = float("inf")
        for _ in range(calls):
            t = clock()
            fn()
            best = min(best, clock() - t)
        return best * 1e6
    t = clock()
    for _ in range(calls):
        fn()
    return (clock() - t) / calls * 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", choices=sorted(SHAPES), default="default")
    p.add_argument("--cold-mb", type=float, default=0, help="cycle block_linear through this many MB of copies")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32, 512])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget", type=float, default=0.15, help="CPU seconds per measurement")
    p.add_argument("--file", help="take the weights from this GGUF file (views of its map, parts as parts)")
    p.add_argument("--memory", choices=["map", "anon"], default="map", help="--file: the map's pages or copies")
    p.add_argument("--json", type=Path)
    p.add_argument(
        "--impls",
        nargs="+",
        choices=["ggml", "int4", "fp32"],
        default=["ggml", "int4", "fp32"],
        help="columns to measure (ggml alone: A/B runs of two kernel builds, LHAMA_GGML_LIB=...)",
    )
    args = p.parse_args(argv)

    print(f"ggml kernels: {'available' if ggml.available() else 'reference'}, isa {ggml.isa()}")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, load {os.getloadavg()[0]:.1f}")
    bandwidth, limit = read_bandwidth(), copy_limit()
    print(f"one thread reads {bandwidth:.1f} GB/s (sum of 256 MB); bench/run.py's limit (numpy copy) {limit:.1f} GB/s")
    rng = np.random.default_rng(0)
    results = []
    if args.file:
        specs = file_weights(args.file, args.memory)
        print(f"weights: {args.file} ({'views of the map' if args.memory == 'map' else 'anonymous copies'})")
    else:
        specs = [(name, None, n, k, qt, per_token) for name, n, k, qt, per_token in SHAPES[args.shapes]]
    for name, layers, n, k, qt, per_token in specs:
        if layers is None:
            blocks = torch.from_numpy(random_blocks(rng, n, k, qt))
            copies = [blocks] + [blocks.clone() for _ in range(int(args.cold_mb * 1e6 / blocks.numel()))]
            mod = int4_module(blocks, qt) if "int4" in args.impls else None
            w32 = ggml.dequantize(blocks, qt) if n * k <= FP32_MAX_WEIGHTS and "fp32" in args.impls else None
        else:  # the file's layers, in turn; parts as a list (one part: the tensor itself)
            copies = [ps if len(ps) > 1 else ps[0] for ps in layers]
            blocks = torch.empty(sum(b.numel() for b in layers[0]), dtype=torch.uint8)  # its size only
            mod = w32 = None
        for rows in args.rows:
            x = torch.randn(rows, k)
            cycle = iter(())

            def ggml_call(x=x, q=qt, copies=copies):
                nonlocal cycle
                b = next(cycle, None)
                if b is None:
                    cycle = iter(copies)
                    b = next(cycle)
                return ggml.block_linear(x, b, q)

            impls = {"ggml": ggml_call}
            if mod is not None:
                impls["int4"] = lambda x=x, m=mod: m(x)
            if w32 is not None:
                impls["fp32"] = lambda x=x, w=w32: F.linear(x, w)
            for threads in args.threads:
                torch.set_num_threads(threads)
                # One thread: process CPU time. More: the fastest call's wall clock (idle OpenMP
                # workers spin, so the process CPU time of a parallel call counts the wait on a busy
                # machine too, and a worker descheduled mid-call stretches that call's wall time).
                clock = time.process_time if threads == 1 else time.perf_counter
                calls = {}
                for key, fn in impls.items():  # warm-up and calibration
                    fn()
                    calls[key] = max(1, int(args.budget / max(cpu_us(fn, 1) * 1e-6, 1e-6)))
                best = dict.fromkeys(impls, float("inf"))
                for _ in range(args.rounds):
                    for key, fn in impls.items():
                        best[key] = min(best[key], cpu_us(fn, calls[key], clock))
                for key in ("int4", "fp32"):
                    best.setdefault(key, float("nan"))
                gbs = blocks.numel() / best["ggml"] / 1e3
                row = {"shape": name, "N": n, "K": k, "rows": rows, "threads": threads, "per_token": per_token}
                row.update({f"{key}_us": round(v, 1) for key, v in best.items()})
                row["ggml_GBps"] = round(gbs, 2)
                row["pct_limit"] = round(100 * gbs / limit, 1)
                results.append(row)
                print(
                    f"{name:12s} {n:6d}x{k:<5d} M={rows:<4d} t={threads}  ggml {best['ggml']:9.1f} ({gbs:5.1f} GB/s, "
                    f"{100 * gbs / limit:3.0f}% of limit)  int4 {best['int4']:9.1f}  fp32 {best['fp32']:9.1f} us "
                    f"{'CPU' if threads == 1 else 'wall'}",
                    flush=True,
                )
    for threads in args.threads:
        for rows in args.rows:
            sel = [r for r in results if r["threads"] == threads and r["rows"] == rows]
            tot = {key: sum(r[f"{key}_us"] * r["per_token"] for r in sel) / 1000 for key in ("ggml", "int4", "fp32")}
            print(
                f"per step ({rows} rows, {threads} thread(s)): ggml {tot['ggml']:.2f} ms, "
                f"int4 {tot['int4']:.2f} ms, fp32 {tot['fp32']:.2f} ms {'CPU' if threads == 1 else 'wall'}"
            )
    if args.json:
        meta = {"isa": ggml.isa(), "torch": torch.__version__, "load": os.getloadavg()[0], "read_GBps": bandwidth}
        meta.update(copy_limit_GBps=limit, file=args.file, memory=args.memory if args.file else None)
        args.json.write_text(
            json.dumps({**meta, "shapes": args.shapes, "cold_mb": args.cold_mb, "results": results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
