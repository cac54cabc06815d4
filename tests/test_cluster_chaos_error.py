"""How a failure of the host ends `hachain chaos --cluster`: one line on stderr naming
what failed and where, everything the campaign made removed (machines, etcd members,
namespaces, veths, cgroups), report.json with the faults judged so far and that line as
`"error"` (summary `ok` false), a FAIL verdict as the last line, exit 1, no traceback.

The failures are real, made through the harness's `HACHAIN_ETCD`: an "etcd" that exits
at once (the campaign fails while starting, after its namespaces and veths were made:
root and ip(8) only, under a second), and one that runs the real etcd but refuses to
start a member a second time (a kill-etcd-member fault's restart fails mid-campaign,
with the three machines running: slow, about 7 s). A path too long for the machines'
sockets fails before anything is made; a bug in the campaign still ends in its
traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hachain.simulators import cluster_chaos
from tests.conftest import KILLED_BOUND, reap
from tests.test_cluster_chaos_stop import (
    ETCD_START,
    STOP_BOUND,
    _alive,
    _cmdline,
    _descendants,
    _first_fault_bound,
    _leftovers,
    cluster,
)

NEEDS_NETNS = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs ip(8) (iproute2)"),
]
SEED = 4
# Campaign.start with an etcd that exits at once: the namespaces (a few dozen `ip`
# runs), the failing members, the tear-down; each `ip` is bounded by 30 s
START_FAIL_BOUND = ETCD_START + 60.0


def _needs_netns(test: Any) -> Any:
    for mark in NEEDS_NETNS:
        test = mark(test)
    return test


def _campaign(tmp: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes],
                                                                    Path, Path]:
    outf, errf = tmp / "stdout", tmp / "stderr"
    with open(outf, "wb") as o, open(errf, "wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hachain.cli", "chaos", "--cluster", "--seed", str(SEED),
             "--report", str(tmp / "report"), "--dir", str(tmp / "work"), *args],
            stdout=o, stderr=e, start_new_session=True, env={**os.environ, **env})
    return proc, outf, errf


def _mentioning(path: str) -> dict[int, str]:
    """{pid: start time} of the processes whose command line names `path` (this test's
    own directory: only the campaign's processes can)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and any(path in a for a in _cmdline(int(d))):
            try:
                out[int(d)] = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[19]
            except (OSError, IndexError):
                pass
    return out


def _clean_up_after_a_failed_test(proc: subprocess.Popen[bytes], kids: dict[int, str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        reap(proc, "the campaign")
    for pid, start in kids.items():
        if _alive(pid, start):
            os.kill(pid, signal.SIGKILL)
    for what in _leftovers(proc.pid, None):
        kind, _, n = what.partition(" ")
        if kind in ("link", "netns"):
            subprocess.run(["ip", *(["link"] if kind == "link" else ["netns"]), "del", n],
                           capture_output=True, timeout=30)


def _ended_by_error(tmp: Path, work: str, rc: int, out: str, err: str, faults: int,
                    kinds: str) -> tuple[str, dict[str, Any]]:
    """The error line, once the common ending is checked; and the report."""
    assert rc == 1, out[-2000:] + err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    path = str(tmp / "report" / "report.json")
    lines = err.splitlines()
    assert lines[0] == (f"chaos: --cluster seed {SEED}, {faults} fault(s), kinds {kinds}; "
                        f"work dir {work}")
    errors = [ln for ln in lines if ln.startswith("hachain chaos --cluster: ")]
    assert len(errors) == 1 and errors[0].endswith(f" (seed {SEED})"), err[-3000:]
    rep = json.loads(Path(path).read_text())
    assert rep["error"] == errors[0] and rep["interrupted"] is None
    assert rep["summary"]["ok"] is False and rep["work_dir"] == work
    n = len(rep["faults"])
    assert rep["summary"]["faults"] == n < faults
    failed = sum(not r["ok"] for r in rep["faults"])
    assert out.splitlines()[-1] == (f"FAIL: stopped by an error after {n} of {faults} faults, "
                                    f"{failed} with a broken invariant; report in {path}")
    return errors[0], rep


@_needs_netns
@pytest.mark.timeout(int(START_FAIL_BOUND + 30))
def test_an_etcd_that_cannot_start_ends_the_campaign_with_one_line_and_a_report(
        tmp_path: Path) -> None:
    fake = tmp_path / "etcd"
    fake.write_text('#!/bin/sh\necho "fake etcd: refusing to start $*" >&2\nexit 3\n')
    fake.chmod(0o755)
    work = str(tmp_path / "work")
    proc, outf, errf = _campaign(tmp_path, {"HACHAIN_ETCD": str(fake)}, "--faults", "3",
                                 "--kinds", "kill-layer")
    try:
        rc = proc.wait(START_FAIL_BOUND)
        left = _leftovers(proc.pid, work)
        procs = _mentioning(work)
    finally:
        _clean_up_after_a_failed_test(proc, _mentioning(work))
    line, rep = _ended_by_error(tmp_path, work, rc, outf.read_text(), errf.read_text(), 3,
                                "kill-layer")
    assert re.fullmatch(rf"hachain chaos --cluster: etcd member (m[012]) exited with status "
                        rf"3 \(log: {work}/etcd/\1\.log: fake etcd: refusing to start "
                        rf"--name \1 .*\) \(seed {SEED}\)", line), line
    assert rep["faults"] == []
    # the namespaces and veths were made before etcd started (each member was told to
    # listen on its node's veth address), and are gone; no process of it is left
    log = Path(work, "etcd", "m0.log").read_text()
    assert re.search(r"--listen-client-urls http://127\.0\.0\.1:\d+,http://10\.", log), log
    assert left == [] and procs == {}


def test_a_work_dir_too_deep_for_the_sockets_ends_before_anything_is_made(
        tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    proc = subprocess.run(
        [sys.executable, "-m", "hachain.cli", "chaos", "--cluster", "--faults", "2",
         "--seed", str(SEED), "--kinds", "kill-layer", "--report", str(tmp_path / "report"),
         "--dir", str(deep)], capture_output=True, text=True, timeout=60)
    line, rep = _ended_by_error(tmp_path, str(deep), proc.returncode, proc.stdout,
                                proc.stderr, 2, "kill-layer")
    sock = f"{deep}/n0/run/hachain/control.sock"
    assert line == (f"hachain chaos --cluster: {sock}: {len(sock.encode())} bytes, too long "
                    f"for a Unix socket (107); give --dir a shorter path (seed {SEED})")
    assert rep["faults"] == [] and os.listdir(deep) == []  # nothing made in it


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs ip(8) (iproute2)")
def test_a_bug_in_the_campaign_still_shows_its_traceback(tmp_path: Path,
                                                         monkeypatch: Any) -> None:
    def bug(self: cluster_chaos.Campaign) -> None:
        raise TypeError("a bug")
    monkeypatch.setattr(cluster_chaos.Campaign, "start", bug)
    with pytest.raises(TypeError, match="a bug"):
        cluster_chaos.run_campaign(1, SEED, str(tmp_path / "report"), ["kill-layer"],
                                   "/x/svc.py", str(tmp_path / "work"))
    assert not (tmp_path / "report" / "report.json").exists()


@cluster
@pytest.mark.timeout(int(_first_fault_bound() + STOP_BOUND + 60))
def test_an_etcd_member_that_cannot_restart_ends_the_campaign_mid_way(
        tmp_path: Path) -> None:
    from hachain.simulators.cluster_harness import ETCD
    wrapper = tmp_path / "etcd"
    wrapper.write_text(f"""#!/bin/sh
# the real etcd, once per member: a second start (a fault's restart) fails at once
prev=; for a in "$@"; do [ "$prev" = --name ] && name=$a; prev=$a; done
if [ -e "$0.started-$name" ]; then echo "wrapper: refusing to start $name again" >&2; exit 3; fi
: > "$0.started-$name"
exec {ETCD} "$@"
""")
    wrapper.chmod(0o755)
    work = str(tmp_path / "work")
    proc, outf, errf = _campaign(tmp_path, {"HACHAIN_ETCD": str(wrapper)}, "--faults", "2",
                                 "--kinds", "kill-etcd-member")
    kids: dict[int, str] = {}
    cmds: dict[int, list[str]] = {}
    try:
        # every process of the campaign, until it ends: the wait is bounded by the
        # campaign's own limits (start, settle, the fault's 3 s, the clean-up)
        deadline = time.monotonic() + _first_fault_bound() + STOP_BOUND
        while proc.poll() is None and time.monotonic() < deadline:
            for pid, start in _descendants(proc.pid).items():
                # (a process exiting or a zombie reads an empty command line: the one
                # read while it ran stays; CI26 lost n2's init so, in the last sample)
                if kids.setdefault(pid, start) == start and any(c := _cmdline(pid)):
                    cmds[pid] = c
            time.sleep(0.2)
        rc = proc.wait(1)
        end = time.monotonic() + KILLED_BOUND  # (what it killed: the kernel's to finish)
        while [p for p, s in kids.items() if _alive(p, s)] and time.monotonic() < end:
            time.sleep(0.05)
        alive = [p for p, s in kids.items() if _alive(p, s)]
        left = _leftovers(proc.pid, work)
    finally:
        _clean_up_after_a_failed_test(proc, kids)
    line, rep = _ended_by_error(tmp_path, work, rc, outf.read_text(), errf.read_text(), 2,
                                "kill-etcd-member")
    assert re.fullmatch(rf"hachain chaos --cluster: etcd member (m[012]) exited with status "
                        rf"3 \(log: {work}/etcd/\1\.log: wrapper: refusing to start \1 "
                        rf"again\) \(seed {SEED}\)", line), line
    assert rep["faults"] == []  # the fault under way is not judged
    assert alive == [] and left == []
    booted = {c[c.index("--config") + 1] for c in cmds.values() if "hachain.init.main" in c}
    assert booted == {f"{work}/n{i}.toml" for i in range(3)}, cmds
    # the machines ran, and their consoles stay
    assert all(os.path.getsize(os.path.join(work, f"n{i}", "console.log")) for i in range(3))
