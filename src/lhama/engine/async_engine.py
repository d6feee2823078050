"""``AsyncEngine``: the streaming front end the server uses.

The synchronous ``LLMEngine`` runs in one background thread (the model's matmuls release the
GIL, so the event loop stays responsive); requests and aborts reach it through a command list
applied between steps, and deltas come back to each request's ``asyncio.Queue`` through
``call_soon_threadsafe``. Leaving the ``async for`` early - the client went away, the consuming
task was cancelled - aborts the request, which frees its blocks before the next step.

When the engine fails one request (``RequestFailedError``, see ``LLMEngine.step``) only that
request's stream raises it; the others keep streaming.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Iterable
from collections.abc import Sequence as Seq

from lhama.engine.engine import LLMEngine
from lhama.engine.metrics import EngineStats
from lhama.engine.outputs import EngineDelta
from lhama.generate.sampling import SamplingParams

log = logging.getLogger("lhama.engine")


_ABORTED = object()  # stream sentinel: the request was aborted through AsyncEngine.abort


class EngineDeadError(RuntimeError):
    """The engine thread stopped (shut down, or crashed); the request cannot finish."""


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._cond = threading.Condition()
        self._commands: list[tuple] = []
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._stats: EngineStats = engine.stats()
        self.error: BaseException | None = None

    @classmethod
    def from_loaded(cls, loaded, config=None) -> AsyncEngine:
        return cls(LLMEngine.from_loaded(loaded, config))

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lhama-engine", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float | None = 10.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- requests ------------------------------------------------------------------------
    async def generate(
        self,
        prompt_ids: Seq[int],
        params: SamplingParams,
        request_id: str | None = None,
        *,
        stop_ids: Iterable[int] | None = None,
    ) -> AsyncIterator[EngineDelta]:
        """Stream the request's output: one ``EngineDelta`` per sequence and step; the last delta
        of each of the ``params.n`` sequences has ``finish_reason`` set. Invalid requests raise
        (``ContextLengthExceededError``, ``SamplingError``) before anything is queued. If the
        engine fails this request alone, the stream raises its ``RequestFailedError`` (status,
        code and param follow its cause); ``EngineDeadError`` if the whole engine stopped."""
        if self._stopped:
            raise EngineDeadError("the engine has been shut down")
        if self.error is not None:
            raise EngineDeadError(f"the engine stopped after an error: {self.error!r}")
        prompt_ids = [int(t) for t in prompt_ids]
        self.engine.check_request(prompt_ids, params)
        rid = request_id or uuid.uuid4().hex
        if rid in self._streams:
            raise ValueError(f"request id {rid!r} is already in use")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[rid] = (loop, queue)
        self.start()
        self._submit(("add", rid, prompt_ids, params, stop_ids))
        remaining = params.n
        try:
            while remaining:
                item = await queue.get()
                if item is _ABORTED:
                    return
                if isinstance(item, BaseException):
                    raise item
                if item.error is not None:
                    raise item.error
                if item.finish_reason is not None:
                    remaining -= 1
                yield item
        finally:
            self._streams.pop(rid, None)
            if remaining:
                self._submit(("abort", rid))

    def abort(self, request_id: str) -> None:
        """Stop a request (its stream ends without a final delta); blocks are freed before the next step."""
        self._submit(("abort", request_id))
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            loop, q = stream
            loop.call_soon_threadsafe(q.put_nowait, _ABORTED)

    def stats(self) -> EngineStats:
        """The latest snapshot (taken by the engine thread after each step; cheap, thread-safe)."""
        return self._stats

    @property
    def queue_depth(self) -> int:
        with self._cond:
            pending = sum(1 for c in self._commands if c[0] == "add")
        return pending + self._stats.num_waiting

    # -- engine thread ---------------------------------------------------------------------
    def _submit(self, cmd: tuple) -> None:
        with self._cond:
            self._commands.append(cmd)
            self._cond.notify()

    def _deliver(self, rid: str, item) -> None:
        stream = self._streams.get(rid)
        if stream is None:
            return
        loop, q = stream
        try:
            loop.call_soon_threadsafe(q.put_nowait, item)
        except RuntimeError:  # the consumer's loop is closed
            pass

    def _apply(self, cmds: list[tuple]) -> None:
        eng = self.engine
        for cmd in cmds:
            if cmd[0] == "add":
                _, rid, prompt, params, stop_ids = cmd
                if rid not in self._streams:  # cancelled before it reached the engine
                    continue
                try:
                    eng.add_request(rid, prompt, params, stop_ids=stop_ids)
                except Exception as e:  # noqa: BLE001 - the caller gets it
                    self._deliver(rid, e)
            elif cmd[0] == "abort":
                eng.abort(cmd[1])

    def _loop(self) -> None:
        eng = self.engine
        while True:
            with self._cond:
                while not self._commands and not self._stopped and not eng.has_unfinished():
                    self._cond.wait()
                if self._stopped:
                    cmds, self._commands = [], []
                    break
                cmds, self._commands = self._commands, []
            self._apply(cmds)
            if not eng.has_unfinished():
                self._stats = eng.stats()
                continue
            try:
                deltas = eng.step()
            except Exception as e:
                # Failures of one request are isolated inside the step; this is the engine's own.
                log.exception("engine step failed; failing all running requests")
                dead = EngineDeadError(f"engine step failed: {type(e).__name__}")
                for rid in list(eng.requests):
                    eng.fail(rid, dead)
                    self._deliver(rid, dead)
                self._stats = eng.stats()
                continue
            self._stats = eng.stats()
            for d in deltas:
                self._deliver(d.request_id, d)
        # Shut down: fail whoever still waits.
        for rid in list(self._streams):
            self._deliver(rid, EngineDeadError("the engine was shut down"))
        for rid in list(eng.requests):
            eng.fail(rid, EngineDeadError("the engine was shut down"))
