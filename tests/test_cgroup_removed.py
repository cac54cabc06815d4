"""A service's cgroup removed behind the restarter's back (an `rmdir` by hand, or by
another agent, while the service was down) is made again at its next start; the
service never runs outside it.

Before, the start found its kept cgroup gone (clone3: ENOENT), could not enter it
either, and started the service in the restarter's own cgroup, while its record named
the removed one; a new restarter then found that cgroup empty, took the service for
dead and started it a second time beside the first (reproduced: two copies running).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.conftest import svc, wait_until

pytestmark = pytest.mark.timeout(120)


def _cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return f.read().strip().splitlines()[-1].partition("::")[2]


def _service_cgroup(r: Any, name: str) -> str:
    with open(os.path.join(r.state_dir, "services", f"{name}.json")) as f:
        return str(json.load(f)["cgroup"])


@pytest.mark.parametrize("what", ["service", "root"])
def test_a_removed_cgroup_is_made_again_and_nothing_runs_twice(restarter: Any,
                                                               what: str) -> None:
    r = restarter(f'[service.a]\ncommand = {svc("sleep")}\n'
                  f'[service.b]\ncommand = {svc("sleep")}\n')
    r.needs_cgroups("a service's cgroup to remove")
    for n in "ab":
        r.wait_state(n, "ready")
    cg = {n: _service_cgroup(r, n) for n in "ab"}
    for n in "ab":
        assert r.req("stop", n)["ok"]
    for n in "ab":
        r.wait_state(n, "stopped")
    os.rmdir(cg["a"])
    if what == "root":  # every service's cgroup, then the chain's own
        os.rmdir(cg["b"])
        os.rmdir(os.path.dirname(cg["a"]))
    assert r.req("start", "a")["ok"]
    pid = r.wait_state("a", "ready")["pid"]
    mount_rel = cg["a"][len(os.path.dirname(os.path.dirname(cg["a"]))):]
    assert _cgroup_of(pid).endswith(mount_rel), (_cgroup_of(pid), cg["a"])
    # a new restarter adopts it from its cgroup: the same process, no second one
    r.kill_restarter()
    r.start()
    again = wait_until(lambda: (s := r.svc("a"))["state"] == "ready" and s, 30,
                       "a adopted by the new restarter")
    assert again["pid"] == pid
    with open(os.path.join(cg["a"], "cgroup.procs")) as f:
        assert [int(x) for x in f.read().split()] == [pid]
