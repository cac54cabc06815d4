"""The logger's writing thread: every system call on the log files is made here.

Owns: the `LogFile` of every service, the queue of output waiting to be written, and the
clock of the write in progress. Must not: read pipes or talk to the restarter.

Why a thread: a write to a file on a mount that does not answer (a hung NFS or FUSE
mount, a disk in error recovery) does not return, and a logger blocked there reads no
pipe: every service blocks once its pipe is full (64 KiB), so a log disk would stop the
services. With the writes here, the reading loop only hands output over, and it can tell
a disk that is slow from one that hangs:

- while the queue holds less than QUEUE_MAX bytes, output is queued;
- past that, the loop waits for this thread (backpressure: a service that writes faster
  than its disk takes blocks on its full pipe, as with s6-log and svlogd);
- when a write has not returned for STALL_SECONDS, the disk is taken for hung: the loop
  reads on and drops what it reads (counted per service, said once when it starts and
  once when the disk answers again), so no service ever blocks on a hung log disk.

What was queued before the stall is written when the disk answers. Nothing here costs an
idle logger a wake-up: the thread sleeps on a condition until there is output.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from hachain.logger.files import LogFile

QUEUE_MAX = 1 << 20  # bytes queued before the reading loop waits for the disk
STALL_SECONDS = 5.0  # a write that has not returned for this long: the disk hangs
LAZY_MAX = 64  # openings and closings queued before they wake the thread on their own

# A job: (service, max_bytes, keep, output); output None closes the service's file.
Job = tuple[str, int, int, "bytes | None"]


class Writer:
    """The log files and the thread that writes them (daemon: a process exiting with a
    write still hung in the kernel does not wait for it)."""

    def __init__(self, log_dir: str, log: Callable[[str], None]) -> None:
        self.log_dir = log_dir
        self.log = log
        self.files: dict[str, LogFile] = {}  # this thread's only
        self.cond = threading.Condition()
        self.jobs: collections.deque[Job] = collections.deque()
        self.queued = 0  # bytes in `jobs`
        self.busy_since: float | None = None  # monotonic start of the job in progress
        self.dropped: dict[str, int] = {}  # bytes dropped per service in this stall
        self.stall_started: float | None = None
        self.thread = threading.Thread(target=self._run, name="hachain-logger-writer",
                                       daemon=True)
        self.thread.start()

    # --- the reading loop's side ----------------------------------------------------------

    def put(self, name: str, max_bytes: int, keep: int, data: bytes | None) -> None:
        """Queue `data` for the service's log (None: close its file once written), or
        drop it when the disk hangs. Waits while the queue is full and the disk is only
        slow."""
        with self.cond:
            # while the disk hangs nothing is queued, a file's opening or closing either
            # (each output job carries the limits; a file left open is one descriptor)
            if self._stalled_locked():
                if data:
                    self.dropped[name] = self.dropped.get(name, 0) + len(data)
                return
            while data and self.queued >= QUEUE_MAX:
                left = self._stall_left_locked()
                if left <= 0:
                    self._stalled_locked()
                    self.dropped[name] = self.dropped.get(name, 0) + len(data)
                    return
                self.cond.wait(left)
            self.jobs.append((name, max_bytes, keep, data))
            self.queued += len(data or b"")
            # an opening or closing waits for output (or flush, or LAZY_MAX of them): a
            # restart of a service that has written nothing yet wakes no thread
            if data or len(self.jobs) >= LAZY_MAX:
                self.cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the queue to be written; True when it was."""
        deadline = time.monotonic() + timeout
        with self.cond:
            self.cond.notify_all()  # openings and closings, which woke nobody
            while self.jobs or self.busy_since is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def _stall_left_locked(self) -> float:
        if self.busy_since is None:
            return STALL_SECONDS
        return self.busy_since + STALL_SECONDS - time.monotonic()

    def _stalled_locked(self) -> bool:
        """Is the write in progress hung (STALL_SECONDS without returning)? Said once
        when a stall starts."""
        if self.busy_since is None or self._stall_left_locked() > 0:
            return False
        if self.stall_started is None:
            self.stall_started = self.busy_since
            self.log(f"a write in {self.log_dir} has not returned for {STALL_SECONDS:g} s "
                     f"(a hung mount or a failing disk?); service output is dropped, not "
                     f"waited on, until it returns")
        return True

    # --- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.jobs:
                    self.cond.wait()
                batch, self.jobs = self.jobs, collections.deque()  # all of it at once
                self.busy_since = time.monotonic()
            done = 0
            for name, max_bytes, keep, data in _coalesced(batch):
                try:
                    self._do(name, max_bytes, keep, data)
                except Exception as e:  # noqa: BLE001 - a bug must not end the writing
                    self.log(f"{name}: writing its log failed: {e!r}")
                done += len(data or b"")
            with self.cond:
                self.queued -= done
                self.busy_since = None
                if self.stall_started is not None:
                    self._stall_ended_locked()
                self.cond.notify_all()

    def _stall_ended_locked(self) -> None:
        assert self.stall_started is not None
        took = time.monotonic() - self.stall_started
        lost = ", ".join(f"{n} {b} bytes" for n, b in sorted(self.dropped.items()))
        self.log(f"writes in {self.log_dir} return again after {took:.1f} s; dropped "
                 f"meanwhile: {lost or 'nothing'}")
        self.stall_started = None
        self.dropped = {}

    def _do(self, name: str, max_bytes: int, keep: int, data: bytes | None) -> None:
        f = self.files.get(name)
        if data is None:
            if f is not None:
                f.close()
            return
        if f is None:
            f = self.files[name] = LogFile(self.log_dir, name, max_bytes, keep)
        else:
            f.configure(max_bytes, keep)
        if not data:
            return
        had_error = f.error
        f.append(data)
        if f.error and f.error != had_error:
            self.log(f"{name}: {f.error}; output is dropped until writes succeed")

    def close_all(self) -> None:
        """Close every file (the thread must be done: after flush)."""
        for f in self.files.values():
            f.close()


def _coalesced(batch: collections.deque[Job]) -> list[Job]:
    """The jobs of `batch` in order, consecutive output of one service with the same
    limits joined into one write (one rotation check, one system call)."""
    out: list[Job] = []
    parts: list[bytes] = []  # the output of out[-1] while it is being joined

    def close_group() -> None:
        if len(parts) > 1:
            name, max_bytes, keep, _ = out[-1]
            out[-1] = (name, max_bytes, keep, b"".join(parts))
        parts.clear()
    for job in batch:
        data = job[3]
        if data and parts and out[-1][:3] == job[:3]:
            parts.append(data)
            continue
        close_group()
        out.append(job)
        if data:
            parts.append(data)
    close_group()
    return out
