"""Tools and structured output for chat requests: what the prompt shows, which grammar (if
any) constrains the output, and how tool calls come back.

``tool_choice``:
- ``none``: tools are not shown to the model and nothing is parsed as a call.
- ``auto``: tools are rendered by the chat format; the reply goes through the chat format's
  ``decode_assistant``, which recognises its own tool-call syntax.
- ``required`` / a named function: the output is constrained to
  ``{"name": <one of the tools>, "parameters": <that tool's JSON schema>}`` - Llama 3's own
  custom-tool-call JSON - so a call is guaranteed and its arguments validate.
``response_format`` json_object / json_schema constrains the content the same way.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from lhama.errors import SamplingError
from lhama.openai.schemas import (
    ChatCompletionRequest,
    NamedToolChoice,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
)

_ANY_OBJECT = {"type": "object"}


@dataclass
class OutputPlan:
    tools: list[dict] | None  # what encode_dialog renders (None: no tools in the prompt)
    grammar: str | None  # llguidance grammar constraining the output
    forced_tool: bool  # output is a {"name", "parameters"} call (required / named)
    parse_tools: bool  # run decode_assistant on the reply (tool_choice auto)


def messages_as_dicts(req: ChatCompletionRequest) -> list[dict]:
    """OpenAI-style message dicts for the chat format; text parts joined into one string."""
    out = []
    for m in req.messages:
        content = m.content
        if isinstance(content, list):
            content = "".join(p.text for p in content)
        d: dict = {"role": m.role, "content": content if content is not None else ""}
        if m.name is not None:
            d["name"] = m.name
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            d["tool_calls"] = [
                {
                    "id": c.id or new_call_id(),
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": c.function.arguments},
                }
                for c in m.tool_calls
            ]
        out.append(d)
    return out


def _tool_call_schema(tools) -> dict:
    variants = []
    from lhama.tools.builtin import BUILTIN_SCHEMAS

    for t in tools:
        # A built-in given without parameters (code_interpreter, brave_search...) still has its own.
        params = t.function.parameters or BUILTIN_SCHEMAS.get(t.function.name) or _ANY_OBJECT
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"const": t.function.name}, "parameters": params},
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
        )
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def plan_output(req: ChatCompletionRequest, compiler) -> OutputPlan:
    tools = req.tools or []
    choice = req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none")
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise SamplingError("tools", "tool names must be unique")
    if choice != "none" and not tools:
        raise SamplingError("tool_choice", "needs 'tools'")
    rendered = [t.model_dump(exclude_none=True) for t in tools] or None
    if isinstance(choice, NamedToolChoice):
        chosen = [t for t in tools if t.function.name == choice.function.name]
        if not chosen:
            raise SamplingError(
                "tool_choice", f"names '{choice.function.name}', which is not in 'tools' ({', '.join(names)})"
            )
        return OutputPlan(rendered, compiler.grammar_for_schema(_tool_call_schema(chosen), "tools"), True, False)
    if choice == "required":
        return OutputPlan(rendered, compiler.grammar_for_schema(_tool_call_schema(tools), "tools"), True, False)
    rf = req.response_format
    grammar = None
    if isinstance(rf, ResponseFormatJSONObject):
        grammar = compiler.grammar_for_schema(_ANY_OBJECT, "response_format")
    elif isinstance(rf, ResponseFormatJSONSchema):
        grammar = compiler.grammar_for_schema(rf.json_schema.schema_ or _ANY_OBJECT, "response_format")
    if choice == "none":
        return OutputPlan(None, grammar, False, False)
    return OutputPlan(rendered, grammar, False, True)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def forced_call(text: str) -> list[dict]:
    """The tool call of a constrained ``{"name", "parameters"}`` output (empty if it was cut short)."""
    try:
        obj = json.loads(text)
    except ValueError:
        return []
    return [
        {
            "id": new_call_id(),
            "type": "function",
            "function": {"name": obj["name"], "arguments": json.dumps(obj["parameters"], ensure_ascii=False)},
        }
    ]


def normalise_calls(calls) -> list[dict]:
    """Tool calls from ``decode_assistant`` in OpenAI's shape: an id, type, and string arguments."""
    out = []
    for c in calls or []:
        fn = c.get("function", c)
        args = fn.get("arguments", fn.get("parameters", {}))
        if not isinstance(args, str):
            args = json.dumps(args, ensure_ascii=False)
        out.append(
            {
                "id": c.get("id") or new_call_id(),
                "type": "function",
                "function": {"name": fn.get("name", ""), "arguments": args},
            }
        )
    return out


def final_message(plan: OutputPlan, chat_format, text: str, token_ids: list[int], stop_reason) -> tuple[dict, bool]:
    """(assistant message, whether it is a tool call) for a finished choice."""
    if plan.forced_tool:
        calls = forced_call(text)
        if calls:
            return {"role": "assistant", "content": None, "tool_calls": calls}, True
        return {"role": "assistant", "content": text}, False
    if plan.parse_tools and not isinstance(stop_reason, str):
        msg = chat_format.decode_assistant(token_ids)
        calls = normalise_calls(msg.get("tool_calls"))
        if calls:
            return {"role": "assistant", "content": msg.get("content") or None, "tool_calls": calls}, True
    return {"role": "assistant", "content": text}, False
