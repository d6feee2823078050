"""Speculative decoding vs the plain loop, same model, same run: tokens/s, ratio, acceptance.

    .venv/bin/python bench/speculative.py                       # default SmolLM2, ngram and self:N drafts
    .venv/bin/python bench/speculative.py --drafts ngram self:10 path/to/draft.gguf --k 4 --json out.json

Greedy decoding; every speculative run's tokens are checked against the plain loop's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

PROMPTS = {
    # Output that copies the prompt: where prompt lookup shines (editing, extraction, quoting).
    "quote": "Repeat the following text exactly, word for word:\n\nThe Llama 3.1 models support a context "
             "window of 128K tokens and eight languages. They were trained on over 15 trillion tokens, "
             "and the largest one, with 405 billion parameters, was quantized to FP8 to fit a single node.",
    # Free-form text: the draft has to predict the model.
    "free": "Write a short story about a robot who learns to paint.",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--drafts", nargs="+", default=["ngram", "self:8"])
    ap.add_argument("--k", type=int, default=4, help="speculative tokens per round")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    from lhama.generate import SamplingParams, generate_tokens
    from lhama.generate.speculative import load_speculation, speculative_tokens
    from lhama.loader import load_model

    lm = load_model(a.model)
    params = SamplingParams(temperature=0, max_tokens=a.max_tokens)
    stops = lm.chat_format.stop_ids
    rows = []
    for name, text in PROMPTS.items():
        ids = lm.chat_format.encode_dialog([{"role": "user", "content": text}])
        t0 = time.perf_counter()
        ref = [s.token_id for s in generate_tokens(lm.model, ids, params, stop_ids=stops)]
        base_tps = len(ref) / (time.perf_counter() - t0)
        rows.append(dict(prompt=name, draft="none (plain loop)", tokens=len(ref), tok_s=base_tps, ratio=1.0,
                         acceptance=None, tokens_per_target_forward=1.0, identical=True))
        for d in a.drafts:
            spec = load_speculation(d, lm, a.k)
            t0 = time.perf_counter()
            out = [s.token_id for s in speculative_tokens(lm.model, spec, ids, params, stop_ids=stops)]
            tps = len(out) / (time.perf_counter() - t0)
            rows.append(dict(prompt=name, draft=d, tokens=len(out), tok_s=tps, ratio=tps / base_tps,
                             acceptance=spec.stats.acceptance_rate,
                             tokens_per_target_forward=spec.stats.tokens_per_target_forward, identical=out == ref))
    print(f"model {lm.name}, greedy, {a.max_tokens} max tokens, k={a.k}, threads {torch.get_num_threads()}")
    print("| prompt | draft | tokens | tok/s | ÷ plain loop | acceptance | tokens per target forward | same output |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        acc = "–" if r["acceptance"] is None else f"{r['acceptance']:.0%}"
        print(f"| {r['prompt']} | {r['draft']} | {r['tokens']} | {r['tok_s']:.1f} | {r['ratio']:.2f}× | {acc} | "
              f"{r['tokens_per_target_forward']:.2f} | {'yes' if r['identical'] else 'NO'} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": lm.name, "k": a.k, "max_tokens": a.max_tokens, "rows": rows}, f, indent=2)
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
