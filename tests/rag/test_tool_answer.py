"""The file_search tool for agents, and `rag ask`'s answer with the real SmolLM2."""

from __future__ import annotations

import json

import pytest

from lhama.errors import ContextLengthExceededError, SamplingError
from lhama.rag.answer import answer_question, fit_sources, parse_citations, sources_from_hits
from lhama.rag.retrieve import Retriever
from lhama.rag.tool import file_search_tool


def test_file_search_tool(eval_store, minilm):
    import jsonschema

    tool = file_search_tool(Retriever(eval_store, minilm))
    jsonschema.Draft202012Validator.check_schema(tool.parameters)
    assert tool.schema["function"]["name"] == "file_search"
    out = json.loads(tool(query="Can I kill a batch job and resume it?", max_num_results=3))
    assert [r["number"] for r in out["results"]] == [1, 2, 3]
    assert out["results"][0]["file"] == "batch.md" and "resuming" in out["results"][0]["location"]
    with pytest.raises(SamplingError, match="max_num_results"):
        tool(query="x", max_num_results=0)
    with pytest.raises(SamplingError, match="bogus"):
        tool(query="x", bogus=1)


def test_file_search_registers_as_agent_tool(eval_store, minilm, monkeypatch):
    import lhama.rag.tool as rag_tool
    from lhama.errors import ToolError
    from lhama.tools.builtin import as_tool

    t = as_tool(file_search_tool(Retriever(eval_store, minilm)).agent_tool())
    assert t.spec()["function"]["name"] == "file_search" and not t.builtin
    out = json.loads(t({"query": "Which browser do the web chat tests use?", "max_num_results": 2}))
    assert len(out["results"]) == 2 and out["results"][0]["file"] == "server.md"
    with pytest.raises(ToolError, match="file_search"):
        t({"max_num_results": 2})
    monkeypatch.setenv("LHAMA_RAG_STORE", str(eval_store.path))  # `lhama agent --tool lhama.rag.tool:file_search`
    assert json.loads(rag_tool.file_search({"query": "prefix caching"}))["results"]


def test_parse_citations():
    assert parse_citations("A [2], B [1, 3] and [2] again; [9] [0]", 3) == ([2, 1, 3], [9, 0])


@pytest.fixture(scope="module")
def smollm(smollm2_path):
    from lhama.loader import load_model

    return load_model(str(smollm2_path))


def test_answer_with_citations(tmp_path, minilm, smollm):
    from lhama.generate import SamplingParams
    from lhama.rag.ingest import ingest_paths
    from lhama.rag.sqlite_store import SqliteVectorStore

    (tmp_path / "chat-tests.md").write_text(
        "# Tests\n\n## Web chat\n\nThe web chat tests drive Debian's Chromium "
        "through Playwright.\n\n## Load\n\nThe load test runs 64 clients.\n"
    )
    (tmp_path / "zoo.txt").write_text("Llamas eat grass and hay.")
    store = SqliteVectorStore(tmp_path / "s.db")
    ingest_paths(store, minilm, [tmp_path])
    ret = Retriever(store, minilm)
    question = "Which browser do the web chat tests use?"
    ans = answer_question(smollm, ret, question, k=2, params=SamplingParams(temperature=0, max_tokens=16))
    assert [s.number for s in ans.sources] == [1, 2]
    assert [s.location for s in ans.sources] == [h.chunk.location for h in ret.search(question, k=2)]
    assert ans.sources[0].location == "chat-tests.md § Tests > Web chat" and "Chromium" in ans.sources[0].text
    assert ans.text.strip() and ans.finish_reason in ("stop", "length")
    assert set(ans.cited) <= {1, 2} and ans.cited == parse_citations(ans.text, 2)[0]
    assert "Sources:" in ans.render() and "[1] chat-tests.md" in ans.render()


def test_sources_are_dropped_to_fit_the_context(eval_store, minilm, smollm):
    hits = Retriever(eval_store, minilm).search("How is the KV cache sized?", k=5)
    sources = sources_from_hits(hits)
    full = len(
        list(smollm.chat_format.encode_dialog([{"role": "user", "content": "\n".join(s.text for s in sources)}]))
    )
    kept, ids = fit_sources(smollm.chat_format, "q", sources, context=full, max_tokens=64)
    assert 0 < len(kept) < 5 and len(ids) + 64 <= full
    assert [s.location for s in kept] == [s.location for s in sources[: len(kept)]]
    with pytest.raises(ContextLengthExceededError):
        fit_sources(smollm.chat_format, "q", sources, context=10, max_tokens=64)
