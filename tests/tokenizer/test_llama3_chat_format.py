"""Llama 3 chat format ids against llama_models.llama3.chat_format, and tool-call parsing."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from lhama.tokenizer import Llama3ChatFormat, load_tokenizer


@pytest.fixture(scope="module")
def fmt():
    return Llama3ChatFormat(load_tokenizer("llama3"), today=dt.date(2024, 7, 23))


@pytest.fixture(scope="module")
def ref():
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer

    return ChatFormat(Tokenizer.get_instance())


def _ref_tokens(ref, dialog):
    from llama_models.datatypes import RawMessage, StopReason, ToolCall

    msgs = []
    for m in dialog:
        calls = [ToolCall(call_id=c["id"], tool_name=c["function"]["name"],
                          arguments=json.loads(c["function"]["arguments"])) for c in m.get("tool_calls", [])]
        stop = {"end_of_message": StopReason.end_of_message, "end_of_turn": StopReason.end_of_turn}.get(
            m.get("stop_reason"))
        role = "tool" if m["role"] in ("tool", "ipython") else m["role"]
        msgs.append(RawMessage(role=role, content=m.get("content") or "", tool_calls=calls, stop_reason=stop))
    return ref.encode_dialog_prompt(msgs).tokens


def call(name, **args):
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


DIALOGS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "Und auf Deutsch? ¿Y en español? 🦙"}],
    # Code interpreter call, its ipython result, and the answer.
    [{"role": "system", "content": "Environment: ipython\n\nCutting Knowledge Date: December 2023"},
     {"role": "user", "content": "Sum 1..10 with Python"},
     {"role": "assistant", "content": "", "tool_calls": [call("code_interpreter", code="print(sum(range(11)))")],
      "stop_reason": "end_of_message"},
     {"role": "ipython", "content": "55"},
     {"role": "assistant", "content": "The sum is 55."}, {"role": "user", "content": "thanks"}],
    # Custom JSON tool call ending the turn, and a tool result.
    [{"role": "system", "content": "You can call get_weather."}, {"role": "user", "content": "Weather in Paris?"},
     {"role": "assistant", "content": "", "tool_calls": [call("get_weather", city="Paris", unit="celsius")],
      "stop_reason": "end_of_turn"},
     {"role": "tool", "content": json.dumps({"temp": 21})}],
]


@pytest.mark.parametrize("dialog", DIALOGS, ids=["user", "multi-turn", "code-interpreter", "custom-tool"])
def test_ids_identical_to_llama_models(fmt, ref, dialog):
    assert fmt.encode_dialog(dialog) == _ref_tokens(ref, dialog)


def test_builtin_search_call_follows_the_prompt_format_doc(fmt):
    """prompt_format.md: <|python_tag|>brave_search.call(query="...")<|eom_id|> (llama_models' encoder omits the
    tag for search tools, but the model emits it, so history must carry it)."""
    dialog = [{"role": "user", "content": "gold price?"},
              {"role": "assistant", "content": "", "tool_calls": [call("brave_search", query="latest price of gold")]}]
    text = fmt.tokenizer.decode(fmt.encode_dialog(dialog, add_generation_prompt=False))
    assert text.endswith('<|python_tag|>brave_search.call(query="latest price of gold")<|eom_id|>')


def test_tools_system_prompt(fmt):
    tools = [{"type": "brave_search"}, {"type": "wolfram_alpha"}, {"type": "code_interpreter"},
             {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                               "parameters": {"type": "object", "properties": {}}}}]
    ids = fmt.encode_dialog([{"role": "system", "content": "Be helpful."}, {"role": "user", "content": "hi"}],
                            tools=tools)
    text = fmt.tokenizer.decode(ids)
    assert ("<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\nTools: brave_search, wolfram_alpha\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 23 July 2024\n\nBe helpful.<|eot_id|>") in text
    assert '"name": "get_weather"' in text and "respond with a JSON for a function call" in text


def test_decode_assistant_parses_every_call_form(fmt, ref):
    tok = fmt.tokenizer
    P = tok.special_tokens
    def ids(text, tag=False, end="<|eom_id|>"):
        return ([P["<|python_tag|>"]] if tag else []) + tok.encode(text) + [P[end]]

    m = fmt.decode_assistant(ids('brave_search.call(query="llama 3.1 release")', tag=True))
    assert m["tool_calls"][0]["function"]["name"] == "brave_search" and m["stop_reason"] == "end_of_message"
    assert json.loads(m["tool_calls"][0]["function"]["arguments"]) == {"query": "llama 3.1 release"}
    m = fmt.decode_assistant(ids("import math\nprint(math.pi)", tag=True))
    assert m["tool_calls"][0]["function"]["name"] == "code_interpreter"
    for text in ['{"name": "get_weather", "parameters": {"city": "Paris"}}',
                 '<function=get_weather>{"city": "Paris"}</function>', '[get_weather(city="Paris")]']:
        for end in ("<|eom_id|>", "<|eot_id|>"):
            m = fmt.decode_assistant(ids(text, end=end))
            assert m["tool_calls"][0]["function"]["name"] == "get_weather", text
            assert json.loads(m["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    # Prose is never a call, even when it mentions one.
    for prose in ['You could call {"name": "x"} like this.', "Use [brackets] (sometimes).", "Hello!"]:
        m = fmt.decode_assistant(ids(prose, end="<|eot_id|>"))
        assert "tool_calls" not in m and m["content"] == prose and m["stop_reason"] == "end_of_turn"
    assert fmt.decode_assistant(tok.encode("cut off"))["stop_reason"] == "out_of_tokens"


def test_round_trip_with_reference_decoder(fmt, ref):
    from llama_models.datatypes import StopReason

    P = fmt.tokenizer.special_tokens
    gen = [P["<|python_tag|>"]] + fmt.tokenizer.encode("print(2**10)") + [P["<|eom_id|>"]]
    want = ref.decode_assistant_message(gen, StopReason.end_of_turn)
    got = fmt.decode_assistant(gen)
    assert want.tool_calls[0].arguments["code"] == json.loads(got["tool_calls"][0]["function"]["arguments"])["code"]
