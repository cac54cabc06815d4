"""A trivial PID 1 for proving the harness: pet the watchdog N times, then stop.

Stdlib only and independent of hachain, so the harness can be proven while the chain is
being built. It opens the watchdog device (which arms it), reports what the driver says
(bootstatus, timeout, timeleft), pets `--pets` times every `--interval` seconds, prints
`HACHAIN-PETTER stopped petting`, and then either stays alive without petting (`--then
hang`, the default: the watchdog must reset the machine) or exits (`--then exit`: as PID 1
that is a kernel panic). It reaps children all along, as a PID 1 must (the guest agent is
one of them). With `--device ""` it touches no watchdog and only reaps.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import struct
import sys
import time

WDIOC_KEEPALIVE = 0x80045705
WDIOC_GETTIMEOUT = 0x80045707
WDIOC_GETTIMELEFT = 0x8004570A


def _say(message: str) -> None:
    print(f"HACHAIN-PETTER {message}", flush=True)


def _ioctl_int(fd: int, request: int) -> int:
    buf = fcntl.ioctl(fd, request, struct.pack("i", 0))
    return int(struct.unpack("i", buf)[0])


def _sysfs(name: str, device: str) -> str:
    base = f"/sys/class/watchdog/{os.path.basename(device)}"
    try:
        with open(f"{base}/{name}") as f:
            return f.read().strip()
    except OSError as exc:
        return f"<{exc.strerror}>"


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _idle(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        _reap()
        time.sleep(min(left, 0.2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="guest_petter")
    parser.add_argument("--device", default="/dev/watchdog0",
                        help='the watchdog device; "" for none (just reap children)')
    parser.add_argument("--pets", type=int, default=3)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--then", choices=("hang", "exit"), default="hang")
    args = parser.parse_args(argv)
    if not args.device:
        _say(f"pid {os.getpid()} idle, no watchdog")
        while True:
            _idle(3600)
    _say(f"pid {os.getpid()} bootstatus {_sysfs('bootstatus', args.device)} "
         f"identity {_sysfs('identity', args.device)!r}")
    fd = os.open(args.device, os.O_WRONLY)
    _say(f"opened {args.device} timeout {_ioctl_int(fd, WDIOC_GETTIMEOUT)}")
    for i in range(1, args.pets + 1):
        fcntl.ioctl(fd, WDIOC_KEEPALIVE, struct.pack("i", 0))
        try:
            left: object = _ioctl_int(fd, WDIOC_GETTIMELEFT)
        except OSError as exc:
            left = f"unsupported ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
        _say(f"pet {i} timeleft {left}")
        _idle(args.interval)
    _say("stopped petting")
    if args.then == "exit":
        return 0
    while True:
        _idle(3600)


if __name__ == "__main__":
    sys.exit(main())
