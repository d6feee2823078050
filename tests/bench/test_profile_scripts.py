"""bench/profile_engine.py (engine step times by batch size) and its use by
bench/profile_decode.py, on a tiny random model."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import profile_decode  # noqa: E402
import profile_engine  # noqa: E402


def test_profile_engine_reports_each_batch_size(capsys):
    profile_engine.main(
        ["--model", "tiny-llama3", "--batch", "1", "3", "--prompt-len", "8", "--gen", "6", "--threads", "1"]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("model tiny-llama3 (fp32), prompt 8, generate 6")
    assert [ln.split(":")[0] for ln in lines[1:]] == ["batch   1", "batch   3"]
    assert all("decode step" in ln and ln.endswith("tok/s") for ln in lines[1:])


def test_engine_step_times_count_every_decode_step():
    torch.manual_seed(0)
    model = profile_engine.load("tiny-llama3")
    prompts = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14]]
    config = profile_engine.EngineConfig(num_blocks=profile_engine.blocks_for(2, 20), max_num_seqs=2)
    prefill, times = profile_engine.engine_step_times(model, prompts, 5, config)
    # The first token of each comes with the prefill; the other 4 take one batched step each.
    assert prefill > 0 and len(times) == 4 and all(t > 0 for t in times)
    # profile_decode.py's batch-1 engine timing is the same measurement: one time per decode step.
    assert len(profile_decode.engine_step_times(model, list(range(3, 12)), 7)) == 7
