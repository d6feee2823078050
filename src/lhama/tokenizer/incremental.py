"""Streaming detokenization that never splits a UTF-8 character.

Each id maps to raw bytes (``Tokenizer.token_bytes``); an incremental UTF-8 decoder keeps an
incomplete multi-byte sequence (an emoji spread over byte-fallback or byte-level tokens, a Thai
vowel sign, a CJK character) until its last byte arrives. The only state is that pending tail (at
most 3 bytes), so each step costs O(1) however long the stream, and the deltas add up to exactly
``tokenizer.decode(ids)``.

SentencePiece vocabularies drop the space of a leading "▁" at the start of a text; tokenizers that
do so offer ``token_bytes_at_start`` and the decoder asks it until something visible was emitted.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable


class IncrementalDecoder:
    def __init__(self, tokenizer, *, skip_special: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        errors = getattr(tokenizer, "decode_errors", "replace")
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors=errors)
        self._token_bytes = tokenizer.token_bytes
        self._at_start_fn = getattr(tokenizer, "token_bytes_at_start", None)
        self._at_start = self._at_start_fn is not None
        self._is_special = getattr(tokenizer, "is_special", None) or (lambda _i: False)
        self._special_breaks = bool(getattr(tokenizer, "special_breaks_bytes", False))

    def push(self, token_id: int) -> str:
        """Text completed by this token ("" while a character is still incomplete)."""
        token_id = int(token_id)
        if self.skip_special and self._is_special(token_id):
            # SentencePiece ends a byte-fallback run at any control token, shown or not.
            return self.flush() if self._special_breaks else ""
        if self._at_start:
            data, self._at_start = self._at_start_fn(token_id)
        else:
            data = self._token_bytes(token_id)
        return self._utf8.decode(data)

    def extend(self, ids: Iterable[int]) -> str:
        return "".join(self.push(i) for i in ids)

    def flush(self) -> str:
        """End of stream: an incomplete character left over becomes U+FFFD."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text

    @property
    def pending(self) -> bool:
        """Whether bytes of an unfinished character are held back."""
        return bool(self._utf8.getstate()[0])
