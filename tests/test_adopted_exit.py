"""A process adopted by a new restarter ends with its real exit status.

When the restarter dies, its services' processes are reparented to init (the
subreaper), which reaps them: the new restarter that adopted them through pidfds is not
their parent. On Linux >= 6.15 the pidfd still gives the exit status once the process is
reaped (PIDFD_GET_INFO), so a oneshot that finishes after a restarter restart is `done`
(and releases its dependents) or `failed` with its real exit status, as if nothing had
happened."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hachain.restarter import spawn
from tests.conftest import wait_until
from tests.test_chain import Chain


def _kernel_keeps_exit_status() -> bool:
    """PIDFD_GET_INFO with the exit status (Linux >= 6.15): tried on a grandchild."""
    p = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                          "print(subprocess.Popen(['/bin/sh', '-c', 'read x; exit 5'], "
                          "stdin=subprocess.PIPE).pid, flush=True); sys.stdin.read()"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdin is not None
        pid = int(p.stdout.readline())
        fd = os.pidfd_open(pid)
        try:
            p.stdin.close()  # its parent exits, the grandchild's stdin closes: exit 5
            p.wait(10)
            return spawn.reaped_status(fd, wait=5.0) is not None
        finally:
            os.close(fd)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_the_exit_status_of_a_process_reaped_by_another() -> None:
    """A grandchild reaped by someone else: its status through the pidfd, exact."""
    if not _kernel_keeps_exit_status():
        pytest.skip(f"kernel {os.uname().release} has no PIDFD_GET_INFO exit status "
                    "(Linux >= 6.15): adopted processes end with status unknown")
    for cmd, want in ((["exit 7"], ("exited", 7, 0)), (["kill -TERM $$"], ("killed", 0, 15))):
        p = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                              f"print(subprocess.Popen(['/bin/sh', '-c', 'read x; {cmd[0]}'],"
                              " stdin=subprocess.PIPE).pid, flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdin is not None
        fd = os.pidfd_open(int(p.stdout.readline()))
        try:
            p.stdin.close()
            p.wait(10)
            st = spawn.reaped_status(fd, wait=5.0)
            assert st is not None and (st.kind, st.code, st.signal) == want
        finally:
            os.close(fd)
    r, w = os.pipe()
    try:
        assert spawn.reaped_status(r) is None  # not a pidfd: no answer, no exception
    finally:
        os.close(r)
        os.close(w)


@pytest.fixture
def chain(tmp_path) -> Iterator[Callable[[str], Chain]]:
    made: list[Chain] = []

    def make(body: str) -> Chain:
        made.append(Chain(str(tmp_path), body))
        return made[-1]
    yield make
    for c in made:
        c.close()


@pytest.mark.slow
@pytest.mark.parametrize(("code", "state", "app_state"), [(0, "done", "ready"),
                                                          (3, "failed", "waiting")])
def test_an_adopted_oneshot_ends_with_its_real_exit_status(
        chain, tmp_path, code: int, state: str, app_state: str) -> None:
    """The whole chain: init (the subreaper) reaps the oneshot that the restarter it
    restarted after a SIGKILL adopted; that restarter still learns how it ended."""
    if not _kernel_keeps_exit_status():
        pytest.skip(f"kernel {os.uname().release} has no PIDFD_GET_INFO exit status "
                    "(Linux >= 6.15): adopted processes end with status unknown")
    go = tmp_path / "go"
    c = chain(f"""
[service.prepare]
kind = "oneshot"
command = ["/bin/sh", "-c", "while [ ! -e {go} ]; do sleep 0.05; done; exit {code}"]
[service.app]
command = ["/bin/sleep", "1000"]
requires = ["prepare"]
""")

    def svc(name: str) -> dict[str, Any]:
        return c.status().get(name) or {}
    pid = wait_until(lambda: svc("prepare").get("pid"), 30, "prepare running")
    restarter = wait_until(lambda: (hb := c.hb("restarter")) and hb.pid, 10, "a restarter")
    os.kill(restarter, signal.SIGKILL)
    st = wait_until(lambda: (s := svc("prepare")).get("reason") == "adopted" and s, 30,
                    "prepare adopted by the next restarter")
    assert st["pid"] == pid and svc("app")["state"] == "waiting"
    go.touch()
    st = wait_until(lambda: (s := svc("prepare")).get("state") == state and s, 10,
                    f"prepare {state}")
    assert (st["last_exit"]["kind"], st["last_exit"]["code"]) == ("exited", code)
    app = wait_until(lambda: (s := svc("app")).get("state") == app_state and s, 10,
                     f"app {app_state}")
    if code:
        assert app["reason"] == f"waiting for prepare: failed (exit status {code})"
    else:
        assert app["pid"]
