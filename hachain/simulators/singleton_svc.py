"""A singleton service for the cluster tests: stamps what it does, for an observer.

`python singleton_svc.py STAMPS NODE`: appends one JSON line to STAMPS when it starts,
every 0.05 s while it runs ("alive") and when SIGTERM stops it, each with CLOCK_MONOTONIC
(the same for every process of the host, in any PID namespace), its node and its
HACHAIN_FENCING_TOKEN. A SIGKILL (a reset of its machine) leaves no "stop" line: its last
"alive" line is when it was last certainly running.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


BOOT = boot_id()  # a simulated machine gets a new one at every boot


def stamp(path: str, node: str, what: str) -> None:
    rec = {"ev": what, "node": node, "mono": time.monotonic(), "pid": os.getpid(),
           "boot": BOOT,
           "token": int(os.environ.get("HACHAIN_FENCING_TOKEN", "0"))}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, json.dumps(rec).encode() + b"\n")
    finally:
        os.close(fd)


def main() -> None:
    path, node = sys.argv[1], sys.argv[2]
    stop = False

    def on_term(_s: int, _f: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    if os.path.exists(f"{path}.fail-{node}"):  # a test's way to break it on one node
        stamp(path, node, "fail")
        sys.exit(3)
    stamp(path, node, "start")
    while not stop:
        stamp(path, node, "alive")
        time.sleep(0.05)
    stamp(path, node, "stop")


if __name__ == "__main__":
    main()
