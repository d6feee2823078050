"""Files that ``lhama convert`` and ``lhama finetune`` write get the mode any new file gets
(0666 minus the umask), the safetensors weights and adapters included (their writer leaves
0600). Run under umask 027 so that a hard-coded 0644 would fail too."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

UMASK = 0o027
EXPECTED = 0o666 & ~UMASK  # 0o640


def lhama(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "lhama.cli", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=lambda: os.umask(UMASK),
    )


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


def test_convert_outputs_follow_the_umask(tmp_path):
    r = lhama("convert", "default", tmp_path / "hf", "--to", "safetensors")
    assert r.returncode == 0, r.stderr
    got = modes(tmp_path / "hf")
    assert "model.safetensors" in got
    assert got == dict.fromkeys(got, EXPECTED)


def test_finetune_outputs_follow_the_umask(tmp_path):
    data = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"{i} {i}"}]}
        for i in range(4)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    r = lhama(
        "finetune",
        "--recipe",
        "lora",
        "--model",
        "tiny-llama3",
        "--data",
        data,
        "--max-steps",
        1,
        "--batch-size",
        2,
        "--max-seq-len",
        32,
        "--no-progress",
        "--export",
        "safetensors",
        "--output-dir",
        out,
    )
    assert r.returncode == 0, r.stderr
    got = modes(out)
    assert {"adapter/adapter_model.safetensors", "model/model.safetensors"} <= set(got), sorted(got)
    assert got == dict.fromkeys(got, EXPECTED)
