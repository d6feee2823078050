"""Saved agent transcripts: a malformed file is one clear error (exit 2 from the CLI), whatever
part of it is wrong, never a traceback halfway through a replay."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lhama.errors import ConfigError
from lhama.tools.transcript import Transcript

GOOD = Transcript("scripted", [{"type": "code_interpreter"}], {}, [{"role": "user", "content": "2**10?"}])
GOOD.model_step(
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "code_interpreter", "arguments": '{"code": "print(2**10)"}'},
            }
        ],
    },
    [1, 2, 3],
)
GOOD.tool_step("c1", "code_interpreter", {"code": "print(2**10)"}, "completed\n[stdout]\n1024\n[/stdout]", False)
GOOD.shield_step({"shield": "s", "role": "user", "allowed": True, "categories": [], "message": ""})
GOOD.finish("1024", "end_of_turn")


def _without(path: tuple, data: dict) -> dict:
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return data


def _with(path: tuple, value, data: dict) -> dict:
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


BROKEN = {
    "step without type": lambda d: _without(("steps", 0, "type"), d),
    "tool step without name": lambda d: _without(("steps", 1, "name"), d),
    "tool step without result": lambda d: _without(("steps", 1, "result"), d),
    "tool arguments not JSON": lambda d: _with(("steps", 1, "arguments"), "{oops", d),
    "model step without message": lambda d: _without(("steps", 0, "message"), d),
    "call without function": lambda d: _without(("steps", 0, "message", "tool_calls", 0, "function"), d),
    "shield step without categories": lambda d: _without(("steps", 2, "categories"), d),
    "step is a string": lambda d: _with(("steps", 0), "model", d),
    "tool without type or name": lambda d: _with(("tools", 0), {"kind": "x"}, d),
    "no model": lambda d: _without(("model",), d),
    "messages not a list": lambda d: _with(("messages",), "hi", d),
}


def lhama(*args: str) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    exe = Path(sys.executable).with_name("lhama")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("breakage", list(BROKEN))
def test_malformed_transcript_is_a_typed_error(tmp_path, breakage):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(BROKEN[breakage](GOOD.to_dict())))
    with pytest.raises(ConfigError, match="malformed transcript"):
        Transcript.load(path)


@pytest.mark.parametrize("breakage", ["tool step without name", "step without type", "call without function"])
def test_replay_of_a_malformed_transcript_prints_one_line_and_exits_2(tmp_path, breakage):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(BROKEN[breakage](GOOD.to_dict())))
    p = lhama("agent", "--replay", str(path))
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "KeyError" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "malformed transcript" in lines[0], p.stderr


def test_a_good_transcript_still_loads_and_replays(tmp_path):
    path = GOOD.save(tmp_path / "run.json")
    assert Transcript.load(path).signature() == GOOD.signature()
    p = lhama("agent", "--replay", str(path))
    assert p.returncode == 0 and "replay: identical" in p.stdout, p.stdout + p.stderr
