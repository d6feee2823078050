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

pytestmark = pytest.mark.skipif(sandbox.shutil.which("bwrap") is None, reason="bubblewrap not installed")

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
    res = run_python("import sys, numpy\nname = input()\nprint(open('data/in.txt').read(), name, numpy.arange(3).sum())\n"
                     "open('out.txt', 'w').write('written')\nprint('err', file=sys.stderr)",
                     stdin="bob\n", files={"data/in.txt": "hello"}, limits=FAST, return_files=True)
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
    code = ("import os\nfor p in ['/etc/shadow', '/etc/passwd', %r, %r, '/root/.bash_history']:\n"
            "    try:\n        print('READ', p, open(p).read()[:20])\n"
            "    except OSError as e:\n        print('DENIED', p, type(e).__name__)\n"
            "print(sorted(os.listdir('/')))") % (str(secret), str(project_file))
    res = run_python(code, limits=FAST)
    assert res.ok, res.stderr
    assert "READ" not in res.stdout and res.stdout.count("DENIED") == 5
    assert "do not read" not in res.stdout


def test_cannot_write_outside_scratch():
    code = ("import os\nfor p in ['/usr/evil', '/etc/evil', %r, '/evil']:\n"
            "    try:\n        open(p, 'w').write('x'); print('WROTE', p)\n"
            "    except OSError as e:\n        print('DENIED', p)\n") % str(Path(__file__).with_name("evil.txt"))
    res = run_python(code, limits=FAST)
    assert res.ok and "WROTE" not in res.stdout and res.stdout.count("DENIED") == 4
    assert not Path(__file__).with_name("evil.txt").exists()


def test_cannot_regain_root_or_capabilities():
    res = run_python("import os\nprint(os.getuid())\ntry:\n    os.setuid(0); print('ROOT')\n"
                     "except PermissionError:\n    print('no-root')\n"
                     "print([l for l in open('/proc/self/status') if l.startswith('CapEff')][0].split()[1])",
                     limits=FAST)
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
    code = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=3); print('CONNECTED')\n"
            "except OSError as e:\n    print('BLOCKED', type(e).__name__)\n"
            "try:\n    socket.getaddrinfo('pypi.org', 443); print('RESOLVED')\nexcept OSError:\n    print('NO DNS')")
    res = run_python(code, limits=FAST)
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing reached the backlog
        listener.accept()
    listener.close()
    assert res.ok, res.stderr
    assert "CONNECTED" not in res.stdout and "BLOCKED" in res.stdout and "NO DNS" in res.stdout


def test_fork_bomb_is_contained(pinned_uid):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    start = time.monotonic()
    res = run_python(code, limits=SandboxLimits(cpu_seconds=3, wall_seconds=3, max_processes=16))
    assert not res.ok and res.killed_reason in {"wall_time", "processes", "cpu_time"}
    assert time.monotonic() - start < 10
    assert _sandbox_processes() == []
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
    code = "import subprocess, time\nsubprocess.Popen(['sleep', '1000'])\nprint('started', flush=True)\ntime.sleep(1000)"
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
from lhama.tools.sandbox import SandboxLimits, run_python
r = run_python("import os; print(os.getuid())", site_packages=False)
bomb = run_python("import os\\nwhile True:\\n    os.fork()", site_packages=False, limits=SandboxLimits(wall_seconds=5))
net = run_python("import socket; socket.create_connection(('127.0.0.1', 22), timeout=2)", site_packages=False)
print(r.ok, r.stdout.strip(), bomb.killed_reason, "ConnectionRefusedError" in net.stderr or "unreachable" in net.stderr)
"""


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists() or not sandbox.shutil.which("setpriv"),
                    reason="needs root (to become nobody), setpriv and a system python")
def test_the_unprivileged_path_as_nobody():
    """Run as a normal user, the sandbox uses bwrap's user namespace instead of setpriv."""
    import subprocess

    src = str(Path(sandbox.__file__).resolve().parents[2])
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
                        UNPRIVILEGED, src], capture_output=True, text=True, timeout=60, cwd="/tmp",
                       env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "65534", "processes", "True"]


def test_concurrent_runs_from_threads():
    """The evaluator runs sandboxes from a thread pool: each run is its own, with its own output."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: run_python(f"print({i} * {i})", limits=FAST), range(6)))
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(6)] and all(r.ok for r in results)
