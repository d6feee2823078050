"""A training process killed in the middle of a step and resumed from its last checkpoint gives
the same loss curve as an uninterrupted run: no step lost, none repeated, same numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("train_script.py")


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _run(out: Path, *flags: str, steps=12, save_every=3, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(steps), str(save_every), *flags],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


# Slow job: three training processes (~17 s).
@pytest.mark.slow
def test_interrupted_twice_and_resumed_equals_uninterrupted(tmp_path):
    """Ctrl-C (checkpoint at the step boundary, then stop), resume, SIGKILL in the middle of a step,
    resume again: the loss curve equals an uninterrupted run's, every step exactly once. LoRA with
    dropout, so the saved RNG state matters."""
    ref = _run(tmp_path / "ref", "--lora")
    assert ref.returncode == 0, ref.stderr
    expected = _metrics(tmp_path / "ref")
    assert [m["step"] for m in expected] == list(range(1, 13))

    out = tmp_path / "run"
    cmd = [sys.executable, str(SCRIPT), str(out), "12", "3", "--lora"]
    # 1. Ctrl-C during the first steps.
    proc = subprocess.Popen(
        cmd, env=_env(STEP_DELAY="0.1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _wait_for(out / "metrics.jsonl", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0 and "saving a checkpoint" in err, err
    saved = int((out / "checkpoints" / "latest").read_text().strip().split("-")[1])
    assert 1 <= saved < 6 and [m["step"] for m in _metrics(out)] == list(range(1, saved + 1))

    # 2. Resume, then SIGKILL in the middle of step 7 or 8.
    proc = subprocess.Popen(
        [*cmd, "--resume"], env=_env(STEP_DELAY="0.1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _wait_for(out / "checkpoints" / "step-000006", proc)
    time.sleep(0.25)  # each micro-batch sleeps 0.1 s
    proc.kill()
    _, err = proc.communicate()
    assert proc.returncode == -9, f"the run ended before it could be killed: {err}"
    assert f"(step {saved} of 12)" in err
    assert 6 <= _metrics(out)[-1]["step"] < 12

    # 3. Resume to the end.
    resumed = _run(out, "--lora", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "(step 6 of 12)" in resumed.stderr
    got = _metrics(out)
    assert [m["step"] for m in got] == list(range(1, 13))  # no step lost or repeated
    assert [m["loss"] for m in got] == pytest.approx([m["loss"] for m in expected], rel=1e-6, abs=1e-7)
    assert [m["lr"] for m in got] == pytest.approx([m["lr"] for m in expected])
    assert not list((out / "checkpoints").glob("*.tmp"))
