"""`lhama serve --tp 2` on loopback: rank 0 serves, rank 1 (started by rank 0) follows; the real
openai client gets the single-process model's greedy completion."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.slow  # two model processes and a server: ~45 s here; test_tp.py is the fast variant


def test_serve_tp2_answers_like_one_process():
    import openai

    from lhama.generate import SamplingParams, generate
    from lhama.loader import load_model

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lhama.cli",
            "serve",
            "--model",
            "tiny-llama3",
            "--tp",
            "2",
            "--port",
            "0",
            "--kv-cache-gb",
            "0.05",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        port, deadline, log = None, time.time() + 240, []
        while port is None and time.time() < deadline:
            line = proc.stdout.readline()
            log.append(line)
            m = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            port = int(m.group(1)) if m else None
            assert proc.poll() is None, "".join(log)
        assert port, "".join(log)
        assert any("tensor parallel: 2 ranks" in x for x in log)
        followers = psutil.Process(proc.pid).children()
        assert len(followers) == 1
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
        r = client.completions.create(model="tiny-llama3", prompt="Hello there", max_tokens=8, temperature=0)
        lm = load_model("tiny-llama3")
        ids = lm.tokenizer.encode("Hello there", bos=True)
        ref = generate(lm.model, lm.tokenizer, ids, SamplingParams(temperature=0, max_tokens=8))
        assert r.choices[0].text == ref.text
        emb = client.embeddings.create(model="tiny-llama3", input="Hello there")  # a forward outside the engine
        assert len(emb.data[0].embedding) == 64
        r2 = client.completions.create(model="tiny-llama3", prompt="Hello there", max_tokens=8, temperature=0)
        assert r2.choices[0].text == ref.text  # ranks still in step afterwards
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        followers[0].wait(timeout=60)  # told to stop by rank 0, not orphaned
    finally:
        if proc.poll() is None:
            proc.kill()
