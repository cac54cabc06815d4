"""The stash: descriptors only the restarter holds, kept where its death cannot close them.

A service's `listen` sockets while it is down (in its backoff, a client waiting in the
backlog) and what it stored with FDSTORE=1 and closed itself are held by the restarter
alone. Init makes a socket pair once (channels.ENV_STASH_FD, ENV_STASH_PEER_FD) and hands
both ends to every restarter, as it hands the notify and control sockets. The restarter
writes a copy of each such descriptor on one end (SCM_RIGHTS); the copies wait in the
other end's queue, which init keeps open, and the next restarter reads them back
(`take`) before it adopts anything. So what a client sent, or a service stored, outlives
any one restarter.

The queue always holds the current set: `put` first reads back (and closes) what it
held, then writes the new set, in messages of at most `PER_MESSAGE` descriptors, each with
a JSON list saying whose each is. The loop calls it at most once per round, when the set
changed.

Owns: the stash's wire format. Must not: decide what is kept (the loop says).
"""

from __future__ import annotations

import array
import json
import os
import socket
from typing import Any, NamedTuple

PER_MESSAGE = 200  # descriptors per message (SCM_MAX_FD is 253)
_MAX_MESSAGE = 1 << 16


class Item(NamedTuple):
    service: str
    kind: str  # "listen" (meta: the spec) or "store" (meta: the name and whether polled)
    meta: Any
    fd: int


class Stash:
    def __init__(self, write_fd: int, read_fd: int) -> None:
        self.w = socket.socket(fileno=write_fd)
        self.r = socket.socket(fileno=read_fd)
        for s in (self.w, self.r):
            s.set_inheritable(False)
            s.setblocking(False)
        self.broken = ""  # why writing stopped ("" while it works)

    @classmethod
    def inherited(cls) -> Stash | None:
        """The stash init handed down (None: run without init, or it has none)."""
        import stat

        from hachain import channels
        try:
            w = int(os.environ.pop(channels.ENV_STASH_FD, ""))
            r = int(os.environ.pop(channels.ENV_STASH_PEER_FD, ""))
            if stat.S_ISSOCK(os.fstat(w).st_mode) and stat.S_ISSOCK(os.fstat(r).st_mode):
                return cls(w, r)
        except (ValueError, OSError):
            pass
        return None

    def take(self) -> list[Item]:
        """Everything waiting, read out: the caller owns (and closes) each descriptor.
        A message that does not parse has its descriptors closed."""
        out: list[Item] = []
        while True:
            try:
                data, anc, _flags, _ = self.r.recvmsg(_MAX_MESSAGE, socket.CMSG_SPACE(
                    4 * 253), socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if not data and not anc:
                break
            fds: list[int] = []
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(cdata[:len(cdata) - len(cdata) % a.itemsize])
                    fds += list(a)
            try:
                items = json.loads(data)
                if not (isinstance(items, list) and len(items) == len(fds)):
                    raise ValueError("descriptors and entries not one to one")
                out += [Item(str(i[0]), str(i[1]), i[2], fd)
                        for i, fd in zip(items, fds, strict=True)]
            except (ValueError, TypeError, IndexError):
                for fd in fds:
                    os.close(fd)
        return out

    def put(self, items: list[tuple[str, str, Any, int]]) -> str:
        """Make the stash hold copies of exactly these (service, kind, meta, fd): what it
        held is read back and closed first. "" when written, else why not (the stash is
        then left empty, and not written again)."""
        if self.broken:
            return ""
        for old in self.take():
            os.close(old.fd)
        for i in range(0, len(items), PER_MESSAGE):
            part = items[i:i + PER_MESSAGE]
            data = json.dumps([[s, k, m] for s, k, m, _ in part]).encode()
            try:
                self.w.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                         array.array("i", [fd for *_, fd in part]))])
            except OSError as e:
                for old in self.take():
                    os.close(old.fd)
                self.broken = f"{e.strerror or e}"
                return self.broken
        return ""

    def close(self) -> None:
        self.w.close()
        self.r.close()
