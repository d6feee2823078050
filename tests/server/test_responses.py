"""``/v1/responses`` end to end: the official ``openai`` client against a real server with the
default model - create (text, items, instructions), stream (events and text equal to the
whole greedy answer), previous_response_id chaining with a function call and its output (the
same prompt as sending every item), the prefix cache on turn 2, the code interpreter in the
sandbox, file_search over a vector store, errors, and retrieve/delete across a restart."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest
from openai import OpenAI

from tests.serving import MODEL, ServerProcess

QUESTION = "What is the capital of France?"
WEATHER = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    }
]
GREEDY = {"temperature": 0, "max_output_tokens": 12}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("responses-data")


@pytest.fixture(scope="module")
def srv(data_dir):
    s = ServerProcess(data_dir)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def oc(srv):
    return OpenAI(base_url=srv.base, api_key="unused", max_retries=0, timeout=300)


def test_create_with_text_items_and_instructions(oc):
    r = oc.responses.create(model=MODEL, input=QUESTION, **GREEDY)
    assert r.object == "response" and r.status == "completed" and r.model == MODEL
    assert r.output[0].type == "message" and r.output_text.strip()
    assert r.usage.output_tokens == r.usage.total_tokens - r.usage.input_tokens > 0
    # a user message item renders the same prompt, so greedy decoding gives the same text
    items = oc.responses.create(
        model=MODEL, input=[{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}], **GREEDY
    )
    assert items.output_text == r.output_text and items.usage.input_tokens == r.usage.input_tokens
    teacher = "You are a geography teacher."
    told = oc.responses.create(model=MODEL, input=QUESTION, instructions=teacher, **GREEDY)
    assert told.instructions == teacher
    # instructions are the system message (it replaces the template's default one)
    system = oc.responses.create(
        model=MODEL, input=[{"role": "system", "content": teacher}, {"role": "user", "content": QUESTION}], **GREEDY
    )
    assert told.usage.input_tokens == system.usage.input_tokens != r.usage.input_tokens
    assert told.output_text == system.output_text
    listed = oc.responses.input_items.list(items.id, order="asc").data
    assert [(i.type, i.role, i.content[0].text) for i in listed] == [("message", "user", QUESTION)]


def test_omitted_sampling_fields_show_the_defaults_they_took(oc):
    from lhama.sampling_defaults import SAMPLING_DEFAULTS

    r = oc.responses.create(model=MODEL, input="Hi", max_output_tokens=2)
    assert (r.temperature, r.top_p) == (SAMPLING_DEFAULTS.temperature, SAMPLING_DEFAULTS.top_p)
    assert oc.responses.create(model=MODEL, input="Hi", **GREEDY).temperature == 0


def test_stream_events_match_the_whole_response(oc):
    whole = oc.responses.create(model=MODEL, input=QUESTION, temperature=0, max_output_tokens=40)
    assert whole.status == "completed"
    with oc.responses.stream(model=MODEL, input=QUESTION, temperature=0, max_output_tokens=40) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == whole.output_text
    assert events[-4].text == whole.output_text
    assert oc.responses.retrieve(final.id).output_text == whole.output_text  # stored by default


def test_previous_response_keeps_function_call_and_output(oc):
    first = oc.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=WEATHER,
        tool_choice="required",
        temperature=0,
        max_output_tokens=60,
    )
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id
    assert "Paris" in call.arguments
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}
    chained = oc.responses.create(
        model=MODEL, previous_response_id=first.id, input=[result], tools=WEATHER, tool_choice="none", **GREEDY
    )
    assert chained.previous_response_id == first.id
    # the stateless equivalent: every item sent again. Same prompt, same greedy answer - so the
    # server kept the function call and its output (vLLM drops them).
    stateless = oc.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            result,
        ],
        tools=WEATHER,
        tool_choice="none",
        store=False,
        **GREEDY,
    )
    assert chained.usage.input_tokens == stateless.usage.input_tokens
    assert chained.output_text == stateless.output_text
    with pytest.raises(openai.NotFoundError):
        oc.responses.retrieve(stateless.id)  # store=False


def test_turn_two_reuses_the_cached_prefix(oc):
    facts = " ".join(f"Fact {i}: item {uuid.uuid4().hex[:6]} is on shelf {i}." for i in range(12))
    one = oc.responses.create(model=MODEL, input=f"{facts}\nWhich shelf holds item 3?", **GREEDY)
    assert one.usage.input_tokens >= 100
    cold_cached = one.usage.input_tokens_details.cached_tokens
    assert cold_cached < 64  # only the shared chat-template head can be cached
    two = oc.responses.create(model=MODEL, previous_response_id=one.id, input="And item 5?", **GREEDY)
    cached = two.usage.input_tokens_details.cached_tokens
    assert cached >= one.usage.input_tokens - 16 > cold_cached  # every full block of turn 1's prompt


def test_code_interpreter_runs_in_the_sandbox(oc):
    from lhama.server.response_tools import run_code

    r = oc.responses.create(
        model=MODEL,
        input="Use Python to compute 6*7 and print the result.",
        tools=[{"type": "code_interpreter", "container": {"type": "auto"}}],
        tool_choice={"type": "code_interpreter"},
        temperature=0,
        max_output_tokens=48,
    )
    ci = r.output[0]
    assert ci.type == "code_interpreter_call" and ci.status == "completed" and ci.code
    assert ci.outputs[0].type == "logs"
    assert ci.outputs[0].logs == run_code(ci.code)  # what the sandbox reports for exactly that code
    assert r.output[-1].type == "message"  # the model continued after reading the output


def test_file_search_over_a_vector_store(oc, tmp_path):
    doc = tmp_path / "gardening.md"
    doc.write_text(
        "# Tomatoes\n\nTomato plants need about 8 hours of direct sun every day and deep watering "
        "twice a week.\n\n# Basil\n\nBasil grows well next to tomatoes and dislikes cold nights.\n"
    )
    f = oc.files.create(file=doc.open("rb"), purpose="assistants")
    vs = oc.vector_stores.create(name="garden", file_ids=[f.id])
    tool = {"type": "file_search", "vector_store_ids": [vs.id]}
    q = "How many hours of sun do tomato plants need?"
    r = oc.responses.create(model=MODEL, input=q, tools=[tool], include=["file_search_call.results"], **GREEDY)
    fs, msg = r.output[0], r.output[-1]
    assert fs.type == "file_search_call" and fs.queries == [q]
    assert fs.results and fs.results[0].file_id == f.id and "8 hours" in fs.results[0].text
    assert msg.type == "message"
    for a in msg.content[0].annotations:
        assert a.type == "file_citation" and a.file_id == f.id and a.filename == "gardening.md"
    plain = oc.responses.create(model=MODEL, input=q, **GREEDY)
    assert r.usage.input_tokens > plain.usage.input_tokens + 20  # the passages grounded the prompt


def test_errors_have_openai_shapes(oc, srv):
    with pytest.raises(openai.NotFoundError) as e:
        oc.responses.create(model=MODEL, input="hi", previous_response_id="resp_doesnotexist")
    assert e.value.body["code"] == "response_not_found" and e.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as e:
        oc.responses.create(model=MODEL, input="hi", tools=[{"type": "computer_use_preview"}])
    assert e.value.body["param"] == "tools[0].type" and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        oc.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])
    assert e.value.body["code"] == "web_search_unavailable"
    with pytest.raises(openai.BadRequestError) as e:
        oc.responses.create(model=MODEL, input=[{"role": "user", "content": [{"type": "input_image"}]}])
    assert e.value.body["param"] == "input[0].content[0]"
    with pytest.raises(openai.NotFoundError):
        oc.responses.create(model="no-such-model", input="hi")
    r = httpx.post(srv.base + "/responses", json={"model": MODEL, "input": "hi", "temperature": "hot"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"


def test_retrieve_and_delete_survive_a_restart(srv, oc, data_dir):
    kept = oc.responses.create(model=MODEL, input=QUESTION, **GREEDY)
    gone = oc.responses.create(model=MODEL, input="Say hello.", temperature=0, max_output_tokens=4)
    deleted = oc.responses.delete(gone.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    srv.stop()
    again = ServerProcess(data_dir)
    try:
        oc2 = OpenAI(base_url=again.base, api_key="unused", max_retries=0, timeout=300)
        back = oc2.responses.retrieve(kept.id)
        assert back.model_dump() == kept.model_dump()
        with pytest.raises(openai.NotFoundError):
            oc2.responses.retrieve(gone.id)
        with pytest.raises(openai.NotFoundError):
            oc2.responses.delete(gone.id)
        more = oc2.responses.create(model=MODEL, previous_response_id=kept.id, input="And of Italy?", **GREEDY)
        assert more.status == "completed"
        assert more.usage.input_tokens > kept.usage.input_tokens + kept.usage.output_tokens
    finally:
        again.stop()
