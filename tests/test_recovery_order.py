"""After a restarter crash, what died while no restarter ran is restarted before the
re-adoption of what still runs (issue 19): a new restarter reads each service's cgroup,
rebuilds and restarts the dead services that no other service depends on first, then
re-adopts the rest. Never a second copy: every live service keeps its process, the dead
one has exactly one new process; a dead service that others require waits for the full
rebuild, so its dependents are judged from what really runs."""

from __future__ import annotations

import os
import signal

import pytest

from hachain import channels
from tests.conftest import KILLED_BOUND, wait_until

N = 40


def _body(extra: str = "") -> str:
    return "".join(f'[service.s{i}]\ncommand = ["/bin/sleep", "3600"]\n'
                   'backoff = { initial = 0.0, factor = 1.0, max = 0 }\n'
                   for i in range(N)) + extra


def _all_ready(r, n: int) -> dict:
    st = r.status()
    return st if len(st) == n and all(s["state"] == "ready" for s in st.values()) else {}


def _procs(r, name: str) -> list[int]:
    with open(os.path.join(r.cg_root, name, "cgroup.procs")) as f:
        return [int(x) for x in f.read().split()]


def _crash_with(r, victims: list[str], n: int) -> tuple[dict, dict]:
    """SIGKILL the restarter, then the victims' processes while no restarter runs;
    start a new restarter and wait until all n are ready again. (before, after)."""
    before = wait_until(lambda: _all_ready(r, n), 30, f"{n} services ready")
    r.kill_restarter()
    for v in victims:
        os.kill(before[v]["pid"], signal.SIGKILL)
        wait_until(lambda v=v: not channels.pid_alive(before[v]["pid"]), KILLED_BOUND,
                   f"{v} gone")
    r.start()
    after = wait_until(lambda: _all_ready(r, n), 30, f"{n} services ready again")
    return before, after


def _lines(r) -> list[str]:
    with open(r.log) as f:
        return f.read().splitlines()


@pytest.mark.slow
def test_a_dead_service_is_restarted_before_the_rest_is_readopted(restarter):
    r = restarter(_body())
    if r.cg_root is None:
        pytest.skip("needs a writable cgroup v2 hierarchy (run as root)")
    before, after = _crash_with(r, ["s7"], N)
    lines = _lines(r)
    second = max(i for i, ln in enumerate(lines) if "supervising" in ln)
    # the chain's first start has no cgroups yet: its starts keep their pace (a batch a
    # loop round, heartbeats between), none is taken for a service that died
    assert not any("stopped running while no restarter ran" in ln
                   for ln in lines[:second]), lines[:second]
    lines = lines[second:]  # the new restarter's
    restarted = next(i for i, ln in enumerate(lines) if "restarted 1 service(s) that "
                     "stopped running while no restarter ran" in ln)
    readopted = next(i for i, ln in enumerate(lines) if f"re-adopted {N - 1} running" in ln)
    spawned = next(i for i, ln in enumerate(lines) if "s7: starting -> ready" in ln)
    assert spawned < restarted < readopted, lines
    for i in range(N):
        name = f"s{i}"
        assert _procs(r, name) == [after[name]["pid"]]  # one copy each
        if name != "s7":
            assert after[name]["pid"] == before[name]["pid"]  # adopted, not restarted
    assert after["s7"]["pid"] != before["s7"]["pid"]


@pytest.mark.slow
def test_a_dead_service_others_require_waits_for_the_full_rebuild(restarter):
    r = restarter(_body('[service.web]\ncommand = ["/bin/sleep", "3600"]\n'
                        'requires = ["s3"]\n'))
    if r.cg_root is None:
        pytest.skip("needs a writable cgroup v2 hierarchy (run as root)")
    before, after = _crash_with(r, ["s3", "s9"], N + 1)
    lines = _lines(r)
    lines = lines[max(i for i, ln in enumerate(lines) if "supervising" in ln):]
    # s9 stands alone: first; s3 is required by web: with the rest
    assert any("restarted 1 service(s) that stopped running" in ln for ln in lines), lines
    readopted = next(i for i, ln in enumerate(lines) if "re-adopted" in ln)
    s3 = next(i for i, ln in enumerate(lines) if "s3: starting -> ready" in ln)
    assert s3 > readopted, lines
    for name in [f"s{i}" for i in range(N)] + ["web"]:
        assert _procs(r, name) == [after[name]["pid"]]  # never a second copy
    for name in ("s3", "s9"):
        assert after[name]["pid"] != before[name]["pid"]
