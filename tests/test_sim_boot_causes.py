"""The simulated machine blames each boot's end on what ended that boot.

A watchdog expiry or a power cut that comes while the machine is down between two boots
(here: in the delay after a kernel panic, which the watchdog the crashed boot armed
outlives) has no boot to kill. It used to stay pending and was taken for the cause of
the *next* boot's end: a later panic was booted as a "watchdog" reset with
WDIOF_CARDRESET, or as a "power-cut".
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from hachain.simulators.machine import SimMachine
from tests.conftest import SIM_MACHINE, sim_machine_head, wait_until

pytestmark = SIM_MACHINE

TIMEOUT = 2  # [watchdog] timeout
SLACK = 3.0  # process start-up and a late tick on a loaded 2-core machine
PANIC_DELAY = TIMEOUT + SLACK  # the crashed boot's armed watchdog expires within it

CONFIG = sim_machine_head(TIMEOUT, 0.25, 1.0) + f"""
[service.idle]
command = ["{sys.executable}", "-c", "import time; time.sleep(3600)"]
"""


@pytest.fixture
def machine(tmp_path: Any) -> Iterator[SimMachine]:
    cfg = tmp_path / "chain.toml"
    cfg.write_text(CONFIG)
    m = SimMachine(str(cfg), str(tmp_path / "m"), panic_delay=PANIC_DELAY,
                   on_event=lambda _m: None, max_boots=3)
    m.start()
    try:
        yield m
    finally:
        m.stop()


def crash_when_armed(m: SimMachine, boot: int) -> None:
    """Once boot `boot`'s tickler has armed the watchdog, PID 1 exits (init's fault hook,
    installed before init starts the tickler): a kernel panic."""
    wait_until(lambda: len(m.boots) == boot and (hb := m.heartbeat("tickler")) is not None
               and hb.extra.get("armed") and hb.extra.get("pets"), 30,
               f"boot {boot}'s tickler petting")
    pid = m.init_host_pid()
    assert pid is not None
    os.kill(pid, signal.SIGRTMIN + 1)


@pytest.mark.parametrize("between", ["watchdog-expiry", "power-cut"])
def test_what_comes_between_two_boots_is_not_the_next_boots_end(
        machine: SimMachine, between: str) -> None:
    m = machine
    crash_when_armed(m, 1)
    wait_until(lambda: any("kernel panic" in msg for _, msg in m.events), 10,
               "boot 1's panic")
    if between == "power-cut":
        m.power_cut()
    else:
        assert m.server is not None
        wait_until(lambda: m.server is not None and m.server.expirations == 1,
                   TIMEOUT + SLACK, "the crashed boot's watchdog to expire")
    assert len(m.boots) == 1, "the machine must still be down between boots 1 and 2"
    assert m.wait_boot(2, PANIC_DELAY + 10)["cause"] == "panic"
    crash_when_armed(m, 2)
    b3 = m.wait_boot(3, PANIC_DELAY + 10)
    assert (b3["cause"], b3["bootstatus"]) == ("panic", 0), m.events
