"""`lhama serve --replicas 2`: two server replicas (Ray actors) behind one endpoint, driven with
the real openai client, streaming included."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.slow  # a local Ray cluster and two model servers: ~1-2 min on the shared machine


def test_two_replicas_behind_one_endpoint(tmp_path):
    import openai

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lhama.cli",
            "serve",
            "--model",
            "tiny-llama3",
            "--replicas",
            "2",
            "--port",
            "0",
            "--kv-cache-gb",
            "0.05",
            "--api-key",
            "k",
            "--data-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        port, deadline, log = None, time.time() + 400, []
        while port is None and time.time() < deadline:
            line = proc.stdout.readline()
            log.append(line)
            m = re.search(r"behind http://127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else None
            assert proc.poll() is None, "".join(log)
        assert port, "".join(log)
        base = f"http://127.0.0.1:{port}"
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="k")
        texts, replicas = set(), set()
        for _ in range(4):
            raw = client.completions.with_raw_response.create(
                model="tiny-llama3", prompt="Hello there", max_tokens=6, temperature=0
            )
            replicas.add(raw.headers["x-lhama-replica"])
            texts.add(raw.parse().choices[0].text)
        assert replicas == {"0", "1"}  # both replicas served
        assert len(texts) == 1  # the same weights (same seed) answer the same
        stream = client.chat.completions.create(
            model="tiny-llama3", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0, stream=True
        )
        assert sum(1 for _ in stream) >= 2
        assert httpx.get(f"{base}/v1/models").status_code == 401  # the replicas' API key check passes through
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
