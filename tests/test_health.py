"""The health gate (hachain.watchdog.health): pure, so table-driven and property tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hachain.channels import Heartbeat
from hachain.config import WatchdogConfig
from hachain.watchdog.health import GateResult, evaluate

CFG = WatchdogConfig(heartbeat_timeout=3.0, restart_grace=10.0, max_loop_lag=2.0,
                     max_restart_rate=50.0, gate_critical=True)
NOW = 1000.0


def hb(layer: str, age: float, pid: int = 100, **extra: Any) -> Heartbeat:
    """A heartbeat written `age` seconds before NOW."""
    return Heartbeat(layer, pid, NOW - age, 0.0, 1, 0, dict(extra))


def healthy(**restarter_extra: Any) -> dict[str, Heartbeat | None]:
    """Fresh init and restarter heartbeats; the restarter reports `restarter_extra`."""
    base: dict[str, Any] = {"lag": 0.01, "critical": {}, "restart_rate": 0.0,
                            "services": 3, "reboot_requested": None}
    base.update(restarter_extra)
    return {"init": hb("init", 0.2, pid=1), "restarter": hb("restarter", 0.3, pid=123, **base)}


ALIVE = {"init": True, "restarter": True}


def gate(hbs: Mapping[str, Heartbeat | None], alive: Mapping[str, bool] = ALIVE,
         cfg: WatchdogConfig = CFG, started: float | None = None) -> GateResult:
    return evaluate(NOW, hbs, alive, cfg, started)


def test_healthy_chain_passes() -> None:
    assert gate(healthy()) == GateResult(True, ())


# (description, heartbeats, alive, started, expected reason fragments; [] = passes)
CASES: list[tuple[str, dict[str, Heartbeat | None], dict[str, bool], float | None,
                  list[str]]] = [
    ("restarter alive but stale is hung",
     {**healthy(), "restarter": hb("restarter", 3.4, pid=123)}, ALIVE, None,
     ["restarter heartbeat stale: 3.4 s > 3 s (pid 123 alive: hung)"]),
    ("init alive but stale is hung",
     {**healthy(), "init": hb("init", 5.0, pid=1)}, ALIVE, None,
     ["init heartbeat stale: 5 s > 3 s (pid 1 alive: hung)"]),
    ("exactly at the timeout is still fresh",
     {**healthy(), "restarter": hb("restarter", 3.0)}, ALIVE, None, []),
    ("dead restarter within the restart grace",
     {**healthy(), "restarter": hb("restarter", 6.0)}, {"init": True, "restarter": False},
     None, []),
    ("dead restarter past the restart grace",
     {**healthy(), "restarter": hb("restarter", 12.0, pid=7)},
     {"init": True, "restarter": False}, None,
     ["restarter heartbeat stale: 12 s > restart grace 10 s (pid 7 dead: not restarted)"]),
    ("missing alive entry counts as dead",
     {**healthy(), "restarter": hb("restarter", 6.0)}, {"init": True}, None, []),
    ("missing heartbeat with no startup grace",
     {**healthy(), "restarter": None}, ALIVE, None, ["restarter heartbeat missing"]),
    ("missing heartbeat inside the startup grace",
     {"init": None, "restarter": None}, {}, NOW - 4.0, []),
    ("missing heartbeat after the startup grace",
     {**healthy(), "restarter": None}, ALIVE, NOW - 11.0,
     ["restarter heartbeat missing after 11 s (grace 10 s)"]),
    ("loop lag over the bound", healthy(lag=2.5), ALIVE, None,
     ["restarter loop lag 2.5 s > 2 s"]),
    ("loop lag at the bound", healthy(lag=2.0), ALIVE, None, []),
    ("restart storm", healthy(restart_rate=60.0), ALIVE, None,
     ["restart storm: 60 restarts/s > 50/s"]),
    ("reboot requested", healthy(reboot_requested="web: intensity exceeded"), ALIVE, None,
     ["reboot requested: web: intensity exceeded"]),
    ("critical service in maintenance",
     healthy(critical={"db": {"state": "maintenance", "ok": False,
                              "reason": "5 restarts in 60 s"},
                       "cache": {"state": "ready", "ok": True, "reason": ""}}), ALIVE, None,
     ["critical service db not ok: maintenance (5 restarts in 60 s)"]),
    ("malformed lag", healthy(lag="soon"), ALIVE, None,
     ["restarter heartbeat malformed: lag is 'soon'"]),
    ("malformed critical table", healthy(critical=[1]), ALIVE, None,
     ["restarter heartbeat malformed: critical is [1]"]),
    ("several problems at once",
     {"init": hb("init", 4.0, pid=1), "restarter": hb("restarter", 0.1, lag=9.0)}, ALIVE,
     None, ["init heartbeat stale", "restarter loop lag 9 s > 2 s"]),
]


@pytest.mark.parametrize("desc,hbs,alive,started,expected", CASES, ids=[c[0] for c in CASES])
def test_gate_table(desc: str, hbs: dict[str, Heartbeat | None], alive: dict[str, bool],
                    started: float | None, expected: list[str]) -> None:
    result = gate(hbs, alive, started=started)
    assert result.ok == (not expected), result.reasons
    assert len(result.reasons) == len(expected), result.reasons
    for reason, fragment in zip(result.reasons, expected):
        assert reason.startswith(fragment), (reason, fragment)
        assert "\n" not in reason


def test_orderly_shutdown_skips_the_restarter_but_not_init() -> None:
    stopping = hb("init", 0.2, pid=1, stopping=True)
    dead_restarter = hb("restarter", 30.0, pid=7)
    assert gate({"init": stopping, "restarter": dead_restarter},
                {"init": True, "restarter": False}).ok
    stale_init = hb("init", 5.0, pid=1, stopping=True)
    result = gate({"init": stale_init, "restarter": dead_restarter},
                  {"init": True, "restarter": False})
    assert not result.ok
    assert result.reasons[0].startswith("init heartbeat stale")
    assert len(result.reasons) == 2


def test_critical_ignored_when_gate_critical_off() -> None:
    from dataclasses import replace
    hbs = healthy(critical={"db": {"state": "failed", "ok": False, "reason": "exit 1"}})
    assert not gate(hbs).ok
    assert gate(hbs, cfg=replace(CFG, gate_critical=False)).ok


def test_to_json() -> None:
    r = gate({**healthy(), "restarter": None})
    assert r.to_json() == {"ok": False, "reasons": list(r.reasons)}


ages = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)


@given(init_age=ages, r_age=ages, init_alive=st.booleans(), r_alive=st.booleans(),
       lag=st.floats(min_value=0.0, max_value=10.0), rate=st.floats(0.0, 200.0))
def test_gate_matches_the_rules(init_age: float, r_age: float, init_alive: bool,
                                r_alive: bool, lag: float, rate: float) -> None:
    """The verdict equals the rules stated in the module docstring, for any inputs."""
    hbs = {"init": hb("init", init_age, pid=1),
           "restarter": hb("restarter", r_age, lag=lag, restart_rate=rate)}
    result = gate(hbs, {"init": init_alive, "restarter": r_alive})

    def layer_ok(age: float, alive: bool) -> bool:
        return age <= CFG.heartbeat_timeout or (not alive and age <= CFG.restart_grace)

    expect = (layer_ok(init_age, init_alive) and layer_ok(r_age, r_alive)
              and lag <= CFG.max_loop_lag and rate <= CFG.max_restart_rate)
    assert result.ok == expect
    assert result.ok == (result.reasons == ())


@given(age=st.floats(min_value=0.0, max_value=100.0), alive=st.booleans())
def test_staler_is_never_healthier(age: float, alive: bool) -> None:
    """Monotonic in age: if a heartbeat this old fails, any older one fails too."""
    def ok(a: float) -> bool:
        return gate({**healthy(), "restarter": hb("restarter", a)},
                    {"init": True, "restarter": alive}).ok
    if not ok(age):
        assert not ok(age + 0.5)
