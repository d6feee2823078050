"""Which vector store a location names: a file path is a SQLite store, a ``postgresql://`` URL
a PostgreSQL + pgvector one. The implementations import the interface (``store.py``); only this
module imports the implementations."""

from __future__ import annotations

import os
from pathlib import Path

from lhama.rag.store import VectorStore


def default_store() -> str:
    """The store ``lhama rag`` and the ``file_search`` tool use when none is named."""
    return os.environ.get("LHAMA_RAG_STORE") or str(Path.home() / ".local" / "share" / "lhama" / "rag" / "default.db")


def open_store(location: str, **kw) -> VectorStore:
    loc = str(location)
    if loc.startswith(("postgresql://", "postgres://")):
        from lhama.rag.pg_store import PgVectorStore  # psycopg is an optional extra

        return PgVectorStore(loc, **kw)
    from lhama.rag.sqlite_store import SqliteVectorStore

    return SqliteVectorStore(loc)
