"""/v1/files and /v1/batches through the official client, on the shared server's engine."""

from __future__ import annotations

import json

import openai
import pytest

from tests.serving import MODEL, wait_for


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_files_crud(client):
    f = client.files.create(file=("notes.jsonl", b'{"a": 1}\n'), purpose="batch")
    assert f.filename == "notes.jsonl" and f.bytes == 9 and f.purpose == "batch"
    assert client.files.retrieve(f.id).id == f.id
    assert f.id in [x.id for x in client.files.list().data]
    assert client.files.content(f.id).text == '{"a": 1}\n'
    assert client.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)


def test_batch_chat_with_a_failing_line(client):
    rows = [
        {
            "custom_id": f"ok-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Say {i}."}],
                "max_tokens": 6,
                "temperature": 0,
            },
        }
        for i in range(3)
    ]
    rows.append(
        {
            "custom_id": "bad",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": -1},
        }
    )
    f = client.files.create(file=("batch.jsonl", jsonl(rows)), purpose="batch")
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "test"}
    )
    assert b.status in ("validating", "in_progress")
    done = wait_for(lambda: (x := client.batches.retrieve(b.id)).status == "completed" and x, timeout=60)
    assert done and done.request_counts.total == 4 and done.request_counts.completed == 3
    assert done.request_counts.failed == 1 and done.metadata == {"job": "test"}
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == ["ok-0", "ok-1", "ok-2"]
    assert all(o["response"]["body"]["object"] == "chat.completion" for o in out)
    err = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert err[0]["custom_id"] == "bad" and err[0]["response"]["status_code"] == 400
    assert err[0]["response"]["body"]["error"]["param"] == "temperature"
    assert b.id in [x.id for x in client.batches.list().data]


def test_batch_embeddings_and_invalid_input(client):
    rows = [{"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"model": MODEL, "input": "hello"}}]
    f = client.files.create(file=("emb.jsonl", jsonl(rows)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    done = wait_for(lambda: (x := client.batches.retrieve(b.id)).status == "completed" and x, timeout=60)
    out = json.loads(client.files.content(done.output_file_id).text)
    assert len(out["response"]["body"]["data"][0]["embedding"]) == 576
    # Lines for another endpoint and duplicate ids fail validation, with line numbers.
    bad = client.files.create(file=("bad.jsonl", jsonl(rows + rows)), purpose="batch")
    b = client.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h")
    failed = wait_for(lambda: (x := client.batches.retrieve(b.id)).status == "failed" and x, timeout=30)
    assert failed and {e.line for e in failed.errors.data} == {1, 2}


def test_batch_input_that_is_not_utf8_is_refused_naming_the_line_never_replaced(client):
    def line(cid: bytes, content: bytes) -> bytes:
        return (
            b'{"custom_id": "%s", "url": "/v1/chat/completions", "body": {"model": "%s", "max_tokens": 2, '
            b'"temperature": 0, "messages": [{"role": "user", "content": "%s"}]}}\n' % (cid, MODEL.encode(), content)
        )

    # Bytes that are not UTF-8: the upload is refused with the line's number (no U+FFFD guesses).
    before = {x.id for x in client.files.list().data}
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("b.jsonl", line(b"ok", b"Hi") + line(b"bytes", b"Hi \xff\xfe")), purpose="batch")
    assert "line 2 is not valid UTF-8" in str(e.value)
    assert {x.id for x in client.files.list().data} == before
    # Valid UTF-8 that escapes a lone surrogate: that line's error names the field; the others run.
    data = line(b"ok", b"Hi") + line(b"escaped", b"Hi \\ud800 there") + line(b"ok-2", b"Yo")
    f = client.files.create(file=("mixed.jsonl", data), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_for(lambda: (x := client.batches.retrieve(b.id)).status == "completed" and x, timeout=60)
    assert done and (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == ["ok", "ok-2"]
    [err] = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert err["custom_id"] == "escaped" and err["response"]["status_code"] == 400
    assert err["response"]["body"]["error"]["param"] == "messages[0].content"


def test_batch_cancel(client):
    rows = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": True},
        }
        for i in range(20)
    ]
    f = client.files.create(file=("c.jsonl", jsonl(rows)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")
    wait_for(lambda: client.batches.retrieve(b.id).status == "in_progress", timeout=30)
    c = client.batches.cancel(b.id)
    assert c.status == "cancelled" and c.request_counts.completed < 20
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(b.id)
