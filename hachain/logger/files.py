"""One service's log files, bounded as they are written.

Owns: `<dir>/<name>.log` and its rotated copies `<name>.log.1` … `<name>.log.<keep>`
(`.1` the newest), and the rule that keeps them within `max_bytes × (keep + 1)` at every
moment. Must not: read pipes, talk to the restarter, or block on anything but the disk.

How the bound holds: the size of the live file is known (it is the only writer), and
before a write would take it past `max_bytes` the write is cut, the live file is rotated
by rename (`.keep-1` → `.keep` replaces the oldest, …, live → `.1`) and the rest goes to
a fresh live file. No file ever grows past `max_bytes`, there are at most `keep + 1`
files, and a rename frees the replaced file at once (unless a reader still holds it
open: `hachain logs -f` lets go of an old file as soon as it has read it to the end).

Lines: the cut is made after the last newline that fits, so a line is split across
files only when it does not fit in an empty file (longer than `max_bytes`) or when it
arrived in pieces and its start is already in the old file.
"""

from __future__ import annotations

import errno
import os
import time

FULL = (errno.ENOSPC, errno.EDQUOT)
RELINK_CHECK = 1.0  # s between two looks at whether the open file was removed
FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
MODE = 0o640


class LogFile:
    """The live file of one service, open for appending, and its rotation."""

    def __init__(self, log_dir: str, name: str, max_bytes: int, keep: int) -> None:
        self.dir = log_dir
        self.name = name
        self.path = os.path.join(log_dir, name + ".log")
        self.max_bytes = max_bytes
        self.keep = keep
        self.fd: int | None = None
        self.size = 0
        self.written = 0  # bytes written since this object was made
        self.dropped = 0  # bytes lost to write errors (a full disk)
        self.rotations = 0
        self.freed = 0  # rotated copies removed early because the disk was full
        self.error: str | None = None  # the last write error, until a write succeeds
        self.checked = time.monotonic()  # when the open file was last seen linked
        self.trim()

    def configure(self, max_bytes: int, keep: int) -> None:
        """New limits (a reload changed them); takes effect with the next write."""
        if (max_bytes, keep) != (self.max_bytes, self.keep):
            self.max_bytes, self.keep = max_bytes, keep
            self.trim()

    def trim(self) -> None:
        """Remove rotated copies numbered above `keep` (left by a larger `log_keep`).
        Copies are numbered without gaps, so this stops at the first one missing: one
        failed unlink in the usual case, not a listing of a directory of 1000 logs."""
        n = self.keep + 1
        while True:
            try:
                os.unlink(f"{self.path}.{n}")
            except FileNotFoundError:
                return
            except OSError:
                pass
            n += 1
            if n > self.keep + 1000:
                return

    def _open(self) -> int:
        if self.fd is not None and (now := time.monotonic()) >= self.checked + RELINK_CHECK:
            # at most once a second: is the file still there? Removed by hand (its
            # directory with it, say), the output would go on into a file nobody can
            # read until the next rotation; a new one is made in its place
            self.checked = now
            try:
                gone = os.fstat(self.fd).st_nlink == 0
            except OSError:
                gone = False
            if gone:
                os.close(self.fd)
                self.fd = None
        if self.fd is None:
            try:
                self.fd = os.open(self.path, FLAGS, MODE)
            except FileNotFoundError:
                os.makedirs(self.dir, exist_ok=True)
                self.fd = os.open(self.path, FLAGS, MODE)
            self.size = os.fstat(self.fd).st_size
        return self.fd

    def append(self, data: bytes) -> None:
        """Write `data`, rotating as often as needed to stay within the bound."""
        view = memoryview(data)
        while view:
            try:
                self._open()
            except OSError as e:
                self._lost(len(view), e)
                return
            room = max(0, self.max_bytes - self.size)
            if len(view) <= room:
                self._write(view)
                return
            cut = bytes(view[:room]).rfind(b"\n") + 1 if room else 0
            if cut == 0 and self.size == 0:
                cut = room  # a line longer than a whole file: cut it where the file ends
            if cut:
                self._write(view[:cut])
                view = view[cut:]
            if not self.rotate():
                self._lost(len(view), OSError(errno.EIO, "cannot rotate"))
                return

    def _write(self, view: memoryview) -> None:
        assert self.fd is not None
        while view:
            try:
                n = os.write(self.fd, view)
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno in FULL and self.free_oldest():
                    continue  # logs larger than their disk shrink to what fits, and go on
                self._lost(len(view), e)
                return
            self.size += n
            self.written += n
            view = view[n:]
        self.error = None

    def _lost(self, n: int, e: OSError) -> None:
        """A write that cannot be made (ENOSPC, EIO, EDQUOT): the bytes are dropped, not
        retried, so a full disk never stops a service; counted and shown."""
        self.dropped += n
        self.error = f"{self.path}: {e.strerror or e}"
        if e.errno == errno.EFBIG:
            self.rotate()

    def free_oldest(self) -> bool:
        """The disk is full: remove the oldest rotated copy, if there is one."""
        for n in range(self.keep, 0, -1):
            try:
                os.unlink(f"{self.path}.{n}")
                self.freed += 1
                return True
            except FileNotFoundError:
                continue
            except OSError:
                return False
        return False

    def rotate(self) -> bool:
        """Live → `.1` → … → `.keep` (the oldest is replaced, so freed); a new live file
        is opened by the next write. With keep = 0 the live file is removed instead.
        False when the live file could not be moved away (then it is not written to)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.size = 0
        self.rotations += 1
        try:
            if self.keep == 0:
                os.unlink(self.path)
                return True
            for i in range(self.keep - 1, 0, -1):
                try:
                    os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
                except FileNotFoundError:
                    pass
            os.replace(self.path, self.path + ".1")
        except FileNotFoundError:
            pass  # the live file was removed by hand: the next write starts a new one
        except OSError as e:
            self.error = f"{self.path}: cannot rotate: {e.strerror or e}"
            return False
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
