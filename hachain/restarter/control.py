"""The control socket, server side: bounded, non-blocking, one request per connection.

Owns: accepting connections on `<state_dir>/control.sock`, reading one request line
within size and time bounds, writing one reply. Must not: interpret requests — it hands
each parsed request to a callback and sends back what the callback returns. A slow or
hostile client can only hold its own connection until REQUEST_TIMEOUT; it never blocks
the restarter's loop. The protocol is described in hachain/channels.py and
docs/channels.md.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from hachain import channels

Handler = Callable[[dict[str, Any]], dict[str, Any]]
BIG_REPLY = 64 * 1024  # a reply larger than this gets a send buffer of its size
MAX_SNDBUF = 4 * 1024 * 1024
# Connections held at once (each buffers up to ~2 x MAX_REQUEST_BYTES): a new one past it
# closes the oldest, with a reply saying so. Without it, idle clients cost the restarter
# memory bounded only by its descriptor limit (3000 sending 64 KiB each: +190 MB RSS).
MAX_CONNS = 128


class _Conn:
    __slots__ = ("sock", "buf", "deadline", "out", "pid")

    def __init__(self, sock: socket.socket, deadline: float, pid: int) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.deadline = deadline
        self.out = b""
        self.pid = pid


class ControlServer:
    def __init__(self, path: str, sel: selectors.BaseSelector, handler: Handler,
                 group: str | None = None, fd: int | None = None) -> None:
        self.path = path
        self.sel = sel
        self.handler = handler
        if fd is not None:  # inherited from init, already listening: keep its backlog
            self.sock = socket.socket(fileno=fd)
            self.sock.setblocking(False)
            os.set_inheritable(fd, False)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC
                                      | socket.SOCK_NONBLOCK)
            old = os.umask(0o177)
            try:
                self.sock.bind(path)
            finally:
                os.umask(old)
        # Root and our own user may always connect; members of `group` too when set.
        self.allowed_uids = {0, os.getuid()}
        self.allowed_gid: int | None = None
        self.group = group
        self._permit()
        if fd is None:
            self.sock.listen(128)
        self.conns: dict[int, _Conn] = {}  # oldest first
        self.paused = False
        self.max_conns = MAX_CONNS
        self.evicted = 0  # connections closed as the oldest, since take_evicted()
        self.evicted_pids: set[int] = set()  # (the first few of their peers)
        sel.register(self.sock, selectors.EVENT_READ, ("control-listen", None))

    def _permit(self) -> None:
        mode = 0o600
        if self.group:
            from hachain.restarter import spawn  # (its resolver: a name service that
            try:  # does not answer holds a thread of its own, not the restarter)
                gid = spawn.RESOLVER.resolve(None, self.group).gid
                if gid is None:
                    raise KeyError(self.group)
                self.allowed_gid = gid
                os.chown(self.path, -1, gid)
                mode = 0o660
            except (KeyError, OSError, spawn.SpawnError):
                self.allowed_gid = None
        os.chmod(self.path, mode)

    def rebind(self) -> None:
        """The socket's path was removed or replaced (state_dir cleaned by hand): listen
        on a new socket there. The connections the old one queued are accepted first;
        it is then closed (its path is gone: no new client can reach it). OSError when
        the new one cannot be made; the old one then stays."""
        new = channels.bind_unix(self.path, socket.SOCK_STREAM, 0o600)
        new.listen(128)
        self.on_accept()
        if not self.paused:
            self.sel.unregister(self.sock)
        self.sock.close()
        self.sock, self.paused = new, False
        self._permit()
        self.sel.register(self.sock, selectors.EVENT_READ, ("control-listen", None))

    def on_accept(self) -> None:
        for _ in range(64):
            try:
                s, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # EMFILE and friends: the client waits in the backlog. Stop watching the
                # listener (it would stay readable and spin the loop) until the heartbeat.
                if not self.paused:
                    self.sel.unregister(self.sock)
                    self.paused = True
                return
            s.setblocking(False)
            pid = self._peer_allowed(s)
            if not pid:
                try:
                    s.send(channels.encode_message({"ok": False, "error": "permission denied"}))
                except OSError:
                    pass
                s.close()
                continue
            if len(self.conns) >= self.max_conns:
                self._evict_oldest()
            c = _Conn(s, time.monotonic() + channels.REQUEST_TIMEOUT, pid)
            self.conns[s.fileno()] = c
            self.sel.register(s, selectors.EVENT_READ, ("control-conn", s.fileno()))
            self.on_readable(s.fileno())  # the request is usually there already

    def _peer_allowed(self, s: socket.socket) -> int:
        """SO_PEERCRED: the kernel's word on who connected (pid, uid, gid). The peer's
        pid (-1 when the kernel gives none) when it may ask, else 0."""
        try:
            pid, uid, gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET,
                                                              socket.SO_PEERCRED, 12))
        except OSError:
            return 0
        pid = pid or -1
        if uid in self.allowed_uids:
            return pid
        if self.allowed_gid is None:
            return 0
        if gid == self.allowed_gid:
            return pid
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("Groups:"):
                        return pid if str(self.allowed_gid) in line.split()[1:] else 0
        except OSError:
            pass
        return 0

    def _evict_oldest(self) -> None:
        fd = next(iter(self.conns))
        c = self.conns[fd]
        if not c.out:  # (one with a reply on its way keeps it; it is closed all the same)
            try:
                c.sock.send(channels.encode_message(
                    {"ok": False, "error": f"closed: more than {self.max_conns} control "
                     "connections at once, and this was the oldest"}))
            except OSError:
                pass
        self.evicted += 1
        if len(self.evicted_pids) < 5:
            self.evicted_pids.add(c.pid)
        self._close(fd)

    def take_evicted(self) -> tuple[int, list[int]]:
        """How many connections were closed as the oldest since the last call, and the
        first few of their peers' pids."""
        out = self.evicted, sorted(self.evicted_pids)
        self.evicted, self.evicted_pids = 0, set()
        return out

    def on_readable(self, fd: int) -> None:
        c = self.conns.get(fd)
        if c is None:
            return
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(fd)
            return
        if not data:
            if c.buf:
                self._answer(fd, bytes(c.buf))
            else:
                self._close(fd)
            return
        c.buf += data
        nl = c.buf.find(b"\n")
        if nl >= 0:
            self._answer(fd, bytes(c.buf[:nl]))
        elif len(c.buf) > channels.MAX_REQUEST_BYTES:
            self._reply(fd, {"ok": False, "error": f"request too large (limit "
                             f"{channels.MAX_REQUEST_BYTES} bytes)"})

    def on_writable(self, fd: int) -> None:
        c = self.conns.get(fd)
        if c is None:
            return
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(fd)
            return
        c.out = c.out[n:]
        if not c.out:
            self._close(fd)

    def _answer(self, fd: int, line: bytes) -> None:
        try:
            req = channels.decode_request(line)
        except ValueError as e:
            self._reply(fd, {"ok": False, "error": str(e)})
            return
        try:
            rep = self.handler(req)
        except Exception as e:  # a bug in a handler must not take the restarter down
            rep = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}
        self._reply(fd, rep)

    def _reply(self, fd: int, rep: dict[str, Any]) -> None:
        c = self.conns[fd]
        body = rep.pop(channels.REPLY_BODY, None)
        if isinstance(body, bytes):  # the reply line gives its length; the bytes follow it
            c.out = channels.encode_message({**rep, "bytes": len(body)}) + body
        else:
            c.out = channels.encode_message(rep)
        if len(c.out) > BIG_REPLY:
            # Room for the whole reply in one send (the kernel caps this at wmem_max): a
            # reply sent in pieces waits a loop round, restart work included, per piece.
            try:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                  min(2 * len(c.out), MAX_SNDBUF))
            except OSError:
                pass
        c.buf.clear()
        self.sel.modify(c.sock, selectors.EVENT_WRITE, ("control-conn", fd))
        self.on_writable(fd)

    def expire(self, now: float) -> None:
        """Close connections older than REQUEST_TIMEOUT (called from the heartbeat), and
        listen again after a descriptor shortage."""
        if self.paused:
            self.paused = False
            self.sel.register(self.sock, selectors.EVENT_READ, ("control-listen", None))
        for fd, c in list(self.conns.items()):
            if now > c.deadline:
                self._close(fd)

    def _close(self, fd: int) -> None:
        c = self.conns.pop(fd, None)
        if c is None:
            return
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def close(self) -> None:
        for fd in list(self.conns):
            self._close(fd)
        if not self.paused:
            try:
                self.sel.unregister(self.sock)
            except (KeyError, ValueError):
                pass
        self.sock.close()
