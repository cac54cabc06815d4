"""kind = "forking" (issue 16.5): the launcher exits; the main pid comes from pid_file or,
when unambiguous, from the cgroup; ready when the launcher exits 0; re-adopted after a
restarter crash like every other kind."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from hachain import channels, config
from hachain.restarter import states
from hachain.restarter.loop import REAP_WAIT
from hachain.restarter.policy import ExitStatus
from hachain.restarter.states import Ev, Event, State, Svc
from tests.conftest import PY, ROOT, START_TIMEOUT, wait_until

FORKD = os.path.join(ROOT, "tests", "helpers", "forkd.py")


def forkd(*args: str) -> str:
    return "[" + ", ".join(f'"{a}"' for a in (PY, FORKD) + args) + "]"


def cfg(**kw: Any) -> config.ServiceConfig:
    return config.ServiceConfig(name="d", command=("x",), kind="forking", **kw)


# --- the table ---------------------------------------------------------------------------------

def _spawned(c: config.ServiceConfig) -> Svc:
    s, acts = states.step(Svc("d"), Event(Ev.START, 0), c)
    s, acts = states.step(s, Event(Ev.SPAWNED, 0, pid=100), c)
    assert s.state is State.STARTING and s.pid == 100
    assert states.ArmTimer("d", "ready_timeout", c.ready_timeout) in acts
    return s


def test_table_launcher_exit_0_with_main_pid_is_ready() -> None:
    c = cfg()
    s, acts = states.step(_spawned(c), Event(Ev.LAUNCHED, 1, pid=200,
                                             status=ExitStatus("exited", 0)), c)
    assert (s.state, s.pid) == (State.READY, 200)
    assert states.CancelTimer("d", "ready_timeout") in acts


def test_table_main_pid_not_known_yet_then_found() -> None:
    c = cfg(pid_file="/run/d.pid")
    s, _ = states.step(_spawned(c), Event(Ev.LAUNCHED, 1, status=ExitStatus("exited", 0),
                                          reason="pid file /run/d.pid not written yet"), c)
    assert (s.state, s.pid) == (State.STARTING, None)
    assert "not written yet" in s.reason
    s, _ = states.step(s, Event(Ev.LAUNCHED, 1.2, pid=201, status=ExitStatus("exited", 0)), c)
    assert (s.state, s.pid) == (State.READY, 201)


def test_table_failed_launcher_is_a_failed_start() -> None:
    c = cfg(restart="on-failure")
    s, acts = states.step(_spawned(c), Event(Ev.LAUNCHED, 1, pid=None,
                                             status=ExitStatus("exited", 3)), c)
    assert s.state is State.BACKOFF and s.last_exit == ExitStatus("exited", 3)


def test_table_adopted_launcher_with_main_pid_is_ready() -> None:
    c = cfg()
    s, _ = states.step(_spawned(c), Event(Ev.LAUNCHED, 1, pid=300,
                                          status=ExitStatus("unknown")), c)
    assert (s.state, s.pid) == (State.READY, 300)


def test_table_stop_without_main_pid_kills_the_cgroup() -> None:
    c = cfg(pid_file="/run/d.pid", stop_timeout=float("inf"))
    s, _ = states.step(_spawned(c), Event(Ev.LAUNCHED, 1, status=ExitStatus("exited", 0)), c)
    s, acts = states.step(s, Event(Ev.STOP, 2), c)
    assert s.state is State.STOPPING
    # no exit can end this stop: the timer is bounded even with stop_timeout = inf
    assert states.ArmTimer("d", "stop_timeout", 1.0) in acts
    s, acts = states.step(s, Event(Ev.STOP_TIMEOUT, 3), c)
    assert s.state is State.STOPPED and states.Kill("d", 9, group=True) in acts


def test_config_forking_rules() -> None:
    base = '[service.d]\ncommand = ["/bin/d"]\nkind = "forking"\n'
    assert config.parse(base + 'pid_file = "/run/d.pid"\n').services["d"].pid_file == "/run/d.pid"
    for extra, key in (('pid_file = "d.pid"\n', "pid_file"), ('ready = "notify"\n', "ready")):
        with pytest.raises(config.ConfigError) as e:
            config.parse(base + extra)
        assert f"service.d.{key}:" in str(e.value)
    with pytest.raises(config.ConfigError) as e:
        config.parse('[service.d]\ncommand = ["/bin/d"]\npid_file = "/run/d.pid"\n')
    assert "only with kind = \"forking\"" in str(e.value)


# --- real processes -----------------------------------------------------------------------------

def _main_pid(pid_file: str) -> int:
    return wait_until(lambda: _read(pid_file), 10, f"{pid_file}")


def _read(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def test_pid_file_main_is_supervised(restarter: Any, tmp_path: Any) -> None:
    pf = str(tmp_path / "d.pid")
    r = restarter(f"""
[service.d]
command = {forkd("--pid-file", pf, "--workers", "2")}
kind = "forking"
pid_file = "{pf}"
ready_timeout = 10
backoff = {{ initial = 0.1 }}
""")
    st = r.wait_state("d", "ready")
    main = _main_pid(pf)
    assert st["pid"] == main and st["kind"] == "forking"
    r.pids_seen.add(main)
    os.kill(main, signal.SIGKILL)
    st = wait_until(lambda: (x := r.svc("d"))["state"] == "ready" and x["pid"] != main and x,
                    10, "d ready again with a new main pid")
    assert st["pid"] == _read(pf) and st["restarts"] == 1
    assert not channels.pid_alive(main)
    r.pids_seen.add(st["pid"])
    assert r.req("stop", "d")["ok"]
    r.wait_state("d", "stopped")
    wait_until(lambda: not channels.pid_alive(st["pid"]), 5, "the main process gone")
    if r.cg_root:
        assert open(os.path.join(r.cg_root, "d", "cgroup.procs")).read() == ""


def test_pid_file_written_after_the_launcher_exits(restarter: Any, tmp_path: Any) -> None:
    pf = str(tmp_path / "late.pid")
    r = restarter(f"""
[service.d]
command = {forkd("--pid-file", pf, "--late")}
kind = "forking"
pid_file = "{pf}"
ready_timeout = 10
""")
    st = r.wait_state("d", "ready")
    assert st["pid"] == _read(pf)
    r.pids_seen.add(st["pid"])
    log = open(r.log).read()
    assert f"waiting for the main pid: pid file {pf} not written yet" in log, log
    assert f"main pid {st['pid']} (from {pf})" in log


def test_main_pid_from_the_cgroup(restarter: Any, tmp_path: Any) -> None:
    rec = str(tmp_path / "masters")
    r = restarter(f"""
[service.d]
command = {forkd("--workers", "3", "--record", rec)}
kind = "forking"
ready_timeout = 10
""")
    if r.cg_root is None:
        pytest.fail("no writable cgroup v2 here; the cgroup path needs one")
    st = r.wait_state("d", "ready")
    r.pids_seen.add(st["pid"])
    assert st["pid"] == _read(rec)  # the master, not one of its 3 workers


@pytest.mark.slow
def test_launcher_failure_and_missing_pid_file(restarter: Any, tmp_path: Any) -> None:
    pf = str(tmp_path / "never.pid")
    r = restarter(f"""
[service.bad]
command = {forkd("--fail", "4")}
kind = "forking"
restart = "never"

[service.nopid]
command = {forkd("--workers", "1")}
kind = "forking"
pid_file = "{pf}"
restart = "never"
ready_timeout = 1
stop_timeout = 1
""")
    st = r.wait_state("bad", "failed")
    assert "exit status 4" in st["reason"]
    st = r.wait_state("nopid", "failed", timeout=10)
    assert "readiness" in st["reason"] or "timeout" in st["reason"], st
    if r.cg_root:
        for name in ("bad", "nopid"):
            wait_until(lambda n=name: open(os.path.join(r.cg_root, n, "cgroup.procs")).read()
                       == "", 5, f"{name}'s cgroup empty")


@pytest.mark.slow
def test_readoption_of_a_forking_service(restarter: Any, tmp_path: Any) -> None:
    pf = str(tmp_path / "d.pid")
    rec = str(tmp_path / "masters")
    r = restarter(f"""
[service.d]
command = {forkd("--pid-file", pf, "--record", rec, "--workers", "1")}
kind = "forking"
pid_file = "{pf}"
backoff = {{ initial = 0.1 }}
""")
    main = r.wait_state("d", "ready")["pid"]
    r.pids_seen.add(main)
    r.kill_restarter()
    r.start()
    st = r.wait_state("d", "ready")
    assert st["pid"] == main and "adopted" in st["reason"]
    assert open(rec).read().split() == [str(main)]  # no second copy
    os.kill(main, signal.SIGKILL)  # the adopted main dies: restarted
    # The bound: the wait for another process's reap (REAP_WAIT), the backoff, and a new
    # launcher, a Python helper, starting and writing its pid file: a Python start-up,
    # which nothing configures (START_TIMEOUT; CI, a host running two suites at once:
    # back after more than 10 s)
    st = wait_until(lambda: (x := r.svc("d"))["state"] == "ready" and x["pid"] != main and x,
                    REAP_WAIT + 0.1 + START_TIMEOUT, "d back after its adopted main died")
    r.pids_seen.add(st["pid"])
    assert len(open(rec).read().split()) == 2


@pytest.mark.slow
def test_readoption_while_the_launcher_runs(restarter: Any, tmp_path: Any) -> None:
    """The restarter dies while the launcher is still running: the next one adopts the
    launcher (its exit status then goes to init, not to us) and, once it has exited and
    the pid file names the master, the service is ready with that pid."""
    pf, go = str(tmp_path / "d.pid"), str(tmp_path / "go")
    r = restarter(f"""
[service.d]
command = {forkd("--pid-file", pf, "--launch-file", go)}
kind = "forking"
pid_file = "{pf}"
ready_timeout = 20
""")
    launcher = r.wait_state("d", "starting")["pid"]
    r.pids_seen.add(launcher)
    r.kill_restarter()
    r.start()
    st = r.wait_state("d", "starting")
    assert st["pid"] == launcher and "adopted" in st["reason"]
    open(go, "w").close()  # let the launcher exit now
    st = r.wait_state("d", "ready")
    main = _main_pid(pf)
    r.pids_seen.add(main)
    assert st["pid"] == main != launcher
