"""Tools an agent (or a server client) can call: a name, a JSON schema for the arguments, and
a Python callable that runs it.

Registering a custom tool is one decorator::

    from lhama.tools import tool

    @tool
    def get_weather(city: str, unit: str = "celsius") -> dict:
        "Current weather for a city."
        ...

The schema comes from the signature (str/int/float/bool/list/dict, defaults make a parameter
optional) and the description from the docstring; pass ``parameters=`` for a hand-written
schema. Arguments are validated against the schema before the function runs; what it returns
is given to the model as text (JSON for anything that is not a string).
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from lhama.errors import ToolError

BUILTIN_NAMES = ("brave_search", "wolfram_alpha", "code_interpreter")
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict
    fn: Callable[..., Any] = field(repr=False, compare=False)

    @property
    def builtin(self) -> bool:
        """Llama's built-in tools are named in the system prompt and called in their own syntax."""
        return self.name in BUILTIN_NAMES

    def spec(self) -> dict:
        """The OpenAI ``tools`` entry (what ``Llama3ChatFormat.encode_dialog`` renders)."""
        if self.builtin:
            return {"type": self.name}
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def validate(self, arguments: dict) -> None:
        if not isinstance(arguments, dict):
            raise ToolError(f"{self.name}: arguments must be a JSON object, got {type(arguments).__name__}")
        try:
            jsonschema.validate(arguments, self.parameters)
        except jsonschema.ValidationError as e:
            raise ToolError(f"{self.name}: invalid arguments: {e.message}") from None

    def __call__(self, arguments: dict) -> str:
        """Run the tool; the result as the text the model will read."""
        self.validate(arguments)
        out = self.fn(**arguments)
        return out if isinstance(out, str) else json.dumps(out, ensure_ascii=False, default=str)


def _schema_for(annotation: Any) -> dict:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _schema_for(args[0]) if len(args) == 1 else {}
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(annotation))}
    base = origin or annotation
    if base in _JSON_TYPES:
        schema = {"type": _JSON_TYPES[base]}
        if base is list and typing.get_args(annotation):
            schema["items"] = _schema_for(typing.get_args(annotation)[0])
        return schema
    return {}  # unannotated or exotic: accept any JSON value


def schema_from_signature(fn: Callable) -> dict:
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to no types
        hints = {}
    props, required = {}, []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        props[p.name] = _schema_for(hints.get(p.name, p.annotation if p.annotation is not p.empty else None))
        if p.default is p.empty:
            required.append(p.name)
        else:
            props[p.name]["default"] = p.default
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def tool(
    fn: Callable | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: dict | None = None,
):
    """Make a ``Tool`` from a function (usable bare, ``@tool``, or with options, ``@tool(name=...)``)."""

    def wrap(f: Callable) -> Tool:
        tool_name = name or f.__name__
        if not tool_name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise ToolError(f"tool name {tool_name!r}: use letters, digits, '_', '-' and '.' only")
        schema = parameters if parameters is not None else schema_from_signature(f)
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            raise ToolError(f"tool {tool_name}: its parameters are not a valid JSON schema: {e.message}") from None
        desc = description if description is not None else inspect.cleandoc(f.__doc__ or "")
        return Tool(tool_name, desc, schema, f)

    return wrap(fn) if fn is not None else wrap
