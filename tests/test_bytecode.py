"""``python -m lhama.cli.bytecode`` (run by ``make install``) writes the bytecode of the default paths
even where ``PYTHONDONTWRITEBYTECODE`` is set; redirected here with ``PYTHONPYCACHEPREFIX`` so the
test leaves the installed packages as they are."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path


def cached(module: str) -> bool:
    """Whether ``module``'s bytecode is where ``sys.pycache_prefix`` puts it."""
    return Path(importlib.util.cache_from_source(importlib.util.find_spec(module).origin)).exists()


def test_bytecode_of_the_default_paths_is_written_despite_the_environment(tmp_path):
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "lhama.cli.bytecode"], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "bytecode written" in r.stdout
    # cache_from_source follows this process's prefix: point it at the child's one
    sys.pycache_prefix, before = str(tmp_path), sys.pycache_prefix
    try:
        imported = ["torch", "torch.nn.functional", "numpy", "lhama.loader", "lhama.engine", "lhama.server.app"]
        imported += ["uvicorn", "fastapi"]
        for module in imported:
            assert cached(module), module
        assert cached("lhama.train.dpo")  # lhama's own package whole, imported or not
        assert not cached("torch._inductor.compile_fx")  # torch only where a default run goes
    finally:
        sys.pycache_prefix = before
    # the variable still rules a plain run: nothing more is written
    n = sum(1 for _ in tmp_path.rglob("*.pyc"))
    subprocess.run([sys.executable, "-c", "import lhama.rag"], env=env, check=True, timeout=120)
    assert sum(1 for _ in tmp_path.rglob("*.pyc")) == n
