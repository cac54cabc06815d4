"""The reboot-loop breaker on the simulated machine: a critical service that never gets
ready resets the machine on every boot; after `boot_loop.resets` such resets the machine
comes up in rescue (or disarmed) and stays up. Needs root and unshare(1)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import bootrecord, channels
from hachain.simulators.machine import SimMachine
from hachain.watchdog.device import sim_attributes
from tests.conftest import SIM_MACHINE, heartbeat_window, sim_machine_head, svc, wait_until

pytestmark = SIM_MACHINE

TIMEOUT = 3
PET = 0.5
HB_TIMEOUT = 1.0
GRACE = 4.0
READY_TIMEOUT = 0.5
# One looping boot: the layers start (within the restart grace), the service fails its
# readiness twice (intensity 1) and is held, the gate fails on the next tick and the
# last pet runs out. The slack is for Python starting three processes on a loaded box.
PER_BOOT = GRACE + 2 * (READY_TIMEOUT + 0.1) + HB_TIMEOUT + PET + TIMEOUT + 5.0


def config(boot_loop: str = "") -> str:
    return sim_machine_head(TIMEOUT, PET, HB_TIMEOUT, GRACE, boot_loop) + f"""
[service.disk]
command = {svc("sleep")}
ready = "notify"
ready_timeout = {READY_TIMEOUT}
critical = true
backoff = {{ initial = 0.1, factor = 2.0, max = 1 }}
intensity = {{ max_restarts = 1, window = 60, action = "maintenance" }}

[service.web]
command = {svc("sleep")}
"""


def make_machine(tmp: Any, text: str) -> SimMachine:
    cfg = tmp / "chain.toml"
    cfg.write_text(text)
    m = SimMachine(str(cfg), str(tmp / "m"), panic_delay=0.2, on_event=lambda _m: None)
    m.start()
    return m


@pytest.fixture
def machines() -> Iterator[list[SimMachine]]:
    made: list[SimMachine] = []
    yield made
    for m in made:
        init = m.init_host_pid()
        m.stop()
        assert init is None or not channels.pid_alive(init), "the machine outlived stop()"


def hachain(m: SimMachine, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hachain.cli", *args, "--state-dir",
                           m.state_dir, "--persist-dir", m.persist_dir],
                          capture_output=True, text=True, timeout=30, check=False)


def status(m: SimMachine) -> dict[str, Any]:
    return json.loads(hachain(m, "status", "--json").stdout)


def petting(m: SimMachine) -> Any:
    return wait_until(lambda: (h := m.heartbeat("tickler")) and h.extra["pets"] >= 2
                      and h.extra["gate"]["ok"] and h, PER_BOOT, "the tickler to pet")


def test_boot_loop_ends_in_rescue_stays_up_and_clear_leaves_it(
        tmp_path: Any, machines: list[SimMachine]) -> None:
    m = make_machine(tmp_path, config())  # no boot_loop key: the default breaks the loop
    machines.append(m)
    resets = 3
    m.wait_boot(resets + 1, (resets + 1) * PER_BOOT)
    # boot 4: rescue. The layers run, the watchdog is petted, the failing critical
    # service is held in maintenance, the other service runs.
    petting(m)
    st = wait_until(lambda: (s := status(m))["services"].get("disk", {}).get("state")
                    == "maintenance" and s["services"]["web"]["state"] == "ready" and s,
                    PER_BOOT, "disk held, web ready")
    assert st["services"]["disk"]["reason"].startswith("rescue: boot loop")
    boot = st["chain"]["boot"]
    assert boot["counter"] == len(m.boots) == resets + 1
    assert boot["held"] == ["disk"] and boot["unclean_before"] == resets
    assert [b["reason"] for b in boot["history"][:resets]] == ["gate-failure"] * resets
    assert all(b["failed_critical"] == ["disk"] for b in boot["history"][:resets])
    text = hachain(m, "status").stdout
    assert "boot #4: RESCUE (boot loop): holding disk; after #1 gate-failure, #2 " \
           "gate-failure, #3 gate-failure; hachain clear --boot-loop to leave" in text
    assert "previous boot #3 ended: gate-failure: critical service disk not ok" in text
    # It stays up: longer than a whole watchdog timeout, and the gate keeps passing.
    heartbeat_window(lambda: m.heartbeat("tickler"), TIMEOUT + 2 * PET, "the tickler")
    assert len(m.boots) == resets + 1 and petting(m)
    # The operator clears the loop: disk runs (and gates) again, fails again, and the
    # machine resets; that next boot is not rescue (only the cleared boot counts).
    p = hachain(m, "clear", "--boot-loop")
    assert p.returncode == 0, p.stderr
    assert "boot loop cleared" in p.stdout and "releasing disk" in p.stdout
    nxt = m.wait_boot(resets + 2, PER_BOOT)
    assert nxt["cause"] == "watchdog"
    wait_until(lambda: (s := status(m))["services"].get("disk", {}).get("state")
               in ("starting", "backoff", "maintenance") and s, PER_BOOT, "disk started")
    rec = bootrecord.read(m.persist_dir)["boots"]
    assert rec[-2]["cleared"] and rec[-2]["reason"] == "gate-failure"
    assert rec[-1]["rescue"] is None


def test_disarm_action_closes_the_watchdog_and_the_machine_stays_up(
        tmp_path: Any, machines: list[SimMachine]) -> None:
    m = make_machine(tmp_path, config(
        'boot_loop = { resets = 1, window = 900, action = "disarm" }'))
    machines.append(m)
    m.wait_boot(2, 2 * PER_BOOT)
    hb = wait_until(lambda: (h := m.heartbeat("tickler")) and h.extra.get("disarmed") and h,
                    PER_BOOT, "the tickler to disarm")
    assert not hb.extra["armed"] and "boot loop" in hb.extra["disarmed"]
    assert sim_attributes(m.socket_path)["state"] == "inactive"
    # the gate fails (disk is held) but nothing resets
    heartbeat_window(lambda: m.heartbeat("tickler"), TIMEOUT + 2 * PET, "the tickler")
    assert len(m.boots) == 2
    assert "BOOT LOOP: watchdog disarmed for an operator" in hachain(m, "status").stdout
