"""Cancellation, metrics and shutdown on real servers: a client that leaves mid-stream frees
its KV blocks; /metrics reports what happened; SIGTERM lets an in-flight stream finish; a batch
interrupted by the shutdown resumes after the restart and completes each request once."""

from __future__ import annotations

import json
import signal

import httpx
import pytest
from openai import OpenAI

from tests.serving import MODEL, ServerProcess, wait_for

LONG = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Tell me a very long story."}],
    "max_tokens": 400,
    "temperature": 0.8,
    "ignore_eos": True,
}


def idle(server) -> bool:
    m = server.metrics()
    return (
        m["lhama_kv_cache_blocks_used"] == 0 and m["lhama_running_requests"] == 0 and m["lhama_in_flight_requests"] == 0
    )


def test_client_disconnect_mid_stream_cancels_and_frees_kv(server):
    assert wait_for(lambda: idle(server))
    aborted = server.metrics()["lhama_engine_requests_aborted_total"]
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**LONG, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [ln for ln in (next(lines) for _ in range(12)) if ln.startswith("data:")]
        assert len(got) >= 5
        assert server.metrics()["lhama_kv_cache_blocks_used"] > 0  # it is really running
    # leaving the with-block closed the connection after ~6 of 400 tokens
    assert wait_for(lambda: idle(server), timeout=20), server.metrics()
    m = server.metrics()
    assert m["lhama_engine_requests_aborted_total"] == aborted + 1
    assert m['lhama_requests_cancelled_total{route="/v1/chat/completions"}'] >= 1


def test_non_streaming_client_timeout_cancels_too(server):
    assert wait_for(lambda: idle(server))
    aborted = server.metrics()["lhama_engine_requests_aborted_total"]
    try:
        httpx.post(server.url + "/v1/chat/completions", json=LONG, timeout=1.5)
    except httpx.TimeoutException:
        pass
    assert wait_for(lambda: idle(server), timeout=20), server.metrics()
    assert server.metrics()["lhama_engine_requests_aborted_total"] == aborted + 1


def test_metrics_exposition(server, client):
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    client.embeddings.create(model=MODEL, input="hi")
    text = httpx.get(server.url + "/metrics").text
    for needle in [
        'lhama_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}',
        'lhama_http_requests_total{method="POST",route="/v1/embeddings",status="200"}',
        'lhama_time_to_first_token_seconds_bucket{le="0.5",route="/v1/chat/completions"}',
        "lhama_time_per_output_token_seconds_count",
        "lhama_request_duration_seconds_sum",
        'lhama_prompt_tokens_total{route="/v1/chat/completions"}',
        'lhama_completion_tokens_total{route="/v1/chat/completions"}',
        "lhama_queue_depth ",
        "lhama_running_requests ",
        "lhama_kv_cache_usage_ratio ",
        "lhama_kv_cache_blocks_total ",
        "lhama_prefix_cache_hits_total ",
    ]:
        assert needle in text, needle
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["model"] == MODEL


def _batch_file(n: int, max_tokens: int) -> bytes:
    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"Write about the number {i}."}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
            },
        }
        for i in range(n)
    ]
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


# Slow job: SIGTERM mid-stream and mid-batch, then a restart: two server starts and a 5-line batch (~60 s).
@pytest.mark.slow
def test_sigterm_drains_stream_and_batch_resumes_after_restart(tmp_path):
    data = tmp_path / "data"
    srv = ServerProcess(data, "--batch-concurrency", "1")
    try:
        client = OpenAI(base_url=srv.base, api_key="x", max_retries=0)
        f = client.files.create(file=("in.jsonl", _batch_file(5, 24)), purpose="batch")
        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 1, timeout=90)

        events = []
        with httpx.stream(
            "POST",
            srv.url + "/v1/chat/completions",
            timeout=120,
            json={**LONG, "max_tokens": 16, "stream": True, "stream_options": {"include_usage": True}},
        ) as r:
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data:"):
                    events.append(line[5:].strip())
                if len(events) == 3:
                    srv.terminate()  # SIGTERM mid-stream
                    break
            events += [ln[5:].strip() for ln in lines if ln.startswith("data:")]
        # uvicorn re-raises the signal once it has shut down cleanly, so -SIGTERM is a clean exit too.
        assert srv.proc.wait(120) in (0, -signal.SIGTERM), srv.log
    finally:
        srv.stop()
    # The in-flight stream ran to the end: all 16 tokens, a finish reason, usage, [DONE].
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == 16
    assert any(c["choices"] and c["choices"][0]["finish_reason"] == "length" for c in chunks)
    # The batch was cut short, and its state is in the state database.
    import sqlite3

    with sqlite3.connect(data / "state.db") as db:
        status = db.execute("SELECT status FROM batches WHERE id = ?", (batch.id,)).fetchone()[0]
        done_before = db.execute(
            "SELECT COUNT(*) FROM batch_lines WHERE batch_id = ? AND record IS NOT NULL", (batch.id,)
        ).fetchone()[0]
    assert status == "in_progress"
    assert 1 <= done_before < 5

    srv = ServerProcess(data, "--batch-concurrency", "8")
    try:
        client = OpenAI(base_url=srv.base, api_key="x", max_retries=0)
        final = wait_for(lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b, timeout=120)
        assert final, client.batches.retrieve(batch.id)
        assert final.request_counts.completed == 5 and final.request_counts.failed == 0
        out = [json.loads(x) for x in client.files.content(final.output_file_id).text.splitlines()]
        assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(5)]  # each once, in input order
        assert all(
            o["response"]["status_code"] == 200 and o["response"]["body"]["usage"]["completion_tokens"] == 24
            for o in out
        )
    finally:
        srv.stop()


def test_embeddings_stop_when_their_clients_leave_and_chat_is_admitted(tmp_path):
    """Two huge embedding requests fill a 2-slot server; once their clients disconnect, the
    slots come back within seconds (the work stops after the input being computed), not after
    minutes of embedding nobody reads."""
    import asyncio

    srv = ServerProcess(tmp_path, "--max-num-seqs", "1", "--max-queue", "1")
    # 256 inputs of 256 tokens: many minutes of CPU work, each input a second or so.
    huge = {"model": MODEL, "input": [[(7 * i + j) % 20000 + 100 for j in range(256)] for i in range(256)]}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    async def in_flight(c: httpx.AsyncClient) -> float:
        for line in (await c.get("/metrics")).text.splitlines():
            if line.startswith("lhama_in_flight_requests "):
                return float(line.split()[1])
        raise AssertionError("no lhama_in_flight_requests")

    async def until(pred, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            if await pred():
                return True
            await asyncio.sleep(0.1)
        return False

    async def main():
        async with httpx.AsyncClient(base_url=srv.url, timeout=120) as probe:
            leaving = httpx.AsyncClient(base_url=srv.url, timeout=600)
            tasks = [asyncio.create_task(leaving.post("/v1/embeddings", json=huge)) for _ in range(2)]
            assert await until(lambda: _eq(in_flight(probe), 2), 60), "the embeddings were never admitted"
            busy = await probe.post("/v1/chat/completions", json=chat)
            assert busy.status_code == 429  # both slots really are held by the embeddings
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await leaving.aclose()  # the clients are gone
            freed = await until(lambda: _eq(in_flight(probe), 0), 30)
            assert freed, "the embeddings kept their slots after their clients left"
            return await probe.post("/v1/chat/completions", json=chat)

    async def _eq(value, want) -> bool:
        return await value == want

    try:
        r = asyncio.run(main())
        assert r.status_code == 200, r.text
        m = srv.metrics()
        assert m['lhama_requests_cancelled_total{route="/v1/embeddings"}'] == 2
    finally:
        srv.stop()
