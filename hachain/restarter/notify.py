"""Readiness channels: the sd_notify datagram socket and s6-style notification fds.

Owns: the NOTIFY_SOCKET protocol (parsing datagrams, checking the sender's credentials)
and reading readiness pipes. Must not: change service state — it returns what a message
says and who sent it; the loop decides.

sd_notify facts: a service sends newline-separated KEY=VALUE assignments in one
datagram to the AF_UNIX socket named by $NOTIFY_SOCKET. With SO_PASSCRED on the
receiving socket, the kernel attaches the sender's (pid, uid, gid) as SCM_CREDENTIALS,
which the sender cannot forge (without privileges), so "which service said READY=1" is
answered by the kernel, not by the message. systemd-notify(1) sends from a short-lived
child process, so a sender is accepted when it is the main pid, or a member of the
service's cgroup, or of its process group.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from hachain import channels

MAX_DATAGRAM = 4096
_CRED = struct.Struct("iII")
PER_SERVICE = 4  # datagrams a service may have waiting: READY=1, MAINPID=, STATUS=, a ping


def queue_length() -> int:
    """The kernel's limit on the datagrams queued on a socket made in this network
    namespace (net.unix.max_dgram_qlen, 10 by default, 512 under systemd); a sender
    past it blocks in sendto() until the reader takes one. 512 when unreadable."""
    try:
        with open("/proc/sys/net/unix/max_dgram_qlen") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 512


PID_MAX = 1 << 22  # the kernel's PID_MAX_LIMIT: no pid is larger
USEC_MAX = (1 << 64) - 1  # systemd's usec_t


def pid_field(value: str) -> int | None:
    """MAINPID=: the pid it names (ASCII decimal, 1 to PID_MAX), or None."""
    if not (value.isascii() and value.isdigit() and len(value) <= 7):
        return None
    pid = int(value)
    return pid if 1 <= pid <= PID_MAX else None


def usec_field(value: str) -> float | None:
    """EXTEND_TIMEOUT_USEC=: the seconds it asks for (ASCII decimal microseconds that fit
    a usec_t), or None."""
    if not (value.isascii() and value.isdigit() and len(value) <= 20):
        return None
    usec = int(value)
    return usec / 1e6 if usec <= USEC_MAX else None


class WarnQuota:
    """At most `per_window` warning lines per sender (a service's name, or "" for
    processes of no service) in each `window` seconds; the rest are counted and reported
    as one line each when the window ends, so a flood of bad datagrams cannot flood the
    chain's log. Pure: `now` is passed in."""

    def __init__(self, per_window: int = 20, window: float = 1.0) -> None:
        self.per_window = per_window
        self.window = window
        self.start = 0.0
        self.count: dict[str, int] = {}  # one key per service, plus ""

    def allow(self, key: str) -> bool:
        n = self.count.get(key, 0) + 1
        self.count[key] = n
        return n <= self.per_window

    def roll(self, now: float) -> list[tuple[str, int]]:
        """Once a window has ended: each sender whose lines were held back, with how many;
        the counts start over. [] before that."""
        if now - self.start < self.window:
            return []
        out = [(k, n - self.per_window) for k, n in self.count.items() if n > self.per_window]
        self.count.clear()
        self.start = now
        return out


MAX_FDS = 253  # SCM_MAX_FD: the most descriptors one datagram can carry


@dataclass(frozen=True)
class Notification:
    """One datagram read from the notify socket (sd_notify), parsed."""
    pid: int  # sender pid from the kernel's credentials (0 when absent)
    fields: dict[str, str]
    error: str = ""
    # descriptors that came with it (FDSTORE=1, BARRIER=1): the reader owns them and
    # closes each it does not keep (close_fds)
    fds: tuple[int, ...] = ()

    def close_fds(self, keep: frozenset[int] = frozenset()) -> None:
        for fd in self.fds:
            if fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass


def _close(fds: tuple[int, ...]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


_ANC_SIZE = socket.CMSG_SPACE(_CRED.size) + socket.CMSG_SPACE(MAX_FDS * 4)


def _fds_of(anc: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors SCM_RIGHTS messages carried (received close-on-exec)."""
    fds: list[int] = []
    for level, typ, cdata in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            n = len(cdata) // 4
            fds += struct.unpack(f"{n}i", cdata[:n * 4])
    return fds


def parse(data: bytes) -> dict[str, str]:
    """KEY=VALUE lines → dict. ValueError on anything else."""
    if len(data) > MAX_DATAGRAM:
        raise ValueError(f"datagram too large ({len(data)} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("datagram is not UTF-8") from None
    out: dict[str, str] = {}
    for line in text.split("\n"):
        if not line:
            continue
        key, sep, val = line.partition("=")
        if not sep or not key or not key.replace("_", "").isalnum() or not key.isupper():
            raise ValueError(f"malformed assignment {line[:40]!r}")
        out[key] = val
    return out


class NotifySocket:
    def __init__(self, path: str, fd: int | None = None) -> None:
        self.path = path
        self.capacity = queue_length() + 1  # the kernel lets the queue reach limit + 1
        if fd is not None:  # inherited from init, already bound: keep what is queued
            self.sock = socket.socket(fileno=fd)
            self.sock.setblocking(False)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            os.set_inheritable(fd, False)
            try:
                os.chmod(path, 0o666)
            except OSError:
                pass
            return
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                  | socket.SOCK_NONBLOCK)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(path)
        os.chmod(path, 0o666)  # services running as other users must be able to send

    def fileno(self) -> int:
        return self.sock.fileno()

    def rebind(self) -> socket.socket:
        """The socket's path was removed or replaced (state_dir cleaned by hand): bind a
        new one there and use it; the old one is returned for the caller to read what it
        still queues, then close. OSError when the new one cannot be made."""
        new = channels.bind_unix(self.path, socket.SOCK_DGRAM, 0o666)
        new.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        new.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        old, self.sock = self.sock, new
        return old

    def drain(self, services: int) -> list[Notification]:
        """Everything queued, parsed: until the socket is empty, or after as many
        datagrams as it can hold plus PER_SERVICE for each of `services` (senders
        blocked on a full queue send as it empties), whichever comes first. Never
        waits: a service that floods the socket delays one read by a bounded amount."""
        return self.receive(max(256, self.capacity + PER_SERVICE * services))

    def receive(self, limit: int = 256, sock: socket.socket | None = None
                ) -> list[Notification]:
        """The pending datagrams, at most `limit`, parsed (of `sock`: a socket `rebind`
        replaced). Never raises for bad input."""
        out: list[Notification] = []
        sock = sock or self.sock
        for _ in range(limit):
            try:
                data, anc, flags, _addr = sock.recvmsg(MAX_DATAGRAM + 1, _ANC_SIZE,
                                                            socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            pid = 0
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
                    pid = _CRED.unpack(cdata[:_CRED.size])[0]
            fds = tuple(_fds_of(anc))
            if flags & socket.MSG_TRUNC or len(data) > MAX_DATAGRAM:
                _close(fds)
                out.append(Notification(pid, {}, "oversized datagram"))
                continue
            if flags & socket.MSG_CTRUNC:  # (the kernel closed the descriptors past room)
                _close(fds)
                out.append(Notification(pid, {}, f"more than {MAX_FDS} descriptors"))
                continue
            try:
                fields = parse(data)
            except ValueError as e:
                _close(fds)
                out.append(Notification(pid, {}, str(e)))
                continue
            if fields.get("FDSTORE") != "1":
                # closed on receipt (a BARRIER=1's: that answers it): only what is offered
                # for the store stays open until the loop has read who sent it
                _close(fds)
                fds = ()
            out.append(Notification(pid, fields, fds=fds))
        return out

    def close(self) -> None:
        self.sock.close()


def read_ready_fd(fd: int) -> str:
    """Drain a readiness pipe: 'ready' once a newline arrived, 'closed' at EOF without
    one, '' when nothing decisive yet."""
    try:
        data = os.read(fd, 4096)
    except BlockingIOError:
        return ""
    except OSError:
        return "closed"
    if not data:
        return "closed"
    return "ready" if b"\n" in data else ""
