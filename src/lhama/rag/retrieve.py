"""Hybrid retrieval: BM25 (full-text) and vector candidates, fused by reciprocal rank, then the
top of the fused list reranked with both full scores.

Why this reranker: rank fusion throws the scores away, so a passage that is a near-exact
semantic match but only 9th lexically ties with one that is mediocre on both. The rerank
re-scores the fused top ``rerank_depth`` with the exact cosine of each chunk's stored vector and
its BM25 score, each min-max normalised over the candidates, mixed ``alpha : 1 - alpha``.
No cross-encoder ships offline; this one costs no extra model call, and its effect is measured
(recall@5 with and without it) in docs/rag.md and bench/rag.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lhama.errors import ConfigError
from lhama.rag.store import ChunkRecord, VectorStore

MODES = ("hybrid", "vector", "bm25")


@dataclass(frozen=True)
class RetrievalConfig:
    mode: str = "hybrid"
    k: int = 5
    candidates: int = 40  # per first-stage search
    rrf_k: int = 60  # the constant of reciprocal-rank fusion (Cormack et al. 2009)
    rerank: bool = True
    rerank_depth: int = 20
    alpha: float = 0.5  # weight of the cosine score in the rerank; 1 - alpha for BM25 (equal: no tuning)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"retrieval mode must be one of {', '.join(MODES)}; got '{self.mode}'")
        if not 1 <= self.k <= 100:
            raise ConfigError(f"k must be in [1, 100], got {self.k}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.candidates < self.k or self.rerank_depth < 1:
            raise ConfigError("candidates must be >= k, rerank_depth >= 1")


@dataclass(frozen=True)
class Hit:
    chunk: ChunkRecord
    score: float

    def as_dict(self) -> dict:
        c = self.chunk
        return {
            "file": c.file_name,
            "file_key": c.file_key,
            "location": c.location,
            "heading": c.heading,
            "page": c.page,
            "chunk_index": c.index,
            "score": round(float(self.score), 6),
            "text": c.text,
        }


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = 60) -> list[tuple[int, float]]:
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, cid in enumerate(ranking):
            scores[cid] = scores.get(cid, 0.0) + 1.0 / (k + rank + 1)
    return sorted(scores.items(), key=lambda x: (-x[1], x[0]))


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return np.zeros_like(x) if hi - lo < 1e-12 else (x - lo) / (hi - lo)


class Retriever:
    def __init__(self, store: VectorStore, embedder, config: RetrievalConfig = RetrievalConfig()):
        store.check_embedder(embedder.name, embedder.dim)
        self.store, self.embedder, self.config = store, embedder, config

    def search(
        self,
        query: str,
        *,
        k: int | None = None,
        mode: str | None = None,
        rerank: bool | None = None,
        query_vector: np.ndarray | None = None,
    ) -> list[Hit]:
        """The top ``k`` chunks for ``query``; ``query_vector`` skips embedding it (evaluations
        embed all questions in one batch)."""
        cfg = self.config
        k = cfg.k if k is None else k
        mode = mode or cfg.mode
        rerank = cfg.rerank if rerank is None else rerank
        if mode not in MODES:
            raise ConfigError(f"retrieval mode must be one of {', '.join(MODES)}; got '{mode}'")
        if not query.strip():
            return []
        n = max(cfg.candidates, k)
        qvec = None
        vec: list[tuple[int, float]] = []
        lex: list[tuple[int, float]] = []
        if mode in ("vector", "hybrid"):
            qvec = query_vector if query_vector is not None else self.embedder.embed([query])[0]
            vec = self.store.vector_search(qvec, n)
        if mode in ("bm25", "hybrid"):
            lex = self.store.lexical_search(query, n)
        if mode == "vector":
            ranked = vec
        elif mode == "bm25":
            ranked = lex
        else:
            ranked = reciprocal_rank_fusion([[c for c, _ in vec], [c for c, _ in lex]], cfg.rrf_k)
            if rerank and ranked:
                ranked = self._rerank(ranked, qvec, dict(vec), dict(lex), max(cfg.rerank_depth, k))
        top = ranked[:k]
        records = self.store.chunks([c for c, _ in top])
        return [Hit(records[c], s) for c, s in top if c in records]

    def _rerank(self, fused, qvec, vec_scores: dict[int, float], lex_scores: dict[int, float], depth: int):
        """The top ``depth`` (>= k, so every returned hit is reranked), scored in [0, 1]."""
        head, tail = fused[:depth], fused[depth:]
        ids = [c for c, _ in head]
        missing = [c for c in ids if c not in vec_scores]
        if missing:  # exact cosine from the stored vector, for candidates only BM25 found
            for c, v in self.store.vectors(missing).items():
                vec_scores[c] = float(np.dot(v, qvec))
        cos = np.array([vec_scores.get(c, 0.0) for c in ids], dtype=np.float64)
        floor = min(lex_scores.values()) if lex_scores else 0.0  # not in BM25's top n: at most its last score
        bm = np.array([lex_scores.get(c, floor) for c in ids], dtype=np.float64)
        a = self.config.alpha
        score = a * _minmax(cos) + (1 - a) * _minmax(bm)
        order = np.argsort(-score, kind="stable")
        return [(ids[i], float(score[i])) for i in order] + tail
