"""Write the bytecode of what a default run imports, once, at install (``make install`` runs
``python -m lhama.cli.bytecode``).

The Makefile installs with pip's ``--no-compile`` (byte-compiling all of torch's files was most of
the install's CPU time), so the bytecode of each module is written the first time it is imported.
Where ``PYTHONDONTWRITEBYTECODE`` is set (CI images, some containers) it never is, and every
start compiles the sources again: ``import torch`` then took 2.3 s of CPU instead of 0.9 s on a
2-core Xeon VM, more than the whole load of the default model. This writes the bytecode of
lhama's own package and of every module that loading the default model, one generated token, the
engine and the server import, whatever that variable says.
"""

from __future__ import annotations

import compileall
import sys
import time
from pathlib import Path


def write_bytecode() -> int:
    """Byte-compile lhama and what the default paths import; returns how many modules are loaded
    (their bytecode now on disk where their folder is writable)."""
    sys.dont_write_bytecode = False  # the imports below write theirs, whatever the environment says
    import lhama

    compileall.compile_dir(Path(lhama.__file__).parent, quiet=1)
    # Third-party modules: the ones these paths import, not whole packages (torch has thousands).
    import uvicorn  # noqa: F401

    import lhama.cli.serve  # noqa: F401
    import lhama.server.app  # noqa: F401
    from lhama.engine import EngineConfig, LLMEngine
    from lhama.generate import SamplingParams, generate
    from lhama.loader import load_model

    lm = load_model("default")
    ids, params = lm.tokenizer.encode("Hi", bos=True), SamplingParams(temperature=0, max_tokens=1)
    generate(lm.model, lm.tokenizer, ids, params)
    engine = LLMEngine(lm.model, lm.tokenizer, EngineConfig(num_blocks=8, block_size=16))
    engine.generate([ids], params)
    return len(sys.modules)


def main() -> None:
    start = time.perf_counter()
    n = write_bytecode()
    print(f"bytecode written for lhama and the {n} modules a default run imports ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
