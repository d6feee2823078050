"""lhama: the reference single-sequence loop and the continuous-batching engine, same weights.

The engine is handed no tokenizer (ids in, ids out), like the peers here: detokenization is not
part of what is measured. Its KV cache is sized to what the workload needs rather than the
default budget, so the peak RSS compares weights + working memory, not an idle reservation.
"""

from __future__ import annotations

import time

import torch

from harness import measure
from harness.workload import Workload, is_gguf

ENGINE_BLOCK = 16


def load(w: Workload, quantize: str | None = None, *, no_flags: bool = False):
    """``no_flags``: what ``load_model(path)`` gives a new user (a quantized GGUF stays quantized);
    otherwise float weights of the workload's dtype (then ``quantize`` at load)."""
    dtype = None if no_flags else {"fp32": torch.float32, "bf16": torch.bfloat16}[w.dtype]
    t0 = time.perf_counter()
    if is_gguf(w.model):
        from lhama.loader import load_model

        model = load_model(
            w.model, dtype=dtype, device=w.device, quantize=quantize, tokenizer=w.tokenizer, chat_format=w.chat_format
        ).model
    else:  # a named config: random weights, no tokenizer needed (ids are given)
        from lhama.model import build_model, get_config

        model = build_model(
            get_config(w.model).args, dtype=dtype or torch.float32, device=w.device, init="random"
        ).eval()
        if quantize:
            from lhama.quant import quantize_model

            quantize_model(model, quantize)
    if w.device.startswith("cuda"):
        torch.cuda.synchronize()
    return model, time.perf_counter() - t0


def wait_for_copies(model, notes: list[str]) -> None:
    """Let the tensors a load left past its copy budget reach huge pages before anything is
    timed (steady-state decode), and say what that took: the load time does not include it."""
    from lhama.checkpoints.quantized import wait_for_weight_copies, weight_copies

    copies = weight_copies(model)
    if copies is None:
        return
    t0 = time.perf_counter()
    wait_for_weight_copies(model)
    notes.append(
        f"lhama: {copies.total} tensors ({copies.bytes_total / 2**20:.0f} MiB) past the load's "
        f"LHAMA_WEIGHTS_COPY_SECONDS budget went to huge pages in a background thread: the runs "
        f"waited {time.perf_counter() - t0:.1f} s for it after the load (thread CPU "
        f"{copies.cpu_seconds:.1f} s); the load time above excludes it"
    )


def reference_single(model, prompt: list[int], gen: int) -> dict:
    from lhama.generate import SamplingParams, generate_tokens

    params = SamplingParams(temperature=0.0, max_tokens=gen, ignore_eos=True)
    times = []
    t0 = measure.now()
    for _ in generate_tokens(model, prompt, params):
        times.append(measure.now())
    return measure.single_stream(t0, times, len(prompt))


def make_engine(model, w: Workload, *, compile: bool = False, cuda_graphs: bool = True):
    from lhama.engine import EngineConfig, LLMEngine

    per_seq = max(-(-(len(p) + w.gen_conc) // ENGINE_BLOCK) for p in w.conc_prompts) if w.conc_prompts else 0
    single = -(-(w.prompt_len + w.gen_single) // ENGINE_BLOCK)
    blocks = max(max(w.concurrency) * per_seq, single) + 8
    cfg = EngineConfig(
        block_size=ENGINE_BLOCK,
        num_blocks=blocks,
        max_num_seqs=max(max(w.concurrency), 1),
        max_num_batched_tokens=w.engine_max_batched_tokens,
        compile=compile,
        cuda_graphs=cuda_graphs,
    )
    return LLMEngine(model, None, cfg, stop_ids=())


def engine_run(engine, prompts: list[list[int]], gen: int) -> tuple[float, list[tuple[float, int, int]], dict]:
    """Submit all prompts at once and step to the end: (t0, per-step log, first-token time per request)."""
    from lhama.generate import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=gen, ignore_eos=True)
    t0 = measure.now()
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, params)
    first: dict[str, float] = {}
    steps = []
    while engine.has_unfinished():
        deltas = engine.step()
        t = measure.now()
        n = 0
        for d in deltas:
            n += len(d.steps)
            first.setdefault(d.request_id, t)
        if n:
            steps.append((t, n, len(first)))
    return t0, steps, first


def engine_single(engine, prompt: list[int], gen: int) -> dict:
    t0, steps, _ = engine_run(engine, [prompt], gen)
    times = [t for t, n, _ in steps for _ in range(n)]
    return measure.single_stream(t0, times, len(prompt))


def engine_concurrent(engine, prompts: list[list[int]], gen: int) -> dict:
    t0, steps, first = engine_run(engine, prompts, gen)
    out = measure.concurrent(t0, steps, len(prompts))
    out["mean_ttft_s"] = sum(first.values()) / len(first) - t0
    out["steps"] = len(steps)
    return out


def warm_up(model, engine, w: Workload) -> float:
    """One short request through each path (first-call costs: allocator, oneDNN, lazy init)."""
    t0 = measure.now()
    short = w.prompt_ids[:16]
    if engine is None:
        reference_single(model, short, 4)
    else:
        engine_run(engine, [short], 4)
        engine_run(engine, [short, w.prompt_ids[16:32]], 4)
        # Every batch size the runs will use, with tiny prompts: with torch.compile this is
        # where (re)compilation happens, outside the measurements.
        for n in w.concurrency:
            if n > 2:
                engine_run(engine, [p[:8] for p in w.conc_prompts[:n]], 3)
        graphs = engine.runner.graphs
        if graphs is not None:  # CUDA: capture now what the runs will replay (steady state is measured)
            graphs.capture(
                [1] + list(w.concurrency), [w.prompt_len + w.gen_single, max(map(len, w.conc_prompts)) + w.gen_conc]
            )
    return measure.now() - t0


def engine_columns(engine, w: Workload, col: dict, details: dict, marks: dict | None = None) -> None:
    """Fill ``col``/``details`` as each measurement finishes (a timeout keeps what is done);
    ``marks``: where the RSS after each measurement goes (``measure.mark_rss``)."""
    s = engine_single(engine, w.prompt_ids, w.gen_single)
    col.update(prefill_tok_s=s["prefill_tok_s"], ttft_s=s["ttft_s"], decode_tok_s=s.get("decode_tok_s"))
    details["single"] = s
    # The peak through the single-stream runs (one stream, then concurrency 1), which every
    # system makes: the like-for-like memory figure before the 8/32-concurrent KV cache.
    col["single_peak_rss_mib"] = measure.peak_rss_mib()
    if marks is not None:
        measure.mark_rss(marks, "engine single stream")
    for n in w.concurrency:
        c = engine_concurrent(engine, w.conc_prompts[:n], w.gen_conc)
        col[f"agg_{n}"] = c.get("agg_tok_s", "n/a (no decode phase)")
        col[f"e2e_{n}"] = c["e2e_tok_s"]
        details[f"concurrent_{n}"] = c
        if n == 1:
            col["single_peak_rss_mib"] = measure.peak_rss_mib()
        if marks is not None:
            measure.mark_rss(marks, f"{n} concurrent")


def _info(w: Workload) -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": w.dtype}


def run(w: Workload, out: dict, *, cuda_graphs: bool = True, no_flags: bool = True) -> None:
    """No flags: the weights as ``load_model(path)`` keeps them (the default path of every
    command); ``no_flags=False``: float weights of the workload's dtype (``--dtype float32``)."""
    out["info"] = _info(w) | {"no_flags": no_flags}
    model, load_s = load(w, no_flags=no_flags)
    load_peak = measure.peak_rss_mib()  # VmHWM right after loading: the load's own peak
    cols, details, notes = out["columns"], out["details"], out["notes"]
    measure.mark_rss(details, "load")
    wait_for_copies(model, notes)

    if cuda_graphs and no_flags:  # (the eager and float variants only re-measure the engine)
        warm_up(model, None, w)
        ref = cols["lhama (reference loop)"] = {"load_s": load_s, "load_peak_rss_mib": load_peak}
        s = details["reference_single"] = reference_single(model, w.prompt_ids, w.gen_single)
        ref.update(prefill_tok_s=s["prefill_tok_s"], ttft_s=s["ttft_s"], decode_tok_s=s.get("decode_tok_s"))
        one = details["reference_concurrent_1"] = reference_single(model, w.conc_prompts[0], w.gen_conc)
        ref.update(agg_1=one.get("decode_tok_s"), e2e_1=one["e2e_tok_s"])
        ref.update({f"agg_{n}": "n/a (single sequence by design)" for n in w.concurrency if n > 1})
        ref["single_peak_rss_mib"] = measure.peak_rss_mib()
        measure.mark_rss(details, "reference loop")

    try:
        engine = make_engine(model, w, cuda_graphs=cuda_graphs)
    except ImportError as e:  # the engine package is not there (yet)
        cols["lhama (engine)"] = {
            k: "n/a (engine missing)"
            for k in ["prefill_tok_s", "ttft_s", "decode_tok_s"] + [f"agg_{n}" for n in w.concurrency]
        }
        notes.append(f"engine missing: {e}")
        return
    details["engine_config"] = {
        "num_blocks": engine.plan.num_blocks,
        "block_size": engine.plan.block_size,
        "max_num_seqs": engine.config.max_num_seqs,
        "max_num_batched_tokens": engine.config.max_num_batched_tokens,
    }
    details["engine_config"]["kv_cache_mib"] = engine.cache.nbytes / 2**20
    measure.mark_rss(details, f"engine built (KV cache {engine.cache.nbytes / 2**20:.0f} MiB reserved)")
    warm_up(model, engine, w)
    measure.mark_rss(details, "warm-up")
    from lhama.quant import weight_bytes

    name = "lhama (engine)" if cuda_graphs else "lhama (engine, eager)"
    if not no_flags:
        name = f"lhama (engine, {w.dtype})"
    cols[name] = {"load_s": load_s, "load_peak_rss_mib": load_peak, "weight_mib": weight_bytes(model) / 2**20}
    details["engine"] = {}
    try:
        engine_columns(engine, w, cols[name], details["engine"], details)
    finally:
        if no_flags and cuda_graphs and (line := measure.rss_note(details, "lhama")):
            notes.append(line)
    if engine.runner.graphs is not None:
        details["cuda_graphs_captured"] = engine.runner.graphs.num_captured
    kv = engine.kv_manager
    if kv.num_free_blocks != kv.num_blocks:
        notes.append(f"engine left {kv.num_used_blocks} KV blocks in use after the runs")


def run_float(w: Workload, out: dict) -> None:
    """The engine on dequantized float weights (``--dtype float32``; bf16 on a GPU)."""
    run(w, out, no_flags=False)


def run_eager(w: Workload, out: dict) -> None:
    """The engine with CUDA graphs off (``--enforce-eager``): what the graphs buy on a GPU."""
    run(w, out, cuda_graphs=False)


def run_compiled(w: Workload, out: dict) -> None:
    """The torch.compile experiment: the engine's ``compile=True`` (the pure-decode forward is
    compiled with dynamic shapes). Reports the compile cost separately: the extra wall time of
    the warm-up requests over the same warm-up uncompiled."""
    import torch._dynamo

    out["info"] = _info(w)
    # Batch 1 only: each new batch-size regime is another compilation (minutes on 2 CPU cores).
    w = Workload.from_json({**w.to_json(), "concurrency": [1]})
    out["notes"].append(
        "torch.compile experiment: single stream only (the engine's compile=True, "
        "dynamic shapes); its warm-up time is the compile cost"
    )
    model, load_s = load(w)
    plain = make_engine(model, w)
    warm_up(model, plain, w)  # first-call costs that are not compilation
    plain_s = warm_up(model, plain, w)
    del plain
    engine = make_engine(model, w, compile=True)
    warm_s = warm_up(model, engine, w)
    col = out["columns"]["lhama (engine, torch.compile)"] = {"load_s": load_s, "compile_s": warm_s - plain_s}
    det = out["details"]
    det.update(first_warmup_s=warm_s, plain_warmup_s=plain_s, engine_compiled={})
    try:
        engine_columns(engine, w, col, det["engine_compiled"])
    finally:
        det["dynamo_counters"] = {
            k: dict(v) for k, v in torch._dynamo.utils.counters.items() if k in ("stats", "recompiles")
        }


def run_quantized(w: Workload, out: dict, mode: str) -> None:
    """The engine on weights quantized at load (``load_model(quantize=mode)``)."""
    from lhama.quant import weight_bytes

    out["info"] = _info(w) | {"quantize": mode}
    model, load_s = load(w, quantize=mode)
    out["info"]["weight_mib"] = weight_bytes(model) / 2**20
    engine = make_engine(model, w)
    warm_up(model, engine, w)
    col = out["columns"][f"lhama (engine, {mode})"] = {"load_s": load_s, "weight_mib": out["info"]["weight_mib"]}
    out["details"]["engine"] = {}
    engine_columns(engine, w, col, out["details"]["engine"])


def run_int8(w: Workload, out: dict) -> None:
    run_quantized(w, out, "int8")


def run_int4(w: Workload, out: dict) -> None:
    run_quantized(w, out, "int4")


def run_fp8(w: Workload, out: dict) -> None:
    run_quantized(w, out, "fp8")
