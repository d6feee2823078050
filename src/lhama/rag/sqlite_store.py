"""The default store: one SQLite file holding chunk text, an FTS5 index (BM25) and a sqlite-vec
``vec0`` table (exact cosine KNN), updated together in one transaction.

Why SQLite + sqlite-vec: a single file the user can copy or delete, no server, crash-safe
transactions that cover text, lexical index and vectors at once (FAISS and LanceDB keep the
vectors apart from a text/BM25 index, so an interrupted re-add can leave them disagreeing).
Exact search is fast enough for a personal collection (~100k chunks: tens of ms); past one
machine, use PostgreSQL + pgvector.

Python's own ``sqlite3`` is often built without extension loading (this project's CI Python
is), so the ``sqlean`` drop-in, which allows it and ships FTS5, is used when needed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from lhama.rag.chunking import ChunkDraft
from lhama.rag.errors import VectorStoreError
from lhama.rag.store import ChunkRecord, FileRecord, VectorStore, embedding_text, query_terms

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
  id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, name TEXT NOT NULL, sha256 TEXT NOT NULL,
  bytes INTEGER NOT NULL, chunks INTEGER NOT NULL, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
  id INTEGER PRIMARY KEY, file_id INTEGER NOT NULL REFERENCES files(id), idx INTEGER NOT NULL,
  heading TEXT NOT NULL, page INTEGER, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_file ON chunks(file_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(title, body, tokenize='porter unicode61');
"""


def _sqlite():
    import sqlite3

    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3
    try:
        import sqlean
    except ImportError:
        raise VectorStoreError("this Python's sqlite3 cannot load extensions; pip install sqlean-py") from None
    return sqlean


class SqliteVectorStore(VectorStore):
    def __init__(self, path: str | Path):
        import sqlite_vec

        self.path = Path(path).expanduser()
        self.location = str(self.path)
        if self.path.is_dir():
            raise VectorStoreError(f"{self.path} is a folder; give the store's file name (e.g. {self.path}/rag.db)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sqlite = _sqlite()
        try:
            self.db = sqlite.connect(str(self.path), check_same_thread=False, timeout=30)
            self.db.enable_load_extension(True)
            sqlite_vec.load(self.db)
            self.db.enable_load_extension(False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
        except sqlite.DatabaseError as e:
            raise VectorStoreError(f"{self.path} is not a usable store: {e}") from None
        self._lock = threading.RLock()
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        self._embedder, self._dim = meta.get("embedder"), int(meta["dim"]) if "dim" in meta else None

    def _create_vector_index(self, name: str, dim: int) -> None:
        with self._lock, self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('embedder', ?), ('dim', ?)", (name, str(dim)))
            self.db.execute(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS chunks_vec USING vec0("
                f"embedding float[{int(dim)}] distance_metric=cosine)"
            )

    def _file_row(self, row) -> FileRecord:
        return FileRecord(key=row[0], name=row[1], sha256=row[2], bytes=row[3], chunks=row[4], added_at=row[5])

    def file(self, key: str) -> FileRecord | None:
        with self._lock:
            row = self.db.execute(
                "SELECT key, name, sha256, bytes, chunks, added_at FROM files WHERE key = ?", (key,)
            ).fetchone()
        return self._file_row(row) if row else None

    def files(self) -> list[FileRecord]:
        with self._lock:
            rows = self.db.execute("SELECT key, name, sha256, bytes, chunks, added_at FROM files ORDER BY key")
            return [self._file_row(r) for r in rows.fetchall()]

    def _delete_file(self, file_id: int) -> None:
        ids = [r[0] for r in self.db.execute("SELECT id FROM chunks WHERE file_id = ?", (file_id,))]
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            self.db.execute(f"DELETE FROM chunks_fts WHERE rowid IN ({marks})", part)
            if self._dim is not None:
                self.db.execute(f"DELETE FROM chunks_vec WHERE rowid IN ({marks})", part)
        self.db.execute("DELETE FROM chunks WHERE file_id = ?", (file_id,))
        self.db.execute("DELETE FROM files WHERE id = ?", (file_id,))

    def replace_file(self, record: FileRecord, drafts: list[ChunkDraft], vectors: np.ndarray) -> None:
        if self._dim is None:
            raise VectorStoreError("bind an embedder before adding documents")
        if len(drafts) != len(vectors):
            raise ValueError("one vector per chunk")
        with self._lock, self.db:  # one transaction: the old version stays whole if anything fails
            old = self.db.execute("SELECT id FROM files WHERE key = ?", (record.key,)).fetchone()
            if old:
                self._delete_file(old[0])
            cur = self.db.execute(
                "INSERT INTO files (key, name, sha256, bytes, chunks, added_at) VALUES (?, ?, ?, ?, ?, ?)",
                (record.key, record.name, record.sha256, record.bytes, len(drafts), record.added_at or time.time()),
            )
            file_id = cur.lastrowid
            for d, v in zip(drafts, vectors):
                cid = self.db.execute(
                    "INSERT INTO chunks (file_id, idx, heading, page, text) VALUES (?, ?, ?, ?, ?)",
                    (file_id, d.index, d.heading, d.page, d.text),
                ).lastrowid
                title, _, body = embedding_text(record.name, d).partition("\n")
                self.db.execute(
                    "INSERT INTO chunks_fts (rowid, title, body) VALUES (?, ?, ?)",
                    (cid, title, body if body else title),
                )
                self.db.execute(
                    "INSERT INTO chunks_vec (rowid, embedding) VALUES (?, ?)",
                    (cid, np.asarray(v, dtype=np.float32).tobytes()),
                )

    def remove_file(self, key: str) -> bool:
        with self._lock, self.db:
            row = self.db.execute("SELECT id FROM files WHERE key = ?", (key,)).fetchone()
            if row:
                self._delete_file(row[0])
        return row is not None

    def vector_search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        if self._dim is None or k <= 0:
            return []
        with self._lock:
            rows = self.db.execute(
                "SELECT rowid, distance FROM chunks_vec WHERE embedding MATCH ? AND k = ? ORDER BY distance",
                (np.asarray(vector, np.float32).tobytes(), min(k, 4096)),
            )
            return [(int(r), 1.0 - float(d)) for r, d in rows.fetchall()]

    def lexical_search(self, query: str, k: int) -> list[tuple[int, float]]:
        terms = query_terms(query)
        if not terms or k <= 0:
            return []
        # Quoted terms OR-ed: any word may match, BM25 weighs rare ones; quoting disarms FTS5 syntax.
        expr = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
        with self._lock:
            # bm25() is lower-is-better; the title column (file + headings) weighs double.
            rows = self.db.execute(
                "SELECT rowid, bm25(chunks_fts, 2.0, 1.0) AS s FROM chunks_fts "
                "WHERE chunks_fts MATCH ? ORDER BY s LIMIT ?",
                (expr, k),
            )
            return [(int(r), -float(s)) for r, s in rows.fetchall()]

    def vectors(self, ids: list[int]) -> dict[int, np.ndarray]:
        if not ids or self._dim is None:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self.db.execute(f"SELECT rowid, embedding FROM chunks_vec WHERE rowid IN ({marks})", list(ids))
            return {int(r): np.frombuffer(b, dtype=np.float32) for r, b in rows.fetchall()}

    def chunks(self, ids: list[int]) -> dict[int, ChunkRecord]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self.db.execute(
                f"SELECT c.id, f.key, f.name, c.idx, c.heading, c.page, c.text FROM chunks c "
                f"JOIN files f ON f.id = c.file_id WHERE c.id IN ({marks})",
                list(ids),
            )
            return {r[0]: ChunkRecord(*r) for r in rows.fetchall()}

    def count_chunks(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def destroy(self) -> None:
        self.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)
