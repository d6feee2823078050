import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_benchmark_writes_table_and_json(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--systems", "lhama",
                        "--new-tokens", "4", "--concurrency", "1,2", "--long", "32", "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "latest.json").read_text())
    lhama = doc["results"]["lhama"]
    assert lhama["prefill_tok_s"] > 0 and lhama["throughput_c2_tok_s"] > 0
    assert "| aggregate decode tokens/s, 2 concurrent |" in (tmp_path / "latest.md").read_text()
