"""How long QEMU waited for a host CPU: the kernel's run-queue delay of its threads.

Owns: sampling `/proc/PID/task/*/schedstat` of one process on a thread, and the pure
arithmetic that turns the samples into "seconds waited between t1 and t2". Must not:
judge anything (the campaign adds the wait to a bound; see docs/qemu.md, "Bounds on a
busy host").

Why: under TCG the guest runs only while QEMU's vCPU threads hold a host CPU. When other
jobs compete for the CPUs, those threads sit runnable in the run queue and every
reconvergence in the guest takes longer by about that much. The kernel counts that time
per thread (the second field of `schedstat`, nanoseconds spent runnable but not running;
CONFIG_SCHED_INFO), so a bound can be stretched by what the host actually took away
during that very interval, instead of by how busy it happened to be at the first boot.
"""

from __future__ import annotations

import bisect
import os
import threading
import time

Sample = tuple[float, dict[int, int]]  # (time.monotonic(), {tid: run-queue wait in ns})

PERIOD = 0.25  # seconds between samples; bounds are tens of seconds


def read_waits(pid: int) -> dict[int, int] | None:
    """{tid: nanoseconds runnable but not running} for every thread of `pid`; None when
    the process is gone or the kernel keeps no schedstat."""
    base = f"/proc/{pid}/task"
    try:
        tids = os.listdir(base)
    except OSError:
        return None
    out: dict[int, int] = {}
    for tid in tids:
        try:
            with open(f"{base}/{tid}/schedstat") as f:
                fields = f.read().split()
            out[int(tid)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended between listdir and open
    return out or None


def wait_between(samples: list[Sample], t1: float, t2: float) -> float | None:
    """Seconds the most-delayed thread waited for a CPU from t1 to t2; None if unknown.

    Pure. `samples` are in time order. The interval is widened to the samples around it
    (the last at or before t1, the first at or after t2), so the wait is never
    under-counted by the sampling period; a thread first seen inside the interval counts
    from zero. The most-delayed thread, not the sum: the vCPU threads wait side by side,
    and the guest's critical path is on one of them at a time.
    """
    if not samples or t2 < t1:
        return None
    times = [t for t, _ in samples]
    i = max(0, bisect.bisect_right(times, t1) - 1)
    j = min(len(samples) - 1, bisect.bisect_left(times, t2))
    start, end = samples[i][1], samples[j][1]
    if j <= i:
        return 0.0
    return max((w - start.get(tid, 0) for tid, w in end.items()), default=0) / 1e9


class CpuWaitRecorder:
    """Samples one process's run-queue waits every PERIOD seconds on a daemon thread
    until stop() or the process ends; `between(t1, t2)` works before and after."""

    def __init__(self, pid: int, period: float = PERIOD) -> None:
        self.pid, self.period = pid, period
        self.samples: list[Sample] = []
        self.supported: bool | None = None  # None until the first read
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cpuwait-{pid}", daemon=True)

    def start(self) -> CpuWaitRecorder:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Take a last sample (so an interval ending now is covered) and stop."""
        if not self._stop.is_set():
            self._sample()
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(2 * self.period + 1)

    def between(self, t1: float, t2: float) -> float | None:
        """Seconds QEMU's most-delayed thread waited for a CPU from t1 to t2 (None where
        the kernel keeps no schedstat). An interval that ends after the last sample is
        sampled now first."""
        if self.supported is False:
            return None
        if not self._stop.is_set() and (not self.samples or self.samples[-1][0] < t2):
            self._sample()
        with self._lock:
            return wait_between(list(self.samples), t1, t2)

    def _sample(self) -> None:
        waits = read_waits(self.pid)
        if self.supported is None:
            self.supported = waits is not None
        if waits is None:
            return
        now = time.monotonic()
        with self._lock:
            self.samples.append((now, waits))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()
            if not os.path.exists(f"/proc/{self.pid}"):
                return
