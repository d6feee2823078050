"""The benchmark scripts with quantized lhama: run.py's int4 column and bench/quant.py's table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# Slow job: a bench run (~10 s); tests/bench keeps a quick run in the default suite.
@pytest.mark.slow
def test_run_py_quick_with_int4_column(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--model",
            "tiny-llama2",
            "--systems",
            "lhama-int4",
            "--concurrency",
            "1,2",
            "--out-dir",
            str(tmp_path),
            "--name",
            "q",
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "q.json").read_text())
    rows = {row["key"]: row["values"] for row in doc["table"]["rows"]}
    col = "lhama (engine, int4)"
    for key in ("prefill_tok_s", "decode_tok_s", "agg_2", "weight_mib"):
        assert rows[key][col] > 0, key
    assert doc["results"]["lhama-int4"]["info"]["quantize"] == "int4"
    assert doc["results"]["lhama-int4"]["details"]["engine"]["single"]["tokens"] == 16


@pytest.mark.slow  # a subprocess per mode; run.py's int4 column above covers the same quantized engine path
def test_quant_py_table(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "quant.py"),
            "--quick",
            "--model",
            "tiny-llama3",
            "--modes",
            "fp32,int8",
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["mode"]: row for row in json.loads((tmp_path / "quant.json").read_text())["rows"]}
    assert rows["int8"]["weight_mib"] < rows["fp32"]["weight_mib"]
    assert 0.9 < rows["int8"]["ppl"] / rows["fp32"]["ppl"] < 1.1
    assert rows["int8"]["decode_tok_s"] > 0 and rows["int8"]["agg_4_tok_s"] > 0
    md = (tmp_path / "quant.md").read_text()
    assert "| int8 |" in md and "| fp32 |" in md


def test_update_readme_replaces_only_the_speed_table(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from harness import report

    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n\n## Speed (latest `make bench`)\n\nIntro.\n\n| metric | old |\n|---|---:|\n"
        "| a | 1 |\n- old note\n\n## Next\nkept\n"
    )
    md = "Model header line.\n\n| metric | new |\n|---|---:|\n| a | 2 |\n\n- new note\n"
    assert report.update_readme(readme, md)
    text = readme.read_text()
    assert "Intro." in text and "| a | 2 |" in text and "- new note" in text
    assert "old" not in text and "Model header line" not in text and text.endswith("## Next\nkept\n")
    (tmp_path / "other.md").write_text("# no speed section\n")
    assert not report.update_readme(tmp_path / "other.md", md)
