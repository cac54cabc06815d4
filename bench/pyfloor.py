"""bench/pyfloor.py: the least a chain of Python layers shaped like hachain's can do.

    python bench/pyfloor.py run CONFIG.toml

A yardstick for compare.py's start-up rows (peer "pyfloor"), as bench/floor.c is one for
its restart rows. hachain starts through three Python processes in a row: `hachain run`
(the venv's Python, with `site`) validates the file and execs init; init (`python -S`)
starts the restarter (`python -S`); the restarter starts the services. This does the same
and nothing else:

- run: the venv's Python imports tomllib and argparse, reads CONFIG (`stamp`, `socket`,
  `services`, optional `cgroup_root`), then execs init with the values as arguments;
- init: `python -S`, imports what every hachain layer needs to run at all (os, sys, json,
  signal, selectors, socket, time), starts the restarter and the tickler with posix_spawn
  and reaps them; SIGTERM is passed on;
- tickler: `python -S`, the same imports; reads the two heartbeats below, 5 ms after each
  tick (no device: hachain's `device = "none"`);
- restarter: `python -S`, the same imports, then each service `stamp SOCKET s<i>` created
  by hachain's compiled spawn (`hachain.restarter._clone3.spawn`, clone3 with
  CLONE_INTO_CGROUP straight into `<cgroup_root>/s<i>`, or where it is without a root), one
  after the other. A service that dies is started again at once (the restart rows are
  measured too); SIGTERM kills and reaps every service, removes the cgroups, exits 0.

Init and the restarter beat as hachain's layers do: every 2 s (the default
heartbeat_interval) on one CLOCK_MONOTONIC grid, one pwrite of a small JSON object to a file
in CONFIG's directory. Three wake-ups per interval, each doing the least a liveness proof
can: the floor under the idle row (hachain has a fourth, the tickler's reader thread).

No state, no log, no lock, no standby, no configuration beyond the file: whatever a chain of
three Python layers that prove they are alive costs, this costs, and no more.
"""

from __future__ import annotations

import json  # noqa: F401 - every hachain layer has it (heartbeats, records)
import os
import selectors
import signal
import socket  # noqa: F401 - every hachain layer has it (heartbeats, control, notify)
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(config: str) -> None:
    import argparse  # noqa: F401 - `hachain run` parses its command line with it
    import tomllib
    with open(config, "rb") as f:
        cfg = tomllib.load(f)
    args = [cfg["stamp"], cfg["socket"], str(int(cfg["services"])), cfg.get("cgroup_root", ""),
            os.path.dirname(os.path.abspath(config))]
    env = dict(os.environ, PYTHONPATH=ROOT)
    os.execve(sys.executable, [sys.executable, "-S", os.path.abspath(__file__), "init", *args],
              env)


HEARTBEAT = 2.0  # s: hachain's default heartbeat_interval
TICKLER_LAG = 0.005  # s after the grid: hachain's tickler reads heartbeats a few ms old


def next_tick(now: float) -> float:
    """The next multiple of HEARTBEAT on CLOCK_MONOTONIC: every layer beats on one grid."""
    return (int(now / HEARTBEAT) + 1) * HEARTBEAT


class Beat:
    """A heartbeat file rewritten in place: one pwrite of a small JSON object."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self) -> None:
        os.pwrite(self.fd, json.dumps({"pid": os.getpid(), "t": time.monotonic()}).encode()
                  .ljust(64), 0)


def wakeups(*sigs: signal.Signals) -> tuple[selectors.BaseSelector, int]:
    """Signals come to a selector through a pipe (signal.set_wakeup_fd), as in hachain."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(w)
    for sig in sigs:
        signal.signal(sig, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(r, selectors.EVENT_READ)
    return sel, r


def init(args: list[str]) -> int:
    me = os.path.abspath(__file__)
    sel, r = wakeups(signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)
    children = {os.posix_spawn(sys.executable, [sys.executable, "-S", me, role, *args],
                               os.environ): role for role in ("restarter", "tickler")}
    beat = Beat(os.path.join(args[4], "init.hb"))
    tick = next_tick(time.monotonic())
    while children:
        if sel.select(max(0.0, tick - time.monotonic())):
            got = os.read(r, 4096)
            if signal.SIGTERM in got or signal.SIGINT in got:
                for pid in children:
                    os.kill(pid, signal.SIGTERM)
            while children:
                try:
                    pid, _ = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return 0
                if pid == 0:
                    break
                children.pop(pid, None)
        if time.monotonic() >= tick:
            beat.write()
            tick = next_tick(time.monotonic())
    return 0


def tickler(args: list[str]) -> int:
    """Reads the two heartbeats on the grid, a few ms after they were written."""
    sel, r = wakeups(signal.SIGTERM, signal.SIGINT)
    files = [os.path.join(args[4], f"{layer}.hb") for layer in ("init", "restarter")]
    tick = next_tick(time.monotonic()) + TICKLER_LAG
    while True:
        if sel.select(max(0.0, tick - time.monotonic())):
            return 0
        if time.monotonic() >= tick:
            for path in files:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue
                try:
                    json.loads(os.read(fd, 4096))
                except ValueError:
                    pass
                finally:
                    os.close(fd)
            tick = next_tick(time.monotonic()) + TICKLER_LAG


def restarter(args: list[str]) -> int:
    sys.path.insert(0, ROOT)
    from hachain.restarter import _clone3  # type: ignore[attr-defined]
    stamp, sock, n, root, rundir = args[0], args[1], int(args[2]), args[3], args[4]
    exe = os.fsencode(stamp)
    envp = [os.fsencode(f"{k}={v}") for k, v in os.environ.items()]
    sigdef = [int(signal.SIGPIPE), int(signal.SIGXFSZ)]  # ignored by Python, not by services
    devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    cgfd: list[int] = []
    for i in range(n):
        if root:
            path = os.path.join(root, f"s{i}")
            os.makedirs(path, exist_ok=True)
            cgfd.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        else:
            cgfd.append(-1)
    sel, r = wakeups(signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)
    by_pid: dict[int, int] = {}

    def spawn(i: int) -> None:
        argv = [exe, os.fsencode(sock), f"s{i}".encode()]
        by_pid[int(_clone3.spawn(exe, argv, envp, devnull, cgfd[i], sigdef, None))] = i
    for i in range(n):
        spawn(i)
    beat = Beat(os.path.join(rundir, "restarter.hb"))
    tick = next_tick(time.monotonic())
    while True:
        if not sel.select(max(0.0, tick - time.monotonic())):
            beat.write()
            tick = next_tick(time.monotonic())
            continue
        got = os.read(r, 4096)
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            i = by_pid.pop(pid, -1)
            if i >= 0 and not (set(got) & {signal.SIGTERM, signal.SIGINT}):
                spawn(i)
        if set(got) & {signal.SIGTERM, signal.SIGINT}:
            break
    for pid in by_pid:
        os.kill(pid, signal.SIGKILL)
    for pid in list(by_pid):
        os.waitpid(pid, 0)
    if root:
        for i in range(n):
            os.close(cgfd[i])
            for _ in range(100):  # a just-reaped task may keep its cgroup busy a moment
                try:
                    os.rmdir(os.path.join(root, f"s{i}"))
                    break
                except OSError:
                    time.sleep(0.01)
    return 0


if __name__ == "__main__":
    role, rest = sys.argv[1], sys.argv[2:]
    if role == "run":
        run(rest[0])
    sys.exit({"init": init, "restarter": restarter, "tickler": tickler}[role](rest))
