"""What every tokenizer and chat format offers the rest of lhama.

Beyond the protocols, lhama's tokenizers also have: ``kind`` ("llama3", "sentencepiece", "bpe",
"hf"), ``bos_token``/``eos_token`` (the names, for chat templates, set even when bos is not
prepended), ``is_special(id)`` (what ``skip_special`` drops) and, where decoding needs them,
``token_bytes_at_start(id)`` (SentencePiece's dropped leading space), ``decode_errors`` (the
UTF-8 error handler that matches the reference decoder) and ``special_breaks_bytes``.
``IncrementalDecoder`` uses these; all are optional for other implementations.
Assistant messages from ``decode_assistant`` carry ``stop_reason``: "end_of_turn",
"end_of_message" (Llama 3 eom: run the tool, then continue) or "out_of_tokens".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

Message = dict[str, Any]  # OpenAI-style: {"role", "content", "tool_calls"?, "tool_call_id"?, "name"?}


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int  # number of ids the tokenizer can produce (<= the model's embedding rows)
    bos_id: int | None
    eos_id: int
    stop_ids: frozenset[int]  # ids that end a generation (end of text, end of turn, end of message)
    special_tokens: dict[str, int]

    def encode(self, text: str, *, bos: bool = False, eos: bool = False, allow_special: bool = False) -> list[int]:
        """Token ids of ``text``. Special-token text is plain text unless ``allow_special``."""
        ...

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str: ...

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one id stands for (special tokens: their text in UTF-8)."""
        ...


@runtime_checkable
class ChatFormat(Protocol):
    name: str
    tokenizer: Tokenizer
    stop_ids: frozenset[int]

    def encode_dialog(
        self, messages: Sequence[Message], *, tools: Sequence[dict] | None = None, add_generation_prompt: bool = True
    ) -> list[int]:
        """Prompt ids for a conversation, ending with the assistant header when asked."""
        ...

    def decode_assistant(self, ids: Sequence[int]) -> Message:
        """Turn the ids a model generated (stop token included or not) into an assistant message,
        with ``tool_calls`` when the format marks a tool call."""
        ...
