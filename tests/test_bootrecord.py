"""The boot record (hachain.bootrecord): one entry per boot, reasons that overwrite
"unknown", the loop verdict, atomic writes under SIGKILL, and the tickler writing it."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from hachain import bootrecord, channels
from tests.conftest import reap, wait_until
from tests.test_tickler import ForgedLayers, Rig

BL = {"resets": 3, "window": 900.0, "action": "rescue"}


def boot(d: str, bid: str, wall: float, reason: str | None = None,
         crit: list[str] | None = None) -> dict[str, Any]:
    e = bootrecord.begin_boot(d, bid, wall, **BL)  # type: ignore[arg-type]
    if reason is not None:
        bootrecord.set_reason(d, bid, reason, [f"{reason} in {bid}"], wall + 1, crit)
    return e


def test_one_entry_per_boot_counter_and_history_bound(tmp_path: Any) -> None:
    d = str(tmp_path)
    first = boot(d, "b1", 1000.0)
    assert first["boot"] == 1 and first["reason"] == "unknown" and first["rescue"] is None
    # a layer restarted within the boot finds the entry and adds nothing
    assert bootrecord.begin_boot(d, "b1", 1005.0)["boot"] == 1
    bootrecord.begin_boot(d, "b1", 1006.0, bootstatus=0x20, device="/dev/watchdog0")
    rec = bootrecord.read(d)
    assert rec["counter"] == 1 and len(rec["boots"]) == 1
    assert rec["boots"][0]["bootstatus"] == 0x20
    for i in range(2, 41):
        boot(d, f"b{i}", 1000.0 + 10 * i, "shutdown")
    rec = bootrecord.read(d)
    assert rec["counter"] == 40 and len(rec["boots"]) == bootrecord.HISTORY
    assert rec["boots"][-1]["boot"] == 40 and rec["boots"][0]["boot"] == 40 - 31


def test_reasons_overwrite_unknown_and_a_restart_takes_shutdown_back(tmp_path: Any) -> None:
    d = str(tmp_path)
    boot(d, "b1", 1000.0)
    bootrecord.set_reason(d, "b1", bootrecord.GATE_FAILURE, ["critical service db not ok"],
                          1001.0, ["db"])
    e = bootrecord.entry_for(bootrecord.read(d), "b1")
    assert e is not None and e["reason"] == "gate-failure" and e["failed_critical"] == ["db"]
    bootrecord.set_reason(d, "b1", bootrecord.UNKNOWN, [], 1002.0)  # the gate passed again
    e = bootrecord.entry_for(bootrecord.read(d), "b1")
    assert e is not None and e["reason"] == "unknown" and e["failed_critical"] == ["db"]
    bootrecord.set_reason(d, "b1", bootrecord.SHUTDOWN, ["orderly"], 1003.0)
    # the tickler was stopped but the boot goes on: a layer starting again says so
    assert bootrecord.begin_boot(d, "b1", 1004.0)["reason"] == "unknown"


def test_loop_verdict(tmp_path: Any) -> None:
    d = str(tmp_path)
    boot(d, "b1", 1000.0, "shutdown")
    boot(d, "b2", 1100.0, "gate-failure", ["db"])
    boot(d, "b3", 1200.0, "unknown")  # nobody said: a power cut, a kernel hang
    assert boot(d, "b4", 1300.0, "reboot-requested", ["web"])["rescue"] is None  # 2 so far
    v = boot(d, "b5", 1400.0)["rescue"]
    assert v == {"action": "rescue", "boots": [2, 3, 4], "held": ["db", "web"],
                 "reasons": ["gate-failure", "unknown", "reboot-requested"], "released": []}
    s = bootrecord.summary(d)
    assert s["unclean_before"] == 3 and s["held"] == ["db", "web"]
    lines = bootrecord.describe(s)
    assert lines[0].startswith("previous boot #4 ended: reboot-requested")
    assert "3 consecutive unclean boot(s)" in lines[0]
    assert lines[1].startswith("boot #5: RESCUE (boot loop): holding db, web; after #2 "
                               "gate-failure, #3 unknown, #4 reboot-requested")
    # read while no chain runs (status of a stopped machine): boot 5 is the one that
    # ended last, not a current boot, and nothing is held
    bootrecord.set_reason(d, "b5", bootrecord.SHUTDOWN, ["orderly"], 1500.0)
    s = bootrecord.summary(d, running=False)
    assert s["current"] is None and s["previous"]["boot"] == 5 and s["held"] == []
    assert s["unclean_before"] == 0  # it shut down cleanly
    assert bootrecord.describe(s) == ["previous boot #5 ended: shutdown: orderly; "
                                      "0 consecutive unclean boot(s)"]


def test_window_clean_boot_and_clear_end_the_loop(tmp_path: Any) -> None:
    prev = [{"boot": i, "reason": "gate-failure", "started_wall": 1000.0 + 100 * i,
             "failed_critical": ["db"]} for i in range(1, 4)]
    assert bootrecord.assess(prev, 3, 900, "rescue", 1400.0) is not None
    assert bootrecord.assess(prev, 3, 250, "rescue", 1400.0) is None  # older than window
    assert bootrecord.assess(prev, 3, 250, "rescue", 5.0) is not None  # clock went back
    clean = [*prev[:2], {"boot": 3, "reason": "shutdown", "started_wall": 1300.0}]
    assert bootrecord.assess(clean, 3, 900, "rescue", 1400.0) is None
    cleared = [prev[0], {**prev[1], "cleared": 1250.0}, prev[2]]
    assert bootrecord.unclean_run(cleared) == [prev[2], cleared[1]]
    assert bootrecord.assess(cleared, 3, 900, "rescue", 1400.0) is None


def test_a_boot_that_lasted_the_window_is_no_part_of_a_loop(tmp_path: Any) -> None:
    """A box without an RTC starts every boot at the same wall time: three power cuts a
    day apart looked like a loop. A boot whose entry says it lasted the window (by its
    own monotonic clock) ends the run: neither it nor the boots before it count."""
    same = [{"boot": i, "reason": "unknown", "started_wall": 5.0} for i in range(1, 4)]
    assert bootrecord.assess(same, 3, 900, "disarm", 5.0) is not None  # as before
    lasted = [same[0], {**same[1], "lasted": 900.0}, same[2]]
    assert bootrecord.assess(lasted, 3, 900, "disarm", 5.0) is None
    assert bootrecord.assess(lasted, 1, 900, "disarm", 5.0) is not None  # the newest one
    short = [same[0], {**same[1], "lasted": 899.0}, same[2]]  # shorter than this window
    assert bootrecord.assess(short, 3, 900, "disarm", 5.0) is not None
    d = str(tmp_path)
    e = boot(d, "b1", 5.0)
    assert isinstance(e["started_mono"], float) and "lasted" not in e
    bootrecord.mark_lasted(d, "b1", 900.0)
    bootrecord.mark_lasted(d, "b1", 60.0)  # less than said already: kept
    assert bootrecord.entry_for(bootrecord.read(d), "b1")["lasted"] == 900.0
    bootrecord.set_reason(d, "b1", bootrecord.UNKNOWN, [], 6.0)
    for i in (2, 3):
        boot(d, f"b{i}", 5.0, "unknown")
    assert boot(d, "b4", 5.0)["rescue"] is None  # b1 lasted: only b2, b3 count
    with open(os.path.join(d, bootrecord.RECORD)) as f:
        raw = json.load(f)
    raw["boots"][0]["lasted"] = "long"  # damaged: left out, said
    with open(os.path.join(d, bootrecord.RECORD), "w") as f:
        json.dump(raw, f)
    problems: list[str] = []
    assert "lasted" not in bootrecord.read(d, problems=problems)["boots"][0]
    assert problems == ["entry 1: lasted is 'long', not a finite number"], problems


@pytest.mark.slow
def test_the_tickler_says_when_a_boot_has_lasted_the_window(rig: Rig) -> None:
    with open(rig.config) as f:
        text = f.read()
    with open(rig.config, "w") as f:
        f.write(text.replace("[chain]\n", "[chain]\nboot_loop = { resets = 3, window = 1.5, "
                             'action = "rescue" }\n', 1))
    with ForgedLayers(rig.state_dir, rig.sleeper.pid):
        rig.start_tickler()
        e = wait_until(lambda: (x := bootrecord.read(rig.persist_dir)["boots"]) and
                       x[-1].get("lasted") is not None and x[-1], 30,
                       "the boot's entry to say it lasted the window")
        assert e["lasted"] == 1.5 and e["reason"] == "unknown"
        assert e["started_mono"] + 1.5 <= time.monotonic()


def test_clear_and_release(tmp_path: Any) -> None:
    d = str(tmp_path)
    for i in range(1, 4):
        boot(d, f"b{i}", 1000.0 + i, "gate-failure", ["db", "mq"])
    boot(d, "b4", 1010.0)
    bootrecord.release(d, "b4", "mq")
    assert bootrecord.summary(d)["held"] == ["db"]
    assert bootrecord.clear_loop(d, 1020.0) == ["db"]
    s = bootrecord.summary(d)
    assert s["held"] == [] and "cleared by the operator" in bootrecord.describe(s)[1]
    bootrecord.set_reason(d, "b4", "gate-failure", ["again"], 1030.0, ["db"])
    assert boot(d, "b5", 1040.0)["rescue"] is None  # only boot 4 counts after the clear


WRITER = """
import os, sys, time
from hachain import bootrecord
d = sys.argv[1]
i = 0
while True:
    i += 1
    bootrecord.begin_boot(d, f"{os.getpid()}-{i}", time.time())
    bootrecord.set_reason(d, f"{os.getpid()}-{i}", "gate-failure", ["x" * (i % 500)], time.time())
    if i == 1:
        print("writing", flush=True)
"""


@pytest.mark.slow
def test_sigkill_in_the_middle_of_writes_never_tears_the_record(tmp_path: Any) -> None:
    """A reset mid-write, as SIGKILL at random moments of a writer that writes without
    pause: the record always parses, and its counter never goes backwards."""
    d = str(tmp_path)
    rng = random.Random(15)
    last = 0
    for _ in range(30):
        p = subprocess.Popen([sys.executable, "-c", WRITER, d], stdout=subprocess.PIPE)
        try:
            assert p.stdout is not None and p.stdout.readline() == b"writing\n"
            try:
                p.wait(rng.uniform(0.0, 0.03))
            except subprocess.TimeoutExpired:
                pass
        finally:
            p.send_signal(signal.SIGKILL)
            reap(p, "the record writer")
        with open(os.path.join(d, bootrecord.RECORD), "rb") as f:
            rec = json.loads(f.read())  # never torn, never empty
        assert rec["counter"] >= last and rec["boots"][-1]["boot"] == rec["counter"]
        last = rec["counter"]
    assert last > 30  # one whole boot per run before "writing", then killed mid-way


@pytest.fixture
def rig(tmp_path: Any) -> Any:
    r = Rig(str(tmp_path), bootstatus=0x20)
    r.server.start()
    yield r
    r.close()


def test_tickler_records_boot_gate_failure_and_shutdown(rig: Rig) -> None:
    def entry() -> dict[str, Any]:
        return bootrecord.read(rig.persist_dir)["boots"][-1]

    with ForgedLayers(rig.state_dir, rig.sleeper.pid) as fl:
        p = rig.start_tickler()
        wait_until(lambda: rig.pets() >= 1, 10, "petting")
        e = wait_until(lambda: (x := entry())["bootstatus"] is not None and x, 10,
                       "the boot status in the boot record")
        assert e["reason"] == "unknown" and e["bootstatus"] == 0x20
        assert e["boot_id"] == bootrecord.current_boot_id()
        fl.restarter_extra = {**fl.restarter_extra, "critical": {
            "db": {"ok": False, "state": "maintenance", "reason": "5 restarts in 60 s"}}}
        e = wait_until(lambda: (x := entry())["reason"] == "gate-failure" and x, 10,
                       "the gate failure in the boot record")
        assert e["failed_critical"] == ["db"]
        assert "critical service db not ok: maintenance" in e["detail"][0]
        fl.restarter_extra = {**fl.restarter_extra, "critical": {}}
        wait_until(lambda: entry()["reason"] == "unknown", 10, "the reason back to unknown")
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
        assert entry()["reason"] == "shutdown"
        rig.start_tickler()  # the same boot goes on
        wait_until(lambda: entry()["reason"] == "unknown", 10, "shutdown taken back")
    assert bootrecord.read(rig.persist_dir)["counter"] == 1


def test_status_shows_previous_reason_and_unclean_count(tmp_path: Any) -> None:
    d = str(tmp_path / "persist")
    for i in range(1, 3):
        boot(d, f"b{i}", 1000.0 + i, "gate-failure", ["db"])
    boot(d, "b3", 1010.0)
    bootrecord.begin_boot(d, "b3", 1011.0, bootstatus=0x20, device="sim")
    (tmp_path / "run").mkdir()  # a state directory with no chain running in it
    p = subprocess.run([sys.executable, "-m", "hachain.cli", "status", "--state-dir",
                        str(tmp_path / "run"), "--persist-dir", d], capture_output=True,
                       text=True, timeout=30, check=False)
    assert ("previous boot #2 ended: gate-failure: gate-failure in b2; device boot status "
            "0x20 (the watchdog reset it); 2 consecutive unclean boot(s)") in p.stdout
    p = subprocess.run([sys.executable, "-m", "hachain.cli", "status", "--json", "--state-dir",
                        str(tmp_path / "run"), "--persist-dir", d], capture_output=True,
                       text=True, timeout=30, check=False)
    boots = json.loads(p.stdout)["chain"]["boot"]
    assert boots["previous"]["reason"] == "gate-failure" and boots["unclean_before"] == 2
    assert channels.read_json(os.path.join(d, bootrecord.RECORD))["counter"] == 3
