"""What the engine hands back, and the per-sequence turning of tokens into text.

The rules match the reference ``lhama.generate.stream_text``: a stop id ends the sequence and is
neither shown nor counted in ``token_ids`` (its step, with logprobs, is kept); a stop string
ends it and is cut from the text; text never splits a UTF-8 character nor shows a partial
stop string.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lhama.errors import LhamaError
from lhama.generate.outputs import Completion, TokenStep
from lhama.generate.stops import StopStringMatcher


class RequestFailedError(LhamaError):
    """The engine failed one request (while preparing its step, running the model on it or
    sampling for it) and went on serving the others. ``cause`` is the original exception and
    ``stage`` one of "prepare", "forward", "sample", "output". A typed user error as cause
    keeps its status, code, param and message (a bad sampling parameter is a 400); anything
    else is a 500 whose message names the stage, not the internals (they go to the log)."""

    def __init__(self, request_id: str, stage: str, cause: BaseException):
        self.request_id, self.stage, self.cause = request_id, stage, cause
        if isinstance(cause, LhamaError):
            self.http_status, self.code = cause.http_status, cause.code
            self.param = getattr(cause, "param", None)
            msg = str(cause)
        else:
            self.http_status, self.code, self.param = 500, "engine_request_failed", None
            msg = (
                f"the engine failed on this request ({stage}: {type(cause).__name__}); other requests "
                f"were not affected; see the server log"
            )
        super().__init__(msg)


@dataclass
class EngineDelta:
    """New output of one sequence (``index`` of the request's ``n``) from one engine step."""

    request_id: str
    index: int
    text: str
    token_ids: list[int]
    steps: list[TokenStep] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error" (then ``error`` is set)
    stop_reason: int | str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the prefix cache
    completion_tokens: int = 0  # output tokens so far (stop token excluded)
    error: RequestFailedError | None = None  # why the engine failed this request (finish_reason "error")


@dataclass
class RequestResult:
    """A whole finished request (``LLMEngine.generate``)."""

    request_id: str
    prompt_tokens: int
    cached_tokens: int
    completions: list[Completion]  # by sample index (fewer than n if it failed before forking)
    error: RequestFailedError | None = None  # the engine failed this request (its finish_reason: "error")

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.completions)


def make_decoder(tokenizer):
    if tokenizer is None:
        return None
    from lhama.tokenizer.incremental import IncrementalDecoder

    return IncrementalDecoder(tokenizer)


class SequenceOutput:
    """Accumulates one sequence's output and produces its deltas."""

    __slots__ = (
        "decoder",
        "finish_reason",
        "matcher",
        "max_tokens",
        "n",
        "steps",
        "stop_ids",
        "stop_reason",
        "text_parts",
        "token_ids",
    )

    def __init__(self, tokenizer, stop_ids: frozenset[int], stops: tuple[str, ...], max_tokens: int):
        self.decoder = make_decoder(tokenizer)
        self.matcher = StopStringMatcher(stops)
        self.stop_ids = stop_ids
        self.max_tokens = max_tokens
        self.n = 0
        self.token_ids: list[int] = []
        self.steps: list[TokenStep] = []
        self.text_parts: list[str] = []
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None

    def _tail(self) -> str:
        return self.matcher.feed(self.decoder.flush() if self.decoder else "") + self.matcher.flush()

    def add(self, step: TokenStep) -> tuple[str, list[int]]:
        """Take one sampled token; returns (new text, new ids) and sets ``finish_reason`` when done."""
        self.n += 1
        tok = step.token_id
        self.steps.append(step)
        if tok in self.stop_ids:
            text, ids = self._tail(), []
            self.finish_reason, self.stop_reason = "stop", tok
        else:
            ids = [tok]
            self.token_ids.append(tok)
            text = self.matcher.feed(self.decoder.push(tok)) if self.decoder else ""
            if self.matcher.stopped_by is not None:
                self.finish_reason, self.stop_reason = "stop", self.matcher.stopped_by
            elif self.n == self.max_tokens:
                text += self._tail()
                self.finish_reason = "length"
        if text:
            self.text_parts.append(text)
        return text, ids

    def completion(self, prompt_tokens: int) -> Completion:
        return Completion(
            "".join(self.text_parts),
            list(self.token_ids),
            self.finish_reason or "abort",
            self.stop_reason,
            prompt_tokens,
            list(self.steps),
        )
