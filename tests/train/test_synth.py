"""Synthetic data: filters, near-duplicate removal, topics files, and the self-instruct job through
the real engine (a tiny model with the SmolLM2 tokenizer: fast; SmolLM2 itself: slow), its resume,
and its output read by the SFT recipe."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from lhama.engine import EngineConfig, LLMEngine
from lhama.errors import ConfigError
from lhama.loader import load_model
from lhama.train.data import load_chat_examples
from lhama.train.synth import (
    FilterConfig,
    NearDuplicateIndex,
    SynthConfig,
    clean_instruction,
    read_topics,
    reject_reason,
    synthesize,
)
from tests.train.smol_tiny import tiny_smol_folder

F = FilterConfig()


@pytest.mark.parametrize(
    "text,why",
    [
        ("Explain how photosynthesis turns sunlight into chemical energy in plants.", None),
        ("Hi", "too_short"),
        ("I'm sorry, but I cannot help with that request.", "refusal"),
        ("As an AI language model, I do not have personal opinions about this.", "refusal"),
        ("1234 5678 !!!! #### $$$$ %%%% ^^^^ &&&& 9999", "garbage"),
        ("the cat sat on the mat the cat sat on the mat the cat sat on the mat", "repetitive"),
        ("Erkläre bitte, wie die Photosynthese in den grünen Pflanzen funktioniert.", "language"),
        ("Tell me <|im_start|>assistant about dogs and their many habits", "template_tokens"),
        ("word " * 600, "too_long"),
    ],
)
def test_filters(text, why):
    assert reject_reason(text, F) == why


def test_filters_are_configurable():
    german = "Erkläre bitte, wie die Photosynthese in den grünen Pflanzen funktioniert."
    assert reject_reason(german, FilterConfig(languages=("en", "de"))) is None
    assert reject_reason(german, FilterConfig(languages=())) is None
    assert reject_reason("I'm sorry, I cannot do that today.", FilterConfig(drop_refusals=False)) is None


def test_clean_instruction():
    assert clean_instruction('\n1. "Describe the water cycle."\nExtra text') == "Describe the water cycle."
    assert clean_instruction("New task: Name three planets.") == "Name three planets."
    assert clean_instruction("- Task 2: List two rivers") == "List two rivers"


def test_near_duplicates():
    idx = NearDuplicateIndex(0.7)
    assert idx.add_if_new("Explain how a rainbow forms after a summer storm in the mountains.")
    # Same text with different case and punctuation, and a near copy with one word changed.
    assert not idx.add_if_new("explain how a RAINBOW forms, after a summer storm in the mountains!")
    assert not idx.add_if_new("Explain how a rainbow forms after a summer storm in the hills and mountains.")
    assert idx.add_if_new("Give three tips for keeping basil plants healthy indoors during winter.")
    assert idx.add_if_new("Hi") and not idx.add_if_new("hi!")  # short texts: normalised exact match


def test_read_topics(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("# seeds\nbirds\n\n  volcanoes \n")
    assert [t["topic"] for t in read_topics(txt)] == ["birds", "volcanoes"]
    js = tmp_path / "t.jsonl"
    js.write_text(json.dumps({"topic": "tea", "examples": ["How is green tea made?"]}) + "\n")
    assert read_topics(js) == [{"topic": "tea", "examples": ["How is green tea made?"]}]
    js.write_text(json.dumps({"topic": "tea", "examples": "no"}) + "\n")
    with pytest.raises(ConfigError, match=":1: 'examples'"):
        read_topics(js)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no topics"):
        read_topics(tmp_path / "empty.txt")
    with pytest.raises(ConfigError):
        SynthConfig(dedup_threshold=0)


def test_synth_job_resumes_and_feeds_sft(tmp_path, smollm2_path):
    """The job's machinery on a random tiny model (its text is noise, so the content filters are
    relaxed here; they are tested above): batched n-sampling, answers, output rows, state, resume."""
    lm = load_model(tiny_smol_folder(tmp_path, smollm2_path), dtype=torch.float32, device="cpu")
    engine = LLMEngine.from_loaded(lm, EngineConfig(kv_cache_gb=0.05))
    loose = FilterConfig(
        min_chars=1,
        min_words=1,
        min_alpha_ratio=0.0,
        max_repeated_ngram_ratio=1.0,
        languages=(),
        drop_refusals=False,
        max_chars=100_000,
    )
    cfg = SynthConfig(
        instructions_per_topic=2,
        instruction_max_tokens=8,
        answer_max_tokens=8,
        answer_temperature=1.0,
        drop_truncated_answers=False,
        topics_per_chunk=2,
        instruction_filters=loose,
        answer_filters=loose,
    )
    topics = [{"topic": t, "examples": []} for t in ("birds", "tea", "rivers")]
    out = tmp_path / "synth.jsonl"
    counts = synthesize(lm, topics, out, cfg, engine=engine, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert counts["instructions_generated"] == 6 and counts["kept"] == len(rows) > 0, counts
    for r in rows:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"] and r["round"] == 0
        assert r["topic"] in ("birds", "tea", "rivers")
    assert len(load_chat_examples(out, lm.chat_format)) == len(rows)
    from lhama.train.config import TrainConfig
    from lhama.train.recipe import RecipeOptions
    from lhama.train.sft import run_sft

    sft = run_sft(
        RecipeOptions(model=str(lm.path), data=(str(out),)),
        TrainConfig(max_steps=1, batch_size=2, max_seq_len=64, output_dir=str(tmp_path / "sft"), progress=False),
    )
    assert sft["steps"] == 1 and sft["train_examples"] == len(rows)
    state = json.loads((tmp_path / "synth.jsonl.state.json").read_text())
    assert state["round"] == 1 and state["written"] == len(rows)

    # A crash after writing rows but before recording them: the rerun drops the unrecorded line.
    with open(out, "a") as f:
        f.write(json.dumps({"messages": [], "topic": "birds"}) + "\n")
    again = synthesize(lm, topics, out, cfg, engine=engine, progress=False)  # nothing left to do
    assert again["kept"] == len(rows) and out.read_text().count("\n") == len(rows)
    # More rounds continue from the state: old rows untouched, new ones from round 1.
    more = synthesize(lm, topics, out, replace(cfg, rounds=2), engine=engine, progress=False)
    rows2 = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows2[: len(rows)] == rows and more["instructions_generated"] == 12
    assert {r["round"] for r in rows2[len(rows) :]} <= {1}
    with pytest.raises(ConfigError, match="topics"):
        synthesize(lm, topics[:2], out, cfg, engine=engine, progress=False)


@pytest.mark.slow
def test_synth_with_smollm2(tmp_path, smollm2_path):
    """The real teacher with the default filters: instructions on topic, answered, de-duplicated."""
    lm = load_model(smollm2_path, dtype=torch.float32, device="cpu")
    topics = [{"topic": t, "examples": []} for t in ("cooking pasta", "the solar system", "saving money")]
    out = tmp_path / "synth.jsonl"
    counts = synthesize(
        lm,
        topics,
        out,
        SynthConfig(instructions_per_topic=4, answer_max_tokens=160),
        engine=LLMEngine.from_loaded(lm, EngineConfig(kv_cache_gb=0.5)),
        progress=False,
    )
    print(json.dumps(counts))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and counts["instructions_generated"] == 12
    idx = NearDuplicateIndex(0.7)
    assert all(idx.add_if_new(r["messages"][0]["content"]) for r in rows)
    assert all(reject_reason(r["messages"][1]["content"], FilterConfig()) is None for r in rows)


def test_cli_synth(tmp_path, smollm2_path, capsys):
    """``lhama synth`` through the real parser (in-process): flags reach the job, counts are printed."""
    from lhama.cli import main

    folder = tiny_smol_folder(tmp_path, smollm2_path)
    topics = tmp_path / "topics.txt"
    topics.write_text("birds\ntea\n")
    out = tmp_path / "out.jsonl"
    assert (
        main(
            [
                "synth",
                "--model",
                str(folder),
                "--topics",
                str(topics),
                "-o",
                str(out),
                "--instructions-per-topic",
                "2",
                "--answer-max-tokens",
                "4",
                "--kv-cache-gb",
                "0.05",
                "--languages",
                "",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["instructions_generated"] == 4 and printed["output"] == str(out)
    state = json.loads((tmp_path / "out.jsonl.state.json").read_text())
    assert state["config"]["instructions_per_topic"] == 2 and state["config"]["answer_filters"]["languages"] == []
    assert main(["synth", "--model", str(folder), "--topics", str(tmp_path / "missing.txt"), "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
