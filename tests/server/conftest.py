"""Real servers for the server tests: ``python -m lhama.server`` subprocesses on 127.0.0.1 with
a free port, the real default model, and a data dir under the test's tmp dir."""

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
import pytest

MODEL = "SmolLM2-135M-Instruct.Q4_1"
READY = re.compile(r"lhama: serving .* on (http://127\.0\.0\.1:\d+)")


class ServerProcess:
    """A running server; its combined output is kept in ``log`` for failure messages."""

    def __init__(self, data_dir: Path, *args: str, timeout: float = 180, module: str = "lhama.server"):
        cmd = [
            sys.executable,
            "-m",
            module,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--log-level",
            "warning",
            *args,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.url: str | None = None
        ready = threading.Event()

        def reader():
            for line in self.proc.stdout:
                self.lines.append(line)
                m = READY.search(line)
                if m and self.url is None:
                    self.url = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=reader, daemon=True).start()
        if not ready.wait(timeout) or self.url is None:
            self.stop()
            raise RuntimeError(f"server did not start:\n{self.log}")
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
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30) -> int:
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
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


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One shared server for the tests that need no special flags."""
    srv = ServerProcess(tmp_path_factory.mktemp("server-data"))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.base, api_key="unused", max_retries=0, timeout=120)
