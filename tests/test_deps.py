"""Dependencies with real processes: oneshots release their dependents only when done
(issue 16.2), and a restart stops dependents first and starts them after (issue 16.3)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import wait_until


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


@pytest.mark.slow
def test_dependent_of_oneshot_starts_only_once_it_is_done(restarter, tmp_path):
    """`prepare` works until the test lets it finish, then writes its marker and exits 0.
    `app` (requires) and `tail` (after only) must see the marker when they start, and
    `app` must not be restarted by prepare's clean exit."""
    marker, seen, go = tmp_path / "prepared", tmp_path / "seen", tmp_path / "go"
    probe = (f'if [ -e {marker} ]; then echo $0:yes >> {seen}; else echo $0:no >> {seen}; '
             'fi; exec sleep 1000')
    r = restarter(f"""
[service.prepare]
kind = "oneshot"
command = ["/bin/sh", "-c", "while [ ! -e {go} ]; do sleep 0.05; done; sleep 0.2; touch {marker}"]
[service.app]
command = ["/bin/sh", "-c", "{probe}", "app"]
requires = ["prepare"]
[service.tail]
command = ["/bin/sh", "-c", "{probe}", "tail"]
after = ["prepare"]
""")
    st = wait_until(lambda: (s := r.status())["prepare"]["state"] == "starting" and
                    s["prepare"]["pid"] and s, 10, "prepare running")
    assert st["app"]["state"] == "waiting" and st["tail"]["state"] == "waiting"
    assert st["app"]["reason"] == "waiting for prepare: starting"
    assert not seen.exists()
    go.touch()
    app = r.wait_state("app", "ready")
    tail = r.wait_state("tail", "ready")
    assert r.svc("prepare")["state"] == "done"
    wait_until(lambda: len(_lines(str(seen))) == 2, 10, "both dependents to record")
    assert sorted(_lines(str(seen))) == ["app:yes", "tail:yes"]
    # app was started in the same loop step that made prepare done, so a "went down"
    # restart would already have happened: this status comes after it.
    st = r.status()
    assert st["app"]["pid"] == app["pid"] and st["app"]["restarts"] == 0
    assert st["tail"]["pid"] == tail["pid"]
    assert "went down" not in open(r.log).read()


def test_failed_oneshot_keeps_dependents_down_with_the_reason(restarter, tmp_path):
    go, started = tmp_path / "go", tmp_path / "started"
    r = restarter(f"""
[service.prepare]
kind = "oneshot"
command = ["/bin/sh", "-c", "[ -e {go} ] || exit 3"]
[service.app]
command = ["/bin/sh", "-c", "echo $$ >> {started}; exec sleep 1000"]
requires = ["prepare"]
""")
    r.wait_state("prepare", "failed")
    app = wait_until(lambda: "failed (exit status 3)" in (s := r.svc("app"))["reason"] and s,
                     10, "app's reason to name prepare's failure")
    assert app["state"] == "waiting" and app["pid"] is None
    assert app["reason"] == "waiting for prepare: failed (exit status 3)"
    assert not os.path.exists(started)
    # Fixed and started again by hand: done, and only then app starts.
    go.touch()
    assert r.req("start", "prepare")["ok"]
    r.wait_state("app", "ready")
    wait_until(lambda: _lines(str(started)), 10, "app to record its start")
    assert r.svc("prepare")["state"] == "done" and len(_lines(str(started))) == 1


def test_failing_oneshot_retried_by_policy_holds_dependents_until_done(restarter, tmp_path):
    tries, started = tmp_path / "tries", tmp_path / "started"
    r = restarter(f"""
[service.prepare]
kind = "oneshot"
command = ["/bin/sh", "-c", "echo x >> {tries}; [ $(wc -l < {tries}) -ge 3 ]"]
restart = "on-failure"
backoff = {{ initial = 0.2, factor = 1.0, max = 0.2 }}
intensity = {{ max_restarts = 10, window = 60 }}
[service.app]
command = ["/bin/sh", "-c", "echo $(wc -l < {tries}) >> {started}; exec sleep 1000"]
requires = ["prepare"]
""")
    app = r.wait_state("app", "ready")
    wait_until(lambda: _lines(str(started)), 10, "app to record its start")
    assert _lines(str(started)) == ["3"]  # started once, after the third (good) run
    st = r.status()
    assert st["prepare"]["state"] == "done" and st["prepare"]["restarts"] == 2
    assert st["app"]["pid"] == app["pid"] and st["app"]["restarts"] == 0


def _chain(restarter, tmp_path, extra: str = ""):
    """base <- mid <- top (each requires the one before), plus `loose`, which requires
    base but keeps running when it restarts (restart_dependents = false). Each stamps
    its start, then says READY=1; it stamps its stop on SIGTERM."""
    from tests.conftest import svc
    stamps = tmp_path / "stamps"

    def cmd(name: str) -> str:
        return svc("stamp", name, str(stamps))
    r = restarter(f"""
[service.base]
ready = "notify"
command = {cmd("base")}
backoff = {{ initial = 0.0, factor = 1.0, max = 0.0 }}
{extra}
[service.mid]
ready = "notify"
command = {cmd("mid")}
requires = ["base"]
[service.top]
ready = "notify"
command = {cmd("top")}
requires = ["mid"]
[service.loose]
ready = "notify"
command = {cmd("loose")}
requires = ["base"]
restart_dependents = false
""")
    pids = {n: r.wait_state(n, "ready")["pid"] for n in ("base", "mid", "top", "loose")}
    wait_until(lambda: len(_lines(str(stamps))) == 3 * 4, 10, "four start stamps")
    return r, stamps, pids


def _events(stamps, skip: int) -> list[str]:
    """The stamp lines after the first `skip`, as "what name", in stamp order."""
    with open(stamps) as f:
        rows = [line.split() for line in f.read().splitlines()[skip:]]
    return [f"{w} {n}" for _, w, n in sorted(rows, key=lambda r: int(r[0]))]


def _wait_new_pids(r, pids, names):
    def done():
        st = r.status()
        return all(st[n]["state"] == "ready" and st[n]["pid"] != pids[n] for n in names)
    wait_until(done, 20, f"{', '.join(names)} ready again with new pids")


@pytest.mark.slow
def test_restart_stops_dependents_first_and_starts_them_after(restarter, tmp_path):
    r, stamps, pids = _chain(restarter, tmp_path)
    assert r.req("restart", "base")["ok"]
    _wait_new_pids(r, pids, ("base", "mid", "top"))
    wait_until(lambda: len(_events(stamps, 4)) == 6, 10, "three stops and three starts")
    assert _events(stamps, 4) == ["stop top", "stop mid", "stop base",
                                  "start base", "start mid", "start top"]
    assert r.svc("loose")["pid"] == pids["loose"]  # restart_dependents = false


@pytest.mark.slow
def test_crash_propagation_restarts_in_dependency_order(restarter, tmp_path):
    """base dies on its own: its dependents stop (leaves first) before it starts again."""
    import signal
    r, stamps, pids = _chain(restarter, tmp_path)
    os.kill(pids["base"], signal.SIGKILL)
    _wait_new_pids(r, pids, ("base", "mid", "top"))
    wait_until(lambda: len(_events(stamps, 4)) == 5, 10, "two stops and three starts")
    assert _events(stamps, 4) == ["stop top", "stop mid",
                                  "start base", "start mid", "start top"]
    assert r.svc("loose")["pid"] == pids["loose"]


@pytest.mark.slow
def test_stop_stops_dependents_first_and_they_wait(restarter, tmp_path):
    r, stamps, pids = _chain(restarter, tmp_path)
    assert r.req("stop", "base")["ok"]
    r.wait_state("base", "stopped")
    st = r.status()
    assert st["mid"]["state"] == "waiting" and st["top"]["state"] == "waiting"
    assert st["mid"]["reason"] == "waiting for base: stopped by administrator"
    assert st["top"]["reason"] == "waiting for mid: waiting"
    assert _events(stamps, 4) == ["stop top", "stop mid", "stop base"]
    assert r.req("start", "base")["ok"]
    _wait_new_pids(r, pids, ("base", "mid", "top"))
    wait_until(lambda: len(_events(stamps, 4)) == 6, 10, "three starts")
    assert _events(stamps, 4)[3:] == ["start base", "start mid", "start top"]


def test_table_holds_a_stop_until_dependents_are_down():
    """The same decisions without processes: the state table holds the signal."""
    from hachain.config import Backoff, ServiceConfig
    from hachain.restarter import states
    from hachain.restarter.policy import ExitStatus
    from hachain.restarter.states import Ev, Event, State, Svc, step
    c = ServiceConfig(name="db", command=("x",), backoff=Backoff(0.0, 1.0, 0.0))
    s = Svc("db", state=State.READY, pid=10, started_at=0.0)
    s, acts = step(s, Event(Ev.RESTART, 1, dependents_up="web"), c)
    assert s.state is State.STOPPING and s.after_dependents and s.pid == 10
    assert not any(isinstance(a, states.Kill) for a in acts)
    assert states.StopDependents("db", "required service db is stopping") in acts
    assert s.reason == "restarting (administrator); first stopping web"
    s, acts = step(s, Event(Ev.DEPS_READY, 2, dependents_up="web"), c)
    assert s.after_dependents and acts == []  # web still has a process
    s, acts = step(s, Event(Ev.DEPS_READY, 3), c)
    assert states.Kill("db", c.stop_signal) in acts and not s.after_dependents
    assert s.reason == "restarting (administrator)"
    # A crash with a dependent still up: no spawn until it is down.
    s = Svc("db", state=State.READY, pid=11, started_at=0.0)
    s, acts = step(s, Event(Ev.EXITED, 4, status=ExitStatus("killed", signal=9),
                            dependents_up="web"), c)
    assert s.state is State.WAITING and s.reason == "waiting for web to stop first"
    assert not any(isinstance(a, states.Spawn) for a in acts)
    s, acts = step(s, Event(Ev.DEPS_READY, 5), c)
    assert s.state is State.STARTING and states.Spawn("db") in acts


@pytest.mark.slow
def test_service_caught_mid_restart_is_adopted_ready(restarter):
    """The restarter dies while a ready = "none" service is stopping and wanted up again
    (its record says stopping, its process still runs): the next restarter adopts it as
    ready, not as starting until a readiness timeout (it has no readiness to wait for)."""
    from tests.conftest import svc
    r = restarter(f"""
[service.s]
command = {svc("stubborn")}
stop_timeout = 60
""")
    pid = r.wait_state("s", "ready")["pid"]
    if r.cg_root is None:
        pytest.skip("needs a writable cgroup v2 hierarchy (run as root) to see the child")
    # its child exists once the main process ignores SIGTERM (it forks after)
    cg = os.path.join(r.cg_root, "s", "cgroup.procs")
    wait_until(lambda: len(open(cg).read().split()) == 2, 10, "the stubborn child")
    assert r.req("stop", "s")["ok"]
    r.wait_state("s", "stopping")
    assert r.req("start", "s")["ok"]  # while it stops: its record now says stopping, want up
    assert r.svc("s")["state"] == "stopping"
    r.kill_restarter()
    r.start()
    st = r.wait_state("s", "ready")
    assert st["pid"] == pid and st["reason"] == "adopted"
    # Done. A SIGTERM would have the restarter stop the stubborn service and wait out its
    # stop_timeout of 60 s (the fixture's cleanup gave up after 15 s and used SIGKILL);
    # kill it now instead: the cleanup then kills the service's cgroup.
    r.kill_restarter()
