"""The child-process side: read a workload (JSON on stdin), run one system, print one result line.

Libraries print to stdout too (progress bars, llama.cpp logs), so the result is the single line
that starts with ``RESULT_MARK``; the parent ignores everything else. A system fills its result
as each measurement finishes; on SIGTERM (the parent's timeout) the worker prints what it has,
marked as partial, and exits.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import signal
import sys
import traceback

RESULT_MARK = "@@lhama-bench-result@@ "


def _finish(result: dict, system: str, device: str) -> None:
    import torch

    from harness.measure import peak_rss_mib

    result["system"] = system
    result["peak_rss_mib"] = peak_rss_mib()
    if device.startswith("cuda") and torch.cuda.is_available():
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    for col in result["columns"].values():
        col["peak_rss_mib"] = result["peak_rss_mib"]
        if "peak_gpu_mib" in result and system != "llama.cpp":
            col["peak_gpu_mib"] = result["peak_gpu_mib"]
    result["pid"] = os.getpid()
    result["python"] = platform.python_version()
    sys.stdout.write("\n" + RESULT_MARK + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()


def main(system: str) -> int:
    from harness.systems import SYSTEMS
    from harness.workload import Workload

    w = Workload.from_json(json.loads(sys.stdin.read()))
    import torch

    torch.set_num_threads(w.threads)
    torch.manual_seed(w.seed)
    module, fn = SYSTEMS[system]
    result: dict = {"ok": False, "columns": {}, "details": {}, "notes": [], "info": {}}

    def on_term(signum, frame):
        result["error"] = "timed out (partial results: the measurements that finished)"
        result["partial"] = True
        _finish(result, system, w.device)
        os._exit(2)

    signal.signal(signal.SIGTERM, on_term)
    try:
        getattr(importlib.import_module(module), fn)(w, result)
        result["ok"] = True
    except Exception as e:  # noqa: BLE001 - reported in the table as n/a, with the reason
        traceback.print_exc()
        result["error"] = f"{type(e).__name__}: {e}"
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _finish(result, system, w.device)
    return 0 if result["ok"] else 1
