"""Native code we do not own (llama.cpp, through llama-cpp-python) runs in a child process, so a
crash there (SIGILL from an instruction this CPU cannot run, SIGSEGV) is one failed test that
names the signal, not a dead pytest run."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

INSTALL = "make test (it builds llama-cpp-python portably: see the Makefile's LLAMA_CMAKE)"

_CHILD = """
import pickle, sys
with open(sys.argv[1], "rb") as f:
    scope = pickle.load(f)
try:
    import llama_cpp
except ImportError as e:
    print(f"@@missing@@ {e}", file=sys.stderr)
    sys.exit(3)
import numpy as np
scope.update(llama_cpp=llama_cpp, np=np)
exec(compile(scope.pop("__snippet__"), "<llama.cpp snippet>", "exec"), scope)
with open(sys.argv[2], "wb") as f:
    pickle.dump(scope.get("result"), f)
"""


def run_llama_cpp(snippet: str, timeout: float = 600, **inputs: Any) -> Any:
    """Run ``snippet`` in a fresh Python with ``llama_cpp`` and ``np`` imported and ``inputs``
    bound as variables; returns what the snippet assigned to ``result`` (picklable)."""
    with tempfile.TemporaryDirectory(prefix="lhama-native-") as tmp:
        src, out = Path(tmp) / "in.pkl", Path(tmp) / "out.pkl"
        src.write_bytes(pickle.dumps({**inputs, "__snippet__": textwrap.dedent(snippet)}))
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, str(src), str(out)],
                check=False,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
            )
        except subprocess.TimeoutExpired:
            raise AssertionError(f"llama.cpp did not finish within {timeout:.0f} s") from None
        tail = proc.stderr[-2000:]
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name
            raise AssertionError(
                f"llama.cpp died with {name} (a build for another CPU? rebuild with {INSTALL}):\n{tail}"
            )
        if proc.returncode == 3 and "@@missing@@" in proc.stderr:
            raise AssertionError(f"llama-cpp-python is missing: {INSTALL}")
        if proc.returncode != 0:
            raise AssertionError(f"the llama.cpp snippet failed (exit {proc.returncode}):\n{tail}")
        return pickle.loads(out.read_bytes())
