"""The compiled spawn keeps the restarter's threads on one descriptor table.

`_clone3` finds out once, at its first spawn or `reserve()`, whether the kernel has
close_range. Asked with CLOSE_RANGE_UNSHARE in a process whose threads share their table
(the user lookups' thread, the persist writer), that question split the asking thread's
table from the others': every descriptor open then stayed open in the other threads'
copy after the spawning thread closed it. Seen as a lock that a test closed and could not
take again. Each case runs in a fresh interpreter, where that first question is still to
come (the test process asked it long ago).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hachain.cgroupfs import find_cgroup2_mount, remove_cgroup_tree
from hachain.restarter import spawn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In a fresh process: a thread runs (as the restarter's user lookups do), a file is open
# and locked, the first spawn comes; then the file is closed and must be free again, and
# a descriptor opened after the spawn must be the thread's too.
PROBE = r"""
import fcntl, os, sys, threading
from hachain.config import ServiceConfig
from hachain.restarter import spawn
cgroup_root, lock_path, log_dir, user = sys.argv[1:5]
go, seen = threading.Event(), []
def other():
    go.wait()
    try:
        os.fstat(int(seen[0]))
        seen.append("shared")
    except OSError as e:
        seen.append(f"not shared: {e}")
t = threading.Thread(target=other)
t.start()
cg = spawn.Cgroups.from_config(cgroup_root)
f = open(lock_path, "a")
fcntl.flock(f, fcntl.LOCK_EX)
cfg = ServiceConfig(name="svc", command=("/bin/sh", "-c", "exit 0"), user=user or None)
sp = spawn.spawn(cfg, log_dir, cg, None, yield_cpu=False)
os.waitpid(sp.pid, 0)
f.close()
g = open(lock_path, "a")
try:
    fcntl.flock(g, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("lock free again")
except OSError as e:
    print(f"lock still held: {e}")
seen.append(str(os.open("/dev/null", os.O_RDONLY)))
go.set()
t.join()
print("descriptor", seen[1])
"""


@pytest.mark.parametrize("user", ["", "nobody"], ids=["root", "user"])
def test_the_first_spawn_leaves_the_threads_one_table(tmp_path, user: str) -> None:
    mount = find_cgroup2_mount()
    if mount is None or not os.access(mount, os.W_OK):
        pytest.skip("needs a writable cgroup v2 hierarchy (run as root)")
    if not spawn.direct_spawn_available():
        pytest.fail("clone3(CLONE_INTO_CGROUP) is not available: the _clone3 extension "
                    "is not built (scripts/setup.sh builds it)")
    root = os.path.join(mount, f"hachain-test-fds-{os.getpid()}-{tmp_path.name}")
    try:
        p = subprocess.run([sys.executable, "-c", PROBE, root, str(tmp_path / "lock"),
                            str(tmp_path / "logs"), user], cwd=ROOT, capture_output=True,
                           text=True, timeout=60, env={**os.environ, "PYTHONPATH": ROOT})
    finally:
        remove_cgroup_tree(root)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split("\n")[:2] == ["lock free again", "descriptor shared"], p.stdout
