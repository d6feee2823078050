"""Tools around the model: tool-call formats and the streaming parser, built-in tools (sandboxed
code interpreter, Brave Search, Wolfram Alpha), custom tools, and the agent loop.

    from lhama.tools import Agent, tool, builtin_tool, run_python

Names are imported on first use, so ``lhama.tools.sandbox`` stays light (no torch) for the
evaluation and training code that only runs code in the sandbox.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Agent": "agent",
    "AgentConfig": "agent",
    "AgentEvent": "agent",
    "AgentResult": "agent",
    "Tool": "registry",
    "tool": "registry",
    "as_tool": "builtin",
    "builtin_tool": "builtin",
    "BraveSearch": "builtin",
    "WolframAlpha": "builtin",
    "CodeInterpreter": "builtin",
    "run_python": "sandbox",
    "SandboxLimits": "sandbox",
    "SandboxResult": "sandbox",
    "ToolCallStreamParser": "stream_parser",
    "Transcript": "transcript",
    "replay_tools": "transcript",
    "replay_session": "transcript",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lhama.tools.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lhama.tools' has no attribute {name!r}")
