"""One database for everything the server keeps: files (records and contents), batches and their
lines, vector stores (records and file lists), and stored responses.

Every replica of a scaled-out server (``lhama serve --replicas N``, docs/scaling.md) opens the
same database, so any replica answers any request:

* SQLite (the default, ``<data-dir>/state.db``): one machine. WAL mode, and a 60 s busy
  timeout, so several server processes on the machine share it.
* PostgreSQL (``--state-db postgresql://...``): several machines. Vector-store chunks go to
  pgvector tables (``lhama.rag.pg_store``), one table pair per store.

The SQL is written once with ``?`` placeholders and the subset both dialects share
(``ON CONFLICT``, ``RETURNING``); ``BLOB`` and ``REAL`` become ``BYTEA`` and ``DOUBLE
PRECISION`` on PostgreSQL. One connection per process, behind a lock (the queries are short).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

from lhama.extras import require

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS files (
        id TEXT PRIMARY KEY, created_at BIGINT NOT NULL, purpose TEXT NOT NULL, meta TEXT NOT NULL,
        content BLOB NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS batches (
        id TEXT PRIMARY KEY, created_at BIGINT NOT NULL, status TEXT NOT NULL, meta TEXT NOT NULL,
        owner TEXT, lease_until REAL NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS batch_lines (
        batch_id TEXT NOT NULL, line INTEGER NOT NULL, owner TEXT, lease_until REAL NOT NULL DEFAULT 0,
        failed INTEGER, record TEXT, PRIMARY KEY (batch_id, line))""",
    "CREATE INDEX IF NOT EXISTS batch_lines_todo ON batch_lines (batch_id, failed)",
    """CREATE TABLE IF NOT EXISTS vector_stores (
        id TEXT PRIMARY KEY, created_at BIGINT NOT NULL, meta TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS vector_store_files (
        store_id TEXT NOT NULL, file_id TEXT NOT NULL, created_at BIGINT NOT NULL, obj TEXT NOT NULL,
        PRIMARY KEY (store_id, file_id))""",
    """CREATE TABLE IF NOT EXISTS responses (
        id TEXT PRIMARY KEY, created_at REAL NOT NULL, response TEXT NOT NULL, input_items TEXT NOT NULL,
        conversation TEXT NOT NULL)""",
)


def is_postgres(location: str | Path) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


class StateDB:
    def __init__(self, location: str | Path):
        self.location = str(location)
        self.postgres = is_postgres(self.location)
        self._lock = threading.RLock()
        self._depth = 0  # transactions open (the lock keeps them to one thread)
        if self.postgres:
            psycopg = require("psycopg", "pg")
            try:
                self._db = psycopg.connect(self.location, autocommit=True)
            except psycopg.Error as e:
                from lhama.errors import ConfigError

                raise ConfigError(f"--state-db: cannot connect to {self.location}: {e}".strip()) from None
            with self.transaction():
                # Replicas start together: one at a time creates the tables.
                self._db.execute("SELECT pg_advisory_xact_lock(746168)")
                for stmt in SCHEMA:
                    self._db.execute(stmt.replace("BLOB", "BYTEA").replace("REAL", "DOUBLE PRECISION"))
        else:
            path = Path(self.location).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            for stmt in SCHEMA:
                self._db.execute(stmt)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgres else sql

    def execute(self, sql: str, params: tuple = ()) -> int:
        """Run one statement; the number of rows it changed."""
        with self._lock:
            return self._db.execute(self._sql(sql), params).rowcount

    def all(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return [tuple(r) for r in self._db.execute(self._sql(sql), params).fetchall()]

    def one(self, sql: str, params: tuple = ()) -> tuple | None:
        rows = self.all(sql, params)
        return rows[0] if rows else None

    @contextlib.contextmanager
    def transaction(self):
        """Statements inside run as one transaction (SQLite: taking the write lock up front)."""
        with self._lock:
            if self._depth:  # already inside one: part of it
                yield self
                return
            self._depth += 1
            try:
                if self.postgres:
                    with self._db.transaction():
                        yield self
                    return
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                self._depth -= 1

    def close(self) -> None:
        with self._lock:
            self._db.close()
