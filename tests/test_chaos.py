"""`hachain chaos`: the schedule, the invariant checks, and short real campaigns.

The campaigns boot the simulated machine (root, unshare(1), cgroup v2) and run through
`hachain.cli.main`, as a user would. Each is a few faults with a fixed seed, so the
whole file stays well under three minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import cli, config
from hachain.simulators import chaos, chaos_kinds, chaos_runner, converge
from hachain.simulators.converge import Proc, Snapshot
from hachain.simulators.machine import find_cgroup2_mount

PY = sys.executable


def _machine_reason() -> str | None:
    """Why a real campaign cannot run here, or None."""
    if os.geteuid() != 0:
        return "the simulated machine needs root (PID and mount namespaces, tmpfs)"
    if shutil.which("unshare") is None:
        return "the simulated machine needs unshare(1) from util-linux"
    mount = find_cgroup2_mount()
    if not mount or not os.access(mount, os.W_OK):
        return "the campaign's cgroup faults need a writable cgroup v2 hierarchy"
    return None


needs_machine = pytest.mark.skipif(_machine_reason() is not None,
                                   reason=_machine_reason() or "")


# --- pure parts ------------------------------------------------------------------------------

def test_schedule_is_deterministic_for_a_seed() -> None:
    kinds = sorted(chaos.KINDS)
    a = chaos.schedule(7, 50, kinds, ["a", "b"], ["a"])
    assert a == chaos.schedule(7, 50, kinds, ["a", "b"], ["a"])
    assert a != chaos.schedule(8, 50, kinds, ["a", "b"], ["a"])
    assert [f.index for f in a] == list(range(50))
    for f in a:
        if chaos.KINDS[f.kind].target == "liveness":
            assert f.target == "a"  # only a service whose hang the chain can see
    # the order kinds are given in does not matter
    assert a == chaos.schedule(7, 50, list(reversed(kinds)), ["b", "a"], ["a"])


def _cfg() -> config.Config:
    return config.parse(chaos.campaign_config_text(PY, "/x/svc.py"))


def _snap(procs: list[Proc], services: dict[str, Any]) -> Snapshot:
    return Snapshot(0.0, 1, 100, {"init": 100, "restarter": 101, "tickler": 102},
                    {"init": 0.1, "restarter": 0.1, "tickler": 0.1}, services, None, procs, {})


def _healthy() -> tuple[list[Proc], dict[str, Any]]:
    procs = [Proc(100, 1, 99, "S", 1, None, "/"), Proc(101, 2, 100, "S", 2, None, "/"),
             Proc(102, 3, 100, "S", 3, None, "/")]
    services = {}
    for i, name in enumerate(("db", "cache", "api", "worker")):
        procs.append(Proc(200 + i, 10 + i, 101, "S", 10 + i, name, f"/cg/{name}"))
        services[name] = {"state": "ready", "want": "up", "pid": 10 + i, "reason": None}
    return procs, services


def test_invariants_hold_for_a_healthy_machine() -> None:
    procs, services = _healthy()
    s = _snap(procs, services)
    assert converge.snapshot_problems(s, _cfg(), {}, "/cg", 1.5) == []
    assert converge.lasting(s, s) == []


def test_invariants_flag_duplicates_strays_zombies_and_admin_changes() -> None:
    procs, services = _healthy()
    # a second copy of worker, re-parented to init (what a failed re-adoption leaves)
    procs.append(Proc(300, 30, 100, "S", 30, "worker", "/cg/worker"))
    # a process that escaped db's cgroup (its child: not a main process)
    procs.append(Proc(301, 31, 200, "S", 31, "db", "/elsewhere"))
    # a stray (no service, not a layer, child of init) and a zombie
    procs.append(Proc(302, 32, 100, "S", 32, None, "/"))
    procs.append(Proc(303, 33, 101, "Z", 33, None, "/"))
    services["cache"] = {"state": "backoff", "want": "up", "pid": None, "reason": "x"}
    s = _snap(procs, services)
    s.admin = {"cache": {"want": "down"}}
    found = "\n".join(converge.snapshot_problems(s, _cfg(), {}, "/cg", 1.5))
    assert "worker: 2 main processes" in found
    assert "db: pid 31 outside its cgroup" in found
    assert "cache: backoff (expected ready)" in found
    assert "admin.json changed" in found
    lasting = "\n".join(converge.lasting(s, s))
    assert "stray pid 32" in lasting and "zombie pid 33" in lasting
    # a process seen only once is a transient, not a stray
    assert converge.lasting(_snap(_healthy()[0], services), s) == []


def test_a_machine_check_that_does_not_pass_is_not_converged() -> None:
    procs, services = _healthy()
    s = _snap(procs, services)
    cfg = _cfg()
    assert "marker" in cfg.checks  # the built-in configuration's own check
    assert converge.snapshot_problems(s, cfg, {}, "/cg", 1.5) == []  # checks not read
    for state, detail in (("ok", None), ("pending", None), ("failing", "exit status 1")):
        s.checks = {"marker": {"state": state, "detail": detail}}
        found = converge.snapshot_problems(s, cfg, {}, "/cg", 1.5)
        assert found == ([] if state == "ok" else [
            f"check marker: {state}" + (f" ({detail})" if detail else "")]), found
    s.checks = {}
    assert converge.snapshot_problems(s, cfg, {}, "/cg", 1.5) == \
        ["check marker: unknown to the restarter"]


def test_bounds_follow_the_configuration() -> None:
    cfg = _cfg()
    rb = chaos_kinds.reboot_bound(cfg)
    assert rb == pytest.approx(0.25 + 1.5 + 0.5 + 3 + chaos_kinds.REBOOT_MARGIN)
    assert chaos_kinds.convergence_bound("hang-layer", cfg) == pytest.approx(rb + chaos_kinds.BOOT_BUDGET)
    for k in chaos.KINDS:
        assert chaos_kinds.convergence_bound(k, cfg) > 0


def test_unsupported_kinds_are_skipped_with_a_reason() -> None:
    ok, skipped = chaos.capabilities(sorted(chaos.KINDS), _cfg(), tmpfs_ok=False,
                                     tmpfs_reason="no tmpfs here")
    assert "clock-step" in skipped and "CLOCK_MONOTONIC" in skipped["clock-step"]
    assert skipped["disk-full"] == skipped["run-full"] == "no tmpfs here"
    assert set(ok) | set(skipped) == set(chaos.KINDS)
    cfg = config.parse(chaos.campaign_config_text(PY, "/x").replace("watchdog_sec = 1\n", ""))
    _, skipped = chaos.capabilities(["hang-service"], cfg, True)
    assert "invisible" in skipped["hang-service"]


def test_command_line_errors(tmp_path: Any, capsys: Any) -> None:
    rep = str(tmp_path / "r")
    # --qemu runs its own guest configuration: a -c file is bad usage there
    assert cli.main(["chaos", "--qemu", "-c", str(tmp_path / "x.toml"), "--report", rep]) == 2
    capsys.readouterr()
    assert cli.main(["chaos", "--kinds", "kill-service,nope", "--report", rep]) == 2
    assert "unknown fault kind(s) nope" in capsys.readouterr().err
    assert cli.main(["chaos", "--faults", "3"]) == 2
    assert cli.main(["chaos", "--list-kinds"]) == 0
    assert "hang-layer" in capsys.readouterr().out


# --- real campaigns --------------------------------------------------------------------------

KINDS_OK = ("kill-service,crash-loop,hang-service,fork-bomb,fd-exhaust,freeze-service,"
            "kill-layer,pause-layer,hang-layer,kill-init,disk-full,stop-service")


def _run(tmp: Any, *args: str) -> int:
    # the machine's sockets live under --dir: keep it short (sun_path is 108 bytes)
    return cli.main(["chaos", "--report", str(tmp / "report"), "--dir",
                     str(tmp / "work"), *args])


@pytest.fixture
def short_tmp() -> Iterator[pathlib.Path]:
    """A short temporary directory (pytest's own can be too deep for Unix sockets)."""
    d = tempfile.mkdtemp(prefix="hc-", dir="/tmp")
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


@needs_machine
@pytest.mark.slow
def test_short_campaign_holds_every_invariant(short_tmp: Any, capsys: Any) -> None:
    rc = _run(short_tmp, "--faults", "8", "--seed", "11", "--kinds", KINDS_OK, "--no-shrink")
    out, err = capsys.readouterr()
    assert rc == 0, err
    rep = json.loads((short_tmp / "report" / "report.json").read_text())
    assert rep["ok"] and rep["seed"] == 11 and len(rep["results"]) == 8
    expected = chaos.schedule(11, 8, rep["kinds"], ["api", "cache", "db", "worker"],
                              ["api", "db"])
    assert [(r["kind"], r["target"]) for r in rep["results"]] == \
        [(f.kind, f.target) for f in expected]
    psi = os.path.exists("/proc/pressure/cpu")
    for r in rep["results"]:
        # the bound, plus the time the machine's tasks waited for a CPU (a busy host)
        assert (r["host_wait"] is not None) == psi, r
        assert r["ok"] and r["converge"] is not None and \
            r["converge"] <= r["bound"] + (r["host_wait"] or 0.0)
        assert (r["reboot"] is not None) == (chaos.KINDS[r["kind"]].reboot is not None)
    page = (short_tmp / "report" / "report.html").read_text()
    assert "<svg" in page and "<table" in page and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    for kind in rep["summary"]:
        assert kind in page and f"| {kind} |" in out
    assert "seed 11: all invariants held" in out


@needs_machine
@pytest.mark.slow
def test_a_critical_service_that_never_gets_ready_fails_the_campaign(short_tmp: Any,
                                                                      capsys: Any) -> None:
    work = short_tmp / "work"
    work.mkdir()
    svc = str(work / chaos.SERVICE_FILE)
    text = chaos.campaign_config_text(PY, svc)
    # db is `ready = "notify"` but now runs the role that never sends READY=1
    text = text.replace(f'"{svc}", "notify", "0.2"', f'"{svc}", "none"')
    cfg = short_tmp / "broken.toml"
    cfg.write_text(text)
    rc = _run(short_tmp, "-c", str(cfg), "--faults", "3", "--seed", "5", "--kinds",
              "kill-service", "--no-shrink")
    err = capsys.readouterr().err
    assert rc == 1
    assert "seed 5" in err and "never converged" in err
    assert "db: starting (expected ready)" in err or "db: backoff (expected ready)" in err
    rep = json.loads((short_tmp / "report" / "report.json").read_text())
    assert not rep["ok"] and rep["baseline_problems"]


@needs_machine
@pytest.mark.slow
def test_a_broken_invariant_names_the_fault_and_a_shrunk_reproduction(short_tmp: Any,
                                                                      capsys: Any) -> None:
    work = short_tmp / "work"
    work.mkdir()
    # worker is the last section: it now never comes back after it dies
    text = chaos.campaign_config_text(PY, str(work / chaos.SERVICE_FILE)) + \
        'restart = "never"\n'
    cfg = short_tmp / "never.toml"
    cfg.write_text(text)
    sched = chaos.schedule(3, 20, ["kill-service"], ["api", "cache", "db", "worker"],
                           ["api", "db"])
    first = next(f.index for f in sched if f.target == "worker")
    rc = _run(short_tmp, "-c", str(cfg), "--faults", str(first + 1), "--seed", "3",
              "--kinds", "kill-service")
    err = capsys.readouterr().err
    assert rc == 1
    assert f"seed 3: fault #{first} kill-service worker" in err
    assert "worker: stopped (expected ready)" in err or "worker: failed" in err
    assert f"--only {first}" in err and "(reproduced)" in err
    rep = json.loads((short_tmp / "report" / "report.json").read_text())
    assert rep["repro"]["indexes"] == [first]


@needs_machine
@pytest.mark.slow
def test_a_frozen_service_cgroup_is_recovered_without_a_reboot(short_tmp: Any) -> None:
    rc = _run(short_tmp, "--faults", "1", "--seed", "1", "--kinds", "freeze-service-hung",
              "--no-shrink")
    assert rc == 0


@needs_machine
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_fault_kind_meets_its_expectation(short_tmp: Any) -> None:
    """One fault of every kind the simulated machine can inject, on one machine: a kind
    whose expected outcome went stale (a reboot that no longer comes, a new false reboot)
    fails here, not in a user's first campaign."""
    work = short_tmp / "work"
    work.mkdir()
    path, cfg = chaos._campaign_setup(argparse.Namespace(config=None), str(work))
    tmpfs, why = chaos_runner.can_mount_tmpfs(str(work))
    kinds = sorted(k for k, d in chaos.KINDS.items() if d.needs != "never")
    runnable, skipped = chaos.capabilities(kinds, cfg, tmpfs, why)
    assert not skipped, f"every kind must run here: {skipped}"
    # a fixed target per pool, rotating so that services and layers both get hit
    pools = {"service": ["api", "cache", "db", "worker"], "liveness": ["db", "api"],
             "layer": ["restarter", "tickler"], "layer+init": ["restarter", "init", "tickler"],
             "gated": ["restarter", "init"], "critical": ["db"],
             "init": ["init"], "machine": ["machine"], "check": ["machine"]}
    faults = []
    for i, k in enumerate(runnable):
        pool = pools[chaos.KINDS[k].target]
        faults.append(chaos.Fault(i, k, pool[i % len(pool)]))
    rep = chaos_runner.run_campaign(path, str(work / "c"), 0, faults, runnable, {}, tmpfs, None)
    assert not rep["baseline_problems"], rep["baseline_problems"]
    assert [r["kind"] for r in rep["results"]] == runnable
    bad = [f"#{r['index']} {r['kind']} {r['target']}: {'; '.join(r['problems'])}"
           for r in rep["results"] if not r["ok"]]
    assert not bad, "\n".join(bad)
    for r in rep["results"]:
        assert r["reboot"] == chaos.KINDS[r["kind"]].reboot, r
        assert r["converge"] is not None and r["converge"] <= r["bound"], r


@needs_machine
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_check_held_by_a_rescue_boot_fails_without_a_reset(short_tmp: Any) -> None:
    """Three faults that each end a boot unclean (a watchdog reset, a failed check, a
    panic) reach boot_loop.resets, so the next boot is a rescue that holds the check its
    looping boots blamed. A check failing for good there is held out of the gate: no
    reset may come, also with every restarter killed under it, and it passes again once
    its cause goes; a check its repair mends is seen held, then passing. (A 20-fault
    campaign, seed 202, had expected a reset there.)"""
    work = short_tmp / "work"
    work.mkdir()
    path, cfg = chaos._campaign_setup(argparse.Namespace(config=None), str(work))
    tmpfs, why = chaos_runner.can_mount_tmpfs(str(work))
    faults = [chaos.Fault(0, "hang-layer", "restarter"),
              chaos.Fault(1, "check-failed", "machine"),
              chaos.Fault(2, "kill-init", "init"),
              chaos.Fault(3, "check-failed", "machine"),
              chaos.Fault(4, "check-failed-restarters-killed", "machine"),
              chaos.Fault(5, "check-repaired", "machine")]
    kinds = sorted({f.kind for f in faults})
    rep = chaos_runner.run_campaign(path, str(work / "c"), 0, faults, kinds, {}, tmpfs, None)
    assert not rep["baseline_problems"], rep["baseline_problems"]
    bad = [f"#{r['index']} {r['kind']}: {'; '.join(r['problems'])}"
           for r in rep["results"] if not r["ok"]]
    assert not bad, "\n".join(bad)
    # the check faults in the rescue boot reset nothing
    assert [r["reboot"] for r in rep["results"]] == ["watchdog", "watchdog", "panic", None,
                                                      None, None], rep["results"]
    console = (work / "c" / "m" / "console.log").read_text()
    assert f"check {chaos_kinds.CHECK_NAME}: FAILED" in console
    assert "held by the rescue boot: out of the health gate" in console
