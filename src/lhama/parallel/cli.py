"""CLI subcommands of the dist package: ``lhama plan``."""

from __future__ import annotations

import argparse
import json


def add_plan_parser(subparsers) -> argparse.ArgumentParser:
    from lhama.parallel.plan import KV_BYTES
    from lhama.model.sizing import WEIGHT_BYTES

    p = subparsers.add_parser("plan", help="memory per GPU (weights, KV cache, activations): does it fit?",
                              description="Plan a deployment: memory per GPU for a model at a dtype, context, "
                                          "batch and GPU count, whether it fits, and what would.")
    p.add_argument("model", help="config name (llama3.1-405b ...), GGUF file, HF or Meta folder, or 'default'")
    p.add_argument("--dtype", default="bf16", choices=list(WEIGHT_BYTES), help="weight format (default: bf16)")
    p.add_argument("--kv-dtype", choices=list(KV_BYTES), help="KV-cache format (default: bf16; fp8 with fp8 weights)")
    p.add_argument("--context", type=int, help="tokens per sequence (default: the model's full context)")
    p.add_argument("--batch", type=int, default=1, help="sequences at full context at once (default: 1)")
    p.add_argument("--gpus", type=int, default=1, help="tensor-parallel GPUs (default: 1)")
    p.add_argument("--gpu-mem", type=float, default=80.0, help="memory per GPU in GiB (default: 80)")
    p.add_argument("--gpu-util", type=float, default=0.9, help="usable share of each GPU (default: 0.9)")
    p.add_argument("--chunk-tokens", type=int, default=2048, help="prefill chunk per step (default: 2048)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)
    return p


def _model_args(target: str):
    from lhama.model import CONFIGS

    if target.lower() in CONFIGS:
        return CONFIGS[target.lower()].args, target.lower()
    from lhama.checkpoints import read_args
    from lhama.loader import resolve_model_spec

    path = resolve_model_spec(target)
    return read_args(path), str(path)


def cmd_plan(a) -> int:
    from lhama.parallel.plan import PlanRequest, plan

    args, name = _model_args(a.model)
    req = PlanRequest(dtype=a.dtype, kv_dtype=a.kv_dtype, context=a.context, batch=a.batch, gpus=a.gpus,
                      gpu_mem_gib=a.gpu_mem, utilization=a.gpu_util, chunk_tokens=a.chunk_tokens)
    result = plan(args, req, name)
    print(json.dumps(result.as_dict(), indent=2) if a.json else result.describe())
    return 0 if result.fits else 1
