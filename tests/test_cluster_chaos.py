"""`hachain chaos --cluster` end to end (issue 18): short campaigns over three simulated
machines in network namespaces and a 3-member etcd, judged by the observer's invariants:
four faults drawn from the node kinds and a lost quorum, then five of the single-machine
kinds (the cluster layer among their targets) with their own expectations on top; bad
usage exits 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

from hachain.simulators.cluster_harness import ETCD

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
    pytest.mark.skipif(any(shutil.which(x) is None for x in ("ip", "nsenter", "unshare")),
                       reason="needs ip(8), nsenter(1) and unshare(1)"),
    pytest.mark.skipif(not os.access(ETCD, os.X_OK), reason="needs etcd (Debian's "
                       "etcd-server: bash scripts/setup.sh --test installs it)"),
]


def test_short_cluster_campaign_keeps_every_invariant(tmp_path: Any) -> None:
    report, work = str(tmp_path / "report"), str(tmp_path / "work")
    kinds = "kill-node,hang-node,partition-node,lose-etcd-quorum"
    out = subprocess.run(
        [sys.executable, "-m", "hachain.cli", "chaos", "--cluster", "--faults", "4",
         "--seed", "3", "--kinds", kinds, "--report", report, "--dir", work],
        capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stderr.splitlines()[0] == \
        f"chaos: --cluster seed 3, 4 fault(s), kinds {kinds}; work dir {work}"
    rep = json.load(open(os.path.join(report, "report.json")))
    assert rep["summary"]["faults"] == 4 and rep["summary"]["failed"] == 0
    assert rep["summary"]["ok"] and rep["error"] is None and rep["interrupted"] is None
    assert all(r["ok"] for r in rep["faults"])
    # a failover's bound is stretched by the nodes' CPU wait, which is recorded with it
    for r in rep["faults"]:
        if r.get("failover_s") is not None:
            assert r["host_wait_s"] >= 0, r
    assert "PASS: 4 faults, 0 with a broken invariant" in out.stdout
    # the work directory stays, with the evidence: consoles, stamps, etcd logs, no data
    assert rep["work_dir"] == work
    assert all(os.path.getsize(os.path.join(work, f"n{i}", "console.log")) for i in range(3))
    assert os.path.getsize(os.path.join(work, "stamps.jsonl"))
    etcd = os.listdir(os.path.join(work, "etcd"))
    assert sorted(etcd) == ["m0.log", "m1.log", "m2.log"]


def test_single_machine_kinds_on_cluster_nodes_keep_every_invariant(tmp_path: Any) -> None:
    report = str(tmp_path / "report")
    kinds = ["kill-layer", "hang-layer", "kill-service", "config-broken", "kill-init"]
    out = subprocess.run(
        [sys.executable, "-m", "hachain.cli", "chaos", "--cluster", "--faults", "5",
         "--seed", "61", "--kinds", ",".join(kinds), "--report", report,
         "--dir", str(tmp_path / "work")], capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rep = json.load(open(os.path.join(report, "report.json")))
    assert rep["summary"]["faults"] == 5 and rep["summary"]["failed"] == 0
    faults = rep["faults"]
    assert all(r["ok"] and r["kind"] in kinds and r["layer"] for r in faults)
    # seed 61 draws the cluster layer as a target (kill-layer): it resumes its lease
    assert ("kill-layer", "cluster") in {(r["kind"], r["layer"]) for r in faults}
    # a reset is the kind's own (hang-layer: watchdog, kill-init: panic), and a fault the
    # node rides out leaves the singleton where it was
    for r in faults:
        if r["kind"] in ("hang-layer", "kill-init"):
            assert r["reset"] == {"hang-layer": "watchdog", "kill-init": "panic"}[r["kind"]]
        else:
            assert "reset" not in r and r["owner_after"] == r["owner_before"]


def test_cluster_campaign_bad_usage_exits_2(tmp_path: Any) -> None:
    work = tmp_path / "work"
    out = subprocess.run([sys.executable, "-m", "hachain.cli", "chaos", "--cluster",
                          "--faults", "1", "--kinds", "no-such-kind", "--report",
                          str(tmp_path), "--dir", str(work)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "no-such-kind" in out.stderr
    assert not work.exists()  # bad usage makes nothing
    # a --dir that holds something (another campaign's evidence) is refused, untouched
    work.mkdir()
    (work / "stamps.jsonl").write_text("evidence\n")
    out = subprocess.run([sys.executable, "-m", "hachain.cli", "chaos", "--cluster",
                          "--faults", "1", "--report", str(tmp_path / "r"), "--dir",
                          str(work)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr == (f"hachain chaos --cluster: --dir {work}: not an empty directory "
                          "(another campaign's evidence?): give a new or empty one\n")
    assert os.listdir(work) == ["stamps.jsonl"] and not (tmp_path / "r").exists()


def test_cluster_list_kinds_names_every_kind_and_its_targets() -> None:
    from hachain.simulators.cluster_chaos import ALL_KINDS, NODE_KINDS
    out = subprocess.run([sys.executable, "-m", "hachain.cli", "chaos", "--cluster",
                          "--list-kinds"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = {ln.split()[0]: ln for ln in out.stdout.splitlines()}
    assert sorted(rows) == sorted(ALL_KINDS)
    assert "node: init,restarter,tickler,cluster" in rows["hang-layer"]
    assert "reboot=watchdog" in rows["hang-layer"] and "reboot=-" in rows["kill-layer"]
    assert all(rows[k].split()[1] == "cluster" for k in ALL_KINDS if k not in NODE_KINDS)
