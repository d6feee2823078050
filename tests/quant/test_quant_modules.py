"""Quantized linears against their own dequantized weights, and module swaps on tiny models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lhama.errors import ConfigError
from lhama.model import build_model
from lhama.quant import (
    FP8Linear,
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
    QuantConfig,
    is_quantized,
    quantize_model,
    weight_bytes,
)
from lhama.quant.int4 import kernel_layout


def _linear(n_out, n_in, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out, bias=False)
    nn.init.normal_(lin.weight, std=0.05)
    return lin


def _rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize(
    "make",
    [
        lambda lin: Int8WeightOnlyLinear.from_linear(lin),
        lambda lin: Int4WeightOnlyLinear.from_linear(lin, 32),
        lambda lin: Int4WeightOnlyLinear.from_linear(lin, 64),
        lambda lin: Int4WeightOnlyLinear.from_linear(lin, 128, layout="nibbles"),
        lambda lin: FP8Linear.from_linear(lin),
    ],
    ids=["int8", "int4-g32", "int4-g64", "int4-g128-nibbles", "fp8"],
)
def test_module_computes_x_times_its_dequantized_weight(make):
    lin = _linear(96, 256)
    q = make(lin)
    x = torch.randn(2, 5, 256)
    with torch.inference_mode():
        y = q(x)
        assert y.shape == (2, 5, 96) and y.dtype == x.dtype
        # What it multiplies by (bf16 activations and output rounding aside) ...
        assert _rel_err(y, x @ q.dequantize().T) < 0.02
        # ... is close to the original weight, and the closer the more bits.
    err = _rel_err(q.dequantize(), lin.weight)
    bound = {Int8WeightOnlyLinear: 0.01, Int4WeightOnlyLinear: 0.15, FP8Linear: 0.05}[type(q)]
    assert 0 < err < bound


def test_int4_kernel_layout_matches_reference_unpacking():
    """The packed kernel (when this CPU has it) and the portable nibble path agree."""
    lin = _linear(64, 128, seed=3)
    if kernel_layout(torch.device("cpu"), torch.bfloat16, 32) != "cpu":
        pytest.skip("no int4 CPU kernel in this PyTorch build")
    fast = Int4WeightOnlyLinear.from_linear(lin, 32)
    slow = Int4WeightOnlyLinear.from_linear(lin, 32, layout="nibbles")
    assert fast.layout == "cpu" and slow.layout == "nibbles"
    torch.testing.assert_close(fast.dequantize(), slow.dequantize(), atol=2e-3, rtol=1e-2)
    x = torch.randn(7, 128)
    torch.testing.assert_close(fast(x), slow(x), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("build", ["from_linear", "from_groups"])
def test_int4_many_rows_dequantize_tiles_like_the_kernel(build):
    """From ``CPU_LARGE_M`` rows the CPU layout is dequantized tile by tile (the kernel's packing
    read back: 64-row tiles, rows i and i + 32 in one byte) into a bf16 GEMM: the same weights as
    the kernel's one-row path, whichever constructor packed them, over several slices of tiles."""
    from lhama.quant import int4

    if kernel_layout(torch.device("cpu"), torch.bfloat16, 32) != "cpu":
        pytest.skip("no int4 CPU kernel in this PyTorch build")
    lin = _linear(192, 96, seed=5)
    if build == "from_linear":
        mod = Int4WeightOnlyLinear.from_linear(lin, 32)
    else:
        q, scale, zero = int4.quantize_int4_groupwise(lin.weight, 32)
        scale, minimum = scale.half().float(), (zero - 8 * scale).half().float()
        mod = Int4WeightOnlyLinear.from_groups(q.to(torch.uint8), scale, minimum, 32)
    assert mod.layout == "cpu"
    x = torch.randn(int4.CPU_LARGE_M + 3, 96)
    rows = torch.stack([mod(r.view(1, -1))[0] for r in x[:5]])  # the kernel, one row at a time
    old, int4._CPU_SLICE_WEIGHTS = int4._CPU_SLICE_WEIGHTS, 96 * 64  # one tile per slice
    try:
        many = mod(x)
    finally:
        int4._CPU_SLICE_WEIGHTS = old
    torch.testing.assert_close(many[:5], rows, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(many, x @ mod.dequantize().T, atol=3e-2, rtol=3e-2)


def test_int8_uses_pytorch_kernel_on_cpu():
    assert Int8WeightOnlyLinear.from_linear(_linear(32, 64)).use_kernel


def test_config_errors_are_typed():
    with pytest.raises(ConfigError, match="int8, int4, fp8"):
        QuantConfig("int3")
    with pytest.raises(ConfigError, match="group size"):
        QuantConfig("int4", group_size=48)
    with pytest.raises(ConfigError, match="group size"):
        QuantConfig.parse("int4:abc")
    assert QuantConfig.parse("int4:128") == QuantConfig("int4", group_size=128)
    assert QuantConfig.parse("none") is None and QuantConfig.parse(None) is None


@pytest.fixture
def tiny_model(tiny_llama3_args):
    return build_model(tiny_llama3_args.with_(tie_embeddings=True), init="random", seed=4).eval()


@pytest.mark.parametrize("mode", ["int8", "int4", "fp8"])
def test_swap_replaces_every_linear_and_unties_the_head(tiny_model, mode):
    emb_before = tiny_model.tok_embeddings.weight.detach().clone()
    fp = weight_bytes(tiny_model)
    report = quantize_model(tiny_model, mode)
    assert is_quantized(tiny_model)
    assert not any(isinstance(m, nn.Linear) for m in tiny_model.modules())
    assert len(report.modules) == 2 * 4 + 1  # wqkv, wo, w13, w2 per block + head
    # The embedding keeps its full-precision table; only the head's copy is quantized.
    assert torch.equal(tiny_model.tok_embeddings.weight, emb_before)
    assert report.bytes_before == fp and report.bytes_after == weight_bytes(tiny_model)
    assert report.bytes_after < fp
    assert "MiB" in report.describe()
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(tiny_model, mode)


def test_int4_mode_defaults_and_group_fallback(tiny_model):
    """dim 64 / hidden 192: group 128 divides neither, so 64 is used; the head stays int8."""
    report = quantize_model(tiny_model, QuantConfig("int4", group_size=128))
    assert report.modules["output"] == "int8"
    assert report.modules["layers.0.attention.wqkv"] == "int4/g64"
    assert report.modules["layers.0.feed_forward.w2"] == "int4/g64"  # in_features 192
    assert tiny_model.layers[0].attention.wqkv.group_size == 64


def test_int4_head_when_asked(tiny_model):
    report = quantize_model(tiny_model, QuantConfig("int4", int4_head=True, include_head=True))
    assert report.modules["output"] == "int4/g32"


def test_head_left_alone_without_include_head(tiny_model):
    quantize_model(tiny_model, QuantConfig("int8", include_head=False))
    assert isinstance(tiny_model.output, nn.Linear)
    assert tiny_model.output.weight is tiny_model.tok_embeddings.weight


@pytest.mark.parametrize("mode,bound", [("int8", 0.03), ("int4", 0.2), ("fp8", 0.1)])
def test_logit_error_vs_fp32_is_bounded(tiny_model, mode, bound):
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    q = copy.deepcopy(tiny_model)
    quantize_model(q, mode)
    with torch.inference_mode():
        ref, out = tiny_model(tokens), q(tokens)
    assert out.dtype == torch.float32
    assert _rel_err(out, ref) < bound


def test_fused_projections_compute_what_separate_ones_do(tiny_model):
    """int8 scales are per output row, so stacking wq|wk|wv and w1|w3 changes no weight: the fused
    model (4 matmuls per block) and the unfused one (7) give the same logits."""
    fused, plain = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    quantize_model(fused, QuantConfig("int8"))
    quantize_model(plain, QuantConfig("int8", fuse=False))
    attn = fused.layers[0].attention
    assert attn.wqkv.out_features == 4 * 16 + 2 * 2 * 16 and not hasattr(attn, "wq")
    assert isinstance(plain.layers[0].attention.wq, Int8WeightOnlyLinear) and plain.layers[0].attention.wqkv is None
    tokens = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(fused(tokens), plain(tokens), atol=1e-4, rtol=1e-4)


def test_int4_large_batch_dequantization_matches_reference():
    """The plain 4-bit copy CUDA int4 linears dequantize for large batches gives the same weight
    as the reference dequantization (up to the bf16 scales the kernels use too)."""
    from lhama.quant import Int4WeightOnlyLinear

    lin = torch.nn.Linear(128, 48, bias=False)
    mod = Int4WeightOnlyLinear.from_linear(lin, 32, torch.bfloat16, layout="nibbles")
    w = mod._dequantize_nibbles(mod.qweight).float()
    ref = mod.dequantize()
    assert w.shape == ref.shape == lin.weight.shape
    assert ((w - ref).norm() / ref.norm()).item() < 1e-2
