"""The fused C++ ops of a CPU decode step (``lhama.model.fused``, ``quant/kernels/decode_ops.cpp``)
against the PyTorch path they replace: each op on its own (1 and 3 rows, fp32 and bf16 inputs,
grouped-query heads, positions at the end of the cache), and a whole quantized model decoding
with and without them (same greedy tokens, logits within float rounding)."""

from __future__ import annotations

import pytest
import torch

import lhama.model.fused as fused
from lhama.engine.paged_cache import AttentionMetadata, PagedKVCache
from lhama.generate import SamplingParams, generate_tokens
from lhama.model import StaticKVCache, build_model
from lhama.model.rope import rope_cos_sin, rope_rotation

OPS = fused._ops()
pytestmark = pytest.mark.skipif(OPS is None, reason="lhama's kernel library could not be built here")


@pytest.fixture
def torch_path(monkeypatch):
    """Within the test: the fused ops off (what every other device runs)."""
    monkeypatch.setattr(fused, "_OPS", [None])


def close(a, b, tol=2e-6):
    assert a.dtype == b.dtype and a.shape == b.shape
    torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("out", [torch.float32, torch.bfloat16])
def test_norms_and_swiglu(rows, out):
    g = torch.Generator().manual_seed(rows)
    x, y = torch.randn(1, rows, 96, generator=g), torch.randn(1, rows, 96, generator=g).to(torch.bfloat16)
    w = torch.randn(96, generator=g)
    with torch.inference_mode():
        assert fused.fused_ops(x) is OPS
        # bf16 results may differ by one rounding step where fp32 sums differ in the last bit.
        tol = 1e-5 if out == torch.float32 else 8e-3
        close(fused.rms_norm(x, w, 1e-5, out, OPS), fused.rms_norm(x, w, 1e-5, out), tol)
        h, n = fused.add_rms_norm(x, y, w, 1e-5, out, OPS)
        h_ref, n_ref = fused.add_rms_norm(x, y, w, 1e-5, out)
        assert torch.equal(h, h_ref)  # x + float(y): exact either way
        close(n, n_ref, tol)
        gu = torch.randn(1, rows, 2 * 80, generator=g).to(torch.bfloat16)
        close(fused.silu_mul(gu, out, torch.float32, OPS), fused.silu_mul(gu, out, torch.float32), tol)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_qkv(rows, dtype):
    H, KVH, D = 6, 2, 16
    g = torch.Generator().manual_seed(rows)
    qkv = torch.randn(1, rows, (H + 2 * KVH) * D, generator=g).to(dtype)
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    rot = rope_rotation(*rope_cos_sin(inv, torch.arange(500, 500 + rows).unsqueeze(0)))
    with torch.inference_mode():
        got = fused.rope_qkv(qkv, rot, H, KVH, torch.float32, OPS)
        want = fused.rope_qkv(qkv, rot, H, KVH, torch.float32)
    for a, b in zip(got, want, strict=True):
        close(a, b.contiguous())


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("batch", [1, 2])
def test_static_cache_attention_at_the_end_of_the_cache(tiny_llama3_args, rows, batch, torch_path):
    args = tiny_llama3_args  # 4 query heads over 2 KV heads
    L, H, KVH, D = 40, args.n_heads, args.n_kv_heads, args.head_dim
    g = torch.Generator().manual_seed(rows * 10 + batch)
    fast, slow = (StaticKVCache(args, 2, L) for _ in range(2))
    for c in (fast, slow):
        for i in range(args.n_layers):
            torch.manual_seed(i)
            c.k[i].normal_()
            c.v[i].normal_()
        c.pos = L - rows  # the new rows fill the cache to its last position
    q = torch.randn(batch, rows, H, D, generator=g)
    k, v = torch.randn(batch, rows, KVH, D, generator=g), torch.randn(batch, rows, KVH, D, generator=g)
    with torch.inference_mode():
        want = slow.attend(1, q, k, v)  # PyTorch path (the fixture turned the ops off)
        got = OPS.attend_static(q, k, v, fast.k[1], fast.v[1], fast.pos, torch.float32)
    close(got, want, 2e-6)
    assert torch.equal(fast.k[1], slow.k[1]) and torch.equal(fast.v[1], slow.v[1])
    with pytest.raises(RuntimeError, match="holds"):
        OPS.attend_static(q, k, v, fast.k[1], fast.v[1], L - rows + 1, torch.float32)


def test_paged_decode_attention_reads_blocks_in_place(tiny_llama3_args):
    """Three decode rows with scattered block tables, one ending on the last slot of a block: the
    op against the gathered SDPA path of ``PagedKVCache.attend``."""
    args, bs = tiny_llama3_args, 4
    H, KVH, D = args.n_heads, args.n_kv_heads, args.head_dim
    cache = PagedKVCache(args, num_blocks=12, block_size=bs)
    cache.kv.normal_(generator=torch.Generator().manual_seed(0))
    tables = [[7, 2, 9], [1], [4, 11, 0]]
    lens = [11, 3, 12]  # positions attended to, the new token's included
    g = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(1, 3, H, D, generator=g),
        torch.randn(1, 3, KVH, D, generator=g),
        torch.randn(1, 3, KVH, D, generator=g),
    )
    heads = torch.arange(KVH)
    slots = torch.tensor([t[(n - 1) // bs] * bs * KVH + (n - 1) % bs for t, n in zip(tables, lens)])
    mb = 3
    table = torch.tensor([t + [0] * (mb - len(t)) for t in tables])
    meta = AttentionMetadata(
        slots=(slots.unsqueeze(1) + heads * bs).flatten(),
        num_decode=3,
        decode_gather_idx=(table.unsqueeze(1) * KVH + heads.view(1, KVH, 1)).flatten(),
        decode_max_blocks=mb,
        decode_mask=(torch.arange(mb * bs).unsqueeze(0) < torch.tensor(lens).unsqueeze(1)).view(3, 1, 1, mb * bs),
    )
    before = cache.kv.clone()
    with torch.inference_mode():
        cache.meta = meta
        want = cache.attend(0, q, k, v)  # no tables in the metadata: gather + SDPA
        after_sdpa = cache.kv.clone()
        cache.kv.copy_(before)
        meta.decode_tables, meta.decode_lens = table, torch.tensor(lens)
        got = cache.attend(0, q, k, v)
    close(got, want, 2e-6)
    assert torch.equal(cache.kv, after_sdpa)


def _quantized_tiny(args):
    from lhama.quant import quantize_model

    model = build_model(args, init="random", seed=3).eval()
    quantize_model(model, "int4")  # fused wqkv / w13 with bf16 compute: the default path's shape
    return model


def test_a_quantized_model_decodes_the_same_with_and_without_the_fused_ops(tiny_llama3_args, monkeypatch):
    model = _quantized_tiny(tiny_llama3_args)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    prompt = [5, 17, 99, 3, 250, 42, 7]
    fast = list(generate_tokens(model, prompt, params))
    with torch.inference_mode():
        cache = StaticKVCache(model.args, 1, 16)
        model(torch.tensor([prompt]), 0, cache)
        cache.advance(len(prompt))
        fast_logits = model(torch.tensor([[fast[0].token_id]]), cache.pos, cache)
    monkeypatch.setattr(fused, "_OPS", [None])
    slow = list(generate_tokens(model, prompt, params))
    with torch.inference_mode():
        cache = StaticKVCache(model.args, 1, 16)
        model(torch.tensor([prompt]), 0, cache)
        cache.advance(len(prompt))
        slow_logits = model(torch.tensor([[fast[0].token_id]]), cache.pos, cache)
    assert [s.token_id for s in fast] == [s.token_id for s in slow]
    torch.testing.assert_close(fast_logits, slow_logits, atol=1e-3, rtol=1e-3)


def test_training_takes_the_pytorch_path(tiny_llama3_args):
    x = torch.randn(1, 1, 64)
    assert fused.fused_ops(x) is None  # autograd on: never the C++ ops
    with torch.inference_mode():
        assert fused.fused_ops(x.to(torch.bfloat16)) is None  # bf16 residual stream
        assert fused.fused_ops(x) is OPS
    model = build_model(tiny_llama3_args, init="random")
    model(torch.tensor([[1, 2, 3]])).sum().backward()  # the same forward, differentiable
    assert model.layers[0].attention.wq.weight.grad is not None
