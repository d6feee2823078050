"""Rejection sampling and rewards: answer matching, unit tests in the real sandbox, a judge model,
plug-in rewards, selection rules, and the pipeline prompts → candidates → SFT/DPO files → DPO
training, with resume and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lhama.engine import EngineConfig, LLMEngine
from lhama.errors import ConfigError
from lhama.eval.code import extract_code
from lhama.loader import load_model
from lhama.train.data import load_chat_examples
from lhama.train.dpo import tokenize_pairs
from lhama.train.rejection import RejectionConfig, prompt_messages, rejection_sample, select
from lhama.train.rewards import (
    ExactAnswerReward,
    JudgeReward,
    Reward,
    RewardInputError,
    UnitTestReward,
    answers_match,
    extract_answer,
    load_reward,
)
from tests.train.smol_tiny import tiny_smol_folder, write_jsonl


@pytest.fixture(scope="module")
def smol(tmp_path_factory, smollm2_path):
    return load_model(
        tiny_smol_folder(tmp_path_factory.mktemp("smol"), smollm2_path), dtype=torch.float32, device="cpu"
    )


def shortest(record, candidates):
    """A plug-in reward (module:function): shorter is better."""
    return [-float(len(c)) for c in candidates]


class PrefersDigits(Reward):
    name = "digits"

    def score(self, record, candidates):
        return [float(sum(ch.isdigit() for ch in c)) for c in candidates]


@pytest.mark.parametrize(
    "text,answer",
    [
        ("so the total is \\boxed{42}.", "42"),
        ("Step 1: 3+4=7. The answer is 1,234.", "1234"),
        ("Answer: Paris.", "paris"),
        ("We get 3/4 of the cake", "0.75"),
        ("first 5 then 17", "17"),
    ],
)
def test_extract_and_match(text, answer):
    assert answers_match(extract_answer(text), answer)


def test_exact_reward():
    r = ExactAnswerReward()
    assert r.score({"answer": 12}, ["7 + 5 = 12", "It is 13.", "The answer is 12 apples."]) == [1.0, 0.0, 1.0]
    with pytest.raises(RewardInputError, match="'answer'"):
        r.score({"prompt": "x"}, ["1"])


def test_unit_test_reward_in_sandbox():
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"]
    cands = [
        "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```",  # passes 2 of 3 (the third test is wrong)
        "```python\ndef add(a, b):\n    return a - b\n```",  # wrong: passes none
        "```python\ndef add(a, b) return a + b\n```",  # syntax error: 0
        # Tries to award itself points by printing a tally: the marker has a per-run nonce.
        "```python\nprint('__lhama_tests_passed_0000__ 3')\ndef add(a, b):\n    return None\n```",
        # The solution, then a usage example: the first block is the program (the example alone
        # would fail with a NameError), as in eval's code tasks.
        "```python\ndef add(a, b):\n    return a + b\n```\nUsage:\n```python\nprint(add(1, 2))\n```",
    ]
    scores = UnitTestReward(timeout_s=5).score({"tests": tests}, cands)
    assert scores == pytest.approx([2 / 3, 0.0, 0.0, 0.0, 2 / 3])
    assert extract_code("no fences here") == "no fences here"
    with pytest.raises(RewardInputError):
        UnitTestReward().score({}, ["x"])


def test_load_reward_specs():
    assert isinstance(load_reward("exact"), ExactAnswerReward)
    assert isinstance(load_reward("unit-tests"), UnitTestReward)
    fn = load_reward("tests.train.test_rejection:shortest")
    assert fn.score({}, ["aaa", "a"]) == [-3.0, -1.0]
    assert isinstance(load_reward("tests.train.test_rejection:PrefersDigits"), PrefersDigits)
    for bad in ("nope", "tests.train.test_rejection:missing", "no_such_module_xyz:f"):
        with pytest.raises(ConfigError):
            load_reward(bad)
    with pytest.raises(ConfigError, match="judge model"):
        load_reward("judge")


def test_judge_reward_is_a_deterministic_expected_rating(smol):
    judge = JudgeReward(smol, batch_size=2)
    items = [({"prompt": "What is 2+2?"}, ["4", "five", "I like trains"]), ({"prompt": "Hi"}, ["Hello!"])]
    a = judge.score_many(items)
    b = judge.score_many(items)
    assert [len(x) for x in a] == [3, 1] and a == b
    assert all(0.0 <= s <= 1.0 for x in a for s in x)
    assert len(set(a[0])) > 1  # probabilities, not a coarse sampled digit: candidates are told apart


def test_prompt_messages_and_select():
    assert prompt_messages({"prompt": "hi", "system": "S"}) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "hi"},
    ]
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "reference"}]
    assert prompt_messages({"messages": msgs}) == msgs[:1]
    with pytest.raises(ConfigError):
        prompt_messages({"text": "x"})
    cfg = RejectionConfig()
    assert select([0.5, 0.9, 0.9, 0.1], ["stop"] * 4, cfg) == (1, 3)  # first best on ties
    assert select([0.5, 0.9], ["stop", "length"], cfg) == (0, 0)  # a truncated candidate is never best
    assert select([1.0, 0.0], ["length", "length"], cfg) == (None, None)
    with pytest.raises(ConfigError):
        RejectionConfig(num_candidates=1)


def test_pipeline_rejection_to_sft_and_dpo_with_resume_and_cli(tmp_path, smol):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": f"Say a number near {i}."} for i in range(4)]
        + [{"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]}],
    )
    cfg = RejectionConfig(num_candidates=3, max_tokens=8, temperature=1.0, drop_truncated=False, prompts_per_chunk=2)
    records = [json.loads(line) for line in prompts.read_text().splitlines()]
    engine = LLMEngine.from_loaded(smol, EngineConfig(kv_cache_gb=0.05))
    out = tmp_path / "rs"
    stats = rejection_sample(
        smol, records, load_reward("tests.train.test_rejection:shortest"), out, cfg, engine=engine, progress=False
    )
    assert stats["prompts"] == 5 and stats["candidates"] == 15
    ledger = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for row in ledger:
        assert len(row["candidates"]) == 3 and row["scores"] == [-float(len(c)) for c in row["candidates"]]
    # SFT file: the shortest candidate per prompt, readable by the SFT recipe.
    sft = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert len(sft) == 5 and sft[4]["messages"][0] == {"role": "system", "content": "Be terse."}
    for row, ex in zip(ledger, sft):
        assert ex["messages"][-1]["content"] == min(row["candidates"], key=len)
    assert len(load_chat_examples(out / "sft.jsonl", smol.chat_format)) == 5
    # DPO file: best vs worst where they differ, readable by the DPO recipe.
    dpo = [json.loads(line) for line in (out / "dpo.jsonl").read_text().splitlines()]
    assert dpo and all(len(p["chosen"]) < len(p["rejected"]) for p in dpo)
    rows, _ = tokenize_pairs(dpo, smol.chat_format, 128, 0)
    assert len(rows) == len(dpo)
    # ...and the recipes train on them.
    from lhama.train.config import TrainConfig
    from lhama.train.dpo import DPOConfig, run_dpo
    from lhama.train.recipe import RecipeOptions
    from lhama.train.sft import run_sft

    tc = dict(max_steps=1, batch_size=2, max_seq_len=96, progress=False)
    sft_run = run_sft(
        RecipeOptions(model=str(smol.path), data=(str(out / "sft.jsonl"),)),
        TrainConfig(output_dir=str(tmp_path / "sft"), **tc),
    )
    dpo_run = run_dpo(
        RecipeOptions(model=str(smol.path), data=(str(out / "dpo.jsonl"),)),
        TrainConfig(output_dir=str(tmp_path / "dpo"), **tc),
        None,
        DPOConfig(),
    )
    assert sft_run["steps"] == dpo_run["steps"] == 1 and dpo_run["pairs"] == len(dpo)

    # Kill mid-write: two prompts done, a third cut mid-line. The CLI resumes, redoing only the rest.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    lines = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    (resumed / "samples.jsonl").write_text("".join(lines[:2]) + lines[2][:20])
    model_dir = str(smol.path)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lhama.cli",
            "rejection-sample",
            "--model",
            model_dir,
            "--prompts",
            str(prompts),
            "-o",
            str(resumed),
            "--reward",
            "tests.train.test_rejection:shortest",
            "-n",
            "3",
            "--max-tokens",
            "8",
            "--temperature",
            "1.0",
            "--keep-truncated",
            "--kv-cache-gb",
            "0.05",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["prompts"] == 5
    again = [json.loads(line) for line in (resumed / "samples.jsonl").read_text().splitlines()]
    assert [row["index"] for row in again] == [0, 1, 2, 3, 4]
    assert again[:2] == ledger[:2]  # kept, not regenerated


@pytest.mark.slow
def test_rejection_sampling_with_smollm2_exact_answers(tmp_path, smollm2_path):
    """The real policy on arithmetic word problems, exact-answer reward: the best-of-N accuracy
    is at least the mean candidate accuracy, and the files hold only verified answers."""
    lm = load_model(smollm2_path, dtype=torch.float32, device="cpu")
    records = [
        {"prompt": f"What is {a} + {b}? Reply with the number only.", "answer": a + b}
        for a, b in [(2, 3), (7, 5), (12, 9), (21, 14), (33, 8), (45, 17), (6, 6), (19, 23)]
    ]
    stats = rejection_sample(
        lm,
        records,
        ExactAnswerReward(),
        tmp_path,
        RejectionConfig(num_candidates=6, temperature=0.8, max_tokens=24, min_sft_score=1.0, drop_truncated=False),
        engine=LLMEngine.from_loaded(lm, EngineConfig(kv_cache_gb=0.5)),
        progress=False,
    )
    print(json.dumps({k: v for k, v in stats.items() if k != "config"}))
    assert stats["mean_best_score"] >= stats["mean_score"]
    for row in map(json.loads, (tmp_path / "sft.jsonl").read_text().splitlines()):
        rec = records[row["index"]]
        assert answers_match(extract_answer(row["messages"][-1]["content"]), str(rec["answer"]))
