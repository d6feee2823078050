"""Microbenchmark: ``lhama.quant.ggml.block_linear`` (matmul on raw GGUF blocks) against the int4
path the loader used before it (``Int4WeightOnlyLinear``; the Q8_0 head as ``SplitInt8Linear``,
two int4 halves) and fp32 ``F.linear``, on the default model's (SmolLM2-135M, Q4_1 body, Q8_0
tied head) matmul shapes. Per call: process CPU time at one thread (a busy machine inflates it
less than wall clock), the fastest single call's wall clock at more; best of ``--rounds``, the
three alternated in each round.

    python bench/ggml_kernels.py [--threads 1 2] [--rows 1 8 32 512] [--json out.json]

The "per token" line is one decode step's matmuls: 30 layers x (w1|w3, w2, wq|wk|wv, wo) + head.
"""

from __future__ import annotations

import argparse
import json
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

Q4_1, Q8_0 = 3, 8
# (name, N, K, qtype, times per decode token)
SHAPES = [
    ("w1|w3", 3072, 576, Q4_1, 30),
    ("w2", 576, 1536, Q4_1, 30),
    ("wq|wk|wv", 960, 576, Q4_1, 30),
    ("wo", 576, 576, Q4_1, 30),
    ("head (Q8_0)", 49152, 576, Q8_0, 1),
]


def random_blocks(rng, n: int, k: int, qtype: int) -> np.ndarray:
    nb, bb = k // 32, ggml.QTYPES[qtype]
    raw = rng.integers(0, 256, size=(n, nb, bb), dtype=np.uint8)
    scales = rng.uniform(0.001, 0.02, size=(n, nb, 2 if qtype == Q4_1 else 1)).astype(np.float16)
    scales[..., 1:] *= -4
    raw[..., : scales.shape[-1] * 2] = scales.view(np.uint8).reshape(n, nb, -1)
    return raw.reshape(n, nb * bb)


def int4_module(blocks: torch.Tensor, qtype: int):
    """The module the loader built for these blocks before ggml kernels (exact same weights)."""
    n, k = blocks.shape[0], blocks.shape[1] // ggml.QTYPES[qtype] * 32
    b = blocks.reshape(n, k // 32, -1)
    d = b[..., 0:2].contiguous().view(torch.float16)[..., 0]
    if qtype == Q8_0:
        return SplitInt8Linear.from_q8(b[..., 2:].contiguous().view(torch.int8).reshape(n, k), d)
    m = b[..., 2:4].contiguous().view(torch.float16)[..., 0]
    nib = b[..., 4:]
    q = torch.cat((nib & 15, nib >> 4), dim=-1).reshape(n, k)
    return Int4WeightOnlyLinear.from_groups(q, d, m, 32)


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
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32, 512])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--budget", type=float, default=0.15, help="CPU seconds per measurement")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    print(f"ggml kernels: {'available' if ggml.available() else 'reference'}, isa {ggml.isa()}")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    rng = np.random.default_rng(0)
    results = []
    for name, n, k, qt, per_token in SHAPES:
        blocks = torch.from_numpy(random_blocks(rng, n, k, qt))
        mod = int4_module(blocks, qt)
        w32 = ggml.dequantize(blocks, qt)
        for rows in args.rows:
            x = torch.randn(rows, k)
            impls = {
                "ggml": lambda x=x, b=blocks, q=qt: ggml.block_linear(x, b, q),
                "int4": lambda x=x, m=mod: m(x),
                "fp32": lambda x=x, w=w32: F.linear(x, w),
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
                row = {"shape": name, "N": n, "K": k, "rows": rows, "threads": threads, "per_token": per_token}
                row.update({f"{key}_us": round(v, 1) for key, v in best.items()})
                results.append(row)
                print(
                    f"{name:12s} {n:6d}x{k:<5d} M={rows:<4d} t={threads}  ggml {best['ggml']:9.1f}  "
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
        args.json.write_text(json.dumps({"isa": ggml.isa(), "torch": torch.__version__, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
