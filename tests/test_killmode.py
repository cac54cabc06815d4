"""kill_mode = "cgroup" | "mixed" | "process" with real processes (issue 16.4): a service
whose main process forks a child that outlives it unless it is signalled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from hachain import channels
from hachain.config import ServiceConfig
from hachain.restarter import states
from hachain.restarter.states import Ev, Event, State, Svc, step
from tests.conftest import wait_until

# The main process forks a child, then both note themselves in FILE. The child notes a
# SIGTERM and keeps running (only SIGKILL ends it); the main process exits 0 on SIGTERM
# (with "wait", for kill_mode "cgroup", once the child has noted its SIGTERM).
FORKER = """\
import os, signal, sys
path = sys.argv[1]
def note(s):
    with open(path, "a") as f:
        f.write(s + "\\n")
child = os.fork()
if child == 0:
    signal.signal(signal.SIGTERM, lambda *_: note(f"term {os.getpid()}"))
    note(f"child {os.getpid()}")
    while True:
        signal.pause()
def on_term(*_):
    # "cgroup" mode signals the child at the same moment: wait until its handler has
    # noted it, so the SIGKILL that follows this exit cannot beat a handler slowed down
    # by a busy host (a 3 s limit here once did, in CI); the service's stop_timeout
    # bounds the wait
    if sys.argv[2:] == ["wait"]:
        import time
        while f"term {child}" not in open(path).read().splitlines():
            time.sleep(0.01)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
note(f"main {os.getpid()}")
while True:
    signal.pause()
"""


def _notes(path) -> list[tuple[str, int]]:
    try:
        with open(path) as f:
            return [(w, int(p)) for w, p in (line.split() for line in f.read().splitlines())]
    except FileNotFoundError:
        return []


def _children(path) -> list[int]:
    return [p for w, p in _notes(path) if w == "child"]


# Ample: nothing here waits for it to run out (the main process exits on SIGTERM), it only
# bounds the main process's wait for its child's handler.
STOP_TIMEOUT = 30


def _service(restarter, tmp_path, mode: str, cgroups: bool = True, extra: str = ""):
    script, notes = tmp_path / "forker.py", tmp_path / "notes"
    script.write_text(FORKER)
    r = restarter(f"""
[service.d]
command = ["{sys.executable}", "{script}", "{notes}"{', "wait"' if mode == "cgroup" else ''}]
kill_mode = "{mode}"
stop_timeout = {STOP_TIMEOUT}
backoff = {{ initial = 0.0, factor = 1.0, max = 0.0 }}
{extra}
""", cgroups=cgroups)
    return r, notes


def _up(r, notes, n: int) -> tuple[int, int]:
    """Wait for the n-th run of d: ready, and it and its child noted, so both have their
    SIGTERM handlers. (main pid, child pid)"""
    wait_until(lambda: len(_children(notes)) >= n
               and sum(w == "main" for w, _ in _notes(notes)) >= n, 10,
               f"run {n} of d and its child")
    main = r.wait_state("d", "ready")["pid"]
    return main, _children(notes)[n - 1]


def _in_cgroup(r, pid: int) -> bool:
    with open(os.path.join(r.cg_root, "d", "cgroup.procs")) as f:
        return pid in [int(x) for x in f.read().split()]


@pytest.mark.slow
def test_process_mode_leftovers_survive_stop_and_restart_and_are_listed(restarter,
                                                                         tmp_path):
    r, notes = _service(restarter, tmp_path, "process")
    if r.cg_root is None:
        pytest.skip("needs a writable cgroup v2 hierarchy (run as root)")
    main1, child1 = _up(r, notes, 1)
    assert r.svc("d")["leftovers"] == []  # its child is inside the main process's tree
    assert r.req("stop", "d")["ok"]
    st = r.wait_state("d", "stopped")
    assert channels.pid_alive(child1) and _in_cgroup(r, child1)
    assert st["leftovers"] == [child1]
    # The next start neither waits for the leftover nor kills it.
    assert r.req("start", "d")["ok"]
    main2, child2 = _up(r, notes, 2)
    assert channels.pid_alive(child1) and r.svc("d")["leftovers"] == [child1]
    assert r.req("restart", "d")["ok"]
    main3, child3 = _up(r, notes, 3)
    assert main3 not in (main1, main2)
    st = r.svc("d")
    assert st["leftovers"] == sorted([child1, child2]) and st["pid"] == main3
    assert all(channels.pid_alive(p) for p in (child1, child2, child3))
    assert not any(w == "term" for w, _ in _notes(notes))  # no child was signalled
    out = subprocess.run([sys.executable, "-m", "hachain.cli", "status", "-c", r.config],
                         capture_output=True, text=True, timeout=20).stdout
    assert f"[2 leftover process(es): {min(child1, child2)} {max(child1, child2)}]" in out


def test_process_mode_crash_keeps_the_child_and_restarts(restarter, tmp_path):
    r, notes = _service(restarter, tmp_path, "process")
    main1, child1 = _up(r, notes, 1)
    os.kill(main1, signal.SIGKILL)
    main2, _ = _up(r, notes, 2)
    assert main2 != main1 and channels.pid_alive(child1)
    if r.cg_root:
        assert r.svc("d")["leftovers"] == [child1]


@pytest.mark.slow
@pytest.mark.parametrize("mode, child_termed", [("cgroup", True), ("mixed", False)])
@pytest.mark.parametrize("how", ["stop", "restart", "crash"])
def test_cgroup_and_mixed_modes_end_the_child(restarter, tmp_path, mode, child_termed, how):
    """cgroup: the child gets the stop signal too, mixed: only the main process does;
    in both the child is SIGKILLed once the main process has exited, before a new one
    starts. A crash (SIGKILL of the main process) takes the child along in both."""
    r, notes = _service(restarter, tmp_path, mode)
    if r.cg_root is None:
        pytest.skip("needs a writable cgroup v2 hierarchy (run as root)")
    main1, child1 = _up(r, notes, 1)
    if how == "stop":
        assert r.req("stop", "d")["ok"]
        r.wait_state("d", "stopped")
    elif how == "restart":
        assert r.req("restart", "d")["ok"]
    else:
        os.kill(main1, signal.SIGKILL)
    if how != "stop":
        _up(r, notes, 2)
    wait_until(lambda: not channels.pid_alive(child1), STOP_TIMEOUT + 10,
               f"the first child {child1} gone")
    termed = ("term", child1) in _notes(notes)
    assert termed is (child_termed and how != "crash")
    assert r.svc("d")["leftovers"] == []  # only reported for kill_mode = "process"
    if how != "stop":
        # the old child was gone before the new main process was spawned: the cgroup
        # holds just the new main process and its child
        with open(os.path.join(r.cg_root, "d", "cgroup.procs")) as f:
            assert sorted(int(x) for x in f.read().split()) == \
                sorted([r.svc("d")["pid"], _children(notes)[1]])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cgroup", "mixed", "process"])
def test_modes_without_cgroups_use_the_process_group(restarter, tmp_path, mode):
    """The process-group fallback: "cgroup" signals the group, "mixed" the main process
    and then SIGKILLs the group once it has exited, "process" only the main process."""
    r, notes = _service(restarter, tmp_path, mode, cgroups=False)
    main1, child1 = _up(r, notes, 1)
    assert r.req("stop", "d")["ok"]
    r.wait_state("d", "stopped")
    if mode == "process":
        assert channels.pid_alive(child1) and ("term", child1) not in _notes(notes)
        os.kill(child1, signal.SIGKILL)
        return
    wait_until(lambda: not channels.pid_alive(child1), STOP_TIMEOUT + 10,
               f"the child {child1} gone")
    assert (("term", child1) in _notes(notes)) is (mode == "cgroup")


def test_table_chooses_who_is_signalled():
    """Pure: the Kill actions of a stop and of its timeout, per kill_mode."""
    got = {}
    for mode in ("cgroup", "mixed", "process"):
        c = ServiceConfig(name="d", command=("x",), kill_mode=mode)
        s = Svc("d", state=State.READY, pid=10, started_at=0.0)
        s, a1 = step(s, Event(Ev.STOP, 1), c)
        _, a2 = step(s, Event(Ev.STOP_TIMEOUT, 6), c)
        got[mode] = [(a.signal, a.group) for a in a1 + a2 if isinstance(a, states.Kill)]
    assert got == {"cgroup": [(15, True), (9, True)], "mixed": [(15, False), (9, True)],
                   "process": [(15, False), (9, False)]}
