"""`lhama batch --ray`: a batch file split across 2 Ray actors on a local Ray cluster, answered
exactly once, the same answers as the single-process job, resumable after a crash."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lhama.engine import EngineConfig
from lhama.loader import load_model
from lhama.openai.engine_batch import run_batch_file
from lhama.parallel.ray_batch import ModelSpec, run_batch_ray
from tests import needs

ray = needs.module("ray")
pytestmark = pytest.mark.slow  # a local Ray cluster plus 2 model actors: ~70 s on the shared 2-core machine


def line(cid, url="/v1/completions", **body):
    return json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body})


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=80 * 2**20,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    yield
    ray.shutdown()


def _by_id(path: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for x in path.read_text().splitlines():
        e = json.loads(x)
        key = (
            f"line {e['error']['line']}"
            if e["error"] and e["error"]["code"] != "invalid_sampling_parameter"
            else e["custom_id"]
        )
        assert key not in out, f"{key} answered twice"
        out[key] = e
    return out


def test_two_actors_answer_every_line_once_and_resume(local_ray, tmp_path):
    lines = [line(f"c{i}", prompt=f"number {i} is", max_tokens=4, temperature=0) for i in range(10)]
    lines.insert(3, '{"custom_id": "broken", ')
    lines.append(line("c0", prompt="dup", max_tokens=2))  # duplicate custom_id
    lines.append(line("bad-param", prompt="x", max_tokens=2, temperature=-1))
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    cfg = EngineConfig(num_blocks=64, block_size=8)
    spec = ModelSpec(model="tiny-llama3", dtype="float32", device="cpu")

    out = tmp_path / "out.jsonl"
    s = run_batch_ray(spec, src, out, cfg, workers=2, chunk_size=3, progress=False)
    assert (s.total, s.already_done, s.succeeded, s.failed) == (13, 0, 10, 3)
    got = _by_id(out)
    assert got["bad-param"]["error"]["code"] == "invalid_sampling_parameter"
    assert got["bad-param"]["error"]["line"] == 13  # the input's line number, not the chunk's
    assert {"line 4", "line 12"} <= set(got) and got["line 12"]["error"]["code"] == "duplicate_custom_id"

    # The single-process job gives the same completions.
    ref = tmp_path / "ref.jsonl"
    run_batch_file(load_model("tiny-llama3", seed=0), src, ref, cfg, progress=False)
    want = _by_id(ref)
    for cid in (f"c{i}" for i in range(10)):
        assert got[cid]["response"]["body"]["choices"][0]["text"] == want[cid]["response"]["body"]["choices"][0]["text"]

    # A crash: the output kept 4 answers and half a line. The rerun answers the rest, once each.
    kept = out.read_text().splitlines()[:4]
    out.write_text("\n".join(kept) + "\n" + kept[-1][:20])
    s2 = run_batch_ray(spec, src, out, cfg, workers=2, chunk_size=3, progress=False)
    assert s2.already_done == 4 and s2.succeeded + s2.failed == 9
    assert set(_by_id(out)) == set(got)
