"""Tool calls while streaming: content deltas as long as the turn is prose, OpenAI ``tool_calls``
deltas once it is a call, and never a leaked ``<|python_tag|>`` or half a JSON call as content.

Fed generated token ids as they come. The turn is in one of three states:

- *undecided*: nothing but whitespace yet, or a prefix that could open a call in some format
  (``{``, ``[``, ``<function=``, ``<tool_call>``, ``brave_search.call(`` ...). Held back.
- *content*: the text can no longer be a whole-turn call (the finished-turn parser only accepts
  a turn that is entirely a call, so prose stays prose). Streamed as it decodes, except trailing
  whitespace, held until more text follows (a python tag may still come and end the prose).
- *tagged*: ``<|python_tag|>`` arrived; what follows is a tool call or code. Held to the end.

At the end (``finish``) the ids go through the chat format's own ``decode_assistant`` - the same
parser as non-streaming responses - so a streamed turn and a whole one always agree: held text
that is no call is sent as content then, calls as ``tool_calls`` deltas (id, name, arguments).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from lhama.tokenizer.incremental import IncrementalDecoder

# Openings of a whole-turn call in every format lhama parses (Llama 3.1 JSON / function tag /
# built-in call, Llama 3.2 pythonic list, Hermes/SmolLM ``<tool_call>``, Mistral ``[TOOL_CALLS]``).
CALL_OPENINGS = ("{", "[", "<function=", "<tool_call>", "[TOOL_CALLS]", "brave_search.call(", "wolfram_alpha.call(")


@dataclass
class StreamDelta:
    """What to send for the tokens just fed: content text and/or tool-call deltas in OpenAI's
    streaming shape (``{"index", "id", "type", "function": {"name", "arguments"}}``)."""

    content: str = ""
    tool_calls: list[dict] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.tool_calls)


def could_open_call(text: str) -> bool:
    """Whether ``text`` (leading whitespace ignored) is, or starts like, a call opening."""
    s = text.lstrip()
    return not s or any(s.startswith(o) or o.startswith(s) for o in CALL_OPENINGS)


class ToolCallStreamParser:
    """One assistant turn. ``feed(ids)`` per engine delta, ``finish()`` once; ``message`` then
    holds the final assistant message (what ``chat_format.decode_assistant`` makes of the turn)."""

    def __init__(self, chat_format):
        self.fmt = chat_format
        self.tokenizer = chat_format.tokenizer
        self.python_tag = getattr(chat_format, "python_tag", None)
        self.stop_ids = frozenset(getattr(chat_format, "stop_ids", ()))
        self.ids: list[int] = []
        self.state = "undecided"
        self._decoder = IncrementalDecoder(self.tokenizer)
        self._held = ""  # decoded but not yet sent
        self._sent = ""  # content sent so far
        self.message: dict | None = None

    def feed(self, token_ids) -> StreamDelta:
        out = StreamDelta()
        for t in token_ids:
            t = int(t)
            self.ids.append(t)
            if self.state == "tagged" or t in self.stop_ids:
                continue
            if t == self.python_tag:
                self.state = "tagged"  # prose so far stays content; trailing whitespace is dropped below
                self._held += self._decoder.flush()
                continue
            self._held += self._decoder.push(t)
        if self.state == "undecided" and not could_open_call(self._held):
            self.state = "content"
        if self.state == "content":
            keep = len(self._held) - len(self._held.rstrip())
            emit, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
            out.content = emit
            self._sent += emit
        return out

    def finish(self, *, parse: bool = True) -> StreamDelta:
        """The rest of the turn. ``parse=False`` (the turn was stopped by a user stop string, or
        tools are off): everything held is content."""
        self._held += self._decoder.flush()
        if not parse:
            text = self.tokenizer.decode([i for i in self.ids if i not in self.stop_ids], skip_special=True)
            self.message = {"role": "assistant", "content": text}
            return self._rest_as_content(text)
        msg = self.fmt.decode_assistant(self.ids)
        self.message = msg
        calls = msg.get("tool_calls") or []
        if not calls:
            return self._rest_as_content(msg.get("content") or "")
        out = StreamDelta()
        content = (msg.get("content") or "").strip()
        # Content already streamed is prose before a python tag; whatever of it is still owed.
        if content.startswith(self._sent.strip()) and len(content) > len(self._sent.strip()):
            out.content = content[len(self._sent.strip()) :]
        for k, c in enumerate(calls):
            fn = c.get("function", c)
            args = fn.get("arguments", fn.get("parameters", {}))
            out.tool_calls.append(
                {
                    "index": k,
                    "id": c.get("id"),
                    "type": "function",
                    "function": {
                        "name": fn.get("name", ""),
                        "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False),
                    },
                }
            )
        return out

    def _rest_as_content(self, full: str) -> StreamDelta:
        rest = full[len(self._sent) :] if full.startswith(self._sent) else self._held
        self._sent += rest
        return StreamDelta(content=rest)
