"""The interactive chat of ``lhama chat``: multi-turn, streaming, with a few slash commands."""

from __future__ import annotations

import sys
from typing import TextIO

from lhama.errors import LhamaError
from lhama.generate import SamplingParams, stream_text

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt), /exit"


class ChatSession:
    """Keeps the conversation; each turn renders it with the model's chat format."""

    def __init__(self, loaded, params: SamplingParams, system: str | None = None, speculation=None):
        self.lm = loaded
        self.speculation = speculation  # lhama.generate.speculative.Speculation, or None
        self.params = params
        self.system = system
        self.messages: list[dict] = []

    def reset(self) -> None:
        self.messages = []

    def _dialog(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.messages

    def reply(self, user_text: str):
        """Stream the assistant's answer to ``user_text`` as text deltas; the turn is kept."""
        self.messages.append({"role": "user", "content": user_text})
        fmt = self.lm.chat_format
        ids = fmt.encode_dialog(self._dialog())
        room = self.lm.context_length - len(ids)
        params = self.params.with_(max_tokens=max(1, min(self.params.max_tokens, room)))
        gen_ids: list[int] = []
        try:
            for d in stream_text(self.lm.model, self.lm.tokenizer, ids, params, stop_ids=fmt.stop_ids,
                                 speculation=self.speculation):
                gen_ids += d.token_ids
                yield d.text
        except BaseException:
            self.messages.pop()  # a failed or interrupted turn leaves no half message behind
            raise
        msg = fmt.decode_assistant(gen_ids)
        self.messages.append({"role": "assistant", "content": msg.get("content") or "",
                              **({"tool_calls": msg["tool_calls"]} if msg.get("tool_calls") else {})})


def run_chat(loaded, params: SamplingParams, system: str | None = None,
             stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, speculation=None) -> int:
    session = ChatSession(loaded, params, system, speculation)
    tty = stdin.isatty()
    print(f"lhama chat with {loaded.name} ({loaded.args.n_layers} layers, context {loaded.context_length}). {HELP}",
          file=stdout)
    while True:
        if tty:
            stdout.write(">>> ")
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() in ("/exit", "/quit", "/bye"):
            break
        if text.strip() == "/reset":
            session.reset()
            print("(conversation cleared)", file=stdout)
            continue
        if text.startswith("/system"):
            session.system = text[len("/system"):].strip() or None
            session.reset()
            print(f"(system prompt {'set' if session.system else 'cleared'}; conversation cleared)", file=stdout)
            continue
        if text.startswith("/"):
            print(f"unknown command {text.split()[0]}; {HELP}", file=stdout)
            continue
        try:
            for delta in session.reply(text):
                stdout.write(delta)
                stdout.flush()
        except KeyboardInterrupt:
            stdout.write("\n(interrupted)")
        except LhamaError as e:
            stdout.write(f"error: {e}")
        stdout.write("\n")
        stdout.flush()
    return 0
