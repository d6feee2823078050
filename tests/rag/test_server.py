"""/v1/vector_stores and the file_search tool on a real server, driven by the real openai client."""

from __future__ import annotations

import io

import httpx
import pytest

from tests.serving import MODEL

# ``server``: the session's shared default server (tests/conftest.py); ``data_dir`` is its own.


def test_vector_stores_end_to_end(server):
    from openai import NotFoundError, OpenAI

    srv, data = server, server.data_dir
    client = OpenAI(base_url=srv.base, api_key="unused")
    good = client.files.create(
        file=(
            "llamas.md",
            io.BytesIO(
                b"# Llamas\n\nLlamas are camelids from the Andes.\n\n## Diet\n\nA llama eats grass, hay and the occasional "
                b"carrot. It needs little water.\n"
            ),
            "text/markdown",
        ),
        purpose="assistants",
    )
    other = client.files.create(
        file=("notes.txt", io.BytesIO(b"The zebrafish regenerates its heart."), "text/plain"), purpose="assistants"
    )
    bad = client.files.create(
        file=("scan.pdf", io.BytesIO(b"%PDF-1.4 not really"), "application/pdf"), purpose="assistants"
    )

    vs = client.vector_stores.create(name="kb", file_ids=[good.id, bad.id])
    assert vs.file_counts.completed == 1 and vs.file_counts.failed == 1 and vs.status == "completed"
    f = client.vector_stores.files.create(vector_store_id=vs.id, file_id=other.id)
    assert f.status == "completed" and f.vector_store_id == vs.id
    files = {x.id: x for x in client.vector_stores.files.list(vector_store_id=vs.id).data}
    assert files[bad.id].status == "failed" and "PDF" in files[bad.id].last_error.message
    assert vs.id in [x.id for x in client.vector_stores.list().data]
    assert client.vector_stores.retrieve(vs.id).file_counts.total == 3

    page = client.vector_stores.search(vector_store_id=vs.id, query="what do llamas eat?", max_num_results=2)
    assert page.data[0].filename == "llamas.md" and "grass" in page.data[0].content[0].text

    r = httpx.post(f"{srv.base}/vector_stores/{vs.id}/search", json={"query": "llama", "filters": {"type": "eq"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "filters"

    # file_search grounds the chat: the passages enter the prompt (more prompt tokens), the reply is 200
    msgs = [{"role": "user", "content": "What does a llama eat?"}]
    plain = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0)
    grounded = client.chat.completions.create(
        model=MODEL,
        messages=msgs,
        max_tokens=8,
        temperature=0,
        tools=[{"type": "file_search", "vector_store_ids": [vs.id]}],
    )
    assert grounded.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    assert grounded.choices[0].message.content
    r = httpx.post(
        srv.base + "/chat/completions",
        json={
            "model": MODEL,
            "messages": msgs,
            "max_tokens": 4,
            "tools": [{"type": "file_search", "vector_store_ids": ["vs_doesnotexist"]}],
        },
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "vector_store_not_found"
    r = httpx.post(
        srv.base + "/chat/completions",
        json={
            "model": MODEL,
            "messages": msgs,
            "max_tokens": 4,
            "tools": [
                {"type": "file_search", "vector_store_ids": [vs.id], "filters": {"type": "eq", "key": "a", "value": 1}}
            ],
        },
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_parameter"

    # removing a file removes its passages
    client.vector_stores.files.delete(file_id=other.id, vector_store_id=vs.id)
    page = client.vector_stores.search(vector_store_id=vs.id, query="zebrafish heart", max_num_results=5)
    assert all(d.filename != "notes.txt" for d in page.data)

    # in the state database, so a new manager (as after a restart, or in another replica) sees the same store
    from lhama.server.files import FileStore
    from lhama.server.state_db import StateDB
    from lhama.server.vector_stores import VectorStoreManager

    db = StateDB(data / "state.db")
    mgr = VectorStoreManager(db, data / "vector_stores", FileStore(db, data / "files"))
    assert mgr.get(vs.id)["name"] == "kb" and {f["id"] for f in mgr.list_files(vs.id)} == {good.id, bad.id}

    assert client.vector_stores.delete(vs.id).deleted
    assert not (data / "vector_stores" / vs.id).exists()
    with pytest.raises(NotFoundError):
        client.vector_stores.retrieve(vs.id)
