"""A daemon that hands over while no restarter runs (issue 17, found by `hachain verify`).

A notify service's launcher, ready and recorded as the service's main process, forks
its server, sends MAINPID=<server> and exits while the restarter is dead. The notify
socket is held across restarter restarts (as init holds it: HACHAIN_NOTIFY_FD), so the
message waits there. The next restarter reads it before it adopts and adopts the server:
it must not take the launcher's exit for the service's death and restart a daemon that
runs fine.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

import pytest

from hachain import channels
from hachain.restarter import states
from hachain.restarter.persist import RuntimeRecord
from hachain.restarter.states import Ev, State
from tests.conftest import svc, wait_until
from tests.test_core import drain, make
from tests.test_core import svc as conf

pytestmark = pytest.mark.timeout(120)


def _record(state: str, pid: int) -> RuntimeRecord:
    return RuntimeRecord(name="a", pid=pid, start_time=1, state=state, want="up",
                         started_mono=5.0, restarts=2, cgroup=None)


@pytest.mark.parametrize("record", ["starting", "ready"])
def test_the_adopted_cell_takes_the_queued_mainpid(record: str) -> None:
    """The decision is the table's: a queued MAINPID= naming a live process of the
    service makes it the adopted main pid (the record rewritten), the launcher's death
    no exit; without it, the launcher's death is an exit of the service."""
    c = make(conf("a", ready="notify"))
    assert c.adopt("a", {}, _record(record, 40), False, 10.0, main=41)
    c.adopted(10.0)
    c.release(len(c.later), 10.0)
    effects = drain(c)
    s = c.svcs["a"]
    assert s.pid == 41 and s.restarts == 2 and s.state.value == record
    assert states.Persist("a") in effects
    assert not any(isinstance(e, states.Spawn) for e in effects)

    c = make(conf("a", ready="notify"))
    assert not c.adopt("a", {}, _record(record, 40), False, 10.0)
    c.adopted(10.0)
    c.release(len(c.later), 10.0)
    drain(c)
    s = c.svcs["a"]
    assert s.state is State.BACKOFF and s.pid is None and s.restarts == 3


def test_a_queued_mainpid_of_a_service_being_stopped_is_not_taken() -> None:
    """As while running (`stopping` + main_pid is stale), a record that says stopping
    does not hand over: the launcher's death ends the stop."""
    c = make(conf("a", ready="notify"))
    assert not c.adopt("a", {}, _record("stopping", 40), False, 10.0, main=41)
    assert states.TABLE[(State.STOPPING, Ev.MAIN_PID)] is states.TABLE[
        (State.STOPPED, Ev.MAIN_PID)]


def _lines(path: str, kind: str) -> list[int]:
    try:
        with open(path) as f:
            return [int(w[1]) for line in f if (w := line.split()) and w[0] == kind]
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "process-group"])
def test_a_handover_while_no_restarter_runs_is_adopted(restarter: Any, tmp_path: Any,
                                                       cgroups: bool) -> None:
    go, out = str(tmp_path / "go"), str(tmp_path / "out")
    r = restarter(f"""
[service.d]
command = {svc("handover", go, out)}
ready = "notify"
""", cgroups=cgroups, start=False)
    os.makedirs(r.state_dir, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(os.path.join(r.state_dir, channels.NOTIFY_SOCKET))
    server = None
    try:
        r.start(notify_fd=sock.fileno())
        before = r.wait_state("d", "ready")
        launcher = before["pid"]
        rec = os.path.join(r.state_dir, channels.SERVICE_RECORD_DIR, "d.json")
        wait_until(lambda: (d := channels.read_json(rec)) is not None
                   and d.get("state") == "ready" and d.get("pid") == launcher, 10,
                   "d's record to say ready, pid the launcher")
        r.kill_restarter()

        open(go, "w").close()  # the launcher forks its server, names it and exits
        server = wait_until(lambda: (s := _lines(out, "server")) and s[0], 10, "the server")
        wait_until(lambda: not channels.pid_alive(launcher), 10, "the launcher to exit")

        r.start(notify_fd=sock.fileno())
        wait_until(lambda: (s := r.svc("d"))["pid"] == server and s["state"] == "ready"
                   or s["restarts"] != before["restarts"], 10, "d adopted")
        r.beats(5)  # a window counted in the restarter's own passes
        after = r.svc("d")
        assert after["state"] == "ready" and after["pid"] == server, after
        assert after["restarts"] == before["restarts"], after
        assert channels.pid_alive(server)
        assert _lines(out, "launcher") == [launcher] and _lines(out, "server") == [server]
        log = open(r.log).read()
        assert "not a process of this service" not in log, log
        d = channels.read_json(rec)
        assert d is not None and d.get("pid") == server, d  # the record names it now
    finally:
        r.stop()
        if server is not None and channels.pid_alive(server):
            os.kill(server, signal.SIGKILL)
        sock.close()
