"""Our tool-call parsing and rendering against llama-models' own (``ToolUtils``,
``ChatFormat.decode_assistant_message``): every case the reference understands, we understand
the same way; where we accept more (eot endings, several calls), it is on purpose."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from lhama.tokenizer import Llama3ChatFormat
from lhama.tokenizer.chat.tool_calls import parse_tool_calls
from tests import needs

needs.module("llama_models")


@pytest.fixture(scope="module")
def fmt():
    from lhama.tokenizer import load_tokenizer

    return Llama3ChatFormat(load_tokenizer("llama3"), today=dt.date(2024, 9, 21))


@pytest.fixture(scope="module")
def ref():
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer

    return ChatFormat(Tokenizer.get_instance())


CUSTOM = [
    '{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}',
    '{"type": "function", "name": "trending_songs", "parameters": {"n": "10", "genre": "rock"}}',
    '<function=spotify_trending_songs>{"n": "5"}</function>',
    '[get_weather(city="San Francisco", metric="celsius")]',
    '{"name": "brave_search", "parameters": {"q": "llama"}}',
]
BUILTIN = [
    'brave_search.call(query="current weather in Menlo Park")',
    'wolfram_alpha.call(query="solve x^3 - 4x^2 + 6x - 24 = 0")',
]
CODE = ["import math\nprint(math.sqrt(2))", "def f(x):\n    return x * 2\nprint(f(21))"]
PROSE = ["The capital of France is Paris.", 'JSON looks like {"a": 1} in text.', "[citation needed] here"]


def ref_call(ref, text: str, tag: bool, end: str = "<|eom_id|>"):
    from llama_models.datatypes import StopReason

    tok = ref.tokenizer
    ids = (
        ([tok.special_tokens["<|python_tag|>"]] if tag else [])
        + tok.encode(text, bos=False, eos=False)
        + [tok.special_tokens[end]]
    )
    m = ref.decode_assistant_message(ids, StopReason.end_of_turn)
    return m, ids


def name_of(tool_name) -> str:
    return getattr(tool_name, "value", tool_name)


@pytest.mark.parametrize("text", CUSTOM + BUILTIN)
def test_calls_agree_with_llama_models(fmt, ref, text):
    tag = text in BUILTIN
    want, ids = ref_call(ref, text, tag)
    got = fmt.decode_assistant(ids)
    assert want.tool_calls, "llama-models should see a call here"
    assert [c["function"]["name"] for c in got["tool_calls"]] == [name_of(c.tool_name) for c in want.tool_calls]
    assert [json.loads(c["function"]["arguments"]) for c in got["tool_calls"]] == [c.arguments for c in want.tool_calls]
    assert got["stop_reason"] == want.stop_reason.value


@pytest.mark.parametrize("code", CODE)
def test_code_agrees_with_llama_models(fmt, ref, code):
    want, ids = ref_call(ref, code, True)
    got = fmt.decode_assistant(ids)
    assert name_of(want.tool_calls[0].tool_name) == got["tool_calls"][0]["function"]["name"] == "code_interpreter"
    assert json.loads(got["tool_calls"][0]["function"]["arguments"]) == want.tool_calls[0].arguments


@pytest.mark.parametrize("text", PROSE)
def test_prose_is_prose_for_both(fmt, ref, text):
    want, ids = ref_call(ref, text, False, "<|eot_id|>")
    got = fmt.decode_assistant(ids)
    assert not want.tool_calls and "tool_calls" not in got and got["content"] == want.content == text


@pytest.mark.parametrize("text", CUSTOM + BUILTIN)
def test_rendered_calls_parse_back(fmt, ref, text):
    """A parsed call, rendered into the history by our format, reads back as the same call."""
    tag = text in BUILTIN
    _, ids = ref_call(ref, text, tag)
    got = fmt.decode_assistant(ids)
    for c in got["tool_calls"]:
        again = parse_tool_calls(fmt.render_call(c), python_tag=tag)
        assert again[0]["function"]["name"] == c["function"]["name"]
        assert json.loads(again[0]["function"]["arguments"]) == json.loads(c["function"]["arguments"])
