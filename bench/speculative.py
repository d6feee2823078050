"""Speculative decoding vs the plain loop of the same target precision, same run: tok/s, ratio,
acceptance, and whether the tokens are the plain loop's.

    .venv/bin/python bench/speculative.py                       # SmolLM2 fp32/bf16/int4 targets, 1 and 2 threads
    .venv/bin/python bench/speculative.py --targets float32 --drafts self:int4 self:int4@8 ngram \\
        --threads 1 --json bench/results/speculative-$(date +%Y%m%d).json

A draft is any ``--draft-model`` spelling, optionally ``@K`` for K speculative tokens (default: the
CLI's per-draft default). Greedy decoding. "same output": ``yes`` when the tokens equal the plain
loop's; ``near-tie at token i`` when, where they first differ, both runs rank the same two tokens
on top and each picked the other (bf16 rounds a k+1-token forward differently from a 1-token one,
so near-ties can flip); ``NO`` otherwise (the exit status is then 1). ``--append``
adds rows to an existing ``--json`` file (e.g. a 2-thread run made when the machine was quiet).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

from lhama.generate.speculative import SpeculativeStats

PROMPTS = {
    # Output that copies the prompt: where prompt lookup shines (editing, extraction, quoting).
    "quote": "Repeat the following text exactly, word for word:\n\nThe Llama 3.1 models support a context "
    "window of 128K tokens and eight languages. They were trained on over 15 trillion tokens, "
    "and the largest one, with 405 billion parameters, was quantized to FP8 to fit a single node.",
    # Free-form text and code: the draft has to predict the model.
    "free": "Write a short story about a robot who learns to paint.",
    "code": "Write a Python function that checks whether a string is a palindrome, with a docstring.",
}
TARGETS = {"float32": (torch.float32, None), "bfloat16": (torch.bfloat16, None), "int4": (torch.float32, "int4")}


def _same(model, spec, prompt_ids, params, stops, ref, out) -> str:
    """ "yes"; "near-tie at token i" when, where the two first differ, the plain loop and the
    speculative run rank the same two tokens on top and each picked the other one: a near-tie
    that rounding decided (a bf16 forward over k + 1 tokens rounds differently from a 1-token
    one); "NO" otherwise."""
    from lhama.generate import generate_tokens
    from lhama.generate.speculative import speculative_tokens

    if out == ref:
        return "yes"
    i = next((i for i, (a, b) in enumerate(zip(ref, out)) if a != b), None)
    if i is None:  # one is a prefix of the other: a stop token was, or was not, produced
        return "NO"
    p = params.with_(logprobs=True, top_logprobs=2)
    plain = list(generate_tokens(model, prompt_ids, p, stop_ids=stops))[i].top_logprobs
    spec.stats = SpeculativeStats()
    again = list(speculative_tokens(model, spec, prompt_ids, p, stop_ids=stops))
    if i >= len(again) or again[i].token_id != out[i]:
        return "NO"
    mine = again[i].top_logprobs
    if {t for t, _ in plain} == {t for t, _ in mine} == {ref[i], out[i]}:
        return f"near-tie at token {i} (logprob gaps {plain[0][1] - plain[1][1]:.2f}, {mine[0][1] - mine[1][1]:.2f})"
    return "NO"


def _timed(generate, *args, **kwargs) -> tuple[list[int], float]:
    t0 = time.perf_counter()
    out = [s.token_id for s in generate(*args, **kwargs)]
    return out, time.perf_counter() - t0


def run_target(target: str, a, threads: int) -> list[dict]:
    from lhama.errors import ConfigError
    from lhama.generate import SamplingParams, generate_tokens
    from lhama.generate.speculative import load_speculation, speculative_tokens
    from lhama.loader import load_model

    dtype, quantize = TARGETS[target]
    lm = load_model(a.model, dtype=dtype, quantize=quantize)
    params = SamplingParams(temperature=0, max_tokens=a.max_tokens)
    stops = lm.chat_format.stop_ids
    drafts = []
    for d in a.drafts:
        name, _, k = d.partition("@")
        try:
            drafts.append((d, load_speculation(name, lm, int(k) if k else None)))
        except ConfigError as e:  # e.g. self:int4 for an int4 target
            print(f"  {target}: skip {d}: {e}", file=sys.stderr)
    warm = lm.chat_format.encode_dialog([{"role": "user", "content": "Hi"}])
    list(generate_tokens(lm.model, warm, params.with_(max_tokens=8), stop_ids=stops))
    for _, spec in drafts:
        list(speculative_tokens(lm.model, spec, warm, params.with_(max_tokens=8), stop_ids=stops))
    rows = []
    for pname in a.prompts:
        text = PROMPTS[pname]
        ids = lm.chat_format.encode_dialog([{"role": "user", "content": text}])
        runs = [_timed(generate_tokens, lm.model, ids, params, stop_ids=stops) for _ in range(a.repeat)]
        ref, base_s = runs[0][0], min(t for _, t in runs)
        base_tps = len(ref) / base_s
        rows.append(
            dict(
                threads=threads,
                target=target,
                prompt=pname,
                draft="none (plain loop)",
                k=0,
                tokens=len(ref),
                tok_s=base_tps,
                ratio=1.0,
                acceptance=None,
                tokens_per_target_forward=1.0,
                same="yes",
            )
        )
        for dname, spec in drafts:
            best = None
            for _ in range(a.repeat):
                spec.stats = SpeculativeStats()  # counts of this run only
                out, secs = _timed(speculative_tokens, lm.model, spec, ids, params, stop_ids=stops)
                if best is None or secs < best[1]:
                    best = (out, secs, spec.stats.acceptance_rate, spec.stats.tokens_per_target_forward)
            out, secs, acc, tpf = best
            tps = len(out) / secs
            rows.append(
                dict(
                    threads=threads,
                    target=target,
                    prompt=pname,
                    draft=dname,
                    k=spec.num_speculative_tokens,
                    tokens=len(out),
                    tok_s=tps,
                    ratio=tps / base_tps,
                    acceptance=acc,
                    tokens_per_target_forward=tpf,
                    same=_same(lm.model, spec, ids, params, stops, ref, out),
                )
            )
        for r in rows[-len(drafts) - 1 :]:
            _print_row(r)
    return rows


HEADER = (
    "| threads | target | prompt | draft | k | tokens | tok/s | ÷ plain loop (same target) | acceptance "
    "| tokens per target forward | same output |\n|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|"
)


def _print_row(r: dict) -> None:
    acc = "–" if r["acceptance"] is None else f"{r['acceptance']:.0%}"
    print(
        f"| {r['threads']} | {r['target']} | {r['prompt']} | {r['draft']} | {r['k'] or '–'} | {r['tokens']} | "
        f"{r['tok_s']:.1f} | {r['ratio']:.2f}× | {acc} | {r['tokens_per_target_forward']:.2f} | {r['same']} |",
        flush=True,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument(
        "--drafts",
        nargs="+",
        default=["ngram", "self:int4", "self:int8"],
        help="--draft-model spellings, each optionally @K",
    )
    ap.add_argument("--prompts", nargs="+", default=list(PROMPTS), choices=list(PROMPTS))
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to run")
    ap.add_argument("--repeat", type=int, default=2, help="runs per row; the fastest counts")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--append", action="store_true", help="keep the runs already in --json")
    a = ap.parse_args(argv)

    print(f"model {a.model}, greedy, {a.max_tokens} max tokens, load average {os.getloadavg()[0]:.2f}")
    print(HEADER, flush=True)
    runs, rows = [], []
    if a.append and a.json and os.path.exists(a.json):
        with open(a.json) as f:
            runs = json.load(f)["runs"]
    run = dict(
        model=a.model,
        max_tokens=a.max_tokens,
        repeat=a.repeat,
        date=time.strftime("%Y-%m-%d %H:%M"),
        cpu=platform.processor() or platform.machine(),
        cores=os.cpu_count(),
        torch=torch.__version__,
        load_average_start=os.getloadavg()[0],
        rows=rows,
    )
    for threads in a.threads:
        torch.set_num_threads(threads)
        for target in a.targets:
            rows += run_target(target, a, threads)
            if a.json:  # after every target: an interrupted run keeps what it measured
                run["load_average_end"] = os.getloadavg()[0]
                with open(a.json, "w") as f:
                    json.dump({"runs": runs + [run]}, f, indent=2)
    return 0 if all(r["same"] != "NO" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
