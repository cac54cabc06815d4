"""How a stop signal ends `hachain chaos --cluster`: Ctrl-C (SIGINT to the process
group), a closed terminal (SIGHUP to the group) or `kill` (SIGTERM to the process only)
leaves no machine, etcd member, network namespace, veth or cgroup behind, and writes
report.json with the faults judged so far, `"interrupted"` naming the signal, and a FAIL
verdict as the last line; exit 1, no traceback. Real campaigns, real signals: two are
stopped after their first fault was judged, one while its machines are starting. The
pure verdict and summary run without a cluster. About 25 s on this 2-core host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hachain import config
from hachain.cgroupfs import find_cgroup2_mount
from hachain.simulators import chaos_kinds
from hachain.simulators.cluster_chaos import HB, MARGIN, SETTLE, TTL, WD, summarize, verdict
from hachain.simulators.cluster_harness import ETCD, config_text
from hachain.simulators.machine import CGROUP_PREFIX
from tests import test_cluster_chaos
from tests.conftest import KILLED_BOUND, reap, wait_until

CLUSTER = test_cluster_chaos.pytestmark  # slow, root, ip/nsenter/unshare, etcd

FAULTS, SEED = 20, 4
KINDS = ("kill-layer", "kill-service")  # short faults: the first is judged within seconds
ETCD_START = 30.0  # Campaign.start: EtcdCluster.wait_healthy
STOP_BOUND = 3 * 30.0 + 3 * 10.0 + 6 * 30.0  # c.stop(): machine joins, etcd waits, ip runs


# --- the pure parts: the summary and the verdict line ------------------------------------------

def _rec(kind: str, ok: bool, failover: float | None = None) -> dict[str, Any]:
    return {"kind": kind, "ok": ok, "failover_s": failover, "problems": [] if ok else ["x"]}


def test_the_verdict_of_a_whole_campaign_is_the_line_it_always_was() -> None:
    recs = [_rec("kill-node", True, 2.5), _rec("kill-layer", False)]
    s = summarize(recs, 7, ("kill-node", "kill-layer"), 12.34, None)
    assert s["faults"] == 2 and s["failed"] == 1 and not s["ok"] and s["elapsed_s"] == 12.3
    assert s["failover"] == {"kill-node": {"n": 1, "median": 2.5, "max": 2.5}}
    assert verdict(s, 2, None, "R/report.json") == \
        "FAIL: 2 faults, 1 with a broken invariant; report in R/report.json"
    s = summarize(recs[:1], 7, ("kill-node",), 1.0, None)
    assert s["ok"] and verdict(s, 1, None, "R/report.json") == \
        "PASS: 1 faults, 0 with a broken invariant; report in R/report.json"


def test_an_interrupted_campaign_is_not_ok_and_its_verdict_names_the_signal() -> None:
    s = summarize([_rec("kill-node", True, 2.0)] * 3, 7, ("kill-node",), 30.0, "SIGHUP")
    assert not s["ok"] and s["failed"] == 0
    assert verdict(s, 20, "SIGHUP", "R/report.json") == (
        "FAIL: interrupted by SIGHUP after 3 of 20 faults, 0 with a broken invariant; "
        "report in R/report.json")


# --- real campaigns, real signals -------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _descendants(root: int) -> dict[int, str]:
    """{pid: start time} of every process below `root` (by parent pid, from /proc)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (f := _stat(int(d))) is not None:
            kids.setdefault(int(f[1]), []).append(int(d))
    out, todo = {}, [root]
    while todo:
        for pid in kids.get(todo.pop(), []):
            if (f := _stat(pid)) is not None:
                out[pid] = f[19]
                todo.append(pid)
    return out


def _alive(pid: int, start: str) -> bool:
    """The process recorded as (pid, start time) still runs (a zombie does not)."""
    f = _stat(pid)
    return f is not None and f[19] == start and f[0] != "Z"


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _leftovers(pid: int, work: str | None) -> list[str]:
    """What the campaign with this pid made and did not remove: its network namespaces
    and their mounts, its veths, its machines' cgroups, its etcd data (the members'
    logs stay in the work directory: evidence)."""
    tag = f"hc{pid % 100000}"  # cluster_harness.Net
    left = [f"netns {n}" for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns")
                                   else []) if n.startswith(tag + "n")]
    left += [f"link {n}" for n in os.listdir("/sys/class/net") if n.startswith(tag + "h")]
    left += [f"mount {ln.split()[1]}" for ln in Path("/proc/self/mounts").read_text()
             .splitlines() if f"/run/netns/{tag}n" in ln]
    mount = find_cgroup2_mount()
    if mount:
        left += [f"cgroup {n}" for n in os.listdir(mount)
                 if n.startswith(f"{CGROUP_PREFIX}{pid}-")]
    etcd = os.path.join(work, "etcd") if work else None
    if etcd and os.path.isdir(etcd):
        left += [f"etcd data {etcd}/{n}" for n in sorted(os.listdir(etcd))
                 if os.path.isdir(os.path.join(etcd, n))]
    return left


def _first_fault_bound() -> float:
    """Start (etcd healthy), settle, the slowest of KINDS, settle again: the campaign's own
    limits for its first fault."""
    cfg = config.parse(config_text("n0", ["127.0.0.1:2379"], "/x/stamps", "/chaos/",
                                   "/x/svc.py", TTL, WD, MARGIN, 0.5, HB))
    return ETCD_START + SETTLE + max(chaos_kinds.convergence_bound(k, cfg) for k in KINDS) \
        + SETTLE + 30


STOPS = [
    # (signal, to the whole process group as a terminal does, once a fault was judged)
    pytest.param(signal.SIGINT, True, True, id="ctrl-c-mid-campaign"),
    pytest.param(signal.SIGHUP, True, False, id="terminal-closed-while-starting"),
    pytest.param(signal.SIGTERM, False, True, id="kill-mid-campaign"),
]


def cluster(test: Any) -> Any:
    for mark in CLUSTER:
        test = mark(test)
    return test


@cluster
@pytest.mark.timeout(int(_first_fault_bound() + STOP_BOUND + 60))
@pytest.mark.parametrize(("sig", "group", "after_fault"), STOPS)
def test_a_stop_signal_ends_the_cluster_campaign_with_a_partial_report_and_nothing_left(
        tmp_path: Path, sig: int, group: bool, after_fault: bool) -> None:
    report, outf, errf = tmp_path / "report", tmp_path / "stdout", tmp_path / "stderr"
    work = str(tmp_path / "work")
    name = signal.Signals(sig).name
    with open(outf, "wb") as o, open(errf, "wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hachain.cli", "chaos", "--cluster", "--faults",
             str(FAULTS), "--seed", str(SEED), "--kinds", ",".join(KINDS), "--report",
             str(report), "--dir", work], stdout=o, stderr=e, start_new_session=True)
    kids: dict[int, str] = {}
    try:
        def booting() -> list[int]:  # a machine's PID 1 runs: etcd and the namespaces are up
            return [p for p in _descendants(proc.pid)
                    if "hachain.init.main" in _cmdline(p)]
        if after_fault:
            wait_until(lambda: "fault 1:" in outf.read_text() or proc.poll() is not None,
                       _first_fault_bound(), "the first fault judged")
        else:
            wait_until(lambda: booting() or proc.poll() is not None, ETCD_START + 30,
                       "a machine booting")
        assert proc.poll() is None, errf.read_text()[-3000:]
        kids = _descendants(proc.pid)
        init = booting()
        assert init and any(_cmdline(p)[:1] == [ETCD] for p in kids), kids
        conf = _cmdline(init[0])[_cmdline(init[0]).index("--config") + 1]
        assert os.path.dirname(conf) == work  # the nodes run from the --dir given
        assert _leftovers(proc.pid, work), "the campaign made no namespace to check"
        (os.killpg if group else os.kill)(proc.pid, sig)
        rc = proc.wait(STOP_BOUND)
        # the campaign killed and waited for what it started before it exited: what is
        # left is the kernel's to finish (KILLED_BOUND)
        wait_until(lambda: not [p for p, s in kids.items() if _alive(p, s)], KILLED_BOUND,
                   "every process of the campaign gone")
        assert _leftovers(proc.pid, work) == []
    finally:
        if proc.poll() is None:  # only when the test already failed
            os.killpg(proc.pid, signal.SIGKILL)
            reap(proc, "the campaign")
        for pid, start in kids.items():
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)
        for what in _leftovers(proc.pid, None):  # only when the test already failed
            kind, _, n = what.partition(" ")
            if kind in ("link", "netns"):
                subprocess.run(["ip", *(["link"] if kind == "link" else ["netns"]), "del", n],
                               capture_output=True, timeout=30)
    out, err = outf.read_text(), errf.read_text()
    assert rc == 1, out[-2000:] + err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.splitlines()[0] == (f"chaos: --cluster seed {SEED}, {FAULTS} fault(s), kinds "
                                   f"{','.join(KINDS)}; work dir {work}")
    # the evidence stays: the consoles of the machines started, the etcd members' logs
    started = range(3) if after_fault else range(1)  # (SIGHUP while the first boots)
    assert all(os.path.exists(os.path.join(work, f"n{i}", "console.log")) for i in started)
    assert all(os.path.exists(os.path.join(work, "etcd", f"m{i}.log")) for i in range(3))
    path = os.path.join(str(report), "report.json")
    rep = json.loads(Path(path).read_text())
    assert rep["interrupted"] == name and rep["summary"]["ok"] is False
    assert rep["error"] is None and rep["work_dir"] == work
    n = len(rep["faults"])
    assert rep["summary"]["faults"] == n and (1 if after_fault else 0) <= n < FAULTS
    assert all(r["kind"] in KINDS for r in rep["faults"])
    failed = sum(not r["ok"] for r in rep["faults"])
    assert out.splitlines()[-1] == (f"FAIL: interrupted by {name} after {n} of {FAULTS} "
                                    f"faults, {failed} with a broken invariant; report in {path}")
