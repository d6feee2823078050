"""``/v1/files``: uploaded and generated files, kept on disk under ``<data-dir>/files`` as the
content plus a JSON record, so they outlive the process."""

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
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _meta(self, file_id: str) -> Path:
        return self.root / f"{file_id}.json"

    def path(self, file_id: str) -> Path:
        return self.root / f"{file_id}.data"

    def _valid_id(self, file_id: str) -> bool:
        return file_id.startswith("file-") and file_id[5:].isalnum()

    def new_id(self) -> str:
        return f"file-{uuid.uuid4().hex}"

    def register(self, file_id: str, filename: str, purpose: str) -> dict:
        """Record a file whose content already sits at ``path(file_id)``."""
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": self.path(file_id).stat().st_size,
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        write_json_atomic(self._meta(file_id), meta)
        return meta

    def create(self, content: bytes, filename: str, purpose: str) -> dict:
        file_id = self.new_id()
        self.path(file_id).write_bytes(content)
        return self.register(file_id, filename, purpose)

    def get(self, file_id: str) -> dict:
        if not self._valid_id(file_id) or not self._meta(file_id).is_file():
            raise APIError(404, f"No file with id '{file_id}'.", param="file_id", code="file_not_found")
        return json.loads(self._meta(file_id).read_text())

    def list(self, purpose: str | None = None) -> list[dict]:
        out = []
        for p in self.root.glob("file-*.json"):
            try:
                meta = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if purpose is None or meta.get("purpose") == purpose:
                out.append(meta)
        return sorted(out, key=lambda m: (m["created_at"], m["id"]), reverse=True)

    def delete(self, file_id: str) -> dict:
        self.get(file_id)
        self._meta(file_id).unlink(missing_ok=True)
        self.path(file_id).unlink(missing_ok=True)
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
