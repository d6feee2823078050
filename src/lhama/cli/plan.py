"""``lhama plan``: memory per GPU of a deployment (``lhama.parallel.plan``)."""

from __future__ import annotations

import argparse
import json

from lhama.cli.checkpoints import model_args_of

# The formats lhama.model.sizing.WEIGHT_BYTES and lhama.parallel.plan.KV_BYTES price, restated so
# the parser needs no torch (tests/cli/test_defaults.py checks they agree).
WEIGHT_FORMATS = ("fp32", "bf16", "fp8", "int8", "int4")
KV_FORMATS = ("bf16", "fp16", "fp32", "fp8", "int8")


def add_plan_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Plan a deployment: memory per GPU for a model at a dtype, context, batch and GPU count, "
        "whether it fits, and what would."
    )
    p.add_argument("model", help="config name (llama3.1-405b ...), GGUF file, HF or Meta folder, or 'default'")
    p.add_argument("--dtype", default="bf16", choices=WEIGHT_FORMATS, help="weight format")
    p.add_argument("--kv-dtype", choices=KV_FORMATS, help="KV-cache format (default: bf16; fp8 with fp8 weights)")
    p.add_argument("--context", type=int, help="tokens per sequence (default: the model's full context)")
    p.add_argument("--batch", type=int, default=1, help="sequences at full context at once")
    p.add_argument("--gpus", type=int, default=1, help="tensor-parallel GPUs")
    p.add_argument("--gpu-mem", type=float, default=80.0, help="memory per GPU in GiB")
    p.add_argument("--gpu-util", type=float, default=0.9, help="usable share of each GPU")
    p.add_argument("--chunk-tokens", type=int, default=2048, help="prefill chunk per step")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_plan)


def cmd_plan(a) -> int:
    from lhama.parallel.plan import PlanRequest, plan

    args, name = model_args_of(a.model)
    req = PlanRequest(
        dtype=a.dtype,
        kv_dtype=a.kv_dtype,
        context=a.context,
        batch=a.batch,
        gpus=a.gpus,
        gpu_mem_gib=a.gpu_mem,
        utilization=a.gpu_util,
        chunk_tokens=a.chunk_tokens,
    )
    result = plan(args, req, name)
    print(json.dumps(result.as_dict(), indent=2) if a.json else result.describe())
    return 0 if result.fits else 1
