"""``lhama eval`` as a user runs it: a real subprocess killed mid-run and resumed, the report
files, the shipped task list and typed errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lhama.eval import EvalConfig, EvalContext, load_task, run_task

PY = [sys.executable, "-m", "lhama.cli"]


def _ppl_task(tmp_path, n=30) -> Path:
    words = "the market opens early and farmers bring apples bread eggs and honey to the square".split()
    p = tmp_path / "docs.jsonl"
    p.write_text(
        "".join(
            json.dumps({"id": f"d{i}", "text": " ".join(words[i % 7 :] + words[: i % 7] * 3)}) + "\n" for i in range(n)
        )
    )
    return p


# Slow job: a killed and resumed eval subprocess (~13 s).
@pytest.mark.slow
def test_killed_subprocess_resumes_and_scores_every_item_exactly_once(tmp_path, tiny_lm):
    task_file, out = _ppl_task(tmp_path), tmp_path / "out"
    cmd = PY + [
        "eval",
        "--model",
        "tiny-llama3",
        "-t",
        str(task_file),
        "--output",
        str(out),
        "--chunk-size",
        "1",
        "--window",
        "16",
        "--stride",
        "8",
        "--no-progress",
    ]
    items = out / "items" / "docs.jsonl"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if items.exists() and items.read_text().count("\n") >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.stderr.read().decode()}"
        proc.send_signal(signal.SIGKILL)  # a crash: no clean-up code runs
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    scored_before = items.read_text().count("\n")
    assert 3 <= scored_before < 30 and not (out / "results.json").exists()

    res = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    ids = [json.loads(line)["id"] for line in items.read_text().splitlines()]
    assert sorted(ids) == sorted(f"d{i}" for i in range(30))  # every item exactly once
    report = json.loads((out / "results.json").read_text())
    assert json.loads(res.stdout)["results"] == report["results"]
    (r,) = report["results"]
    assert r["resumed_items"] >= scored_before and r["num_items"] == 30

    # The same numbers as a run that was never interrupted.
    ctx = EvalContext(tiny_lm, EvalConfig(chunk_size=1, window=16, stride=8))
    clean = run_task(ctx, load_task(task_file), model_spec="tiny-llama3", progress=False)
    assert r["metrics"] == {k: v.as_dict() for k, v in clean.metrics.items()}

    md = (out / "report.md").read_text()
    assert "| docs | perplexity | tiny-llama3 | 30 | bits_per_byte **(main)** |" in md
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_list_and_errors():
    env = dict(os.environ)
    res = subprocess.run(PY + ["eval", "--list"], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0
    assert "mc-th" in res.stdout and "multiple_choice" in res.stdout and "code-python" in res.stdout
    res = subprocess.run(
        PY + ["eval", "-t", "nope", "--model", "tiny-llama3"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 2 and "error: --task 'nope' is neither a JSONL file nor a shipped task" in res.stderr
    assert "Traceback" not in res.stderr
