"""Tool calls through the real server and the real ``openai`` client, streamed and whole.

SmolLM2 will not reliably decide to call a tool, so one test makes it: ``tool_choice: auto`` with
a ``response_format`` schema that only admits a Llama-style JSON call - the reply then goes
through the same auto-mode parsing (and the streaming tool-call parser) as any model's call."""

from __future__ import annotations

import json

from tests.serving import MODEL

WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
]
CALL_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"const": "get_weather"},
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "parameters"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "What's the weather in Paris?"}]

# ``client``: the real openai client on the session's shared default server (tests/conftest.py).


def test_auto_tool_call_streams_as_tool_calls_never_as_content(client):
    kw = dict(
        model=MODEL,
        messages=ASK,
        tools=WEATHER,
        tool_choice="auto",
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "call", "schema": CALL_SCHEMA}},
    )
    whole = client.chat.completions.create(**kw)
    assert whole.choices[0].finish_reason == "tool_calls" and whole.choices[0].message.content is None
    call = whole.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] in ("Paris", "Oslo")
    chunks = list(client.chat.completions.create(**kw, stream=True))
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert content == ""  # no '{', no partial JSON leaked as text
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_weather" and calls[0].function.arguments == call.function.arguments
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason] == [
        "tool_calls"
    ]


def test_auto_prose_streams_token_by_token_and_matches_whole(client):
    kw = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello to Ada in one sentence."}],
        tools=WEATHER,
        tool_choice="auto",
        max_tokens=24,
        temperature=0,
    )
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True))
    pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    if whole.choices[0].message.tool_calls:  # the model chose to call: then the stream must say so too
        assert any(ch.choices[0].delta.tool_calls for ch in chunks if ch.choices)
        return
    assert len(pieces) > 2, pieces  # streamed as it came, not held to the end
    assert "".join(pieces) == whole.choices[0].message.content
    assert not any(ch.choices[0].delta.tool_calls for ch in chunks if ch.choices)


def test_tools_reach_a_template_without_tool_support(client):
    """SmolLM2's own template ignores tools; lhama writes them into the system prompt instead."""
    plain = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1)
    with_tools = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=WEATHER, tool_choice="auto", max_tokens=1
    )
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 40
    history = ASK + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny", "temp_c": 21}'},
    ]
    r = client.chat.completions.create(model=MODEL, messages=history, tools=WEATHER, max_tokens=12, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_required_builtin_tool_gets_its_own_arguments(client):
    """A built-in named without parameters is still called with its real ones (code / query)."""
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Compute 2**10 with Python."}],
        tools=[{"type": "function", "function": {"name": "code_interpreter"}}],
        tool_choice="required",
        max_tokens=40,
        temperature=0,
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls", c
    call = c.message.tool_calls[0]
    assert call.function.name == "code_interpreter" and isinstance(json.loads(call.function.arguments)["code"], str)
