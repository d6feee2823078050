"""Tools for chat templates that know nothing of tools (SmolLM2's, many ChatML ones).

Such a template would silently drop ``tools``, assistant ``tool_calls`` and fail on
``role: tool``. Rather than ignore the request, lhama writes the tools into the system message
in the Hermes / ChatML convention these models saw in training (definitions inside
``<tools></tools>``, calls as ``<tool_call>{"name", "arguments"}</tool_call>``), turns past calls
into that text, and tool results into user turns wrapped in ``<tool_response>``. The reply is
parsed by ``JinjaChatFormat.decode_assistant``, which already reads ``<tool_call>`` blocks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from lhama.tools.builtin import CODE_SCHEMA, QUERY_SCHEMA

_BUILTIN_FUNCTIONS = {
    "code_interpreter": ("Run Python code and see what it prints.", CODE_SCHEMA),
    "brave_search": ("Search the web.", QUERY_SCHEMA),
    "wolfram_alpha": ("Ask Wolfram Alpha (math, science, units).", QUERY_SCHEMA),
}

TOOLS_INTRO = (
    "You can call functions to help answer the user. Their signatures are listed inside <tools></tools>:\n<tools>\n"
)
TOOLS_OUTRO = (
    "</tools>\n\nTo call a function, reply with one JSON object per call, each inside "
    '<tool_call></tool_call> tags:\n<tool_call>\n{"name": "function name", "arguments": '
    '{"argument": "value"}}\n</tool_call>'
)


def needs_inlining(template_source: str, messages: Sequence[dict], tools: Sequence[dict] | None) -> bool:
    if tools and "tools" not in template_source:
        return True
    uses_tools = any(m.get("tool_calls") or m.get("role") in ("tool", "ipython") for m in messages)
    return uses_tools and "tool_calls" not in template_source


def function_specs(tools: Sequence[dict]) -> list[dict]:
    """OpenAI tool entries with built-ins (``{"type": "code_interpreter"}``) spelled as functions."""
    out = []
    for t in tools or []:
        fn = t.get("function") if isinstance(t.get("function"), dict) else None
        name = t.get("type") if fn is None else fn.get("name")
        if name in _BUILTIN_FUNCTIONS and (fn is None or not fn.get("parameters")):
            desc, schema = _BUILTIN_FUNCTIONS[name]
            fn = {"name": name, "description": desc, "parameters": schema}
        if fn is not None:
            out.append({"type": "function", "function": fn})
    return out


def _call_text(call: dict) -> str:
    fn = call.get("function", call)
    args: Any = fn.get("arguments", fn.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            pass  # keep the string: the history shows what was sent
    return (
        "<tool_call>\n"
        + json.dumps({"name": fn.get("name", ""), "arguments": args}, ensure_ascii=False)
        + "\n</tool_call>"
    )


def inline_tools(messages: Sequence[dict], tools: Sequence[dict] | None) -> list[dict]:
    """The messages with tools, calls and results written as plain text turns."""
    out: list[dict] = []
    for m in messages:
        m = dict(m)
        content = m.get("content")
        if not isinstance(content, str):
            content = (
                ""
                if content is None
                else (json.dumps(content, ensure_ascii=False) if isinstance(content, dict) else content)
            )
        if m.get("role") in ("tool", "ipython"):
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
            continue
        calls = m.pop("tool_calls", None) or []
        if calls:
            content = "\n".join(([content] if content else []) + [_call_text(c) for c in calls])
        m["content"] = content
        out.append(m)
    specs = function_specs(tools or [])
    if specs:
        block = TOOLS_INTRO + "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in specs) + TOOLS_OUTRO
        if out and out[0].get("role") == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{block}" if out[0]["content"] else block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out
