"""Start-up time of the command line: ``import lhama``, ``lhama --help`` and every
``lhama CMD --help`` against the bare interpreter (``python -c pass``) in the same run, so a
loaded machine shows as a slow peer rather than a slow lhama. The target (issue 15): each
at most 0.3 s, i.e. a parser that imports no torch and no stack.

    python bench/cli_startup.py [--repeat 5]

Prints the median wall and CPU (user + sys) time of each, the ratio to the bare interpreter,
and the lhama modules ``-X importtime`` reports for ``lhama --help``.
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="runs per command (the median is shown)")
    a = p.parse_args(argv)
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
