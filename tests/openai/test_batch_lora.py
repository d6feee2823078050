"""``lhama batch --lora NAME=PATH``: lines pick an adapter by ``model`` name and run through it,
beside base-model lines in the same engine steps, each answered as it would be alone."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from engine_fakes import tiny_loaded

from lhama.cli.batch import batch_lora_slots
from lhama.engine import EngineConfig
from lhama.openai.engine_batch import run_batch_file
from tests.engine.lora_adapters import make_adapter


@pytest.fixture(scope="module")
def lora_tiny(tmp_path_factory):
    """A fresh tiny model (the adapters wrap its projections) with two adapters loaded the way
    the CLI does."""
    loaded = tiny_loaded(seed=1)
    root = tmp_path_factory.mktemp("batch-adapters")
    a1 = make_adapter(root / "a1", loaded.args, rank=4, targets=("all",), seed=1, std=0.2)
    a2 = make_adapter(root / "a2", loaded.args, rank=2, targets=("wq", "wv", "w2"), seed=2, std=0.2)
    ns = argparse.Namespace(lora=[f"a1={a1}", f"a2={a2}"])
    slots = batch_lora_slots(ns, loaded)
    assert set(slots.adapters) == {"a1", "a2"} and slots.max_rank == 4
    return loaded, slots


def _run(lora_tiny, tmp_path: Path, name: str, models: list[str]) -> list[dict]:
    loaded, slots = lora_tiny
    src, out = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.out.jsonl"
    body = {"prompt": "w1 w2 w3 w4", "max_tokens": 6, "temperature": 0, "logprobs": 1}
    src.write_text(
        "".join(
            json.dumps(
                {"custom_id": f"c{i:02d}", "method": "POST", "url": "/v1/completions", "body": {**body, "model": m}}
            )
            + "\n"
            for i, m in enumerate(models)
        )
    )
    run_batch_file(loaded, src, out, EngineConfig(num_blocks=256, block_size=4), progress=False, loras=slots)
    rows = sorted((json.loads(x) for x in out.read_text().splitlines()), key=lambda e: e["custom_id"])
    assert all(e["error"] is None for e in rows), rows
    return [e["response"]["body"] for e in rows]


def test_batch_lines_routed_by_adapter_name(lora_tiny, tmp_path):
    models = ["tiny-test", "a1", "a2", "other-name"] * 3
    mixed = _run(lora_tiny, tmp_path, "mixed", models)
    texts = [b["choices"][0]["text"] for b in mixed]
    base, a1, a2, other = texts[:4]
    assert texts == [base, a1, a2, other] * 3
    assert other == base  # a name that is no adapter runs on the base model, as before
    assert len({base, a1, a2}) == 3
    fps = [b["system_fingerprint"] for b in mixed[:4]]
    assert fps[0] == fps[3] and len({fps[0], fps[1], fps[2]}) == 3
    for m, want in (("a1", a1), ("a2", a2)):  # each adapter's line alone gives the same text
        assert _run(lora_tiny, tmp_path, f"alone-{m}", [m])[0]["choices"][0]["text"] == want
