"""Adoption as the table's `adopted` cell (hachain/restarter/states.py), on real
processes: a stop by hand that a restarter crash interrupts is carried on by the next
restarter (adopted as stopping, SIGKILL when what was left of its stop_timeout runs out,
still wanted down), and an adopted service's health checks run again."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from hachain import channels
from tests.conftest import svc, wait_until

pytestmark = pytest.mark.timeout(90)

# s: stop_timeout; the restarter dies half-way through it. The half left must outlast a
# new restarter's start, which nothing configures: on a host loaded by CI, the fast lane
# and two busy loops at once, it took more than the 3 s that STOP = 6 left (the stop was
# over when the new restarter first answered). 8 s left; the two deadlines the test tells
# apart (the first stop's, and one begun afresh) are 8 s apart too.
STOP = 16.0


def ignoring_sigterm(r: Any, pid: int) -> None:
    """svc.py stubborn ignores SIGTERM before it forks its child: wait for the child (left
    to the fixture's clean-up, which kills its own process group, as it is setsid)."""
    def child() -> list[str]:
        try:
            return open(f"/proc/{pid}/task/{pid}/children").read().split()
        except OSError:
            return []
    r.pids_seen.update(int(p) for p in wait_until(child, 10, f"stubborn pid {pid}'s child"))


def test_stop_in_progress_is_carried_on_by_the_next_restarter(restarter):
    r = restarter(f"""
[service.s]
command = {svc("stubborn")}
stop_timeout = {STOP}
""")
    pid = r.wait_state("s", "ready")["pid"]
    ignoring_sigterm(r, pid)
    t_stop = time.monotonic()
    assert r.req("stop", "s")["ok"]  # SIGTERM, ignored
    assert r.svc("s")["state"] == "stopping"
    wait_until(lambda: time.monotonic() >= t_stop + STOP / 2, STOP, "half the stop timeout")
    r.kill_restarter()
    t_kill = time.monotonic()
    assert channels.pid_alive(pid)
    r.start()
    st = r.svc("s")
    assert (st["state"], st["pid"], st["want"]) == ("stopping", pid, "down"), st
    assert "carried on after the restarter restarted" in st["reason"]
    # SIGKILL at the first stop's deadline, t_stop + STOP; a stop begun afresh by the new
    # restarter would end no earlier than t_kill + STOP
    st = r.wait_state("s", "stopped", timeout=2 * STOP)
    t_gone = time.monotonic()
    assert t_gone < t_kill + STOP, f"killed {t_gone - t_stop:.2f} s after the stop"
    assert st["reason"] == "stopped by administrator" and st["pid"] is None
    assert not channels.pid_alive(pid)
    if r.cg_root is not None:
        assert open(os.path.join(r.cg_root, "s", "cgroup.procs")).read().split() == []
    with open(os.path.join(r.persist_dir, "admin.json")) as f:
        assert json.load(f)["s"] == {"want": "down"}  # admin.json's want, kept
    r.beats(3)
    assert r.svc("s")["state"] == "stopped"  # and it is not started again


def test_stop_held_for_dependents_begins_again_after_a_restarter_crash(restarter):
    """A held stop (what requires it still stopping) has sent no signal yet: no stop_since
    in the record, so the next restarter adopts it running and stops it again, in order."""
    r = restarter(f"""
[service.db]
command = {svc("sleep")}
[service.web]
command = {svc("stubborn")}
requires = ["db"]
stop_timeout = 60
""")
    r.wait_state("db", "ready")
    web = r.wait_state("web", "ready")["pid"]
    ignoring_sigterm(r, web)
    assert r.req("stop", "db")["ok"]
    db = r.svc("db")
    assert db["state"] == "stopping" and "first stopping web" in db["reason"]
    rec = json.load(open(os.path.join(r.state_dir, "services", "db.json")))
    assert rec["state"] == "stopping" and rec["stop_since"] is None
    r.kill_restarter()
    r.start()
    # db's stop begins again, held behind web (wanted up: adopted ready, mid-restart),
    # which is asked to stop again; nothing is killed out of order
    wait_until(lambda: "first stopping web" in r.svc("db")["reason"], 10,
               "db's stop held behind web again")
    st = wait_until(lambda: (s := r.svc("web"))["state"] == "stopping" and s, 10,
                    "web stopping again")
    assert st["pid"] == web and r.svc("db")["pid"] == db["pid"]
    r.kill_restarter()  # not a 60 s orderly stop: the fixture kills what is left


def test_health_checks_run_again_after_a_restarter_crash(restarter, tmp_path):
    """An adopted ready service gets its health checks again (the adopted cell goes
    through the core, which arms them on entering ready): a hang found after the
    restarter's restart still restarts it."""
    flag = tmp_path / "healthy"
    flag.write_text("")
    runs = tmp_path / "checks"  # one line per check run
    r = restarter(f"""
[service.h]
command = {svc("sleep")}
health = {{ kind = "exec", command = ["/bin/sh", "-c", "echo >> {runs}; test -e {flag}"], interval = 0.1, timeout = 1, failures = 2 }}
stop_timeout = 0.5
""")
    pid = r.wait_state("h", "ready")["pid"]
    r.kill_restarter()
    r.start()
    assert r.svc("h")["pid"] == pid  # adopted
    n = len(runs.read_text().splitlines()) if runs.exists() else 0
    wait_until(lambda: runs.exists() and len(runs.read_text().splitlines()) >= n + 2, 10,
               "2 checks run by the new restarter")
    flag.unlink()
    s = wait_until(lambda: (x := r.svc("h"))["pid"] not in (None, pid) and x, 10,
                   "h restarted by its health check")
    assert s["last_exit"]["kind"] == "hung"
