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
    def start(cls, model: str, tools: list[dict], config, messages: list[dict]) -> "Transcript":
        cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
        return cls(model, tools, cfg, json.loads(json.dumps(messages, default=str)))

    def model_step(self, message: dict, token_ids: list[int]) -> None:
        self.steps.append({"type": "model", "message": message, "token_ids": list(token_ids)})

    def tool_step(self, call_id: str, name: str, arguments: Any, result: str, error: bool) -> None:
        self.steps.append({"type": "tool", "id": call_id, "name": name,
                           "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                           "result": result, "error": error})

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
    def load(cls, path: str | Path) -> "Transcript":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no transcript at {path}") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not a transcript (not JSON: {e})") from None
        if not isinstance(data, dict) or data.get("version") != VERSION or "steps" not in data:
            raise ConfigError(f"{path} is not a lhama agent transcript (version {VERSION})")
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
                calls = [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                         for c in m.get("tool_calls") or []]
                out.append(("model", m.get("content"), json.dumps(calls, sort_keys=True)))
            elif s["type"] == "tool":
                out.append(("tool", s["name"], s["result"]))
            elif s["type"] == "error":
                out.append(("error", s["message"]))
            else:
                out.append(("shield", s["role"], s["allowed"], tuple(s["categories"])))
        return out


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
    result = agent.run(transcript.messages[-1:] if transcript.messages else [],
                       history=transcript.messages[:-1])
    old, new = transcript.signature(), result.transcript.signature()
    diffs = [f"step {i}: was {a!r}, now {b!r}" for i, (a, b) in enumerate(zip(old, new)) if a != b]
    if len(old) != len(new):
        diffs.append(f"{len(old)} steps recorded, {len(new)} now")
    if transcript.stopped != result.stopped:
        diffs.append(f"stopped: was {transcript.stopped!r}, now {result.stopped!r}")
    return ReplayReport(not diffs, diffs), result.transcript
