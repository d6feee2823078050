"""Retrieval-augmented generation: ingest (readers, chunking), embed, store (SQLite + sqlite-vec,
or PostgreSQL + pgvector), hybrid retrieval with reranking, answers with citations, and the
``file_search`` tool. See docs/rag.md."""

from lhama.rag.answer import Answer, Source, answer_question
from lhama.rag.chunking import ChunkConfig, chunk_sections
from lhama.rag.embedders import get_embedder
from lhama.rag.ingest import IngestReport, ingest_file, ingest_paths
from lhama.rag.readers import Section, read_document
from lhama.rag.retrieve import Hit, RetrievalConfig, Retriever
from lhama.rag.store import VectorStore
from lhama.rag.stores import open_store
from lhama.rag.tool import FileSearchTool, file_search_tool

__all__ = [
    "Answer",
    "Source",
    "answer_question",
    "ChunkConfig",
    "chunk_sections",
    "get_embedder",
    "IngestReport",
    "ingest_file",
    "ingest_paths",
    "Section",
    "read_document",
    "Hit",
    "RetrievalConfig",
    "Retriever",
    "VectorStore",
    "open_store",
    "FileSearchTool",
    "file_search_tool",
]
