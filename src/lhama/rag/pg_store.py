"""PostgreSQL + pgvector: the store for collections that outgrow one machine's SQLite file
(many writers, replicas, backups, an HNSW index).

One table pair per ``namespace``: ``<ns>_files`` and ``<ns>_chunks`` with a ``vector(dim)``
column (HNSW index, cosine) and a generated ``tsvector`` column (GIN index). The lexical leg is
PostgreSQL's full-text rank (``ts_rank_cd``): not BM25 exactly (no IDF), but the same role in
the fusion. Updates run in one transaction per document, as in the SQLite store.
"""

from __future__ import annotations

import re
import time

import numpy as np

from lhama.extras import require
from lhama.rag.chunking import ChunkDraft
from lhama.rag.errors import VectorStoreError
from lhama.rag.store import ChunkRecord, FileRecord, VectorStore, embedding_text, query_terms


class PgVectorStore(VectorStore):
    def __init__(self, dsn: str, namespace: str = "lhama_rag"):
        psycopg = require("psycopg", "pg")
        register_vector = require("pgvector.psycopg", "pg").register_vector

        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", namespace):
            raise VectorStoreError(f"namespace must be a lower-case SQL identifier, got '{namespace}'")
        self.location, self.ns = dsn, namespace
        try:
            self.db = psycopg.connect(dsn, autocommit=True)
            self.db.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.Error as e:
            raise VectorStoreError(f"cannot use PostgreSQL at {dsn}: {e}".strip()) from None
        register_vector(self.db)
        ns = self.ns
        self.db.execute(f"CREATE TABLE IF NOT EXISTS {ns}_meta (key text PRIMARY KEY, value text NOT NULL)")
        self.db.execute(f"""CREATE TABLE IF NOT EXISTS {ns}_files (
            id bigserial PRIMARY KEY, key text NOT NULL UNIQUE, name text NOT NULL, sha256 text NOT NULL,
            bytes bigint NOT NULL, chunks integer NOT NULL, added_at double precision NOT NULL)""")
        meta = dict(self.db.execute(f"SELECT key, value FROM {ns}_meta").fetchall())
        self._embedder, self._dim = meta.get("embedder"), int(meta["dim"]) if "dim" in meta else None

    def _create_vector_index(self, name: str, dim: int) -> None:
        ns = self.ns
        with self.db.transaction():
            self.db.execute(
                f"INSERT INTO {ns}_meta VALUES ('embedder', %s), ('dim', %s) ON CONFLICT DO NOTHING", (name, str(dim))
            )
            self.db.execute(f"""CREATE TABLE IF NOT EXISTS {ns}_chunks (
                id bigserial PRIMARY KEY, file_id bigint NOT NULL REFERENCES {ns}_files(id) ON DELETE CASCADE,
                idx integer NOT NULL, heading text NOT NULL, page integer, text text NOT NULL,
                title text NOT NULL, embedding vector({int(dim)}) NOT NULL,
                tsv tsvector GENERATED ALWAYS AS (setweight(to_tsvector('english', title), 'A') ||
                                                  to_tsvector('english', text)) STORED)""")
            self.db.execute(
                f"CREATE INDEX IF NOT EXISTS {ns}_chunks_hnsw ON {ns}_chunks USING hnsw (embedding vector_cosine_ops)"
            )
            self.db.execute(f"CREATE INDEX IF NOT EXISTS {ns}_chunks_tsv ON {ns}_chunks USING gin (tsv)")
            self.db.execute(f"CREATE INDEX IF NOT EXISTS {ns}_chunks_file ON {ns}_chunks (file_id)")

    def _file(self, row) -> FileRecord:
        return FileRecord(*row)

    def file(self, key: str) -> FileRecord | None:
        row = self.db.execute(
            f"SELECT key, name, sha256, bytes, chunks, added_at FROM {self.ns}_files WHERE key = %s", (key,)
        ).fetchone()
        return self._file(row) if row else None

    def files(self) -> list[FileRecord]:
        rows = self.db.execute(f"SELECT key, name, sha256, bytes, chunks, added_at FROM {self.ns}_files ORDER BY key")
        return [self._file(r) for r in rows.fetchall()]

    def replace_file(self, record: FileRecord, drafts: list[ChunkDraft], vectors: np.ndarray) -> None:
        if self._dim is None:
            raise VectorStoreError("bind an embedder before adding documents")
        ns = self.ns
        with self.db.transaction():
            self.db.execute(f"DELETE FROM {ns}_files WHERE key = %s", (record.key,))  # chunks cascade
            fid = self.db.execute(
                f"INSERT INTO {ns}_files (key, name, sha256, bytes, chunks, added_at) "
                f"VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                (record.key, record.name, record.sha256, record.bytes, len(drafts), record.added_at or time.time()),
            ).fetchone()[0]
            with self.db.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {ns}_chunks (file_id, idx, heading, page, text, title, embedding) "
                    f"VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [
                        (
                            fid,
                            d.index,
                            d.heading,
                            d.page,
                            d.text,
                            embedding_text(record.name, d).partition("\n")[0],
                            np.asarray(v, dtype=np.float32),
                        )
                        for d, v in zip(drafts, vectors)
                    ],
                )

    def remove_file(self, key: str) -> bool:
        cur = self.db.execute(f"DELETE FROM {self.ns}_files WHERE key = %s", (key,))
        return cur.rowcount > 0

    def vector_search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        if self._dim is None or k <= 0:
            return []
        rows = self.db.execute(
            f"SELECT id, 1 - (embedding <=> %s) FROM {self.ns}_chunks ORDER BY embedding <=> %s LIMIT %s",
            (np.asarray(vector, np.float32), np.asarray(vector, np.float32), k),
        )
        return [(int(i), float(s)) for i, s in rows.fetchall()]

    def lexical_search(self, query: str, k: int) -> list[tuple[int, float]]:
        terms = query_terms(query)
        if not terms or self._dim is None or k <= 0:
            return []
        # Any term may match (OR), as in the SQLite store; each term goes through the English stemmer.
        rows = self.db.execute(
            f"WITH q AS (SELECT to_tsquery('english', string_agg(quote_literal(t), ' | ')) AS q "
            f"FROM unnest(%s::text[]) AS t WHERE numnode(plainto_tsquery('english', t)) > 0) "
            f"SELECT c.id, ts_rank_cd(c.tsv, q.q) AS s FROM {self.ns}_chunks c, q WHERE c.tsv @@ q.q "
            f"ORDER BY s DESC, c.id LIMIT %s",
            (terms, k),
        )
        return [(int(i), float(s)) for i, s in rows.fetchall()]

    def vectors(self, ids: list[int]) -> dict[int, np.ndarray]:
        if not ids or self._dim is None:
            return {}
        rows = self.db.execute(f"SELECT id, embedding FROM {self.ns}_chunks WHERE id = ANY(%s)", (list(ids),))
        return {int(i): np.asarray(v, dtype=np.float32) for i, v in rows.fetchall()}

    def chunks(self, ids: list[int]) -> dict[int, ChunkRecord]:
        if not ids or self._dim is None:
            return {}
        rows = self.db.execute(
            f"SELECT c.id, f.key, f.name, c.idx, c.heading, c.page, c.text FROM {self.ns}_chunks c "
            f"JOIN {self.ns}_files f ON f.id = c.file_id WHERE c.id = ANY(%s)",
            (list(ids),),
        )
        return {int(r[0]): ChunkRecord(int(r[0]), *r[1:]) for r in rows.fetchall()}

    def count_chunks(self) -> int:
        if self._dim is None:
            return 0
        return int(self.db.execute(f"SELECT count(*) FROM {self.ns}_chunks").fetchone()[0])

    def close(self) -> None:
        self.db.close()

    def destroy(self) -> None:
        for t in ("chunks", "files", "meta"):
            self.db.execute(f"DROP TABLE IF EXISTS {self.ns}_{t} CASCADE")
        self.close()
