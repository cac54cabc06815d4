"""The descriptors a service hands the restarter to keep for its next start (systemd's
file descriptor store: `FDSTORE=1`, `FDNAME=`, `FDSTOREREMOVE=1`, `FDPOLL=0` on the
notify socket, `FileDescriptorStoreMax=`).

Owns: one service's stored descriptors, their names and whether a hang-up drops them.
Must not: read the notify socket or change service state (the loop passes what a message
said and carried, and gives the descriptors to each start). Standard library only."""

from __future__ import annotations

import os
import select
from typing import NamedTuple

DEFAULT_NAME = "stored"  # systemd's name for a descriptor sent without FDNAME=
_SYS_KCMP, _KCMP_FILE = 312, 0
_libc = None


def name_problem(name: str) -> str:
    """Why `name` cannot name a stored descriptor ("" when it can): as systemd's
    fdname_is_valid, at most 255 printable ASCII characters and no ':' (the separator of
    LISTEN_FDNAMES)."""
    if not name or len(name) > 255:
        return "must be 1 to 255 characters"
    if not all(0x20 <= ord(c) < 0x7f for c in name) or ":" in name:
        return "must be printable ASCII without ':'"
    return ""


def _same_file(a: int, b: int) -> bool:
    """Are descriptors `a` and `b` (both ours) one open file? kcmp(KCMP_FILE), else the
    same device and inode."""
    global _libc
    try:
        if _libc is None:
            import ctypes
            _libc = ctypes.CDLL(None, use_errno=True)
        pid = os.getpid()
        r = int(_libc.syscall(_SYS_KCMP, pid, pid, _KCMP_FILE, a, b))
        if r >= 0:
            return r == 0
    except OSError:
        pass
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


class Entry(NamedTuple):
    fd: int
    name: str
    poll: bool  # dropped when it hangs up (POLLHUP / POLLERR), unless FDPOLL=0


class Store:
    """One service's stored descriptors, in the order they were stored."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def add(self, fds: tuple[int, ...], name: str, poll: bool, limit: int) -> tuple[
            list[int], str]:
        """Keep `fds` under `name`: those kept, and why any was not ("" when all were).
        One already stored (the same open file) is not stored twice; past `limit` none
        is kept. The caller closes what was not kept."""
        kept: list[int] = []
        why = ""
        for fd in fds:
            if any(_same_file(fd, e.fd) for e in self.entries):
                continue
            if len(self.entries) >= limit:
                why = f"fd_store_max ({limit}) reached"
                continue
            self.entries.append(Entry(fd, name, poll))
            kept.append(fd)
        return kept, why

    def remove(self, name: str) -> int:
        """Close and forget every descriptor stored under `name`; how many."""
        gone = [e for e in self.entries if e.name == name]
        self.entries = [e for e in self.entries if e.name != name]
        for e in gone:
            os.close(e.fd)
        return len(gone)

    def drop_hung_up(self) -> list[str]:
        """Close and forget the descriptors that hung up (unless stored with FDPOLL=0):
        the names of those dropped."""
        out: list[str] = []
        keep: list[Entry] = []
        for e in self.entries:
            if e.poll:
                p = select.poll()
                p.register(e.fd, 0)  # (POLLHUP, POLLERR and POLLNVAL are always reported)
                if p.poll(0):
                    os.close(e.fd)
                    out.append(e.name)
                    continue
            keep.append(e)
        self.entries = keep
        return out

    def fds(self) -> tuple[int, ...]:
        return tuple(e.fd for e in self.entries)

    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    def described(self) -> tuple[tuple[str, int, int, bool], ...]:
        """((name, device, inode, poll), ...): what the runtime record keeps of them, for
        a new restarter to find them again (listen.take_back)."""
        out = []
        for e in self.entries:
            try:
                st = os.fstat(e.fd)
            except OSError:
                continue
            out.append((e.name, st.st_dev, st.st_ino, e.poll))
        return tuple(out)

    def close(self) -> None:
        for e in self.entries:
            try:
                os.close(e.fd)
            except OSError:
                pass
        self.entries = []
