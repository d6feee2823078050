"""bench/speculative.py runs end to end (on a tiny config: the real figures come from a manual run)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "speculative.py"


def test_bench_rows_ratios_and_output_check(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_speculative", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    n = torch.get_num_threads()
    out = tmp_path / "spec.json"
    try:
        rc = bench.main(
            [
                "--model",
                "tiny-llama3",
                "--targets",
                "float32",
                "int4",
                "--drafts",
                "self:int4@3",
                "ngram",
                "--max-tokens",
                "6",
                "--threads",
                "1",
                "--repeat",
                "1",
                "--json",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    rows = json.loads(out.read_text())["runs"][0]["rows"]
    fp32 = [r for r in rows if r["target"] == "float32"]
    assert {(r["prompt"], r["draft"]) for r in fp32} == {
        (p, d) for p in bench.PROMPTS for d in ("none (plain loop)", "self:int4@3", "ngram")
    }
    assert all(r["same"] == "yes" and r["tokens"] == 6 and r["tok_s"] > 0 for r in rows)
    assert all(r["k"] == 3 for r in fp32 if r["draft"] == "self:int4@3")
    # An int4 target has no cheaper quantized copy of itself: only the ngram draft runs, said on stderr.
    assert {r["draft"] for r in rows if r["target"] == "int4"} == {"none (plain loop)", "ngram"}
    assert "already quantized" in capsys.readouterr().err
    try:  # --append keeps the first run's rows beside the new run's
        assert (
            bench.main(
                [
                    "--model",
                    "tiny-llama3",
                    "--targets",
                    "float32",
                    "--drafts",
                    "ngram",
                    "--max-tokens",
                    "4",
                    "--threads",
                    "1",
                    "--repeat",
                    "1",
                    "--json",
                    str(out),
                    "--append",
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(n)
    runs = json.loads(out.read_text())["runs"]
    assert [len(r["rows"]) for r in runs] == [len(rows), 2 * len(bench.PROMPTS)]
