"""RAG benchmark: recall@5 (vector, BM25, hybrid, hybrid + rerank) on the labelled question set,
ingest throughput (pages/s) for Markdown and for PDF, and query latency p50/p95 per mode.

    .venv/bin/python bench/rag.py [--json out.json] [--repeat 3]

The collection is the frozen copy of this project's docs in tests/rag/data/corpus (54 labelled
questions in tests/rag/data/questions.jsonl). The PDF run renders the same text as PDF pages
(~3000 characters each), so both runs ingest the same words.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lhama.rag.embedders import get_embedder  # noqa: E402
from lhama.rag.evaluate import load_questions, recall_at_k  # noqa: E402
from lhama.rag.ingest import PAGE_CHARS, ingest_paths  # noqa: E402
from lhama.rag.retrieve import Retriever  # noqa: E402
from lhama.rag.sqlite_store import SqliteVectorStore  # noqa: E402
from tests.rag.conftest import CORPUS, QUESTIONS, write_pdf  # noqa: E402


def pdf_copy(src: Path, dst: Path) -> None:
    for md in sorted(src.glob("*.md")):
        text = md.read_text()
        lines, pages, cur = [], [], 0
        for line in text.splitlines():
            line = line.encode("latin-1", "replace").decode("latin-1")[:110]
            lines.append(line)
            cur += len(line) + 1
            if cur >= PAGE_CHARS or len(lines) >= 50:
                pages.append("\n".join(lines))
                lines, cur = [], 0
        if lines:
            pages.append("\n".join(lines))
        write_pdf(dst / (md.stem + ".pdf"), pages)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path)
    ap.add_argument("--repeat", type=int, default=3, help="query latency: passes over the question set")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    a = ap.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    t = time.perf_counter()
    emb = get_embedder("minilm")
    import torch

    out = {"embedder_load_s": round(time.perf_counter() - t, 2), "threads": torch.get_num_threads()}
    emb.embed(["warm-up"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = SqliteVectorStore(tmp / "md.db")
        rep = ingest_paths(store, emb, [CORPUS])
        out["ingest_markdown"] = {
            "files": len(rep.added),
            "pages": rep.pages,
            "chunks": rep.chunks,
            "seconds": round(rep.seconds, 2),
            "pages_per_s": round(rep.pages / rep.seconds, 2),
            "chunks_per_s": round(rep.chunks / rep.seconds, 2),
        }
        (tmp / "pdf").mkdir()
        pdf_copy(CORPUS, tmp / "pdf")
        pstore = SqliteVectorStore(tmp / "pdf.db")
        prep = ingest_paths(pstore, emb, [tmp / "pdf"])
        out["ingest_pdf"] = {
            "files": len(prep.added),
            "pages": prep.pages,
            "chunks": prep.chunks,
            "seconds": round(prep.seconds, 2),
            "pages_per_s": round(prep.pages / prep.seconds, 2),
        }
        pstore.close()

        questions = load_questions(QUESTIONS)
        ret = Retriever(store, emb)
        r = recall_at_k(ret, questions, k=5)
        out["questions"] = len(questions)
        out["recall"] = {
            k: {
                "recall@5": round(v["recall"], 3),
                "recall@1": round(v["recall@1"], 3),
                "mrr@5": round(v["mrr"], 3),
                "misses": v["misses"],
            }
            for k, v in r.items()
        }
        lat = {}
        for label, mode, rerank in (
            ("vector", "vector", False),
            ("bm25", "bm25", False),
            ("hybrid + rerank", "hybrid", True),
        ):
            ts = []
            for _ in range(a.repeat):
                for q in questions:  # end to end: embedding the query included
                    t = time.perf_counter()
                    ret.search(q.question, k=5, mode=mode, rerank=rerank)
                    ts.append((time.perf_counter() - t) * 1000)
            lat[label] = {"p50_ms": round(pct(ts, 0.5), 1), "p95_ms": round(pct(ts, 0.95), 1), "n": len(ts)}
        out["query_latency"] = lat
        store.close()
    print(f"torch threads: {out['threads']}")
    print("| retrieval | recall@5 | recall@1 | MRR@5 | query p50 | query p95 |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, v in out["recall"].items():
        l = lat.get(k, lat["hybrid + rerank"] if k.startswith("hybrid") else {})
        print(
            f"| {k} | {v['recall@5']:.3f} | {v['recall@1']:.3f} | {v['mrr@5']:.3f} | "
            f"{l.get('p50_ms', float('nan')):.1f} ms | {l.get('p95_ms', float('nan')):.1f} ms |"
        )
    for kind in ("ingest_markdown", "ingest_pdf"):
        i = out[kind]
        print(f"{kind}: {i['pages']} pages, {i['chunks']} chunks in {i['seconds']} s = {i['pages_per_s']} pages/s")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
