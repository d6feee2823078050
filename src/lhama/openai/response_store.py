"""Stored responses (``store: true``, OpenAI's default) in one SQLite file, so
``previous_response_id``, retrieve, delete and ``input_items`` work across restarts.

A row keeps the response object, this request's input items, and the whole conversation
(every earlier turn's input and output items, tool calls and outputs included) that a
continued response starts from. WAL mode: readers never wait for the writer.
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


class ResponseStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def put(self, response: dict, input_items: list[dict], conversation: list[dict]) -> None:
        row = (
            response["id"],
            time.time(),
            json.dumps(response, ensure_ascii=False),
            json.dumps(input_items, ensure_ascii=False),
            json.dumps(conversation, ensure_ascii=False),
        )
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)", row)

    def _row(self, rid: str, column: str):
        with self._lock:
            row = self._db.execute(f"SELECT {column} FROM responses WHERE id = ?", (rid,)).fetchone()
        return None if row is None else json.loads(row[0])

    def get(self, rid: str) -> dict | None:
        return self._row(rid, "response")

    def input_items(self, rid: str) -> list[dict] | None:
        return self._row(rid, "input_items")

    def conversation(self, rid: str) -> list[dict] | None:
        return self._row(rid, "conversation")

    def delete(self, rid: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM responses WHERE id = ?", (rid,)).rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
