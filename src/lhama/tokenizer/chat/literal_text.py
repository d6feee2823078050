"""Keep message text literal when a chat template is tokenized with its special tokens.

A Jinja template's output mixes the template's own markup (``<|im_start|>``, ``<|eot_id|>`` ...,
which must become control tokens) with message text (which must not: a user writing
``<|im_end|>\\n<|im_start|>system`` would otherwise forge a system turn). The rendered string no
longer says which is which, so before rendering, every special-token text inside message data is
replaced by an escape; after rendering, the string is split at the specials that are
left (the template's) and the pieces between them are tokenized with special-token parsing off,
escapes turned back into their literal text. This is what llama.cpp does when it tokenizes user
content with ``parse_special=false``.

Escapes: ``ESC + chr(CODE0 + k)`` stands for special text number k, ``ESC + ESC`` for a literal
ESC (so text that already holds the escape character round-trips). A dialog without either
encodes exactly as before: one tokenizer call with specials parsed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Rare astral ideographs: printable (so a template's repr() of a list keeps them), caseless (so
# |upper and |lower keep them), and text that holds ESC itself is escaped as ESC ESC.
ESC = "\U00029fff"
CODE0 = 0x20000


class LiteralTextEncoder:
    """Escapes special-token text in message data, and tokenizes a rendered template so that only
    unescaped special text (the template's own) becomes special tokens."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        # Only the specials that plain tokenization does not produce by itself need care
        # (user-defined tokens are matched in any text, as llama.cpp does); longest first, so that
        # a special token that contains another one wins.
        self.specials = sorted(
            (t for t, i in tokenizer.special_tokens.items() if t and tokenizer.encode(t) != [i]), key=len, reverse=True
        )
        alternatives = "|".join(map(re.escape, self.specials))
        self._in_data = re.compile(f"{ESC}|{alternatives}" if alternatives else ESC)
        self._code = {t: ESC + chr(CODE0 + k) for k, t in enumerate(self.specials)}
        # In rendered text: an escape (two characters), or a special token the template wrote.
        self._in_render = re.compile(f"({ESC}.?|{alternatives})" if alternatives else f"({ESC}.?)", re.DOTALL)

    def escape(self, value: Any) -> Any:
        """``value`` (JSON-like message data) with special-token text in every string escaped."""
        if isinstance(value, str):
            return self._in_data.sub(lambda m: ESC + ESC if m.group() == ESC else self._code[m.group()], value)
        if isinstance(value, Mapping):
            return {self.escape(k): self.escape(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.escape(v) for v in value]
        return value

    def _unescape(self, piece: str) -> str:
        if piece == ESC + ESC:
            return ESC
        k = ord(piece[1]) - CODE0 if len(piece) == 2 else -1
        # A template that cut an escape in two leaves a lone ESC: keep it as the text it is.
        return self.specials[k] if 0 <= k < len(self.specials) else piece

    def encode(self, rendered: str) -> list[int]:
        """Token ids of a rendered template: its special-token text as special tokens, escaped
        message text as plain text."""
        tok = self.tokenizer
        if ESC not in rendered:
            return tok.encode(rendered, allow_special=True)
        ids: list[int] = []
        text: list[str] = []  # plain text since the last template special, escapes resolved
        for k, part in enumerate(self._in_render.split(rendered)):
            if k % 2 == 0:
                text.append(part)
            elif part.startswith(ESC):
                text.append(self._unescape(part))
            else:
                ids += tok.encode("".join(text)) if any(text) else []
                text = []
                ids.append(tok.special_tokens[part])
        return ids + (tok.encode("".join(text)) if any(text) else [])
