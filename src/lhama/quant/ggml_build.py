"""Compiling ``lhama/quant/kernels/*.cpp`` into one torch custom-op library with the system g++.

Portable by construction: baseline x86-64 code plus per-function ``target`` attributes picked at
run time by cpuid, never ``-march=native`` (the library is built on one machine and may run on
another; some VMs list AMX and trap on it). OpenMP is torch's own (``at::parallel_for`` then
follows ``torch.set_num_threads``); torch ships ``libgomp.so.1``, the soname the link records.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch


def compiler() -> str:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or "g++"


def flags() -> list[str]:
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return ["-O3", "-ffp-contract=off", "-std=c++17", "-fPIC", "-fopenmp", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-w"]


def _run(cmds: list[list[str]]) -> None:
    """Run compiler commands, as many at once as there are CPUs; a failure raises."""

    def one(cmd: list[str]) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            raise RuntimeError(f"no C++ compiler ({cmd[0]}: {e.strerror})") from e

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(one, cmds))
    for r in results:
        if r.returncode != 0:
            tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"{r.args[0]} failed:\n{tail}")


def compile_library(sources: list[Path], out: Path, quiet: bool = False) -> Path:
    """Build ``sources`` into ``out``: one compiler process per source file in parallel, one link,
    written to a temporary file and renamed (two processes building at once both end with a
    whole library)."""
    # imported here, not at the top: every load computes flags() for the library's name, and
    # cpp_extension's import is ~0.1 s that only a build needs
    from torch.utils import cpp_extension

    torch_lib = Path(torch.__file__).parent / "lib"
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    links = [f"-L{torch_lib}", f"-Wl,-rpath,{torch_lib}", "-lc10", "-ltorch_cpu", "-ltorch"]
    cxx = compiler()
    with tempfile.TemporaryDirectory(prefix="lhama-kernels-") as tmpdir:
        objs = [Path(tmpdir) / f"{i}-{src.stem}.o" for i, src in enumerate(sources)]
        _run([[cxx, *flags(), *includes, "-c", str(src), "-o", str(o)] for src, o in zip(sources, objs, strict=True)])
        fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
        os.close(fd)
        try:
            _run([[cxx, "-shared", "-fopenmp", *map(str, objs), "-o", tmp, *links]])
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    if not quiet:
        print(f"built {out}")
    return out
