"""Schemathesis fuzzes every operation of the server's own OpenAPI spec (valid and invalid
inputs) against the real server: whatever it sends, the answer is never a 5xx, every 4xx is an
OpenAI error body, and the server still serves afterwards. Generation is capped to a few tokens
so the run stays bounded; the slow variant runs many more examples."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.serving import MODEL

TOKEN_CAP = 4


def _cap_generation(case) -> None:
    """Keep fuzzed generation requests cheap without hiding their invalid values."""
    body = case.body
    if isinstance(body, dict) and case.path == "/v1/responses":
        v = body.get("max_output_tokens")
        if v is None or (isinstance(v, int) and not isinstance(v, bool) and v > TOKEN_CAP):
            body["max_output_tokens"] = TOKEN_CAP
        return
    if not isinstance(body, dict) or case.path not in ("/v1/chat/completions", "/v1/completions"):
        return
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > TOKEN_CAP:
            body[key] = TOKEN_CAP
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = TOKEN_CAP
    if isinstance(body.get("n"), int) and body["n"] > 4:
        body["n"] = 4


def openai_error_shape(resp) -> bool:
    try:
        err = resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return (
        isinstance(err, dict)
        and set(err) == {"message", "type", "param", "code"}
        and isinstance(err["message"], str)
        and bool(err["message"])
        and isinstance(err["type"], str)
    )


def assert_still_serving(server) -> None:
    assert httpx.get(server.url + "/health", timeout=30).json()["status"] == "ok"
    r = httpx.post(
        server.url + "/v1/chat/completions",
        timeout=120,
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length"), r.text


def fuzz(server, max_examples: int, budget_s: float) -> int:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    failures: list[str] = []
    calls = [0]
    deadline = time.monotonic() + budget_s

    def make_test(op, mode):
        @settings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case):
            if time.monotonic() > deadline:
                return
            _cap_generation(case)
            resp = case.call(base_url=server.url, timeout=60)
            calls[0] += 1
            where = (
                f"{op.method.upper()} {op.path} -> {resp.status_code}: {resp.text[:300]}\n"
                f"  body={case.body!r:.500} query={case.query!r}"
            )
            if resp.status_code >= 500:
                failures.append(where)
            elif resp.status_code >= 400 and not openai_error_shape(resp):
                failures.append("not an OpenAI error body: " + where)

        return run

    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                make_test(op, mode)()
            except Unsatisfiable:  # nothing to make invalid (e.g. GET /health has no inputs)
                assert mode == GenerationMode.NEGATIVE, f"{op.method} {op.path}"
    assert not failures, "\n".join(failures[:10])
    assert_still_serving(server)
    assert (
        server.metrics().get('lhama_http_requests_total{method="POST",route="/v1/chat/completions",status="500"}', 0)
        == 0
    )
    return calls[0]


def test_fuzz_quick_no_server_errors(server):
    calls = fuzz(server, max_examples=8, budget_s=45)
    assert calls > 100
    assert "server never" not in server.log and "Traceback" not in server.log, server.log[-3000:]


@pytest.mark.slow
def test_fuzz_long_no_server_errors(server):
    fuzz(server, max_examples=150, budget_s=600)
    assert "Traceback" not in server.log, server.log[-3000:]


def test_hostile_sampling_and_messages_over_http(server):
    """Hypothesis sends what schemathesis would not think of - lone surrogates, other formats'
    special-token text, numbers past int64, NaN - to the real server: never a 5xx, every 4xx an
    OpenAI error body, and the server still serves afterwards."""
    import json

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.openai.strategies import MESSAGE, SAMPLING

    seen: dict[int, int] = {}

    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(messages=st.lists(MESSAGE, min_size=1, max_size=3), sampling=SAMPLING, stream=st.booleans())
    def one(messages, sampling, stream):
        body = {"model": MODEL, "messages": messages, "stream": stream, **sampling}
        for key, cap in (("max_tokens", TOKEN_CAP), ("n", 2)):  # cheap, but invalid values stay invalid
            v = body.get(key)
            if type(v) is int and cap < v <= 10**6:
                body[key] = cap
        body.setdefault("max_tokens", TOKEN_CAP)
        r = httpx.post(
            server.url + "/v1/chat/completions",
            content=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            timeout=120,
        )
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (r.status_code, r.text[:500], body)
        if r.status_code >= 400:
            assert openai_error_shape(r), r.text[:500]
        elif stream:
            assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text, r.text[-500:]
        else:
            assert r.json()["choices"], r.text[:500]

    one()
    assert seen.get(200, 0) >= 3 and seen.get(400, 0) >= 3, seen
    assert_still_serving(server)
