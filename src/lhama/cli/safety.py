"""``lhama safety check``: run shields on a message (or a JSON conversation) from the terminal,
the quickest way to see what a guard checkpoint says before putting it in front of a server."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lhama.cli.args import Parser


def add_safety_args(p: argparse.ArgumentParser) -> None:
    from lhama.safety.spec import add_shield_args

    p.description = "Check text with safety shields (see docs/safety.md)."
    sub = p.add_subparsers(dest="safety_command", required=True, parser_class=Parser)
    c = sub.add_parser("check", help="judge a message or a conversation")
    c.add_argument("text", nargs="?", help="the message to check (or use --messages)")
    c.add_argument("--messages", type=Path, help="a JSON file with an OpenAI-style message list")
    c.add_argument(
        "--role",
        choices=["user", "assistant"],
        default="user",
        help="judge the last user turn (input check) or the last assistant turn (output check)",
    )
    c.add_argument("--json", action="store_true", help="print each verdict as JSON")
    c.add_argument("--prompt", action="store_true", help="print the Llama Guard prompt instead of running it")
    add_shield_args(c)
    c.set_defaults(func=cmd_check)


def _messages(a) -> list[dict]:
    from lhama.safety.base import ShieldConfigError

    if a.messages:
        try:
            msgs = json.loads(a.messages.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ShieldConfigError(f"--messages {a.messages}: {e}") from None
        if isinstance(msgs, dict):
            msgs = msgs.get("messages")
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            raise ShieldConfigError(f"--messages {a.messages}: expected a list of {{role, content}} objects")
        return msgs
    if a.text is None:
        raise ShieldConfigError("give the text to check, or --messages FILE")
    return [{"role": a.role, "content": a.text}]


def cmd_check(a) -> int:
    from lhama.safety.base import ShieldConfigError
    from lhama.safety.spec import shields_from_args

    if not a.shield:
        raise ShieldConfigError("name at least one shield: --shield llama-guard=PATH or --shield prompt-guard=PATH")
    messages = _messages(a)
    refused = False
    for shield in shields_from_args(a):
        if a.prompt and hasattr(shield, "prompt_text"):
            print(shield.prompt_text(messages, a.role))
            continue
        v = shield.check(messages, role=a.role)
        refused |= not v.allowed
        if a.json:
            print(json.dumps(v.to_dict(), ensure_ascii=False))
        else:
            what = "allowed" if v.allowed else f"REFUSED {', '.join(v.categories) or ''}".rstrip()
            print(f"{v.shield}: {what}" + (f"  ({v.message})" if v.message else ""))
    sys.stdout.flush()
    return 1 if refused else 0
