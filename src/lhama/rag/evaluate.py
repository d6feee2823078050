"""Recall@k of a retriever on a labelled question set: each question names the document and the
section (a heading) that answers it; a hit is any retrieved chunk from that section or one of
its subsections. With one relevant section per question, recall@k is the share of questions
whose section appears among the top k."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lhama.rag.retrieve import Hit, Retriever


@dataclass(frozen=True)
class LabelledQuestion:
    question: str
    file: str
    section: str


def load_questions(path: Path) -> list[LabelledQuestion]:
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            out.append(LabelledQuestion(d["q"], d["file"], d["section"]))
    return out


def is_relevant(hit: Hit, q: LabelledQuestion) -> bool:
    return hit.chunk.file_name == q.file and q.section in hit.chunk.heading.split(" > ")


# (label, mode, rerank) for each retrieval variant reported.
VARIANTS = (
    ("vector", "vector", False),
    ("bm25", "bm25", False),
    ("hybrid (RRF)", "hybrid", False),
    ("hybrid + rerank", "hybrid", True),
)


def recall_at_k(
    retriever: Retriever, questions: list[LabelledQuestion], k: int = 5, variants=VARIANTS
) -> dict[str, dict]:
    """{variant: {"recall": recall@k, "recall@1": ..., "mrr": mean reciprocal rank within k,
    "misses": [question, ...]}}"""
    results = {}
    qvecs = retriever.embedder.embed([q.question for q in questions])
    for label, mode, rerank in variants:
        misses, rr = [], []
        for q, qv in zip(questions, qvecs):
            hits = retriever.search(q.question, k=k, mode=mode, rerank=rerank, query_vector=qv)
            ranks = [i for i, h in enumerate(hits) if is_relevant(h, q)]
            rr.append(1.0 / (ranks[0] + 1) if ranks else 0.0)
            if not ranks:
                misses.append(q.question)
        n = len(questions)
        results[label] = {
            "recall": 1 - len(misses) / n,
            "recall@1": sum(r == 1.0 for r in rr) / n,
            "mrr": sum(rr) / n,
            "misses": misses,
        }
    return results
