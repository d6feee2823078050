"""Llama 2 tokenizer: a SentencePiece BPE model (bos 1, eos 2, byte fallback)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import sentencepiece as spm

from lhama.errors import TokenizerError


class SentencePieceTokenizer:
    kind = "sentencepiece"

    def __init__(self, path: str | Path | None = None, *, model_proto: bytes | None = None, name: str = ""):
        self.path = Path(path) if path else None
        self._sp = spm.SentencePieceProcessor()
        try:
            if model_proto is not None:
                self._sp.LoadFromSerializedProto(model_proto)
            else:
                self._sp.Load(str(self.path))
        except Exception as e:  # sentencepiece raises bare OSError/RuntimeError on bad files
            raise TokenizerError(f"{path or name}: not a SentencePiece model ({e})") from None
        sp = self._sp
        self.vocab_size = sp.GetPieceSize()
        self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        self.eos_id = sp.eos_id()
        self.special_tokens = {sp.IdToPiece(i): i for i in range(self.vocab_size)
                               if sp.IsControl(i) or sp.IsUnknown(i) or _is_user_defined(sp, i)}
        self._control = frozenset(i for i in range(self.vocab_size) if sp.IsControl(i))
        self.stop_ids = frozenset({self.eos_id})
        self._user_defined = sorted((p for p, i in self.special_tokens.items() if _is_user_defined(sp, i)),
                                    key=len, reverse=True)
        # SentencePiece adds a dummy "▁" before the text; decode drops the space it stands for.
        self.strips_leading_space = True

    def encode(self, text: str, *, bos: bool = False, eos: bool = False, allow_special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"can only encode str, got {type(text).__name__}")
        ids = [self.bos_id] if bos and self.bos_id is not None else []
        if allow_special and self.special_tokens:
            ids += self._encode_with_specials(text)
        else:
            ids += self._sp.EncodeAsIds(text)
        if eos:
            ids.append(self.eos_id)
        return ids

    def _encode_with_specials(self, text: str) -> list[int]:
        # Control tokens are never produced from text by SentencePiece; split them out ourselves.
        names = sorted((p for p in self.special_tokens if p), key=len, reverse=True)
        out: list[int] = []
        buf, i = [], 0
        while i < len(text):
            hit = next((n for n in names if text.startswith(n, i)), None)
            if hit:
                if buf:
                    out += self._sp.EncodeAsIds("".join(buf))
                    buf = []
                out.append(self.special_tokens[hit])
                i += len(hit)
            else:
                buf.append(text[i])
                i += 1
        if buf:
            out += self._sp.EncodeAsIds("".join(buf))
        return out

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special:
            return self._sp.DecodeIds([i for i in ids if i not in self._control])
        # DecodeIds drops control tokens; show them as text like the other tokenizers do.
        parts, run = [], []
        for i in ids:
            if i in self._control:
                if run:
                    parts.append(self._sp.DecodeIds(run))
                    run = []
                parts.append(self._sp.IdToPiece(i))
            else:
                run.append(i)
        if run:
            parts.append(self._sp.DecodeIds(run) if not parts else _decode_continuation(self._sp, run))
        return "".join(parts)

    def token_bytes(self, token_id: int) -> bytes:
        sp = self._sp
        piece = sp.IdToPiece(token_id)
        if sp.IsByte(token_id):
            return bytes([int(piece[3:-1], 16)])  # "<0xAB>"
        if sp.IsControl(token_id) or sp.IsUnknown(token_id):
            return piece.encode() if sp.IsControl(token_id) else "\u2047".encode()
        return piece.replace("\u2581", " ").encode()

    def is_special(self, token_id: int) -> bool:
        return token_id in self._control


def _decode_continuation(sp, ids: list[int]) -> str:
    """Decode ids that follow other text: keep the leading space SentencePiece would strip."""
    text = sp.DecodeIds(ids)
    first = sp.IdToPiece(ids[0])
    return (" " + text) if first.startswith("\u2581") and not text.startswith(" ") else text


def _is_user_defined(sp, i: int) -> bool:
    return bool(getattr(sp, "IsUserDefined", lambda _i: False)(i))
