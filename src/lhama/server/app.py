"""The FastAPI app: OpenAI-compatible routes, files and batches, health, metrics, and the chat page.

``create_app(loaded, engine, config)`` takes a ready model and an ``AsyncEngine`` (injected, so
tests and other front ends can share one), and owns their lifecycle: the engine starts with the
app, unfinished batches resume, and on shutdown (after uvicorn has drained in-flight requests)
batch runners stop without losing state and the engine thread ends.
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from lhama.server import (
    batches,
    chat,
    completions,
    embeddings,
    files,
    lora,
    responses,
    vector_stores,
)
from lhama.server.batches import BatchManager
from lhama.server.config import ServerConfig
from lhama.server.docs import install_docs
from lhama.server.errors import install_error_handlers
from lhama.server.files import FileStore
from lhama.server.legacy_import import import_legacy_state
from lhama.server.middleware import (
    APIKeyMiddleware,
    BodyLimitMiddleware,
    MetricsMiddleware,
    Utf8JsonMiddleware,
)
from lhama.server.state import ServerState
from lhama.server.state_db import StateDB

log = logging.getLogger("lhama.server")
STATIC = Path(__file__).parent / "static"


def create_app(loaded, engine, config: ServerConfig | None = None) -> FastAPI:
    config = config or ServerConfig()
    state = ServerState(loaded, engine, config)
    state.db = StateDB(config.state_db_location)
    import_legacy_state(state.db, config.data_dir)  # once: the per-record files of servers before the database
    state.files = FileStore(state.db, config.data_dir / "files")
    state.batches = BatchManager(state, state.files, state.db, lease_s=config.batch_lease_s)
    state.vector_stores = vector_stores.VectorStoreManager(state.db, config.data_dir / "vector_stores", state.files)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        state.batches.resume_all()
        yield
        await state.batches.shutdown()
        engine.shutdown()

    app = FastAPI(
        title="lhama",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="OpenAI-compatible serving of Llama-family models (see docs/server.md).",
    )
    app.state.lhama = state
    install_error_handlers(app)
    for module in (chat, completions, responses, embeddings, files, batches, vector_stores, lora):
        app.include_router(module.router)
    _add_basic_routes(app, state)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    install_docs(app)  # /docs from packaged assets, no CDN
    # Added last = outermost: metrics see the 401s and 413s the inner layers send.
    app.add_middleware(Utf8JsonMiddleware)
    if config.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=config.api_key)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes, max_file_bytes=config.max_file_bytes)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("lhama")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "0.0.0"


def _model_card(state: ServerState, name: str) -> dict:
    return {
        "id": name,
        "object": "model",
        "created": state.created,
        "owned_by": "lhama",
        "max_model_len": state.max_model_len,
        # What a request that leaves these out gets (lhama.sampling_defaults, or `lhama serve
        # --temperature ...`): the web chat shows them as placeholders and sends only what is set.
        "sampling_defaults": {
            "temperature": state.config.sampling.temperature,
            "top_p": state.config.sampling.top_p,
            "max_tokens": state.config.sampling.max_tokens,
        },
    }


def _add_basic_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health", tags=["server"], summary="Liveness: 200 while the engine can serve")
    async def health():
        err = getattr(state.engine, "error", None)
        if err is not None:
            return JSONResponse({"status": "error", "detail": repr(err)}, status_code=503)
        s = state.engine.stats()
        return {
            "status": "ok",
            "model": state.model_name,
            "pid": os.getpid(),  # which server process answered (one of several replicas: docs/scaling.md)
            "running": s.num_running,
            "waiting": s.num_waiting,
            "kv_cache_usage": s.kv_cache_usage,
        }

    @app.get("/metrics", tags=["server"], summary="Prometheus metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", tags=["openai"], summary="List the served model")
    async def list_models():
        return {
            "object": "list",
            "data": [_model_card(state, n) for n in state.model_names] + lora.adapter_cards(state),
        }

    @app.get("/v1/models/{model_id:path}", tags=["openai"], summary="One served model")
    async def get_model(model_id: str, request: Request):
        if state.check_model(model_id) is not None:
            return next(c for c in lora.adapter_cards(state) if c["id"] == model_id)
        return _model_card(state, model_id)
