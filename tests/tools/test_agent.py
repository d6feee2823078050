"""The agent loop on the real engine. A random tiny Llama 3 model cannot be relied on to call
tools, so a scripted policy (a logits processor that allows exactly the next scripted token)
decides what it writes; everything else - prompt rendering, engine, parsing, sandbox, tools,
shields, transcript - runs for real. One real SmolLM2 session checks the plumbing end to end."""

from __future__ import annotations

import json

import pytest
import torch

from lhama.errors import ConfigError
from lhama.safety.base import ShieldVerdict
from lhama.tools.agent import Agent, AgentConfig
from lhama.tools.registry import tool
from lhama.tools.transcript import Transcript, replay_session, replay_tools
from tests import needs


@pytest.fixture(scope="module")
def lm():
    from lhama.loader import load_model

    return load_model("tiny-llama3")


@pytest.fixture(scope="module")
def engine(lm):
    from lhama.engine import LLMEngine

    return LLMEngine.from_loaded(lm)


class Script:
    """Model outputs by step: each a list of pieces (text, or None for <|python_tag|>) and an end token."""

    def __init__(self, fmt, turns):
        tok = fmt.tokenizer
        self.turns = []
        for pieces, end in turns:
            ids = []
            for p in pieces:
                ids += [fmt.python_tag] if p is None else tok.encode(p)
            self.turns.append(ids + [fmt.eom if end == "eom" else fmt.eot])
        self.prompts_seen = 0

    def __call__(self, step):
        target = self.turns[min(step, len(self.turns) - 1)]

        def force(out_ids, logits):
            t = target[min(len(out_ids), len(target) - 1)]
            row = torch.full_like(logits, float("-inf"))
            row[t] = 0.0
            return row

        return force


@tool
def get_weather(city: str) -> dict:
    """Current weather for a city."""
    return {"city": city, "sky": "sunny", "temp_c": 21}


class Recorder:
    def __init__(self, block_if: str | None = None, role: str = "assistant"):
        self.calls, self.block_if, self.role = [], block_if, role

    def check(self, messages, *, role):
        self.calls.append((role, messages[-1].get("content")))
        text = json.dumps(messages[-1])
        if self.block_if and role == self.role and self.block_if in text:
            return ShieldVerdict(False, ["S2"], "Blocked by policy.")
        return ShieldVerdict(True)


def test_code_then_custom_tool_then_answer(lm, engine):
    needs.binary("bwrap", "bubblewrap")
    script = Script(
        lm.chat_format,
        [
            ((None, "print(6 * 7)"), "eom"),
            (('{"name": "get_weather", "parameters": {"city": "Paris"}}',), "eom"),
            (("It is 42, and sunny in Paris.",), "eot"),
        ],
    )
    events = []
    shield = Recorder()
    agent = Agent(
        engine,
        ["code_interpreter", get_weather],
        shields=[shield],
        chat_format=lm.chat_format,
        processor_factory=script,
        max_steps=5,
    )
    res = agent.run("What is 6*7, and the weather in Paris?", on_event=events.append)
    assert res.stopped == "end_of_turn" and res.content == "It is 42, and sunny in Paris."
    roles = [m["role"] for m in res.messages]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert res.messages[2]["content"] == "completed\n[stdout]\n42\n[/stdout]"
    assert json.loads(res.messages[4]["content"]) == {"city": "Paris", "sky": "sunny", "temp_c": 21}
    assert res.messages[1]["stop_reason"] == "end_of_message"
    # The tool results reach the model as ipython turns, after the calls it made.
    prompt = lm.tokenizer.decode(
        lm.chat_format.encode_dialog(res.messages[:-1], tools=[t.spec() for t in agent.tools.values()])
    )
    assert "<|python_tag|>print(6 * 7)<|eom_id|><|start_header_id|>ipython<|end_header_id|>\n\ncompleted" in prompt
    assert "Environment: ipython" in prompt and '"name": "get_weather"' in prompt
    kinds = [e.type for e in events]
    assert kinds.count("tool_call") == 2 and kinds.count("tool_result") == 2 and kinds[-1] == "done"
    assert "".join(e.data["text"] for e in events if e.type == "content") == "It is 42, and sunny in Paris."
    assert [r for r, _ in shield.calls] == ["user", "assistant", "assistant", "assistant"]
    steps = [s["type"] for s in res.transcript.steps]
    assert steps == ["shield", "model", "shield", "tool", "model", "shield", "tool", "model", "shield"]


def test_step_limit_unknown_tools_and_bad_arguments(lm, engine):
    script = Script(
        lm.chat_format,
        [
            (('{"name": "teleport", "parameters": {"to": "Mars"}}',), "eom"),
            (('{"name": "get_weather", "parameters": {"town": "Paris"}}',), "eom"),
        ],
    )
    agent = Agent(engine, [get_weather], chat_format=lm.chat_format, processor_factory=script, max_steps=3)
    res = agent.run("Weather?")
    assert res.stopped == "max_steps"
    results = [m["content"] for m in res.messages if m["role"] == "tool"]
    assert results[0].startswith("error: unknown tool 'teleport'")
    assert "invalid arguments" in results[1] and len(results) == 3
    assert [s["error"] for s in res.transcript.tool_calls()] == [True, True, True]


def test_shields_refuse_input_and_output(lm, engine):
    script = Script(lm.chat_format, [(("Here is how to pick a lock.",), "eot")])
    inp = Recorder(block_if="lock", role="user")
    agent = Agent(engine, [], shields=[inp], chat_format=lm.chat_format, processor_factory=script)
    res = agent.run("How do I pick a lock?")
    assert res.stopped == "shield_input" and res.content == "Blocked by policy."
    assert [s["type"] for s in res.transcript.steps] == ["shield"]  # the model never ran
    out = Recorder(block_if="pick a lock", role="assistant")
    agent = Agent(engine, [], output_shields=[out], chat_format=lm.chat_format, processor_factory=script)
    res = agent.run("Tell me something.")
    assert res.stopped == "shield_output" and res.content == "Blocked by policy."
    assert res.messages[-1] == {"role": "assistant", "content": "Blocked by policy."}
    assert res.transcript.steps[-1]["categories"] == ["S2"] and not res.transcript.steps[-1]["allowed"]
    with pytest.raises(ConfigError, match="check"):
        Agent(engine, [], shields=[object()], chat_format=lm.chat_format)


def test_transcript_save_load_and_replay(lm, engine, tmp_path):
    turns = [(('{"name": "get_weather", "parameters": {"city": "Oslo"}}',), "eom"), (("Sunny.",), "eot")]
    agent = Agent(engine, [get_weather], chat_format=lm.chat_format, processor_factory=Script(lm.chat_format, turns))
    res = agent.run("Weather in Oslo?")
    path = res.transcript.save(tmp_path / "run.json")
    loaded = Transcript.load(path)
    assert loaded.to_dict() == json.loads(json.dumps(res.transcript.to_dict()))
    assert replay_tools(loaded, agent.tools).same
    report, _ = replay_session(
        loaded,
        Agent(engine, [get_weather], chat_format=lm.chat_format, processor_factory=Script(lm.chat_format, turns)),
    )
    assert report.same, str(report)
    # A tool that now answers differently, and a model that now says something else, are caught.
    changed = tool(lambda city: {"city": city, "sky": "rain"}, name="get_weather", parameters=get_weather.parameters)
    assert not replay_tools(loaded, {"get_weather": changed}).same
    other = [turns[0], (("Rainy.",), "eot")]
    report, _ = replay_session(
        loaded,
        Agent(engine, [get_weather], chat_format=lm.chat_format, processor_factory=Script(lm.chat_format, other)),
    )
    assert not report.same and "Rainy." in str(report)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a transcript"):
        Transcript.load(tmp_path / "bad.json")


def test_real_smollm2_session(smollm2_path):
    from lhama.loader import load_model

    lm = load_model(smollm2_path)
    agent = Agent(lm, [get_weather], config=AgentConfig(max_steps=2, max_tokens=6))
    res = agent.run("Say hello in one short sentence.")
    assert res.stopped in ("end_of_turn", "out_of_tokens", "max_steps")
    assert res.messages[0]["role"] == "user" and any(m["role"] == "assistant" for m in res.messages)
    model_steps = [s for s in res.transcript.steps if s["type"] == "model"]
    assert model_steps and all(s["token_ids"] for s in model_steps)


def test_shield_stages_pick_where_a_shield_runs(lm, engine):
    script = Script(lm.chat_format, [(("Fine.",), "eot")])
    only_input = Recorder()
    only_input.stages = frozenset({"input"})
    both = Recorder()
    Agent(engine, [], shields=[only_input, both], chat_format=lm.chat_format, processor_factory=script).run("Hi")
    assert [r for r, _ in only_input.calls] == ["user"]
    assert [r for r, _ in both.calls] == ["user", "assistant"]


def test_a_result_that_overflows_the_context_ends_the_run_cleanly(lm, engine):
    flood = tool(lambda: "word " * 4000, name="flood", parameters={"type": "object", "properties": {}})
    script = Script(lm.chat_format, [(('{"name": "flood", "parameters": {}}',), "eom")])
    res = Agent(engine, [flood], chat_format=lm.chat_format, processor_factory=script).run("Go.")
    assert res.stopped == "context_length"
    assert res.transcript.steps[-1]["type"] == "error" and "context window" in res.transcript.steps[-1]["message"]
    assert [s["type"] for s in res.transcript.steps] == ["model", "tool", "error"]


def test_an_engine_failure_is_raised_not_taken_for_an_answer(lm, engine):
    from lhama.engine.outputs import RequestFailedError

    def broken(step):
        def fail(out_ids, logits):
            if out_ids:  # one token out, then the request fails mid-answer
                raise RuntimeError("processor exploded")
            return logits

        return fail

    agent = Agent(engine, [get_weather], chat_format=lm.chat_format, processor_factory=broken)
    with pytest.raises(RequestFailedError) as e:
        agent.run("Hi")
    assert e.value.stage == "sample" and "processor exploded" in str(e.value.cause)
    assert not engine.has_unfinished()
    ok = Agent(engine, [], chat_format=lm.chat_format, config=AgentConfig(max_tokens=3)).run("Hi")  # engine goes on
    assert ok.stopped in ("end_of_turn", "out_of_tokens", "max_steps") and isinstance(ok.content, str)
