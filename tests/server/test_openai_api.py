"""The OpenAI routes through the official ``openai`` client (sync, async, streaming) against a
real server running the real default model."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct

import jsonschema
import pytest

from tests.serving import MODEL

HELLO = [{"role": "user", "content": "Say hello."}]


def test_models(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_completion_usage_and_max_completion_tokens(client):
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_completion_tokens=8, temperature=0)
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content
    assert c.finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_greedy_is_deterministic_and_stream_matches(client):
    kw = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 16,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    usage = chunks[-1].usage  # the final usage chunk has no choices
    assert chunks[-1].choices == [] and usage.completion_tokens == whole.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])


def test_seed_n_and_stop(client):
    kw = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a short poem."}],
        "max_tokens": 12,
        "temperature": 1.0,
        "seed": 1234,
        "n": 2,
    }
    # A prompt's first request computes it in one chunk, a repeat reuses the prefix cache and
    # computes only its tail: on a quantized model that moves logits within rounding (docs/
    # generation.md). Seeded repeats from the same cache state are what must agree.
    client.chat.completions.create(**kw)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    r = client.completions.create(model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=20, temperature=0, stop=[" 8"])
    assert r.choices[0].finish_reason == "stop" and "7" in r.choices[0].text and "8" not in r.choices[0].text


def test_logit_bias_bans_and_forces_tokens(client, smollm2_path):
    from lhama.tokenizer import load_tokenizer

    tok = load_tokenizer(smollm2_path)
    kw = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 1, "temperature": 0, "logprobs": 2}
    plain = client.completions.create(**kw).choices[0].logprobs
    best, runner_up = sorted(plain.top_logprobs[0].items(), key=lambda kv: -kv[1])
    [best_id] = tok.encode(best[0], bos=False)
    banned = client.completions.create(**kw, logit_bias={str(best_id): -100}).choices[0].logprobs
    assert banned.tokens == [runner_up[0]]  # greedy skips the banned token
    assert math.isclose(banned.token_logprobs[0], runner_up[1], abs_tol=1e-4)  # logprobs stay the model's
    [forced] = tok.encode(" banana", bos=False)
    r = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=3, temperature=0.8, seed=5, logit_bias={str(forced): 100}
    )
    assert r.choices[0].message.content == tok.decode([forced] * 3)


def test_omitted_sampling_fields_take_the_shared_defaults(client):
    # The mapping itself is tests/openai/test_requests.py's; here a request that spells the
    # defaults out gets the same sampled answer as one that leaves them to the server.
    from lhama.sampling_defaults import SAMPLING_DEFAULTS as d

    kw = {"model": MODEL, "messages": [{"role": "user", "content": "Write a poem."}], "seed": 7, "max_tokens": 12}
    client.chat.completions.create(**kw)  # both below then hit the prefix cache (see test_seed_n_and_stop)
    omitted = client.chat.completions.create(**kw)
    spelled = client.chat.completions.create(
        **kw, temperature=d.temperature, top_p=d.top_p, extra_body={"top_k": d.top_k, "min_p": d.min_p}
    )
    assert omitted.choices[0].message.content == spelled.choices[0].message.content


def test_chat_logprobs(client):
    r = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert math.isclose(entry.logprob, entry.top_logprobs[0].logprob, abs_tol=1e-4)


def test_text_completions(client):
    r = client.completions.create(
        model=MODEL, prompt=["The capital of France is", "One plus one is"], max_tokens=4, temperature=0, logprobs=2
    )
    assert [c.index for c in r.choices] == [0, 1]
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) and all(
        len(t) <= 2 for t in lp.top_logprobs
    )
    ids = client.completions.create(model=MODEL, prompt=[504, 3575, 282], max_tokens=3, temperature=0)
    assert ids.usage.prompt_tokens == 3
    streamed = list(
        client.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == r.choices[0].text


def test_async_client_concurrent_streams(server):
    from openai import AsyncOpenAI

    async def main():
        client = AsyncOpenAI(base_url=server.base, api_key="x", max_retries=0)

        async def one(i):
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Count to {i + 3}."}],
                max_tokens=10,
                temperature=0,
                stream=True,
            )
            return "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])

        texts = await asyncio.gather(*(one(i) for i in range(4)))
        await client.close()
        return texts

    texts = asyncio.run(main())
    assert len(texts) == 4 and all(texts)


def test_embeddings(client):
    r = client.embeddings.create(
        model=MODEL,
        input=["The cat sat on the mat.", "A cat was sitting on a mat.", "Quarterly revenue grew by 12 percent."],
    )
    vecs = [d.embedding for d in r.data]
    assert len(vecs) == 3 and len(vecs[0]) == 576
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vecs)

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b))

    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2])
    b64 = client.embeddings.create(model=MODEL, input="The cat sat on the mat.", encoding_format="base64")
    raw = base64.b64decode(b64.data[0].embedding)  # little-endian float32, as OpenAI sends it
    assert all(math.isclose(x, y, abs_tol=1e-5) for x, y in zip(struct.unpack(f"<{len(raw) // 4}f", raw), vecs[0]))


WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
        },
    },
]
ASK = [{"role": "user", "content": "What's the weather like in Paris today?"}]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_tool_calls_validate(client, choice):
    r = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=WEATHER, tool_choice=choice, max_tokens=60, temperature=0.8, seed=3
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    call = c.message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function"
    tool = {t["function"]["name"]: t["function"]["parameters"] for t in WEATHER}[call.function.name]
    if isinstance(choice, dict):
        assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), tool)


def test_tool_call_streamed_and_round_trip(client):
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=ASK, tools=WEATHER, tool_choice="required", max_tokens=60, temperature=0, stream=True
        )
    )
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function.name in ("get_weather", "get_time")
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == [
        "tool_calls"
    ]
    # The call and its result go back in the conversation; the model then answers in prose.
    history = ASK + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": calls[0].id,
                    "type": "function",
                    "function": {"name": calls[0].function.name, "arguments": calls[0].function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temperature": 21, "unit": "celsius"}'},
    ]
    r = client.chat.completions.create(
        model=MODEL, messages=history, tools=WEATHER, tool_choice="none", max_tokens=20, temperature=0
    )
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


def test_tool_choice_auto_and_none(client):
    r = client.chat.completions.create(
        model=MODEL, messages=HELLO, tools=WEATHER, tool_choice="auto", max_tokens=20, temperature=0
    )
    c = r.choices[0]
    assert c.finish_reason in ("stop", "length", "tool_calls")
    assert (c.finish_reason == "tool_calls") == bool(c.message.tool_calls)
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=WEATHER, tool_choice="none", max_tokens=10)
    assert r.choices[0].message.tool_calls is None


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "languages": {"type": "array", "items": {"type": "string", "enum": ["en", "fr", "de"]}, "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}


def test_json_schema_output_validates(client):
    for seed in range(2):
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Describe a fictional person as JSON."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": PERSON, "strict": True},
            },
            max_tokens=100,
            temperature=1.0,
            seed=seed,
        )
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


def test_json_schema_streamed_n2(client):
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Describe a fictional person as JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
            max_tokens=100,
            temperature=0.7,
            seed=5,
            n=2,
            stream=True,
        )
    )
    texts, finish = ["", ""], {}
    for ch in chunks:
        for c in ch.choices:
            texts[c.index] += c.delta.content or ""
            finish[c.index] = c.finish_reason or finish.get(c.index)
    assert finish == {0: "stop", 1: "stop"}
    for t in texts:
        jsonschema.validate(json.loads(t), PERSON)


def test_json_object(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": 'What is 2 + 2? Reply as {"answer": <number>}.'}],
        response_format={"type": "json_object"},
        max_tokens=60,
        temperature=0,
    )
    text = r.choices[0].message.content
    assert text.lstrip().startswith("{")
    if r.choices[0].finish_reason == "stop":  # a cut-off object is the client's max_tokens, not ours
        assert isinstance(json.loads(text), dict)


def test_bad_schema_is_400_naming_response_format(client):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}},
        )
    assert e.value.body["param"] == "response_format"
