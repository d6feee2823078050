"""``POST /v1/chat/completions``: prompt rendering through the model's chat format, tools,
structured output, and the streamed or whole response."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Request

from lhama.openai import requests, responses
from lhama.openai.chat_tools import OutputPlan, final_message
from lhama.openai.responses import chat_logprobs, content_steps, finish_reason
from lhama.openai.schemas import ChatCompletionRequest
from lhama.server.generation import Generation, check_prompt
from lhama.server.shields import (
    refused_body,
    refused_events,
    screen_choice,
    screen_request,
    screens_replies,
)
from lhama.server.streaming import (
    SSE_DONE,
    TicketedStream,
    json_response,
    sse,
    until_disconnect,
)
from lhama.server.vector_stores import apply_file_search, uses_file_search
from lhama.tools.stream_parser import ToolCallStreamParser

ROUTE = "/v1/chat/completions"
router = APIRouter()


@dataclass
class PreparedChat:
    req: ChatCompletionRequest
    plan: OutputPlan
    gen: Generation
    id: str
    created: int
    verdict: object = None  # input shields: None not checked yet, False allowed, else the refusal


def prepare_chat(state, req: ChatCompletionRequest, t0: float | None = None) -> PreparedChat:
    """Validate and render ``req``; every client error is raised here, before any output."""
    lora = state.check_model(req.model)
    req = apply_file_search(state, req)  # file_search tools become a grounding system message
    prep = requests.prepare_chat(state.loaded, req, state.compiler, context=state.max_model_len, limits=state.limits)
    check_prompt(state, prep.prompts[0], prep.params, "messages")
    if lora is not None:  # a per-request adapter (docs/server.md, "LoRA adapters")
        prep.params = prep.params.with_(lora=lora)
    rid = responses.new_id("chatcmpl")
    return PreparedChat(req, prep.plan, Generation(state, ROUTE, prep, request_id=rid, t0=t0), rid, responses.now())


def _finish(choice, is_call: bool) -> str:
    return finish_reason(choice.finish_reason, is_call)


async def chat_body(state, prep: PreparedChat) -> dict:
    if await screen_request(state, prep):
        return refused_body(prep)
    choices = await prep.gen.run()
    tok, fmt = state.loaded.tokenizer, state.loaded.chat_format
    out = []
    for c in choices:
        message, is_call = final_message(prep.plan, fmt, c.text, c.token_ids, c.stop_reason)
        lp = {"content": chat_logprobs(tok, content_steps(c.steps, c.token_ids))} if prep.gen.params.logprobs else None
        out.append(
            await screen_choice(
                state,
                prep,
                {"index": c.index, "message": message, "logprobs": lp, "finish_reason": _finish(c, is_call)},
            )
        )
    return responses.chat_completion(
        prep.id, prep.created, prep.req.model, out, prep.gen.usage(), fingerprint=state.fingerprint(prep.req.model)
    )


async def chat_events(state, prep: PreparedChat) -> AsyncIterator[bytes]:
    """SSE chunks. Plain replies stream token by token. With tools (``auto``) the streaming
    tool-call parser sends prose at once and a call as ``tool_calls`` deltas, never as content;
    a forced call (``required`` / named) is sent whole when its choice finishes."""
    if await screen_request(state, prep):
        async for b in refused_events(prep):
            yield b
        return
    req, plan, gen = prep.req, prep.plan, prep.gen
    tok, fmt = state.loaded.tokenizer, state.loaded.chat_format
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    screened = screens_replies(state)  # output shields judge a reply whole before any of it is sent
    buffered = plan.forced_tool or plan.parse_tools or screened
    want_lp = gen.params.logprobs

    fp = state.fingerprint(req.model)

    def chunk(choices: list[dict]) -> bytes:
        if include_usage:
            return sse(responses.chat_chunk(prep.id, prep.created, req.model, choices, usage=None, fingerprint=fp))
        return sse(responses.chat_chunk(prep.id, prep.created, req.model, choices, fingerprint=fp))

    for c in gen.choices:
        yield chunk(
            [{"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
        )
    # tool_choice auto: prose streams as it comes, a call goes out as tool_calls deltas.
    parsers = (
        {c.index: ToolCallStreamParser(fmt) for c in gen.choices}
        if plan.parse_tools and not plan.forced_tool and not screened
        else {}
    )
    lp_sent = {c.index: 0 for c in gen.choices}

    def pending_lp(c, upto: int | None = None):
        steps = content_steps(c.steps, c.token_ids)[lp_sent[c.index] : upto]
        lp_sent[c.index] += len(steps)
        return {"content": chat_logprobs(tok, steps)} if want_lp else None

    async for d in gen.deltas():
        c = gen.choices[d.index]
        if parsers:
            parser = parsers[c.index]
            part = parser.feed(d.token_ids)
            if part.content:
                yield chunk(
                    [
                        {
                            "index": c.index,
                            "delta": {"content": part.content},
                            "logprobs": pending_lp(c),
                            "finish_reason": None,
                        }
                    ]
                )
            if d.finish_reason is not None:
                part = parser.finish(parse=not isinstance(c.stop_reason, str))
                delta: dict = {}
                if part.content:
                    delta["content"] = part.content
                if part.tool_calls:
                    delta["tool_calls"] = part.tool_calls
                if delta or (want_lp and lp_sent[c.index] < len(c.token_ids)):
                    yield chunk([{"index": c.index, "delta": delta, "logprobs": pending_lp(c), "finish_reason": None}])
                yield chunk(
                    [
                        {
                            "index": c.index,
                            "delta": {},
                            "logprobs": None,
                            "finish_reason": _finish(c, bool(part.tool_calls)),
                        }
                    ]
                )
        elif not buffered:
            steps = content_steps(d.steps, d.token_ids)
            if d.text or (want_lp and steps):
                lp = {"content": chat_logprobs(tok, steps)} if want_lp else None
                yield chunk([{"index": c.index, "delta": {"content": d.text}, "logprobs": lp, "finish_reason": None}])
            if d.finish_reason is not None:
                yield chunk([{"index": c.index, "delta": {}, "logprobs": None, "finish_reason": _finish(c, False)}])
        elif d.finish_reason is not None:
            message, is_call = final_message(plan, fmt, c.text, c.token_ids, c.stop_reason)
            done = await screen_choice(state, prep, {"message": message, "finish_reason": _finish(c, is_call)})
            message, refused = done["message"], "safety" in done
            delta: dict = {"content": message.get("content")}
            if refused:
                delta["refusal"] = message["refusal"]
            elif is_call:
                delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(message["tool_calls"])]
            lp = (
                {"content": chat_logprobs(tok, content_steps(c.steps, c.token_ids))}
                if want_lp and not refused
                else None
            )
            yield chunk([{"index": c.index, "delta": delta, "logprobs": lp, "finish_reason": None}])
            end = {"index": c.index, "delta": {}, "logprobs": None, "finish_reason": done["finish_reason"]}
            yield chunk([{**end, "safety": done["safety"]} if refused else end])
    if include_usage:
        yield sse(responses.chat_chunk(prep.id, prep.created, req.model, [], usage=gen.usage(), fingerprint=fp))
    yield SSE_DONE


@router.post(ROUTE, tags=["openai"], summary="Create a chat completion (OpenAI-compatible)")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    state = request.app.state.lhama
    t0 = time.perf_counter()
    # file_search embeds the query (and may load MiniLM first): off the event loop
    prep = (
        await asyncio.to_thread(prepare_chat, state, body, t0)
        if uses_file_search(body)
        else prepare_chat(state, body, t0)
    )
    ticket = state.admit()
    if body.stream:
        try:  # input shields answer before the stream's 200, so a shield failure keeps its status
            await screen_request(state, prep)
        except BaseException:
            ticket.release()
            raise
        return TicketedStream(chat_events(state, prep), ticket)
    return json_response(await until_disconnect(request, chat_body(state, prep), ticket))
