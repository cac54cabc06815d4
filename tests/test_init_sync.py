"""PID 1's last act: a sync that never returns does not keep the box from rebooting.

By then the tickler has disarmed the watchdog, so nothing else would ever reset a box
whose sync hangs (a dead NFS server, a disk in error recovery). A hanging sync cannot
be made here on purpose, and reboot(2) must not run: both are stood in for; the real
sync and reboot(2) run with init as PID 1 of a PID namespace (tests/test_init.py).
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from hachain.init import main as init_main


@pytest.fixture
def reboots(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(init_main, "libc_call",
                        lambda name, arg: calls.append((name, arg.value)) or 0)
    return calls


def test_a_sync_that_hangs_gets_sync_limit_then_the_reboot_comes(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
        reboots: list[tuple[str, int]]) -> None:
    stuck = threading.Event()
    monkeypatch.setattr(os, "sync", lambda: stuck.wait(60))
    monkeypatch.setattr(init_main, "SYNC_LIMIT", 0.5)
    try:
        t = time.monotonic()
        init_main.final_reboot(init_main.RB_AUTOBOOT)
        took = time.monotonic() - t
    finally:
        stuck.set()  # let the stand-in sync thread end
    assert reboots == [("reboot", init_main.RB_AUTOBOOT)]
    assert took >= 0.5
    assert "sync did not return within 0.5 s: reboot without it" in capfd.readouterr().err


def test_a_sync_that_returns_is_waited_for_and_not_reported(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
        reboots: list[tuple[str, int]]) -> None:
    synced: list[bool] = []
    monkeypatch.setattr(os, "sync", lambda: (time.sleep(0.2), synced.append(True)))
    init_main.final_reboot(init_main.RB_POWER_OFF)
    assert synced == [True]  # the reboot came after the sync, not before
    assert reboots == [("reboot", init_main.RB_POWER_OFF)]
    assert "did not return" not in capfd.readouterr().err
