"""Tokenizers and chat formats, chosen from the checkpoint.

    tok = load_tokenizer("model.gguf")          # or an HF/Meta folder, a tokenizer file, "llama3"
    fmt = load_chat_format("model.gguf", tok)   # llama3 headers, llama2 [INST], or the Jinja template

Kinds: Meta's Llama 3 tiktoken file (``Llama3Tokenizer``), SentencePiece models (Llama 2,
``SentencePieceTokenizer``), vocabularies embedded in GGUF files (``gguf_vocab``) and HF
``tokenizer.json`` files (``HFJsonTokenizer``). All implement ``base.Tokenizer``.
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

__all__ = [
    "ChatFormat",
    "Message",
    "Tokenizer",
    "IncrementalDecoder",
    "JinjaChatFormat",
    "Llama2ChatFormat",
    "Llama3ChatFormat",
    "Llama3Tokenizer",
    "SentencePieceTokenizer",
    "load_tokenizer",
    "load_chat_format",
    "checkpoint_chat_template",
]

FAMILIES = ("llama3", "llama2")


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
    if _is_gguf(path):
        from lhama.tokenizer.gguf_vocab import tokenizer_from_gguf

        return tokenizer_from_gguf(path)
    # Meta ships both kinds as "tokenizer.model": a tiktoken rank file (Llama 3) or a
    # SentencePiece protobuf (Llama 2). Tell them apart by content.
    if looks_like_tiktoken(path):
        return load_llama3_tokenizer(str(path.resolve()))
    return SentencePieceTokenizer(path)


def load_tokenizer(spec: str | Path):
    """A tokenizer from a GGUF file, a model folder (HF: tokenizer.json or tokenizer.model; Meta:
    tokenizer.model), a tokenizer file, or a family name: "llama3" is Meta's tokenizer shipped in
    llama-models; "llama2" has none shipped, so it needs a tokenizer.model path instead."""
    if isinstance(spec, str) and spec in ("llama3", "tiktoken"):
        return load_llama3_tokenizer()
    if isinstance(spec, str) and spec == "llama2":
        raise TokenizerError(
            "no Llama 2 tokenizer ships with lhama (it is Meta's licensed file); "
            "pass --tokenizer path/to/tokenizer.model"
        )
    path = Path(spec)
    if path.is_file():
        return _tokenizer_file(path)
    if path.is_dir():
        for cand in (path / "tokenizer.json", path / "tokenizer.model", path / "original" / "tokenizer.model"):
            if cand.is_file():
                return _tokenizer_file(cand)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _tokenizer_file(ggufs[0])
        raise TokenizerError(f"{path}: no tokenizer.json or tokenizer.model in this folder; pass --tokenizer")
    raise TokenizerError(f"tokenizer '{spec}' is neither a file, a folder, nor one of 'llama3', 'llama2'")


def checkpoint_chat_template(spec: str | Path) -> str | None:
    """The chat template a checkpoint carries: GGUF ``tokenizer.chat_template``, or an HF folder's
    ``chat_template.jinja`` / ``tokenizer_config.json`` ``chat_template`` (the "default" one when
    it lists several)."""
    path = Path(spec)
    if path.is_file() and _is_gguf(path):
        from lhama.tokenizer.gguf_vocab import read_tokenizer_metadata

        return read_tokenizer_metadata(path).get("tokenizer.chat_template") or None
    folder = path if path.is_dir() else path.parent if path.is_file() else None
    if folder is None:
        return None
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        try:
            template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        except ValueError as e:
            raise ChatFormatError(f"{cfg}: not valid JSON ({e})") from None
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        return template or None
    return None


def _is_llama3_header_template(template: str) -> bool:
    return "<|start_header_id|>" in template and "<|eot_id|>" in template


def load_chat_format(spec: str | Path, tokenizer, override: str | None = None):
    """The chat format for a checkpoint. ``override``: "llama3", "llama2", "jinja" (the
    checkpoint's own template) or a path to a .jinja file. Otherwise: a Llama 3 vocabulary whose
    template (if any) is the Llama 3 header format gets our ``Llama3ChatFormat`` (tools, ipython,
    eom); another template is rendered as Jinja; no template: Llama 3 by vocabulary, Llama 2
    for SentencePiece vocabularies."""
    if override:
        if override == "llama3":
            return Llama3ChatFormat(tokenizer)
        if override == "llama2":
            return Llama2ChatFormat(tokenizer)
        if override == "jinja":
            template = None if isinstance(spec, str) and spec in FAMILIES else checkpoint_chat_template(spec)
            if not template:
                raise ChatFormatError(f"{spec} carries no chat template; pass a .jinja file as the chat format")
            return JinjaChatFormat(template, tokenizer)
        p = Path(override)
        if p.is_file():
            return JinjaChatFormat(p.read_text(encoding="utf-8"), tokenizer)
        raise ChatFormatError(f"unknown chat format '{override}': use llama3, llama2, jinja, or a .jinja file")
    if isinstance(spec, str) and spec in FAMILIES:
        return Llama3ChatFormat(tokenizer) if spec == "llama3" else Llama2ChatFormat(tokenizer)
    template = checkpoint_chat_template(spec)
    llama3_vocab = all(
        t in tokenizer.special_tokens for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    )
    if llama3_vocab and (template is None or _is_llama3_header_template(template)):
        return Llama3ChatFormat(tokenizer)
    if template:
        return JinjaChatFormat(template, tokenizer, compile_now=False)  # compiled when first rendered
    if getattr(tokenizer, "kind", None) == "sentencepiece" or getattr(tokenizer, "bos_token", None) == "<s>":
        return Llama2ChatFormat(tokenizer)
    raise ChatFormatError(
        f"{spec}: no chat template and no known chat vocabulary; pass a chat format (llama3, llama2, or a .jinja file)"
    )
