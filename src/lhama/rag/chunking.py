"""Chunks of about ``max_words`` words that end on sentence boundaries, never cross a section
(heading or page), and repeat the last sentences of the previous chunk (``overlap_words``), so a
fact that straddles a cut is still whole in one chunk.

Words, not model tokens, measure size: it keeps chunking independent of the embedder; 160
words stay under MiniLM's 256-token window for ordinary prose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lhama.errors import ConfigError
from lhama.rag.readers import Section


@dataclass(frozen=True)
class ChunkConfig:
    max_words: int = 120
    overlap_words: int = 30

    def __post_init__(self) -> None:
        if self.max_words < 8:
            raise ConfigError(f"chunk size must be >= 8 words, got {self.max_words}")
        if not 0 <= self.overlap_words < self.max_words:
            raise ConfigError(f"chunk overlap must be in [0, {self.max_words}), got {self.overlap_words}")


@dataclass(frozen=True)
class ChunkDraft:
    text: str
    heading: str
    page: int | None
    index: int  # position in the document


# A sentence ends at . ! ? (optionally closed by quotes/brackets) followed by space and a
# likely sentence start; a blank line or a list item always ends one. Abbreviations such as
# "e.g." followed by a lower-case word are not cut.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(\[`*#-])")
_ABBREVIATIONS = frozenset("dr. mr. mrs. ms. prof. st. vs. etc. e.g. i.e. cf. fig. no. vol. approx. inc. ltd.".split())
_BLOCK_BREAK = re.compile(r"\n\s*\n|\n(?=\s*(?:[-*+] |\d+[.)] |\|))")


def split_sentences(text: str) -> list[str]:
    out = []
    for block in _BLOCK_BREAK.split(text):
        block = block.strip()
        if not block:
            continue
        if block.startswith(("```", "    ", "|")):  # code and tables: keep lines, don't look for sentences
            out.extend(line for line in block.splitlines() if line.strip())
            continue
        merged: list[str] = []
        for s in _SENTENCE_END.split(block):
            s = " ".join(s.split())
            if merged and merged[-1].rsplit(" ", 1)[-1].lower() in _ABBREVIATIONS:
                merged[-1] += " " + s  # "Dr. Smith": the period ended an abbreviation, not a sentence
            elif s:
                merged.append(s)
        out.extend(merged)
    return out


def _words(s: str) -> int:
    return len(s.split())


def _split_long(sentence: str, max_words: int) -> list[str]:
    words = sentence.split()
    return [" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words)]


def chunk_sections(sections: list[Section], config: ChunkConfig = ChunkConfig()) -> list[ChunkDraft]:
    chunks: list[ChunkDraft] = []
    for sec in sections:
        sentences: list[str] = []
        for s in split_sentences(sec.text):
            sentences.extend(_split_long(s, config.max_words) if _words(s) > config.max_words else [s])
        current: list[str] = []
        size = 0
        fresh = 0  # sentences in ``current`` not already emitted in the previous chunk
        for s in sentences:
            n = _words(s)
            if current and size + n > config.max_words:
                chunks.append(ChunkDraft("\n".join(current), sec.heading, sec.page, len(chunks)))
                keep: list[str] = []
                kept = 0
                for prev in reversed(current):
                    if kept + _words(prev) > config.overlap_words or kept + _words(prev) + n > config.max_words:
                        break
                    keep.insert(0, prev)
                    kept += _words(prev)
                current, size, fresh = keep, kept, 0
            current.append(s)
            size += n
            fresh += 1
        if current and fresh:
            chunks.append(ChunkDraft("\n".join(current), sec.heading, sec.page, len(chunks)))
    return chunks
