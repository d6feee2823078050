"""Fixtures for the RAG tests: the real MiniLM embedder (loaded once), a PDF writer for test
documents, and the labelled evaluation collection."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "corpus"
QUESTIONS = DATA / "questions.jsonl"


def write_pdf(path: Path, pages: list[str]) -> Path:
    """A real text PDF (Helvetica, one text object per line) built with pypdf's object model."""
    from pypdf import PdfWriter
    from pypdf.generic import ArrayObject, DecodedStreamObject, DictionaryObject, NameObject, NumberObject

    writer = PdfWriter()
    font = writer._add_object(
        DictionaryObject(
            {
                NameObject("/Type"): NameObject("/Font"),
                NameObject("/Subtype"): NameObject("/Type1"),
                NameObject("/BaseFont"): NameObject("/Helvetica"),
                NameObject("/Encoding"): NameObject("/WinAnsiEncoding"),
            }
        )
    )
    for text in pages:
        page = writer.add_blank_page(612, 792)
        lines, y = [], 740
        for line in text.splitlines():
            esc = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            lines.append(f"BT /F1 11 Tf 50 {y} Td ({esc}) Tj ET")
            y -= 14
        stream = DecodedStreamObject()
        stream.set_data("\n".join(lines).encode("latin-1"))
        page[NameObject("/Contents")] = writer._add_object(stream)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})}
        )
        page[NameObject("/MediaBox")] = ArrayObject(
            [NumberObject(0), NumberObject(0), NumberObject(612), NumberObject(792)]
        )
    with open(path, "wb") as f:
        writer.write(f)
    return path


@pytest.fixture(scope="session")
def minilm():
    from lhama.rag.embedders import get_embedder

    return get_embedder("minilm")


@pytest.fixture(scope="session")
def eval_store(minilm, tmp_path_factory):
    """The labelled collection (a frozen copy of this project's docs) ingested once."""
    from lhama.rag.ingest import ingest_paths
    from lhama.rag.sqlite_store import SqliteVectorStore

    store = SqliteVectorStore(tmp_path_factory.mktemp("eval") / "eval.db")
    report = ingest_paths(store, minilm, [CORPUS])
    assert not report.failed and len(report.added) == len(list(CORPUS.glob("*.md")))
    yield store
    store.close()
