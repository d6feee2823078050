"""An adapter kept unmerged beside the base weights (``FixedLoraLinear``, how the default model
runs its shipped adapter on the int4 file): the same outputs as the adapter merged, on plain
projections and on the fused quantized ones (``wqkv``, ``w13``)."""

from __future__ import annotations

import copy

import torch

from lhama.model import build_model
from lhama.model.lora import BLOCK_PARENT, LoraConfig, apply_lora, merge_lora, projection_shape
from lhama.model.lora_batch import FixedLoraLinear, attach_fixed_lora
from lhama.quant import quantize_model

# Not every projection: fused modules then carry some adapted parts and some plain ones.
CFG = LoraConfig(rank=4, alpha=8.0, target_modules=("wq", "wv", "wo", "w2"))


def random_adapter(args, cfg: LoraConfig, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(args.n_layers):
        for n in cfg.target_modules:
            n_out, n_in = projection_shape(n, args)
            out[i, n] = (
                torch.randn(cfg.rank, n_in, generator=g) * 0.2,
                torch.randn(n_out, cfg.rank, generator=g) * 0.2,
            )
    return out


def test_side_path_equals_the_merged_adapter(tiny_llama3_args):
    model = build_model(tiny_llama3_args, dtype=torch.float32, init="random", seed=0)
    weights = random_adapter(tiny_llama3_args, CFG)
    merged = copy.deepcopy(model)
    apply_lora(merged, CFG)
    for (i, n), (a, b) in weights.items():
        lin = getattr(getattr(merged.layers[i], BLOCK_PARENT[n]), n)
        lin.lora_a.weight.data.copy_(a)
        lin.lora_b.weight.data.copy_(b)
    merge_lora(merged)
    side = copy.deepcopy(model)
    assert attach_fixed_lora(side, CFG, weights) == 4 * tiny_llama3_args.n_layers
    tokens = torch.randint(0, tiny_llama3_args.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got, plain = merged(tokens), side(tokens), model(tokens)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (got - plain).abs().max() > 0.1  # the adapter does change the outputs


def test_side_path_on_fused_int4_modules_adds_each_part_to_its_slice(tiny_llama3_args):
    model = build_model(tiny_llama3_args, dtype=torch.float32, init="random", seed=0)
    quantize_model(model, "int4")
    attn, ff = model.layers[0].attention, model.layers[0].feed_forward
    assert attn.wqkv is not None and ff.w13 is not None  # int4 fuses q/k/v and gate/up
    bases = {"wqkv": attn.wqkv, "w13": ff.w13}
    weights = random_adapter(tiny_llama3_args, CFG)
    # w13 has no adapted part (w1, w3 not targeted): it stays as it was.
    assert attach_fixed_lora(model, CFG, weights) == 3 * tiny_llama3_args.n_layers
    assert isinstance(attn.wqkv, FixedLoraLinear) and ff.w13 is bases["w13"]
    x = torch.randn(5, tiny_llama3_args.dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        delta = attn.wqkv(x) - bases["wqkv"](x)
    q = projection_shape("wq", tiny_llama3_args)[0]
    kv = projection_shape("wk", tiny_llama3_args)[0]
    expect = {n: x @ weights[0, n][0].T @ weights[0, n][1].T * CFG.scaling for n in ("wq", "wv")}
    torch.testing.assert_close(delta[:, :q], expect["wq"], atol=1e-4, rtol=1e-4)
    assert delta[:, q : q + kv].abs().max() == 0  # wk: not adapted
    torch.testing.assert_close(delta[:, q + kv :], expect["wv"], atol=1e-4, rtol=1e-4)
