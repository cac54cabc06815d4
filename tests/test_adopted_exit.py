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

from hachain import channels
from hachain.restarter import spawn
from tests.conftest import KILLED_BOUND, reap, wait_until
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


def _prepare_and_app(go: Any, code: int) -> str:
    """A oneshot `prepare` that exits `code` once the file `go` exists, and `app`, which
    requires it; skips the test where the kernel keeps no exit status for pidfds."""
    if not _kernel_keeps_exit_status():
        pytest.skip(f"kernel {os.uname().release} has no PIDFD_GET_INFO exit status "
                    "(Linux >= 6.15): adopted processes end with status unknown")
    return f"""
[service.prepare]
kind = "oneshot"
command = ["/bin/sh", "-c", "while [ ! -e {go} ]; do sleep 0.05; done; exit {code}"]
[service.app]
command = ["/bin/sleep", "1000"]
requires = ["prepare"]
"""


@pytest.mark.slow
@pytest.mark.parametrize(("code", "state", "app_state"), [(0, "done", "ready"),
                                                          (3, "failed", "waiting")])
def test_an_adopted_oneshot_ends_with_its_real_exit_status(
        chain, tmp_path, code: int, state: str, app_state: str) -> None:
    """The whole chain: init (the subreaper) reaps the oneshot that the restarter it
    restarted after a SIGKILL adopted; that restarter still learns how it ended."""
    go = tmp_path / "go"
    c = chain(_prepare_and_app(go, code))

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


# A stand-in for init: a subreaper that starts the first restarter and reaps each exited
# child only once it has been a zombie for DELAY seconds (a busy host's init, late to
# its SIGCHLD), writing "PID STATUS" for each into its report.
SLOW_REAPER = """
import ctypes, os, subprocess, sys, time
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
delay, report, log = float(sys.argv[1]), open(sys.argv[2], "a", buffering=1), sys.argv[3]
with open(log, "ab") as f:
    subprocess.Popen(sys.argv[4:], stdout=f, stderr=f)
seen = {}
while True:
    try:
        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        info = None
    if info is not None and info.si_pid:
        first = seen.setdefault(info.si_pid, time.monotonic())
        if time.monotonic() - first >= delay:
            os.waitpid(info.si_pid, 0)
            report.write(f"{info.si_pid} {info.si_status}\\n")
            del seen[info.si_pid]
            continue
    time.sleep(0.01)
"""


@pytest.mark.slow
def test_an_adopted_exit_waits_for_a_late_reap(restarter, tmp_path) -> None:
    """The restarter that adopted a process learns its status from the reap, however late
    init's reap comes (up to loop.REAP_WAIT), without blocking its loop: here a stand-in
    init reaps 0.5 s after the exit. The restarter used to look for 50 ms, blocked, then
    took the exit as unknown (CI with both cores loaded: a oneshot that exited 3 was
    'failed' with status unknown; one that exited 0 would have failed as well)."""
    go = tmp_path / "go"
    run = restarter(_prepare_and_app(go, 3), start=False)
    report = tmp_path / "reaped"
    reaper = subprocess.Popen([sys.executable, "-c", SLOW_REAPER, "0.5", str(report), run.log,
                               sys.executable, "-m", "hachain.restarter", "-c", run.config])
    try:
        pid = wait_until(lambda: run.ping() and run.svc("prepare").get("pid"), 60,
                         "prepare running under the first restarter")
        first = wait_until(lambda: (hb := channels.read_heartbeat(run.state_dir, "restarter"))
                           and hb.pid, 10, "the first restarter's heartbeat")
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: f"{first} " in (report.read_text() if report.exists() else ""),
                   KILLED_BOUND, "the stand-in init to reap the killed restarter")
        run.start()  # the next restarter, which adopts prepare
        st = wait_until(lambda: (s := run.svc("prepare")).get("reason") == "adopted" and s,
                        30, "prepare adopted")
        assert st["pid"] == pid
        go.touch()
        st = wait_until(lambda: (s := run.svc("prepare")).get("state") == "failed" and s, 30,
                        "prepare failed")
        assert (st["last_exit"]["kind"], st["last_exit"]["code"]) == ("exited", 3), st
        assert f"{pid} 3" in report.read_text().splitlines()  # reaped by the stand-in
        assert run.svc("app")["state"] == "waiting"
        assert run.ping()  # the loop answered all along
    finally:
        reaper.kill()
        reap(reaper, "the stand-in init")
