"""One-time import of the server state kept before the state database (``lhama.server.state_db``).

Servers before it kept, under ``--data-dir``:

* ``files/<file-id>.json`` (the record) and ``files/<file-id>.data`` (the content);
* ``batches/<batch-id>.json`` (the record) and ``batches/<batch-id>.partial.jsonl`` (the ledger
  of the lines already answered, one output record each);
* ``vector_stores/<vs-id>/meta.json`` (the record plus its file records under ``"files"``) beside
  ``store.db`` (the chunks, where the state database still looks for them with SQLite);
* ``responses.db`` (SQLite, table ``responses``: stored responses).

``import_legacy_state`` copies every such record that the database does not hold yet (``ON
CONFLICT DO NOTHING``: what the database has wins), logs one line with the counts, and records
that this data dir was imported (table ``state_imports``), so it never runs twice. The old files
are read, never changed or deleted: a downgrade still finds them. An unfinished batch keeps its
status and its answered lines (matched to the input by line number, then ``custom_id``), so the
worker loop goes on with the lines left.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path

log = logging.getLogger("lhama.server")

_MARK_TABLE = "CREATE TABLE IF NOT EXISTS state_imports (source TEXT PRIMARY KEY, done_at REAL NOT NULL)"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("legacy import: skipping unreadable %s", path)
        return None


def _ledger(path: Path) -> list[dict]:
    """The records of an old ``.partial.jsonl`` (a torn last line is ignored)."""
    if not path.is_file():
        return []
    out = []
    for raw in path.read_bytes().splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def _import_files(db, root: Path) -> int:
    n = 0
    for meta_path in sorted(root.glob("file-*.json")):
        meta = _read_json(meta_path)
        data = meta_path.with_suffix(".data")
        if not isinstance(meta, dict) or "id" not in meta or not data.is_file():
            continue
        n += db.execute(
            "INSERT INTO files (id, created_at, purpose, meta, content) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                meta["id"],
                int(meta.get("created_at") or 0),
                meta.get("purpose", "user_data"),
                json.dumps(meta, ensure_ascii=False),
                data.read_bytes(),
            ),
        )
    return n


def _batch_lines(db, meta: dict, ledger: list[dict]) -> list[tuple[int, dict | None]]:
    """The input's runnable lines, each with its answered record from the old ledger or None."""
    from lhama.openai.batch import scan_batch

    row = db.one("SELECT content FROM files WHERE id = ?", (meta.get("input_file_id"),))
    if row is None:
        return []

    class _Nothing:
        done_lines: set = frozenset()
        done_ids: set = frozenset()

    raw = bytes(row[0]).decode("utf-8", "surrogateescape").splitlines()
    scan = scan_batch(raw, _Nothing(), (meta["endpoint"],))
    by_line = {
        e["error"]["line"]: e
        for e in ledger
        if isinstance(e.get("error"), dict) and isinstance(e["error"].get("line"), int)
    }
    by_id = {e["custom_id"]: e for e in ledger if e.get("error") is None and isinstance(e.get("custom_id"), str)}
    return [(ln.line, by_line.get(ln.line) or by_id.get(ln.custom_id)) for ln in scan.todo]


def _import_batches(db, root: Path) -> int:
    n = 0
    for meta_path in sorted(root.glob("batch_*.json")):
        meta = _read_json(meta_path)
        if not isinstance(meta, dict) or "id" not in meta or "status" not in meta:
            continue
        lines: list[tuple[int, dict | None]] = []
        if meta["status"] in ("in_progress", "finalizing", "cancelling"):
            lines = _batch_lines(db, meta, _ledger(meta_path.with_name(f"{meta['id']}.partial.jsonl")))
            if meta["status"] == "finalizing" and any(rec is None for _, rec in lines):
                meta["status"] = "in_progress"  # the worker finishes the lines left, then finalises
        added = db.execute(
            "INSERT INTO batches (id, created_at, status, meta) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (meta["id"], int(meta.get("created_at") or 0), meta["status"], json.dumps(meta, ensure_ascii=False)),
        )
        if not added:
            continue
        n += 1
        for line, rec in lines:
            db.execute(
                "INSERT INTO batch_lines (batch_id, line, failed, record) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    meta["id"],
                    line,
                    None if rec is None else int(rec.get("error") is not None),
                    None if rec is None else json.dumps(rec, ensure_ascii=False),
                ),
            )
    return n


def _import_vector_stores(db, root: Path) -> int:
    n = 0
    for meta_path in sorted(root.glob("vs_*/meta.json")):
        meta = _read_json(meta_path)
        if not isinstance(meta, dict) or "id" not in meta:
            continue
        files = meta.pop("files", None) or {}
        added = db.execute(
            "INSERT INTO vector_stores (id, created_at, meta) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (meta["id"], int(meta.get("created_at") or 0), json.dumps(meta, ensure_ascii=False)),
        )
        if not added:
            continue
        n += 1
        for file_id, obj in files.items():
            db.execute(
                "INSERT INTO vector_store_files (store_id, file_id, created_at, obj) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (meta["id"], file_id, int(obj.get("created_at") or 0), json.dumps(obj, ensure_ascii=False)),
            )
    return n


def _import_responses(db, path: Path) -> int:
    if not path.is_file():
        return 0
    old = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = old.execute("SELECT id, created_at, response, input_items, conversation FROM responses").fetchall()
    except sqlite3.Error:
        log.warning("legacy import: cannot read %s", path, exc_info=True)
        return 0
    finally:
        old.close()
    return sum(
        db.execute(
            "INSERT INTO responses (id, created_at, response, input_items, conversation) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            tuple(r),
        )
        for r in rows
    )


def import_legacy_state(db, data_dir: Path) -> dict[str, int] | None:
    """Import ``data_dir``'s pre-database records into ``db`` once; the counts imported, or None
    when this data dir was imported before."""
    data_dir = Path(data_dir).expanduser()
    source = f"legacy:{data_dir.resolve()}"
    db.execute(_MARK_TABLE)
    if db.one("SELECT 1 FROM state_imports WHERE source = ?", (source,)) is not None:
        return None
    with db.transaction():  # replicas starting together: one imports, the others find the mark
        if db.postgres:
            db.execute("SELECT pg_advisory_xact_lock(746169)")
        if db.one("SELECT 1 FROM state_imports WHERE source = ?", (source,)) is not None:
            return None
        counts = {"files": _import_files(db, data_dir / "files")}
        counts["batches"] = _import_batches(db, data_dir / "batches")
        if db.postgres:  # chunks sit in <data-dir>/vector_stores/<id>/store.db, not in pgvector tables
            if any((data_dir / "vector_stores").glob("vs_*/meta.json")):
                log.warning(
                    "legacy import: vector stores under %s are not imported into PostgreSQL "
                    "(their chunks are in SQLite files); recreate them",
                    data_dir / "vector_stores",
                )
            counts["vector_stores"] = 0
        else:
            counts["vector_stores"] = _import_vector_stores(db, data_dir / "vector_stores")
        counts["responses"] = _import_responses(db, data_dir / "responses.db")
        db.execute(
            "INSERT INTO state_imports (source, done_at) VALUES (?, ?) ON CONFLICT DO NOTHING", (source, time.time())
        )
    if any(counts.values()):
        log.info(
            "imported the pre-database state of %s: %d files, %d batches, %d vector stores, %d stored responses",
            data_dir,
            counts["files"],
            counts["batches"],
            counts["vector_stores"],
            counts["responses"],
        )
    return counts
