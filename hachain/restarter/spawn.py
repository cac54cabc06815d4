"""Effects: start, signal and find service processes. The only module that forks.

Owns: fork/exec with process setup, pidfds, cgroups, process groups, log files. Must
not: decide anything — the state machine and the loop decide, this module does.

Some facts this code relies on:

- The restarter's own children announce their exit with SIGCHLD; the loop finds each
  with waitid(WNOWAIT), which gives the status, and reaps it once the replacement is
  spawned (freeing a process is part of the kernel's cost of exit). They hold no
  descriptor: every open descriptor of the restarter is copied into each new child and
  closed again at its exec, about 0.3 us each, so 1000 pidfds would add 0.3 ms to
  every restart.
- A pidfd (pidfd_open(2), Linux 5.3) becomes readable when its process exits, whoever
  its parent is. It watches what is not our child: a process adopted from an earlier
  restarter is reparented to init (the subreaper), so its status is gone and the
  restarter only learns *that* it exited; a MAINPID= process; a probe (which is).
- A cgroup v2 directory holds exactly the processes of one service and all their
  descendants, whatever they fork. `cgroup.kill` (Linux 5.14) SIGKILLs all of them at
  once; `cgroup.procs` lists them; `cgroup.events` says `populated 0` when none is left.
- A child moved into its cgroup after it was spawned may already have forked, so a
  service must be *born* in its cgroup. clone3(CLONE_INTO_CGROUP) (Linux 5.7) does that;
  Python has no wrapper for it, so the small C extension `_clone3` (built by setup.py
  where a compiler is at hand) starts services that way. Moving a process by
  writing `cgroup.procs` takes the kernel's global cgroup_threadgroup_rwsem for writing,
  and unless cgroup2 is mounted with `favordynmods` that waits for an RCU grace period:
  5-15 ms on an idle machine, more than the rest of a restart (docs/restarter.md,
  "Restart after idle"). clone3 takes that lock for reading only.
  It does the whole set-up of a service (cwd, umask, rlimits, user and groups, the
  readiness fd), in the order subprocess and the preexec function below do it.
- The fallback, where `_clone3` is missing or the kernel refuses: the restarter moves
  *itself* into the service's cgroup, spawns (the child is born there), and moves itself
  back: two small writes, no window in which a descendant escapes, but each write may
  wait for that grace period.
- subprocess uses vfork when no preexec function is given, which keeps a spawn well
  under a millisecond even for a large parent. Only services that need a rlimit or a
  readiness fd at a fixed number pay for a preexec function.
- Every service runs in a process group of its own (its pid), the fallback for
  killing the whole service where no cgroup is available.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import grp
import os
import pwd
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from hachain import channels, listen, prestart, sandbox, seccomp
from hachain.cgroupfs import cgroup2_problem, find_cgroup2_mount
from hachain.configtypes import CAPABILITIES, SERVICE_PATH, ServiceConfig
from hachain.restarter.policy import ExitStatus

try:  # the compiled part (setup.py, optional): clone3 CLONE_INTO_CGROUP
    from hachain.restarter import _clone3  # type: ignore[attr-defined]
except ImportError:
    _clone3 = None
# getgrouplist that lets other threads run while the name service answers (Resolver);
# os.getgrouplist holds the GIL, so a hung lookup there would stop the whole restarter
_getgrouplist: Callable[[str, int], list[int]] = getattr(_clone3, "getgrouplist",
                                                         os.getgrouplist)

DEFAULT_PATH = SERVICE_PATH
# The file limit the restarter was started with: it raises its own (a pidfd per service),
# and gives services back this one unless their configuration sets `nofile`.
BASE_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)
# Descriptors kept open per service cgroup (Cgroups.kept): only while the chain has at
# most KEEP_SERVICES services, and never more than 1/KEEP_SHARE of the file limit. Each
# descriptor the restarter holds costs every spawn ~0.17 us (the child's copy of the
# table, closed again at its exec: 2000 of them took 1000 services' back-to-back restarts
# from 2.04 to 2.37 ms), against ~120 us saved on the service's own restart.
KEEP_SERVICES = 128
KEEP_SHARE = 4


def exit_status(status: int) -> ExitStatus:
    """An ExitStatus from os.waitpid's status word."""
    if os.WIFSIGNALED(status):
        return ExitStatus("killed", signal=os.WTERMSIG(status))
    return ExitStatus("exited", code=os.waitstatus_to_exitcode(status))


def pidfd_open(pid: int) -> int | None:
    """A pidfd for `pid`; None when the process is already gone. OSError (EMFILE...)
    when the process exists but no descriptor can be had."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


# SIGCHLD as a descriptor. Blocked and read through a signalfd, a child's exit wakes the
# epoll loop like any fd: no EINTR, no Python signal handler, no wakeup-fd round trip on
# the restart path (~0.2 ms less per restart here). Children must not start with SIGCHLD
# blocked: posix_spawn gives them an empty mask, and the subprocess paths fork inside
# sigchld_unblocked(). The Python handler stays installed: a SIGCHLD that arrives while
# unblocked goes through it, and its wakeup makes the loop look for exited children.
_chld_blocked = False


def sigchld_fd() -> int | None:
    """Block SIGCHLD and return a non-blocking signalfd for it; None (SIGCHLD left
    unblocked, delivered to the Python handler) where signalfd cannot be had."""
    global _chld_blocked
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        mask = ctypes.create_string_buffer(128)  # sigset_t
        if libc.sigemptyset(mask) != 0 or libc.sigaddset(mask, signal.SIGCHLD) != 0:
            return None
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        fd = libc.signalfd(-1, mask, os.O_NONBLOCK | os.O_CLOEXEC)  # SFD_* are these
    except (OSError, AttributeError):
        return None
    if fd < 0:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        return None
    _chld_blocked = True
    return int(fd)


def drain_signalfd(fd: int) -> None:
    """Read the pending siginfo (128 bytes); what matters is only that one came. One
    read, not a loop to EAGAIN: SIGCHLD is a standard signal, pending at most once, and
    one that arrives later keeps the descriptor readable for the next round."""
    try:
        os.read(fd, 128 * 32)
    except (BlockingIOError, InterruptedError):
        pass


@contextlib.contextmanager
def sigchld_unblocked() -> Iterator[None]:
    """Around a subprocess fork: the child inherits the signal mask, and a service or
    probe must not start with SIGCHLD blocked."""
    if not _chld_blocked:
        yield
        return
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})


# Statuses the SIGCHLD path reaped for a child that is watched by its pidfd (a probe, a
# former main process): reap() hands them out. Bounded: an entry nobody asks for ages out.
_REAPED: dict[int, ExitStatus] = {}
_REAPED_MAX = 256


def exited_child() -> tuple[int, ExitStatus] | None:
    """One exited child of ours and its status, or None. The child is left a zombie
    (WNOWAIT): freeing it costs the kernel ~60 us, which the caller spends after the
    replacement is spawned, with release(pid). Until then the same child comes back."""
    try:
        res = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    if res is None or res.si_pid <= 0:
        return None
    return res.si_pid, child_status(res.si_code, res.si_status)


def child_status(si_code: int, si_status: int) -> ExitStatus:
    """The ExitStatus of a waitid() answer for an exited child."""
    if si_code == os.CLD_EXITED:
        return ExitStatus("exited", code=si_status)
    return ExitStatus("killed", signal=si_status)  # CLD_KILLED, CLD_DUMPED


def release(pid: int) -> None:
    """Reap the zombie `pid` whose status exited_child() already gave."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def keep_for_later(pid: int, st: ExitStatus) -> None:
    """Keep the status of an exited child that is not a service's main process (a probe,
    a former main process) for the reap(pid) its owner makes later."""
    _REAPED[pid] = st
    while len(_REAPED) > _REAPED_MAX:
        del _REAPED[next(iter(_REAPED))]


def reap(pid: int) -> ExitStatus | None:
    """The exit status of our exited child `pid`; ExitStatus("unknown") when it is not
    our child (adopted); None when it has not exited yet."""
    if (st := _REAPED.pop(pid, None)) is not None:
        return st
    try:
        wpid, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return ExitStatus("unknown")
    if wpid == 0:
        return None
    return exit_status(status)


# PIDFD_GET_INFO (Linux >= 6.13; the exit status in it since 6.15): _IOWR(0xFF, 11, the
# 64-byte struct pidfd_info: mask, cgroupid, eleven u32 ids, then the wait status)
_PIDFD_INFO_SIZE = 64
PIDFD_GET_INFO = (3 << 30) | (_PIDFD_INFO_SIZE << 16) | (0xFF << 8) | 11
PIDFD_INFO_EXIT = 1 << 3
_PIDFD_INFO_EXIT_CODE = 8 + 8 + 11 * 4  # offset of exit_code


def reaped_status(pidfd: int, wait: float = 0.05) -> ExitStatus | None:
    """The exit status of a process that was not our child (adopted after a restarter
    restart: init, the subreaper, reaps it), read through its pidfd. The kernel keeps
    the status once the process is reaped; the pidfd says "exited" a moment before, so
    this looks again for up to `wait` seconds. None where the kernel cannot tell (before
    Linux 6.15) or nobody reaped it in time."""
    import time
    deadline = time.monotonic() + wait
    while True:
        known, st = _pidfd_exit(pidfd)
        if st is not None or not known or time.monotonic() >= deadline:
            return st
        time.sleep(0.002)


def exit_pending(pidfd: int) -> bool:
    """Has the process of `pidfd` exited without being reaped yet, on a kernel that will
    give its status through the pidfd once it is (Linux >= 6.15)? The restarter then
    waits for the reap (the pidfd adds POLLHUP) instead of taking the exit as unknown."""
    known, st = _pidfd_exit(pidfd)
    return known and st is None and kernel_keeps_exit_status()


@functools.cache
def kernel_keeps_exit_status() -> bool:
    """Does this kernel keep a reaped process's exit status for its pidfds (Linux >= 6.15;
    6.13 and 6.14 answer PIDFD_GET_INFO without it)? Asked once, of a child of ours that
    exits at once and is reaped here."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    fd = pidfd_open(pid)
    try:
        os.waitpid(pid, 0)
        return fd is not None and _pidfd_exit(fd)[1] is not None
    finally:
        if fd is not None:
            os.close(fd)


def _pidfd_exit(pidfd: int) -> tuple[bool, ExitStatus | None]:
    """(whether the kernel answers PIDFD_INFO_EXIT, the exit status if it is known yet)."""
    import struct
    buf = bytearray(_PIDFD_INFO_SIZE)
    struct.pack_into("=Q", buf, 0, PIDFD_INFO_EXIT)
    try:
        fcntl.ioctl(pidfd, PIDFD_GET_INFO, buf, True)
    except OSError:
        return False, None  # no PIDFD_GET_INFO (ENOTTY/EINVAL), or a bad descriptor
    if struct.unpack_from("=Q", buf, 0)[0] & PIDFD_INFO_EXIT:
        return True, exit_status(struct.unpack_from("=i", buf, _PIDFD_INFO_EXIT_CODE)[0])
    return True, None


# --- cgroups -------------------------------------------------------------------------------

def own_cgroup(mount: str) -> str:
    """This process's cgroup v2 directory under `mount`."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                rel = line[3:].strip()
                return os.path.join(mount, rel.lstrip("/"))
    return mount


class CgroupInUse(Exception):
    """The chain's cgroup root is held by another live chain (its restarter's flock)."""


OWNER_XATTR = "user.hachain.state_dir"  # on the cgroup root: which chain owns it


def _delegate(root: str) -> None:
    """Delegate the pids and memory controllers down to the services' cgroups where the
    kernel offers them in v2 (for pids_max, memory_max); a hybrid host that binds one to
    v1 refuses it. One write each: a write naming both fails whole."""
    for d in (os.path.dirname(root), root):
        for controller in ("+pids", "+memory"):
            try:
                with open(os.path.join(d, "cgroup.subtree_control"), "w") as f:
                    f.write(controller)
            except OSError:
                pass


class Cgroups:
    """One cgroup v2 directory per service under `root`; inactive when root is None."""

    def __init__(self, root: str | None) -> None:
        self.root = root
        self._claim_fd: int | None = None  # flock on the root directory while we own it
        self.home: str | None = None  # the restarter's own cgroup, to move back into
        self._home_fd: int | None = None  # its cgroup.procs, kept open: one move per spawn
        self._made: set[str] = set()  # service cgroups known to exist
        # per service, each limit file as written (pids.max, memory.max), to write again
        # after renew()
        self._limits: dict[str, dict[str, str]] = {}
        self._oom_seen: dict[str, int] = {}  # oom_since(): the OOM kill count last read
        # the memory controller is delegated to the services' cgroups: each counts the
        # OOM kills of its processes, the machine's included (memory.events oom_kill)
        self.memory = False
        # a service cgroup's path -> its cgroup.procs opened for reading by the standby
        # this restarter was forked from: members() reads those with one pread
        self.held: dict[str, int] = {}
        # per service, once it has been spawned: its cgroup's directory (clone3's
        # CLONE_INTO_CGROUP) and cgroup.events (read at each exit), kept open. Opening
        # them cost ~65 and ~95 us on the restart path after a quiet second, against
        # ~35 us for a pread of the kept file (docs/restarter.md, "Restart latency").
        self._kept: dict[str, tuple[int, int]] = {}
        self.closed_kept = 0  # how many kept() pairs were closed: compiled restarts
        # made with one must be made again (loop.py _rearm)
        self._keep = True  # keep_for()
        self._paths: dict[str, str] = {}  # path(name)
        self.problem: str | None = None  # why a configured root is not used (from_config)
        if root is not None:
            mount = find_cgroup2_mount()
            self.home = own_cgroup(mount) if mount else None
            try:
                with open(os.path.join(root, "cgroup.subtree_control")) as f:
                    self.memory = "memory" in f.read().split()
            except OSError:
                pass

    @classmethod
    def from_config(cls, setting: str, hint: str = "hachain") -> Cgroups:
        """'none' → inactive; 'auto' → <cgroup2 mount>/<hint> when writable; else the path,
        when it is in a cgroup v2 file system: anywhere else it is inactive, nothing is
        made there, and `problem` says why in one line."""
        if setting == "none":
            return cls(None)
        root = setting
        if setting == "auto":
            mount = find_cgroup2_mount()
            if mount is None or not os.access(mount, os.W_OK):
                return cls(None)
            root = os.path.join(mount, hint)
        elif (why := cgroup2_problem(root)) is not None:
            off = cls(None)
            off.problem = (f"cgroup_root {root}: {why}: no cgroups, each service gets its "
                           "own process group instead")
            return off
        try:
            os.makedirs(root, exist_ok=True)
        except OSError:
            return cls(None)
        _delegate(root)
        return cls(root)

    def _remake_root(self) -> bool:
        """The root was removed behind our back (every service's cgroup with it, while
        none ran): made again, its controllers delegated, and claimed again."""
        assert self.root is not None
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError:
            return False
        _delegate(self.root)
        if self._claim_fd is not None:
            os.close(self._claim_fd)
            self._claim_fd = None
        if self._owner is not None:
            try:
                self.claim(self._owner)
            except CgroupInUse:
                return False
        return True

    _owner: str | None = None  # what claim() was given, to claim a remade root again

    def claim(self, owner: str) -> None:
        """Take the root for this chain for the life of this process: an exclusive flock
        on the cgroup directory itself (released by the kernel when the restarter dies,
        so its successor takes it again), with the owner's state directory in an xattr
        for the error message of whoever is refused. Raises CgroupInUse."""
        if self.root is None or self._claim_fd is not None:
            return
        self._owner = owner
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return  # no such directory: from_config made it, so cgroups are off anyway
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                other = os.getxattr(self.root, OWNER_XATTR).decode(errors="replace")
            except OSError:
                other = "unknown"
            os.close(fd)
            raise CgroupInUse(f"cgroup {self.root} belongs to another running chain "
                              f"(state_dir {other}); refusing to share it: give this chain "
                              "its own [chain] cgroup_root") from None
        try:
            os.setxattr(self.root, OWNER_XATTR, owner.encode())
        except OSError:
            pass  # xattrs on cgroupfs need Linux 5.7; the lock alone still protects
        self._claim_fd = fd

    @property
    def active(self) -> bool:
        return self.root is not None and self.home is not None

    def path(self, name: str) -> str | None:
        p = self._paths.get(name)  # (made once: the restart path asks it cold)
        if p is None and self.active and self.root:
            p = self._paths[name] = os.path.join(self.root, name)
        return p

    def ensure(self, name: str) -> str | None:
        return self.make(name)[0]

    def make(self, name: str) -> tuple[str | None, bool]:
        """The service's cgroup, made if it is missing; True when this call made it (a new
        cgroup is not frozen: its cgroup.freeze is 0)."""
        p = self.path(name)
        made = False
        if p is not None and name not in self._made:
            for attempt in range(2):
                try:
                    os.mkdir(p)  # the root exists: from_config made it
                    made = True
                    if self.memory:
                        self._oom_seen[name] = 0  # a new cgroup has killed nothing yet
                except FileExistsError:
                    pass  # left by an earlier restarter: it may be frozen
                except FileNotFoundError:
                    if attempt == 0 and self._remake_root():  # removed by hand
                        continue
                    return None, False
                except OSError:
                    return None, False
                break
            self._made.add(name)
        return p, made

    def forget(self, name: str) -> None:
        """The service's cgroup was removed behind our back (an `rmdir` by hand or by
        another agent while it was empty): drop what we kept of it, so that `make` makes
        it again."""
        self.close_kept(name)
        self._made.discard(name)

    def kept(self, name: str) -> tuple[int, int] | None:
        """(directory, cgroup.events) of the service's existing cgroup, opened on the
        first call and kept until renew() or remove(); None when they cannot be, or are
        not kept (a chain of more than KEEP_SERVICES services, or KEEP_SHARE of the file
        limit kept already): then each use opens its own."""
        got = self._kept.get(name)
        if got is not None:
            return got
        p = self.path(name)
        if p is None or not self._keep or name not in self._made or \
                len(self._kept) * 2 >= resource.getrlimit(resource.RLIMIT_NOFILE)[0] // KEEP_SHARE:
            return None
        try:
            d = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            e = os.open("cgroup.events", os.O_RDONLY | os.O_CLOEXEC, dir_fd=d)
        except OSError:
            os.close(d)
            return None
        self._kept[name] = (d, e)
        return d, e

    def keep_for(self, services: int) -> None:
        """Keep descriptors (kept()) only for a chain of at most KEEP_SERVICES services,
        unless a spawned child does not copy them and the file limit has room
        (keep_descriptors_for)."""
        self._keep = keep_descriptors_for(services)
        if not self._keep:
            for name in list(self._kept):
                self.close_kept(name)

    def close_kept(self, name: str) -> None:
        """Close what kept() holds for the service (its cgroup is gone, or so is it)."""
        got = self._kept.pop(name, None)
        if got is not None:
            self.closed_kept += 1
            for fd in got:
                os.close(fd)

    def renew(self, name: str) -> bool:
        """Make the service's cgroup afresh (rmdir, mkdir, its pids.max again) if it is
        empty: a cgroup that was once cgroup.kill'ed kills every child cloned into it on
        Linux 6.18 (spawn._spawn_into). False when it is not empty or cannot be."""
        p = self.path(name)
        if p is None or self.populated(name):
            return False
        self.close_kept(name)
        try:
            os.rmdir(p)
        except OSError:
            return False
        try:
            os.mkdir(p)
        except FileExistsError:
            pass
        except OSError:
            self._made.discard(name)
            return False
        for file, value in self._limits.get(name, {}).items():
            self._write_limit(p, file, value)
        if name in self._oom_seen:
            self._oom_seen[name] = 0  # a new cgroup counts from 0
        return True

    def has_limit(self, name: str, file: str) -> bool:
        """Whether this restarter has written that limit for the service."""
        return file in self._limits.get(name, {})

    def limit(self, name: str, file: str, limit: int) -> bool:
        """Write one of the service's limits, `pids.max` or `memory.max` (0: "max"). False
        when its controller is not enabled for this cgroup (then a fork bomb is only
        bounded by the kill of the whole cgroup on stop, a leak by the host's memory)."""
        p = self.path(name)
        if p is None:
            return False
        value = str(limit) if limit > 0 else "max"
        self._limits.setdefault(name, {})[file] = value
        return self._write_limit(p, file, value)

    @staticmethod
    def _write_limit(path: str, file: str, value: str) -> bool:
        try:
            with open(os.path.join(path, file), "w") as f:
                f.write(value)
            return True
        except OSError:
            return False

    def oom_since(self, name: str) -> bool:
        """True when the OOM killer has ended a process of the service's cgroup since the
        last look; the first look only takes the count."""
        count = self.oom_kills(name)
        if count is None:
            return False
        seen = self._oom_seen.get(name)
        self._oom_seen[name] = count
        return seen is not None and count > seen

    def oom_kills(self, name: str) -> int | None:
        """How many processes of the service's cgroup the kernel's OOM killer has ended
        (`oom_kill` in memory.events), or None when that cannot be read."""
        p = self.path(name)
        if p is None:
            return None
        try:
            raw = channels.read_small(os.path.join(p, "memory.events"))
        except OSError:
            return None
        for line in raw.splitlines():
            key, _, count = line.partition(b" ")
            if key == b"oom_kill" and count.strip().isdigit():
                return int(count)
        return None

    def thaw(self, path: str) -> None:
        """Make sure a cgroup is not frozen (cgroup.freeze): the restarter is about to
        move itself in there, and would be frozen with it."""
        try:
            fd = os.open(os.path.join(path, "cgroup.freeze"), os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            return  # no freezer (kernel < 5.2): nothing can be frozen
        try:
            os.write(fd, b"0")
        except OSError:
            pass
        finally:
            os.close(fd)

    def enter(self, path: str) -> None:
        self.thaw(path)
        fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def leave(self) -> None:
        if self.home:
            if self._home_fd is None:
                self._home_fd = os.open(os.path.join(self.home, "cgroup.procs"),
                                        os.O_WRONLY | os.O_CLOEXEC)
            os.write(self._home_fd, b"0")

    def procs(self, name: str) -> list[int]:
        """The pids in the service's cgroup ([] when it has none)."""
        return self.members(name) or []

    def children(self) -> set[str] | None:
        """The names in the root (one listing: at a chain's first start no service has a
        cgroup yet, and adoption then opens none); None when there is no listing it."""
        if not self.active or not self.root:
            return None
        try:
            return set(os.listdir(self.root))
        except OSError:
            return None

    def members(self, name: str) -> list[int] | None:
        """The pids in the service's cgroup; None when there is no such cgroup (or no
        reading it). Plain system calls, relative to the root's descriptor while we hold
        it: a new restarter reads this for every service before it restarts the dead ones
        (1000 reads: ~9 ms, against ~22 ms through open())."""
        p = self.path(name)
        if p is None:
            return None
        held = self.held.pop(p, None)
        if held is not None:
            try:  # one pread: the standby opened it (restarter/standby.py)
                raw = os.pread(held, 65536, 0)
                if len(raw) < 65536:
                    self.held[p] = held
                    return [int(x) for x in raw.split()]
            except (OSError, ValueError):
                pass  # the cgroup was removed since (ENODEV), or too long: open it anew
            os.close(held)
        try:
            if self._claim_fd is not None:
                fd = os.open(name + "/cgroup.procs", os.O_RDONLY | os.O_CLOEXEC,
                             dir_fd=self._claim_fd)
            else:
                fd = os.open(os.path.join(p, "cgroup.procs"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                chunks = []
                while chunk := os.read(fd, 65536):
                    chunks.append(chunk)
            finally:
                os.close(fd)
            return [int(x) for x in b"".join(chunks).split()]
        except (OSError, ValueError):
            return None

    def drop_held(self) -> None:
        """Close the standby's descriptors (after the scan that needed them)."""
        for fd in self.held.values():
            os.close(fd)
        self.held.clear()

    def populated(self, name: str) -> bool:
        """Is any process left in the service's cgroup? (one small read: the restart path
        asks it; a zombie is no longer listed)"""
        p = self.path(name)
        if p is None:
            return False
        try:
            fd = os.open(os.path.join(p, "cgroup.procs"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            return bool(os.read(fd, 16).strip())
        except OSError:
            return False
        finally:
            os.close(fd)

    def events(self, name: str) -> tuple[bool, bool] | None:
        """(populated, frozen) from the service's cgroup.events, in one read; None when
        it cannot be read. `populated` counts processes below it too; `frozen 1` is what
        an empty cgroup shows once its `cgroup.freeze` is 1."""
        kept = self._kept.get(name)
        if kept is not None:
            try:
                raw = os.pread(kept[1], 256, 0)  # read afresh: a new file position 0
                return b"populated 1" in raw, b"frozen 1" in raw
            except OSError:  # its cgroup removed behind our back: open it by name
                self.close_kept(name)
        p = self.path(name)
        if p is None:
            return None
        try:
            fd = os.open(p + "/cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            raw = os.read(fd, 256)
        except OSError:
            return None
        finally:
            os.close(fd)
        return b"populated 1" in raw, b"frozen 1" in raw

    def outside(self, name: str, main: int | None) -> list[int]:
        """The processes of the service's cgroup that are neither `main` nor descended
        from it: what a stop or exit of an earlier main process left (kill_mode =
        "process"), or a daemon that escaped to init. Sorted."""
        procs = self.procs(name)
        parent = {p: channels.proc_ppid(p) for p in procs}
        inside: set[int] = set() if main is None else {main}
        out: list[int] = []
        for p in procs:
            chain: list[int] = []
            q: int | None = p
            while q is not None and q in parent and q not in inside and q not in chain:
                chain.append(q)
                q = parent[q]
            if q is not None and q in inside:
                inside.update(chain)
            elif p != main:
                out.append(p)
        return sorted(out)

    def kill(self, name: str) -> bool:
        """SIGKILL every process in the service's cgroup. False when there is no cgroup."""
        p = self.path(name)
        if p is None or not os.path.isdir(p):
            return False
        self.thaw(p)  # so what is killed also exits now, and the cgroup is usable again
        try:
            with open(os.path.join(p, "cgroup.kill"), "w") as f:
                f.write("1")
            return True
        except OSError:
            pass
        for pid in self.procs(name):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return True

    def signal_all(self, name: str, sig: int) -> list[int]:
        """Send `sig` to every process in the service's cgroup; the pids it went to."""
        sent = []
        for pid in self.procs(name):
            try:
                os.kill(pid, sig)
                sent.append(pid)
            except ProcessLookupError:
                pass
        return sent

    def contains(self, name: str, pid: int) -> bool:
        return pid in self.procs(name)

    def remove(self, name: str) -> None:
        p = self.path(name)
        self._made.discard(name)
        self.close_kept(name)
        if p is not None:
            try:
                os.rmdir(p)
            except OSError:
                pass


# --- spawning ------------------------------------------------------------------------------

@dataclass
class Spawned:
    """A process the spawn started, and what came with it."""
    pid: int  # our child: its exit arrives with SIGCHLD (no pidfd)
    start_time: int | None  # /proc start time (clock ticks): with pid, names the process
    ready_fd: int | None  # read end of the s6-style readiness pipe
    notes: tuple[str, ...] = ()  # env_file lines left out (read_env_files)


class SpawnError(Exception):
    """A service could not be started. `transient` when the cause is a shortage of the
    moment (file descriptors, memory, process slots) rather than the configuration."""

    def __init__(self, msg: str, transient: bool = False) -> None:
        super().__init__(msg)
        self.transient = transient


TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM,
                              errno.ENOSPC, errno.EINTR})


def open_log(log_dir: str, name: str) -> int:
    """A descriptor for the service's log, opened afresh for each spawn (the caller
    closes it). None is kept open between spawns: every descriptor the restarter holds
    is copied into each new child and closed again at its exec, so 1000 kept log
    descriptors cost every restart ~0.3 ms (docs/restarter.md, "Restart latency")."""
    try:
        return os.open(os.path.join(log_dir, name + ".log"),
                       os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    except FileNotFoundError:
        os.makedirs(log_dir, exist_ok=True)
    return os.open(os.path.join(log_dir, name + ".log"),
                   os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)


ENV_FILE_MAX = 1 << 20  # an env_file larger than this is refused (it is no env file)


def read_env_files(cfg: ServiceConfig) -> tuple[dict[str, str], tuple[str, ...]]:
    """The variables of the service's env_file files, read now (systemd reads them at
    each start), and a line for each line left out. SpawnError naming the file when one
    without a leading "-" cannot be read; a FIFO or a device is never opened waiting."""
    from hachain import envfile
    out: dict[str, str] = {}
    notes: list[str] = []
    for entry in cfg.env_file:
        path = entry.removeprefix("-")
        try:
            if os.stat(path).st_size > ENV_FILE_MAX:  # before reading it whole
                raise OSError(errno.EFBIG, f"larger than {ENV_FILE_MAX} bytes")
            raw = channels.read_small(path, regular=True)
        except OSError as e:
            if entry.startswith("-") and isinstance(e, FileNotFoundError):
                continue
            raise SpawnError(f"env_file = {path}: {e.strerror or e}",
                             transient=e.errno in TRANSIENT_ERRNOS) from None
        found, skipped = envfile.parse(raw.decode("utf-8", "surrogateescape"))
        for name, value in found.items():
            if "\0" in value:
                skipped.append(f"{name}: a NUL character in the value")
            else:
                out[name] = value
        notes += [f"env_file {path}: {why}: left out" for why in skipped]
    return out, tuple(notes)


def service_env(cfg: ServiceConfig, notify_socket: str | None) -> dict[str, str]:
    """The complete environment of a service: nothing of the chain's own beyond PATH."""
    env = {"PATH": DEFAULT_PATH, channels.ENV_SERVICE: cfg.name}
    if notify_socket and (cfg.ready == "notify" or cfg.watchdog_sec or cfg.fd_store_max):
        # (a service with a watchdog pings on it whatever says it is ready, as systemd
        # gives a Type=simple one with WatchdogSec= NOTIFY_SOCKET)
        env["NOTIFY_SOCKET"] = notify_socket
        if cfg.watchdog_sec:
            env["WATCHDOG_USEC"] = str(int(cfg.watchdog_sec * 1_000_000))
    env.update(dict(cfg.env))
    return env


_RLIMIT = {n: getattr(resource, "RLIMIT_" + n.upper()) for n in
           ("as", "core", "cpu", "data", "fsize", "memlock", "nofile", "nproc", "stack")}


def errno_text(e: OSError) -> str:
    """"Operation not permitted (errno EPERM)": the message and the errno's name."""
    code = e.errno or 0
    return f"{e.strerror or os.strerror(code)} (errno {errno.errorcode.get(code, code)})"


# resource.setrlimit turns these two errnos into a ValueError with a fixed text
_SETRLIMIT_VALUE_ERRORS = {"not allowed to raise maximum limit": errno.EPERM,
                           "current limit exceeds maximum limit": errno.EINVAL}


def _rlimit_setting(name: str, soft: int, hard: int) -> str:
    return f"rlimits.{name} = " + (str(soft) if soft == hard else f"[{soft}, {hard}]")


@dataclass(frozen=True)
class Credentials:
    """What `user` and `group` resolve to, and how an error names them."""

    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] | None = None  # supplementary groups (the user's, from NSS)
    setting: str = ""  # 'user = "redis"', 'user = "redis", group = "www"', ...


_NO_CREDENTIALS = Credentials()


def make_directories(cfg: ServiceConfig, creds: Credentials) -> None:
    """Make the service's `directories` that are missing (parents too, as root), each
    `directory_mode` (0755) and owned by its user and group. SpawnError naming the one
    that fails."""
    for path in cfg.directories:
        if os.path.isdir(path):
            continue
        try:
            os.makedirs(path, mode=0o700)  # no one else gets in before it is chowned
            if creds.uid is not None or creds.gid is not None:
                os.chown(path, -1 if creds.uid is None else creds.uid,
                         -1 if creds.gid is None else creds.gid)
            os.chmod(path, cfg.directory_mode)  # after the chown (setgid kept), any umask
        except FileExistsError:
            if not os.path.isdir(path):
                raise SpawnError(f"directories = {path}: exists and is not a directory") \
                    from None
        except OSError as e:
            raise SpawnError(f"directories = {path}: {e.strerror or e}",
                             transient=e.errno in TRANSIENT_ERRNOS) from None


def credentials(cfg: ServiceConfig) -> Credentials:
    """Resolve `user` and `group` (in the restarter, before the fork): the user's uid, its
    primary group unless `group` is set, and its supplementary groups (as initgroups
    would), so a service never keeps root's group or groups. SpawnError names the
    setting that does not resolve, or says that the name service did not answer
    (transient: tried again after the backoff; RESOLVER)."""
    if cfg.user is None and cfg.group is None:
        return _NO_CREDENTIALS
    return RESOLVER.resolve(cfg.user, cfg.group)


def _resolve(user: str | None, group: str | None) -> Credentials:
    """The lookups themselves: the name service (files, and LDAP, sssd or NIS where
    nsswitch.conf says so), which may take as long as its server does."""
    uid = gid = None
    groups: tuple[int, ...] | None = None
    parts = []
    if user is not None:
        parts.append(f'user = "{user}"')
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise SpawnError(f'user = "{user}": no such user') from None
        uid, gid = pw.pw_uid, pw.pw_gid
    if group is not None:
        parts.append(f'group = "{group}"')
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise SpawnError(f'group = "{group}": no such group') from None
    if user is not None and gid is not None:
        try:
            groups = tuple(_getgrouplist(user, gid))
        except OSError as e:
            raise SpawnError(f'user = "{user}": its groups: {errno_text(e)}') from None
    return Credentials(uid, gid, groups, ", ".join(parts))


NSS_WAIT = 0.5  # s a start waits for the name service before it is put off


class Resolver:
    """`user` and `group` looked up by a thread of their own, so that a name service that
    does not answer (an LDAP, sssd or NIS server gone, a hung NFS /etc) holds that thread,
    never the restarter's loop, whose heartbeat the gate reads: a start waits NSS_WAIT at
    most. Past that, and while that lookup hangs, a start of a user this restarter has
    resolved before runs as what the service said last (said once, `notes`); one it
    never resolved is put off as a transient failure and tried again after its backoff.
    The thread starts with the first lookup: a chain whose services name no user has none.
    (pwd and grp let other threads run while they wait; os.getgrouplist does not, hence
    _clone3.getgrouplist.)"""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.todo: list[tuple[int, tuple[str | None, str | None]]] = []
        self.answers: dict[int, Credentials | SpawnError] = {}
        self.waiting: set[int] = set()
        self.last: dict[tuple[str | None, str | None], Credentials] = {}
        self.busy_since: float | None = None
        self.seq = 0
        self.thread: threading.Thread | None = None
        self.notes: list[str] = []  # lines for the loop to log (fallbacks, recoveries)
        self.fell_back: set[tuple[str | None, str | None]] = set()

    def resolve(self, user: str | None, group: str | None, wait: float = NSS_WAIT
                ) -> Credentials:
        key = (user, group)
        now = time.monotonic()
        with self.cond:
            busy = self.busy_since
            if busy is not None and now - busy >= wait:
                return self._fallback(key, now - busy)  # it hangs: ask it nothing more
            self.seq += 1
            seq = self.seq
            self.todo.append((seq, key))
            self.waiting.add(seq)
            self.cond.notify_all()
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="nss", daemon=True)
            self.thread.start()
        deadline = now + wait
        with self.cond:
            while seq not in self.answers:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.waiting.discard(seq)
                    busy = self.busy_since
                    return self._fallback(key, 0.0 if busy is None
                                          else time.monotonic() - busy)
                self.cond.wait(left)
            self.waiting.discard(seq)
            got = self.answers.pop(seq)
        if isinstance(got, SpawnError):
            raise got
        return got

    def _fallback(self, key: tuple[str | None, str | None], waited: float) -> Credentials:
        """(under cond) No answer in time: what this key resolved to last, else put off."""
        what = ", ".join(f'{k} = "{v}"' for k, v in zip(("user", "group"), key,
                                                          strict=True) if v is not None)
        last = self.last.get(key)
        if last is not None:
            if key not in self.fell_back:
                self.fell_back.add(key)
                self.notes.append(f"warning: {what}: the name service has not answered for "
                                  f"{max(waited, NSS_WAIT):.1f} s (a hung LDAP, sssd or NIS "
                                  "server, or NFS /etc?): starting as it said last")
            return last
        raise SpawnError(f"{what}: the name service did not answer within {NSS_WAIT:g} s "
                         "(a hung LDAP, sssd or NIS server, or NFS /etc?); tried again "
                         "after the backoff", transient=True)

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.todo:
                    self.cond.wait()
                seq, key = self.todo.pop(0)
                if seq not in self.waiting:
                    continue  # given up on before it was asked: the next is newer
                self.busy_since = time.monotonic()
            got: Credentials | SpawnError
            try:
                got = _resolve(*key)
            except SpawnError as e:
                got = e
            except Exception as e:  # noqa: BLE001 - the thread must outlive any lookup
                got = SpawnError(f"{key}: {type(e).__name__}: {e}")
            with self.cond:
                self.busy_since = None
                if isinstance(got, Credentials):
                    self.last[key] = got
                    if key in self.fell_back:
                        self.fell_back.discard(key)
                        self.notes.append(f"{got.setting}: the name service answers again")
                if seq in self.waiting:
                    self.answers[seq] = got
                self.cond.notify_all()


RESOLVER = Resolver()


_OWN_OOM = [0]  # the restarter's own oom_score_adj, which a spawned process inherits


def note_own_oom_score_adj() -> None:
    """Read the restarter's own OOM score adjustment (after it set it): a service whose
    `oom_score_adj` differs gets its own written in the child before the exec."""
    _OWN_OOM[0] = channels.own_oom_score_adj()


def oom_for(cfg: ServiceConfig) -> int | None:
    """The value to write into a new process of `cfg` (None: it inherits the right one)."""
    return None if cfg.oom_score_adj == _OWN_OOM[0] else cfg.oom_score_adj


def _oom_setting(value: int) -> str:
    return f"oom_score_adj = {value}: {channels.OOM_SCORE_ADJ}"


# What the fallback's child writes to its report pipe when its oom_score_adj write is
# refused, then goes on: "\x01oom ERRNO\n" (a failed step's report follows, if any)
_OOM_REFUSED = b"\x01oom "


def _oom_note(cfg: ServiceConfig, err: int) -> str:
    """The line for a start whose oom_score_adj could not be written: the service runs
    all the same, at the restarter's value (a tuning the host refuses is not a reason to
    leave a service down)."""
    why = os.strerror(err)
    if err in (errno.EACCES, errno.EPERM) and cfg.oom_score_adj < _OWN_OOM[0]:
        why += "; lowering it needs CAP_SYS_RESOURCE, which this host withholds"
    return f"oom_score_adj = {cfg.oom_score_adj} not applied ({why}): it runs at " \
           f"{_OWN_OOM[0]}, the restarter's"


def capability_mask(cfg: ServiceConfig) -> int:
    """`capabilities` as the bits of a capability set (0: none asked for)."""
    mask = 0
    for name in cfg.capabilities:
        mask |= 1 << CAPABILITIES.index(name.removeprefix("CAP_"))
    return mask


def dropped_capabilities(cfg: ServiceConfig) -> tuple[str, ...]:
    """What the protect_* keys take from the bounding set, as systemd's do."""
    out: tuple[str, ...] = ()
    if cfg.protect_kernel_modules:
        out += ("SYS_MODULE",)
    if cfg.protect_kernel_logs:
        out += ("SYSLOG",)
    if cfg.protect_clock:
        out += ("SYS_TIME", "WAKE_ALARM")
    if cfg.private_devices:
        out += ("MKNOD", "SYS_RAWIO")
    return out


def tty_flags(cfg: ServiceConfig) -> int:
    return (1 if cfg.tty_reset else 0) | (2 if cfg.tty_vhangup else 0)  # _clone3.c's


def take_tty(cfg: ServiceConfig) -> None:
    """In the fallback's child, a session leader: what _clone3.c's tty_step does."""
    import fcntl
    import termios
    path = cfg.tty_path
    assert path is not None

    def open_ctty() -> int:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
        return fd
    fd = open_ctty()
    if cfg.tty_vhangup:
        # the hang-up signals the terminal's session, ours now: ignored for that moment
        import signal as sig
        sig.signal(sig.SIGHUP, sig.SIG_IGN)
        try:
            fcntl.ioctl(fd, 0x5437)  # TIOCVHANGUP
        finally:
            sig.signal(sig.SIGHUP, sig.SIG_IGN)  # (discards one queued while blocked)
            sig.signal(sig.SIGHUP, sig.SIG_DFL)
        os.close(fd)
        fd = open_ctty()
    if cfg.tty_reset:
        try:
            t = termios.tcgetattr(fd)
        except termios.error:
            pass
        else:
            t[0] = t[0] & ~(termios.IGNBRK | termios.BRKINT | termios.ISTRIP | termios.INLCR
                            | termios.IGNCR | termios.IUCLC) | termios.ICRNL | \
                termios.IMAXBEL | 0o40000  # IUTF8 (not in every termios module)
            t[1] |= termios.ONLCR | termios.OPOST
            t[2] |= termios.CREAD
            t[3] |= termios.ISIG | termios.ICANON | termios.IEXTEN | termios.ECHO | \
                termios.ECHOE | termios.ECHOK | termios.ECHOCTL | termios.ECHOKE
            termios.tcsetattr(fd, termios.TCSANOW, t)
    for to in (0, 1, 2):
        os.dup2(fd, to)
    os.close(fd)


_POLICIES = {"other": 0, "fifo": 1, "rr": 2, "batch": 3, "idle": 5}  # SCHED_*
_RESET_ON_FORK = 0x40000000  # SCHED_RESET_ON_FORK
_IO_CLASSES = {"realtime": 1, "best-effort": 2, "idle": 3}  # IOPRIO_CLASS_*


def scheduling(cfg: ServiceConfig) -> tuple[int, int, int, bytes] | None:
    """(sched_setscheduler's policy or -1, its priority, ioprio_set's value or -1, the
    sched_setaffinity mask or b"") of `cfg`; None when it asks for none of them."""
    if not (cfg.cpu_scheduling_policy or cfg.io_scheduling_class or cfg.cpu_affinity):
        return None
    policy = -1
    if cfg.cpu_scheduling_policy:
        policy = _POLICIES[cfg.cpu_scheduling_policy] | (
            _RESET_ON_FORK if cfg.cpu_scheduling_reset_on_fork else 0)
    io = -1
    if cfg.io_scheduling_class:
        io = _IO_CLASSES[cfg.io_scheduling_class] << 13 | (
            0 if cfg.io_scheduling_class == "idle" else cfg.io_scheduling_priority)
    mask = b""
    if cfg.cpu_affinity:
        bits = sum(1 << c for c in set(cfg.cpu_affinity))
        mask = bits.to_bytes((max(cfg.cpu_affinity) // 64 + 1) * 8, "little")
    return policy, cfg.cpu_scheduling_priority, io, mask


def scheduling_setting(cfg: ServiceConfig, step: str) -> str:
    """The setting a failed scheduling step names."""
    if step == "sched_setscheduler":
        return f'cpu_scheduling_policy = "{cfg.cpu_scheduling_policy}"' + (
            f", cpu_scheduling_priority = {cfg.cpu_scheduling_priority}"
            if cfg.cpu_scheduling_priority else "")
    if step == "ioprio_set":
        return f'io_scheduling_class = "{cfg.io_scheduling_class}"'
    return f"cpu_affinity = {list(cfg.cpu_affinity)}"


_SYS_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "riscv64": 30, "armv7l": 314,
                   "i686": 289, "ppc64le": 273, "s390x": 282}


def apply_scheduling(cfg: ServiceConfig, libc: Any) -> tuple[str, OSError] | None:
    """In the fallback's child: what the compiled spawn's child does (_clone3.c). None,
    or the step that failed and its error."""
    sched = scheduling(cfg)
    if sched is None:
        return None
    policy, prio, io, mask = sched
    try:
        if policy >= 0:
            os.sched_setscheduler(0, policy, os.sched_param(prio))
    except OSError as e:
        return "sched_setscheduler", e
    if io >= 0:
        nr = _SYS_IOPRIO_SET.get(os.uname().machine)
        if nr is None or libc.syscall(nr, 1, 0, io) != 0:  # IOPRIO_WHO_PROCESS, itself
            code = libc_errno() if nr is not None else errno.ENOSYS
            return "ioprio_set", OSError(code, os.strerror(code))
    try:
        if mask:
            os.sched_setaffinity(0, set(cfg.cpu_affinity))
    except OSError as e:
        return "sched_setaffinity", e
    return None


def bounding_mask(cfg: ServiceConfig) -> int:
    """capability_bounding_set, less what the protect_* keys drop, as the bits kept (-1:
    the bounding set left as it is)."""
    drop = dropped_capabilities(cfg)
    if cfg.capability_bounding_set is None and not drop:
        return -1
    mask = (1 << 63) - 1  # (every capability the kernel may have: bit 63 is none)
    if cfg.capability_bounding_set is not None:
        mask = 0
        for c in cfg.capability_bounding_set:
            mask |= 1 << CAPABILITIES.index(c.removeprefix("CAP_"))
    for c in drop:
        mask &= ~(1 << CAPABILITIES.index(c))
    return mask


_PR_CAPBSET_DROP = 24


def _drop_bounding(libc: Any, keep: int) -> None:
    """In the fallback's child: every capability not in `keep` leaves the bounding set
    (as the compiled spawn does). OSError when one cannot."""
    for cap in range(64):
        if not keep >> cap & 1 and libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            code = libc_errno()
            if code == errno.EINVAL:
                return  # past the kernel's last capability
            raise OSError(code, os.strerror(code))


def _caps_setting(cfg: ServiceConfig) -> str:
    return f"capabilities = {', '.join(cfg.capabilities)}"


# prctl(2) and capset(2) for the fallback's child (the compiled spawn calls them itself)
_PR_SET_KEEPCAPS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE = 8, 47, 2
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_FILTER_SETTING = "system_call_filter (seccomp)"
_CAP_VERSION_3 = 0x20080522


def _libc() -> Any:
    import ctypes  # here: only a service with capabilities on the fallback path needs it
    return ctypes, ctypes.CDLL(None, use_errno=True)


def _keep_caps(libc: Any) -> None:
    if libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        raise OSError(libc_errno(), os.strerror(libc_errno()))


def _set_caps(ctypes: Any, libc: Any, mask: int) -> str | None:
    """Only the capabilities of `mask`, in every set, then ambient; the failed call's
    name, or None."""
    head = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)(*(mask >> 32 * i & 0xffffffff for i in (0, 0, 0, 1, 1, 1)))
    if libc.capset(head, data) != 0:
        return "capset"
    for c in range(64):
        if mask >> c & 1 and libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, c, 0, 0) != 0:
            return "ambient"
    return None


_CLONE_NEWNS, _MS_NOSUID, _MS_NODEV, _MS_REC, _MS_SLAVE = 0x20000, 2, 4, 0x4000, 0x80000
_CLONE_NEWUTS, _CLONE_NEWIPC = 0x04000000, 0x08000000


def unshare_flags(cfg: ServiceConfig, join: tuple[int, int] | None = None) -> int:
    """The namespaces a start of `cfg` unshares beside its mount steps and its network
    (protect_hostname: UTS; private_ipc: IPC; private_mounts with no mount step: a bare
    mount namespace, its mounts made slaves); 0 for a command that joins the service's."""
    if join is not None:
        return 0
    return (_CLONE_NEWUTS if cfg.protect_hostname else 0) | \
        (_CLONE_NEWIPC if cfg.private_ipc else 0) | \
        (_CLONE_NEWNS if cfg.private_mounts and not sandbox.plan(cfg) else 0)


def _unshare(libc: Any, flags: int) -> None:
    """In the fallback's child: unshare_flags' namespaces, as _clone3.c's
    unshare_step. OSError on failure."""
    if libc.unshare(flags) != 0 or (flags & _CLONE_NEWNS and libc.mount(
            None, b"/", None, _MS_REC | _MS_SLAVE, None) != 0):
        code = libc_errno()
        raise OSError(code, os.strerror(code))


def unshare_setting(cfg: ServiceConfig) -> str:
    """The settings unshare_flags stands for, as an error names them."""
    return ", ".join(k + " = true" for k in ("protect_hostname", "private_ipc",
                                              "private_mounts") if getattr(cfg, k))


_MS_BIND, _MS_REMOUNT, _MS_RDONLY, _MS_NOEXEC = 0x1000, 0x20, 1, 8
_AT_FDCWD, _AT_RECURSIVE, _OPEN_TREE_CLONE, _MOVE_MOUNT_F_EMPTY_PATH = -100, 0x8000, 1, 4
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442  # every architecture


def _mount_steps(ctypes: Any, libc: Any, steps: tuple[sandbox.Step, ...]) -> str | None:
    """In the fallback's child: the service's mount namespace, as the compiled spawn makes
    it (_clone3.c, mount_steps). None, or what failed ("mount namespace", or the step's
    description), with ctypes' errno set."""
    if libc.unshare(_CLONE_NEWNS) != 0 or \
            libc.mount(None, b"/", None, _MS_REC | _MS_SLAVE, None) != 0:
        return "mount namespace"
    attr = (ctypes.c_uint64 * 4)()

    def setattr_(path: bytes, ro: bool, bit: int = 1) -> bool:
        attr[0], attr[1] = (bit, 0) if ro else (0, bit)
        if libc.syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, path, _AT_RECURSIVE, attr, 32) == 0:
            return True
        if libc_errno() != errno.ENOSYS or bit != 1:
            return False  # (exec paths: Linux >= 5.12 only)
        return libc.mount(None, path, None, _MS_BIND | _MS_REMOUNT | (_MS_RDONLY if ro else 0),
                          None) == 0

    def one(st: sandbox.Step) -> bool:
        p = os.fsencode(st.path)
        if not os.path.exists(st.path):
            if st.optional:
                return True
            ctypes.set_errno(errno.ENOENT)
            return False
        hidden = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | _MS_RDONLY
        kind = st.kind & ~sandbox.LATE
        if kind == sandbox.DEVICES:
            return _private_dev(libc)
        if kind == sandbox.PROC:
            return libc.mount(b"proc", p, b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                              st.data.encode()) == 0
        if kind == sandbox.TMPFS:
            return libc.mount(b"tmpfs", p, b"tmpfs", _MS_NOSUID | _MS_NODEV, b"mode=1777") == 0
        if kind in (sandbox.HIDE, sandbox.EMPTY):
            mode = b"mode=000" if kind == sandbox.HIDE else b"mode=755"
            return libc.mount(b"tmpfs", p, b"tmpfs", hidden, mode) == 0
        if p != b"/" and libc.mount(p, p, None, _MS_BIND | _MS_REC, None) != 0:
            return False
        if kind in (sandbox.NO_EXEC, sandbox.EXEC):
            return setattr_(p, kind == sandbox.NO_EXEC, _MOUNT_ATTR_NOEXEC)
        return setattr_(p, kind == sandbox.READ_ONLY)

    kept: list[int] = []
    for st in steps:
        if st.kind == sandbox.KEEP:
            fd = libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(st.path),
                              _OPEN_TREE_CLONE | _AT_RECURSIVE | os.O_CLOEXEC)
            if fd < 0 and not (libc_errno() == errno.ENOENT and st.optional) and \
                    libc_errno() != errno.ENOSYS:
                return sandbox.describe(st)
            kept.append(fd)
    for st in steps:
        if st.kind != sandbox.KEEP and not st.kind & sandbox.LATE and not one(st):
            return sandbox.describe(st)
    for st, fd in zip([x for x in steps if x.kind == sandbox.KEEP], kept, strict=True):
        if fd >= 0:
            if libc.syscall(_SYS_MOVE_MOUNT, fd, b"", _AT_FDCWD, os.fsencode(st.path),
                            _MOVE_MOUNT_F_EMPTY_PATH) != 0:
                return sandbox.describe(st)
            os.close(fd)
    for st in steps:
        if st.kind & sandbox.LATE and not one(st):
            return sandbox.describe(st)
    return None


_MOUNT_ATTR_NOEXEC = 0x8
_JOIN_SETTING = "the service's namespaces (its stop or reload command joins them)"
_CLONE_NEWNET, _SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP, _IFF_RUNNING = \
    0x40000000, 0x8913, 0x8914, 0x1, 0x40


def _private_net(libc: Any) -> None:
    """In the fallback's child: a network namespace of its own, its loopback up (as
    _clone3.c's private_net). OSError when a step fails."""
    import fcntl
    import socket
    import struct
    if libc.unshare(_CLONE_NEWNET) != 0:
        code = libc_errno()
        raise OSError(code, os.strerror(code))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS,
                    struct.pack("16sh22x", b"lo", flags | _IFF_UP | _IFF_RUNNING))


def _private_dev(libc: Any) -> bool:
    """In the fallback's child: private_devices' /dev, as _clone3.c's private_dev makes
    it. False with ctypes' errno set when a step fails."""
    import ctypes
    names = sandbox.DEVICE_NODES + sandbox.DEVICE_DIRS
    fds: list[int] = []
    try:
        for i, n in enumerate(names):
            fd = libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, f"/dev/{n}".encode(),
                              _OPEN_TREE_CLONE | os.O_CLOEXEC |
                              (_AT_RECURSIVE if i >= len(sandbox.DEVICE_NODES) else 0))
            if fd < 0 and libc_errno() != errno.ENOENT:
                return False
            fds.append(fd)
        if libc.mount(b"tmpfs", b"/dev", b"tmpfs", _MS_NOSUID | _MS_NOEXEC, b"mode=755") != 0:
            return False
        for i, (n, fd) in enumerate(zip(names, fds, strict=True)):
            if fd < 0:
                continue
            p = f"/dev/{n}"
            if i < len(sandbox.DEVICE_NODES):
                os.close(os.open(p, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))
            else:
                os.mkdir(p, 0o755)
            if libc.syscall(_SYS_MOVE_MOUNT, fd, b"", _AT_FDCWD, p.encode(),
                            _MOVE_MOUNT_F_EMPTY_PATH) != 0:
                return False
        os.mkdir("/dev/pts", 0o755)
        if libc.mount(b"devpts", b"/dev/pts", b"devpts", _MS_NOSUID | _MS_NOEXEC,
                      b"newinstance,ptmxmode=0666,mode=0620") != 0:
            return False
        for target, link in (("pts/ptmx", "ptmx"), ("/proc/self/fd", "fd"),
                             ("/proc/self/fd/0", "stdin"), ("/proc/self/fd/1", "stdout"),
                             ("/proc/self/fd/2", "stderr")):
            os.symlink(target, f"/dev/{link}")
        return True
    except OSError as e:
        ctypes.set_errno(e.errno or errno.EIO)
        return False
    finally:
        for fd in fds:
            if fd >= 0:
                os.close(fd)


def libc_errno() -> int:
    import ctypes
    return ctypes.get_errno() or errno.EPERM


def _preexec(cfg: ServiceConfig, ready_w: int | None, creds: Credentials,
             report_w: int, oom: int | None = None,
             join: tuple[int, int] | None = None,
             prep: _Prepared | None = None) -> Callable[[], None]:
    """The child's set-up that subprocess cannot do itself, in this order: rlimits (while
    still root, so a hard limit can be raised), the OOM score adjustment (still root: a
    lower one needs it), credentials, the readiness fd. A failure writes "SETTING: call:
    error (errno NAME)" to `report_w` before it raises: subprocess itself would only say
    "Exception occurred in preexec_fn"."""
    limits = [(_rlimit_setting(n, s, h), _RLIMIT[n],
               (resource.RLIM_INFINITY if s < 0 else s, resource.RLIM_INFINITY if h < 0 else h))
              for n, s, h in cfg.rlimits]
    target = cfg.ready_fd
    mask = capability_mask(cfg)
    # loaded here, before the fork: the child only calls it
    ctypes: Any = None
    libc: Any = None
    mounts = sandbox.plan(cfg) if sandbox.needs_namespace(cfg) and join is None else ()
    uflags = unshare_flags(cfg, join)
    socks = prep.listen if prep is not None else ()
    exe = (prep.exe or os.fsencode(_exe_path(cfg, prep.env))) if prep is not None and socks \
        else b""
    keep = bounding_mask(cfg)
    programs = seccomp_programs(cfg)
    if mask or cfg.no_new_privileges or mounts or keep >= 0 or programs or \
            cfg.private_network or join is not None or cfg.io_scheduling_class or uflags:
        ctypes, libc = _libc()

    def fail(what: str, e: OSError) -> None:
        try:
            os.write(report_w, f"{what}: {errno_text(e)}".encode()[:1000])
        except OSError:
            pass

    def setup() -> None:
        if cfg.ignore_sigpipe:  # (subprocess has just put it back to its default)
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        if join is not None:
            if libc.setns(join[0], join[1]) != 0:
                code = libc_errno()
                fail(_JOIN_SETTING, OSError(code, os.strerror(code)))
                raise OSError(code, os.strerror(code))
            if cfg.cwd is not None:  # (setns put it at the namespace's root)
                try:
                    os.chdir(cfg.cwd)
                except OSError as e:
                    fail(f'cwd = "{cfg.cwd}": chdir', e)
                    raise
        elif cfg.private_network:
            try:
                _private_net(libc)
            except OSError as e:
                fail("private_network = true", e)
                raise
        if uflags:
            try:
                _unshare(libc, uflags)
            except OSError as e:
                fail(f"{unshare_setting(cfg)}: unshare", e)
                raise
        if mounts:
            # subprocess was not given cwd: it is changed into here, after the mounts,
            # so that it is looked up in the file system the service sees
            if (what := _mount_steps(ctypes, libc, mounts)) is not None:
                code = libc_errno()
                fail(what, OSError(code, os.strerror(code)))
                raise OSError(code, os.strerror(code))
            if cfg.cwd is not None:
                try:
                    os.chdir(cfg.cwd)
                except OSError as e:
                    fail(f'cwd = "{cfg.cwd}": chdir', e)
                    raise
        if cfg.nice is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, cfg.nice)
            except OSError as e:
                fail(f"nice = {cfg.nice}: setpriority", e)
                raise
        if cfg.tty_path is not None:  # (a session leader: start_new_session)
            try:
                take_tty(cfg)
            except OSError as e:
                fail(f'tty_path = "{cfg.tty_path}"', e)
                raise
        if (bad := apply_scheduling(cfg, libc)) is not None:  # (still root)
            fail(f"{scheduling_setting(cfg, bad[0])}: {bad[0]}", bad[1])
            raise bad[1]
        for what, res, lim in limits:
            try:
                resource.setrlimit(res, lim)
            except ValueError as e:
                code = _SETRLIMIT_VALUE_ERRORS.get(str(e), errno.EINVAL)
                fail(f"{what}: setrlimit", OSError(code, os.strerror(code)))
                raise
            except OSError as e:
                fail(f"{what}: setrlimit", e)
                raise
        if keep >= 0:
            try:
                _drop_bounding(libc, keep)
            except OSError as e:
                fail("capability_bounding_set: prctl PR_CAPBSET_DROP", e)
                raise
        if oom is not None:
            try:
                with open(channels.OOM_SCORE_ADJ, "w") as f:
                    f.write(str(oom))
            except OSError as e:  # not a failed start: said by the parent (_oom_note)
                try:
                    os.write(report_w, _OOM_REFUSED + str(e.errno or 0).encode() + b"\n")
                except OSError:
                    pass
        call = ""
        if mask:
            try:
                _keep_caps(libc)
            except OSError as e:
                fail(f"{_caps_setting(cfg)}: prctl", e)
                raise
        try:
            if creds.groups is not None:
                call = "setgroups"
                os.setgroups(list(creds.groups))
            if creds.gid is not None:
                call = "setresgid"
                os.setresgid(creds.gid, creds.gid, creds.gid)
            if creds.uid is not None:
                call = "setresuid"
                os.setresuid(creds.uid, creds.uid, creds.uid)
        except OSError as e:
            fail(f"{creds.setting}: {call}", e)
            raise
        if mask and (step := _set_caps(ctypes, libc, mask)) is not None:
            code = libc_errno()
            fail(f"{_caps_setting(cfg)}: {step}", OSError(code, os.strerror(code)))
            raise OSError(code, os.strerror(code))
        if cfg.no_new_privileges and libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            code = libc_errno()
            fail("no_new_privileges = true: prctl", OSError(code, os.strerror(code)))
            raise OSError(code, os.strerror(code))
        if ready_w is not None:
            os.dup2(ready_w, target, inheritable=True)
        if socks:
            try:
                # copied above 3.. first, so none is overwritten before it is moved
                base = max(listen.FIRST_FD + len(socks), target + 1 if ready_w else 0)
                tmp = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, base) for fd in socks]
                # (the exec is made here, before subprocess's close_fds: anything left
                # inheritable by mistake closes at it, the ready fd excepted)
                for name in os.listdir("/proc/self/fd"):
                    if int(name) > 2 and (ready_w is None or int(name) != target):
                        try:
                            os.set_inheritable(int(name), False)
                        except OSError:
                            pass  # (listdir's own descriptor, closed by now)
                for i, fd in enumerate(tmp):
                    os.dup2(fd, listen.FIRST_FD + i, inheritable=True)
            except OSError as e:
                fail("listen sockets: dup2", e)
                raise
        if programs and (failed := _install_filters(ctypes, libc, programs)) is not None:
            # (the last step: subprocess closes no descriptor after it, see spawn())
            code = libc_errno()
            fail(f"{_FILTER_SETTING}: {failed}", OSError(code, os.strerror(code)))
            raise OSError(code, os.strerror(code))
        if socks:
            # LISTEN_PID is this process's own pid, which the environment subprocess
            # passes cannot know: the exec is made here (every other descriptor of the
            # restarter is close-on-exec, PEP 446)
            assert prep is not None
            env = dict(prep.env, LISTEN_PID=str(os.getpid()))
            try:
                os.execve(exe, prep.argv, env)
            except OSError as e:
                fail(f"{cfg.command[0]}: exec", e)
                raise
    return setup


def _popen_error(e: OSError, cfg: ServiceConfig, creds: Credentials) -> str:
    """Which setting an OSError from subprocess's child belongs to. subprocess says: a
    failed chdir carries `cwd` as filename, a failed exec the program, and any other
    step before the exec (setgroups, setresgid, setresuid; fork itself) none."""
    if cfg.cwd is not None and e.filename == cfg.cwd:
        return f'cwd = "{cfg.cwd}": chdir: {errno_text(e)}'
    if e.filename is None:
        what = f"{creds.setting}: switching credentials" if creds.setting and \
            e.errno not in TRANSIENT_ERRNOS else "fork"
        return f"{what}: {errno_text(e)}"
    return f'command[0] = "{cfg.command[0]}": exec: {errno_text(e)}'


_FILTERS: dict[tuple[Any, ...], list[bytes]] = {}


def _filter_key(cfg: ServiceConfig) -> tuple[Any, ...]:
    # (its protect_* keys too: without them, a service with protect_hostname alone that
    # started first gave a later one with protect_kernel_modules its program, found by
    # CI's order of tests, 2026-12-05)
    return seccomp.filter_key(cfg)


def seccomp_programs(cfg: ServiceConfig) -> list[bytes]:
    """The service's seccomp programs (hachain/seccomp.py), built once per set of its
    filter keys (a stop_command or reload_command of it shares them). SpawnError naming
    the key when they cannot be built."""
    if not seccomp.uses_seccomp(cfg):
        return []
    key = _filter_key(cfg)
    got = _FILTERS.get(key)
    if got is None:
        try:
            got = seccomp.programs(cfg)
        except seccomp.FilterError as e:
            raise SpawnError(str(e)) from None
        if len(_FILTERS) > 256:
            _FILTERS.clear()
        _FILTERS[key] = got
    return got


def _install_filters(ctypes: Any, libc: Any, programs: list[bytes]) -> str | None:
    """Install seccomp programs in this (child) process, the last step before its exec;
    with no_new_privs first where the kernel asks for it (no CAP_SYS_ADMIN: a service
    that runs as its own user). The failing call's name, or None."""
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    nnp = False
    for code in programs:
        buf = ctypes.create_string_buffer(code, len(code))
        prog = Prog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
        while libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0):
            if libc_errno() != errno.EACCES or nnp:
                return "prctl PR_SET_SECCOMP"
            if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                return "prctl PR_SET_NO_NEW_PRIVS"
            nnp = True
    return None


def _plain(cfg: ServiceConfig) -> bool:
    """A service that needs no set-up posix_spawn cannot do (cwd, credentials, umask,
    rlimits, a readiness fd at a fixed number) takes the fast path."""
    return (cfg.cwd is None and cfg.user is None and cfg.group is None and cfg.umask is None
            and not cfg.rlimits and not prestart.ready_pipe(cfg) and not cfg.capabilities
            and not cfg.no_new_privileges and not sandbox.needs_namespace(cfg)
            and cfg.nice is None and bounding_mask(cfg) < 0
            and not seccomp.uses_seccomp(cfg) and not cfg.private_network
            and scheduling(cfg) is None and cfg.tty_path is None and not cfg.private_ipc)


_EXE_CACHE: dict[tuple[str, str], str] = {}
# Signals the restarter ignores or handles: a service starts with their defaults.
_SIGDEF = (signal.SIGPIPE, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD,
           signal.SIGXFSZ)
_SIGDEF_NUMBERS = [int(s) for s in _SIGDEF]  # as _clone3.spawn takes them
# ignore_sigpipe (systemd's IgnoreSIGPIPE=, its default): SIGPIPE stays ignored, as the
# restarter has it
_SIGDEF_KEEP_PIPE = tuple(s for s in _SIGDEF if s != signal.SIGPIPE)
_SIGDEF_KEEP_PIPE_NUMBERS = [int(s) for s in _SIGDEF_KEEP_PIPE]


def _exe_path(cfg: ServiceConfig, env: dict[str, str], argv0: str | None = None) -> str:
    """command[0] (or `argv0`), looked up in the service's PATH when it has no slash
    (cached)."""
    if argv0 is None:
        argv0 = prestart.exec_argv(cfg)[0]
    if "/" in argv0:
        return argv0
    key = (argv0, env["PATH"])
    found = _EXE_CACHE.get(key)
    if found is None or not os.access(found, os.X_OK):
        import shutil  # here: it loads the bz2 and lzma libraries, once per name
        found = shutil.which(argv0, path=env["PATH"])
        if found is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", argv0)
        _EXE_CACHE[key] = found
    return found


# clone3 errors that mean "this kernel cannot" (no clone3, no CLONE_INTO_CGROUP): the
# fallback from then on. Errors about this one cgroup (EBUSY: controllers enabled below
# it; EOPNOTSUPP, EACCES, ...) fall back for that spawn only.
_CLONE3_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL, errno.E2BIG})
_CLONE3_TRANSIENT = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EINTR})
# The calling convention of _clone3.spawn this file uses: a build of another one (an
# editable install whose extension was built before _clone3.c changed) is not used.
CLONE3_ABI = 21


def clone3_usable(mod: Any) -> bool:
    """A _clone3 module this file can call: built with clone3 support, same ABI."""
    return mod is not None and bool(getattr(mod, "AVAILABLE", 0)) and \
        getattr(mod, "ABI", None) == CLONE3_ABI


_direct = clone3_usable(_clone3)


def reserve_descriptor_slots() -> None:
    """Reserve, while the lowest free descriptors are still low, the two through which the
    compiled spawn hands a child its output and readiness descriptors: each child then
    copies only the descriptors below them, not the hundreds the restarter may hold
    (_clone3.c, SLOTS). Nothing to do without the extension or on Linux < 5.9."""
    global _slots
    if _direct and hasattr(_clone3, "reserve"):
        _slots = _clone3.reserve() is not None


_slots = False  # reserve_descriptor_slots() succeeded


def descriptors_not_copied() -> bool:
    """Does a spawned child copy only a few low descriptors of the restarter's (so that
    holding one per service costs the spawns nothing)? True once the slots are reserved
    and clone3 is in use."""
    return _slots and _direct


FDS_PER_SERVICE = 8  # keep_descriptors_for: the file limit's room asked for per service


def keep_descriptors_for(services: int) -> bool:
    """May the restarter keep descriptors per service beyond what it needs (the cgroup
    descriptors of Cgroups.kept, the output pipes of loop.HeldOutput)? Always for a chain
    of at most KEEP_SERVICES services. A larger one only where spawned children do not
    copy them, and where the file limit leaves room for FDS_PER_SERVICE each (a pidfd per
    adopted service, the standby's cgroup.procs, both kept, a held pipe, a readiness
    pipe...): with a hard limit of 4096, 1000 services keep none, as before."""
    if services <= KEEP_SERVICES:
        return True
    return descriptors_not_copied() and \
        services * FDS_PER_SERVICE <= resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def direct_spawn_available() -> bool:
    """Can plain services be started straight into their cgroup (clone3)?"""
    return _direct


def direct_spawn_problem() -> str | None:
    """Why the compiled spawn is built but not used (None: used, or not built)."""
    if _clone3 is None or _direct or not getattr(_clone3, "AVAILABLE", 0):
        return None
    return (f"{_clone3.__file__}: built for another version of spawn.py (ABI "
            f"{getattr(_clone3, 'ABI', 1)}, this one needs {CLONE3_ABI}): services are "
            "moved into their cgroups instead; rebuild it with scripts/setup.sh "
            "(pip install -e .)")


_KILLED_AT_BIRTH = "clone3: killed at birth"


def _setup(cfg: ServiceConfig, creds: Credentials, ready_w: int | None,
           join: tuple[int, int] | None = None, prep: _Prepared | None = None
           ) -> tuple | None:
    """What a service needs beyond a plain spawn, as _clone3.spawn takes it; None: nothing.
    (RLIM_INFINITY is -1 here and all ones in C: the extension takes the bits.) `prep`:
    its listen sockets, with LISTEN_PID's slot last in its envp."""
    socks = prep.listen if prep is not None else ()
    if _plain(cfg) and not socks:
        return None
    return (None if cfg.cwd is None else os.fsencode(cfg.cwd),
            -1 if cfg.umask is None else cfg.umask,
            None if creds.groups is None else list(creds.groups),
            -1 if creds.gid is None else creds.gid,
            -1 if creds.uid is None else creds.uid,
            [(_RLIMIT[n], s, h) for n, s, h in cfg.rlimits],
            None if ready_w is None else (ready_w, cfg.ready_fd),
            capability_mask(cfg), cfg.no_new_privileges,
            [(st.kind, os.fsencode(st.path), st.optional, st.data.encode())
             for st in sandbox.plan(cfg)]
            if sandbox.needs_namespace(cfg) and join is None else [], cfg.nice,
            bounding_mask(cfg), seccomp_programs(cfg), cfg.private_network and join is None,
            join, scheduling(cfg),
            None if cfg.tty_path is None else (os.fsencode(cfg.tty_path), tty_flags(cfg)),
            (list(socks), len(prep.envp) - 1) if prep is not None and socks else None,
            unshare_flags(cfg, join))


def _step_error(e: OSError, cfg: ServiceConfig, creds: Credentials) -> Exception:
    """The error of a failed step in a child started by _clone3.spawn, worded as the
    other spawn paths word it: an OSError for the exec and the chdir (_popen_error names
    the setting), a SpawnError for the rest."""
    step = str(e.filename)
    if step == "exec":
        return OSError(e.errno, e.strerror, cfg.command[0])
    if step == "chdir":
        return OSError(e.errno, e.strerror, cfg.cwd)
    if step in ("setgroups", "setresgid", "setresuid"):
        return SpawnError(f"{creds.setting}: {step}: {errno_text(e)}")
    if step.startswith("rlimit "):
        n, soft, hard = cfg.rlimits[int(step.split()[1])]
        return SpawnError(f"{_rlimit_setting(n, soft, hard)}: setrlimit: {errno_text(e)}")
    if step in ("capset", "ambient"):
        return SpawnError(f"{_caps_setting(cfg)}: {step}: {errno_text(e)}")
    if step == "no_new_privs":
        return SpawnError(f"no_new_privileges = true: prctl: {errno_text(e)}")
    if step == "mount namespace":
        return SpawnError(f"{sandbox.plan(cfg)[0].setting}: mount namespace: "
                          f"{errno_text(e)}")
    if step.startswith("mount "):
        what = sandbox.describe(sandbox.plan(cfg)[int(step.split()[1])])
        return SpawnError(f"{what}: {errno_text(e)}")
    if step == "capability bounding set":
        return SpawnError(f"capability_bounding_set: prctl PR_CAPBSET_DROP: {errno_text(e)}")
    if step == "setpriority":
        return SpawnError(f"nice = {cfg.nice}: setpriority: {errno_text(e)}")
    if step == "tty":
        return SpawnError(f'tty_path = "{cfg.tty_path}": {errno_text(e)}')
    if step in ("sched_setscheduler", "ioprio_set", "sched_setaffinity"):
        return SpawnError(f"{scheduling_setting(cfg, step)}: {step}: {errno_text(e)}")
    if step == "join namespaces":
        return SpawnError(f"{_JOIN_SETTING}: setns: {errno_text(e)}")
    if step == "network namespace":
        return SpawnError(f"private_network = true: {errno_text(e)}")
    if step == "namespaces":
        return SpawnError(f"{unshare_setting(cfg)}: unshare: {errno_text(e)}")
    if step == "seccomp":
        return SpawnError(f"{_FILTER_SETTING}: prctl PR_SET_SECCOMP: {errno_text(e)}")
    return SpawnError(f"{step}: {errno_text(e)}", transient=e.errno in TRANSIENT_ERRNOS)


class _Prepared(NamedTuple):
    """What every start of one service passes the same way, made once per configuration
    (a restart's path runs cold: each conversion skipped there counts)."""

    cfg: ServiceConfig
    notify_socket: str | None
    env: dict[str, str]
    argv: list[bytes]
    envp: list[bytes]
    exe: bytes | None  # the program's path, when command[0] names it (has a slash)
    plain: bool  # _plain(cfg): no set-up beyond a plain spawn
    nofile: tuple[int, int] | None  # the RLIMIT_NOFILE it is given (None: its own rlimits)
    listen: tuple[int, ...] = ()  # sockets handed over as 3, ... (never cached)


_LISTEN_PID_SLOT = b"LISTEN_PID=0"  # the child writes its own pid there


def _with_listen(prep: _Prepared, fds: tuple[int, ...], names: tuple[str, ...]) -> _Prepared:
    """`prep` with the descriptors `fds` to hand over (its listen sockets, then what it
    stored), named `names` (empty: all its fd_name): LISTEN_FDS, LISTEN_FDNAMES, and
    LISTEN_PID last in envp (its slot, which the child fills), over any its env sets."""
    cfg = prep.cfg
    env = {k: v for k, v in prep.env.items() if k not in listen.ENV_KEYS}
    env.update(listen.env(names or (cfg.fd_name or f"{cfg.name}.socket",) * len(fds)))
    envp = [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()]
    return prep._replace(env=env, envp=envp + [_LISTEN_PID_SLOT], plain=False,
                         listen=tuple(fds))


_PREPARED: dict[str, _Prepared] = {}


def _prepared(cfg: ServiceConfig, notify_socket: str | None,
              files: dict[str, str] | None = None) -> _Prepared:
    """The service's environment, argv and envp, from the cache while `cfg` is the very
    configuration object they were made from (a reload that changes it makes new ones).
    `files`: what its env_file files hold now, over `env` (never cached)."""
    if files:
        base = _prepared(cfg, notify_socket)
        env = {**base.env, **files}
        return base._replace(env=env, envp=[os.fsencode(k) + b"=" + os.fsencode(v)
                                            for k, v in env.items()])
    p = _PREPARED.get(cfg.name)
    if p is None or p.cfg is not cfg or p.notify_socket != notify_socket:
        env = service_env(cfg, notify_socket)
        argv = prestart.exec_argv(cfg)
        p = _Prepared(cfg, notify_socket, env, [os.fsencode(a) for a in argv],
                      [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()],
                      os.fsencode(argv[0]) if "/" in argv[0] else None,
                      _plain(cfg),
                      None if any(n == "nofile" for n, _, _ in cfg.rlimits) else BASE_NOFILE)
        _PREPARED[cfg.name] = p
    return p


def _spawn_into(cg: str, cfg: ServiceConfig, prep: _Prepared, logfd: int,
                cgroups: Cgroups, creds: Credentials, ready_w: int | None,
                thaw: bool = True, join: tuple[int, int] | None = None) -> int | None:
    """A service started straight into its cgroup `cg` by clone3, with its whole set-up
    (cwd, umask, rlimits, user and groups, readiness fd); None when that cannot be done
    here (the caller falls back to moving itself). OSError as from posix_spawn or
    subprocess (filename: the program or the cwd); SpawnError for another step.

    A child cloned into a cgroup that was once cgroup.kill'ed is SIGKILLed by Linux 6.18
    before it runs (see _clone3.c). Such a cgroup is made afresh (rmdir, mkdir) when it
    is empty, and the spawn tried once more; when even a fresh cgroup kills its child (the
    restarter's own cgroup was once killed), clone3 is given up for good.

    `thaw` False: the caller has just read the cgroup empty and not frozen."""
    global _direct
    path = prep.exe or os.fsencode(_exe_path(cfg, prep.env))
    argv, envp, nofile = prep.argv, prep.envp, prep.nofile
    setup = None if prep.plain else _setup(cfg, creds, ready_w, join, prep)
    oom = oom_for(cfg)
    for attempt in range(2):
        if thaw or attempt:
            cgroups.thaw(cg)  # a child born into a frozen cgroup would hold us in vfork's wait
        kept = cgroups.kept(cfg.name)
        try:
            fd = kept[0] if kept is not None else \
                os.open(cg, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return int(_clone3.spawn(path, argv, envp, logfd, fd,
                                     _SIGDEF_KEEP_PIPE_NUMBERS if cfg.ignore_sigpipe
                                     else _SIGDEF_NUMBERS, nofile,
                                     setup, oom))
        except OSError as e:
            if e.filename == _KILLED_AT_BIRTH:
                if attempt == 0 and cgroups.renew(cfg.name):
                    continue
                if attempt == 1:
                    _direct = False
                return None
            if e.filename == "clone3":
                if e.errno == errno.ENOENT and attempt == 0:
                    # the cgroup was removed (while the service was down): made again,
                    # not left for the fallback, which cannot enter it either
                    cgroups.forget(cfg.name)
                    if cgroups.make(cfg.name)[0] is not None:
                        continue
                    return None
                if e.errno in _CLONE3_UNSUPPORTED:
                    _direct = False
                    return None
                if e.errno in _CLONE3_TRANSIENT:
                    raise OSError(e.errno, e.strerror) from None  # as fork would fail
                return None
            raise _step_error(e, cfg, creds) from None
        finally:
            if kept is None:
                os.close(fd)
    return None


# --- the compiled restart: what _clone3.wait needs to start a replacement ---------------

def compiled_restart_fits(cfg: ServiceConfig) -> bool:
    """Can a replacement of `cfg` be started by _clone3.wait, before any Python runs?
    Only a service whose start is spawn()'s clone3 and nothing else: no step before it
    (files, commands, pipes, directories, credentials, sockets, programs, a terminal),
    none after it but what the restarter does for every start, and its leftovers killed
    by kill_leftovers' rule (the C side reads cgroup.events empty instead)."""
    return (cfg.kind == "longrun" and not cfg.env_file and not cfg.pre_start
            and not prestart.ready_pipe(cfg) and not cfg.credentials and not cfg.directories
            and not cfg.listen and not cfg.fd_store_max and cfg.tty_path is None
            and not cfg.private_network and not sandbox.needs_namespace(cfg)
            and cfg.kill_mode != "process" and not holds_programs(cfg))


def compiled_restart(cfg: ServiceConfig, notify_socket: str | None,
                     cgroups: Cgroups) -> tuple[int, tuple] | None:
    """(its cgroup.events descriptor, _clone3.spawn's arguments with the output left -1)
    for a replacement of `cfg` started by _clone3.wait, the same arguments _spawn_into
    passes; None when it cannot be made ready (no kept cgroup, no clone3, its user not
    known now: the Python path then says why at the start)."""
    if not _direct or not compiled_restart_fits(cfg):
        return None
    kept = cgroups.kept(cfg.name)
    if kept is None:
        return None
    prep = _prepared(cfg, notify_socket)
    try:
        path = prep.exe or os.fsencode(_exe_path(cfg, prep.env))
        setup = None if prep.plain else _setup(cfg, credentials(cfg), None, None, prep)
    except (SpawnError, OSError):
        return None
    return kept[1], (path, prep.argv, prep.envp, -1, kept[0],
                     _SIGDEF_KEEP_PIPE_NUMBERS if cfg.ignore_sigpipe else _SIGDEF_NUMBERS,
                     prep.nofile, setup, oom_for(cfg))


def compiled_wait(epfd: int, timeout_ms: int, maxevents: int, sigchld_fd: int,
                  notify_fd: int, armed: dict[int, tuple[int, tuple, bytes]], spare_w: int,
                  yield_cpu: bool, beat: tuple | None = None
                  ) -> tuple[list[tuple[int, int]], tuple[int, ...] | None, int, int]:
    """_clone3.wait (see there): the loop's epoll_wait, the replacement of an armed
    service whose exit woke it started before it returns, and with `beat` the idle
    heartbeats written meanwhile (how many, and when the next is due in ns)."""
    return _clone3.wait(epfd, timeout_ms, maxevents, sigchld_fd, notify_fd, armed,
                        spare_w, yield_cpu, beat)


def compiled_spawned(cfg: ServiceConfig, pid: int, born: int, born_by: int) -> Spawned:
    """What spawn() would have returned for the replacement _clone3.wait started."""
    refused = _clone3.last_oom_error() if oom_for(cfg) is not None else 0
    return Spawned(pid=pid, start_time=channels.start_time_between(pid, born, born_by),
                   ready_fd=None, notes=(_oom_note(cfg, refused),) if refused else ())


def _main_program(cfg: ServiceConfig, files: dict[str, str]) -> None:
    """With pre_start, /bin/sh execs the service's program only after them: a program
    that is missing or not executable fails the start here, as it would without
    (SpawnError naming command[0]), not after the commands ran."""
    argv0 = cfg.command[0]
    if "/" in argv0 and not argv0.startswith("/"):
        return  # relative to its cwd, as the exec in the service will look
    env = {**service_env(cfg, None), **files}
    try:
        path = _exe_path(cfg, env, cfg.command[0])
        os.stat(path)  # ENOENT, ENOTDIR, ELOOP... as the exec would say
        if not os.access(path, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    except OSError as e:
        raise SpawnError(f'command[0] = "{cfg.command[0]}": exec: {errno_text(e)}') from None


def _spawn_direct(cfg: ServiceConfig, prep: _Prepared, logfd: int, creds: Credentials,
                  ready_w: int | None, join: tuple[int, int] | None = None) -> int:
    """clone3 without a cgroup (the compiled spawn's child and its whole set-up); raises
    as _spawn_into does."""
    path = prep.exe or os.fsencode(_exe_path(cfg, prep.env))
    setup = None if prep.plain else _setup(cfg, creds, ready_w, join, prep)
    try:
        return int(_clone3.spawn(path, prep.argv, prep.envp, logfd, -1,
                                 _SIGDEF_KEEP_PIPE_NUMBERS if cfg.ignore_sigpipe
                                 else _SIGDEF_NUMBERS,
                                 prep.nofile, setup, oom_for(cfg)))
    except OSError as e:
        if e.filename == "clone3":
            raise OSError(e.errno, e.strerror) from None  # as fork would fail
        raise _step_error(e, cfg, creds) from None


def _posix_spawn(cfg: ServiceConfig, env: dict[str, str], logfd: int) -> int:
    """posix_spawn(3) (clone with CLONE_VFORK, then exec): no Python bookkeeping between.
    Every descriptor of the restarter is close-on-exec (PEP 446), so nothing leaks."""
    path = _exe_path(cfg, env)
    return os.posix_spawn(path, list(prestart.exec_argv(cfg)), env, file_actions=[
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, logfd, 1),
        (os.POSIX_SPAWN_DUP2, logfd, 2),
    ], setpgroup=0, setsigdef=_SIGDEF_KEEP_PIPE if cfg.ignore_sigpipe else _SIGDEF,
        setsigmask=())


def sandboxed(cfg: ServiceConfig) -> bool:
    """Does `cfg` run in a world of its own (namespaces, system call filters, a narrowed
    capability bounding set, no_new_privileges)? Its exec checks then run as its stop
    command does (the loop's _spawn_check): what the host shows them could differ from
    what the service sees, and what they may do from what it may."""
    return sandbox.needs_namespace(cfg) or cfg.private_network or cfg.private_ipc or \
        seccomp.uses_seccomp(cfg) or bounding_mask(cfg) >= 0 or cfg.no_new_privileges


# service -> {"devices" / "ip": (what its cgroup is held to, that cgroup's inode)}: the
# programs this restarter attached, not again while both are the same (hold_programs)
_HELD: dict[str, dict[str, tuple[Any, int]]] = {}


def holds_programs(cfg: ServiceConfig) -> bool:
    """Does a start of `cfg` attach cgroup programs (or let earlier ones go)? Cheap."""
    return bool(cfg.device_allow or cfg.device_policy != "auto" or cfg.ip_address_allow
                or cfg.ip_address_deny or cfg.name in _HELD)


def hold_programs(cfg: ServiceConfig, cg: str | None) -> tuple[str, ...]:
    """Hold the service's cgroup `cg` to its device_allow / device_policy (a device
    program, hachain/devices.py) and its ip_address_allow / ip_address_deny (two socket
    buffer programs, hachain/ipfilter.py) before anything of it runs there; let those
    this restarter attached go when the configuration no longer asks for them. The lines
    to log (an item that names nothing on this host). SpawnError without cgroups, or
    when the kernel refuses: never a start with more allowed than was asked for."""
    from hachain import devices, ipfilter
    dev = devices.policy_rules(cfg)
    ip = (cfg.ip_address_allow, cfg.ip_address_deny) if ipfilter.used(cfg) else None
    if cg is None:
        if dev is None and ip is None:
            return ()
        raise SpawnError(("device_allow / device_policy" if dev is not None else
                          "ip_address_allow / ip_address_deny") + " need the chain's cgroups "
                         "(cgroup v2, [chain] cgroup_root), which are not in use here")
    held = _HELD.setdefault(cfg.name, {})
    notes: list[str] = []
    try:
        ino = os.stat(cg).st_ino
        if dev is not None:
            rules, notes = devices.resolve(dev)
            if held.get("devices") != (key := (tuple(rules), ino)):
                devices.attach(cg, devices.program(rules))
                held["devices"] = key
        elif held.pop("devices", None) is not None:
            devices.release(cg)
        if ip is not None:
            if held.get("ip") != (ip, ino):
                ipfilter.attach(cg, cfg)
                held["ip"] = (ip, ino)
        elif held.pop("ip", None) is not None:
            ipfilter.release(cg)
    except OSError as e:
        raise SpawnError(f"cannot hold cgroup {cg} to its "
                         f"{'devices' if dev is not None else 'addresses'}: "
                         f"{errno_text(e)}") from None
    if not held:
        del _HELD[cfg.name]
    return tuple(f"{cfg.name}: {n}" for n in notes)


def join_namespaces(cfg: ServiceConfig, pid: int) -> tuple[int, int] | None:
    """For a command of a running service (its stop_command, reload_command): a pidfd of
    its main process `pid` and the namespaces of its own to join (mount, network), so
    the command sees the service's /tmp and loopback, as systemd runs them; None when it
    has none or the process is gone (the command then gets namespaces of its own, made
    the same way). The caller closes the pidfd."""
    flags = (_CLONE_NEWNS if sandbox.needs_namespace(cfg) else 0) | \
        (_CLONE_NEWNET if cfg.private_network else 0) | \
        (_CLONE_NEWUTS if cfg.protect_hostname else 0) | \
        (_CLONE_NEWIPC if cfg.private_ipc else 0)
    if not flags:
        return None
    try:
        fd = pidfd_open(pid)
    except OSError:
        return None
    flags |= (_CLONE_NEWUTS if cfg.protect_hostname else 0) | \
        (_CLONE_NEWIPC if cfg.private_ipc else 0)
    return None if fd is None else (fd, flags)


def spawn(cfg: ServiceConfig, log_dir: str, cgroups: Cgroups,
          notify_socket: str | None, out: int | None = None,
          yield_cpu: bool = True, thaw: bool = True,
          join: tuple[int, int] | None = None, listen_fds: tuple[int, ...] = (),
          fd_names: tuple[str, ...] = ()) -> Spawned:
    """Start one service process. Raises SpawnError with a one-line reason.

    `out` is its stdout and stderr (the write end of its log pipe, which the caller
    closes); None appends them to `<log_dir>/<name>.log` directly, unbounded.
    `yield_cpu`: give the CPU to the new process at once (not while more restarts wait:
    under a CPU hog each yield would hand a whole time slice to the hog).
    `thaw` False: the caller has just read the service's cgroup empty and not frozen
    (kill_leftovers), so the write to cgroup.freeze is skipped. `join`: a running
    service's namespaces to join instead of making its own (join_namespaces).
    `listen_fds`: its listen sockets (hachain/listen.py) and stored descriptors, handed
    over as 3, 4, ..., named `fd_names` in LISTEN_FDNAMES (empty: all its fd_name)."""
    files, notes = read_env_files(cfg) if cfg.env_file else ({}, ())
    seccomp_programs(cfg)  # built (or refused) before anything is opened
    try:
        logfd = open_log(log_dir, cfg.name) if out is None else out
    except OSError as e:
        raise SpawnError(f"{log_dir}/{cfg.name}.log: {e.strerror}",
                         transient=e.errno in TRANSIENT_ERRNOS) from None
    ready_r = ready_w = None
    if cfg.pre_start:
        _main_program(cfg, files)
    if prestart.ready_pipe(cfg):
        try:
            ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        except OSError as e:
            if out is None:
                os.close(logfd)
            raise SpawnError(f"readiness pipe: {e.strerror}", transient=True) from None
    if cfg.kind == "forking" and cfg.pid_file:
        remove_stale_pid_file(cfg.pid_file)
    report_r = report_w = None
    try:
        creds = credentials(cfg)
        if cfg.directories:
            make_directories(cfg, creds)
        if cfg.rlimits or ready_w is not None or oom_for(cfg) is not None or \
                cfg.capabilities or cfg.no_new_privileges or sandbox.needs_namespace(cfg) or \
                bounding_mask(cfg) >= 0 or \
                cfg.nice is not None or seccomp.uses_seccomp(cfg) or cfg.private_network \
                or join is not None or cfg.ignore_sigpipe or scheduling(cfg) is not None \
                or cfg.tty_path is not None or listen_fds or cfg.private_ipc:
            report_r, report_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    except (SpawnError, OSError) as e:
        for fd in (ready_r, ready_w) + ((logfd,) if out is None else ()):
            if fd is not None:
                os.close(fd)
        if isinstance(e, SpawnError):
            raise
        raise SpawnError(f"set-up pipe: {errno_text(e)}", transient=True) from None
    cg, made = cgroups.make(cfg.name)
    if cg is None and cgroups.path(cfg.name) is not None:
        # with cgroups on, never outside its own: it would escape its stop and a new
        # restarter's adoption (which would start it a second time); tried again later
        for fd in (ready_r, ready_w, report_r, report_w) + ((logfd,) if out is None else ()):
            if fd is not None:
                os.close(fd)
        raise SpawnError(f"cgroup {cgroups.path(cfg.name)}: cannot make it", transient=True)
    if made:
        thaw = False  # made just now by this call: not frozen, nothing to thaw
    moved = False
    try:
        if holds_programs(cfg):
            try:
                notes += hold_programs(cfg, cg)
            except SpawnError:
                if ready_r is not None:
                    os.close(ready_r)
                raise
        pass_fds = (cfg.ready_fd,) if ready_w is not None else ()
        prep = _prepared(cfg, notify_socket, files)
        if listen_fds:
            prep = _with_listen(prep, listen_fds, fd_names)
        env = prep.env
        born = channels.boottime_ns()  # the child's start time is after this...
        try:
            direct = None
            if cg is not None and _direct:
                direct = _spawn_into(cg, cfg, prep, logfd, cgroups, creds, ready_w, thaw,
                                     join)
            elif cg is None and _direct and not (prep.plain and oom_for(cfg) is None):
                # no cgroup, but a set-up posix_spawn cannot do: the same child as with
                # one (subprocess would fork the whole interpreter: 1.5 ms, not 0.1)
                direct = _spawn_direct(cfg, prep, logfd, creds, ready_w, join)
            if direct is None and cg is not None:
                try:
                    try:
                        cgroups.enter(cg)
                    except FileNotFoundError:  # removed behind our back: made again
                        cgroups.forget(cfg.name)
                        cgroups.make(cfg.name)
                        cgroups.enter(cg)
                    moved = True
                except OSError as e:
                    # Started outside its cgroup, the service would escape its stop (the
                    # cgroup's kill) and a new restarter's adoption, which would find the
                    # cgroup empty and start it a second time: not started, said, and
                    # tried again after the backoff.
                    if ready_r is not None:
                        os.close(ready_r)
                    raise SpawnError(f"cgroup {cg}: cannot enter it: {errno_text(e)}",
                                     transient=True) from None
            if direct is not None:
                pid = direct  # its RLIMIT_NOFILE is set too
            elif prep.plain and oom_for(cfg) is None:
                pid = _posix_spawn(cfg, env, logfd)
            else:
                # Credentials go to subprocess (vfork kept) unless a preexec function
                # runs anyway: then it sets them itself, after the rlimits.
                pre = None if report_w is None else _preexec(cfg, ready_w, creds, report_w,
                                                             oom_for(cfg), join, prep)
                own = pre is None
                with sigchld_unblocked():
                    p = subprocess.Popen(
                        prestart.exec_argv(cfg), stdin=subprocess.DEVNULL, stdout=logfd,
                        stderr=logfd,
                        env=env, cwd=None if sandbox.needs_namespace(cfg) else cfg.cwd,
                        user=creds.uid if own else None,
                        group=creds.gid if own else None,
                        extra_groups=list(creds.groups) if own and creds.groups is not None
                        else None,
                        umask=-1 if cfg.umask is None else cfg.umask,
                        # close_fds would run after the preexec function's filters,
                        # which need not allow it; every descriptor of the restarter
                        # but pass_fds is close-on-exec anyway (PEP 446)
                        process_group=0 if cfg.tty_path is None else None,
                        start_new_session=cfg.tty_path is not None,  # (its terminal's)
                        close_fds=not seccomp.uses_seccomp(cfg),
                        pass_fds=() if seccomp.uses_seccomp(cfg) else pass_fds,
                        preexec_fn=pre,
                    )
                # We reap the child ourselves (SIGCHLD); tell subprocess not to
                # track it (its __del__ would otherwise waitpid a pid that may by then
                # belong to another child).
                p.returncode = 0
                pid = p.pid
            born_by = channels.boottime_ns()  # ...and before this
            # The child has exec'd and usually shares our CPU: let it run now, before the
            # bookkeeping that follows (measured: 0.6 ms instead of 1.2-2.5 ms from exec to
            # the service's main(); see docs/restarter.md, "Restart latency").
            if yield_cpu:
                os.sched_yield()
        except OSError as e:
            if prep.plain and oom_for(cfg) is None and e.filename is None:
                e.filename = cfg.command[0]  # posix_spawn: any failure is the exec's
            raise SpawnError(_popen_error(e, cfg, creds),
                             transient=e.errno in TRANSIENT_ERRNOS) from None
        except (ValueError, KeyError, subprocess.SubprocessError) as e:
            detail = b""
            if report_r is not None:
                try:
                    detail = os.read(report_r, 1000)
                except OSError:
                    pass
            if detail.startswith(_OOM_REFUSED):
                detail = detail.partition(b"\n")[2]
            raise SpawnError(detail.decode(errors="replace") or
                             f'command = {list(cfg.command)!r}: {e}') from None
        refused = 0  # the child's oom_score_adj write was refused (errno)
        if oom_for(cfg) is not None:
            if direct is not None:
                refused = _clone3.last_oom_error()
            elif report_r is not None:
                try:
                    said = os.read(report_r, 1000)
                except OSError:
                    said = b""
                if said.startswith(_OOM_REFUSED):
                    refused = int(said[len(_OOM_REFUSED):].partition(b"\n")[0] or 0) or \
                        errno.EPERM
        if refused:
            notes += (_oom_note(cfg, refused),)
    finally:
        for fd in (report_r, report_w):
            if fd is not None:
                os.close(fd)
        if moved:
            try:
                cgroups.leave()
            except OSError:
                pass
        if out is None:
            os.close(logfd)
        if ready_w is not None:
            os.close(ready_w)
    if direct is None and not any(n == "nofile" for n, _, _ in cfg.rlimits):
        try:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, BASE_NOFILE)
        except (OSError, ValueError):
            pass
    return Spawned(pid=pid, start_time=channels.start_time_between(pid, born, born_by),
                   ready_fd=ready_r, notes=notes)


# --- forking services: where the main process is -------------------------------------------

def read_pid_file(path: str) -> int | None:
    """The pid a daemon wrote to `path` (first line, a positive number), or None."""
    try:
        with open(path, "rb") as f:
            first = f.read(64).split(b"\n", 1)[0].strip()
        pid = int(first)
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def remove_stale_pid_file(path: str) -> None:
    """Before a forking service's launcher runs: a pid file left from an earlier run that
    names no live process goes, so it is never read as the new main pid."""
    pid = read_pid_file(path)
    if pid is None or not channels.pid_alive(pid):
        try:
            os.unlink(path)
        except OSError:
            pass


def main_pid(cfg: ServiceConfig, cgroups: Cgroups,
             leftovers: frozenset[int] = frozenset()) -> tuple[int | None, str]:
    """The main process of a forking service whose launcher has exited, and '' — or None
    and why it is not known (yet). From `pid_file` when set (the pid must be alive and, with
    cgroups, in the service's cgroup); else from the cgroup when unambiguous: the one
    process there whose parent is outside it (the daemon's master, not its workers)."""
    if cfg.pid_file:
        pid = read_pid_file(cfg.pid_file)
        if pid is None:
            return None, f"pid file {cfg.pid_file} not written yet"
        if not channels.pid_alive(pid):
            return None, f"pid file {cfg.pid_file} names pid {pid}, which is not running"
        if cgroups.active and not cgroups.contains(cfg.name, pid):
            return None, (f"pid file {cfg.pid_file} names pid {pid}, which is not in the "
                          "service's cgroup")
        return pid, ""
    if not cgroups.active:
        return None, "no pid_file, and no cgroup to find the main process in"
    procs = set(cgroups.procs(cfg.name)) - leftovers  # left there by earlier runs
    roots = [p for p in procs if channels.proc_ppid(p) not in procs and channels.pid_alive(p)]
    if len(roots) == 1:
        return roots[0], ""
    if not roots:
        return None, "no process left in the service's cgroup"
    return None, (f"{len(roots)} unrelated processes in the service's cgroup "
                  f"({', '.join(map(str, sorted(roots)[:5]))}): set pid_file")


def kill_leftovers(pid: int, name: str, cgroups: Cgroups, zombie: bool) -> bool:
    """The main process `pid` has exited: SIGKILL what is left of the service, its cgroup
    (one small read of cgroup.events first: usually nothing is left), else its process
    group. The group id is the main pid; only while it is our unreaped zombie (`zombie`)
    is that number sure not to name someone else's group, so an adopted process's group
    is left alone. True when the cgroup was read empty and not frozen: a spawn into it
    right after need not thaw it."""
    if cgroups.active:
        ev = cgroups.events(name)
        if ev is None:
            return False
        if ev[0]:
            cgroups.kill(name)
        return ev == (False, False)
    if zombie:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    return False


def kill_service(pid: int | None, name: str, sig: int, group: bool, cgroups: Cgroups) -> None:
    """Signal a service: its cgroup (SIGKILL via cgroup.kill), else its process group."""
    if group and cgroups.active:
        if sig == signal.SIGKILL:
            cgroups.kill(name)
        elif pid in cgroups.signal_all(name, sig):
            return  # not once more through its process group: a second SIGTERM or
            # SIGINT is "stop now" to some daemons, and a handler may run twice
        if pid is None:
            return
    if pid is None:
        return
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        pass
    except OSError as e:
        if e.errno != errno.ESRCH:
            raise
