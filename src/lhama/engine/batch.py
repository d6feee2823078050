"""Offline batch jobs in the OpenAI Batch file format, resumable after any crash.

Input: one JSON object per line, ``{"custom_id", "method": "POST", "url": "/v1/chat/completions"
| "/v1/completions", "body": {...}}``. Output: one line per input line, in completion order,
``{"id", "custom_id", "response": {"status_code": 200, "request_id", "body"}, "error": null}``, or
``"response": null`` and ``"error": {"code", "message", "line"}`` for a line that could not be
served (bad JSON, unknown url, invalid parameters, ...). A bad line never stops the job.

Durability: each answered line is appended and fsync'ed before the next is written. On restart
the output is read back, a torn last line (the process died mid-write) is cut off, and every
input line already answered is skipped - so a job killed at any moment and restarted ends with
every line answered exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from lhama.engine.config import EngineConfig
from lhama.engine.engine import LLMEngine
from lhama.engine.openai_format import (
    CHAT_URL,
    COMPLETIONS_URL,
    PreparedRequest,
    chat_completion_body,
    prepare_request,
    text_completion_body,
)
from lhama.engine.sequence import Request
from lhama.errors import LhamaError

log = logging.getLogger("lhama.engine")


@dataclass
class BatchSummary:
    total: int = 0  # input lines
    already_done: int = 0  # answered by an earlier run
    succeeded: int = 0  # answered with a response in this run
    failed: int = 0  # answered with an error in this run


@dataclass
class _Job:
    line: int
    custom_id: str
    prep: PreparedRequest
    requests: list[Request] = field(default_factory=list)


def _error(code: str, message: str, line: int) -> dict:
    return {"code": code, "message": message, "line": line}


class _Output:
    """Append-only, fsync'ed JSONL output that knows what it already holds."""

    def __init__(self, path: Path):
        self.path = path
        self.done_ids: set[str] = set()
        self.done_lines: set[int] = set()
        if path.exists():
            self._recover()
        self.f = open(path, "ab")

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
            if not isinstance(entry, dict):
                continue
            err = entry.get("error")
            if isinstance(err, dict) and isinstance(err.get("line"), int):
                self.done_lines.add(err["line"])
                if err.get("code") == "duplicate_custom_id":
                    continue
            if isinstance(entry.get("custom_id"), str):
                self.done_ids.add(entry["custom_id"])

    def write(self, entry: dict) -> None:
        self.f.write(json.dumps(entry, ensure_ascii=False).encode("utf-8") + b"\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


def _parse_line(raw: str, lineno: int):
    """(custom_id, url, body) or raises (code, message)."""
    try:
        obj = json.loads(raw)
    except ValueError as e:
        raise _LineError("invalid_json", f"line {lineno} is not valid JSON: {e}", None) from None
    if not isinstance(obj, dict):
        raise _LineError("invalid_request", f"line {lineno} is not a JSON object", None)
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        raise _LineError("invalid_request", f"line {lineno} has no string 'custom_id'", None)
    if obj.get("method", "POST") != "POST":
        raise _LineError("invalid_request", f"method must be POST, got {obj.get('method')!r}", cid)
    url = obj.get("url")
    if url not in (CHAT_URL, COMPLETIONS_URL):
        raise _LineError("unsupported_url", f"url {url!r} is not supported; use {CHAT_URL} or {COMPLETIONS_URL}", cid)
    return cid, url, obj.get("body")


class _LineError(Exception):
    def __init__(self, code: str, message: str, custom_id: str | None):
        super().__init__(message)
        self.code, self.message, self.custom_id = code, message, custom_id


def _parse_unique_line(raw: str, lineno: int, first_line_of: dict[str, int]):
    """``_parse_line``, and a custom_id seen on an earlier line is an error too."""
    cid, url, body = _parse_line(raw, lineno)
    if first_line_of.get(cid) != lineno:
        raise _LineError("duplicate_custom_id", f"custom_id {cid!r} already appears on line {first_line_of[cid]}",
                         cid)
    return cid, url, body


def run_batch_file(loaded, in_path: str | Path, out_path: str | Path, config: EngineConfig | None = None, *,
                   progress: bool = True, engine: LLMEngine | None = None,
                   max_in_flight: int | None = None) -> BatchSummary:
    """Answer every line of ``in_path`` into ``out_path`` (appending; resumes an earlier run)."""
    in_path, out_path = Path(in_path), Path(out_path)
    engine = engine or LLMEngine.from_loaded(loaded, config)
    max_in_flight = max_in_flight or 2 * engine.config.max_num_seqs
    lines = in_path.read_text(encoding="utf-8").splitlines()
    out = _Output(out_path)
    summary = BatchSummary()

    # Which lines are still to do; a repeated custom_id is an error on its later lines.
    first_line_of: dict[str, int] = {}
    todo: list[tuple[int, str]] = []
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        summary.total += 1
        cid = None
        try:
            obj = json.loads(raw)
            cid = obj.get("custom_id") if isinstance(obj, dict) else None
        except ValueError:
            pass
        is_first = isinstance(cid, str) and cid and first_line_of.setdefault(cid, i) == i
        done = (i in out.done_lines) or (is_first and cid in out.done_ids)
        if done:
            summary.already_done += 1
        else:
            todo.append((i, raw))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=summary.total, initial=summary.already_done, unit="req", desc="batch")

    def answer(entry: dict, ok: bool) -> None:
        out.write(entry)
        if ok:
            summary.succeeded += 1
        else:
            summary.failed += 1
        if bar is not None:
            bar.update(1)

    def fail(lineno: int, cid: str | None, code: str, message: str) -> None:
        answer({"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": cid, "response": None,
                "error": _error(code, message, lineno)}, False)

    in_flight: list[_Job] = []
    pending = iter(todo)
    exhausted = False
    try:
        while True:
            # Keep the engine fed; validation errors are answered right away.
            while not exhausted and sum(len(j.requests) for j in in_flight) < max_in_flight:
                nxt = next(pending, None)
                if nxt is None:
                    exhausted = True
                    break
                lineno, raw = nxt
                try:
                    cid, url, body = _parse_unique_line(raw, lineno, first_line_of)
                except _LineError as e:
                    fail(lineno, e.custom_id, e.code, e.message)
                    continue
                job = _Job(lineno, cid, None)  # type: ignore[arg-type]
                try:
                    job.prep = prepare_request(loaded, url, body, engine.max_model_len)
                    for p in job.prep.prompts:
                        job.requests.append(engine.add_request(None, p, job.prep.params))
                except LhamaError as e:
                    for r in job.requests:
                        engine.abort(r.request_id)
                    fail(lineno, cid, e.code, str(e))
                    continue
                except (TypeError, ValueError, KeyError) as e:
                    for r in job.requests:
                        engine.abort(r.request_id)
                    fail(lineno, cid, "invalid_request", f"{type(e).__name__}: {e}")
                    continue
                in_flight.append(job)
            if not in_flight:
                if exhausted:
                    break
                continue
            engine.step()
            still = []
            for job in in_flight:
                if all(r.finished for r in job.requests):
                    results = [engine.result(r) for r in job.requests]
                    if job.prep.kind == "chat":
                        body = chat_completion_body(loaded, job.prep, results[0])
                    else:
                        body = text_completion_body(loaded, job.prep, results)
                    answer({"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": job.custom_id,
                            "response": {"status_code": 200, "request_id": job.requests[0].request_id,
                                         "body": body}, "error": None}, True)
                else:
                    still.append(job)
            in_flight = still
    finally:
        for job in in_flight:  # interrupted (KeyboardInterrupt...): free the engine for reuse
            for r in job.requests:
                engine.abort(r.request_id)
        out.close()
        if bar is not None:
            bar.close()
    return summary
