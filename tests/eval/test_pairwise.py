"""Pairwise comparison: verdict parsing, order swapping and its statistics on deterministic
judges, and one real run with SmolLM2 as both contestant and judge."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lhama.eval import EvalConfig, load_task, report
from lhama.eval import pairwise as pw
from lhama.eval.judge import combine, judge_prompt, parse_verdict, summarize


@pytest.mark.parametrize(
    "text,verdict",
    [
        ("A is more complete.\n[[A]]", "A"),
        ("Both fine. [[C]]", "tie"),
        ("I first thought [[A]] but on reflection [[B]]", "B"),  # the last verdict counts
        ("Verdict: B", "B"),
        ("**Verdict:** [A]", "A"),
        ("Assistant B's answer is better because it is correct.", "B"),
        ("It's a tie.", "tie"),
        ("Both answers talk about the sky.", None),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_combining_both_orders():
    # verdict_ab: A's answer shown first; verdict_ba: B's answer shown first.
    assert combine("A", "B") == "win"  # A preferred in both orders
    assert combine("B", "A") == "loss"
    assert combine("A", "A") == "tie"  # the judge always picks the first slot: no information
    assert combine("A", "tie") == "win" and combine("tie", "A") == "loss"
    assert combine(None, "B") == "win" and combine(None, None) == "tie"


def test_summary_statistics_on_known_records():
    recs = (
        [{"outcome": "win", "verdict_ab": "A", "verdict_ba": "B"}] * 6
        + [{"outcome": "tie", "verdict_ab": "A", "verdict_ba": "A"}] * 3
        + [{"outcome": "loss", "verdict_ab": None, "verdict_ba": "A"}]
    )
    s = summarize(recs)
    assert (s["win_rate"].value, s["tie_rate"].value, s["loss_rate"].value) == (0.6, 0.3, 0.1)
    assert s["win_rate"].low < 0.6 < s["win_rate"].high  # Wilson interval
    assert s["win_rate_ties_half"].value == pytest.approx(0.75)
    assert s["order_consistency"].value == pytest.approx(6 / 9)  # the record without a verdict is left out
    # Decisive verdicts: 6 A + 6 B (wins), 6 A (ties), 1 A (loss) -> 13 of 19 chose the first slot.
    assert s["first_slot_preference"].value == pytest.approx(13 / 19)
    assert s["no_verdict_rate"].value == pytest.approx(1 / 20)
    # Both orders agree on a winner only for the 6 wins: A won all of them.
    assert (s["consistent_win_rate"].value, s["consistent_win_rate"].n) == (1.0, 6)
    flipped = [{"outcome": "loss", "verdict_ab": "B", "verdict_ba": "A"}] * 2 + recs
    assert summarize(flipped)["consistent_win_rate"].value == pytest.approx(6 / 8)


@pytest.fixture
def fake_contestants(tiny_lm, monkeypatch):
    """Two 'models' whose answers are fixed strings; the judge is the real tiny model (its text is
    replaced by a scripted verdict), so prompts, order swapping and bookkeeping run for real."""
    a, b = dataclasses.replace(tiny_lm, name="model-a"), dataclasses.replace(tiny_lm, name="model-b")
    monkeypatch.setattr(
        pw.EvalContext, "generate", lambda self, prompts, params: [[f"answer of {self.loaded.name}"] for _ in prompts]
    )
    shown: list[tuple[str, str]] = []

    def recording_prompt(question, first, second):
        shown.append((first, second))
        return judge_prompt(question, first, second)

    monkeypatch.setattr(pw, "judge_prompt", recording_prompt)
    return {"a": a, "b": b, "judge": tiny_lm}, shown


def _run(preloaded, tmp_path, **kw):
    cfg = pw.CompareConfig(eval=EvalConfig(limit=3, max_tokens=4, chunk_size=2), judge_max_tokens=2, **kw)
    return pw.run_compare(
        load_task("pairwise"), "a", "b", "judge", cfg, load=None, out_dir=tmp_path, progress=False, preloaded=preloaded
    )


def test_answers_are_judged_in_both_orders_and_position_bias_cancels(fake_contestants, tmp_path, monkeypatch):
    preloaded, shown = fake_contestants
    monkeypatch.setattr(pw, "parse_verdict", lambda text: "A")  # a judge that always picks the first answer
    res = _run(preloaded, tmp_path)
    assert shown == [("answer of model-a", "answer of model-b"), ("answer of model-b", "answer of model-a")] * 3
    assert res.extra["counts"] == {"win": 0, "tie": 3, "loss": 0}
    assert res.metrics["first_slot_preference"].value == 1.0 and res.metrics["order_consistency"].value == 0.0
    assert res.metrics["consistent_win_rate"].n == 0  # no prompt where both orders agree: nothing to count
    recs = [json.loads(x) for x in (tmp_path / "items" / "pairwise.judgments.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == ["en-1", "en-2", "en-3"]
    assert all(r["answer_a"] == "answer of model-a" and isinstance(r["judge_ab"], str) for r in recs)


def test_a_judge_that_prefers_one_answer_gives_consistent_wins(fake_contestants, tmp_path, monkeypatch):
    preloaded, shown = fake_contestants

    # The verdicts follow what was shown: prompts are built before the judge runs.
    def parse(text):
        first, _ = shown[parse.i]
        parse.i += 1
        return "A" if first == "answer of model-b" else "B"

    parse.i = 0
    monkeypatch.setattr(pw, "parse_verdict", parse)
    res = _run(preloaded, tmp_path)
    assert res.extra["counts"] == {"win": 0, "tie": 0, "loss": 3}  # B better in both orders
    assert res.metrics["order_consistency"].value == 1.0
    assert (res.metrics["consistent_win_rate"].value, res.metrics["consistent_win_rate"].n) == (0.0, 3)
    assert res.metrics["first_slot_preference"].value == 0.5
    assert res.metrics["loss_rate"].low > 0.3  # 3 of 3: Wilson lower bound 0.44


def test_logprob_judge_always_decides_and_resume_skips_judged(fake_contestants, tmp_path):
    preloaded, shown = fake_contestants
    res = _run(preloaded, tmp_path, judge_mode="logprob")
    assert res.metrics["no_verdict_rate"].value == 0.0
    recs = [json.loads(x) for x in (tmp_path / "items" / "pairwise.judgments.jsonl").read_text().splitlines()]
    assert all(set(r["judge_ab"]) == {"logprob_A", "logprob_B", "logprob_C"} for r in recs)
    n = len(shown)
    again = _run(preloaded, tmp_path, judge_mode="logprob")
    assert len(shown) == n and again.resumed_items == 3  # nothing judged twice
    assert {k: v.as_dict() for k, v in again.metrics.items()} == {k: v.as_dict() for k, v in res.metrics.items()}
    with pytest.raises(Exception, match="judge_mode"):
        _run(preloaded, tmp_path, judge_mode="generate")


def test_real_comparison_with_smollm2_as_contestant_and_judge(smollm2, tmp_path):
    """Plumbing with the real model in every role (logprob judge: no judge generation, fast)."""
    cfg = pw.CompareConfig(eval=EvalConfig(limit=1, max_tokens=8), judge_mode="logprob")
    res = pw.run_compare(
        load_task("pairwise"),
        "default",
        "default",
        "default",
        cfg,
        load=None,
        out_dir=tmp_path,
        progress=False,
        preloaded={"default": smollm2},
    )
    (r,) = [json.loads(x) for x in (tmp_path / "items" / "pairwise.judgments.jsonl").read_text().splitlines()]
    assert r["answer_a"].strip() and r["answer_a"] == r["answer_b"]  # same model, greedy
    assert r["verdict_ab"] in ("A", "B", "tie") and all(v < 0 for v in r["judge_ab"].values())
    rep = report.write([res], tmp_path)
    assert rep["results"][0]["counts"] == res.extra["counts"] and sum(res.extra["counts"].values()) == 1
    assert "judged by default (logprob)" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_real_comparison_with_smollm2_generating_verdicts(smollm2, tmp_path):
    cfg = pw.CompareConfig(eval=EvalConfig(limit=2, max_tokens=24), judge_max_tokens=32)
    res = pw.run_compare(
        load_task("pairwise"),
        "default",
        "default",
        "default",
        cfg,
        load=None,
        out_dir=tmp_path,
        progress=False,
        preloaded={"default": smollm2},
    )
    assert sum(res.extra["counts"].values()) == 2
    recs = [json.loads(x) for x in (tmp_path / "items" / "pairwise.judgments.jsonl").read_text().splitlines()]
    for r in recs:
        assert r["answer_a"].strip() and r["answer_a"] == r["answer_b"]
        assert r["judge_ab"].strip() and r["verdict_ab"] in ("A", "B", "tie", None)
    report.write([res], tmp_path)
    assert "judged by default (generate)" in (tmp_path / "report.md").read_text()
