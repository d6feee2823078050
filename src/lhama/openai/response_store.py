"""Stored responses (``store: true``, OpenAI's default) in one database table, so
``previous_response_id``, retrieve, delete and ``input_items`` work across restarts and across
the replicas of a scaled-out server.

A row keeps the response object, this request's input items, and the whole conversation
(every earlier turn's input and output items, tool calls and outputs included) that a
continued response starts from. The table lives in the server's state database (any object
with ``execute(sql, params)`` and ``one(sql, params)`` taking ``?`` placeholders: SQLite or
PostgreSQL); ``ResponseStore.open(path)`` gives a store of its own in one SQLite file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    conversation TEXT NOT NULL
)
"""


class _SqliteFile:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")

    def execute(self, sql: str, params: tuple = ()) -> int:
        with self._lock:
            return self._db.execute(sql, params).rowcount

    def one(self, sql: str, params: tuple = ()):
        with self._lock:
            return self._db.execute(sql, params).fetchone()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class ResponseStore:
    def __init__(self, db):
        self.db = db
        self.db.execute(_SCHEMA)

    @classmethod
    def open(cls, path: Path) -> ResponseStore:
        return cls(_SqliteFile(Path(path)))

    def put(self, response: dict, input_items: list[dict], conversation: list[dict]) -> None:
        row = (
            response["id"],
            time.time(),
            json.dumps(response, ensure_ascii=False),
            json.dumps(input_items, ensure_ascii=False),
            json.dumps(conversation, ensure_ascii=False),
        )
        self.db.execute(
            "INSERT INTO responses (id, created_at, response, input_items, conversation) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET created_at = excluded.created_at, response = excluded.response, "
            "input_items = excluded.input_items, conversation = excluded.conversation",
            row,
        )

    def _row(self, rid: str, column: str):
        row = self.db.one(f"SELECT {column} FROM responses WHERE id = ?", (rid,))
        return None if row is None else json.loads(row[0])

    def get(self, rid: str) -> dict | None:
        return self._row(rid, "response")

    def input_items(self, rid: str) -> list[dict] | None:
        return self._row(rid, "input_items")

    def conversation(self, rid: str) -> list[dict] | None:
        return self._row(rid, "conversation")

    def delete(self, rid: str) -> bool:
        return self.db.execute("DELETE FROM responses WHERE id = ?", (rid,)) > 0
