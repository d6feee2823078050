"""The vector store interface and its records; ``lhama.rag.stores.open_store`` picks the
implementation (a file path → SQLite, a ``postgresql://`` URL → PostgreSQL + pgvector).

A store holds, per document, its chunks' text, location, vector and full-text index entry, keyed
by the document's ``key`` (a path for the CLI, a file id for the server). Replacing a document
swaps all of that in one transaction, so a reader never sees half of an update.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from lhama.rag.chunking import ChunkDraft
from lhama.rag.errors import VectorStoreError


@dataclass(frozen=True)
class FileRecord:
    key: str  # unique id: absolute path (CLI) or file id (server)
    name: str  # what citations show
    sha256: str
    bytes: int
    chunks: int = 0
    added_at: float = 0.0


@dataclass(frozen=True)
class ChunkRecord:
    id: int
    file_key: str
    file_name: str
    index: int
    heading: str
    page: int | None
    text: str

    @property
    def location(self) -> str:
        if self.page is not None:
            return f"{self.file_name}, page {self.page}"
        if self.heading:
            return f"{self.file_name} § {self.heading}"
        return self.file_name


def embedding_text(file_name: str, draft: ChunkDraft) -> str:
    """What is embedded and indexed: the chunk with its document name and heading path in front,
    so a passage that never repeats its section's subject still matches questions about it."""
    head = " > ".join(x for x in (file_name, draft.heading) if x)
    return f"{head}\n{draft.text}" if head else draft.text


# Words too common to help a lexical match; the vector leg still sees them.
_STOPWORDS = frozenset(
    """a an and are as at be by can do does for from how i if in into is it its of on or
so that the their then there these this to was what when where which who why will with you your""".split()
)


def query_terms(query: str) -> list[str]:
    terms = [w for w in re.findall(r"\w+", query.lower()) if w not in _STOPWORDS]
    return list(dict.fromkeys(terms))  # unique, in order


class VectorStore(ABC):
    """Storage + the two first-stage searches; ``lhama.rag.retrieve`` fuses and reranks them."""

    location: str
    _embedder: str | None = None  # set by subclasses from their stored metadata
    _dim: int | None = None

    @property
    def embedder_name(self) -> str | None:
        return self._embedder

    @property
    def dim(self) -> int | None:
        return self._dim

    def bind_embedder(self, name: str, dim: int) -> None:
        """Record the embedder on first use; refuse another one later (vectors would not compare)."""
        self.check_embedder(name, dim)
        if self._embedder is None:
            self._create_vector_index(name, dim)
            self._embedder, self._dim = name, dim

    @abstractmethod
    def _create_vector_index(self, name: str, dim: int) -> None:
        """Store the embedder's name and dimension and create the ``dim``-wide vector table."""

    def check_embedder(self, name: str, dim: int) -> None:
        if self.embedder_name is not None and (self.embedder_name != name or self.dim != dim):
            raise VectorStoreError(
                f"the store {self.location} holds vectors of embedder '{self.embedder_name}' "
                f"({self.dim} dims); it cannot be used with '{name}' ({dim} dims). "
                "Use that embedder, or a new store."
            )

    @abstractmethod
    def file(self, key: str) -> FileRecord | None: ...

    @abstractmethod
    def files(self) -> list[FileRecord]: ...

    @abstractmethod
    def replace_file(self, record: FileRecord, drafts: list[ChunkDraft], vectors: np.ndarray) -> None: ...

    @abstractmethod
    def remove_file(self, key: str) -> bool: ...

    @abstractmethod
    def vector_search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity), best first."""

    @abstractmethod
    def lexical_search(self, query: str, k: int) -> list[tuple[int, float]]:
        """(chunk id, full-text score, higher is better), best first."""

    @abstractmethod
    def vectors(self, ids: list[int]) -> dict[int, np.ndarray]: ...

    @abstractmethod
    def chunks(self, ids: list[int]) -> dict[int, ChunkRecord]: ...

    @abstractmethod
    def count_chunks(self) -> int: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def destroy(self) -> None:
        """Delete every chunk, vector and file record, and the storage itself."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
