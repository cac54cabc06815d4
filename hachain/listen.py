"""Sockets a service is handed already listening: systemd's socket activation
(`ListenStream=`, `ListenDatagram=`, `ListenSequentialPacket=`, `sd_listen_fds`).

The restarter opens them at the service's first start and keeps them open while the
service is wanted up, through its restarts: a client that connects while the service is
down waits in the socket's backlog instead of being refused. Each start gets them as
descriptors 3, 4, ... with `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`. A restarter
that starts again takes them back from the running service (`recover`, pidfd_getfd),
so they are never bound twice.

`parse` is pure (the configuration checks each address with it); the rest opens,
finds and closes sockets for the restarter. Standard library only."""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import NamedTuple

# kind: (socket type, inet or unix)
KINDS: dict[str, tuple[int, bool]] = {
    "tcp": (socket.SOCK_STREAM, True),
    "udp": (socket.SOCK_DGRAM, True),
    "unix": (socket.SOCK_STREAM, False),
    "unix-dgram": (socket.SOCK_DGRAM, False),
    "unix-seqpacket": (socket.SOCK_SEQPACKET, False),
}
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes with its terminating NUL
DEFAULT_BACKLOG = 4096  # SOMAXCONN on Linux >= 5.4; the kernel caps it at net.core.somaxconn
FIRST_FD = 3  # SD_LISTEN_FDS_START
ENV_KEYS = frozenset({"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"})
# socket_options: systemd's [Socket] flags, each set where it applies (a TCP option on
# TCP sockets, a unix one on unix sockets), before the bind
OPTIONS = ("reuse_port", "free_bind", "transparent", "pass_credentials", "pass_security",
           "keep_alive", "no_delay", "ipv6_only")
_IP_FREEBIND, _IPV6_FREEBIND, _IPV6_TRANSPARENT = 15, 78, 75
_SO_RCVBUFFORCE, _SO_SNDBUFFORCE = 33, 32


class Address(NamedTuple):
    spec: str  # as written: "tcp:127.0.0.1:8080"
    family: int
    type: int
    address: str | bytes | tuple[str, int]  # a unix path, b"\0abstract", (host, port)
    any_host: bool  # "tcp:PORT": every address, IPv6 and IPv4 on one socket


def parse(spec: str) -> Address:
    """The address `spec` names, or ValueError with a one-line reason. Forms:
    `tcp:PORT` (every address, IPv6 and IPv4), `tcp:1.2.3.4:PORT`, `tcp:[::1]:PORT`, the
    same with `udp:`, and `unix:/path`, `unix:@abstract`, `unix-dgram:...`,
    `unix-seqpacket:...`."""
    kind, colon, rest = spec.partition(":")
    if not colon or kind not in KINDS:
        raise ValueError("must start with " + ", ".join(f"{k}:" for k in KINDS))
    type_, inet = KINDS[kind]
    if not inet:
        if rest.startswith("@") and len(rest) > 1:
            name = os.fsencode(rest[1:])
            if len(name) + 1 > _UNIX_PATH_MAX + 1:
                raise ValueError(f"abstract name longer than {_UNIX_PATH_MAX} bytes")
            return Address(spec, socket.AF_UNIX, type_, b"\0" + name, False)
        if not rest.startswith("/"):
            raise ValueError("a unix socket needs an absolute path or @name")
        if len(os.fsencode(rest)) > _UNIX_PATH_MAX:
            raise ValueError(f"path longer than {_UNIX_PATH_MAX} bytes (the kernel's limit "
                             "for a unix socket)")
        if "\0" in rest:
            raise ValueError("a path cannot hold a NUL byte")
        return Address(spec, socket.AF_UNIX, type_, rest, False)
    host, colon, port_text = rest.rpartition(":")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError("needs a port from 1 to 65535 at the end")
    port = int(port_text)
    if not colon:
        return Address(spec, socket.AF_INET6, type_, ("::", port), True)
    if host.startswith("[") and host.endswith("]"):
        try:
            socket.inet_pton(socket.AF_INET6, host[1:-1])
        except OSError:
            raise ValueError(f"{host} is not an IPv6 address") from None
        return Address(spec, socket.AF_INET6, type_, (host[1:-1], port), False)
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        raise ValueError(f"{host!r} is not an IPv4 address (an IPv6 one is written in "
                         f"[brackets]; names are not looked up)") from None
    return Address(spec, socket.AF_INET, type_, (host, port), False)


def clashes(services: list[tuple[str, tuple[str, ...], frozenset[str]]]
            ) -> list[tuple[str, str, str, str]]:
    """(service, spec, the service before it that takes it, its spec) for each address
    two services would both bind (a port on every address clashes with the same port on
    one), unless one names the other in its conflicts (`services`: (name, listen,
    conflicts) in order). Pure."""
    out = []
    conflicts = {n: c for n, _, c in services}
    taken: dict[tuple[str, object], tuple[str, str]] = {}
    for name, specs, _ in services:
        for spec in specs:
            a = parse(spec)
            keys: list[tuple[str, object]]
            wide: tuple[str, object] | None = None  # (the port on every address)
            if not isinstance(a.address, tuple):
                keys = [("unix", a.address)]
            else:
                proto = "udp" if a.type == socket.SOCK_DGRAM else "tcp"
                host, port = a.address
                wide = (proto, ("*", port))
                keys = [wide] if a.any_host else [wide, (proto, (host, port))]
            for key in keys:
                other = taken.get(key)
                if other is not None and other[0] != name and \
                        other[0] not in conflicts[name] and \
                        name not in conflicts.get(other[0], frozenset()) and \
                        (a.any_host or key != wide or parse(other[1]).any_host):
                    out.append((name, spec, other[0], other[1]))
                    break
            for key in keys:
                taken.setdefault(key, (name, spec))
    return out


class ListenError(Exception):
    """A socket that cannot be opened: one line naming it."""

    def __init__(self, msg: str, transient: bool = False) -> None:
        super().__init__(msg)
        self.transient = transient


# the address is taken or not there yet (an interface that comes up later): try again
_TRANSIENT = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.ENOBUFS, errno.ENOMEM,
                        errno.EMFILE, errno.ENFILE})


def _text(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, "")
    return f"{e.strerror or e}" + (f" (errno {name})" if name else "")


def _set_options(s: socket.socket, a: Address, options: tuple[str, ...],
                 buffers: tuple[int, int]) -> None:
    """Apply `options` and the (receive, send) buffer sizes (0: the kernel's) where they
    apply to `a`."""
    inet = a.family != socket.AF_UNIX
    tcp = inet and a.type == socket.SOCK_STREAM
    v6 = a.family == socket.AF_INET6
    steps = [
        ("reuse_port", inet, socket.SOL_SOCKET, socket.SO_REUSEPORT),
        ("free_bind", inet, socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP,
         _IPV6_FREEBIND if v6 else _IP_FREEBIND),
        ("transparent", inet, socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP,
         _IPV6_TRANSPARENT if v6 else socket.IP_TRANSPARENT),
        ("pass_credentials", not inet, socket.SOL_SOCKET, socket.SO_PASSCRED),
        ("pass_security", not inet, socket.SOL_SOCKET, socket.SO_PASSSEC),
        ("keep_alive", tcp, socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        ("no_delay", tcp, socket.IPPROTO_TCP, socket.TCP_NODELAY)]
    for name, applies, level, opt in steps:
        if name in options and applies:
            s.setsockopt(level, opt, 1)
    for size, force, plain in ((buffers[0], _SO_RCVBUFFORCE, socket.SO_RCVBUF),
                               (buffers[1], _SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        if size:
            try:  # (past net.core.rmem_max: needs CAP_NET_ADMIN, as systemd does it)
                s.setsockopt(socket.SOL_SOCKET, force, size)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, plain, size)


def open_one(a: Address, backlog: int = DEFAULT_BACKLOG, mode: int = 0o666,
             uid: int | None = None, gid: int | None = None, options: tuple[str, ...] = (),
             buffers: tuple[int, int] = (0, 0)) -> socket.socket:
    """A socket bound to `a` and listening (close-on-exec, non-blocking, as systemd opens
    them), with `options` (OPTIONS) and the (receive, send) `buffers`. A unix path: its
    directory is made when missing, a stale socket there is replaced (anything else
    there is an error), then it gets `mode`, `uid`, `gid`. ListenError naming the
    address otherwise."""
    try:
        s = socket.socket(a.family, a.type | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    except OSError as e:
        if a.any_host and e.errno == errno.EAFNOSUPPORT:  # no IPv6 here: IPv4's any
            port = int(a.address[1])  # type: ignore[index]
            return open_one(a._replace(family=socket.AF_INET, address=("0.0.0.0", port),
                                       any_host=False), backlog, mode, uid, gid, options,
                            buffers)
        raise ListenError(f"listen {a.spec!r}: socket: {_text(e)}",
                          e.errno in _TRANSIENT) from None
    step = "bind"
    try:
        if a.family != socket.AF_UNIX:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if a.family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                             0 if a.any_host and "ipv6_only" not in options else 1)
        if options or any(buffers):
            step = "socket_options"
            _set_options(s, a, options, buffers)
        if isinstance(a.address, str):
            step = "stale socket"
            _clear_path(a.address)
        step = "bind"
        s.bind(a.address)
        if isinstance(a.address, str):
            step = f"chmod {mode:04o}"
            os.chmod(a.address, mode)
            if uid is not None or gid is not None:
                step = "chown"
                os.chown(a.address, -1 if uid is None else uid, -1 if gid is None else gid)
        if a.type != socket.SOCK_DGRAM:
            step = "listen"
            s.listen(backlog)
    except OSError as e:
        s.close()
        raise ListenError(f"listen {a.spec!r}: {step}: {_text(e)}",
                          e.errno in _TRANSIENT) from None
    return s


def _clear_path(path: str) -> None:
    """Before a bind to `path`: its directory made (0755), a socket left there removed."""
    os.makedirs(os.path.dirname(path) or "/", 0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket")
    os.unlink(path)


def open_all(specs: tuple[str, ...], backlog: int = DEFAULT_BACKLOG, mode: int = 0o666,
             uid: int | None = None, gid: int | None = None, options: tuple[str, ...] = (),
             buffers: tuple[int, int] = (0, 0)) -> list[socket.socket]:
    """Every socket of `specs`, in order; none left open when one fails (ListenError)."""
    out: list[socket.socket] = []
    try:
        for spec in specs:
            try:
                a = parse(spec)
            except ValueError as e:
                raise ListenError(f"listen {spec!r}: {e}") from None
            out.append(open_one(a, backlog, mode, uid, gid, options, buffers))
    except BaseException:
        close_all(out)
        raise
    return out


def close_all(socks: list[socket.socket]) -> None:
    """Close them. A unix socket's file stays, as systemd leaves it (`RemoveOnStop=no`):
    the next bind replaces it."""
    for s in socks:
        s.close()


def inodes(socks: list[socket.socket]) -> list[int]:
    """The sockets' own inodes (what /proc/PID/fd shows as socket:[N])."""
    return [os.fstat(s.fileno()).st_ino for s in socks]


def env(names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """LISTEN_FDS and LISTEN_FDNAMES for descriptors named `names` (LISTEN_PID, the
    child's own pid, is set in the child before its exec)."""
    return (("LISTEN_FDS", str(len(names))), ("LISTEN_FDNAMES", ":".join(names)))


_SYS_PIDFD_GETFD = 438
_libc = None


def _pidfd_getfd(pidfd: int, fd: int) -> int:
    global _libc
    if _libc is None:
        import ctypes
        _libc = ctypes.CDLL(None, use_errno=True)
    got = int(_libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0))
    if got < 0:
        import ctypes
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return got


def take_back(pids: list[int], wanted: set[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """Copies of the open files `wanted` ((device, inode) pairs) that the processes
    `pids` hold, each from the first that holds it: {(device, inode): descriptor}, as
    many as were found. Needs Linux >= 5.6 and the right to trace the process (root)."""
    found: dict[tuple[int, int], int] = {}
    for pid in pids:
        if len(found) == len(wanted):
            break
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            try:
                names = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for n in names:
                try:
                    st = os.stat(f"/proc/{pid}/fd/{n}")
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key not in wanted or key in found:
                    continue
                try:
                    fd = _pidfd_getfd(pidfd, int(n))
                except OSError:
                    continue
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != key:  # the descriptor changed in between
                    os.close(fd)
                    continue
                found[key] = fd
        finally:
            os.close(pidfd)
    return found


_SOCKFS_DEV: int | None = None


def _sockfs_dev() -> int:
    global _SOCKFS_DEV
    if _SOCKFS_DEV is None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            _SOCKFS_DEV = os.fstat(s.fileno()).st_dev
    return _SOCKFS_DEV


def recover(pids: list[int], wanted: list[int]) -> list[socket.socket] | None:
    """Copies of the sockets whose inodes are `wanted`, taken from the first of `pids`
    (the service's processes, its main one first) that holds each: how a restarter that
    starts again gets back what the one before it opened. None unless every one was found
    (the caller opens them afresh once nothing holds them)."""
    dev = _sockfs_dev()
    found = take_back(pids, {(dev, i) for i in wanted})
    if len(found) != len(set(wanted)):
        for fd in found.values():
            os.close(fd)
        return None
    return [socket.socket(fileno=found[(dev, i)]) for i in wanted]
