"""Shared tokenizers for the tokenizer tests: ours, and the references they must agree with."""

from __future__ import annotations

import pytest

from tests import needs
from tests.tokenizer.corpus import multilingual_corpus


@pytest.fixture(scope="session")
def llama3():
    from lhama.tokenizer import load_tokenizer

    return load_tokenizer("llama3")


@pytest.fixture(scope="session")
def meta_llama3():
    from llama_models.llama3.tokenizer import Tokenizer

    return Tokenizer.get_instance()


@pytest.fixture(scope="session")
def smol(smollm2_path):
    from lhama.tokenizer import load_tokenizer

    return load_tokenizer(smollm2_path)


@pytest.fixture(scope="session")
def hf_smol(smollm2_path):
    """transformers' own tokenizer rebuilt from the same GGUF (the reference for SmolLM2)."""
    transformers = needs.module("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)


@pytest.fixture(scope="session")
def small_corpus() -> list[str]:
    return multilingual_corpus(min_bytes=120_000, seed=3)


def train_sentencepiece(folder, text: str, vocab_size: int = 1500, **options):
    """A small Llama-2-like SentencePiece model: BPE, byte fallback, <unk>=0 <s>=1 </s>=2, digits
    split, no whitespace squeezing."""
    import sentencepiece as spm

    corpus = folder / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    prefix = folder / "spm"
    settings = dict(
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=0.995,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )
    settings.update(options)
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), **settings)
    return prefix.with_suffix(".model")


@pytest.fixture(scope="session")
def spm_path(tmp_path_factory):
    text = "\n".join(multilingual_corpus(min_bytes=150_000, seed=11))
    return train_sentencepiece(tmp_path_factory.mktemp("spm"), text)


@pytest.fixture(scope="session")
def spm_ref(spm_path):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(spm_path))


def write_gguf(path, metadata: dict, arch: str = "llama"):
    """A GGUF holding only metadata (the gguf package's writer; typed like llama.cpp writes them)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    for key, value in metadata.items():
        if key == "tokenizer.ggml.tokens":
            w.add_token_list(value)
        elif key == "tokenizer.ggml.token_type":
            w.add_token_types(value)
        elif key == "tokenizer.ggml.scores":
            w.add_token_scores(value)
        elif key == "tokenizer.ggml.merges":
            w.add_token_merges(value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_string(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_metadata_from_sentencepiece(sp) -> dict:
    """What llama.cpp's converter writes for a Llama 2 tokenizer.model."""
    n = sp.GetPieceSize()
    types = [
        2 if sp.IsUnknown(i) else 3 if sp.IsControl(i) else 6 if sp.IsByte(i) else 5 if sp.IsUnused(i) else 1
        for i in range(n)
    ]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.IdToPiece(i) for i in range(n)],
        "tokenizer.ggml.scores": [sp.GetScore(i) for i in range(n)],
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_space_prefix": True,
    }
