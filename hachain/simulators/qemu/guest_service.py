"""The notify service of the QEMU scenarios, run inside the guest:
`python -m hachain.simulators.qemu.guest_service [--ping S]`.

It sends READY=1 and STATUS=serving on $NOTIFY_SOCKET (through hachain.sdnotify, the one
sd_notify client), then idles; with --ping S it also sends WATCHDOG=1 every S seconds, so
a hang (SIGSTOP) is visible to the restarter's service watchdog. A failed ping is
ignored: the pings resume once the socket answers again.

SIGUSR1 makes it leak: from then on it allocates 1 MiB after another and keeps it, until
its cgroup's memory_max ends it (the campaign's `leak-service` fault).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from hachain.sdnotify import notify_fallback


def leak(_sig: int, _frame: object) -> None:
    """Allocate and keep memory until the kernel ends the process (never returns)."""
    heap = []
    while True:
        heap.append(bytearray(1 << 20))  # zero-filled: every page is touched


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="guest_service")
    p.add_argument("--ping", type=float, default=0.0, metavar="S")
    args = p.parse_args(argv)
    signal.signal(signal.SIGUSR1, leak)
    if not notify_fallback("READY=1\nSTATUS=serving"):
        sys.stderr.write("guest_service: cannot send READY=1 on $NOTIFY_SOCKET\n")
        return 1
    while True:
        time.sleep(args.ping or 3600)
        if args.ping:
            notify_fallback("WATCHDOG=1")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
