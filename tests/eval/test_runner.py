"""Running tasks: every kind on a tiny model, resume after an interruption, refusing to mix runs."""

from __future__ import annotations

import json

import pytest

from lhama.eval import EvalConfig, EvalContext, EvalResumeError, load_task, run_task
from lhama.eval import choice as choice_mod
from lhama.eval.runner import ItemsFile


def _mc_file(tmp_path, n=9):
    p = tmp_path / "mc.jsonl"
    rows = [
        {
            "id": f"q{i}",
            "question": f"What is {i} plus {i}?",
            "choices": [str(2 * i), str(2 * i + 1), "blue"],
            "answer": 0,
        }
        for i in range(n)
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_every_kind_runs_and_reports(tiny_lm, tmp_path):
    ctx = EvalContext(tiny_lm, EvalConfig(max_tokens=4, limit=2, window=16, stride=8))
    for name, metrics in [
        ("mc-fr", {"acc", "acc_norm"}),
        ("ppl-hi", {"token_perplexity", "word_perplexity", "bits_per_byte"}),
        ("gen-th", {"accuracy", "answered"}),
        ("code-python", {"pass@1"}),
    ]:
        r = run_task(ctx, load_task(name), model_spec="tiny-llama3", out_dir=tmp_path, progress=False)
        assert set(r.metrics) == metrics and r.num_items == 2
        recs = ItemsFile(tmp_path / "items" / f"{name}.jsonl").load()
        assert len(recs) == 2
    # A random model is near chance but its numbers are real: perplexity near the vocabulary size.
    ppl = run_task(ctx.with_config(EvalConfig(limit=1)), load_task("ppl-en"), model_spec="tiny-llama3", progress=False)
    assert 1e3 < ppl.metrics["token_perplexity"].value < 1e6


def test_interrupted_run_resumes_without_rescoring(tiny_lm, tmp_path, monkeypatch):
    task = load_task(_mc_file(tmp_path))
    ctx = EvalContext(tiny_lm, EvalConfig(chunk_size=2))
    fresh = run_task(ctx, task, model_spec="tiny", out_dir=tmp_path / "fresh", progress=False)

    real_score, calls, dying = choice_mod.score, [], [True]

    class Killed(Exception):
        pass

    def dying_score(c, items):
        calls.append([i["id"] for i in items])
        if dying[0] and len(calls) == 3:
            raise Killed
        return real_score(c, items)

    monkeypatch.setattr(choice_mod, "score", dying_score)
    with pytest.raises(Killed):
        run_task(ctx, task, model_spec="tiny", out_dir=tmp_path / "resumed", progress=False)
    assert len(ItemsFile(tmp_path / "resumed" / "items" / "mc.jsonl").load()) == 4
    calls.clear()
    dying[0] = False
    resumed = run_task(ctx, task, model_spec="tiny", out_dir=tmp_path / "resumed", progress=False)
    assert [i for c in calls for i in c] == ["q4", "q5", "q6", "q7", "q8"]  # only what was missing
    assert resumed.resumed_items == 4
    lines = (tmp_path / "resumed" / "items" / "mc.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["id"] for x in lines) == sorted(f"q{i}" for i in range(9))
    assert {k: v.as_dict() for k, v in resumed.metrics.items()} == {k: v.as_dict() for k, v in fresh.metrics.items()}


def test_a_partly_written_line_is_dropped_and_rescored(tmp_path):
    f = ItemsFile(tmp_path / "items" / "t.jsonl")
    f.append([{"id": "a", "x": 1}])
    with open(f.path, "a") as fh:
        fh.write('{"id": "b", "x"')  # killed mid-write
    assert list(f.load()) == ["a"]
    f.append([{"id": "b", "x": 2}])
    assert f.load() == {"a": {"id": "a", "x": 1}, "b": {"id": "b", "x": 2}}


def test_resume_with_other_settings_is_refused(tiny_lm, tmp_path):
    task = load_task("ppl-en")
    run_task(EvalContext(tiny_lm, EvalConfig(window=16)), task, model_spec="m", out_dir=tmp_path, progress=False)
    other = EvalContext(tiny_lm, EvalConfig(window=32))
    with pytest.raises(EvalResumeError, match="settings"):
        run_task(other, task, model_spec="m", out_dir=tmp_path, progress=False)
    with pytest.raises(EvalResumeError, match="model"):
        run_task(
            EvalContext(tiny_lm, EvalConfig(window=16)), task, model_spec="other", out_dir=tmp_path, progress=False
        )
    r = run_task(other, task, model_spec="m", out_dir=tmp_path, restart=True, progress=False)
    assert r.resumed_items == 0
    # A larger --limit on resume is fine: only the new items are scored.
    small = EvalContext(tiny_lm, EvalConfig(window=32, limit=1))
    assert run_task(small, task, model_spec="m", out_dir=tmp_path, progress=False).resumed_items == 1


def test_eval_config_rejects_nonsense():
    from lhama.errors import ConfigError

    for bad in (
        dict(limit=0),
        dict(samples=2, pass_k=(3,)),
        dict(samples=4, temperature=0.0, pass_k=(1,)),
        dict(window=1),
        dict(chunk_size=0),
    ):
        with pytest.raises(ConfigError):
            EvalConfig(**bad)
