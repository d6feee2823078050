"""Llama 3 chat format: ids against llama_models.llama3.chat_format, prompts against the examples
in llama-models' prompt-format documents, and tool-call parsing."""

from __future__ import annotations

import datetime as dt
import json
import os
import re

import pytest

from lhama.errors import ChatFormatError
from lhama.tokenizer import Llama3ChatFormat


@pytest.fixture(scope="module")
def fmt(llama3):
    return Llama3ChatFormat(llama3, today=dt.date(2024, 9, 21))


@pytest.fixture(scope="module")
def ref(meta_llama3):
    from llama_models.llama3.chat_format import ChatFormat

    return ChatFormat(meta_llama3)


def ref_tokens(ref, dialog) -> list[int]:
    """The same dialog as llama_models RawMessages, encoded by llama_models."""
    from llama_models.datatypes import RawMessage, RawTextItem, StopReason, ToolCall

    msgs = []
    for m in dialog:
        calls = [
            ToolCall(call_id=c["id"], tool_name=c["function"]["name"], arguments=json.loads(c["function"]["arguments"]))
            for c in m.get("tool_calls", [])
        ]
        content = m.get("content") or ""
        if isinstance(content, list):
            content = [RawTextItem(text=p["text"]) for p in content]
        stop = {"end_of_message": StopReason.end_of_message, "end_of_turn": StopReason.end_of_turn}.get(
            m.get("stop_reason")
        )
        role = "tool" if m["role"] in ("tool", "ipython") else m["role"]
        msgs.append(
            RawMessage(role=role, content=content, tool_calls=calls, stop_reason=stop, context=m.get("context"))
        )
    return ref.encode_dialog_prompt(msgs).tokens


def call(name, **args):
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


SYSTEM_TOOLS = (
    "Environment: ipython\nTools: brave_search, wolfram_alpha\nCutting Knowledge Date: December 2023\n"
    "Today Date: 23 July 2024\n\nYou are a helpful assistant.\n"
)
DIALOGS = {
    "user": [{"role": "user", "content": "Hi there"}],
    "multi-turn": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "stop_reason": "end_of_turn"},
        {"role": "user", "content": "Und auf Deutsch? ¿Y en español? नमस्ते สวัสดี 🦙"},
    ],
    "code-interpreter": [
        {"role": "system", "content": "Environment: ipython\n\nCutting Knowledge Date: December 2023"},
        {"role": "user", "content": "Sum 1..10 with Python"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [call("code_interpreter", code="print(sum(range(11)))")],
            "stop_reason": "end_of_message",
        },
        {"role": "ipython", "content": "55"},
        {"role": "assistant", "content": "The sum is 55.", "stop_reason": "end_of_turn"},
        {"role": "user", "content": "thanks"},
    ],
    "brave-search": [
        {"role": "system", "content": SYSTEM_TOOLS},
        {"role": "user", "content": "Price of 1oz gold?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [call("brave_search", query="latest price of 1oz gold")],
            "stop_reason": "end_of_message",
        },
        {"role": "tool", "content": '{"price": "2,400 USD"}'},
    ],
    "wolfram-then-answer": [
        {"role": "system", "content": SYSTEM_TOOLS},
        {"role": "user", "content": "100th decimal of pi?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [call("wolfram_alpha", query="100th decimal of pi")],
            "stop_reason": "end_of_message",
        },
        {"role": "ipython", "content": json.dumps({"queryresult": {"success": True, "pods": ["7"]}}, indent=4)},
        {"role": "assistant", "content": "The 100th decimal of pi is 7.", "stop_reason": "end_of_turn"},
        {"role": "user", "content": "And the 101st?"},
    ],
    "custom-json-tool": [
        {"role": "system", "content": "You can call get_weather."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [call("get_weather", city="Paris", unit="celsius", days=[1, 2], detail={"wind": True})],
            "stop_reason": "end_of_turn",
        },
        {"role": "tool", "content": json.dumps({"temp": 21})},
    ],
    "custom-tool-eom": [
        {"role": "user", "content": "Trending songs?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [call("trending_songs", n="10", genre="all")],
            "stop_reason": "end_of_message",
        },
        {"role": "ipython", "content": "[]"},
    ],
    "content-parts-and-context": [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Part one. "}, {"type": "text", "text": "Part two."}],
            "context": "Retrieved: llamas are camelids.",
        },
        {"role": "assistant", "content": "Noted.", "stop_reason": "end_of_turn"},
        {"role": "user", "content": "   leading spaces, trailing\n\n"},
    ],
    "content-then-call": [
        {"role": "user", "content": "Compute"},
        {
            "role": "assistant",
            "content": "Let me run that.",
            "tool_calls": [call("code_interpreter", code="1+1")],
            "stop_reason": "end_of_message",
        },
    ],
}


@pytest.mark.parametrize("name", DIALOGS)
def test_ids_identical_to_llama_models(fmt, ref, name):
    assert fmt.encode_dialog(DIALOGS[name]) == ref_tokens(ref, DIALOGS[name])


def test_openai_messages_without_stop_reason(fmt, ref):
    """OpenAI history has no stop reasons: built-in calls end with eom (what the model wrote), the rest
    with eot; that equals llama_models given those stop reasons."""
    dialog = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [call("brave_search", query="q")]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"},
        {"role": "assistant", "content": None, "tool_calls": [call("lookup", key="k")]},
        {"role": "tool", "tool_call_id": "c1", "content": "r2"},
        {"role": "assistant", "content": "done"},
    ]
    explicit = [
        dict(m, stop_reason=s)
        for m, s in zip(dialog, [None, "end_of_message", None, "end_of_turn", None, "end_of_turn"])
    ]
    assert fmt.encode_dialog(dialog, add_generation_prompt=False) == ref_tokens(ref, explicit)[:-4]


def test_search_calls_can_carry_the_python_tag(llama3):
    fmt = Llama3ChatFormat(llama3, python_tag_for_search=True)
    dialog = [
        {"role": "user", "content": "gold price?"},
        {"role": "assistant", "content": "", "tool_calls": [call("brave_search", query="latest price of gold")]},
    ]
    text = llama3.decode(fmt.encode_dialog(dialog, add_generation_prompt=False))
    assert text.endswith('<|python_tag|>brave_search.call(query="latest price of gold")<|eom_id|>')


def _doc_prompts(rel: str) -> list[str]:
    import llama_models

    text = open(os.path.join(llama_models.__path__[0], rel), encoding="utf-8").read()
    return re.findall(r"##### Input Prompt Format\n```\n(.*?)\n```", text, re.S)


def test_tool_prompts_reproduce_llama_models_documents(llama3):
    doc31, doc32 = _doc_prompts("llama3_1/prompt_format.md"), _doc_prompts("llama3_2/text_prompt_format.md")
    sep21, sep24 = dt.date(2024, 9, 21), dt.date(2024, 9, 24)

    def render(messages, tools, today, **kw):
        return llama3.decode(Llama3ChatFormat(llama3, today=today, **kw).encode_dialog(messages, tools=tools))

    # Llama 3.1, built-in tools.
    got = render(
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Search the web for the latest price of 1oz gold?"},
        ],
        [{"type": "brave_search"}, {"type": "wolfram_alpha"}],
        sep21,
    )
    assert got == doc31[2]
    # Llama 3.2, code interpreter only.
    got = render(
        [{"role": "user", "content": "Write code to check if number is prime. Use it to verify if number 7 is prime"}],
        [{"type": "code_interpreter"}],
        sep24,
    )
    assert got == doc32[3]
    # Llama 3.1, JSON custom tools (the document writes one list compactly; drop it on both sides).
    fn = {
        "name": "trending_songs",
        "description": "Returns the trending songs on a Music site",
        "parameters": {
            "type": "object",
            "properties": [
                {"n": {"type": "object", "description": "The number of songs to return"}},
                {"genre": {"type": "object", "description": "The genre of the songs to return"}},
            ],
        },
    }
    got = render(
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Use tools to get latest trending songs"},
        ],
        [{"type": "function", "function": fn}],
        sep21,
    )
    assert got == doc31[5].replace(',\n            "required": ["n"]', "")
    # Llama 3.2, pythonic custom tools in the system message.
    fn = {
        "name": "get_weather",
        "description": "Get weather info for places",
        "parameters": {
            "type": "dict",
            "required": ["city"],
            "properties": {
                "city": {"type": "string", "description": "The name of the city to get the weather for"},
                "metric": {
                    "type": "string",
                    "description": "The metric for weather. Options are: celsius, fahrenheit",
                    "default": "celsius",
                },
            },
        },
    }
    got = render(
        [{"role": "user", "content": "What is the weather in SF and Seattle?"}],
        [{"type": "function", "function": fn}],
        sep24,
        tool_prompt_format="python_list",
    )
    assert got == doc32[1]


def test_decode_assistant_parses_every_call_form(fmt):
    tok = fmt.tokenizer
    P = tok.special_tokens

    def ids(text, tag=False, end="<|eom_id|>"):
        return ([P["<|python_tag|>"]] if tag else []) + tok.encode(text) + ([P[end]] if end else [])

    def args(m, i=0):
        return json.loads(m["tool_calls"][i]["function"]["arguments"])

    m = fmt.decode_assistant(ids('brave_search.call(query="llama 3.1 release")', tag=True))
    assert m["tool_calls"][0]["function"]["name"] == "brave_search" and m["stop_reason"] == "end_of_message"
    assert args(m) == {"query": "llama 3.1 release"} and m["content"] is None
    m = fmt.decode_assistant(ids("import math\nprint(math.pi)", tag=True))
    assert m["tool_calls"][0]["function"]["name"] == "code_interpreter"
    assert args(m) == {"code": "import math\nprint(math.pi)"}
    for text in [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}',
        '<function=get_weather>{"city": "Paris"}</function>',
        '[get_weather(city="Paris")]',
    ]:
        for tag in (False, True):
            for end in ("<|eom_id|>", "<|eot_id|>"):
                m = fmt.decode_assistant(ids(text, tag=tag, end=end))
                assert m["tool_calls"][0]["function"]["name"] == "get_weather", text
                assert args(m) == {"city": "Paris"} and m["content"] is None
                assert m["stop_reason"] == ("end_of_message" if end == "<|eom_id|>" else "end_of_turn")
    m = fmt.decode_assistant(
        ids('[get_weather(city="SF"), get_weather(city="Seattle", metric="celsius")]', end="<|eot_id|>")
    )
    assert [args(m, i)["city"] for i in range(2)] == ["SF", "Seattle"]
    m = fmt.decode_assistant(ids('{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": 1}}'))
    assert [c["function"]["name"] for c in m["tool_calls"]] == ["a", "b"]
    m = fmt.decode_assistant(ids("Let me look that up.") + ids('brave_search.call(query="x")', tag=True))
    assert m["content"] == "Let me look that up." and m["tool_calls"][0]["function"]["name"] == "brave_search"
    # Prose is never a call, even when it mentions one.
    for prose in ['You could call {"name": "x"} like this.', "Use [brackets] (sometimes).", "Hello!", "42", "[1, 2]"]:
        m = fmt.decode_assistant(ids(prose, end="<|eot_id|>"))
        assert "tool_calls" not in m and m["content"] == prose and m["stop_reason"] == "end_of_turn"
    m = fmt.decode_assistant(tok.encode("cut off"))
    assert m["stop_reason"] == "out_of_tokens" and m["content"] == "cut off"
    assert fmt.decode_assistant([*tok.encode("base model"), 128001])["stop_reason"] == "end_of_turn"


def test_decoded_calls_re_encode_like_llama_models(fmt, ref):
    """A generated tool call, parsed by both, and put back into the history: same ids."""
    from llama_models.datatypes import StopReason

    P = fmt.tokenizer.special_tokens
    gen = [P["<|python_tag|>"]] + fmt.tokenizer.encode("print(2**10)") + [P["<|eom_id|>"]]
    want = ref.decode_assistant_message(gen, StopReason.end_of_turn)
    got = fmt.decode_assistant(gen)
    assert want.tool_calls[0].arguments["code"] == json.loads(got["tool_calls"][0]["function"]["arguments"])["code"]
    assert want.stop_reason.value == got["stop_reason"]
    history = [{"role": "user", "content": "2**10?"}, got]
    assert fmt.encode_dialog(history) == ref.encode_dialog_prompt([ref_raw_user("2**10?"), want]).tokens


def ref_raw_user(text):
    from llama_models.datatypes import RawMessage

    return RawMessage(role="user", content=text)


def test_bad_messages_are_clear_errors(fmt):
    with pytest.raises(ChatFormatError, match="unknown role"):
        fmt.encode_dialog([{"role": "wizard", "content": "x"}])
    with pytest.raises(ChatFormatError, match="empty"):
        fmt.encode_dialog([])
    with pytest.raises(ChatFormatError, match="not valid JSON"):
        fmt.encode_dialog(
            [
                {
                    "role": "assistant",
                    "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{oops"}}],
                }
            ]
        )
    with pytest.raises(ChatFormatError, match="query"):
        fmt.encode_dialog([{"role": "assistant", "tool_calls": [call("brave_search", q="x")]}])
    with pytest.raises(ChatFormatError, match="only text"):
        fmt.encode_dialog([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    with pytest.raises(ChatFormatError, match="stop_reason"):
        fmt.encode_dialog([{"role": "assistant", "content": "x", "stop_reason": "tired"}])
