"""Running one admitted request on the async engine: the engine's admission check, its engine
requests (``lhama.openai.requests.engine_requests``) streamed and merged, per-choice results and
metrics.

Everything that can fail because of the request fails while preparing it - before a streaming
response has sent its 200 - so a client always gets a proper error body.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from lhama.errors import ContextLengthExceededError, LhamaError, SamplingError
from lhama.generate.sampling import SamplingParams
from lhama.openai import responses
from lhama.openai.requests import PreparedRequest, engine_requests
from lhama.server.errors import APIError


def check_prompt(state, prompt_ids: list[int], params: SamplingParams, param: str) -> None:
    """The engine's own admission check, so errors reach the client before streaming starts."""
    try:
        state.engine.engine.check_request(prompt_ids, params)
    except ContextLengthExceededError as e:
        raise APIError(400, str(e), param=param, code="context_length_exceeded") from None
    except SamplingError as e:
        if e.param == "prompt":
            raise APIError(400, str(e), param=param, code=e.code) from None
        raise


@dataclass
class Choice:
    index: int
    prompt_tokens: int = 0
    cached_tokens: int = 0
    text_parts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    steps: list = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


class Generation:
    """The engine streams behind one request: ``len(prompts) * n`` choices, numbered prompt-major
    as OpenAI numbers them. With a grammar every choice runs as its own engine request with its
    own constraint (a constraint is per-sequence state)."""

    def __init__(
        self, state, route: str, prep: PreparedRequest, *, request_id: str | None = None, t0: float | None = None
    ):
        self.state, self.route, self.prep = state, route, prep
        self.prompts: list[list[int]] = prep.prompts
        self.params: SamplingParams = prep.params
        self.request_id = request_id or uuid.uuid4().hex
        self.t0 = time.perf_counter() if t0 is None else t0
        self.choices = [Choice(i) for i in range(prep.num_choices)]
        self.t_first: float | None = None
        self.finished = False

    def _streams(self):
        eng, parts = self.state.engine, engine_requests(self.prep, self.state.compiler)
        return [
            (first, eng.generate(prompt, params, self.request_id if len(parts) == 1 else f"{self.request_id}-{k}"))
            for k, (first, prompt, params) in enumerate(parts)
        ]

    async def deltas(self) -> AsyncIterator:
        """Engine deltas with ``index`` set to the choice number; records results and metrics."""
        m, route = self.state.metrics, self.route
        completed = failed = False
        try:
            async with aclosing(_merge(self._streams())) as stream:
                async for d in stream:
                    c = self.choices[d.index]
                    if self.t_first is None:
                        self.t_first = time.perf_counter()
                        m.ttft.labels(route).observe(self.t_first - self.t0)
                    c.prompt_tokens, c.cached_tokens = d.prompt_tokens, d.cached_tokens
                    if d.text:
                        c.text_parts.append(d.text)
                    c.token_ids += d.token_ids
                    c.steps += d.steps
                    if d.finish_reason is not None:
                        c.finish_reason, c.stop_reason = d.finish_reason, d.stop_reason
                    yield d
            completed = True
        except Exception:  # the engine failed this request (a client that left raises GeneratorExit)
            failed = True
            raise
        finally:
            self._record(completed, failed)

    def _record(self, completed: bool, failed: bool = False) -> None:
        m, route = self.state.metrics, self.route
        if self.finished:
            return
        self.finished = True
        now = time.perf_counter()
        out = sum(len(c.token_ids) for c in self.choices)
        m.prompt_tokens.labels(route).inc(sum(len(p) for p in self.prompts))
        m.completion_tokens.labels(route).inc(out)
        if not completed:
            (m.failed if failed else m.cancelled).labels(route).inc()
            return
        m.e2e.labels(route).observe(now - self.t0)
        longest = max((len(c.steps) for c in self.choices), default=0)
        if self.t_first is not None and longest > 1:
            m.tpot.labels(route).observe((now - self.t_first) / (longest - 1))

    async def run(self) -> list[Choice]:
        async for _ in self.deltas():
            pass
        return self.choices

    def usage(self) -> dict:
        p = sum(len(x) for x in self.prompts)
        c = sum(len(ch.token_ids) for ch in self.choices)
        cached = sum(self.choices[i * self.params.n].cached_tokens for i in range(len(self.prompts)))
        return responses.usage(p, c, cached)


async def _merge(streams: list[tuple[int, AsyncIterator]]) -> AsyncIterator:
    """Interleave engine streams, shifting each delta's index by its stream's offset. Closing
    this generator cancels every pump, which closes (and so aborts) every engine request."""
    if len(streams) == 1:
        offset, s = streams[0]
        async with aclosing(s):
            async for d in s:
                d.index += offset
                yield d
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(offset: int, s) -> None:
        try:
            async with aclosing(s):
                async for d in s:
                    d.index += offset
                    queue.put_nowait(d)
        except Exception as e:  # noqa: BLE001 - re-raised in the consumer
            queue.put_nowait(e)
        finally:
            queue.put_nowait(done)

    tasks = [asyncio.create_task(pump(o, s)) for o, s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def engine_error(exc: BaseException) -> APIError:
    """A failure met while generating (after ``prepare`` passed): typed errors keep their status;
    the engine dying is a 503 the client may retry."""
    if isinstance(exc, LhamaError):
        return APIError(exc.http_status, str(exc), param=getattr(exc, "param", None), code=exc.code)
    if type(exc).__name__ == "EngineDeadError":
        return APIError(503, f"the engine is not running: {exc}", code="engine_unavailable")
    return APIError(500, "internal server error; see the server log", code="internal_error")
