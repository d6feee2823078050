"""Who owns a sandbox run's scratch dir and cgroup, so that a later run can remove what a dead
caller left behind.

A caller killed with SIGKILL never reaches its ``finally``: bwrap dies with it (--die-with-parent),
but its scratch dir and cgroup stay. Each run therefore names them ``lhama-sandbox-<owner>-...``,
where the owner is the caller's pid, its start time (a pid alone may be reused by then) and its
pid namespace; the next run removes the entries whose owner is gone. Entries of live callers,
this one's other threads included, are never touched, nor those made in another pid namespace
(a container sharing /tmp), whose processes cannot be seen from here.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from functools import cache
from pathlib import Path

PREFIX = "lhama-sandbox-"
_OWNED = re.compile(re.escape(PREFIX) + r"(\d+)-(\d+)-(\d+)-")


def start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None
    when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return int(stat.rpartition(")")[2].split()[19])


@cache
def pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


@cache
def _owner_of(pid: int) -> str:
    return f"{pid}-{start_time(pid) or 0}-{pid_namespace()}"


def owner_prefix() -> str:
    """The name prefix of this process's sandbox entries."""
    return f"{PREFIX}{_owner_of(os.getpid())}-"


def owner_dead(name: str) -> bool:
    """Whether ``name`` is a sandbox entry whose owner no longer runs. Names without an owner
    (older lhama versions, other programs) are never called dead."""
    m = _OWNED.match(name)
    if m is None:
        return False
    pid, started, namespace = (int(g) for g in m.groups())
    return namespace == pid_namespace() and start_time(pid) != started


def reap_scratch_dirs(root: str | Path | None = None) -> list[Path]:
    """Remove the scratch dirs of dead owners in ``root`` (the temp dir); returns what went."""
    root = Path(root or tempfile.gettempdir())
    gone = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return gone
    for d in entries:
        if d.name.startswith(PREFIX) and owner_dead(d.name) and d.is_dir() and not d.is_symlink():
            shutil.rmtree(d, ignore_errors=True)
            if not d.exists():
                gone.append(d)
    return gone
