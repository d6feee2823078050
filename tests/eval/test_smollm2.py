"""The real default model on shipped tasks: multiple choice, generation with extraction, code
run in the sandbox."""

from __future__ import annotations

import pytest

from lhama.eval import EvalConfig, EvalContext, load_task, run_task
from lhama.eval.runner import ItemsFile


def test_smollm2_multiple_choice_and_generation(smollm2, tmp_path):
    ctx = EvalContext(smollm2, EvalConfig(limit=2, max_tokens=8))
    mc = run_task(ctx, load_task("mc-en"), model_spec="default", out_dir=tmp_path, progress=False)
    assert mc.num_items == 2 and 0 <= mc.metrics["acc"].value <= 1
    for rec in ItemsFile(tmp_path / "items" / "mc-en.jsonl").load().values():
        assert len(rec["loglikelihoods"]) == 4 and all(v < 0 for v in rec["loglikelihoods"])
        assert rec["pred"] == max(range(4), key=rec["loglikelihoods"].__getitem__)
    gen = run_task(
        ctx.with_config(EvalConfig(limit=1, max_tokens=8)),
        load_task("gen-de"),
        model_spec="default",
        out_dir=tmp_path,
        progress=False,
    )
    (rec,) = ItemsFile(tmp_path / "items" / "gen-de.jsonl").load().values()
    assert rec["output"].strip()  # a real answer, scored by the numeric extractor
    assert rec["correct"] == (rec["extracted"] == 12.0)
    assert gen.metrics["accuracy"].value == float(rec["correct"])


@pytest.mark.slow
def test_smollm2_code_in_the_sandbox(smollm2, tmp_path):
    ctx = EvalContext(smollm2, EvalConfig(limit=2, max_tokens=64, samples=2, pass_k=(1, 2), temperature=0.8))
    code = run_task(ctx, load_task("code-python"), model_spec="default", out_dir=tmp_path, progress=False)
    recs = ItemsFile(tmp_path / "items" / "code-python.jsonl").load()
    for rec in recs.values():
        assert len(rec["completions"]) == 2 and len(rec["verdicts"]) == 2
        assert rec["passed"] == sum(v == "passed" for v in rec["verdicts"])
    assert recs["add"]["passed"] >= 1  # SmolLM2 writes a + b
    assert set(code.metrics) == {"pass@1", "pass@2"}
