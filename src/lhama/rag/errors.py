"""Errors of the RAG package a user can cause; each maps to one HTTP status like ``lhama.errors``."""

from __future__ import annotations

from lhama.errors import LhamaError


class DocumentReadError(LhamaError, ValueError):
    """A file that cannot be read as a document (corrupt PDF, binary data, unknown type).
    Ingest reports it and goes on with the other files."""

    http_status = 400
    code = "unreadable_document"

    def __init__(self, path: object, message: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


class VectorStoreError(LhamaError, ValueError):
    """A store that cannot be opened or used as asked (wrong embedder, bad location...)."""

    http_status = 400
    code = "invalid_vector_store"


class StoreNotFoundError(LhamaError, FileNotFoundError):
    http_status = 404
    code = "vector_store_not_found"
