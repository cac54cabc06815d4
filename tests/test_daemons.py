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
from tests.conftest import reap, wait_until
from tests.helpers import daemons as D

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]  # real daemons and a benchmark


@pytest.fixture(autouse=True)
def _installed() -> None:
    why = D.missing()
    if why:
        pytest.skip(why)  # a failure under CI=true (tests/conftest.py)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _cgroup_procs(r: D.RestarterRun, name: str) -> list[int]:
    assert r.cg_root, "these tests need a writable cgroup v2"
    try:
        with open(os.path.join(r.cg_root, name, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def logged(r: D.RestarterRun, name: str, *lines: str) -> str:
    """The service's log once every one of `lines` is in it: output reaches the file
    through the logger, a moment after the event that made it (a state, an exit)."""
    def text() -> str:
        try:
            with open(os.path.join(r.persist_dir, "log", name + ".log")) as f:
                got = f.read()
        except FileNotFoundError:
            return ""
        return got if all(line in got for line in lines) else ""
    return str(wait_until(text, 30, f"{name}'s log to hold {lines}"))


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
            log = logged(r, "pg", "received fast shutdown request",
                         "database system is shut down")
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


def test_nginx_under_protect_system_strict() -> None:
    """A real daemon in the sandbox hardened units ask for: it serves, its master and
    workers see / read-only and the homes hidden, and what it writes goes to the one
    writable path; a restart after a kill comes up the same way."""
    with D.daemon_dir() as tmp:
        ng = D.nginx_foreground(tmp, sandboxed=True)
        with D.restarter(tmp, ng.body) as r:
            st = D.wait_ready(r, ng)
            for pid in _cgroup_procs(r, "nginx"):
                with open(f"/proc/{pid}/mountinfo") as f:
                    seen = {ln.split()[4]: ln.split()[5].split(",") for ln in f}
                assert "ro" in seen["/"] and "ro" in seen["/root"], seen
                assert "rw" in seen[tmp], seen
            assert os.path.exists(os.path.join(tmp, "nginx", "fg.pid"))
            _, new_pid = D.kill_and_time(r, ng)
            r.pids_seen.add(new_pid)
            D.wait_ready(r, ng, old_pid=st["pid"])


def test_nginx_forking_from_its_debian_unit() -> None:
    with D.daemon_dir() as tmp:
        ng, warnings = D.nginx_forking(tmp)
        assert 'kind = "forking"' in ng.body and "pid_file" in ng.body
        assert not any("forking" in w.lower() for w in warnings), warnings
        assert 'pre_start = [["/usr/sbin/nginx", "-t", "-q"' in ng.body  # ExecStartPre=
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
            # the unit's ExecStop= stops it: start-stop-daemon's QUIT, a graceful stop
            assert r.req("stop", "nginx")["ok"]
            r.wait_state("nginx", "stopped", timeout=30)
            assert _cgroup_procs(r, "nginx") == []
            log = open(r.log).read()
            assert "nginx: stop_command started" in log and "stop_command exit" not in log, \
                log[-2000:]


def test_redis_under_its_imported_hardened_unit() -> None:
    """Debian's redis-server.service, hardening included, through `hachain import`: the
    seccomp and Protect*= keys become eight programs on the running server (with
    no_new_privs), the kernel's tunables are read-only, nothing is executable but its
    program and libraries, the
    file system is read-only but its directory, and it serves, crashes and comes back,
    and stops, all under them."""
    with D.daemon_dir() as tmp:
        rd, warnings = D.redis_imported(tmp)
        for key in ("system_call_filter = [\"@system-service\", \"~@privileged\", "
                    "\"~@resources\"]", "memory_deny_write_execute = true",
                    "restrict_address_families = [\"AF_INET\", \"AF_INET6\", \"AF_UNIX\"]",
                    'protect_system = "strict"', "capability_bounding_set = []"):
            assert key in rd.body, rd.body
        assert not any("SystemCallFilter" in w or "MemoryDeny" in w for w in warnings)
        with D.restarter(tmp, rd.body) as r:
            st = D.wait_ready(r, rd)
            assert D.redis_cli(rd.port, "set", "k", "v") == "OK"
            with open(f"/proc/{st['pid']}/status") as f:
                status = dict(ln.split(":", 1) for ln in f if ":" in ln)
            assert (status["Seccomp"].strip(), status["Seccomp_filters"].strip(),
                    status["NoNewPrivs"].strip(), status["CapBnd"].strip()) == (
                "2", "8", "1", "0000000000000000")
            # ProtectKernelTunables=: read-only in its namespace, even under strict
            with open(f"/proc/{st['pid']}/mountinfo") as f:
                sysctl = [ln.split() for ln in f if ln.split()[4] == "/proc/sys"]
            assert sysctl and "ro" in sysctl[-1][5].split(","), sysctl
            # NoExecPaths=/ with ExecPaths= for its program and libraries: it runs
            with open(f"/proc/{st['pid']}/mountinfo") as f:
                mounts = {ln.split()[4]: ln.split()[5].split(",") for ln in f}
            assert "noexec" in mounts["/"] and "noexec" not in mounts["/usr/lib"], mounts
            _, new_pid = D.kill_and_time(r, rd)
            r.pids_seen.add(new_pid)
            D.wait_ready(r, rd, old_pid=st["pid"])
            assert r.req("stop", "redis")["ok"]
            r.wait_state("redis", "stopped", timeout=30)
            assert _cgroup_procs(r, "redis") == []


def test_nginx_reloads_through_its_imported_exec_reload() -> None:
    """Debian's `ExecReload=nginx -s reload`, imported as reload_command: `hachain reload
    nginx` makes the running master serve the changed configuration, under the same pid,
    with no restart; a broken file is a failed reload (nginx's own test refuses it) and
    the old configuration goes on serving."""
    with D.daemon_dir() as tmp:
        ng, _warnings = D.nginx_forking(tmp)
        assert "reload_command = [\"/usr/sbin/nginx\"" in ng.body
        conf = os.path.join(tmp, "nginx", "nginx.conf")
        with D.restarter(tmp, ng.body) as r:
            st = D.wait_ready(r, ng)
            assert D.http_body(ng.port) == "hachain\n"
            text = open(conf).read()
            with open(conf, "w") as f:
                f.write(text.replace('return 200 "hachain', 'return 200 "reloaded'))
            cli = [sys.executable, "-m", "hachain.cli", "reload", "nginx", "--state-dir",
                   r.state_dir]
            p = subprocess.run(cli, capture_output=True, text=True, timeout=30, check=False)
            assert (p.returncode, p.stdout) == (0, "nginx: reloaded\n"), p.stderr
            # the master starts new workers on the new file, then retires the old ones
            wait_until(lambda: D.http_body(ng.port) == "reloaded\n", 10,
                       "the new configuration to be served")
            with open(conf, "w") as f:
                f.write(text.replace('return 200 "hachain', 'return 200 "broken'
                                     ).replace("events {", "events {{"))
            p = subprocess.run(cli, capture_output=True, text=True, timeout=30, check=False)
            assert (p.returncode, p.stderr) == (
                1, "hachain: reload nginx: failed: reload_command exit status 1\n")
            logged(r, "nginx", "[emerg]")  # nginx's own reason, on its log
            assert D.http_body(ng.port) == "reloaded\n"
            now = r.svc("nginx")
            assert (now["state"], now["pid"], now["restarts"]) == ("ready", st["pid"], 0)


def test_nginx_config_test_keeps_a_broken_config_from_starting() -> None:
    """The imported unit's `nginx -t` (ExecStartPre=) as pre_start: a broken nginx.conf
    fails every start before nginx runs, the service log names the failed command and
    nginx's own reason, the intensity limit holds it in maintenance; once the file is
    fixed, `hachain clear` starts it."""
    with D.daemon_dir() as tmp:
        ng, _warnings = D.nginx_forking(tmp)
        conf = os.path.join(tmp, "nginx", "nginx.conf")
        good = open(conf).read()
        with open(conf, "w") as f:
            f.write(good.replace("worker_processes 2;", "worker_processes two;"))
        with D.restarter(tmp, ng.body) as r:
            st = r.wait_state("nginx", "maintenance", timeout=60)
            assert "exit status 1" in st["reason"], st
            log = logged(r, "nginx", '"worker_processes" directive invalid value',
                         "failed: status 1; the start fails")
            assert "hachain: pre_start 1/1 (/usr/sbin/nginx -t -q -g daemon on; " \
                   "master_process on; -c " in log, log[-2000:]
            assert "failed: status 1; the start fails" in log
            assert not os.path.exists(os.path.join(tmp, "nginx", "forking.pid"))
            with open(conf, "w") as f:
                f.write(good)
            assert r.req("clear", "nginx")["ok"]
            st = D.wait_ready(r, ng)
            r.pids_seen.add(st["pid"])
            assert st["pid"] == int(open(os.path.join(tmp, "nginx", "forking.pid")).read())
            assert r.req("stop", "nginx")["ok"]
            r.wait_state("nginx", "stopped", timeout=30)
            assert _cgroup_procs(r, "nginx") == []


@pytest.mark.parametrize("kill_mode", ["process", "cgroup"])
def test_sshd_restart_keeps_open_sessions_only_with_kill_mode_process(kill_mode: str) -> None:
    """Debian's ssh.service: Type=notify, KillMode=process. A `hachain restart sshd`
    with kill_mode = "process" signals only the listener: an open session (its own sshd
    child in the service's cgroup) keeps running, is listed as a leftover, and the new
    listener starts beside it. With "cgroup" the session goes with the restart."""
    with D.daemon_dir() as tmp:
        sd, key = D.sshd(tmp, kill_mode)
        with D.restarter(tmp, sd.body) as r:
            st = D.wait_ready(r, sd)
            marker = os.path.join(tmp, "session-alive")
            sess = D.ssh_session(sd.port, key, f"echo open; while :; do touch {marker}; "
                                               "sleep 0.2; done")
            try:
                assert sess.stdout is not None
                assert sess.stdout.readline() == b"open\n", sess.stderr.read1(4096)  # type: ignore[union-attr]
                # its first touch comes after the echo: the unlink below must find one
                wait_until(lambda: os.path.exists(marker), 10, "the session's first touch")
                # the session's own sshd processes (not its short-lived sleeps)
                session_procs = {p for p in _cgroup_procs(r, "sshd")
                                 if p != st["pid"] and _comm(p) == "sshd"}
                assert session_procs, "the session's sshd runs in the service's cgroup"
                assert r.req("restart", "sshd")["ok"]
                st2 = D.wait_ready(r, sd, old_pid=st["pid"])
                r.pids_seen.add(st2["pid"])
                if kill_mode == "process":
                    assert sess.poll() is None, "the open session was killed by the restart"
                    assert session_procs <= set(_cgroup_procs(r, "sshd"))
                    os.unlink(marker)
                    wait_until(lambda: os.path.exists(marker), 10, "the session still working")
                    assert r.svc("sshd").get("leftovers"), r.svc("sshd")
                else:
                    assert sess.wait(15) != 0  # its connection went with the cgroup
                    assert not session_procs & set(_cgroup_procs(r, "sshd"))
            finally:
                if sess.poll() is None:
                    sess.kill()
                reap(sess, "the ssh session")


def test_migrate_then_serve_appliance() -> None:
    """A oneshot migration, then the server that needs it: the server starts only once
    the migration is done (it refuses to start without the schema), is never restarted
    by the migration's clean exit, and a failed migration keeps it down, saying why."""
    with D.daemon_dir() as tmp:
        port = D.free_port()
        schema = os.path.join(tmp, "schema")
        serve = (f"import http.server, os, sys; "
                 f"os.path.exists({schema!r}) or sys.exit('no schema'); "
                 f"http.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler, "
                 f"port={port}, bind='127.0.0.1')")
        body = f"""
[service.migrate]
kind = "oneshot"
command = ["/bin/sh", "-c", "sleep 0.5; test -e {tmp}/fail && exit 3; echo v2 > {schema}"]
restart = "on-failure"
intensity = {{ max_restarts = 1, window = 60, action = "maintenance" }}
[service.serve]
command = ["{sys.executable}", "-c", "{serve}"]
requires = ["migrate"]
ready = "tcp"
ready_port = {port}
"""
        with D.restarter(tmp, body) as r:
            r.wait_state("migrate", "done", timeout=30)
            st = r.wait_state("serve", "ready", timeout=30)
            assert st["restarts"] == 0 and open(schema).read() == "v2\n"
            assert D.http_get(port).startswith("HTTP/1.0 200")
        os.unlink(schema)
        open(os.path.join(tmp, "fail"), "w").close()
        with D.restarter(os.path.join(tmp), body) as r:
            m = r.wait_state("migrate", "maintenance", timeout=30)
            assert "exit status 3" in m["reason"]
            s = r.svc("serve")
            assert s["state"] == "waiting" and "migrate" in s["reason"], s
            assert s["pid"] is None


def test_daemons_bench_smoke() -> None:
    """bench/daemons_bench.py (the figures in docs/operations.md) runs end to end."""
    r = subprocess.run([sys.executable, os.path.join(D.ROOT_DIR, "bench", "daemons_bench.py"),
                        "--runs", "1", "--only", "redis,nginx-forking"],
                       capture_output=True, text=True, timeout=50, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| redis") or
            ln.startswith("| nginx (forking")]
    assert len(rows) == 2 and all(ln.count(" ms (") == 2 for ln in rows), r.stdout
