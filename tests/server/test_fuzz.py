"""Schemathesis fuzzes every operation of the server's own OpenAPI spec (valid and invalid
inputs) against the real server: whatever it sends, the answer is never a 5xx. Generation is
capped to a few tokens so the run stays bounded; the slow variant runs many more examples."""

from __future__ import annotations

import time

import pytest

TOKEN_CAP = 4


def _cap_generation(case) -> None:
    """Keep fuzzed generation requests cheap without hiding their invalid values."""
    body = case.body
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
        @settings(max_examples=max_examples, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case):
            if time.monotonic() > deadline:
                return
            _cap_generation(case)
            resp = case.call(base_url=server.url, timeout=60)
            calls[0] += 1
            if resp.status_code >= 500:
                failures.append(f"{op.method.upper()} {op.path} -> {resp.status_code}: {resp.text[:300]}\n"
                                f"  body={case.body!r:.500} query={case.query!r}")

        return run

    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                make_test(op, mode)()
            except Unsatisfiable:  # nothing to make invalid (e.g. GET /health has no inputs)
                assert mode == GenerationMode.NEGATIVE, f"{op.method} {op.path}"
    assert not failures, "\n".join(failures[:10])
    assert server.metrics().get('lhama_http_requests_total{method="POST",route="/v1/chat/completions",status="500"}',
                                0) == 0
    return calls[0]


def test_fuzz_quick_no_server_errors(server):
    calls = fuzz(server, max_examples=8, budget_s=45)
    assert calls > 100
    assert "server never" not in server.log and "Traceback" not in server.log, server.log[-3000:]


@pytest.mark.slow
def test_fuzz_long_no_server_errors(server):
    fuzz(server, max_examples=150, budget_s=600)
    assert "Traceback" not in server.log, server.log[-3000:]
