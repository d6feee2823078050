"""Tokenizers and chat formats, chosen from the checkpoint.

    tok = load_tokenizer("model.gguf")          # or an HF/Meta folder, a tokenizer file, "llama3"
    fmt = load_chat_format("model.gguf", tok)   # llama3 headers, llama2 [INST], or the Jinja template
"""

from __future__ import annotations

import json
from pathlib import Path

from lhama.errors import ChatFormatError, TokenizerError
from lhama.tokenizer.base import ChatFormat, Message, Tokenizer
from lhama.tokenizer.chat.jinja import JinjaChatFormat
from lhama.tokenizer.chat.llama2 import Llama2ChatFormat
from lhama.tokenizer.chat.llama3 import Llama3ChatFormat
from lhama.tokenizer.incremental import IncrementalDecoder
from lhama.tokenizer.llama2 import SentencePieceTokenizer
from lhama.tokenizer.llama3 import Llama3Tokenizer, load_llama3_tokenizer, looks_like_tiktoken

__all__ = ["ChatFormat", "Message", "Tokenizer", "IncrementalDecoder", "JinjaChatFormat", "Llama2ChatFormat",
           "Llama3ChatFormat", "Llama3Tokenizer", "SentencePieceTokenizer", "load_tokenizer", "load_chat_format"]


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _tokenizer_file(path: Path):
    if path.name == "tokenizer.json":
        from lhama.tokenizer.hf_json import HFJsonTokenizer

        return HFJsonTokenizer(path.parent)
    if looks_like_tiktoken(path):
        return load_llama3_tokenizer(str(path))
    return SentencePieceTokenizer(path)


def load_tokenizer(spec: str | Path):
    """A tokenizer from a GGUF file, a model folder, a tokenizer file, or the name of a family."""
    if isinstance(spec, str) and spec in ("llama3", "tiktoken"):
        return load_llama3_tokenizer()
    if isinstance(spec, str) and spec == "llama2":
        raise TokenizerError("no Llama 2 tokenizer ships with lhama; pass --tokenizer path/to/tokenizer.model")
    path = Path(spec)
    if path.is_file():
        if _is_gguf(path):
            from lhama.tokenizer.gguf_vocab import tokenizer_from_gguf

            return tokenizer_from_gguf(path)
        return _tokenizer_file(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return _tokenizer_file(path / "tokenizer.json")
        for cand in (path / "tokenizer.model", path / "original" / "tokenizer.model"):
            if cand.is_file():
                return _tokenizer_file(cand)
        raise TokenizerError(f"{path}: no tokenizer.json or tokenizer.model in this folder; pass --tokenizer")
    raise TokenizerError(f"tokenizer '{spec}' is neither a file, a folder, nor 'llama3'")


def _checkpoint_template(path: Path) -> str | None:
    if path.is_file() and _is_gguf(path):
        from lhama.checkpoints import read_gguf_metadata

        return read_gguf_metadata(path).get("tokenizer.chat_template")
    if path.is_dir():
        if (path / "chat_template.jinja").is_file():
            return (path / "chat_template.jinja").read_text()
        cfg = path / "tokenizer_config.json"
        if cfg.is_file():
            t = json.loads(cfg.read_text()).get("chat_template")
            if isinstance(t, list):  # named templates: take "default"
                t = next((x["template"] for x in t if x.get("name") == "default"), t[0]["template"] if t else None)
            return t
    return None


def load_chat_format(spec: str | Path, tokenizer, override: str | None = None):
    """The chat format for a checkpoint: its own Llama 3 / Llama 2 format when the vocabulary and
    template say so, else the Jinja template it carries. ``override`` forces llama3, llama2, jinja
    or a path to a .jinja file."""
    if override:
        if override == "llama3":
            return Llama3ChatFormat(tokenizer)
        if override == "llama2":
            return Llama2ChatFormat(tokenizer)
        if override == "jinja":
            template = _checkpoint_template(Path(spec)) if not isinstance(spec, str) or Path(spec).exists() else None
            if not template:
                raise ChatFormatError(f"{spec} carries no chat template; pass a .jinja file to --chat-format")
            return JinjaChatFormat(template, tokenizer)
        p = Path(override)
        if p.is_file():
            return JinjaChatFormat(p.read_text(), tokenizer)
        raise ChatFormatError(f"unknown chat format '{override}': use llama3, llama2, jinja, or a .jinja file")
    if isinstance(spec, str) and spec in ("llama3", "llama2"):
        return Llama3ChatFormat(tokenizer) if spec == "llama3" else Llama2ChatFormat(tokenizer)
    path = Path(spec)
    template = _checkpoint_template(path)
    llama3_vocab = "<|start_header_id|>" in tokenizer.special_tokens
    if llama3_vocab and (template is None or "start_header_id" in template):
        return Llama3ChatFormat(tokenizer)
    if template:
        return JinjaChatFormat(template, tokenizer)
    if isinstance(tokenizer, SentencePieceTokenizer) or "[INST]" in (template or ""):
        return Llama2ChatFormat(tokenizer)
    raise ChatFormatError(f"{spec}: no chat template and no known chat vocabulary; pass --chat-format")
