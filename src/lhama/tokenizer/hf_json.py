"""A Hugging Face ``tokenizer.json`` (plus ``tokenizer_config.json``) through ``tokenizers``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer as HFTokenizer

from lhama.errors import TokenizerError
from lhama.tokenizer.gguf_vocab import _byte_decoder


def _token_str(v) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


class HFJsonTokenizer:
    kind = "hf"

    def __init__(self, folder: Path):
        file = folder / "tokenizer.json"
        try:
            self._tok = HFTokenizer.from_file(str(file))
        except Exception as e:
            raise TokenizerError(f"{file}: not a usable tokenizer.json ({e})") from None
        cfg_file = folder / "tokenizer_config.json"
        self.config = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        added = self._tok.get_added_tokens_decoder()
        self.special_tokens = {t.content: i for i, t in added.items() if t.special}
        self._special_ids = frozenset(self.special_tokens.values())
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        bos, eos = _token_str(self.config.get("bos_token")), _token_str(self.config.get("eos_token"))
        self.bos_id = self._tok.token_to_id(bos) if bos else None
        if self.config.get("add_bos_token") is False:
            self.bos_id = None
        self.eos_id = self._tok.token_to_id(eos) if eos else 0
        stops = {self.eos_id}
        gen = folder / "generation_config.json"
        if gen.is_file():
            e = json.loads(gen.read_text()).get("eos_token_id")
            stops |= set(e if isinstance(e, list) else [e] if e is not None else [])
        for t in ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>"):
            if t in self.special_tokens:
                stops.add(self.special_tokens[t])
        self.stop_ids = frozenset(stops)
        self._byte_level = "ByteLevel" in json.dumps(json.loads(self._tok.to_str()).get("decoder") or {})
        # A plain copy without added special tokens: their text is ordinary text unless allowed.
        self._plain = HFTokenizer.from_str(self._tok.to_str())
        self._plain_strip = [t for t in self.special_tokens]
        self.strips_leading_space = not self._byte_level

    def encode(self, text: str, *, bos: bool = False, eos: bool = False, allow_special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"can only encode str, got {type(text).__name__}")
        if allow_special:
            ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        else:
            # Encode special-looking text piecewise so it is never turned into a special id.
            ids = []
            for piece in _split_keep(text, self._plain_strip):
                ids += self._tok.encode(piece, add_special_tokens=False).ids if piece not in self.special_tokens \
                    else _encode_chars(self._tok, piece)
        if bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        return b"".join(self.token_bytes(int(i)) for i in ids
                        if not (skip_special and int(i) in self._special_ids)).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        tok = self._tok.id_to_token(token_id)
        if tok is None:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary")
        if token_id in self._special_ids:
            return tok.encode()
        if self._byte_level:
            table = _byte_decoder()
            try:
                return bytes(table[c] for c in tok)
            except KeyError:
                return tok.encode()
        if tok.startswith("<0x") and tok.endswith(">") and len(tok) == 6:
            return bytes([int(tok[3:5], 16)])
        return tok.replace("\u2581", " ").encode()

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids


def _split_keep(text: str, names: list[str]) -> list[str]:
    if not names:
        return [text]
    import re

    pat = "(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) + ")"
    return [p for p in re.split(pat, text) if p]


def _encode_chars(tok: HFTokenizer, piece: str) -> list[int]:
    # "<|eot_id|>" as plain text: split before the first char so the special match can't fire.
    return tok.encode(piece[0], add_special_tokens=False).ids + tok.encode(piece[1:], add_special_tokens=False).ids
