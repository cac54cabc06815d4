"""The software watchdog simulator: a /dev/watchdog for simulated machines and tests.

Two parts, kept apart the way a driver is kept apart from its file operations:

- `SoftWatchdog` is the driver: pure state with the clock passed in (no I/O, no
  `time.monotonic()`), with the same semantics and errno values as the Linux watchdog
  core (drivers/watchdog/watchdog_dev.c) for one device with WDIOF_SETTIMEOUT,
  WDIOF_MAGICCLOSE, WDIOF_KEEPALIVEPING and WDIOF_PRETIMEOUT and a GETTIMELEFT callback.
- `WatchdogServer` is the character device: it serves one SoftWatchdog on a unix socket
  (protocol in docs/watchdog.md; client side is `hachain.watchdog.device.SimTransport`),
  watches the clock from a background thread and calls `on_expire()` when it fires.

Semantics copied from the kernel, because the chain's correctness argument relies on
them (see the facts essay in `hachain.watchdog.device`):

- open arms the watchdog; opening an already armed one (a restarted tickler) does not
  pet it. Only one opener at a time (EBUSY).
- a write of any bytes pets; the write also sets "magic close allowed" iff it held a 'V'.
- close disarms only when magic close is allowed and the device is not nowayout;
  otherwise it stays armed and gets one last pet (the kernel's "watchdog did not stop!").
  A client whose connection drops is a process that died: the same rule applies.
- SETTIMEOUT accepts 1..3600 (EINVAL otherwise), pets, and writes the applied value back;
  a pretimeout that is no longer smaller than the new timeout is reset to 0.
- SETPRETIMEOUT accepts 0 <= p < timeout (EINVAL otherwise) and writes nothing back.
- SETOPTIONS: WDIOS_DISABLECARD stops it (EBUSY when nowayout), WDIOS_ENABLECARD starts
  it, anything else is EINVAL. An unknown request is ENOTTY.
- GETSTATUS reports WDIOF_MAGICCLOSE while a 'V' is pending and WDIOF_KEEPALIVEPING when
  it was pinged since the previous GETSTATUS.
"""

from __future__ import annotations

import errno
import json
import math
import os
import selectors
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hachain.watchdog.device import (
    C_INT,
    SIM_FLAG_NOWAYOUT,
    SIM_HELLO_OPEN,
    SIM_HELLO_STAT,
    SIM_MAX_PAYLOAD,
    SIM_OP_IOCTL,
    SIM_OP_WRITE,
    SIM_OPEN_REPLY,
    SIM_REPLY,
    SIM_REQUEST,
    WDIOC_GETBOOTSTATUS,
    WDIOC_GETPRETIMEOUT,
    WDIOC_GETSTATUS,
    WDIOC_GETSUPPORT,
    WDIOC_GETTIMELEFT,
    WDIOC_GETTIMEOUT,
    WDIOC_KEEPALIVE,
    WDIOC_SETOPTIONS,
    WDIOC_SETPRETIMEOUT,
    WDIOC_SETTIMEOUT,
    WDIOF_CARDRESET,
    WDIOF_KEEPALIVEPING,
    WDIOF_MAGICCLOSE,
    WDIOF_PRETIMEOUT,
    WDIOF_SETTIMEOUT,
    WDIOS_DISABLECARD,
    WDIOS_ENABLECARD,
    WatchdogInfo,
)

MIN_TIMEOUT = 1
ACCEPT_RETRY = 0.05  # the longest pause after a failed accept (EMFILE...) before the next
MAX_TIMEOUT = 3600


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def ioc_size(request: int) -> int:
    """The argument size encoded in an ioctl request number (_IOC_SIZE)."""
    return (request >> 16) & 0x3FFF


class SoftWatchdog:
    """One simulated watchdog driver. Every method takes `now` (a monotonic time)."""

    OPTIONS = WDIOF_SETTIMEOUT | WDIOF_MAGICCLOSE | WDIOF_KEEPALIVEPING | WDIOF_PRETIMEOUT
    FIRMWARE_VERSION = 0

    def __init__(self, timeout: int = 10, pretimeout: int = 0, nowayout: bool = False,
                 identity: str = "hachain softdog", bootstatus: int = 0) -> None:
        if not MIN_TIMEOUT <= timeout <= MAX_TIMEOUT:
            raise ValueError(f"timeout must be {MIN_TIMEOUT}..{MAX_TIMEOUT}, got {timeout}")
        if not 0 <= pretimeout < timeout:
            raise ValueError(f"pretimeout must be 0..{timeout - 1}, got {pretimeout}")
        if len(identity.encode("utf-8")) > 31:
            raise ValueError(f"identity must fit 31 bytes, got {identity!r}")
        self.timeout = timeout
        self.pretimeout = pretimeout
        self.nowayout = nowayout
        self.identity = identity
        self.bootstatus = bootstatus
        self.armed = False
        self.is_open = False
        self._deadline: float | None = None
        self._allow_release = False  # the last write held a 'V'
        self._pinged = False  # pinged since the last GETSTATUS

    # -- the clock ------------------------------------------------------------------------

    def deadline(self) -> float | None:
        """The monotonic time it fires; None when disarmed."""
        return self._deadline if self.armed else None

    def pretimeout_at(self) -> float | None:
        """The monotonic time the pretimeout fires; None when disarmed or pretimeout 0."""
        if not self.armed or not self.pretimeout or self._deadline is None:
            return None
        return self._deadline - self.pretimeout

    def expired(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def timeleft(self, now: float) -> int:
        """Whole seconds before it fires, rounded up; 0 when disarmed or expired."""
        deadline = self.deadline()
        if deadline is None:
            return 0
        # round first: (now + timeout) - now can come out a hair above `timeout`
        return max(0, math.ceil(round(deadline - now, 6)))

    def _start(self, now: float) -> None:
        if not self.armed:
            self.armed = True
            self._deadline = now + self.timeout
            self._pinged = True

    def _ping(self, now: float) -> None:
        if self.armed:
            self._deadline = now + self.timeout
            self._pinged = True

    def _stop(self) -> None:
        if not self.armed:
            return
        if self.nowayout:
            raise _err(errno.EBUSY)
        self.armed = False
        self._deadline = None

    # -- file operations --------------------------------------------------------------------

    def open(self, now: float) -> None:
        """Open the device: arms it when it was not armed. OSError(EBUSY) when open."""
        if self.is_open:
            raise _err(errno.EBUSY)
        self.is_open = True
        self._allow_release = False
        self._start(now)

    def write(self, data: bytes, now: float) -> None:
        """Any byte pets; a 'V' anywhere in this write allows magic close."""
        if not self.is_open:
            raise _err(errno.EBADF)
        if not data:
            return
        self._allow_release = b"V" in data
        self._ping(now)

    def close(self, now: float) -> None:
        """Release: disarms only after a 'V' and not nowayout; else one last pet."""
        if not self.is_open:
            return
        self.is_open = False
        allow, self._allow_release = self._allow_release, False
        if not self.armed:
            return
        if allow and not self.nowayout:
            self._stop()
        else:
            self._ping(now)

    def ioctl(self, request: int, arg: bytes, now: float) -> bytes:
        """Run one WDIOC_* request on the packed argument; return the updated buffer."""
        if not self.is_open:
            raise _err(errno.EBADF)
        if request != WDIOC_GETSUPPORT and request not in _IOCTLS:
            raise _err(errno.ENOTTY)
        if len(arg) != ioc_size(request):
            raise _err(errno.EFAULT)
        if request == WDIOC_GETSUPPORT:
            return WatchdogInfo(self.OPTIONS, self.FIRMWARE_VERSION, self.identity).pack()
        handler = _IOCTLS[request]
        value = C_INT.unpack(arg)[0]
        result = handler(self, value, now)
        return arg if result is None else C_INT.pack(result)

    def _ioctl_getstatus(self, value: int, now: float) -> int:
        status = WDIOF_MAGICCLOSE if self._allow_release else 0
        if self._pinged:
            status |= WDIOF_KEEPALIVEPING
            self._pinged = False
        return status

    def _ioctl_getbootstatus(self, value: int, now: float) -> int:
        return self.bootstatus

    def _ioctl_setoptions(self, value: int, now: float) -> None:
        if not value & (WDIOS_DISABLECARD | WDIOS_ENABLECARD):
            raise _err(errno.EINVAL)
        if value & WDIOS_DISABLECARD:
            self._stop()
        if value & WDIOS_ENABLECARD:
            self._start(now)

    def _ioctl_keepalive(self, value: int, now: float) -> None:
        self._ping(now)

    def _ioctl_settimeout(self, value: int, now: float) -> int:
        if not MIN_TIMEOUT <= value <= MAX_TIMEOUT:
            raise _err(errno.EINVAL)
        self.timeout = value
        if self.pretimeout >= self.timeout:
            self.pretimeout = 0
        self._ping(now)
        return self.timeout

    def _ioctl_gettimeout(self, value: int, now: float) -> int:
        return self.timeout

    def _ioctl_setpretimeout(self, value: int, now: float) -> None:
        if value and value >= self.timeout:
            raise _err(errno.EINVAL)
        self.pretimeout = value

    def _ioctl_getpretimeout(self, value: int, now: float) -> int:
        return self.pretimeout

    def _ioctl_gettimeleft(self, value: int, now: float) -> int:
        return self.timeleft(now)

    # -- machine-level ------------------------------------------------------------------------

    def power_on(self, bootstatus: int) -> None:
        """The machine reset: disarmed, nobody holds it, new boot status. Keeps timeout."""
        self.armed = False
        self.is_open = False
        self._deadline = None
        self._allow_release = False
        self._pinged = False
        self.bootstatus = bootstatus

    def attributes(self, now: float) -> dict[str, Any]:
        """What /sys/class/watchdog/watchdogN would show (plus `open`)."""
        return {
            "identity": self.identity, "timeout": self.timeout,
            "timeleft": self.timeleft(now), "pretimeout": self.pretimeout,
            "bootstatus": self.bootstatus, "nowayout": int(self.nowayout),
            "state": "active" if self.armed else "inactive",
            "status": f"0x{WDIOF_MAGICCLOSE if self._allow_release else 0:x}",
            "fw_version": self.FIRMWARE_VERSION, "options": f"0x{self.OPTIONS:x}",
            "min_timeout": MIN_TIMEOUT, "max_timeout": MAX_TIMEOUT,
            "open": self.is_open,
        }


# Every int-argument request; GETSUPPORT (a struct) is handled inline.
_IOCTLS: dict[int, Callable[[SoftWatchdog, int, float], int | None]] = {
    WDIOC_GETSTATUS: SoftWatchdog._ioctl_getstatus,
    WDIOC_GETBOOTSTATUS: SoftWatchdog._ioctl_getbootstatus,
    WDIOC_SETOPTIONS: SoftWatchdog._ioctl_setoptions,
    WDIOC_KEEPALIVE: SoftWatchdog._ioctl_keepalive,
    WDIOC_SETTIMEOUT: SoftWatchdog._ioctl_settimeout,
    WDIOC_GETTIMEOUT: SoftWatchdog._ioctl_gettimeout,
    WDIOC_SETPRETIMEOUT: SoftWatchdog._ioctl_setpretimeout,
    WDIOC_GETPRETIMEOUT: SoftWatchdog._ioctl_getpretimeout,
    WDIOC_GETTIMELEFT: SoftWatchdog._ioctl_gettimeleft,
}


# --- the server -------------------------------------------------------------------------

@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)
    holder: bool = False  # this connection has the device open
    boot: int = 0  # the boot it opened the device in


class WatchdogServer:
    """Serves one SoftWatchdog on a unix socket from a background thread.

    `on_expire()` is called from that thread once per expiry, after the watchdog has
    been reset to its power-on state with boot status WDIOF_CARDRESET and every client
    was dropped (a reset kills every process). `reset_for_boot()` is for a machine that
    rebooted for another reason. Callbacks must not block for long: the clock is
    watched from the same thread.
    """

    POLL_CAP = 0.5  # longest sleep of the loop, so stop() is never slow to take effect

    def __init__(self, socket_path: str, watchdog: SoftWatchdog,
                 on_expire: Callable[[], None],
                 on_pretimeout: Callable[[], None] | None = None) -> None:
        self.socket_path = socket_path
        self.watchdog = watchdog
        self.on_expire = on_expire
        self.on_pretimeout = on_pretimeout
        self.expirations = 0
        self.pretimeouts = 0
        self.callback_errors: list[BaseException] = []
        self.accept_errors = 0
        self._lock = threading.Lock()
        self._boot = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._conns: dict[socket.socket, _Conn] = {}
        self._pretimeout_notified: float | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the socket and start serving. OSError when the path cannot be bound."""
        _remove_stale_socket(self.socket_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(self.socket_path)
            listener.listen(16)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="wdsim", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, drop every client, remove the socket. Idempotent."""
        self._stopping = True
        self._wake()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            try:
                t.join(timeout=10)
            except RuntimeError:  # made but never started: a signal cut start() short
                pass
        self._thread = None
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._listener = self._wake_r = self._wake_w = None
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass

    def reset_for_boot(self, bootstatus: int) -> None:
        """The machine rebooted: disarm, forget every client, set the next boot status."""
        with self._lock:
            self._boot += 1
            self.watchdog.power_on(bootstatus)
            self._pretimeout_notified = None
        self._wake()

    def _wake(self) -> None:
        w = self._wake_w
        if w is not None:
            try:
                w.send(b"x")
            except OSError:
                pass

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        if self._stopping:  # stop() came first (a signal cut start() short)
            return
        assert self._listener is not None and self._wake_r is not None
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping:
                for key, _ in sel.select(self._sleep_time(time.monotonic())):
                    if key.data == "listen":
                        self._accept(sel)
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        self._readable(sel, key.data)
                self._drop_stale(sel)
                self._check_clock(sel, time.monotonic())
        finally:
            for conn in list(self._conns.values()):
                self._drop(sel, conn, release=False)
            sel.close()

    def _sleep_time(self, now: float) -> float:
        with self._lock:
            times = [t for t in (self.watchdog.deadline(), self._pending_pretimeout())
                     if t is not None]
        if not times:
            return self.POLL_CAP
        return max(0.0, min(self.POLL_CAP, min(times) - now))

    def _pending_pretimeout(self) -> float | None:
        at = self.watchdog.pretimeout_at()
        if at is None or self._pretimeout_notified == self.watchdog.deadline():
            return None
        return at

    def _check_clock(self, sel: selectors.BaseSelector, now: float) -> None:
        fire_pre = fire_expire = False
        with self._lock:
            at = self._pending_pretimeout()
            if at is not None and now >= at:
                self._pretimeout_notified = self.watchdog.deadline()
                self.pretimeouts += 1
                fire_pre = self.on_pretimeout is not None
            if self.watchdog.expired(now):
                self.expirations += 1
                self._boot += 1
                self.watchdog.power_on(WDIOF_CARDRESET)
                self._pretimeout_notified = None
                fire_expire = True
        if fire_pre and self.on_pretimeout is not None:
            self._callback(self.on_pretimeout)
        if fire_expire:
            self._drop_stale(sel)
            self._callback(self.on_expire)

    def _callback(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 -- a broken callback must not stop the watchdog
            self.callback_errors.append(e)
            print(f"wdsim: callback {fn!r} failed: {e!r}", file=sys.stderr)

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _accept(self, sel: selectors.BaseSelector) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            # Out of file descriptors, say: the client waits in the backlog, and this
            # thread goes on watching the clock (an exception here used to end it, and
            # the watchdog then never fired). A short pause: no busy loop meanwhile.
            if not self.accept_errors:
                print(f"wdsim: accept failed: {e!r}; retrying", file=sys.stderr)
            self.accept_errors += 1
            time.sleep(min(ACCEPT_RETRY, self._sleep_time(time.monotonic())))
            return
        sock.settimeout(1.0)  # for sends; reads only happen after select says readable
        conn = _Conn(sock)
        self._conns[sock] = conn
        sel.register(sock, selectors.EVENT_READ, conn)

    def _drop(self, sel: selectors.BaseSelector, conn: _Conn, release: bool = True) -> None:
        """Forget a connection; releasing the device like a closed file when it held it."""
        if conn.holder and release:
            with self._lock:
                if conn.boot == self._boot:
                    self.watchdog.close(time.monotonic())
        conn.holder = False
        self._conns.pop(conn.sock, None)
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _drop_stale(self, sel: selectors.BaseSelector) -> None:
        """Drop holders from a previous boot: their processes died in the reset."""
        for conn in list(self._conns.values()):
            if conn.holder and conn.boot != self._boot:
                self._drop(sel, conn, release=False)

    def _readable(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (TimeoutError, BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sel, conn)
            return
        conn.buf += data
        try:
            self._process(sel, conn)
        except OSError:  # the client went away mid-reply, or spoke nonsense
            self._drop(sel, conn)

    def _process(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        if not conn.holder:
            hello = bytes(conn.buf[:1])
            del conn.buf[:1]
            if hello == SIM_HELLO_STAT:
                with self._lock:
                    attrs = self.watchdog.attributes(time.monotonic())
                conn.sock.sendall(json.dumps(attrs, sort_keys=True).encode() + b"\n")
                self._drop(sel, conn)
                return
            if hello != SIM_HELLO_OPEN:
                raise OSError(errno.EPROTO, "bad hello")
            self._open(conn)
        while len(conn.buf) >= SIM_REQUEST.size:
            op, request, length = SIM_REQUEST.unpack_from(conn.buf)
            if length > SIM_MAX_PAYLOAD:
                raise OSError(errno.EPROTO, "oversized request")
            if len(conn.buf) < SIM_REQUEST.size + length:
                return
            payload = bytes(conn.buf[SIM_REQUEST.size:SIM_REQUEST.size + length])
            del conn.buf[:SIM_REQUEST.size + length]
            conn.sock.sendall(self._serve(conn, op, request, payload))

    def _open(self, conn: _Conn) -> None:
        with self._lock:
            try:
                self.watchdog.open(time.monotonic())
            except OSError as e:
                conn.sock.sendall(SIM_OPEN_REPLY.pack(e.errno or errno.EIO, 0))
                raise
            conn.holder = True
            conn.boot = self._boot
            flags = SIM_FLAG_NOWAYOUT if self.watchdog.nowayout else 0
        conn.sock.sendall(SIM_OPEN_REPLY.pack(0, flags))

    def _serve(self, conn: _Conn, op: bytes, request: int, payload: bytes) -> bytes:
        """One request frame in, one reply frame out."""
        result = b""
        with self._lock:
            now = time.monotonic()
            try:
                if conn.boot != self._boot:
                    raise _err(errno.ENODEV)  # the machine was reset under this client
                if op == SIM_OP_IOCTL:
                    result = self.watchdog.ioctl(request, payload, now)
                elif op == SIM_OP_WRITE:
                    self.watchdog.write(payload, now)
                else:
                    raise _err(errno.EINVAL)
            except OSError as e:
                return SIM_REPLY.pack(e.errno or errno.EIO, 0)
        return SIM_REPLY.pack(0, len(result)) + result


def _remove_stale_socket(path: str) -> None:
    """Remove a leftover socket file at `path` (never a regular file)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(st.st_mode):
        os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    """Run a simulator by hand: `python -m hachain.simulators.wdsim SOCKET [--timeout N]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="wdsim", description=__doc__.split("\n")[0])
    parser.add_argument("socket")
    parser.add_argument("--timeout", type=int, default=10)
    parser.add_argument("--pretimeout", type=int, default=0)
    parser.add_argument("--nowayout", action="store_true")
    args = parser.parse_args(argv)
    try:
        wd = SoftWatchdog(args.timeout, args.pretimeout, args.nowayout)
    except ValueError as e:
        parser.error(str(e))

    def expired() -> None:
        print("wdsim: watchdog expired: the machine would reset now", flush=True)

    def pre() -> None:
        print("wdsim: pretimeout", flush=True)

    server = WatchdogServer(args.socket, wd, expired, pre)
    try:
        server.start()
    except OSError as e:
        print(f"wdsim: {args.socket}: bind: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wdsim: serving {args.socket} (timeout {args.timeout}s)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
