"""Streaming detokenization for every tokenizer kind: deltas never split a UTF-8 character, never
take back what they emitted, and add up to ``decode``."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lhama.tokenizer import IncrementalDecoder, load_tokenizer

HYPO = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Characters that tokenizers split over several tokens: emoji (with ZWJ/skin tones/flags), Thai,
# Devanagari with vowel signs, CJK, combining marks, 4-byte CJK extension B.
HARD = list("🦙🎉👩‍👩‍👧🏽🇹🇭สวัสดีครับภาษาไทยनमस्तेक्षत्रज्ञ日本語中文漢字한국어é̃ñ𠀀𠜎𝔘𝔫") + [
    "\u200d",
    "\ufe0f",
    " ",
    "\n",
    "\t",
]
TEXT = st.text(st.one_of(st.sampled_from(HARD), st.characters(codec="utf-8", exclude_characters="\ufffd")), max_size=60)
KINDS = ["llama3", "sentencepiece", "smollm2-gguf", "smollm2-tokenizer.json"]


@pytest.fixture(scope="module")
def tokenizers(llama3, spm_path, smol, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    smol.hf_tokenizer().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>", "bos_token": "<|im_start|>"}')
    return {
        "llama3": llama3,
        "sentencepiece": load_tokenizer(spm_path),
        "smollm2-gguf": smol,
        "smollm2-tokenizer.json": load_tokenizer(folder),
    }


def stream(tok, ids, skip_special=True) -> list[str]:
    dec = IncrementalDecoder(tok, skip_special=skip_special)
    deltas = []
    for i in ids:
        deltas.append(dec.push(i))
        assert len(dec._utf8.getstate()[0]) <= 3  # only an unfinished character is ever held back
    deltas.append(dec.flush())
    return deltas


def check_prefixes(deltas: list[str], full: str):
    """What was emitted is never revised: every running total is a prefix of the final text."""
    acc = ""
    for d in deltas:
        acc += d
        assert full.startswith(acc), (acc, full)
    assert acc == full


@pytest.mark.parametrize("kind", KINDS)
@HYPO
@given(text=TEXT)
def test_streaming_text_never_splits_a_character(tokenizers, kind, text):
    tok = tokenizers[kind]
    ids = tok.encode(text)
    deltas = stream(tok, ids)
    full = tok.decode(ids)
    check_prefixes(deltas, full)
    if kind.startswith("smollm2"):
        # SmolLM2's vocabulary lacks a few bytes (0xF1, 0xF2: planes 4-12; some C0 controls), which
        # its BPE silently drops, as transformers does.
        have = set(b"".join(tok.token_bytes(i) for i in range(256)))
        assume(set(text.encode()) <= have)
    assert full == text
    assert not any("\ufffd" in d for d in deltas)  # never half a character


@pytest.mark.parametrize("kind", KINDS)
@HYPO
@given(data=st.data())
def test_streaming_any_ids_adds_up_to_decode(tokenizers, kind, data):
    """Arbitrary ids (broken byte sequences, special tokens) stream to exactly ``decode``."""
    tok = tokenizers[kind]
    ids = data.draw(
        st.lists(
            st.one_of(
                st.integers(0, tok.vocab_size - 1),
                st.integers(0, 300),
                st.sampled_from(sorted(tok.special_tokens.values())),
            ),
            max_size=16,
        )
    )
    for skip in (True, False):
        check_prefixes(stream(tok, ids, skip_special=skip), tok.decode(ids, skip_special=skip))


@pytest.mark.parametrize("kind", KINDS)
def test_multi_token_characters_wait_for_their_last_byte(tokenizers, kind):
    tok = tokenizers[kind]
    for ch in ["🦙", "👩‍👩‍👧", "𠜎", "ญ", "क्ष"]:
        ids = tok.encode(ch)
        deltas = stream(tok, ids)
        assert "".join(deltas) == ch and all(d == "" or "\ufffd" not in d for d in deltas)
        # A delta is always whole characters: re-encoding it as UTF-8 round-trips.
        assert all(d.encode("utf-8").decode("utf-8") == d for d in deltas)
    ids = tok.encode("🦙")
    if len(ids) > 1:  # split over byte tokens: nothing shows until the last one
        assert stream(tok, ids)[:-2] == [""] * (len(ids) - 1)


def test_sentencepiece_leading_space(tokenizers):
    tok = tokenizers["sentencepiece"]
    ids = tok.encode("Hello world")
    assert tok.token_bytes(ids[0]).startswith(b" ")  # the dummy prefix
    assert "".join(stream(tok, [tok.bos_id, *ids])) == "Hello world"
    assert "".join(stream(tok, [tok.bos_id, *ids], skip_special=False)) == "<s> Hello world"
    two = tok.encode("Hello") + tok.encode("world")
    assert "".join(stream(tok, two)) == tok.decode(two) == "Hello world"


def test_decoding_cost_does_not_grow_with_length(llama3):
    ids = llama3.encode("Streaming text with emoji 🦙 and ภาษาไทย. " * 3000)
    dec = IncrementalDecoder(llama3)
    t0 = time.perf_counter()
    first = "".join(dec.push(i) for i in ids[:1000])
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    rest = "".join(dec.push(i) for i in ids[1000:2000])
    t_later = time.perf_counter() - t0
    assert first + rest == llama3.decode(ids[:2000])
    assert len(ids) > 30_000 and t_later < 5 * t_first + 0.05
