"""``lhama chat`` on a real terminal (a pty): readline line editing and history (arrow-up
recalls a line of an earlier session from the history file, and a line typed in this one), a
hint on Ctrl-C at an empty prompt, and a quiet exit 0 on a second Ctrl-C.

Each Ctrl-C is typed the moment the prompt shows, and the chat runs with ``select()`` slowed
down (an LD_PRELOAD shim, below): every Ctrl-C lands after readline drew the prompt and before
it waits for input, the window where CPython's readline used to lose it (the chat then slept
until the next key; ``lhama.cli.chat.input_noticing_ctrl_c``). So the race is hit on every
run instead of once in a while on a loaded machine."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from tests import needs

UP = b"\x1b[A"
SET = b"(system prompt set; conversation cleared)"
CLEARED = b"(conversation cleared)"

# In the child, a new session (start_new_session) takes the pty as its controlling terminal,
# so Ctrl-C typed there sends SIGINT as on a real terminal; then it becomes `lhama chat`.
# SIGINT back to its default first: a suite started in the background of a non-interactive
# shell (`cmd &`, some CI runners) ignores SIGINT, exec keeps that, and Python then leaves it ignored.
LAUNCH = (
    "import fcntl, os, signal, sys, termios; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'lhama.cli', 'chat', *sys.argv[1:]])"
)

# select() on the terminal (fd 0) starts 0.25 s late: readline has drawn the prompt by then.
SLOW_SELECT = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/select.h>
#include <time.h>
int select(int n, fd_set *r, fd_set *w, fd_set *e, struct timeval *t) {
    static int (*real)(int, fd_set *, fd_set *, fd_set *, struct timeval *);
    if (!real) real = (int (*)(int, fd_set *, fd_set *, fd_set *, struct timeval *))dlsym(RTLD_NEXT, "select");
    if (n == 1 && r && FD_ISSET(0, r)) {
        struct timespec ts = {0, 250000000}, left;
        int saved = errno;
        while (nanosleep(&ts, &left) == -1 && errno == EINTR) ts = left;
        errno = saved;
    }
    return real(n, r, w, e, t);
}
"""


@pytest.fixture(scope="module")
def slow_select(tmp_path_factory) -> str:
    cxx = needs.binary("g++", "g++")
    d = tmp_path_factory.mktemp("slow-select")
    (d / "slow_select.c").write_text(SLOW_SELECT)
    lib = d / "slow_select.so"
    subprocess.run(
        [cxx, "-x", "c", "-shared", "-fPIC", "-O1", "-o", str(lib), str(d / "slow_select.c"), "-ldl"],
        check=True,
        timeout=120,
    )
    return str(lib)


class Terminal:
    def __init__(self, *args: str, preload: str | None = None):
        master, slave = pty.openpty()
        env = {**os.environ, "TERM": "xterm", "INPUTRC": "/dev/null"}
        if preload:
            env["LD_PRELOAD"] = preload
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
        os.close(slave)
        self.fd, self.seen = master, b""

    def expect(self, text: bytes, count: int = 1, timeout: float = 120) -> None:
        """Read until ``text`` has been shown ``count`` times in all."""
        end = time.monotonic() + timeout
        while self.seen.count(text) < count:
            left = end - time.monotonic()
            assert left > 0, f"timed out waiting for {text!r} x{count}; screen:\n{self.seen.decode(errors='replace')}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                assert chunk, f"the chat ended before {text!r}; screen:\n{self.seen.decode(errors='replace')}"
                self.seen += chunk

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def exit_code(self, timeout: float = 60) -> int:
        """The exit status; the terminal is read meanwhile, so the child never blocks writing."""
        end = time.monotonic() + timeout
        try:
            while self.proc.poll() is None:
                assert time.monotonic() < end, f"still running; screen:\n{self.seen.decode(errors='replace')}"
                if select.select([self.fd], [], [], 0.1)[0]:
                    try:
                        self.seen += os.read(self.fd, 4096)
                    except OSError:
                        pass
            return self.proc.returncode
        finally:
            os.close(self.fd)
            if self.proc.poll() is None:
                self.proc.kill()


def test_history_line_editing_and_ctrl_c_typed_as_the_prompt_shows(tmp_path, slow_select):
    history = tmp_path / "history"
    history.write_text("/system be brief\n")  # an earlier session's line
    t = Terminal("--model", "tiny-llama3", "--history-file", str(history), preload=slow_select)
    t.expect(b">>> ")
    t.send(UP + b"\r")  # recalled from the history file
    t.expect(SET)
    t.expect(b">>> ", 2)
    t.send(b"/reset\r")
    t.expect(CLEARED)
    t.expect(b">>> ", 3)
    t.send(UP + b"\r")  # the line just typed, recalled
    t.expect(CLEARED, 2)
    t.expect(b">>> ", 4)
    t.send(b"\x03")  # Ctrl-C at an empty prompt: a hint, not an exit
    t.expect(b"type /exit", timeout=30)
    t.expect(b">>> ", 5)
    assert t.proc.poll() is None
    t.send(b"\x03")  # twice: leave
    assert t.exit_code() == 0
    assert "Traceback" not in t.seen.decode(errors="replace")
    assert history.read_text().split("\n")[:2] == ["/system be brief", "/reset"]


def test_the_wake_up_timer_runs_only_while_the_prompt_waits(monkeypatch):
    import builtins
    import signal

    from lhama.cli.chat import WAKE_S, input_noticing_ctrl_c

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGALRM, mine)
    seen = []
    monkeypatch.setattr(builtins, "input", lambda prompt: seen.append(signal.getitimer(signal.ITIMER_REAL)) or "hi")
    try:
        assert input_noticing_ctrl_c(">>> ") == "hi"
        assert seen[0][1] == pytest.approx(WAKE_S)  # armed, repeating, while input() waits
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) is mine
        monkeypatch.setattr(builtins, "input", lambda prompt: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            input_noticing_ctrl_c(">>> ")
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) is mine
    finally:
        signal.signal(signal.SIGALRM, previous)
