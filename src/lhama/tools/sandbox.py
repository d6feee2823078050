"""Run untrusted Python (model-written code, eval tasks) in a bubblewrap sandbox.

What the code sees: a read-only /usr (+ /lib* links), the Python installation (and, by default,
the current environment's site-packages) read-only, a fresh /proc and /dev, a small tmpfs /tmp,
and a private scratch dir as cwd and $HOME. No network (new net namespace: only its own
loopback), no other files of this machine, new pid/ipc/uts namespaces.

Limits: rlimits for CPU time, address space, file size and processes, a wall-clock timeout that
kills the whole sandbox, and an output cap enforced while reading. A seccomp filter
(``sandbox_seccomp``) denies new namespaces, mounts, ptrace and kernel interfaces; what callers
killed mid-run left behind is removed by the next run (``sandbox_owner``).

Root ignores RLIMIT_NPROC (the kernel exempts the init user, whatever its capabilities), and a
user namespace created by root still maps to uid 0 outside. So when we run as root, bwrap keeps
root only to set up mounts and namespaces, and ``setpriv`` then drops the code to a throwaway
uid/gid (no capabilities, no_new_privs, so setuid binaries can't regain root): NPROC counts that
uid's processes, and every run picks its own uid so concurrent sandboxes don't share the budget.
When we are not root, bwrap makes a user namespace and the kernel counts processes per namespace.
"""

from __future__ import annotations

import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lhama.errors import SandboxError
from lhama.tools.sandbox_cgroup import SandboxCgroup
from lhama.tools.sandbox_owner import owner_prefix, reap_scratch_dirs
from lhama.tools.sandbox_seccomp import seccomp_fd

SCRATCH = "/sandbox"  # where the scratch dir appears inside; cwd and $HOME of the code
MAIN_FILE = "main.py"
# Throwaway uids for root mode: far above any real account, below the 32-bit overflow ids.
_UID_BASE, _UID_SPAN = 1_500_000, 500_000


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one run. ``memory_mb`` bounds the address space (RLIMIT_AS), so it must
    cover the interpreter and whatever it imports (numpy alone maps ~100 MB)."""

    cpu_seconds: float = 10.0
    wall_seconds: float = 20.0
    memory_mb: int = 1024
    max_processes: int = 32
    max_output_bytes: int = 1_000_000
    max_file_mb: int = 64  # largest file the code may write (RLIMIT_FSIZE)
    tmp_mb: int = 64  # size of the in-memory /tmp
    # Also cap the sandbox's *total* memory and task count with a cgroup where the machine allows
    # one (rlimits are per process); see lhama.tools.sandbox_cgroup.
    use_cgroup: bool = True

    def __post_init__(self):
        for name in (
            "cpu_seconds",
            "wall_seconds",
            "memory_mb",
            "max_processes",
            "max_output_bytes",
            "max_file_mb",
            "tmp_mb",
        ):  # use_cgroup is a switch, not a size
            if getattr(self, name) <= 0:
                raise SandboxError(f"SandboxLimits.{name} must be positive, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int  # negative: killed by that signal
    timed_out: bool
    killed_reason: str | None  # "wall_time", "cpu_time", "memory", "output_limit", "processes", "file_size"
    duration_s: float
    files: dict[str, str] | None = None  # text files the code left in its scratch dir (if asked)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed_reason is None


def find_bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxError(
            "The code sandbox needs bubblewrap, which is not installed. Install it "
            "(Debian/Ubuntu: apt-get install bubblewrap); lhama never runs model-written "
            "code unsandboxed."
        )
    return path


def _python_paths() -> tuple[str, list[str], list[str]]:
    """The interpreter to run inside, the directories it needs (read-only) and its extra sys.path."""
    base = os.path.realpath(sys.base_prefix)
    exe = os.path.realpath(sys.executable)
    dirs = [base]
    extra_path: list[str] = []
    purelib = os.path.realpath(sysconfig.get_paths()["purelib"])
    if not purelib.startswith(base + os.sep):
        dirs.append(purelib)
        extra_path.append(purelib)
    if not exe.startswith(base + os.sep):
        dirs.append(os.path.dirname(exe))
    return exe, dirs, extra_path


def _bwrap_argv(
    bwrap: str, scratch: str, limits: SandboxLimits, site_packages: bool, as_root: bool, uid: int, seccomp: int
) -> list[str]:
    exe, py_dirs, extra_path = _python_paths()
    argv = [
        bwrap,
        "--die-with-parent",
        "--new-session",
        "--seccomp",
        str(seccomp),
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for link in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = Path("/") / link
        if p.is_symlink():
            argv += ["--symlink", os.readlink(p), f"/{link}"]
        elif p.is_dir():
            argv += ["--ro-bind", str(p), f"/{link}"]
    if os.path.exists("/etc/ld.so.cache"):
        argv += ["--perms", "0755", "--dir", "/etc", "--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    if not site_packages:
        py_dirs, extra_path = py_dirs[:1] if exe.startswith(py_dirs[0]) else py_dirs[:1] + [os.path.dirname(exe)], []
    py_dirs = [d for d in py_dirs if not d.startswith("/usr/")]
    # bwrap gives the parents it creates the host's modes (/root is 0700): open them for the uid.
    parents = sorted({str(a) for d in py_dirs for a in PurePosixPath(d).parents if str(a) != "/"})
    for a in parents:
        argv += ["--perms", "0755", "--dir", a]
    for d in py_dirs:
        argv += ["--ro-bind", d, d]
    argv += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--perms",
        "01777",
        "--size",
        str(limits.tmp_mb * 2**20),
        "--tmpfs",
        "/tmp",
        "--bind",
        scratch,
        SCRATCH,
        "--chdir",
        SCRATCH,
        "--clearenv",
        "--setenv",
        "HOME",
        SCRATCH,
        "--setenv",
        "PATH",
        "/usr/local/bin:/usr/bin:/bin",
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--setenv",
        "PYTHONDONTWRITEBYTECODE",
        "1",
        "--setenv",
        "PYTHONUNBUFFERED",
        "1",
        "--setenv",
        "MPLBACKEND",
        "Agg",
    ]
    # One thread per library: threads count against max_processes.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        argv += ["--setenv", var, "1"]
    if extra_path:
        argv += ["--setenv", "PYTHONPATH", os.pathsep.join(extra_path)]
    # No new user namespaces inside. Not root: bwrap's own user namespace is capped at one level
    # (--disable-userns). Root: --disable-userns needs --unshare-user, whose namespace would map
    # the code to uid 0 outside, so there the seccomp filter denies CLONE_NEWUSER instead (it
    # denies every new namespace, in both modes).
    if as_root:
        argv += [
            "--",
            shutil.which("setpriv") or "/usr/bin/setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]
    else:
        argv += ["--unshare-user", "--disable-userns", "--"]
    return argv + [exe, "-B", MAIN_FILE]


# Joins the cgroup (its own pid, before bwrap forks anything, so every task is counted), then
# execs prlimit, which sets the rlimits and execs bwrap. A launcher rather than Popen's
# preexec_fn: that runs Python in a forked child, which can deadlock when the caller has threads
# (the evaluator runs sandboxes from a thread pool).
_JOIN_THEN_EXEC = 'while [ "$1" != "--" ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'


def _launcher(limits: SandboxLimits, cgroup_procs: list[str]) -> list[str]:
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        raise SandboxError("the sandbox needs prlimit (util-linux) to set its resource limits; install util-linux")
    cpu = max(1, int(limits.cpu_seconds + 0.999))
    mem, fsize = limits.memory_mb * 2**20, limits.max_file_mb * 2**20
    # The kernel sends SIGXCPU at the soft CPU limit and SIGKILL at the hard one, a second later.
    limits_argv = [
        prlimit,
        f"--cpu={cpu}:{cpu + 1}",
        f"--as={mem}",
        f"--fsize={fsize}",
        f"--nproc={limits.max_processes}",
        "--core=0",
        "--",
    ]
    return ["/bin/sh", "-c", _JOIN_THEN_EXEC, "sh", *cgroup_procs, "--", *limits_argv]


def _write_files(scratch: Path, code: str, files: dict[str, str] | None) -> None:
    for name, text in (files or {}).items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise SandboxError(f"sandbox file name {name!r} must be a relative path inside the scratch dir")
        target = scratch / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    (scratch / MAIN_FILE).write_text(code)


def _collect_files(scratch: Path, limit: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in sorted(scratch.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.name != MAIN_FILE and p.stat().st_size <= limit:
            try:
                out[p.relative_to(scratch).as_posix()] = p.read_text()
            except (UnicodeDecodeError, OSError):
                continue
    return out


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # bwrap leads the group; its pid-1 child then takes the namespace down
    except ProcessLookupError:
        pass


def _classify(exit_code: int, stderr: str, duration_s: float, limits: SandboxLimits) -> str | None:
    """Which limit ended the run, from how it ended. Python turns a failed allocation into
    MemoryError and a failed fork into BlockingIOError (EAGAIN); signals come back as 128+N."""
    if exit_code == 0:
        return None
    sig = exit_code - 128 if exit_code > 128 else -exit_code if exit_code < 0 else 0
    # The kernel sends SIGXCPU at the soft CPU limit and SIGKILL one second later.
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and duration_s >= limits.cpu_seconds):
        return "cpu_time"
    if sig == signal.SIGXFSZ or "File too large" in stderr:
        return "file_size"
    tail = stderr[-2000:]
    if "MemoryError" in tail or "Cannot allocate memory" in tail or "std::bad_alloc" in tail:
        return "memory"
    if ("BlockingIOError" in tail or "Resource temporarily unavailable" in tail) and (
        "fork" in tail or "spawn" in tail or "Popen" in tail or "start_new_thread" in tail or "thread" in tail
    ):
        return "processes"
    if sig == signal.SIGKILL:
        return "memory"  # a SIGKILL we did not send: the kernel's OOM killer
    return None


def run_python(
    code: str,
    *,
    stdin: str = "",
    limits: SandboxLimits = SandboxLimits(),
    files: dict[str, str] | None = None,
    site_packages: bool = True,
    return_files: bool = False,
) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh sandbox and report what happened.

    ``files`` are written into the scratch dir first (relative paths). ``site_packages`` makes the
    current environment's packages (numpy, sympy...) importable. ``return_files`` reads back text
    files the code wrote. Never raises for anything the code does; raises ``SandboxError`` when the
    sandbox itself cannot be set up.
    """
    bwrap = find_bwrap()
    as_root = os.geteuid() == 0
    uid = _UID_BASE + random.randrange(_UID_SPAN)
    reap_scratch_dirs()  # what callers killed mid-run left behind
    SandboxCgroup.reap_stale()
    seccomp = seccomp_fd()
    scratch, cgroup = None, None
    try:
        scratch = Path(tempfile.mkdtemp(prefix=owner_prefix()))
        cgroup = SandboxCgroup.create(limits.memory_mb, limits.max_processes) if limits.use_cgroup else None
        _write_files(scratch, code, files)
        if as_root:
            for p in [scratch, *scratch.rglob("*")]:
                os.chown(p, uid, uid, follow_symlinks=False)
        argv = _bwrap_argv(bwrap, str(scratch), limits, site_packages, as_root, uid, seccomp)
        return _supervise(argv, stdin, limits, scratch, return_files, cgroup, seccomp)
    finally:
        os.close(seccomp)
        if cgroup is not None:
            cgroup.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


class TaskPeak:
    """The most tasks the sandboxed code had at once, sampled while it runs: a fork bomb that
    swallows its failed forks never exits on its own, and is only told apart from slow code by
    having reached ``max_processes``. The cgroup counts its tasks for us; without one, the
    process tree below bwrap is counted from /proc (less often: that reads every process)."""

    def __init__(self, bwrap_pid: int, cgroup: SandboxCgroup | None):
        self.bwrap_pid, self.cgroup, self.peak, self.last = bwrap_pid, cgroup, 0, 0.0
        self.interval = 0.1 if cgroup is not None else 0.5

    def sample(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.interval:
            self.last = now
            # Both ways count bwrap's pid-1 reaper, and the cgroup bwrap too: not the code's.
            tasks = self.cgroup.task_count() - 2 if self.cgroup is not None else _descendants(self.bwrap_pid) - 1
            self.peak = max(self.peak, tasks)


def _descendants(root: int) -> int:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    count, todo = 0, [root]
    while todo:
        kids = children.get(todo.pop(), [])
        count, todo = count + len(kids), todo + kids
    return count


def _supervise(
    argv: list[str],
    stdin: str,
    limits: SandboxLimits,
    scratch: Path,
    return_files: bool,
    cgroup: SandboxCgroup | None,
    seccomp: int,
) -> SandboxResult:
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            _launcher(limits, cgroup.procs_files() if cgroup else []) + argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            pass_fds=(seccomp,),
        )
    except OSError as e:
        raise SandboxError(f"could not start the sandbox ({argv[0]}): {e}") from e

    def feed():
        try:
            proc.stdin.write(stdin.encode())
        except (BrokenPipeError, OSError):
            pass
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    threading.Thread(target=feed, daemon=True).start()
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    sel = selectors.DefaultSelector()
    for f in bufs:
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ)
    reason = None
    total = 0
    deadline = start + limits.wall_seconds
    tasks = TaskPeak(proc.pid, cgroup)
    while sel.get_map():
        tasks.sample()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reason = "wall_time"
            break
        for key, _ in sel.select(timeout=min(remaining, 0.5)):
            chunk = key.fileobj.read(65536)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            room = limits.max_output_bytes - total
            bufs[key.fileobj] += chunk[: max(room, 0)]
            total += len(chunk)
            if total > limits.max_output_bytes:
                reason = "output_limit"
                break
        if reason:
            break
    status = None
    while reason is None:  # pipes are closed; wait for bwrap itself, keeping its rusage
        tasks.sample()
        pid, st = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            status = st
            break
        if time.monotonic() >= deadline:
            reason = "wall_time"
        else:
            time.sleep(0.01)
    if reason is not None:
        tasks.sample(force=True)
        _kill(proc)
    if status is None:
        _, status = os.waitpid(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    sel.close()
    for f in (proc.stdout, proc.stderr):
        f.close()
    duration = time.monotonic() - start
    out = bufs[proc.stdout].decode("utf-8", "replace")
    err = bufs[proc.stderr].decode("utf-8", "replace")
    if reason is None:
        reason = _classify(proc.returncode, err, duration, limits)
        if cgroup is not None and cgroup.hit_memory_limit():
            reason = "memory"  # some task was OOM-killed: together they went over memory_mb
    if reason in ("wall_time", "cpu_time") and tasks.peak >= limits.max_processes:
        reason = "processes"  # out of time because it kept trying to fork: a fork bomb
    files = _collect_files(scratch, limits.max_output_bytes) if return_files else None
    return SandboxResult(
        stdout=out,
        stderr=err,
        exit_code=proc.returncode,
        timed_out=reason == "wall_time",
        killed_reason=reason,
        duration_s=duration,
        files=files,
    )
