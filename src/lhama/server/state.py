"""What every route shares: the loaded model, the engine, settings, metrics, and admission
control (the bounded queue behind 429)."""

from __future__ import annotations

import threading
import time

from lhama.generate.constrained import GrammarCompiler
from lhama.openai.fingerprint import model_settings, system_fingerprint
from lhama.openai.requests import RequestLimits
from lhama.server.config import ServerConfig
from lhama.server.errors import APIError
from lhama.server.metrics import ServerMetrics


class Ticket:
    """A held place among the in-flight requests; released exactly once, however the request ends."""

    __slots__ = ("_held", "_state")

    def __init__(self, state: ServerState):
        self._state, self._held = state, True

    def release(self) -> None:
        if self._held:
            self._held = False
            with self._state._lock:
                self._state.in_flight -= 1


class ServerState:
    def __init__(self, loaded, engine, config: ServerConfig):
        """``engine`` is an ``AsyncEngine`` (anything with ``generate``, ``abort``, ``stats`` and
        ``engine.check_request`` works, which is how tests could inject a fake)."""
        self.loaded = loaded
        self.engine = engine
        self.config = config
        self.model_names = config.served_model_names or (loaded.name,)
        self.created = int(time.time())
        self.in_flight = 0
        self._lock = threading.Lock()
        self.compiler = GrammarCompiler.for_model(loaded)
        self.limits = RequestLimits(max_n=config.max_n, max_choices=config.max_n * 4, defaults=config.sampling)
        self.metrics = ServerMetrics(engine.stats, self.gauges)
        self.embed_lock = threading.Lock()  # one embedding forward at a time beside the engine thread
        self.db = None  # lhama.server.state_db.StateDB, set by the app
        self.files = None  # lhama.server.files.FileStore, set by the app
        self.batches = None  # lhama.server.batches.BatchManager, set by the app
        self.shields = None  # lhama.server.shields.ServerShields, set by ``lhama serve --shield``
        self.loras = None  # lhama.model.lora_batch.LoraSlots, set by ``lhama serve --enable-lora`` / ``--lora``
        inner = getattr(engine, "engine", None)  # the LLMEngine of an AsyncEngine (absent in fakes)
        self.fingerprint_settings = model_settings(loaded, getattr(inner, "config", None))

    def fingerprint(self, model: str) -> str:
        """``system_fingerprint`` of a response for ``model`` (a served name, or an adapter's)."""
        return system_fingerprint(self.fingerprint_settings, None if model in self.model_names else model)

    @property
    def model_name(self) -> str:
        return self.model_names[0]

    @property
    def max_model_len(self) -> int:
        return int(self.engine.stats().max_model_len)

    def check_model(self, name: str):
        """None for the base model, the ``LoraRequest`` for a loaded adapter's name, else 404."""
        if name in self.model_names:
            return None
        lora = self.loras.acquire(name) if self.loras is not None else None
        if lora is None:
            names = list(self.model_names) + (list(self.loras.adapters) if self.loras is not None else [])
            raise APIError(
                404,
                f"The model '{name}' does not exist; this server serves "
                f"{', '.join(repr(n) for n in names)} (see GET /v1/models).",
                param="model",
                code="model_not_found",
            )
        return lora

    def admit(self, *, bypass_limit: bool = False) -> Ticket:
        """A ticket for one generation request, or 429 when ``max_num_seqs + max_queue`` are
        already in flight. Batch lines bypass the limit: they are bounded by their own concurrency."""
        with self._lock:
            if not bypass_limit and self.in_flight >= self.config.max_in_flight:
                self.metrics.rejected.inc()
                raise APIError(
                    429,
                    f"The server is at capacity ({self.in_flight} requests in flight, "
                    f"limit {self.config.max_in_flight}); retry after "
                    f"{self.config.retry_after_s} s.",
                    code="queue_full",
                    headers={"Retry-After": str(self.config.retry_after_s)},
                )
            self.in_flight += 1
        return Ticket(self)

    def gauges(self) -> dict:
        depth = getattr(self.engine, "queue_depth", None)
        if depth is None:
            depth = self.engine.stats().num_waiting
        return {"in_flight": self.in_flight, "queue_depth": depth}
