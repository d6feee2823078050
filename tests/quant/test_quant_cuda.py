"""Quantized linears on a GPU: the CUDA kernels are picked and agree with the reference (skipped
without CUDA). FP8 goes through ``torch._scaled_mm`` on GPUs with FP8 matrix units (sm_89+)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lhama.engine import EngineConfig, LLMEngine
from lhama.generate import SamplingParams
from lhama.model import build_model, get_config
from lhama.quant import FP8Linear, Int4WeightOnlyLinear, Int8WeightOnlyLinear, quantize_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _prompts(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in lengths]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("mode", ["int8", "int4", "fp8"])
def test_cuda_quantized_linear_matches_dequantized(mode):
    g = torch.Generator(device="cuda").manual_seed(0)
    lin = nn.Linear(1024, 768, bias=False, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(768, 1024, generator=g, device="cuda") * 0.02)
    if mode == "int8":
        q = Int8WeightOnlyLinear.from_linear(lin, torch.bfloat16)
        budget = 0.01
    elif mode == "int4":
        q = Int4WeightOnlyLinear.from_linear(lin, 32, torch.bfloat16)
        assert q.layout == "cuda"  # tinygemm's packed tiles, not the upcast fallback
        budget = 0.15
    else:
        q = FP8Linear.from_linear(lin, torch.bfloat16)
        if torch.cuda.get_device_capability() >= (8, 9):
            assert q.use_scaled_mm  # FP8 matrix units
        budget = 0.06
    for rows in (1, 7, 31, 32, 64):  # decode, odd batch, both sides of int4's kernel switch, prefill
        x = torch.randn(rows, 1024, generator=g, device="cuda", dtype=torch.bfloat16)
        out = q(x)
        ref = x.float() @ q.dequantize().float().T  # the dequantized weight, exact activations
        # FP8 also rounds the activations to e4m3 (per row): ~2-3% on its own.
        assert _rel(out, ref) < (0.05 if mode == "fp8" else 1e-2), mode
        assert _rel(out, x.float() @ lin.weight.float().T) < budget, mode  # the quantization error


@pytest.mark.parametrize("mode", ["int8", "int4", "fp8"])
def test_cuda_quantized_engine_graphs_match_eager(mode):
    model = build_model(
        get_config("tiny-llama3").args.with_(vocab_size=256), init="random", seed=4, device="cuda", dtype=torch.bfloat16
    ).eval()
    with torch.no_grad():  # peaked logits: greedy choices far from ties, stable under bf16 rounding
        model.output.weight.mul_(40)
    quantize_model(model, mode)
    cfg = EngineConfig(block_size=4, num_blocks=128, max_num_seqs=8, max_num_batched_tokens=16)
    prompts = _prompts([2, 5, 9, 17, 30], seed=6)
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    eager = LLMEngine(model, None, cfg.with_(cuda_graphs=False)).generate(prompts, params)
    eng = LLMEngine(model, None, cfg)
    graphed = eng.generate(prompts, params)
    assert eng.runner.graphs.num_captured > 0
    same = sum(a.completions[0].token_ids == b.completions[0].token_ids for a, b in zip(eager, graphed))
    assert same == len(prompts), f"{mode}: {same}/{len(prompts)} sequences identical"
