"""``/v1/batches``: OpenAI batch jobs run on the serving engine, beside interactive traffic.

A batch is a row of the state database (``lhama.server.state_db``) and one row per request
line. Every server process sharing the database (the replicas of ``lhama serve --replicas N``,
or one server across restarts) runs a worker loop that claims lines with a lease, runs them on
its engine and writes each line's record with ``... WHERE record IS NULL``: a line is answered
exactly once. Leases are renewed while a line runs; a replica that dies leaves leases that run
out (``--batch-lease`` seconds) and the other replicas take those lines over, so a batch is
split across replicas and survives any of them. The steps that are not lines (validating the
input, writing the output files) are claimed the same way on the batch row.

As OpenAI does, a file with any invalid line fails the whole batch before anything runs. Lines
run ``batch_concurrency`` at a time per process so interactive requests keep getting through;
a line that fails gets its error record and the batch goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid

from fastapi import APIRouter, Request

from lhama.openai.batch import BatchLine, error_record, scan_batch, success_record
from lhama.openai.requests import (
    CHAT_URL,
    COMPLETIONS_URL,
    EMBEDDINGS_URL,
    parse_request,
)
from lhama.openai.schemas import BatchCreateRequest
from lhama.server.errors import APIError, error_type, from_exception
from lhama.server.files import FileStore

log = logging.getLogger("lhama.server")
router = APIRouter()
ACTIVE = ("validating", "in_progress", "finalizing")
STEPS = ("validating", "finalizing", "cancelling")  # run by one process holding the batch's lease
MAX_LINES = 50_000


class _NothingDone:
    done_lines: set = frozenset()
    done_ids: set = frozenset()


class BatchManager:
    def __init__(self, state, files: FileStore, db, *, lease_s: float = 30.0, poll_s: float = 0.5):
        self.state, self.files, self.db = state, files, db
        self.lease_s, self.poll_s = lease_s, poll_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.running: dict[tuple[str, int], asyncio.Task] = {}
        self._inputs: dict[str, dict[int, BatchLine]] = {}
        self._loop: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._last_beat = 0.0
        self._for_update = " FOR UPDATE" if db.postgres else ""
        from prometheus_client import Counter

        self.lines_done = Counter(
            "lhama_batch_lines",
            "batch lines this server process answered (recorded first), by outcome",
            ["outcome"],
            registry=state.metrics.registry,
        )

    # -- records ---------------------------------------------------------------------------
    def _meta(self, batch_id: str) -> dict:
        ok = batch_id.startswith("batch_") and batch_id[6:].isalnum()
        row = self.db.one("SELECT meta FROM batches WHERE id = ?", (batch_id,)) if ok else None
        if row is None:
            raise APIError(404, f"No batch with id '{batch_id}'.", param="batch_id", code="batch_not_found")
        return json.loads(row[0])

    def _with_counts(self, meta: dict) -> dict:
        if meta["status"] in ("in_progress", "finalizing", "cancelling"):
            total, ok, bad = self.db.one(
                "SELECT COUNT(*), SUM(CASE WHEN failed = 0 THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN failed = 1 THEN 1 ELSE 0 END) FROM batch_lines WHERE batch_id = ?",
                (meta["id"],),
            )
            if total:
                meta["request_counts"] = {"total": total, "completed": ok or 0, "failed": bad or 0}
        return meta

    def get(self, batch_id: str) -> dict:
        return self._with_counts(self._meta(batch_id))

    def list(self) -> list[dict]:
        rows = self.db.all("SELECT meta FROM batches ORDER BY created_at DESC, id DESC")
        return [self._with_counts(json.loads(r[0])) for r in rows]

    def _update(self, batch_id: str, statuses: tuple[str, ...], *, owned: bool = False, **changes) -> dict | None:
        """Apply ``changes`` to the batch's record if its status is one of ``statuses`` (and,
        with ``owned``, this process holds its lease); the new record, or None."""
        with self.db.transaction():
            row = self.db.one(f"SELECT meta, owner FROM batches WHERE id = ?{self._for_update}", (batch_id,))
            if row is None:
                return None
            meta = json.loads(row[0])
            if meta["status"] not in statuses or (owned and row[1] != self.owner):
                return None
            meta.update(changes)
            self.db.execute(
                "UPDATE batches SET status = ?, meta = ? WHERE id = ?",
                (meta["status"], json.dumps(meta, ensure_ascii=False), batch_id),
            )
            return meta

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
        self.db.execute(
            "INSERT INTO batches (id, created_at, status, meta) VALUES (?, ?, ?, ?)",
            (meta["id"], now, "validating", json.dumps(meta, ensure_ascii=False)),
        )
        self.wake()
        return meta

    def resume_all(self) -> None:
        """Start this process's worker loop: it picks up every unfinished batch in the database."""
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop().create_task(self._work())

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def cancel(self, batch_id: str) -> dict:
        meta = self._meta(batch_id)
        now = int(time.time())
        if self._update(batch_id, ACTIVE, status="cancelling", cancelling_at=now) is None:
            meta = self._meta(batch_id)
            if meta["status"] != "cancelling":
                raise APIError(
                    409,
                    f"batch '{batch_id}' is {meta['status']} and cannot be cancelled",
                    param="batch_id",
                    code="batch_not_cancellable",
                )
        await self._stop_lines(lambda key: key[0] == batch_id)  # in-flight lines are aborted on the engine
        if await asyncio.to_thread(self._claim_step, batch_id, "cancelling"):
            await asyncio.to_thread(self._finalise, batch_id, "cancelled")
        deadline = time.monotonic() + 2 * self.lease_s  # another process is finishing it
        while self._meta(batch_id)["status"] == "cancelling" and time.monotonic() < deadline:
            await asyncio.sleep(self.poll_s)
        return self.get(batch_id)

    async def _stop_lines(self, which) -> None:
        tasks = [t for key, t in self.running.items() if which(key)]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def shutdown(self) -> None:
        """Stop the worker loop and the lines it runs, and give their leases back: the batches
        go on in the other processes sharing the database, or here after a restart."""
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        await self._stop_lines(lambda key: True)
        try:
            self.db.execute(
                "UPDATE batch_lines SET owner = NULL, lease_until = 0 WHERE owner = ? AND record IS NULL",
                (self.owner,),
            )
            self.db.execute("UPDATE batches SET owner = NULL, lease_until = 0 WHERE owner = ?", (self.owner,))
        except Exception:  # noqa: BLE001 - the leases run out by themselves
            log.warning("could not release batch leases", exc_info=True)

    # -- the worker loop -------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the database may be back on the next tick
                log.exception("batch worker: tick failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _tick(self) -> None:
        now = time.time()
        if self.running and now - self._last_beat > self.lease_s / 3:
            self._last_beat = now
            await asyncio.to_thread(
                self.db.execute,
                "UPDATE batch_lines SET lease_until = ? WHERE owner = ? AND record IS NULL",
                (now + self.lease_s, self.owner),
            )
        rows = await asyncio.to_thread(
            self.db.all,
            "SELECT id, status, lease_until FROM batches WHERE status IN (?, ?, ?, ?) ORDER BY created_at, id",
            ("in_progress", *STEPS),
        )
        status = {r[0]: r[1] for r in rows}
        gone = {b for b, _ in self.running if status.get(b) != "in_progress"}
        if gone:  # cancelled (or finished) elsewhere
            await self._stop_lines(lambda key: key[0] in gone)
        for batch_id, st, lease_until in rows:
            if st in STEPS and lease_until < now and await asyncio.to_thread(self._claim_step, batch_id, st):
                step = self._validate if st == "validating" else self._finalise
                await asyncio.to_thread(step, batch_id, "cancelled" if st == "cancelling" else "completed")
        for batch_id, st, _ in rows:
            free = self.state.config.batch_concurrency - len(self.running)
            if st != "in_progress" or free <= 0:
                continue
            lines = await asyncio.to_thread(self._claim_lines, batch_id, free)
            for n in lines:
                self.running[(batch_id, n)] = asyncio.get_running_loop().create_task(self._run_line(batch_id, n))
            if not lines and not any(b == batch_id for b, _ in self.running):
                if await asyncio.to_thread(self._claim_finalise, batch_id):
                    await asyncio.to_thread(self._finalise, batch_id, "completed")

    def _claim_step(self, batch_id: str, status: str) -> bool:
        now = time.time()
        return (
            self.db.execute(
                "UPDATE batches SET owner = ?, lease_until = ? WHERE id = ? AND status = ? "
                "AND (lease_until < ? OR owner = ?)",
                (self.owner, now + self.lease_s, batch_id, status, now, self.owner),
            )
            == 1
        )

    def _claim_finalise(self, batch_id: str) -> bool:
        """in_progress -> finalizing, by the one process that sees no line left to answer."""
        now = time.time()
        with self.db.transaction():
            left = self.db.one("SELECT COUNT(*) FROM batch_lines WHERE batch_id = ? AND record IS NULL", (batch_id,))[0]
            if left:
                return False
            if self._update(batch_id, ("in_progress",), status="finalizing", finalizing_at=int(now)) is None:
                return False
            self.db.execute(
                "UPDATE batches SET owner = ?, lease_until = ? WHERE id = ?", (self.owner, now + self.lease_s, batch_id)
            )
        return True

    def _claim_lines(self, batch_id: str, k: int) -> list[int]:
        now = time.time()
        free = "record IS NULL AND (owner IS NULL OR lease_until < ?)"
        rows = self.db.all(
            f"UPDATE batch_lines SET owner = ?, lease_until = ? WHERE batch_id = ? AND {free} AND line IN "
            f"(SELECT line FROM batch_lines WHERE batch_id = ? AND {free} ORDER BY line LIMIT ?) RETURNING line",
            (self.owner, now + self.lease_s, batch_id, now, batch_id, now, k),
        )
        return sorted(r[0] for r in rows)

    # -- the steps -------------------------------------------------------------------------
    def _input(self, meta: dict) -> list[str]:
        path = self.files.path(meta["input_file_id"])
        return path.read_bytes().decode("utf-8", "surrogateescape").splitlines()

    def _lines(self, batch_id: str) -> dict[int, BatchLine]:
        if batch_id not in self._inputs:
            meta = self._meta(batch_id)
            scan = scan_batch(self._input(meta), _NothingDone(), (meta["endpoint"],))
            self._inputs[batch_id] = {ln.line: ln for ln in scan.todo}
        return self._inputs[batch_id]

    def _validate(self, batch_id: str, _final: str) -> None:
        meta = self._meta(batch_id)
        try:
            scan = scan_batch(self._input(meta), _NothingDone(), (meta["endpoint"],))
        except Exception as e:  # noqa: BLE001 - the batch's error, not the worker's
            log.exception("batch %s: cannot read its input", batch_id)
            scan, errors = None, [{"code": "internal_error", "message": repr(e), "param": None, "line": None}]
        else:
            errors = [{"code": e.code, "message": e.message, "param": None, "line": n} for n, e in scan.invalid]
            if scan.summary.total > MAX_LINES:
                errors.append(
                    {
                        "code": "too_many_requests",
                        "message": f"at most {MAX_LINES} requests",
                        "param": None,
                        "line": None,
                    }
                )
            if not scan.summary.total and not errors:
                errors.append(
                    {"code": "empty_file", "message": "the input file has no requests", "param": None, "line": None}
                )
        now = int(time.time())
        if errors:
            self._update(
                batch_id,
                ("validating",),
                owned=True,
                status="failed",
                failed_at=now,
                errors={"object": "list", "data": errors[:100]},
            )
            self.db.execute("UPDATE batches SET owner = NULL, lease_until = 0 WHERE id = ?", (batch_id,))
            return
        with self.db.transaction():
            if (
                self._update(
                    batch_id,
                    ("validating",),
                    owned=True,
                    status="in_progress",
                    in_progress_at=now,
                    request_counts={"total": len(scan.todo), "completed": 0, "failed": 0},
                )
                is None
            ):
                return
            for ln in scan.todo:
                self.db.execute(
                    "INSERT INTO batch_lines (batch_id, line) VALUES (?, ?) ON CONFLICT DO NOTHING", (batch_id, ln.line)
                )
            self.db.execute("UPDATE batches SET owner = NULL, lease_until = 0 WHERE id = ?", (batch_id,))
        self.wake()

    def _finalise(self, batch_id: str, status: str) -> None:
        meta = self._meta(batch_id)
        rows = self.db.all(
            "SELECT record, failed FROM batch_lines WHERE batch_id = ? AND record IS NOT NULL ORDER BY line",
            (batch_id,),
        )
        recs = [(json.loads(r[0]), r[1]) for r in rows]
        changes = {"status": status, f"{status}_at": int(time.time())}
        changes["request_counts"] = {
            "total": meta["request_counts"]["total"],
            "completed": sum(not bad for _, bad in recs),
            "failed": sum(bool(bad) for _, bad in recs),
        }
        for failed, key, suffix in ((0, "output_file_id", "output"), (1, "error_file_id", "errors")):
            part = [r for r, bad in recs if bool(bad) == bool(failed)]
            if part:
                content = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part).encode()
                changes[key] = self.files.create(content, f"{batch_id}_{suffix}.jsonl", "batch_output")["id"]
        with self.db.transaction():
            if self._update(batch_id, ("finalizing", "cancelling"), owned=True, **changes) is not None:
                self.db.execute("DELETE FROM batch_lines WHERE batch_id = ?", (batch_id,))
                self.db.execute("UPDATE batches SET owner = NULL, lease_until = 0 WHERE id = ?", (batch_id,))
        self._inputs.pop(batch_id, None)

    # -- one line --------------------------------------------------------------------------
    async def _run_line(self, batch_id: str, n: int) -> None:
        try:
            line = (await asyncio.to_thread(self._lines, batch_id))[n]
            try:
                result: dict | BaseException = await self.execute(line)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - this line's error record
                result = e
            if isinstance(result, BaseException):
                status, code, message, param, kind = _describe(result)
                if status >= 500:
                    log.error("batch %s line %d (%s) failed: %r", batch_id, n, line.custom_id, result)
                rec = error_record(line.custom_id, code, message, line=n, status=status, param=param, error_type=kind)
            else:
                rec = success_record(line.custom_id, result)
            first = await asyncio.to_thread(
                self.db.execute,
                "UPDATE batch_lines SET record = ?, failed = ?, owner = NULL WHERE batch_id = ? AND line = ? "
                "AND record IS NULL",
                (json.dumps(rec, ensure_ascii=False), int(rec["error"] is not None), batch_id, n),
            )
            if first:
                self.lines_done.labels("failed" if rec["error"] is not None else "completed").inc()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the lease runs out and a process retries the line
            log.exception("batch %s line %d: could not run or record it", batch_id, n)
        finally:
            self.running.pop((batch_id, n), None)
            self.wake()

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
