"""Our Transformer against Meta's reference ``llama_models/llama3/model.py`` with the same weights."""

from __future__ import annotations

import math

import pytest
import torch

from lhama.model import ModelArgs, RopeScaling, StaticKVCache, build_model, swiglu_hidden_dim
from lhama.model.rope import apply_llama3_rope_scaling, rope_inv_freq
from tests import needs

fairscale = needs.module("fairscale")  # the reference model needs it (test extra)


@pytest.fixture(scope="module")
def model_parallel_world_of_one(tmp_path_factory):
    import fairscale.nn.model_parallel.initialize as fs_init
    import torch.distributed as dist

    created = False
    if not dist.is_initialized():
        store = tmp_path_factory.mktemp("dist") / "store"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        created = True
    if not fs_init.model_parallel_is_initialized():
        fs_init.initialize_model_parallel(1)
    yield
    fs_init.destroy_model_parallel()
    if created:
        dist.destroy_process_group()


def _reference(ours, ref_kwargs):
    from llama_models.llama3 import model as ref_model
    from llama_models.llama3.args import ModelArgs as RefArgs

    ref = ref_model.Transformer(RefArgs(**ref_kwargs)).float()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ref.eval()


@pytest.mark.parametrize("scaled", [True, False])
def test_logits_match_reference_llama31(model_parallel_world_of_one, scaled):
    dim, multiple_of = 128, 64
    ref_kwargs = dict(
        dim=dim,
        n_layers=3,
        n_heads=8,
        n_kv_heads=2,
        vocab_size=512,
        multiple_of=multiple_of,
        ffn_dim_multiplier=1.3,
        norm_eps=1e-5,
        rope_theta=500000.0,
        use_scaled_rope=scaled,
        max_seq_len=4096,
        max_batch_size=2,
    )
    args = ModelArgs(
        dim=dim,
        n_layers=3,
        n_heads=8,
        n_kv_heads=2,
        vocab_size=512,
        hidden_dim=swiglu_hidden_dim(dim, multiple_of, 1.3),
        norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=RopeScaling() if scaled else None,
        max_seq_len=4096,
    )
    ours = build_model(args, init="random", seed=3).eval()
    ref = _reference(ours, ref_kwargs)

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 512, (2, 40), generator=gen)
    with torch.inference_mode():
        # Full prefill, then the same continuation fed in two chunks through each model's cache.
        want_full = ref(tokens, 0)
        got_full = ours(tokens)
        assert (got_full - want_full).abs().max().item() < 1e-5

        cache = StaticKVCache(args, 2, 64)
        ref2 = _reference(ours, ref_kwargs)
        for start, end in [(0, 25), (25, 26), (26, 40)]:
            want = ref2(tokens[:, start:end], start)
            got = ours(tokens[:, start:end], start, cache)
            cache.advance(end - start)
            assert (got - want).abs().max().item() < 1e-5, (start, end)


def test_long_positions_match_reference(model_parallel_world_of_one):
    """Positions far beyond the original 8K context, where the 3.1 scaling matters."""
    dim = 64
    ref_kwargs = dict(
        dim=dim,
        n_layers=1,
        n_heads=4,
        n_kv_heads=1,
        vocab_size=128,
        multiple_of=32,
        norm_eps=1e-5,
        rope_theta=500000.0,
        use_scaled_rope=True,
        max_seq_len=20000,
        max_batch_size=1,
    )
    args = ModelArgs(
        dim=dim,
        n_layers=1,
        n_heads=4,
        n_kv_heads=1,
        vocab_size=128,
        hidden_dim=swiglu_hidden_dim(dim, 32, None),
        rope_theta=500000.0,
        rope_scaling=RopeScaling(),
        max_seq_len=20000,
    )
    ours = build_model(args, init="random", seed=5).eval()
    ref = _reference(ours, ref_kwargs)
    tokens = torch.randint(0, 128, (1, 8))
    cache = StaticKVCache(args, 1, 20000)
    cache.pos = 15000  # the cache's earlier slots stay zero in both models
    with torch.inference_mode():
        want = ref(tokens, 15000)
        got = ours(tokens, 15000, cache)
    assert (got - want).abs().max().item() < 1e-5


def test_rope_scaling_follows_published_formula():
    """Each frequency checked against the rule written out from the Llama 3.1 description."""
    args = ModelArgs(
        dim=4096,
        n_layers=1,
        n_heads=32,
        n_kv_heads=8,
        vocab_size=8,
        hidden_dim=8,
        rope_theta=500000.0,
        rope_scaling=RopeScaling(factor=8, low_freq_factor=1, high_freq_factor=4, original_context=8192),
    )
    scaled = rope_inv_freq(args).double()
    base = 1.0 / (500000.0 ** (torch.arange(0, 128, 2).double() / 128))
    kinds = set()
    for f, got in zip(base.tolist(), scaled.tolist()):
        wavelen = 2 * math.pi / f
        if wavelen < 8192 / 4:
            want, kinds = f, kinds | {"kept"}
        elif wavelen > 8192 / 1:
            want, kinds = f / 8, kinds | {"divided"}
        else:
            s = (8192 / wavelen - 1) / (4 - 1)
            want, kinds = (1 - s) * f / 8 + s * f, kinds | {"blended"}
        assert got == pytest.approx(want, rel=1e-6)
    assert kinds == {"kept", "divided", "blended"}
    # Llama 3.2's factor 32 only changes the divisor.
    t = apply_llama3_rope_scaling(base.float(), RopeScaling(factor=32.0))
    assert t[-1].item() == pytest.approx(base[-1].item() / 32, rel=1e-6)


def test_rope_frequencies_stay_fp32_when_weights_are_cast():
    from lhama.model import get_config

    m = build_model(get_config("tiny-llama3").args, init="random").to(torch.bfloat16)
    assert m.inv_freq.dtype == torch.float32 and m.tok_embeddings.weight.dtype == torch.bfloat16
    assert torch.equal(m.inv_freq, rope_inv_freq(m.args))
