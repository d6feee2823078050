"""One request translator for every front end: the rules the server's routes had are the batch
job's rules too (caps, context check, refused fields), and structured output works in batches."""

from __future__ import annotations

import json

import jsonschema
import pytest

from lhama.engine import EngineConfig
from lhama.errors import ContextLengthExceededError, SamplingError
from lhama.generate.constrained import GrammarCompiler
from lhama.openai.engine_batch import run_batch_file
from lhama.openai.requests import (
    CHAT_URL,
    COMPLETIONS_URL,
    InvalidRequestError,
    RequestLimits,
    engine_requests,
    parse_request,
    prepare,
)

CHAT = {"messages": [{"role": "user", "content": "w1 w2"}]}


def prepared(loaded, url, context=256, **body):
    req = parse_request(url, body, default_model="m")
    return prepare(loaded, req, None, context=context, limits=RequestLimits(max_n=4, max_choices=6))


def test_defaults_caps_and_refusals(tiny):
    chat = prepared(tiny, CHAT_URL, **CHAT)
    assert chat.params.max_tokens == 256 - len(chat.prompts[0])  # the default 512, cut to what fits
    assert prepared(tiny, COMPLETIONS_URL, context=4096, prompt="w1").params.max_tokens == 512
    assert prepared(tiny, CHAT_URL, logit_bias={"5": -100, "7": 2.5}, **CHAT).params.logit_bias == (
        (5, -100.0),
        (7, 2.5),
    )
    with pytest.raises(SamplingError) as e:
        prepared(tiny, CHAT_URL, n=5, **CHAT)
    assert e.value.param == "n"
    with pytest.raises(SamplingError) as e:
        prepared(tiny, COMPLETIONS_URL, prompt=["w1", "w2", "w3", "w4"], n=2)
    assert e.value.param == "n"
    with pytest.raises(ContextLengthExceededError) as e:
        prepared(tiny, COMPLETIONS_URL, prompt=list(range(256)))
    assert e.value.param == "prompt"
    with pytest.raises((SamplingError, InvalidRequestError)) as e:  # the schema refuses it now
        prepared(tiny, CHAT_URL, max_completion_tokens=0, **CHAT)
    assert e.value.param == "max_completion_tokens"
    for field, value in (("functions", [{"name": "f"}]),):
        with pytest.raises((SamplingError, InvalidRequestError)) as e:
            prepared(tiny, CHAT_URL, **{field: value}, **CHAT)
        assert e.value.param == field
    with pytest.raises(InvalidRequestError) as e:
        parse_request(CHAT_URL, {"messages": [{"role": "wizard", "content": "x"}]}, default_model="m")
    assert e.value.param == "messages[0].role" and e.value.code == "invalid_value"
    with pytest.raises(InvalidRequestError) as e:
        parse_request("/v1/embeddings", {"input": "x"})
    assert e.value.code == "unsupported_url"


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    from lhama.loader import load_model

    return load_model(smollm2_path, device="cpu")


def test_omitted_fields_take_the_shared_sampling_defaults(tiny):
    from dataclasses import fields

    from lhama.sampling_defaults import SAMPLING_DEFAULTS, SamplingDefaults

    for url, body in ((CHAT_URL, CHAT), (COMPLETIONS_URL, {"prompt": "w1"})):
        params = prepared(tiny, url, context=4096, **body).params
        for f in fields(SamplingDefaults):
            want = None if f.name == "seed" else getattr(SAMPLING_DEFAULTS, f.name)  # unseeded: fresh samples
            assert getattr(params, f.name) == want, (url, f.name)
        given = prepared(tiny, url, context=4096, temperature=0, top_p=1, seed=3, max_tokens=9, **body).params
        assert (given.temperature, given.top_p, given.seed, given.max_tokens) == (0, 1, 3, 9)
    # `lhama serve --temperature ...` (ServerConfig.sampling) sets what omitted fields take
    req = parse_request(CHAT_URL, CHAT, default_model="m")
    limits = RequestLimits(defaults=SAMPLING_DEFAULTS.with_(temperature=0.2, max_tokens=7))
    params = prepare(tiny, req, None, context=4096, limits=limits).params
    assert (params.temperature, params.max_tokens, params.seed) == (0.2, 7, 0)


def test_a_grammar_is_one_engine_request_per_choice(smollm2):
    compiler = GrammarCompiler.for_model(smollm2)
    req = parse_request(
        CHAT_URL, {**CHAT, "n": 3, "seed": 7, "response_format": {"type": "json_object"}}, default_model="m"
    )
    prep = prepare(smollm2, req, compiler, context=2048)
    parts = engine_requests(prep, compiler)
    assert [first for first, _, _ in parts] == [0, 1, 2]
    assert [p.seed for _, _, p in parts] == [7, 8, 9] and all(p.n == 1 for _, _, p in parts)
    assert len({id(p.logits_processor) for _, _, p in parts}) == 3  # each choice its own constraint


def test_batch_job_enforces_json_schema_and_forced_tool_calls(smollm2, tmp_path):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 12}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
    ask = [{"role": "user", "content": "Name a large city and its population."}]
    lines = [
        {
            "custom_id": "schema",
            "url": CHAT_URL,
            "body": {
                "messages": ask,
                "n": 2,
                "max_tokens": 60,
                "temperature": 0.8,
                "seed": 1,
                "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
            },
        },
        {
            "custom_id": "tool",
            "url": CHAT_URL,
            "body": {
                "messages": [{"role": "user", "content": "Weather in Paris?"}],
                "max_tokens": 40,
                "temperature": 0,
                "tools": [tool],
                "tool_choice": "required",
            },
        },
        {
            "custom_id": "bad-schema",
            "url": CHAT_URL,
            "body": {
                "messages": ask,
                "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "wat"}}},
            },
        },
    ]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"method": "POST", **x}) + "\n" for x in lines))
    s = run_batch_file(smollm2, src, out, EngineConfig(num_blocks=64, block_size=16), progress=False)
    assert (s.succeeded, s.failed) == (2, 1)
    got = {e["custom_id"]: e for e in map(json.loads, out.read_text().splitlines())}
    choices = got["schema"]["response"]["body"]["choices"]
    assert len(choices) == 2
    for c in choices:
        if c["finish_reason"] == "stop":
            jsonschema.validate(json.loads(c["message"]["content"]), schema)
    assert any(c["finish_reason"] == "stop" for c in choices)
    tool_choice = got["tool"]["response"]["body"]["choices"][0]
    assert tool_choice["finish_reason"] == "tool_calls"
    call = tool_choice["message"]["tool_calls"][0]["function"]
    assert call["name"] == "get_weather" and isinstance(json.loads(call["arguments"])["city"], str)
    assert got["bad-schema"]["error"]["code"] == "invalid_sampling_parameter"
    assert got["bad-schema"]["response"]["body"]["error"]["param"] == "response_format"
