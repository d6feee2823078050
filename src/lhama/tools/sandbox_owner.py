"""Who owns a sandbox run's scratch dir and cgroup, so that a later run can remove what a dead
caller left behind.

A caller killed with SIGKILL never reaches its ``finally``: bwrap dies with it (--die-with-parent),
but its scratch dir and cgroup stay. Each run therefore names them ``lhama-sandbox-<owner>-...``,
where the owner is the caller's pid and its start time (a pid alone may be reused by then); the
next run removes the entries whose owner is gone. Entries of live callers, this one's other
threads included, are never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from functools import cache
from pathlib import Path

PREFIX = "lhama-sandbox-"
_OWNED = re.compile(re.escape(PREFIX) + r"(\d+)-(\d+)-")


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
def _owner_of(pid: int) -> str:
    return f"{pid}-{start_time(pid) or 0}"


def owner_prefix() -> str:
    """The name prefix of this process's sandbox entries."""
    return f"{PREFIX}{_owner_of(os.getpid())}-"


def owner_dead(name: str) -> bool:
    """Whether ``name`` is a sandbox entry whose owner no longer runs. Names without an owner
    (older lhama versions, other programs) are never called dead."""
    m = _OWNED.match(name)
    if m is None:
        return False
    pid, started = int(m.group(1)), int(m.group(2))
    return start_time(pid) != started


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
