"""The start time a spawn hands back (issue 19): a pid and its start time name a process
in the runtime records, and a new restarter adopts a service only when both match what
/proc says. The spawn computes it from two readings of CLOCK_BOOTTIME around the clone
instead of reading /proc/PID/stat of a child still in its exec; these tests hold the
computed value to the one /proc gives, on every spawn path, in a time namespace whose
boot clock is a day ahead, and at a tick boundary (where it reads)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from hachain import channels
from hachain.config import ServiceConfig
from hachain.restarter import spawn
from tests.conftest import SPAWN_PATHS, spawn_path

pytestmark = pytest.mark.skipif(channels.TICK_NS is None,
                                reason="clock ticks are not whole nanoseconds here")


class Reads:
    """proc_start_time as it is, counting its calls (the reads the spawn still made)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = channels.proc_start_time

        def counted(pid: int) -> int | None:
            self.calls += 1
            return real(pid)
        monkeypatch.setattr(channels, "proc_start_time", counted)
        self.real = real


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_each_spawn_path_hands_back_the_start_time_proc_gives(
        path: str, cgroups: spawn.Cgroups, tmp_path, started: list[int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    cg = spawn_path(path, cgroups, monkeypatch)
    reads = Reads(monkeypatch)
    got = []
    for i in range(40):
        sp = spawn.spawn(ServiceConfig(name=f"s{i}", command=("sleep", "3600")),
                         str(tmp_path / "logs"), cg, None, yield_cpu=False)
        started.append(sp.pid)
        got.append((sp.pid, sp.start_time))
    # not reaped yet (started's cleanup does it): /proc still has each of them
    assert [(pid, reads.real(pid)) for pid, _ in got] == got
    # most were computed: a read only where the clone's window held a tick boundary
    assert reads.calls < len(got), f"{reads.calls} of {len(got)} spawns read /proc"


def test_a_window_across_a_tick_or_backwards_reads_proc(
        started: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    tick = channels.TICK_NS
    assert tick is not None
    before = channels.boottime_ns()
    pid = os.posix_spawn("/bin/sleep", ["sleep", "3600"], dict(os.environ), setpgroup=0)
    started.append(pid)  # (its own group: the cleanup kills the group)
    after = channels.boottime_ns()
    want = channels.proc_start_time(pid)
    assert want is not None and before // tick <= want <= after // tick
    reads = Reads(monkeypatch)
    # both readings in one tick: that tick, nothing read
    t = want * tick
    assert channels.start_time_between(pid, t, t + tick - 1) == want
    assert reads.calls == 0
    # a window that holds a tick boundary, or runs backwards: the kernel's value is read
    assert channels.start_time_between(pid, t - 1, t) == want
    assert channels.start_time_between(pid, t + tick - 1, t) == want
    assert reads.calls == 2


# In a new time namespace (CLONE_NEWTIME, which only children made after the unshare
# enter), with CLOCK_BOOTTIME a day ahead: the grandchild spawns and compares what it
# computes with what its /proc says, both seen from inside the namespace.
TIMENS = textwrap.dedent("""
    import ctypes, os, sys
    from hachain import channels
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x80) != 0:  # CLONE_NEWTIME
        print("unshare", os.strerror(ctypes.get_errno())); sys.exit(0)
    with open("/proc/self/timens_offsets", "w") as f:
        f.write("boottime 86400 0")
    outside = channels.boottime_ns()
    pid = os.fork()
    if pid == 0:
        ahead = channels.boottime_ns() - outside
        out = []
        for i in range(20):
            before = channels.boottime_ns()
            child = os.posix_spawn("/bin/sleep", ["sleep", "3600"], {})
            after = channels.boottime_ns()
            out.append((channels.start_time_between(child, before, after),
                        channels.proc_start_time(child)))
            os.kill(child, 9); os.waitpid(child, 0)
        print("ahead", ahead // 10**9, "same", sum(a == b for a, b in out), "of", len(out),
              flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
""")


def test_in_a_time_namespace_the_computed_start_time_is_the_namespace_s(tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("a time namespace needs root (CAP_SYS_ADMIN)")
    if not os.path.exists("/proc/self/timens_offsets"):
        pytest.skip("this kernel has no time namespaces (CONFIG_TIME_NS, Linux >= 5.6)")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", TIMENS], env=env, capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    if out.stdout.startswith("unshare"):
        pytest.skip(f"cannot make a time namespace here: {out.stdout.strip()}")
    words = out.stdout.split()
    assert words[:2] == ["ahead", "86400"], out.stdout  # the namespace's clock is ahead
    assert words[2:] == ["same", "20", "of", "20"], out.stdout
