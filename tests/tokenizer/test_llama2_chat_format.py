from __future__ import annotations

import pytest

from lhama.errors import ChatFormatError
from lhama.tokenizer import Llama2ChatFormat, load_chat_format, load_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from tests.tokenizer.test_gguf_vocab import _train_spm
    from tests.tokenizer.test_llama3_tokenizer import multilingual_corpus

    return load_tokenizer(_train_spm(tmp_path_factory.mktemp("l2"), "\n".join(multilingual_corpus(min_bytes=40_000))))


def test_inst_format_matches_meta_rules(tok):
    fmt = Llama2ChatFormat(tok)
    dialog = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": " Hi "},
              {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
    want = (tok.encode("[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\n Hi [/INST] Hello! ", bos=True, eos=True)
            + tok.encode("[INST] Bye [/INST]", bos=True))
    assert fmt.encode_dialog(dialog) == want
    assert want[0] == tok.bos_id and tok.eos_id in want
    assert fmt.decode_assistant(tok.encode(" Sure thing ") + [tok.eos_id]) == {
        "role": "assistant", "content": "Sure thing", "stop_reason": "end_of_turn"}


def test_inst_format_rejects_bad_dialogs(tok):
    fmt = load_chat_format("llama2", tok)
    with pytest.raises(ChatFormatError, match="alternate"):
        fmt.encode_dialog([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(ChatFormatError, match="tool"):
        fmt.encode_dialog([{"role": "user", "content": "a"}], tools=[{"type": "brave_search"}])
    with pytest.raises(ChatFormatError, match="last message"):
        fmt.encode_dialog([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
