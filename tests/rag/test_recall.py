"""Recall@5 on the labelled question set over this project's docs (tests/rag/data): hybrid must be
at least as good as either single method (minus a small epsilon), above an absolute floor."""

from __future__ import annotations

from lhama.rag.evaluate import load_questions, recall_at_k
from lhama.rag.retrieve import Retriever
from tests.rag.conftest import QUESTIONS

EPS = 0.02


def test_recall_at_5(eval_store, minilm):
    questions = load_questions(QUESTIONS)
    assert len(questions) >= 50
    r = recall_at_k(Retriever(eval_store, minilm), questions, k=5)
    rec = {name: v["recall"] for name, v in r.items()}
    print({name: (round(v["recall"], 3), round(v["mrr"], 3)) for name, v in r.items()})
    assert rec["vector"] >= 0.75 and rec["bm25"] >= 0.80
    for hybrid in ("hybrid (RRF)", "hybrid + rerank"):
        assert rec[hybrid] >= max(rec["vector"], rec["bm25"]) - EPS, rec
        assert rec[hybrid] >= 0.90, rec
    assert r["hybrid + rerank"]["mrr"] >= max(r["vector"]["mrr"], r["bm25"]["mrr"]), r
