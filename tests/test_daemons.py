"""Real Debian daemons supervised as their packages run them (issue 16, Tests): PostgreSQL
and redis with sd_notify readiness, nginx in the foreground with tcp readiness, and nginx
forking from its own unit through `hachain import`. Ports on 127.0.0.1 only, files in a
temporary directory, nothing left running (each test's restarter stops its services and
removes its cgroup tree on the way out)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hachain import channels
from tests.conftest import wait_until
from tests.helpers import daemons as D

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _installed() -> None:
    why = D.missing()
    if why:
        pytest.skip(why)  # a failure under CI=true (tests/conftest.py)


def _cgroup_procs(r: D.RestarterRun, name: str) -> list[int]:
    assert r.cg_root, "these tests need a writable cgroup v2"
    try:
        with open(os.path.join(r.cg_root, name, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def test_postgresql_notify_crash_recovery_and_fast_shutdown() -> None:
    with D.daemon_dir() as tmp:
        pg = D.postgres(tmp)
        with D.restarter(tmp, pg.body) as r:
            st = D.wait_ready(r, pg)
            assert D.psql(pg.port, "create table t (x int); insert into t values (42)") == ""
            _, new_pid = D.kill_and_time(r, pg)  # SIGKILL the postmaster
            assert new_pid != st["pid"]
            D.wait_ready(r, pg, old_pid=st["pid"])
            assert D.psql(pg.port, "select x from t") == "42"  # the committed row survived
            assert r.svc("pg")["restarts"] == 1
            r.pids_seen.add(new_pid)
            rc = subprocess.run([sys.executable, "-m", "hachain.cli", "stop", "pg",
                                 "--state-dir", r.state_dir, "--persist-dir", r.persist_dir],
                                capture_output=True, text=True, timeout=30, check=False)
            assert rc.returncode == 0, rc.stderr
            r.wait_state("pg", "stopped", timeout=30)
            assert not channels.pid_alive(new_pid)
            assert _cgroup_procs(r, "pg") == []
            log = open(os.path.join(r.persist_dir, "log", "pg.log")).read()
            after_crash = log[log.rindex("database system was interrupted"):]
            assert "received fast shutdown request" in after_crash, log[-2000:]
            assert "database system is shut down" in after_crash, log[-2000:]


def test_redis_notify() -> None:
    with D.daemon_dir() as tmp:
        rd = D.redis(tmp)
        with D.restarter(tmp, rd.body) as r:
            st = D.wait_ready(r, rd)
            assert D.redis_cli(rd.port, "set", "k", "v") == "OK"
            assert r.svc("redis")["status_text"], "redis sends STATUS= with READY=1"
            _, new_pid = D.kill_and_time(r, rd)
            r.pids_seen.add(new_pid)
            D.wait_ready(r, rd, old_pid=st["pid"])
            assert D.redis_cli(rd.port, "get", "k") == ""  # a new, empty server (--save "")
            assert r.req("stop", "redis")["ok"]
            r.wait_state("redis", "stopped", timeout=30)  # stop_timeout = "infinity"
            assert _cgroup_procs(r, "redis") == []


def test_nginx_foreground_tcp_ready() -> None:
    with D.daemon_dir() as tmp:
        ng = D.nginx_foreground(tmp)
        with D.restarter(tmp, ng.body) as r:
            st = D.wait_ready(r, ng)
            wait_until(lambda: len(_cgroup_procs(r, "nginx")) == 3, 10, "master + 2 workers")
            old = set(_cgroup_procs(r, "nginx"))
            _, new_pid = D.kill_and_time(r, ng)
            r.pids_seen.add(new_pid)
            D.wait_ready(r, ng, old_pid=st["pid"])
            wait_until(lambda: len(_cgroup_procs(r, "nginx")) == 3, 10, "master + 2 workers")
            assert not old & set(_cgroup_procs(r, "nginx")), "an old worker survived"


def test_nginx_forking_from_its_debian_unit() -> None:
    with D.daemon_dir() as tmp:
        ng, warnings = D.nginx_forking(tmp)
        assert 'kind = "forking"' in ng.body and "pid_file" in ng.body
        assert not any("forking" in w.lower() for w in warnings), warnings
        with D.restarter(tmp, ng.body) as r:
            st = D.wait_ready(r, ng)
            pid_file = os.path.join(tmp, "nginx", "forking.pid")
            assert st["pid"] == int(open(pid_file).read())  # the master, not the launcher
            assert st["kind"] == "forking"
            _, new_pid = D.kill_and_time(r, ng)
            r.pids_seen.add(new_pid)
            st2 = D.wait_ready(r, ng, old_pid=st["pid"])
            assert st2["pid"] == int(open(pid_file).read())
            # the killed master's workers went with it (its cgroup was cleared)
            wait_until(lambda: len(_cgroup_procs(r, "nginx")) == 3, 10, "master + 2 workers")
            assert r.req("stop", "nginx")["ok"]
            r.wait_state("nginx", "stopped", timeout=30)
            assert _cgroup_procs(r, "nginx") == []


def test_daemons_bench_smoke() -> None:
    """bench/daemons_bench.py (the figures in docs/operations.md) runs end to end."""
    r = subprocess.run([sys.executable, os.path.join(D.ROOT_DIR, "bench", "daemons_bench.py"),
                        "--runs", "1", "--only", "redis,nginx-forking"],
                       capture_output=True, text=True, timeout=50, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| redis") or
            ln.startswith("| nginx (forking")]
    assert len(rows) == 2 and all(ln.count(" ms (") == 2 for ln in rows), r.stdout
