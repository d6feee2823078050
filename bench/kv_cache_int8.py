"""The int8 KV cache (``--kv-cache-dtype int8``) against bf16 and fp32 on the default model.

    python bench/kv_cache_int8.py [--tokens 64] [--context 512] [--repeats 3] [--out bench/results/kv_cache_int8.json]

* accuracy (timing-free): perplexity on the shipped perplexity texts (``lhama/data/eval/ppl-*.jsonl``)
  with the cache in each dtype (every prompt position reads the cache's rounded K/V), and over a
  greedy run of ``--tokens`` tokens decoded one at a time (the C++ decode attention reading the
  cache in place) with the tokens forced to bf16's: the largest logit difference from bf16 and
  how often the top-1 token agrees;
* memory: KV bytes per token, and what 32 concurrent streams of a short chat (the engine's peak
  blocks in use) hold;
* speed: decode tok/s of one stream at 1 thread after a ``--context``-token prompt, bf16 and int8
  alternated, process CPU time (best of ``--repeats``), so a busy machine's other work does not
  count (it still slows memory and caches: say how loaded the machine was).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if (BENCH_DIR.parent / "src" / "lhama").is_dir():
    sys.path.insert(0, str(BENCH_DIR.parent / "src"))

DTYPES = ("float32", "bfloat16", "int8")


def texts() -> list[str]:
    import lhama

    folder = Path(lhama.__file__).parent / "data" / "eval"
    return [json.loads(line)["text"] for f in sorted(folder.glob("ppl-*.jsonl")) for line in f.open() if line.strip()]


def perplexity(model, ids_list, kv_dtype: str) -> float:
    import math

    import torch
    import torch.nn.functional as F

    from lhama.model import StaticKVCache, kv_cache_dtype

    total, count = 0.0, 0
    with torch.inference_mode():
        for ids in ids_list:
            cache = StaticKVCache(model.args, 1, len(ids), dtype=kv_cache_dtype(model.dtype, "cpu", kv_dtype))
            x = torch.tensor([ids])
            logits = model(x, 0, cache).float()
            total += F.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum").item()
            count += len(ids) - 1
    return math.exp(total / count)


def forced_logits(model, prompt: list[int], forced: list[int], kv_dtype: str):
    """Logits [len(forced), vocab] of a decode run that feeds ``forced`` one token at a time."""
    import torch

    from lhama.model import StaticKVCache, kv_cache_dtype

    cache = StaticKVCache(model.args, 1, len(prompt) + len(forced), dtype=kv_cache_dtype(model.dtype, "cpu", kv_dtype))
    out = []
    with torch.inference_mode():
        x = torch.tensor([prompt])
        for tok in forced:
            out.append(model(x, cache.pos, cache, last_only=True)[0, -1].float())
            cache.advance(x.shape[1])
            x = torch.tensor([[tok]])
    return torch.stack(out)


def decode_cpu_seconds(lm, prompt: list[int], tokens: int, kv_dtype: str) -> float:
    from lhama.generate import SamplingParams, generate_tokens

    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    t0 = time.process_time()
    list(generate_tokens(lm.model, prompt, params, kv_cache_dtype=kv_dtype))  # the prompt alone
    t1 = time.process_time()
    params = params.with_(max_tokens=tokens + 1)
    list(generate_tokens(lm.model, prompt, params, kv_cache_dtype=kv_dtype))
    return time.process_time() - t1 - (t1 - t0)


def streams_kv_bytes(lm, kv_dtype: str, n: int = 32) -> dict:
    from lhama.engine import EngineConfig, LLMEngine
    from lhama.generate import SamplingParams

    eng = LLMEngine.from_loaded(lm, EngineConfig(kv_cache_gb=1.0, kv_cache_dtype=kv_dtype, max_num_seqs=n))
    questions = [f"Write a short story about a {w} in three sentences." for w in ("cat", "dog", "fox", "owl")] * (
        n // 4
    )
    prompts = [lm.chat_format.encode_dialog([{"role": "user", "content": q}]) for q in questions]
    params = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
    for i, p in enumerate(prompts):
        eng.add_request(str(i), p, params)
    peak = 0
    while eng.has_unfinished():
        eng.step()
        peak = max(peak, eng.kv_manager.num_used_blocks)
    per_block = eng.cache.nbytes // (eng.cache.kv.shape[2] // eng.cache.n_kv_heads)
    return {"peak_blocks": peak, "bytes_per_block": per_block, "peak_kv_mib": peak * per_block / 2**20}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "kv_cache_int8.json")
    a = ap.parse_args(argv)

    import torch

    from lhama.engine.config import EngineConfig
    from lhama.engine.memory import plan_kv_cache
    from lhama.generate import SamplingParams, generate_tokens
    from lhama.loader import load_model

    torch.set_num_threads(1)
    os.environ.pop("LHAMA_KV_CACHE_DTYPE", None)
    lm = load_model("default")
    res: dict = {"model": lm.name, "load_avg_start": os.getloadavg()[0]}

    ids_list = [lm.tokenizer.encode(t, bos=True)[:512] for t in texts()]
    res["perplexity"] = {d: perplexity(lm.model, ids_list, d) for d in DTYPES}
    res["perplexity_tokens"] = sum(len(i) - 1 for i in ids_list)

    prompt = lm.chat_format.encode_dialog([{"role": "user", "content": "Tell me about the history of Paris."}])
    greedy = SamplingParams(temperature=0, max_tokens=a.tokens, ignore_eos=True)
    forced = [s.token_id for s in generate_tokens(lm.model, prompt, greedy, kv_cache_dtype="bfloat16")]
    ref = forced_logits(lm.model, prompt, forced, "bfloat16")
    res["greedy_vs_bf16"] = {}
    for d in ("float32", "int8"):
        got = forced_logits(lm.model, prompt, forced, d)
        res["greedy_vs_bf16"][d] = {
            "logit_max_abs_diff": (got - ref).abs().max().item(),
            "top1_agreement": (got.argmax(-1) == ref.argmax(-1)).float().mean().item(),
            "tokens": len(forced),
        }

    args = lm.model.args
    plans = {d: plan_kv_cache(args, EngineConfig(kv_cache_dtype=d, kv_cache_gb=1.0)) for d in DTYPES}
    res["bytes_per_token"] = {d: p.bytes_per_token for d, p in plans.items()}
    res["tokens_per_gib"] = {d: p.capacity_tokens for d, p in plans.items()}
    res["streams32"] = {d: streams_kv_bytes(lm, d) for d in ("bfloat16", "int8")}

    long_prompt = (lm.tokenizer.encode(" ".join(texts()), bos=True) * 4)[: a.context]
    best = {d: float("inf") for d in ("bfloat16", "int8")}
    for _ in range(a.repeats):
        for d in best:  # alternated: both see the same stretch of machine load
            best[d] = min(best[d], decode_cpu_seconds(lm, long_prompt, a.tokens, d))
    res["decode_1thread"] = {
        "context": a.context,
        "tokens": a.tokens,
        **{f"{d}_tok_per_cpu_s": a.tokens / s for d, s in best.items()},
        "int8_over_bf16": best["bfloat16"] / best["int8"],
    }
    res["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(res, indent=2))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
