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
    from lhama.model.lora import LoraConfig
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
        from tests.engine.test_fixed_lora import random_adapter

        cfg = LoraConfig(rank=4, alpha=8.0, target_modules=("wq", "wv", "wo", "w2"))
        weights = random_adapter(args, cfg, seed)
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


@pytest.fixture
def simd_restored():
    yield OPS.set_simd
    OPS.set_simd(True)


@pytest.mark.parametrize("kv", [torch.float32, torch.bfloat16, torch.float16])
def test_attention_vector_bodies_give_the_plain_loops_bits(kv, simd_restored):
    """The AVX-512 scores/values bodies (head sizes 64 and 128, query heads in register groups of
    1-4) against the plain loops, static and paged caches: the same bits (where the CPU has no
    AVX-512 both runs take the plain loops)."""
    g = torch.Generator().manual_seed(7)
    for D, KVH, G in [(64, 3, 3), (64, 1, 5), (64, 2, 4), (128, 2, 3), (128, 1, 7), (32, 2, 2)]:
        H, L, pos, bs = KVH * G, 41, 37, 8
        q, k, v = (torch.randn(2, 1, n, D, generator=g) for n in (H, KVH, KVH))
        kc, vc = (torch.randn(2, L, KVH, D, generator=g).to(kv) for _ in range(2))
        paged_k, paged_v = (torch.randn(12 * KVH, bs, D, generator=g).to(kv) for _ in range(2))
        tables = torch.tensor([[5, 0, 11, 3, 7, 1], [2, 9, 4, 10, 6, 8]])
        lens = torch.tensor([pos + 1, 29])
        slots = torch.stack(
            [
                (tables[i, (n - 1) // bs] * KVH + torch.arange(KVH)) * bs + (n - 1) % bs
                for i, n in enumerate(lens.tolist())
            ]
        ).flatten()
        got = []
        for on in (True, False):
            simd_restored(on)
            a = OPS.attend_static(q, k, v, kc.clone(), vc.clone(), pos, torch.float32)
            b = OPS.attend_paged_decode(
                q.view(2, H, D),
                k.view(2, KVH, D),
                v.view(2, KVH, D),
                paged_k.clone(),
                paged_v.clone(),
                slots,
                tables,
                lens,
                torch.float32,
            )
            got.append((a, b))
        assert torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1], got[1][1]), (D, KVH, G)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_lora_op_rows_in_tiles_give_each_row_alone_bits(dtype):
    """More than one row goes through tiles of 8 (b_t's spans read once per tile, in 512-output
    chunks): every row's result equals the op on that row alone, bit for bit, at row counts that
    end tiles anywhere, with spans wider than a chunk, an unadapted part, fp32 and bf16 x."""
    g = torch.Generator().manual_seed(7)
    K, N, R = 97, 1300, 12
    a = (torch.randn(R, K, generator=g) * 0.1).to(dtype)
    bt = torch.zeros(R, N, dtype=dtype)
    spans = [0, 5, 0, 1100, 5, 12, 1150, 1300]  # outputs 1100..1149: a part without an adapter
    bt[0:5, 0:1100] = torch.randn(5, 1100, generator=g).to(dtype)
    bt[5:12, 1150:1300] = torch.randn(7, 150, generator=g).to(dtype)
    for rows in (2, 7, 8, 9, 17, 37):
        for x in (torch.randn(rows, K, generator=g), torch.randn(rows, K, generator=g).bfloat16()):
            y0 = torch.randn(rows, N, generator=g)
            y = y0.clone()
            OPS.lora_add_(y, x, a, bt, spans)
            for i in range(rows):
                alone = y0[i : i + 1].clone()
                OPS.lora_add_(alone, x[i : i + 1], a, bt, spans)
                assert torch.equal(y[i : i + 1], alone), (rows, i, x.dtype)
            assert torch.equal(y[:, 1100:1150], y0[:, 1100:1150])
            close(y, y0 + (x.float() @ a.float().T) @ bt.float(), 1e-5)


@pytest.mark.parametrize("rows", [1, 3])
def test_lora_op_on_fp16_adapter_gives_the_fp32_bits(rows):
    """``lora_add_`` with fp16 a / b_t (widened in the op) equals the op on their exact fp32
    copies, bit for bit: odd K and N, a fused module's spans with an unadapted part, bf16 x."""
    g = torch.Generator().manual_seed(rows)
    K, N, R = 83, 61, 12
    a = (torch.randn(R, K, generator=g) * 0.1).half()
    bt = torch.zeros(R, N, dtype=torch.half)
    spans = [0, 4, 0, 17, 4, 12, 40, 61]  # outputs 17..39: a part without an adapter
    bt[0:4, 0:17] = torch.randn(4, 17, generator=g).half()
    bt[4:12, 40:61] = torch.randn(8, 21, generator=g).half()
    for x in (torch.randn(rows, K, generator=g), torch.randn(rows, K, generator=g).bfloat16()):
        y0 = torch.randn(rows, N, generator=g)
        y16, y32 = y0.clone(), y0.clone()
        OPS.lora_add_(y16, x, a, bt, spans)
        OPS.lora_add_(y32, x, a.float(), bt.float(), spans)
        assert torch.equal(y16, y32)
        assert torch.equal(y16[:, 17:40], y0[:, 17:40])
        want = y0 + (x.float() @ a.float().T) @ bt.float()
        close(y16, want, 1e-5)


def test_fixed_lora_keeps_an_fp16_adapter_in_fp16_for_the_op():
    """An adapter fp16 holds exactly (saved in fp16, scaled by 2) is read by the op in fp16, one
    that it does not (fp32 values) stays fp32; both give the addmm path's numbers."""
    from lhama.model.lora_batch import FixedLoraLinear

    g = torch.Generator().manual_seed(3)
    base = torch.nn.Linear(24, 20, bias=False)
    for dtype, want in ((torch.float16, torch.float16), (torch.float32, torch.float32)):
        pairs = {
            "wq": ((torch.randn(4, 24, generator=g) * 0.3).to(dtype), (torch.randn(20, 4, generator=g) * 2).to(dtype))
        }
        mod = FixedLoraLinear(base, {"wq": (0, 20)}, 24, pairs)
        assert mod.a_op.dtype == want and mod.b_t_op.dtype == want
        x = torch.randn(2, 24, generator=g)
        with torch.inference_mode():
            got = mod(x)
        close(got, base(x).detach() + (x @ mod.a.T) @ mod.b.T, 1e-5)


def test_decode_attention_split_by_query_head_gives_the_same_bits_at_any_thread_count():
    """Long rows go to the threads by query head (3 KV heads x 3 query heads: 5 and 4 heads on 2
    threads): each head's numbers are the same at 1 and 2 threads."""
    g = torch.Generator().manual_seed(11)
    H, KVH, D, bs, ctx = 9, 3, 64, 16, 700
    nblk = ctx // bs + 2
    kc, vc = (torch.randn(nblk * KVH, bs, D, generator=g).bfloat16() for _ in range(2))
    q, k, v = (
        torch.randn(2, H, D, generator=g),
        torch.randn(2, KVH, D, generator=g),
        torch.randn(2, KVH, D, generator=g),
    )
    tables = torch.stack([torch.randperm(nblk, generator=g) for _ in range(2)])
    lens = torch.tensor([ctx, ctx - 37])
    slots = torch.stack(
        [(tables[i, (n - 1) // bs] * KVH + torch.arange(KVH)) * bs + (n - 1) % bs for i, n in enumerate(lens.tolist())]
    ).flatten()
    threads = torch.get_num_threads()
    outs = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            outs.append(OPS.attend_paged_decode(q, k, v, kc.clone(), vc.clone(), slots, tables, lens, torch.float32))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])
