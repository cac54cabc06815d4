"""`hachain verify`'s model drives the table's health-check and operator cells: a ready
process may hang (alive, its health check unanswered) and must be restarted once the
check has failed `failures` times; the operator may stop svc0 by hand (`--admin`) and
start it again, and the chain must converge with it down, what requires it waiting, and
keep it down across restarter restarts. Patching the health threshold cell, the stop cell
or the admin state the core keeps makes verify fail."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hachain.restarter import core, states
from hachain.restarter.states import Ev, State
from hachain.simulators import verify
from hachain.simulators.verify import Options, explore

pytestmark = pytest.mark.timeout(120)


def test_health_checks_and_hangs_are_modelled() -> None:
    rep = explore(Options())
    assert rep.ok, rep.violation
    assert ("ready", "health_failed") in rep.cells
    assert ("ready", "health_ok") in rep.cells
    assert ("ready", "health_check") in rep.cells
    assert verify.Model(Options()).confs[-1].health is not None
    off = explore(Options(health=False))
    assert off.ok and ("ready", "health_failed") not in off.cells


def test_a_hung_process_is_not_the_goal() -> None:
    m = verify.Model(Options())
    w = m.boot()
    while not m.is_goal(w):
        w = next(s.nxt for s in m.successors(w) if s.kind in (verify.EVENT, verify.TICK))
    # svc1 (health-checked) and svc0 (service watchdog) may hang
    hang = [s for s in m.successors(w) if "hangs" in s.label]
    assert sorted(s.label.split()[1] for s in hang) == ["svc0", "svc1"]
    assert not any(m.is_goal(s.nxt) for s in hang)


def test_a_health_threshold_that_never_trips_fails_verify(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def never_hung(s: states.Svc, ev: states.Event, c: verify.ServiceConfig
                   ) -> states.Result:
        assert c.health is not None
        return replace(s, health_failures=min(s.health_failures + 1, c.health.failures)), [
            states.ArmTimer(s.name, states.Timer.HEALTH_CHECK, c.health.interval)]

    monkeypatch.setitem(states.TABLE, (State.READY, Ev.HEALTH_FAILED), never_hung)
    rep = explore(Options())
    assert not rep.ok and rep.violation is not None
    assert rep.violation["kind"] == "no_convergence"
    assert any("hangs" in line for line in rep.violation["trace"])


def test_a_health_check_that_counts_successes_as_failures_fails_verify(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The other side: health_ok must not stop a healthy service (no reset of the count
    would be caught only by a flapping check, which the model does not produce)."""
    monkeypatch.setitem(states.TABLE, (State.READY, Ev.HEALTH_OK),
                        states.TABLE[(State.READY, Ev.HEALTH_FAILED)])
    rep = explore(Options(faults=0))
    assert not rep.ok and rep.violation is not None


@pytest.mark.slow  # a model check of seconds
def test_admin_stop_and_start_converge() -> None:
    rep = explore(Options(faults=0, admin=True))
    assert rep.ok, rep.violation
    assert ("ready", "stop") in rep.cells and ("stopped", "start") in rep.cells
    assert explore(Options(services=1, admin=True)).ok


def test_a_stopped_service_is_down_and_its_dependents_wait() -> None:
    m = verify.Model(Options(admin=True))
    w = m.boot()
    while not m.is_goal(w):
        w = next(s.nxt for s in m.successors(w) if s.kind in (verify.EVENT, verify.TICK))
    stop = next(s for s in m.successors(w) if s.label.startswith("operator: hachain stop"))
    assert stop.nxt.op == "stop:0" and not m.is_goal(stop.nxt)
    want = m.goal(False, 0).services
    assert want["svc0"].enabled is False and want["svc1"].held == "waiting"


def test_a_stop_cell_that_ignores_the_operator_fails_verify(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(states.TABLE, (State.READY, Ev.STOP),
                        states.TABLE[(State.READY, Ev.START)])  # _ignore
    rep = explore(Options(faults=0, admin=True))
    assert not rep.ok and rep.violation is not None
    assert any("operator: hachain stop svc0" in line for line in rep.violation["trace"])


@pytest.mark.slow  # a model check of seconds
def test_admin_state_not_kept_fails_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarter that forgets a stop by hand when it starts again (after a crash or a
    reset) starts svc0 again."""
    real = core.Core.admin_entry

    def forgetful(self: core.Core, name: str) -> dict[str, str] | None:
        e = real(self, name)
        return None if e == {"want": "down"} else e

    assert explore(Options(services=1, admin=True)).ok
    monkeypatch.setattr(core.Core, "admin_entry", forgetful)
    rep = explore(Options(services=1, admin=True))
    assert not rep.ok and rep.violation is not None
    trace = rep.violation["trace"]
    stop = next(n for n, line in enumerate(trace) if "operator: hachain stop svc0" in line)
    assert any("restarter crashed" in line or "reset, boot" in line
               for line in trace[stop:])


def test_cli_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert verify.main(["--faults", "0", "--admin"]) == 0
    assert verify.main(["--faults", "0", "--no-health"]) == 0
    assert "PASS" in capsys.readouterr().out
