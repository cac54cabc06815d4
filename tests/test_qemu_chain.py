"""The whole chain as PID 1 of a real kernel under QEMU, with the emulated hardware watchdog.

Issue 6's scenarios (see docs/qemu.md, "The chain on a real kernel"): hachain-init is the
guest's PID 1 and runs the real restarter (three services, one `ready = "notify"`) and
the real tickler on `/dev/watchdog0`. Faults are injected from inside the guest through
the guest agent; readiness is what `hachain status --json` reports. Each scenario prints
its reconvergence time (`pytest -s`) and records it as a junit property.

Without QEMU, a kernel or busybox these skip with the harness's one-line reason, except
in CI (`CI=true`), where that is a failure. The boot, SIGKILL and init-crash scenarios
and restarter hang scenarios share one i6300esb machine (a class-scoped fixture, closed
when the class is done; three boots); softdog gets its own. About two and a half
minutes on two idle cores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hachain.simulators.qemu.chain import (
    CARDRESET,
    DEVICE,
    ChainSettings,
    ChainVM,
    Measurement,
    scenario_boot,
    scenario_hang_restarter,
    scenario_init_exit,
    scenario_kill_restarter,
)
from tests.conftest import LIVENESS, close_vm, wait_until

pytestmark = pytest.mark.qemu

RecordProperty = Callable[[str, object], None]


@pytest.fixture(scope="class")
def shared(qemu_available: None,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ChainVM, float]]:
    """One i6300esb machine with the chain up, for the scenarios that can share a boot.

    The device at 20 s, as the QEMU campaign's and the memory tests': twice in CI a TCG
    guest starved by the slow lane's other workers went 10 s without a pet right after
    the tickler armed the device, and was reset with no gate failure. The timeout is this
    machine's set-up; the hang scenario's bound is computed from it."""
    cvm = ChainVM(tmp_path_factory.mktemp("chain-shared"), ChainSettings(timeout=20))
    try:
        boot_s = cvm.boot()
        yield cvm, boot_s
    finally:
        close_vm(cvm)


def _report(record_property: RecordProperty, m: Measurement) -> None:
    """Print the scenario's line and keep its times in the junit report."""
    print(m.line())
    if m.reconverge_s is not None:
        record_property(f"{m.scenario}_reconverge_s", m.reconverge_s)
    for key, value in m.notes.items():
        if isinstance(value, float):
            record_property(f"{m.scenario}_{key}_s", value)


def _assert_boot(m: Measurement, timeout: int = 10) -> None:
    """Every service ready, the tickler holding the real device and petting it."""
    assert m.status is not None
    services = m.status["services"]
    assert {n: s["state"] for n, s in services.items()} == {
        "sleeper": "ready", "notifier": "ready", "worker": "ready"}
    assert services["notifier"]["status_text"] == "serving"  # READY=1 came with STATUS=
    wd = m.status["chain"]["watchdog"]
    assert wd["device"] == DEVICE and wd["armed"] and wd["petting"] and wd["gate"]["ok"]
    assert wd["timeout"] == timeout
    first, second = (int(x) for x in m.notes["pets"].split("->"))
    assert second > first
    assert m.boots == 1


class TestSharedMachine:
    """Boot, restarter SIGKILL, init's crash hook, restarter hang: in that order, one guest.

    Each fault scenario first waits for the chain to be ready, so a scenario does not
    depend on how the previous one ended, only on the machine being up. The hang comes
    last: the records it checks (gate.json, last_boot.json) are then its own, since
    init's crash panics the kernel before the tickler could write anything.
    """

    def test_boot_chain_ready_and_petting_i6300esb(
            self, shared: tuple[ChainVM, float], record_property: RecordProperty) -> None:
        cvm, boot_s = shared
        m = scenario_boot(cvm, boot_s)
        _report(record_property, m)
        _assert_boot(m, timeout=cvm.settings.timeout)
        assert m.status is not None
        assert m.status["chain"]["last_boot"]["cause"] == "normal"
        assert cvm.read("/sys/class/watchdog/watchdog0/bootstatus") == "0"
        assert m.status["chain"]["layers"]["init"]["extra"]["pid1"] is True
        # the idle ticks go through the compiled tick on the real device too (its
        # WDIOC_KEEPALIVE, hachain/watchdog/_tick.c), and the pets go on
        def compiled_ticks() -> dict[str, Any] | None:
            st = cvm.status()
            extra = st["chain"]["layers"]["tickler"].get("extra") or {}
            return st if (extra.get("compiled_ticks") or 0) > 0 else None
        st = wait_until(compiled_ticks, LIVENESS, "compiled ticks in the guest", 1.0)
        pets = st["chain"]["watchdog"]["pets"]
        wait_until(lambda: cvm.status()["chain"]["watchdog"]["pets"] > pets, LIVENESS,
                   "pets after compiled ticks", 1.0)
        assert cvm.status()["chain"]["watchdog"]["petting"]
        # issue 21.7: `watchdog info` on the real i6300esb, from sysfs only (the tickler
        # holds the device: info must not open it), with wdctl's flag table
        rc, out = cvm.vm.run([cvm.python, "-m", "hachain.cli", "watchdog", "info"], timeout=30)
        assert rc == 0, out
        assert "Identity:      i6300ESB timer" in out and "State:         active" in out
        assert "Options:       unknown: this kernel's sysfs does not offer them" in out \
            or "KEEPALIVEPING" in out, out
        assert "FLAG" in out and "STATUS BOOT-STATUS" in out, out
        assert "not opened" in out

    def test_sigkill_restarter_readopts_without_reboot(
            self, shared: tuple[ChainVM, float], record_property: RecordProperty) -> None:
        cvm, _ = shared
        resets = sum(e.name == "RESET" for e in cvm.vm.events)
        m = scenario_kill_restarter(cvm)
        _report(record_property, m)
        assert m.status is not None
        restarter = m.status["chain"]["layers"]["restarter"]
        assert restarter["pid"] != m.details["restarter_before"]
        assert restarter["restarts"] == 1  # init restarted it once
        assert m.details["pids_after"] == m.details["pids_before"]  # re-adopted
        assert all(len(pids) == 1 for pids in m.details["procs"].values()), m.details["procs"]
        assert all(s["restarts"] == 0 for s in m.status["services"].values())
        assert cvm.vm.boot_count == 1
        assert sum(e.name == "RESET" for e in cvm.vm.events) == resets
        assert m.host_wait is not None, "no run-queue wait measured for QEMU"
        assert m.reconverge_s is not None and m.reconverge_s < cvm.bound(20, m)

    def test_init_crash_hook_panics_and_the_chain_comes_back(
            self, shared: tuple[ChainVM, float], record_property: RecordProperty) -> None:
        cvm, _ = shared
        m = scenario_init_exit(cvm)
        _report(record_property, m)
        assert m.notes["panic"], "no kernel panic on the console after init exited"
        assert m.boots == 2
        assert m.status is not None
        assert all(s["state"] == "ready" for s in m.status["services"].values())
        assert m.status["chain"]["watchdog"]["petting"]
        # panic=1: the kernel reboots by itself (QMP RESET), before the watchdog could fire
        assert "to_watchdog_fired" not in m.notes
        assert m.notes["to_reset"] < cvm.settings.timeout
        assert m.reconverge_s is not None and m.reconverge_s < cvm.bound(45, m)

    def test_hang_restarter_watchdog_resets_and_records_why(
            self, shared: tuple[ChainVM, float], record_property: RecordProperty) -> None:
        cvm, _ = shared
        boots = cvm.vm.boot_count
        m = scenario_hang_restarter(cvm)
        _report(record_property, m)
        s = cvm.settings
        # the tickler's bound: heartbeat_timeout + pet_interval + timeout (+ a tick and slack
        # for TCG); QEMU's i6300esb fires about one heartbeat after the last pet
        assert m.notes["to_watchdog_fired"] < s.heartbeat_timeout + s.pet_interval + s.timeout \
            + cvm.bound(3, m)
        assert m.boots == boots + 1
        assert m.notes["bootstatus"] == str(CARDRESET)
        assert m.status is not None
        chain = m.status["chain"]
        assert chain["last_boot"]["cause"] == "watchdog reset"
        assert chain["last_boot"]["bootstatus"] == CARDRESET
        reasons = chain["gate_failure"]["reasons"]
        assert any(r.startswith("restarter heartbeat stale") and "hung" in r for r in reasons), \
            reasons
        assert chain["last_boot"]["last_gate_failure"]["reasons"] == reasons
        assert all(sv["state"] == "ready" for sv in m.status["services"].values())
        assert m.reconverge_s is not None and m.reconverge_s < cvm.bound(60, m)


def test_boot_chain_ready_and_petting_softdog(
        chain_vm: Callable[..., ChainVM], record_property: RecordProperty) -> None:
    # 20 s, as the QEMU campaign's: a TCG guest starved by the slow lane's other workers
    # went 10 s without a pet right after the tickler armed softdog (CI, 2026-12-05:
    # reset on the first boot, no gate failure recorded). The emulated device's timeout
    # is this test's set-up, not a bound of the chain.
    cvm = chain_vm(ChainSettings(watchdog="softdog", timeout=20))
    m = scenario_boot(cvm, cvm.boot())
    m.scenario = "softdog-boot"
    _report(record_property, m)
    _assert_boot(m, timeout=20)
    assert m.status is not None
    assert m.status["chain"]["watchdog"]["timeleft"] is None  # not on this kernel
