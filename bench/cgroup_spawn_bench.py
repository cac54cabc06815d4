"""Ways to start a process inside a cgroup, timed after quiet (issue 19).

    .venv/bin/python bench/cgroup_spawn_bench.py [--spawns 8] [--quiet 1.0]
                                                  [--methods none,move,clone3,...]

A Python parent about the restarter's size starts the static stamp service (bench/stamp.c)
in a cgroup of its own, `--spawns` times per method, each after `--quiet` s (plus up to
0.5 s at random) in which it did nothing, then again back to back (20 ms apart). The time
runs from just before the spawn to the stamp the child takes first thing in main(). Every
child is checked to be in the cgroup (where the method promises it), then SIGKILLed.

Methods:
  none         posix_spawn, no cgroup (the floor)
  move         the restarter's fallback: write 0 to the cgroup's cgroup.procs (move
               ourselves in), posix_spawn, move back; with the thaw write before
  move-child   posix_spawn, then write the child's pid to cgroup.procs (off the measured
               path, but the child may fork before it is moved: not an option)
  clone3       hachain.restarter._clone3 (clone3 CLONE_VM|CLONE_VFORK|CLONE_INTO_CGROUP)
  clone3-fork  clone3 CLONE_INTO_CGROUP through ctypes, without CLONE_VM (Python code
               cannot run in a child that shares our memory): a fork of the whole parent
  fork         os.fork + execve, no cgroup (what clone3-fork costs without the cgroup)

Moving a process by writing cgroup.procs takes the kernel's global cgroup_threadgroup_rwsem
for writing, which waits for an RCU grace period unless cgroup2 was ever mounted with
favordynmods (Linux 6.18: that switch cannot be undone until the next boot, so this
script does not try it; docs/restarter.md, "Restart after idle"). Needs root.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import benchlib  # noqa: E402

from hachain.cgroupfs import find_cgroup2_mount  # noqa: E402
from hachain.restarter import spawn  # noqa: E402

CLONE_VFORK, CLONE_INTO_CGROUP, SYS_CLONE3 = 0x4000, 0x200000000, 435


class Bench:
    def __init__(self, tmp: str) -> None:
        mount = find_cgroup2_mount()
        if mount is None or not os.access(mount, os.W_OK):
            sys.exit("cgroup_spawn_bench: needs a writable cgroup v2 hierarchy (root)")
        self.root = os.path.join(mount, f"hachain-cgspawn-{os.getpid()}")
        self.cg = os.path.join(self.root, "svc")
        os.makedirs(self.cg)
        self.home = spawn.own_cgroup(mount)
        self.exe, _ = benchlib.compile_stamp(tmp, "cgroup_spawn_bench")
        self.sock_path = os.path.join(tmp, "stamps.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        self.argv = [self.exe, self.sock_path, "x"]
        self.pylibc = ctypes.PyDLL(None, use_errno=True)  # keeps the GIL in the call
        self.pylibc.syscall.restype = ctypes.c_long
        self.null = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)

    def write(self, path: str, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def posix(self) -> int:
        return os.posix_spawn(self.exe, self.argv, {}, setpgroup=0, setsigmask=())

    def m_none(self) -> int:
        return self.posix()

    def m_move(self) -> int:
        self.write(os.path.join(self.cg, "cgroup.freeze"), b"0")
        self.write(os.path.join(self.cg, "cgroup.procs"), b"0")
        try:
            return self.posix()
        finally:
            self.write(os.path.join(self.home, "cgroup.procs"), b"0")

    def m_move_child(self) -> int:
        pid = self.posix()
        self.write(os.path.join(self.cg, "cgroup.procs"), str(pid).encode())
        return pid

    def m_clone3(self) -> int:
        if spawn._clone3 is None:
            raise SystemExit("hachain.restarter._clone3 is not built (setup.py)")
        fd = os.open(self.cg, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return int(spawn._clone3.spawn(os.fsencode(self.exe),
                                           [os.fsencode(a) for a in self.argv], [],
                                           self.null, fd, [], None))
        finally:
            os.close(fd)

    def m_clone3_fork(self) -> int:
        fd = os.open(self.cg, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        args = struct.pack("11Q", CLONE_VFORK | CLONE_INTO_CGROUP, 0, 0, 0, signal.SIGCHLD,
                           0, 0, 0, 0, 0, fd)
        buf = ctypes.create_string_buffer(args, len(args))
        pid = self.pylibc.syscall(SYS_CLONE3, buf, len(args))
        if pid == 0:  # the child, a copy of this interpreter
            try:
                os.setpgid(0, 0)
                os.execve(self.exe, self.argv, {})
            finally:
                os._exit(127)
        os.close(fd)
        if pid < 0:
            raise OSError(ctypes.get_errno(), "clone3")
        return int(pid)

    def m_fork(self) -> int:
        pid = os.fork()
        if pid == 0:
            try:
                os.execve(self.exe, self.argv, {})
            finally:
                os._exit(127)
        return pid

    def in_cgroup(self, pid: int) -> bool:
        with open(os.path.join(self.cg, "cgroup.procs")) as f:
            return str(pid) in f.read().split()

    def run(self, method: str, n: int, quiet: float) -> list[float]:
        fn = getattr(self, "m_" + method.replace("-", "_"))
        lat = []
        for _ in range(n):
            time.sleep(quiet + random.random() * 0.5 if quiet else 0.02)
            t0 = time.monotonic_ns()
            pid = fn()
            self.sock.settimeout(5)
            stamp = int(self.sock.recv(128).split()[1])
            lat.append((stamp - t0) / 1e6)
            ok = method in ("none", "fork") or self.in_cgroup(pid)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            if not ok:
                raise SystemExit(f"{method}: pid {pid} is not in {self.cg}")
        return sorted(lat)

    def close(self) -> None:
        self.sock.close()
        for d in (self.cg, self.root):
            try:
                os.rmdir(d)
            except OSError:
                pass


METHODS = ("none", "move", "move-child", "clone3", "clone3-fork", "fork")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spawns", type=int, default=8)
    ap.add_argument("--quiet", type=float, default=1.0)
    ap.add_argument("--methods", default=",".join(METHODS))
    a = ap.parse_args()
    methods = [m for m in a.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}")
    ballast = [dict(a=i, b=str(i), c=[i] * 10) for i in range(30000)]  # ~ the restarter
    tmp = tempfile.mkdtemp(prefix="hachain-cgspawn-")
    b = Bench(tmp)
    try:
        print(f"kernel {os.uname().release}; parent RSS {benchlib.status_mb(os.getpid()):.1f} "
              f"MB ({len(ballast)} ballast objects); {a.spawns} spawns per method")
        for quiet in (a.quiet, 0.0):
            for m in methods:
                lat = b.run(m, a.spawns, quiet)
                p90 = lat[int(0.9 * (len(lat) - 1))]
                print(f"{'after %g s quiet' % quiet if quiet else 'back to back':<18} {m:<12} "
                      f"p50 {statistics.median(lat):7.2f}  p90 {p90:7.2f}  max {lat[-1]:7.2f} ms",
                      flush=True)
    finally:
        b.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
