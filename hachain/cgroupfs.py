"""cgroup v2 file-system helpers shared by the restarter, the simulators, tests and
benchmarks: where the hierarchy is mounted, and how to remove a subtree."""

from __future__ import annotations

import os
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
