"""Readers and chunking on real files of each format, including broken ones."""

from __future__ import annotations

import pytest

from lhama.errors import ConfigError
from lhama.rag.chunking import ChunkConfig, chunk_sections, split_sentences
from lhama.rag.errors import DocumentReadError
from lhama.rag.readers import Section, read_document
from tests.rag.conftest import write_pdf


def test_markdown_sections_follow_real_headings_only(tmp_path):
    p = tmp_path / "guide.md"
    p.write_text(
        "Intro text.\n\n# Setup\n\nInstall it.\n\n## Linux\n\nUse apt.\n\n```bash\n# not a heading\n"
        "make\n```\n\n# Usage\n\nRun it.\n"
    )
    secs = read_document(p)
    assert [s.heading for s in secs] == ["", "Setup", "Setup > Linux", "Usage"]
    assert "# not a heading" in secs[2].text and "Use apt." in secs[2].text


def test_html_headings_and_blocks(tmp_path):
    p = tmp_path / "page.html"
    p.write_text(
        "<html><head><title>t</title><style>p{}</style></head><body><nav>menu</nav>"
        "<h1>Guide</h1><p>First <b>para</b>.</p><script>var x;</script>"
        "<h2>Details</h2><ul><li>one</li><li>two</li></ul><pre>code\n  block</pre></body></html>"
    )
    secs = read_document(p)
    assert [s.heading for s in secs] == ["Guide", "Guide > Details"]
    assert secs[0].text == "First para ."
    assert "one" in secs[1].text and "code\n  block" in secs[1].text
    assert all("var x" not in s.text and "menu" not in s.text for s in secs)


def test_pdf_pages(tmp_path):
    p = write_pdf(tmp_path / "r.pdf", ["Page one talks about llamas.", "Page two is about alpacas."])
    secs = read_document(p)
    assert [s.page for s in secs] == [1, 2]
    assert "llamas" in secs[0].text and "alpacas" in secs[1].text


@pytest.mark.parametrize(
    "name,data,why",
    [
        ("bad.pdf", b"%PDF-1.4\n1 0 obj <<", "corrupt or unsupported PDF"),
        ("bin.txt", b"\x00\x01\x02binary", "binary"),
        ("latin.txt", "caf\xe9".encode("latin-1"), "not UTF-8"),
        ("empty.md", b"   \n", "no text found"),
        ("image.png", b"\x89PNG", "unsupported file type"),
    ],
)
def test_unreadable_files_raise_typed_errors(tmp_path, name, data, why):
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(DocumentReadError, match=why):
        read_document(p)


def test_sentences_and_code_lines():
    text = "Dr. Smith said hi. Then he left! Did he?\n\n```\nx = 1\ny = 2\n```\n- item one\n- item two"
    assert split_sentences(text) == [
        "Dr. Smith said hi.",
        "Then he left!",
        "Did he?",
        "```",
        "x = 1",
        "y = 2",
        "```",
        "- item one",
        "- item two",
    ]


def test_chunks_respect_size_overlap_and_sections():
    sents = " ".join(f"Sentence number {i} has five words." for i in range(40))
    secs = [Section(sents, "A"), Section("Short other section.", "B")]
    chunks = chunk_sections(secs, ChunkConfig(max_words=30, overlap_words=12))
    a = [c for c in chunks if c.heading == "A"]
    assert all(len(c.text.split()) <= 30 for c in chunks)
    # consecutive chunks share their boundary sentences, and together cover every sentence
    for prev, nxt in zip(a, a[1:]):
        assert prev.text.splitlines()[-1] in nxt.text.splitlines()
    covered = set(line for c in a for line in c.text.splitlines())
    assert all(f"Sentence number {i} has five words." in covered for i in range(40))
    assert chunks[-1].heading == "B" and chunks[-1].text == "Short other section."
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_chunk_config_is_checked():
    with pytest.raises(ConfigError):
        ChunkConfig(max_words=50, overlap_words=50)
