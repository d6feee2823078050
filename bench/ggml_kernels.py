"""Microbenchmark: ``lhama.quant.ggml.block_linear`` (matmul on raw GGUF blocks) against the int4
path the loader used before it (``Int4WeightOnlyLinear``; the Q8_0 head as ``SplitInt8Linear``,
two int4 halves; a Q6_K head as ``Int8WeightOnlyLinear``) and fp32 ``F.linear``, on the default
model's (SmolLM2-135M, Q4_1 body, Q8_0 tied head) or Llama 3.2 1B's (Q4_0 body, Q6_K tied head,
``--shapes 1b``) matmul shapes. Per call: process CPU time at one thread (a busy machine
inflates it less than wall clock), the fastest single call's wall clock at more; best of
``--rounds``, the three alternated in each round. GB/s is the weight's block bytes per call
time. ``--cold-mb`` cycles ``block_linear`` through copies of the blocks totalling that many MB
(from DRAM, as in a decode step, whose weights are far larger than the L3; the other two columns
stay warm); the same run measures one thread's read bandwidth (``torch.sum`` of 256 MB of fp32).

    python bench/ggml_kernels.py [--shapes default|1b] [--threads 1 2] [--rows 1 8 32 512]
        [--cold-mb 256] [--json out.json]

The "per token" line is one decode step's matmuls: layers x (w1|w3, w2, wq|wk|wv, wo) + head.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
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
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    print(f"ggml kernels: {'available' if ggml.available() else 'reference'}, isa {ggml.isa()}")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, load {os.getloadavg()[0]:.1f}")
    bandwidth = read_bandwidth()
    print(f"one thread reads {bandwidth:.1f} GB/s (sum of 256 MB)")
    rng = np.random.default_rng(0)
    results = []
    for name, n, k, qt, per_token in SHAPES[args.shapes]:
        blocks = torch.from_numpy(random_blocks(rng, n, k, qt))
        copies = [blocks] + [blocks.clone() for _ in range(int(args.cold_mb * 1e6 / blocks.numel()))]
        mod = int4_module(blocks, qt)
        w32 = ggml.dequantize(blocks, qt) if n * k <= FP32_MAX_WEIGHTS else None
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

            impls = {
                "ggml": ggml_call,
                "int4": lambda x=x, m=mod: m(x),
                "fp32": (lambda x=x, w=w32: F.linear(x, w)) if w32 is not None else (lambda: None),
            }
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
                if w32 is None:
                    best["fp32"] = float("nan")
                gbs = blocks.numel() / best["ggml"] / 1e3
                row = {"shape": name, "N": n, "K": k, "rows": rows, "threads": threads, "per_token": per_token}
                row.update({f"{key}_us": round(v, 1) for key, v in best.items()})
                row["ggml_GBps"] = round(gbs, 2)
                results.append(row)
                print(
                    f"{name:12s} {n:6d}x{k:<5d} M={rows:<4d} t={threads}  ggml {best['ggml']:9.1f} ({gbs:5.1f} GB/s)  "
                    f"int4 {best['int4']:9.1f}  fp32 {best['fp32']:9.1f} us {'CPU' if threads == 1 else 'wall'}",
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
        args.json.write_text(
            json.dumps({**meta, "shapes": args.shapes, "cold_mb": args.cold_mb, "results": results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
