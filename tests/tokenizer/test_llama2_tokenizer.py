"""SentencePiece (Llama 2 kind) against the sentencepiece library, on a model trained here."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lhama.errors import TokenizerError
from lhama.tokenizer import SentencePieceTokenizer, load_tokenizer
from tests.tokenizer.conftest import train_sentencepiece
from tests.tokenizer.corpus import multilingual_corpus

HYPO = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tok(spm_path):
    return load_tokenizer(spm_path)


def test_kind_ids_and_specials(tok, spm_ref):
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (1, 2, spm_ref.GetPieceSize())
    assert tok.special_tokens == {"<unk>": 0, "<s>": 1, "</s>": 2}
    assert tok.stop_ids == {2}
    assert spm_ref.IdToPiece(3) == "<0x00>"  # byte fallback pieces, as in Llama 2
    assert tok.encode("hi", bos=True, eos=True) == [1, *spm_ref.EncodeAsIds("hi"), 2]


def test_encode_and_decode_match_sentencepiece(tok, spm_ref):
    for doc in multilingual_corpus(min_bytes=150_000, seed=21):
        ids = tok.encode(doc)
        assert ids == spm_ref.EncodeAsIds(doc)
        assert tok.decode(ids) == spm_ref.DecodeIds(ids) == doc


@HYPO
@given(st.text(st.characters(codec="utf-8"), max_size=80))
def test_round_trip_arbitrary_text(tok, spm_ref, text):
    ids = tok.encode(text)
    assert ids == spm_ref.EncodeAsIds(text)
    assert tok.decode(ids) == spm_ref.DecodeIds(ids)


@HYPO
@given(st.data())
def test_decode_of_any_id_sequence_matches_sentencepiece(tok, spm_ref, data):
    """Random ids: byte pieces that do not form characters, controls, <unk>, lone "▁" at the start."""
    n = tok.vocab_size
    ids = data.draw(
        st.lists(
            st.one_of(
                st.integers(0, n - 1), st.integers(0, 2), st.integers(3, 258), st.sampled_from([spm_ref.PieceToId("▁")])
            ),
            max_size=12,
        )
    )
    assert tok.decode(ids, skip_special=True) == spm_ref.DecodeIds(ids)


def test_special_tokens_only_when_allowed(tok, spm_ref):
    text = "<s>Hello</s> world <unk>"
    plain = tok.encode(text)
    assert plain == spm_ref.EncodeAsIds(text) and not {0, 1, 2} & set(plain)
    # Each fragment between specials gets its own dummy prefix (llama.cpp / HF legacy behaviour).
    want = [1, *spm_ref.EncodeAsIds("Hello"), 2, *spm_ref.EncodeAsIds(" world "), 0]
    assert tok.encode(text, allow_special=True) == want
    # Shown controls are text, so the dummy-prefix spaces after them stay; <unk> shows its surface.
    assert tok.decode(want) == "<s> Hello</s>  world  ⁇ "
    assert tok.decode(want, skip_special=True) == spm_ref.DecodeIds(want)


def test_whitespace_squeezing_models_decode_like_sentencepiece(tmp_path):
    """remove_extra_whitespaces drops *every* leading space piece, add_dummy_prefix only one."""
    import sentencepiece as spm

    text = "\n".join(multilingual_corpus(min_bytes=30_000, seed=2))
    for name, opts in {
        "squeeze": dict(remove_extra_whitespaces=True),
        "noprefix": dict(add_dummy_prefix=False),
    }.items():
        folder = tmp_path / name
        folder.mkdir()
        path = train_sentencepiece(folder, text, vocab_size=600, **opts)
        ref, ours = spm.SentencePieceProcessor(model_file=str(path)), load_tokenizer(path)
        rnd = random.Random(0)
        space = ref.PieceToId("▁")
        for _ in range(2000):
            ids = [
                rnd.choice([space, rnd.randrange(ours.vocab_size), rnd.randrange(3, 259)])
                for _ in range(rnd.randint(0, 6))
            ]
            assert ours.decode(ids, skip_special=True) == ref.DecodeIds(ids), [ref.IdToPiece(i) for i in ids]
        assert ours.encode("  a  b ") == ref.EncodeAsIds("  a  b ")


def test_bad_files_are_clear_errors(tmp_path, tok):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"\x00\x01 definitely not a model")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        load_tokenizer(bad)
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])
