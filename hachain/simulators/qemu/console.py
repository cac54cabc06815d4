"""The guest's serial console as the host sees it: a growing text with arrival times.

This module owns reading QEMU's stdout (the guest's ttyS0) on a thread, keeping the text
in memory and in a log file, noting when each piece arrived, and spotting the markers the
initramfs prints. It must not know how QEMU is started or stopped.
"""

from __future__ import annotations

import bisect
import codecs
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from hachain.simulators.qemu.initramfs import BOOT_MARKER, PID1_MARKER


@dataclass
class BootRecord:
    """One boot of the guest, as seen on the console (times are time.monotonic())."""

    number: int
    initramfs_at: float
    pid1_at: float | None = None


class Console:
    """Accumulates console output from a file descriptor until end of file."""

    def __init__(self, fd: int, log: IO[bytes] | None,
                 echo: Callable[[str], object] | None = None) -> None:
        self._fd = fd
        self._log = log
        self._echo = echo
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._scanned = 0
        self._offsets: list[int] = []
        self._times: list[float] = []
        self.boots: list[BootRecord] = []
        self.closed = False
        self.changed = threading.Condition()
        self._thread = threading.Thread(target=self._pump, name="qemu-console", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def text(self) -> str:
        with self.changed:
            return self._text

    def time_at(self, offset: int) -> float:
        """When the console text at `offset` arrived (time.monotonic())."""
        with self.changed:
            i = bisect.bisect_right(self._offsets, offset)
            return self._times[min(i, len(self._times) - 1)] if self._times else 0.0

    def _pump(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 65536)
            except OSError:
                data = b""
            now = time.monotonic()
            if self._log is not None:
                self._log.write(data)
                self._log.flush()
            text = self._decoder.decode(data, final=not data).replace("\r", "")
            with self.changed:
                self._text += text
                self._offsets.append(len(self._text))
                self._times.append(now)
                self._scan(now)
                if not data:
                    self.closed = True
                self.changed.notify_all()
            if self._echo is not None and text:
                self._echo(text)
            if not data:
                return

    def _scan(self, now: float) -> None:
        end = self._text.rfind("\n") + 1
        for line in self._text[self._scanned:end].splitlines():
            match = re.search(rf"({BOOT_MARKER}|{PID1_MARKER}) (\d+)", line)
            if not match:
                continue
            number = int(match.group(2))
            if match.group(1) == BOOT_MARKER:
                self.boots.append(BootRecord(number, now))
            elif self.boots and self.boots[-1].number == number:
                self.boots[-1].pid1_at = now
        self._scanned = max(self._scanned, end)
