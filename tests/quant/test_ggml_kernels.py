"""``lhama.quant.ggml``: matmuls on raw GGUF Q4_0 / Q4_1 / Q8_0 blocks, against the gguf package's
own numpy dequantization, on every instruction-set path this CPU runs (and the torch reference).

Tolerances. Few activation rows (M <= 16) run llama.cpp's scheme: each block of 32 activations
is rounded to int8 with d = amax / 127, so each value moves by at most d / 2 and the output by at
most sum over blocks of d / 2 * sum |w| in that block (checked, plus fp32 rounding); an exact
emulation of that rounding in torch then agrees to fp32 accumulation order. Many rows run a bf16
GEMM: each product is off by at most ~2 bf16 roundings (2 * 2^-9 relative) of |x| . |w|; where
bf16 is not native (AVX2 laptops) they run the integer kernels (int8 bound above) instead.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import warnings

import gguf
import numpy as np
import pytest
import torch

from lhama.quant import ggml
from lhama.quant.ggml_build import compile_library

Q4_0, Q4_1, Q8_0 = 2, 3, 8
N, K = 37, 128  # N odd: row tiles of 8 and 4 plus a tail; K: 4 blocks (the 512-bit body takes pairs)


def random_blocks(qtype: int, n: int = N, k: int = K, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + qtype)
    nb, bb = k // 32, ggml.QTYPES[qtype]
    raw = rng.integers(0, 256, size=(n, nb, bb), dtype=np.uint8)
    scales = rng.uniform(-0.05, 0.05, size=(n, nb, 2 if qtype == Q4_1 else 1)).astype(np.float16)
    raw[..., : scales.shape[-1] * 2] = scales.view(np.uint8).reshape(n, nb, -1)
    return raw.reshape(n, nb * bb)


def gguf_weight(raw: np.ndarray, qtype: int) -> torch.Tensor:
    return torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(qtype)).astype(np.float32))


def isa_params():
    return ["avx512vbmi", "avx512vnni", "avx2", "scalar", "reference"]


@contextlib.contextmanager
def kernels_on(name: str):
    """The library's ``name`` body for the block (skips where the library or the CPU lacks it)."""
    if not ggml.available():
        pytest.skip("ggml kernels not built (no compiler): only the reference path runs")
    before = ggml.isa()
    if ggml.set_isa(name) != name:
        ggml.set_isa(before)
        pytest.skip(f"this CPU has no {name}")
    try:
        yield name
    finally:
        ggml.set_isa(before)


@pytest.fixture(params=isa_params())
def isa(request, monkeypatch):
    """Each path this machine can run; the reference path by hiding the library."""
    if request.param == "reference":
        monkeypatch.setitem(ggml._state, "ops", None)
        yield "reference"
        return
    with kernels_on(request.param):
        yield request.param


def test_the_library_is_built_and_uses_the_best_isa_of_this_cpu():
    assert ggml.available(), "make install builds the ggml kernels (python -m lhama.quant.ggml --build)"
    if os.environ.get("LHAMA_GGML_ISA"):
        pytest.skip("LHAMA_GGML_ISA forces a lower level")
    flags = open("/proc/cpuinfo").read()
    zmm = all(f in flags for f in ("avx512_vnni", "avx512vbmi", "gfni", "avx512dq"))
    want = "avx512vbmi" if zmm else "avx512vnni" if "avx512_vnni" in flags else "avx2" if " avx2" in flags else "scalar"
    assert ggml.isa() == want


@pytest.mark.parametrize("qtype", [Q4_0, Q4_1, Q8_0])
def test_dequantize_and_rows_are_bit_identical_to_gguf(isa, qtype):
    raw = random_blocks(qtype)
    want = gguf_weight(raw, qtype)
    blocks = torch.from_numpy(raw)
    assert torch.equal(ggml.dequantize(blocks, qtype), want)
    ids = torch.tensor([5, 0, 36, 5])
    assert torch.equal(ggml.block_rows(blocks, qtype, ids), want[ids])


def quantized_activations(x: torch.Tensor) -> torch.Tensor:
    """x as the kernels see it: int8 per 32 values, d = amax / 127, q = round(x * (1 / d))."""
    xb = x.float().reshape(*x.shape[:-1], -1, 32)
    d = xb.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d != 0, 1 / d, torch.zeros_like(d))
    return (torch.round(xb * inv) * d).reshape(x.shape)


@pytest.mark.parametrize("qtype", [Q4_0, Q4_1, Q8_0])
@pytest.mark.parametrize("rows", [1, 3, 16, 200])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_linear_matches_a_float_matmul_within_its_rounding(isa, qtype, rows, dtype):
    raw = random_blocks(qtype)
    w = gguf_weight(raw, qtype)
    x = torch.randn(rows, K, generator=torch.Generator().manual_seed(rows)).to(dtype)
    y = ggml.block_linear(x, torch.from_numpy(raw), qtype)
    assert y.dtype == dtype and y.shape == (rows, N)
    xf, y = x.float(), y.float()
    ref = xf @ w.T
    scale = xf.abs() @ w.abs().T  # sum |x| |w|: the fp32/bf16 rounding bounds scale with it
    out_round = 2.0**-8 * ref.abs() if dtype == torch.bfloat16 else 0.0  # the output's own rounding
    if isa == "reference":
        bound = 1e-5 * scale + out_round
    elif rows <= 16 or ggml.prompt_path() == "integer":
        # int8 activations: |x - x_q| <= d / 2 per value, d = amax / 127 of its block.
        half_d = xf.reshape(rows, -1, 32).abs().amax(-1) / 254  # [rows, blocks]
        w_abs = w.abs().reshape(N, -1, 32).sum(-1)  # [N, blocks]
        bound = half_d @ w_abs.T * 1.001 + 1e-5 * scale + out_round
        exact = quantized_activations(xf) @ w.T  # the same rounding, emulated: fp32 order only
        assert ((y - exact).abs() <= 1e-5 * scale + out_round + 1e-6).all()
    else:
        bound = 2.0**-7 * scale + 1e-6 + 2.0**-8 * ref.abs()  # bf16 x and w, bf16 GEMM output
    assert ((y - ref).abs() <= bound).all(), (y - ref).abs().max()


def test_leading_dims_and_threads_do_not_change_the_result():
    raw = random_blocks(Q4_1, n=70, k=64)
    blocks = torch.from_numpy(raw)
    x = torch.randn(2, 3, 64)
    y = ggml.block_linear(x, blocks, Q4_1)
    assert y.shape == (2, 3, 70)
    assert torch.equal(y.reshape(6, 70), ggml.block_linear(x.reshape(6, 64), blocks, Q4_1))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ggml.block_linear(x, blocks, Q4_1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, y)  # each output row is one thread's, whatever the split


def test_an_unaligned_read_only_mmap_view(tmp_path):
    """A GGUF tensor sits at any byte offset of a read-only mapping."""
    raw = random_blocks(Q4_1)
    path = tmp_path / "blocks.bin"
    path.write_bytes(b"\x07" + raw.tobytes())
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that the buffer is not writable
        view = torch.frombuffer(mm, dtype=torch.uint8, offset=1, count=raw.size).view(raw.shape)
    assert view.data_ptr() % 2 == 1
    blocks = torch.from_numpy(raw.copy())
    x = torch.randn(2, K)
    assert torch.equal(ggml.dequantize(view, Q4_1), ggml.dequantize(blocks, Q4_1))
    assert torch.equal(ggml.block_linear(x, view, Q4_1), ggml.block_linear(x, blocks, Q4_1))
    ids = torch.tensor([3, 1])
    assert torch.equal(ggml.block_rows(view, Q4_1, ids), ggml.block_rows(blocks, Q4_1, ids))
    del view


def test_bad_input_raises_a_clear_error(isa):
    blocks = torch.from_numpy(random_blocks(Q4_0))
    with pytest.raises(ValueError, match="whole 18-byte blocks"):
        ggml.block_linear(torch.randn(1, K), blocks[:, :-1], Q4_0)
    with pytest.raises(ValueError, match="Q4_K has no block kernel"):
        ggml.dequantize(blocks, int(gguf.GGMLQuantizationType.Q4_K))
    with pytest.raises(ValueError, match=str(K)):
        ggml.block_linear(torch.randn(1, 64), blocks, Q4_0)
    with pytest.raises(ValueError, match="uint8"):
        ggml.block_linear(torch.randn(1, K), blocks.view(torch.int8), Q4_0)


def test_no_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        compile_library(sorted(ggml.KERNELS_DIR.glob("*.cpp")), tmp_path / "lib.so")
    assert not list(tmp_path.glob("lib.so*"))


def test_without_a_compiler_the_reference_runs_with_one_notice(tmp_path, monkeypatch, caplog):
    """A pip-installed lhama with no library built and no g++: one warning, the same results."""
    monkeypatch.setattr(ggml, "lib_dirs", lambda: [tmp_path / "kernels"])
    monkeypatch.setattr(ggml, "_state", {})
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    monkeypatch.delenv("LHAMA_GGML_LIB", raising=False)
    raw = random_blocks(Q8_0)
    x = torch.randn(2, K)
    with caplog.at_level("WARNING", logger="lhama.quant.ggml"):
        assert not ggml.available() and ggml.isa() == "reference"
        y = ggml.block_linear(x, torch.from_numpy(raw), Q8_0)
    notices = [r.getMessage() for r in caplog.records if "reference" in r.getMessage()]
    assert len(notices) == 1 and "no C++ compiler" in notices[0]
    assert torch.allclose(y, x @ gguf_weight(raw, Q8_0).T, rtol=1e-5, atol=1e-5)


def test_row_strided_views_and_fake_tensors():
    """Every other row of a block matrix (rows ``stride(0)`` bytes apart), and shapes without data
    (meta tensors, as torch.compile's fake tensors see the ops)."""
    raw = random_blocks(Q8_0, n=2 * N)
    blocks, want = torch.from_numpy(raw), gguf_weight(raw, Q8_0)
    x = torch.randn(2, K)
    assert torch.equal(ggml.dequantize(blocks[::2], Q8_0), want[::2])
    assert torch.equal(ggml.block_linear(x, blocks[::2], Q8_0), ggml.block_linear(x, blocks[::2].clone(), Q8_0))
    if not ggml.available():
        return
    meta = blocks.to("meta")  # the fake implementations also answer meta tensors
    y = torch.ops.lhama_ggml.block_linear(torch.empty(3, 5, K, dtype=torch.bfloat16, device="meta"), meta, Q8_0)
    assert y.shape == (3, 5, 2 * N) and y.dtype == torch.bfloat16 and y.is_meta
    assert torch.ops.lhama_ggml.block_rows(meta, Q8_0, torch.tensor([1, 2], device="meta")).shape == (2, K)


@pytest.mark.skipif(not ggml.available(), reason="needs the compiled kernels")
def test_integer_rows_fixes_each_rows_path_whatever_the_batch():
    # Generated rows (first n) take the integer path and prompt rows the GEMM at any row count:
    # each row then equals the same row computed in a batch of its own kind.
    w = torch.from_numpy(random_blocks(int(gguf.GGMLQuantizationType.Q4_1)))
    qt = int(gguf.GGMLQuantizationType.Q4_1)
    x = torch.randn(150, K, generator=torch.Generator().manual_seed(3))
    with prompt_rows_take("bf16"):  # where bf16 is not native, prompt rows are integer rows too
        integer_rows_split(x, w, qt)


def integer_rows_split(x, w, qt):
    integer = ggml.block_linear(x[:5], w, qt)  # 5 rows: the integer path by row count
    gemm = ggml.block_linear(x[5:], w, qt)  # 145 rows: the GEMM by row count (integer up to 128)
    assert not torch.allclose(ggml.block_linear(x[:1], w, qt), ggml.block_linear(x, w, qt)[:1], atol=0, rtol=0)
    with ggml.integer_rows(5):
        split = ggml.block_linear(x, w, qt)
    assert torch.equal(split[:5], integer) and torch.equal(split[5:], gemm)
    with ggml.integer_rows(0):
        assert torch.equal(ggml.block_linear(x[5:6], w, qt), gemm[:1])  # one prompt row: still the GEMM
    with ggml.integer_rows(100):
        assert torch.equal(ggml.block_linear(x[:5].repeat(6, 1), w, qt)[:5], integer)


@pytest.mark.parametrize("qtype", [Q4_0, Q4_1, Q8_0])
def test_a_rows_result_does_not_depend_on_its_batch_or_the_block_count(isa, qtype):
    """Each output row of the integer path is the same alone as in a batch of up to 20 rows (the
    engine batches generated tokens of different requests), for an even and an odd block count
    (the 512-bit body takes block pairs; an odd count runs the 256-bit one), within the rounding
    of the int8 activations' exact emulation."""
    for k in (96, 192):
        raw = random_blocks(qtype, n=45, k=k, seed=k)
        w, blocks = gguf_weight(raw, qtype), torch.from_numpy(raw)
        x = torch.randn(20, k, generator=torch.Generator().manual_seed(k))
        with ggml.integer_rows(100):
            y = ggml.block_linear(x, blocks, qtype)
            alone = torch.cat([ggml.block_linear(x[i : i + 1], blocks, qtype) for i in range(20)])
            nine = ggml.block_linear(x[:9], blocks, qtype)
        if isa == "reference":  # dequantize + F.linear: the BLAS's blocking may vary with the rows
            assert torch.allclose(alone, y, rtol=1e-5, atol=1e-5)
            continue
        assert torch.equal(alone, y) and torch.equal(nine, y[:9])
        exact = quantized_activations(x) @ w.T
        assert ((y - exact).abs() <= 1e-5 * (x.abs() @ w.abs().T) + 1e-6).all()


@pytest.mark.parametrize("qtype", [Q4_0, Q4_1, Q8_0])
def test_a_list_of_weights_is_their_outputs_concatenated(isa, qtype):
    """``block_linear(x, [a, b, c])`` (wq, wk, wv not back to back in the file) equals the three
    calls concatenated, bit for bit, on the integer path and the GEMM path; views stay views."""
    parts = [torch.from_numpy(random_blocks(qtype, n=n, seed=n)) for n in (37, 8, 21)]
    for rows in (1, 5, 30):
        x = torch.randn(2, rows, K, generator=torch.Generator().manual_seed(rows))
        y = ggml.block_linear(x, parts, qtype)
        assert y.shape == (2, rows, 66)
        assert torch.equal(y, torch.cat([ggml.block_linear(x, p, qtype) for p in parts], dim=-1))
    assert torch.equal(ggml.block_linear(x, parts[:1], qtype), ggml.block_linear(x, parts[0], qtype))
    with pytest.raises(ValueError):
        ggml.block_linear(x, [parts[0], parts[1][:, : ggml.QTYPES[qtype]]], qtype)
    if ggml.available():
        meta = [p.to("meta") for p in parts]
        assert torch.ops.lhama_ggml.block_linear_parts(torch.empty(3, K, device="meta"), meta, qtype).shape == (3, 66)


Q6_K = int(gguf.GGMLQuantizationType.Q6_K)


def q6k_blocks(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Random Q6_K rows (every byte pattern of ql/qh/scales is a valid block) with small fp16 d."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n, k // 256, 210), dtype=np.uint8)
    raw[..., 208:210] = rng.uniform(-0.002, 0.002, size=(n, k // 256, 1)).astype(np.float16).view(np.uint8)
    return raw.reshape(n, -1)


def test_q6_k_rows_and_products(isa):
    """Q6_K (llama.cpp's type for a Q4_0 file's tied embedding/head): dequantize and block_rows
    bit-identical to the gguf package's; few rows within the rounding of int8 activations per 256
    values (exactly emulated: fp32 order only), independent of the batch; many rows within the
    bf16 GEMM's rounding; a list of weights is their outputs concatenated."""
    raw = q6k_blocks(45, 512)
    want, blocks = gguf_weight(raw, Q6_K), torch.from_numpy(raw)
    assert torch.equal(ggml.dequantize(blocks, Q6_K), want)
    ids = torch.tensor([44, 0, 7, 7])
    assert torch.equal(ggml.block_rows(blocks, Q6_K, ids), want[ids])
    x = torch.randn(140, 512, generator=torch.Generator().manual_seed(1))
    scale = x.abs() @ want.abs().T
    with ggml.integer_rows(100):
        y = ggml.block_linear(x[:12], blocks, Q6_K)
        if isa != "reference":
            xb = x[:12].reshape(12, -1, 256)
            d = xb.abs().amax(-1, keepdim=True) / 127
            xq = (torch.round(xb * torch.where(d != 0, 1 / d, torch.zeros_like(d))) * d).reshape(12, 512)
            assert ((y - xq @ want.T).abs() <= 1e-5 * scale[:12] + 1e-6).all()
            assert torch.equal(torch.cat([ggml.block_linear(x[i : i + 1], blocks, Q6_K) for i in range(12)]), y)
    gemm = ggml.block_linear(x, blocks, Q6_K)  # 140 rows: the bf16 GEMM (integer up to 128)
    assert ((gemm - x @ want.T).abs() <= 2.0**-7 * scale + 1e-6).all()
    parts = [blocks[:40], blocks[40:]]
    assert torch.equal(ggml.block_linear(x[:3], parts, Q6_K), ggml.block_linear(x[:3], blocks, Q6_K))
    with pytest.raises(ValueError, match="210-byte"):
        ggml.block_linear(x, blocks[:, :-1], Q6_K)


@pytest.mark.skipif(not ggml.available(), reason="needs the compiled kernels")
def test_q6_k_512_bit_body_is_the_avx2_kernels_numbers():
    """The 512-bit Q6_K body (avx512vbmi) gives q6k_gemv_avx2's numbers bit for bit (exact int32
    lanes, the same float steps), for 1-8 activation rows and past 8 (passes of 8), odd weight
    rows, odd and even block counts, several parts, 1 and 2 threads; within the int8 rounding of
    the plain reference."""
    before = ggml.isa()
    if ggml.set_isa("avx512vbmi") != "avx512vbmi":
        ggml.set_isa(before)
        pytest.skip("this CPU has no avx512vbmi")
    try:
        for k in (256, 768):
            raw = q6k_blocks(45, k, seed=k)
            blocks, want = torch.from_numpy(raw), gguf_weight(raw, Q6_K)
            parts = [blocks[:19], blocks[19:]]
            x = torch.randn(8, k, generator=torch.Generator().manual_seed(k))
            threads = torch.get_num_threads()
            got = {}
            for isa in ("avx512vbmi", "avx2"):
                ggml.set_isa(isa)
                with ggml.integer_rows(100):
                    got[isa] = [ggml.block_linear(x[:rows], blocks, Q6_K) for rows in range(1, 9)]
                    torch.set_num_threads(1)
                    try:
                        got[isa].append(ggml.block_linear(x[:3], parts, Q6_K))
                    finally:
                        torch.set_num_threads(threads)
            for a, b in zip(got["avx512vbmi"], got["avx2"], strict=True):
                assert torch.equal(a, b)
            xb = x.reshape(8, -1, 256)
            d = xb.abs().amax(-1, keepdim=True) / 127
            xq = (torch.round(xb * torch.where(d != 0, 1 / d, torch.zeros_like(d))) * d).reshape(8, k)
            assert ((got["avx512vbmi"][7] - xq @ want.T).abs() <= 1e-5 * (x.abs() @ want.abs().T) + 1e-6).all()
    finally:
        ggml.set_isa(before)


@pytest.mark.parametrize("body", ["avx2", "avx512vnni"])
@pytest.mark.parametrize("qtype", [Q4_0, Q4_1, Q8_0])
def test_256_bit_tiled_rows_are_each_rows_own_numbers(body, qtype):
    """The 256-bit bodies (laptops without AVX-512): 9-128 activation rows go to the tiled kernel
    (8-row weight panels, scales from the rows' own loads) and every row gets the bits it gets
    alone (the row-at-a-time kernel), for odd and even block counts, weight rows past the last
    whole panel, a row-strided view and a list of parts; AVX2 and AVX512-VNNI give the same
    bits; all within the int8 activations' exactly emulated rounding."""
    with kernels_on(body):
        for k, n in ((96, 45), (192, 16)):
            raw = random_blocks(qtype, n=2 * n, k=k, seed=k)
            blocks, w = torch.from_numpy(raw)[::2], gguf_weight(raw, qtype)[::2]  # rows 2 rows apart
            x = torch.randn(40, k, generator=torch.Generator().manual_seed(k))
            with ggml.integer_rows(128):
                alone = torch.cat([ggml.block_linear(x[i : i + 1], blocks, qtype) for i in range(40)])
                for rows in (3, 9, 17, 40):
                    assert torch.equal(ggml.block_linear(x[:rows], blocks, qtype), alone[:rows])
                parts = [blocks[:8], blocks[8:]]
                assert torch.equal(ggml.block_linear(x[:12], parts, qtype), alone[:12])
                many = ggml.block_linear(x.repeat(3, 1)[:120], blocks, qtype)  # 120 rows: one sweep
            assert torch.equal(many, alone.repeat(3, 1)[:120])
            exact = quantized_activations(x) @ w.T
            assert ((alone - exact).abs() <= 1e-5 * (x.abs() @ w.abs().T) + 1e-6).all()
            got = alone
            if ggml.set_isa("avx2") == "avx2":  # the other 256-bit body: the same bits
                with ggml.integer_rows(128):
                    assert torch.equal(ggml.block_linear(x[:20], blocks, qtype), got[:20])
                ggml.set_isa(body)


@contextlib.contextmanager
def prompt_rows_take(name: str | None = None, *, native: bool | None = None):
    """``ggml.set_prompt_path(name, native=native)`` for the block (then back to before)."""
    auto, before = ggml._state.get("prompt_auto", True), ggml.prompt_path()
    try:
        yield ggml.set_prompt_path(name, native=native)
    finally:
        ggml.set_prompt_path(None if auto else before)


@pytest.mark.parametrize("body", ["avx2", "avx512vbmi"])
@pytest.mark.parametrize("qtype", [Q4_0, Q4_1, Q8_0])
def test_prompt_rows_take_the_integer_kernels_where_bf16_is_not_native(body, qtype):
    """Where torch's bf16 GEMM is not native (an AVX2 laptop: 7-10x slower than the tiled integer
    kernels at 256-512 rows), prompt rows (path 2, and row counts above the integer limit) take
    the integer kernels: each row's own bits (as one row alone), within the int8 activations'
    exactly emulated rounding of the float product. Where bf16 is native they keep the bf16 GEMM
    (its bound); the kernels below AVX2 keep it too; fp32 forced: an fp32 GEMM."""
    with kernels_on(body):
        raw = random_blocks(qtype, n=45, k=96)
        blocks, w = torch.from_numpy(raw), gguf_weight(raw, qtype)
        x = torch.randn(200, 96, generator=torch.Generator().manual_seed(qtype))
        ref, scale = x @ w.T, x.abs() @ w.abs().T
        with ggml.integer_rows(1):
            alone = torch.cat([ggml.block_linear(x[i : i + 1], blocks, qtype) for i in range(200)])
        with prompt_rows_take(native=False) as name:
            assert name == "integer" == ggml.prompt_path()
            with ggml.integer_rows(0):
                assert torch.equal(ggml.block_linear(x, blocks, qtype), alone)
            assert torch.equal(ggml.block_linear(x, blocks, qtype), alone)  # 200 rows by row count
            xb = x[:150].bfloat16()
            with ggml.integer_rows(150):
                integer = ggml.block_linear(xb, blocks, qtype)
            assert integer.dtype == torch.bfloat16 and torch.equal(ggml.block_linear(xb, blocks, qtype), integer)
        assert ((alone - quantized_activations(x) @ w.T).abs() <= 1e-5 * scale + 1e-6).all()
        half_d = x.reshape(200, -1, 32).abs().amax(-1) / 254
        assert ((alone - ref).abs() <= half_d @ w.abs().reshape(45, -1, 32).sum(-1).T * 1.001 + 1e-5 * scale).all()
        with prompt_rows_take(native=True) as name:
            assert name == "bf16"
            with ggml.integer_rows(0):
                gemm = ggml.block_linear(x, blocks, qtype)
            assert not torch.equal(gemm, alone)
            assert ((gemm - ref).abs() <= 2.0**-7 * scale + 1e-6 + 2.0**-8 * ref.abs()).all()
        with prompt_rows_take("fp32"), ggml.integer_rows(0):
            assert ((ggml.block_linear(x, blocks, qtype) - ref).abs() <= 1e-5 * scale + 1e-6).all()
        with pytest.raises(ValueError, match="prompt path"):
            ggml.set_prompt_path("fp8")
    with kernels_on("scalar"), prompt_rows_take(native=False) as name:
        assert name == "bf16"  # the plain C++ integer kernels are no faster than any GEMM


def test_prompt_rows_q6_k_take_the_integer_kernels_where_bf16_is_not_native():
    with kernels_on("avx2"), prompt_rows_take(native=False):
        raw = q6k_blocks(20, 512)
        blocks = torch.from_numpy(raw)
        x = torch.randn(70, 512, generator=torch.Generator().manual_seed(2))
        with ggml.integer_rows(0):
            prompt = ggml.block_linear(x, blocks, Q6_K)
        with ggml.integer_rows(70):
            assert torch.equal(prompt, ggml.block_linear(x, blocks, Q6_K))
