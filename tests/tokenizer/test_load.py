"""Choosing the tokenizer and chat format from what a checkpoint holds."""

from __future__ import annotations

import json
import shutil

import pytest

from lhama.errors import ChatFormatError, TokenizerError
from lhama.tokenizer import (
    JinjaChatFormat,
    Llama2ChatFormat,
    Llama3ChatFormat,
    Llama3Tokenizer,
    SentencePieceTokenizer,
    load_chat_format,
    load_tokenizer,
)
from lhama.tokenizer.hf_json import HFJsonTokenizer
from lhama.tokenizer.llama3 import default_tokenizer_path

TEXT = "Hello, wörld! 12 🦙 <|im_end|> नमस्ते"


@pytest.fixture(scope="module")
def hf_folder(smol, smollm2_path, tmp_path_factory):
    """SmolLM2 as an HF folder: tokenizer.json + tokenizer_config.json (with its chat template)."""
    from lhama.tokenizer import checkpoint_chat_template

    folder = tmp_path_factory.mktemp("hf-smol")
    smol.hf_tokenizer().save(str(folder / "tokenizer.json"))
    cfg = {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "add_bos_token": False,
        "chat_template": checkpoint_chat_template(smollm2_path),
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


def test_gguf_file(smollm2_path, smol):
    assert load_chat_format(smollm2_path, smol).name == "jinja"


def test_hf_folder(hf_folder, smol, smollm2_path):
    tok = load_tokenizer(hf_folder)
    assert isinstance(tok, HFJsonTokenizer)
    for allow in (False, True):
        assert tok.encode(TEXT, allow_special=allow) == smol.encode(TEXT, allow_special=allow)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (None, 2, smol.vocab_size)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    fmt = load_chat_format(hf_folder, tok)
    assert isinstance(fmt, JinjaChatFormat) and 2 in fmt.stop_ids
    dialog = [{"role": "user", "content": "Hi"}]
    assert fmt.encode_dialog(dialog) == load_chat_format(smollm2_path, smol).encode_dialog(dialog)


def test_hf_folder_template_sources(hf_folder, tmp_path, smol):
    folder = tmp_path / "m"
    shutil.copytree(hf_folder, folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEFAULT"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert load_chat_format(folder, smol).source == "DEFAULT"
    (folder / "chat_template.jinja").write_text("FROM FILE")  # the newer place wins
    assert load_chat_format(folder, smol).source == "FROM FILE"


def test_meta_folders(tmp_path, spm_path):
    llama3_dir, llama2_dir = tmp_path / "Llama3.1-8B-Instruct", tmp_path / "Llama-2-7b-chat"
    for d, src in ((llama3_dir, default_tokenizer_path()), (llama2_dir, spm_path)):
        d.mkdir()
        shutil.copy(src, d / "tokenizer.model")  # both kinds are called tokenizer.model
        (d / "params.json").write_text("{}")
    tok3 = load_tokenizer(llama3_dir)
    assert isinstance(tok3, Llama3Tokenizer) and isinstance(load_chat_format(llama3_dir, tok3), Llama3ChatFormat)
    tok2 = load_tokenizer(llama2_dir)
    assert isinstance(tok2, SentencePieceTokenizer) and isinstance(load_chat_format(llama2_dir, tok2), Llama2ChatFormat)
    assert isinstance(load_tokenizer(llama2_dir / "tokenizer.model"), SentencePieceTokenizer)


def test_family_names_and_overrides(tmp_path, smollm2_path, smol, spm_path):
    tok = load_tokenizer("llama3")
    assert isinstance(tok, Llama3Tokenizer) and isinstance(load_chat_format("llama3", tok), Llama3ChatFormat)
    with pytest.raises(TokenizerError, match="tokenizer.model"):
        load_tokenizer("llama2")
    spm = load_tokenizer(spm_path)
    assert isinstance(load_chat_format("llama2", spm), Llama2ChatFormat)
    assert isinstance(load_chat_format(spm_path, spm), Llama2ChatFormat)  # a bare SentencePiece file
    assert isinstance(load_chat_format(smollm2_path, smol, override="jinja"), JinjaChatFormat)
    assert isinstance(load_chat_format("llama3", tok, override="llama3"), Llama3ChatFormat)
    template = tmp_path / "mine.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    fmt = load_chat_format(smollm2_path, smol, override=str(template))
    assert fmt.render([{"role": "user", "content": "hi"}]) == "[user] hi\n"
    with pytest.raises(ChatFormatError, match="no chat template"):
        load_chat_format("llama3", tok, override="jinja")
    with pytest.raises(ChatFormatError, match="unknown chat format"):
        load_chat_format(smollm2_path, smol, override="chatml-ish")
    with pytest.raises(ChatFormatError, match="lacks"):
        load_chat_format(smollm2_path, smol, override="llama3")  # no header tokens in this vocabulary


def test_missing_things_are_clear_errors(tmp_path):
    with pytest.raises(TokenizerError, match="neither a file"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(TokenizerError, match="no tokenizer.json or tokenizer.model"):
        load_tokenizer(tmp_path)
