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
    return subprocess.run([sys.executable, str(SCRIPT), str(out), str(steps), str(save_every), *flags],
                          env=_env(**env), capture_output=True, text=True, timeout=300)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_killed_mid_step_and_resumed_equals_uninterrupted(tmp_path):
    ref = _run(tmp_path / "ref", "--lora")
    assert ref.returncode == 0, ref.stderr
    expected = _metrics(tmp_path / "ref")
    assert [m["step"] for m in expected] == list(range(1, 13))

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), "12", "3", "--lora"],
                            env=_env(STEP_DELAY="0.1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = out / "checkpoints" / "step-000006"
    deadline = time.monotonic() + 240
    while not ckpt.is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.25)  # into step 7 or 8: each micro-batch sleeps 0.1 s
    proc.kill()
    proc.wait()
    assert proc.returncode == -9, f"the run ended before it could be killed: {proc.stderr.read()}"
    done_before_kill = [m["step"] for m in _metrics(out)]
    assert 6 <= done_before_kill[-1] < 12

    resumed = _run(out, "--lora", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and "(step 6 of 12)" in resumed.stderr
    got = _metrics(out)
    assert [m["step"] for m in got] == list(range(1, 13))  # no step lost or repeated
    assert [m["loss"] for m in got] == pytest.approx([m["loss"] for m in expected], rel=1e-6, abs=1e-7)
    assert [m["lr"] for m in got] == pytest.approx([m["lr"] for m in expected])
    assert not list((out / "checkpoints").glob("*.tmp"))



def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), "6", "0"], env=_env(STEP_DELAY="0.1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out / "metrics.jsonl").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0 and "saving a checkpoint" in err
    saved = int((out / "checkpoints" / "latest").read_text().strip().split("-")[1])
    assert 1 <= saved < 6 and [m["step"] for m in _metrics(out)] == list(range(1, saved + 1))
    done = _run(out, "--resume", steps=6, save_every=0)
    assert done.returncode == 0 and f"(step {saved} of 6)" in done.stderr
    assert [m["step"] for m in _metrics(out)] == list(range(1, 7))
