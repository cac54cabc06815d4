"""The tickler's pet loop never blocks on a read, and records its timing: a heartbeat that
blocks forever (a FIFO in its place) fails the gate by the read's deadline while the loop
keeps ticking; a late pet is warned about and shows in status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from hachain import channels
from tests.conftest import LIVENESS, reap, svc, wait_until
from tests.test_tickler import GRACE, HB_TIMEOUT, PET, ForgedLayers, Rig

pytestmark = pytest.mark.slow  # waits of watchdog timeouts


@pytest.fixture
def rig(tmp_path: Any) -> Any:
    r = Rig(str(tmp_path))
    r.server.start()
    yield r
    r.close()


def test_a_heartbeat_read_that_blocks_forever_fails_the_gate_by_its_deadline(rig: Rig) -> None:
    period = min(PET, 0.2)  # the tickler's tick: min(pet_interval, heartbeat_interval)
    with ForgedLayers(rig.state_dir, rig.sleeper.pid) as fl:
        rig.start_tickler()
        hb = wait_until(lambda: (h := rig.tickler_hb()) and h.extra["pets"] >= 3 and h, 10,
                        "petting")
        deadline = hb.extra["read_deadline"]
        assert 0 < deadline < HB_TIMEOUT  # the deadline fails it, not the staleness rule
        # The restarter's heartbeat becomes a FIFO nobody writes: open() blocks for ever.
        fl.beating("restarter", False)
        path = channels.heartbeat_path(rig.state_dir, "restarter")
        os.unlink(path)
        os.mkfifo(path)
        t0 = time.monotonic()
        failed = wait_until(lambda: (h := rig.tickler_hb()) and not h.extra["gate"]["ok"]
                            and h, period + deadline + 2.0, "the gate to fail")
        took = time.monotonic() - t0
        reasons = failed.extra["gate"]["reasons"]
        assert any(r.startswith(f"restarter heartbeat read did not answer within "
                                f"{deadline:g} s") for r in reasons), reasons
        print(f"FIFO -> gate failed in {took:.2f} s (deadline {deadline:g} s, tick {period:g})")
        # The loop is not stuck behind the read: it goes on beating at its period.
        seqs = []
        for _ in range(5):
            seq = failed.seq if not seqs else seqs[-1]
            h = wait_until(lambda s=seq: (x := rig.tickler_hb()) and x.seq > s and x,
                           period + deadline + 1.0, "the next tickler heartbeat")
            seqs.append(h.seq)
        assert failed.extra["pet_late_worst"] < failed.extra["pet_late_warn"]  # on time
        # Unblock the reader: a writer appears (its open returns), the FIFO goes away (a
        # retry finds no file), the writer closes (its read returns). The gate passes
        # again once the heartbeat is a file again.
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.unlink(path)
        os.close(fd)
        fl.beating("restarter", True)
        wait_until(lambda: (h := rig.tickler_hb()) and h.extra["gate"]["ok"], GRACE,
                   "the gate to pass again")


def test_late_pets_are_warned_and_the_worst_shows_in_status(tmp_path: Any) -> None:
    r = Rig(str(tmp_path))
    with open(r.config) as f:
        text = f.read()
    with open(r.config, "w") as f:  # a roomier timeout: the test stops the tickler
        f.write(text.replace("\ntimeout = 3\n", "\ntimeout = 6\n"))
    timeout, stop_for = 6, 3.5
    warn = (timeout - PET) / 2
    assert PET + stop_for < timeout and stop_for - PET > warn  # late, yet no reset
    r.server.start()
    try:
        with ForgedLayers(r.state_dir, r.sleeper.pid):
            p = r.start_tickler()
            hb = wait_until(lambda: (h := r.tickler_hb()) and h.extra["pets"] >= 3 and h, 10,
                            "petting")
            assert hb.extra["pet_late_warn"] == warn
            assert hb.extra["pet_late_worst"] < warn and hb.extra["pet_late_warnings"] == 0
            os.kill(p.pid, signal.SIGSTOP)
            try:
                time.sleep(stop_for)  # a stall of the tickler, as the kernel could impose
            finally:
                os.kill(p.pid, signal.SIGCONT)
            # (the pet itself must come before the device expires: expirations below; its
            # heartbeat may lag on a loaded host, where 5 s was passed, CI 2026-12-06)
            hb = wait_until(lambda: (h := r.tickler_hb()) and h.extra["pet_late_warnings"]
                            and h, LIVENESS, "the late pet to be counted")
            assert hb.extra["pet_late_worst"] >= stop_for - PET
            assert r.server.expirations == 0
            assert "s late (interval" in r.wait_log("warning: pet ")
            out = subprocess.run([sys.executable, "-m", "hachain.cli", "status", "--state-dir",
                                  r.state_dir, "--persist-dir", r.persist_dir],
                                 capture_output=True, text=True, timeout=30,
                                 check=False).stdout
            assert f"pets: worst lateness {hb.extra['pet_late_worst']:.3f} s since boot " \
                   f"(warning above {warn:g} s; 1 late)" in out, out
            # A tickler restarted within the boot carries the worst lateness on.
            p.kill()
            reap(p, "the tickler")
            r.start_tickler()
            h2 = wait_until(lambda: (h := r.tickler_hb()) and h.pid != p.pid and h, 10,
                            "the new tickler's heartbeat")
            assert h2.extra["pet_late_worst"] == hb.extra["pet_late_worst"]
    finally:
        r.close()


def test_pet_lateness_is_a_metric(tmp_path: Any) -> None:
    """The tickler's pet timing reaches `hachain metrics` (gauges since boot)."""
    pytest.importorskip("prometheus_client", reason="the metrics extra is not installed "
                        "(bash scripts/setup.sh --test installs it)")
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from hachain import metrics

    def gather(_state: str, _persist: str) -> dict[str, Any]:
        return {"chain": {"layers": {}, "watchdog": {
            "device": "sim", "gate": {"ok": True}, "armed": True, "petting": True,
            "pets": 9, "timeout": 3, "timeleft": 2,
            "pet_timing": {"pet_late_worst": 1.5, "pet_late_warnings": 1}}},
            "services": {}}

    reg = metrics.make_registry(str(tmp_path / "run"), str(tmp_path / "persist"), gather)
    got = {s.name: s.value for fam in text_string_to_metric_families(
        generate_latest(reg).decode()) for s in fam.samples}
    assert got["hachain_watchdog_pet_late_worst_seconds"] == 1.5
    assert got["hachain_watchdog_pet_late_warnings"] == 1


def test_a_health_check_blocked_on_a_fifo_fails_by_its_timeout_and_never_stalls_the_loop(
        restarter: Any, tmp_path: Any) -> None:
    """The restarter side of the same rule: an exec health check of a critical service
    that blocks for ever (reading a FIFO nobody writes) fails by its own timeout, the
    service goes to maintenance, and the restarter's loop lag (which gates the watchdog)
    stays small all along."""
    fifo = str(tmp_path / "stuck.fifo")
    os.mkfifo(fifo)
    timeout, failures, interval = 0.5, 2, 0.2
    r = restarter(f"""
[service.db]
command = {svc("sleep")}
critical = true
health = {{ kind = "exec", command = ["/bin/cat", "{fifo}"], interval = {interval}, timeout = {timeout}, failures = {failures} }}
intensity = {{ max_restarts = 0, window = 60, action = "maintenance" }}
""")
    r.wait_state("db", "ready")
    t0 = time.monotonic()
    lags = []

    def critical_failed() -> Any:
        hb = channels.read_heartbeat(r.state_dir, "restarter")
        if hb is None:
            return None
        lags.append(hb.extra.get("lag", 0.0))
        crit = hb.extra.get("critical", {}).get("db", {})
        return crit.get("ok") is False and crit
    crit = wait_until(critical_failed, failures * (interval + timeout) + 10,
                      "the critical service to fail its health checks")
    took = time.monotonic() - t0
    assert took >= failures * timeout, took  # not before the checks' own deadlines
    assert crit["state"] == "maintenance"
    assert max(lags) < 0.5, lags  # the loop never waited on the blocked check
    assert "timed out" in r.svc("db")["health"]["last"]
    print(f"health check on a FIFO -> critical not ok in {took:.2f} s "
          f"(timeout {timeout:g} s x {failures}); worst loop lag {max(lags):.3f} s")
