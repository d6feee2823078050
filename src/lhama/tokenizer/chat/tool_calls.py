"""Turn the text of an assistant turn into OpenAI-style tool calls, for every Llama format.

Only a turn that *is* a call becomes one (the whole text, after the optional python tag);
prose that merely mentions JSON or a function stays prose.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from typing import Any

BUILTIN_SEARCH_TOOLS = ("brave_search", "wolfram_alpha")
BUILTIN_TOOLS = BUILTIN_SEARCH_TOOLS + ("code_interpreter",)
_BUILTIN_CALL = re.compile(r'^\s*(brave_search|wolfram_alpha)\.call\(query="(.*)"\)\s*$', re.S)
_FUNCTION_TAG = re.compile(r"^\s*<function=([\w.\-]+)>(.*?)</function>\s*$", re.S)


def make_call(name: str, arguments: dict[str, Any]) -> dict:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def call_arguments(call: dict) -> dict:
    args = call.get("function", call).get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            from lhama.errors import ChatFormatError

            raise ChatFormatError(f"tool call arguments are not valid JSON: {args[:200]!r}") from None
    return args


def call_name(call: dict) -> str:
    return call.get("function", call).get("name") or ""


def _json_call(text: str) -> dict | None:
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("parameters", obj.get("arguments", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return make_call(obj["name"], args) if isinstance(args, dict) else None


def _pythonic_calls(text: str) -> list[dict] | None:
    """Llama 3.2's ``[f(a=1), g(b="x")]``: literal keyword arguments only, parsed without eval."""
    s = text.strip()
    if not (s.startswith("[") and s.endswith("]")):
        return None
    try:
        node = ast.parse(s, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, ast.List) or not node.elts:
        return None
    calls = []
    for el in node.elts:
        if not (isinstance(el, ast.Call) and isinstance(el.func, (ast.Name, ast.Attribute)) and not el.args):
            return None
        name = ast.unparse(el.func)
        try:
            args = {kw.arg: ast.literal_eval(kw.value) for kw in el.keywords if kw.arg}
        except ValueError:
            return None
        calls.append(make_call(name, args))
    return calls


def parse_tool_calls(text: str, *, python_tag: bool = False) -> list[dict]:
    """Tool calls in an assistant turn's text, or [] when the turn is prose."""
    body = text.strip()
    if python_tag:
        m = _BUILTIN_CALL.match(body)
        if m:
            return [make_call(m.group(1), {"query": m.group(2)})]
        call = _json_call(body)
        if call:
            return [call]
        return [make_call("code_interpreter", {"code": text})]
    m = _FUNCTION_TAG.match(body)
    if m:
        try:
            args = json.loads(m.group(2)) if m.group(2).strip() else {}
        except json.JSONDecodeError:
            return []
        return [make_call(m.group(1), args)] if isinstance(args, dict) else []
    m = _BUILTIN_CALL.match(body)
    if m:
        return [make_call(m.group(1), {"query": m.group(2)})]
    call = _json_call(body)
    if call:
        return [call]
    return _pythonic_calls(body) or []
