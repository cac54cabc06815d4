"""A tiny forking daemon for tests: `forkd.py [--pid-file P] [--late] [--workers N]
[--fail N] [--record F] [--launch-file F]`.

The launcher forks; the child calls setsid (a new session, as daemons do) and forks the
master; the master writes its pid to the pid file (before the launcher exits, or with
--late after), starts N workers, and runs until signalled. The launcher exits 0 (or N with
--fail) once the master is up. --record appends the master's pid to F.
"""

import argparse
import os
import signal
import sys
import time

from hachain import channels


def forever() -> None:
    while True:
        time.sleep(3600)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid-file")
    ap.add_argument("--late", action="store_true")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--fail", type=int, default=0)
    ap.add_argument("--record")
    ap.add_argument("--launch-file", help="the launcher exits only once this file exists")
    a = ap.parse_args()
    launcher = os.getpid()
    r, w = os.pipe()
    if os.fork() > 0:  # the launcher: wait until the master says it is up, then exit
        os.close(w)
        os.read(r, 1)
        os._exit(a.fail)
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)  # the session leader goes; the master is reparented
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    for _ in range(a.workers):
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            forever()
    if a.record:
        with open(a.record, "a") as f:
            f.write(f"{os.getpid()}\n")
    if a.pid_file and not a.late:
        with open(a.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    while a.launch_file and not os.path.exists(a.launch_file):
        time.sleep(0.01)
    os.write(w, b"x")  # the launcher may exit now
    os.close(w)
    if a.pid_file and a.late:
        # after the launcher is gone (nginx writes its pid file this late, too)
        while _alive(launcher):
            time.sleep(0.01)
        time.sleep(0.2)
        with open(a.pid_file + ".tmp", "w") as f:
            f.write(f"{os.getpid()}\n")
        os.rename(a.pid_file + ".tmp", a.pid_file)
    sys.stdout.flush()
    forever()


def _alive(pid: int) -> bool:
    return channels.proc_state(pid) not in (None, "Z", "X")


if __name__ == "__main__":
    main()
