"""The health gate on heartbeats it must not take for fresh or healthy: a heartbeat whose
time cannot be from now (another boot's file, a non-number), and restarter fields of the
wrong type. The gate is pure: plain values, no processes. A gate that raises ends the
tickler, and every restart of a tickler pets the device: it must fail, not raise."""

from __future__ import annotations

import math

from hachain.channels import Heartbeat
from hachain.config import WatchdogConfig
from hachain.watchdog.health import evaluate

CFG = WatchdogConfig(heartbeat_timeout=3.0, restart_grace=10.0, max_loop_lag=2.0,
                     max_restart_rate=50.0, gate_critical=True)
NOW = 30.0  # early in a boot: CLOCK_MONOTONIC starts again at 0 on every boot
ALIVE = {"init": True, "restarter": True, "cluster": True}


def hb(layer: str, mono: float, **extra: object) -> Heartbeat:
    return Heartbeat(layer, 100, mono, 0.0, 1, 0, dict(extra))


def test_a_heartbeat_from_a_previous_boot_is_not_fresh() -> None:
    """state_dir kept across a reboot: the old restarter heartbeat's monotonic time is
    from the previous boot, hours ahead of this boot's clock. Taken for fresh, it passed
    the gate for as long as that boot had run, whatever this boot's restarter did."""
    hbs = {"init": hb("init", NOW - 0.1), "restarter": hb("restarter", 86400.0)}
    g = evaluate(NOW, hbs, ALIVE, CFG)
    assert not g.ok
    assert g.reasons[0].startswith("restarter heartbeat from the future"), g


def test_a_heartbeat_a_little_ahead_of_the_reader_is_fresh() -> None:
    """A heartbeat written just after the reader took `now` is fresh."""
    hbs = {"init": hb("init", NOW + 0.01), "restarter": hb("restarter", NOW + 0.2)}
    assert evaluate(NOW, hbs, ALIVE, CFG).ok


def test_a_heartbeat_whose_time_is_not_a_number_fails() -> None:
    hbs = {"init": hb("init", math.nan), "restarter": hb("restarter", NOW)}
    g = evaluate(NOW, hbs, ALIVE, CFG)
    assert not g.ok and "init heartbeat" in g.reasons[0], g


def test_singletons_up_of_the_wrong_type_fails_instead_of_raising() -> None:
    """Past the fence, a restarter heartbeat whose `singletons_up` is not a list."""
    cluster = hb("cluster", NOW, fence_at=NOW - 1.0, start_until=NOW - 1.0)
    for up in (5, True, 2.5):
        hbs = {"init": hb("init", NOW), "restarter": hb("restarter", NOW, singletons_up=up),
               "cluster": cluster}
        g = evaluate(NOW, hbs, ALIVE, CFG, cluster=True)
        assert not g.ok and "past the fence" in g.reasons[-1], g
