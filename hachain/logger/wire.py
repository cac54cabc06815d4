"""What the restarter and the logger pass each other: names and message formats.

Owns: the hand-over socket's name, the environment variable naming the inherited
sockets, and the one message format used on the inbox and in the stash. Stdlib only.

A message is a datagram of JSON, `{"pipes": [{"name": N, "max": B, "keep": K}, ...]}`,
carrying as many descriptors (SCM_RIGHTS) as it has entries, in the same order: the read
ends of service pipes and the log limits of each. A marker (no entries, no descriptors)
has `{"marker": T}`.
"""

from __future__ import annotations

import json
import os
import socket

from hachain import channels

HANDOVER_SOCKET = channels.LOGGER_SOCKET
LOCK_FILE = channels.LOGGER_LOCK
RESTARTER_LOCK = channels.RESTARTER_LOCK  # names the restarter a hand-over makes followed
LOCKED_EXIT = 3  # a logger's exit status when another holds the lock
ENV_FDS = channels.ENV_LOGGER_FDS  # "inbox_r,inbox_w,stash_r,stash_w", inherited
MAX_FDS = 250  # per message (the kernel's SCM_MAX_FD is 253)
MAX_MSG = 64 * 1024


class PipeInfo:
    """A pipe's owner and the limits of its log. (Plain classes here, no dataclasses:
    the logger imports this module, and every imported module is resident memory.)"""

    __slots__ = ("name", "max_bytes", "keep")

    def __init__(self, name: str, max_bytes: int, keep: int) -> None:
        self.name = name
        self.max_bytes = max_bytes
        self.keep = keep

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "max": self.max_bytes, "keep": self.keep}


class Sockets:
    """The four sockets a logger works with, held by the restarter as well.

    inbox: the restarter sends new read ends on `inbox_w`; the logger receives them on
    `inbox_r`. stash: the logger keeps a copy of every read end it holds in flight on
    `stash_w` → `stash_r`, where the kernel keeps it open while no process has it.
    """

    def __init__(self, inbox_r: socket.socket, inbox_w: socket.socket,
                 stash_r: socket.socket, stash_w: socket.socket) -> None:
        self.inbox_r = inbox_r
        self.inbox_w = inbox_w
        self.stash_r = stash_r
        self.stash_w = stash_w

    @classmethod
    def new(cls) -> Sockets:
        inbox_r, inbox_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        stash_r, stash_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (inbox_r, inbox_w, stash_r, stash_w):
            s.setblocking(False)
        return cls(inbox_r, inbox_w, stash_r, stash_w)

    @classmethod
    def from_fds(cls, fds: list[int]) -> Sockets:
        socks = [socket.socket(fileno=fd) for fd in fds]
        for s in socks:
            s.setblocking(False)
        return cls(*socks)

    def all(self) -> list[socket.socket]:
        return [self.inbox_r, self.inbox_w, self.stash_r, self.stash_w]

    def fds(self) -> list[int]:
        return [s.fileno() for s in self.all()]

    def close(self) -> None:
        for s in self.all():
            s.close()


def encode(infos: list[PipeInfo]) -> bytes:
    """`{"pipes":[...]}` of the entries, compact: the bytes json.dumps makes of it with
    separators (",", ":"), built without a new encoder per message (2 us, not 6: one
    message per spawn)."""
    return b'{"pipes":[' + b",".join(
        b'{"name":%s,"max":%d,"keep":%d}' % (json.dumps(i.name).encode(), i.max_bytes, i.keep)
        for i in infos) + b"]}"


def decode(data: bytes, nfds: int) -> list[PipeInfo] | None:
    """The entries of a message, or None for a marker or a malformed message."""
    try:
        obj = json.loads(data)
        out = [PipeInfo(str(p["name"]), int(p["max"]), int(p["keep"])) for p in obj["pipes"]]
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return None  # (OverflowError: "max": 1e400; RecursionError: nested too deeply)
    if len(out) != nfds or any(i.max_bytes < 1 or i.keep < 0 or not i.name
                               or "/" in i.name for i in out):
        return None
    return out


def send(sock: socket.socket, infos: list[PipeInfo], fds: list[int]) -> None:
    """One message; raises BlockingIOError when the socket's buffer is full."""
    socket.send_fds(sock, [encode(infos)], fds)


def recv(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    """One message and its descriptors; None when nothing is queued."""
    try:
        data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MSG, MAX_FDS + 3,
                                                      socket.MSG_CMSG_CLOEXEC)
    except (BlockingIOError, InterruptedError):
        return None
    return data, fds


def close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
