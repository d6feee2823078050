"""``lhama agent`` as a user runs it: one real subprocess (one-shot + save), the rest through
``lhama.cli.main`` in-process (same parser and code, without paying a torch import per call)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests import needs

LHAMA = [sys.executable, "-m", "lhama.cli"]


def run(*args, stdin: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*LHAMA, "agent", *args], input=stdin, capture_output=True, text=True, timeout=timeout)


def main(capsys, monkeypatch, *args, stdin: str = ""):
    """``lhama agent ARGS`` in this process: (exit code, stdout, stderr)."""
    import io

    from lhama.cli import main as lhama_main

    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    rc = lhama_main(["agent", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_one_shot_save_and_replay(tmp_path, capsys, monkeypatch):
    path = tmp_path / "t.json"
    p = run("Say hi", "--model", "tiny-llama3", "--tools", "none", "--max-tokens", "5", "--save", str(path))
    assert p.returncode == 0, p.stderr
    tr = json.loads(path.read_text())
    assert tr["messages"] == [{"role": "user", "content": "Say hi"}] and tr["steps"][0]["type"] == "model"
    assert p.stdout.strip() == tr["final"].strip()
    rc, out, err = main(capsys, monkeypatch, "--replay", str(path), "--rerun", "--model", "tiny-llama3")
    assert rc == 0 and "identical" in out, err
    tr["steps"][0]["message"]["content"] = "something else"
    path.write_text(json.dumps(tr))
    rc, out, _ = main(capsys, monkeypatch, "--replay", str(path), "--rerun", "--model", "tiny-llama3")
    assert rc == 1 and "differs" in out


def test_interactive_keeps_history(tmp_path, capsys, monkeypatch):
    path = tmp_path / "t.json"
    rc, out, err = main(
        capsys,
        monkeypatch,
        "--model",
        "tiny-llama3",
        "--tools",
        "none",
        "--max-tokens",
        "3",
        "--quiet",
        "--save",
        str(path),
        stdin="first question\nsecond question\n/exit\n",
    )
    assert rc == 0, err
    assert len(out.strip().splitlines()) >= 1
    tr = json.loads(path.read_text())  # the last turn's transcript starts from the whole history
    users = [m["content"] for m in tr["messages"] if m["role"] == "user"]
    assert users == ["first question", "second question"]


def test_replay_re_executes_recorded_code(tmp_path, capsys, monkeypatch):
    needs.binary("bwrap", "bubblewrap")
    from lhama.tools.transcript import Transcript

    tr = Transcript("scripted", [{"type": "code_interpreter"}], {}, [{"role": "user", "content": "2**10?"}])
    tr.tool_step(
        "call_1",
        "code_interpreter",
        json.dumps({"code": "print(2**10)"}),
        "completed\n[stdout]\n1024\n[/stdout]",
        False,
    )
    tr.finish("1024", "end_of_turn")
    path = tr.save(tmp_path / "code.json")
    rc, out, err = main(capsys, monkeypatch, "--replay", str(path))
    assert rc == 0 and "identical" in out, out + err
    tr.steps[0]["result"] = "completed\n[stdout]\n1000\n[/stdout]"
    tr.save(path)
    rc, out, _ = main(capsys, monkeypatch, "--replay", str(path))
    assert rc == 1 and "1024" in out


def test_bad_input_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BRAVE_SEARCH_API_KEY", raising=False)
    rc, _, err = main(capsys, monkeypatch, "hi", "--model", "tiny-llama3", "--tools", "brave_search")
    assert rc == 2 and "BRAVE_SEARCH_API_KEY" in err
    rc, _, err = main(capsys, monkeypatch, "hi", "--model", "tiny-llama3", "--tools", "teleporter")
    assert rc == 2 and "unknown built-in tool" in err
    rc, _, err = main(capsys, monkeypatch, "--replay", str(tmp_path / "missing.json"))
    assert rc == 2 and "no transcript" in err


def test_custom_tool_from_a_file_and_replay_with_it(tmp_path, capsys, monkeypatch):
    from lhama.tools.transcript import Transcript

    (tmp_path / "my_tools.py").write_text(
        "def shout(text: str) -> str:\n    'Upper-case the text.'\n    return text.upper()\n"
    )
    tr = Transcript(
        "scripted", [{"type": "function", "function": {"name": "shout"}}], {}, [{"role": "user", "content": "shout hi"}]
    )
    tr.tool_step("call_1", "shout", '{"text": "hi"}', "HI", False)
    path = tr.save(tmp_path / "t.json")
    rc, out, err = main(
        capsys, monkeypatch, "--replay", str(path), "--tools", "none", "--tool", f"{tmp_path / 'my_tools.py'}:shout"
    )
    assert rc == 0 and "identical" in out, out + err
    rc, out, _ = main(capsys, monkeypatch, "--replay", str(path), "--tools", "none")
    assert rc == 1 and "no such tool" in out
    rc, _, err = main(capsys, monkeypatch, "hi", "--tool", f"{tmp_path / 'my_tools.py'}:whisper")
    assert rc == 2 and "has no 'whisper'" in err
    rc, _, err = main(
        capsys, monkeypatch, "--replay", str(path), "--rerun", "--model", "tiny-llama3", "--tools", "none"
    )
    assert rc == 2 and "--tool MODULE:NAME" in err


@pytest.mark.slow  # a guard pass of SmolLM2 over the Llama Guard prompt: ~10 s idle, a minute when busy
def test_real_llama_guard_shield_wiring(smollm2_path, tmp_path, capsys, monkeypatch):
    """``--shield`` builds lhama.safety's Llama Guard shield. SmolLM2 is no guard: its answer is
    neither 'safe' nor 'unsafe', so the shield cannot judge and --shield-on-error decides - the
    agent must then refuse before its model runs (fail closed), and record the verdict."""
    path = tmp_path / "t.json"
    rc, out, err = main(
        capsys,
        monkeypatch,
        "hello",
        "--model",
        "tiny-llama3",
        "--tools",
        "none",
        "--shield",
        f"llama-guard={smollm2_path}",
        "--shield-on-error",
        "refuse",
        "--shield-stages",
        "input",
        "--save",
        str(path),
    )
    assert rc == 0, err
    tr = json.loads(path.read_text())
    assert tr["stopped"] == "shield_input" and [s["type"] for s in tr["steps"]] == ["shield"]
    assert tr["steps"][0]["allowed"] is False and out.strip() == tr["final"]
