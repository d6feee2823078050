"""What generation yields, whichever generator runs (the reference loop, speculative decoding,
the batching engine): one ``TokenStep`` per token, ``StreamDelta``s of text, a ``Completion``;
and ``check_context``, the one check each of them runs before the first token."""

from __future__ import annotations

from dataclasses import dataclass, field

from lhama.errors import ContextLengthExceededError, SamplingError


@dataclass
class TokenStep:
    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass
class StreamDelta:
    """A piece of streamed output. ``finish_reason`` is set on the last one only."""

    text: str
    token_ids: list[int]
    steps: list[TokenStep] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length"
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    stop_reason: int | str | None
    prompt_tokens: int
    steps: list[TokenStep]

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def check_context(prompt_len: int, max_tokens: int, context_length: int) -> None:
    if prompt_len == 0:
        raise SamplingError("prompt", "the prompt is empty; give at least one token")
    if prompt_len + max_tokens > context_length:
        raise ContextLengthExceededError(prompt_len, max_tokens, context_length)
