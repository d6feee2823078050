"""OpenAI's Responses API as data: the request body, its input items turned into the chat
messages the model's chat format renders, and the output items, usage and response object
sent back (field names as the ``openai`` package's ``types/responses``).

A conversation is a list of items (messages, ``function_call`` / ``function_call_output``,
``code_interpreter_call``...). ``items_to_messages`` renders every one of them - tool calls and
their outputs included - so a response continued with ``previous_response_id`` shows the model
exactly what it saw and said before, and the rendered prompt keeps the earlier prefix (the
engine's prefix cache reuses it).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import Field

from lhama.openai.requests import InvalidRequestError
from lhama.openai.schemas import Bool, Count, Float, RequestBody
from lhama.sampling_defaults import REQUEST_SAMPLING_DEFAULTS, SamplingDefaults

BUILTIN_TYPES = ("code_interpreter", "file_search", "web_search", "web_search_preview")
CODE_INTERPRETER = "code_interpreter"  # the function name the model calls to run Python


class ResponseCreateRequest(RequestBody):
    """``POST /v1/responses``. Items and tools stay plain dicts here and are checked by
    ``check_tools`` / ``normalise_input`` so each problem names its exact parameter."""

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: Bool | None = True
    temperature: Annotated[Float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[Float, Field(gt=0.0, le=1.0)] | None = None
    max_output_tokens: Count | None = None
    metadata: dict[str, str] | None = None
    text: dict[str, Any] | None = None
    store: Bool | None = True
    previous_response_id: str | None = None
    stream: Bool | None = False
    include: list[str] | None = None
    user: str | None = None
    # Refused when set: nothing here runs in the background or reasons apart from its output.
    background: Bool | None = None
    conversation: str | dict[str, Any] | None = None


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def check_request(req: ResponseCreateRequest) -> None:
    if req.background:
        raise InvalidRequestError(
            "'background' is not supported; run the request in the foreground", "background", "unsupported_parameter"
        )
    if req.conversation is not None:
        raise InvalidRequestError(
            "'conversation' is not supported; chain responses with previous_response_id",
            "conversation",
            "unsupported_parameter",
        )
    if isinstance(req.input, list) and not req.input and not req.previous_response_id:
        raise InvalidRequestError("'input' must not be empty", "input")


def check_tools(tools: list[dict] | None) -> list[dict]:
    """The tools with their types checked; function tools need a name."""
    out = []
    for i, t in enumerate(tools or []):
        kind = t.get("type")
        if kind == "function":
            name = t.get("name")
            if not isinstance(name, str) or not 1 <= len(name) <= 64:
                raise InvalidRequestError("a function tool needs a 'name' of 1 to 64 characters", f"tools[{i}].name")
            if name == CODE_INTERPRETER:
                raise InvalidRequestError(
                    f'\'{CODE_INTERPRETER}\' is the built-in tool\'s name; use {{"type": "code_interpreter"}}',
                    f"tools[{i}].name",
                )
            params = t.get("parameters")
            if params is not None and not isinstance(params, dict):
                raise InvalidRequestError("'parameters' must be a JSON schema object", f"tools[{i}].parameters")
        elif kind == "file_search":
            ids = t.get("vector_store_ids")
            if not isinstance(ids, list) or not ids or not all(isinstance(x, str) for x in ids):
                raise InvalidRequestError(
                    "a file_search tool needs 'vector_store_ids' (a list of ids)", f"tools[{i}].vector_store_ids"
                )
            k = t.get("max_num_results")
            if k is not None and (type(k) is not int or not 1 <= k <= 50):
                raise InvalidRequestError(
                    "max_num_results must be an integer in [1, 50]", f"tools[{i}].max_num_results"
                )
            for name in ("filters", "ranking_options"):
                if t.get(name):
                    raise InvalidRequestError(
                        f"file_search '{name}' are not supported", f"tools[{i}].{name}", "unsupported_parameter"
                    )
        elif kind not in BUILTIN_TYPES:
            raise InvalidRequestError(
                f"tool type {kind!r} is not supported; use function, {', '.join(BUILTIN_TYPES)}",
                f"tools[{i}].type",
                "unsupported_tool",
            )
        out.append(t)
    names = [t["name"] for t in out if t["type"] == "function"]
    if len(set(names)) != len(names):
        raise InvalidRequestError("function tool names must be unique", "tools")
    return out


def _text_of(content, param: str) -> str:
    """A message's content (a string or input_text/output_text parts) as one string."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError("content must be a string or a list of parts", param)
    texts = []
    for k, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind not in ("input_text", "output_text", "text") or not isinstance(p.get("text"), str):
            raise InvalidRequestError(
                f"content part type {kind!r} is not supported; use input_text or output_text with a 'text'",
                f"{param}[{k}]",
                "unsupported_content",
            )
        texts.append(p["text"])
    return "".join(texts)


def normalise_input(value: str | list[dict]) -> list[dict]:
    """Input items as stored and listed by ``/input_items``: each with an id and a type."""
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    out = []
    for i, item in enumerate(value):
        param = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise InvalidRequestError(
                    f"role {role!r} is not supported; use user, system, developer or assistant", f"{param}.role"
                )
            text = _text_of(item.get("content"), f"{param}.content")
            part = (
                {"type": "output_text", "text": text, "annotations": []}
                if role == "assistant"
                else {"type": "input_text", "text": text}
            )
            out.append(
                {
                    "id": item.get("id") or new_item_id("msg"),
                    "type": "message",
                    "role": role,
                    "status": "completed",
                    "content": [part],
                }
            )
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str):
                    raise InvalidRequestError(f"a function_call item needs a string '{key}'", f"{param}.{key}")
            out.append(
                {
                    "id": item.get("id") or new_item_id("fc"),
                    "type": "function_call",
                    "call_id": item["call_id"],
                    "name": item["name"],
                    "arguments": item["arguments"],
                    "status": "completed",
                }
            )
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise InvalidRequestError("a function_call_output item needs a string 'call_id'", f"{param}.call_id")
            output = item.get("output")
            output = output if isinstance(output, str) else _text_of(output, f"{param}.output")
            out.append(
                {
                    "id": item.get("id") or new_item_id("fco"),
                    "type": "function_call_output",
                    "call_id": item["call_id"],
                    "output": output,
                    "status": "completed",
                }
            )
        elif (
            kind in ("code_interpreter_call", "file_search_call", "web_search_call")
            and isinstance(item.get("id"), str)
            and isinstance(item.get("outputs") or [], list)
        ):
            out.append(item)  # an earlier response's built-in call, sent back by the client
        else:
            raise InvalidRequestError(
                f"input item type {kind!r} is not supported; use message, function_call or function_call_output",
                f"{param}.type",
                "unsupported_input",
            )
    return out


def code_logs(outputs) -> str:
    return "\n".join(str(o.get("logs", "")) for o in outputs or [] if isinstance(o, dict))


def items_to_messages(items: list[dict]) -> list[dict]:
    """Chat messages for the chat format: consecutive calls become one assistant turn with
    several ``tool_calls``; each output a ``tool`` message answering its call id."""
    msgs: list[dict] = []

    def call(call_id: str, name: str, arguments: str) -> None:
        entry = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        last = msgs[-1] if msgs else None
        if last and last["role"] == "assistant" and last.get("tool_calls") and not last["content"]:
            last["tool_calls"].append(entry)
        else:
            msgs.append({"role": "assistant", "content": "", "tool_calls": [entry]})

    for it in items:
        kind = it["type"]
        if kind == "message":
            msgs.append({"role": it["role"], "content": "".join(p.get("text", "") for p in it["content"])})
        elif kind == "function_call":
            call(it["call_id"], it["name"], it["arguments"])
        elif kind == "function_call_output":
            msgs.append({"role": "tool", "tool_call_id": it["call_id"], "content": it["output"]})
        elif kind == "code_interpreter_call":
            call(it["id"], CODE_INTERPRETER, json.dumps({"code": it.get("code") or ""}, ensure_ascii=False))
            msgs.append({"role": "tool", "tool_call_id": it["id"], "content": code_logs(it.get("outputs"))})
        # file_search_call / web_search_call: their passages were a system message of that turn only
    return msgs


def chat_tools(tools: list[dict]) -> list[dict]:
    """Function tools (and the code interpreter as a function) in chat-completions shape."""
    from lhama.tools.builtin import CODE_SCHEMA

    out = []
    for t in tools:
        if t["type"] == "function":
            fn = {"name": t["name"], "parameters": t.get("parameters") or {"type": "object", "properties": {}}}
            if t.get("description"):
                fn["description"] = t["description"]
            out.append({"type": "function", "function": fn})
        elif t["type"] == "code_interpreter":
            out.append(
                {
                    "type": "function",
                    "function": {
                        "name": CODE_INTERPRETER,
                        "parameters": CODE_SCHEMA,
                        "description": "Run Python code in a sandbox; its printed output comes back.",
                    },
                }
            )
    return out


def chat_tool_choice(choice, tools: list[dict]):
    """``tool_choice`` in chat-completions shape (hosted-tool choices name their function)."""
    if choice is None or isinstance(choice, str):
        return choice
    kind = choice.get("type")
    if kind == "function":
        if not isinstance(choice.get("name"), str):
            raise InvalidRequestError("a function tool_choice needs a 'name'", "tool_choice.name")
        return {"type": "function", "function": {"name": choice["name"]}}
    if kind == "code_interpreter":
        return {"type": "function", "function": {"name": CODE_INTERPRETER}}
    if kind in ("file_search", "web_search", "web_search_preview"):
        return "auto"  # these run on the server before the model writes
    if kind == "allowed_tools":
        return choice.get("mode", "auto")
    raise InvalidRequestError(f"tool_choice type {kind!r} is not supported", "tool_choice.type", "unsupported_tool")


def response_format(text: dict | None) -> dict | None:
    """``text.format`` as a chat ``response_format`` (json_schema keeps its name and schema)."""
    fmt = (text or {}).get("format")
    if fmt is not None and not isinstance(fmt, dict):
        raise InvalidRequestError("text.format must be an object with a 'type'", "text.format")
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {
                "name": fmt.get("name", "response"),
                "schema": fmt.get("schema") or {},
                "strict": fmt.get("strict"),
            },
        }
    raise InvalidRequestError(
        f"text.format type {fmt.get('type')!r} is not supported; use text, json_object or json_schema",
        "text.format.type",
    )


def message_item(
    text: str, annotations: list[dict] | None = None, item_id: str | None = None, status: str = "completed"
) -> dict:
    return {
        "id": item_id or new_item_id("msg"),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": annotations or [], "logprobs": []}],
    }


def function_call_item(name: str, arguments: str, call_id: str) -> dict:
    return {
        "id": new_item_id("fc"),
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def usage(input_tokens: int, output_tokens: int, cached_tokens: int) -> dict:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def response_object(
    rid: str,
    req: ResponseCreateRequest,
    *,
    status: str,
    output: list[dict],
    created_at: int,
    usage_: dict | None = None,
    error: dict | None = None,
    incomplete: str | None = None,
    defaults: SamplingDefaults = REQUEST_SAMPLING_DEFAULTS,
) -> dict:
    return {
        "id": rid,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": req.model,
        "output": output,
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "reasoning": None,
        "store": req.store is not False,
        "temperature": defaults.temperature if req.temperature is None else req.temperature,
        "text": req.text or {"format": {"type": "text"}},
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": req.tools or [],
        "top_p": defaults.top_p if req.top_p is None else req.top_p,
        "truncation": "disabled",
        "usage": usage_,
        "user": req.user,
        "metadata": req.metadata or {},
        "completed_at": int(time.time()) if status == "completed" else None,
    }
