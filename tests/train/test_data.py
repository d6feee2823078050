"""Chat data to ids with assistant-only labels (real tokenizers and chat formats), raw text,
bad input as typed errors, and the resumable batch iterator."""

from __future__ import annotations

import json

import pytest

from lhama.errors import ChatFormatError, ConfigError
from lhama.train.data import IGNORE, BatchIterator, load_chat_examples, load_text_examples, make_rows, tokenize_chat

CONVO = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]


@pytest.fixture(scope="module")
def llama3_format():
    from lhama.tokenizer import load_chat_format, load_tokenizer

    tok = load_tokenizer("llama3")
    return load_chat_format("llama3", tok)


@pytest.fixture(scope="module")
def smollm2_format(smollm2_path):
    from lhama.tokenizer import load_chat_format, load_tokenizer

    tok = load_tokenizer(smollm2_path)
    return load_chat_format(smollm2_path, tok)


def _labeled_spans(ex, tok):
    spans, cur = [], []
    for i, l in zip(ex.ids, ex.labels):
        if l != IGNORE:
            cur.append(i)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    if cur:
        spans.append(tok.decode(cur))
    return spans


def test_llama3_labels_cover_assistant_turns_and_eot(llama3_format):
    ex = tokenize_chat(CONVO, llama3_format)
    assert list(ex.ids) == llama3_format.encode_dialog(CONVO, add_generation_prompt=False)
    assert _labeled_spans(ex, llama3_format.tokenizer) == ["Paris.<|eot_id|>", "Rome.<|eot_id|>"]


def test_smollm2_jinja_labels_cover_assistant_turns_and_im_end(smollm2_format):
    ex = tokenize_chat(CONVO, smollm2_format)
    assert _labeled_spans(ex, smollm2_format.tokenizer) == ["Paris.<|im_end|>", "Rome.<|im_end|>"]
    # The labeled tokens are exactly what the model generates after the generation prompt.
    prompt = smollm2_format.encode_dialog(CONVO[:2], add_generation_prompt=True)
    assert list(ex.ids[: len(prompt)]) == prompt and ex.labels[len(prompt)] == ex.ids[len(prompt)]


def test_bad_chat_rows_are_reported_with_line_numbers(tmp_path, llama3_format):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"messages": CONVO}) + "\n" + "{not json\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: not valid JSON"):
        load_chat_examples(f, llama3_format)
    f.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(ConfigError, match=r":1: expected a 'messages' list"):
        load_chat_examples(f, llama3_format)
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ConfigError, match="no assistant message"):
        load_chat_examples(f, llama3_format)
    f.write_text(
        json.dumps({"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]}) + "\n"
    )
    with pytest.raises(ChatFormatError, match="bad.jsonl:1"):
        load_chat_examples(f, llama3_format)
    with pytest.raises(ConfigError, match="does not exist"):
        load_chat_examples(tmp_path / "missing.jsonl", llama3_format)


def test_raw_text_is_trained_everywhere_and_long_documents_are_split(tmp_path, llama3_format):
    tok = llama3_format.tokenizer
    (tmp_path / "a.txt").write_text("word " * 300)
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "short doc"}) + "\n")
    exs = load_text_examples([tmp_path / "a.txt", tmp_path / "b.jsonl"], tok)
    assert exs[0].ids[0] == tok.bos_id and exs[0].ids[-1] == tok.eos_id and exs[0].ids == exs[0].labels
    rows = make_rows(exs, 64, pack=True, truncate=False)
    assert sum(1 for r in rows for d in r.doc_ids if d >= 0) == sum(len(e.ids) for e in exs)  # nothing dropped
    assert all(len(r.ids) == 64 for r in rows)


def test_iterator_position_round_trips(synthetic_rows):
    it = BatchIterator(synthetic_rows, 4, seed=5)
    n = it.batches_per_epoch
    for _ in range(n + 2):  # into the second epoch
        next(it)
    state = it.state_dict()
    expected = [next(it)["tokens"] for _ in range(3)]
    fresh = BatchIterator(synthetic_rows, 4, seed=5)
    fresh.load_state_dict(state)
    got = [next(fresh)["tokens"] for _ in range(3)]
    assert all((a == b).all() for a, b in zip(expected, got))
    with pytest.raises(ConfigError, match="same data"):
        BatchIterator(synthetic_rows[:-1], 4).load_state_dict(state)


def test_tool_calls_are_trained_and_tool_results_are_not(llama3_format):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    convo = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
        },
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "21 degrees."},
    ]
    ex = tokenize_chat(convo, llama3_format, tools=tools)
    spans = _labeled_spans(ex, llama3_format.tokenizer)
    assert len(spans) == 2 and "get_weather" in spans[0] and spans[1] == "21 degrees.<|eot_id|>"
    assert all("21}" not in s and "Weather in a city" not in s for s in spans)
