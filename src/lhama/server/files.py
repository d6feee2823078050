"""``/v1/files``: uploaded and generated files, kept in the state database (record and content,
``lhama.server.state_db``), so they outlive the process and every replica sees them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse

from lhama.server.errors import APIError

router = APIRouter()
PURPOSES = ("batch", "batch_output", "fine-tune", "assistants", "user_data", "evals", "vision")
CHUNK = 1 << 20


def write_json_atomic(path: Path, obj) -> None:
    """Write-then-rename, so a crash leaves the old record or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False))
    os.replace(tmp, path)


class FileStore:
    """File records and contents in the state database (``lhama.server.state_db``); ``path()``
    is a local copy under ``cache`` that routes and batch runners read (written on first use, so
    a replica on another machine reads what any replica stored)."""

    def __init__(self, db, cache: Path):
        self.db = db
        self.root = Path(cache)
        self.root.mkdir(parents=True, exist_ok=True)

    def _valid_id(self, file_id: str) -> bool:
        return file_id.startswith("file-") and file_id[5:].isalnum()

    def path(self, file_id: str) -> Path:
        """The local copy of a stored file (fetched from the database when missing), or where a
        new file's content is written before ``register``."""
        p = self.root / f"{file_id}.data"
        if not p.is_file() and self._valid_id(file_id):
            row = self.db.one("SELECT content FROM files WHERE id = ?", (file_id,))
            if row is not None:
                tmp = p.with_name(f"{p.name}.{uuid.uuid4().hex}.tmp")
                tmp.write_bytes(bytes(row[0]))
                os.replace(tmp, p)
        return p

    def new_id(self) -> str:
        return f"file-{uuid.uuid4().hex}"

    def register(self, file_id: str, filename: str, purpose: str) -> dict:
        """Store a file whose content sits at ``path(file_id)``."""
        content = self.path(file_id).read_bytes()
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        self.db.execute(
            "INSERT INTO files (id, created_at, purpose, meta, content) VALUES (?, ?, ?, ?, ?)",
            (file_id, meta["created_at"], purpose, json.dumps(meta, ensure_ascii=False), content),
        )
        return meta

    def create(self, content: bytes, filename: str, purpose: str) -> dict:
        file_id = self.new_id()
        self.path(file_id).write_bytes(content)
        return self.register(file_id, filename, purpose)

    def get(self, file_id: str) -> dict:
        row = self.db.one("SELECT meta FROM files WHERE id = ?", (file_id,)) if self._valid_id(file_id) else None
        if row is None:
            raise APIError(404, f"No file with id '{file_id}'.", param="file_id", code="file_not_found")
        return json.loads(row[0])

    def list(self, purpose: str | None = None) -> list[dict]:
        if purpose is None:
            rows = self.db.all("SELECT meta FROM files ORDER BY created_at DESC, id DESC")
        else:
            rows = self.db.all("SELECT meta FROM files WHERE purpose = ? ORDER BY created_at DESC, id DESC", (purpose,))
        return [json.loads(r[0]) for r in rows]

    def delete(self, file_id: str) -> dict:
        self.get(file_id)
        self.db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        (self.root / f"{file_id}.data").unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}


def first_invalid_utf8_line(path: Path) -> int | None:
    """The 1-based number of the first line of ``path`` that is not UTF-8, or None."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return None


def _store(request: Request) -> FileStore:
    return request.app.state.lhama.files


@router.post("/v1/files", tags=["files"], summary="Upload a file (JSONL batch input)")
async def upload_file(request: Request, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]):
    if purpose not in PURPOSES:
        raise APIError(
            400, f"purpose must be one of {', '.join(PURPOSES)}; got '{purpose}'", param="purpose", code="invalid_value"
        )
    store = _store(request)
    file_id = store.new_id()

    def copy() -> None:  # the body-size middleware already capped the upload at max_file_bytes
        with open(store.path(file_id), "wb") as out:
            shutil.copyfileobj(file.file, out, CHUNK)

    await asyncio.to_thread(copy)
    if purpose == "batch":  # its lines are parsed as JSON text: refuse broken UTF-8 now, naming the line
        bad_line = await asyncio.to_thread(first_invalid_utf8_line, store.path(file_id))
        if bad_line is not None:
            store.path(file_id).unlink(missing_ok=True)
            raise APIError(
                400,
                f"file: line {bad_line} is not valid UTF-8; batch input must be UTF-8 JSONL",
                param="file",
                code="invalid_file",
            )
    return store.register(file_id, os.path.basename(file.filename or "upload.jsonl"), purpose)


@router.get("/v1/files", tags=["files"], summary="List files")
async def list_files(request: Request, purpose: str | None = None):
    return {"object": "list", "data": _store(request).list(purpose), "has_more": False}


@router.get("/v1/files/{file_id}", tags=["files"], summary="A file's record")
async def get_file(file_id: str, request: Request):
    return _store(request).get(file_id)


@router.get("/v1/files/{file_id}/content", tags=["files"], summary="A file's content")
async def get_file_content(file_id: str, request: Request):
    store = _store(request)
    meta = store.get(file_id)
    return FileResponse(store.path(file_id), media_type="application/jsonl", filename=meta["filename"])


@router.delete("/v1/files/{file_id}", tags=["files"], summary="Delete a file")
async def delete_file(file_id: str, request: Request):
    return _store(request).delete(file_id)
