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
from pathlib import Path

import torch
from torch.utils import cpp_extension


def compiler() -> str:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or "g++"


def flags() -> list[str]:
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        "-O3",
        "-ffp-contract=off",
        "-std=c++17",
        "-fPIC",
        "-shared",
        "-fopenmp",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        "-w",
    ]


def compile_library(sources: list[Path], out: Path, quiet: bool = False) -> Path:
    """Build ``sources`` into ``out`` atomically (a temporary file, then a rename: two processes
    building at once both end with a whole library)."""
    torch_lib = Path(torch.__file__).parent / "lib"
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    links = [f"-L{torch_lib}", f"-Wl,-rpath,{torch_lib}", "-lc10", "-ltorch_cpu", "-ltorch"]
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    cmd = [compiler(), *flags(), *includes, *map(str, sources), "-o", tmp, *links]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        os.unlink(tmp)
        raise RuntimeError(f"no C++ compiler ({cmd[0]}: {e.strerror})") from e
    if r.returncode != 0:
        os.unlink(tmp)
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{cmd[0]} failed:\n{tail}")
    os.replace(tmp, out)
    if not quiet:
        print(f"built {out}")
    return out
