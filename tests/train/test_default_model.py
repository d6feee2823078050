"""The default model's post-training: deterministic data whose checks catch wrong answers, the
recipe end to end on a tiny model, and the shipped adapter on the real default model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lhama.train.default_model_checks import check, parse_tool_call
from lhama.train.default_model_data import build_records, tool_call_text
from lhama.train.default_model_recipe import DefaultModelRecipe, fact_sentence, run
from tests.train.smol_tiny import tiny_smol_folder

ROOT = Path(__file__).resolve().parents[2]
SIZES = {"tool": 2, "rag": 3, "brief": 4, "phrase": 4}


def by_task(records, task):
    return next(r for r in records if r["task"] == task)


def test_generators_are_deterministic_and_golds_pass_their_checks():
    a, b = build_records("train", SIZES, 0), build_records("train", SIZES, 0)
    assert a == b
    assert build_records("train", SIZES, 1) != a
    assert {r["task"] for r in a} == {"tool_call", "tool_answer", "rag", "brief", "phrase"}
    for r in a:
        assert check(r, r["gold"]) == 1.0, r


def test_checks_catch_wrong_answers():
    recs = build_records("train", SIZES, 0)
    call = by_task(recs, "tool_call")
    assert parse_tool_call(call["gold"]) == call["code"]
    assert check(call, "The answer is " + call["expected"]) == 0.0  # right number, but no tool call
    assert check(call, tool_call_text("print(12345)")) == 0.5  # a call whose code prints the wrong thing
    assert check(call, tool_call_text("raise SystemExit(3)")) == 0.5
    assert check(call, call["gold"].replace("code_interpreter", "calculator")) == 0.0
    answer = by_task(recs, "tool_answer")
    assert check(answer, "The answer is 1.") == 0.0
    rag = by_task(recs, "rag")
    wrong = rag["source"] % rag["n_sources"] + 1
    assert check(rag, rag["gold"].replace(f"[{rag['source']}]", f"[{wrong}]")) == 0.0  # wrong source
    assert check(rag, rag["gold"].replace(f" [{rag['source']}]", "")) == 0.0  # no citation
    assert check(rag, rag["gold"] + " [9]") == 0.0  # a number that is no source
    brief = by_task(recs, "brief")
    assert check(brief, "I am not sure.") == 0.0
    assert check(brief, brief["gold"] + " word" * 40) == 0.5  # right, but does not stop
    phrase = by_task(recs, "phrase")
    assert check(phrase, "No idea.") == 0.0


def test_brief_training_answers_restate_the_question_and_model_answers_are_cut_to_the_fact():
    """Training brief answers are the base model's own shape ("The capital of X is Y."), not a
    bare word; a sampled answer becomes SFT data as its sentence that states the fact."""
    for r in build_records("train", {"brief": 30}, 0):
        q = r["messages"][-1]["content"]
        if q.startswith("What is the capital of "):
            country = q.removeprefix("What is the capital of ").rstrip("?")
            assert r["gold"] == f"The capital of {country} is {r['expected']}."
        assert len(r["gold"].split()) >= 3 and check(r, r["gold"]) == 1.0
    long = "Denmark is a country in Europe. The capital of Denmark is Copenhagen. It has many bridges."
    assert fact_sentence(long, "Copenhagen") == "The capital of Denmark is Copenhagen."
    assert fact_sentence("Bees make a variety of products, including honey, wax", "honey") is None  # cut off
    assert fact_sentence("I do not know.", "Oslo") is None


def test_base_text_openings_are_not_the_heldout_ppl_texts():
    """The self-distillation openings cover the 8 languages and share no sentence (nor a long
    word run) with the shipped ppl-* texts that measure bits per byte."""
    from lhama.train.default_model_data import TEXT_OPENINGS

    data = ROOT / "src" / "lhama" / "data" / "eval"
    assert sorted(TEXT_OPENINGS) == sorted(p.stem.removeprefix("ppl-") for p in data.glob("ppl-*.jsonl"))
    for lang, openings in TEXT_OPENINGS.items():
        ppl = " ".join(json.loads(x)["text"] for x in (data / f"ppl-{lang}.jsonl").read_text("utf-8").splitlines())
        for o in openings:
            words = o.rstrip(".。।").split()
            assert o.rstrip(".।") not in ppl
            assert not any(" ".join(words[i : i + 4]) in ppl for i in range(max(1, len(words) - 3))), (lang, o)


def test_heldout_sets_are_regenerated_exactly_and_share_no_prompt_with_training():
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_default_model", ROOT / "recipes" / "eval_default_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for task in ("rag", "brief", "phrase"):
        committed = (ROOT / "recipes" / "heldout" / f"{task}.jsonl").read_text(encoding="utf-8")
        fresh = [r for r in build_records("heldout", {task: mod.SIZES[task]}, mod.SEED)]
        assert committed == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fresh)
    recipe = DefaultModelRecipe.from_file(ROOT / "recipes" / "default-model.yaml")
    train = build_records("train", {k: v for k, v in recipe.sizes.items() if k != "tool"}, recipe.seed)
    train_prompts = {json.dumps(r["messages"][-1]["content"]) for r in train}
    heldout = [
        json.loads(x)
        for t in ("rag", "brief", "phrase", "tool")
        for x in (ROOT / "recipes" / "heldout" / f"{t}.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert not train_prompts & {json.dumps(r["messages"][-1]["content"]) for r in heldout}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert all(r["messages"][-1]["content"] not in readme for r in heldout)


def test_recipe_runs_end_to_end_on_a_tiny_model(tmp_path, smollm2_path):
    base = tiny_smol_folder(tmp_path, smollm2_path)
    r = DefaultModelRecipe(
        base=str(base),
        output_dir=str(tmp_path / "run"),
        sizes={"tool": 1, "rag": 1, "brief": 2},
        dpo_sizes={"tool": 1, "brief": 2},
        sample_limit=3,
        sample={"num_candidates": 2, "temperature": 1.0, "max_tokens": 8},
        sft={"lr": 1e-3, "max_steps": 2, "batch_size": 2, "max_seq_len": 512, "progress": False},
        dpo={"lr": 1e-3, "max_steps": 1, "batch_size": 2, "max_seq_len": 512, "progress": False},
        dpo_rounds=1,
        sample_tasks=["brief"],
        base_text={"per_opening": 1, "max_tokens": 6},
    )
    log = run(r, ship=str(tmp_path / "ship"))
    assert log["sample"]["from_model"] + log["sample"]["from_gold"] + log["sample"]["not_sampled"] == 5
    samples = [json.loads(x) for x in (tmp_path / "run" / "sample" / "samples.jsonl").read_text().splitlines()]
    briefs = [x["messages"] for x in build_records("train", r.sizes, r.seed) if x["task"] == "brief"]
    assert len(briefs) == 2 and all(b in [s["prompt"] for s in samples] for b in briefs)  # every one sampled
    from lhama.train.default_model_data import TEXT_OPENINGS

    texts = [json.loads(x)["text"] for x in (tmp_path / "run" / "text" / "base.jsonl").read_text().splitlines()]
    assert log["text"]["texts"] == len(texts) == sum(map(len, TEXT_OPENINGS.values()))
    mixed = (tmp_path / "run" / "sample" / "sft-shuffled.jsonl").read_text(encoding="utf-8")
    assert all(json.dumps({"text": t}, ensure_ascii=False) in mixed for t in texts)  # trained on, as text
    assert log["sft"]["steps"] == 2 and log["dpo1"]["steps"] == 1
    shipped = tmp_path / "ship" / "adapter_model.safetensors"
    from safetensors.torch import load_file

    assert all(t.dtype == torch.float16 for t in load_file(str(shipped)).values())
    # A second run finds every step done and redoes nothing.
    assert run(r)["seconds"] == log["seconds"]


@pytest.fixture(scope="module")
def default_and_base():
    from lhama.loader import default_adapter_path, load_model

    if not (default_adapter_path() / "adapter_model.safetensors").is_file():
        pytest.fail("the shipped adapter is missing: run `make default-model`")
    return load_model("smollm2-tuned"), load_model("smollm2-base")


def test_tuned_is_int4_with_the_shipped_adapter_unmerged_beside_it(default_and_base):
    """'smollm2-tuned' keeps the file's exact int4 weights and runs the adapter as a low-rank side path;
    its logits match the adapter merged into the dequantized float weights, and move far from
    the raw file's ('smollm2-base', no adapter)."""
    from lhama.loader import load_model
    from lhama.model.lora_batch import FixedLoraLinear

    default, base = default_and_base
    assert default.path == base.path  # the same file underneath
    assert default.quant is not None and base.quant is not None  # both stay 4-bit
    wrapped = [m for m in default.model.modules() if isinstance(m, FixedLoraLinear)]
    # every projection module of every block (fused wqkv / w13, wo, w2) carries the adapter
    assert len(wrapped) == 4 * default.args.n_layers
    assert not any(isinstance(m, FixedLoraLinear) for m in base.model.modules())
    merged = load_model("smollm2-tuned", dtype=torch.float32)  # float weights: the adapter merged
    assert merged.quant is None
    assert not any(isinstance(m, FixedLoraLinear) for m in merged.model.modules())
    ids = torch.tensor([default.chat_format.encode_dialog([{"role": "user", "content": "Find 3 ** 7."}])])
    from lhama.quant.ggml import integer_rows, set_prompt_path

    # every row takes the dequantized bf16 GEMM (the prompt path where AMX runs it): the
    # comparison is the adapter's, not the int8 rounding of the integer kernels' activations
    set_prompt_path("bf16")
    try:
        with torch.no_grad(), integer_rows(0):
            side, flat, raw = (lm.model(ids)[0, -8:] for lm in (default, merged, base))
    finally:
        set_prompt_path(os.environ.get("LHAMA_GGML_PROMPT") or None)
    assert (side.argmax(-1) == flat.argmax(-1)).all()
    assert (side - flat).abs().max() < 1.0  # int4 kernels vs fp32: the base alone differs this much too
    assert (side - raw).abs().max() > 3.0  # the adapter is there


def test_tuned_answers_a_heldout_arithmetic_question_through_the_agent(default_and_base):
    """The real ``Agent`` (what ``lhama agent --tools code_interpreter`` runs): the tuned model
    calls the code interpreter with the question's numbers, then states the printed result; the
    raw file answers in prose."""
    from lhama.tools.agent import Agent, AgentConfig

    default, base = default_and_base
    question = "Please work out 17 ** 23."  # the held-out template, numbers never generated for training
    runs = {}
    for name, lm in (("default", default), ("base", base)):
        agent = Agent(lm, tools=["code_interpreter"], config=AgentConfig(max_steps=3, max_tokens=64))
        runs[name] = agent.run(question)
    calls = {k: [m for m in r.messages if m["role"] == "assistant" and m.get("tool_calls")] for k, r in runs.items()}
    assert not calls["base"]
    assert calls["default"], "the tuned model did not call the code interpreter"
    code = json.loads(calls["default"][0]["tool_calls"][0]["function"]["arguments"])["code"]
    assert "17" in code and "23" in code
    final = [m for m in runs["default"].messages if m["role"] == "assistant"][-1]
    assert str(17**23) in (final.get("content") or ""), final
