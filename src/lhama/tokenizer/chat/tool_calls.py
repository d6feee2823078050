"""Turn the text of an assistant turn into OpenAI-style tool calls, for every Llama format.

Only a turn that *is* a call becomes one (the whole text, after the optional python tag); prose
that merely mentions JSON or a function stays prose. Recognised, as Llama models write them:
``brave_search.call(query="...")`` (built-in search), JSON ``{"name": .., "parameters": ..}``
(one object, a list, or several separated by ``;``/newlines), ``<function=NAME>{json}</function>``,
and Llama 3.2's pythonic ``[f(a=1), g(b="x")]``. Code after ``<|python_tag|>`` that is none of
these is a ``code_interpreter`` call.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from typing import Any

from lhama.errors import ChatFormatError

BUILTIN_SEARCH_TOOLS = ("brave_search", "wolfram_alpha")
BUILTIN_TOOLS = BUILTIN_SEARCH_TOOLS + ("code_interpreter",)
_BUILTIN_CALL = re.compile(r'^\s*(brave_search|wolfram_alpha)\.call\(query="(.*)"\)\s*$', re.S)
_FUNCTION_TAG = re.compile(r"\s*<function=([\w.\-]+)>(.*?)</function>\s*", re.S)


def make_call(name: str, arguments: dict[str, Any]) -> dict:
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def call_name(call: dict) -> str:
    return (call.get("function") or call).get("name") or ""


def call_arguments(call: dict) -> dict:
    """A call's arguments as a dict, whether given as a JSON string (OpenAI) or a dict."""
    fn = call.get("function") or call
    args = fn.get("arguments", fn.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise ChatFormatError(f"tool call arguments are not valid JSON: {args[:200]!r}") from None
    if not isinstance(args, dict):
        raise ChatFormatError(f"tool call arguments must be a JSON object, got {type(args).__name__}")
    return args


def _call_from_object(obj: Any) -> dict | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("parameters", obj.get("arguments", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    name = obj["name"]
    if name in BUILTIN_SEARCH_TOOLS and "query" not in args and len(args) == 1:
        # Llama 3.1 sometimes calls a built-in search tool in the JSON format; llama-models takes
        # the one argument as the query.
        args = {"query": next(iter(args.values()))}
    return make_call(name, args)


def _json_calls(text: str) -> list[dict] | None:
    """One JSON call, a JSON list of calls, or several objects separated by ';' or whitespace."""
    decoder, objs, i, s = json.JSONDecoder(), [], 0, text.strip()
    while i < len(s):
        try:
            obj, i = decoder.raw_decode(s, i)
        except json.JSONDecodeError:
            return None
        objs.extend(obj if isinstance(obj, list) else [obj])
        while i < len(s) and (s[i].isspace() or s[i] == ";"):
            i += 1
    calls = [_call_from_object(o) for o in objs]
    return calls if calls and all(calls) else None


def _function_tag_calls(text: str) -> list[dict] | None:
    calls, pos = [], 0
    for m in _FUNCTION_TAG.finditer(text):
        if m.start() != pos:
            return None
        try:
            args = json.loads(m.group(2)) if m.group(2).strip() else {}
        except json.JSONDecodeError:
            return None
        if not isinstance(args, dict):
            return None
        calls.append(make_call(m.group(1), args))
        pos = m.end()
    return calls if calls and pos == len(text) else None


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
        try:
            args = {kw.arg: ast.literal_eval(kw.value) for kw in el.keywords if kw.arg}
        except ValueError:
            return None
        calls.append(make_call(ast.unparse(el.func), args))
    return calls


def parse_tool_calls(text: str, *, python_tag: bool = False) -> list[dict]:
    """Tool calls in an assistant turn's text, or [] when the turn is prose. ``python_tag``: the
    text followed ``<|python_tag|>``, so anything that is not a known call form is code."""
    body = text.strip()
    m = _BUILTIN_CALL.match(body)
    if m:
        return [make_call(m.group(1), {"query": m.group(2)})]
    for parse in (_function_tag_calls, _json_calls, _pythonic_calls):
        calls = parse(body) if body else None
        if calls:
            return calls
    if python_tag and body:
        return [make_call("code_interpreter", {"code": text})]
    return []
