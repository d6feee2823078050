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
from test_ggml_kernels import Q4_0, Q4_1, Q6_K, Q8_0, gguf_weight, q6k_blocks, quantized_activations, random_blocks

from lhama.quant import ggml

ISAS = ["avx512vbmi", "avx512vnni", "avx2", "scalar"]


@pytest.fixture(params=ISAS)
def isa(request):
    if not ggml.available():
        pytest.skip("ggml kernels not built (no compiler)")
    before = ggml.isa()
    if ggml.set_isa(request.param) != request.param:
        ggml.set_isa(before)
        pytest.skip(f"this CPU has no {request.param}")
    yield request.param
    ggml.set_isa(before)


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
    """By row count: integer products up to 128 rows with the 512-bit tiled kernel (else 20),
    Q6_K up to 64 (else 20), the bf16 GEMM above."""
    raw = random_blocks(Q4_1, n=40, k=128, seed=1)
    blocks = torch.from_numpy(raw)
    x = torch.randn(140, 128, generator=torch.Generator().manual_seed(1))
    most = 128 if ggml.isa() == "avx512vbmi" else 20
    assert torch.equal(op(x[:most], blocks, Q4_1, 0), op(x[:most], blocks, Q4_1, 1))
    assert torch.equal(op(x[: most + 1], blocks, Q4_1, 0), op(x[: most + 1], blocks, Q4_1, 2))
    q6 = torch.from_numpy(q6k_blocks(24, 512, seed=2))
    x6 = torch.randn(70, 512, generator=torch.Generator().manual_seed(2))
    most = 64 if ggml.isa() != "scalar" else 20
    assert torch.equal(op(x6[:most], q6, Q6_K, 0), op(x6[:most], q6, Q6_K, 1))
    assert torch.equal(op(x6[: most + 1], q6, Q6_K, 0), op(x6[: most + 1], q6, Q6_K, 2))


def test_q6_k_beyond_32_rows_is_each_row_alone(isa):
    # The AVX2 Q6_K kernel takes <= 32 rows a call: more rows go in chunks (before: plain C++).
    raw = q6k_blocks(20, 512, seed=3)
    w, blocks = gguf_weight(raw, Q6_K), torch.from_numpy(raw)
    x = torch.randn(45, 512, generator=torch.Generator().manual_seed(3))
    y = op(x, blocks, Q6_K, 1)
    assert torch.equal(y, torch.cat([op(x[i : i + 1], blocks, Q6_K, 1) for i in range(45)]))
    assert ((y - x @ w.T).abs() <= 0.02 * (x.abs() @ w.abs().T) + 1e-6).all()
