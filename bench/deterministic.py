"""The cost of deterministic mode: aggregate tok/s at 1 and 32 concurrent requests, normal vs
``EngineConfig(deterministic=True)``, on the engine and the default (quantized) model.

    python bench/deterministic.py                 # 64-token prompts, 32 new tokens each
    python bench/deterministic.py --quick         # 16 new tokens, 8 concurrent instead of 32

Aggregate tok/s = generated tokens / wall time of the whole run (prefill included), after one
warm-up request; tok/CPU-s = the same tokens per CPU-second of this process (the steadier figure
on a machine shared with other jobs). Results: ``bench/results/deterministic.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "src"))


def run(lm, deterministic: bool, concurrent: int, prompt_len: int, new_tokens: int) -> dict:
    from lhama.engine import EngineConfig, LLMEngine
    from lhama.generate import SamplingParams

    eng = LLMEngine.from_loaded(lm, EngineConfig(deterministic=deterministic, enable_prefix_caching=False))
    vocab = lm.args.vocab_size
    # Distinct prompts (no shared prefix), fixed across modes.
    prompts = [[(7 + 131 * i + 17 * j) % (vocab - 300) + 100 for j in range(prompt_len)] for i in range(concurrent)]
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    eng.generate(prompts[:1], SamplingParams(temperature=0, max_tokens=2, ignore_eos=True))  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    results = eng.generate(prompts, params)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    generated = sum(len(c.token_ids) for r in results for c in r.completions)
    return {
        "deterministic": deterministic,
        "concurrent": concurrent,
        "generated_tokens": generated,
        "wall_s": round(wall, 2),
        "tok_per_s": round(generated / wall, 2),
        "cpu_s": round(cpu, 2),
        "tok_per_cpu_s": round(generated / cpu, 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "deterministic.json")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    a = ap.parse_args(argv)
    import torch

    from lhama.loader import load_model

    if a.threads:
        torch.set_num_threads(a.threads)

    lm = load_model(a.model)
    wide = 8 if a.quick else 32
    new = 16 if a.quick else a.new_tokens
    rows = [run(lm, det, n, a.prompt_len, new) for n in (1, wide) for det in (False, True)]
    for r in rows:
        print(
            f"concurrent {r['concurrent']:>2}  {'deterministic' if r['deterministic'] else 'normal       '}  "
            f"{r['tok_per_s']:8.2f} tok/s  {r['tok_per_cpu_s']:8.2f} tok/CPU-s  "
            f"({r['generated_tokens']} tokens in {r['wall_s']} s)"
        )
    for n in (1, wide):
        normal, det = (next(r for r in rows if r["concurrent"] == n and r["deterministic"] is d) for d in (False, True))
        print(
            f"concurrent {n:>2}: deterministic / normal = {det['tok_per_s'] / normal['tok_per_s']:.2f} (wall), "
            f"{det['tok_per_cpu_s'] / normal['tok_per_cpu_s']:.2f} (CPU)"
        )
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(
        json.dumps(
            {
                "model": a.model,
                "prompt_len": a.prompt_len,
                "new_tokens": new,
                "threads": torch.get_num_threads(),
                "load_average": round(os.getloadavg()[0], 1),
                "rows": rows,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
