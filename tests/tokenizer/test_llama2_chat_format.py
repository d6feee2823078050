"""Llama 2 [INST] format: exact strings and ids per Meta's llama 2 generation.py rules."""

from __future__ import annotations

import pytest

from lhama.errors import ChatFormatError
from lhama.tokenizer import Llama2ChatFormat, load_chat_format, load_tokenizer


@pytest.fixture(scope="module")
def tok(spm_path):
    return load_tokenizer(spm_path)


def test_system_is_merged_into_the_first_user_turn(tok, spm_ref):
    fmt = Llama2ChatFormat(tok)
    dialog = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": " Hi "},
        {"role": "assistant", "content": " Hello! "},
        {"role": "user", "content": "Bye"},
    ]
    # Meta strips the merged turn as a whole, so the user's own leading space survives.
    first = "[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\n Hi [/INST] Hello! "
    want = [1, *spm_ref.EncodeAsIds(first), 2, 1, *spm_ref.EncodeAsIds("[INST] Bye [/INST]")]
    assert fmt.encode_dialog(dialog) == want
    assert tok.decode(want) == "<s> " + first + "</s><s> [INST] Bye [/INST]"


def test_each_pair_is_its_own_sequence(tok, spm_ref):
    fmt = Llama2ChatFormat(tok)
    dialog = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
        {"role": "user", "content": "e"},
    ]
    want = [1, *spm_ref.EncodeAsIds("[INST] a [/INST] b "), 2, 1, *spm_ref.EncodeAsIds("[INST] c [/INST] d "), 2] + [
        1,
        *spm_ref.EncodeAsIds("[INST] e [/INST]"),
    ]
    assert fmt.encode_dialog(dialog) == want
    # Without a generation prompt a dialog may end with the assistant's answer.
    assert fmt.encode_dialog(dialog[:4], add_generation_prompt=False) == want[: want.index(2, want.index(2) + 1) + 1]


def test_decode_assistant(tok):
    fmt = Llama2ChatFormat(tok)
    assert fmt.stop_ids == {2}
    assert fmt.decode_assistant(tok.encode(" Sure thing ") + [tok.eos_id]) == {
        "role": "assistant",
        "content": "Sure thing",
        "stop_reason": "end_of_turn",
    }
    assert fmt.decode_assistant(tok.encode("cut"))["stop_reason"] == "out_of_tokens"


def test_bad_dialogs_are_clear_errors(tok):
    fmt = load_chat_format("llama2", tok)
    with pytest.raises(ChatFormatError, match="alternate"):
        fmt.encode_dialog([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(ChatFormatError, match="tool"):
        fmt.encode_dialog([{"role": "user", "content": "a"}], tools=[{"type": "brave_search"}])
    with pytest.raises(ChatFormatError, match="last message"):
        fmt.encode_dialog([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    with pytest.raises(ChatFormatError, match="system prompt needs a user"):
        fmt.encode_dialog([{"role": "system", "content": "a"}])
