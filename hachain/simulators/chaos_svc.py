"""The service program of chaos campaigns: `chaos_svc.py ROLE [DELAY]`.

Stdlib only and importing nothing of hachain: the campaign copies this file to
<work>/chaos_svc.py and its configuration runs it with `python -I -S` (no site, so it starts
in about 20 ms, and the copy keeps working whatever the checkout does meanwhile).

Roles: notify (READY=1 on $NOTIFY_SOCKET), fd (a line on fd 3), none, each after DELAY
seconds. With $WATCHDOG_USEC, WATCHDOG=1 three times per period. SIGUSR1: fork 64
sleepers (half in new sessions, so only the cgroup still holds them) and exit 1. SIGUSR2:
open fds up to RLIMIT_NOFILE; without a service watchdog exit 1 (it cannot work), with one
keep running: its pings now fail (socket() gets EMFILE) and the restarter must see it hung.
SIGTERM: exit 0. A file `broken-<HACHAIN_SERVICE>` next to this program makes every
start exit 1 at once (the boot-loop fault: a service that fails on every boot).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from types import FrameType

HOARD: list[int] = []


def notify(msg: str) -> None:
    """One sd_notify datagram; silently nothing when there is no socket or no fd left
    (the fd-exhaust fault relies on the second)."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return
    addr = "\0" + path[1:] if path.startswith("@") else path
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    except OSError:
        return
    try:
        s.sendto(msg.encode(), addr)
    except OSError:
        pass
    finally:
        s.close()


def forkbomb(_sig: int, _frame: FrameType | None) -> None:
    for i in range(64):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            if i % 2:
                os.setsid()
            while True:
                time.sleep(3600)
    os._exit(1)


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.exists(os.path.join(here, "broken-" + os.environ.get("HACHAIN_SERVICE", ""))):
        sys.exit(1)
    role = sys.argv[1]
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    wd = int(os.environ.get("WATCHDOG_USEC", "0") or 0) / 1e6

    def exhaust(_sig: int, _frame: FrameType | None) -> None:
        try:
            while True:
                HOARD.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        if not wd:
            os._exit(1)

    signal.signal(signal.SIGTERM, lambda _s, _f: os._exit(0))
    signal.signal(signal.SIGUSR1, forkbomb)
    signal.signal(signal.SIGUSR2, exhaust)
    time.sleep(delay)
    if role == "notify":
        notify("READY=1")
    elif role == "fd":
        os.write(3, b"ready\n")
        os.close(3)
    while True:
        time.sleep(wd / 3 if wd else 3600)
        if wd:
            notify("WATCHDOG=1")


if __name__ == "__main__":
    main()
