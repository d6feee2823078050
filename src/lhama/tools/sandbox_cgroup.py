"""A per-run cgroup for the sandbox, where the machine lets us make one.

rlimits are per process: RLIMIT_AS caps each process's address space, so 16 processes may
each take ``memory_mb``. A cgroup caps the *sum* (memory) and the number of tasks (pids) of the
whole sandbox, whoever runs it. It is defence in depth on top of the rlimits and the throwaway
uid, used when the cgroup filesystem is writable (root, or a delegated subtree) and skipped
otherwise.

cgroup v1 (one hierarchy per controller) and v2 (one unified hierarchy with the controllers
enabled in ``cgroup.subtree_control``) are both handled; we create our group below the one this
process is in, so the container's own limits still apply above it.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

from lhama.tools.sandbox_owner import PREFIX, owner_dead, owner_prefix

ROOT = Path("/sys/fs/cgroup")


def _own_paths() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out = {}
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                out[c] = path
    except OSError:
        pass
    return out


class SandboxCgroup:
    def __init__(self, dirs: list[Path], memory_file: Path | None, events: Path | None):
        self.dirs, self.memory_file, self.events = dirs, memory_file, events

    @classmethod
    def create(cls, memory_mb: int, max_processes: int) -> SandboxCgroup | None:
        """A fresh group limited to ``memory_mb`` in total and ``max_processes`` tasks (+2 for
        bwrap and its pid-1 reaper), or None where cgroups cannot be used."""
        name = f"{owner_prefix()}{uuid.uuid4().hex[:12]}"
        own = _own_paths()
        mem_bytes, pids = str(memory_mb * 2**20), str(max_processes + 2)
        made: list[Path] = []
        try:
            if (ROOT / "memory").is_dir() and (ROOT / "pids").is_dir() and "memory" in own and "pids" in own:
                mem = ROOT / "memory" / own["memory"].lstrip("/") / name
                pid = ROOT / "pids" / own["pids"].lstrip("/") / name
                for d in (mem, pid):
                    d.mkdir()
                    made.append(d)
                (mem / "memory.limit_in_bytes").write_text(mem_bytes)
                if (mem / "memory.memsw.limit_in_bytes").exists():  # no escaping into swap
                    (mem / "memory.memsw.limit_in_bytes").write_text(mem_bytes)
                (pid / "pids.max").write_text(pids)
                return cls(made, mem / "memory.oom_control", None)
            if "" in own and (ROOT / "cgroup.controllers").exists():
                parent = ROOT / own[""].lstrip("/")
                enabled = (parent / "cgroup.subtree_control").read_text().split()
                if "memory" in enabled and "pids" in enabled:
                    d = parent / name
                    d.mkdir()
                    made.append(d)
                    (d / "memory.max").write_text(mem_bytes)
                    if (d / "memory.swap.max").exists():
                        (d / "memory.swap.max").write_text("0")
                    (d / "pids.max").write_text(pids)
                    return cls(made, None, d / "memory.events")
        except OSError:
            for d in reversed(made):
                try:
                    d.rmdir()
                except OSError:
                    pass
        return None

    @staticmethod
    def reap_stale() -> list[Path]:
        """Remove the groups of dead callers (see ``sandbox_owner``): kill what still runs in them
        (bwrap dies with its caller, so normally nothing), then remove them. Returns what went."""
        own = _own_paths()
        parents = [ROOT / c / own[c].lstrip("/") for c in ("memory", "pids") if c in own and (ROOT / c).is_dir()]
        if "" in own and (ROOT / "cgroup.controllers").exists():
            parents.append(ROOT / own[""].lstrip("/"))
        stale = []
        for parent in parents:
            try:
                stale += [d for d in parent.iterdir() if d.name.startswith(PREFIX) and owner_dead(d.name)]
            except OSError:
                continue
        for d in stale:
            try:
                for pid in (d / "cgroup.procs").read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        group = SandboxCgroup(stale, None, None)
        group.close(wait=1.0)
        return [d for d in stale if not d.exists()]

    def procs_files(self) -> list[str]:
        """Where the launcher writes its own pid, before it execs bwrap."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def task_count(self) -> int:
        """How many tasks (processes and threads) the group holds now."""
        for d in self.dirs:
            if (d / "pids.current").exists():
                try:
                    return int((d / "pids.current").read_text())
                except (OSError, ValueError):
                    return 0
        return 0

    def hit_memory_limit(self) -> bool:
        """Whether the kernel killed a task of this group for going over the memory limit."""
        try:
            f = self.memory_file or self.events
            if f is not None:  # v1 memory.oom_control and v2 memory.events both count "oom_kill"
                fields = dict(line.split() for line in f.read_text().splitlines() if line.strip())
                return int(fields.get("oom_kill", 0)) > 0
        except (OSError, ValueError):
            pass
        return False

    def close(self, wait: float = 5.0) -> None:
        """Remove the group; its tasks are gone once the pid namespace is torn down (async)."""
        deadline = time.monotonic() + wait
        for d in self.dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)


def available() -> bool:
    """Whether runs on this machine get a cgroup (makes and removes a probe group)."""
    probe = SandboxCgroup.create(64, 4)
    if probe is None:
        return False
    probe.close()
    return True
