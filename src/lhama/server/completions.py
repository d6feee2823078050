"""``POST /v1/completions``: raw-text (or token-id) prompts, no chat format."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Request

from lhama.openai import requests, responses
from lhama.openai.responses import completion_logprobs, content_steps
from lhama.openai.schemas import CompletionRequest
from lhama.server.generation import Generation, check_prompt
from lhama.server.streaming import (
    SSE_DONE,
    TicketedStream,
    json_response,
    sse,
    until_disconnect,
)

ROUTE = "/v1/completions"
router = APIRouter()


@dataclass
class PreparedCompletion:
    req: CompletionRequest
    gen: Generation
    id: str
    created: int


def prepare_completion(state, req: CompletionRequest, t0: float | None = None) -> PreparedCompletion:
    lora = state.check_model(req.model)
    prep = requests.prepare_completion(state.loaded, req, context=state.max_model_len, limits=state.limits)
    if lora is not None:  # a per-request adapter (docs/server.md, "LoRA adapters")
        prep.params = prep.params.with_(lora=lora)
    for p in prep.prompts:
        check_prompt(state, p, prep.params, "prompt")
    rid = responses.new_id("cmpl")
    return PreparedCompletion(req, Generation(state, ROUTE, prep, request_id=rid, t0=t0), rid, responses.now())


async def completion_body(state, prep: PreparedCompletion) -> dict:
    choices = await prep.gen.run()
    tok = state.loaded.tokenizer
    out = [
        {
            "index": c.index,
            "text": c.text,
            "logprobs": completion_logprobs(tok, content_steps(c.steps, c.token_ids))
            if prep.gen.params.logprobs
            else None,
            "finish_reason": c.finish_reason or "stop",
        }
        for c in choices
    ]
    return responses.text_completion(
        prep.id, prep.created, prep.req.model, out, prep.gen.usage(), fingerprint=state.fingerprint(prep.req.model)
    )


async def completion_events(state, prep: PreparedCompletion) -> AsyncIterator[bytes]:
    req, gen, tok = prep.req, prep.gen, state.loaded.tokenizer
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    offsets = [0] * len(gen.choices)

    fp = state.fingerprint(req.model)

    def chunk(choice: dict, usage=None) -> bytes:
        choices = [choice] if choice else []
        if include_usage:
            return sse(responses.text_completion(prep.id, prep.created, req.model, choices, usage, fingerprint=fp))
        return sse(responses.text_completion(prep.id, prep.created, req.model, choices, fingerprint=fp))

    async for d in gen.deltas():
        steps = content_steps(d.steps, d.token_ids)
        if d.text or d.finish_reason is not None or (gen.params.logprobs and steps):
            lp = completion_logprobs(tok, steps, offsets[d.index]) if gen.params.logprobs else None
            offsets[d.index] += len(d.text)
            yield chunk({"index": d.index, "text": d.text, "logprobs": lp, "finish_reason": d.finish_reason})
    if include_usage:
        yield chunk({}, gen.usage())
    yield SSE_DONE


@router.post(ROUTE, tags=["openai"], summary="Create a text completion (OpenAI-compatible)")
async def create_completion(body: CompletionRequest, request: Request):
    state = request.app.state.lhama
    t0 = time.perf_counter()
    prep = prepare_completion(state, body, t0)
    ticket = state.admit()
    if body.stream:
        return TicketedStream(completion_events(state, prep), ticket)
    return json_response(await until_disconnect(request, completion_body(state, prep), ticket))
