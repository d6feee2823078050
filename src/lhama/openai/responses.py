"""OpenAI response bodies: chat completions and their stream chunks, text completions, usage,
and the two logprobs shapes - one copy for the server's routes and for batch jobs."""

from __future__ import annotations

import time
import uuid

_UNSET = object()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def _token(tokenizer, token_id: int) -> tuple[str, list[int]]:
    b = tokenizer.token_bytes(token_id)
    return b.decode("utf-8", errors="replace"), list(b)


def content_steps(steps, token_ids) -> list:
    """The steps that produced output tokens (a trailing stop-token step is dropped)."""
    return list(steps[: len(token_ids)])


def chat_logprobs(tokenizer, steps) -> list[dict]:
    """``choices[].logprobs.content`` entries for ``steps``."""
    out = []
    for s in steps:
        text, b = _token(tokenizer, s.token_id)
        tops = []
        for i, lp in s.top_logprobs or []:
            t, tb = _token(tokenizer, i)
            tops.append({"token": t, "logprob": lp, "bytes": tb})
        out.append({"token": text, "logprob": s.logprob, "bytes": b, "top_logprobs": tops})
    return out


def completion_logprobs(tokenizer, steps, offset: int = 0) -> dict:
    """Legacy ``/v1/completions`` logprobs; ``offset`` is where this piece starts in the text."""
    tokens, lps, tops, offsets = [], [], [], []
    for s in steps:
        text, _ = _token(tokenizer, s.token_id)
        tokens.append(text)
        lps.append(s.logprob)
        tops.append(
            {_token(tokenizer, i)[0]: lp for i, lp in s.top_logprobs or []} if s.top_logprobs is not None else None
        )
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def finish_reason(reason: str | None, is_tool_call: bool) -> str:
    return "tool_calls" if is_tool_call else (reason or "stop")


def chat_completion(
    id: str, created: int, model: str, choices: list[dict], usage: dict, *, fingerprint: str | None = None
) -> dict:
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": choices,
        "usage": usage,
    }


def chat_chunk(
    id: str, created: int, model: str, choices: list[dict], usage=_UNSET, *, fingerprint: str | None = None
) -> dict:
    """One ``chat.completion.chunk``; ``usage`` is sent (``None`` until the last chunk) only when
    the client asked for ``stream_options.include_usage``."""
    body = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": choices,
    }
    if usage is not _UNSET:
        body["usage"] = usage
    return body


def text_completion(
    id: str, created: int, model: str, choices: list[dict], usage=_UNSET, *, fingerprint: str | None = None
) -> dict:
    """A ``text_completion`` body, or one stream chunk of it (same object name, as OpenAI sends)."""
    body = {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": choices,
    }
    if usage is not _UNSET:
        body["usage"] = usage
    return body
