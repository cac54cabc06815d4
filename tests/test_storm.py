"""No false reset under a crash storm (issue 20.1): busy is not hung, hung is still hung.

The pure parts first (the gate's progress rule), then the whole
chain (`hachain run` against the software watchdog, `hachain.simulators.storm`) with 200
services crash-looping and a CPU hog on every core: the tickler keeps petting on time and
the gate never fails; a SIGSTOPped restarter in the middle of the storm still fails the
gate within `heartbeat_timeout`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from typing import Any

import pytest

from hachain.channels import Heartbeat
from hachain.config import WatchdogConfig
from hachain.simulators.storm import Storm, start_hogs, stop_procs
from hachain.watchdog import health

NOW = 1000.0
CFG = WatchdogConfig(heartbeat_timeout=3.0, restart_grace=10.0, max_loop_lag=2.0,
                     max_restart_rate=50.0)


def beats(lag: float, progress: Any = 7, pid: int = 42) -> dict[str, Heartbeat | None]:
    extra = {"lag": lag, "critical": {}, "restart_rate": 0.0, "progress": progress}
    return {"init": Heartbeat("init", 1, NOW - 0.1, 0.0, 1, 0, {}),
            "restarter": Heartbeat("restarter", pid, NOW - 0.1, 0.0, 1, 0, extra)}


ALIVE = {"init": True, "restarter": True}


@pytest.mark.parametrize("seen_ago,ok", [(0.0, True), (2.9, True), (3.0, True), (3.1, False),
                                         (None, False)])
def test_lag_fails_the_gate_only_without_progress(seen_ago: float | None, ok: bool) -> None:
    """A late loop that keeps handling work passes; one that made no progress for
    heartbeat_timeout (or that says nothing of progress) fails, as before."""
    progress_at = None if seen_ago is None else {"restarter": NOW - seen_ago}
    result = health.evaluate(NOW, beats(lag=3.5), ALIVE, CFG, progress_at=progress_at)
    assert result.ok == ok, result.reasons
    if not ok:
        assert result.reasons[0].startswith("restarter loop lag 3.5 s > 2 s")
        if seen_ago is not None:
            assert result.reasons[0].endswith("no progress for 3.1 s")


def test_progress_does_not_excuse_a_stale_heartbeat() -> None:
    """A stopped restarter writes no heartbeat: progress seen a moment ago changes nothing."""
    hbs = beats(lag=0.0)
    old = hbs["restarter"]
    assert old is not None
    hbs["restarter"] = Heartbeat("restarter", 42, NOW - 3.5, 0.0, 1, 0, old.extra)
    result = health.evaluate(NOW, hbs, ALIVE, CFG, progress_at={"restarter": NOW})
    assert not result.ok and "heartbeat stale" in result.reasons[0]


def test_progress_watch_remembers_when_the_counter_last_moved() -> None:
    w = health.ProgressWatch()
    w.observe("restarter", beats(0.0, progress=5)["restarter"], 10.0)
    w.observe("restarter", beats(0.0, progress=5)["restarter"], 12.0)
    assert w.at["restarter"] == 10.0  # the same count: no progress since 10
    w.observe("restarter", beats(0.0, progress=6)["restarter"], 13.0)
    assert w.at["restarter"] == 13.0
    w.observe("restarter", beats(0.0, progress=6, pid=43)["restarter"], 14.0)
    assert w.at["restarter"] == 14.0  # a new process: its count starts afresh
    for bad in ("7", True, None, 1.5):
        w.observe("restarter", beats(0.0, progress=bad)["restarter"], 15.0)
        assert "restarter" not in w.at  # judged without progress, as before counters
        w.observe("restarter", beats(0.0, progress=1)["restarter"], 15.0)
    w.observe("restarter", None, 16.0)
    assert "restarter" not in w.at


# --- the whole chain under a storm ---------------------------------------------------------

SERVICES = 200
STORM_SECONDS = 20.0
PET = 0.5
HB_INTERVAL = 0.25
HB_TIMEOUT = 2.0
TICK = min(PET, HB_INTERVAL)
MARGIN = 1.0  # the tickler's and the sampler's scheduling


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.access("/bin/false", os.X_OK), reason="needs /bin/false")
def test_storm_with_cpu_hogs_keeps_petting_and_a_stopped_restarter_still_fails() -> None:
    tmp = tempfile.mkdtemp(prefix="hachain-test-storm-")
    storm = Storm(SERVICES, 0.5, tmp, timeout=10, pet_interval=PET,
                  heartbeat_interval=HB_INTERVAL,
                  watchdog_extra=f"heartbeat_timeout = {HB_TIMEOUT}\n")
    hogs = start_hogs(os.cpu_count() or 2)
    stopped: int | None = None
    try:
        storm.start()
        storm.wait_petting(30)
        storm.start_sampling()
        # the storm runs; the sampler watches every pet, and `hachain status --json` (the
        # native front: the restarter renders it between restarts) answers throughout
        end = time.monotonic() + STORM_SECONDS
        answers = []
        while time.monotonic() < end:
            _, _, out = storm.status_cli()
            answers.append(json.loads(out) if out else None)
            time.sleep(0.5)
        assert answers and all(a is not None and len(a["services"]) == SERVICES
                               and a["verdict"]["state"] == "degraded" for a in answers), \
            [a and a["verdict"] for a in answers]
        rs = storm.heartbeat("restarter")
        assert rs is not None
        rate = max(storm.samples.rates, default=0.0)
        assert rate > SERVICES / 4, f"not a storm: {rate:.0f} restarts/s"
        gaps = storm.pet_gaps()
        print(f"\n{SERVICES} services crash-looping with {len(hogs)} CPU hogs for "
              f"{STORM_SECONDS:g} s: up to {rate:.0f} restarts/s, {storm.samples.pets} pets, "
              f"longest gap {max(gaps):.2f} s, restarter heartbeat age max "
              f"{storm.samples.max_restarter_age:.2f} s, loop lag max "
              f"{storm.samples.max_lag:.3f} s")
        assert storm.samples.pets >= STORM_SECONDS / PET / 2
        assert max(gaps) <= PET + 0.5, gaps
        assert storm.gate_failures() == 0 and storm.samples.gate_fail_ticks == 0, \
            storm.samples.fail_reasons
        assert storm.expirations == 0
        # A hung restarter in the middle of the storm: the gate fails as it always did.
        stopped = rs.pid
        t0 = time.monotonic()
        os.kill(stopped, signal.SIGSTOP)
        bound = HB_TIMEOUT + TICK + MARGIN
        deadline = t0 + bound + 5
        while storm.samples.first_fail is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert storm.samples.first_fail is not None, "the gate never failed"
        took = storm.samples.first_fail - t0
        print(f"SIGSTOP of the restarter during the storm -> gate failed after {took:.2f} s "
              f"(bound {bound:g} s): {storm.samples.fail_reasons}")
        assert took <= bound
        assert any("restarter heartbeat stale" in r and "alive: hung" in r
                   for r in storm.samples.fail_reasons)
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        stop_procs(hogs)
        storm.close()
        shutil.rmtree(tmp, ignore_errors=True)
