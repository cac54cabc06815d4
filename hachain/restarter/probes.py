"""Probes: one readiness or health check in flight, `exec` (a command) or `tcp` (connect).

Owns: running one check without blocking the loop — a command watched through its
pidfd, or a non-blocking connect watched for writability — and reporting pass/fail with
a one-line detail. Must not: decide what a failure means (the loop counts failures
against the threshold and feeds the state machine).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
from dataclasses import dataclass

from hachain.restarter import spawn


@dataclass
class Probe:
    name: str  # the service
    purpose: str  # "ready" | "health"
    kind: str  # "exec" | "tcp"
    fd: int = -1  # what the loop watches (pidfd or socket)
    pid: int = 0
    sock: socket.socket | None = None
    detail: str = ""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        elif self.fd >= 0:
            os.close(self.fd)
        self.fd = -1
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            spawn.reap(self.pid)  # collects the zombie if it is already gone
            self.pid = 0


def start_exec(name: str, purpose: str, argv: tuple[str, ...], env: dict[str, str],
               cwd: str | None) -> Probe:
    """Start a check command; the probe's fd is its pidfd. OSError when it cannot run."""
    with spawn.sigchld_unblocked():
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env, cwd=cwd, process_group=0)
    p.returncode = 0  # reaped by us (see spawn.py)
    fd = spawn.pidfd_open(p.pid)
    pr = Probe(name, purpose, "exec", fd=fd if fd is not None else -1, pid=p.pid)
    return pr


def finish_exec(pr: Probe) -> bool:
    st = spawn.reap(pr.pid)
    pr.pid = 0
    if st is None:
        pr.detail = "still running"
        return False
    pr.detail = st.describe()
    return st.kind == "exited" and st.code == 0


def start_tcp(name: str, purpose: str, port: int, host: str = "127.0.0.1") -> Probe:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC
                      | socket.SOCK_NONBLOCK)
    pr = Probe(name, purpose, "tcp", fd=s.fileno(), sock=s)
    err = s.connect_ex((host, port))
    if err not in (0, errno.EINPROGRESS):
        pr.detail = f"connect to {host}:{port}: {os.strerror(err)}"
    return pr


def finish_tcp(pr: Probe, port: int) -> bool:
    assert pr.sock is not None
    err = pr.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    pr.detail = "accepts connections" if err == 0 else \
        f"connect to 127.0.0.1:{port}: {os.strerror(err)}"
    return err == 0
