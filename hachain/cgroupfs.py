"""cgroup v2 file-system helpers shared by the restarter, the simulators, tests and
benchmarks: where the hierarchy is mounted, and how to remove a subtree."""

from __future__ import annotations

import os
import re
import time


def find_cgroup2_mount() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (from /proc/self/mountinfo), or None."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        pass
    return None


def _unescape(field: str) -> str:
    """A mountinfo path field: space, tab, newline and backslash come octal-escaped."""
    if "\\" not in field:
        return field
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def cgroup2_problem(path: str) -> str | None:
    """None when `path` (or, where it does not exist yet, the nearest directory above it
    that does) lies in a cgroup v2 file system; else one phrase saying what it is in.

    A directory elsewhere (a tmpfs, /sys/fs/cgroup of a hybrid host, the v1 hierarchies)
    takes mkdir and plain files without complaint, but it moves no process and kills
    none: a `cgroup.procs` written there is a file that keeps stale pids."""
    real = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5:
                    continue
                mp = _unescape(fields[4])
                inside = real == mp or real.startswith(mp.rstrip("/") + "/")
                if inside and len(mp) >= len(best):  # the last of stacked mounts wins
                    best, fstype = mp, right.split(" ", 1)[0]
    except OSError as e:
        return f"cannot tell its file system (/proc/self/mountinfo: {e.strerror})"
    if fstype == "cgroup2":
        return None
    where = find_cgroup2_mount()
    return (f"not in a cgroup v2 file system ({best or '/'} is {fstype or 'unknown'}"
            + (f"; cgroup v2 is mounted at {where})" if where else "; none is mounted)"))


def remove_cgroup_tree(path: str, timeout: float = 5.0) -> bool:
    """rmdir a cgroup directory and everything below it, leaves first. True when gone.

    Dying processes may keep a cgroup busy for a moment, so EBUSY is retried until
    `timeout`; `cgroup.kill` (Linux 5.14+) is written first where it exists.
    """
    if not os.path.isdir(path):
        return True
    kill = os.path.join(path, "cgroup.kill")
    if os.path.exists(kill):
        try:
            with open(kill, "w") as f:
                f.write("1")
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    while True:
        busy = False
        for root, _dirs, _files in os.walk(path, topdown=False):
            try:
                os.rmdir(root)
            except FileNotFoundError:
                pass
            except OSError:
                busy = True
        if not busy:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
