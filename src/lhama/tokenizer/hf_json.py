"""A Hugging Face ``tokenizer.json`` (plus ``tokenizer_config.json``) through ``tokenizers``.

Encoding is ``tokenizers``' own. Decoding goes through raw token bytes, as for the other kinds,
so that ``decode`` and the streaming ``IncrementalDecoder`` agree: byte-level BPE vocabularies
(Llama 3, SmolLM2) map characters back to bytes; SentencePiece-style ones (Llama 2 in HF form)
turn "▁" into a space, read ``<0xAB>`` pieces as bytes and drop the first leading space.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from lhama.errors import TokenizerError
from lhama.tokenizer.gguf_vocab import END_OF_TURN_TOKENS, unicode_to_byte
from lhama.tokenizer.llama2 import BYTEWISE_ERRORS, SPACE


def _token_str(v: Any) -> str | None:
    return v.get("content") if isinstance(v, dict) else v


def _walk(node: Any):
    """Every component of a (possibly nested Sequence) decoder / pre-tokenizer description."""
    if isinstance(node, dict):
        yield node
        for child in node.get("decoders", node.get("pretokenizers", [])) or []:
            yield from _walk(child)


class HFJsonTokenizer:
    kind = "hf"

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        file = folder / "tokenizer.json"
        try:
            self._tok = HFTokenizer.from_file(str(file))
            spec = json.loads(file.read_text(encoding="utf-8"))
        except Exception as e:
            raise TokenizerError(f"{file}: not a usable tokenizer.json ({e})") from None
        cfg_file = folder / "tokenizer_config.json"
        try:
            self.config = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
        except ValueError as e:
            raise TokenizerError(f"{cfg_file}: not valid JSON ({e})") from None
        added = self._tok.get_added_tokens_decoder()
        self.special_tokens = {t.content: i for i, t in added.items() if t.special}
        self._special_ids = frozenset(self.special_tokens.values())
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        # Special-token text is plain text unless allowed: a twin without the special added tokens.
        plain = dict(spec, added_tokens=[a for a in spec.get("added_tokens", []) if not a.get("special")])
        self._plain = HFTokenizer.from_str(json.dumps(plain))

        self.bos_token = _token_str(self.config.get("bos_token"))
        self.eos_token = _token_str(self.config.get("eos_token"))
        for name in ("<|begin_of_text|>", "<s>"):
            if self.bos_token is None and name in self.special_tokens:
                self.bos_token = name
        for name in ("<|end_of_text|>", "</s>", "<|endoftext|>"):
            if self.eos_token is None and name in self.special_tokens:
                self.eos_token = name
        bos_id = self._tok.token_to_id(self.bos_token) if self.bos_token else None
        # Whether bos is prepended: the config says so, or the post-processor template does.
        single = (spec.get("post_processor") or {}).get("single") or []
        adds_bos = any(
            "SpecialToken" in step and step["SpecialToken"].get("id") == self.bos_token for step in single[:1]
        )
        self.bos_id = bos_id if self.config.get("add_bos_token", adds_bos) else None
        eos_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        if eos_id is None:
            raise TokenizerError(f"{folder}: no eos token (set eos_token in tokenizer_config.json)")
        self.eos_id = eos_id
        stops = {self.eos_id}
        gen = folder / "generation_config.json"
        if gen.is_file():
            e = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id")
            stops |= set(e if isinstance(e, list) else [e] if e is not None else [])
        stops.update(self.special_tokens[t] for t in END_OF_TURN_TOKENS if t in self.special_tokens)
        self.stop_ids = frozenset(stops)

        decoders = list(_walk(spec.get("decoder")))
        self._byte_level = any(d.get("type") == "ByteLevel" for d in decoders)
        self._strip_first = any(
            (d.get("type") == "Strip" and d.get("start", 0) >= 1 and d.get("content") == " ")
            or (
                d.get("type") == "Metaspace"
                and (d.get("prepend_scheme") in ("first", "always") or d.get("add_prefix_space"))
            )
            for d in decoders
        )
        # HF's ByteFallback decoder writes one U+FFFD per invalid byte, like SentencePiece.
        if any(d.get("type") == "ByteFallback" for d in decoders):
            self.decode_errors = BYTEWISE_ERRORS
        self._bytes = [self._raw(i) for i in range(self.vocab_size)]

    def _raw(self, i: int) -> bytes:
        tok = self._tok.id_to_token(i)
        if tok is None:
            return b""
        if i in self._special_ids:
            return tok.encode()
        if self._byte_level:
            table = unicode_to_byte()
            try:
                return bytes(table[c] for c in tok)
            except KeyError:  # an added token outside the byte alphabet: its text as is
                return tok.encode()
        if tok.startswith("<0x") and tok.endswith(">") and len(tok) == 6:
            return bytes([int(tok[3:5], 16)])
        return tok.replace(SPACE, " ").encode()

    def encode(self, text: str, *, bos: bool = False, eos: bool = False, allow_special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"can only encode str, got {type(text).__name__}")
        ids = list((self._tok if allow_special else self._plain).encode(text, add_special_tokens=False).ids)
        if bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        try:
            return self._bytes[token_id]
        except (IndexError, TypeError):
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})") from None

    def token_bytes_at_start(self, token_id: int) -> tuple[bytes, bool]:
        data = self.token_bytes(token_id)
        if self._strip_first and token_id not in self._special_ids and data.startswith(b" "):
            data = data[1:]
        return data, not data

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        from lhama.tokenizer.incremental import IncrementalDecoder

        dec = IncrementalDecoder(self, skip_special=skip_special)
        return "".join(dec.push(i) for i in ids) + dec.flush()

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids
