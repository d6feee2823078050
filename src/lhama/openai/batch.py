"""One resumable runner for OpenAI batch files, whatever executes the requests.

Input: one JSON object per line, ``{"custom_id", "method": "POST", "url", "body"}``. Output
(the ledger): one record per input line, in completion order, ``{"id", "custom_id", "response":
{"status_code", "request_id", "body"}, "error"}``; ``error`` is null for an answer, else
``{"code", "message", "line"}`` (``response`` then holds the HTTP error body when the request
got as far as having a status, and is null for a line that is not a request at all: bad JSON,
no custom_id, unknown url).

Durability: each record is appended and fsync'ed as it is made. On restart the ledger is read
back, a torn last line (the writer died mid-line) is cut off, and every input line already
answered is skipped, so a job killed at any moment and restarted answers every line once.

Isolation: whatever one line does - invalid parameters, an exception while it is prepared, run
or turned into a body - becomes that line's error record and the job goes on.

Executors (how lines are run) plug in:
- ``lhama.openai.engine_batch.EngineExecutor``: an in-process ``LLMEngine`` (``lhama batch``);
- ``lhama.parallel.ray_batch.RayExecutor``: chunks of lines on Ray actors, each with an engine;
- the server's ``/v1/batches`` (``lhama.server.batches``): an async executor on its engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lhama.errors import LhamaError
from lhama.openai.requests import CHAT_URL, COMPLETIONS_URL
from lhama.openai.schemas import invalid_unicode

log = logging.getLogger("lhama.openai")
GENERATION_URLS = (CHAT_URL, COMPLETIONS_URL)


@dataclass(frozen=True)
class BatchLine:
    line: int  # 1-based line number in the input file
    custom_id: str
    url: str
    body: dict


class LineError(Exception):
    """A line that is not a request this job can run (bad JSON, no custom_id, wrong url...)."""

    def __init__(self, code: str, message: str, custom_id: str | None = None):
        super().__init__(message)
        self.code, self.message, self.custom_id = code, message, custom_id


class LineFailed(Exception):
    """A line's failure reported from another process (a Ray actor), by its description."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None, error_type: str | None = None):
        super().__init__(message)
        self.fields = (status, code, message, param, error_type)


@dataclass
class BatchSummary:
    total: int = 0  # input lines
    already_done: int = 0  # answered by an earlier run
    succeeded: int = 0  # answered with a response in this run
    failed: int = 0  # answered with an error in this run


# -- records ------------------------------------------------------------------------------------
def success_record(custom_id: str, body: dict, request_id: str | None = None) -> dict:
    rid = request_id or f"batch_req_{uuid.uuid4().hex}"
    return {
        "id": rid,
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": rid, "body": body},
        "error": None,
    }


def error_record(
    custom_id: str | None,
    code: str,
    message: str,
    *,
    line: int | None,
    status: int | None = None,
    param: str | None = None,
    error_type: str | None = None,
) -> dict:
    rid = f"batch_req_{uuid.uuid4().hex}"
    response = None
    if status is not None:
        kind = error_type or ("server_error" if status >= 500 else "invalid_request_error")
        response = {
            "status_code": status,
            "request_id": rid,
            "body": {"error": {"message": message, "type": kind, "param": param, "code": code}},
        }
    return {
        "id": rid,
        "custom_id": custom_id,
        "response": response,
        "error": {"code": code, "message": message, "line": line},
    }


def describe_error(exc: BaseException) -> tuple[int, str, str, str | None, str | None]:
    """(HTTP status, code, message, param, error type or None) for an exception raised while
    running a line."""
    if isinstance(exc, LineFailed):
        return exc.fields
    if isinstance(exc, LhamaError):
        return exc.http_status, exc.code, str(exc), getattr(exc, "param", None), None
    # The exception's own text (torch's can be an unformatted "%ld" message) goes to the log only.
    return (
        500,
        "internal_error",
        f"internal error while running this line ({type(exc).__name__}); see the log",
        None,
        None,
    )


# -- the ledger -----------------------------------------------------------------------------------
class BatchLedger:
    """The append-only, fsync'ed JSONL output, and what it already holds."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: list[dict] = []
        if self.path.exists():
            self._recover()
        self.f = open(self.path, "ab")  # noqa: SIM115 - appended to until close()

    def _recover(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # torn last line: the writer died mid-line
            log.warning("%s: dropping a torn last line (%d bytes) from an interrupted run", self.path, len(data) - end)
            with open(self.path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        for raw in data[:end].splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                self.records.append(entry)

    @property
    def done_lines(self) -> set[int]:
        """Input lines answered with an error record (which names its line)."""
        return {
            e["error"]["line"]
            for e in self.records
            if isinstance(e.get("error"), dict) and isinstance(e["error"].get("line"), int)
        }

    @property
    def done_ids(self) -> set[str]:
        """custom_ids answered (a duplicate_custom_id record answers a later line, not the id)."""
        return {
            e["custom_id"]
            for e in self.records
            if isinstance(e.get("custom_id"), str)
            and not (isinstance(e.get("error"), dict) and e["error"].get("code") == "duplicate_custom_id")
        }

    def write(self, entry: dict) -> None:
        self.f.write(json.dumps(entry, ensure_ascii=False).encode("utf-8") + b"\n")
        self.f.flush()
        os.fsync(self.f.fileno())
        self.records.append(entry)

    def close(self) -> None:
        self.f.close()


# -- scanning the input -----------------------------------------------------------------------------
def parse_line(raw: str, lineno: int, urls: Sequence[str] = GENERATION_URLS) -> BatchLine:
    """One input line as a ``BatchLine``, or ``LineError``."""
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise LineError("invalid_json", f"line {lineno} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise LineError("invalid_request", f"line {lineno} is not a JSON object")
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        raise LineError("invalid_request", f"line {lineno} has no string 'custom_id'")
    if invalid_unicode(cid):
        raise LineError("invalid_request", f"line {lineno}: custom_id is not valid UTF-8 text")
    if obj.get("method", "POST") != "POST":
        raise LineError("invalid_request", f"method must be POST, got {obj.get('method')!r}", cid)
    url = obj.get("url")
    if url not in urls:
        raise LineError("unsupported_url", f"url {url!r} is not supported here; use {' or '.join(urls)}", cid)
    if not isinstance(obj.get("body"), dict):
        raise LineError("invalid_request", f"line {lineno} needs an object 'body'", cid)
    return BatchLine(lineno, cid, url, obj["body"])


@dataclass
class BatchScan:
    """What a run has to do: ``todo`` lines to execute, ``invalid`` lines (with their error),
    and the counts so far."""

    todo: list[BatchLine] = field(default_factory=list)
    invalid: list[tuple[int, LineError]] = field(default_factory=list)
    summary: BatchSummary = field(default_factory=BatchSummary)


def scan_batch(lines: Sequence[str], ledger: BatchLedger, urls: Sequence[str] = GENERATION_URLS) -> BatchScan:
    """Parse every input line; skip the ones ``ledger`` already answered. A custom_id seen on
    an earlier line makes a later line invalid (``duplicate_custom_id``)."""
    scan = BatchScan()
    done_lines, done_ids = ledger.done_lines, ledger.done_ids
    first_line_of: dict[str, int] = {}
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        scan.summary.total += 1
        item: BatchLine | None = None
        try:
            item = parse_line(raw, i, urls)
            cid = item.custom_id
        except LineError as err:
            bad, cid = err, err.custom_id
        first = cid is not None and first_line_of.setdefault(cid, i) == i
        if item is not None and not first:
            item, bad = (
                None,
                LineError(
                    "duplicate_custom_id", f"custom_id {cid!r} already appears on line {first_line_of[cid]}", cid
                ),
            )
        if i in done_lines or (first and cid in done_ids):
            scan.summary.already_done += 1
        elif item is None:
            scan.invalid.append((i, bad))
        else:
            scan.todo.append(item)
    return scan


# -- running ----------------------------------------------------------------------------------------
Answer = Callable[[BatchLine, "dict | BaseException"], None]


class Executor(Protocol):
    """Runs lines, calling ``answer(line, body)`` with each response body as it is ready, or
    ``answer(line, exception)`` for a line that failed; it answers every line it was given."""

    def run(self, lines: Sequence[BatchLine], answer: Answer) -> None: ...


class AsyncExecutor(Protocol):
    """Runs one line at a time on an event loop; returns the response body or raises."""

    async def execute(self, line: BatchLine) -> dict: ...


class BatchRun:
    """One pass over a batch: the scan, the ledger, and turning results into records."""

    def __init__(
        self,
        lines: Sequence[str],
        ledger: BatchLedger,
        urls: Sequence[str] = GENERATION_URLS,
        *,
        describe: Callable[[BaseException], tuple] = describe_error,
        on_record: Callable[[dict], None] | None = None,
    ):
        self.ledger, self.describe, self.on_record = ledger, describe, on_record
        self.scan = scan_batch(lines, ledger, urls)
        self.summary = self.scan.summary

    def write(self, record: dict) -> None:
        self.ledger.write(record)
        if record["error"] is None:
            self.summary.succeeded += 1
        else:
            self.summary.failed += 1
        if self.on_record is not None:
            self.on_record(record)

    def answer_invalid(self) -> None:
        """Answer every invalid line with its error (the offline policy; the server fails the
        whole batch instead, as OpenAI does)."""
        for lineno, e in self.scan.invalid:
            self.write(error_record(e.custom_id, e.code, e.message, line=lineno))

    def answer(self, line: BatchLine, result: dict | BaseException) -> None:
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result  # KeyboardInterrupt, cancellation: stop the job, it resumes later
            status, code, message, param, kind = self.describe(result)
            if status >= 500:
                log.error("batch line %d (%s) failed: %r", line.line, line.custom_id, result)
            self.write(
                error_record(line.custom_id, code, message, line=line.line, status=status, param=param, error_type=kind)
            )
        else:
            self.write(success_record(line.custom_id, result))


def _progress(run: BatchRun, progress: bool, desc: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    bar = tqdm(total=run.summary.total, initial=run.summary.already_done, unit="req", desc=desc)
    run.on_record = lambda _record: bar.update(1)
    return bar


def run_batch(
    in_path: str | Path, out_path: str | Path, executor: Executor, *, progress: bool = True, desc: str = "batch"
) -> BatchSummary:
    """Answer every line of ``in_path`` into ``out_path`` (appending; resumes an earlier run)."""
    # Bytes that are not UTF-8 become lone surrogates, which the request models refuse naming the
    # field: that line's error record says so, and the job goes on.
    lines = Path(in_path).read_bytes().decode("utf-8", "surrogateescape").splitlines()
    ledger = BatchLedger(out_path)
    bar = None
    try:
        run = BatchRun(lines, ledger)
        bar = _progress(run, progress, desc)
        run.answer_invalid()
        if run.scan.todo:
            executor.run(run.scan.todo, run.answer)
        return run.summary
    finally:
        ledger.close()
        if bar is not None:
            bar.close()


async def run_lines_async(
    run: BatchRun, executor: AsyncExecutor, lines: Iterable[BatchLine], *, concurrency: int
) -> None:
    """Execute ``lines`` at most ``concurrency`` at a time; each line's outcome becomes its record."""
    sem = asyncio.Semaphore(concurrency)

    async def one(line: BatchLine) -> None:
        async with sem:
            try:
                result: dict | BaseException = await executor.execute(line)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - this line's error record
                result = e
        run.answer(line, result)

    await asyncio.gather(*(one(ln) for ln in lines))
