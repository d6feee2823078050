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


# -- BlockLinear: the file's own blocks, no repack ----------------------------------------------
BLOCK_QTYPES = ["Q4_0", "Q4_1", "Q8_0"]


def _gguf_blocks(name: str, n: int, k: int, seed: int = 0):
    """(blocks uint8 [n, bytes], the gguf package's fp32 dequantization) of a random matrix."""
    import gguf

    qtype = gguf.GGMLQuantizationType[name]
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).numpy() * 0.05
    raw = gguf.quants.quantize(w, qtype)
    want = torch.from_numpy(gguf.quants.dequantize(raw, qtype)).float().reshape(n, k)
    return torch.from_numpy(raw.view("u1").reshape(n, -1)), qtype, want


@pytest.mark.parametrize("name", BLOCK_QTYPES)
def test_block_linear_is_the_gguf_weight(name):
    """``dequantize`` is bit-identical to the gguf package's; the product is within int8
    activation rounding (llama.cpp's scheme on the compiled path) of ``x @ W.T``, for a decode
    row and a prefill-sized batch, in fp32 and bf16."""
    from lhama.quant.blocks import BlockLinear

    blocks, qtype, want = _gguf_blocks(name, 96, 256)
    mod = BlockLinear(blocks, qtype, 256)
    assert mod.blocks.data_ptr() == blocks.data_ptr()  # held as given: no copy, no repack
    assert torch.equal(mod.dequantize(), want)
    for rows in (1, 7, 200):
        x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(rows))
        ref = x @ want.T
        for dtype in (torch.float32, torch.bfloat16):
            y = mod(x.to(dtype))
            assert y.dtype == dtype and y.shape == (rows, 96)
            assert (y.float() - ref).abs().max() <= 0.02 * ref.abs().max(), (rows, dtype)


def test_block_linear_over_parts_is_the_stacked_weight_without_a_copy():
    """wq|wk|wv from three tensors the file does not store back to back: one module, each part
    held as given (a view), the same weight and outputs as the stacked copy."""
    from lhama.quant.blocks import BlockLinear, BlockLinearParts

    parts = [_gguf_blocks("Q4_0", n, 128, seed=n) for n in (64, 16, 16)]
    mod = BlockLinearParts([p[0] for p in parts], parts[0][1], 128)
    stacked = BlockLinear(torch.cat([p[0] for p in parts]), parts[0][1], 128)
    assert mod.out_features == 96 and [b.data_ptr() for b in mod.parts] == [p[0].data_ptr() for p in parts]
    assert torch.equal(mod.dequantize(), torch.cat([p[2] for p in parts]))
    for rows in (1, 30):
        x = torch.randn(rows, 128, generator=torch.Generator().manual_seed(rows))
        assert torch.equal(mod(x), stacked(x))
    assert "3 parts" in repr(mod)


def test_q6_k_blocks_stay_raw_in_the_modules():
    """Q6_K (a Q4_0 file's tied embedding/head): a ``BlockLinear`` head and a ``BlockEmbedding``
    over the same bytes, bit-identical to the gguf package's dequantization."""
    import gguf
    import numpy as np

    from lhama.quant.blocks import BlockEmbedding, BlockLinear

    rng = np.random.default_rng(5)
    raw = rng.integers(0, 256, size=(40, 2, 210), dtype=np.uint8)
    raw[..., 208:210] = rng.uniform(-0.002, 0.002, size=(40, 2, 1)).astype(np.float16).view(np.uint8)
    raw = raw.reshape(40, -1)
    qtype = gguf.GGMLQuantizationType.Q6_K
    want = torch.from_numpy(gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(40, 512))
    blocks = torch.from_numpy(raw)
    head, emb = BlockLinear(blocks, qtype, 512), BlockEmbedding(blocks, qtype, 512)
    assert torch.equal(head.dequantize(), want) and head.blocks.data_ptr() == emb.blocks.data_ptr()
    ids = torch.tensor([[3, 39, 0]])
    assert torch.equal(emb(ids), want[ids])
    h = torch.randn(2, 512)
    assert (head(h) - h @ want.T).abs().max() <= 0.02 * (h @ want.T).abs().max()


def test_block_linear_refuses_blocks_of_another_width():
    from lhama.quant.blocks import BlockLinear

    blocks, qtype, _ = _gguf_blocks("Q4_1", 16, 64)
    with pytest.raises(ValueError, match="Q4_1"):
        BlockLinear(blocks, qtype, 96)


def test_block_embedding_rows_and_a_tied_block_head_share_one_tensor():
    from lhama.quant.blocks import BlockEmbedding, BlockLinear

    blocks, qtype, want = _gguf_blocks("Q8_0", 64, 96, seed=3)
    emb, head = BlockEmbedding(blocks, qtype, 96), BlockLinear(blocks, qtype, 96)
    ids = torch.tensor([[0, 5, 63], [7, 7, 1]])
    assert torch.equal(emb(ids), want[ids])
    assert emb.blocks.data_ptr() == head.blocks.data_ptr()
    h = torch.randn(2, 96)
    assert (head(h) - h @ want.T).abs().max() <= 0.02 * (h @ want.T).abs().max()
