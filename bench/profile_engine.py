"""Engine step times by batch size: ``python bench/profile_engine.py --model default --batch 1 8 32``.

For each batch size B: B requests with P-token prompts each generate G tokens (ignore_eos);
reports the prefill time, the median decode step time once all B decode together, and the
aggregate decode throughput. ``--breakdown`` adds a torch-profiler table of one decode step.
``bench/profile_decode.py`` times the engine at batch 1 with ``engine_step_times`` from here.

``--vs-loop`` measures the engine's per-step overhead instead: one greedy stream through the
engine and through the reference loop (``lhama.generate.generate_tokens``) on the same weights,
alternated, process CPU time per generated token (best of ``--reps``); run it at one thread
(``OMP_NUM_THREADS=1 ... --threads 1``) on a busy machine, where wall clock is noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if (REPO / "src" / "lhama").is_dir():
    sys.path.insert(0, str(REPO / "src"))

from lhama.engine import EngineConfig, LLMEngine  # noqa: E402
from lhama.generate import SamplingParams  # noqa: E402

# Random weights with SmolLM2-135M's shapes: the same speed without the GGUF file.
SMOLLM2_SHAPE = dict(
    dim=576,
    n_layers=30,
    n_heads=9,
    n_kv_heads=3,
    vocab_size=49152,
    hidden_dim=1536,
    rope_theta=100000.0,
    max_seq_len=8192,
    tie_embeddings=True,
)


def load(spec: str, dtype: torch.dtype | None = torch.float32, quantize: str | None = None):
    """The model of a ``--model`` spec (a file, ``default``, a named config), or ``random:smollm2``."""
    if spec == "random:smollm2":
        from lhama.model import ModelArgs, build_model

        return build_model(ModelArgs(**SMOLLM2_SHAPE), dtype=dtype or torch.float32, init="random").eval()
    from lhama.loader import load_model

    return load_model(spec, dtype=dtype, device="cpu", quantize=quantize).model


def blocks_for(batch: int, tokens: int, block_size: int = 16) -> int:
    """KV blocks for ``batch`` sequences of ``tokens`` each, with a little slack."""
    return batch * -(-tokens // block_size) + 8


def engine_step_times(
    model, prompts: list[list[int]], gen: int, config: EngineConfig, breakdown: bool = False
) -> tuple[float, list[float]]:
    """(prefill seconds, seconds of each decode step once every prompt decodes): greedy,
    ``gen`` tokens per prompt, end of sequence ignored. ``breakdown`` prints a torch-profiler
    table of the fifth decode step (which is then left out of the times)."""
    eng = LLMEngine(model, None, config.with_(max_num_seqs=max(len(prompts), 1)), stop_ids=())
    params = SamplingParams(temperature=0, max_tokens=gen, ignore_eos=True)
    for prompt in prompts:
        eng.add_request(None, prompt, params)
    t0 = time.perf_counter()
    while any(s.num_computed < s.prompt_len for s in eng.scheduler.running) or eng.scheduler.waiting:
        eng.step()
    prefill = time.perf_counter() - t0
    times: list[float] = []
    while eng.has_unfinished():
        if breakdown and len(times) == 5:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                eng.step()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
            breakdown = False
            continue
        t = time.perf_counter()
        eng.step()
        times.append(time.perf_counter() - t)
    return prefill, times


def cpu_per_token(model, prompt: list[int], gen: int, config: EngineConfig, reps: int = 3) -> dict:
    """Process CPU ms per decode token of one greedy stream, engine and reference loop
    alternated (the prefill and first token left out of both), best and all of ``reps`` runs."""
    from lhama.generate import generate_tokens

    eng = LLMEngine(model, None, config.with_(max_num_seqs=max(config.max_num_seqs, 1)), stop_ids=())
    params = SamplingParams(temperature=0, max_tokens=gen, ignore_eos=True)

    def engine_run() -> float:
        eng.add_request(None, prompt, params)
        while eng.scheduler.waiting or any(s.num_computed < s.prompt_len for s in eng.scheduler.running):
            eng.step()
        t, n = time.process_time(), 0
        while eng.has_unfinished():
            n += sum(len(d.steps) for d in eng.step())
        return (time.process_time() - t) / max(n, 1) * 1e3

    def loop_run() -> float:
        it = generate_tokens(model, prompt, params)
        next(it)
        t, n = time.process_time(), 0
        for _ in it:
            n += 1
        return (time.process_time() - t) / max(n, 1) * 1e3

    engine_run(), loop_run()  # first-call costs
    runs = [(engine_run(), loop_run()) for _ in range(reps)]
    e, r = [a for a, _ in runs], [b for _, b in runs]
    return {"engine_ms": min(e), "loop_ms": min(r), "engine_all": e, "loop_all": r}


def measure(model, batch: int, prompt_len: int, gen: int, config: EngineConfig, breakdown: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    vocab = min(model.args.vocab_size, 20000)
    prompts = [torch.randint(0, vocab, (prompt_len,), generator=g).tolist() for _ in range(batch)]
    prefill, times = engine_step_times(model, prompts, gen, config, breakdown)
    if os.environ.get("LHAMA_PROFILE_STEPS"):
        print("step ms:", " ".join(f"{t * 1e3:.0f}" for t in times))
    steady = times[2:] or times
    step = statistics.median(steady)  # the median resists other processes' noise
    return {
        "batch": batch,
        "prefill_s": prefill,
        "decode_step_ms": step * 1e3,
        "best_step_ms": min(steady) * 1e3,
        "decode_tok_s": batch / step,
        "steps": len(times),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="a --model spec, or random:smollm2")
    ap.add_argument(
        "--dtype",
        default=None,
        choices=["fp32", "bf16", "auto"],
        help="auto: as load_model keeps the file (--vs-loop's default)",
    )
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--max-num-batched-tokens", type=int, default=256)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-packed-head", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--breakdown", action="store_true")
    ap.add_argument("--vs-loop", action="store_true", help="engine vs reference loop, CPU ms per token")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.dtype = a.dtype or ("auto" if a.vs_loop else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "auto": None}[a.dtype]
    model = load(a.model, dtype)
    cfg = EngineConfig(
        block_size=a.block_size,
        max_num_batched_tokens=a.max_num_batched_tokens,
        compile=a.compile,
        packed_head=not a.no_packed_head,
        num_blocks=blocks_for(max(a.batch), a.prompt_len + a.gen, a.block_size),
    )
    print(f"model {a.model} ({a.dtype}), prompt {a.prompt_len}, generate {a.gen}, threads {torch.get_num_threads()}")
    if a.vs_loop:
        g = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, min(model.args.vocab_size, 20000), (a.prompt_len,), generator=g).tolist()
        r = cpu_per_token(model, prompt, a.gen, cfg, a.reps)
        print(
            f"CPU ms per token: engine {r['engine_ms']:.3f}, reference loop {r['loop_ms']:.3f}, "
            f"engine - loop {r['engine_ms'] - r['loop_ms']:+.3f} (best of {a.reps}; engine "
            + " ".join(f"{x:.3f}" for x in r["engine_all"])
            + ", loop "
            + " ".join(f"{x:.3f}" for x in r["loop_all"])
            + ")"
        )
        return
    for b in a.batch:
        r = measure(model, b, a.prompt_len, a.gen, cfg, a.breakdown)
        print(
            f"batch {b:3d}: prefill {r['prefill_s']:.2f}s, decode step {r['decode_step_ms']:.1f} ms "
            f"(best {r['best_step_ms']:.1f}), {r['decode_tok_s']:.0f} tok/s"
        )


if __name__ == "__main__":
    main()
