"""``/v1/vector_stores``: OpenAI-style vector stores over files uploaded to ``/v1/files``, and the
``file_search`` tool of chat completions.

A store's record and its file records are rows of the state database (``lhama.server.state_db``),
so every replica of a scaled-out server sees every store. Its chunks live in
``<data-dir>/vector_stores/<id>/store.db`` (lhama's SQLite + sqlite-vec + FTS5 store) when the
state database is SQLite, and in pgvector tables named after the store when it is PostgreSQL
(``lhama.rag.pg_store``); deleting a store deletes them. Files are ingested when they
are added (MiniLM embedder), so a file's status is ``completed`` or ``failed`` with
``last_error`` on return: there is no background state to poll or to lose.

Chat: a tool ``{"type": "file_search", "vector_store_ids": [...], "max_num_results": n}``
makes the server search those stores with the conversation's last user message and put the
numbered passages in a system message before the model runs (server-side retrieval: small
models do not reliably decide to call a tool). Other tools in the same request work as usual.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import uuid
from pathlib import Path

from fastapi import APIRouter, Request
from pydantic import Field

from lhama.openai.schemas import RequestBody
from lhama.server.errors import APIError

router = APIRouter()


class VectorStoreCreate(RequestBody):
    name: str | None = None
    file_ids: list[str] = Field(default_factory=list)
    metadata: dict[str, str] | None = None


class VectorStoreUpdate(RequestBody):
    name: str | None = None
    metadata: dict[str, str] | None = None


class VectorStoreFileCreate(RequestBody):
    file_id: str
    attributes: dict[str, str | float | bool] | None = None


class VectorStoreSearch(RequestBody):
    query: str | list[str]
    max_num_results: int = Field(default=10, ge=1, le=50)
    # Declared so they are refused out loud rather than silently ignored.
    rewrite_query: bool | None = None
    filters: dict | None = None
    ranking_options: dict | None = None


class VectorStoreManager:
    def __init__(self, db, root: Path, files):
        self.db = db  # lhama.server.state_db.StateDB
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.files = files  # lhama.server.files.FileStore
        self._lock = threading.RLock()
        self._embedder = None

    # -- records ---------------------------------------------------------------------------
    def _check(self, vs_id: str) -> None:
        self._read(vs_id)

    def _read(self, vs_id: str) -> dict:
        ok = vs_id.startswith("vs_") and vs_id[3:].isalnum()
        row = self.db.one("SELECT meta FROM vector_stores WHERE id = ?", (vs_id,)) if ok else None
        if row is None:
            raise APIError(
                404, f"No vector store with id '{vs_id}'.", param="vector_store_id", code="vector_store_not_found"
            )
        meta = json.loads(row[0])
        rows = self.db.all("SELECT obj FROM vector_store_files WHERE store_id = ?", (vs_id,))
        meta["files"] = {f["id"]: f for f in (json.loads(r[0]) for r in rows)}
        meta["usage_bytes"] = sum(f["usage_bytes"] for f in meta["files"].values() if f["status"] == "completed")
        return meta

    def _write(self, meta: dict) -> None:
        body = {k: v for k, v in meta.items() if k != "files"}
        self.db.execute(
            "UPDATE vector_stores SET meta = ? WHERE id = ?", (json.dumps(body, ensure_ascii=False), meta["id"])
        )

    @staticmethod
    def public(meta: dict) -> dict:
        files = meta["files"].values()
        counts = {
            "in_progress": 0,
            "completed": sum(f["status"] == "completed" for f in files),
            "failed": sum(f["status"] == "failed" for f in files),
            "cancelled": 0,
            "total": len(meta["files"]),
        }
        return {k: v for k, v in meta.items() if k != "files"} | {"file_counts": counts, "status": "completed"}

    def embedder(self):
        if self._embedder is None:
            from lhama.rag.embedders import get_embedder

            self._embedder = get_embedder("minilm")
        return self._embedder

    def _store(self, vs_id: str):
        from lhama.rag.stores import open_store

        if self.db.postgres:  # pgvector tables <vs_id>_chunks, <vs_id>_files
            return open_store(self.db.location, namespace=vs_id)
        (self.root / vs_id).mkdir(parents=True, exist_ok=True)
        return open_store(str(self.root / vs_id / "store.db"))

    # -- operations (blocking; the routes run them in a thread) ------------------------------
    def create(self, body: VectorStoreCreate) -> dict:
        for fid in body.file_ids:
            self.files.get(fid)  # 404 before anything is created
        vs_id = f"vs_{uuid.uuid4().hex}"
        now = int(time.time())
        meta = {
            "id": vs_id,
            "object": "vector_store",
            "created_at": now,
            "name": body.name or "",
            "usage_bytes": 0,
            "last_active_at": now,
            "expires_after": None,
            "expires_at": None,
            "metadata": body.metadata or {},
        }
        self.db.execute(
            "INSERT INTO vector_stores (id, created_at, meta) VALUES (?, ?, ?)",
            (vs_id, now, json.dumps(meta, ensure_ascii=False)),
        )
        for fid in body.file_ids:
            self.add_file(vs_id, VectorStoreFileCreate(file_id=fid))
        return self.public(self._read(vs_id))

    def list(self) -> list[dict]:
        ids = [r[0] for r in self.db.all("SELECT id FROM vector_stores ORDER BY created_at DESC, id DESC")]
        out = []
        for vs_id in ids:
            try:
                out.append(self.public(self._read(vs_id)))
            except APIError:  # deleted meanwhile
                continue
        return out

    def get(self, vs_id: str) -> dict:
        return self.public(self._read(vs_id))

    def update(self, vs_id: str, body: VectorStoreUpdate) -> dict:
        with self._lock:
            meta = self._read(vs_id)
            if body.name is not None:
                meta["name"] = body.name
            if body.metadata is not None:
                meta["metadata"] = body.metadata
            self._write(meta)
        return self.public(meta)

    def delete(self, vs_id: str) -> dict:
        with self._lock:
            self._check(vs_id)
            with self._store(vs_id) as store:
                store.destroy()
            with self.db.transaction():
                self.db.execute("DELETE FROM vector_store_files WHERE store_id = ?", (vs_id,))
                self.db.execute("DELETE FROM vector_stores WHERE id = ?", (vs_id,))
            shutil.rmtree(self.root / vs_id, ignore_errors=True)
        return {"id": vs_id, "object": "vector_store.deleted", "deleted": True}

    def add_file(self, vs_id: str, body: VectorStoreFileCreate) -> dict:
        from lhama.rag.ingest import IngestReport, ingest_file

        self._check(vs_id)
        rec = self.files.get(body.file_id)
        report = IngestReport()
        with self._store(vs_id) as store:
            ingest_file(
                store,
                self.embedder(),
                self.files.path(body.file_id),
                key=body.file_id,
                name=rec["filename"],
                report=report,
            )
        obj = {
            "id": body.file_id,
            "object": "vector_store.file",
            "usage_bytes": rec["bytes"],
            "created_at": int(time.time()),
            "vector_store_id": vs_id,
            "attributes": body.attributes or {},
            "chunking_strategy": {
                "type": "static",
                "static": {"max_chunk_size_tokens": 160, "chunk_overlap_tokens": 40},
            },
            "status": "failed" if report.failed else "completed",
            "last_error": {
                "code": "unsupported_file" if "unsupported" in report.failed[0][1] else "invalid_file",
                "message": report.failed[0][1],
            }
            if report.failed
            else None,
        }
        self.db.execute(
            "INSERT INTO vector_store_files (store_id, file_id, created_at, obj) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (store_id, file_id) DO UPDATE SET created_at = excluded.created_at, obj = excluded.obj",
            (vs_id, body.file_id, obj["created_at"], json.dumps(obj, ensure_ascii=False)),
        )
        with self._lock:
            meta = self._read(vs_id)
            meta["last_active_at"] = int(time.time())
            self._write(meta)
        return obj

    def list_files(self, vs_id: str) -> list[dict]:
        return sorted(self._read(vs_id)["files"].values(), key=lambda f: (f["created_at"], f["id"]), reverse=True)

    def get_file(self, vs_id: str, file_id: str) -> dict:
        files = self._read(vs_id)["files"]
        if file_id not in files:
            raise APIError(
                404, f"No file '{file_id}' in vector store '{vs_id}'.", param="file_id", code="file_not_found"
            )
        return files[file_id]

    def delete_file(self, vs_id: str, file_id: str) -> dict:
        self.get_file(vs_id, file_id)
        with self._store(vs_id) as store:
            store.remove_file(file_id)
        self.db.execute("DELETE FROM vector_store_files WHERE store_id = ? AND file_id = ?", (vs_id, file_id))
        return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}

    def search(self, vs_ids: list[str], query: str, k: int):
        """Hits from all ``vs_ids`` merged by score, best first."""
        from lhama.rag.retrieve import RetrievalConfig, Retriever

        hits = []
        for vs_id in vs_ids:
            with self._store(vs_id) as store:
                if store.embedder_name is None:
                    continue  # no file ingested yet
                hits += Retriever(store, self.embedder(), RetrievalConfig(k=min(k, 100))).search(query, k=k)
        return sorted(hits, key=lambda h: -h.score)[:k]


def _mgr(request: Request) -> VectorStoreManager:
    return request.app.state.lhama.vector_stores


@router.post("/v1/vector_stores", tags=["vector stores"], summary="Create a vector store (optionally with files)")
async def create_store(body: VectorStoreCreate, request: Request):
    return await asyncio.to_thread(_mgr(request).create, body)


@router.get("/v1/vector_stores", tags=["vector stores"], summary="List vector stores")
async def list_stores(request: Request):
    data = _mgr(request).list()
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": False,
    }


@router.get("/v1/vector_stores/{vs_id}", tags=["vector stores"], summary="A vector store")
async def get_store(vs_id: str, request: Request):
    return _mgr(request).get(vs_id)


@router.post("/v1/vector_stores/{vs_id}", tags=["vector stores"], summary="Rename a vector store or set metadata")
async def update_store(vs_id: str, body: VectorStoreUpdate, request: Request):
    return _mgr(request).update(vs_id, body)


@router.delete("/v1/vector_stores/{vs_id}", tags=["vector stores"], summary="Delete a vector store and its data")
async def delete_store(vs_id: str, request: Request):
    return await asyncio.to_thread(_mgr(request).delete, vs_id)


@router.post("/v1/vector_stores/{vs_id}/files", tags=["vector stores"], summary="Add an uploaded file (ingested now)")
async def add_file(vs_id: str, body: VectorStoreFileCreate, request: Request):
    return await asyncio.to_thread(_mgr(request).add_file, vs_id, body)


@router.get("/v1/vector_stores/{vs_id}/files", tags=["vector stores"], summary="Files of a vector store")
async def list_files(vs_id: str, request: Request):
    data = _mgr(request).list_files(vs_id)
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": False,
    }


@router.get("/v1/vector_stores/{vs_id}/files/{file_id}", tags=["vector stores"], summary="One file of a store")
async def get_file(vs_id: str, file_id: str, request: Request):
    return _mgr(request).get_file(vs_id, file_id)


@router.delete(
    "/v1/vector_stores/{vs_id}/files/{file_id}", tags=["vector stores"], summary="Remove a file's chunks from a store"
)
async def delete_file(vs_id: str, file_id: str, request: Request):
    return await asyncio.to_thread(_mgr(request).delete_file, vs_id, file_id)


@router.post("/v1/vector_stores/{vs_id}/search", tags=["vector stores"], summary="Hybrid search of a store")
async def search_store(vs_id: str, body: VectorStoreSearch, request: Request):
    mgr = _mgr(request)
    mgr.get(vs_id)
    for name in ("filters", "ranking_options", "rewrite_query"):
        if getattr(body, name):
            raise APIError(
                400, f"{name} is not supported by this server's vector stores", param=name, code="unsupported_parameter"
            )
    query = body.query if isinstance(body.query, str) else " ".join(body.query)
    if not query.strip():
        raise APIError(400, "query must not be empty", param="query", code="invalid_value")
    hits = await asyncio.to_thread(mgr.search, [vs_id], query, body.max_num_results)
    data = [
        {
            "file_id": h.chunk.file_key,
            "filename": h.chunk.file_name,
            "score": round(float(h.score), 6),
            "attributes": {"location": h.chunk.location},
            "content": [{"type": "text", "text": h.chunk.text}],
        }
        for h in hits
    ]
    return {
        "object": "vector_store.search_results.page",
        "search_query": [query],
        "data": data,
        "has_more": False,
        "next_page": None,
    }


def apply_file_search(state, req):
    """``req`` without its file_search tools, grounded by a system message of numbered passages
    found for the last user message; ``req`` itself when it has no such tool."""
    from lhama.openai.schemas import ChatMessage
    from lhama.rag.answer import SYSTEM_PROMPT, sources_block, sources_from_hits

    fs = req.file_search_tools or []
    if not fs:
        return req
    for t in fs:
        for name in ("filters", "ranking_options"):
            if getattr(t, name):
                raise APIError(
                    400,
                    f"file_search {name} are not supported by this server",
                    param=f"tools.{name}",
                    code="unsupported_parameter",
                )
    mgr = state.vector_stores
    ids = list(dict.fromkeys(i for t in fs for i in t.vector_store_ids))
    if not ids:
        raise APIError(400, "a file_search tool needs vector_store_ids", param="tools", code="invalid_value")
    for i in ids:
        mgr.get(i)  # 404 for an unknown store
    k = max(t.max_num_results or 5 for t in fs)
    users = [m for m in req.messages if m.role == "user"]
    query = ""
    if users:
        c = users[-1].content
        query = c if isinstance(c, str) else "".join(p.text for p in (c or []))
    hits = mgr.search(ids, query, k) if query.strip() else []
    sources = sources_from_hits(hits)
    text = SYSTEM_PROMPT + (
        "\n\nSources:\n\n" + sources_block(sources)
        if sources
        else "\n\nNo passage in the user's files matches this question."
    )
    msgs = list(req.messages)
    if msgs and msgs[0].role in ("system", "developer") and isinstance(msgs[0].content, str):
        msgs[0] = msgs[0].model_copy(update={"content": f"{msgs[0].content}\n\n{text}"})
    else:
        msgs.insert(0, ChatMessage(role="system", content=text))
    update = {"messages": msgs, "file_search_tools": None}
    if not req.tools and req.tool_choice in ("auto", "none"):
        update["tool_choice"] = None  # "auto" with file_search only: no function tool left to choose
    return req.model_copy(update=update)


def uses_file_search(req) -> bool:
    return bool(req.file_search_tools)
