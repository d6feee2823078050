"""The exact layouts llama.cpp's blocks are repacked into (``lhama.quant.blocks`` and
``Int4WeightOnlyLinear.from_groups``): bit-exact dequantization, any row blocking, kernels agree."""

from __future__ import annotations

import pytest
import torch

from lhama.quant.blocks import SplitInt8Linear
from lhama.quant.int4 import Int4WeightOnlyLinear


def _groups(n: int, k: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=gen)
    scale = (torch.rand(n, k // 32, generator=gen) * 0.01).half().float()
    minimum = (-torch.rand(n, k // 32, generator=gen) * 0.05).half().float()
    return q, scale, minimum


@pytest.mark.parametrize("layout", [None, "nibbles"])
def test_int4_groups_dequantize_exactly_and_multiply_close(layout):
    q, scale, minimum = _groups(192, 256)
    mod = Int4WeightOnlyLinear.from_groups(q, scale, minimum, 32, layout=layout)
    want = (q.view(192, 8, 32).float() * scale[..., None] + minimum[..., None]).view(192, 256)
    assert torch.equal(mod.q(), q) and torch.equal(mod.dequantize(), want)
    x = torch.randn(3, 256)
    ref = x @ want.T
    assert (mod(x) - ref).abs().max() <= 0.02 * ref.abs().max()  # bf16 activations and scales


@pytest.mark.parametrize("sizes", [[64, 32, 32], [100, 28, 500, 12], [16], [1024, 1024, 48]])
def test_row_blocks_of_any_size_pack_like_the_whole_matrix(sizes):
    """The CPU kernel packs 64-row tiles: blocks that cut a tile must be regrouped first."""
    q, scale, minimum = _groups(sum(sizes), 64, seed=len(sizes))
    blocks, row = [], 0
    for n in sizes:
        blocks.append((q[row : row + n], scale[row : row + n], minimum[row : row + n]))
        row += n
    a = Int4WeightOnlyLinear.from_group_rows(iter(blocks), row, 64, 32)
    b = Int4WeightOnlyLinear.from_groups(q, scale, minimum, 32)
    assert a.layout == b.layout and torch.equal(a.qweight, b.qweight) and torch.equal(a.q(), q)


def test_fp16_inexact_scales_are_refused():
    q, scale, minimum = _groups(16, 32)
    with pytest.raises(ValueError, match="fp16"):
        Int4WeightOnlyLinear.from_groups(q, scale + 1e-7, minimum, 32)


def test_q8_split_into_two_int4_halves_is_exact():
    gen = torch.Generator().manual_seed(1)
    q = torch.randint(-128, 128, (128, 96), dtype=torch.int8, generator=gen)
    d = (torch.rand(128, 3, generator=gen) * 0.01).half().float()
    mod = SplitInt8Linear.from_q8(q, d)
    want = (q.view(128, 3, 32).float() * d[..., None]).view(128, 96)
    assert torch.equal(mod.dequantize(), want)
    x = torch.randn(2, 96)
    ref = x @ want.T
    assert (mod(x) - ref).abs().max() <= 0.02 * ref.abs().max()
