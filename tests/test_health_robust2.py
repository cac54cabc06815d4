"""The health gate while init says `stopping`: the cluster fence still holds. The gate
returned early on `stopping`, before the fence, so a node past its fence that was shutting
down kept petting while another node could take its singletons over (docs/cluster.md,
the timing rule). Pure: plain values, no processes."""

from __future__ import annotations

from hachain.channels import Heartbeat
from hachain.config import WatchdogConfig
from hachain.watchdog.health import evaluate

CFG = WatchdogConfig(heartbeat_timeout=3.0, restart_grace=10.0, max_loop_lag=2.0,
                     max_restart_rate=50.0, gate_critical=True)
NOW = 100.0


def beat(layer: str, mono: float, **extra: object) -> Heartbeat:
    return Heartbeat(layer, 100, mono, 0.0, 1, 0, dict(extra))


def test_a_fenced_node_that_is_stopping_fails_the_gate() -> None:
    """init says `stopping`; the lease was not renewed past the fence and the restarter
    still lists a singleton up. The gate returned early on `stopping` and passed."""
    hbs = {"init": beat("init", NOW, stopping=True),
           "restarter": beat("restarter", NOW, singletons_up=["db"]),
           "cluster": beat("cluster", NOW, fence_at=NOW - 1.0, start_until=NOW - 2.0)}
    alive = {"init": True, "restarter": True, "cluster": True}
    g = evaluate(NOW, hbs, alive, CFG, cluster=True)
    assert not g.ok and "singletons still up: db" in g.reasons[-1], g
    # a stopping restarter that shows them down passes; its other rules are still skipped
    hbs["restarter"] = beat("restarter", NOW, singletons_up=[], lag=99.0)
    assert evaluate(NOW, hbs, alive, CFG, cluster=True).ok


def test_stopping_still_skips_the_liveness_of_the_layers_init_is_stopping() -> None:
    """Before the fence, a stopping chain passes as before: the restarter gone (init
    stopped it), the cluster layer's heartbeat stale (init stops it last)."""
    hbs = {"init": beat("init", NOW, stopping=True), "restarter": None,
           "cluster": beat("cluster", NOW - 20.0, fence_at=NOW + 1.0, start_until=NOW)}
    alive = {"init": True, "restarter": False, "cluster": True}
    assert evaluate(NOW, hbs, alive, CFG, cluster=True).ok
    # past the fence, a restarter that never showed its singletons down fails
    hbs["cluster"] = beat("cluster", NOW - 20.0, fence_at=NOW - 1.0, start_until=NOW - 2.0)
    g = evaluate(NOW, hbs, alive, CFG, cluster=True)
    assert not g.ok and "has not shown its singletons down" in g.reasons[-1], g
