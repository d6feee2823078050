"""Where the time of a default decode step goes: the model as ``load_model(path)`` keeps it (no
flags), a few greedy decode steps of the reference loop under ``torch.profiler``, self CPU time
grouped by kind of work (the profiler runs from the first decoded token to the last). Feeds docs/performance.md (issue 14).

    python bench/profile_default_step.py                         # the default model (135M, Q4_1)
    python bench/profile_default_step.py --model ~/.cache/lhama-bench/llama3.2-1b.random.q4_0.gguf

Files without a vocabulary (``bench/run.py --shapes``) get the default model's tokenizer; the
prompt is token ids either way. Shares are of the profiled self CPU time; the profiler's own
overhead inflates the many small ops (dispatch-bound parts look larger than they are untimed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if (REPO / "src" / "lhama").is_dir():
    sys.path.insert(0, str(REPO / "src"))

# (kind, substrings of ATen op names), first match wins
KINDS = [
    ("int4 matmul (weights)", ("_weight_int4pack_mm",)),
    ("int8 matmul (weights)", ("_weight_int8pack_mm",)),
    ("float matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul")),
    ("attention (SDPA)", ("scaled_dot_product", "_flash_attention", "_efficient_attention")),
    ("dtype casts and copies", ("aten::to", "aten::_to_copy", "aten::copy_", "aten::contiguous", "aten::clone")),
    (
        "element-wise math (norms, RoPE, SwiGLU)",
        (
            "aten::mul",
            "aten::add",
            "aten::rsqrt",
            "aten::pow",
            "aten::mean",
            "aten::silu",
            "aten::neg",
            "aten::cat",
            "aten::sub",
            "aten::div",
            "aten::rms_norm",
            "aten::cos",
            "aten::sin",
            "aten::exp",
        ),
    ),
    (
        "views, indexing, KV writes",
        (
            "aten::view",
            "aten::reshape",
            "aten::transpose",
            "aten::slice",
            "aten::select",
            "aten::index",
            "aten::narrow",
            "aten::unsqueeze",
            "aten::expand",
            "aten::as_strided",
            "aten::t",
            "aten::permute",
            "aten::split",
            "aten::chunk",
            "aten::squeeze",
        ),
    ),
    ("sampling (argmax, softmax)", ("aten::argmax", "aten::softmax", "aten::topk", "aten::max", "aten::sort")),
    ("allocation", ("aten::empty", "aten::zeros", "aten::ones", "aten::full", "aten::resize_")),
]


def kind_of(name: str) -> str:
    for kind, keys in KINDS:
        if any(k in name for k in keys):
            return kind
    return "other ATen ops"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--context", type=int, default=64, help="prompt tokens before the profiled steps")
    ap.add_argument("--steps", type=int, default=4, help="decode steps profiled")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from lhama.generate import SamplingParams, generate_tokens
    from lhama.loader import default_model_path, load_model
    from lhama.tokenizer import load_tokenizer

    torch.set_num_threads(a.threads)
    path = default_model_path() if a.model == "default" else Path(a.model).expanduser()
    kw = {}
    try:
        load_tokenizer(path)
    except Exception:  # no vocabulary in the file: the default model's (ids are all that is used)
        tpl = Path(tempfile.mkdtemp()) / "plain.jinja"
        tpl.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
        kw = {"tokenizer": str(default_model_path()), "chat_format": str(tpl)}
    lm = load_model(path, **kw)
    vocab = lm.args.vocab_size
    prompt = [(7 * i + 11) % (vocab - 3) + 3 for i in range(a.context)]
    params = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)
    list(generate_tokens(lm.model, prompt[:8], params))  # warm-up

    # Untimed by the profiler first: wall time per decode step.
    params = SamplingParams(temperature=0.0, max_tokens=a.steps + 1, ignore_eos=True)
    times = []
    for _ in generate_tokens(lm.model, prompt, params):
        times.append(time.perf_counter())
    step_ms = 1000 * (times[-1] - times[0]) / (len(times) - 1)

    # The profiler starts after the first token (the prefill) and stops after the last.
    prof = profile(activities=[ProfilerActivity.CPU])
    for i, _ in enumerate(generate_tokens(lm.model, prompt, params)):
        if i == 0:
            prof.start()
    prof.stop()
    by_kind: dict[str, float] = defaultdict(float)
    calls = 0
    for e in prof.key_averages():
        if not e.key.startswith("aten::") and not e.key.startswith("mkldnn") and "pack" not in e.key:
            continue
        by_kind[kind_of(e.key)] += e.self_cpu_time_total
        calls += e.count
    total = sum(by_kind.values()) or 1.0
    rows = sorted(by_kind.items(), key=lambda kv: -kv[1])
    desc = lm.quant.describe() if lm.quant is not None and hasattr(lm.quant, "describe") else ""
    print(f"model: {path.name} ({lm.args.n_params() / 1e6:.0f}M params), no flags; {desc}")
    print(f"decode step, untimed by the profiler: {step_ms:.1f} ms (median of {a.steps}, context {a.context})")
    print(f"ATen calls per decode step: {calls / a.steps:.0f}")
    for kind, us in rows:
        print(f"  {kind:45s} {100 * us / total:5.1f}%  {us / a.steps / 1000:8.2f} ms/step (profiled)")
    if a.json:
        a.json.write_text(
            json.dumps(
                {
                    "model": path.name,
                    "step_ms": step_ms,
                    "calls_per_step": calls / a.steps,
                    "shares": {k: us / total for k, us in rows},
                    "profiled_ms_per_step": {k: us / a.steps / 1000 for k, us in rows},
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
