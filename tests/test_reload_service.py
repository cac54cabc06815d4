"""`hachain reload NAME`: a running service reads its configuration again, no restart.

A real restarter, real services, the CLI as a subprocess: reload_command (systemd's
ExecReload=) runs as the service runs and its exit is the outcome; reload_signal goes to
the main process; reload_notify waits for RELOADING=1 then READY=1 (Type=notify-reload);
reload_timeout bounds each; a reload that cannot be is refused with the reason; the
service runs on under the same pid whatever the outcome. Then the pure decisions
(hachain/restarter/reloads.py) and the configuration's checks.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from hachain import config
from hachain.channels import pid_alive
from hachain.configtypes import ServiceConfig
from hachain.restarter import reloads
from hachain.restarter.policy import ExitStatus
from hachain.restarter.states import State, Svc
from tests.conftest import RestarterRun, hachain_cli, svc, wait_until

RUN_BOUND = 30.0  # a restarter answering, a few short processes; no chain timer involved


def hachain(r: RestarterRun, *args: str) -> subprocess.CompletedProcess[str]:
    return hachain_cli(r.state_dir, *args)


def log_of(r: RestarterRun, name: str) -> str:
    try:
        return open(os.path.join(r.persist_dir, "log", name + ".log")).read()
    except FileNotFoundError:
        return ""


def restarter_log(r: RestarterRun) -> str:
    return open(r.log).read()


def web(reload: str, extra: str = "") -> str:
    return f'[service.web]\ncommand = ["/bin/sleep", "infinity"]\n{reload}\n{extra}\n'


def result(r: RestarterRun, ident: str) -> dict[str, Any]:
    return r.req_raw({"op": "reload-result", "id": ident})


def unchanged(r: RestarterRun, pid: int) -> None:
    st = r.svc("web")
    assert (st["state"], st["pid"], st["restarts"]) == ("ready", pid, 0)


# --- a real restarter ----------------------------------------------------------------------

@pytest.mark.slow
def test_the_command_runs_as_the_service_and_its_exit_0_is_reloaded(restarter: Any) -> None:
    r = restarter(web('reload_command = ["/bin/sh", "-c", "echo reloading $MAINPID as '
                      '$(id -u)"]', 'user = "nobody"'))
    pid = r.wait_state("web", "ready")["pid"]
    p = hachain(r, "reload", "web")
    assert (p.returncode, p.stdout, p.stderr) == (0, "web: reloaded\n", "")
    # (the command's output goes through a pipe of its own: the logger may lag the exit)
    wait_until(lambda: f"reloading {pid} as 65534" in log_of(r, "web"), RUN_BOUND,
               "the command's line on the service's log")
    unchanged(r, pid)
    text = restarter_log(r)
    assert "web: reloading (reload_command pid " in text and "web: reloaded" in text
    st = r.svc("web")["reload"]
    assert (st["running"], st["last"]) == (False, "reloaded")
    p = hachain(r, "status", "web")
    assert "reload" in p.stdout and "reloaded," in p.stdout


@pytest.mark.slow
def test_a_failing_command_is_a_failed_reload_and_the_service_runs_on(
        restarter: Any) -> None:
    r = restarter(web('reload_command = ["/bin/sh", "-c", "echo bad config; exit 3"]'))
    pid = r.wait_state("web", "ready")["pid"]
    p = hachain(r, "reload", "web")
    assert (p.returncode, p.stdout, p.stderr) == (
        1, "", "hachain: reload web: failed: reload_command exit status 3\n")
    unchanged(r, pid)
    assert "web: reload failed: reload_command exit status 3" in restarter_log(r)


@pytest.mark.slow
def test_a_hung_command_fails_at_reload_timeout_and_is_killed(restarter: Any,
                                                              tmp_path: Any) -> None:
    pidfile = tmp_path / "cmd.pid"
    r = restarter(web(f'reload_command = ["/bin/sh", "-c", "echo $$ > {pidfile}; exec sleep '
                      '600"]\nreload_timeout = 0.5'))
    pid = r.wait_state("web", "ready")["pid"]
    p = hachain(r, "reload", "web")
    assert (p.returncode, p.stderr) == (
        1, "hachain: reload web: failed: reload_command still running after reload_timeout "
        "(0.5 s)\n")
    cmd = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), RUN_BOUND,
                         "the command's pid"))
    wait_until(lambda: not pid_alive(cmd), RUN_BOUND, "the hung command to be killed")
    unchanged(r, pid)


@pytest.mark.slow
def test_the_signal_goes_to_the_main_process(restarter: Any, tmp_path: Any) -> None:
    out = tmp_path / "signals"
    r = restarter(f'[service.web]\ncommand = {svc("signals", str(out))}\n'
                  'reload_signal = "HUP"\n')
    pid = r.wait_state("web", "ready")["pid"]
    wait_until(lambda: out.exists() and out.read_text().count("ready") == 2, RUN_BOUND,
               "both processes of web to set their handlers")
    p = hachain(r, "reload", "web")
    assert (p.returncode, p.stdout) == (0, "web: reloaded\n")
    wait_until(lambda: f"main {pid} SIGHUP" in out.read_text(), RUN_BOUND,
               "the main process to get SIGHUP")
    r.beats(3)  # the restarter's passes: its other process got nothing
    assert [ln for ln in out.read_text().splitlines() if "SIGHUP" in ln] == [
        f"main {pid} SIGHUP"]
    assert f"web: reloading (SIGHUP sent to main pid {pid})" in restarter_log(r)
    unchanged(r, pid)


@pytest.mark.slow
def test_notify_reload_is_over_at_ready_after_reloading(restarter: Any,
                                                        tmp_path: Any) -> None:
    out, go = tmp_path / "reloads", tmp_path / "go"
    r = restarter(f'[service.web]\ncommand = {svc("reloadable", str(out), str(go))}\n'
                  'ready = "notify"\nreload_signal = "HUP"\nreload_notify = true\n')
    pid = r.wait_state("web", "ready")["pid"]
    rep = r.req_raw({"op": "reload-service", "name": "web"})
    assert rep["ok"] and not rep["queued"]
    wait_until(lambda: out.exists() and "hup 1" in out.read_text(), RUN_BOUND,
               "the service to get SIGHUP and send RELOADING=1")
    r.beats(3)  # the restarter's own passes: READY=1 has not been sent, so not over
    assert result(r, rep["id"]) == {"ok": True, "done": False}
    assert r.svc("web")["reload"]["running"] is True
    go.write_text("")
    got = wait_until(lambda: (x := result(r, rep["id"])).get("done") and x, RUN_BOUND,
                     "the reload to end")
    assert got == {"ok": True, "done": True, "reloaded": True, "why": "reloaded"}
    assert "reloaded 1" in out.read_text()
    unchanged(r, pid)


@pytest.mark.slow
def test_notify_reload_without_ready_fails_at_its_timeout(restarter: Any,
                                                          tmp_path: Any) -> None:
    out = tmp_path / "reloads"
    r = restarter(f'[service.web]\ncommand = {svc("reloadable", str(out), "never")}\n'
                  'ready = "notify"\nreload_signal = "HUP"\nreload_notify = true\n'
                  'reload_timeout = 0.5\n')
    pid = r.wait_state("web", "ready")["pid"]
    p = hachain(r, "reload", "web")
    assert (p.returncode, p.stderr) == (
        1, "hachain: reload web: failed: no READY=1 after RELOADING=1 after reload_timeout "
        "(0.5 s)\n")
    unchanged(r, pid)


@pytest.mark.slow
def test_a_reload_asked_while_one_runs_is_answered_by_a_later_one(restarter: Any,
                                                                  tmp_path: Any) -> None:
    runs, go = tmp_path / "runs", tmp_path / "go"
    r = restarter(web(f'reload_command = ["/bin/sh", "-c", "echo run >> {runs}; while [ ! '
                      f'-e {go} ]; do sleep 0.01; done; rm {go}"]'))
    pid = r.wait_state("web", "ready")["pid"]
    first = r.req_raw({"op": "reload-service", "name": "web"})
    wait_until(lambda: runs.exists(), RUN_BOUND, "the first command to run")
    second = r.req_raw({"op": "reload-service", "name": "web"})
    third = r.req_raw({"op": "reload-service", "name": "web"})
    assert second["queued"] and third["id"] == second["id"] != first["id"]
    assert result(r, second["id"]) == {"ok": True, "done": False}
    go.write_text("")
    wait_until(lambda: result(r, first["id"]).get("done"), RUN_BOUND, "the first to end")
    wait_until(lambda: runs.read_text().count("run") == 2, RUN_BOUND,
               "the queued reload's own command")
    go.write_text("")
    wait_until(lambda: result(r, second["id"]).get("reloaded"), RUN_BOUND,
               "the queued reload to end")
    assert runs.read_text().count("run") == 2
    unchanged(r, pid)


@pytest.mark.slow
def test_the_main_process_ending_during_a_reload_fails_it(restarter: Any,
                                                          tmp_path: Any) -> None:
    pidfile = tmp_path / "cmd.pid"
    r = restarter(web(f'reload_command = ["/bin/sh", "-c", "echo $$ > {pidfile}; exec sleep '
                      '600"]', 'restart = "never"'))
    pid = r.wait_state("web", "ready")["pid"]
    rep = r.req_raw({"op": "reload-service", "name": "web"})
    cmd = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), RUN_BOUND,
                         "the command's pid"))
    os.kill(pid, 9)
    got = wait_until(lambda: (x := result(r, rep["id"])).get("done") and x, RUN_BOUND,
                     "the reload to end")
    assert not got["reloaded"] and got["why"].startswith(
        "the service left ready during the reload (")
    wait_until(lambda: not pid_alive(cmd), RUN_BOUND, "the command to be killed")


@pytest.mark.slow
def test_a_done_oneshot_runs_its_reload_command(restarter: Any, tmp_path: Any) -> None:
    go = tmp_path / "go"
    r = restarter(f'[service.setup]\nkind = "oneshot"\ncommand = ["/bin/sh", "-c", "while '
                  f'[ ! -e {go} ]; do sleep 0.01; done"]\nreload_command = ["/bin/sh", "-c", '
                  '"echo reload-setup MAINPID=${MAINPID-unset}"]\n')
    r.wait_state("setup", "starting")
    p = hachain(r, "reload", "setup")
    assert (p.returncode, p.stderr) == (
        1, "hachain: reload setup: setup is not done: starting (running (oneshot))\n")
    go.write_text("")
    r.wait_state("setup", "done")
    p = hachain(r, "reload", "setup")
    assert (p.returncode, p.stdout) == (0, "setup: reloaded\n")
    wait_until(lambda: "reload-setup MAINPID=unset" in log_of(r, "setup"), RUN_BOUND,
               "the command's line on the oneshot's log")
    assert r.svc("setup")["state"] == "done"


@pytest.mark.slow
def test_refusals_say_why(restarter: Any) -> None:
    r = restarter(web('reload_signal = "HUP"', 'restart = "never"') +
                  f'[service.plain]\ncommand = {svc("sleep")}\n')
    pid = r.wait_state("web", "ready")["pid"]
    r.wait_state("plain", "ready")
    p = hachain(r, "reload", "plain")
    assert (p.returncode, p.stderr) == (
        1, "hachain: reload plain: plain has no reload_command or reload_signal (`hachain kill "
        "plain -s HUP` sends a signal)\n")
    p = hachain(r, "reload", "nosuch")
    assert p.returncode == 1 and \
        p.stderr.startswith("hachain: reload nosuch: unknown service")
    assert r.req("stop", "web")["ok"]
    r.wait_state("web", "stopped", timeout=RUN_BOUND)
    assert not pid_alive(pid)
    p = hachain(r, "reload", "web")
    assert (p.returncode, p.stderr) == (
        1, "hachain: reload web: web is not running: stopped (stopped by administrator)\n")
    rep = result(r, "1.1")
    assert not rep["ok"] and "no reload 1.1 known to this restarter" in rep["error"]
    # garbage: answered, nothing changes
    assert r.req_raw({"op": "reload-result", "id": 7}) == {
        "ok": False, "error": "id must be a string"}
    assert r.req_raw({"op": "reload-service"}) == {
        "ok": False, "error": "request 'reload-service' has no string 'name'"}
    p = hachain(r, "reload", "web/x")
    assert p.returncode == 2 and p.stderr.startswith("hachain: reload: ")


@pytest.mark.slow
def test_a_configuration_reload_that_changes_only_the_reload_keys_does_not_restart(
        restarter: Any) -> None:
    r = restarter(web('reload_command = ["/bin/sh", "-c", "echo first"]'))
    pid = r.wait_state("web", "ready")["pid"]
    with open(r.config) as f:
        text = f.read()
    with open(r.config, "w") as f:
        f.write(text.replace("echo first", "echo second; exit 4"))
    assert r.req("reload")["ok"]
    p = hachain(r, "reload", "web")
    assert (p.returncode, p.stderr) == (
        1, "hachain: reload web: failed: reload_command exit status 4\n")  # the new command ran
    unchanged(r, pid)


# --- the decisions (reloads.py), without processes ----------------------------------------

def conf(**kw: Any) -> ServiceConfig:
    return ServiceConfig(name="web", command=("/bin/x",), **kw)


READY = Svc(name="web", state=State.READY, pid=42)


def test_refusal_names_what_is_missing() -> None:
    assert reloads.refusal("web", conf(), READY) is not None
    c = conf(reload_signal=1)
    assert reloads.refusal("web", c, READY) is None
    starting = Svc(name="web", state=State.STARTING, pid=42)
    assert reloads.refusal("web", c, starting) == (
        "web is starting: reload it once it is ready")
    failed = Svc(name="web", state=State.FAILED, reason="exit status 3")
    assert reloads.refusal("web", c, failed) == (
        "web is not running: failed (exit status 3)")


def test_a_command_and_notify_must_both_be_over() -> None:
    c = conf(reload_command=("/bin/true",), reload_notify=True, ready="notify",
             reload_timeout=5.0)
    r = reloads.begin("1.1", c, READY, 100.0)
    assert r.deadline == 105.0
    assert reloads.notified(r, {"READY": "1"}) is None  # no RELOADING=1 before it
    assert reloads.notified(r, {"RELOADING": "1"}) is None
    assert reloads.notified(r, {"READY": "1"}) is None  # the command still runs
    assert reloads.command_exited(r, ExitStatus("exited", 0)) == reloads.Outcome(
        "1.1", True, "reloaded")


def test_both_fields_in_one_message_count_in_order() -> None:
    c = conf(reload_signal=1, reload_notify=True, ready="notify")
    r = reloads.begin("1.2", c, READY, 0.0)
    assert reloads.signal_sent(r) is None
    assert reloads.notified(r, {"RELOADING": "1", "READY": "1"}) == reloads.Outcome(
        "1.2", True, "reloaded")


def test_expiry_says_what_was_still_awaited() -> None:
    c = conf(reload_signal=1, reload_notify=True, ready="notify", reload_timeout=2.0)
    r = reloads.begin("1.3", c, READY, 10.0)
    assert reloads.expired(r, c, 11.9) is None
    assert reloads.expired(r, c, 12.0) == reloads.Outcome(
        "1.3", False, "no RELOADING=1 after reload_timeout (2 s)")
    c2 = conf(reload_command=("/bin/true",))
    r2 = reloads.begin("1.4", c2, READY, 0.0)
    out = reloads.expired(r2, c2, 31.0)
    assert out is not None and out.why.startswith("reload_command still running")


def test_lost_follows_a_new_main_pid_and_ends_when_it_leaves_ready() -> None:
    c = conf(reload_signal=1)
    r = reloads.begin("1.5", c, READY, 0.0)
    assert reloads.lost(r, Svc(name="web", state=State.READY, pid=43)) is None
    assert r.pid == 43
    out = reloads.lost(r, Svc(name="web", state=State.STOPPING, pid=43, reason="stopping"))
    assert out == reloads.Outcome(
        "1.5", False, "the service left ready during the reload (stopping: stopping)")


def test_a_failed_command_is_the_outcome_whatever_else_is_awaited() -> None:
    c = conf(reload_command=("/bin/false",), reload_notify=True, ready="notify")
    r = reloads.begin("1.6", c, READY, 0.0)
    assert reloads.command_exited(r, ExitStatus("killed", signal=9)) == reloads.Outcome(
        "1.6", False, "reload_command killed by SIGKILL")


# --- the configuration ---------------------------------------------------------------------

def load(tmp_path: Any, body: str) -> config.Config:
    p = tmp_path / "c.toml"
    p.write_text('[watchdog]\ndevice = "none"\n[service.web]\ncommand = ["/bin/x"]\n' + body)
    return config.load(str(p))


def errors(tmp_path: Any, body: str) -> list[str]:
    with pytest.raises(config.ConfigError) as e:
        load(tmp_path, body)
    return e.value.errors


def test_config_reads_the_reload_keys(tmp_path: Any) -> None:
    s = load(tmp_path, 'reload_signal = "hup"\nreload_timeout = 7\n').services["web"]
    assert (s.reload_signal, s.reload_timeout, s.reload_command) == (1, 7.0, ())
    s = load(tmp_path, 'shell = true\nreload_command = "kill -HUP $MAINPID"\n').services["web"]
    assert s.reload_command == ("/bin/sh", "-c", "kill -HUP $MAINPID")


@pytest.mark.parametrize("body,where,what", [
    ('reload_command = ["/bin/y"]\nreload_signal = "HUP"\n', "reload_signal",
     "give reload_command or reload_signal, not both"),
    ('reload_signal = "HUP"\nreload_notify = true\n', "reload_notify",
     "needs ready = \"notify\""),
    ('ready = "notify"\nreload_notify = true\n', "reload_notify",
     "needs reload_signal or reload_command"),
    ('kind = "oneshot"\nreload_signal = "HUP"\n', "reload_signal",
     "a oneshot has no running process to signal"),
    ('reload_command = "kill -HUP $MAINPID"\n', "reload_command", "must be an argv list"),
    ('reload_signal = "HUPP"\n', "reload_signal", "did you mean"),
])
def test_config_refuses_what_cannot_work(tmp_path: Any, body: str, where: str,
                                         what: str) -> None:
    errs = errors(tmp_path, body)
    assert any(f"service.web.{where}" in e and what in e for e in errs), errs


@pytest.mark.slow
def test_a_reload_under_way_outlives_the_restarter(restarter: Any, tmp_path: Any) -> None:
    """The restarter died while a reload_command ran: the next one carries the reload
    on (status says it runs; a new request waits behind it, not beside it) and says how
    it ended, whose status init reaped."""
    runs, go = tmp_path / "runs", tmp_path / "go"
    r = restarter(web(f'reload_command = ["/bin/sh", "-c", "echo run >> {runs}; while [ ! '
                      f'-e {go} ]; do sleep 0.01; done; rm {go}"]'))
    pid = r.wait_state("web", "ready")["pid"]
    r.req_raw({"op": "reload-service", "name": "web"})
    wait_until(lambda: runs.exists(), RUN_BOUND, "the command to run")
    rec = wait_until(lambda: json.load(open(os.path.join(r.state_dir, "services", "web.json")))
                     .get("reload"), RUN_BOUND, "the record to name it")
    r.kill_restarter()
    r.pids_seen.add(rec[0])
    r.start()
    assert r.svc("web")["reload"]["running"]
    assert f"web: its reload_command (pid {rec[0]}) still runs; the reload goes on" in \
        open(r.log).read()
    queued = r.req_raw({"op": "reload-service", "name": "web"})
    assert queued["queued"], queued
    go.write_text("")
    wait_until(lambda: "web: reload failed: reload_command ended with a status no restarter "
               "saw" in open(r.log).read(), RUN_BOUND, "the carried reload's end")
    wait_until(lambda: runs.read_text().count("run") == 2, RUN_BOUND,
               "the queued reload's own command, after it")
    go.write_text("")
    wait_until(lambda: result(r, queued["id"]).get("reloaded"), RUN_BOUND,
               "the queued reload to end")
    unchanged(r, pid)
