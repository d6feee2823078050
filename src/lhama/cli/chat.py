"""The interactive chat of ``lhama chat``: multi-turn, streaming, with a few slash commands.
On a terminal, lines are read with readline (editing, arrow-up history kept in a file)."""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TextIO

from lhama.errors import LhamaError
from lhama.generate import SamplingParams, stream_text

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt), /exit"


class ChatSession:
    """Keeps the conversation; each turn renders it with the model's chat format."""

    def __init__(
        self, loaded, params: SamplingParams, system: str | None = None, speculation=None, kv_cache_dtype=None
    ):
        self.lm = loaded
        self.kv_cache_dtype = kv_cache_dtype  # what the reference loop's cache stores (None: auto)
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
            for d in stream_text(
                self.lm.model,
                self.lm.tokenizer,
                ids,
                params,
                stop_ids=fmt.stop_ids,
                speculation=self.speculation,
                kv_cache_dtype=self.kv_cache_dtype,
            ):
                gen_ids += d.token_ids
                yield d.text
        except BaseException:
            self.messages.pop()  # a failed or interrupted turn leaves no half message behind
            raise
        msg = fmt.decode_assistant(gen_ids)
        self.messages.append(
            {
                "role": "assistant",
                "content": msg.get("content") or "",
                **({"tool_calls": msg["tool_calls"]} if msg.get("tool_calls") else {}),
            }
        )


def default_history_file() -> Path:
    """``$XDG_STATE_HOME/lhama/chat_history`` (``~/.local/state`` when unset), as the XDG base
    directory spec places history."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "lhama" / "chat_history"


class LineReader:
    """Reads one line per call: ``input()`` with readline on a terminal, plain reads otherwise.
    Returns None at end of input (Ctrl-D). Ctrl-C at the prompt raises KeyboardInterrupt."""

    def __init__(self, stdin: TextIO, stdout: TextIO, history_file: str | None):
        self.stdin, self.stdout = stdin, stdout
        self.tty = stdin.isatty() and stdin is sys.stdin and stdout is sys.stdout
        self.readline = None
        self.history = None
        if self.tty:
            try:
                import readline
            except ImportError:  # a Python built without it: plain input() still works
                return
            self.readline = readline
            self.history = (
                default_history_file() if history_file is None else (Path(history_file) if history_file else None)
            )
            if self.history is not None and self.history.is_file():
                try:
                    readline.read_history_file(self.history)
                except OSError:
                    pass
            readline.set_history_length(1000)

    def read(self) -> str | None:
        if self.tty:
            try:
                return input_noticing_ctrl_c(">>> ")
            except EOFError:
                self.stdout.write("\n")
                return None
        line = self.stdin.readline()
        return line.rstrip("\n") if line else None

    def save(self) -> None:
        if self.readline is None or self.history is None:
            return
        try:
            self.history.parent.mkdir(parents=True, exist_ok=True)
            self.readline.write_history_file(self.history)
        except OSError as e:
            print(f"(could not save the chat history to {self.history}: {e})", file=sys.stderr)


# How long a Ctrl-C may wait to be noticed at the prompt (see input_noticing_ctrl_c).
WAKE_S = 0.2


def input_noticing_ctrl_c(prompt: str) -> str:
    """``input(prompt)`` with readline, where a Ctrl-C always raises KeyboardInterrupt.

    CPython's readline draws the prompt, then waits in ``select()`` with no timeout and looks at
    pending signals only when ``select()`` is interrupted. A SIGINT that lands between the two
    (the process descheduled right after drawing the prompt: a loaded machine, or a script that
    types Ctrl-C as soon as the prompt shows) only sets Python's flag, and ``select()`` then
    sleeps until the next key press. A no-op SIGALRM every ``WAKE_S`` while the prompt waits
    interrupts ``select()``, so the pending KeyboardInterrupt is raised within ``WAKE_S``."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        return input(prompt)  # signals (and timers) belong to the main thread; no timers on Windows
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    signal.setitimer(signal.ITIMER_REAL, WAKE_S, WAKE_S)
    try:
        return input(prompt)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


EXIT_HINT = "(type /exit or press Ctrl-D to leave; Ctrl-C again quits)"


def run_chat(
    loaded,
    params: SamplingParams,
    system: str | None = None,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    speculation=None,
    history_file: str | None = None,
    kv_cache_dtype: str | None = None,
) -> int:
    """The chat loop. ``history_file``: None for the default place, '' for no history."""
    gc.enable()  # off while lhama chat started up (lhama.cli.main); a session can go on for long
    session = ChatSession(loaded, params, system, speculation, kv_cache_dtype)
    reader = LineReader(stdin, stdout, history_file)
    print(
        f"lhama chat with {loaded.name} ({loaded.args.n_layers} layers, context {loaded.context_length}). {HELP}",
        file=stdout,
    )
    try:
        return _loop(session, reader, stdout)
    finally:
        reader.save()


def _loop(session: ChatSession, reader: LineReader, stdout: TextIO) -> int:
    interrupts = 0
    while True:
        try:
            text = reader.read()
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts > 1:
                stdout.write("\n")
                return 0
            stdout.write(f"\n{EXIT_HINT}\n")
            stdout.flush()
            continue
        interrupts = 0
        if text is None:
            return 0
        if not text.strip():
            continue
        if text.strip() in ("/exit", "/quit", "/bye"):
            return 0
        if text.strip() == "/reset":
            session.reset()
            print("(conversation cleared)", file=stdout)
            continue
        if text.startswith("/system"):
            session.system = text[len("/system") :].strip() or None
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
