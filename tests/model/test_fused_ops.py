"""The fused C++ ops of a CPU decode step (``lhama.model.fused``, ``quant/kernels/decode_ops.cpp``)
against the PyTorch path they replace: each op on its own (1 and 3 rows, fp32 and bf16 inputs,
grouped-query heads, positions at the end of the cache), and a whole quantized model decoding
with and without them (same greedy tokens, logits within float rounding)."""

from __future__ import annotations

import sys
from pathlib import Path

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
@pytest.mark.parametrize("kv", [torch.float32, torch.bfloat16, torch.float16])
def test_static_cache_attention_at_the_end_of_the_cache(tiny_llama3_args, rows, batch, kv, torch_path):
    """fp32 caches, and 16-bit ones (written rounded, read widened: attention in fp32)."""
    args = tiny_llama3_args  # 4 query heads over 2 KV heads
    L, H, KVH, D = 40, args.n_heads, args.n_kv_heads, args.head_dim
    g = torch.Generator().manual_seed(rows * 10 + batch)
    fast, slow = (StaticKVCache(args, 2, L, dtype=kv) for _ in range(2))
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


@pytest.mark.parametrize("kv", ["float32", "bfloat16"])
def test_paged_decode_attention_reads_blocks_in_place(tiny_llama3_args, kv):
    """Three decode rows with scattered block tables, one ending on the last slot of a block: the
    op against the gathered SDPA path of ``PagedKVCache.attend``, fp32 and bf16 storage."""
    args, bs = tiny_llama3_args, 4
    H, KVH, D = args.n_heads, args.n_kv_heads, args.head_dim
    cache = PagedKVCache(args, num_blocks=12, block_size=bs, kv_dtype=kv)
    assert cache.kv.dtype == getattr(torch, kv)
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


# -- the default model's shape: GGUF blocks with an unmerged adapter, the whole step in one op ---


def _blocks(w: torch.Tensor, name: str):
    import gguf

    from lhama.quant.blocks import BlockLinear

    qtype = gguf.GGMLQuantizationType[name]
    raw = gguf.quants.quantize(w.detach().numpy(), qtype)
    return BlockLinear(torch.from_numpy(raw.view("u1").reshape(w.shape[0], -1)), qtype, w.shape[1])


def _block_model(args, *, lora: bool, seed: int = 4):
    """A random model whose projections are GGUF blocks (Q4_1 wqkv and w2, Q4_0 wo, Q8_0 w13;
    w13 as two parts where ``BlockLinearParts`` exists) like the default file's, with a rank-4
    adapter beside wq, wv, wo and w2 (``FixedLoraLinear``, as the tuned default) when ``lora``."""
    from lhama.model.lora import LoraConfig, projection_shape
    from lhama.model.lora_batch import attach_fixed_lora
    from lhama.quant import blocks as qb

    model = build_model(args, init="random", seed=seed).eval()
    for layer in model.layers:
        a, f = layer.attention, layer.feed_forward
        a.wqkv = _blocks(torch.cat([a.wq.weight, a.wk.weight, a.wv.weight]), "Q4_1")
        a.wo = _blocks(a.wo.weight, "Q4_0")
        f.w2 = _blocks(f.w2.weight, "Q4_1")
        if hasattr(qb, "BlockLinearParts"):
            w1, w3 = _blocks(f.w1.weight, "Q8_0"), _blocks(f.w3.weight, "Q8_0")
            f.w13 = qb.BlockLinearParts([w1.blocks, w3.blocks], w1.qtype, args.dim)
        else:
            f.w13 = _blocks(torch.cat([f.w1.weight, f.w3.weight]), "Q8_0")
    if lora:
        cfg = LoraConfig(rank=4, alpha=8.0, target_modules=("wq", "wv", "wo", "w2"))
        g = torch.Generator().manual_seed(seed)
        weights = {}
        for i in range(args.n_layers):
            for n in cfg.target_modules:
                n_out, n_in = projection_shape(n, args)
                weights[i, n] = (
                    torch.randn(cfg.rank, n_in, generator=g) * 0.2,
                    torch.randn(n_out, 4, generator=g) * 0.2,
                )
        assert attach_fixed_lora(model, cfg, weights) == 3 * args.n_layers
    return model


@pytest.mark.parametrize("rows", [1, 5])
def test_lora_side_path_op_equals_the_pytorch_path(tiny_llama3_args, rows, monkeypatch):
    """``lora_add_`` (what ``FixedLoraLinear`` runs at CPU inference) against the addmm path, on a
    fused module whose parts are partly adapted; a row's delta is the same bits at any row count."""
    from lhama.model.lora_batch import FixedLoraLinear

    model = _block_model(tiny_llama3_args, lora=True)
    mod = model.layers[0].attention.wqkv
    assert isinstance(mod, FixedLoraLinear) and len(mod.spans) == 8  # wq and wv adapted, wk not
    x = torch.randn(1, rows, tiny_llama3_args.dim, generator=torch.Generator().manual_seed(rows))
    with torch.inference_mode():
        got = mod(x)
        one = mod(x[:, :1])
        assert torch.equal(got[:, :1], one)
        xb = x.to(torch.bfloat16)  # a bf16 input: converted to fp32 inside the op
        y = torch.zeros(rows, mod.out_features)
        OPS.lora_add_(y, xb.view(rows, -1), mod.a, mod.b_t, mod.spans)
        monkeypatch.setattr(fused, "_OPS", [None])
        want = mod(x)
        want_b = (xb.view(rows, -1).float() @ mod.a.T) @ mod.b.T
    close(got, want, 1e-5)
    close(y, want_b, 1e-5)


def _greedy(model, prompt, n=10):
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
    return [s.token_id for s in generate_tokens(model, prompt, params)]


def _step_logits(model, prompt, token):
    with torch.inference_mode():
        cache = StaticKVCache(model.args, 1, len(prompt) + 2)
        model(torch.tensor([prompt]), 0, cache)
        cache.advance(len(prompt))
        return model(torch.tensor([[token]]), cache.pos, cache)


@pytest.fixture
def count_fused_steps(monkeypatch):
    """Counts the decode steps that took the whole-step op (``Transformer._fused_layers``)."""
    from lhama.model.transformer import Transformer

    calls = {"fused": 0}
    real = Transformer._fused_layers

    def counting(self, h, rotation, cache):
        out = real(self, h, rotation, cache)
        calls["fused"] += out is not None
        return out

    monkeypatch.setattr(Transformer, "_fused_layers", counting)
    return calls


@pytest.mark.parametrize("lora", [False, True])
def test_whole_step_op_is_the_module_path_bit_for_bit(tiny_llama3_args, lora, count_fused_steps, monkeypatch):
    """``decode_layers`` runs the module path's ops in its order: the same greedy tokens and the
    same logits, bit for bit, as the per-module path; within float rounding of plain PyTorch."""
    from lhama.model.transformer import Transformer

    model = _block_model(tiny_llama3_args, lora=lora)
    prompt = [5, 17, 99, 3, 250, 42, 7]
    fast = _greedy(model, prompt)
    assert count_fused_steps["fused"] == 9  # every decode step; the prompt's forward does not qualify
    fast_logits = _step_logits(model, prompt, fast[0])
    monkeypatch.setattr(Transformer, "_fused_layers", lambda self, h, rotation, cache: None)
    assert _greedy(model, prompt) == fast
    assert torch.equal(_step_logits(model, prompt, fast[0]), fast_logits)
    monkeypatch.setattr(fused, "_OPS", [None])  # no fused op at all: PyTorch (addmm side path)
    torch.testing.assert_close(_step_logits(model, prompt, fast[0]), fast_logits, atol=1e-4, rtol=1e-4)


def test_whole_step_op_in_the_engine_equals_the_reference_loop(tiny_llama3_args, count_fused_steps):
    """The engine's decode-only steps (paged cache, block tables) take the whole-step op too, and
    every sequence's greedy tokens equal the reference loop's, batched with others or not."""
    from lhama.engine import EngineConfig, LLMEngine

    model = _block_model(tiny_llama3_args, lora=True)
    prompts = [[5, 17, 99, 3, 250, 42, 7], [9, 8], [100 + i for i in range(13)]]
    want = [_greedy(model, p, 8) for p in prompts]
    count_fused_steps["fused"] = 0

    sys.path.insert(0, str(Path(__file__).parent.parent / "engine"))
    from engine_fakes import WordTokenizer

    eng = LLMEngine(model, WordTokenizer(tiny_llama3_args.vocab_size), EngineConfig(num_blocks=64, block_size=4))
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    got = [r.completions[0].token_ids for r in eng.generate(prompts, params)]
    assert got == want
    assert count_fused_steps["fused"] >= 6  # the steps after every prompt was in


def test_rope_table_rows_do_not_depend_on_its_size(tiny_llama3_args):
    from lhama.model.rope import rope_cos_sin, rope_rotation

    model = build_model(tiny_llama3_args, init="random")
    pos = torch.tensor([[0, 1, 255, 7]])
    small = model.rotation(pos)
    big = model.rotation(torch.tensor([[600]]))  # grows the table
    assert model._rope_table.shape[0] >= 601
    assert torch.equal(model.rotation(pos), small)
    torch.testing.assert_close(big, rope_rotation(*rope_cos_sin(model.inv_freq, torch.tensor([[600]]))))
