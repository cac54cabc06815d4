"""One `converged` predicate (hachain/simulators/converge.py) for chaos, the QEMU campaign and verify.

Pure: the predicate on hand-made observations, the QEMU probe's reading of a
`gather_status` object, and proof that `hachain verify` judges its goal through the same
predicate (a mutation of the predicate changes verify's verdict)."""

from __future__ import annotations

from typing import Any

import pytest

from hachain.simulators import converge, verify
from hachain.simulators.converge import LayerSeen, Proc, Seen, ServiceWant, Want
from hachain.simulators.qemu import campaign_probe


def _layers(**state: str) -> dict[str, LayerSeen]:
    return {n: LayerSeen(i + 1, 0.2, state.get(n, "alive"))
            for i, n in enumerate(("init", "restarter", "tickler"))}


def _seen(**kw: Any) -> Seen:
    services = {"a": {"state": "ready", "want": "up", "pid": 10},
                "b": {"state": "ready", "want": "up", "pid": 11}}
    return Seen(_layers(), services, {"a": [10], "b": [11]}, **kw)


WANT = Want({"a": ServiceWant(), "b": ServiceWant()}, heartbeat_timeout=1.5)


def test_a_converged_chain_breaks_nothing() -> None:
    assert converge.problems(_seen(), WANT) == []
    assert converge.converged(_seen(petting=True), WANT)


def test_each_invariant_is_named() -> None:
    s = _seen(petting=False, gate="failing", reboot_requested=True,
              watched={"a": 10, "b": 99}, admin={"a": {"want": "down"}})
    s.layers["restarter"] = LayerSeen(2, 0.2, "hung")
    s.layers["tickler"] = LayerSeen(3, 4.0)
    s.mains["a"] = [10, 12]
    s.mains["zz"] = [40]
    want = Want(WANT.services, 1.5, admin={}, strangers=True)
    why = converge.problems(s, want)
    assert why == ["restarter: pid 2 hung", "tickler: heartbeat 4.0 s old",
                   "a reboot is requested", "tickler not petting (gate failing)",
                   "a: 2 main processes (expected 1): [10, 12]",
                   "b: the restarter watches pid 99, running is 11",
                   "unknown service zz: processes [40]",
                   "admin.json changed: {} -> {'a': {'want': 'down'}}"]


def test_wanted_state_follows_configuration_and_administrator() -> None:
    s = _seen()
    s.services["b"] = {"state": "stopped", "want": "down", "pid": None}  # stopped by hand
    s.mains["b"] = []
    assert converge.problems(s, WANT) == []
    oneshot = Want({"a": ServiceWant(), "b": ServiceWant("oneshot")}, 1.5)
    assert converge.problems(s, oneshot) == []
    s.services["b"]["want"] = "up"
    assert converge.problems(s, oneshot) == ["b: stopped (expected done)"]
    held = Want({"b": ServiceWant(held="waiting")}, 1.5)  # its processes are not counted
    assert converge.problems(s, held) == ["b: stopped (expected waiting)"]


def test_a_singleton_may_stand_by_with_no_process() -> None:
    s = _seen()
    s.services["b"] = {"state": "standby", "want": "up", "pid": None}
    s.mains["b"] = []
    single = Want({"a": ServiceWant(), "b": ServiceWant(singleton=True)}, 1.5)
    assert converge.problems(s, single) == []
    assert converge.problems(s, WANT) == ["b: standby (expected ready)",
                                          "b: 0 main processes (expected 1): []"]
    s.mains["b"] = [11]  # standing by, yet running
    assert converge.problems(s, single) == ["b: 1 main processes (expected 0): [11]"]


def test_a_service_with_a_condition_may_be_skipped_with_no_process() -> None:
    s = _seen()
    s.services["b"] = {"state": "skipped", "want": "up", "pid": None,
                       "reason": "skipped: condition path_exists=/x failed: no such path"}
    s.mains["b"] = []
    cond = Want({"a": ServiceWant(), "b": ServiceWant(conditional=True)}, 1.5)
    assert converge.problems(s, cond) == []
    assert converge.problems(s, WANT) == [
        "b: skipped (expected ready): skipped: condition path_exists=/x failed: no such path",
        "b: 0 main processes (expected 1): []"]
    s.mains["b"] = [11]  # skipped, yet running
    assert converge.problems(s, cond) == ["b: 1 main processes (expected 0): [11]"]
    s.services["b"] = {"state": "ready", "want": "up", "pid": 11}  # its condition held
    assert converge.problems(s, cond) == []


def test_a_restarter_that_does_not_answer_ends_the_list() -> None:
    s = Seen({}, None, {}, error="connection refused", machine_up=False)
    assert converge.problems(s, WANT) == [
        "PID 1 not found", "init: not running", "restarter: not running",
        "tickler: not running", "restarter does not answer: connection refused"]


def _status() -> dict[str, Any]:
    ok = {"pid": 5, "state": "alive", "heartbeat_age": 0.2}
    return {"chain": {"layers": {"init": dict(ok), "restarter": dict(ok), "tickler": dict(ok)},
                      "watchdog": {"petting": True}},
            "services": {"a": {"state": "ready", "want": "up", "pid": 20}}}


def test_the_qemu_probe_judges_gather_status_with_the_same_predicate() -> None:
    spec = {"services": ["a"], "heartbeat_timeout": 3.0}
    procs = [Proc(20, 20, 5, "S", 1, "a", "/"), Proc(21, 21, 20, "S", 2, "a", "/"),
             Proc(22, 22, 5, "Z", 3, "a", "/")]  # a child of a; a zombie
    st = _status()
    assert campaign_probe.problems(spec, st, procs) == []
    st["chain"]["layers"]["restarter"]["state"] = "stale"
    st["chain"]["layers"]["restarter"]["heartbeat_age"] = 3.5
    st["chain"]["layers"]["tickler"] = {"pid": None, "state": "restarting"}
    st["chain"]["watchdog"] = {"petting": False, "gate": "stale restarter"}
    procs.append(Proc(30, 30, 5, "S", 4, "a", "/"))
    procs.append(Proc(31, 31, 5, "S", 5, "ghost", "/"))
    assert campaign_probe.problems(spec, st, procs) == [
        "restarter: heartbeat 3.5 s old", "tickler: not running",
        "tickler not petting (gate stale restarter)",
        "a: 2 main processes (expected 1): [20, 30]",
        "unknown service ghost: processes [31]"]


def test_verify_goal_is_the_shared_predicate(monkeypatch: pytest.MonkeyPatch) -> None:
    """A predicate that wants every service stopped leaves verify no goal to reach."""
    assert verify.explore(verify.Options()).ok
    monkeypatch.setattr(converge, "expected", lambda _w, _st: ("stopped", 0))
    rep = verify.explore(verify.Options())
    assert not rep.ok and rep.violation is not None
    assert rep.violation["kind"] == "no_convergence"
