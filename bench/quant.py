"""Memory, speed and perplexity of each weight-quantization mode, one process per mode.

    python bench/quant.py                          # fp32, bf16, int8, int4, fp8 on the default GGUF
    python bench/quant.py --quick                  # fewer tokens (~1-2 min on 2 cores)
    python bench/quant.py --modes fp32,int4 --model tiny-llama3

Per mode: bytes of weights in memory, the process's peak RSS, perplexity on a fixed text (the
benchmark prose of ``harness.workload``, scored in one forward pass), and the engine's speed
(prefill of a 256-token prompt, single-stream decode, aggregate decode at 8 concurrent).
Results: ``bench/results/<name>.json`` and ``<name>.md`` (name: ``quant``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent / "src"))

MARK = "@@lhama-quant-result@@ "
MODES = ("fp32", "bf16", "int8", "int4", "fp8")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="default", help="a GGUF file, 'default', or a config name (random weights)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="short prompt and few tokens")
    ap.add_argument("--out-dir", type=Path, default=BENCH_DIR / "results")
    ap.add_argument("--name", default="quant")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per mode")
    ap.add_argument(
        "--doc",
        type=Path,
        help="also write the table between the quant-table markers of this "
        "markdown file (make bench: docs/quantization.md)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def worker(mode: str, cfg: dict) -> dict:
    import torch

    torch.set_num_threads(cfg["threads"])
    from harness import measure
    from harness.workload import TEXT

    from lhama.engine import EngineConfig, LLMEngine
    from lhama.generate import SamplingParams
    from lhama.loader import load_model
    from lhama.quant import weight_bytes

    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    quant = mode if mode in ("int8", "int4", "fp8") else None
    t0 = measure.now()
    lm = load_model(cfg["model"], dtype=dtype, device="cpu", quantize=quant)
    out = {"mode": mode, "load_s": measure.now() - t0, "weight_mib": weight_bytes(lm.model) / 2**20}
    ids = lm.tokenizer.encode(TEXT, bos=False)
    if lm.source == "config":  # random weights: the perplexity is noise, but the code path is real
        ids = ids[:128]
    x = torch.tensor([ids])
    with torch.inference_mode():
        logits = lm.model(x)
    nll = torch.nn.functional.cross_entropy(logits[0, :-1].float(), x[0, 1:])
    out.update(ppl=nll.exp().item(), ppl_tokens=len(ids) - 1)

    q = cfg["quick"]
    prompt, gen, conc, gen_conc = (ids[:64], 16, 4, 8) if q else ((ids * 2)[:256], 64, 8, 32)
    eng = LLMEngine(
        lm.model, None, EngineConfig(num_blocks=64 if q else 192, block_size=16, max_num_seqs=conc), stop_ids=()
    )
    params = SamplingParams(temperature=0, max_tokens=gen, ignore_eos=True)
    eng.generate([prompt[:16]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))  # warm-up
    t0 = measure.now()
    eng.add_request("s", prompt, params)
    times = []
    while eng.has_unfinished():
        for d in eng.step():
            times.extend(measure.now() for _ in d.steps)
    s = measure.single_stream(t0, times, len(prompt))
    out.update(prefill_tok_s=s["prefill_tok_s"], decode_tok_s=s.get("decode_tok_s"))
    prompts = [ids[i * 29 : i * 29 + 32] for i in range(conc)]
    t0, steps, first = measure.now(), [], set()
    for i, p in enumerate(prompts):
        eng.add_request(f"c{i}", p, SamplingParams(temperature=0, max_tokens=gen_conc, ignore_eos=True))
    while eng.has_unfinished():
        deltas = eng.step()
        first.update(d.request_id for d in deltas if d.steps)
        n = sum(len(d.steps) for d in deltas)
        if n:
            steps.append((measure.now(), n, len(first)))
    out[f"agg_{conc}_tok_s"] = measure.concurrent(t0, steps, conc).get("agg_tok_s")
    out["concurrency"] = conc
    out["peak_rss_mib"] = measure.peak_rss_mib()
    return out


def run_mode(mode: str, cfg: dict, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]), TOKENIZERS_PARALLELISM="false")
    try:
        r = subprocess.run(
            [sys.executable, __file__, "--worker", mode],
            input=json.dumps(cfg),
            text=True,
            capture_output=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"mode": mode, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(r.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    return {"mode": mode, "error": f"exit {r.returncode}: {r.stderr[-1500:]}"}


def markdown(rows: list[dict], meta: dict) -> str:
    base = next((r for r in rows if r["mode"] == "fp32" and "ppl" in r), None)
    conc = next((r["concurrency"] for r in rows if "concurrency" in r), 8)

    def f(v, spec):
        return "n/a" if v is None else format(v, spec)

    lines = [
        f"Model `{meta['model_name']}`, {meta['threads']} threads, {meta['device_desc']}; perplexity on "
        f"the benchmark text; engine speed, greedy. {meta['when']}.",
        "",
        "| mode | weights MiB | × smaller | peak RSS MiB | perplexity | Δ ppl | prefill tok/s | "
        f"decode tok/s (1 stream) | aggregate tok/s ({conc} concurrent) | speed-up vs fp32 (1 stream) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | failed: {r['error'].splitlines()[-1][:120]} |" + " |" * 9)
            continue
        smaller = base["weight_mib"] / r["weight_mib"] if base else None
        dppl = 100 * (r["ppl"] / base["ppl"] - 1) if base else None
        speed = (
            r["decode_tok_s"] / base["decode_tok_s"]
            if base and base.get("decode_tok_s") and r.get("decode_tok_s")
            else None
        )
        lines.append(
            f"| {r['mode']} | {r['weight_mib']:.0f} | {f(smaller, '.2f')}× | {r['peak_rss_mib']:.0f} | "
            f"{r['ppl']:.3f} | {'' if dppl is None else format(dppl, '+.2f') + '%'} | "
            f"{f(r.get('prefill_tok_s'), '.0f')} | {f(r.get('decode_tok_s'), '.1f')} | "
            f"{f(r.get(f'agg_{conc}_tok_s'), '.1f')} | {f(speed, '.2f')}× |"
        )
    lines += [
        "",
        "int4: group size 32, LM head int8; int8: per output channel; fp8: e4m3 per row (upcast "
        "per matmul without FP8 hardware). Quantized matmuls take bf16 activations.",
    ]
    busy = meta.get("loadavg", [0])[0]
    if busy > (os.cpu_count() or 1) * 0.5:
        lines.append(
            f"Other work was running (load average {busy:.1f} on {os.cpu_count()} cores): the speed "
            "columns are not comparable between rows; weights, RSS and perplexity are."
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.worker:
        res = worker(a.worker, json.loads(sys.stdin.read()))
        print(MARK + json.dumps(res))
        return 0
    from run import device_desc, resolve_model

    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"unknown mode(s) {bad}; choose from {MODES}")
    model = resolve_model(a.model)
    cfg = {"model": model, "threads": a.threads, "quick": a.quick}
    rows, load_before = [], os.getloadavg()
    for m in modes:
        print(f"  {m} ...", file=sys.stderr, flush=True)
        rows.append(run_mode(m, cfg, a.timeout))
    meta = {
        "model": model,
        "model_name": Path(model).name,
        "threads": a.threads,
        "quick": a.quick,
        "device_desc": device_desc("cpu", a.threads),
        "loadavg": load_before,
        "when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }
    md = markdown(rows, meta)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    (a.out_dir / f"{a.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (a.out_dir / f"{a.name}.md").write_text(md)
    if a.doc:
        text = a.doc.read_text()
        begin, end = "<!-- quant-table -->", "<!-- /quant-table -->"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            a.doc.write_text(head + begin + "\n" + md + end + rest.split(end, 1)[1])
        else:
            print(f"warning: {a.doc} has no {begin} ... {end} markers; not updated", file=sys.stderr)
    print(md)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
