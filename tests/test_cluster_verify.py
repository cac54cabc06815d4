"""`hachain verify --cluster` (issue 18): the timed model of two nodes and one singleton
is safe and live under crash, hang, partition and a partition whose stop hangs, with the
real timing rule; each broken variant is caught with a trace."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hachain.simulators import cluster_verify as cv


@pytest.mark.parametrize("faults", [1, 2])
def test_the_timing_rule_is_safe_and_live(faults: int) -> None:
    for p in (cv.Params(faults=faults), cv.Params(wd=3, faults=faults)):
        r = cv.explore(p)
        assert r.ok, r.violation
        assert r.states > 100
        # liveness bound: lease expiry + takeover wait + reboot/heal slack, in ticks
        assert 0 < r.bound_ticks <= p.heal + p.ttl + p.wait + 4


@pytest.mark.parametrize("mutant,faults", [("cluster-no-wait", 1), ("cluster-no-fence", 1),
                                           ("cluster-fence-at-ttl", 1),
                                           ("cluster-stale-absence", 2)])
def test_each_broken_variant_is_caught(mutant: str, faults: int) -> None:
    r = cv.explore(cv.Params(faults=faults, mutant=mutant))
    assert not r.ok and r.violation is not None
    assert r.violation["kind"] == "safety"
    assert r.violation["trace"] and "svc on" in r.violation["trace"][-1]


def test_the_stale_absence_needs_two_faults_and_the_fixed_rule_passes_them() -> None:
    assert cv.explore(cv.Params(faults=1, mutant="cluster-stale-absence")).ok
    assert cv.explore(cv.Params(faults=2)).ok


@pytest.mark.slow
def test_cli_exit_codes() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hachain.cli", "verify", *args],
                              capture_output=True, text=True, timeout=120)
    ok = run("--cluster")
    assert ok.returncode == 0 and ok.stdout.count("PASS: never two nodes") == 2
    bad = run("--cluster", "--mutant", "cluster-no-fence")
    assert bad.returncode == 1 and "FAIL: COUNTEREXAMPLE (safety)" in bad.stdout
    assert run("--cluster", "--mutant", "adopt-duplicates").returncode == 2
    assert run("--mutant", "cluster-no-wait").returncode == 2
