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
from typing import Any

from hachain.restarter import spawn


@dataclass
class Probe:
    """A readiness or health probe of a service while it runs."""
    name: str  # the service
    purpose: str  # "ready" | "health"
    kind: str  # "exec" | "tcp"
    fd: int = -1  # what the loop watches (pidfd or socket)
    pid: int = 0
    sock: socket.socket | None = None
    detail: str = ""
    status: spawn.ExitStatus | None = None  # how a command ended (finish_exec)

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


def _child_setup(oom: int, c: spawn.Credentials) -> Any:
    """The child's steps before its exec when its oom_score_adj must be written: that
    first, while it is still root (once its user is switched, /proc/self is no longer
    its to write), then its groups and user. A value the host refuses leaves the
    restarter's, as for the service (spawn._oom_note)."""
    def setup() -> None:
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(oom))
        except OSError:
            pass
        if c.groups is not None:
            os.setgroups(list(c.groups))
        if c.gid is not None:
            os.setregid(c.gid, c.gid)
        if c.uid is not None:
            os.setreuid(c.uid, c.uid)
    return setup


def start_exec(name: str, purpose: str, argv: tuple[str, ...], env: dict[str, str],
               cwd: str | None, creds: spawn.Credentials | None = None,
               umask: int | None = None, oom: int | None = None,
               out: int | None = None) -> Probe:
    """Start a check command as its service runs (`creds`: its user and groups, `umask`,
    `oom`: its oom_score_adj when it differs from the restarter's): a check of a service
    that runs as its own user never runs as root. `out`: where its stdout and stderr go
    (None: discarded). The probe's fd is its pidfd. OSError when it cannot run."""
    c = creds or spawn.Credentials()
    own = oom is None  # subprocess switches the user itself (vfork kept)
    with spawn.sigchld_unblocked():
        sink = subprocess.DEVNULL if out is None else out
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink,
                             stderr=sink, env=env, cwd=cwd, process_group=0,
                             user=c.uid if own else None, group=c.gid if own else None,
                             extra_groups=list(c.groups) if own and c.groups is not None
                             else None,
                             umask=-1 if umask is None else umask,
                             preexec_fn=None if oom is None else _child_setup(oom, c))
    p.returncode = 0  # reaped by us (see spawn.py)
    fd = spawn.pidfd_open(p.pid)
    pr = Probe(name, purpose, "exec", fd=fd if fd is not None else -1, pid=p.pid)
    return pr


def watch_exec(name: str, purpose: str, pid: int) -> Probe:
    """A check command already spawned (our child `pid`, spawned as its service runs),
    watched through its pidfd."""
    fd = spawn.pidfd_open(pid)
    return Probe(name, purpose, "exec", fd=fd if fd is not None else -1, pid=pid)


def finish_exec(pr: Probe) -> bool:
    st = spawn.reap(pr.pid)
    pr.pid = 0
    if st is None:
        pr.detail = "still running"
        return False
    pr.detail, pr.status = st.describe(), st
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
