"""Turn a file into sections of plain text: one per heading (Markdown, HTML), one per page (PDF),
one for a whole text file. A section is the unit chunks never cross, and what a citation names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lhama.rag.errors import DocumentReadError

TEXT_SUFFIXES = (".txt", ".text", ".rst", ".log", ".csv")
MARKDOWN_SUFFIXES = (".md", ".markdown", ".mdown")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
PDF_SUFFIXES = (".pdf",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + MARKDOWN_SUFFIXES + HTML_SUFFIXES + PDF_SUFFIXES


@dataclass(frozen=True)
class Section:
    text: str
    heading: str = ""  # heading path, "Server > Flags"; empty for text files and PDF pages
    page: int | None = None  # 1-based PDF page


def kind_of(name: str) -> str | None:
    suffix = Path(name).suffix.lower()
    for kind, suffixes in (
        ("text", TEXT_SUFFIXES),
        ("markdown", MARKDOWN_SUFFIXES),
        ("html", HTML_SUFFIXES),
        ("pdf", PDF_SUFFIXES),
    ):
        if suffix in suffixes:
            return kind
    return None


def read_document(path: Path, name: str | None = None) -> list[Section]:
    """Sections of ``path``; ``name`` (default: the path) decides the format by its suffix, so a
    server upload stored under an opaque name still reads as what it is."""
    path = Path(path)
    kind = kind_of(name or path.name)
    if kind is None:
        raise DocumentReadError(name or path, f"unsupported file type; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DocumentReadError(path, f"cannot read: {e.strerror or e}") from None
    if kind == "pdf":
        sections = _read_pdf(path, data)
    else:
        text = _decode(path, data)
        sections = {"text": _read_text, "markdown": _read_markdown, "html": _read_html}[kind](text)
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        raise DocumentReadError(name or path, "no text found (an empty file, or a scanned PDF without a text layer)")
    return sections


def _decode(path: Path, data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise DocumentReadError(path, "looks like binary data, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DocumentReadError(path, f"not UTF-8 text (bad byte at offset {e.start}); convert it to UTF-8") from None


def _read_text(text: str) -> list[Section]:
    return [Section(text)]


def _read_markdown(text: str) -> list[Section]:
    """Split at real headings only: markdown-it knows a ``#`` line inside a code fence is code."""
    from markdown_it import MarkdownIt

    lines = text.splitlines()
    tokens = MarkdownIt("commonmark").parse(text)
    cuts: list[tuple[int, int, int, str]] = []  # (first line, end line, level, title)
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.map:
            title = tokens[i + 1].content.strip() if i + 1 < len(tokens) else ""
            cuts.append((tok.map[0], tok.map[1], int(tok.tag[1]), title))
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    start, heading = 0, ""
    for first, end, level, title in cuts:
        body = "\n".join(lines[start:first])
        sections.append(Section(body, heading))
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, title))
        heading = " > ".join(t for _, t in stack)
        start = end
    sections.append(Section("\n".join(lines[start:]), heading))
    return sections


_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_BLOCKS = ("p", "li", "pre", "blockquote", "td", "th", "dt", "dd", "figcaption", "caption", "summary")


def _read_html(text: str) -> list[Section]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "svg", "nav", "head"]):
        tag.decompose()
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    heading, parts = "", []
    wanted = _HEADINGS + _BLOCKS
    for el in soup.find_all(wanted):
        if el.find_parent(wanted) is not None:
            continue  # its text is part of the enclosing block
        if el.name in _HEADINGS:
            sections.append(Section("\n\n".join(parts), heading))
            parts = []
            level = int(el.name[1])
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, el.get_text(" ", strip=True)))
            heading = " > ".join(t for _, t in stack)
        else:
            sep = "\n" if el.name == "pre" else " "
            t = el.get_text(sep, strip=el.name != "pre")
            if t.strip():
                parts.append(t)
    sections.append(Section("\n\n".join(parts), heading))
    if not any(s.text.strip() for s in sections):  # no block markup at all: take the bare text
        body = soup.get_text("\n", strip=True)
        sections = [Section(body)]
    return sections


def _read_pdf(path: Path, data: bytes) -> list[Section]:
    import io
    import logging

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings about damaged files become our error
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentReadError(path, "the PDF is encrypted with a password")
        out = []
        for i, page in enumerate(reader.pages):
            out.append(Section(_tidy_pdf_text(page.extract_text() or ""), page=i + 1))
        return out
    except DocumentReadError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as e:
        raise DocumentReadError(path, f"corrupt or unsupported PDF ({type(e).__name__}: {e})") from None


def _tidy_pdf_text(text: str) -> str:
    # PDF text comes line by line; re-join words hyphenated across line ends.
    return re.sub(r"(\w)-\n(\w)", r"\1\2", text)
