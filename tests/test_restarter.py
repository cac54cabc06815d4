"""The restarter against real processes: policy, intensity, stop, persistence, adoption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hachain import channels, client
from tests.conftest import KILLED_BOUND, svc, wait_until


@pytest.mark.slow
def test_crash_is_restarted_after_backoff(restarter):
    r = restarter(f"""
[service.a]
command = {svc("sleep")}
backoff = {{ initial = 0.3, factor = 2.0, max = 5 }}
""")
    first = r.wait_state("a", "ready")["pid"]
    t0 = time.monotonic()
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: r.svc("a")["state"] == "backoff", 5, "a in backoff")
    s = wait_until(lambda: (x := r.svc("a"))["state"] == "ready" and x["pid"] != first and x,
                   5, "a restarted")
    assert time.monotonic() - t0 >= 0.3  # the backoff delay was honoured
    assert s["restarts"] == 1
    assert s["last_exit"]["text"] == "killed by SIGKILL"


@pytest.mark.slow
def test_intensity_exceeded_goes_to_maintenance_and_clear_restarts(restarter):
    r = restarter(f"""
[service.flap]
command = {svc("exit", "3")}
backoff = {{ initial = 0.0, factor = 1.0, max = 0 }}
intensity = {{ max_restarts = 3, window = 60, action = "maintenance" }}
""")
    s = r.wait_state("flap", "maintenance")
    assert s["restarts"] == 4
    assert "4 restarts in 60 s" in s["reason"]
    rep = r.req("start", "flap")
    assert not rep["ok"] and "clear" in rep["error"]
    assert r.req("clear", "flap")["ok"]
    wait_until(lambda: r.svc("flap")["reason"] != s["reason"], 5, "flap left maintenance")
    r.wait_state("flap", "maintenance")  # it still fails, so it comes back to maintenance


def test_restart_never_stays_down(restarter):
    r = restarter(f"""
[service.n]
command = {svc("exit", "1")}
restart = "never"
""")
    s = r.wait_state("n", "failed")
    assert s["restarts"] == 0 and s["last_exit"]["code"] == 1
    r.beats(3)  # an observation window: nothing may restart it
    assert r.svc("n")["state"] == "failed" and r.svc("n")["restarts"] == 0


def test_on_failure_does_not_restart_a_clean_exit(restarter):
    r = restarter(f"""
[service.ok]
command = {svc("exit", "0")}
restart = "on-failure"
""")
    s = r.wait_state("ok", "stopped")
    assert s["restarts"] == 0


def test_oneshot_runs_once_and_is_done(restarter, tmp_path):
    marker = tmp_path / "ran"
    r = restarter(f"""
[service.once]
kind = "oneshot"
command = ["/bin/sh", "-c", "echo x >> {marker}"]
""")
    r.wait_state("once", "done")
    r.beats(2)  # a done oneshot is not started again
    assert marker.read_text() == "x\n"


def test_stop_kills_children_that_ignore_sigterm(restarter):
    r = restarter(f"""
[service.stub]
command = {svc("stubborn")}
stop_timeout = 0.5
""")
    pid = r.wait_state("stub", "ready")["pid"]
    procs = wait_until(lambda: len(p := _cgroup_procs(r, "stub")) == 2 and p, 5,
                       "the stubborn child") if r.cg_root else [pid]
    assert r.req("stop", "stub")["ok"]
    r.wait_state("stub", "stopped")
    for p in procs:
        wait_until(lambda p=p: not channels.pid_alive(p), 5, f"pid {p} gone")
    assert "SIGKILL" in open(r.log).read()


def _cgroup_procs(r, name):
    try:
        with open(os.path.join(r.cg_root, name, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def test_admin_state_survives_restarter_restart(restarter):
    r = restarter(f"""
[service.a]
command = {svc("sleep")}
[service.b]
command = {svc("exit", "1")}
backoff = {{ initial = 0.0, factor = 1.0, max = 0 }}
intensity = {{ max_restarts = 1, window = 60 }}
""")
    r.wait_state("a", "ready")
    assert r.req("stop", "a")["ok"]
    r.wait_state("a", "stopped")
    r.wait_state("b", "maintenance")
    r.kill_restarter()
    r.start()
    assert r.svc("a")["state"] == "stopped"
    assert r.svc("b")["state"] == "maintenance"
    assert r.req("start", "a")["ok"]
    r.wait_state("a", "ready")


@pytest.mark.slow
def test_readoption_keeps_pids_and_starts_no_duplicate(restarter, tmp_path):
    rec = tmp_path / "starts"
    body = "".join(f"""
[service.s{i}]
command = {svc("record", str(rec))}
""" for i in range(20))
    body += f"""
[service.n]
command = {svc("notify", "0.1")}
ready = "notify"
"""
    r = restarter(body)
    for i in range(20):
        r.wait_state(f"s{i}", "ready")
    r.wait_state("n", "ready")
    # ready = "none" means spawned: wait until each service has run far enough to record
    wait_until(lambda: rec.exists() and len(rec.read_text().split()) >= 20, 10,
               "20 start records")
    before = {n: s["pid"] for n, s in r.status().items()}
    r.kill_restarter()
    victim = before["s3"]
    os.killpg(victim, signal.SIGKILL)  # dies while no restarter watches it
    wait_until(lambda: not channels.pid_alive(victim), KILLED_BOUND, "s3 dead")
    r.start()
    after = wait_until(lambda: (st := r.status())["s3"]["state"] == "ready" and st, 10, "s3 back")
    for n, pid in before.items():
        if n != "s3":
            assert after[n]["pid"] == pid, f"{n} was not re-adopted"
            assert after[n]["state"] == "ready"
    assert after["s3"]["pid"] != victim
    assert after["s3"]["last_exit"]["kind"] == "unknown"
    starts = wait_until(lambda: len(x := rec.read_text().split()) >= 21 and x, 10,
                        "the replacement's start record")
    assert len(starts) == 21  # 20 first starts + the one replacement, no duplicates


def test_recycled_pid_is_not_adopted(restarter):
    r = restarter(f"""
[service.a]
command = {svc("sleep")}
""")
    pid = r.wait_state("a", "ready")["pid"]
    r.kill_restarter()
    # Forge the record so it names a live process that is not the service (this test's
    # own pid): start time verification must refuse it.
    path = os.path.join(r.state_dir, "services", "a.json")
    d = channels.read_json(path)
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not channels.pid_alive(pid), KILLED_BOUND, "a dead")
    d["pid"] = os.getpid()
    channels.write_json(path, d)
    r.start()
    s = wait_until(lambda: (x := r.svc("a"))["state"] == "ready" and x["pid"] not in (
        pid, os.getpid()) and x, 10, "a restarted with a new pid")
    assert s["pid"] != os.getpid()


def test_bad_requests_get_errors_and_change_nothing(restarter):
    r = restarter(f"""
[service.a]
command = {svc("sleep")}
""")
    pid = r.wait_state("a", "ready")["pid"]
    import socket
    for junk in (b"garbage\n", b"{\"op\": 3}\n", b"[1,2]\n", b"\xff\xfe\n",
                 b"x" * (70 * 1024)):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(os.path.join(r.state_dir, "control.sock"))
        try:
            s.sendall(junk)
            rep = s.recv(65536)
        except OSError:
            rep = b""
        s.close()
        assert b'"ok":false' in rep
    rep = r.req("stop", "nope")
    assert not rep["ok"] and "unknown service 'nope'" in rep["error"]
    rep = r.req("frobnicate", "a")
    assert not rep["ok"] and "unknown op" in rep["error"]
    assert r.svc("a")["pid"] == pid and r.svc("a")["state"] == "ready"


@pytest.mark.slow
def test_second_restarter_refuses_to_start(restarter):
    import subprocess
    import sys
    r = restarter(f"""
[service.a]
command = {svc("sleep")}
""")
    p = subprocess.run([sys.executable, "-m", "hachain.restarter", "-c", r.config],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 1
    assert "another restarter is already running" in p.stderr


@pytest.mark.slow
def test_a_lock_left_held_by_a_fork_of_a_gone_restarter_is_waited_for(restarter, tmp_path):
    """The restarter that wrote the lock is gone, but a process it forked (its logger
    before its first steps, on a busy host) still holds the flock: the next restarter
    waits for it instead of taking itself for a second one (CI met this)."""
    import subprocess
    import sys
    import threading
    r = restarter(f"""
[service.a]
command = {svc("sleep")}
""", start=False)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid no process has now
    os.makedirs(r.state_dir, exist_ok=True)
    lock = os.path.join(r.state_dir, channels.RESTARTER_LOCK)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; "
         f"fd = os.open({lock!r}, os.O_RDWR | os.O_CREAT, 0o600); "
         f"fcntl.flock(fd, fcntl.LOCK_EX); os.pwrite(fd, b'{gone.pid}\\n', 0); "
         "print('held', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        t = threading.Thread(target=r.start)
        t.start()
        wait_until(lambda: os.path.exists(r.log) and "a process it forked still holds it; "
                   "waiting for it to end" in open(r.log).read(), 30, "the restarter to wait")
        assert r.proc is not None and r.proc.poll() is None  # waiting, not gone
        holder.kill()
        t.join(60)
        assert r.svc("a")["state"] in ("starting", "ready")
    finally:
        holder.kill()
        holder.wait()


def test_readiness_notify_and_fd(restarter):
    r = restarter(f"""
[service.n]
command = {svc("notify", "0.3")}
ready = "notify"
[service.f]
command = {svc("fdready", "5")}
ready = "fd"
ready_fd = 5
[service.dep]
command = {svc("sleep")}
requires = ["n", "f"]
""")
    assert r.svc("dep")["state"] in ("waiting", "starting", "ready")
    s = r.wait_state("n", "ready")
    assert s["status_text"] == "serving"
    r.wait_state("f", "ready")
    r.wait_state("dep", "ready")


def test_readiness_timeout_counts_as_failure(restarter):
    r = restarter(f"""
[service.slow]
command = {svc("sleep")}
ready = "notify"
ready_timeout = 0.3
stop_timeout = 0.5
restart = "on-failure"
backoff = {{ initial = 5, factor = 1.0, max = 5 }}
""")
    s = r.wait_state("slow", "backoff", 10)
    assert s["last_exit"]["kind"] == "timeout"


def test_required_restart_restarts_dependents(restarter):
    r = restarter(f"""
[service.db]
command = {svc("sleep")}
backoff = {{ initial = 0.0, factor = 1.0, max = 0 }}
[service.web]
command = {svc("sleep")}
requires = ["db"]
""")
    db = r.wait_state("db", "ready")["pid"]
    web = r.wait_state("web", "ready")["pid"]
    os.kill(db, signal.SIGKILL)
    wait_until(lambda: (s := r.svc("web"))["state"] == "ready" and s["pid"] != web, 10,
               "web restarted after db")


def test_systemd_notify_real_client(restarter):
    import shutil
    if not shutil.which("systemd-notify"):
        pytest.skip("systemd-notify not installed (Debian package systemd)")
    r = restarter("""
[service.real]
command = ["/bin/sh", "-c", "systemd-notify --ready --status='from systemd-notify'; exec sleep 1000"]
ready = "notify"
""")
    s = r.wait_state("real", "ready")
    assert s["status_text"] == "from systemd-notify"


@pytest.mark.slow
def test_cli_status_json_and_control(restarter):
    import json
    import subprocess
    import sys
    r = restarter(f"""
[service.a]
command = {svc("sleep")}
""")
    r.wait_state("a", "ready")
    p = subprocess.run([sys.executable, "-m", "hachain.cli", "status", "--json", "-c", r.config],
                       capture_output=True, text=True, timeout=20)
    d = json.loads(p.stdout)
    assert d["services"]["a"]["state"] == "ready"
    assert d["chain"]["layers"]["restarter"]["alive"] is True
    p = subprocess.run([sys.executable, "-m", "hachain.cli", "restart", "nope", "-c", r.config],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 1 and "unknown service 'nope'" in p.stderr
    assert client.request(r.state_dir, {"op": "ping"})["ok"]


def test_readiness_tcp_and_exec(restarter, tmp_path):
    import socket as so
    probe = so.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    flag = tmp_path / "up"
    r = restarter(f"""
[service.t]
command = ["{os.sys.executable}", "-c", "import socket,time; time.sleep(0.4); s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(1000)"]
ready = "tcp"
ready_port = {port}
[service.e]
command = ["/bin/sh", "-c", "sleep 0.3; touch {flag}; exec sleep 1000"]
ready = "exec"
ready_command = ["/bin/test", "-e", "{flag}"]
""")
    assert r.svc("t")["state"] == "starting"
    r.wait_state("t", "ready")
    r.wait_state("e", "ready")
    assert flag.exists()


@pytest.mark.slow
def test_health_check_failures_restart_a_hung_service(restarter, tmp_path):
    flag = tmp_path / "healthy"
    flag.write_text("")
    runs = tmp_path / "checks"  # one line per check run
    r = restarter(f"""
[service.h]
command = {svc("sleep")}
health = {{ kind = "exec", command = ["/bin/sh", "-c", "echo >> {runs}; test -e {flag}"], interval = 0.1, timeout = 1, failures = 3 }}
backoff = {{ initial = 0.0, factor = 1.0, max = 0 }}
stop_timeout = 0.5
""")
    pid = r.wait_state("h", "ready")["pid"]
    n = len(runs.read_text().splitlines()) if runs.exists() else 0
    wait_until(lambda: runs.exists() and len(runs.read_text().splitlines()) >= n + 4, 10,
               "4 more passing checks")  # several passing checks: nothing happens
    assert r.svc("h")["pid"] == pid and r.svc("h")["health"]["failures"] == 0
    flag.unlink()
    s = wait_until(lambda: (x := r.svc("h"))["pid"] not in (None, pid) and x, 10,
                   "h restarted by its health check")
    assert s["last_exit"]["kind"] == "hung"
    assert "health check failed 3 times" in open(r.log).read()


def test_service_watchdog_restarts_a_silent_service(restarter):
    r = restarter(f"""
[service.w]
command = {svc("notify", "0")}
ready = "notify"
watchdog_sec = 0.5
backoff = {{ initial = 0.0, factor = 1.0, max = 0 }}
stop_timeout = 0.5
""")
    pid = r.wait_state("w", "ready")["pid"]
    s = wait_until(lambda: (x := r.svc("w"))["pid"] not in (None, pid) and x, 10,
                   "w restarted by the service watchdog")
    assert s["last_exit"]["kind"] == "hung"


def test_a_service_watchdog_holds_for_every_ready_kind(restarter, tmp_path):
    """systemd's WatchdogSec= on a Type=simple service: it gets NOTIFY_SOCKET and
    WATCHDOG_USEC, is watched once ready (here at its spawn), and is restarted as hung
    once its pings stop."""
    alive = tmp_path / "alive"
    alive.touch()
    r = restarter(f"""
[service.w]
command = {svc("pinger", str(alive))}
watchdog_sec = 3
backoff = {{ initial = 0.0, factor = 1.0, max = 0 }}
stop_timeout = 0.5
""")
    pid = r.wait_state("w", "ready")["pid"]
    # pinging every 0.1 s: 20 heartbeats (4 s of the restarter's time, more than
    # watchdog_sec) later it is still the same process
    r.beats(20, timeout=60)
    assert r.svc("w")["pid"] == pid
    alive.unlink()
    s = wait_until(lambda: (x := r.svc("w"))["pid"] not in (None, pid) and x, 3 + 30,
                   "w restarted by the service watchdog")
    assert s["last_exit"]["kind"] == "hung"


def test_ready_1_of_a_service_that_is_not_notify_says_nothing(restarter, tmp_path):
    """A service with a watchdog has the notify socket whatever its ready kind; only a
    notify service's READY=1 makes it ready (its exec check decides here)."""
    go = tmp_path / "go"
    r = restarter(f"""
[service.x]
command = {svc("notify", "0")}
ready = "exec"
ready_command = ["/bin/test", "-e", "{go}"]
watchdog_sec = 30
ready_timeout = 60
""")
    wait_until(lambda: r.svc("x")["status_text"] == "serving", 20, "its READY=1 to be read")
    assert r.svc("x")["state"] == "starting"
    go.touch()
    r.wait_state("x", "ready", timeout=20)


def test_notify_from_a_foreign_process_is_ignored(restarter):
    import socket as so
    r = restarter(f"""
[service.n]
command = {svc("sleep")}
ready = "notify"
ready_timeout = 30
""")
    wait_until(lambda: r.svc("n")["pid"], 5, "n spawned")
    s = so.socket(so.AF_UNIX, so.SOCK_DGRAM)
    s.sendto(b"READY=1", os.path.join(r.state_dir, "notify.sock"))
    s.sendto(b"\xff" * 10000, os.path.join(r.state_dir, "notify.sock"))
    s.close()
    wait_until(lambda: "belongs to no service" in open(r.log).read(), 5, "the warning")
    assert r.svc("n")["state"] == "starting"
    assert r.ping()


def test_reload_applies_only_the_difference(restarter):
    r = restarter(f"""
[service.keep]
command = {svc("sleep")}
[service.change]
command = {svc("sleep")}
[service.drop]
command = {svc("sleep")}
""")
    pids = {n: r.wait_state(n, "ready")["pid"] for n in ("keep", "change", "drop")}
    text = open(r.config).read()
    # a bad file changes nothing and says why
    with open(r.config, "w") as f:
        f.write(text + "\n[service.bad]\ncommand = 5\n")
    rep = r.req("reload")
    assert not rep["ok"] and "service.bad.command" in rep["error"]
    assert {n: r.svc(n)["pid"] for n in pids} == pids
    new = text.replace(f'[service.drop]\ncommand = {svc("sleep")}\n', "")
    new = new.replace(f'[service.change]\ncommand = {svc("sleep")}\n',
                      f'[service.change]\ncommand = {svc("sleep")}\nstop_timeout = 2\n')
    new += f'[service.added]\ncommand = {svc("sleep")}\n'
    with open(r.config, "w") as f:
        f.write(new)
    rep = r.req("reload")
    assert rep["ok"] and rep["added"] == ["added"] and rep["removed"] == ["drop"]
    assert rep["changed"] == ["change"]
    r.wait_state("added", "ready")
    wait_until(lambda: "drop" not in r.status(), 10, "drop removed")
    wait_until(lambda: not channels.pid_alive(pids["drop"]), 10, "drop's process gone")
    s = wait_until(lambda: (x := r.svc("change"))["state"] == "ready" and
                   x["pid"] != pids["change"] and x, 10, "change restarted")
    assert s["pid"] != pids["change"]
    assert r.svc("keep")["pid"] == pids["keep"]


def test_sighup_reloads(restarter):
    r = restarter(f"""
[service.a]
command = {svc("sleep")}
""")
    r.wait_state("a", "ready")
    with open(r.config, "a") as f:
        f.write(f'[service.b]\ncommand = {svc("sleep")}\n')
    r.proc.send_signal(signal.SIGHUP)
    r.wait_state("b", "ready")


@pytest.mark.slow
def test_corrupt_state_files_are_set_aside(restarter):
    r = restarter(f"""
[service.a]
command = {svc("sleep")}
""")
    pid = r.wait_state("a", "ready")["pid"]
    r.kill_restarter()
    with open(os.path.join(r.state_dir, "services", "a.json"), "w") as f:
        f.write('{"pid": 12')  # truncated
    with open(os.path.join(r.persist_dir, "admin.json"), "w") as f:
        f.write("\x00\x00garbage")
    r.start()
    s = r.wait_state("a", "ready")
    # the record was unreadable, so the old process was cleaned out of the cgroup, and
    # exactly one copy runs
    if r.cg_root:
        wait_until(lambda: not channels.pid_alive(pid), 10, "the unverifiable copy gone")
        assert _cgroup_procs(r, "a") == [s["pid"]]
    assert os.path.exists(os.path.join(r.state_dir, "services", "a.json.corrupt"))
    assert os.path.exists(os.path.join(r.persist_dir, "admin.json.corrupt"))
    assert "corrupt, set aside" in open(r.log).read()


def test_logs_are_captured_and_rotated(restarter):
    r = restarter(f"""
[service.chatty]
command = ["{os.sys.executable}", "-c", "import sys; print('x' * 1500, flush=True); print('err', file=sys.stderr); sys.exit(1)"]
log_max_bytes = 1024
log_keep = 2
backoff = {{ initial = 0.05, factor = 1.0, max = 0.05 }}
intensity = {{ max_restarts = 1000, window = 60, action = "ignore" }}
""")
    log = os.path.join(r.persist_dir, "log", "chatty.log")
    wait_until(lambda: os.path.exists(log + ".2"), 20, "two rotated logs")
    assert not os.path.exists(log + ".3")  # log_keep = 2
    from hachain import logs

    def kept() -> str:
        files = logs.log_files(os.path.dirname(log), "chatty")
        assert all(os.path.getsize(f) <= 1024 for f in files)  # the 1501-byte line is cut
        return b"".join(logs.last_lines(files, None)[0]).decode(errors="replace")
    # The service keeps writing (and the logger rotating) while this reads: right after
    # a rotation the newest whole line may be half in a file that just went. Wait for a
    # moment that shows one whole, as one soon does.
    wait_until(lambda: "x" * 1500 + "\n" in (t := kept()) and "err" in t, 20,
               "a whole 1500-byte line and the stderr line among the kept files")


def test_a_running_service_log_is_rotated_as_it_is_written(restarter):
    # no restart: the logger rotates as it writes
    r = restarter(f"""
[service.quiet]
command = ["{os.sys.executable}", "-c", "import time; print('y' * 1500, flush=True); time.sleep(60)"]
log_max_bytes = 1024
log_keep = 1
""")
    pid = r.wait_state("quiet", "ready")["pid"]
    log = os.path.join(r.persist_dir, "log", "quiet.log")
    def both() -> str | None:
        try:
            return open(log + ".1").read() + open(log).read()
        except FileNotFoundError:
            return None
    # the new file exists a moment before the rest of the line is in it: wait for the
    # whole line (a lost byte fails here)
    wait_until(lambda: both() == "y" * 1500 + "\n", 10, "the log rotated as it was written")
    assert os.path.getsize(log + ".1") == 1024  # no newline fits: the line is cut
    assert r.svc("quiet")["pid"] == pid


def test_process_setup_user_group_umask_cwd_rlimits(restarter, tmp_path):
    import pwd
    if os.getuid() != 0:
        pytest.skip("switching users needs root")
    import pathlib
    import shutil
    import tempfile
    nobody = pwd.getpwnam("nobody")
    out = pathlib.Path(tempfile.mkdtemp(prefix="hachain-setup-"))  # reachable by nobody
    os.chmod(out, 0o777)
    request_cleanup = shutil.rmtree
    r = restarter(f"""
[service.setup]
command = ["/bin/sh", "-c", "echo $(id -u) $(id -g) $(pwd) $(umask) $(ulimit -Sn) $(ulimit -Hn) > {out}/r.txt; exec sleep 1000"]
user = "nobody"
group = "{__import__('grp').getgrgid(nobody.pw_gid).gr_name}"
cwd = "/tmp"
umask = "027"
rlimits = {{ nofile = [64, 128] }}
""")
    r.wait_state("setup", "ready")
    got = wait_until(lambda: (out / "r.txt").exists() and (out / "r.txt").read_text().split(),
                     10, "the report")
    request_cleanup(out, ignore_errors=True)
    assert got == [str(nobody.pw_uid), str(nobody.pw_gid), "/tmp", "0027", "64", "128"]


def test_unknown_user_is_a_clear_start_failure(restarter):
    r = restarter(f"""
[service.ghost]
command = {svc("sleep")}
user = "no-such-user-hachain"
restart = "never"
""")
    s = r.wait_state("ghost", "failed")
    assert s["reason"] == ('cannot start: user = "no-such-user-hachain": no such user; '
                           "not retried (restart = never)")
    assert r.ping()


def test_mainpid_moves_supervision_to_the_forked_daemon(restarter, tmp_path):
    # a classic daemon: the started process forks the real server, reports it with
    # MAINPID= and READY=1, and exits; the service stays ready with the new main pid
    r = restarter(f"""
[service.d]
command = {svc("daemon")}
ready = "notify"
""")
    s = r.wait_state("d", "ready")
    wait_until(lambda: "main pid is now" in open(r.log).read(), 10, "MAINPID accepted")
    daemon = r.svc("d")["pid"]
    launcher = os.getpgid(daemon)  # the service's process group is the launcher's pid
    assert launcher != daemon
    wait_until(lambda: not channels.pid_alive(launcher), 5, "the launcher to exit")
    s = r.svc("d")
    assert s["state"] == "ready" and s["pid"] == daemon and channels.pid_alive(daemon)
    assert s["restarts"] == 0
    os.kill(daemon, signal.SIGKILL)  # the daemon itself dying is an exit of the service
    wait_until(lambda: r.svc("d")["restarts"] == 1, 10, "d restarted after its daemon died")
    # the launcher that handed over was reaped, not left a zombie
    wait_until(lambda: channels.proc_state(launcher) is None, 5, "the launcher reaped")



def test_a_frozen_cgroup_does_not_freeze_the_restarter(restarter):
    """A service left frozen (cgroup.freeze = 1) is restarted; the restarter, which moves
    itself into the cgroup to spawn there, thaws it first instead of freezing itself."""
    r = restarter(f"""
[service.ice]
command = {svc("sleep")}
backoff = {{ initial = 0.0, factor = 1.0, max = 0 }}
""")
    if not r.cg_root:
        pytest.skip("no writable cgroup v2")
    pid = r.wait_state("ice", "ready")["pid"]
    cg = os.path.join(r.cg_root, "ice")
    with open(os.path.join(cg, "cgroup.freeze"), "w") as f:
        f.write("1")
    wait_until(lambda: "frozen 1" in open(os.path.join(cg, "cgroup.events")).read(), 5,
               "the cgroup frozen")
    os.kill(pid, signal.SIGKILL)  # SIGKILL ends even a frozen task
    s = wait_until(lambda: (x := r.svc("ice"))["state"] == "ready" and x["pid"] != pid and x,
                   10, "ice restarted")
    assert channels.proc_state(r.proc.pid) != "D" and r.ping()
    assert "frozen 0" in open(os.path.join(cg, "cgroup.events")).read()
    assert channels.pid_alive(s["pid"])


def test_conflicts_stop_the_other_side(restarter):
    r = restarter(f"""
[service.primary]
command = {svc("sleep")}
[service.standby]
command = {svc("sleep")}
conflicts = ["primary"]
enabled = false
""")
    r.wait_state("primary", "ready")
    assert r.svc("standby")["state"] == "stopped"
    assert r.req("start", "standby")["ok"]
    r.wait_state("standby", "ready")
    r.wait_state("primary", "stopped")


def test_restart_group_restarts_the_dependents_too(restarter):
    r = restarter(f"""
[service.base]
command = ["/bin/sh", "-c", "sleep 0.3; exit 1"]
backoff = {{ initial = 0.05, factor = 1.0, max = 0.05 }}
intensity = {{ max_restarts = 1, window = 60, action = "restart-group" }}
[service.app]
command = {svc("sleep")}
requires = ["base"]
restart_dependents = false
""")
    app = r.wait_state("app", "ready")["pid"]
    wait_until(lambda: "restart-group" in (r.svc("base")["reason"] or "") or
               r.svc("app")["pid"] not in (None, app), 20, "the group restart")
    s = wait_until(lambda: (x := r.svc("app"))["pid"] not in (None, app) and x, 20,
                   "app restarted with its group although restart_dependents = false")
    assert s["pid"] != app


def test_a_failed_wanted_service_does_not_block(restarter):
    r = restarter(f"""
[service.optional]
command = ["/nonexistent/binary"]
intensity = {{ max_restarts = 1, window = 60 }}
[service.main]
command = {svc("sleep")}
wants = ["optional"]
""")
    # a start that cannot exec follows the restart policy like any failed start (issue
    # 16.7): retried, then parked by its intensity; what wants it runs all the while
    r.wait_state("main", "ready")
    s = r.wait_state("optional", "maintenance", 20)
    assert "/nonexistent/binary" in (s["last_exit"] or {}).get("text", "") + s["reason"], s
    assert r.svc("main")["state"] == "ready"


@pytest.mark.slow
def test_service_watchdog_starts_after_readiness(restarter):
    """A notify service slower to get ready than watchdog_sec is not killed as hung."""
    r = restarter(f"""
[service.slow]
command = {svc("notify", "1.0")}
ready = "notify"
watchdog_sec = 0.4
ready_timeout = 10
""")
    s = r.wait_state("slow", "ready", 10)
    assert s["restarts"] == 0 and s["last_exit"] is None


def test_services_and_probes_start_with_no_signal_blocked(restarter, tmp_path):
    """The restarter blocks SIGCHLD (it reads it through a signalfd); nothing it starts
    may inherit that: not a posix_spawn service, not a subprocess one (cwd set), not an
    exec probe. Each writes its SigBlk mask from /proc with shell builtins only (a shell
    that waits for a child blocks signals itself)."""
    def mask_to(tag: str) -> str:
        return (f"while read k v; do case $k in SigBlk:) echo $v > {tmp_path}/{tag};; esac; "
                "done < /proc/$$/status")

    def report(tag: str) -> str:
        return f'["/bin/sh", "-c", "{mask_to(tag)}; exec sleep 1000"]'
    r = restarter(f"""
[service.plain]
command = {report("plain")}

[service.setup]
command = {report("setup")}
cwd = "/tmp"

[service.probed]
command = {svc("sleep")}
ready = "exec"
ready_command = ["/bin/sh", "-c", "{mask_to('probe')}"]
""")
    for name in ("plain", "setup", "probed"):
        r.wait_state(name, "ready")
    for tag in ("plain", "setup", "probe"):
        f = tmp_path / tag
        got = wait_until(lambda f=f: f.exists() and f.read_text().split(), 10, f"{tag} mask")
        assert got == ["0000000000000000"], (tag, got)
    # and the restarter still sees its children die: kill one, it comes back
    pid = r.svc("plain")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: (x := r.svc("plain"))["state"] == "ready" and x["pid"] != pid, 10,
               "plain restarted")


def test_two_chains_never_share_a_cgroup(restarter, tmp_path):
    """Issue 20.4: the auto cgroup name differs for state dirs with the same last
    component, and a second chain given the first one's cgroup root refuses it (exit 1,
    naming the owner) without touching the first chain's service."""
    assert channels.cgroup_name("/run/hachain") != channels.cgroup_name("/x/hachain")
    assert channels.cgroup_name("/run/hachain").startswith("hachain-")
    a = restarter(f"""
[service.web]
command = {svc("sleep")}
""")
    if a.cg_root is None:
        pytest.skip("needs a writable cgroup v2 mount")
    pid = a.wait_state("web", "ready")["pid"]
    other = tmp_path / "other"
    other.mkdir()
    cfg = other / "chain.toml"
    cfg.write_text(f'[chain]\nstate_dir = "{other}/run"\npersist_dir = "{other}/persist"\n'
                   f'cgroup_root = "{a.cg_root}"\n[watchdog]\ndevice = "none"\n'
                   f'[service.web]\ncommand = {svc("sleep")}\n')
    p = subprocess.run([sys.executable, "-m", "hachain.restarter", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p.stderr
    assert f"cgroup {a.cg_root} belongs to another running chain" in p.stderr, p.stderr
    assert a.state_dir in p.stderr
    assert channels.pid_alive(pid) and a.svc("web")["pid"] == pid


@pytest.mark.slow
def test_decaying_intensity_on_real_processes(restarter):
    """Issue 15.5: a service that runs 1 s (its own sleep, not the host's speed) before
    each crash, with decay = 0.5 s: every second of uptime takes 2 off the count, so it
    never goes above 1 and the service is never parked. The same crashes with a window
    park a twin after max_restarts."""
    r = restarter("""
[service.rare]
command = ["/bin/sh", "-c", "sleep 1; exit 1"]
backoff = { initial = 0.0, factor = 1.0, max = 0 }
intensity = { max_restarts = 2, window = 60, action = "maintenance", decay = 0.5 }
[service.windowed]
command = ["/bin/sh", "-c", "sleep 1; exit 1"]
backoff = { initial = 0.0, factor = 1.0, max = 0 }
intensity = { max_restarts = 2, window = 60, action = "maintenance" }
""")
    r.wait_state("windowed", "maintenance", timeout=30)
    seen = wait_until(lambda: (s := r.svc("rare"))["restarts"] >= 4 and s, 30,
                      "rare to crash and come back 4 times")
    assert seen["state"] != "maintenance", seen
    assert "failure count" not in seen["reason"]


def test_admin_state_is_written_only_once_something_is_asked(restarter):
    """A first start has nothing held by hand: no admin.json is written for it (a durable
    write, two fsyncs, before the first service), and a stop writes the file at once."""
    r = restarter(f"""
[service.a]
command = {svc("sleep", "1000")}
""")
    path = os.path.join(r.persist_dir, "admin.json")
    r.wait_state("a", "ready")
    assert r.ping()  # the restarter has flushed its first round of records
    assert os.path.exists(os.path.join(r.state_dir, "services", "a.json"))
    assert not os.path.exists(path)
    assert r.req("stop", "a")["ok"]
    wait_until(lambda: os.path.exists(path), 10, "admin.json once a service is stopped")
    with open(path) as f:
        assert json.load(f) == {"a": {"want": "down"}}
