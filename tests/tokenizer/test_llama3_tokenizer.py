"""Our Llama 3 tokenizer against Meta's (llama_models.llama3.tokenizer) on >= 1 MB of text."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lhama.errors import TokenizerError
from lhama.tokenizer import Llama3Tokenizer, load_tokenizer
from lhama.tokenizer.llama3 import default_tokenizer_path
from tests.tokenizer.corpus import multilingual_corpus

SCRIPTS = {"Devanagari (Hindi)": ("\u0900", "\u097f"), "Thai": ("\u0e00", "\u0e7f"), "Latin-1 accents": ("à", "ÿ")}


def test_identical_to_meta_on_a_megabyte_in_eight_languages(llama3, meta_llama3):
    t0 = time.perf_counter()
    docs = multilingual_corpus()
    assert sum(len(d.encode()) for d in docs) >= 1_000_000
    joined = "".join(docs)
    for name, (lo, hi) in SCRIPTS.items():
        assert sum(lo <= ch <= hi for ch in joined) > 10_000, f"corpus lacks {name} text"
    n_tokens = 0
    for d in docs:
        got = llama3.encode(d, bos=True, eos=True)
        assert got == meta_llama3.encode(d, bos=True, eos=True), d[:200]
        assert llama3.decode(got[1:-1]) == d
        n_tokens += len(got)
    assert n_tokens > 250_000
    assert time.perf_counter() - t0 < 60  # the brief's budget is ~30 s on a loaded 2-core machine


def test_long_inputs_and_whitespace_runs_split_like_meta(llama3, meta_llama3):
    """Meta cuts inputs at 400k chars and runs of >25k (non-)whitespace chars before tiktoken; cuts
    change the ids, so ours must fall at the same places."""
    docs = multilingual_corpus(min_bytes=200_000, seed=5)
    cases = [
        "".join(docs) * 3,  # > 400k characters
        "x" * 60_000 + " " * 30_000 + "y" * 25_001 + "\n" * 25_000 + "end",
        " " * 25_000,
        " " * 25_001,
        "a" * 25_000 + " " + "b" * 50_002,
        "\t\n " * 20_000,
        "",
    ]
    for text in cases:
        assert llama3.encode(text) == meta_llama3.encode(text, bos=False, eos=False)
        assert llama3.decode(llama3.encode(text)) == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.characters(codec="utf-8"), max_size=200))
def test_identical_to_meta_on_arbitrary_text(llama3, meta_llama3, text):
    ids = llama3.encode(text)
    assert ids == meta_llama3.encode(text, bos=False, eos=False)
    assert llama3.decode(ids) == text


def test_special_tokens_and_ids(llama3, meta_llama3):
    assert llama3.vocab_size == 128256 == meta_llama3.n_words
    assert llama3.special_tokens == meta_llama3.special_tokens
    assert llama3.special_tokens["<|reserved_special_token_2|>"] == 128012
    assert llama3.special_tokens["<|reserved_special_token_245|>"] == 128255
    assert (llama3.bos_id, llama3.eos_id, llama3.eom_id, llama3.eot_id, llama3.python_tag_id) == (
        128000,
        128001,
        128008,
        128009,
        128010,
    )
    assert llama3.stop_ids == {128001, 128008, 128009}
    text = "<|start_header_id|>user<|end_header_id|>"
    assert llama3.encode(text, allow_special=True) == [128006, 882, 128007]
    assert llama3.encode(text, allow_special=True) == meta_llama3.encode(
        text, bos=False, eos=False, allowed_special="all"
    )
    assert llama3.encode(text) == meta_llama3.encode(text, bos=False, eos=False)  # plain text unless allowed
    assert not set(llama3.encode(text)) & set(llama3.special_tokens.values())
    assert llama3.decode([128000, 9906, 128009]) == "<|begin_of_text|>Hello<|eot_id|>"
    assert llama3.decode([128000, 9906, 128009], skip_special=True) == "Hello"
    assert llama3.token_bytes(128009) == b"<|eot_id|>" and llama3.token_bytes(9906) == b"Hello"


def test_default_file_comes_from_the_llama_models_package(llama3):
    import llama_models

    path = default_tokenizer_path()
    assert path.name == "tokenizer.model" and path.is_relative_to(llama_models.__path__[0])
    assert load_tokenizer(path).encode("same file") == llama3.encode("same file")


def test_bad_inputs_are_clear_errors(tmp_path, llama3):
    bad = tmp_path / "tokenizer.model"
    bad.write_text("this is not base64 !!! 12\n")
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        Llama3Tokenizer(bad)
    with pytest.raises(TokenizerError, match="cannot read"):
        Llama3Tokenizer(tmp_path / "missing.model")
    with pytest.raises(TokenizerError, match="--tokenizer"):
        load_tokenizer("llama2")
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        llama3.decode([128256])
    with pytest.raises(TokenizerError, match="encode str"):
        llama3.encode(b"bytes")  # type: ignore[arg-type]
