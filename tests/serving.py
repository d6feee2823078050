"""Real servers for the tests: ``lhama serve`` (or ``python -m lhama.server``) subprocesses on
127.0.0.1 with a free port, the real default model, and a data dir under the test's tmp dir.

One helper for every test package: the session-scoped ``server`` and ``client`` fixtures in
tests/conftest.py share one default server across the whole run; tests that need special flags
start their own ``ServerProcess`` (the Ray Serve tests subclass it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

MODEL = "SmolLM2-135M-Instruct.Q4_1"
READY = re.compile(r"lhama: serving .* on (http://127\.0\.0\.1:\d+)")


class ServerProcess:
    """A running server; its combined output is kept in ``log`` for failure messages.

    Subclasses may set ``ready`` (the line that carries the URL), ``stop_signal``, ``new_session``
    (its own process group, killed as a whole if it does not stop) and ``wait_healthy`` (poll
    /health after the ready line), and build their own command with ``_start``."""

    ready = READY
    stop_signal = signal.SIGTERM
    new_session = False
    wait_healthy = True

    def __init__(self, data_dir: Path, *args: str, timeout: float = 180, module: str = "lhama.server"):
        cmd = [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--data-dir", str(data_dir), "--log-level", "warning", *args]
        self._start(cmd, os.environ, timeout)

    def _start(self, cmd: list[str], env, timeout: float) -> None:
        self.data_dir = Path(cmd[cmd.index("--data-dir") + 1]) if "--data-dir" in cmd else None
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**env, "PYTHONUNBUFFERED": "1"},
            start_new_session=self.new_session,
        )
        self.lines: list[str] = []
        self.url: str | None = None
        ready = threading.Event()

        def reader():
            for line in self.proc.stdout:
                self.lines.append(line)
                m = self.ready.search(line)
                if m and self.url is None:
                    self.url = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=reader, daemon=True).start()
        if not ready.wait(timeout) or self.url is None:
            self.stop()
            raise RuntimeError(f"server did not start:\n{self.log}")
        if not self.wait_healthy:
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server never became healthy:\n{self.log}")

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def base(self) -> str:
        return self.url + "/v1"

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)

    def stop(self, timeout: float = 30) -> int:
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if self.new_session:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()
            return self.proc.wait(10)

    def metrics(self) -> dict[str, float]:
        """Unlabelled samples of /metrics (and labelled ones under their full text)."""
        out = {}
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


def wait_for(predicate, timeout: float = 30, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
