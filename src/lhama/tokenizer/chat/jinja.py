"""The chat template a checkpoint carries (GGUF ``tokenizer.chat_template``, HF
``tokenizer_config.json`` / ``chat_template.jinja``), rendered the way HF transformers'
``apply_chat_template`` renders it: a sandboxed, immutable Jinja environment with ``trim_blocks``
and ``lstrip_blocks``, loop controls, ``tojson`` without HTML escaping, ``raise_exception``,
``strftime_now``, the ``{% generation %}`` block, and ``bos_token``/``eos_token``/``tools`` in scope.
Templates come from model files, i.e. from strangers: the sandbox stops attribute tricks, and
only plain JSON-like data is handed to them.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any

from lhama.errors import ChatFormatError
from lhama.tokenizer.base import Message
from lhama.tokenizer.chat.literal_text import LiteralTextEncoder
from lhama.tokenizer.chat.tool_calls import parse_tool_calls
from lhama.tokenizer.gguf_vocab import END_OF_TURN_TOKENS

if TYPE_CHECKING:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

# Wrappers chat templates put around tool calls (Hermes/Qwen/SmolLM style, Mistral style).
TOOL_CALL_WRAPPERS = (("<tool_call>", "</tool_call>"), ("[TOOL_CALLS]", ""))


@lru_cache(maxsize=1)
def generation_block_extension() -> type:
    """The ``{% generation %}...{% endgeneration %}`` extension: the block marks assistant text
    for training masks in HF; for rendering it is a plain block. (jinja2 is imported when a
    template is first compiled, not with this module: ~40-50 ms of start-up.)"""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class GenerationBlock(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    return GenerationBlock


def _raise(message):
    raise ChatFormatError(f"chat template: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _plain(value: Any) -> Any:
    """A copy made of plain JSON types only, so a template cannot reach methods of rich objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    # Subclasses (enums and the like) carry extra methods: back to the base type.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    return str(value)


def make_environment() -> ImmutableSandboxedEnvironment:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[generation_block_extension(), loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: _dt.datetime.now().strftime(fmt)
    return env


class JinjaChatFormat:
    name = "jinja"

    def __init__(
        self,
        template: str,
        tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        compile_now: bool = True,
    ):
        """``compile_now=False``: compile the template on first use (the loader's choice for a
        checkpoint's own template: a raw completion never renders it, and compiling imports
        jinja2); a template that does not compile is then reported there."""
        if not isinstance(template, str) or not template.strip():
            raise ChatFormatError("the chat template is empty")
        self.source = template
        if compile_now:
            self.template  # noqa: B018 - compiles: a broken template is reported here
        self.tokenizer = tokenizer
        id_to_tok = {v: k for k, v in tokenizer.special_tokens.items()}
        self.bos_token = (
            bos_token
            if bos_token is not None
            else (getattr(tokenizer, "bos_token", None) or id_to_tok.get(tokenizer.bos_id, ""))
        )
        self.eos_token = (
            eos_token
            if eos_token is not None
            else (getattr(tokenizer, "eos_token", None) or id_to_tok.get(tokenizer.eos_id, ""))
        )
        # Stop on eos and on any end-of-turn token the template writes (<|im_end|>, <|eot_id|> ...).
        ends = {
            tokenizer.special_tokens[t] for t in END_OF_TURN_TOKENS if t in template and t in tokenizer.special_tokens
        }
        if self.eos_token and self.eos_token in template and self.eos_token in tokenizer.special_tokens:
            ends.add(tokenizer.special_tokens[self.eos_token])
        self.stop_ids = frozenset(tokenizer.stop_ids) | frozenset(ends)

    @cached_property
    def template(self):
        """The compiled template (a sandboxed jinja2 ``Template``)."""
        from jinja2 import TemplateError

        try:
            return make_environment().from_string(self.source)
        except TemplateError as e:
            raise ChatFormatError(f"the checkpoint's chat template does not compile: {e}") from None

    @cached_property
    def literal_text(self) -> LiteralTextEncoder:
        return LiteralTextEncoder(self.tokenizer)

    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[dict] | None = None,
        add_generation_prompt: bool = True,
        **variables: Any,
    ) -> str:
        """The prompt text; ``variables`` reach the template too (e.g. ``documents``)."""
        return self._render(messages, tools, add_generation_prompt, variables, lambda data: data)

    def _render(
        self,
        messages: Sequence[Message],
        tools: Sequence[dict] | None,
        add_generation_prompt: bool,
        variables: dict[str, Any],
        literal: Callable[[Any], Any],
    ) -> str:
        """``literal`` rewrites the caller's data (messages, tools, variables) before the template
        sees it; what the template itself adds (bos/eos, markup) is left alone."""
        for m in messages:
            if not isinstance(m, Mapping) or "role" not in m:
                raise ChatFormatError(f"each message needs a 'role': {m!r}")
        from lhama.tools.jinja_tools import inline_tools, needs_inlining

        if needs_inlining(self.source, messages, tools):  # a template without tool support: never drop tools
            messages, tools = inline_tools(messages, tools), None
        context = {"bos_token": self.bos_token, "eos_token": self.eos_token, **literal(_plain(variables))}
        try:
            return self.template.render(
                messages=literal(_plain(list(messages))),
                tools=literal(_plain(list(tools))) if tools else None,
                add_generation_prompt=add_generation_prompt,
                **context,
            )
        except ChatFormatError:
            raise
        except Exception as e:  # template runtime errors, sandbox violations, missing fields
            raise ChatFormatError(f"the chat template failed on these messages: {type(e).__name__}: {e}") from None

    def encode_dialog(
        self, messages: Sequence[Message], *, tools: Sequence[dict] | None = None, add_generation_prompt: bool = True
    ) -> list[int]:
        if not messages:
            raise ChatFormatError("messages must not be empty")
        # The template writes bos itself when it wants one. Special-token text the template
        # writes is special; in message text (users, tools, documents) it stays text.
        literal = self.literal_text
        return literal.encode(self._render(messages, tools, add_generation_prompt, {}, literal.escape))

    def decode_assistant(self, ids: Sequence[int]) -> Message:
        ids = [int(i) for i in ids]
        stop = "out_of_tokens"
        if ids and ids[-1] in self.stop_ids:
            stop, ids = "end_of_turn", ids[:-1]
        text = self.tokenizer.decode(ids, skip_special=True)
        body = text.strip()
        for start, end in TOOL_CALL_WRAPPERS:
            if body.startswith(start) and body.endswith(end):
                body = body.replace(start, "\n").replace(end, "\n") if end else body[len(start) :]
                break
        calls = parse_tool_calls(body)
        msg: Message = {"role": "assistant", "content": None if calls else text, "stop_reason": stop}
        if calls:
            msg["tool_calls"] = calls
        return msg
