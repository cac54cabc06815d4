"""Machine checks on the simulated machine: a check that keeps failing past its repair
resets the machine through the watchdog, boot after boot; the boot-loop breaker then
holds it out of the gate in a rescue boot, and `hachain clear --boot-loop` gives it back
to the gate. A check with `action = "log"` never resets anything. Needs root and
unshare(1)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from hachain import bootrecord
from hachain.simulators.machine import SimMachine
from tests.conftest import SIM_MACHINE, heartbeat_window, sim_machine_head, svc, wait_until
from tests.test_bootloop import hachain, machines, make_machine, petting  # noqa: F401

pytestmark = SIM_MACHINE

TIMEOUT = 3
PET = 0.5
HB_TIMEOUT = 1.0
GRACE = 4.0
MAX_AGE, RETRY = 1.0, 0.5
# One boot: the layers start (within the restart grace), the file is older than
# MAX_AGE, the check fails for RETRY, its repair runs, it fails for RETRY again, the gate
# fails on the next tick and the last pet runs out. Slack for a loaded host.
PER_BOOT = GRACE + MAX_AGE + 2 * RETRY + HB_TIMEOUT + PET + TIMEOUT + 6.0


def config(alive: Path, mark: Path) -> str:
    return sim_machine_head(TIMEOUT, PET, HB_TIMEOUT, GRACE) + f"""
[service.web]
command = {svc("sleep")}

[check.alive]
kind = "file"
path = "{alive}"
max_age = {MAX_AGE}
interval = 0.2
retry_timeout = {RETRY}
repair = [["/bin/sh", "-c", "echo repaired >> {mark}"]]

[check.advisory]
kind = "command"
command = ["/bin/false"]
interval = 0.2
retry_timeout = 0
action = "log"
"""


def status(m: SimMachine) -> dict[str, Any]:
    return json.loads(hachain(m, "status", "--json").stdout)


def test_a_failing_check_resets_the_machine_until_a_rescue_holds_it(
        tmp_path: Path, machines: list[SimMachine]) -> None:  # noqa: F811
    alive, mark = tmp_path / "alive", tmp_path / "repairs"
    alive.write_text("nobody touches this file")
    m = make_machine(tmp_path, config(alive, mark))
    machines.append(m)
    resets = 3  # the default boot_loop
    m.wait_boot(resets + 1, (resets + 1) * PER_BOOT)
    assert [b["cause"] for b in m.boots[1:]] == ["watchdog"] * resets
    assert mark.read_text().split()[:resets] == ["repaired"] * resets  # one in each boot
    # each reset names the check; the boot record blames it as it blames a service
    rec = bootrecord.read(m.persist_dir)["boots"]
    for b in rec[:resets]:
        assert b["reason"] == "gate-failure", b
        assert b["failed_critical"] == ["check:alive"], b
        assert any(r.startswith("check alive failed: ") and str(alive) in r
                   for r in b["detail"]), b
    # boot 4: rescue. The check is held out of the gate: the machine stays up.
    petting(m)
    # (and the advisory check's first try answered: each boot's restarter starts it
    # afresh, and on a loaded host it may come after the other's hold, CI 2026-12-06)
    st = wait_until(lambda: (s := status(m))["checks"].get("alive", {}).get("state")
                    == "held" and s["checks"].get("advisory", {}).get("state") != "pending"
                    and s, PER_BOOT, "the check held")
    assert st["chain"]["boot"]["held"] == ["check:alive"]
    assert st["checks"]["alive"]["ok"] is True
    assert st["checks"]["advisory"]["state"] == "failed"  # action = "log": reported only
    assert st["checks"]["advisory"]["ok"] is True
    assert st["verdict"]["state"] == "degraded"
    assert "alive held" in st["verdict"]["line"] and "advisory failed" in st["verdict"]["line"]
    text = hachain(m, "status").stdout
    assert "CHECK" in text and "advisory (log)" in text, text
    heartbeat_window(lambda: m.heartbeat("tickler"), TIMEOUT + 2 * PET, "the tickler")
    assert len(m.boots) == resets + 1 and petting(m)
    # The operator fixes the cause (the file is kept fresh now) and leaves the rescue:
    # the check gates again, passes, and the machine stays up.
    stop = threading.Event()

    def keep_fresh() -> None:
        while not stop.wait(0.2):
            alive.write_text("fresh")
    toucher = threading.Thread(target=keep_fresh, daemon=True)
    toucher.start()
    try:
        p = hachain(m, "clear", "--boot-loop")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "releasing check:alive" in p.stdout
        wait_until(lambda: status(m)["checks"]["alive"]["state"] == "ok", PER_BOOT,
                   "the released check to pass")
        heartbeat_window(lambda: m.heartbeat("tickler"), TIMEOUT + 2 * PET, "the tickler")
        assert len(m.boots) == resets + 1 and petting(m)
        assert bootrecord.read(m.persist_dir)["boots"][-1]["cleared"]
    finally:
        stop.set()
        toucher.join(5)
