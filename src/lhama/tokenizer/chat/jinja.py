"""The chat template a checkpoint carries (GGUF ``tokenizer.chat_template``, HF
``tokenizer_config.json``), rendered in a sandbox the way HF transformers renders it."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Sequence

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lhama.errors import ChatFormatError
from lhama.tokenizer.base import Message
from lhama.tokenizer.chat.tool_calls import parse_tool_calls


def _raise(message):
    raise ChatFormatError(f"chat template: {message}")


def _tojson(value, indent=None, ensure_ascii=False, separators=None, sort_keys=False):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, separators=separators, sort_keys=sort_keys)


class JinjaChatFormat:
    name = "jinja"

    def __init__(self, template: str, tokenizer, *, bos_token: str | None = None, eos_token: str | None = None):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: _dt.datetime.now().strftime(fmt)
        try:
            self.template = env.from_string(template)
        except TemplateError as e:
            raise ChatFormatError(f"the checkpoint's chat template does not compile: {e}") from None
        self.source = template
        self.tokenizer = tokenizer
        id_to_tok = {v: k for k, v in tokenizer.special_tokens.items()}
        self.bos_token = bos_token if bos_token is not None else id_to_tok.get(tokenizer.bos_id, "")
        self.eos_token = eos_token if eos_token is not None else id_to_tok.get(tokenizer.eos_id, "")
        self.stop_ids = frozenset(tokenizer.stop_ids)

    def render(self, messages: Sequence[Message], *, tools: Sequence[dict] | None = None,
               add_generation_prompt: bool = True) -> str:
        for m in messages:
            if not isinstance(m, dict) or "role" not in m:
                raise ChatFormatError(f"each message needs a 'role': {m!r}")
        try:
            return self.template.render(messages=list(messages), tools=list(tools) if tools else None,
                                        add_generation_prompt=add_generation_prompt, bos_token=self.bos_token,
                                        eos_token=self.eos_token)
        except ChatFormatError:
            raise
        except Exception as e:  # template runtime errors, sandbox violations
            raise ChatFormatError(f"the chat template failed on these messages: {e}") from None

    def encode_dialog(self, messages: Sequence[Message], *, tools: Sequence[dict] | None = None,
                      add_generation_prompt: bool = True) -> list[int]:
        if not messages:
            raise ChatFormatError("messages must not be empty")
        return self.tokenizer.encode(self.render(messages, tools=tools, add_generation_prompt=add_generation_prompt),
                                     allow_special=True)

    def decode_assistant(self, ids: Sequence[int]) -> Message:
        ids = list(ids)
        stop = "out_of_tokens"
        if ids and ids[-1] in self.stop_ids:
            stop, ids = "end_of_turn", ids[:-1]
        text = self.tokenizer.decode(ids, skip_special=True)
        body = text.strip()
        if body.startswith("<tool_call>") and body.endswith("</tool_call>"):
            body = body[len("<tool_call>"):-len("</tool_call>")]
        calls = parse_tool_calls(body) if body.startswith(("{", "[", "<function=")) else []
        msg: Message = {"role": "assistant", "content": None if calls else text, "stop_reason": stop}
        if calls:
            msg["tool_calls"] = calls
        return msg
