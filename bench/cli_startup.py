"""Start-up time of the command line: ``import lhama``, ``lhama --help`` and every
``lhama CMD --help`` against the bare interpreter (``python -c pass``) in the same run, so a
loaded machine shows as a slow peer rather than a slow lhama. The target (issue 15): each
at most 0.3 s, i.e. a parser that imports no torch and no stack.

    python bench/cli_startup.py [--repeat 5]
    python bench/cli_startup.py --load [--repeat 3]

Prints the median wall and CPU (user + sys) time of each, the ratio to the bare interpreter,
and the lhama modules ``-X importtime`` reports for ``lhama --help``.

``--load`` (issue 14: ``load_model("default")`` in at most 1 s including imports): the CPU time
of each phase of ``load_model("default")`` at one thread (best of ``--repeat`` fresh processes),
and the wall, CPU and peak RSS of ``lhama generate --max-tokens 8 "Hi"``. Python compiles
torch's and lhama's sources on every start when ``PYTHONDONTWRITEBYTECODE`` is set and no
bytecode is on disk (``import torch`` 2.3 s instead of 0.9 s; ``make install`` writes it with
``python -m lhama.cli.bytecode``); the line above the table says which.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lhama.cli import COMMANDS  # noqa: E402 - after the path above


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


# One fresh process: CPU seconds of each phase of load_model("default") at one thread.
LOAD_PHASES = """
import json, time
t0 = time.process_time()
import torch
torch.set_num_threads(1)
out = {"import torch": time.process_time() - t0}
def timed(label, f):
    t = time.process_time()
    r = f()
    out[label] = time.process_time() - t
    return r
import gc
gc.disable()  # as inside load_model, where these imports happen when nothing imported them before
timed("import lhama (loader, checkpoints, gguf, tokenizer)", lambda: (__import__("lhama.loader"),
      __import__("lhama.checkpoints.quantized"), __import__("lhama.tokenizer")))
gc.enable()
import lhama.loader as L
import lhama.checkpoints.quantized as Q
import lhama.model.lora_batch as LB
import lhama.peft_adapter as PA
import lhama.tokenizer as TK
for mod, name, label in ((Q, "sixteen_bit_dtype", "GGUF header + vocabulary parse"),
                         (TK, "load_tokenizer", "tokenizer (BPE build)"),
                         (TK, "load_chat_format", "chat format"),
                         (Q, "load_quantized", "weights (skeleton, kernel library, map)"),
                         (PA, "read_peft_weights", "adapter: read"),
                         (LB, "attach_fixed_lora", "adapter: attach")):
    f = getattr(mod, name)
    setattr(mod, name, lambda *a, f=f, label=label, **k: timed(label, lambda: f(*a, **k)))
timed("load_model call", lambda: L.load_model("default"))
out["total (process CPU)"] = time.process_time()
print(json.dumps(out))
"""


def load_table(repeat: int) -> None:
    import json

    runs = []
    for _ in range(repeat):
        r = subprocess.run([sys.executable, "-c", LOAD_PHASES], capture_output=True, text=True, check=True)
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda x: x["total (process CPU)"])
    import importlib.util

    torch_init = importlib.util.find_spec("torch").origin
    if Path(importlib.util.cache_from_source(torch_init)).exists():
        cache = "on disk (make install writes it: python -m lhama.cli.bytecode)"
    elif os.environ.get("PYTHONDONTWRITEBYTECODE"):
        cache = "missing and off (sources compiled each start: python -m lhama.cli.bytecode writes it)"
    else:
        cache = "written by the first run"
    print(
        f"load_model('default'), 1 thread, CPU s, best of {repeat} processes; bytecode cache {cache}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    for label, sec in best.items():
        indent = "    " if label not in ("import torch", "load_model call", "total (process CPU)") else ""
        print(f"  {indent}{label:{54 - len(indent)}} {sec:6.3f}")
    gen = [sys.executable, "-m", "lhama.cli", "generate", "--max-tokens", "8", "Hi"]
    rows = []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(gen, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        rows.append((wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, after.ru_maxrss))
    wall, cpu = statistics.median(w for w, _, _ in rows), statistics.median(c for _, c, _ in rows)
    print(
        f'lhama generate --max-tokens 8 "Hi": wall {wall:.2f} s, CPU {cpu:.2f} s (medians), '
        f"peak RSS of the largest child so far {max(m for _, _, m in rows) / 1024:.0f} MiB"
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="runs per command (the median is shown)")
    p.add_argument("--load", action="store_true", help="the phases of load_model('default') and lhama generate")
    a = p.parse_args(argv)
    if a.load:
        return load_table(a.repeat)
    py = sys.executable
    cases = {"python -c pass": [py, "-c", "pass"], "import lhama": [py, "-c", "import lhama"]}
    cases["lhama --help"] = [py, "-m", "lhama.cli", "--help"]
    cases.update({f"lhama {c} --help": [py, "-m", "lhama.cli", c, "--help"] for c in COMMANDS})
    rows = {}
    for name, cmd in cases.items():
        runs = [timed(cmd) for _ in range(a.repeat)]
        rows[name] = (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
    base_wall, base_cpu = rows["python -c pass"]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; median of {a.repeat} runs")
    print(f"{'command':34} {'wall s':>7} {'cpu s':>7} {'wall/bare':>9}  target 0.3 s")
    for name, (wall, cpu) in rows.items():
        print(f"{name:34} {wall:7.3f} {cpu:7.3f} {wall / base_wall:9.2f}  {'ok' if wall <= 0.3 else 'OVER'}")
    r = subprocess.run(
        [py, "-X", "importtime", "-m", "lhama.cli", "--help"], capture_output=True, text=True, check=True
    )
    mods = [line.split("|") for line in r.stderr.splitlines() if "| " in line and "lhama" in line]
    print("lhama modules imported by `lhama --help` (cumulative us):")
    for _, cumulative, name in mods:
        print(f"  {name.strip():30} {cumulative.strip():>8}")


if __name__ == "__main__":
    main()
