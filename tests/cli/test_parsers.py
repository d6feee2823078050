"""The parsers themselves: cheap to build (no torch, no stack), every flag documented with its
default, ``--version``, and the command table as the one list of commands."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import lhama
from lhama.cli import COMMANDS, build_parser

HEAVY = ("torch", "numpy", "fastapi", "uvicorn", "transformers", "lhama.model", "lhama.engine", "lhama.generate")


def _subparsers(parser: argparse.ArgumentParser, path=("lhama",)):
    """(command path, parser) for every parser under ``parser``, nested ones (rag add ...) included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, (*path, name))


def test_building_every_parser_imports_no_torch():
    code = (
        "import sys; from lhama.cli import build_parser; build_parser(); "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_help_of_every_command_runs_without_torch():
    # `python -X importtime` lists every module the process imported, on stderr.
    for name in ["", *COMMANDS]:
        r = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "lhama.cli", *([name] if name else []), "--help"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, (name, r.stderr[-2000:])
        imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if "|" in line}
        assert not imported & set(HEAVY), (name, imported & set(HEAVY))
        assert "usage: lhama" in r.stdout


def test_import_lhama_is_light():
    r = subprocess.run(
        [sys.executable, "-c", "import sys, lhama; print('torch' in sys.modules)"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout.strip() == "False", r.stderr


def test_version():
    r = subprocess.run(
        [sys.executable, "-m", "lhama.cli", "--version"], check=False, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout.strip() == f"lhama {lhama.__version__}"


def test_every_flag_has_a_help_line_and_shows_its_default():
    undocumented, no_default = [], []
    for path, parser in _subparsers(build_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            where = f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}"
            if not (action.help or "").strip():
                undocumented.append(where)
            given = not (
                action.default is None
                or action.default is False
                or action.default == []
                or action.default is argparse.SUPPRESS
            )  # `is`: 0 and 0.0 are defaults to show
            shown = given and action.option_strings
            said = re.escape(f"default: {action.default}") + r"(?![\w.])"  # 0 is not 0.6
            if shown and not re.search(said, " ".join(text.split())):
                no_default.append(f"{where} (default {action.default!r})")
    assert not undocumented, "flags without help:\n" + "\n".join(undocumented)
    assert not no_default, "--help does not show these defaults:\n" + "\n".join(no_default)


def test_the_table_names_every_command_once():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(COMMANDS)
    for name, (_, _, help_line) in COMMANDS.items():
        runnable = [p for _, p in _subparsers(sub.choices[name]) if p.get_default("func") is not None]
        assert runnable and help_line, name
    # main() fills in only the command it runs; the others stay a help line.
    only = build_parser(only="plan")
    sub = next(a for a in only._actions if isinstance(a, argparse._SubParsersAction))
    assert sub.choices["plan"].get_default("func") is not None
    assert sub.choices["chat"].get_default("func") is None and len(sub.choices["chat"]._actions) == 1
