"""``lhama rag add | ask | search | list | remove | drop``: thin wrappers over ``lhama.rag``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lhama.cli.args import (
    Parser,
    add_kv_cache_dtype_arg,
    add_model_args,
    add_sampling_args,
    apply_kv_cache_dtype,
    load_model_from_args,
    sampling_params_from_args,
)

STORE_HELP = "SQLite file or postgresql:// URL (default: $LHAMA_RAG_STORE, else ~/.local/share/lhama/rag/default.db)"


def add_rag_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Index txt/Markdown/HTML/PDF files and answer questions from them with numbered citations. See docs/rag.md."
    )
    sub = p.add_subparsers(dest="rag_command", required=True, parser_class=Parser)

    def store_arg(q):
        q.add_argument("--store", help=STORE_HELP)
        q.add_argument(
            "--threads",
            type=int,
            help="torch threads for embedding (1 is far faster on a machine whose cores are busy)",
        )

    a = sub.add_parser("add", help="add or update files and folders")
    a.add_argument("paths", nargs="+", help="files or folders (txt, md, html, pdf; folders recursively)")
    store_arg(a)
    a.add_argument(
        "--embedder",
        help="minilm (default for a new store), model:<model spec>, or a "
        "sentence-transformers folder; an existing store keeps its own",
    )
    a.add_argument("--chunk-words", type=int, default=120, help="words per chunk")
    a.add_argument("--overlap-words", type=int, default=30, help="words two neighbouring chunks share")
    a.add_argument("--json", action="store_true", help="print the report as JSON")
    a.set_defaults(func=cmd_add)

    def retrieval_args(q):
        q.add_argument("-k", type=int, default=5, help="passages to retrieve")
        q.add_argument(
            "--mode",
            choices=["hybrid", "vector", "bm25"],
            default="hybrid",
            help="vector similarity, BM25 keywords, or both fused",
        )
        q.add_argument("--no-rerank", action="store_true", help="keep the retrieval order (no reranking)")
        q.add_argument("--json", action="store_true", help="print JSON")
        store_arg(q)

    s = sub.add_parser("search", help="show the passages that match a query")
    s.add_argument("query", help="what to look for")
    retrieval_args(s)
    s.set_defaults(func=cmd_search)

    q = sub.add_parser("ask", help="answer a question from the indexed files, with citations")
    q.add_argument("question", help="the question")
    retrieval_args(q)
    add_model_args(q)
    add_kv_cache_dtype_arg(q)
    add_sampling_args(q)
    q.set_defaults(func=cmd_ask)

    ls = sub.add_parser("list", help="files in the store")
    store_arg(ls)
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_list)

    rm = sub.add_parser("remove", help="remove files (their chunks and vectors) from the store")
    rm.add_argument("paths", nargs="+", help="files as added, or their keys")
    store_arg(rm)
    rm.set_defaults(func=cmd_remove)

    d = sub.add_parser("drop", help="delete the whole store and its data")
    store_arg(d)
    d.add_argument("--yes", action="store_true", help="do not ask")
    d.set_defaults(func=cmd_drop)


def _store_location(a) -> str:
    if not a.store:
        from lhama.rag.stores import default_store

        a.store = default_store()
    return a.store


def _open(a, *, must_exist: bool = True):
    if getattr(a, "threads", None):
        import torch

        torch.set_num_threads(a.threads)
    from lhama.rag.errors import StoreNotFoundError
    from lhama.rag.stores import open_store

    loc = _store_location(a)
    if must_exist and "://" not in loc and not Path(loc).expanduser().is_file():
        raise StoreNotFoundError(f"no store at {loc}; create one with 'lhama rag add PATH... --store {loc}'")
    return open_store(loc)


def _retriever(a, store):
    from lhama.rag.embedders import get_embedder
    from lhama.rag.errors import VectorStoreError
    from lhama.rag.retrieve import RetrievalConfig, Retriever

    if store.embedder_name is None:
        raise VectorStoreError(f"the store {store.location} is empty; add files first with 'lhama rag add'")
    cfg = RetrievalConfig(mode=a.mode, k=a.k, rerank=not a.no_rerank, candidates=max(40, a.k))
    return Retriever(store, get_embedder(store.embedder_name), cfg)


def cmd_add(a) -> int:
    from lhama.rag.chunking import ChunkConfig
    from lhama.rag.embedders import get_embedder
    from lhama.rag.ingest import ingest_paths

    chunking = ChunkConfig(a.chunk_words, a.overlap_words)
    with _open(a, must_exist=False) as store:
        spec = a.embedder or store.embedder_name or "minilm"
        embedder = get_embedder(spec)
        report = ingest_paths(store, embedder, a.paths, chunking=chunking, progress=not a.json and sys.stderr.isatty())
    if a.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False))
    else:
        print(
            f"added {len(report.added)}, updated {len(report.updated)}, unchanged {len(report.unchanged)}, "
            f"failed {len(report.failed)}: {report.chunks} chunks, {report.pages} pages in {report.seconds:.1f}s"
        )
        for name, why in report.failed:
            print(f"  skipped {name}: {why}", file=sys.stderr)
    return 1 if report.failed and not (report.added or report.updated or report.unchanged) else 0


def cmd_search(a) -> int:
    with _open(a) as store:
        hits = _retriever(a, store).search(a.query)
    if a.json:
        print(json.dumps([h.as_dict() for h in hits], ensure_ascii=False))
    else:
        for i, h in enumerate(hits, 1):
            print(f"[{i}] {h.chunk.location}  (score {h.score:.3f})")
            print("    " + h.chunk.text.replace("\n", "\n    ")[:600])
    return 0


def cmd_ask(a) -> int:
    from lhama.rag.answer import answer_question

    with _open(a) as store:
        retriever = _retriever(a, store)
        apply_kv_cache_dtype(a)  # answer_question's reference loop reads the variable
        loaded = load_model_from_args(a)
        answer = answer_question(loaded, retriever, a.question, k=a.k, params=sampling_params_from_args(a))
    print(json.dumps(answer.as_dict(), ensure_ascii=False) if a.json else answer.render())
    return 0


def cmd_list(a) -> int:
    with _open(a) as store:
        files = store.files()
        info = {
            "store": store.location,
            "embedder": store.embedder_name,
            "dim": store.dim,
            "chunks": store.count_chunks(),
            "files": [
                {"name": f.name, "key": f.key, "bytes": f.bytes, "chunks": f.chunks, "sha256": f.sha256} for f in files
            ],
        }
    if a.json:
        print(json.dumps(info, ensure_ascii=False))
    else:
        print(f"{info['store']}: {len(files)} files, {info['chunks']} chunks, embedder {info['embedder']}")
        for f in files:
            print(f"  {f.key}  ({f.chunks} chunks, {f.bytes} bytes)")
    return 0


def cmd_remove(a) -> int:
    missing = 0
    with _open(a) as store:
        for p in a.paths:
            key = p if store.file(p) is not None else str(Path(p).expanduser().resolve())
            if store.remove_file(key):
                print(f"removed {key}")
            else:
                print(f"not in the store: {p}", file=sys.stderr)
                missing += 1
    return 1 if missing else 0


def cmd_drop(a) -> int:
    _store_location(a)
    question = f"delete the store {a.store} and all its data? [y/N] "
    if not a.yes and sys.stdin.isatty() and input(question).strip().lower() != "y":
        return 1
    store = _open(a)
    store.destroy()
    print(f"deleted {a.store}")
    return 0
