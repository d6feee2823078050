"""The speed benchmark's harness: the table/ratio code on known numbers, and a --quick run of
lhama alone on a tiny random model (no peers) that must produce the JSON, table and plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import needs

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from harness import report  # noqa: E402

META = {
    "prompt_len": 512,
    "gen_single": 128,
    "gen_conc": 64,
    "concurrency": [1, 8],
    "model_name": "m.gguf",
    "device_desc": "cpu",
    "threads": 2,
    "tokenized_by": "test",
    "when": "now",
}


def test_table_ratios_use_the_engine_and_mark_failures():
    results = {
        "lhama": {
            "ok": True,
            "columns": {
                "lhama (engine)": {
                    "prefill_tok_s": 300.0,
                    "ttft_s": 2.0,
                    "decode_tok_s": 20.0,
                    "agg_1": 20.0,
                    "agg_8": 80.0,
                    "peak_rss_mib": 900.0,
                },
                "lhama (reference loop)": {"prefill_tok_s": 250.0, "decode_tok_s": 25.0, "agg_8": "n/a (single)"},
            },
        },
        "llama.cpp": {
            "ok": True,
            "columns": {
                "llama.cpp": {
                    "prefill_tok_s": 600.0,
                    "ttft_s": 1.0,
                    "decode_tok_s": 40.0,
                    "agg_8": "n/a (no batching)",
                    "peak_rss_mib": 300.0,
                }
            },
        },
        "transformers": {"ok": False, "error": "boom", "columns": {}},
    }
    table = report.build_table(results, META)
    assert table["columns"] == ["lhama (engine)", "lhama (reference loop)", "llama.cpp", "transformers"]
    by = {r["key"]: r for r in table["rows"]}
    assert by["prefill_tok_s"]["ratios"]["llama.cpp"] == pytest.approx(0.5)
    assert by["decode_tok_s"]["ratios"]["llama.cpp"] == pytest.approx(0.5)  # engine's 20, not the loop's 25
    assert by["ttft_s"]["ratios"]["llama.cpp"] == pytest.approx(2.0)
    assert by["agg_8"]["ratios"]["llama.cpp"] is None
    # Issue 14's row: the engine's aggregate at the top concurrency over the peer's single stream.
    vs = by[report.VS_SINGLE]
    assert vs["values"]["lhama (engine)"] == 80.0 and vs["values"]["llama.cpp"] == 40.0
    assert vs["ratios"]["llama.cpp"] == pytest.approx(2.0) and vs["label"].startswith("8 concurrent vs")
    assert by["decode_tok_s"]["ratios"]["transformers"] is None
    assert by["decode_tok_s"]["values"]["transformers"] == "n/a (failed)"
    assert "compile_s" not in by  # no system reported it: no empty row
    md = report.markdown(table, META, ["a note"])
    assert (
        "| metric | lhama (engine) | lhama (reference loop) | llama.cpp | transformers | lhama ÷ llama.cpp "
        "| lhama ÷ transformers |" in md
    )
    assert "| prefill tok/s (512-token prompt) ↑ | 300 | 250 | 600 | n/a (failed) | 0.50× | – |" in md
    assert "- transformers failed: boom" in md and "- a note" in md


def test_quick_run_on_a_tiny_random_model(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--model",
            "tiny-llama2",
            "--systems",
            "lhama",
            "--concurrency",
            "1,2",
            "--out-dir",
            str(tmp_path),
            "--name",
            "smoke",
            "--timeout",
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "smoke.json").read_text())
    assert doc["meta"]["prompt_len"] == 64 and doc["meta"]["concurrency"] == [1, 2]
    assert doc["results"]["lhama"]["ok"] and doc["results"]["lhama"]["peak_rss_mib"] > 50
    rows = {row["key"]: row["values"] for row in doc["table"]["rows"]}
    for key in ("prefill_tok_s", "ttft_s", "decode_tok_s", "agg_1", "agg_2", "e2e_2", "peak_rss_mib"):
        assert report.is_num(rows[key]["lhama (engine)"]) and rows[key]["lhama (engine)"] > 0, key
    for key in ("prefill_tok_s", "decode_tok_s", "agg_1"):
        assert report.is_num(rows[key]["lhama (reference loop)"]) and rows[key]["lhama (reference loop)"] > 0, key
    engine = doc["results"]["lhama"]["details"]["engine"]
    assert engine["single"]["tokens"] == 16  # ignore_eos: exactly the asked number of tokens
    assert engine["concurrent_2"]["tokens"] == 2 * 8
    # Where the peak comes from: RSS after each phase, never above the process's final peak.
    phases = doc["results"]["lhama"]["details"]["rss_by_phase"]
    assert list(phases)[0] == "load" and list(phases)[-1] == "2 concurrent"
    assert all(0 < v["rss_mib"] <= v["peak_rss_mib"] + 1 for v in phases.values())
    assert max(v["peak_rss_mib"] for v in phases.values()) <= doc["results"]["lhama"]["peak_rss_mib"] + 1
    # The like-for-like memory row: the peak through the single-stream runs, before the concurrent ones.
    single_peak = rows["single_peak_rss_mib"]
    assert single_peak["lhama (engine)"] == phases["1 concurrent"]["peak_rss_mib"]
    ref_peak, engine_peak = single_peak["lhama (reference loop)"], single_peak["lhama (engine)"]
    assert 50 < ref_peak <= engine_peak <= rows["peak_rss_mib"]["lhama (engine)"] + 1  # (VmHWM's own lag)
    md = (tmp_path / "smoke.md").read_text()
    assert md == r.stdout.strip() + "\n"
    assert "| aggregate decode tok/s, 2 concurrent ↑ |" in md
    assert "lhama RSS after each phase, MiB: load " in md
    assert len(list(tmp_path.glob("2*.json"))) == 1  # the timestamped copy
    needs.module("matplotlib")
    assert (tmp_path / "smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_llama_cpp_runs_the_concurrent_work_batched(smollm2_path):
    """llama.cpp's column does the same concurrent work as lhama's, in one batched context: every
    sequence gets its tokens, sequence 0 (the concurrency-1 prompt) the single stream's tokens, and
    its process peak covers that work. A tiny workload on the default file, in a child process."""
    import run  # bench/run.py
    from harness.workload import Workload

    ids = [504, 2251, 436, 22753, 28, 30, 198, 1530, 314, 260, 1345, 282, 7063, 355, 253, 1205] * 3
    gen = 6
    w = Workload(
        model=str(smollm2_path),
        prompt_ids=ids[:16],
        gen_single=4,
        concurrency=[1, 2, 3],
        conc_prompts=[ids[i * 5 : i * 5 + 12] for i in range(3)],
        gen_conc=gen,
        compile=False,
        threads=1,  # two threads spin at llama.cpp's barriers: seconds per step on a loaded 2-core box
    )
    res = run.run_system("llama.cpp", w.to_json(), timeout=120, verbose=False, threads=1)
    assert res["ok"], res.get("error", "") + res.get("stderr_tail", "")
    col, det = res["columns"]["llama.cpp"], res["details"]
    for n in (2, 3):
        c = det[f"concurrent_{n}"]
        assert c["requests"] == n and c["tokens"] == n * gen and c["tokens_per_sequence"] == [gen]
        assert report.is_num(col[f"agg_{n}"]) and col[f"agg_{n}"] > 0 and col[f"e2e_{n}"] > 0
        assert 0 < c["mean_ttft_s"] <= c["all_started_s"] < c["wall_s"]
        # Greedy: the batched sequence 0 is the concurrency-1 run of the same prompt.
        assert c["seq0_token_ids"][:4] == det["concurrent_1"]["token_ids"][:4], (c, det["concurrent_1"])
    assert det["batched"]["n_seq_max"] == 3 and det["batched"]["n_ctx_seq"] >= 12 + gen
    phases = det["rss_by_phase"]
    assert list(phases)[-1] == "3 concurrent"
    assert col["single_peak_rss_mib"] <= phases["3 concurrent"]["peak_rss_mib"] <= res["peak_rss_mib"] + 1
    assert any("its own batching" in n for n in res["notes"])
    assert not any("not measured" in n or "failed" in n for n in res["notes"]), res["notes"]


def test_a_crashed_worker_is_reported_with_its_signal(monkeypatch):
    """A peer whose native code dies (SIGILL from a build for another CPU) is a failed column that
    names the signal; the run goes on."""
    import run  # bench/run.py
    from harness import workload

    real = run.subprocess.Popen

    def crashing(cmd, **kw):  # the worker's command line, with a child that kills itself
        return real([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"], **kw)

    monkeypatch.setattr(run.subprocess, "Popen", crashing)
    res = run.run_system("llama.cpp", {}, timeout=60, verbose=False, threads=1)
    assert not res["ok"] and res["error"] == "died with SIGILL and no result"
    assert workload.exit_reason(-11) == "died with SIGSEGV" and workload.exit_reason(3) == "exited with status 3"


def test_peak_rss_is_the_workers_own_not_inherited_across_exec():
    """getrusage's ru_maxrss survives exec, so a worker started by a big process reported that
    process's peak; the harness reads the kernel's VmHWM, which exec resets."""
    child = (
        "import os, sys; big = bytearray(300 << 20)\n"
        "for i in range(0, len(big), 4096): big[i] = 1\n"
        "os.execv(sys.executable, [sys.executable, '-c', "
        "'import sys; sys.path.insert(0, sys.argv[1]); from harness.measure import peak_rss_mib; print(peak_rss_mib())', "
        "sys.argv[1]])"
    )
    out = subprocess.run([sys.executable, "-c", child, str(ROOT / "bench")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) < 150, out.stdout  # measured ~15 MiB; the pre-exec 300 MiB is not counted
