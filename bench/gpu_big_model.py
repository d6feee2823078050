"""Big-model code paths for real on a GPU: Llama 3.1 8B shapes (random weights, bf16) through the
same model, loader and generation loop as the CPU default, checked against Hugging Face
transformers' LlamaForCausalLM holding the same weights, and timed.

    python bench/gpu_big_model.py --out results.json     (needs a CUDA GPU with >= 40 GB)
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def hf_twin(lm):
    """transformers' Llama with our weights (names mapped, Q/K rows permuted to HF's layout)."""
    import transformers

    from lhama.checkpoints.hf import HF_NAMES, hf_config, meta_to_hf_rows

    args = lm.args
    cfg = transformers.LlamaConfig(
        **{
            k: v
            for k, v in hf_config(args, torch.float32).items()
            if k not in ("architectures", "torch_dtype", "dtype", "model_type")
        }
    )
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(cfg)
    sd = {}
    for name, t in lm.model.state_dict().items():
        if name.endswith(".wq.weight"):
            t = meta_to_hf_rows(t, args.n_heads)
        elif name.endswith(".wk.weight"):
            t = meta_to_hf_rows(t, args.n_kv_heads)
        sd[HF_NAMES.to_theirs(name)] = t
    hf.load_state_dict(sd, strict=False, assign=True)
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config=cfg)
    return hf.to("cuda").eval()


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama3.1-8b")
    ap.add_argument("--tokenizer", default="llama3", help="'' for none (random prompt ids)")
    ap.add_argument("--out", default="gpu_big_model.json")
    a = ap.parse_args()

    from lhama.generate import SamplingParams, generate_tokens
    from lhama.loader import load_model

    t0 = time.perf_counter()
    if a.tokenizer:
        lm = load_model(a.model, device="cuda", dtype=torch.bfloat16, tokenizer=a.tokenizer)
    else:  # no tokenizer files on this machine: the same random weights, random prompt ids
        from types import SimpleNamespace

        from lhama.model import build_model, get_config

        model = build_model(get_config(a.model).args, dtype=torch.bfloat16, device="cuda", init="random").eval()
        lm = SimpleNamespace(model=model, args=model.args, tokenizer=None)
    torch.cuda.synchronize()
    res = {
        "model": a.model,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "params": sum(p.numel() for p in lm.model.parameters()),
        "build_s": time.perf_counter() - t0,
        "weights_gib": torch.cuda.memory_allocated() / 2**30,
    }

    text = "The Llama 3.1 family was released with a 128K context window. " * 60
    if lm.tokenizer is not None:
        ids = lm.tokenizer.encode(text, bos=True)[:512]
    else:  # --tokenizer '' (a machine without llama-models): random ids, same weights either way
        ids = torch.randint(3, 30000, (512,), generator=torch.Generator().manual_seed(0)).tolist()
    tokens = torch.tensor([ids], device="cuda")

    # Exact check in fp32 (bf16 would hide a layout bug in rounding noise): upcast, twin, compare.
    lm.model.float()
    hf = hf_twin(lm)
    ours_logits = lm.model(tokens)[0]
    hf_logits = hf(tokens).logits[0].float()
    diff = (ours_logits - hf_logits).abs()
    res["vs_transformers_fp32"] = {
        "max_abs_diff": diff.max().item(),
        "mean_abs_diff": diff.mean().item(),
        "logit_std": hf_logits.std().item(),
        "top1_agreement": (ours_logits.argmax(-1) == hf_logits.argmax(-1)).float().mean().item(),
    }
    # Far positions (Llama 3.1 RoPE scaling at work): the same 64 tokens placed at 100000.
    pos = torch.arange(100_000, 100_064, device="cuda").unsqueeze(0)
    far_ours = lm.model(tokens[:, :64], positions=pos)[0]
    far_hf = hf(tokens[:, :64], position_ids=pos).logits[0].float()
    res["vs_transformers_fp32_at_position_100000"] = {
        "max_abs_diff": (far_ours - far_hf).abs().max().item(),
        "top1_agreement": (far_ours.argmax(-1) == far_hf.argmax(-1)).float().mean().item(),
    }
    del hf, ours_logits, hf_logits, far_ours, far_hf, diff
    lm.model.to(torch.bfloat16)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()

    # Prefill throughput (2048 tokens) and single-stream decode through the reference loop.
    long_ids = (ids * 8)[:2048]
    t = torch.tensor([long_ids], device="cuda")
    lm.model(t, last_only=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    lm.model(t, last_only=True)
    torch.cuda.synchronize()
    res["prefill_2048_tok_per_s"] = 2048 / (time.perf_counter() - t0)
    params = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
    list(generate_tokens(lm.model, ids[:128], params.with_(max_tokens=8)))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = len(list(generate_tokens(lm.model, ids[:128], params)))
    torch.cuda.synchronize()
    res["decode_tok_per_s_reference_loop"] = n / (time.perf_counter() - t0)
    res["peak_gib_bf16_generation"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(res, indent=2))
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
