"""The streaming tool-call parser: fed tokens in arbitrary pieces it must agree with the
finished-turn parser, never leak a python tag or half a call as content, and stream prose at once."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lhama.tokenizer import Llama3ChatFormat
from lhama.tools.stream_parser import ToolCallStreamParser, could_open_call


@pytest.fixture(scope="module")
def fmt():
    from lhama.tokenizer import load_tokenizer

    return Llama3ChatFormat(load_tokenizer("llama3"), today=dt.date(2024, 9, 21))


def turn(fmt, *pieces, end="<|eom_id|>"):
    """Token ids of a generated turn: strings are text, ``None`` is the python tag."""
    P = fmt.tokenizer.special_tokens
    ids = []
    for p in pieces:
        ids += [P["<|python_tag|>"]] if p is None else fmt.tokenizer.encode(p)
    return ids + ([P[end]] if end else [])


TURNS = [
    (("Hello! How can I help you today?",), "<|eot_id|>"),
    (("  Indented prose, then more.\n\nA second paragraph 🦙.",), "<|eot_id|>"),
    ((None, 'brave_search.call(query="llama 3.1 release date")'), "<|eom_id|>"),
    ((None, "import math\nprint(math.factorial(20))"), "<|eom_id|>"),
    (('{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',), "<|eom_id|>"),
    (('{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}',), "<|eot_id|>"),
    (('<function=get_weather>{"city": "Zürich"}</function>',), "<|eot_id|>"),
    (('[get_weather(city="SF"), get_time(tz="America/Los_Angeles")]',), "<|eot_id|>"),
    (("Let me look that up.  ", None, 'wolfram_alpha.call(query="integrate x^2")'), "<|eom_id|>"),
    (('You could call {"name": "x"} like this.',), "<|eot_id|>"),
    (("[1] is a citation, not a call.",), "<|eot_id|>"),
    (('{"not": "a call"}',), "<|eot_id|>"),
    (("brave_search is a tool I have.",), "<|eot_id|>"),
    (("cut off mid-sent",), None),
    (('{"name": "get_weather", "parameters": {"ci',), None),
]


def stream(parser, ids, cuts):
    """Feed ``ids`` cut at ``cuts``; returns (content deltas, tool-call deltas)."""
    contents, calls, last = [], [], 0
    for c in sorted(set(cuts)) + [len(ids)]:
        d = parser.feed(ids[last:c])
        last = c
        contents.append(d.content)
        calls += d.tool_calls
    d = parser.finish()
    contents.append(d.content)
    calls += d.tool_calls
    return contents, calls


@pytest.mark.parametrize("pieces,end", TURNS)
def test_agrees_with_the_finished_turn_parser(fmt, pieces, end):
    ids = turn(fmt, *pieces, end=end)
    for cuts in ([], list(range(len(ids))), [len(ids) // 2]):
        parser = ToolCallStreamParser(fmt)
        contents, calls = stream(parser, ids, cuts)
        want = fmt.decode_assistant(ids)
        text = "".join(contents)
        assert "<|python_tag|>" not in text
        if want.get("tool_calls"):
            assert text.strip() == (want["content"] or "")
            got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]
            assert got == [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in want["tool_calls"]]
            assert [c["index"] for c in calls] == list(range(len(calls)))
            assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
            assert "{" not in text and "<function" not in text  # no half call leaked as content
        else:
            assert calls == [] and text == want["content"]
        assert parser.message["content"] == want["content"]


def test_prose_streams_before_the_turn_ends(fmt):
    ids = turn(fmt, "Sure, here is a long answer about llamas and alpacas.", end=None)
    parser = ToolCallStreamParser(fmt)
    first = parser.feed(ids[:3])
    assert first.content and not first.tool_calls and parser.state == "content"


def test_call_openings_are_held_back(fmt):
    for text in ['{"name": "get_weather", "param', "<function=get_", '[get_weather(city="S', " <tool_c", "brave_sea"]:
        parser = ToolCallStreamParser(fmt)
        assert parser.feed(fmt.tokenizer.encode(text)).content == ""
    assert could_open_call("   ") and could_open_call("[") and not could_open_call("Hi [")


def test_prose_before_a_python_tag_is_content_and_the_tag_never_leaks(fmt):
    ids = turn(fmt, "Checking. ", None, "print(1)")
    parser = ToolCallStreamParser(fmt)
    d1 = parser.feed(ids[:4])
    rest = parser.feed(ids[4:])
    end = parser.finish()
    assert (d1.content + rest.content + end.content) == "Checking."
    assert end.tool_calls[0]["function"]["name"] == "code_interpreter"
    assert json.loads(end.tool_calls[0]["function"]["arguments"]) == {"code": "print(1)"}
    assert parser.message["stop_reason"] == "end_of_message"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, len(TURNS) - 1), cuts=st.lists(st.integers(0, 60), max_size=12))
def test_any_split_gives_the_same_result(fmt, which, cuts):
    pieces, end = TURNS[which]
    ids = turn(fmt, *pieces, end=end)
    parser = ToolCallStreamParser(fmt)
    contents, calls = stream(parser, ids, [c for c in cuts if c <= len(ids)])
    want = fmt.decode_assistant(ids)
    assert len(calls) == len(want.get("tool_calls") or [])
    assert "".join(contents).strip() == (want["content"] or "").strip()


def test_no_parse_mode_sends_everything_as_content(fmt):
    ids = turn(fmt, '{"name": "get_weather", "parameters": {}}', end="<|eot_id|>")
    parser = ToolCallStreamParser(fmt)
    held = parser.feed(ids)
    end = parser.finish(parse=False)
    assert held.content == "" and end.content == '{"name": "get_weather", "parameters": {}}' and not end.tool_calls


def test_jinja_format_tool_call_wrappers(smollm2_path):
    from lhama.tokenizer import load_chat_format, load_tokenizer

    tok = load_tokenizer(smollm2_path)
    fmt = load_chat_format(smollm2_path, tok)
    ids = tok.encode(
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        allow_special=True,
    )
    parser = ToolCallStreamParser(fmt)
    contents, calls = stream(parser, ids, list(range(0, len(ids), 2)))
    assert "".join(contents) == "" and calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    prose = tok.encode("Paris is sunny today.<|im_end|>", allow_special=True)
    contents, calls = stream(ToolCallStreamParser(fmt), prose, [1, 2, 3])
    assert "".join(contents) == "Paris is sunny today." and not calls and contents[1]
