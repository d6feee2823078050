"""An agent run as data: the starting messages, then every step in order (shield verdicts,
model outputs with their token ids, tool calls with their results), and how it ended. Saved as
JSON; replayed by re-executing the tools (``replay_tools``) or re-running the whole session on
a model and checking that the same steps come out (``replay_session``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lhama.errors import ConfigError, ToolError

VERSION = 1


@dataclass
class Transcript:
    model: str
    tools: list[dict]
    config: dict
    messages: list[dict]  # what the run started from (history + the new user turn)
    steps: list[dict] = field(default_factory=list)
    final: str | None = None
    stopped: str | None = None
    created: float = field(default_factory=time.time)
    version: int = VERSION

    @classmethod
    def start(cls, model: str, tools: list[dict], config, messages: list[dict]) -> Transcript:
        cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
        return cls(model, tools, cfg, json.loads(json.dumps(messages, default=str)))

    def model_step(self, message: dict, token_ids: list[int]) -> None:
        self.steps.append({"type": "model", "message": message, "token_ids": list(token_ids)})

    def tool_step(self, call_id: str, name: str, arguments: Any, result: str, error: bool) -> None:
        self.steps.append(
            {
                "type": "tool",
                "id": call_id,
                "name": name,
                "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                "result": result,
                "error": error,
            }
        )

    def shield_step(self, verdict: dict) -> None:
        self.steps.append({"type": "shield", **verdict})

    def finish(self, content: str, stopped: str) -> None:
        self.final, self.stopped = content, stopped

    # -- files ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2))
        tmp.replace(path)  # never a half-written transcript
        return path

    @classmethod
    def load(cls, path: str | Path) -> Transcript:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no transcript at {path}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not a transcript (not JSON: {e})") from None
        if not isinstance(data, dict) or data.get("version") != VERSION or "steps" not in data:
            raise ConfigError(f"{path} is not a lhama agent transcript (version {VERSION})")
        problem = transcript_problem(data)
        if problem:
            raise ConfigError(f"{path} is a malformed transcript: {problem}; save it again with --save")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    # -- views ---------------------------------------------------------------------------
    def tool_calls(self) -> list[dict]:
        return [s for s in self.steps if s["type"] == "tool"]

    def signature(self) -> list[tuple]:
        """What must come out the same on a replay: each step's kind and decisive content."""
        out = []
        for s in self.steps:
            if s["type"] == "model":
                m = s["message"]
                calls = [
                    (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in m.get("tool_calls") or []
                ]
                out.append(("model", m.get("content"), json.dumps(calls, sort_keys=True)))
            elif s["type"] == "tool":
                out.append(("tool", s["name"], s["result"]))
            elif s["type"] == "error":
                out.append(("error", s["message"]))
            else:
                out.append(("shield", s["role"], s["allowed"], tuple(s["categories"])))
        return out


# Keys each kind of step needs, with their types: what signature(), replay and the CLI read.
STEP_KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "model": {"message": dict, "token_ids": list},
    "tool": {"id": str, "name": str, "arguments": str, "result": str, "error": bool},
    "shield": {"role": str, "allowed": bool, "categories": list},
    "error": {"message": str},
}
TOP_KEYS: dict[str, type | tuple[type, ...]] = {
    "model": str,
    "tools": list,
    "config": dict,
    "messages": list,
    "steps": list,
    "final": (str, type(None)),
    "stopped": (str, type(None)),
}


def _keys_problem(obj: dict, keys: dict, where: str) -> str | None:
    for key, kind in keys.items():
        if key not in obj:
            return f"{where} has no '{key}'"
        if not isinstance(obj[key], kind):
            return f"{where}: '{key}' has the wrong type ({type(obj[key]).__name__})"
    return None


def _call_problem(call: Any, where: str) -> str | None:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments"), str):
        return f"{where} is not a tool call with function.name and function.arguments"
    try:
        json.loads(fn["arguments"])
    except ValueError:
        return f"{where}: arguments are not JSON"
    return None


def transcript_problem(data: dict) -> str | None:
    """What is wrong with a transcript's JSON (the first thing found), or None: checked up front,
    so a hand-edited or truncated file is one clear error, not a KeyError halfway through a replay."""
    problem = _keys_problem(data, TOP_KEYS, "the transcript")
    if problem:
        return problem
    for k, t in enumerate(data["tools"]):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or not (
            isinstance(fn, dict) and isinstance(fn.get("name"), str)
            if "function" in t
            else isinstance(t.get("type"), str)
        ):
            return f"tool {k} has neither a 'type' nor a function with a 'name'"
    if not all(isinstance(m, dict) for m in data["messages"]):
        return "every message must be an object"
    for k, s in enumerate(data["steps"]):
        kind = s.get("type") if isinstance(s, dict) else None
        if kind not in STEP_KEYS:
            return f"step {k} has no known 'type' (one of {', '.join(STEP_KEYS)})"
        problem = _keys_problem(s, STEP_KEYS[kind], f"step {k} ({kind})")
        if problem:
            return problem
        if kind == "tool":
            try:
                json.loads(s["arguments"])
            except ValueError:
                return f"step {k} (tool): arguments are not JSON"
        if kind == "model":
            calls = s["message"].get("tool_calls") or []
            if not isinstance(calls, list):
                return f"step {k} (model): tool_calls is not a list"
            for j, c in enumerate(calls):
                problem = _call_problem(c, f"step {k} (model), call {j}")
                if problem:
                    return problem
    return None


@dataclass
class ReplayReport:
    same: bool
    differences: list[str]

    def __str__(self) -> str:
        return "replay: identical" if self.same else "replay: differs\n" + "\n".join(self.differences)


def replay_tools(transcript: Transcript, tools) -> ReplayReport:
    """Run each recorded tool call again with ``tools`` (name → Tool) and compare results."""
    diffs = []
    for k, s in enumerate(transcript.tool_calls()):
        tool = tools.get(s["name"])
        if tool is None:
            diffs.append(f"call {k} ({s['name']}): no such tool now")
            continue
        try:
            result = tool(json.loads(s["arguments"]))
        except (ToolError, ValueError) as e:
            result = f"error: {e}"
        if result != s["result"]:
            diffs.append(f"call {k} ({s['name']}): result was {s['result'][:200]!r}, now {result[:200]!r}")
    return ReplayReport(not diffs, diffs)


def replay_session(transcript: Transcript, agent) -> tuple[ReplayReport, Transcript]:
    """Re-run the session from its starting messages on ``agent`` and compare every step."""
    result = agent.run(transcript.messages[-1:] if transcript.messages else [], history=transcript.messages[:-1])
    old, new = transcript.signature(), result.transcript.signature()
    diffs = [f"step {i}: was {a!r}, now {b!r}" for i, (a, b) in enumerate(zip(old, new)) if a != b]
    if len(old) != len(new):
        diffs.append(f"{len(old)} steps recorded, {len(new)} now")
    if transcript.stopped != result.stopped:
        diffs.append(f"stopped: was {transcript.stopped!r}, now {result.stopped!r}")
    return ReplayReport(not diffs, diffs), result.transcript
