"""The watchdog device: one small interface over a real /dev/watchdogN or the simulator.

This module owns talking to *one* watchdog device: opening it, the ioctls, petting,
magic close. It does not decide *when* to pet (that is the tickler's health gate) and it
does not find devices (that is `discover`). The real device and the software simulator
differ only in the `Transport` (an ioctl call and a write call); everything above it —
struct packing, errno handling, the magic-close rules — is the same code for both, so
the code the simulator tests is the code that runs on hardware.

Some facts about the Linux watchdog API
----------------------------------------

*Opening arms it.* `open("/dev/watchdogN")` starts the countdown on almost every
driver. From then on something must pet the device at least once per timeout or the
machine resets. Only one process may hold the device open at a time: a second open
fails with EBUSY. Reading sysfs (/sys/class/watchdog/watchdogN/*) does not open the
device, so status tools must prefer sysfs.

*Petting.* Either `write()` of any bytes, or the WDIOC_KEEPALIVE ioctl. Each write first
forgets any earlier magic character, then remembers whether *this* write contained a
'V'.

*Magic close.* Closing the file disarms the watchdog only if the last write contained
'V' (and the driver advertises WDIOF_MAGICCLOSE). Closing without it — including a
process that dies, since the kernel closes its files — leaves the watchdog armed; the
kernel logs "watchdog did not stop!" and pets it one last time. That is what lets init
restart a crashed tickler before the machine resets.

*nowayout.* A driver loaded with nowayout=1 (or a kernel built with
CONFIG_WATCHDOG_NOWAYOUT) can never be disarmed once opened: magic close and
WDIOS_DISABLECARD are refused. sysfs shows it in `nowayout`.

*ioctls* (x86_64; `_IOR('W', n, int)` and friends, so the size of the argument is part
of the number). All take a pointer to a C `int` except GETSUPPORT, which fills a
`struct watchdog_info { __u32 options; __u32 firmware_version; __u8 identity[32]; }`
(40 bytes). SETTIMEOUT writes the timeout the driver actually applied back into the
argument (drivers round to what the hardware can do) and pets the watchdog; its
valid range is the driver's [min_timeout, max_timeout]. SETPRETIMEOUT does *not*
write anything back; read it with GETPRETIMEOUT. A pretimeout must be smaller than the
timeout (0 disables it). GETTIMELEFT is optional (EOPNOTSUPP without driver support).
An unknown request gives ENOTTY.

*Boot status.* GETBOOTSTATUS (or sysfs `bootstatus`) returns WDIOF_* flags saying why
the machine last reset; WDIOF_CARDRESET (0x20) means "the last reboot was caused by
this watchdog". It is read once by the driver at load time and never changes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import struct
from typing import Any, NamedTuple, Protocol

from hachain.channels import ENV_SIM_WATCHDOG

# --- ioctl request numbers (x86_64) ---------------------------------------------------------

WDIOC_GETSUPPORT = 0x80285700
WDIOC_GETSTATUS = 0x80045701
WDIOC_GETBOOTSTATUS = 0x80045702
WDIOC_SETOPTIONS = 0x80045704
WDIOC_KEEPALIVE = 0x80045705
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707
WDIOC_SETPRETIMEOUT = 0xC0045708
WDIOC_GETPRETIMEOUT = 0x80045709
WDIOC_GETTIMELEFT = 0x8004570A

IOCTL_NAMES = {
    WDIOC_GETSUPPORT: "GETSUPPORT", WDIOC_GETSTATUS: "GETSTATUS",
    WDIOC_GETBOOTSTATUS: "GETBOOTSTATUS", WDIOC_SETOPTIONS: "SETOPTIONS",
    WDIOC_KEEPALIVE: "KEEPALIVE", WDIOC_SETTIMEOUT: "SETTIMEOUT",
    WDIOC_GETTIMEOUT: "GETTIMEOUT", WDIOC_SETPRETIMEOUT: "SETPRETIMEOUT",
    WDIOC_GETPRETIMEOUT: "GETPRETIMEOUT", WDIOC_GETTIMELEFT: "GETTIMELEFT",
}

# --- flags: options (GETSUPPORT), status (GETSTATUS) and boot status share one space ------

WDIOF_OVERHEAT = 0x0001
WDIOF_FANFAULT = 0x0002
WDIOF_EXTERN1 = 0x0004
WDIOF_EXTERN2 = 0x0008
WDIOF_POWERUNDER = 0x0010
WDIOF_CARDRESET = 0x0020
WDIOF_POWEROVER = 0x0040
WDIOF_SETTIMEOUT = 0x0080
WDIOF_MAGICCLOSE = 0x0100
WDIOF_PRETIMEOUT = 0x0200
WDIOF_ALARMONLY = 0x0400
WDIOF_KEEPALIVEPING = 0x8000

# SETOPTIONS arguments.
WDIOS_DISABLECARD = 0x0001
WDIOS_ENABLECARD = 0x0002
WDIOS_TEMPPANIC = 0x0004

# (flag, name, what it means): in bit order.
FLAGS: tuple[tuple[int, str, str], ...] = (
    (WDIOF_OVERHEAT, "OVERHEAT", "reset because the CPU overheated"),
    (WDIOF_FANFAULT, "FANFAULT", "a fan failed"),
    (WDIOF_EXTERN1, "EXTERN1", "external relay 1"),
    (WDIOF_EXTERN2, "EXTERN2", "external relay 2"),
    (WDIOF_POWERUNDER, "POWERUNDER", "power too low or power fault"),
    (WDIOF_CARDRESET, "CARDRESET", "last reboot caused by this watchdog"),
    (WDIOF_POWEROVER, "POWEROVER", "power over voltage"),
    (WDIOF_SETTIMEOUT, "SETTIMEOUT", "timeout can be set"),
    (WDIOF_MAGICCLOSE, "MAGICCLOSE", "magic close character disarms it"),
    (WDIOF_PRETIMEOUT, "PRETIMEOUT", "pretimeout can be set"),
    (WDIOF_ALARMONLY, "ALARMONLY", "raises an alarm only, does not reboot"),
    (WDIOF_KEEPALIVEPING, "KEEPALIVEPING", "keepalive ping supported"),
)

WATCHDOG_INFO = struct.Struct("=II32s")  # options, firmware_version, identity[32]
C_INT = struct.Struct("=I")  # the kernel reads these as unsigned int; -1 is 0xffffffff

MAGIC_CLOSE_CHAR = b"V"
PET_BYTE = b"\n"


def flag_names(mask: int) -> list[str]:
    """Names of the WDIOF_* bits set in `mask`, low bit first; unknown bits as hex."""
    names = [name for flag, name, _ in FLAGS if mask & flag]
    known = 0
    for flag, _, _ in FLAGS:
        known |= flag
    extra = mask & ~known
    if extra:
        names.append(f"0x{extra:x}")
    return names


def flag_descriptions(mask: int) -> list[tuple[str, str]]:
    """(name, meaning) of each known WDIOF_* bit set in `mask`."""
    return [(name, text) for flag, name, text in FLAGS if mask & flag]


def describe_bootstatus(bootstatus: int) -> str:
    """One human phrase for a boot status, e.g. "last reboot caused by this watchdog"."""
    if bootstatus == 0:
        return "normal (not reset by this watchdog)"
    return "; ".join(text for _, text in flag_descriptions(bootstatus)) or f"0x{bootstatus:x}"


# --- errors -------------------------------------------------------------------------------

class WatchdogError(OSError):
    """A failed watchdog operation. `str()` is one line naming the device and operation.

    `errno` is set when an OS call failed (0 otherwise), `path` names the device.
    """

    def __init__(self, message: str, err: int = 0, path: str = "") -> None:
        super().__init__(err, message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return self.message

    @classmethod
    def from_oserror(cls, path: str, operation: str, exc: OSError) -> WatchdogError:
        err = exc.errno or 0
        if err == errno.EBUSY and operation == "open":
            reason = "device busy (another process holds it open)"
        elif err == errno.EPROTO and exc.strerror and exc.strerror != os.strerror(err):
            reason = exc.strerror  # what the simulator's client found malformed
        elif err:
            reason = os.strerror(err)
        else:
            reason = str(exc)
        return cls(f"{path}: {operation}: {reason}", err, path)


class WatchdogInfo(NamedTuple):
    """What GETSUPPORT returns."""

    options: int
    firmware_version: int
    identity: str

    def pack(self) -> bytes:
        return WATCHDOG_INFO.pack(self.options, self.firmware_version,
                                  self.identity.encode("utf-8")[:31])

    @classmethod
    def unpack(cls, raw: bytes) -> WatchdogInfo:
        options, fw, ident = WATCHDOG_INFO.unpack(raw)
        return cls(options, fw, ident.split(b"\0", 1)[0].decode("utf-8", "replace"))


# --- transports ---------------------------------------------------------------------------

class Transport(Protocol):
    """The lowest I/O of an open watchdog: the only thing that differs real vs simulated.

    Each call raises OSError with the errno the driver gave.
    """

    def ioctl(self, request: int, arg: bytes) -> bytes:
        """Issue `request` with the packed argument; return the (possibly updated) buffer."""
        ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class FdTransport:
    """A real device through an open file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def ioctl(self, request: int, arg: bytes) -> bytes:
        buf = bytearray(arg)
        fcntl.ioctl(self.fd, request, buf, True)
        return bytes(buf)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def close(self) -> None:
        os.close(self.fd)


# Simulator wire protocol (docs/watchdog.md has the prose). Unix stream socket.
# The client's first byte says what the connection is:
SIM_HELLO_OPEN = b"O"  # open the device (arms it); then request frames until EOF (= close)
SIM_HELLO_STAT = b"S"  # read the sysfs-like attributes: one JSON line back, then EOF
# Reply to SIM_HELLO_OPEN: SIM_OPEN_REPLY (errno, flags); errno 0 means opened.
SIM_OPEN_REPLY = struct.Struct("=iI")
SIM_FLAG_NOWAYOUT = 0x1
# Request frame: op byte, ioctl request number (0 for a write), payload length, payload.
SIM_REQUEST = struct.Struct("=cII")
SIM_OP_IOCTL = b"I"
SIM_OP_WRITE = b"W"
# Reply frame: errno (0 = success), payload length, payload (the updated ioctl buffer).
SIM_REPLY = struct.Struct("=iI")
SIM_MAX_PAYLOAD = 4096
SIM_IO_TIMEOUT = 5.0


def _malformed(what: str) -> OSError:
    """EPROTO that says what was wrong with the simulator's reply (the caller names the
    socket: WatchdogError.from_oserror keeps this text)."""
    return OSError(errno.EPROTO, f"malformed reply from the watchdog simulator: {what}")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise OSError(errno.ENODEV, "the watchdog simulator closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class SimTransport:
    """The software watchdog simulator over its unix socket.

    Constructing it connects and opens the simulated device, which arms it (like
    opening /dev/watchdogN); OSError(EBUSY) when another client holds it. Dropping the
    connection is closing the file: it disarms only after a magic 'V'.
    """

    def __init__(self, socket_path: str, timeout: float = SIM_IO_TIMEOUT) -> None:
        self.socket_path = socket_path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(SIM_HELLO_OPEN)
            err, flags = SIM_OPEN_REPLY.unpack(_recv_exact(sock, SIM_OPEN_REPLY.size))
        except BaseException:
            sock.close()
            raise
        if err:
            sock.close()
            raise OSError(err, os.strerror(err))
        self.sock: socket.socket | None = sock
        self.nowayout = bool(flags & SIM_FLAG_NOWAYOUT)

    def _call(self, op: bytes, request: int, payload: bytes) -> bytes:
        if self.sock is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        self.sock.sendall(SIM_REQUEST.pack(op, request, len(payload)) + payload)
        err, length = SIM_REPLY.unpack(_recv_exact(self.sock, SIM_REPLY.size))
        if length > SIM_MAX_PAYLOAD:
            raise _malformed(f"a payload of {length} bytes (at most {SIM_MAX_PAYLOAD})")
        data = _recv_exact(self.sock, length)
        if err:
            raise OSError(err, os.strerror(err))
        return data

    def ioctl(self, request: int, arg: bytes) -> bytes:
        return self._call(SIM_OP_IOCTL, request, arg)

    def write(self, data: bytes) -> None:
        self._call(SIM_OP_WRITE, 0, data)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def sim_attributes(socket_path: str, timeout: float = SIM_IO_TIMEOUT) -> dict[str, Any]:
    """The simulator's sysfs-like attributes, read without opening (arming) the device."""
    from hachain.channels import json_problem, loads

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        sock.sendall(SIM_HELLO_STAT)
        raw = b""
        while not raw.endswith(b"\n"):
            chunk = sock.recv(SIM_MAX_PAYLOAD)
            if not chunk:
                break
            raw += chunk
            if len(raw) > SIM_MAX_PAYLOAD:
                raise _malformed(f"more than {SIM_MAX_PAYLOAD} bytes")
    if not raw:
        raise OSError(errno.EPROTO, "no reply from the watchdog simulator: it closed the "
                      "connection")
    try:
        attrs = loads(raw)
    except ValueError as e:  # (nested too deeply included: was RecursionError)
        raise _malformed(json_problem(e)) from None
    if not isinstance(attrs, dict):
        raise _malformed(f"not a JSON object but {type(attrs).__name__}")
    return attrs


# --- the device ---------------------------------------------------------------------------

class Watchdog:
    """One open (therefore armed) watchdog.

    Every failure raises WatchdogError naming `path` and the operation. `close()` leaves
    the device armed; `magic_close()` disarms it unless the driver is nowayout.
    """

    def __init__(self, transport: Transport, path: str, nowayout: bool = False) -> None:
        self.transport = transport
        self.path = path
        self.nowayout = nowayout
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Watchdog {self.path} {state}{' nowayout' if self.nowayout else ''}>"

    def _ioctl(self, request: int, arg: bytes, what: str | None = None) -> bytes:
        name = what or IOCTL_NAMES.get(request, f"ioctl 0x{request:x}")
        if self.closed:
            raise WatchdogError(f"{self.path}: {name}: device is closed", errno.EBADF, self.path)
        try:
            return self.transport.ioctl(request, arg)
        except OSError as e:
            raise WatchdogError.from_oserror(self.path, name, e) from e

    def _int_ioctl(self, request: int, value: int = 0, what: str | None = None) -> int:
        name = what or IOCTL_NAMES[request]
        if not 0 <= value <= 0xFFFFFFFF and not -(1 << 31) <= value < 0:
            raise WatchdogError(f"{self.path}: {name}: {os.strerror(errno.EINVAL)}",
                                errno.EINVAL, self.path)
        raw = self._ioctl(request, C_INT.pack(value & 0xFFFFFFFF), name)
        if len(raw) != C_INT.size:
            raise WatchdogError(f"{self.path}: {name}: reply of {len(raw)} bytes, "
                                f"expected {C_INT.size}", errno.EPROTO, self.path)
        return C_INT.unpack(raw)[0]

    def _write(self, data: bytes, what: str) -> None:
        if self.closed:
            raise WatchdogError(f"{self.path}: {what}: device is closed", errno.EBADF, self.path)
        try:
            self.transport.write(data)
        except OSError as e:
            raise WatchdogError.from_oserror(self.path, what, e) from e

    def keepalive(self) -> None:
        """Pet it with WDIOC_KEEPALIVE."""
        self._int_ioctl(WDIOC_KEEPALIVE)

    def pet_by_write(self) -> None:
        """Pet it by writing one byte that is not the magic character."""
        self._write(PET_BYTE, "write")

    def get_timeout(self) -> int:
        return self._int_ioctl(WDIOC_GETTIMEOUT)

    def set_timeout(self, seconds: int) -> int:
        """Set the timeout; returns what the driver applied (it may round). Also pets."""
        return self._int_ioctl(WDIOC_SETTIMEOUT, seconds, f"SETTIMEOUT {seconds}")

    def get_pretimeout(self) -> int:
        return self._int_ioctl(WDIOC_GETPRETIMEOUT)

    def set_pretimeout(self, seconds: int) -> int:
        """Set the pretimeout (0 disables it); returns what the driver applied."""
        self._int_ioctl(WDIOC_SETPRETIMEOUT, seconds, f"SETPRETIMEOUT {seconds}")
        return self.get_pretimeout()

    def get_timeleft(self) -> int | None:
        """Seconds before it fires; None when the driver cannot tell."""
        try:
            return self._int_ioctl(WDIOC_GETTIMELEFT)
        except WatchdogError as e:
            if e.errno in (errno.ENOTTY, errno.EOPNOTSUPP):
                return None
            raise

    def get_support(self) -> WatchdogInfo:
        raw = self._ioctl(WDIOC_GETSUPPORT, bytes(WATCHDOG_INFO.size))
        if len(raw) != WATCHDOG_INFO.size:
            raise WatchdogError(f"{self.path}: GETSUPPORT: reply of {len(raw)} bytes, "
                                f"expected {WATCHDOG_INFO.size}", errno.EPROTO, self.path)
        return WatchdogInfo.unpack(raw)

    def get_status(self) -> int:
        return self._int_ioctl(WDIOC_GETSTATUS)

    def get_bootstatus(self) -> int:
        return self._int_ioctl(WDIOC_GETBOOTSTATUS)

    def set_options(self, flags: int) -> None:
        """WDIOS_DISABLECARD / WDIOS_ENABLECARD."""
        self._int_ioctl(WDIOC_SETOPTIONS, flags, f"SETOPTIONS 0x{flags:x}")

    def magic_close(self) -> bool:
        """Write 'V' and close: disarms it. False (still closed) when it is nowayout.

        A write error is raised after the device is closed (it then stays armed).
        """
        if self.closed:
            return not self.nowayout
        try:
            self._write(MAGIC_CLOSE_CHAR, "magic close")
        finally:
            self.close()
        return not self.nowayout

    def close(self) -> None:
        """Close WITHOUT the magic character: the device stays armed. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self.transport.close()
        except OSError as e:
            raise WatchdogError.from_oserror(self.path, "close", e) from e


# --- opening ------------------------------------------------------------------------------

NO_DEVICE_MESSAGE = ("no watchdog device found (looked in /sys/class/watchdog); "
                     'use device = "sim" or load softdog')


def sim_socket_path(spec: str) -> str | None:
    """The socket path for a "sim" / "sim:PATH" spec; None for any other spec.

    WatchdogError when `spec` is "sim" and HACHAIN_SIM_WATCHDOG is not set.
    """
    if spec.startswith("sim:"):
        path = spec[len("sim:"):]
        if not path:
            raise WatchdogError('sim: empty socket path in "sim:"', errno.EINVAL)
        return path
    if spec == "sim":
        path = os.environ.get(ENV_SIM_WATCHDOG, "")
        if not path:
            raise WatchdogError(f"sim: {ENV_SIM_WATCHDOG} is not set (it names the "
                                "watchdog simulator's socket)", errno.EINVAL, "sim")
        return path
    return None


def resolve_spec(spec: str) -> str:
    """The device path for "auto" (first discovered device) or a path as given."""
    if spec == "auto":
        from hachain.watchdog.discover import discover

        devices = discover()
        if not devices:
            raise WatchdogError(NO_DEVICE_MESSAGE, errno.ENODEV)
        return devices[0].devnode
    return spec


def open_watchdog(spec: str, nowayout: bool = False, timeout: int | None = None) -> Watchdog:
    """Open (and so arm) a watchdog: "auto", a device path, "sim" or "sim:SOCKET".

    `nowayout` is what the caller knows; for a real device sysfs's `nowayout` is also
    consulted (before the open: the lookup imports pyudev, files read from a disk that
    may be slow, and once the device is armed its holder must get to its first pet
    without such waits; a TCG guest whose root came over a stalled 9p share was reset
    between the open and that import's end), for the simulator its open reply.
    `timeout`: set at once after the open (SETTIMEOUT pets), before anything else runs:
    the open arms the device with the driver's initial timeout, which may be short. A
    failing SETTIMEOUT raises TimeoutRefused with the device still open and armed (its
    `wd`): the caller decides whether to hold it or close it.
    """
    sim_path = sim_socket_path(spec)
    if sim_path is not None:
        label = f"sim:{sim_path}"
        try:
            sim = SimTransport(sim_path)
        except OSError as e:
            raise WatchdogError.from_oserror(label, "open", e) from e
        wd = Watchdog(sim, label, nowayout or sim.nowayout)
        _set_at_once(wd, timeout)
        return wd
    path = resolve_spec(spec)
    if not nowayout:
        from hachain.watchdog.discover import find_device

        dev = find_device(path)
        nowayout = bool(dev is not None and dev.nowayout)
    try:
        # a device node only: a mistyped path to a regular file would get the magic
        # 'V' written over its first byte, and a FIFO would block the open
        if not stat.S_ISCHR(os.stat(path).st_mode):
            raise WatchdogError(f"{path}: open: not a character device (a watchdog is a "
                                "device node such as /dev/watchdog0); left untouched",
                                errno.ENODEV, path)
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except WatchdogError:
        raise
    except OSError as e:
        raise WatchdogError.from_oserror(path, "open", e) from e
    wd = Watchdog(FdTransport(fd), path, nowayout)
    _set_at_once(wd, timeout)
    return wd


class TimeoutRefused(WatchdogError):
    """The driver refused the timeout right after the open (out of its range, say). The
    device is open and armed with the driver's own timeout: `wd`."""

    def __init__(self, err: WatchdogError, wd: Watchdog) -> None:
        super().__init__(err.message, err.errno or 0, err.path)
        self.wd = wd


def _set_at_once(wd: Watchdog, timeout: int | None) -> None:
    if timeout is None:
        return
    try:
        wd.set_timeout(timeout)
    except WatchdogError as e:
        raise TimeoutRefused(e, wd) from e
