"""Vocabularies embedded in GGUF files: SmolLM2's byte-level BPE against transformers' own GGUF
tokenizer (and llama.cpp when installed), a SentencePiece vocabulary written into a GGUF against
SentencePiece, and Llama 3's vocabulary written into a GGUF against Meta's tokenizer."""

from __future__ import annotations

import copy
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lhama.errors import TokenizerError
from lhama.tokenizer import JinjaChatFormat, Llama3ChatFormat, load_chat_format, load_tokenizer
from lhama.tokenizer.gguf_vocab import ByteLevelBPETokenizer, gguf_vocab_from_tiktoken, tokenizer_from_gguf_metadata
from tests.native import run_llama_cpp
from tests.tokenizer.conftest import gguf_metadata_from_sentencepiece, write_gguf
from tests.tokenizer.corpus import CODE, SYMBOLS

HYPO = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
EXTRAS = [
    "Hello world! 12345 times 3.14",
    "def f(x):\n    return x**2  # ok\n\n\n",
    "日本語のテキスト 🎉🎉 emoji 👩‍👩‍👧",
    "  many   spaces\n\n\ttab",
    "Grüße, ça va? ¿Qué tal? नमस्ते สวัสดี Привет",
    "<|im_start|>user\nhi<|im_end|>\n",
    "I'm sure they'll've done it—it's 'quoted' DON'T",
    "x" * 300,
    "   leading and trailing   ",
    "\r\n\r\n x",
    "a\u00a0b \u3000c",
    "123456789 1.5e10 0.000001",
    "add ¼ cup, x ² and ⅔",
    " " * 50 + "\t" * 7 + "\n" * 9,
    "",
    "<|endoftext|>",
    *CODE,
    *SYMBOLS,
]


# -- SmolLM2: byte-level BPE with the "smollm" pre-tokenizer ---------------------------------------
def _space_before_number(text: str) -> bool:
    """Whitespace followed by a numeric character: where transformers' GGUF tokenizer, lacking the
    Digits step, splits differently. "Numeric" as the Digits step sees it (Rust's is_numeric, like
    str.isnumeric: "¼" and "²" too), wider than the regex class \\d."""
    return any(a.isspace() and b.isnumeric() for a, b in zip(text, text[1:]))


def test_smollm2_vocabulary_basics(smol, hf_smol):
    assert isinstance(smol, ByteLevelBPETokenizer) and smol.pre == "smollm"
    assert smol.vocab_size == 49152 == len(hf_smol)
    assert (smol.eos_id, smol.eos_token) == (2, "<|im_end|>") == (hf_smol.eos_token_id, hf_smol.eos_token)
    assert smol.bos_token == hf_smol.bos_token == "<|im_start|>"
    assert smol.bos_id is None  # tokenizer.ggml.add_bos_token is false: nothing is prepended
    assert set(hf_smol.all_special_ids) <= set(smol.special_tokens.values())
    assert smol.special_tokens["<|im_end|>"] in smol.stop_ids


@pytest.fixture(scope="module")
def hf_smol_published(hf_smol):
    """transformers' GGUF tokenizer with SmolLM2's published pre-tokenizer restored. transformers'
    GGUF loader builds a bare ByteLevel pre-tokenizer and drops the Digits(individual_digits) step
    that SmolLM2's own tokenizer.json has and that llama.cpp's "smollm" regex applies; everything
    else (vocabulary, merges, specials) is transformers' own."""
    from tokenizers import pre_tokenizers

    backend = copy.deepcopy(hf_smol.backend_tokenizer)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    return backend


def test_smollm2_ids_identical_to_transformers(smol, hf_smol, hf_smol_published, small_corpus):
    differs_only_before_digits = 0
    for text in EXTRAS + small_corpus:
        ours = smol.encode(text, allow_special=True)
        assert ours == hf_smol_published.encode(text, add_special_tokens=False).ids, text[:200]
        raw = hf_smol.encode(text, add_special_tokens=False)  # transformers always parses special text
        if ours != raw:  # only where whitespace meets a digit (the dropped Digits step)
            assert _space_before_number(text), text[:200]
            differs_only_before_digits += 1
        assert smol.decode(ours) == hf_smol.decode(ours) == text
    assert differs_only_before_digits < len(small_corpus)


@HYPO
@given(st.text(st.characters(codec="utf-8"), max_size=120))
def test_smollm2_ids_identical_to_transformers_on_arbitrary_text(smol, hf_smol, hf_smol_published, text):
    ours = smol.encode(text, allow_special=True)
    assert ours == hf_smol_published.encode(text, add_special_tokens=False).ids
    if not _space_before_number(text):
        assert ours == hf_smol.encode(text, add_special_tokens=False)


def test_smollm2_decode_identical_to_transformers_on_random_ids(smol, hf_smol):
    rnd = random.Random(0)
    for _ in range(300):
        ids = [rnd.randrange(smol.vocab_size) for _ in range(rnd.randint(1, 12))]
        assert smol.decode(ids) == hf_smol.decode(ids)
        assert smol.decode(ids, skip_special=True) == hf_smol.decode(ids, skip_special_tokens=True)


def test_smollm2_special_text_is_plain_unless_allowed(smol):
    text = "<|im_start|>user\nhi<|im_end|>"
    assert smol.encode(text, allow_special=True)[0] == 1
    plain = smol.encode(text)
    assert not set(plain) & set(smol.special_tokens.values()) and smol.decode(plain) == text


def test_smollm2_matches_llama_cpp(smol, smollm2_path, small_corpus):
    texts = [s for s in EXTRAS + small_corpus[:200] if s]
    # llama-cpp-python (bench extra) is a second reference; it runs in a child process (tests.native)
    theirs = run_llama_cpp(
        """
        ll = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        result = [(ll.tokenize(s.encode(), add_bos=False, special=True),
                   ll.tokenize(s.encode(), add_bos=False, special=False)) for s in texts]
    """,
        path=str(smollm2_path),
        texts=texts,
    )
    for s, (with_special, plain) in zip(texts, theirs, strict=True):
        assert smol.encode(s, allow_special=True) == with_special, s[:200]
        assert smol.encode(s) == plain, s[:200]


# -- SentencePiece vocabulary in a GGUF (Llama 2 style) ---------------------------------------------
@pytest.fixture(scope="module")
def spm_gguf(spm_ref, tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("g") / "spm.gguf", gguf_metadata_from_sentencepiece(spm_ref))


def test_sentencepiece_vocab_in_gguf_matches_sentencepiece(spm_gguf, spm_ref, small_corpus):
    ours = load_tokenizer(spm_gguf)
    assert (ours.bos_id, ours.eos_id, ours.vocab_size) == (1, 2, spm_ref.GetPieceSize())
    for s in EXTRAS + small_corpus + ["ünïcödé ஆ 🦙 rare chars use byte fallback"]:
        want = spm_ref.EncodeAsIds(s)
        assert ours.encode(s) == want, s[:200]
        assert ours.decode(want) == spm_ref.DecodeIds(want)
    assert ours.encode("hi", bos=True, eos=True) == [1, *spm_ref.EncodeAsIds("hi"), 2]
    assert ours.encode("<s>hi</s>", allow_special=True) == [1, *spm_ref.EncodeAsIds("hi"), 2]


def test_sentencepiece_gguf_flags(spm_ref, tmp_path):
    md = gguf_metadata_from_sentencepiece(spm_ref) | {
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_space_prefix": False,
    }
    ours = tokenizer_from_gguf_metadata(md)
    assert ours.bos_id is None and ours.bos_token == "<s>"
    assert ours.encode("hello") != spm_ref.EncodeAsIds("hello")  # no dummy "▁" prefix any more
    assert ours.decode(ours.encode(" hello world")) == " hello world"


# -- Llama 3's vocabulary in a GGUF (llama-bpe pre-tokenizer) ---------------------------------------
LLAMA3_IDS = {
    "tokenizer.ggml.bos_token_id": 128000,
    "tokenizer.ggml.eos_token_id": 128009,
    "tokenizer.ggml.eot_token_id": 128009,
    "tokenizer.ggml.eom_token_id": 128008,
}
HEADER_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
)


@pytest.fixture(scope="module")
def llama3_vocab(llama3):
    """Llama 3's vocabulary as llama.cpp's converter writes it (128256 tokens, 280k merges)."""
    return gguf_vocab_from_tiktoken(llama3.mergeable_ranks, llama3.special_tokens) | LLAMA3_IDS


@pytest.fixture(scope="module")
def llama3_from_gguf(llama3_vocab):
    # Built from the metadata directly: writing and re-reading 400k strings through the gguf
    # package's reader costs ~15 s (test_llama3_vocab_gguf_file_round_trip does it, marked slow).
    return tokenizer_from_gguf_metadata(llama3_vocab)


def test_llama3_vocab_in_gguf_matches_meta(llama3_from_gguf, meta_llama3, small_corpus):
    ours = llama3_from_gguf
    assert ours.vocab_size == 128256 and ours.bos_id == 128000
    assert ours.stop_ids >= {128008, 128009}
    for s in EXTRAS + small_corpus:
        want = meta_llama3.encode(s, bos=False, eos=False)
        assert ours.encode(s) == want, s[:200]
        assert ours.decode(want) == s
    text = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    assert ours.encode(text, allow_special=True) == meta_llama3.encode(
        text, bos=False, eos=False, allowed_special="all"
    )


@HYPO
@given(st.text(st.characters(codec="utf-8"), max_size=120))
def test_llama3_vocab_in_gguf_matches_meta_on_arbitrary_text(llama3_from_gguf, meta_llama3, text):
    assert llama3_from_gguf.encode(text) == meta_llama3.encode(text, bos=False, eos=False)


def test_llama3_gguf_gets_our_llama3_chat_format(llama3, tmp_path):
    """A Llama 3 vocabulary with the header template -> Llama3ChatFormat (tools, ipython, eom); with
    another template -> that template. (A byte alphabet plus Llama 3's specials is enough here.)"""
    from lhama.tokenizer.gguf_vocab import byte_to_unicode

    tokens = [byte_to_unicode()[b] for b in range(256)] + list(llama3.special_tokens)
    md = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * 256 + [3] * 256,
        "tokenizer.ggml.merges": [],
        "tokenizer.ggml.bos_token_id": 256,
        "tokenizer.ggml.eos_token_id": 265,
    }
    for template, kind in ((HEADER_TEMPLATE, Llama3ChatFormat), ("{{ messages[0]['content'] }}", JinjaChatFormat)):
        path = write_gguf(tmp_path / f"{kind.__name__}.gguf", md | {"tokenizer.chat_template": template})
        tok = load_tokenizer(path)
        fmt = load_chat_format(path, tok)
        assert isinstance(fmt, kind)
    assert tok.encode("hi", bos=True) == [256, ord("h"), ord("i")]  # llama-bpe: bos by default


@pytest.mark.slow
def test_llama3_vocab_gguf_file_round_trip(llama3_vocab, meta_llama3, small_corpus, tmp_path):
    path = write_gguf(tmp_path / "llama3-vocab.gguf", llama3_vocab | {"tokenizer.chat_template": HEADER_TEMPLATE})
    ours = load_tokenizer(path)
    assert isinstance(load_chat_format(path, ours), Llama3ChatFormat)
    for s in small_corpus[:50]:
        assert ours.encode(s) == meta_llama3.encode(s, bos=False, eos=False)


def test_unsupported_vocabularies_are_clear_errors():
    with pytest.raises(TokenizerError, match="pre-tokenizer 'mystery'"):
        tokenizer_from_gguf_metadata(
            {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "mystery", "tokenizer.ggml.tokens": ["a", "b"]}
        )
    with pytest.raises(TokenizerError, match="'t5' is not supported"):
        tokenizer_from_gguf_metadata({"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(TokenizerError, match="no vocabulary"):
        tokenizer_from_gguf_metadata({"general.architecture": "llama"})
