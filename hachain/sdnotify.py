"""Telling a supervising systemd about the chain: sd_notify and the journal.

Owns: sending one notification datagram (`READY=1`, `WATCHDOG=1`, `STATUS=...`,
`STOPPING=1`) to the socket named by `$NOTIFY_SOCKET`, and saying whether the journal can
be written to. Must not: decide *when* to notify (the chain does that), keep state, or
fail the caller: every function returns a bool and never raises on a missing or broken
socket.

Two paths, same result:

- with the optional `systemd` extra installed (systemd-python), `systemd.daemon.notify`,
  which is libsystemd's own `sd_notify`;
- otherwise a pure-Python `sendto` on an AF_UNIX datagram socket.

Some facts about the protocol that the fallback relies on:

- `$NOTIFY_SOCKET` is a filesystem path (`/run/systemd/notify`) or, when it starts with
  `@`, a name in the abstract namespace: the `@` stands for a leading NUL byte and the
  name is *not* NUL-terminated (the address length ends it).
- A notification is one datagram of newline-separated `KEY=VALUE` lines. systemd checks
  the sender's credentials (SCM_CREDENTIALS) itself; with `NotifyAccess=main` only the
  main pid is believed, so a child of the main process needs `NotifyAccess=all`.
- `$WATCHDOG_USEC` (and `$WATCHDOG_PID`, when set, naming who it is for) give the
  service watchdog interval; sending `WATCHDOG=1` at half of it is the usual cadence.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

JOURNAL_SOCKET = "/run/systemd/journal/socket"


def _library_notify() -> object | None:
    """`systemd.daemon.notify` when systemd-python is importable, else None."""
    try:
        from systemd import daemon  # type: ignore[import-not-found]
    except ImportError:
        return None
    return getattr(daemon, "notify", None)


def socket_address(value: str) -> str | bytes:
    """The address to `sendto` for a `$NOTIFY_SOCKET` value (abstract names as bytes)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def notify_fallback(state: str, environ: Mapping[str, str] | None = None,
                    wait: bool = True) -> bool:
    """Send `state` on `$NOTIFY_SOCKET` with a plain datagram. False when unset or failed.
    With `wait` False a socket whose queue is full (its reader is busy) is a failure at
    once instead of a send that waits until the reader catches up."""
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET", "")
    if not target or not state:
        return False
    if not (target.startswith(("/", "@"))):
        return False  # a vsock address or garbage: not something this fallback speaks
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), 0 if wait else socket.MSG_DONTWAIT,
                     socket_address(target))
    except OSError:
        return False
    return True


def notify(state: str, use_library: bool = True, wait: bool = True) -> bool:
    """Send one sd_notify message such as "READY=1" or "WATCHDOG=1\\nSTATUS=ok".

    True when the message was handed to the socket; False when there is no
    `$NOTIFY_SOCKET` (not started by systemd, or `Type=` is not notify) or sending failed.
    `use_library=False` skips systemd-python (tests use it to run the fallback path).
    `wait=False` never waits: a full queue on the socket (systemd, which reads one socket
    for every unit, is busy) is a False at once. libsystemd's sd_notify waits there, so
    this takes the fallback path (a loop that must never block: the tickler's).
    """
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    if not wait:
        return notify_fallback(state, wait=False)
    lib = _library_notify() if use_library else None
    if lib is not None:
        try:
            return bool(lib(state))  # type: ignore[operator]
        except (OSError, ValueError):
            return False
    return notify_fallback(state)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The service watchdog period systemd expects from us in seconds, or None.

    None when `$WATCHDOG_USEC` is unset or malformed, or when `$WATCHDOG_PID` names
    another process. Send `WATCHDOG=1` at least every half of this.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1_000_000


def journal_available(socket_path: str = JOURNAL_SOCKET) -> bool:
    """True when systemd-python's journal module imports and journald's socket exists."""
    try:
        from systemd import journal  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return os.path.exists(socket_path)
