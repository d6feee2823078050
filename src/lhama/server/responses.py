"""``/v1/responses`` (OpenAI's Responses API): create (whole or streamed), retrieve, delete, and
list a stored response's input items.

One response is a loop of chat turns on the engine: hosted searches ground the first turn,
a call of the code interpreter runs in the sandbox and the model continues with its output,
and a call of a client's function tool ends the response with a ``function_call`` item. The
whole and the streamed answers come from the same event sequence, so they agree exactly.
Stored responses live in the state database (``lhama.openai.response_store``, ``lhama.server.state_db``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import ValidationError

from lhama.openai import requests
from lhama.openai.chat_tools import final_message
from lhama.openai.requests import InvalidRequestError, validation_problem
from lhama.openai.response_store import ResponseStore
from lhama.openai.responses_api import (
    CODE_INTERPRETER,
    ResponseCreateRequest,
    chat_tool_choice,
    chat_tools,
    check_request,
    check_tools,
    function_call_item,
    items_to_messages,
    message_item,
    new_item_id,
    normalise_input,
    response_format,
    response_object,
    usage,
)
from lhama.openai.schemas import ChatCompletionRequest
from lhama.server.errors import APIError, error_body, from_exception
from lhama.server.generation import Generation, check_prompt, engine_error
from lhama.server.response_tools import (
    Grounding,
    check_web_search,
    ground,
    last_user_text,
    run_code,
)
from lhama.server.streaming import TicketedStream, json_response, until_disconnect

ROUTE = "/v1/responses"
MAX_TOOL_ROUNDS = 4  # code-interpreter runs in one response before the model must answer
router = APIRouter()
_store_lock = threading.Lock()


def response_store(state) -> ResponseStore:
    with _store_lock:
        if getattr(state, "responses", None) is None:
            state.responses = ResponseStore(state.db)
        return state.responses


def _not_found(rid: str, param: str | None = None) -> APIError:
    return APIError(
        404,
        f"No response with id '{rid}' is stored (it was never stored, or was deleted).",
        param=param,
        code="response_not_found",
    )


@dataclass
class ResponseRun:
    req: ResponseCreateRequest
    tools: list[dict]
    input_items: list[dict]
    prior: list[dict]  # the conversation before this request (previous_response_id)
    messages: list[dict]
    grounding: Grounding
    first: requests.PreparedRequest
    id: str = field(default_factory=lambda: new_item_id("resp"))
    created: int = field(default_factory=lambda: int(time.time()))
    output: list[dict] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)
    counts: list[int] = field(default_factory=lambda: [0, 0, 0])  # input, output, cached tokens


def _chat_turn(
    state, run_req: ResponseCreateRequest, tools: list[dict], messages: list[dict], tool_choice
) -> requests.PreparedRequest:
    ctools = chat_tools(tools)
    body = {
        "model": run_req.model,
        "messages": messages,
        "temperature": run_req.temperature,
        "top_p": run_req.top_p,
        "max_tokens": run_req.max_output_tokens,
        "tools": ctools or None,
        "tool_choice": (tool_choice if ctools else None),
        "response_format": response_format(run_req.text),
        "parallel_tool_calls": run_req.parallel_tool_calls,
    }
    try:
        creq = ChatCompletionRequest.model_validate({k: v for k, v in body.items() if v is not None})
    except ValidationError as e:
        param, message, code = validation_problem(e.errors())
        raise InvalidRequestError(message, param, code) from None
    prep = requests.prepare_chat(state.loaded, creq, state.compiler, context=state.max_model_len, limits=state.limits)
    lora = state.check_model(run_req.model)
    if lora is not None:  # a per-request adapter (docs/server.md, "LoRA adapters")
        prep.params = prep.params.with_(lora=lora)
    check_prompt(state, prep.prompts[0], prep.params, "input")
    return prep


def prepare_response(state, req: ResponseCreateRequest) -> ResponseRun:
    """Every client error of the request, before any output (blocking: searches may run)."""
    state.check_model(req.model)
    check_request(req)
    tools = check_tools(req.tools)
    check_web_search(tools)
    prior: list[dict] = []
    if req.previous_response_id is not None:
        prior = response_store(state).conversation(req.previous_response_id)
        if prior is None:
            raise _not_found(req.previous_response_id, "previous_response_id")
    items = normalise_input(req.input)
    grounding = ground(state, tools, last_user_text(items), req.include or [])
    messages = items_to_messages(prior + items)
    system = "\n\n".join(t for t in (req.instructions, grounding.system_text) if t)
    if system:
        messages.insert(0, {"role": "system", "content": system})
    first = _chat_turn(state, req, tools, messages, chat_tool_choice(req.tool_choice, tools))
    return ResponseRun(req, tools, items, prior, messages, grounding, first)


def _event(kind: str, **fields) -> dict:
    return {"type": kind, **fields}


def _opening(msg: dict, idx: int) -> list[dict]:
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    return [
        _event("response.output_item.added", output_index=idx, item=msg),
        _event("response.content_part.added", item_id=msg["id"], output_index=idx, content_index=0, part=part),
    ]


async def response_events(state, run: ResponseRun) -> AsyncIterator[dict]:
    """The spec's events for one response, ending with ``response.completed`` (its body is the
    whole response); stores the response when asked."""
    req, out = run.req, run.output

    def body(status: str, **kw) -> dict:
        return response_object(
            run.id, req, status=status, output=list(out), created_at=run.created, defaults=state.config.sampling, **kw
        )

    yield _event("response.created", response=body("in_progress"))
    yield _event("response.in_progress", response=body("in_progress"))
    for item in run.grounding.items:
        out.append(item)
        yield _event("response.output_item.added", output_index=len(out) - 1, item=item)
        yield _event("response.output_item.done", output_index=len(out) - 1, item=item)
    prep, messages, incomplete = run.first, list(run.messages), None
    fmt = state.loaded.chat_format
    for round_ in range(MAX_TOOL_ROUNDS):
        gen = Generation(state, ROUTE, prep, request_id=f"{run.id}-{round_}", t0=run.t0)
        plain = not prep.plan.parse_tools and not prep.plan.forced_tool
        msg = message_item("", item_id=new_item_id("msg"), status="in_progress")
        msg["content"] = []
        idx, started = len(out), False
        async for d in gen.deltas():
            if plain and d.text:
                if not started:
                    started = True
                    for e in _opening(msg, idx):
                        yield e
                yield _event(
                    "response.output_text.delta",
                    item_id=msg["id"],
                    output_index=idx,
                    content_index=0,
                    delta=d.text,
                    logprobs=[],
                )
        c = gen.choices[0]
        run.counts[0] += c.prompt_tokens or len(prep.prompts[0])
        run.counts[1] += len(c.token_ids)
        run.counts[2] += c.cached_tokens
        if c.finish_reason == "length":
            incomplete = "max_output_tokens"
        message, is_call = final_message(prep.plan, fmt, c.text, c.token_ids, c.stop_reason)
        if not is_call:
            text = message.get("content") or ""
            if not started:
                for e in _opening(msg, idx):
                    yield e
                if text:
                    yield _event(
                        "response.output_text.delta",
                        item_id=msg["id"],
                        output_index=idx,
                        content_index=0,
                        delta=text,
                        logprobs=[],
                    )
            done = message_item(
                text,
                run.grounding.annotations(text),
                item_id=msg["id"],
                status="incomplete" if incomplete else "completed",
            )
            out.append(done)
            yield _event(
                "response.output_text.done",
                item_id=msg["id"],
                output_index=idx,
                content_index=0,
                text=text,
                logprobs=[],
            )
            yield _event(
                "response.content_part.done",
                item_id=msg["id"],
                output_index=idx,
                content_index=0,
                part=done["content"][0],
            )
            yield _event("response.output_item.done", output_index=idx, item=done)
            break
        calls = message["tool_calls"]
        if not req.parallel_tool_calls:
            calls = calls[:1]
        functions = [k for k in calls if k["function"]["name"] != CODE_INTERPRETER]
        for k in functions:
            item = function_call_item(k["function"]["name"], k["function"]["arguments"], k["id"])
            out.append(item)
            i = len(out) - 1
            yield _event(
                "response.output_item.added", output_index=i, item={**item, "arguments": "", "status": "in_progress"}
            )
            yield _event(
                "response.function_call_arguments.delta", item_id=item["id"], output_index=i, delta=item["arguments"]
            )
            yield _event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=i,
                name=item["name"],
                arguments=item["arguments"],
            )
            yield _event("response.output_item.done", output_index=i, item=item)
        if functions or incomplete:
            break  # the client runs its functions and continues with previous_response_id
        for k in calls:
            async for e in _interpret(run, k, messages):
                yield e
        last = round_ + 2 >= MAX_TOOL_ROUNDS
        forced = isinstance(req.tool_choice, dict) or req.tool_choice == "required"
        prep = _chat_turn(state, req, run.tools, messages, "none" if last or forced else "auto")
    final = body("incomplete" if incomplete else "completed", incomplete=incomplete, usage_=usage(*run.counts))
    if req.store is not False:
        await asyncio.to_thread(response_store(state).put, final, run.input_items, run.prior + run.input_items + out)
    yield _event("response.incomplete" if incomplete else "response.completed", response=final)


async def _interpret(run: ResponseRun, call: dict, messages: list[dict]) -> AsyncIterator[dict]:
    """Run one code-interpreter call in the sandbox; its item and the chat turns it adds."""
    try:
        code = json.loads(call["function"]["arguments"]).get("code", "")
    except (ValueError, AttributeError):
        code = ""
    code = code if isinstance(code, str) else json.dumps(code)
    item = {
        "id": new_item_id("ci"),
        "type": "code_interpreter_call",
        "code": code,
        "container_id": "lhama-sandbox",
        "outputs": None,
        "status": "in_progress",
    }
    run.output.append(item)
    i = len(run.output) - 1
    yield _event("response.output_item.added", output_index=i, item=dict(item))
    yield _event("response.code_interpreter_call.in_progress", item_id=item["id"], output_index=i)
    yield _event("response.code_interpreter_call_code.done", item_id=item["id"], output_index=i, code=code)
    yield _event("response.code_interpreter_call.interpreting", item_id=item["id"], output_index=i)
    logs = await asyncio.to_thread(run_code, code)
    item.update(outputs=[{"type": "logs", "logs": logs}], status="completed")
    yield _event("response.code_interpreter_call.completed", item_id=item["id"], output_index=i)
    yield _event("response.output_item.done", output_index=i, item=item)
    # the same turns items_to_messages renders for this item later: the prefix stays the same
    messages.append(
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": item["id"],
                    "type": "function",
                    "function": {"name": CODE_INTERPRETER, "arguments": json.dumps({"code": code}, ensure_ascii=False)},
                }
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": item["id"], "content": logs})


def _sse(event: dict, seq: int) -> bytes:
    event = {**event, "sequence_number": seq}
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


async def _sse_events(state, run: ResponseRun) -> AsyncIterator[bytes]:
    seq = 0
    try:
        async for e in response_events(state, run):
            yield _sse(e, seq)
            seq += 1
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except Exception as exc:  # noqa: BLE001 - after the 200 a failure can only be an error event
        err = (
            exc
            if isinstance(exc, APIError)
            else (from_exception(exc) if isinstance(exc, InvalidRequestError) else engine_error(exc))
        )
        e = error_body(err.status, err.message, err.param, err.code)["error"]
        yield _sse({"type": "error", "code": e["code"], "message": e["message"], "param": e["param"]}, seq)


async def _whole(state, run: ResponseRun) -> dict:
    final = None
    async for e in response_events(state, run):
        final = e.get("response", final)
    return final


@router.post(ROUTE, tags=["openai"], summary="Create a model response (OpenAI Responses API)")
async def create_response(body: ResponseCreateRequest, request: Request):
    state = request.app.state.lhama
    run = await asyncio.to_thread(prepare_response, state, body)
    ticket = state.admit()
    if body.stream:
        return TicketedStream(_sse_events(state, run), ticket)
    return json_response(await until_disconnect(request, _whole(state, run), ticket))


@router.get(ROUTE + "/{response_id}", tags=["openai"], summary="A stored response")
async def get_response(response_id: str, request: Request):
    found = await asyncio.to_thread(response_store(request.app.state.lhama).get, response_id)
    if found is None:
        raise _not_found(response_id)
    return found


@router.delete(ROUTE + "/{response_id}", tags=["openai"], summary="Delete a stored response")
async def delete_response(response_id: str, request: Request):
    if not await asyncio.to_thread(response_store(request.app.state.lhama).delete, response_id):
        raise _not_found(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


@router.get(ROUTE + "/{response_id}/input_items", tags=["openai"], summary="A stored response's input items")
async def list_input_items(
    response_id: str,
    request: Request,
    limit: int = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
):
    items = await asyncio.to_thread(response_store(request.app.state.lhama).input_items, response_id)
    if items is None:
        raise _not_found(response_id)
    if not 1 <= limit <= 100:
        raise APIError(400, f"limit must be in [1, 100], got {limit}", param="limit", code="invalid_value")
    items = items[::-1] if order == "desc" else items
    if after is not None:
        ids = [it.get("id") for it in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }
