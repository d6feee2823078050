"""The int8 KV cache's rows (``lhama.model.kv_cache.quantize_kv``: int8 values + a bf16 scale per
token and KV head) and the C++ decode attention that reads them in place, against torch: the
round trip's error bound, the C++ writes' bytes, the attention against SDPA over the dequantized
rows (static and paged, AVX-512 and plain bodies, head sizes with and without a vector body)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lhama.model.fused as fused
from lhama.model import StaticKVCache, kv_cache_dtype
from lhama.model.kv_cache import dequantize_kv, kv_row_bytes, kv_row_width, quantize_kv

OPS = fused._ops()
needs_ops = pytest.mark.skipif(OPS is None, reason="lhama's kernel library could not be built here")


def rows(g, n, D):
    """Rows of very different sizes (as K/V of different heads are), one all-zero row, one outlier."""
    x = torch.randn(n, D, generator=g) * torch.logspace(-3, 2, n).unsqueeze(1)
    x[3] = 0
    x[5, 7] = 40.0
    return x


def test_round_trip_error_is_at_most_half_a_step_per_row():
    g = torch.Generator().manual_seed(0)
    for D in (64, 128, 48):
        x = rows(g, 64, D)
        q = quantize_kv(x, torch.int8)
        assert q.dtype == torch.int8 and q.shape == (64, D + 2) == (64, kv_row_width(D, torch.int8))
        back = dequantize_kv(q, torch.float32)
        step = q[:, D:].contiguous().view(torch.bfloat16).float()  # the stored scale
        amax = x.abs().amax(-1, keepdim=True)
        assert ((step - amax / 127).abs() <= amax / 127 * 2**-8).all()  # amax / 127 in bf16
        err = (back - x).abs()
        assert (err <= step / 2 * (1 + 1e-5) + 1e-30).all()
        assert torch.equal(back[3], torch.zeros(D))  # a zero row: scale 0, no NaN
        assert (q[:, :D].abs() <= 127).all() and (q[:, :D].abs().amax(-1) == 127)[x.abs().amax(-1) > 0].all()
        # relative to the row's size: 1/254 at worst
        assert (err.amax(-1) / x.abs().amax(-1).clamp_min(1e-30) <= (1 + 2**-8) / 254).all()
    assert kv_row_bytes(64, torch.int8) == 66 and kv_row_bytes(64, torch.bfloat16) == 128


def test_choice_names_and_bad_values():
    assert kv_cache_dtype(torch.float32, "cpu", "int8") == torch.int8
    with pytest.raises(ValueError, match="int8"):
        kv_cache_dtype(torch.float32, "cpu", "int4")


def attention_ref(q, kc, vc, lens_or_pos):
    """SDPA over the dequantized rows: q [N, H, D], kc/vc [N, S, KVH, E] int8, row n sees keys < len."""
    out = []
    for n in range(q.shape[0]):
        L = lens_or_pos[n]
        k = dequantize_kv(kc[n, :L], torch.float32).transpose(0, 1)  # [KVH, L, D]
        v = dequantize_kv(vc[n, :L], torch.float32).transpose(0, 1)
        out.append(F.scaled_dot_product_attention(q[n].unsqueeze(1)[None], k[None], v[None], enable_gqa=True))
    return torch.cat(out).transpose(1, 2)  # [N, 1, H, D]


@pytest.fixture
def simd_restored():
    yield OPS.set_simd
    OPS.set_simd(True)


@needs_ops
@pytest.mark.parametrize("D,KVH,G", [(64, 3, 3), (128, 2, 4), (48, 2, 2)])
def test_cpp_int8_attention_matches_torch_on_the_dequantized_rows(D, KVH, G, simd_restored):
    """attend_static and attend_paged_decode on int8 rows: the new row written with the torch
    quantizer's bytes, the output within fp32 rounding of SDPA over q * scale rows (the C++ scales
    the dot product instead of each element), vector and plain bodies alike."""
    g = torch.Generator().manual_seed(D + KVH)
    H, L, pos, bs, E = KVH * G, 45, 40, 8, D + 2
    q, k, v = (torch.randn(2, 1, n, D, generator=g) for n in (H, KVH, KVH))
    kc, vc = (quantize_kv(torch.randn(2, L, KVH, D, generator=g) * 3, torch.int8) for _ in range(2))
    for on in (True, False):
        simd_restored(on)
        kk, vv = kc.clone(), vc.clone()
        got = OPS.attend_static(q, k, v, kk, vv, pos, torch.float32)
        assert torch.equal(kk[:, pos], quantize_kv(k[:, 0], torch.int8))
        assert torch.equal(vv[:, pos], quantize_kv(v[:, 0], torch.int8))
        assert torch.equal(kk[:, :pos], kc[:, :pos]) and torch.equal(kk[:, pos + 1 :], kc[:, pos + 1 :])
        want = attention_ref(q[:, 0], kk, vv, [pos + 1] * 2)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)

        # The same keys in a paged cache: block b of sequence n holds positions b*bs.. of kc[n].
        nblk = (pos + 1 + bs - 1) // bs
        tables = torch.stack([torch.randperm(2 * nblk, generator=g)[:nblk] for _ in range(2)])
        tables[1] = tables[1] + 2 * nblk  # the two sequences' blocks apart
        paged_k = torch.zeros(4 * nblk * KVH, bs, E, dtype=torch.int8)
        paged_v = torch.zeros_like(paged_k)
        for n in range(2):
            for j in range(pos):
                r = (tables[n, j // bs] * KVH + torch.arange(KVH)) * bs + j % bs
                paged_k.view(-1, E)[r], paged_v.view(-1, E)[r] = kc[n, j], vc[n, j]
        slots = torch.stack([(tables[n, pos // bs] * KVH + torch.arange(KVH)) * bs + pos % bs for n in range(2)])
        lens = torch.tensor([pos + 1, pos + 1])
        pk, pv = paged_k.clone(), paged_v.clone()
        got_p = OPS.attend_paged_decode(
            q.view(2, H, D), k.view(2, KVH, D), v.view(2, KVH, D), pk, pv, slots.flatten(), tables, lens, torch.float32
        )
        assert torch.equal(pk.view(-1, E)[slots.flatten()], quantize_kv(k.view(-1, D), torch.int8))
        torch.testing.assert_close(got_p.view(2, 1, H, D), want, atol=2e-5, rtol=1e-4)


@needs_ops
def test_vector_and_plain_int8_bodies_give_the_same_bits(simd_restored):
    g = torch.Generator().manual_seed(5)
    H, KVH, D, L, pos = 9, 3, 64, 70, 66
    q, k, v = (torch.randn(1, 1, n, D, generator=g) for n in (H, KVH, KVH))
    kc, vc = (quantize_kv(torch.randn(1, L, KVH, D, generator=g), torch.int8) for _ in range(2))
    outs = []
    for on in (True, False):
        simd_restored(on)
        outs.append(OPS.attend_static(q, k, v, kc.clone(), vc.clone(), pos, torch.float32))
    assert torch.equal(outs[0], outs[1])


@needs_ops
def test_static_cache_int8_decode_takes_the_fused_op_and_prefill_the_torch_path(tiny_llama3_args, monkeypatch):
    """A StaticKVCache in int8: prompt rows (torch: quantize, dequantize, SDPA) and decode rows
    (the C++ op) write the same bytes; the fused decode output matches the torch path's."""
    a = tiny_llama3_args
    caches = [StaticKVCache(a, 1, 16, dtype=torch.int8) for _ in range(2)]
    assert caches[0].k[0].shape == (1, 16, a.n_kv_heads, a.head_dim + 2)
    outs = []
    for i, cache in enumerate(caches):
        if i == 1:
            monkeypatch.setattr(fused, "_OPS", [None])  # the torch path throughout
        gg = torch.Generator().manual_seed(3)
        prompt = [torch.randn(1, 5, n, a.head_dim, generator=gg) for n in (a.n_heads, a.n_kv_heads, a.n_kv_heads)]
        cache.attend(0, *prompt)
        cache.advance(5)
        step = [torch.randn(1, 1, n, a.head_dim, generator=gg) for n in (a.n_heads, a.n_kv_heads, a.n_kv_heads)]
        outs.append(cache.attend(0, *step))
    assert torch.equal(caches[0].k[0], caches[1].k[0]) and torch.equal(caches[0].v[0], caches[1].v[0])
    torch.testing.assert_close(outs[0], outs[1], atol=2e-5, rtol=1e-4)
