"""Answer extraction of generative tasks: numbers in every script and notation, regex, exact."""

from __future__ import annotations

import pytest

from lhama.eval.code import extract_code
from lhama.eval.generative import extract, extract_number, is_correct, normalise, parse_number


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The answer is 42.", 42.0),
        ("First 3 apples, then 12 in total", 12.0),  # the last number is the answer
        ("It costs 1,234 euros", 1234.0),
        ("Das sind 3,5 Liter", 3.5),  # decimal comma
        ("1.234.567 Einwohner", 1234567.0),
        ("−7 degrees", -7.0),  # Unicode minus
        ("คำตอบคือ ๕๔", 54.0),  # Thai digits
        ("उत्तर १२० है", 120.0),  # Devanagari digits
        ("120 मिनट", 120.0),
        ("no number here", None),
        ("About 3/4 of them", 0.75),  # a fraction
        ("$1,500 in total", 1500.0),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_parse_number_rejects_garbage():
    assert parse_number("1,2,3") is None


def test_numeric_items_accept_close_values_only():
    item = {"answer": 25, "extract": "numeric"}
    assert is_correct(item, extract(item, "Half of 50 is 25."))
    assert is_correct(item, extract(item, "25.0"))
    assert not is_correct(item, extract(item, "It is 26"))
    assert not is_correct(item, extract(item, "I don't know"))


def test_exact_match_normalises_case_space_and_punctuation():
    item = {"answer": ["Rome"], "extract": "exact"}
    assert is_correct(item, extract(item, "  rome. "))
    assert is_correct(item, extract(item, "«Rome»"))
    assert not is_correct(item, extract(item, "The capital is Rome."))
    assert normalise("Ｒｏｍｅ！") == "rome"  # full-width forms (NFKC)


def test_regex_takes_the_first_match_and_its_group():
    item = {"answer": "71", "extract": "regex", "pattern": r"(?<!\d)(17|71)(?!\d)"}
    assert is_correct(item, extract(item, "71 is larger than 17."))
    assert not is_correct(item, extract(item, "17 is smaller... no wait"))
    assert extract(item, "neither") is None
    th = {"answer": ["ไม่ใช่"], "extract": "regex", "pattern": "(ไม่ใช่|ใช่)"}
    assert is_correct(th, extract(th, "ไม่ใช่ 15 เป็นเลขคี่"))
    assert not is_correct(th, extract(th, "ใช่"))


def test_extract_code_from_chat_answers():
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone.") == "def f():\n    return 1"
    assert extract_code("```\nx = 1\n```") == "x = 1"
    assert extract_code("def g(): pass") == "def g(): pass"
    assert extract_code("```python\nunclosed = True") == "unclosed = True"  # cut off by max_tokens


def test_extract_code_takes_the_first_block_else_the_python_tag():
    # One rule for eval's pass@k and the unit-test reward: the solution comes first, usage after.
    answer = "```python\ndef f():\n    return 1\n```\nUsage:\n```python\nprint(f())\n```"
    assert extract_code(answer) == "def f():\n    return 1"
    # Llama 3.1's code interpreter call: unfenced code after <|python_tag|> (the last one).
    assert extract_code("Let me run it.<|python_tag|>import math\nprint(math.pi)\n") == "import math\nprint(math.pi)"
    assert extract_code("a<|python_tag|>x = 1<|python_tag|>x = 2") == "x = 2"


def test_rejection_rewards_read_numbers_as_eval_does():
    # One number reader (lhama.eval.generative.numbers_in) for eval tasks and the exact reward.
    from lhama.train.rewards import answers_match, extract_answer

    assert extract_answer("First 3, then 12 apples") == "12"
    assert answers_match(extract_answer("คำตอบคือ ๔๒"), "42")  # Thai digits, as extract_number reads them
    assert answers_match(extract_answer("Das sind 3,5 Liter"), "3.5")  # decimal comma
    assert answers_match(extract_answer("so 3/4 of the cake"), "0.75")
    assert answers_match("The answer is 1,234 apples", "1234") and not answers_match("1,235", "1234")
    for text in ("It is 26", "x = −7", "1.234.567 Einwohner", "about 3/4"):
        assert parse_number(extract_answer(text)) == extract_number(text)
