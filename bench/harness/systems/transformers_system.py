"""Hugging Face transformers: the GGUF dequantized by ``from_pretrained(..., gguf_file=...)``,
greedy ``generate`` with its default (dynamic) KV cache; concurrency is one batched
``generate`` call over left-padded prompts (static batching: every sequence starts and ends
together)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from harness import measure
from harness.workload import Workload, is_gguf


class _TokenClock:
    """A ``generate`` streamer that only records when each step's tokens come out."""

    def __init__(self, batch: int, cuda: bool):
        self.batch, self.cuda = batch, cuda
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        if self.cuda:
            torch.cuda.synchronize()
        self.times.append(measure.now())

    def end(self) -> None:
        pass


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), L), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p) :] = torch.tensor(p)
        mask[i, L - len(p) :] = 1
    return ids, mask


def _random_llama(name: str, dtype: torch.dtype, device: str):
    """transformers' own Llama for a lhama config name, randomly initialised on the device (the
    big-model GPU runs: timings do not depend on the weights' values)."""
    import transformers

    from lhama.checkpoints.hf import hf_config
    from lhama.model import get_config

    skip = ("architectures", "torch_dtype", "dtype", "model_type")
    cfg = transformers.LlamaConfig(
        **{k: v for k, v in hf_config(get_config(name).args, dtype).items() if k not in skip}
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bf16 directly: an 8B model in fp32 first needs 32 GB
    try:
        with torch.device(device):
            return transformers.LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)


def run(w: Workload, out: dict) -> None:
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[w.dtype]
    t0 = time.perf_counter()
    if is_gguf(w.model):
        path = Path(w.model)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    else:
        model = _random_llama(w.model, dtype, w.device)
    model = model.to(w.device).eval()
    cuda = w.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    gc = model.generation_config
    # Greedy, and no stopping at EOS: every sequence generates exactly the asked number of tokens.
    gc.do_sample, gc.temperature, gc.top_p, gc.top_k = False, None, None, None
    gc.eos_token_id, gc.pad_token_id = None, 0

    @torch.inference_mode()
    def gen(prompts: list[list[int]], n: int) -> tuple[float, _TokenClock]:
        ids, mask = left_pad(prompts, 0)
        ids, mask = ids.to(w.device), mask.to(w.device)
        clock = _TokenClock(len(prompts), cuda)
        t = measure.now()
        model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, streamer=clock, generation_config=gc
        )
        return t, clock

    out["info"] = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    source = "dequantized from the GGUF" if is_gguf(w.model) else "random (same config)"
    out["notes"].append(f"transformers: {w.dtype} weights {source}, default dynamic KV cache")
    gen([w.prompt_ids[:16]], 4)  # warm-up
    gen([p[:16] for p in w.conc_prompts[:2]], 4)
    t, clock = gen([w.prompt_ids], w.gen_single)
    s = out["details"]["single"] = measure.single_stream(t, clock.times, w.prompt_len)
    col = out["columns"]["transformers"] = {
        "load_s": load_s,
        "prefill_tok_s": s["prefill_tok_s"],
        "ttft_s": s["ttft_s"],
        "decode_tok_s": s.get("decode_tok_s"),
    }
    for n in w.concurrency:
        t, clock = gen(w.conc_prompts[:n], w.gen_conc)
        c = out["details"][f"concurrent_{n}"] = measure.concurrent(t, [(tt, n, n) for tt in clock.times], n)
        col[f"agg_{n}"] = c.get("agg_tok_s", "n/a (no decode phase)")
        col[f"e2e_{n}"] = c["e2e_tok_s"]
