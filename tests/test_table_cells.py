"""Rule 1 of states.py made true for what the core used to decide itself: health-check
thresholds, MAINPID=, adoption, the refusal of a start in maintenance and every service
timer are events and cells of `states.TABLE`; a patched cell changes what the core does."""

from __future__ import annotations

from typing import Any

import pytest

from hachain.config import HealthCheck, ServiceConfig
from hachain.restarter import core, states
from hachain.restarter.persist import RuntimeRecord
from hachain.restarter.policy import ExitStatus
from hachain.restarter.states import Ev, Found, State, Timer
from tests.test_core import drain, make, svc  # the core's helpers: one copy

pytestmark = pytest.mark.timeout(60)


def up(c: core.Core, name: str) -> None:
    c.push(name, Ev.START, 0.0)
    drain(c)
    assert c.svcs[name].state is State.READY


def test_every_service_timer_fires_as_a_table_event() -> None:
    assert set(states.TIMER_EVENT) == set(Timer) - states.LOOP_TIMERS
    for kind, ev in states.TIMER_EVENT.items():
        assert all((st, ev) in states.TABLE for st in State), kind
    c = make(svc("a", ready="exec", ready_command=("/bin/true",)))
    c.push("a", Ev.START, 0.0)
    effects = drain(c)
    assert states.ArmTimer("a", Timer.READY_CHECK, core.READY_CHECK_FIRST) in effects
    c.timer("a", Timer.READY_CHECK, 0.1)
    assert drain(c) == [states.RunProbe("a", "ready")]
    c.timer("a", Timer.READY_CHECK_TIMEOUT, 0.2)
    assert drain(c) == [states.DropProbe("a", "ready", timed_out=True)]
    c.push("a", Ev.READY, 0.3)
    drain(c)
    c.timer("a", Timer.READY_CHECK, 0.4)  # stale once ready
    assert drain(c) == []


def test_health_check_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    c = make(svc("a", health=HealthCheck(kind="exec", command=("/bin/false",), failures=3)))
    up(c, "a")
    c.timer("a", Timer.HEALTH_CHECK, 1.0)
    assert drain(c) == [states.RunProbe("a", "health")]
    for n in (1, 2):
        c.probe_result("a", "health", False, "exit status 1", 1.0 + n)
        drain(c)
        assert c.svcs["a"].health_failures == n and c.svcs["a"].state is State.READY
    # the threshold is the cell's: a table that stops at the first failure does so
    monkeypatch.setitem(states.TABLE, (State.READY, Ev.HEALTH_FAILED),
                        lambda s, ev, conf: states._begin_stop(s, ev, conf, reason="hung"))
    c.probe_result("a", "health", False, "exit status 1", 4.0)
    drain(c)
    assert c.svcs["a"].state is State.STOPPING


def test_a_health_result_when_not_ready_is_stale() -> None:
    c = make(svc("a", ready="notify",
                 health=HealthCheck(kind="exec", command=("/bin/false",), failures=1)))
    c.push("a", Ev.START, 0.0)
    drain(c)
    c.probe_result("a", "health", False, "exit status 1", 1.0)
    assert drain(c) == [] and c.svcs["a"].state is State.STARTING


def test_main_pid_is_a_table_event() -> None:
    c = make(svc("a"), svc("b", requires=("a",)))
    up(c, "a")
    up(c, "b")
    old = c.svcs["a"].pid
    c.main_pid("a", 555, 1.0)
    effects = drain(c)
    assert c.svcs["a"].pid == 555 and c.svcs["a"].state is State.READY
    assert core.MainFound("a", 555, True, via="MAINPID") in effects
    assert states.Persist("a") in effects
    assert c.svcs["b"].state is State.READY  # the same service: nothing went down
    c.main_pid("a", 555, 2.0)  # the same pid again: nothing to take
    assert drain(c) == [core.MainFound("a", 555, False, via="MAINPID")]
    assert old != 555
    c.push("a", Ev.STOP, 3.0)
    drain(c)
    c.main_pid("a", 556, 4.0)  # stopping: refused, its pidfd let go
    assert drain(c) == [core.MainFound("a", 556, False, via="MAINPID")]
    assert c.svcs["a"].pid == 555


def test_a_start_in_maintenance_is_refused_by_its_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    c = make(svc("a"))
    c.adopt("a", {"want": "up", "maintenance": "too many restarts"}, None, False, 0.0)
    drain(c)
    why = "a is in maintenance (too many restarts); use 'hachain clear a'"
    assert c.request("start", "a", 0.0) == why and c.request("restart", "a", 0.0) == why
    assert not c.queue
    monkeypatch.setitem(states.TABLE, (State.MAINTENANCE, Ev.START), states._ignore)
    assert c.request("start", "a", 0.0) is None  # the cell, not the core, refused


def rec(state: str, pid: int | None = 42, **kw: Any) -> RuntimeRecord:
    return RuntimeRecord(name="a", pid=pid, start_time=1, state=state, want="up",
                         started_mono=5.0, restarts=2, cgroup=None, **kw)


def test_adoption_is_the_adopted_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Found] = []
    real = states.TABLE[(State.STOPPED, Ev.ADOPTED)]

    def spy(s: states.Svc, ev: states.Event, conf: ServiceConfig) -> states.Result:
        assert ev.found is not None
        seen.append(ev.found)
        return real(s, ev, conf)

    monkeypatch.setitem(states.TABLE, (State.STOPPED, Ev.ADOPTED), spy)
    c = make(svc("a"))
    assert c.adopt("a", {"want": "down"}, rec("ready"), True, 10.0)
    assert seen == [Found(want="down", record="ready", pid=42, alive=True, restarts=2,
                          started=5.0)]
    assert c.svcs["a"].state is State.READY and c.svcs["a"].pid == 42
    assert not any(isinstance(e, core.Transition) for e in drain(c))  # no log per service
    c.adopted(10.0)
    assert [(n, k) for n, k, _ in c.later] == [("a", Ev.STOP)]


def test_a_stop_in_progress_is_carried_on() -> None:
    c = make(svc("a", stop_timeout=10.0))
    assert c.adopt("a", {"want": "down"}, rec("stopping", stop_since=4.0), True, 7.0)
    s = c.svcs["a"]
    assert (s.state, s.pid, s.want, s.stop_since) == (State.STOPPING, 42, "down", 4.0)
    effects = drain(c)
    assert states.ArmTimer("a", Timer.STOP_TIMEOUT, 7.0) in effects  # 4 + 10 - 7
    assert not any(isinstance(e, states.Kill) for e in effects)  # signalled already
    c.adopted(7.0)
    assert not c.later  # no second stop
    c.timer("a", Timer.STOP_TIMEOUT, 14.0)
    assert states.Kill("a", states.SIGKILL, group=True) in drain(c)
    c.exited("a", 42, ExitStatus("killed", signal=9), 14.1)
    drain(c)
    assert c.svcs["a"].state is State.STOPPED and c.svcs["a"].want == "down"
    # wanted up (a restart in progress), or a held stop never signalled: adopted running
    for admin, since in (({}, 4.0), ({"want": "down"}, None)):
        c = make(svc("a", stop_timeout=10.0))
        assert c.adopt("a", admin, rec("stopping", stop_since=since), True, 7.0)
        assert c.svcs["a"].state is State.READY


def test_the_record_keeps_when_a_stop_was_signalled() -> None:
    c = make(svc("a"))
    up(c, "a")
    c.push("a", Ev.STOP, 3.0)
    effects = drain(c)
    assert c.svcs["a"].stop_since == 3.0 and states.Persist("a") in effects


def test_an_adopted_service_gets_its_checks_again() -> None:
    """The adopted cell goes through the core like any step: a ready service's health
    checks and a starting one's readiness checks are armed again (they were lost with
    the previous restarter's timers)."""
    c = make(svc("h", health=HealthCheck(kind="exec", command=("/bin/true",), interval=3.0)),
             svc("r", ready="exec", ready_command=("/bin/true",)))
    assert c.adopt("h", {}, rec("ready"), True, 1.0)
    assert c.adopt("r", {}, rec("starting", pid=43), True, 1.0)
    effects = drain(c)
    assert states.ArmTimer("h", Timer.HEALTH_CHECK, 3.0) in effects
    assert states.ArmTimer("r", Timer.READY_CHECK, core.READY_CHECK_FIRST) in effects
    assert c.svcs["r"].state is State.STARTING


def test_notify_pings_and_failed_readiness_checks_are_cells() -> None:
    c = make(svc("a", ready="notify", watchdog_sec=2.0),
             svc("b", ready="tcp", ready_port=1))
    c.push("a", Ev.START, 0.0)
    drain(c)
    c.watchdog_ping("a", 0.5)  # starting: not watched yet
    c.extend_timeout("a", 30.0, 0.5)
    assert drain(c) == [states.ArmTimer("a", Timer.READY_TIMEOUT, 30.0)]
    c.push("a", Ev.READY, 1.0)
    drain(c)
    c.watchdog_ping("a", 1.5)
    c.extend_timeout("a", 30.0, 1.5)  # ready: nothing to extend
    assert drain(c) == [states.ArmTimer("a", Timer.WATCHDOG, 2.0)]
    c.push("b", Ev.START, 0.0)
    drain(c)
    c.probe_result("b", "ready", False, "connection refused", 0.1)
    assert drain(c) == [states.ArmTimer("b", Timer.READY_CHECK, states.READY_CHECK_AGAIN)]


def test_local_events_do_not_read_the_dependency_fields() -> None:
    """The core steps LOCAL_EVENTS without asking the other services: their cells must
    give the same answer whatever those fields say."""
    conf = svc("a", watchdog_sec=2.0, ready="exec", ready_command=("/bin/true",),
               health=HealthCheck(kind="exec", command=("/bin/true",)))
    found = Found(record="ready", pid=7, alive=True)
    for kind in states.LOCAL_EVENTS:
        for st in State:
            s = states.Svc("a", state=st, pid=5)
            plain = states.Event(kind, 1.0, pid=8, found=found, delay=3.0)
            asked = states.Event(kind, 1.0, pid=8, found=found, delay=3.0, deps_ready=False,
                                 waiting_for="x: failed", dependents_up="b", owned=False,
                                 owner="n2")
            assert states.step(s, plain, conf) == states.step(s, asked, conf), (kind, st)
