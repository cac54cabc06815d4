"""The logger is forked from the restarter (issue 19, memory and start-up), not exec'd: it
must keep nothing of the restarter's but its four sockets. A kept restarter lock would
make the next restarter wait forever, a kept pidfd or control socket would outlive the
restarter that owned it.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from hachain import channels
from hachain.logger import wire
from tests.conftest import RestarterRun, svc, wait_until

pytestmark = pytest.mark.slow  # real restarters, killed and started again


def _fds(pid: int) -> dict[int, str]:
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass
    return out


def _pidfd_pid(pid: int, fd: int) -> int:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    return 0


def _unix_paths() -> dict[str, str]:
    """Socket inode -> the path it is bound to, for every bound unix socket."""
    out = {}
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split()
            if len(parts) >= 8:
                out[parts[6]] = parts[7]
    return out


def test_the_forked_logger_keeps_nothing_of_the_restarters(restarter: Any) -> None:
    run: RestarterRun = restarter(f"[service.talk]\ncommand = {svc('sleep')}\n")
    run.wait_state("talk", "ready")
    logger = wait_until(lambda: run.logger_pid(), 10, "the logger's pid")
    started = channels.proc_start_time(logger)
    try:
        assert run.proc is not None
        assert channels.proc_ppid(logger) == run.proc.pid  # a fork of this restarter
        with open(f"/proc/{logger}/comm") as f:
            assert f.read().strip() == "hachain-logger"
        lock = os.stat(os.path.join(run.state_dir, channels.RESTARTER_LOCK))
        bound = _unix_paths()
        fds = _fds(logger)
        assert fds[0] == os.devnull
        for fd, link in fds.items():
            assert "signalfd" not in link, (fd, link)
            if "pidfd" in link:  # its own, of the restarter it serves; none of a service
                assert _pidfd_pid(logger, fd) == run.proc.pid, (fd, link)
            st = os.stat(f"/proc/{logger}/fd/{fd}")
            assert (st.st_dev, st.st_ino) != (lock.st_dev, lock.st_ino), \
                f"the logger holds the restarter's lock as fd {fd}"
            if link.startswith("socket:["):
                path = bound.get(link[len("socket:["):-1], "")
                assert not path.startswith(run.state_dir) or \
                    os.path.basename(path) == wire.HANDOVER_SOCKET, \
                    f"the logger holds the restarter's socket {path} as fd {fd}"
        # The restarter dies: a new one takes the lock at once (the logger does not hold
        # it) and takes the same logger over.
        run.kill_restarter()
        run.start()
        wait_until(lambda: "took over the running logger" in open(run.log).read(), 10,
                   "the new restarter to take the logger over")
        assert run.logger_pid() == logger
        assert run.svc("talk")["state"] == "ready"
    finally:
        run.stop()
        if channels.proc_start_time(logger) == started:  # ours, still there
            os.kill(logger, signal.SIGKILL)
