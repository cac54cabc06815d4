"""`hachain chaos --qemu`: a short seeded fault campaign on the real chain in a QEMU guest.

The fast tests check the schedule and the reboot verdicts without QEMU. The campaign
test (marker `qemu`) runs seed 1876's five faults (leak-service: the notifier's leak ends
inside its memory_max; kill-restarter; kill-tickler; oom-machine: the worker eats the
guest's memory until the kernel's OOM killer takes it; kernel-crash) on one i6300esb
guest through the real command line (one reboot kind, four non-reboot kinds), and
checks the exit status, the table and report.json. A second one sends Ctrl-C to a 20-fault campaign
after its first fault and wants a partial report, the FAIL verdict and no QEMU left. About 80 s on this 2-core host (one cold boot
and one panic reboot). Without QEMU, a kernel or busybox it skips with the harness's
one-line reason, except in CI (`CI=true`), where that is a failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hachain.simulators.qemu.campaign import (
    QKINDS,
    CampaignSettings,
    _reboot_problems,
    convergence_bound,
    schedule,
)
from hachain.simulators.qemu.chain import chain_config
from tests.conftest import reap, wait_until

SEED, FAULTS = 1876, 5  # leak-service, kill-restarter, kill-tickler, oom-machine, kernel-crash


def test_schedule_is_pure_weighted_and_a_prefix() -> None:
    kinds = sorted(QKINDS)
    long = schedule(1, 40, kinds)
    assert long == schedule(1, 40, kinds)
    assert schedule(1, 7, kinds) == long[:7]
    assert [f.index for f in long] == list(range(40))
    assert all(f.target in QKINDS[f.kind].targets for f in long)
    assert {f.kind for f in schedule(1, 5, ["kill-tickler"])} == {"kill-tickler"}
    # the test's seed: one reboot kind among non-reboot kinds
    short = schedule(SEED, FAULTS, kinds)
    assert [f.kind for f in short] == ["leak-service", "kill-restarter", "kill-tickler",
                                       "oom-machine", "kernel-crash"]


def test_reboot_verdicts() -> None:
    assert _reboot_problems("watchdog", "watchdog", "32", "watchdog reset", False) == []
    assert _reboot_problems("panic", "panic", "0", "normal", True) == []
    bad = _reboot_problems("watchdog", "panic", "0", "normal", False)
    assert len(bad) == 3 and "bootstatus 0 (expected 32)" in bad
    bad = _reboot_problems("panic", "watchdog", "32", "watchdog reset", False)
    assert len(bad) == 3


def test_campaign_config_has_a_service_watchdog_and_bounds() -> None:
    s = CampaignSettings()
    text = chain_config(s, "/usr/bin/python3")
    assert "watchdog_sec = 3.0" in text and "intensity.max_restarts = 100" in text
    assert convergence_bound("hang-restarter", s) > convergence_bound("kill-service", s)


@pytest.mark.qemu
@pytest.mark.timeout(660)
def test_short_qemu_campaign(qemu_available: None, tmp_path: Path) -> None:
    report = tmp_path / "rep"
    proc = subprocess.run(
        [sys.executable, "-m", "hachain.cli", "chaos", "--qemu", "--faults", str(FAULTS),
         "--seed", str(SEED), "--report", str(report), "--dir", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=600)  # ~80 s idle; bounds scale inside
    print(proc.stdout, proc.stderr, sep="\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| kernel-crash | 1 | 0 |" in proc.stdout
    rep = json.loads((report / "report.json").read_text())
    assert (report / "report.html").exists()
    assert rep["ok"] and rep["seed"] == SEED and rep["failures"] == 0
    kinds = ["leak-service", "kill-restarter", "kill-tickler", "oom-machine", "kernel-crash"]
    assert [r["kind"] for r in rep["results"]] == kinds
    assert rep["boots"] == 2  # the cold boot and the panic reboot, nothing else
    assert rep["machine_resets"] == 0
    for r in rep["results"]:
        # the bound, plus what the host took from QEMU during the fault (cpuwait.py)
        assert r["host_wait"] is not None and r["host_wait"] >= 0, r
        assert r["converge"] is not None and 0 < r["converge"] <= r["bound"] + r["host_wait"], r
        assert r["reboot"] == ("panic" if r["kind"] == "kernel-crash" else None), r
    assert set(rep["summary"]) == set(kinds)


def _children(pid: int) -> dict[int, str]:
    """{pid: start time} of the processes whose parent is `pid` (from /proc)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out[int(d)] = fields[19]
    return out


def _alive(pid: int, start: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] == start
    except OSError:
        return False


@pytest.mark.qemu
@pytest.mark.timeout(500)
def test_ctrl_c_mid_campaign_writes_a_partial_report_and_leaves_no_qemu(
        qemu_available: None, tmp_path: Path) -> None:
    report, errf = tmp_path / "rep", tmp_path / "stderr"
    with open(errf, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hachain.cli", "chaos", "--qemu", "--faults", "20",
             "--seed", str(SEED), "--report", str(report), "--dir", str(tmp_path / "w")],
            stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    kids: dict[int, str] = {}
    try:
        # the first fault (clock-step) judged: boot (≤ 150 s) plus its bound, scaled
        wait_until(lambda: "chaos: 1/" in errf.read_text(), 400, "the first fault judged")
        kids = _children(proc.pid)
        assert any("qemu" in Path(f"/proc/{p}/comm").read_text() for p in kids), kids
        os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: the whole group
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # only when the test already failed
            os.killpg(proc.pid, signal.SIGKILL)
            reap(proc, "the campaign")
        for pid, start in kids.items():
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)
    err_text = errf.read_text()
    assert proc.returncode == 1, err_text[-3000:]
    assert not [p for p, s in kids.items() if _alive(p, s)], "QEMU outlived the campaign"
    rep = json.loads((report / "report.json").read_text())
    assert rep["interrupted"] == "SIGINT" and not rep["ok"]
    assert 1 <= len(rep["results"]) < 20 and rep["faults"] == 20
    assert "interrupted by SIGINT" in (report / "report.html").read_text()
    verdict = out.splitlines()[-1]
    assert verdict.startswith(f"chaos: FAIL: seed {SEED}: interrupted by SIGINT after "
                              f"{len(rep['results'])} of 20 fault(s)"), out
    assert "Traceback" not in err_text
