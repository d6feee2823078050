"""Llama 2 chat format, as Meta's generation code builds it.

Each (user, assistant) pair is ``<s>[INST] {user} [/INST] {answer} </s>``; the last user turn
is ``<s>[INST] {user} [/INST]``; a system prompt goes inside the first user turn between
``<<SYS>>\\n`` and ``\\n<</SYS>>\\n\\n``.
"""

from __future__ import annotations

from collections.abc import Sequence

from lhama.errors import ChatFormatError
from lhama.tokenizer.base import Message
from lhama.tokenizer.chat.llama3 import content_text

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


class Llama2ChatFormat:
    name = "llama2"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.stop_ids = frozenset({tokenizer.eos_id})

    def encode_dialog(
        self, messages: Sequence[Message], *, tools: Sequence[dict] | None = None, add_generation_prompt: bool = True
    ) -> list[int]:
        if tools:
            raise ChatFormatError("the Llama 2 chat format has no tool calling; use a Llama 3.1+ model")
        msgs = [{"role": m.get("role"), "content": content_text(m.get("content"))} for m in messages]
        if msgs and msgs[0]["role"] == "system":
            if len(msgs) < 2:
                raise ChatFormatError("a system prompt needs a user message after it")
            msgs = [{"role": "user", "content": B_SYS + msgs[0]["content"] + E_SYS + msgs[1]["content"]}] + msgs[2:]
        for i, m in enumerate(msgs):
            want = "user" if i % 2 == 0 else "assistant"
            if m["role"] != want:
                raise ChatFormatError(
                    f"Llama 2 dialogs alternate user/assistant (after an optional system); "
                    f"message {i} is {m['role']!r}, expected {want!r}"
                )
        if not msgs or (add_generation_prompt and msgs[-1]["role"] != "user"):
            raise ChatFormatError("the last message must be from the user")
        tok, ids = self.tokenizer, []
        for user, answer in zip(msgs[::2], msgs[1::2]):
            ids += tok.encode(
                f"{B_INST} {user['content'].strip()} {E_INST} {answer['content'].strip()} ", bos=True, eos=True
            )
        if len(msgs) % 2 == 1:
            ids += tok.encode(f"{B_INST} {msgs[-1]['content'].strip()} {E_INST}", bos=True)
        return ids

    def decode_assistant(self, ids: Sequence[int]) -> Message:
        ids = list(ids)
        stop = "out_of_tokens"
        if ids and ids[-1] in self.stop_ids:
            stop, ids = "end_of_turn", ids[:-1]
        return {
            "role": "assistant",
            "content": self.tokenizer.decode(ids, skip_special=True).strip(),
            "stop_reason": stop,
        }
