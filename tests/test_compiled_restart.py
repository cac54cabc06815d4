"""The compiled restart (issue 19, docs/restarter.md "The compiled restart").

After a quiet second every line of Python between the restarter's wake-up and clone3 runs
cold; a crash of a service whose policy restarts it at once is therefore answered in C: the loop's wait is `_clone3.wait`, which starts the armed
replacement before it returns, and the exit is handled afterwards as if the Python path
had started it. Real restarter, real cgroups, real processes: what took that path is
counted in the restarter's heartbeat (`compiled_restarts`), and every case it must leave
to Python (an exit its policy does not restart, a delay, leftovers in the cgroup, no
cgroups) is handled by Python, as before.
"""

from __future__ import annotations

import os
import signal

import pytest

from hachain import channels
from hachain.restarter import spawn
from tests.conftest import wait_until

AT_ONCE = 'restart = "always"\nbackoff = { initial = 0.0, factor = 1.0, max = 0 }\n'


def _compiled(r, what: str = "compiled_restarts") -> int:  # type: ignore[no-untyped-def]
    hb = channels.read_heartbeat(r.state_dir, "restarter")
    return int(hb.extra.get(what, -1)) if hb is not None else -1


def _procs(r, name: str) -> list[int]:  # type: ignore[no-untyped-def]
    """The pids in service `name`'s cgroup."""
    with open(os.path.join(r.cg_root, name, "cgroup.procs")) as f:
        return sorted(int(x) for x in f.read().split())


def _needs_it(r) -> None:  # type: ignore[no-untyped-def]
    r.needs_cgroups("the compiled restart clones into the service's cgroup")
    if not spawn.direct_spawn_available():
        pytest.fail("clone3(CLONE_INTO_CGROUP) is not available: the _clone3 extension "
                    "is not built (scripts/setup.sh builds it)")


def _crash(r, name: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """SIGKILL the running main process of `name` after the restarter has gone quiet
    (two heartbeats: it waits in _clone3.wait); (old pid, its replacement's pid)."""
    old = r.wait_state(name, "ready")["pid"]
    r.beats(2)
    os.kill(old, signal.SIGKILL)
    new = wait_until(lambda: (p := r.svc(name)["pid"]) not in (None, old) and p,
                     what=f"{name}'s replacement")
    return old, new


def test_an_idle_crash_is_restarted_before_python_runs(restarter) -> None:
    r = restarter('[service.a]\ncommand = ["sh", "-c", "echo run $$; exec sleep 3600"]\n'
                  f'{AT_ONCE}')
    _needs_it(r)
    wait_until(lambda: _compiled(r) == 0, what="the restarter's first heartbeat")
    old, new = _crash(r, "a")
    wait_until(lambda: _compiled(r) == 1, what="the heartbeat counting the compiled restart")
    # its output went to the logger through the pipe it was given (the spare one)
    wait_until(lambda: f"run {new}" in r.service_log("a"), what="the replacement's output")
    st = r.wait_state("a", "ready")
    assert st["pid"] == new and st["restarts"] == 1
    assert (st["last_exit"]["kind"], st["last_exit"]["signal"]) == ("killed", 9), st
    # the replacement is the service: in its cgroup, alone, and supervised as a child
    assert _procs(r, "a") == [new]
    with open(f"/proc/{new}/stat") as f:
        assert int(f.read().rpartition(")")[2].split()[1]) == r.proc.pid
    # and a second crash the same way: the arm was made again for the new pid
    _, newer = _crash(r, "a")
    wait_until(lambda: _compiled(r) == 2, what="the second compiled restart")
    assert _procs(r, "a") == [newer]
    log = open(r.log).read()
    assert "error" not in log, log[-2000:]


def test_a_policy_that_asks_about_the_exit_restarts_its_failures_compiled(restarter) -> None:
    """on-failure and on-abnormal are armed too: the exits their policy restarts are
    restarted in C, the others are left to Python, which does not restart them."""
    r = restarter('[service.f]\ncommand = ["sleep", "3600"]\nrestart = "on-failure"\n'
                  'backoff = { initial = 0.0, factor = 1.0, max = 0 }\n'
                  '[service.g]\ncommand = ["sleep", "3600"]\nrestart = "on-abnormal"\n'
                  'backoff = { initial = 0.0, factor = 1.0, max = 0 }\n')
    _needs_it(r)
    r.wait_state("g", "ready")
    _crash(r, "f")  # SIGKILL: a failure
    wait_until(lambda: _compiled(r) == 1, what="f's compiled restart")
    _crash(r, "g")  # SIGKILL: abnormal
    wait_until(lambda: _compiled(r) == 2, what="g's compiled restart")
    # SIGTERM is a clean end for both policies: not restarted, by anyone
    for name in ("f", "g"):
        pid = r.wait_state(name, "ready")["pid"]
        r.beats(2)
        os.kill(pid, signal.SIGTERM)
        st = r.wait_state(name, "stopped")
        assert st["pid"] is None and st["last_exit"]["signal"] == signal.SIGTERM, st
    r.beats(2)
    assert _compiled(r) == 2
    assert r.svc("f")["state"] == r.svc("g")["state"] == "stopped"
    # (a replacement C started for an exit the policy does not restart is killed, and said)
    log = open(r.log).read()
    assert "error" not in log, log[-2000:]


def test_a_delay_before_the_restart_is_python_s(restarter) -> None:
    r = restarter('[service.b]\ncommand = ["sleep", "3600"]\nrestart = "always"\n'
                  'backoff = { initial = 0.05, factor = 1.0, max = 0.05 }\n')
    _needs_it(r)
    _crash(r, "b")
    r.wait_state("b", "ready")
    r.beats(2)
    assert _compiled(r) == 0


def test_leftovers_in_the_cgroup_are_killed_by_the_python_path(restarter) -> None:
    r = restarter('[service.c]\ncommand = ["sh", "-c", "sleep 3600 & exec sleep 3601"]\n'
                  f'{AT_ONCE}')
    _needs_it(r)
    main = r.wait_state("c", "ready")["pid"]
    left = wait_until(lambda: [p for p in _procs(r, "c") if p != main],
                      what="the service's background child")
    old, new = _crash(r, "c")
    wait_until(lambda: not channels.pid_alive(left[0]), what="the leftover killed")
    assert _compiled(r) == 0
    wait_until(lambda: len(_procs(r, "c")) == 2, what="the new run's two processes")
    assert new in _procs(r, "c")


def test_a_service_whose_dependency_is_up_is_compiled_and_the_dependency_python_s(
        restarter) -> None:
    """e requires d: e is armed while d is ready, and its crash is restarted in C; d has
    a dependent, whose stop its restart orders first, so d's crash is Python's. After d's
    restart (which stopped and started e again) e is armed again."""
    r = restarter(f'[service.d]\ncommand = ["sleep", "3600"]\n{AT_ONCE}'
                  f'[service.e]\ncommand = ["sleep", "3600"]\nrequires = ["d"]\n{AT_ONCE}')
    _needs_it(r)
    r.wait_state("e", "ready")
    _crash(r, "e")
    wait_until(lambda: _compiled(r) == 1, what="e's compiled restart")
    _crash(r, "d")
    r.wait_state("d", "ready")
    r.wait_state("e", "ready")
    r.beats(2)
    assert _compiled(r) == 1  # (d's was Python's)
    _crash(r, "e")
    wait_until(lambda: _compiled(r) == 2, what="e's compiled restart after d's")
    log = open(r.log).read()
    assert "error" not in log, log[-2000:]


def test_every_service_of_a_large_chain_is_armed(restarter) -> None:
    """Arms are made 64 per wait (a request waits for 64 at most); the loop comes round
    at once for the rest, so a chain of more is armed whole, and then none is made
    again while it idles."""
    n = 100
    body = "".join(f'[service.s{i}]\ncommand = ["sleep", "3600"]\n{AT_ONCE}' for i in range(n))
    r = restarter(body)
    _needs_it(r)
    wait_until(lambda: len(st := r.status()) == n and
               all(s["state"] == "ready" for s in st.values()), what="all ready")
    wait_until(lambda: _compiled(r, "compiled_armed") == n, what=f"{n} services armed")
    r.beats(3)
    assert _compiled(r, "compiled_armed") == n
    _, new = _crash(r, "s7")
    wait_until(lambda: _compiled(r) == 1, what="the compiled restart of s7")
    wait_until(lambda: _compiled(r, "compiled_armed") == n, what="s7 armed again")
