"""LoRA as a module swap: exact at init, merge == unmerged, and PEFT's file format in both
directions against Hugging Face peft + transformers on the real default model."""

from __future__ import annotations

import json

import pytest
import torch

from lhama.errors import CheckpointError, ConfigError
from lhama.model.lora import LoraConfig, LoRALinear, apply_lora, lora_state_dict, merge_lora
from lhama.peft_adapter import load_peft_adapter, save_peft_adapter
from tests import needs

ALL = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


def _randomize(model, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.weight.copy_(torch.randn(m.lora_b.weight.shape, generator=g) * scale)


def test_fresh_adapter_changes_nothing_and_only_adapters_train(tiny_model):
    tokens = torch.randint(0, 64, (2, 12))
    before = tiny_model(tokens)
    params = apply_lora(tiny_model, LoraConfig(rank=4, target_modules=("q_proj", "w2")))
    assert torch.equal(tiny_model(tokens), before)
    assert len(params) == 2 * 2 * tiny_model.args.n_layers
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in lora_state_dict(tiny_model)}
    # Base names are unchanged, so checkpoints of the base model still load.
    assert "layers.0.attention.wq.weight" in tiny_model.state_dict()


def test_merge_matches_unmerged(tiny_model):
    tokens = torch.randint(0, 64, (2, 12))
    apply_lora(tiny_model, LoraConfig(rank=4, alpha=8, target_modules=ALL))
    _randomize(tiny_model)
    with torch.no_grad():
        adapted = tiny_model(tokens)
        merge_lora(tiny_model)
        merged = tiny_model(tokens)
    assert not any(isinstance(m, LoRALinear) for m in tiny_model.modules())
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)


def test_save_load_round_trip_and_bad_adapters(tiny_args, tmp_path):
    from lhama.model import build_model

    a = build_model(tiny_args, init="random", seed=0)
    apply_lora(a, LoraConfig(rank=2, target_modules=("wq", "wk", "w3")))
    _randomize(a)
    save_peft_adapter(a, tmp_path / "ad")
    b = build_model(tiny_args, init="random", seed=0)
    cfg = load_peft_adapter(b, tmp_path / "ad")
    assert cfg.rank == 2 and cfg.target_modules == ("wq", "wk", "w3")
    tokens = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(b(tokens), a(tokens))
    # An adapter for another model shape, a broken config, missing files: typed errors naming the problem.
    other = build_model(tiny_args.with_(dim=48, n_heads=4, n_kv_heads=2), init="random")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_peft_adapter(other, tmp_path / "ad")
    cfg_file = tmp_path / "ad" / "adapter_config.json"
    raw = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({**raw, "use_dora": True}))
    with pytest.raises(CheckpointError, match="use_dora"):
        load_peft_adapter(build_model(tiny_args, init="random"), tmp_path / "ad")
    cfg_file.write_text(json.dumps({**raw, "target_modules": ["embed_tokens"]}))
    with pytest.raises(CheckpointError, match="not a projection"):
        load_peft_adapter(build_model(tiny_args, init="random"), tmp_path / "ad")
    with pytest.raises(CheckpointError, match="adapter_config.json is missing"):
        load_peft_adapter(build_model(tiny_args, init="random"), tmp_path)
    with pytest.raises(ConfigError, match="not a projection"):
        LoraConfig(target_modules=("output",))


@pytest.fixture(scope="module")
def smollm2_hf(smollm2_path, tmp_path_factory):
    from lhama.checkpoints import convert

    return convert(smollm2_path, tmp_path_factory.mktemp("hf") / "smollm2", to="safetensors")


def test_peft_format_matches_hf_peft_both_ways(smollm2_hf, tmp_path):
    """An adapter saved by lhama, loaded by peft.PeftModel on the transformers model, gives
    lhama's logits; an adapter saved by peft, loaded by lhama, does too. Covers the q/k row
    permutation with grouped-query attention (9 heads, 3 KV heads)."""
    transformers = needs.module("transformers")
    peft = needs.module("peft")
    from lhama.loader import load_model

    lm = load_model(smollm2_hf, dtype=torch.float32, device="cpu")
    ids = lm.chat_format.encode_dialog([{"role": "user", "content": "Name three primes."}])
    tokens = torch.tensor([ids])
    torch.manual_seed(0)
    apply_lora(lm.model, LoraConfig(rank=4, alpha=8, target_modules=ALL))
    _randomize(lm.model, scale=0.02)
    with torch.no_grad():
        ours = lm.model(tokens)
    save_peft_adapter(lm.model, tmp_path / "ours", base_model=str(smollm2_hf))

    hf = transformers.AutoModelForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32)
    with torch.no_grad():
        base_hf = hf(tokens).logits
    pm = peft.PeftModel.from_pretrained(hf, tmp_path / "ours")
    with torch.no_grad():
        theirs = pm(tokens).logits
    assert (theirs - base_hf).abs().max() > 1e-2  # the adapter really changes the output
    torch.testing.assert_close(theirs, ours, rtol=1e-3, atol=2e-3)

    # peft writes its own file; lhama reads it (after dropping its own adapter).
    with torch.no_grad():
        for m in lm.model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.weight.zero_()
    merge_lora(lm.model)
    pm.save_pretrained(tmp_path / "peft_saved")
    load_peft_adapter(lm.model, tmp_path / "peft_saved")
    with torch.no_grad():
        again = lm.model(tokens)
    torch.testing.assert_close(again, theirs, rtol=1e-3, atol=2e-3)
