"""`hachain verify` is sensitive to the core's DEPS_LOST routing (core.Core._deps_lost):
no dependent keeps running on a process of a service it requires that has gone (the
goal, and, whenever time passes, the restarter has asked it to stop)."""

from __future__ import annotations

import pytest

from hachain.restarter import core
from hachain.restarter.states import Ev
from hachain.simulators import verify
from hachain.simulators.verify import Options, explore
from tests.test_core import _drop

pytestmark = pytest.mark.timeout(120)


def test_verify_fails_without_deps_lost_routing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core.Core, "_deps_lost", lambda self, name, reason, now: None)
    rep = explore(Options())
    assert not rep.ok and rep.violation is not None
    assert rep.violation["kind"] == "stale_dependent"
    assert "svc1 pid 2 on svc0 pid 1" in rep.violation["message"]
    assert rep.others["no_convergence"] > 0  # and svc0 waits for svc1 to stop, forever


def test_verify_fails_when_a_crash_does_not_reach_what_requires_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the DEPS_LOST of a service that went down is lost; its restart after the
    backoff still stops svc1 first, so the chain converges: the invariant alone catches
    svc1 running on svc0's dead process meanwhile."""
    monkeypatch.setattr(core.Core, "_after_change", _drop(lambda it: it[1] is Ev.DEPS_LOST))
    rep = explore(Options())
    assert not rep.ok and rep.violation is not None
    assert rep.violation["kind"] == "stale_dependent"
    assert rep.violation["trace"][-1].startswith("restarter reaps svc0 pid 1")
    assert rep.others["no_convergence"] == 0
    monkeypatch.setattr(verify.Model, "stale", lambda self, w, untold=False: [])
    assert explore(Options()).ok  # without the invariant, this mutant went unseen


def test_a_dependent_on_a_gone_process_is_not_the_goal() -> None:
    m = verify.Model(Options())
    w = m.boot()
    while not m.is_goal(w):  # the fault-free boot: svc0 ready, then svc1 on svc0 pid 1
        w = next(s.nxt for s in m.successors(w) if s.kind in (verify.EVENT, verify.TICK))
    assert w.procs[1][0][4] == ((0, w.procs[0][0][0]),)
    gone = verify.replace(w, procs=(((9,) + w.procs[0][0][1:],), w.procs[1]))
    assert m.stale(gone) == [f"svc1 pid {w.procs[1][0][0]} on svc0 pid {w.procs[0][0][0]}"]
    assert not m.is_goal(gone)
