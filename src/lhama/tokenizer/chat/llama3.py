"""Llama 3.x chat format: header-framed messages, ipython tool results, python-tag tool calls.

    <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n...<|eot_id|>
    <|start_header_id|>user<|end_header_id|>\\n\\n...<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n

Ids are those of ``llama_models.llama3.chat_format.ChatFormat.encode_dialog_prompt``: every text
piece (header role, content part, tool call) is encoded on its own, ``<|python_tag|>`` precedes a
code-interpreter call, and an assistant message ends with ``<|eom_id|>`` ("run the tool, then
continue") when its stop reason says so, else ``<|eot_id|>``. OpenAI-style messages carry no stop
reason; for them a built-in tool call ends with eom, as the model wrote it.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from typing import Any

from lhama.errors import ChatFormatError
from lhama.tokenizer.base import Message
from lhama.tokenizer.chat.tool_calls import (
    BUILTIN_SEARCH_TOOLS,
    BUILTIN_TOOLS,
    call_arguments,
    call_name,
    parse_tool_calls,
)

ROLES = {"system": "system", "user": "user", "assistant": "assistant", "ipython": "ipython", "tool": "ipython"}
STOP_REASONS = {"end_of_message": True, "eom": True, "end_of_turn": False, "eot": False}
TOOL_PROMPT_FORMATS = ("json", "function_tag", "python_list")
KNOWLEDGE_CUTOFF = "December 2023"

# Wording of the tool prompts in llama-models' prompt_format.md (Llama 3.1) and
# text_prompt_format.md (Llama 3.2), which is what the models were tuned on.
JSON_TOOLS_PREAMBLE = (
    "Answer the user's question by making use of the following functions if needed.\n"
    "If none of the function can be used, please say so.\n"
    "Here is a list of functions in JSON format:\n"
)
JSON_TOOLS_CLOSING = "\nReturn function calls in JSON format."
FUNCTION_TAG_PREAMBLE = "You have access to the following functions:\n\n"
FUNCTION_TAG_CLOSING = (
    "\nThink very carefully before calling functions.\n"
    "If you choose to call a function ONLY reply in the following format with no prefix or suffix:\n\n"
    '<function=example_function_name>{"example_name": "example_value"}</function>\n\n'
    "Reminder:\n"
    "- If looking for real time information use relevant functions before falling back to brave_search\n"
    "- Function calls MUST follow the specified format, start with <function= and end with </function>\n"
    "- Required parameters MUST be specified\n"
    "- Only call one function at a time\n"
    "- Put the entire function call reply on one line"
)
PYTHON_LIST_PREAMBLE = (
    "You are an expert in composing functions. You are given a question and a set of possible functions.\n"
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose.\n"
    "If none of the function can be used, point it out. If the given question lacks the parameters required "
    "by the function,\nalso point it out. You should only return the function call in tools call sections.\n\n"
    "If you decide to invoke any of the function(s), you MUST put it in the format of "
    "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]\n"
    "You SHOULD NOT include any other text in the response.\n\n"
    "Here is a list of functions in JSON format that you can invoke.\n\n"
)


def content_parts(content: Any) -> list[str]:
    """OpenAI content (a string, a list of text parts, or JSON for tool results) as text parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and part.get("type") == "text":
                out.append(str(part.get("text", "")))
            else:
                raise ChatFormatError(f"unsupported content part {part!r}: only text is supported")
        return out
    if isinstance(content, dict):
        return [json.dumps(content, ensure_ascii=False)]
    raise ChatFormatError(f"message content must be a string or a list of text parts, got {type(content).__name__}")


def content_text(content: Any) -> str:
    return "".join(content_parts(content))


def split_tools(tools: Sequence[dict] | None) -> tuple[list[str], list[dict]]:
    """OpenAI ``tools`` into built-in tool names and custom function definitions. A built-in is
    ``{"type": "brave_search"}`` (or wolfram_alpha / code_interpreter), or a function of that
    name without parameters."""
    builtin, custom = [], []
    for t in tools or []:
        if not isinstance(t, dict):
            raise ChatFormatError(f"each tool must be an object, got {t!r}")
        fn = t.get("function") if isinstance(t.get("function"), dict) else None
        if t.get("type") in BUILTIN_TOOLS:
            builtin.append(t["type"])
        elif fn is not None and fn.get("name") in BUILTIN_TOOLS and not fn.get("parameters"):
            builtin.append(fn["name"])
        elif fn is not None or "name" in t:
            custom.append(fn if fn is not None else t)
        else:
            raise ChatFormatError(f"a tool needs a 'function' with a 'name' (or a built-in type): {t!r}")
    return builtin, custom


def tools_system_prompt(
    builtin: Sequence[str] = (), *, custom: bool = False, system: str = "", today: _dt.date | None = None
) -> str:
    """The system message that enables tools, as in llama-models' prompt formats:
    ``Environment: ipython`` (turns on the code interpreter), ``Tools: brave_search, ...``, the
    knowledge cutoff and today's date, then the user's own system text."""
    today = today or _dt.date.today()
    lines = []
    if builtin or custom:
        lines.append("Environment: ipython")
        search = [t for t in builtin if t in BUILTIN_SEARCH_TOOLS]
        # Without search tools the documented prompts keep the Tools line, empty.
        lines.append("Tools: " + ", ".join(search) if search else "")
    lines += [f"Cutting Knowledge Date: {KNOWLEDGE_CUTOFF}", f"Today Date: {today.strftime('%d %B %Y')}"]
    text = "".join(line + "\n" for line in lines)
    return text + (f"\n{system}\n" if system else "")


def custom_tools_prompt(functions: Sequence[dict], tool_prompt_format: str = "json") -> str:
    """The text that describes custom functions (a user message for json / function_tag, the
    system message for Llama 3.2's python_list)."""
    if tool_prompt_format == "json":
        defs = "".join(json.dumps({"type": "function", "function": f}, indent=4) + "\n" for f in functions)
        return JSON_TOOLS_PREAMBLE + defs + JSON_TOOLS_CLOSING
    if tool_prompt_format == "function_tag":
        defs = "".join(
            f"Use the function '{f['name']}' to '{f.get('description', '')}':\n{json.dumps(f)}\n" for f in functions
        )
        return FUNCTION_TAG_PREAMBLE + defs + FUNCTION_TAG_CLOSING
    if tool_prompt_format == "python_list":
        return PYTHON_LIST_PREAMBLE + json.dumps(list(functions), indent=4)
    raise ChatFormatError(f"unknown tool prompt format {tool_prompt_format!r}; use one of {TOOL_PROMPT_FORMATS}")


class Llama3ChatFormat:
    name = "llama3"

    def __init__(
        self,
        tokenizer,
        *,
        today: _dt.date | None = None,
        tool_prompt_format: str = "json",
        python_tag_for_search: bool = False,
    ):
        """``python_tag_for_search``: put ``<|python_tag|>`` before brave_search / wolfram_alpha
        calls in the history, as the model writes them (prompt_format.md); llama-models' encoder
        leaves it out, so by default so do we."""
        sp = tokenizer.special_tokens
        missing = [t for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>") if t not in sp]
        if missing:
            raise ChatFormatError(f"the Llama 3 chat format needs the tokens {missing}, which this vocabulary lacks")
        if tool_prompt_format not in TOOL_PROMPT_FORMATS:
            raise ChatFormatError(
                f"unknown tool prompt format {tool_prompt_format!r}; use one of {TOOL_PROMPT_FORMATS}"
            )
        self.tokenizer = tokenizer
        self.today = today
        self.tool_prompt_format = tool_prompt_format
        self.python_tag_for_search = python_tag_for_search
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

    def render_call(self, call: dict) -> str:
        name, args = call_name(call), call_arguments(call)
        if not name:
            raise ChatFormatError(f"a tool call needs a function name: {call!r}")
        if name in BUILTIN_SEARCH_TOOLS:
            if "query" not in args:
                raise ChatFormatError(f"a {name} call needs a 'query' argument, got {sorted(args)}")
            return f'{name}.call(query="{args["query"]}")'
        if name == "code_interpreter":
            if "code" not in args:
                raise ChatFormatError(f"a code_interpreter call needs a 'code' argument, got {sorted(args)}")
            return str(args["code"])
        if self.tool_prompt_format == "function_tag":
            return f"<function={name}>{json.dumps(args)}</function>"
        if self.tool_prompt_format == "python_list":
            return f"[{name}({', '.join(f'{k}={_py_value(v)}' for k, v in args.items())})]"
        return json.dumps({"type": "function", "name": name, "parameters": args})

    def encode_message(self, m: Message) -> list[int]:
        if not isinstance(m, dict):
            raise ChatFormatError(f"each message must be an object with a 'role', got {m!r}")
        role = m.get("role")
        if role not in ROLES:
            raise ChatFormatError(f"unknown role {role!r}; expected one of system, user, assistant, tool, ipython")
        ids = self.encode_header(ROLES[role])
        calls = (m.get("tool_calls") or []) if role == "assistant" else []
        first = call_name(calls[0]) if calls else ""
        if self.python_tag is not None and (
            first == "code_interpreter" or (self.python_tag_for_search and first in BUILTIN_SEARCH_TOOLS)
        ):
            ids.append(self.python_tag)
        for part in content_parts(m.get("content")):
            ids += self._text(part)
        if role == "user" and m.get("context"):  # llama-models' RAG context field
            ids += self._text("\n\n") + self._text(content_text(m["context"]))
        for c in calls:
            ids += self._text(self.render_call(c))
        stop = m.get("stop_reason")
        if role != "assistant":
            eom = False
        elif stop is not None:
            if stop not in STOP_REASONS:
                raise ChatFormatError(f"unknown stop_reason {stop!r}; use end_of_turn or end_of_message")
            eom = STOP_REASONS[stop]
        else:
            eom = any(call_name(c) in BUILTIN_TOOLS for c in calls)
        return ids + [self.eom if eom else self.eot]

    def with_tools(self, messages: Sequence[Message], tools: Sequence[dict]) -> list[Message]:
        """The dialog with the tool prompts added: the system message (tools header), and the
        custom function definitions where the chosen tool prompt format puts them."""
        messages = [dict(m) for m in messages]
        builtin, custom = split_tools(tools)
        if not builtin and not custom:
            return messages
        system = ""
        if messages and messages[0].get("role") == "system":
            system = content_text(messages.pop(0).get("content"))
        python_list = custom and self.tool_prompt_format == "python_list"
        if python_list:  # Llama 3.2: functions in the system message, no ipython environment
            header = tools_system_prompt(builtin, system="", today=self.today) if builtin else ""
            text = (system + "\n\n" if system else "") + custom_tools_prompt(custom, "python_list")
            messages.insert(0, {"role": "system", "content": header + ("\n" if header else "") + text})
            return messages
        messages.insert(
            0,
            {
                "role": "system",
                "content": tools_system_prompt(builtin, custom=bool(custom), system=system, today=self.today),
            },
        )
        if custom:
            at = next((i for i, m in enumerate(messages) if m.get("role") == "user"), len(messages))
            messages.insert(at, {"role": "user", "content": custom_tools_prompt(custom, self.tool_prompt_format)})
        return messages

    def encode_dialog(
        self, messages: Sequence[Message], *, tools: Sequence[dict] | None = None, add_generation_prompt: bool = True
    ) -> list[int]:
        if not messages:
            raise ChatFormatError("messages must not be empty")
        if tools:
            messages = self.with_tools(messages, tools)
        ids = [self.bos] if self.bos is not None else []
        for m in messages:
            ids += self.encode_message(m)
        if add_generation_prompt:
            ids += self.encode_header("assistant")
        return ids

    def decode_assistant(self, ids: Sequence[int]) -> Message:
        """An assistant message from generated ids: text, tool calls (after ``<|python_tag|>``, or
        a turn that is a JSON / function-tag / pythonic call), and why it stopped."""
        ids = [int(i) for i in ids]
        stop_reason = "out_of_tokens"
        if ids and ids[-1] == self.eom and self.eom != self.eot:
            stop_reason, ids = "end_of_message", ids[:-1]
        elif ids and ids[-1] in self.stop_ids:
            stop_reason, ids = "end_of_turn", ids[:-1]
        text, body, tagged = self.tokenizer.decode(ids, skip_special=True), None, False
        if self.python_tag is not None and self.python_tag in ids:
            # The model may say something first, then switch to the tool call.
            k = ids.index(self.python_tag)
            text = self.tokenizer.decode(ids[:k], skip_special=True)
            body, tagged = self.tokenizer.decode(ids[k + 1 :], skip_special=True), True
        calls = parse_tool_calls(body if tagged else text, python_tag=tagged)
        if tagged and not calls:  # an empty python tag: keep what followed it as text
            text += body
        if calls:
            text = text.strip() if tagged else ""  # untagged: the whole text was the call
        content = (text or None) if calls else text
        msg: Message = {"role": "assistant", "content": content, "stop_reason": stop_reason}
        if calls:
            msg["tool_calls"] = calls
        return msg


def _py_value(v: Any) -> str:
    """A value in Llama 3.2's pythonic call syntax, written as llama-models writes it."""
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_py_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_py_value(x)}" for k, x in v.items()) + "}"
    return str(v)
