"""``ggml_tile.h``: integer products for many activation rows (batched decode, 9-128 rows), and
path 0's switch between the integer path and the bf16 GEMM (``integer_rows_max`` in
ggml_ops.cpp). Against the plain reference (the gguf package's dequantization + an fp32 matmul
of the int8-rounded activations, exactly as the kernels round them), on random Q4_0 / Q4_1 /
Q8_0 blocks with odd row tails (16-row panels, an 8-row tile, single rows) and odd block counts
(the 512-bit body takes block pairs), on every instruction-set path this CPU runs; and bit for
bit the same as the same rows one at a time (a row's numbers do not depend on its batch)."""

from __future__ import annotations

import pytest
import torch
from test_ggml_kernels import (
    Q4_0,
    Q4_1,
    Q6_K,
    Q8_0,
    gguf_weight,
    kernels_on,
    q6k_blocks,
    quantized_activations,
    random_blocks,
)

from lhama.quant import ggml

ISAS = ["avx512vbmi", "avx512vnni", "avx2", "scalar"]


@pytest.fixture(params=ISAS)
def isa(request):
    with kernels_on(request.param):
        yield request.param


def op(x, blocks, qtype, path):
    return torch.ops.lhama_ggml.block_linear(x, blocks, qtype, path)


@pytest.mark.parametrize("qtype", [Q4_0, Q4_1, Q8_0])
def test_many_rows_match_the_reference_and_each_row_alone(isa, qtype):
    for n, k in ((61, 192), (29, 96)):  # 3 panels + 8 + 5 rows, 6 blocks; 1 panel + 8 + 5 rows, 3 blocks
        raw = random_blocks(qtype, n=n, k=k, seed=n)
        w, blocks = gguf_weight(raw, qtype), torch.from_numpy(raw)
        x = torch.randn(100, k, generator=torch.Generator().manual_seed(k)) * 3
        exact = quantized_activations(x) @ w.T
        alone = torch.cat([op(x[i : i + 1], blocks, qtype, 1) for i in range(100)])
        assert ((alone - exact).abs() <= 1e-5 * (x.abs() @ w.abs().T) + 1e-6).all()
        for m in (9, 17, 32, 33, 100):
            y = op(x[:m], blocks, qtype, 1)
            assert torch.equal(y, alone[:m]), (m, (y - alone[:m]).abs().max())


def test_more_rows_than_one_sweep_and_threads():
    # > 64 rows: the kernel sweeps the activations in chunks; 2 threads split the panels.
    raw = random_blocks(Q4_0, n=85, k=256, seed=5)
    blocks = torch.from_numpy(raw)
    x = torch.randn(150, 256, generator=torch.Generator().manual_seed(5))
    alone = torch.cat([op(x[i : i + 1], blocks, Q4_0, 1) for i in range(150)])
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            assert torch.equal(op(x, blocks, Q4_0, 1), alone)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not ggml.available(), reason="needs the compiled kernels")
def test_path_0_takes_the_integer_path_where_it_is_cheaper():
    """By row count: integer products up to 128 rows with the tiled kernels (512- and 256-bit; else 20;
    Q6_K 64 with AVX2), the bf16 GEMM above."""
    raw = random_blocks(Q4_1, n=40, k=128, seed=1)
    blocks = torch.from_numpy(raw)
    x = torch.randn(140, 128, generator=torch.Generator().manual_seed(1))
    most = 20 if ggml.isa() == "scalar" else 128  # the 256-bit bodies: 8-row panels
    assert torch.equal(op(x[:most], blocks, Q4_1, 0), op(x[:most], blocks, Q4_1, 1))
    assert torch.equal(op(x[: most + 1], blocks, Q4_1, 0), op(x[: most + 1], blocks, Q4_1, 2))
    q6 = torch.from_numpy(q6k_blocks(24, 512, seed=2))
    x6 = torch.randn(140, 512, generator=torch.Generator().manual_seed(2))
    most = {"avx512vbmi": 128, "scalar": 20}.get(ggml.isa(), 64)
    assert torch.equal(op(x6[:most], q6, Q6_K, 0), op(x6[:most], q6, Q6_K, 1))
    assert torch.equal(op(x6[: most + 1], q6, Q6_K, 0), op(x6[: most + 1], q6, Q6_K, 2))


def test_q6_k_many_rows_are_each_row_alone(isa):
    """Q6_K from 32 rows on the 512-bit body: 16-row panels (ggml_tile.h), bit for bit the row
    kernels' numbers; elsewhere those, <= 32 rows a call with AVX2 (before: plain C++ above 32).
    Odd panel tails (37 rows: 2 panels + 5), 1-3 blocks, 12-70 rows, against the
    reference with the int8 activations' rounding emulated (per 256 values)."""
    for n, k in ((37, 768), (16, 256), (20, 512)):
        raw = q6k_blocks(n, k, seed=n)
        w, blocks = gguf_weight(raw, Q6_K), torch.from_numpy(raw)
        x = torch.randn(70, k, generator=torch.Generator().manual_seed(k))
        alone = torch.cat([op(x[i : i + 1], blocks, Q6_K, 1) for i in range(70)])
        xb = x.reshape(70, -1, 256)
        d = xb.abs().amax(-1, keepdim=True) / 127
        xq = (torch.round(xb * torch.where(d != 0, 1 / d, torch.zeros_like(d))) * d).reshape(70, k)
        assert ((alone - xq @ w.T).abs() <= 1e-5 * (x.abs() @ w.abs().T) + 1e-6).all()
        for m in (12, 17, 32, 33, 70):
            assert torch.equal(op(x[:m], blocks, Q6_K, 1), alone[:m]), (n, k, m)
