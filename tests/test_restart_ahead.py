"""The replacement first (docs/restarter.md, "The replacement first"): when the state
table restarts a service at once, the restarter kills what the old process left and
starts the replacement before it carries out the exit's other effects. Real restarter,
real processes and cgroups: the leftovers go, the replacement is not taken for one, the
exit is logged as before, and a replacement that cannot be started follows the policy."""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from hachain import channels
from tests.conftest import children, svc, wait_until

AT_ONCE = "backoff = { initial = 0.0, factor = 1.0, max = 0 }\n"


def _log_lines(r, prefix: str) -> list[str]:
    with open(r.log) as f:
        return [ln for ln in f.read().splitlines() if ln.startswith(prefix)]


def test_leftovers_go_first_and_the_replacement_stays(restarter):
    """svc.py stubborn forks a child that stays in the cgroup: SIGKILL of the main process
    leaves it there. The child is killed before the replacement starts, and the exit's
    own leftover kill, which comes after the early spawn, must not take the replacement
    for a leftover (it would kill it, and the service would restart again and again)."""
    r = restarter(f"[service.s]\ncommand = {svc('stubborn')}\n{AT_ONCE}")
    if not r.cg_root:
        pytest.skip("needs a writable cgroup v2 hierarchy (run as root)")
    first = r.wait_state("s", "ready")["pid"]
    child = wait_until(lambda: children(first), 10, "stubborn's child")[0]
    r.pids_seen.add(child)
    os.kill(first, signal.SIGKILL)
    st = wait_until(lambda: (x := r.svc("s"))["state"] == "ready" and x["pid"] != first
                    and x, 10, "s restarted")
    second = st["pid"]
    wait_until(lambda: not channels.pid_alive(child), 5, "the leftover child killed")
    r.beats(5)  # several passes of the loop: nothing else happens to it
    now = r.svc("s")
    assert (now["state"], now["pid"], now["restarts"]) == ("ready", second, 1), now
    assert channels.pid_alive(second)
    with open(os.path.join(r.cg_root, "s", "cgroup.procs")) as f:
        procs = {int(p) for p in f.read().split()}
    assert child not in procs and second in procs
    said = _log_lines(r, "hachain-restarter: s: ")
    at = said.index(f"hachain-restarter: s: pid {first} killed by SIGKILL")
    assert said[at + 1] == "hachain-restarter: s: ready -> starting (restarted: killed by SIGKILL)"
    assert said[at + 2] == f"hachain-restarter: s: starting -> ready pid {second}"
    assert not _log_lines(r, "hachain-restarter: error:")


def test_a_replacement_that_cannot_start_follows_the_policy(restarter, tmp_path):
    """The program is gone when the service dies: the start the restarter tries ahead
    fails, the table hears it as any failed start (logged, retried per the policy), and
    once the program is back the service runs again."""
    prog = tmp_path / "bin" / "waiter"
    prog.parent.mkdir()
    shutil.copy("/bin/sleep", prog)
    r = restarter(f'[service.w]\ncommand = ["{prog}", "1000"]\n{AT_ONCE}'
                  'intensity = { max_restarts = 1000, window = 60, action = "ignore" }\n')
    first = r.wait_state("w", "ready")["pid"]
    moved = tmp_path / "bin" / "waiter.away"
    os.rename(prog, moved)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: _log_lines(r, "hachain-restarter: cannot start w: "), 10,
               "the failed start logged")
    assert r.svc("w")["pid"] != first
    os.rename(moved, prog)
    st = wait_until(lambda: (x := r.svc("w"))["state"] == "ready" and x["pid"] and x, 10,
                    "w running again")
    assert st["pid"] != first and channels.pid_alive(st["pid"])
    line = _log_lines(r, "hachain-restarter: cannot start w: ")[0]
    assert str(prog) in line and "No such file or directory" in line, line
    assert "retrying per restart policy in" in line, line
    assert not _log_lines(r, "hachain-restarter: error:")
