"""``lhama agent``: one-shot (``lhama agent "question" --tools code_interpreter``), interactive
(no question: one turn per line, history kept; /reset, /exit), or replay of a saved transcript
(``--replay FILE``: re-run its tools; with ``--rerun``, re-run the whole session on the model
and check that the same steps come out). Streams the answer, tool calls and their results."""

from __future__ import annotations

import argparse
import sys

from lhama.cli.args import (
    add_kv_cache_dtype_arg,
    add_model_args,
    add_sampling_args,
    apply_kv_cache_dtype,
    load_model_from_args,
)

AGENT_SAMPLING = ("max_tokens", "temperature", "top_p", "seed")  # what AgentConfig takes


def add_agent_args(p: argparse.ArgumentParser) -> None:
    from lhama.safety.spec import add_shield_args

    p.description = (
        "Run the model in a loop with tools: model -> tool call -> execute -> result -> model, "
        "until it answers or --max-steps."
    )
    p.add_argument("question", nargs="?", help="ask once and exit (default: interactive, one turn per line)")
    add_model_args(p)
    add_kv_cache_dtype_arg(p)
    p.add_argument(
        "--tools",
        default="code_interpreter",
        help="comma-separated built-ins: code_interpreter, brave_search, wolfram_alpha, or 'none'",
    )
    p.add_argument(
        "--tool",
        action="append",
        default=[],
        metavar="MODULE:NAME",
        help="a custom tool: a lhama.tools.Tool or function NAME in MODULE (a module name or a "
        ".py file), e.g. my_tools.py:get_weather (repeatable)",
    )
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-steps", type=int, default=8, help="model calls per question")
    add_sampling_args(p, only=AGENT_SAMPLING)  # --max-tokens is per model call
    p.add_argument("--save", help="write the transcript (JSON) here after each question")
    p.add_argument("--replay", metavar="FILE", help="replay a saved transcript instead of asking")
    p.add_argument("--rerun", action="store_true", help="with --replay: re-run the model too, not only the tools")
    p.add_argument("--quiet", action="store_true", help="print only the final answer")
    add_shield_args(p)  # --shield KIND=PATH and its options, as in lhama serve
    p.set_defaults(func=run_agent)


def _tools(spec: str):
    from lhama.tools.builtin import builtin_tool

    names = [n.strip() for n in (spec or "").split(",") if n.strip() and n.strip() != "none"]
    return [builtin_tool(n) for n in names]


def _custom_tools(specs: list[str]):
    """``MODULE:NAME`` -> Tool, importing MODULE by name or from a .py file."""
    import importlib
    import importlib.util
    from pathlib import Path

    from lhama.errors import ToolError
    from lhama.tools.builtin import as_tool

    out = []
    for spec in specs:
        mod_name, _, attr = spec.rpartition(":")
        if not mod_name or not attr:
            raise ToolError(f"--tool {spec!r}: write MODULE:NAME, e.g. my_tools.py:get_weather")
        try:
            if mod_name.endswith(".py"):
                path = Path(mod_name)
                if not path.is_file():
                    raise ToolError(f"--tool {spec!r}: no file {path}")
                loader_spec = importlib.util.spec_from_file_location(path.stem, path)
                module = importlib.util.module_from_spec(loader_spec)
                loader_spec.loader.exec_module(module)
            else:
                module = importlib.import_module(mod_name)
        except ImportError as e:
            raise ToolError(f"--tool {spec!r}: cannot import {mod_name}: {e}") from None
        if not hasattr(module, attr):
            raise ToolError(f"--tool {spec!r}: {mod_name} has no {attr!r}")
        out.append(as_tool(getattr(module, attr)))
    return out


class Printer:
    """Streams agent events to the terminal: answer text on stdout, tool traffic on stderr."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __call__(self, e) -> None:
        if self.quiet:
            return
        if e.type == "content":
            sys.stdout.write(e.data["text"])
            sys.stdout.flush()
        elif e.type == "tool_call":
            print(f"\n[tool call] {e.data['name']}({e.data['arguments']})", file=sys.stderr, flush=True)
        elif e.type == "tool_result":
            text = e.data["result"]
            print(f"[tool result] {text if len(text) < 2000 else text[:2000] + ' ...'}", file=sys.stderr, flush=True)
        elif e.type == "shield" and not e.data["allowed"]:
            print(
                f"[shield] {e.data['shield']} refused the {e.data['role']} turn: {', '.join(e.data['categories'])}",
                file=sys.stderr,
                flush=True,
            )
        elif e.type == "done":
            if e.data["stopped"].startswith("shield"):
                sys.stdout.write(e.data["content"])
            sys.stdout.write("\n")
            if e.data["stopped"] not in ("end_of_turn",):
                print(f"[stopped: {e.data['stopped']}]", file=sys.stderr, flush=True)


def run_agent(a) -> int:
    from lhama.errors import ConfigError
    from lhama.tools.agent import Agent, AgentConfig
    from lhama.tools.builtin import builtin_tool
    from lhama.tools.registry import BUILTIN_NAMES
    from lhama.tools.transcript import Transcript, replay_session, replay_tools

    config = AgentConfig(
        max_steps=a.max_steps, max_tokens=a.max_tokens, temperature=a.temperature, seed=a.seed, system=a.system
    )
    tools = _tools(a.tools) + _custom_tools(a.tool)
    if a.replay and not a.rerun:
        tr = Transcript.load(a.replay)
        names = {t["type"] if "function" not in t else t["function"]["name"] for t in tr.tools}
        by_name = {t.name: t for t in tools}
        for n in names & set(BUILTIN_NAMES):
            by_name.setdefault(n, builtin_tool(n))
        report = replay_tools(tr, by_name)
        print(report)
        return 0 if report.same else 1
    from lhama.safety.spec import shields_from_args

    shields = shields_from_args(a)
    apply_kv_cache_dtype(a)  # the Agent builds its engine with the default config
    lm = load_model_from_args(a)
    if a.replay:
        tr = Transcript.load(a.replay)
        config = AgentConfig(**{k: v for k, v in tr.config.items() if k in AgentConfig.__dataclass_fields__})
        recorded = [t["type"] if "function" not in t else t["function"]["name"] for t in tr.tools]
        given = {t.name: t for t in tools}
        missing = [n for n in recorded if n not in given and n not in BUILTIN_NAMES]
        if missing:
            raise ConfigError(f"this transcript used custom tools {missing}: pass them with --tool MODULE:NAME")
        agent = Agent(lm, [given.get(n) or builtin_tool(n) for n in recorded], shields=shields, config=config)
        report, _ = replay_session(tr, agent)
        print(report)
        return 0 if report.same else 1
    agent = Agent(lm, tools, shields=shields, config=config)
    printer = Printer(a.quiet)
    if a.question:
        res = agent.run(a.question, on_event=printer)
        if a.quiet:
            print(res.content)
        if a.save:
            res.transcript.save(a.save)
        return 0
    history: list[dict] = []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stderr.write(">>> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            history = []
            continue
        res = agent.run(line, history=history, on_event=printer)
        if a.quiet:
            print(res.content)
        history = res.messages
        if a.save:
            res.transcript.save(a.save)
