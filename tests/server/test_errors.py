"""Every error in OpenAI's shape with the right status, on real servers: bad JSON and types,
invalid sampling values naming the parameter, context overflow with the numbers, unknown
model, auth, oversized bodies, and the bounded queue (429 + Retry-After, then still serving)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.server.conftest import MODEL, ServerProcess

MSG = [{"role": "user", "content": "hi"}]


def post(server, path, body=None, *, content=None, headers=None):
    return httpx.post(server.url + path, json=body, content=content, headers=headers, timeout=60)


def assert_error(r, status, param=None, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


@pytest.mark.parametrize("body,param", [
    ({"model": MODEL, "messages": MSG, "temperature": -0.5}, "temperature"),
    ({"model": MODEL, "messages": MSG, "top_p": 1.5}, "top_p"),
    ({"model": MODEL, "messages": MSG, "n": 1000}, "n"),
    ({"model": MODEL, "messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"model": MODEL, "messages": MSG, "max_completion_tokens": -3}, "max_completion_tokens"),
    ({"model": MODEL, "messages": MSG, "top_logprobs": 3}, "top_logprobs"),
    ({"model": MODEL, "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": MODEL, "messages": MSG, "temperature": "hot"}, "temperature"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": MODEL, "messages": "hi"}, "messages"),
    ({"model": MODEL}, "messages"),
    ({"model": MODEL, "messages": MSG, "tool_choice": "required"}, "tool_choice"),
    ({"model": MODEL, "messages": MSG, "logit_bias": {"1": 5}}, "logit_bias"),
])
def test_invalid_chat_requests_are_400_naming_the_parameter(server, body, param):
    assert_error(post(server, "/v1/chat/completions", body), 400, param=param)


def test_completions_and_embeddings_validation(server):
    assert_error(post(server, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -1}), 400, "max_tokens")
    assert_error(post(server, "/v1/completions", {"model": MODEL, "prompt": [10**9]}), 400, "prompt")
    assert_error(post(server, "/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": 9}), 400, "logprobs")
    assert_error(post(server, "/v1/embeddings", {"model": MODEL, "input": []}), 400, "input")
    assert_error(post(server, "/v1/embeddings", {"model": MODEL, "input": "x", "dimensions": 7}), 400, "dimensions")


def test_malformed_json_and_unknown_routes(server):
    err = assert_error(post(server, "/v1/chat/completions", content=b'{"model": ', headers={"content-type":
                                                                                           "application/json"}), 400)
    assert err["code"] == "invalid_json"
    assert_error(httpx.get(server.url + "/v1/nope"), 404)
    assert_error(httpx.get(server.url + "/v1/chat/completions"), 405)


def test_context_length_exceeded_names_the_numbers(server):
    ctx = int(server.metrics()["lhama_max_model_len"])
    err = assert_error(post(server, "/v1/chat/completions", {"model": MODEL, "messages": MSG, "max_tokens": ctx}), 400,
                       code="context_length_exceeded")
    assert str(ctx) in err["message"] and str(ctx + 1) not in err["message"].split("context")[0]
    long_prompt = "word " * (ctx + 10)  # never silently truncated
    err = assert_error(post(server, "/v1/completions", {"model": MODEL, "prompt": long_prompt, "max_tokens": 5}), 400,
                       param="prompt", code="context_length_exceeded")
    assert str(ctx) in err["message"]
    assert_error(post(server, "/v1/embeddings", {"model": MODEL, "input": long_prompt}), 400,
                 code="context_length_exceeded")


def test_unknown_model_is_404(server):
    for path, body in [("/v1/chat/completions", {"model": "gpt-9", "messages": MSG}),
                       ("/v1/completions", {"model": "gpt-9", "prompt": "x"}),
                       ("/v1/embeddings", {"model": "gpt-9", "input": "x"})]:
        assert_error(post(server, path, body), 404, param="model", code="model_not_found")
    assert_error(httpx.get(server.url + "/v1/models/gpt-9"), 404, code="model_not_found")


def test_oversized_body_is_413(server):
    big = b'{"model": "x", "prompt": "' + b"a" * (9 * 2**20) + b'"}'
    assert_error(post(server, "/v1/completions", content=big, headers={"content-type": "application/json"}), 413)

    def chunked():  # no Content-Length: the limit is enforced while reading
        yield b'{"model": "x", "prompt": "'
        for _ in range(9):
            yield b"a" * 2**20
        yield b'"}'

    assert_error(post(server, "/v1/completions", content=chunked(), headers={"content-type": "application/json"}), 413)
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.fixture(scope="module")
def restricted(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("restricted"), "--api-key", "s3cret", "--max-num-seqs", "1",
                        "--max-queue", "1")
    yield srv
    srv.stop()


def test_api_key(restricted):
    r = httpx.get(restricted.base + "/models")
    assert_error(r, 401, code="missing_api_key")
    assert_error(httpx.get(restricted.base + "/models", headers={"Authorization": "Bearer wrong"}), 401,
                 code="invalid_api_key")
    ok = httpx.get(restricted.base + "/models", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["data"][0]["id"] == MODEL
    assert httpx.get(restricted.url + "/health").status_code == 200  # probes need no key

    import openai

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=restricted.base, api_key="nope", max_retries=0).models.list()


def test_queue_full_is_429_with_retry_after_and_server_keeps_serving(restricted):
    """One running + one queued fit; the others are turned away at once."""
    headers = {"Authorization": "Bearer s3cret"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 40,
            "temperature": 0, "ignore_eos": True}

    async def main():
        async with httpx.AsyncClient(base_url=restricted.url, headers=headers, timeout=120) as c:
            return await asyncio.gather(*(c.post("/v1/chat/completions", json=body) for _ in range(6)))

    results = asyncio.run(main())
    codes = sorted(r.status_code for r in results)
    assert codes.count(200) >= 2 and codes.count(429) >= 1 and set(codes) <= {200, 429}, codes
    for r in results:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["type"] == "rate_limit_error"
    r = httpx.post(restricted.url + "/v1/chat/completions", json={**body, "max_tokens": 3}, headers=headers, timeout=60)
    assert r.status_code == 200
    text = httpx.get(restricted.url + "/metrics").text
    assert "lhama_requests_rejected_total" in text and 'status="429"' in text
