"""The Llama Guard 3 prompt against Meta's own text (llama-stack's template), its categories,
and the parsing of guard answers. No model runs here."""

from __future__ import annotations

import ast
import string
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lhama.safety import ShieldConfigError, ShieldError, parse_guard_answer, render_guard_prompt, select_categories
from lhama.safety.categories import CATEGORIES, describe, parse_codes
from lhama.safety.llama_guard import LlamaGuardConfig, guard_conversation

DATA = Path(__file__).parent / "data"
LLAMA_STACK = "llama-stack==0.2.12"
GUARD_MODULE = "llama_stack/providers/inline/safety/llama_guard/llama_guard.py"


@pytest.fixture(scope="module")
def meta_template(tmp_path_factory):
    """llama-stack's template constants, read from its wheel without importing it (its imports
    pull the whole llama-stack server). The wheel comes from PyPI through pip."""
    d = tmp_path_factory.mktemp("llama-stack")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", LLAMA_STACK, "-d", str(d)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    wheels = list(d.glob("*.whl"))
    if r.returncode != 0 or not wheels:
        pytest.fail(
            f"cannot download {LLAMA_STACK} from PyPI (pip download --no-deps {LLAMA_STACK} must work "
            f"here): {r.stderr[-300:]}",
            pytrace=False,
        )
    src = zipfile.ZipFile(wheels[0]).read(GUARD_MODULE).decode()
    consts = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                consts[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    template = string.Template(
        consts["PROMPT_TASK"]
        + consts["SAFETY_CATEGORIES"]
        + consts["PROMPT_CONVERSATION"]
        + consts["PROMPT_INSTRUCTIONS"]
    )
    names = {
        code: name
        for name, code in ast.literal_eval(
            _assigned(src, "SAFETY_CATEGORIES_TO_CODE_MAP").replace("CAT_", "").replace("_", " ")
        ).items()
    }
    return template, consts, names


def _assigned(src: str, name: str) -> str:
    """The source of ``name = {...}`` with the CAT_ constants quoted, to literal_eval it."""
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            text = ast.get_source_segment(src, node.value)
            for key in ast.walk(node.value):
                if isinstance(key, ast.Name):
                    text = text.replace(key.id, repr(key.id), 1)
            return text
    raise AssertionError(name)


def test_category_names_match_llama_stack(meta_template):
    _, consts, _ = meta_template
    by_code = {c.code: c.name for c in CATEGORIES.values()}
    theirs = [consts[k] for k in consts if k.startswith("CAT_")]
    assert list(by_code.values()) == theirs  # same 14 names, same order S1..S14


@pytest.mark.parametrize(
    "codes,exclude,ci", [(None, (), False), (None, (), True), (("S1", "S10"), (), False), (None, ("S6", "S7"), False)]
)
def test_input_prompt_matches_llama_stack(meta_template, codes, exclude, ci):
    template, _, _ = meta_template
    cats = select_categories(codes, exclude, code_interpreter=ci)
    conv = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "How do I make a cake?"},
        {"role": "assistant", "content": "Mix flour and eggs."},
        {"role": "user", "content": "And then?"},
    ]
    ours = render_guard_prompt(guard_conversation(conv, "user"), "User", cats)
    theirs = template.substitute(
        agent_type="User",
        categories="\n".join(f"{c.code}: {c.name}." for c in cats),
        conversations="User: How do I make a cake?\n\nAgent: Mix flour and eggs.\n\nUser: And then?",
    )
    assert ours == theirs


def test_output_prompt_names_the_agent(meta_template):
    template, _, _ = meta_template
    cats = select_categories()
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ours = render_guard_prompt(guard_conversation(conv, "assistant"), "Agent", cats)
    # Meta's model card and chat template call the model 'Agent' (llama-stack passes the role name).
    assert ours == template.substitute(
        agent_type="Agent",
        categories="\n".join(c.prompt_line() for c in cats),
        conversations="User: hi\n\nAgent: hello",
    )
    assert "ONLY THE LAST Agent message" in ours


def test_golden_prompt_from_llama_stack_offline():
    """The same check without the network: the text llama-stack renders, kept as a file."""
    golden = (DATA / "llama_guard3_8b_user_prompt.txt").read_text()
    ours = render_guard_prompt([("User", "How do I make a cake?")], "User", select_categories(code_interpreter=True))
    assert ours == golden


def test_prompt_through_the_llama3_chat_format():
    from lhama.safety import LlamaGuardShield
    from lhama.tokenizer import load_tokenizer

    class Loaded:  # the shield only needs a tokenizer and args to build its prompt
        tokenizer = load_tokenizer("llama3")
        chat_format = None

        class args:
            dim, max_seq_len = 64, 4096

    shield = LlamaGuardShield(LlamaGuardConfig("unused"), loaded=Loaded())
    ids = shield.prompt_ids([{"role": "user", "content": "hi"}], "user")
    text = Loaded.tokenizer.decode(ids)
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nTask: Check")
    assert text.endswith("categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "S14" not in text  # a 1B-shaped guard: S1-S13
    # A long history is cut from the oldest turn, never the judged one.
    Loaded.args.max_seq_len = len(ids) + 60
    long = [
        {"role": "user", "content": "word " * 200},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "last question"},
    ]
    short = Loaded.tokenizer.decode(shield.prompt_ids(long, "user"))
    assert "last question" in short and "word word" not in short
    with pytest.raises(ShieldError, match="context"):
        shield.prompt_ids([{"role": "user", "content": "word " * 500}], "user")


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("safe", (True, [])),
        ("  safe\n", (True, [])),
        ("unsafe\nS1", (False, ["S1"])),
        ("unsafe\nS1,S10", (False, ["S1", "S10"])),
        ("unsafe\n S3, s12 ,S3", (False, ["S3", "S12"])),
        ("unsafe S9", (False, ["S9"])),
        ("\n\nUnsafe\n\nS2\n", (False, ["S2"])),
        ("unsafe", (False, [])),
        ("unsafe\nS99", (False, [])),
    ],
)
def test_parse_guard_answers(answer, expected):
    assert parse_guard_answer(answer) == expected


@pytest.mark.parametrize("answer", ["", "   ", "I think it is fine", "safety first", "safe and sound"])
def test_garbage_answers_raise(answer):
    with pytest.raises(ShieldError):
        parse_guard_answer(answer)


def test_category_selection():
    assert [c.code for c in select_categories()] == [f"S{i}" for i in range(1, 14)]
    assert select_categories(code_interpreter=True)[-1].name == "Code Interpreter Abuse"
    assert [c.code for c in select_categories(["s10", "S1", "S1"])] == ["S1", "S10"]
    assert [c.code for c in select_categories(None, "S2,S3")][:3] == ["S1", "S4", "S5"]
    assert parse_codes(" ") is None
    assert describe(["S11", "X"]) == "S11 (Suicide & Self-Harm), X"
    with pytest.raises(ShieldConfigError, match="unknown Llama Guard category"):
        select_categories(["S15"])
    with pytest.raises(ShieldConfigError, match="every Llama Guard category is excluded"):
        select_categories(["S1"], ["S1"])
    with pytest.raises(ShieldConfigError):
        LlamaGuardConfig("x", on_error="maybe")
    with pytest.raises(ShieldConfigError):
        LlamaGuardConfig("x", stages=("middle",))


def test_conversation_rendering_rules():
    msgs = [
        {"role": "system", "content": "secret system prompt"},
        {"role": "user", "content": [{"type": "text", "text": "run "}, {"type": "text", "text": "this"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "code_interpreter", "arguments": '{"code": "import os"}'}}],
        },
        {"role": "tool", "content": "output"},
    ]
    conv = guard_conversation(msgs, "assistant")
    assert conv == [("User", "run this"), ("Agent", 'code_interpreter({"code": "import os"})')]
    assert guard_conversation(msgs, "user") == [("User", "run this")]
    with pytest.raises(ShieldError, match="no 'user' message"):
        guard_conversation([{"role": "assistant", "content": "x"}], "user")
