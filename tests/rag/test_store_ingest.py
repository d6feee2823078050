"""Ingest into the SQLite store with the real MiniLM embedder: updates replace, bad files are
skipped and reported, deletes remove data, and the store persists across opens."""

from __future__ import annotations

import pytest

from lhama.rag.errors import VectorStoreError
from lhama.rag.ingest import ingest_paths
from lhama.rag.retrieve import Retriever
from lhama.rag.sqlite_store import SqliteVectorStore
from tests.rag.conftest import write_pdf


@pytest.fixture
def docs(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "llamas.md").write_text(
        "# Llamas\n\nLlamas are camelids from the Andes. They carry packs.\n\n## Diet\n\nA llama eats grass and hay.\n"
    )
    (d / "notes.txt").write_text("The zebrafish regenerates its heart. Zebrafish live in rivers.")
    (d / "page.html").write_text("<h1>Volcanoes</h1><p>Magma rises through the crust.</p>")
    write_pdf(d / "report.pdf", ["Quarterly report: revenue grew by nine percent.", "Outlook: steady."])
    (d / "broken.pdf").write_bytes(b"%PDF-1.7\n%garbage that is no pdf")
    (d / "blob.txt").write_bytes(b"\x00\x00\x00")
    return d


def test_ingest_search_update_remove_drop(tmp_path, docs, minilm):
    db = tmp_path / "s.db"
    store = SqliteVectorStore(db)
    rep = ingest_paths(store, minilm, [docs, tmp_path / "missing.md"])
    assert sorted(rep.added) == ["llamas.md", "notes.txt", "page.html", "report.pdf"]
    assert sorted(f for f, _ in rep.failed) == ["blob.txt", "broken.pdf", "missing.md"]
    assert rep.pages >= 5 and rep.chunks == store.count_chunks()
    ret = Retriever(store, minilm)
    top = ret.search("what does a llama eat?", k=1)[0].chunk
    assert top.file_name == "llamas.md" and top.heading == "Llamas > Diet"
    top = ret.search("revenue growth", k=1)[0].chunk
    assert (top.file_name, top.page, top.location) == ("report.pdf", 1, "report.pdf, page 1")
    for mode in ("vector", "bm25", "hybrid"):
        assert ret.search("zebrafish heart", k=1, mode=mode)[0].chunk.file_name == "notes.txt"
    scores = [h.score for h in ret.search("zebrafish heart", k=25)]  # k past rerank_depth: all reranked
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)

    # unchanged → skipped; changed → old chunks replaced, not added beside
    rep = ingest_paths(store, minilm, [docs / "notes.txt"])
    assert rep.unchanged == ["notes.txt"] and not rep.added
    (docs / "notes.txt").write_text("Axolotls regrow their limbs.")
    rep = ingest_paths(store, minilm, [docs / "notes.txt"])
    assert rep.updated == ["notes.txt"]
    assert not store.lexical_search("zebrafish", 10)
    assert ret.search("axolotl limbs", k=1)[0].chunk.file_name == "notes.txt"
    n = store.count_chunks()
    store.close()

    store = SqliteVectorStore(db)  # persisted
    assert store.count_chunks() == n and store.embedder_name == "minilm" and store.dim == 384
    key = str((docs / "page.html").resolve())
    assert store.remove_file(key) and store.file(key) is None
    assert not store.lexical_search("magma", 10)
    assert not any(h.chunk.file_name == "page.html" for h in Retriever(store, minilm).search("magma crust", k=10))
    store.destroy()
    assert not db.exists()


def test_store_refuses_another_embedder(tmp_path, docs, minilm):
    store = SqliteVectorStore(tmp_path / "s.db")
    ingest_paths(store, minilm, [docs / "notes.txt"])

    class Other:
        name, dim = "model:tiny", 64

    with pytest.raises(VectorStoreError, match="minilm"):
        ingest_paths(store, Other(), [docs / "llamas.md"])
    with pytest.raises(VectorStoreError):
        Retriever(store, Other())


def test_not_a_store(tmp_path):
    bad = tmp_path / "x.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(VectorStoreError, match="not a usable store"):
        SqliteVectorStore(bad)


def test_loaded_model_embedder_plugs_in(tmp_path, docs):
    """'any loaded model' as embedder: the server's mean-pooled hidden states, on a tiny config."""
    from lhama.errors import ConfigError
    from lhama.rag.embedders import LoadedModelEmbedder, get_embedder

    emb = get_embedder("model:tiny-llama3")  # what `lhama rag add --embedder model:tiny-llama3` uses
    assert isinstance(emb, LoadedModelEmbedder) and emb.name == "model:tiny-llama3"
    with pytest.raises(ConfigError, match="unknown embedder"):
        get_embedder("no-such-embedder")
    store = SqliteVectorStore(tmp_path / "m.db")
    rep = ingest_paths(store, emb, [docs / "notes.txt", docs / "llamas.md"])
    assert len(rep.added) == 2 and store.embedder_name == emb.name and store.dim == emb.dim
    ret = Retriever(store, emb)
    assert ret.search("zebrafish", k=1, mode="bm25")[0].chunk.file_name == "notes.txt"
    # random weights: the ranking means nothing, but the vectors are real, unit length, exact KNN
    vec = emb.embed(["Zebrafish live in rivers."])[0]
    assert abs(float((vec**2).sum()) - 1) < 1e-4
    top = store.vector_search(vec, 3)
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1]


def test_reciprocal_rank_fusion():
    from lhama.rag.retrieve import reciprocal_rank_fusion

    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]], k=60)
    assert [c for c, _ in fused] == [1, 3, 2, 4]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
