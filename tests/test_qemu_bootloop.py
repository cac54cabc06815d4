"""The reboot-loop breaker on a real kernel under QEMU with the emulated i6300esb.

A critical service that never gets ready fails the gate on every boot; the tickler stops
petting and the i6300esb resets the guest. After `boot_loop.resets` such resets the next
boot comes up in rescue: the service is held in maintenance, the gate passes, the real
device is petted and the guest stays up. The boot record on the persistent share tells
the story. One looping boot, then the rescue boot: about 90 s under TCG on this host.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hachain.simulators.qemu.chain import (
    CARDRESET,
    DEVICE,
    PERSIST_DIR,
    STATE_DIR,
    ChainSettings,
    ChainVM,
    chain_config,
)
from hachain.simulators.qemu.initramfs import BOOT_MARKER

pytestmark = pytest.mark.qemu

RESETS = 1  # one looping boot is enough here: the counting is tested on the simulated machine
READY_TIMEOUT = 3.0


@dataclass(frozen=True)
class LoopSettings(ChainSettings):
    """The shared chain settings, with a critical service that can never get ready."""

    def services(self, python: str) -> dict[str, dict[str, Any]]:
        return {
            "disk": {"command": [python, "-c", "import time; time.sleep(86400)"],
                     "ready": "notify", "ready_timeout": READY_TIMEOUT, "critical": True,
                     "intensity": {"max_restarts": 1, "window": 600,
                                   "action": "maintenance"}},
            "sleeper": {"command": ["/bin/sleep", "86403"]},
        }


def loop_config(settings: ChainSettings, python: str) -> str:
    """chain_config's text with `[chain] boot_loop`."""
    return chain_config(settings, python).replace(
        "[chain]\n", f"[chain]\nboot_loop = {{ resets = {RESETS}, window = 900, "
        "action = \"rescue\" }\n", 1)


@pytest.fixture
def loop_vm(qemu_available: None, tmp_path: Path) -> Iterator[ChainVM]:
    settings = LoopSettings()
    cvm = ChainVM(tmp_path / "vm", settings)
    cvm.config_path = cvm.vm.put_file("chain.toml", loop_config(settings, cvm.python))
    try:
        yield cvm
    finally:
        pid = cvm.vm.pid
        cvm.close()
        if pid is not None:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def boot_consoles(text: str) -> list[str]:
    """The console text of each boot, oldest first (split at the initramfs's marker)."""
    parts = re.split(rf"^.*{BOOT_MARKER} \d+.*$", text, flags=re.M)
    return parts[1:]


def silent_before_reset(cvm: ChainVM, n: int) -> tuple[float, float | None]:
    """How long boot `n`'s console had been silent when the reset came (seconds between
    the arrival of its last text and of the firmware's first line of boot n + 1), and how
    long QEMU's most-delayed thread sat runnable without a host CPU from boot n's start
    to that reset (the host's load taken from the guest; None where not measured)."""
    text = cvm.vm.console
    bios = text.rindex("SeaBIOS", 0, text.index(f"{BOOT_MARKER} {n + 1}"))
    # the firmware's output starts with ESC c, on a line of its own unless the guest's
    # last line was cut mid-way
    reset = max(text.rindex("\n", 0, bios) + 1, text.rfind("\x1bc", 0, bios))
    last = len(text[:reset].rstrip())  # the end of the guest's last output
    start = cvm.vm.time_at(text.index(f"{BOOT_MARKER} {n}"))
    waited = cvm.vm.host_wait(start, cvm.vm.time_at(reset))
    return (round(cvm.vm.time_at(reset) - cvm.vm.time_at(max(0, last - 1)), 1),
            None if waited is None else round(waited, 1))


def assert_stays_up(cvm: ChainVM, seconds: float) -> int:
    """Every boot so far ended by one WATCHDOG, and no reset for `seconds` from now (an
    observation window: neither the boot count nor the WATCHDOG count moves). The boot
    count."""
    boots = cvm.vm.boot_count
    fired = sum(e.name == "WATCHDOG" for e in cvm.vm.events)
    assert fired == boots - 1, [e.name for e in cvm.vm.events]
    time.sleep(seconds)
    assert cvm.vm.boot_count == boots
    assert sum(e.name == "WATCHDOG" for e in cvm.vm.events) == fired
    return boots


def guest_status(cvm: ChainVM, errors: list[str] | None = None) -> dict[str, Any] | None:
    """The guest's status, or None (the guest may be resetting under the probe); why it
    was None, with the boot it was asked of, goes to `errors`."""
    try:
        return cvm.status(timeout=40)
    except Exception as e:  # noqa: BLE001 - the guest may be resetting under the probe
        if errors is not None:
            errors.append(f"boot {cvm.vm.boot_count}: {type(e).__name__}: {str(e)[-300:]}")
        return None


@pytest.mark.timeout(900)
def test_a_critical_service_failing_on_every_boot_ends_in_rescue(loop_vm: ChainVM) -> None:
    cvm, s = loop_vm, loop_vm.settings
    # One looping boot: the guest boots and the layers start (TCG: up to ~20 s), the
    # service fails its readiness twice, the gate fails, the i6300esb fires after about
    # twice its heartbeat (= timeout), QEMU resets the guest.
    per_boot = 45 + 2 * READY_TIMEOUT + s.heartbeat_timeout + s.pet_interval + 2 * s.timeout + 15
    t0 = time.monotonic()
    cvm._start_qemu()
    for n in range(1, RESETS + 2):
        cvm.vm.wait_boot(n, timeout=per_boot * n - (time.monotonic() - t0))
        print(f"boot {n} at {time.monotonic() - t0:.1f} s", flush=True)
    looped = time.monotonic() - t0
    watchdog_fired = sum(e.name == "WATCHDOG" for e in cvm.vm.events)
    assert watchdog_fired >= RESETS, [e.name for e in cvm.vm.events]
    cvm.vm.wait_agent(60)
    # Waits for the rescue, not for any maintenance: a boot that is not a rescue (after a
    # starved boot that wrote no reason, below) also ends with disk in maintenance, from
    # its restart limit, and the tickler still pets until its next check sees that. Seen
    # in CI: the poll caught that moment ("maintenance: 2 restarts in 600 s"). Such a
    # boot is reset and the one after it holds disk, hence the time for one more boot.
    deadline = time.monotonic() + 2 * per_boot
    st = None
    seen: list[tuple[int, str]] = []
    errors: list[str] = []
    while time.monotonic() < deadline:
        st = guest_status(cvm, errors)
        disk = (st or {}).get("services", {}).get("disk", {})
        if disk.get("state") == "maintenance" and \
                (cvm.vm.boot_count, disk.get("reason", "")) not in seen:
            seen.append((cvm.vm.boot_count, disk.get("reason", "")))
        if st and str(disk.get("reason", "")).startswith("rescue: boot loop") and \
                st["chain"]["watchdog"].get("petting"):
            break
        time.sleep(1)
    print(f"hachain-qemu-bootloop: disk in maintenance (boot, reason): {seen}")
    assert st is not None, (f"no status from the rescue boot (boot {cvm.vm.boot_count}, "
                            f"resets {[e.name for e in cvm.vm.events]}); the last failed "
                            f"asks: {errors[-3:]}; console: {cvm.vm._tail(40)}")
    print(f"hachain-qemu-bootloop: {RESETS} resets in {looped:.1f} s, rescue on boot "
          f"{cvm.vm.boot_count}")
    assert st["services"]["disk"]["reason"].startswith("rescue: boot loop"), st["services"]
    assert st["services"]["sleeper"]["state"] == "ready"
    wd = st["chain"]["watchdog"]
    assert wd["device"] == DEVICE and wd["armed"] and wd["petting"] and wd["gate"]["ok"]
    boot = st["chain"]["boot"]
    unclean = boot["unclean_before"]
    assert boot["held"] == ["disk"] and unclean >= RESETS, boot
    assert boot["current"]["bootstatus"] == CARDRESET  # the i6300esb did the last reset
    looping = boot["history"][-1 - unclean:-1]  # oldest first, the current boot last
    assert [b["reason"] for b in looping[-RESETS:]] == ["gate-failure"] * RESETS, boot
    assert "disk" in boot["previous"]["failed_critical"], boot
    # Every boot that was reset had armed the device with its timeout first (stop 25),
    # unless the whole guest stalled. Seen in CI with both cores loaded: boot 1's
    # restarter printed "disk: stopped -> starting" and then nothing, not even the
    # sleeper's start that follows within milliseconds, for 70 s, until the i6300esb
    # reset it (the device had been opened; a guest that makes no progress for its
    # timeout is what the watchdog is for). A stalled boot: its sleeper never got
    # ready, and its console was silent for at least the timeout before the reset. Or
    # the host took the guest's CPUs for at least the timeout during that boot (seen in
    # CI at a load average of ~100: boot 1 took 64 s, its sleeper got ready, and the
    # i6300esb fired before the tickler's "armed" line was out; its vCPU threads' run
    # queue wait is what cpuwait.py measures). Stop 25's guest went on running (the
    # sleeper ready, no CPU taken) when the reset came early.
    consoles = boot_consoles(cvm.vm.console)
    armed = f"{DEVICE}: armed, timeout {s.timeout} s"
    assert len(consoles) == cvm.vm.boot_count, len(consoles)
    seen = {n: silent_before_reset(cvm, n) for n in range(1, len(consoles))}
    silent = {n: gap for n, (gap, _) in seen.items()}
    print(f"hachain-qemu-bootloop: console silent before each reset (s): {silent}; the "
          f"host's run queue took from each boot (s): "
          f"{ {n: w for n, (_, w) in seen.items()} }")
    unarmed = {n: silent[n] for n in silent if armed not in consoles[n - 1]}
    starved = {n for n, (_, w) in seen.items() if w is not None and w >= s.timeout}
    early = {n: gap for n, gap in unarmed.items() if n not in starved
             and (gap < s.timeout or "sleeper: starting -> ready" in consoles[n - 1])}
    assert not early, (f"boots {sorted(early)} were reset before the tickler armed the "
                       f"device, {early} s after their last console line: "
                       f"{cvm.vm._tail(60)}")
    if unarmed:
        print(f"hachain-qemu-bootloop: boot(s) {sorted(unarmed)} stalled before the tickler "
              f"armed the device (console silent for {unarmed} s before the reset; "
              f"starved by the host: {sorted(starved)})")
    if unclean > RESETS:
        # A TCG guest starved on a loaded host can fail its liveness first (heartbeats
        # stale for seconds) and be reset before its reason is written: that boot names
        # no culprit, the rescue after it holds nothing, fails on disk, and the next one
        # holds disk (docs/operations.md, "Rescue"). Such a boot must still have armed
        # the device with its configured timeout before its reset: a boot reset before
        # that was the defect of stop 25, checked above from the console; the record's
        # `device` is no proof either way: the writer thread that did not write the
        # reason may not have written it either.
        assert cvm.vm.persist_dir is not None
        rec = json.loads((cvm.vm.persist_dir / "boot_record.json").read_text())
        extra = {b["boot"] for b in looping[:-RESETS]}
        lost = [b for b in rec["boots"] if b["boot"] in extra]
        assert lost and all(b["reason"] == "unknown" for b in lost), rec
        print(f"hachain-qemu-bootloop: {len(lost)} more boot(s) reset with no reason "
              f"written (a starved guest; device recorded: "
              f"{[b['device'] for b in lost]})")
    # It stays up: more than two whole watchdog periods, no new reset, still petting.
    # Counted from the rescue boot on: a starved boot above was reset after the loop's
    # count was taken, by one WATCHDOG more. Every boot before this one ended so.
    assert_stays_up(cvm, 2 * s.timeout + 2)
    rc, out = cvm.vm.run([cvm.python, "-m", "hachain.cli", "status", "--state-dir",
                          STATE_DIR, "--persist-dir", PERSIST_DIR], timeout=40)
    # the current boot's number from its record: RESETS + 1, or more after a starved boot
    # (above: it was reset with no culprit, and the next one looped again)
    assert f"boot #{boot['current']['boot']}: RESCUE (boot loop): holding disk" in out, out
    assert boot["current"]["boot"] >= RESETS + 1, boot
    assert "(the watchdog reset it)" in out
