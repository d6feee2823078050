"""``lhama agent`` as a user runs it: real subprocesses, one-shot, interactive, save and replay."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lhama.tools import sandbox

LHAMA = [sys.executable, "-m", "lhama.cli"]


def run(*args, stdin: str | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*LHAMA, "agent", *args], input=stdin, capture_output=True, text=True, timeout=timeout)


def test_one_shot_save_and_replay(tmp_path):
    path = tmp_path / "t.json"
    p = run("Say hi", "--model", "tiny-llama3", "--tools", "none", "--max-tokens", "5", "--save", str(path))
    assert p.returncode == 0, p.stderr
    tr = json.loads(path.read_text())
    assert tr["messages"] == [{"role": "user", "content": "Say hi"}] and tr["steps"][0]["type"] == "model"
    assert p.stdout.strip() == tr["final"].strip()
    p = run("--replay", str(path), "--rerun", "--model", "tiny-llama3")
    assert p.returncode == 0 and "identical" in p.stdout, p.stderr
    tr["steps"][0]["message"]["content"] = "something else"
    path.write_text(json.dumps(tr))
    p = run("--replay", str(path), "--rerun", "--model", "tiny-llama3")
    assert p.returncode == 1 and "differs" in p.stdout


def test_interactive_keeps_history(tmp_path):
    path = tmp_path / "t.json"
    p = run("--model", "tiny-llama3", "--tools", "none", "--max-tokens", "3", "--quiet", "--save", str(path),
            stdin="first question\nsecond question\n/exit\n")
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.strip().splitlines()) >= 1
    tr = json.loads(path.read_text())  # the last turn's transcript starts from the whole history
    users = [m["content"] for m in tr["messages"] if m["role"] == "user"]
    assert users == ["first question", "second question"]


@pytest.mark.skipif(sandbox.shutil.which("bwrap") is None, reason="bubblewrap not installed")
def test_replay_re_executes_recorded_code(tmp_path):
    from lhama.tools.transcript import Transcript

    tr = Transcript("scripted", [{"type": "code_interpreter"}], {}, [{"role": "user", "content": "2**10?"}])
    tr.tool_step("call_1", "code_interpreter", json.dumps({"code": "print(2**10)"}),
                 "completed\n[stdout]\n1024\n[/stdout]", False)
    tr.finish("1024", "end_of_turn")
    path = tr.save(tmp_path / "code.json")
    p = run("--replay", str(path))
    assert p.returncode == 0 and "identical" in p.stdout, p.stdout + p.stderr
    tr.steps[0]["result"] = "completed\n[stdout]\n1000\n[/stdout]"
    tr.save(path)
    p = run("--replay", str(path))
    assert p.returncode == 1 and "1024" in p.stdout


def test_bad_input_is_a_clear_error(tmp_path, monkeypatch):
    env_missing = run("hi", "--model", "tiny-llama3", "--tools", "brave_search")
    assert env_missing.returncode == 2 and "BRAVE_SEARCH_API_KEY" in env_missing.stderr
    p = run("hi", "--model", "tiny-llama3", "--tools", "teleporter")
    assert p.returncode == 2 and "unknown built-in tool" in p.stderr
    p = run("--replay", str(tmp_path / "missing.json"))
    assert p.returncode == 2 and "no transcript" in p.stderr
