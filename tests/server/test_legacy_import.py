"""Upgrading from the per-record files (servers before the state database, c429caf^): a data dir
in the old layout, written as the old code wrote it, is imported once at startup and read back
through the real server with the openai client."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from openai import OpenAI

from tests.serving import MODEL, ServerProcess, wait_for


def _json_atomic(path: Path, obj) -> None:  # the old lhama.server.files.write_json_atomic
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False))
    os.replace(tmp, path)


def _old_file(root: Path, file_id: str, content: bytes, filename: str, purpose: str, created_at: int) -> dict:
    """The old FileStore.create: ``<id>.data`` plus the ``<id>.json`` record."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{file_id}.data").write_bytes(content)
    meta = {
        "id": file_id,
        "object": "file",
        "bytes": (root / f"{file_id}.data").stat().st_size,
        "created_at": created_at,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
    }
    _json_atomic(root / f"{file_id}.json", meta)
    return meta


def _old_batch(root: Path, batch_id: str, input_file_id: str, created_at: int, **changes) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    meta = {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": "24h",
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": created_at,
        "in_progress_at": None,
        "expires_at": created_at + 24 * 3600,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": {"from": "old"},
        **changes,
    }
    _json_atomic(root / f"{batch_id}.json", meta)
    return meta


def _line(i: int) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"Say {i}."}], "max_tokens": 2}
    return json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})


def _old_data_dir(data: Path) -> dict:
    now = int(time.time()) - 100
    files = data / "files"
    inp = _old_file(
        files, "file-aa01", ("\n".join(_line(i) for i in range(2)) + "\n").encode(), "in.jsonl", "batch", now
    )
    done_rec = {
        "id": "batch_req_old0",
        "custom_id": "req-0",
        "response": {"status_code": 200, "request_id": "batch_req_old0", "body": {"answer": "from the ledger"}},
        "error": None,
    }
    out = _old_file(
        files, "file-aa02", (json.dumps(done_rec) + "\n").encode(), "batch_aa01_output.jsonl", "batch_output", now + 1
    )
    doc = _old_file(files, "file-aa03", b"Lhamas live in the Andes.\n", "notes.txt", "assistants", now + 2)
    batches = data / "batches"
    _old_batch(
        batches,
        "batch_aa01",
        inp["id"],
        now + 3,
        status="completed",
        output_file_id=out["id"],
        in_progress_at=now + 3,
        finalizing_at=now + 4,
        completed_at=now + 4,
        request_counts={"total": 2, "completed": 2, "failed": 0},
    )
    # Cut short by a restart: line 1 (req-0) answered in the ledger, line 2 (req-1) left to run.
    _old_batch(
        batches,
        "batch_aa02",
        inp["id"],
        now + 5,
        status="in_progress",
        in_progress_at=now + 5,
        request_counts={"total": 2, "completed": 0, "failed": 0},
    )
    (batches / "batch_aa02.partial.jsonl").write_text(json.dumps(done_rec) + "\n")
    vs = data / "vector_stores" / "vs_aa01"
    vs.mkdir(parents=True)
    vs_file = {
        "id": doc["id"],
        "object": "vector_store.file",
        "created_at": now + 6,
        "vector_store_id": "vs_aa01",
        "status": "completed",
        "usage_bytes": doc["bytes"],
        "chunking_strategy": {"type": "static"},
        "last_error": None,
    }
    _json_atomic(
        vs / "meta.json",
        {
            "id": "vs_aa01",
            "object": "vector_store",
            "created_at": now + 6,
            "name": "old notes",
            "usage_bytes": doc["bytes"],
            "last_active_at": now + 6,
            "status": "completed",
            "expires_after": None,
            "expires_at": None,
            "metadata": {},
            "files": {doc["id"]: vs_file},
        },
    )
    # The old lhama.openai.response_store: one SQLite file, rows (id, created_at, response, input, conversation).
    response = {
        "id": "resp_aa01",
        "object": "response",
        "created_at": now + 7,
        "status": "completed",
        "model": MODEL,
        "output": [
            {
                "id": "msg_aa01",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Hello from before.", "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }
    items = [{"id": "msg_in01", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]
    with sqlite3.connect(data / "responses.db") as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, created_at REAL NOT NULL, "
            "response TEXT NOT NULL, input_items TEXT NOT NULL, conversation TEXT NOT NULL)"
        )
        db.execute(
            "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
            ("resp_aa01", time.time(), json.dumps(response), json.dumps(items), json.dumps(items + response["output"])),
        )
    return {"doc": doc}


def test_old_data_dir_is_imported_once_and_served(tmp_path):
    data = tmp_path / "data"
    old = _old_data_dir(data)
    before = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file())
    srv = ServerProcess(data, "--log-level", "info")
    try:
        client = OpenAI(base_url=srv.base, api_key="x", max_retries=0, timeout=60)
        assert wait_for(lambda: "imported the pre-database state" in srv.log, timeout=10), srv.log
        line = next(x for x in srv.log.splitlines() if "imported the pre-database state" in x)
        assert "3 files, 2 batches, 1 vector stores, 1 stored responses" in line, line

        ids = [f.id for f in client.files.list()]
        # Newest first, as before. The cut-short batch below resumes at start-up and may already
        # have written its output file (newer than these): it is checked once the batch is done.
        imported = [i for i in ids if i.startswith("file-aa")]
        assert imported == ["file-aa03", "file-aa02", "file-aa01"], ids
        written_since = set(ids) - set(imported)
        assert client.files.retrieve("file-aa03").filename == "notes.txt"
        assert client.files.content("file-aa03").content == b"Lhamas live in the Andes.\n"

        done = client.batches.retrieve("batch_aa01")
        assert done.status == "completed" and done.metadata == {"from": "old"}
        assert json.loads(client.files.content(done.output_file_id).text)["custom_id"] == "req-0"

        # The cut-short batch goes on with the line the ledger did not answer, and keeps the other.
        final = wait_for(lambda: (b := client.batches.retrieve("batch_aa02")).status == "completed" and b, timeout=60)
        assert final, client.batches.retrieve("batch_aa02")
        assert final.request_counts.completed == 2 and final.request_counts.failed == 0
        assert written_since <= {final.output_file_id, final.error_file_id}, (written_since, final)
        out = [json.loads(x) for x in client.files.content(final.output_file_id).text.splitlines()]
        assert [o["custom_id"] for o in out] == ["req-0", "req-1"]
        assert out[0]["id"] == "batch_req_old0"  # from the ledger, not run again
        assert out[1]["response"]["status_code"] == 200 and out[1]["response"]["body"]["object"] == "chat.completion"

        vs = client.vector_stores.retrieve("vs_aa01")
        assert vs.name == "old notes" and vs.usage_bytes == old["doc"]["bytes"]
        assert [f.id for f in client.vector_stores.files.list("vs_aa01")] == ["file-aa03"]

        resp = client.responses.retrieve("resp_aa01")
        assert resp.output_text == "Hello from before."
        assert [i.id for i in client.responses.input_items.list("resp_aa01")] == ["msg_in01"]

        client.files.delete("file-aa02")  # must not come back from the old files
    finally:
        srv.stop()

    # The old files are all still there (a downgrade finds them; the content of the file deleted
    # through the API went with it), and the import never runs again.
    after = {str(p.relative_to(data)) for p in data.rglob("*") if p.is_file()}
    assert set(before) - after == {"files/file-aa02.data"}
    from lhama.server.legacy_import import import_legacy_state
    from lhama.server.state_db import StateDB

    db = StateDB(data / "state.db")
    try:
        assert import_legacy_state(db, data) is None
        assert db.one("SELECT 1 FROM files WHERE id = 'file-aa02'") is None
        assert db.one("SELECT COUNT(*) FROM files")[0] == 3  # file-aa01, file-aa03 and batch_aa02's new output
    finally:
        db.close()
