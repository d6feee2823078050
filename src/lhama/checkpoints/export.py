"""``lhama convert IN OUT --to safetensors|gguf|meta``: any checkpoint to any format, carrying
the tokenizer along where the target format can hold it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lhama.checkpoints.loader import (
    Checkpoint,
    detect_format,
    read_checkpoint,
    write_checkpoint,
)

TARGETS = ("safetensors", "gguf", "meta")
# Tokenizer/generation files of HF and Meta folders, copied when converting folder -> folder.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "generation_config.json",
)


def convert(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    to: str = "safetensors",
    gguf_type: str = "f16",
    *,
    dtype: torch.dtype | None = None,
    **options: Any,
) -> Path:
    """Convert a checkpoint. ``dtype`` is the stored precision for safetensors/meta outputs
    (default: float32 from a GGUF source, since its weights are dequantized; the source's own
    dtype otherwise). ``options`` go to the writer (``max_shard_size``, ``n_shards``)."""
    if to not in TARGETS:
        raise ValueError(f"unknown target format {to!r}; expected one of {', '.join(TARGETS)}")
    if dtype is None and detect_format(in_path) == "gguf":
        dtype = torch.float32  # one precision for all tensors, whatever mix of quant types the file has
    ckpt = read_checkpoint(in_path, dtype)
    out = Path(out_path)
    metadata: dict[str, Any] | None = None
    if to == "gguf":
        metadata = gguf_metadata_for(ckpt)
    elif to == "safetensors" and ckpt.format == "gguf":
        options.setdefault("extra_config", hf_token_ids(ckpt.metadata))
    written = write_checkpoint(
        ckpt.state_dict, ckpt.args, out, fmt=to, gguf_type=gguf_type, metadata=metadata, **options
    )
    src_dir = ckpt.path if ckpt.path.is_dir() else ckpt.path.parent
    if to != "gguf" and ckpt.format != "gguf" and src_dir.resolve() != written.resolve():
        for name in TOKENIZER_FILES:
            if (src_dir / name).is_file():
                shutil.copyfile(src_dir / name, written / name)
    if to == "safetensors" and ckpt.format == "gguf":
        write_hf_tokenizer_from_gguf(ckpt.path, ckpt.metadata, written)
    return written


def write_hf_tokenizer_from_gguf(gguf_path: Path, md: dict[str, Any], out_dir: Path) -> None:
    """tokenizer.json + tokenizer_config.json (with the chat template) for an HF folder exported
    from a GGUF, so the folder is complete for lhama and transformers alike."""
    from lhama.tokenizer import load_tokenizer
    from lhama.tokenizer.gguf_vocab import ByteLevelBPETokenizer

    tok = load_tokenizer(gguf_path)
    if not isinstance(tok, ByteLevelBPETokenizer):
        return  # SentencePiece vocabularies: the GGUF stays the place to keep them
    tok.hf_tokenizer().save(str(out_dir / "tokenizer.json"))
    tokens = md.get("tokenizer.ggml.tokens", [])

    def name(key):
        i = md.get(key)
        return tokens[int(i)] if i is not None and int(i) < len(tokens) else None

    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name("tokenizer.ggml.bos_token_id"),
        "eos_token": name("tokenizer.ggml.eos_token_id"),
        "unk_token": name("tokenizer.ggml.unknown_token_id"),
        "pad_token": name("tokenizer.ggml.padding_token_id"),
        "add_bos_token": bool(md.get("tokenizer.ggml.add_bos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(md.get("llama.context_length", 4096)),
    }
    if md.get("tokenizer.chat_template"):
        cfg["chat_template"] = md["tokenizer.chat_template"]
    kept = {k: v for k, v in cfg.items() if v is not None}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(kept, indent=2))


def gguf_metadata_for(ckpt: Checkpoint) -> dict[str, Any]:
    """Metadata to embed in a GGUF export: the source's own keys when it was GGUF, otherwise the
    tokenizer rebuilt from an HF folder's tokenizer.json (byte-level BPE, as Llama 3 uses)."""
    if ckpt.format == "gguf":
        return dict(ckpt.metadata)
    folder = ckpt.path if ckpt.path.is_dir() else ckpt.path.parent
    if not (folder / "tokenizer.json").is_file():
        return {}
    return tokenizer_metadata_from_hf(folder, ckpt.args.vocab_size)


# llama.cpp token types (gguf.TokenType): what its tokenizer does with each vocabulary entry.
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5


def _pre_tokenizer_name(pre: Any) -> str:
    """llama.cpp selects its pre-tokenizer regex by name; recognise the common HF setups."""
    text = json.dumps(pre)  # regexes appear JSON-escaped: one backslash becomes two
    if r"\\p{N}{1,3}" in text and "(?i:'s|'t|'re|'ve|'m|'ll|'d)" in text:
        return "llama-bpe"
    parts = pre.get("pretokenizers", [pre]) if isinstance(pre, dict) else []
    kinds = [p.get("type") for p in parts if isinstance(p, dict)]
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["ByteLevel"]:
        return "gpt-2"
    return "default"


def tokenizer_metadata_from_hf(folder: Path, n_vocab: int) -> dict[str, Any]:
    """``tokenizer.*`` GGUF keys from a byte-level BPE tokenizer.json; special ids, add_bos and the
    chat template via the ``gguf`` package's SpecialVocab (so key names follow llama.cpp's)."""
    import gguf

    try:
        tj = json.loads((folder / "tokenizer.json").read_text())
        model = tj["model"]
        if model.get("type") != "BPE":
            return {}  # SentencePiece-style tokenizers: leave the GGUF without a vocabulary
        by_id = {int(i): t for t, i in model["vocab"].items()}
        special = {int(a["id"]): bool(a.get("special")) for a in tj.get("added_tokens", [])}
        by_id.update({int(a["id"]): a["content"] for a in tj.get("added_tokens", [])})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    size = max(n_vocab, max(by_id) + 1)
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    types = [
        (_CONTROL if special[i] else _USER_DEFINED) if i in special else _NORMAL if i in by_id else _UNUSED
        for i in range(size)
    ]
    md: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": _pre_tokenizer_name(tj.get("pre_tokenizer")),
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
    }
    recorder = gguf.GGUFWriter(None, "llama")  # collects SpecialVocab's keys without writing a file
    gguf.vocab.SpecialVocab(folder, load_merges=True, n_vocab=size).add_to_gguf(recorder, quiet=True)
    md.update({k: v.value for k, v in recorder.kv_data[0].items() if k.startswith("tokenizer.")})
    return md


def hf_token_ids(md: dict[str, Any]) -> dict[str, Any]:
    """The bos/eos/pad ids of GGUF metadata as a Hugging Face config.json's fields."""
    out = {}
    for ours, theirs in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id")):
        v = md.get(f"tokenizer.ggml.{ours}_token_id")
        if isinstance(v, int):
            out[theirs] = v
    return out
