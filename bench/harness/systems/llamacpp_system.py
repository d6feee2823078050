"""llama.cpp through llama-cpp-python: one sequence at a time through its ``Llama`` object, then
the concurrent runs with llama.cpp's own batching through the low-level API.

Concurrent: one llama.cpp context holding every sequence (``n_seq_max`` = the concurrency, KV
cache sized to the workload, one KV stream per sequence: llama.cpp's default for sequences that
share no prefix), driven as llama.cpp's server drives its slots: each step is one
``llama_decode`` over the next token of every live sequence, then as many prompt tokens of the
waiting sequences as fit in ``n_batch`` (prompts are prefilled batched, chunked at ``n_batch``,
logits only for a prompt's last token), greedy (argmax of ``llama_get_logits_ith``). The
Python binding has no continuous-batching loop of its own, so this one is written here; its
per-step Python work is filling the batch and one argmax per sequence.

It runs the GGUF file's own quantization (Q4_1 for the default model) with its own kernels.
"""

from __future__ import annotations

import time
from collections import deque

from harness import measure
from harness.workload import Workload, is_gguf

N_BATCH = 512  # llama.cpp's logical batch (and physical: n_ubatch), as the single-stream runs use


class Batched:
    """A llama.cpp context with ``n_seq`` sequences of up to ``per_seq`` tokens each, made with
    the ``Llama`` object's own context settings (threads, flash attention, KV type)."""

    def __init__(self, llm, n_seq: int, per_seq: int):
        import llama_cpp

        self.lib = llama_cpp
        p = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        p.n_seq_max = n_seq
        p.n_ctx = n_seq * per_seq
        p.n_batch = p.n_ubatch = N_BATCH
        self.ctx = llama_cpp.llama_init_from_model(llm.model, p)
        if not self.ctx:
            raise RuntimeError(f"llama_init_from_model failed (n_seq_max={n_seq}, n_ctx={p.n_ctx})")
        self.n_ctx_seq = llama_cpp.llama_n_ctx_seq(self.ctx)
        self.unified = bool(p.kv_unified)
        if self.n_ctx_seq < per_seq:
            self.close()
            raise RuntimeError(f"llama.cpp gave {self.n_ctx_seq} tokens of KV per sequence, {per_seq} needed")
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llm.model))
        self.batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)

    def close(self) -> None:
        if getattr(self, "batch", None) is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            self.lib.llama_free(self.ctx)
            self.ctx = None

    def run(
        self, prompts: list[list[int]], gen: int
    ) -> tuple[float, list[tuple[float, int, int]], list[list[int]], list[float]]:
        """All prompts submitted at once, greedy, ``gen`` tokens each (EOS ignored): (t0, per-step
        log as ``measure.concurrent`` takes it, the tokens of every sequence, its first token's time)."""
        import numpy as np

        lib, b = self.lib, self.batch
        lib.llama_memory_clear(self.mem, True)  # no KV reuse between runs
        n = len(prompts)
        waiting = deque(range(n))  # sequences whose prompt is not all in the cache yet
        fed = [0] * n  # prompt tokens in the cache
        toks: list[list[int]] = [[] for _ in range(n)]
        steps = []
        first = [0.0] * n
        started = 0
        k = 0
        outputs: list[tuple[int, int]] = []  # this step's (index in the batch, sequence) with logits

        def add(tok: int, pos: int, seq: int, logits: bool) -> None:
            nonlocal k
            b.token[k], b.pos[k], b.n_seq_id[k], b.logits[k] = tok, pos, 1, logits
            b.seq_id[k][0] = seq
            if logits:
                outputs.append((k, seq))
            k += 1

        t0 = measure.now()
        while started < n or any(len(t) < gen for t in toks):
            k = 0
            outputs.clear()
            for s in range(n):  # one token for every live sequence
                if toks[s] and len(toks[s]) < gen:
                    add(toks[s][-1], len(prompts[s]) + len(toks[s]) - 1, s, True)
            while waiting and k < N_BATCH:  # then prompt tokens, as many as fit
                s = waiting[0]
                take = min(len(prompts[s]) - fed[s], N_BATCH - k)
                for j in range(fed[s], fed[s] + take):
                    add(prompts[s][j], j, s, j == len(prompts[s]) - 1)
                fed[s] += take
                if fed[s] == len(prompts[s]):
                    waiting.popleft()
            if k == 0:
                raise RuntimeError("nothing to decode before every sequence finished")
            b.n_tokens = k
            rc = lib.llama_decode(self.ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} ({k} tokens in the batch)")
            for i, s in outputs:
                logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
                toks[s].append(int(logits.argmax()))
            t = measure.now()
            for _, s in outputs:
                if len(toks[s]) == 1:
                    started += 1
                    first[s] = t
            if outputs:
                steps.append((t, len(outputs), started))
        return t0, steps, toks, first


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


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
        n_batch=N_BATCH,
        n_threads=w.threads,
        n_threads_batch=w.threads,
        n_gpu_layers=-1 if gpu else 0,
        seed=w.seed,
        verbose=False,
    )
    load_s = time.perf_counter() - t0

    def stream(prompt: list[int], gen: int) -> dict:
        llm.reset()  # no KV reuse between runs: every run prefills its whole prompt
        times, toks = [], []
        t = measure.now()
        for tok in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            times.append(measure.now())
            toks.append(int(tok))
            if len(times) == gen:  # generate() never stops by itself: EOS is ignored here
                break
        return measure.single_stream(t, times, len(prompt)) | {"token_ids": toks}

    offload = "all layers on GPU" if gpu else "CPU"
    # Filled as each measurement finishes: a timeout (SIGTERM) reports what is done.
    col = out["columns"]["llama.cpp"] = {"load_s": load_s, "load_peak_rss_mib": measure.peak_rss_mib()}
    details = out["details"]
    measure.mark_rss(details, "load")
    out["notes"].append(f"llama.cpp runs the file's quantized weights ({offload}, n_threads={w.threads})")
    out["info"] = {"llama_cpp_python": llama_cpp.__version__, "threads": w.threads}
    details["n_ctx"] = n_ctx
    try:
        stream(w.prompt_ids[:16], 4)  # warm-up
        s = stream(w.prompt_ids, w.gen_single)
        col.update(prefill_tok_s=s["prefill_tok_s"], ttft_s=s["ttft_s"], decode_tok_s=s.get("decode_tok_s"))
        details["single"] = s
        # Concurrency 1 = the first concurrent prompt alone, so it compares with the others' runs.
        one = stream(w.conc_prompts[0], w.gen_conc)
        col.update(agg_1=one.get("decode_tok_s"), e2e_1=one["e2e_tok_s"])
        col["single_peak_rss_mib"] = measure.peak_rss_mib()  # one stream, then concurrency 1
        details["concurrent_1"] = one
        measure.mark_rss(details, "single stream and 1 concurrent")
        concurrent(llm, w, out, single_ids=one["token_ids"])
    finally:
        if line := measure.rss_note(details, "llama.cpp"):
            out["notes"].append(line)


def concurrent(llm, w: Workload, out: dict, *, single_ids: list[int]) -> None:
    """The 2+ concurrent runs in one batched context (the single-stream context freed first: the
    process holds one context at a time, as one llama.cpp server does). If llama.cpp's batched
    path fails, those rows say why (the old single-stream-only report)."""
    import llama_cpp

    col, details, notes = out["columns"]["llama.cpp"], out["details"], out["notes"]
    many = [n for n in w.concurrency if n > 1]
    if not many:
        return
    per_seq = max(len(p) for p in w.conc_prompts[: max(many)]) + w.gen_conc
    try:
        llm._ctx.close()  # llm is not used after this  # noqa: SLF001
        ctx = Batched(llm, max(many), per_seq)
    except Exception as e:  # noqa: BLE001 - another build of llama.cpp: say why, keep the rest
        col.update({f"agg_{n}": "n/a (llama.cpp's batched context failed)" for n in many})
        notes.append(f"llama.cpp: concurrency > 1 not measured: its batched context failed ({type(e).__name__}: {e})")
        details["batched_error"] = f"{type(e).__name__}: {e}"
        return
    m = llm.model
    head_dim = llama_cpp.llama_model_n_embd(m) // llama_cpp.llama_model_n_head(m)
    kv_tokens = ctx.n_ctx_seq * max(many)
    # K and V of every layer, f16 (the context's default type_k/type_v)
    kv_mib = kv_tokens * llama_cpp.llama_model_n_layer(m) * 2 * llama_cpp.llama_model_n_head_kv(m) * head_dim * 2
    kv_mib /= 2**20
    details["batched"] = {
        "n_seq_max": max(many),
        "n_ctx_seq": ctx.n_ctx_seq,
        "kv_tokens": kv_tokens,
        "kv_mib_f16": kv_mib,
        "kv_unified": ctx.unified,
        "n_batch": N_BATCH,
    }
    measure.mark_rss(details, f"batched context built (KV {kv_tokens} tokens, {kv_mib:.0f} MiB)")
    done = []
    try:
        for n in many:  # warm-up: every batch size the runs use, tiny prompts (as lhama's warm-up)
            ctx.run([p[:8] for p in w.conc_prompts[:n]], 3)
        measure.mark_rss(details, "warm-up")
        for n in many:
            t0, steps, toks, first = ctx.run(w.conc_prompts[:n], w.gen_conc)
            c = measure.concurrent(t0, steps, n)
            c["mean_ttft_s"] = sum(first) / n - t0
            c["steps"] = len(steps)
            c["tokens_per_sequence"] = sorted({len(t) for t in toks})
            # Sequence 0 is the concurrency-1 prompt: its tokens should be the single stream's.
            c["seq0_matches_single"] = common_prefix(toks[0], single_ids)
            c["seq0_token_ids"] = toks[0]
            col[f"agg_{n}"] = c.get("agg_tok_s", "n/a (no decode phase)")
            col[f"e2e_{n}"] = c["e2e_tok_s"]
            details[f"concurrent_{n}"] = c
            done.append(n)
            measure.mark_rss(details, f"{n} concurrent")
    except Exception as e:  # noqa: BLE001
        col.update({f"agg_{n}": "n/a (llama.cpp's batched decode failed)" for n in many if n not in done})
        notes.append(f"llama.cpp: batched decode failed ({type(e).__name__}: {e})")
        details["batched_error"] = f"{type(e).__name__}: {e}"
    finally:
        ctx.close()
    if done:
        match = ", ".join(f"{details[f'concurrent_{n}']['seq0_matches_single']}/{w.gen_conc}" for n in done)
        notes.append(
            f"llama.cpp concurrent: its own batching in one context (n_seq_max={max(many)}, KV "
            f"{ctx.n_ctx_seq} tokens per sequence: {kv_tokens} tokens, {kv_mib:.0f} MiB f16, "
            f"{'unified' if ctx.unified else 'one stream per sequence'}), one llama_decode per step over "
            f"every live sequence's next token, then waiting prompts' tokens up to {N_BATCH}; greedy. "
            f"Sequence 0's tokens equal the single stream's for the first {match} "
            f"({', '.join(map(str, done))} concurrent)"
        )
