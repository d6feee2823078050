"""llama.cpp through llama-cpp-python: one sequence at a time (the Python binding has no
continuous batching; its server runs parallel slots, which is not what is measured here).

It runs the GGUF file's own quantization (Q4_1 for the default model) with its own kernels,
while lhama and transformers dequantize the weights to fp32 (bf16 on GPU) at load.
"""

from __future__ import annotations

import time

from harness import measure
from harness.workload import Workload, is_gguf


def run(w: Workload, out: dict) -> None:
    if not is_gguf(w.model):
        raise SystemExit(f"llama.cpp needs a GGUF file, not {w.model!r}")
    import llama_cpp

    t0 = time.perf_counter()
    n_ctx = max(w.prompt_len + w.gen_single, max(len(p) for p in w.conc_prompts) + w.gen_conc) + 16
    gpu = w.device.startswith("cuda")
    llm = llama_cpp.Llama(
        w.model,
        n_ctx=n_ctx,
        n_batch=512,
        n_threads=w.threads,
        n_threads_batch=w.threads,
        n_gpu_layers=-1 if gpu else 0,
        seed=w.seed,
        verbose=False,
    )
    load_s = time.perf_counter() - t0

    def stream(prompt: list[int], gen: int) -> dict:
        llm.reset()  # no KV reuse between runs: every run prefills its whole prompt
        times = []
        t = measure.now()
        for _ in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            times.append(measure.now())
            if len(times) == gen:  # generate() never stops by itself: EOS is ignored here
                break
        return measure.single_stream(t, times, len(prompt))

    na = "n/a (llama-cpp-python: no continuous batching)"
    offload = "all layers on GPU" if gpu else "CPU"
    # Filled as each measurement finishes: a timeout (SIGTERM) reports what is done.
    col = out["columns"]["llama.cpp"] = {
        "load_s": load_s,
        "load_peak_rss_mib": measure.peak_rss_mib(),
        **{f"agg_{n}": na for n in w.concurrency if n > 1},
    }
    out["notes"].append(f"llama.cpp runs the file's quantized weights ({offload}, n_threads={w.threads})")
    out["info"] = {"llama_cpp_python": llama_cpp.__version__, "threads": w.threads}
    out["details"]["n_ctx"] = n_ctx
    stream(w.prompt_ids[:16], 4)  # warm-up
    s = stream(w.prompt_ids, w.gen_single)
    col.update(prefill_tok_s=s["prefill_tok_s"], ttft_s=s["ttft_s"], decode_tok_s=s.get("decode_tok_s"))
    out["details"]["single"] = s
    # Concurrency 1 = the first concurrent prompt alone, so it compares with the others' runs.
    one = stream(w.conc_prompts[0], w.gen_conc)
    col.update(agg_1=one.get("decode_tok_s"), e2e_1=one["e2e_tok_s"])
    col["single_peak_rss_mib"] = measure.peak_rss_mib()  # all of its runs: one stream, concurrency 1
    out["details"]["concurrent_1"] = one
