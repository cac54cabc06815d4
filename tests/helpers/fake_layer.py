"""A stand-in for a layer-2 process (restarter or tickler) in init's tests.

    python fake_layer.py NAME DIR [--exit CODE] [--ignore-term] [--orphan SECS]

On start it appends one JSON line to DIR/NAME.log (pid, ppid, CLOCK_MONOTONIC, and the
HACHAIN_* variables init passed), then:
- `--orphan SECS`: fork a grandchild that records itself in DIR/NAME.orphans, lives SECS
  seconds and exits (with `--exit`, the grandchild is orphaned when this process exits);
- `--exit CODE`: exit at once with CODE;
- otherwise sleep, and every 20 ms run the commands the test wrote to DIR/NAME.cmd, one
  per line, then record each one in DIR/NAME.done:
    kill PID SIG              send SIG to PID (e.g. "kill 1 9" inside a PID namespace)
    orphan SECS [ignore-term] double-fork a grandchild that outlives its parent link
    exit CODE                 exit with CODE
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time


def record(path: str, obj: dict[str, object]) -> None:
    """Append one JSON line to `path` in a single write."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps(obj) + "\n").encode())
    finally:
        os.close(fd)


def grandchild(dirpath: str, name: str, secs: float, ignore_term: bool, layer: int) -> None:
    """Body of a forked grandchild: record itself (and `layer`, the pid of the layer
    process that made it), live `secs`, exit 0. Never returns."""
    try:
        if ignore_term:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        record(os.path.join(dirpath, name + ".orphans"),
               {"pid": os.getpid(), "mono": time.monotonic(), "ignore_term": ignore_term,
                "layer": layer})
        time.sleep(secs)
    finally:
        os._exit(0)


def spawn_orphan(dirpath: str, name: str, secs: float, ignore_term: bool) -> None:
    """Double-fork: the middle process exits at once, so the grandchild is orphaned."""
    layer = os.getpid()
    middle = os.fork()
    if middle == 0:
        if os.fork() == 0:
            grandchild(dirpath, name, secs, ignore_term, layer)
        os._exit(0)
    os.waitpid(middle, 0)


def run_commands(dirpath: str, name: str) -> None:
    """Execute and remove DIR/NAME.cmd if the test wrote one."""
    path = os.path.join(dirpath, name + ".cmd")
    try:
        with open(path) as f:
            lines = f.read().splitlines()
        os.unlink(path)
    except FileNotFoundError:
        return
    for line in lines:
        words = line.split()
        if not words:
            continue
        record(os.path.join(dirpath, name + ".done"), {"cmd": line, "mono": time.monotonic()})
        if words[0] == "kill":
            os.kill(int(words[1]), int(words[2]))
        elif words[0] == "orphan":
            spawn_orphan(dirpath, name, float(words[1]), "ignore-term" in words[2:])
        elif words[0] == "exit":
            sys.exit(int(words[1]))


def main() -> int:
    """Record the start, then behave as the options say."""
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("dir")
    p.add_argument("--exit", type=int, default=None)
    p.add_argument("--ignore-term", action="store_true")
    p.add_argument("--orphan", type=float, default=None)
    a = p.parse_args()
    if a.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    record(os.path.join(a.dir, a.name + ".log"), {
        "pid": os.getpid(), "ppid": os.getppid(), "mono": time.monotonic(),
        "restarts": os.environ.get("HACHAIN_LAYER_RESTARTS"),
        "config": os.environ.get("HACHAIN_CONFIG"),
        "state_dir": os.environ.get("HACHAIN_STATE_DIR"),
    })
    layer = os.getpid()
    if a.orphan is not None and os.fork() == 0:
        grandchild(a.dir, a.name, a.orphan, False, layer)
    if a.exit is not None:
        return a.exit
    while True:
        run_commands(a.dir, a.name)
        time.sleep(0.02)


if __name__ == "__main__":
    sys.exit(main())
