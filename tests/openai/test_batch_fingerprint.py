"""``lhama batch`` bodies carry ``system_fingerprint``; it changes with deterministic mode, and a
deterministic batch gives the same answers as each line run alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lhama.engine import EngineConfig
from lhama.openai.engine_batch import run_batch_file


def _run(tiny, tmp_path: Path, name: str, prompts: list[str], **config) -> list[dict]:
    src, out = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.out.jsonl"
    src.write_text(
        "".join(
            json.dumps(
                {
                    "custom_id": f"c{i}",
                    "method": "POST",
                    "url": "/v1/completions",
                    "body": {"model": "tiny", "prompt": p, "max_tokens": 4, "temperature": 0, "logprobs": 1},
                }
            )
            + "\n"
            for i, p in enumerate(prompts)
        )
    )
    run_batch_file(tiny, src, out, EngineConfig(num_blocks=256, block_size=4, **config), progress=False)
    rows = sorted((json.loads(x) for x in out.read_text().splitlines()), key=lambda e: e["custom_id"])
    return [e["response"]["body"] for e in rows]


def test_batch_fingerprint_and_deterministic_lines(tiny, tmp_path):
    prompts = [f"w{i} w{i + 1} w2 w3 w{i}" for i in range(6)]
    normal = _run(tiny, tmp_path, "normal", prompts)
    det = _run(tiny, tmp_path, "det", prompts, deterministic=True)
    fps = {b["system_fingerprint"] for b in normal}
    assert len(fps) == 1 and re.match(r"^fp_[0-9a-f]{12}$", next(iter(fps)))
    assert {b["system_fingerprint"] for b in det} == {det[0]["system_fingerprint"]} != fps


def test_deterministic_batch_line_equals_it_alone(tiny, tmp_path):
    prompts = [f"w{i} w{i + 1} w2 w3 w{i}" for i in range(6)]
    det = _run(tiny, tmp_path, "det", prompts, deterministic=True)
    alone = _run(tiny, tmp_path, "alone", prompts[2:3], deterministic=True)
    assert alone[0]["choices"] == det[2]["choices"]
