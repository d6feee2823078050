"""Tiny random models through every writer and back: the logits must survive the trip.

The HF layout is also checked against transformers itself (its own LlamaForCausalLM saved with
save_pretrained), so a permutation bug cannot cancel out between our writer and our reader.
"""

from __future__ import annotations

import json

import gguf
import pytest
import torch

from lhama.checkpoints import detect_format, load_weights, read_checkpoint, write_checkpoint
from lhama.checkpoints.hf import meta_to_hf_rows
from lhama.checkpoints.meta import ffn_params
from lhama.errors import CheckpointError
from lhama.model import ModelArgs, RopeScaling, build_model, swiglu_hidden_dim
from tests import needs


def _randomize(model, seed=0):
    """Weights big enough (and norms not all ones) that any misplaced row changes the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    return model


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


def _tokens(vocab, seed=1):
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(seed))


def _reload(path, dtype=torch.float32):
    ckpt = read_checkpoint(path, dtype)
    model = build_model(ckpt.args, dtype=dtype)
    load_weights(model, ckpt.state_dict, ckpt.path)
    return model.eval(), ckpt


@pytest.fixture
def tiny(tiny_llama3_args):
    model = _randomize(build_model(tiny_llama3_args)).eval()
    return model, tiny_llama3_args


def test_safetensors_roundtrip_identical(tiny, tmp_path):
    model, args = tiny
    out = write_checkpoint(model.state_dict(), args, tmp_path / "hf", fmt="safetensors")
    assert detect_format(out) == "hf"
    back, ckpt = _reload(out)
    assert ckpt.args == args and ckpt.format == "hf"
    tokens = _tokens(args.vocab_size)
    assert torch.equal(_logits(model, tokens), _logits(back, tokens))


def test_safetensors_sharded_with_index(tiny, tmp_path):
    model, args = tiny
    out = write_checkpoint(model.state_dict(), args, tmp_path / "hf", fmt="safetensors", max_shard_size=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and not (out / "model.safetensors").exists()
    assert "lm_head.weight" in index["weight_map"]
    back, _ = _reload(out)
    tokens = _tokens(args.vocab_size)
    assert torch.equal(_logits(model, tokens), _logits(back, tokens))
    # a single shard next to config.json is a valid (partial) checkpoint path: it must name what is missing
    with pytest.raises(CheckpointError, match="missing"):
        read_checkpoint(out / shards[0])


@pytest.mark.parametrize("gguf_type, tol", [("f32", 0.0), ("f16", 2e-3), ("q8_0", 5e-2)])
def test_gguf_roundtrip(tiny, tmp_path, gguf_type, tol):
    model, args = tiny
    out = write_checkpoint(model.state_dict(), args, tmp_path / f"m.{gguf_type}.gguf", fmt="gguf", gguf_type=gguf_type)
    reader = gguf.GGUFReader(out)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32"  # norms stay F32 as in llama.cpp's files
    assert types["blk.0.ffn_down.weight"] == gguf_type.upper()
    assert types["rope_freqs.weight"] == "F32"  # Llama 3.1 scaling travels as llama.cpp expects it
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert list(emb.shape) == [args.dim, args.vocab_size]  # ggml ne order: reversed torch shape
    back, ckpt = _reload(out)
    assert ckpt.args == args  # RopeScaling recovered exactly from the rope_freqs divisors
    tokens = _tokens(args.vocab_size)
    a, b = _logits(model, tokens), _logits(back, tokens)
    if tol == 0.0:
        assert torch.equal(a, b)
    else:
        rel = (a - b).abs().max() / a.abs().max()
        assert 0 < rel <= tol, rel
    name = "layers.1.feed_forward.w2.weight"
    w, w2 = model.state_dict()[name], ckpt.state_dict[name]
    if gguf_type == "f16":
        assert torch.equal(w2, w.half().float())
    elif gguf_type == "q8_0":
        # per 32-value block: within half a step of absmax/127, plus the step's own f16 rounding (127 * 2^-11)
        step = w.reshape(-1, 32).abs().amax(1, keepdim=True) / 127
        assert ((w2 - w).reshape(-1, 32).abs() <= 0.6 * step + 1e-7).all()


def test_gguf_rope_freqs_with_custom_band(tmp_path):
    """Non-default Llama 3.1 band edges are fitted back from the divisors alone."""
    scaling = RopeScaling(factor=16.0, low_freq_factor=2.0, high_freq_factor=8.0, original_context=8192)
    args = ModelArgs(
        dim=256,
        n_layers=1,
        n_heads=2,
        n_kv_heads=1,
        vocab_size=64,
        hidden_dim=64,
        rope_theta=500000.0,
        rope_scaling=scaling,
    )
    model = _randomize(build_model(args))
    out = write_checkpoint(model.state_dict(), args, tmp_path / "m.gguf", fmt="gguf", gguf_type="f32")
    assert read_checkpoint(out).args.rope_scaling == scaling


def test_meta_two_shards_merge(tiny, tmp_path):
    model, args = tiny
    out = write_checkpoint(model.state_dict(), args, tmp_path / "meta", fmt="meta", n_shards=2)
    s0 = torch.load(out / "consolidated.00.pth", weights_only=True)
    full = model.state_dict()
    assert s0["layers.0.attention.wk.weight"].shape[0] == full["layers.0.attention.wk.weight"].shape[0] // 2
    assert s0["layers.0.attention.wo.weight"].shape[1] == full["layers.0.attention.wo.weight"].shape[1] // 2
    assert s0["tok_embeddings.weight"].shape[0] == args.vocab_size // 2  # Llama 3: vocab-parallel
    assert torch.equal(s0["norm.weight"], full["norm.weight"])
    params = json.loads((out / "params.json").read_text())
    assert swiglu_hidden_dim(params["dim"], params["multiple_of"], params["ffn_dim_multiplier"]) == args.hidden_dim
    back, ckpt = _reload(out)
    assert ckpt.args == args and ckpt.format == "meta"
    tokens = _tokens(args.vocab_size)
    assert torch.equal(_logits(model, tokens), _logits(back, tokens))


def test_meta_llama2_style_shards_and_vocab_minus_one(tmp_path):
    """Llama 2: embeddings split on the model dim, vocab_size -1 in params.json, rope.freqs kept in shards."""
    args = ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=32000, hidden_dim=96)
    model = _randomize(build_model(args))
    out = write_checkpoint(model.state_dict(), args, tmp_path / "meta", fmt="meta", n_shards=2)
    params = json.loads((out / "params.json").read_text())
    params["vocab_size"] = -1
    (out / "params.json").write_text(json.dumps(params))
    for f in out.glob("consolidated.*.pth"):
        sd = torch.load(f, weights_only=True)
        assert sd["tok_embeddings.weight"].shape == (32000, 16)
        sd["rope.freqs"] = torch.ones(4)
        torch.save(sd, f)
    back, ckpt = _reload(out)
    assert ckpt.args == args
    tokens = _tokens(args.vocab_size)
    assert torch.equal(_logits(model, tokens), _logits(back, tokens))


def test_meta_tied_output_copy_read_as_tied(tmp_path, tiny_llama3_args):
    """Meta's 3.2 checkpoints store output.weight (= the embeddings) because the reference model
    has an untied head: we write it the same way and read it back as one tied tensor."""
    args = tiny_llama3_args.with_(tie_embeddings=True)
    model = _randomize(build_model(args, dtype=torch.bfloat16))
    out = write_checkpoint(model.state_dict(), args, tmp_path / "meta", fmt="meta")
    assert "output.weight" in torch.load(out / "consolidated.00.pth", weights_only=True, mmap=True)
    ckpt = read_checkpoint(out, dtype=None)
    assert ckpt.args == args and "output.weight" not in ckpt.state_dict
    assert ckpt.state_dict["norm.weight"].dtype == torch.bfloat16  # dtype=None keeps the stored precision


@pytest.mark.parametrize("dim, n_layers, factor", [(2048, 16, 32.0), (3072, 28, 32.0), (4096, 32, 8.0)])
def test_meta_scaled_rope_factor_by_shape(tmp_path, dim, n_layers, factor):
    """params.json only says use_scaled_rope; Llama 3.2 1B/3B shapes mean factor 32, others 8,
    and an explicit rope_scaling_factor always wins."""
    from lhama.checkpoints.meta import args_from_params

    params = {
        "dim": dim,
        "n_layers": n_layers,
        "n_heads": 32,
        "n_kv_heads": 8,
        "vocab_size": 128256,
        "multiple_of": 256,
        "ffn_dim_multiplier": 1.5,
        "norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "use_scaled_rope": True,
    }
    args = args_from_params(params, tmp_path / "params.json", 128256)
    assert args.rope_scaling == RopeScaling(factor=factor) and args.max_seq_len == 131072
    assert args_from_params({**params, "rope_scaling_factor": 4.0}, tmp_path, 128256).rope_scaling.factor == 4.0
    assert args_from_params({**params, "use_scaled_rope": False}, tmp_path, 128256).rope_scaling is None


def test_ffn_params_reproduce_published_and_odd_widths():
    assert ffn_params(4096, 14336) == (1024, 1.3)  # Llama 3 8B
    assert ffn_params(4096, 11008) == (256, None)  # Llama 2 7B
    for dim, hidden in [(64, 192), (576, 1536), (100, 7)]:
        m, f = ffn_params(dim, hidden)
        assert swiglu_hidden_dim(dim, m, f) == hidden


def test_hf_layout_against_transformers(tmp_path, tiny_llama3_args):
    """transformers' own LlamaForCausalLM (llama3 RoPE scaling, GQA) saved with save_pretrained
    loads into our model with the same logits; without the Q/K permutation it would not."""
    transformers = needs.module("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    _randomize(hf)
    hf.save_pretrained(tmp_path / "hf")
    ours, ckpt = _reload(tmp_path / "hf")
    assert ckpt.args.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 64) and ckpt.args.n_kv_heads == 2
    tokens = _tokens(256)
    with torch.no_grad():
        want = hf(tokens).logits
    got = _logits(ours, tokens)
    assert (got - want).abs().max() <= 1e-4
    # negative control: the same weights in HF row order give clearly different logits
    sd = dict(ckpt.state_dict)
    for i in range(2):
        sd[f"layers.{i}.attention.wq.weight"] = meta_to_hf_rows(sd[f"layers.{i}.attention.wq.weight"], 4)
        sd[f"layers.{i}.attention.wk.weight"] = meta_to_hf_rows(sd[f"layers.{i}.attention.wk.weight"], 2)
    wrong = build_model(ckpt.args)
    load_weights(wrong, sd)
    assert (_logits(wrong, tokens) - want).abs().max() > 1e-2


def test_our_hf_export_loads_in_transformers(tiny, tmp_path):
    transformers = needs.module("transformers")
    model, args = tiny
    out = write_checkpoint(model.state_dict(), args, tmp_path / "hf", fmt="safetensors")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = _tokens(args.vocab_size)
    with torch.no_grad():
        assert (hf(tokens).logits - _logits(model, tokens)).abs().max() <= 1e-4
