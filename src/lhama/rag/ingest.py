"""Add documents to a store: read → chunk → embed → replace the document's chunks.

A document whose bytes are unchanged (same SHA-256) is skipped; a changed one replaces all its
old chunks in one transaction. A file that cannot be read is reported in ``IngestReport.failed``
and the ingest goes on: one corrupt PDF never costs the rest of a folder. Each document is
committed on its own, so an interrupted ingest keeps what it finished; running it again skips
those and resumes.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lhama.rag.chunking import ChunkConfig, chunk_sections
from lhama.rag.errors import DocumentReadError
from lhama.rag.readers import SUPPORTED_SUFFIXES, read_document
from lhama.rag.store import FileRecord, VectorStore, embedding_text


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, why)
    chunks: int = 0
    pages: int = 0  # PDF pages, plus one per 3000 characters of other text (a printed page)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "failed": [{"file": f, "error": e} for f, e in self.failed],
            "chunks": self.chunks,
            "pages": self.pages,
            "seconds": round(self.seconds, 3),
        }


PAGE_CHARS = 3000


def iter_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files named, and supported files under folders named (recursively, hidden ones skipped).
    A path that does not exist is yielded as is, so ingest reports it instead of dropping it."""
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for n in sorted(names):
                    if not n.startswith(".") and Path(n).suffix.lower() in SUPPORTED_SUFFIXES:
                        yield Path(root) / n
        else:
            yield p


def ingest_file(
    store: VectorStore,
    embedder,
    path: Path,
    *,
    key: str | None = None,
    name: str | None = None,
    chunking: ChunkConfig = ChunkConfig(),
    report: IngestReport | None = None,
) -> IngestReport:
    """Ingest one document; never raises for a bad document (it lands in ``report.failed``)."""
    report = report if report is not None else IngestReport()
    t0 = time.perf_counter()
    key = key or str(Path(path).resolve())
    name = name or Path(path).name
    try:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise DocumentReadError(path, f"cannot read: {e.strerror or e}") from None
        digest = hashlib.sha256(data).hexdigest()
        old = store.file(key)
        if old is not None and old.sha256 == digest:
            report.unchanged.append(name)
            return report
        sections = read_document(Path(path), name)
        drafts = chunk_sections(sections, chunking)
        vectors = embedder.embed([embedding_text(name, d) for d in drafts])
        store.bind_embedder(embedder.name, embedder.dim)
        store.replace_file(
            FileRecord(key=key, name=name, sha256=digest, bytes=len(data), added_at=time.time()), drafts, vectors
        )
    except DocumentReadError as e:
        report.failed.append((name, str(e).removeprefix(f"{e.path}: ")))
        return report
    finally:
        report.seconds += time.perf_counter() - t0
    (report.updated if old is not None else report.added).append(name)
    report.chunks += len(drafts)
    pdf_pages = sum(1 for s in sections if s.page is not None)
    other = sum(len(s.text) for s in sections if s.page is None)
    report.pages += pdf_pages + (-(-other // PAGE_CHARS) if other else 0)
    return report


def ingest_paths(
    store: VectorStore,
    embedder,
    paths: Iterable[str | Path],
    *,
    chunking: ChunkConfig = ChunkConfig(),
    progress: bool = False,
) -> IngestReport:
    store.check_embedder(embedder.name, embedder.dim)
    files = list(iter_files(paths))
    report = IngestReport()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="file", desc="ingest")
    for f in files:
        ingest_file(store, embedder, f, chunking=chunking, report=report)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return report
