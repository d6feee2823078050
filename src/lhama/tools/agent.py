"""The agent loop: model → tool call → execute → result as an ``ipython``/``tool`` turn → model,
until the model ends its turn without a call (``<|eot_id|>``) or the step limit is reached.

Shields guard both ends: every input shield sees the conversation before the first model call
(``role="user"``), every output shield sees each assistant message before it is acted on or
shown (``role="assistant"``). A refusal ends the run with the shield's message. Everything that
happens is recorded in a ``Transcript`` that can be saved as JSON and replayed.

Generation runs on ``LLMEngine`` (continuous batching; one request per model call).
``processor_factory(step) -> logits_processor`` attaches a per-call logits processor
(constrained decoding, or a scripted policy in tests) as ``SamplingParams.logits_processor``,
which the engine's sampler applies.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lhama.engine.outputs import RequestFailedError
from lhama.errors import ConfigError, ContextLengthExceededError, LhamaError, ToolError
from lhama.generate import SamplingParams
from lhama.safety.base import Shield
from lhama.tools.builtin import as_tool
from lhama.tools.registry import Tool
from lhama.tools.stream_parser import ToolCallStreamParser
from lhama.tools.transcript import Transcript


@dataclass(frozen=True)
class AgentConfig:
    max_steps: int = 8  # model calls per run
    max_tokens: int = 512  # per model call (clamped to what the context has left)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    system: str | None = None
    refusal: str = "I can't help with that."  # shown when a shield gives no message of its own

    def __post_init__(self):
        if self.max_steps < 1:
            raise ConfigError(f"agent max_steps must be >= 1, got {self.max_steps}")
        if self.max_tokens < 1:
            raise ConfigError(f"agent max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True)
class AgentEvent:
    """Streamed to ``on_event``: ``content`` (text delta), ``tool_call`` (name, arguments, id),
    ``tool_result`` (id, name, result, error), ``shield`` (verdict), ``done`` (reason)."""

    type: str
    data: dict


@dataclass
class AgentResult:
    content: str  # the final answer (or the refusal)
    stopped: str  # end_of_turn, max_steps, out_of_tokens, context_length, shield_input, shield_output
    messages: list[dict]  # the whole conversation, system/tool turns included
    transcript: Transcript


class Agent:
    """``Agent(lm_or_engine, tools=[...], shields=[...])``; ``run("question")`` → ``AgentResult``.

    ``tools``: ``Tool`` objects, plain functions (schema from their signature), or built-in
    names (``"code_interpreter"``, ``"brave_search"``, ``"wolfram_alpha"``). ``model``: a
    ``LoadedModel`` (an engine is built for it), or an ``LLMEngine`` plus ``chat_format=``.
    """

    def __init__(
        self,
        model,
        tools: Iterable[Any] = (),
        *,
        shields: Sequence[Shield] = (),
        input_shields: Sequence[Shield] | None = None,
        output_shields: Sequence[Shield] | None = None,
        config: AgentConfig = AgentConfig(),
        chat_format=None,
        processor_factory: Callable[[int], Any] | None = None,
        **config_overrides,
    ):
        from lhama.engine import LLMEngine

        if config_overrides:
            config = AgentConfig(**{**config.__dict__, **config_overrides})
        self.config = config
        if isinstance(model, LLMEngine):
            if chat_format is None:
                raise ConfigError("Agent(engine) needs chat_format= (the model's chat format)")
            self.engine, self.chat_format, self.model_name = model, chat_format, ""
        else:  # a LoadedModel
            self.engine = LLMEngine.from_loaded(model)
            self.chat_format = chat_format or model.chat_format
            self.model_name = getattr(model, "name", "")
        self.tools: dict[str, Tool] = {}
        for t in tools:
            t = as_tool(t)
            if t.name in self.tools:
                raise ConfigError(f"two tools are named {t.name!r}; tool names must be unique")
            self.tools[t.name] = t
        # A shield's ``stages`` (lhama.safety: {"input", "output"}) say where it applies; without
        # the attribute it guards both ends.
        self.input_shields = list(
            input_shields
            if input_shields is not None
            else [s for s in shields if "input" in getattr(s, "stages", ("input",))]
        )
        self.output_shields = list(
            output_shields
            if output_shields is not None
            else [s for s in shields if "output" in getattr(s, "stages", ("output",))]
        )
        for s in [*self.input_shields, *self.output_shields]:
            if not callable(getattr(s, "check", None)):
                raise ConfigError(f"a shield needs a check(messages, role=...) method: {s!r}")
        self.processor_factory = processor_factory

    # -- the loop ------------------------------------------------------------------------
    def run(
        self,
        message: str | dict | Sequence[dict],
        *,
        history: Sequence[dict] = (),
        on_event: Callable[[AgentEvent], None] | None = None,
    ) -> AgentResult:
        emit = on_event or (lambda e: None)
        messages = [dict(m) for m in history]
        if self.config.system and not any(m.get("role") == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.config.system})
        new = (
            [{"role": "user", "content": message}]
            if isinstance(message, str)
            else ([dict(message)] if isinstance(message, dict) else [dict(m) for m in message])
        )
        messages += new
        tr = Transcript.start(self.model_name, [t.spec() for t in self.tools.values()], self.config, messages)

        def finish(content: str, stopped: str) -> AgentResult:
            tr.finish(content, stopped)
            emit(AgentEvent("done", {"stopped": stopped, "content": content}))
            return AgentResult(content, stopped, messages, tr)

        if (refusal := self._shield(self.input_shields, messages, "user", tr, emit)) is not None:
            messages.append({"role": "assistant", "content": refusal})
            return finish(refusal, "shield_input")
        for step in range(self.config.max_steps):
            try:
                msg, ids = self._model_turn(messages, step, emit)
            except ContextLengthExceededError as e:  # tool results filled the context: stop, keep the record
                tr.steps.append({"type": "error", "message": str(e)})
                return finish(self._last_answer(messages), "context_length")
            tr.model_step(msg, ids)
            if (refusal := self._shield(self.output_shields, messages + [msg], "assistant", tr, emit)) is not None:
                messages.append({"role": "assistant", "content": refusal})
                return finish(refusal, "shield_output")
            messages.append(msg)
            calls = msg.get("tool_calls") or []
            if not calls:
                return finish(msg.get("content") or "", msg.get("stop_reason") or "end_of_turn")
            for call in calls:
                messages.append(self._execute(call, tr, emit))
        return finish(self._last_answer(messages), "max_steps")

    @staticmethod
    def _last_answer(messages: list[dict]) -> str:
        return next((m.get("content") or "" for m in reversed(messages) if m["role"] == "assistant"), "")

    def _params(self, prompt_len: int, step: int) -> SamplingParams:
        room = self.engine.max_model_len - prompt_len
        if room < 1:
            raise ContextLengthExceededError(prompt_len, 1, self.engine.max_model_len)
        proc = self.processor_factory(step) if self.processor_factory else None
        c = self.config
        return SamplingParams(
            max_tokens=min(c.max_tokens, room),
            temperature=c.temperature,
            top_p=c.top_p,
            seed=None if c.seed is None else c.seed + step,
            logits_processor=proc,
        )

    def _model_turn(self, messages: list[dict], step: int, emit) -> tuple[dict, list[int]]:
        specs = [t.spec() for t in self.tools.values()]
        prompt = (
            self.chat_format.encode_dialog(messages, tools=specs) if specs else self.chat_format.encode_dialog(messages)
        )
        parser = ToolCallStreamParser(self.chat_format)
        for token_ids in self._generate(list(prompt), self._params(len(prompt), step)):
            part = parser.feed(token_ids)
            if part.content:
                emit(AgentEvent("content", {"text": part.content, "step": step}))
        part = parser.finish(parse=bool(specs))
        if part.content:
            emit(AgentEvent("content", {"text": part.content, "step": step}))
        msg = dict(parser.message)
        for c in msg.get("tool_calls") or []:
            emit(
                AgentEvent(
                    "tool_call",
                    {
                        "id": c["id"],
                        "name": c["function"]["name"],
                        "arguments": c["function"]["arguments"],
                        "step": step,
                    },
                )
            )
        return msg, parser.ids

    def _generate(self, prompt: list[int], params: SamplingParams) -> Iterator[list[int]]:
        rid = f"agent-{uuid.uuid4().hex}"
        self.engine.add_request(rid, prompt, params)
        try:
            done = False
            while not done:
                for d in self.engine.step():
                    if d.request_id != rid:
                        continue
                    if d.finish_reason == "error":  # the engine failed this request: not an answer
                        raise d.error or RequestFailedError(rid, "step", RuntimeError("no cause given"))
                    ids = list(d.token_ids)
                    if d.finish_reason == "stop" and isinstance(d.stop_reason, int):
                        ids.append(d.stop_reason)  # the eom/eot that ended the turn tells the parser why
                    if ids:
                        yield ids
                    done = done or d.finish_reason is not None
        finally:
            self.engine.abort(rid)

    def _execute(self, call: dict, tr: Transcript, emit) -> dict:
        fn = call.get("function", call)
        name, raw = fn.get("name", ""), fn.get("arguments", "{}")
        error = False
        try:
            args = json.loads(raw) if isinstance(raw, str) else dict(raw)
            tool = self.tools.get(name)
            if tool is None:
                raise ToolError(f"unknown tool {name!r}; available: {', '.join(self.tools) or 'none'}")
            result = tool(args)
        except (ToolError, ValueError, TypeError) as e:
            result, error = f"error: {e}", True
        except LhamaError as e:  # a sandbox that cannot start and the like: tell the model, keep going
            result, error = f"error: {e}", True
        tr.tool_step(call.get("id", ""), name, raw, result, error)
        emit(AgentEvent("tool_result", {"id": call.get("id", ""), "name": name, "result": result, "error": error}))
        return {"role": "tool", "tool_call_id": call.get("id", ""), "name": name, "content": result}

    def _shield(self, shields, messages, role, tr: Transcript, emit) -> str | None:
        for s in shields:
            v = s.check([dict(m) for m in messages], role=role)
            verdict = {
                "shield": getattr(v, "shield", "") or getattr(s, "name", type(s).__name__),
                "role": role,
                "allowed": bool(v.allowed),
                "categories": list(getattr(v, "categories", []) or []),
                "message": getattr(v, "message", "") or "",
            }
            tr.shield_step(verdict)
            emit(AgentEvent("shield", verdict))
            if not verdict["allowed"]:
                return verdict["message"] or self.config.refusal
        return None
