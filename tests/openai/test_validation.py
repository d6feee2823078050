"""The API boundary (lhama.openai.schemas + requests), used by the server and every batch job:
strict types, ranges, invalid Unicode anywhere, the right ``param`` path - and, property-based,
that whatever passes it runs on the engine without failing."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lhama.engine import EngineConfig, LLMEngine
from lhama.errors import LhamaError
from lhama.openai.requests import (
    CHAT_URL,
    COMPLETIONS_URL,
    EMBEDDINGS_URL,
    RequestLimits,
    parse_request,
    prepare,
)
from tests.openai.strategies import I64, MESSAGE, SAMPLING

URLS = (CHAT_URL, COMPLETIONS_URL, EMBEDDINGS_URL)
MSG = [{"role": "user", "content": "w1 w2"}]


def refused(url, body, *, loaded=None):
    """(param, code, message) of the error ``body`` gets at the boundary."""
    with pytest.raises(LhamaError) as e:
        req = parse_request(url, {"model": "m", **body}, urls=URLS)
        prepare(loaded, req, None, context=256, limits=RequestLimits(max_n=4, max_choices=6))
    err = e.value
    assert str(err) and err.http_status == 400, err
    return err.param, err.code, str(err)


@pytest.mark.parametrize(
    "body,param,code",
    [
        ({"messages": MSG, "stream": "yes"}, "stream", "invalid_value"),
        ({"messages": MSG, "max_tokens": "5"}, "max_tokens", "invalid_value"),
        ({"messages": MSG, "temperature": "0.5"}, "temperature", "invalid_value"),
        ({"messages": MSG, "n": True}, "n", "invalid_value"),
        ({"messages": MSG, "seed": 1.5}, "seed", "invalid_value"),
        ({"messages": MSG, "logprobs": "true"}, "logprobs", "invalid_value"),
        ({"messages": MSG, "temperature": 2.0001}, "temperature", "invalid_sampling_parameter"),
        ({"messages": MSG, "temperature": -0.1}, "temperature", "invalid_sampling_parameter"),
        ({"messages": MSG, "top_p": 0}, "top_p", "invalid_sampling_parameter"),
        ({"messages": MSG, "top_p": 1.01}, "top_p", "invalid_sampling_parameter"),
        ({"messages": MSG, "presence_penalty": 2.5}, "presence_penalty", "invalid_sampling_parameter"),
        ({"messages": MSG, "frequency_penalty": -3}, "frequency_penalty", "invalid_sampling_parameter"),
        ({"messages": MSG, "top_k": I64}, "top_k", "invalid_sampling_parameter"),
        ({"messages": MSG, "top_k": -1}, "top_k", "invalid_sampling_parameter"),
        ({"messages": MSG, "seed": I64}, "seed", "invalid_sampling_parameter"),
        ({"messages": MSG, "seed": -I64 - 1}, "seed", "invalid_sampling_parameter"),
        ({"messages": MSG, "n": 0}, "n", "invalid_sampling_parameter"),
        ({"messages": MSG, "n": I64}, "n", "invalid_sampling_parameter"),
        ({"messages": MSG, "max_tokens": 0}, "max_tokens", "invalid_sampling_parameter"),
        ({"messages": MSG, "max_tokens": I64}, "max_tokens", "invalid_sampling_parameter"),
        ({"messages": MSG, "min_tokens": I64 * 4}, "min_tokens", "invalid_sampling_parameter"),
        ({"messages": MSG, "logit_bias": {"123": 100.5}}, "logit_bias.123", "invalid_sampling_parameter"),
        ({"messages": MSG, "logit_bias": {"7": "x"}}, "logit_bias.7", "invalid_value"),
        ({"messages": [*MSG, *MSG, {"role": "user", "content": "a\ud800b"}]}, "messages[2].content", "invalid_value"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
            "messages[0].content[0].text",
            "invalid_value",
        ),
        ({"messages": MSG, "stop": ["ok", "\ud800"]}, "stop", "invalid_value"),
        ({"messages": MSG, "user": "\ud800"}, "user", "invalid_value"),
        (
            {"messages": MSG, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"\ud83d": 1}}}]},
            "tools[0].function.parameters",
            "invalid_value",
        ),
    ],
)
def test_chat_boundary(tiny, body, param, code):
    got = refused(CHAT_URL, body, loaded=tiny)
    assert got[:2] == (param, code), got


def test_model_aware_limits_and_other_endpoints(tiny):
    vocab = tiny.args.vocab_size
    assert refused(CHAT_URL, {"messages": MSG, "top_k": vocab + 1}, loaded=tiny)[0] == "top_k"
    assert refused(CHAT_URL, {"messages": MSG, "logit_bias": {str(vocab): 1}}, loaded=tiny)[0] == f"logit_bias.{vocab}"
    assert refused(CHAT_URL, {"messages": MSG, "logit_bias": {"x1": 1}}, loaded=tiny)[0] == "logit_bias.x1"
    ok = parse_request(CHAT_URL, {"model": "m", "messages": MSG, "top_k": vocab, "temperature": 2, "top_p": 1})
    assert prepare(tiny, ok, None, context=256).params.top_k == vocab
    assert refused(COMPLETIONS_URL, {"prompt": "a\ud800"})[:2] == ("prompt", "invalid_value")
    assert refused(COMPLETIONS_URL, {"prompt": ["ok", "\udc80"]})[0] == "prompt"
    assert refused(COMPLETIONS_URL, {"prompt": [1, I64]})[0].startswith("prompt")
    assert refused(COMPLETIONS_URL, {"prompt": "x", "echo": "no"})[0] == "echo"
    assert refused(EMBEDDINGS_URL, {"input": ["fine", "\ud800"]})[:2] == ("input", "invalid_value")
    assert refused(EMBEDDINGS_URL, {"input": "x", "dimensions": "8"})[0] == "dimensions"
    assert refused(EMBEDDINGS_URL, {"input": "x", "model": "\ud800"})[0] == "model"
    # The field's name is kept even when it starts like a type name ("stream" once became "body").
    assert (
        refused(CHAT_URL, {"messages": MSG, "stream_options": {"include_usage": 1}})[0]
        == "stream_options.include_usage"
    )


# -- property: whatever the boundary accepts, the engine runs -------------------------------------
@pytest.fixture(scope="module")
def engine(tiny):
    return LLMEngine.from_loaded(tiny, EngineConfig(num_blocks=256, block_size=4))


def test_accepted_requests_run_and_refused_ones_name_their_parameter(tiny, engine):
    outcomes = {"accepted": 0, "refused": 0}

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(messages=st.lists(MESSAGE, min_size=0, max_size=3), sampling=SAMPLING)
    def one(messages, sampling):
        body = {"model": "m", "messages": messages, **sampling}
        try:
            req = parse_request(CHAT_URL, body)
            prep = prepare(tiny, req, None, context=256, limits=RequestLimits(max_n=4, max_choices=6))
        except LhamaError as e:
            outcomes["refused"] += 1
            assert e.http_status == 400 and str(e), e
            str(e).encode("utf-8")  # the message can be sent (it never echoes a lone surrogate raw)
            assert getattr(e, "param", None) or e.code == "context_length_exceeded", e
            return
        outcomes["accepted"] += 1
        for text in [m["content"] for m in messages if isinstance(m["content"], str)]:
            text.encode("utf-8")  # nothing invalid got through
        params = prep.params.with_(max_tokens=min(prep.params.max_tokens, 2), min_tokens=0)
        [result] = engine.generate(prep.prompts, params, return_errors=True)
        assert result.error is None, result.error
        assert not engine.has_unfinished()

    one()
    assert outcomes["accepted"] >= 10 and outcomes["refused"] >= 10, outcomes


def test_batch_lines_with_invalid_unicode_fail_alone(tiny, tmp_path):
    from lhama.openai.engine_batch import run_batch_file

    def line(cid: str, content: bytes) -> bytes:
        return (
            b'{"custom_id": "%s", "url": "/v1/chat/completions", "body": {"max_tokens": 2, "messages": '
            b'[{"role": "user", "content": "%s"}]}}\n' % (cid.encode(), content)
        )

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(
        line("ok-1", b"w1 w2")
        + line("broken-bytes", b"w1 \xff\xfe w2")
        + line("surrogate", b"w1 \\ud800")
        + b'{"custom_id": "bad-\xff", "url": "/v1/chat/completions", "body": {}}\n'
        + line("ok-2", b"w3")
    )
    s = run_batch_file(tiny, src, out, EngineConfig(num_blocks=256, block_size=4), progress=False)
    assert (s.succeeded, s.failed) == (2, 3)
    recs = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    errors = {r["custom_id"]: r["error"] for r in recs if r["error"]}
    for cid in ("broken-bytes", "surrogate"):
        assert errors[cid]["message"].startswith("messages[0].content: ") and "UTF-8" in errors[cid]["message"]
        assert [r["response"]["body"]["error"]["param"] for r in recs if r["custom_id"] == cid] == [
            "messages[0].content"
        ]
    assert errors[None]["line"] == 4 and "custom_id" in errors[None]["message"]
