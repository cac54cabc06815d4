"""A machine check on a real kernel under QEMU with the emulated i6300esb.

A `[check.NAME]` that fails on every boot (a `file` check of a file that never exists)
fails the health gate once its repair has run: the tickler stops petting and the i6300esb
resets the guest. The boot record on the persistent share names the check
(`check:beacon`), and the boot-loop breaker makes the next boot a rescue that holds the
check out of the gate: it still runs (its repair too) and is reported `held`, the real
device is petted and the guest stays up. One looping boot (the i6300esb fired 24-39 s
after QEMU started, about one timeout after the gate failed), then the rescue boot (the
check held 40-77 s after the start), then two watchdog timeouts more: 67-105 s under
TCG on this host.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hachain.simulators.qemu.chain import (
    CARDRESET,
    DEVICE,
    PERSIST_DIR,
    ChainSettings,
    ChainVM,
)
from hachain.simulators.qemu.initramfs import BOOT_MARKER
from tests.conftest import close_vm
from tests.test_qemu_bootloop import (
    RESETS,
    assert_stays_up,
    boot_consoles,
    guest_status,
    loop_config,
)

pytestmark = pytest.mark.qemu

ABSENT = "/run/hachain-beacon-absent"  # /run is a tmpfs of the guest's own: never there
MAX_AGE = 5
INTERVAL = 1  # a multiple of ChainSettings.heartbeat_interval: no rounding up
RETRY = 1
REPAIR_TIMEOUT = 10
REPAIRS = "beacon-repairs"  # in the persistent share: each repair adds a line
CHECK_BEACON = "check:beacon"  # bootrecord.CHECK_PREFIX + the check's name


def check_config(settings: ChainSettings, python: str) -> str:
    """test_qemu_bootloop's chain.toml (with `[chain] boot_loop`) and the check."""
    mark = f"{PERSIST_DIR}/{REPAIRS}"
    repair = ('echo "$HACHAIN_CHECK $HACHAIN_CHECK_KIND $HACHAIN_CHECK_ERROR '
              f'$HACHAIN_CHECK_REPAIR/$HACHAIN_CHECK_REPAIRS" >> {mark}')
    return loop_config(settings, python) + f"""
[check.beacon]
kind = "file"
path = "{ABSENT}"
max_age = {MAX_AGE}
interval = {INTERVAL}
retry_timeout = {RETRY}
repair = [["/bin/sh", "-c", {json.dumps(repair)}]]
repair_timeout = {REPAIR_TIMEOUT}
action = "reboot"
"""


@pytest.fixture
def check_vm(qemu_available: None, tmp_path: Path) -> Iterator[ChainVM]:
    settings = ChainSettings()  # sleeper, notifier, worker: all of them get ready
    cvm = ChainVM(tmp_path / "vm", settings)
    cvm.config_path = cvm.vm.put_file("chain.toml", check_config(settings, cvm.python))
    try:
        yield cvm
    finally:
        close_vm(cvm)  # QEMU killed, reaped, and its pid gone


def test_the_config_is_valid(tmp_path: Path) -> None:
    """What the guest boots with passes `hachain check` (no QEMU needed for this)."""
    path = tmp_path / "chain.toml"
    path.write_text(check_config(ChainSettings(), sys.executable))
    p = subprocess.run([sys.executable, "-m", "hachain.cli", "check", "--config",
                        str(path)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "1 machine check(s) (1 gating)" in p.stdout, p.stdout


@pytest.mark.timeout(900)
def test_a_check_failing_on_every_boot_resets_the_guest_then_a_rescue_holds_it(
        check_vm: ChainVM) -> None:
    cvm, s = check_vm, check_vm.settings
    # One looping boot: the guest boots and the layers start (TCG: up to ~20 s); the
    # check's first try fails (no such file), it fails for RETRY, its repair runs (at
    # most REPAIR_TIMEOUT), it fails for RETRY again: failed. The restarter's next
    # heartbeat reports it, the tickler's gate fails on its next pet, the i6300esb fires
    # after about one to two heartbeats (= timeout), QEMU resets the guest.
    per_boot = (45 + INTERVAL + 2 * RETRY + REPAIR_TIMEOUT + s.heartbeat_interval
                + s.heartbeat_timeout + s.pet_interval + 2 * s.timeout + 15)
    t0 = time.monotonic()
    cvm._start_qemu()
    for n in range(1, RESETS + 2):
        cvm.vm.wait_boot(n, timeout=per_boot * n - (time.monotonic() - t0))
        print(f"hachain-qemu-check: boot {n} at {time.monotonic() - t0:.1f} s", flush=True)
    fired = [e for e in cvm.vm.events if e.name == "WATCHDOG"]
    assert len(fired) >= RESETS, [e.name for e in cvm.vm.events]
    print(f"hachain-qemu-check: first WATCHDOG at {fired[0].at - t0:.1f} s", flush=True)
    cvm.vm.wait_agent(60)
    # Waits for the rescue that holds the check. A TCG guest starved on a loaded host can
    # be reset before its reason is written (test_qemu_bootloop): the rescue after such a
    # boot holds nothing, the check fails it, and the boot after that holds the check:
    # hence the time for one more boot.
    # The services are not critical: the gate passes before they are ready, and the
    # notifier (Python under TCG, its files over 9p) may take much of its ready_timeout
    # (60 s) in a boot after a reset (CI, 2026-12-07: not all ready 17 s after the boot,
    # when the check was held already). So they are waited for too.
    deadline = time.monotonic() + 2 * per_boot
    st = None
    services = ("sleeper", "notifier", "worker")
    while time.monotonic() < deadline:
        st = guest_status(cvm)
        beacon = (st or {}).get("checks", {}).get("beacon", {})
        if st and beacon.get("state") == "held" and \
                st["chain"]["watchdog"].get("petting") and \
                all(st["services"][n]["state"] == "ready" for n in services):
            break
        time.sleep(1)
    assert st is not None, "no status from the rescue boot"
    held_at = time.monotonic() - t0
    print(f"hachain-qemu-check: check held, services ready on boot {cvm.vm.boot_count} at "
          f"{held_at:.1f} s",
          flush=True)
    beacon = st["checks"]["beacon"]
    assert beacon["state"] == "held" and beacon["ok"] is True, st["checks"]
    assert beacon["error"] == 2, beacon  # ENOENT: the file is missing
    assert ABSENT in str(beacon.get("detail")), beacon
    assert all(st["services"][n]["state"] == "ready" for n in services), \
        {n: (x["state"], x.get("reason")) for n, x in st["services"].items()}
    wd = st["chain"]["watchdog"]
    assert wd["device"] == DEVICE and wd["armed"] and wd["petting"] and wd["gate"]["ok"], wd
    boot = st["chain"]["boot"]
    unclean = boot["unclean_before"]
    assert boot["held"] == [CHECK_BEACON] and unclean >= RESETS, boot
    assert boot["current"]["bootstatus"] == CARDRESET  # the i6300esb did the last reset
    # The boot just before the rescue ended on the gate, blaming the check; an earlier
    # looping boot may have been reset with no reason written (a starved guest, above).
    looping = boot["history"][-1 - unclean:-1]  # oldest first, the current boot last
    assert looping[-1]["reason"] == "gate-failure", boot
    assert CHECK_BEACON in boot["previous"]["failed_critical"], boot
    assert all(b["reason"] in ("gate-failure", "unknown") for b in looping), boot
    assert cvm.vm.persist_dir is not None
    rec = json.loads((cvm.vm.persist_dir / "boot_record.json").read_text())
    blamed = [b for b in rec["boots"] if CHECK_BEACON in (b.get("failed_critical") or [])]
    assert blamed and blamed[-1]["reason"] == "gate-failure", rec
    assert any(d.startswith("check beacon failed: ") and ABSENT in d
               for d in blamed[-1]["detail"]), blamed[-1]
    # The console of the boot that was reset for the check: the restarter's FAILED line
    # after the repair, then the tickler's gate failure naming the check.
    consoles = boot_consoles(cvm.vm.console)
    assert len(consoles) == cvm.vm.boot_count, len(consoles)
    reset_for_it = consoles[-2]
    text = cvm.vm.console
    gate = re.compile(r"^hachain-tickler: health gate FAILED", re.M).search(
        text, text.rindex(f"{BOOT_MARKER} {cvm.vm.boot_count - 1}"))
    if gate:  # dated by its arrival on the console
        at = cvm.vm.time_at(gate.start())
        last = max(e.at for e in cvm.vm.events if e.name == "WATCHDOG")
        print(f"hachain-qemu-check: gate failed at {at - t0:.1f} s, the i6300esb fired "
              f"{last - at:.1f} s later (timeout {s.timeout} s)", flush=True)
    assert re.search(r"check beacon: FAILED after 1 repair\(s\)", reset_for_it), \
        reset_for_it[-4000:]
    assert re.search(r"health gate FAILED, not petting: .*check beacon failed: ",
                     reset_for_it), reset_for_it[-4000:]
    assert f"{DEVICE}: armed, timeout {s.timeout} s" in reset_for_it, reset_for_it[-4000:]
    # The rescue holds it out of the gate, but it still runs: its repair runs there too.
    # It is `held` from its first failing try on, so its repair and the FAILED line that
    # follows it (RETRY later) may still be to come.
    cvm.vm.wait_for(r"check beacon: FAILED after 1 repair\(s\), .*; held by the rescue boot",
                    timeout=2 * RETRY + REPAIR_TIMEOUT + 2 * INTERVAL + 30,
                    since=cvm.vm.console.rindex(f"{BOOT_MARKER} {cvm.vm.boot_count}"))
    # Each boot that reached its check ran the repair once, with the failed try's number.
    repairs = (cvm.vm.persist_dir / REPAIRS).read_text().splitlines()
    assert len(repairs) >= RESETS + 1 and set(repairs) == {"beacon file 2 1/1"}, \
        (repairs, cvm.read(f"{PERSIST_DIR}/{REPAIRS}"),
         re.findall(r"^.*(?:check beacon: |QEMU-BOOT).*$", cvm.vm.console, re.M))
    # It stays up: more than two whole watchdog periods, no new reset, still petting.
    boots = assert_stays_up(cvm, 2 * s.timeout + 2)
    after = cvm.status(timeout=40)
    assert after["checks"]["beacon"]["state"] == "held", after["checks"]
    assert after["chain"]["watchdog"]["petting"] and after["chain"]["watchdog"]["gate"]["ok"]
    assert (after["chain"]["watchdog"].get("pets") or 0) > (wd.get("pets") or 0), \
        (wd, after["chain"]["watchdog"])
    rc, out = cvm.cli("status", timeout=40)
    assert f"boot #{boot['current']['boot']}: RESCUE (boot loop): holding {CHECK_BEACON}" \
        in out, out
    assert "(the watchdog reset it)" in out, out
    print(f"hachain-qemu-check: {boots - 1} reset(s), rescue on boot {boots}, stayed up "
          f"{2 * s.timeout + 2} s more; repairs: {len(repairs)}", flush=True)
