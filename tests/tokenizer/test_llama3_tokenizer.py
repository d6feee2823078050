"""Our Llama 3 tokenizer against Meta's (llama_models.llama3.tokenizer) on >= 1 MB of text."""

from __future__ import annotations

import random

import pytest

from lhama.tokenizer import IncrementalDecoder, Llama3Tokenizer, load_tokenizer

LOCALES = ["en_US", "de_DE", "fr_FR", "it_IT", "pt_BR", "hi_IN", "es_ES", "th_TH"]  # the 8 Llama 3.1 languages
EXTRAS = [
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "    \t\t  \n\n\n   x", "3.14159 2718281828 1,000,000 0x1F 1e-9", "🎉🦙👩‍👩‍👧 ✓ ∑ ∫ — “quotes” «guillemets»",
    "<|eot_id|> is plain text here", "日本語のテキストと中文文本", "AAAA" * 40, " " * 100 + "end",
]


def multilingual_corpus(min_bytes: int = 1_100_000, seed: int = 0) -> list[str]:
    faker = pytest.importorskip("faker")
    fakers = {loc: faker.Faker(loc) for loc in LOCALES}
    for i, f in enumerate(fakers.values()):
        f.seed_instance(seed + i)
    rnd = random.Random(seed)
    docs, size = [], 0
    while size < min_bytes:
        for loc, f in fakers.items():
            parts = [f.text(600), f.name(), f.address(), f.job(), f.city()]
            if hasattr(f, "catch_phrase"):
                parts.append(f.catch_phrase())
            parts.append(rnd.choice(EXTRAS))
            rnd.shuffle(parts)
            doc = rnd.choice(["\n", " ", "\n\n", "\t"]).join(parts)
            docs.append(doc)
            size += len(doc.encode())
    return docs


@pytest.fixture(scope="module")
def ours():
    return load_tokenizer("llama3")


@pytest.fixture(scope="module")
def meta():
    from llama_models.llama3.tokenizer import Tokenizer

    return Tokenizer.get_instance()


def test_identical_to_meta_on_a_megabyte_in_eight_languages(ours, meta):
    docs = multilingual_corpus()
    total = sum(len(d.encode()) for d in docs)
    assert total >= 1_000_000
    scripts = {"Devanagari": "\u0900", "Thai": "\u0e00"}
    joined = "".join(docs)
    for name, lo in scripts.items():
        assert any(lo <= ch <= chr(ord(lo) + 0x7F) for ch in joined), f"corpus lacks {name} text"
    for d in docs:
        got = ours.encode(d, bos=True, eos=True)
        assert got == meta.encode(d, bos=True, eos=True)
        assert ours.decode(got[1:-1]) == d
    # One long document too (exercises the chunking of long inputs and long runs).
    long_doc = "".join(docs[:200]) + "x" * 30_000 + " " * 30_000
    assert ours.encode(long_doc, bos=False, eos=False) == meta.encode(long_doc, bos=False, eos=False)


def test_special_tokens_and_ids(ours, meta):
    assert ours.vocab_size == 128256
    assert ours.special_tokens == meta.special_tokens
    assert (ours.bos_id, ours.eos_id, ours.eom_id, ours.eot_id, ours.python_tag_id) == (128000, 128001, 128008,
                                                                                         128009, 128010)
    assert ours.stop_ids == {128001, 128008, 128009}
    text = "<|start_header_id|>user<|end_header_id|>"
    assert ours.encode(text, allow_special=True) == [128006, 882, 128007]
    assert 128006 not in ours.encode(text)  # special text is plain text unless allowed


def test_incremental_decoding_never_splits_characters(ours):
    rnd = random.Random(1)
    for d in multilingual_corpus(min_bytes=40_000, seed=7)[:40]:
        ids = ours.encode(d)
        dec = IncrementalDecoder(ours)
        deltas = [dec.push(i) for i in ids] + [dec.flush()]
        assert "".join(deltas) == d
        assert not any("\ufffd" in x for x in deltas)
    # Emoji split across byte tokens: nothing is emitted until the character is complete.
    ids = ours.encode("🦙")
    assert len(ids) > 1
    dec = IncrementalDecoder(ours)
    assert [dec.push(i) for i in ids][:-1] == [""] * (len(ids) - 1)
    del rnd


def test_bad_tokenizer_file_is_a_clear_error(tmp_path):
    from lhama.errors import TokenizerError

    bad = tmp_path / "tokenizer.model"
    bad.write_text("this is not base64 !!! 12\n")
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        Llama3Tokenizer(bad)
    with pytest.raises(TokenizerError, match="--tokenizer"):
        load_tokenizer("llama2")
