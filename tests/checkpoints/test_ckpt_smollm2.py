"""The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF) against Hugging Face transformers
loading the very same file: same config, same logits, same greedy tokens, and our safetensors
export is a folder transformers loads to the same logits."""

from __future__ import annotations

import pytest
import torch

from lhama.checkpoints import convert, load_model, read_checkpoint, read_gguf_metadata
from lhama.model import StaticKVCache
from tests import needs

transformers = needs.module("transformers")
needs.module("accelerate")  # transformers needs it to load GGUF files

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village by the sea,",
    "<|im_start|>user\nWhat is 17 times 3?<|im_end|>\n<|im_start|>assistant\n",
    "Photosynthesis converts sunlight, water and carbon dioxide into",
]


@pytest.fixture(scope="module")
def ours(smollm2_path):
    model, ckpt = load_model(smollm2_path)
    return model, ckpt


@pytest.fixture(scope="module")
def hf(smollm2_path):
    folder, name = str(smollm2_path.parent), smollm2_path.name
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return tok, model.eval()


def test_config_from_gguf_metadata(ours):
    _, ckpt = ours
    a = ckpt.args
    assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.hidden_dim, a.vocab_size) == (576, 30, 9, 3, 1536, 49152)
    assert a.tie_embeddings and a.rope_theta == 100000.0 and a.rope_scaling is None
    assert a.norm_eps == 1e-5 and a.max_seq_len == 8192
    assert ckpt.format == "gguf" and "output.weight" not in ckpt.state_dict


def test_metadata_for_the_tokenizer(smollm2_path):
    md = read_gguf_metadata(smollm2_path)
    assert md["tokenizer.ggml.model"] == "gpt2"
    assert len(md["tokenizer.ggml.tokens"]) == 49152 and md["tokenizer.ggml.tokens"][2] == "<|im_end|>"
    assert isinstance(md["tokenizer.ggml.merges"][0], str) and md["tokenizer.ggml.bos_token_id"] == 1
    assert md["tokenizer.ggml.add_bos_token"] is False  # a real bool, as the file stores it
    assert "<|im_start|>" in md["tokenizer.chat_template"]


def test_logits_match_transformers(ours, hf):
    model, _ = ours
    tok, hf_model = hf
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            want = hf_model(ids).logits[0, -1]
            got = model(ids, last_only=True)[0, -1]
        assert (got - want).abs().max() <= 1e-3, prompt


def _greedy(model, ids: list[int], n: int) -> list[int]:
    cache = StaticKVCache(model.args, 1, len(ids) + n)
    tokens, out = torch.tensor([ids]), []
    with torch.no_grad():
        for _ in range(n):
            logits = model(tokens, start_pos=cache.pos, cache=cache, last_only=True)
            cache.advance(tokens.shape[1])
            out.append(int(logits[0, -1].argmax()))
            tokens = torch.tensor([[out[-1]]])
    return out


def test_64_greedy_tokens_match_transformers(ours, hf):
    model, _ = ours
    tok, hf_model = hf
    ids = tok("Write a short story about a lighthouse keeper.", return_tensors="pt").input_ids
    # no stop token, so both sides produce all 64 tokens whatever they are
    want = hf_model.generate(ids, max_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=0)[
        0, ids.shape[1] :
    ].tolist()
    assert len(want) == 64
    assert _greedy(model, ids[0].tolist(), 64) == want


def test_safetensors_export_loads_in_transformers(ours, hf, smollm2_path, tmp_path):
    """GGUF -> our HF export -> transformers.from_pretrained: proves the export is real HF layout
    (Q/K rows permuted to rotate-half, tied head, config keys). Then back to GGUF from that HF
    folder: the vocabulary is rebuilt from tokenizer.json as llama.cpp's converter would."""
    model, ckpt = ours
    out = convert(smollm2_path, tmp_path / "hf", to="safetensors")
    back = read_checkpoint(out)
    assert back.args == ckpt.args
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf_model.config.tie_word_embeddings and hf_model.config.eos_token_id == 2
    ids = torch.tensor([[1, 504, 3575, 282, 4649, 314, 6322, 30, 378]])
    with torch.no_grad():
        assert (hf_model(ids).logits[0] - model(ids)[0]).abs().max() <= 1e-3

    hf[0].save_pretrained(out)  # transformers' tokenizer.json for this vocabulary
    gguf_out = convert(out, tmp_path / "again.gguf", to="gguf", gguf_type="f16")
    src_md, md = read_gguf_metadata(smollm2_path), read_gguf_metadata(gguf_out)
    for key in (
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
    ):
        assert md[key] == src_md[key], key


def test_gguf_reexport_keeps_tokenizer_and_weights(ours, smollm2_path, tmp_path):
    """GGUF -> our Q8_0 GGUF: tokenizer metadata carried over, logits within quantization noise."""
    model, _ = ours
    out = convert(smollm2_path, tmp_path / "smol.q8_0.gguf", to="gguf", gguf_type="q8_0")
    src_md, md = read_gguf_metadata(smollm2_path), read_gguf_metadata(out)
    for key in (
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
        "tokenizer.ggml.pre",
    ):
        assert md[key] == src_md[key], key
    assert md["general.file_type"] == 7
    again, ckpt = load_model(out)
    ids = torch.tensor([[1, 504, 3575, 282, 4649, 314]])
    with torch.no_grad():
        a, b = model(ids)[0], again(ids)[0]
    assert (a - b).abs().max() / a.abs().max() < 0.05
    assert torch.equal(a.argmax(-1), b.argmax(-1))
