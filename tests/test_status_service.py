"""`hachain status NAME...`: one service in detail (as `systemctl status NAME`, `sv status`,
`supervisorctl status NAME`): its state and why, its main process's command line, the
processes of its cgroup and the end of its log; exit 0 only when each named service is
as wanted. Real restarter, real logger, real services; the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import KILLED_BOUND, ROOT, RestarterRun, svc, wait_until

CLI_TIMEOUT = 60.0  # a Python start and one request: nothing here waits on the chain
LOGGED = 20.0  # a line a service printed reaches its log through the logger


def hachain(r: RestarterRun, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "hachain.cli", "status", *args,
                           "--state-dir", r.state_dir, "--persist-dir", r.persist_dir],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT, env=env)


WEB = ('[service.web]\ncommand = ["/bin/sh", "-c", "echo first; echo second; echo third; '
       'sleep 1000 & wait"]\n')
BAD = ('[service.bad]\ncommand = ["/bin/sh", "-c", "echo cannot open db.conf; exit 3"]\n'
       'backoff = { initial = 0.0, factor = 1.0, max = 0 }\n'
       'intensity = { max_restarts = 2, window = 60, action = "maintenance" }\n')
IDLE = f'[service.idle]\ncommand = {svc("sleep")}\n'


def logged(r: RestarterRun, name: str, line: str) -> bool:
    try:
        return line in open(os.path.join(r.persist_dir, "log", name + ".log")).read()
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_a_running_service_in_detail(restarter: Any) -> None:
    r = restarter(WEB)
    pid = r.wait_state("web", "ready")["pid"]
    wait_until(lambda: logged(r, "web", "third"), LOGGED, "web's output in its log")
    p = hachain(r, "web", "-n", "2")
    assert p.returncode == 0 and p.stderr == "", (p.stdout, p.stderr)
    lines = p.stdout.splitlines()
    assert lines[0].startswith(f"web: ready (want up, pid {pid}, up ")
    assert lines[0].endswith(", 0 restart(s))")
    assert f"  process:   {pid} /bin/sh -c echo first; echo second; echo third; " \
           "sleep 1000 & wait" in lines
    log = os.path.join(r.persist_dir, "log", "web.log")
    assert lines[-3:] == [f"  log:       {log}, last 2 line(s):", "    second", "    third"]
    if r.cg_root:  # the shell and its sleep
        (cg,) = [ln for ln in lines if ln.startswith("  cgroup:")]
        assert cg.startswith(f"  cgroup:    {r.cg_root}/web: 2 process(es): ")
        assert str(pid) in cg.split(": ")[-1].split()
    # -n 0: the log's path only; all: every line
    assert hachain(r, "web", "-n", "0").stdout.splitlines()[-1] == f"  log:       {log}"
    assert hachain(r, "web", "-n", "all").stdout.splitlines()[-3:] == [
        "    first", "    second", "    third"]


@pytest.mark.slow
def test_a_service_in_maintenance_says_why_and_exits_1(restarter: Any) -> None:
    r = restarter(BAD + IDLE + 'enabled = false\n')
    r.wait_state("bad", "maintenance", timeout=30)
    wait_until(lambda: logged(r, "bad", "cannot open db.conf"), LOGGED, "bad's output")
    p = hachain(r, "bad", "idle")
    assert p.returncode == 1, (p.stdout, p.stderr)
    out = p.stdout
    assert out.startswith("bad: maintenance (want up, 3 restart(s))\n"), out
    assert "  why:       maintenance: 3 restarts in 60 s (limit 2); last: exit status 3\n" in out
    assert "  last exit: exit status 3\n" in out
    assert "\nidle: stopped (want down, 0 restart(s))\n" in out
    assert out.endswith("/log/idle.log (not written yet)\n")
    assert "    cannot open db.conf\n" in out
    # a disabled service that is down is as wanted: alone it exits 0
    assert hachain(r, "idle").returncode == 0


@pytest.mark.slow
def test_status_name_json_is_the_services_entry_and_more(restarter: Any) -> None:
    r = restarter(WEB)
    pid = r.wait_state("web", "ready")["pid"]
    wait_until(lambda: logged(r, "web", "third"), LOGGED, "web's output in its log")
    p = hachain(r, "web", "--json", "-n", "1")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert set(doc) == {"services", "verdict"} and list(doc["services"]) == ["web"]
    web = doc["services"]["web"]
    assert (web["state"], web["pid"], web["want"]) == ("ready", pid, "up")
    assert web["log_tail"] == ["third"] and web["command"].startswith("/bin/sh -c echo first")
    if r.cg_root:
        assert web["cgroup"] == f"{r.cg_root}/web" and pid in web["processes"]


@pytest.mark.slow
def test_names_no_service_has_are_refused(restarter: Any) -> None:
    r = restarter(WEB)
    r.wait_state("web", "ready")
    p = hachain(r, "wbe")
    assert (p.returncode, p.stdout, p.stderr) == (
        2, "", "hachain: status: unknown service 'wbe' (did you mean 'web'?)\n")
    p = hachain(r, "../etc")
    assert p.returncode == 2 and p.stdout == "" and "not a service name" in p.stderr
    p = hachain(r, "web", "-n", "-1")
    assert p.returncode == 2 and "expected a number >= 0 or 'all', got '-1'" in p.stderr


@pytest.mark.slow
def test_a_hung_restarter_gives_the_last_known_entry_and_exit_1(restarter: Any) -> None:
    """The restarter is stopped (SIGSTOP): it is not asked; the table it gave the last
    `hachain status` is shown, said to be that, with the log read from the disk."""
    r = restarter(WEB)
    r.wait_state("web", "ready")
    wait_until(lambda: logged(r, "web", "third"), LOGGED, "web's output in its log")
    assert hachain(r, "web").returncode == 0  # the table is saved by each status
    assert r.proc is not None
    os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: (open(f"/proc/{r.proc.pid}/stat").read().split(") ")[1][0]  # type: ignore[union-attr]
                            == "T"), KILLED_BOUND, "the restarter to show as stopped")
        p = hachain(r, "web")
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = p.stdout.splitlines()
    assert lines[0].startswith("web: ready (want up, pid ")
    assert lines[1].startswith("  as the restarter last said, ")
    assert lines[1].endswith(" s ago: it does not answer")
    assert lines[-1] == "    third"
