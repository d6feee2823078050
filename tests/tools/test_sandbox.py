"""The code sandbox, attacked for real: every escape attempt is contained and reported."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from lhama.errors import SandboxError
from lhama.tools import sandbox, sandbox_cgroup
from lhama.tools.sandbox import SandboxLimits, SandboxResult, run_python
from tests import needs


@pytest.fixture(autouse=True)
def bubblewrap_installed():
    """The sandbox is what keeps model-written code in: without bwrap these tests fail (saying
    how to install it) rather than skip, so a machine that cannot sandbox is never green."""
    needs.binary("bwrap", "bubblewrap")


FAST = SandboxLimits(cpu_seconds=3, wall_seconds=8, memory_mb=512, max_processes=16, max_output_bytes=200_000)


PINNED_UID_OFFSET = 424_242


@pytest.fixture
def pinned_uid(monkeypatch):
    """Run the sandbox under a known uid, so leftovers can be looked for without seeing other
    people's concurrent sandboxes."""
    monkeypatch.setattr(sandbox.random, "randrange", lambda n: PINNED_UID_OFFSET)


def _sandbox_processes(grace: float = 3.0) -> list[int]:
    """Host processes still running under the pinned sandbox uid (root mode) -- there must be none
    after a run. The kernel tears a pid namespace down asynchronously, so allow it a moment."""
    deadline = time.monotonic() + grace
    while (found := _scan()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _scan() -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                uid = d.stat().st_uid
            except FileNotFoundError:
                continue
            if uid == sandbox._UID_BASE + PINNED_UID_OFFSET:
                found.append(int(d.name))
    return found


def test_runs_code_with_stdin_files_and_packages():
    res = run_python(
        "import sys, numpy\nname = input()\nprint(open('data/in.txt').read(), name, numpy.arange(3).sum())\n"
        "open('out.txt', 'w').write('written')\nprint('err', file=sys.stderr)",
        stdin="bob\n",
        files={"data/in.txt": "hello"},
        limits=FAST,
        return_files=True,
    )
    assert isinstance(res, SandboxResult)
    assert res.ok and res.exit_code == 0 and res.killed_reason is None and not res.timed_out
    assert res.stdout == "hello bob 3\n" and res.stderr == "err\n"
    assert res.files == {"data/in.txt": "hello", "out.txt": "written"}
    assert 0 < res.duration_s < FAST.wall_seconds


def test_failing_code_is_reported_not_raised():
    res = run_python("raise SystemExit(3)", limits=FAST)
    assert res.exit_code == 3 and not res.ok and res.killed_reason is None
    res = run_python("1/0", limits=FAST)
    assert res.exit_code == 1 and "ZeroDivisionError" in res.stderr


def test_cannot_read_outside_files(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    project_file = Path(__file__).resolve()
    paths = ["/etc/shadow", "/etc/passwd", str(secret), str(project_file), "/root/.bash_history"]
    code = (
        f"import os\nfor p in {paths!r}:\n"
        "    try:\n        print('READ', p, open(p).read()[:20])\n"
        "    except OSError as e:\n        print('DENIED', p, type(e).__name__)\n"
        "print(sorted(os.listdir('/')))"
    )
    res = run_python(code, limits=FAST)
    assert res.ok, res.stderr
    assert "READ" not in res.stdout and res.stdout.count("DENIED") == 5
    assert "do not read" not in res.stdout


def test_cannot_write_outside_scratch():
    code = (
        "import os\nfor p in ['/usr/evil', '/etc/evil', {!r}, '/evil']:\n"
        "    try:\n        open(p, 'w').write('x'); print('WROTE', p)\n"
        "    except OSError as e:\n        print('DENIED', p)\n"
    ).format(str(Path(__file__).with_name("evil.txt")))
    res = run_python(code, limits=FAST)
    assert res.ok and "WROTE" not in res.stdout and res.stdout.count("DENIED") == 4
    assert not Path(__file__).with_name("evil.txt").exists()


def test_cannot_regain_root_or_capabilities():
    res = run_python(
        "import os\nprint(os.getuid())\ntry:\n    os.setuid(0); print('ROOT')\n"
        "except PermissionError:\n    print('no-root')\n"
        "print([l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1])",
        limits=FAST,
    )
    assert res.ok, res.stderr
    uid, verdict, caps = res.stdout.split()
    assert verdict == "no-root" and int(caps, 16) == 0
    if os.geteuid() == 0:
        assert int(uid) >= sandbox._UID_BASE


def test_no_network_even_to_loopback_listener():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    code = (
        f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=3); print('CONNECTED')\n"
        "except OSError as e:\n    print('BLOCKED', type(e).__name__)\n"
        "try:\n    socket.getaddrinfo('pypi.org', 443); print('RESOLVED')\nexcept OSError:\n    print('NO DNS')"
    )
    res = run_python(code, limits=FAST)
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing reached the backlog
        listener.accept()
    listener.close()
    assert res.ok, res.stderr
    assert "CONNECTED" not in res.stdout and "BLOCKED" in res.stdout and "NO DNS" in res.stdout


@pytest.mark.parametrize("use_cgroup", [True, False], ids=["cgroup", "no-cgroup"])
def test_fork_bomb_is_contained(pinned_uid, use_cgroup):
    # This bomb swallows its failed forks, so it never dies on its own: it runs out of time, and
    # is reported as what it is (it sat at the process limit), not as slow code.
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    start = time.monotonic()
    limits = SandboxLimits(cpu_seconds=3, wall_seconds=3, max_processes=16, use_cgroup=use_cgroup)
    res = run_python(code, limits=limits)
    assert not res.ok and res.killed_reason == "processes" and not res.timed_out
    assert time.monotonic() - start < 10
    assert _sandbox_processes() == []
    # A few processes that merely sleep past the wall clock are still a wall_time, not a bomb.
    res = run_python(
        "import subprocess, time\nkids = [subprocess.Popen(['sleep', '100']) for _ in range(3)]\ntime.sleep(100)",
        limits=SandboxLimits(wall_seconds=2, max_processes=16, use_cgroup=use_cgroup),
    )
    assert res.killed_reason == "wall_time" and res.timed_out
    # The plain bomb (no except) dies on the first refused fork and is named for it.
    res = run_python("import os\nwhile True:\n    os.fork()\n", limits=SandboxLimits(wall_seconds=5, max_processes=16))
    assert res.killed_reason == "processes" and "BlockingIOError" in res.stderr
    assert _sandbox_processes() == []


def test_large_allocation_is_refused():
    res = run_python("x = bytearray(2 * 2**30)\nprint('GOT IT')", limits=FAST)
    assert res.killed_reason == "memory" and "GOT IT" not in res.stdout and not res.ok


def test_infinite_loop_hits_cpu_limit():
    res = run_python("while True:\n    pass", limits=SandboxLimits(cpu_seconds=1, wall_seconds=8))
    assert res.killed_reason == "cpu_time" and not res.timed_out and not res.ok
    assert res.duration_s < 6


def test_sleeping_forever_hits_wall_time_and_leaves_nothing_behind(pinned_uid):
    code = (
        "import subprocess, time\nsubprocess.Popen(['sleep', '1000'])\nprint('started', flush=True)\ntime.sleep(1000)"
    )
    res = run_python(code, limits=SandboxLimits(wall_seconds=1.5))
    assert res.timed_out and res.killed_reason == "wall_time" and res.stdout == "started\n"
    assert 1.4 < res.duration_s < 5
    time.sleep(0.2)
    assert _sandbox_processes() == []


def test_huge_output_is_capped():
    res = run_python("import sys\nsys.stdout.write('x' * 100_000_000)", limits=FAST)
    assert res.killed_reason == "output_limit" and not res.ok
    assert len(res.stdout) + len(res.stderr) <= FAST.max_output_bytes


def test_file_size_limit():
    res = run_python("open('big', 'wb').write(b'x' * 200 * 2**20)", limits=SandboxLimits(max_file_mb=8))
    assert res.killed_reason == "file_size"


def test_bad_file_names_and_limits_are_typed_errors():
    with pytest.raises(SandboxError, match="relative path"):
        run_python("pass", files={"../escape.txt": "x"})
    with pytest.raises(SandboxError, match="relative path"):
        run_python("pass", files={"/etc/x": "x"})
    with pytest.raises(SandboxError, match="cpu_seconds"):
        SandboxLimits(cpu_seconds=0)


def test_missing_bubblewrap_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(SandboxError, match="bubblewrap"):
        run_python("print('unsandboxed')")


MULTI_PROCESS_HOG = """
import os, time
kids = []
for i in range(5):
    pid = os.fork()
    if pid == 0:
        block = b"x" * (300 * 2**20)  # touched pages: real memory, within each process's RLIMIT_AS
        time.sleep(1.5)
        os._exit(0)
    kids.append(pid)
print([os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) for k in kids])
"""


@pytest.mark.skipif(not sandbox_cgroup.available(), reason="no writable cgroup on this machine")
def test_total_memory_of_many_processes_is_capped_by_the_cgroup():
    """rlimits are per process; five 300 MB processes under memory_mb=512 only fit because of
    the per-run cgroup, whose OOM killer stops them and is reported."""
    res = run_python(MULTI_PROCESS_HOG, limits=SandboxLimits(memory_mb=512, wall_seconds=20, max_processes=16))
    assert res.killed_reason == "memory" and not res.ok
    statuses = json.loads(res.stdout)  # the parent survived and saw its children killed
    assert statuses.count(-9) >= 2


UNPRIVILEGED = """
import sys
sys.path.insert(0, sys.argv[1])
sys.path.append(sys.argv[2])  # where pyseccomp is (the seccomp filter's builder)
from lhama.tools.sandbox import SandboxLimits, run_python
r = run_python("import os; print(os.getuid())", site_packages=False)
bomb = run_python("import os\\nwhile True:\\n    os.fork()", site_packages=False, limits=SandboxLimits(wall_seconds=5))
net = run_python("import socket; socket.create_connection(('127.0.0.1', 22), timeout=2)", site_packages=False)
print(r.ok, r.stdout.strip(), bomb.killed_reason, "ConnectionRefusedError" in net.stderr or "unreachable" in net.stderr)
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists() or not sandbox.shutil.which("setpriv"),
    reason="needs root (to become nobody), setpriv and a system python",
)
def test_the_unprivileged_path_as_nobody():
    """Run as a normal user, the sandbox uses bwrap's user namespace instead of setpriv."""
    import subprocess

    import pyseccomp

    src = str(Path(sandbox.__file__).resolve().parents[2])
    site = str(Path(pyseccomp.__file__).parent)
    p = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            UNPRIVILEGED,
            src,
            site,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/tmp",
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "65534", "processes", "True"]


def test_concurrent_runs_from_threads():
    """The evaluator runs sandboxes from a thread pool: each run is its own, with its own output."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: run_python(f"print({i} * {i})", limits=FAST), range(6)))
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(6)] and all(r.ok for r in results)


NAMESPACE_ESCAPES = r"""
import ctypes, errno, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)

def call(name, *args):
    r = getattr(libc, name)(*args)
    return "ok" if r == 0 else errno.errorcode[ctypes.get_errno()]

def run(*cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    return "ok" if p.returncode == 0 else "failed"

out = {
    "unshare -U": run("unshare", "-U", "true"),
    "unshare -Ur mount": run("unshare", "-Urm", "mount", "-t", "tmpfs", "none", "/tmp"),
    "unshare -n": run("unshare", "-Urn", "true"),
    "mount": run("mount", "-t", "tmpfs", "none", "/tmp"),
    # os.unshare arrived in Python 3.12: the libc call is the same system call.
    "os.unshare(CLONE_NEWUSER)": call("unshare", 0x10000000),
    "os.unshare(CLONE_NEWNET)": call("unshare", 0x40000000),
    "os.unshare(CLONE_NEWNS)": call("unshare", 0x00020000),
    "ptrace(PTRACE_TRACEME)": call("ptrace", 0, 0, 0, 0),
    "keyctl": call("syscall", 250, 0, 0, 0, 0),
    "bpf": call("syscall", 321, 0, 0, 0),
    "perf_event_open": call("syscall", 298, 0, 0, -1, -1, 0),
    "setns": call("setns", 0, 0),
}
kid = os.fork()  # ordinary process and thread creation still work (clone without namespace flags)
if kid == 0:
    os._exit(7)
import threading
t = threading.Thread(target=lambda: None)
t.start()
t.join()
out["fork"] = os.waitstatus_to_exitcode(os.waitpid(kid, 0)[1])
out["spawn"] = subprocess.run(["echo", "spawned"], capture_output=True, text=True).stdout.strip()
import json
print(json.dumps(out))
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the probe uses x86_64 system call numbers")
def test_no_namespaces_mounts_ptrace_or_kernel_interfaces():
    """The seccomp filter: code cannot make user (or any other) namespaces -- in root mode too,
    where bwrap's --disable-userns cannot be used -- nor mount, ptrace, use keyrings, BPF or perf;
    ordinary forks, threads and subprocesses still run."""
    res = run_python(NAMESPACE_ESCAPES, limits=FAST, site_packages=False)
    assert res.ok, res.stderr
    out = json.loads(res.stdout)
    assert out.pop("fork") == 7 and out.pop("spawn") == "spawned"
    assert {k: v for k, v in out.items() if v not in ("failed", "EPERM")} == {}, out
    for name in ("os.unshare(CLONE_NEWUSER)", "ptrace(PTRACE_TRACEME)", "keyctl", "bpf", "setns"):
        assert out[name] == "EPERM", (name, out)


def test_the_filter_is_what_stops_user_namespaces(monkeypatch):
    """Without the seccomp filter the same probe makes a user namespace and mounts in it (root
    mode), so the test above is testing the filter."""
    if os.geteuid() != 0:
        pytest.skip("without root, bwrap's --disable-userns stops this too")
    argv = sandbox._bwrap_argv

    def without_filter(*args):
        a = argv(*args)
        i = a.index("--seccomp")
        return a[:i] + a[i + 2 :]

    monkeypatch.setattr(sandbox, "_bwrap_argv", without_filter)
    res = run_python(
        "import subprocess\nprint(subprocess.run(['unshare', '-Urm', 'mount', '-t', 'tmpfs', 'none',"
        " '/tmp']).returncode)",
        limits=FAST,
        site_packages=False,
    )
    assert res.stdout.strip() == "0", res.stderr


KILLED_CALLER = """
import sys
sys.path.insert(0, sys.argv[1])
from lhama.tools.sandbox import SandboxLimits, run_python
run_python("import time\\nprint('running', flush=True)\\ntime.sleep(60)", limits=SandboxLimits(wall_seconds=60))
"""


def test_a_killed_callers_scratch_dir_and_cgroup_are_reaped_by_the_next_run():
    import signal
    import subprocess
    import sys
    import tempfile

    src = str(Path(sandbox.__file__).resolve().parents[2])
    caller = subprocess.Popen([sys.executable, "-c", KILLED_CALLER, src])
    prefix = f"lhama-sandbox-{caller.pid}-"
    root = Path("/sys/fs/cgroup")
    cgroups = [root] if (root / "cgroup.controllers").exists() else [root / "pids", root / "memory"]  # v2 or v1

    def leftovers():
        scratch = [p for p in Path(tempfile.gettempdir()).glob(prefix + "*")]
        groups = [p for root in cgroups if root.is_dir() for p in root.rglob(prefix + "*") if p.is_dir()]
        return scratch, groups

    deadline = time.monotonic() + 30
    while not any(p.joinpath("main.py").exists() for p in leftovers()[0]):
        assert time.monotonic() < deadline and caller.poll() is None, "the caller never started its sandbox"
        time.sleep(0.05)
    time.sleep(0.5)
    caller.send_signal(signal.SIGKILL)
    caller.wait()
    scratch, groups = leftovers()
    assert scratch, "the killed caller left no scratch dir: nothing to test"
    if sandbox_cgroup.available():
        assert groups, "the killed caller left no cgroup: nothing to test"
    res = run_python("print('next')", limits=FAST)
    assert res.stdout == "next\n"
    assert leftovers() == ([], [])


def test_every_denied_call_is_known_to_libseccomp():
    """A misspelt name in the deny list would be skipped like a call of another architecture."""
    import pyseccomp

    from lhama.tools.sandbox_seccomp import DENIED

    known = {
        arch: {n for n in DENIED if pyseccomp.resolve_syscall(arch, n) >= 0}
        for arch in (pyseccomp.Arch.X86_64, pyseccomp.Arch.X86)
    }
    assert set(DENIED) - known[pyseccomp.Arch.X86_64] == {"vm86", "vm86old"}  # 32-bit x86 only
    assert {"vm86", "vm86old"} <= known[pyseccomp.Arch.X86]
