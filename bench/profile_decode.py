"""Where a single-stream decode step of lhama spends its time, and what a few model-side
changes would buy. Feeds the "Benchmark" section of docs/performance.md.

    python bench/profile_decode.py [--model default] [--context 512] [--steps 32] [--json out.json]
    python bench/profile_decode.py --quantize int4 --skip-experiments   # the quantized model

1. Wall time per decode step (no profiler) for the reference loop and the engine at batch 1.
2. A torch.profiler breakdown of reference-loop decode steps by part of the model: the model's
   modules are labelled from outside (``record_function`` wrappers set up here; the model code
   is not touched): q/k/v, o, MLP and LM-head linears, RoPE, RMSNorm, attention with the KV
   write, SwiGLU element-wise, sampling, and what is left (Python and dispatch glue).
3. The floor: the same linear layers alone, back to back (the weight bytes each step must read).
4. Experiments, each a monkeypatch on a fresh model (numbers only; nothing here changes lhama):
   fused wq/wk/wv and w1/w3, ``F.rms_norm``, complex-number RoPE, oneDNN-packed linears, bf16
   weights, int8 weight-only; measured in alternating rounds (best round's median).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
if (REPO / "src" / "lhama").is_dir():
    sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))  # harness/, profile_engine.py

from lhama.generate import SamplingParams, generate_tokens
from lhama.model import kv_cache as kv_mod
from lhama.model import transformer as tr
from lhama.quant import QUANTIZED_TYPES

rf = torch.profiler.record_function
LINEARS = (nn.Linear,) + QUANTIZED_TYPES


def load(spec: str, dtype=torch.float32, quantize: str | None = None, **kw):
    from lhama.loader import load_model

    return load_model(spec, dtype=dtype, device="cpu", quantize=quantize, **kw).model


def prompt_ids(n: int) -> list[int]:
    from harness.workload import token_stream

    from lhama.loader import default_model_path

    return token_stream(str(default_model_path()), n)[0]


# -- timing ----------------------------------------------------------------------------------
def decode_step_times(model, prompt: list[int], steps: int) -> list[float]:
    """Seconds per decode step of the reference loop (prefill excluded)."""
    params = SamplingParams(temperature=0.0, max_tokens=steps + 1, ignore_eos=True)
    times, last = [], None
    for _ in generate_tokens(model, prompt, params):
        t = time.perf_counter()
        if last is not None:
            times.append(t - last)
        last = t
    return times


def engine_step_times(model, prompt: list[int], steps: int) -> list[float]:
    """Seconds per decode step of the engine at batch 1 (profile_engine.py's measurement)."""
    from profile_engine import blocks_for
    from profile_engine import engine_step_times as batched_step_times

    from lhama.engine import EngineConfig

    config = EngineConfig(num_blocks=blocks_for(1, len(prompt) + steps + 2), max_num_seqs=1)
    return batched_step_times(model, [prompt], steps + 1, config)[1]


def ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


# -- labelled profile ------------------------------------------------------------------------
@contextmanager
def labelled(model):
    """Wrap the model's parts in record_function labels; undo on exit."""
    undo = []

    def wrap_instance(mod: nn.Module, label: str):
        orig = mod.forward

        def fwd(*a, **k):
            with rf(label):
                return orig(*a, **k)

        mod.forward = fwd
        undo.append(lambda: delattr(mod, "forward"))

    def wrap_attr(owner, name: str, label: str):
        orig = getattr(owner, name)

        def fn(*a, **k):
            with rf(label):
                return orig(*a, **k)

        setattr(owner, name, fn)
        undo.append(lambda: setattr(owner, name, orig))

    roles = {
        "wq": "linear q/k/v",
        "wk": "linear q/k/v",
        "wv": "linear q/k/v",
        "wo": "linear o",
        "w1": "linear mlp w1/w3",
        "w3": "linear mlp w1/w3",
        "w2": "linear mlp w2",
        "wqkv": "linear q/k/v",
        "w13": "linear mlp w1/w3",
    }  # fused by lhama.quant
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(mod, LINEARS):
            wrap_instance(mod, "linear lm_head" if name == "output" else roles[leaf])
        elif isinstance(mod, tr.RMSNorm):
            wrap_instance(mod, "rmsnorm")
        elif isinstance(mod, tr.FeedForward):
            wrap_instance(mod, "~mlp")
        elif isinstance(mod, tr.Attention):
            wrap_instance(mod, "~attention block")
        elif isinstance(mod, nn.Embedding):
            wrap_instance(mod, "embedding")
    wrap_attr(tr, "rotate", "rope")
    wrap_attr(tr, "rope_cos_sin", "rope")
    wrap_attr(tr, "rope_rotation", "rope")
    wrap_attr(kv_mod.StaticKVCache, "attend", "attention + KV write")
    from lhama.generate.sampling import BatchSampler

    wrap_attr(BatchSampler, "sample", "sampling")
    try:
        yield
    finally:
        for u in reversed(undo):
            u()


def profile_breakdown(model, prompt: list[int], steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    params = SamplingParams(temperature=0.0, max_tokens=steps + 4, ignore_eos=True)
    with labelled(model):
        gen = generate_tokens(model, prompt, params)
        for _ in range(4):  # prefill and a few warm steps, outside the profile
            next(gen)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                with rf("~step"):
                    next(gen)
    tot = {e.key: e.cpu_time_total / steps / 1e3 for e in prof.key_averages()}  # ms per step, inclusive
    aten_self = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("aten::")) / steps / 1e3
    step = tot["~step"]
    parts = {k: v for k, v in tot.items() if not k.startswith(("~", "aten::")) and not k.startswith("cpp")}
    parts = {
        k: v
        for k, v in parts.items()
        if k
        in {
            "linear q/k/v",
            "linear o",
            "linear mlp w1/w3",
            "linear mlp w2",
            "linear lm_head",
            "rope",
            "rmsnorm",
            "attention + KV write",
            "sampling",
            "embedding",
        }
    }
    parts["swiglu element-wise (silu, mul)"] = tot["~mlp"] - parts["linear mlp w1/w3"] - parts["linear mlp w2"]
    # "rope" also holds the one rope_cos_sin call per step, outside the blocks: a slight undercount here.
    parts["attention-block glue (view, reshape)"] = (
        tot["~attention block"]
        - parts["linear q/k/v"]
        - parts["linear o"]
        - parts["rope"]
        - parts["attention + KV write"]
    )
    parts["other (residual adds, loop, Python)"] = step - sum(parts.values())
    ops = sorted(
        (
            (e.key, e.self_cpu_time_total / steps / 1e3, e.count // steps)
            for e in prof.key_averages()
            if e.key.startswith("aten::")
        ),
        key=lambda x: -x[1],
    )[:15]
    return {"step_ms_profiled": step, "aten_self_ms": aten_self, "parts_ms": parts, "top_aten_ops": ops}


def linear_floor(model, reps: int = 20) -> float:
    """ms for every linear layer of one decode step alone (x is [1, 1, dim])."""
    lins = [m for m in model.modules() if isinstance(m, LINEARS)]
    x = {m.in_features: torch.randn(1, 1, m.in_features) for m in lins}
    # Plain linears through F.linear (no module hooks); quantized ones through their kernels.
    calls = [
        (lambda m=m: F.linear(x[m.in_features], m.weight))
        if isinstance(m, nn.Linear)
        else (lambda m=m: m(x[m.in_features]))
        for m in lins
    ]
    with torch.inference_mode():
        for _ in range(3):
            for c in calls:
                c()
        t = time.perf_counter()
        for _ in range(reps):
            for c in calls:
                c()
    return (time.perf_counter() - t) / reps * 1e3


# -- experiments (monkeypatches on a model instance) ------------------------------------------
def fuse_projections(model) -> None:
    """One [q;k;v] matmul per layer instead of three, one [w1;w3] instead of two."""
    for layer in model.layers:
        att, ff = layer.attention, layer.feed_forward
        wqkv = torch.cat([att.wq.weight, att.wk.weight, att.wv.weight]).detach()
        nq, nk = att.wq.out_features, att.wk.out_features

        def att_fwd(x, rotation, cache, att=att, wqkv=wqkv, nq=nq, nk=nk):
            B, T, _ = x.shape
            q, k, v = F.linear(x, wqkv).split([nq, nk, nk], dim=-1)
            q = q.view(B, T, att.n_heads, att.head_dim)
            k = k.view(B, T, att.n_kv_heads, att.head_dim)
            v = v.view(B, T, att.n_kv_heads, att.head_dim)
            q, k = tr.rotate(q, rotation), tr.rotate(k, rotation)
            out = cache.attend(att.layer_id, q, k, v)
            return att.wo(out.reshape(B, T, -1))

        w13 = torch.cat([ff.w1.weight, ff.w3.weight]).detach()
        h = ff.w1.out_features

        def ff_fwd(x, ff=ff, w13=w13, h=h):
            a, b = F.linear(x, w13).split([h, h], dim=-1)
            return ff.w2(F.silu(a) * b)

        att.forward, ff.forward = att_fwd, ff_fwd


def fused_rmsnorm(model) -> None:
    for m in model.modules():
        if isinstance(m, tr.RMSNorm):
            m.forward = lambda x, m=m: F.rms_norm(x, (x.shape[-1],), m.weight, m.eps)


def complex_rope():
    """RoPE as a complex multiply on (2i, 2i+1) pairs (same layout); returns an undo function."""
    # The model's own RoPE is this complex multiply now (lhama.model.rope.rotate): nothing to patch.
    return lambda: None


def int8_weight_only(model) -> None:
    """Per-output-channel int8 weights with ``torch._weight_int8pack_mm`` (gpt-fast style), all linears
    including the (tied) LM head."""
    for _name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear):
            w = m.weight.detach().float()
            scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127
            wq = torch.round(w / scale.unsqueeze(1)).clamp(-128, 127).to(torch.int8).contiguous()

            def fwd(x, wq=wq, scale=scale):
                shp = x.shape
                return torch._weight_int8pack_mm(x.reshape(-1, shp[-1]), wq, scale).view(*shp[:-1], -1)

            m.forward = fwd


def onednn_packed_linears(model) -> None:
    """Every linear through oneDNN with its weight reordered once (what the engine does for the
    LM head, ``EngineConfig.packed_head``), as a module swap."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            packed = torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), None)
            m.forward = lambda x, packed=packed: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def greedy_tokens(model, prompt: list[int], n: int) -> list[int]:
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    return [s.token_id for s in generate_tokens(model, prompt, params)]


def experiments(a, model, prompt: list[int], log, rounds: int = 3, steps: int = 12) -> dict:
    """Every variant loaded side by side, then measured in alternating rounds; the figure is the
    best round's median step, so a burst of other load on a shared machine hits all alike."""
    want = greedy_tokens(model, prompt, 16)
    variants = {
        "baseline (fp32, as shipped)": (None, torch.float32),
        "fused wq/wk/wv and w1/w3": (fuse_projections, torch.float32),
        "F.rms_norm": (fused_rmsnorm, torch.float32),
        "complex-multiply RoPE": ("rope", torch.float32),
        "oneDNN-packed linears (fp32)": (onednn_packed_linears, torch.float32),
        "bf16 weights": (None, torch.bfloat16),
        "bf16 + oneDNN-packed linears": (onednn_packed_linears, torch.bfloat16),
        "int8 weight-only (_weight_int8pack_mm)": (int8_weight_only, torch.float32),
    }
    models, same = {}, {}
    for name, (setup, dtype) in variants.items():
        m = model if name.startswith("baseline") else load(a.model, dtype)
        if callable(setup):
            setup(m)
        models[name] = m
    best = {n: float("inf") for n in variants}
    for r in range(rounds):
        for name, m in models.items():
            undo = complex_rope() if variants[name][0] == "rope" else None
            try:
                if r == 0:
                    decode_step_times(m, prompt[:16], 4)
                    got = greedy_tokens(m, prompt, 16)
                    same[name] = sum(x == y for x, y in zip(got, want))
                best[name] = min(best[name], ms(decode_step_times(m, prompt, steps)))
            finally:
                if undo:
                    undo()
    base = best["baseline (fp32, as shipped)"]
    res = {}
    log(f"experiments (reference loop decode step, best of {rounds} rounds' medians):")
    for name in variants:
        res[name] = {"step_ms": best[name], "speedup": base / best[name], "greedy_tokens_equal": f"{same[name]}/16"}
        log(f"  {name:40s} {best[name]:7.1f} ms  x{base / best[name]:.2f}  same greedy tokens {same[name]}/16")
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--context", type=int, default=512, help="prompt tokens before the profiled decode steps")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-experiments", action="store_true")
    ap.add_argument("--quantize", choices=["int8", "int4", "fp8"], help="profile the quantized model (no experiments)")
    ap.add_argument(
        "--no-flags",
        action="store_true",
        help="profile the model as load_model(path) keeps it (a quantized GGUF stays quantized)",
    )
    ap.add_argument("--tokenizer", help="for a GGUF without a vocabulary (bench/run.py --shapes files)")
    ap.add_argument("--chat-format", help="for a GGUF without a vocabulary (a .jinja file)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out: dict = {"threads": a.threads, "context": a.context, "steps": a.steps, "torch": torch.__version__}
    model = load(
        a.model,
        dtype=None if a.no_flags else torch.float32,
        quantize=a.quantize,
        tokenizer=a.tokenizer,
        chat_format=a.chat_format,
    )
    out["quantize"], out["no_flags"] = a.quantize, a.no_flags
    prompt = prompt_ids(a.context)
    log = lambda *x: print(*x, file=sys.stderr, flush=True)

    decode_step_times(model, prompt[:16], 4)
    ref = decode_step_times(model, prompt, a.steps)
    eng = engine_step_times(model, prompt, a.steps)
    out["reference_step_ms"], out["engine_step_ms"] = ms(ref), ms(eng)
    log(f"decode step (median): reference loop {ms(ref):.1f} ms, engine {ms(eng):.1f} ms")
    out["linear_floor_ms"] = linear_floor(model)
    log(f"all linear layers alone: {out['linear_floor_ms']:.1f} ms")
    out["profile"] = prof = profile_breakdown(model, prompt, a.steps)
    log(f"profiled step {prof['step_ms_profiled']:.1f} ms, of which ATen ops (self) {prof['aten_self_ms']:.1f} ms")
    for k, v in sorted(prof["parts_ms"].items(), key=lambda kv: -kv[1]):
        log(f"  {k:40s} {v:7.2f} ms  {v / prof['step_ms_profiled']:6.1%}")
    for k, v, c in prof["top_aten_ops"]:
        log(f"    {k:40s} {v:7.2f} ms  x{c}")

    if not a.skip_experiments and not a.quantize and not a.no_flags:
        out["experiments"] = experiments(a, model, prompt, log)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
