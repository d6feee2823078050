"""Answer a question from retrieved passages, with numbered citations.

The prompt lists the passages as ``[1] (file § section) text``; the model is told to cite them
as ``[n]``. Passages that would not fit the context (with room for the answer) are dropped
from the bottom of the ranking, never cut mid-way, and the answer says which were used.
Citations in the reply are parsed back and mapped to the sources; numbers that name no source
are reported, not hidden.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lhama.errors import ContextLengthExceededError
from lhama.rag.retrieve import Hit

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources given. After each fact, cite its "
    "source in square brackets, like [1]. If the sources do not contain the answer, say that "
    "you do not know."
)


@dataclass(frozen=True)
class Source:
    number: int
    file: str
    location: str
    text: str
    score: float

    def as_dict(self) -> dict:
        return {
            "number": self.number,
            "file": self.file,
            "location": self.location,
            "score": self.score,
            "text": self.text,
        }


@dataclass
class Answer:
    question: str
    text: str
    sources: list[Source]
    cited: list[int] = field(default_factory=list)  # source numbers the answer cites, in order
    unknown_citations: list[int] = field(default_factory=list)  # [n] with no such source
    finish_reason: str | None = None

    def as_dict(self) -> dict:
        return {
            "question": self.question,
            "answer": self.text,
            "cited": self.cited,
            "unknown_citations": self.unknown_citations,
            "finish_reason": self.finish_reason,
            "sources": [s.as_dict() for s in self.sources],
        }

    def render(self) -> str:
        lines = [self.text.strip(), "", "Sources:"]
        for s in self.sources:
            mark = "*" if s.number in self.cited else " "
            lines.append(f"{mark}[{s.number}] {s.location}")
        return "\n".join(lines)


def sources_from_hits(hits: list[Hit]) -> list[Source]:
    return [
        Source(i + 1, h.chunk.file_name, h.chunk.location, h.chunk.text, round(float(h.score), 6))
        for i, h in enumerate(hits)
    ]


def sources_block(sources: list[Source]) -> str:
    return "\n\n".join(f"[{s.number}] ({s.location})\n{s.text}" for s in sources)


def grounded_messages(question: str, sources: list[Source]) -> list[dict]:
    user = (
        f"Sources:\n\n{sources_block(sources)}\n\nQuestion: {question}"
        if sources
        else f"No sources were found.\n\nQuestion: {question}"
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def parse_citations(text: str, n_sources: int) -> tuple[list[int], list[int]]:
    """(cited source numbers, out-of-range numbers), each unique in order of appearance."""
    cited, unknown = [], []
    for m in _CITATION.finditer(text):
        for part in m.group(1).split(","):
            n = int(part)
            bucket = cited if 1 <= n <= n_sources else unknown
            if n not in bucket:
                bucket.append(n)
    return cited, unknown


def fit_sources(chat_format, question: str, sources: list[Source], context: int, max_tokens: int):
    """The longest prefix of ``sources`` whose prompt leaves ``max_tokens`` in the context."""
    for n in range(len(sources), -1, -1):
        kept = [Source(i + 1, s.file, s.location, s.text, s.score) for i, s in enumerate(sources[:n])]
        ids = list(chat_format.encode_dialog(grounded_messages(question, kept)))
        if len(ids) + max_tokens <= context:
            return kept, ids
    raise ContextLengthExceededError(len(ids), max_tokens, context)


def answer_question(loaded, retriever, question: str, *, k: int = 5, params=None) -> Answer:
    """Retrieve, prompt with numbered sources, generate through the reference loop."""
    from lhama.generate import SamplingParams, generate

    params = params or SamplingParams(temperature=0, max_tokens=256)
    hits = retriever.search(question, k=k)
    sources, ids = fit_sources(
        loaded.chat_format, question, sources_from_hits(hits), loaded.context_length, params.max_tokens
    )
    out = generate(loaded.model, loaded.tokenizer, ids, params, stop_ids=loaded.chat_format.stop_ids)
    cited, unknown = parse_citations(out.text, len(sources))
    return Answer(question, out.text, sources, cited, unknown, out.finish_reason)
