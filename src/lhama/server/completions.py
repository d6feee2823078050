"""``POST /v1/completions``: raw-text (or token-id) prompts, no chat format."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Request

from lhama.errors import SamplingError
from lhama.server.generation import Generation, build_params, check_prompt
from lhama.server.schemas import CompletionRequest
from lhama.server.streaming import (
    SSE_DONE,
    TicketedStream,
    completion_logprobs,
    content_steps,
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


def prompt_ids(state, prompt) -> list[list[int]]:
    tok = state.loaded.tokenizer
    bos = getattr(tok, "bos_id", None) is not None
    if isinstance(prompt, str):
        return [tok.encode(prompt, bos=bos)]
    if not prompt:
        raise SamplingError("prompt", "must not be empty")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    if all(isinstance(p, str) for p in prompt):
        return [tok.encode(p, bos=bos) for p in prompt]
    return [list(p) for p in prompt]


def prepare_completion(state, req: CompletionRequest, t0: float | None = None) -> PreparedCompletion:
    state.check_model(req.model)
    for name in ("suffix", "echo"):
        if getattr(req, name):
            raise SamplingError(name, "is not supported by this server")
    prompts = prompt_ids(state, req.prompt)
    if len(prompts) > state.config.max_n * 4:
        raise SamplingError("prompt", f"at most {state.config.max_n * 4} prompts per request, got {len(prompts)}")
    params = build_params(state, req, max(len(p) for p in prompts), chat=False, constrained=False)
    if req.best_of is not None and req.best_of != params.n:
        raise SamplingError("best_of", "only best_of == n is supported")
    if len(prompts) * params.n > state.config.max_n * 4:
        raise SamplingError("n", f"prompts x n must be <= {state.config.max_n * 4}")
    for p in prompts:
        check_prompt(state, p, params, "prompt")
    rid = f"cmpl-{uuid.uuid4().hex}"
    return PreparedCompletion(req, Generation(state, ROUTE, prompts, params, request_id=rid, t0=t0), rid,
                              int(time.time()))


async def completion_body(state, prep: PreparedCompletion) -> dict:
    choices = await prep.gen.run()
    tok = state.loaded.tokenizer
    out = [{"index": c.index, "text": c.text,
            "logprobs": completion_logprobs(tok, content_steps(c.steps, c.token_ids)) if prep.gen.params.logprobs
            else None, "finish_reason": c.finish_reason or "stop"} for c in choices]
    return {"id": prep.id, "object": "text_completion", "created": prep.created, "model": prep.req.model,
            "system_fingerprint": None, "choices": out, "usage": prep.gen.usage()}


async def completion_events(state, prep: PreparedCompletion) -> AsyncIterator[bytes]:
    req, gen, tok = prep.req, prep.gen, state.loaded.tokenizer
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    offsets = [0] * len(gen.choices)

    def chunk(choice: dict, usage=None) -> bytes:
        body = {"id": prep.id, "object": "text_completion", "created": prep.created, "model": req.model,
                "system_fingerprint": None, "choices": [choice] if choice else []}
        if include_usage:
            body["usage"] = usage
        return sse(body)

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
