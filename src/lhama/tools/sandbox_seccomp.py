"""The sandbox's seccomp filter: system calls that sandboxed code never needs and that open doors
out of the namespaces (new user namespaces, mounts, ptrace, kernel keyrings, BPF, module loading).

Built with libseccomp (through ``pyseccomp``'s ctypes binding) and handed to bubblewrap as a
compiled BPF program (``bwrap --seccomp FD``), which loads it right before it starts the code, so
the code and all its children run under it. Everything not listed is allowed; listed calls fail
with EPERM, as they would for an unprivileged process, so ordinary code sees a normal error.

Two calls carry their flags where a filter can see them only for clone(2) and unshare(2): those
fail when asked for any new namespace. clone3(2) passes its flags in memory that seccomp cannot
read, so it fails with ENOSYS, which makes glibc fall back to clone(2) (what Docker and Flatpak do).
A call made through another ABI (x86 ``int 0x80``, x32) kills the process: libseccomp's filter
only accepts the native one.
"""

from __future__ import annotations

import errno
import os
import tempfile
from functools import lru_cache

from lhama.errors import SandboxError

# From <linux/sched.h>: every flag that makes a new namespace.
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWTIME = 0x10000000, 0x20000000, 0x40000000, 0x00000080
NAMESPACE_FLAGS = (
    CLONE_NEWNS,
    CLONE_NEWCGROUP,
    CLONE_NEWUTS,
    CLONE_NEWIPC,
    CLONE_NEWUSER,
    CLONE_NEWPID,
    CLONE_NEWNET,
    CLONE_NEWTIME,
)

DENIED = (
    # joining or building other namespaces, changing mounts and the root
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    # looking into or steering other processes
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    # kernel keyrings (not namespaced), eBPF, perf counters, userfaultfd (exploit helpers)
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    # the kernel itself: modules, kexec, reboot, swap, accounting, quotas, clock, raw I/O ports
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "syslog",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "iopl",
    "ioperm",
    "sethostname",
    "setdomainname",
    # file handles bypass path lookups (the "shocker" escape); io_uring runs calls seccomp never sees
    "open_by_handle_at",
    "name_to_handle_at",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    # old interfaces with a history of bugs
    "uselib",
    "lookup_dcookie",
    "nfsservctl",
    "vm86",
    "vm86old",
    "personality",
)


def _load_pyseccomp():
    try:
        import pyseccomp
    except (ImportError, OSError, RuntimeError) as e:  # RuntimeError: libseccomp.so.2 not found
        raise SandboxError(
            f"the sandbox needs libseccomp to build its system-call filter ({e}); "
            "install it (Debian/Ubuntu: apt-get install libseccomp2) and pip install pyseccomp"
        ) from None
    return pyseccomp


@lru_cache(maxsize=1)
def seccomp_program() -> bytes:
    """The compiled filter (classic BPF, native architecture), built once per process."""
    sc = _load_pyseccomp()
    f = sc.SyscallFilter(sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in DENIED:
        if sc.resolve_syscall(sc.Arch.NATIVE, name) >= 0:  # else not on this architecture (vm86 on x86_64)
            f.add_rule(deny, name)
    for call in ("unshare", "clone"):
        # clone's flags are its first argument on every architecture libseccomp knows but s390.
        for flag in NAMESPACE_FLAGS:
            f.add_rule(deny, call, sc.Arg(0, sc.MASKED_EQ, flag, flag))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        return out.read()


def seccomp_fd() -> int:
    """A readable, inheritable fd holding the filter, for ``bwrap --seccomp FD`` (the caller closes
    it once bwrap has started)."""
    program = seccomp_program()
    fd = os.memfd_create("lhama-seccomp")
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
