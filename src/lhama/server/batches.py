"""``/v1/batches``: OpenAI batch jobs run on the serving engine, beside interactive traffic.

Each batch is a JSON record under ``<data-dir>/batches`` plus a ``.partial.jsonl``: the ledger
of ``lhama.openai.batch`` (the runner every batch job shares), one record as each request
finishes. A restart therefore loses nothing: an unfinished batch resumes, skipping the lines
already answered. As OpenAI does, a file with any invalid line fails the whole batch before
anything runs. Lines run ``batch_concurrency`` at a time so interactive requests keep getting
through; a line that fails gets its error record and the batch goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path

from fastapi import APIRouter, Request

from lhama.openai.batch import BatchLedger, BatchLine, BatchRun, run_lines_async
from lhama.openai.requests import (
    CHAT_URL,
    COMPLETIONS_URL,
    EMBEDDINGS_URL,
    parse_request,
)
from lhama.openai.schemas import BatchCreateRequest
from lhama.server.errors import APIError, error_type, from_exception
from lhama.server.files import FileStore, write_json_atomic

log = logging.getLogger("lhama.server")
router = APIRouter()
ACTIVE = ("validating", "in_progress", "finalizing")
MAX_LINES = 50_000


class BatchManager:
    def __init__(self, state, files: FileStore, root: Path):
        self.state, self.files, self.root = state, files, Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tasks: dict[str, asyncio.Task] = {}

    # -- records ---------------------------------------------------------------------------
    def _path(self, batch_id: str) -> Path:
        return self.root / f"{batch_id}.json"

    def _partial(self, batch_id: str) -> Path:
        return self.root / f"{batch_id}.partial.jsonl"

    def get(self, batch_id: str) -> dict:
        ok = batch_id.startswith("batch_") and batch_id[6:].isalnum()
        if not ok or not self._path(batch_id).is_file():
            raise APIError(404, f"No batch with id '{batch_id}'.", param="batch_id", code="batch_not_found")
        return json.loads(self._path(batch_id).read_text())

    def save(self, meta: dict) -> None:
        write_json_atomic(self._path(meta["id"]), meta)

    def list(self) -> list[dict]:
        out = [json.loads(p.read_text()) for p in self.root.glob("batch_*.json")]
        return sorted(out, key=lambda m: (m["created_at"], m["id"]), reverse=True)

    # -- lifecycle -------------------------------------------------------------------------
    def create(self, req: BatchCreateRequest) -> dict:
        meta_in = self.files.get(req.input_file_id)
        if meta_in["purpose"] != "batch":
            raise APIError(
                400,
                f"file '{req.input_file_id}' has purpose '{meta_in['purpose']}', not 'batch'",
                param="input_file_id",
                code="invalid_value",
            )
        now = int(time.time())
        meta = {
            "id": f"batch_{uuid.uuid4().hex}",
            "object": "batch",
            "endpoint": req.endpoint,
            "errors": None,
            "input_file_id": req.input_file_id,
            "completion_window": req.completion_window,
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 24 * 3600,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": req.metadata,
        }
        self.save(meta)
        self._launch(meta["id"])
        return meta

    def resume_all(self) -> None:
        """Pick up every batch a previous process left unfinished."""
        for meta in self.list():
            if meta["status"] in ACTIVE or meta["status"] == "cancelling":
                log.info("resuming batch %s (%s)", meta["id"], meta["status"])
                self._launch(meta["id"])

    def _launch(self, batch_id: str) -> None:
        self.tasks[batch_id] = asyncio.get_running_loop().create_task(self._run(batch_id))

    async def cancel(self, batch_id: str) -> dict:
        meta = self.get(batch_id)
        if meta["status"] not in ACTIVE:
            raise APIError(
                409,
                f"batch '{batch_id}' is {meta['status']} and cannot be cancelled",
                param="batch_id",
                code="batch_not_cancellable",
            )
        meta.update(status="cancelling", cancelling_at=int(time.time()))
        self.save(meta)
        task = self.tasks.get(batch_id)
        if task is not None:
            task.cancel()  # its in-flight lines are aborted on the engine; _run finalises
            await asyncio.gather(task, return_exceptions=True)
        if self.get(batch_id)["status"] == "cancelling":
            self._finalise(self.get(batch_id), "cancelled")
        return self.get(batch_id)

    async def shutdown(self) -> None:
        """Stop runners without changing any status: the batches resume on the next start."""
        tasks = list(self.tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- running -------------------------------------------------------------------------
    def _open(self, meta: dict) -> tuple[BatchRun, list[dict]]:
        """The run over this batch's input and ledger, and the input's validation errors."""
        raw = self.files.path(meta["input_file_id"]).read_text(encoding="utf-8", errors="replace").splitlines()
        run = BatchRun(raw, BatchLedger(self._partial(meta["id"])), (meta["endpoint"],), describe=_describe)
        errors = [{"code": e.code, "message": e.message, "param": None, "line": n} for n, e in run.scan.invalid]
        if run.summary.total > MAX_LINES:
            errors.append(
                {"code": "too_many_requests", "message": f"at most {MAX_LINES} requests", "param": None, "line": None}
            )
        if not run.summary.total and not errors:
            errors.append(
                {"code": "empty_file", "message": "the input file has no requests", "param": None, "line": None}
            )
        return run, errors

    def _done(self, batch_id: str) -> list[dict]:
        """The records already written (a torn last line, from a crash mid-write, is dropped)."""
        ledger = BatchLedger(self._partial(batch_id))
        ledger.close()
        return ledger.records

    async def _run(self, batch_id: str) -> None:
        meta = self.get(batch_id)
        run = None
        try:
            if meta["status"] == "cancelling":
                return self._finalise(meta, "cancelled")
            run, errors = self._open(meta)
            if errors:
                meta.update(
                    status="failed", failed_at=int(time.time()), errors={"object": "list", "data": errors[:100]}
                )
                return self.save(meta)
            done = run.ledger.records
            meta["request_counts"] = {
                "total": run.summary.total,
                "completed": sum(r["error"] is None for r in done),
                "failed": sum(r["error"] is not None for r in done),
            }
            if meta["status"] == "validating":
                meta.update(status="in_progress", in_progress_at=int(time.time()))
            self.save(meta)

            def counted(rec: dict) -> None:
                meta["request_counts"]["completed" if rec["error"] is None else "failed"] += 1
                self.save(meta)

            run.on_record = counted
            await run_lines_async(run, self, run.scan.todo, concurrency=self.state.config.batch_concurrency)
            run.ledger.close()
            meta.update(status="finalizing", finalizing_at=int(time.time()))
            self.save(meta)
            self._finalise(meta, "completed")
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("batch %s failed", batch_id)
            meta.update(
                status="failed",
                failed_at=int(time.time()),
                errors={
                    "object": "list",
                    "data": [{"code": "internal_error", "message": repr(e), "param": None, "line": None}],
                },
            )
            self.save(meta)
        finally:
            if run is not None:
                run.ledger.close()
            self.tasks.pop(batch_id, None)

    def _finalise(self, meta: dict, status: str) -> None:
        recs = self._done(meta["id"])
        # Records carry no line number when they succeed: order them as the input by custom_id.
        order = {}
        if status == "completed":
            raw = self.files.path(meta["input_file_id"]).read_text(encoding="utf-8", errors="replace").splitlines()
            for n, text in enumerate(raw):
                try:
                    order.setdefault(json.loads(text).get("custom_id"), n)
                except (ValueError, AttributeError):
                    continue
            recs.sort(key=lambda r: order.get(r["custom_id"], len(order)))
        for kind, key in (("ok", "output_file_id"), ("err", "error_file_id")):
            part = [r for r in recs if (r["error"] is None) == (kind == "ok")]
            if part:
                file_id = self.files.new_id()
                self.files.path(file_id).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
                suffix = "output" if kind == "ok" else "errors"
                meta[key] = self.files.register(file_id, f"{meta['id']}_{suffix}.jsonl", "batch_output")["id"]
        meta["status"] = status
        meta[f"{status}_at"] = int(time.time())
        self.save(meta)
        self._partial(meta["id"]).unlink(missing_ok=True)

    async def execute(self, line: BatchLine) -> dict:
        """Run one request line through the same code as its HTTP route (an ``AsyncExecutor``)."""
        from lhama.server.chat import chat_body, prepare_chat
        from lhama.server.completions import completion_body, prepare_completion
        from lhama.server.embeddings import embeddings_body

        state = self.state
        body = {k: v for k, v in line.body.items() if k != "stream"}
        req = parse_request(line.url, body, urls=(CHAT_URL, COMPLETIONS_URL, EMBEDDINGS_URL))
        if line.url == CHAT_URL:
            return await self._generate(chat_body(state, prepare_chat(state, req)))
        if line.url == COMPLETIONS_URL:
            return await self._generate(completion_body(state, prepare_completion(state, req)))
        return await embeddings_body(state, req, bypass_limit=True)

    async def _generate(self, work):
        ticket = self.state.admit(bypass_limit=True)
        try:
            return await work
        finally:
            ticket.release()


def _describe(exc: BaseException) -> tuple:
    """A failed line's status, code, message, param and type, as the HTTP route would answer."""
    err = from_exception(exc)
    return err.status, err.code, err.message, err.param, error_type(err.status)


def _mgr(request: Request) -> BatchManager:
    return request.app.state.lhama.batches


@router.post("/v1/batches", tags=["batches"], summary="Create a batch from an uploaded JSONL file")
async def create_batch(body: BatchCreateRequest, request: Request):
    return _mgr(request).create(body)


@router.get("/v1/batches", tags=["batches"], summary="List batches")
async def list_batches(request: Request, limit: int = 20):
    data = _mgr(request).list()[: max(1, min(limit, 100))]
    return {
        "object": "list",
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


@router.get("/v1/batches/{batch_id}", tags=["batches"], summary="A batch's status")
async def get_batch(batch_id: str, request: Request):
    return _mgr(request).get(batch_id)


@router.post("/v1/batches/{batch_id}/cancel", tags=["batches"], summary="Cancel a batch")
async def cancel_batch(batch_id: str, request: Request):
    return await _mgr(request).cancel(batch_id)
