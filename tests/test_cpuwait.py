"""hachain/simulators/qemu/cpuwait.py: the run-queue wait a campaign adds to a QEMU fault's bound.

The arithmetic is checked on hand-made samples; the recorder on real processes of this
test: a sleeping one waits for no CPU whatever the host does, and two busy loops pinned
to one CPU each wait for a good part of the time (the other holds the CPU). Only lower
bounds are asserted for the busy pair: more load on the host can only add wait.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from hachain.simulators.qemu.cpuwait import CpuWaitRecorder, read_waits, wait_between
from tests.conftest import reap

MS = 1_000_000  # ns


def test_wait_between_takes_the_most_delayed_thread_over_the_widened_interval() -> None:
    samples = [(0.0, {1: 0, 2: 0}), (1.0, {1: 100 * MS, 2: 300 * MS}),
               (2.0, {1: 900 * MS, 2: 400 * MS, 3: 50 * MS})]
    assert wait_between(samples, 1.0, 2.0) == pytest.approx(0.8)  # thread 1: 900 - 100
    # between samples: widened to the samples around it, never under-counted
    assert wait_between(samples, 0.5, 1.5) == pytest.approx(0.9)
    assert wait_between(samples, 0.0, 1.0) == pytest.approx(0.3)  # thread 2
    # a thread first seen inside the interval counts from zero; the max, not the sum
    assert wait_between([(0.0, {1: 0}), (1.0, {1: 10 * MS, 3: 20 * MS})], 0, 1) == \
        pytest.approx(0.02)
    # outside the samples: clamped to the first and last
    assert wait_between(samples, -5.0, 9.0) == pytest.approx(0.9)
    assert wait_between(samples, 3.0, 4.0) == 0.0
    assert wait_between([], 0.0, 1.0) is None
    assert wait_between(samples, 2.0, 1.0) is None


def test_read_waits_of_a_process_that_is_gone_is_none() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert read_waits(proc.pid) is None


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.kill()
        reap(p, "a child")


def _needs_schedstat() -> None:
    if read_waits(os.getpid()) is None:
        pytest.skip("the kernel keeps no /proc/PID/task/*/schedstat (CONFIG_SCHED_INFO)")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.rindex(")") + 2:].split()[0] if "(sleep)" in stat else "?"


def test_a_sleeping_process_waits_for_no_cpu(children: list[subprocess.Popen[bytes]]) -> None:
    _needs_schedstat()
    children.append(subprocess.Popen(["sleep", "60"]))
    deadline = time.monotonic() + 30
    while _state(children[0].pid) != "S":  # exec'd and asleep before the interval starts
        assert time.monotonic() < deadline, "sleep never went to sleep"
        time.sleep(0.01)
    rec = CpuWaitRecorder(children[0].pid, period=0.05).start()
    t1 = time.monotonic()
    time.sleep(0.5)
    waited = rec.between(t1, time.monotonic())
    rec.stop()
    assert rec.supported and waited is not None
    assert waited < 0.005  # not runnable: the run queue never held it


def test_two_busy_loops_on_one_cpu_wait_for_each_other(
        children: list[subprocess.Popen[bytes]]) -> None:
    _needs_schedstat()
    cpu = min(os.sched_getaffinity(0))
    loop = "import os, sys\nos.sched_setaffinity(0, {%d})\nwhile True: pass\n" % cpu
    for _ in range(2):
        children.append(subprocess.Popen([sys.executable, "-c", loop]))
    rec = CpuWaitRecorder(children[0].pid, period=0.1).start()
    t1 = time.monotonic()
    time.sleep(2.0)
    t2 = time.monotonic()
    waited = rec.between(t1, t2)
    rec.stop()
    assert waited is not None
    # sharing one CPU with an equal loop, it is runnable and not running about half the
    # time (CFS); a busier host only adds to that
    assert waited > 0.25 * (t2 - t1), (waited, t2 - t1)
    assert rec.between(t1, t2) == waited  # answers after stop(), from the samples kept
