"""Shipped evaluation sets (8 languages, checked answers) and the task file format."""

from __future__ import annotations

import json

import pytest

from lhama.eval.code import program
from lhama.eval.tasks import EvalTaskError, load_task, shipped_tasks

LANGS = ("en", "de", "fr", "it", "pt", "hi", "es", "th")


def test_every_llama31_language_has_perplexity_choice_and_generative_sets():
    names = shipped_tasks()
    for lang in LANGS:
        assert load_task(f"ppl-{lang}").kind == "perplexity"
        assert load_task(f"mc-{lang}").kind == "multiple_choice"
        assert load_task(f"gen-{lang}").kind == "generative"
    assert load_task("code-python").kind == "code"
    assert load_task("pairwise").kind == "pairwise"
    assert {p["lang"] for p in load_task("pairwise").items} == set(LANGS)
    assert len(names) == 3 * len(LANGS) + 2


def test_translations_keep_the_same_answers():
    """The sets are translations of one another: same questions, same right answers, so scores
    compare across languages. Checks each language against English."""
    en_mc, en_gen = load_task("mc-en"), load_task("gen-en")
    for lang in LANGS:
        mc, gen = load_task(f"mc-{lang}"), load_task(f"gen-{lang}")
        assert [i["answer"] for i in mc.items] == [i["answer"] for i in en_mc.items]
        assert [i["choices"][i["answer"]] for i in mc.items if i["choices"][i["answer"]].isdigit()] == [
            i["choices"][i["answer"]] for i in en_mc.items if i["choices"][i["answer"]].isdigit()
        ]
        nums = [i["answer"] for i in gen.items if i["extract"] == "numeric"]
        assert nums == [i["answer"] for i in en_gen.items if i["extract"] == "numeric"] == [12, 54, 12, 63, 120, 25]
        assert len({i["question"] for i in mc.items}) == len(mc.items)


def test_generative_answers_are_right():
    """The numeric answers follow from the English questions (computed here, not copied)."""
    en = {i["id"]: i for i in load_task("gen-en").items}
    assert en["en-1"]["answer"] == 7 + 5 and en["en-2"]["answer"] == 9 * 6 and en["en-3"]["answer"] == 3 * 4
    assert en["en-4"]["answer"] == 100 - 37 and en["en-5"]["answer"] == 2 * 60 and en["en-6"]["answer"] == 50 / 2
    assert en["en-9"]["answer"] == str(max(17, 71)) and en["en-10"]["answer"] == ["no"]  # 15 is odd


def test_code_set_reference_solutions_pass_and_broken_ones_fail():
    """Each problem's reference solution passes its asserts in the sandbox; a wrong one fails,
    so the tests can fail."""
    from lhama.tools.sandbox import SandboxLimits, run_python

    task = load_task("code-python")
    solutions = "\n\n".join(it["canonical_solution"] for it in task.items)
    tests = "\n".join(it["tests"] for it in task.items)
    res = run_python(f"{solutions}\n\n{tests}\nprint('all passed')", limits=SandboxLimits(wall_seconds=60))
    assert res.ok and "all passed" in res.stdout, res.stderr
    for it in task.items:  # one solution per program: none relies on another's definitions
        assert it["entry_point"] in it["canonical_solution"] and it["entry_point"] in it["tests"]
    wrong = {"add": "def add(a, b):\n    return a - b", "is_prime": "def is_prime(n):\n    return n % 2 == 1"}
    for it in task.items:
        if it["id"] in wrong:
            bad = run_python(program(it, wrong[it["id"]]), limits=SandboxLimits(wall_seconds=60))
            assert not bad.ok and "AssertionError" in bad.stderr


def _write(tmp_path, lines):
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return p


@pytest.mark.parametrize(
    "lines,match",
    [
        (["{not json"], r"t.jsonl:1: not valid JSON"),
        ([[1, 2]], "must be a JSON object"),
        ([{"question": "q", "choices": ["a", "b"], "answer": 2}], r"'answer' must be the index .* \(0..1\)"),
        ([{"question": "q", "choices": ["a"], "answer": 0}], "at least two"),
        ([{"prompt": "p", "answer": "x", "extract": "fuzzy"}], "'extract' must be one of"),
        ([{"prompt": "p", "answer": "x", "extract": "regex", "pattern": "("}], "not a valid regular expression"),
        ([{"prompt": "p", "answer": "x", "extract": "regex"}], "non-empty string 'pattern'"),
        ([{"prompt": "p", "tests": ""}], "non-empty string 'tests'"),
        ([{"id": 1, "text": "a"}, {"id": "1", "text": "b"}], "appears twice"),
        ([{"foo": 1}], "cannot tell the task kind"),
        ([""], "has no items"),
    ],
)
def test_bad_task_files_are_rejected_with_the_place(tmp_path, lines, match):
    with pytest.raises(EvalTaskError, match=match):
        load_task(_write(tmp_path, lines))


def test_unknown_task_name_lists_the_shipped_ones():
    with pytest.raises(EvalTaskError, match="shipped tasks: .*mc-en"):
        load_task("no-such-task")
    assert EvalTaskError.http_status == 400


def test_kind_override_and_limit(tmp_path):
    p = _write(tmp_path, [{"prompt": f"p{i}", "answer": "x"} for i in range(5)])
    assert load_task(p).kind == "generative"
    t = load_task(p, kind="pairwise")
    assert t.kind == "pairwise" and [i["id"] for i in t.limited(2).items] == ["1", "2"]
    with pytest.raises(EvalTaskError):
        load_task(p, kind="bogus")
