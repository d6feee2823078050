"""Llama 3.x chat format: header-framed messages, ipython tool results, python-tag tool calls.

    <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n...<|eot_id|>
    <|start_header_id|>user<|end_header_id|>\n\n...<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\n\n

Built-in tool calls are ``<|python_tag|>brave_search.call(query="...")`` or ``<|python_tag|>``
+ code, ended by ``<|eom_id|>`` ("run the tool, then continue"); a finished turn ends with
``<|eot_id|>``. Custom tools are JSON definitions in the first user message and JSON calls.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Sequence

from lhama.errors import ChatFormatError
from lhama.tokenizer.base import Message
from lhama.tokenizer.chat.tool_calls import BUILTIN_SEARCH_TOOLS, BUILTIN_TOOLS, call_arguments, call_name, parse_tool_calls

ROLES = {"system": "system", "user": "user", "assistant": "assistant", "ipython": "ipython", "tool": "ipython"}

# The wording Llama 3.1 was trained with for JSON tool calling (llama-models prompt_format.md).
CUSTOM_TOOLS_PREAMBLE = (
    "Given the following functions, please respond with a JSON for a function call with its proper "
    "arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. '
    "Do not use variables.\n\n"
)


def content_text(content) -> str:
    """OpenAI content may be a string or a list of parts; only text parts are supported."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and part.get("type") == "text":
                out.append(str(part.get("text", "")))
            else:
                raise ChatFormatError(f"unsupported content part {part!r}: only text is supported")
        return "".join(out)
    if isinstance(content, dict):
        return json.dumps(content, ensure_ascii=False)
    raise ChatFormatError(f"message content must be a string or a list of text parts, got {type(content).__name__}")


def split_tools(tools: Sequence[dict] | None) -> tuple[list[str], list[dict]]:
    """OpenAI ``tools`` into built-in tool names and custom function definitions."""
    builtin, custom = [], []
    for t in tools or []:
        name = t.get("type") if t.get("type") in BUILTIN_TOOLS else (t.get("function") or t).get("name")
        if name in BUILTIN_TOOLS and "parameters" not in (t.get("function") or {}):
            builtin.append(name)
        else:
            custom.append(t.get("function", t))
    return builtin, custom


def tools_system_header(builtin: Sequence[str], today: _dt.date | None = None) -> str:
    """The lines that enable tools: ``Environment: ipython`` (code interpreter), ``Tools: ...``."""
    today = today or _dt.date.today()
    lines = ["Environment: ipython"]
    search = [t for t in builtin if t in BUILTIN_SEARCH_TOOLS]
    if search:
        lines.append("Tools: " + ", ".join(search))
    lines += ["Cutting Knowledge Date: December 2023", f"Today Date: {today.strftime('%d %B %Y')}"]
    return "\n".join(lines) + "\n\n"


class Llama3ChatFormat:
    name = "llama3"

    def __init__(self, tokenizer, today: _dt.date | None = None):
        sp = tokenizer.special_tokens
        missing = [t for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>") if t not in sp]
        if missing:
            raise ChatFormatError(f"the Llama 3 chat format needs the tokens {missing}, which this vocabulary lacks")
        self.tokenizer = tokenizer
        self.today = today
        self.start_header, self.end_header = sp["<|start_header_id|>"], sp["<|end_header_id|>"]
        self.eot = sp["<|eot_id|>"]
        self.eom = sp.get("<|eom_id|>", self.eot)
        self.python_tag = sp.get("<|python_tag|>")
        self.bos = sp.get("<|begin_of_text|>", tokenizer.bos_id)
        self.stop_ids = frozenset({self.eot, self.eom, tokenizer.eos_id})

    def _text(self, s: str) -> list[int]:
        return self.tokenizer.encode(s)

    def encode_header(self, role: str) -> list[int]:
        return [self.start_header, *self._text(role), self.end_header, *self._text("\n\n")]

    def encode_message(self, m: Message) -> list[int]:
        role = m.get("role")
        if role not in ROLES:
            raise ChatFormatError(f"unknown role {role!r}; expected one of system, user, assistant, tool, ipython")
        ids = self.encode_header(ROLES[role])
        text = content_text(m.get("content"))
        calls = m.get("tool_calls") or []
        if role != "assistant":
            return ids + self._text(text) + [self.eot]
        builtin = bool(calls) and call_name(calls[0]) in BUILTIN_TOOLS
        if builtin and self.python_tag is not None:
            ids.append(self.python_tag)
        ids += self._text(text)
        for c in calls:
            ids += self._text(self.render_call(c))
        stop = m.get("stop_reason")
        eom = stop in ("end_of_message", "eom") if stop else builtin
        return ids + [self.eom if eom else self.eot]

    @staticmethod
    def render_call(call: dict) -> str:
        name, args = call_name(call), call_arguments(call)
        if name in BUILTIN_SEARCH_TOOLS:
            return f'{name}.call(query="{args.get("query", "")}")'
        if name == "code_interpreter":
            return str(args.get("code", ""))
        return json.dumps({"type": "function", "name": name, "parameters": args})

    def encode_dialog(self, messages: Sequence[Message], *, tools: Sequence[dict] | None = None,
                      add_generation_prompt: bool = True) -> list[int]:
        messages = [dict(m) for m in messages]
        if not messages:
            raise ChatFormatError("messages must not be empty")
        if tools:
            messages = self._with_tools(messages, tools)
        ids = [self.bos] if self.bos is not None else []
        for m in messages:
            ids += self.encode_message(m)
        if add_generation_prompt:
            ids += self.encode_header("assistant")
        return ids

    def _with_tools(self, messages: list[dict], tools: Sequence[dict]) -> list[dict]:
        builtin, custom = split_tools(tools)
        header = tools_system_header(builtin, self.today) if (builtin or custom) else ""
        if messages[0].get("role") == "system":
            messages[0]["content"] = header + content_text(messages[0].get("content"))
        else:
            messages.insert(0, {"role": "system", "content": header.rstrip("\n")})
        if custom:
            first_user = next((m for m in messages if m.get("role") == "user"), None)
            if first_user is None:
                raise ChatFormatError("custom tools are described in the first user message, but there is none")
            defs = "\n\n".join(json.dumps({"type": "function", "function": f}, indent=4) for f in custom)
            first_user["content"] = CUSTOM_TOOLS_PREAMBLE + defs + "\n\n" + content_text(first_user.get("content"))
        return messages

    def decode_assistant(self, ids: Sequence[int]) -> Message:
        ids = list(ids)
        stop_reason = "out_of_tokens"
        if ids and ids[-1] in (self.eot, self.tokenizer.eos_id):
            stop_reason, ids = "end_of_turn", ids[:-1]
        elif ids and ids[-1] == self.eom:
            stop_reason, ids = "end_of_message", ids[:-1]
        tagged = bool(ids) and self.python_tag is not None and ids[0] == self.python_tag
        text = self.tokenizer.decode(ids[1:] if tagged else ids, skip_special=True)
        calls = parse_tool_calls(text, python_tag=tagged)
        msg: Message = {"role": "assistant", "content": None if calls else text, "stop_reason": stop_reason}
        if calls:
            msg["tool_calls"] = calls
        return msg
