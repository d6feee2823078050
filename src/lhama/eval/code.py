"""Code tasks scored by pass@k: completions run with the item's asserts in the sandbox.

Each problem gets ``samples`` completions (greedy when one, sampled otherwise); a completion
passes when its code followed by the item's ``tests`` exits 0 inside ``lhama.tools.sandbox``
(no network, no files of this machine, CPU/memory/time limits). pass@k uses the unbiased
estimator of Chen et al. (2021), so n > k samples give a lower-variance estimate than n == k.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

from lhama.eval.context import EvalContext
from lhama.eval.stats import Estimate, mean_with_normal_ci, pass_at_k, wilson

# A fenced block, closed or running to the end (an answer cut off by max_tokens).
_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
PYTHON_TAG = "<|python_tag|>"  # Llama 3.1 writes code-interpreter code after it, unfenced


def extract_code(text: str) -> str:
    """The program in a chat answer, as code tasks (pass@k) and the unit-test reward both run it:
    the *first* fenced block (models put the solution first and usage examples or tests after
    it, which would fail on their own), else the text after the last ``<|python_tag|>``, else
    the whole answer."""
    m = _FENCE.search(text)
    if m:
        return m.group(1).strip("\n")
    return text.rsplit(PYTHON_TAG, 1)[-1].strip("\n")


def program(item: dict, completion: str) -> str:
    return f"{extract_code(completion)}\n\n\n{item['tests']}\n"


def run_tests(code: str, timeout_s: float):
    from lhama.tools.sandbox import SandboxLimits, run_python

    limits = SandboxLimits(cpu_seconds=timeout_s, wall_seconds=timeout_s * 2, memory_mb=1024)
    return run_python(code, limits=limits)


def _verdict(res) -> str:
    if res.ok:
        return "passed"
    if res.timed_out or res.killed_reason:
        return f"killed: {res.killed_reason or 'timeout'}"
    last = [line for line in res.stderr.strip().splitlines() if line.strip()]
    return (last[-1] if last else f"exit code {res.exit_code}")[:300]


def score(ctx: EvalContext, items: list[dict]) -> list[dict]:
    from lhama.generate import SamplingParams

    cfg = ctx.cfg
    if cfg.samples == 1:
        params = SamplingParams(temperature=0.0, max_tokens=cfg.max_tokens)
    else:
        params = SamplingParams(
            temperature=cfg.temperature, top_p=0.95, max_tokens=cfg.max_tokens, n=cfg.samples, seed=cfg.seed
        )
    outputs = ctx.generate([it["prompt"] for it in items], params)
    jobs = [(i, program(it, text)) for i, (it, texts) in enumerate(zip(items, outputs)) for text in texts]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda job: run_tests(job[1], cfg.timeout_s), jobs))
    verdicts: list[list[str]] = [[] for _ in items]
    for (i, _), res in zip(jobs, results):
        verdicts[i].append(_verdict(res))
    out = []
    for it, texts, vs in zip(items, outputs, verdicts):
        c = sum(v == "passed" for v in vs)
        out.append(
            {
                "id": it["id"],
                "samples": len(vs),
                "passed": c,
                "verdicts": vs,
                "completions": texts,
                "pass_at_k": {str(k): pass_at_k(len(vs), c, k) for k in cfg.pass_k},
            }
        )
    return out


def aggregate(records: list[dict]) -> dict[str, Estimate]:
    ks = sorted({int(k) for r in records for k in r["pass_at_k"]})
    out = {}
    for k in ks:
        vals = [r["pass_at_k"][str(k)] for r in records]
        # One sample per problem makes pass@k a proportion: Wilson's interval is the right one.
        binary = all(v in (0.0, 1.0) for v in vals)
        out[f"pass@{k}"] = wilson(sum(vals), len(vals)) if binary else mean_with_normal_ci(vals)
    return out


PRIMARY = "pass@1"
