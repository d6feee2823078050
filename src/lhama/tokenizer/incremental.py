"""Streaming detokenization that never splits a UTF-8 character.

Each token maps to raw bytes (``Tokenizer.token_bytes``); an incremental UTF-8 decoder keeps an
incomplete multi-byte sequence (an emoji spread over byte-fallback tokens, say) until its last
byte arrives. That is O(1) per token, and the deltas add up to ``tokenizer.decode(ids)``.
"""

from __future__ import annotations

import codecs


class IncrementalDecoder:
    def __init__(self, tokenizer, *, skip_special: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # SentencePiece drops the space of the first piece's "▁" at the start of a text.
        self._strip_first_space = bool(getattr(tokenizer, "strips_leading_space", False))
        self._started = False
        self._is_special = getattr(tokenizer, "is_special", lambda _i: False)

    def push(self, token_id: int) -> str:
        if self.skip_special and self._is_special(token_id):
            return ""
        text = self._utf8.decode(self.tokenizer.token_bytes(int(token_id)))
        if not self._started and text:
            self._started = True
            if self._strip_first_space and text.startswith(" "):
                text = text[1:]
        return text

    def flush(self) -> str:
        """The end of the stream: an incomplete character left over becomes U+FFFD."""
        return self._utf8.decode(b"", final=True)
