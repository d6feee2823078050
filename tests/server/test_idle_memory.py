"""An idle server holds about what one ``lhama generate`` process does: its KV cache is sized to
need and committed only as blocks are written (issue 14, item 3)."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil
import pytest
from openai import OpenAI

from tests.serving import MODEL, ServerProcess

# The peak RSS of one `lhama generate` child, read from a fresh parent whose only child it is.
_GENERATE_PEAK = """import json, resource, subprocess, sys
subprocess.run([sys.executable, "-m", "lhama.cli", "generate", "Once upon a time", "--max-tokens", "16",
                "--temperature", "0"], check=True, capture_output=True)
print(json.dumps(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))
"""


# Slow job: a memory figure (bench/ holds the target); two processes, ~16 s.
@pytest.mark.slow
def test_idle_server_rss_is_near_one_generate_process(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", _GENERATE_PEAK], check=False, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    generate_peak = json.loads(out.stdout.strip().splitlines()[-1])

    srv = ServerProcess(tmp_path)
    try:
        client = OpenAI(base_url=srv.base, api_key="unused", max_retries=0, timeout=120)
        r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=16, temperature=0)
        assert r.choices[0].text
        rss = psutil.Process(srv.proc.pid).memory_info().rss
    finally:
        srv.stop()
    # Issue 14 asks for <= 1.5x; the server also holds FastAPI, uvicorn and the OpenAI schemas.
    assert rss <= 1.5 * generate_peak, f"idle server {rss / 2**20:.0f} MiB vs generate {generate_peak / 2**20:.0f} MiB"
