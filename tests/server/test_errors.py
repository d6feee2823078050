"""Every error in OpenAI's shape with the right status, on real servers: bad JSON and types,
invalid sampling values naming the parameter, context overflow with the numbers, unknown
model, auth, oversized bodies, and the bounded queue (429 + Retry-After, then still serving)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.serving import MODEL, ServerProcess

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


@pytest.mark.parametrize(
    "body,param",
    [
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
    ],
)
def test_invalid_chat_requests_are_400_naming_the_parameter(server, body, param):
    assert_error(post(server, "/v1/chat/completions", body), 400, param=param)


def test_completions_and_embeddings_validation(server):
    assert_error(post(server, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -1}), 400, "max_tokens")
    assert_error(post(server, "/v1/completions", {"model": MODEL, "prompt": [10**9]}), 400, "prompt")
    assert_error(post(server, "/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": 9}), 400, "logprobs")
    assert_error(post(server, "/v1/embeddings", {"model": MODEL, "input": []}), 400, "input")
    assert_error(post(server, "/v1/embeddings", {"model": MODEL, "input": "x", "dimensions": 7}), 400, "dimensions")


def test_malformed_json_and_unknown_routes(server):
    err = assert_error(
        post(server, "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}), 400
    )
    assert err["code"] == "invalid_json"
    assert_error(httpx.get(server.url + "/v1/nope"), 404)
    assert_error(httpx.get(server.url + "/v1/chat/completions"), 405)


def test_context_length_exceeded_names_the_numbers(server):
    ctx = int(server.metrics()["lhama_max_model_len"])
    err = assert_error(
        post(server, "/v1/chat/completions", {"model": MODEL, "messages": MSG, "max_tokens": ctx}),
        400,
        code="context_length_exceeded",
    )
    assert str(ctx) in err["message"] and str(ctx + 1) not in err["message"].split("context")[0]
    long_prompt = "word " * (ctx + 10)  # never silently truncated
    err = assert_error(
        post(server, "/v1/completions", {"model": MODEL, "prompt": long_prompt, "max_tokens": 5}),
        400,
        param="prompt",
        code="context_length_exceeded",
    )
    assert str(ctx) in err["message"]
    assert_error(
        post(server, "/v1/embeddings", {"model": MODEL, "input": long_prompt}), 400, code="context_length_exceeded"
    )


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    "broken",
    [b"\\ud800", b"\\udfff", b"\xff\xfe", b"\xed\xa0\x80", b"\xc3"],
    ids=["lone-high", "lone-low", "not-utf8", "encoded-surrogate", "truncated"],
)
def test_invalid_unicode_is_400_naming_the_field_everywhere(server, broken):
    """Lone surrogates (legal JSON escapes) and bytes that are not UTF-8, on every endpoint."""
    m = MODEL.encode()
    cases = [
        (
            "/v1/chat/completions",
            b'{"model": "%s", "max_tokens": 2, "messages": [{"role": "user", "content": "a"},'
            b' {"role": "assistant", "content": "b"}, {"role": "user", "content": "x%sy"}]}' % (m, broken),
            "messages[2].content",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "%s", "messages": [{"role": "user", "content": [{"type": "text",'
            b' "text": "%s"}]}]}' % (m, broken),
            "messages[0].content[0].text",
        ),
        ("/v1/completions", b'{"model": "%s", "max_tokens": 2, "prompt": ["ok", "%s"]}' % (m, broken), "prompt"),
        ("/v1/embeddings", b'{"model": "%s", "input": "x%s"}' % (m, broken), "input"),
        ("/v1/embeddings", b'{"model": "x%s", "input": "x"}' % broken, "model"),
        ("/v1/vector_stores", b'{"name": "%s"}' % broken, "name"),
    ]
    vs = post(server, "/v1/vector_stores", {"name": "unicode"}).json()["id"]
    cases.append((f"/v1/vector_stores/{vs}/search", b'{"query": "a%s"}' % broken, "query"))
    for path, body, param in cases:
        err = assert_error(post(server, path, content=body, headers=JSON), 400, param=param, code="invalid_value")
        assert "UTF-8" in err["message"], err
    r = httpx.post(
        server.url + "/v1/files",
        files={"file": ("b.jsonl", b'{"a": 1}\n{"b": "%s"}\n' % broken)},
        data={"purpose": "batch"},
        timeout=60,
    )
    if broken.startswith(b"\\"):  # an escape is ASCII: the file is UTF-8, its line fails when run
        assert r.status_code == 200, r.text
    else:
        assert "line 2" in assert_error(r, 400, param="file", code="invalid_file")["message"]
    assert httpx.get(server.url + "/health").status_code == 200


@pytest.mark.parametrize(
    "field,value",
    [
        ("stream", "yes"),
        ("max_tokens", "5"),
        ("n", "2"),
        ("temperature", "1"),
        ("logprobs", 1),
        ("seed", 1.5),
        ("stream", 1),
    ],
)
def test_strict_types_as_openai(server, field, value):
    body = {"model": MODEL, "messages": MSG, "max_tokens": 2, field: value}
    assert_error(post(server, "/v1/chat/completions", body), 400, param=field, code="invalid_value")


@pytest.mark.parametrize(
    "body,param",
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_k": 2**63}, "top_k"),
        ({"top_k": 10**6}, "top_k"),
        ({"seed": 2**64}, "seed"),
        ({"n": 2**63}, "n"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"logit_bias": {"123": 101}}, "logit_bias.123"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias.99999999"),
        ({"max_tokens": 2**64}, "max_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
    ],
)
def test_numbers_are_range_checked(server, body, param):
    assert_error(post(server, "/v1/chat/completions", {"model": MODEL, "messages": MSG, **body}), 400, param=param)


def test_unknown_model_is_404(server):
    for path, body in [
        ("/v1/chat/completions", {"model": "gpt-9", "messages": MSG}),
        ("/v1/completions", {"model": "gpt-9", "prompt": "x"}),
        ("/v1/embeddings", {"model": "gpt-9", "input": "x"}),
    ]:
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
    srv = ServerProcess(
        tmp_path_factory.mktemp("restricted"), "--api-key", "s3cret", "--max-num-seqs", "1", "--max-queue", "1"
    )
    yield srv
    srv.stop()


def test_api_key(restricted):
    r = httpx.get(restricted.base + "/models")
    assert_error(r, 401, code="missing_api_key")
    assert_error(
        httpx.get(restricted.base + "/models", headers={"Authorization": "Bearer wrong"}), 401, code="invalid_api_key"
    )
    ok = httpx.get(restricted.base + "/models", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["data"][0]["id"] == MODEL
    assert httpx.get(restricted.url + "/health").status_code == 200  # probes need no key

    import openai

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=restricted.base, api_key="nope", max_retries=0).models.list()


def test_queue_full_is_429_with_retry_after_and_server_keeps_serving(restricted):
    """One running + one queued fit; the others are turned away at once."""
    headers = {"Authorization": "Bearer s3cret"}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 40,
        "temperature": 0,
        "ignore_eos": True,
    }

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
