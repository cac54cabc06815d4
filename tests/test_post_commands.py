"""post_start (systemd's ExecStartPost=): commands run once a service is ready, before
it counts as ready.

The table's side, pure; then a real restarter with real processes: the service stays
`starting` while the commands run (what requires it waits), they run as its stop
command does (MAINPID, its log), one that fails stops it as a failed start, and a
restarter that dies while they run leaves them to the next one, which makes the service
ready once they have ended.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import pytest

from hachain import channels, config, importer, status
from hachain.configtypes import Backoff, ServiceConfig
from hachain.restarter import policy, states
from hachain.restarter.policy import ExitStatus
from hachain.restarter.states import Ev, Event, State, Svc, Timer, step
from tests.conftest import wait_until

RUN_BOUND = 30.0  # a restarter answering, a few /bin/sh processes; no chain timer involved

POST = ServiceConfig("a", ("/bin/sleep", "9"), post_start=(("/bin/true",),), ready_timeout=7)


def started(c: ServiceConfig = POST) -> tuple[Svc, list[Any]]:
    s, _ = step(Svc("a"), Event(Ev.START, 0.0), c)
    return step(s, Event(Ev.SPAWNED, 0.0, pid=10), c)


def test_ready_runs_post_start_first_within_a_fresh_ready_timeout() -> None:
    s, acts = started()
    assert (s.state, s.in_post_start, s.reason) == (State.STARTING, True, "running post_start")
    assert states.PostStart("a") in acts
    assert states.ArmTimer("a", Timer.READY_TIMEOUT, 7) in acts
    assert step(s, Event(Ev.READY, 1.0), POST) == (s, [])  # a second READY=1: nothing new
    nxt, acts = step(s, Event(Ev.POST_START_DONE, 2.0, status=ExitStatus("exited", code=0)),
                     POST)
    assert (nxt.state, nxt.in_post_start) == (State.READY, False)
    assert states.CancelTimer("a", Timer.READY_TIMEOUT) in acts


def test_a_plain_service_is_ready_at_its_spawn_as_before() -> None:
    s, acts = started(ServiceConfig("a", ("/bin/sleep", "9")))
    assert s.state is State.READY and acts == [states.Persist("a")]


@pytest.mark.parametrize("ready", ["notify", "exec"])
def test_post_start_follows_readiness_of_every_kind(ready: str) -> None:
    c = ServiceConfig("a", ("/bin/sleep", "9"), ready=ready, ready_command=("/bin/true",),
                      post_start=(("/bin/true",),))
    s, acts = started(c)
    assert s.state is State.STARTING and not s.in_post_start
    assert not any(isinstance(a, states.PostStart) for a in acts)
    s, acts = step(s, Event(Ev.READY, 1.0), c)
    assert s.in_post_start and states.PostStart("a") in acts


def test_a_forking_service_runs_it_once_its_main_pid_is_known() -> None:
    c = ServiceConfig("a", ("/usr/sbin/d",), kind="forking", post_start=(("/bin/true",),))
    s, _ = started(c)
    s, acts = step(s, Event(Ev.LAUNCHED, 1.0, pid=11, status=ExitStatus("exited", code=0)), c)
    assert (s.state, s.pid, s.in_post_start) == (State.STARTING, 11, True)
    assert states.PostStart("a") in acts


def test_a_failed_post_start_stops_it_as_a_failed_start() -> None:
    s, _ = started()
    st = ExitStatus("exited", code=3)
    s, acts = step(s, Event(Ev.POST_START_DONE, 1.0, status=st), POST)
    assert (s.state, s.fail_after_stop, s.in_post_start) == (State.STOPPING, st, False)
    assert s.reason == "post_start failed: exit status 3"
    assert any(isinstance(a, states.Kill) for a in acts)


def test_its_ready_timeout_names_post_start() -> None:
    s, _ = started()
    s, _ = step(s, Event(Ev.READY_TIMEOUT, 7.0), POST)
    assert s.state is State.STOPPING and s.reason == "post_start not done within 7 s"


def test_an_end_of_the_service_ends_the_post_start_and_a_late_report_is_stale() -> None:
    c = ServiceConfig("a", ("/bin/sleep", "9"), post_start=(("/bin/true",),), restart="always",
                      backoff=Backoff(initial=0.0))
    s, _ = started(c)
    s, acts = step(s, Event(Ev.EXITED, 1.0, status=ExitStatus("killed", signal=9)), c)
    assert s.state is State.STARTING and s.pid is None and states.Spawn("a") in acts
    assert not s.in_post_start  # (starting again at once: a start of its own)
    late = Event(Ev.POST_START_DONE, 1.5, status=ExitStatus("exited", code=0))
    assert step(s, late, c)[0] == s
    for st in State:
        if st is not State.STARTING:
            assert states.TABLE[(st, Ev.POST_START_DONE)] is states._stale


def test_a_new_restarter_adopts_a_service_in_post_start_as_starting() -> None:
    found = states.Found(record="starting", pid=10, alive=True, in_post_start=True)
    s, acts = step(Svc("a"), Event(Ev.ADOPTED, 5.0, found=found), POST)
    assert (s.state, s.pid, s.in_post_start) == (State.STARTING, 10, True)
    assert acts == [states.ArmTimer("a", Timer.READY_TIMEOUT, 7)]
    # they ended while no restarter watched (init has their status): done, the service
    # runs (a failure of theirs is a line on its log)
    s, _ = step(s, Event(Ev.POST_START_DONE, 6.0, status=ExitStatus("unknown")), POST)
    assert (s.state, s.in_post_start) == (State.READY, False)


def test_config_forms_and_a_oneshot_refused() -> None:
    c = config.parse('[service.a]\ncommand = "exec sleep 9"\nshell = true\n'
                     'post_start = ["-echo up", ["/bin/true"]]\n')
    assert c.services["a"].post_start == (("-/bin/sh", "-c", "echo up"), ("/bin/true",))
    with pytest.raises(config.ConfigError, match="a oneshot's commands already run in turn"):
        config.parse('[service.a]\ncommand = ["/bin/true"]\nkind = "oneshot"\n'
                     'post_start = [["/bin/true"]]\n')


def conf(post: str, extra: str = "") -> str:
    return f'''
[service.db]
command = ["/bin/sh", "-c", "echo armed; exec sleep 1000"]
post_start = [["/bin/sh", "-c", "{post}"]]
restart = "never"
{extra}
[service.web]
command = ["/bin/sleep", "1000"]
requires = ["db"]
after = ["db"]
'''


@pytest.mark.slow
def test_the_service_is_ready_once_its_post_start_is_done(restarter: Any, tmp_path: Any
                                                         ) -> None:
    go = tmp_path / "go"
    r = restarter(conf(f"echo post for $MAINPID; while [ ! -e {go} ]; do sleep 0.05; done; "
                       "echo post done"))
    st = wait_until(lambda: "post for" in r.service_log("db") and r.svc("db"), RUN_BOUND,
                    "the post_start to run")
    assert (st["state"], st["reason"]) == ("starting", "running post_start"), st
    assert f"post for {st['pid']}" in r.service_log("db")
    assert r.svc("web")["state"] == "waiting"  # what requires it waits for it
    go.touch()
    r.wait_state("db", "ready", timeout=RUN_BOUND)
    r.wait_state("web", "ready", timeout=RUN_BOUND)
    assert "db: post_start started (pid " in open(r.log).read()


@pytest.mark.slow
def test_a_failing_post_start_fails_the_start(restarter: Any) -> None:
    r = restarter(conf("exit 3"))
    st = r.wait_state("db", "failed", timeout=RUN_BOUND)
    assert "post_start failed: exit status 3" in open(r.log).read()
    wait_until(lambda: "hachain: post_start 1/1 (exit 3) failed: status 3; the service "
               "stops" in r.service_log("db"), RUN_BOUND, "the failure on its log")
    assert st["pid"] is None


@pytest.mark.slow
def test_a_new_restarter_waits_for_a_post_start_it_finds_running(restarter: Any,
                                                                tmp_path: Any) -> None:
    go = tmp_path / "go"
    mark = tmp_path / "post"
    r = restarter(conf(f"echo $$ > {mark}; while [ ! -e {go} ]; do sleep 0.05; done"))
    post = int(wait_until(lambda: mark.exists() and mark.read_text().strip(), RUN_BOUND,
                          "the post_start to run"))
    rec = wait_until(lambda: json.load(open(os.path.join(r.state_dir, "services", "db.json"))
                                       ).get("post_start"), RUN_BOUND, "the record")
    assert channels.proc_stat(post) is not None
    assert open(f"/proc/{post}/stat").read().rsplit(")", 1)[1].split()[1] == str(rec[0])
    r.kill_restarter()  # (the record names the program that runs the commands: its parent)
    r.pids_seen.update((post, rec[0]))
    r.start()
    st = r.svc("db")
    assert (st["state"], st["reason"]) == ("starting", "adopted; running post_start"), st
    assert f"db: its post_start (pid {rec[0]}) still runs; ready once it ends" in \
        open(r.log).read()
    go.touch()
    r.wait_state("db", "ready", timeout=RUN_BOUND)
    r.wait_state("web", "ready", timeout=RUN_BOUND)
    wait_until(lambda: channels.proc_state(post) in (None, "Z", "X"), RUN_BOUND,
               "the post_start to end")


# --- post_stop (systemd's ExecStopPost=) ----------------------------------------------------

def test_post_stop_is_told_of_the_end_in_systemds_words() -> None:
    env = policy.exit_env
    assert env(ExitStatus("exited", code=0)) == (
        ("SERVICE_RESULT", "success"), ("EXIT_CODE", "exited"), ("EXIT_STATUS", "0"))
    assert env(ExitStatus("exited", code=3)) == (
        ("SERVICE_RESULT", "exit-code"), ("EXIT_CODE", "exited"), ("EXIT_STATUS", "3"))
    assert env(ExitStatus("exited", code=3), (0, 3))[0] == ("SERVICE_RESULT", "success")
    assert env(ExitStatus("killed", signal=9)) == (
        ("SERVICE_RESULT", "signal"), ("EXIT_CODE", "killed"), ("EXIT_STATUS", "KILL"))
    assert env(ExitStatus("killed", signal=15))[0] == ("SERVICE_RESULT", "success")
    assert env(ExitStatus("killed", signal=9, oom="memory_max"))[0] == \
        ("SERVICE_RESULT", "oom-kill")
    assert env(ExitStatus("unknown")) == (("SERVICE_RESULT", "unknown"),)


def test_a_service_with_post_stop_is_never_restarted_ahead_of_its_exit() -> None:
    """(The restart path that starts the replacement before the rest of the exit is
    handled would start it beside its post_stop.)"""
    from hachain.restarter import core
    plain = ServiceConfig("a", ("/bin/sleep", "9"), restart="always",
                          backoff=Backoff(initial=0.0))
    for c, expect in ((plain, True),
                      (dataclasses.replace(plain, post_stop=(("/bin/true",),)), False)):
        k = core.Core(core.make_plan({"a": c}))
        k.svcs["a"] = Svc("a", state=State.READY, pid=10, started_at=0.0)
        assert k.restarts_at_once("a", 10, ExitStatus("killed", signal=9), 20.0) is expect


def stop_conf(post: str, extra: str = "") -> str:
    return f'''
[service.db]
command = ["/bin/sh", "-c", "echo armed; exec sleep 1000"]
post_stop = [["/bin/sh", "-c", "{post}"]]
restart = "always"
backoff = {{ initial = 0.1 }}
{extra}
'''


@pytest.mark.slow
def test_post_stop_runs_after_a_crash_and_the_restart_waits_for_it(
        restarter: Any, tmp_path: Any) -> None:
    go = tmp_path / "go"
    r = restarter(stop_conf(f"echo post $SERVICE_RESULT $EXIT_CODE $EXIT_STATUS; "
                            f"while [ ! -e {go} ]; do sleep 0.05; done; echo post done"))
    pid = r.wait_state("db", "ready")["pid"]
    os.kill(pid, 9)
    wait_until(lambda: "post signal killed KILL" in r.service_log("db"), RUN_BOUND,
               "the post_stop to run")
    wait_until(lambda: "db: its start waits for its post_stop (pid " in open(r.log).read(),
               RUN_BOUND, "the start to wait")
    st = r.svc("db")
    assert st["state"] == "starting" and st["pid"] is None, st  # not started beside it
    assert st["post_stop"], st  # (`hachain status` says what it waits for)
    shown = "\n".join(status._service_lines({"db": st}, lambda text, _ok: text, True))
    assert f"[post_stop running, pid {st['post_stop']}]" in shown, shown
    go.touch()
    new = wait_until(lambda: (s := r.svc("db"))["state"] == "ready" and s["pid"] != pid and s,
                     RUN_BOUND, "the restart")
    assert new["pid"]
    wait_until(lambda: "post done" in r.service_log("db"), RUN_BOUND, "the post_stop's last line")
    assert "db: post_stop started (pid " in open(r.log).read()


@pytest.mark.slow
def test_post_stop_follows_a_stop_by_hand_and_the_chains_shutdown_waits_for_it(
        restarter: Any, tmp_path: Any) -> None:
    out = tmp_path / "out"
    r = restarter(stop_conf(f"sleep 0.3; echo $SERVICE_RESULT $EXIT_STATUS >> {out}"))
    r.wait_state("db", "ready")
    assert r.req("stop", "db")["ok"]
    r.wait_state("db", "stopped", timeout=RUN_BOUND)
    wait_until(lambda: out.exists() and out.read_text() == "success TERM\n", RUN_BOUND,
               "the post_stop after the stop")
    assert r.req("start", "db")["ok"]
    r.wait_state("db", "ready", timeout=RUN_BOUND)
    r.stop()  # SIGTERM: the chain's shutdown stops db, then waits for its post_stop
    assert out.read_text() == "success TERM\nsuccess TERM\n"


@pytest.mark.slow
def test_a_hung_post_stop_is_killed_at_stop_timeout_and_the_start_goes_on(
        restarter: Any) -> None:
    r = restarter(stop_conf("exec sleep 1000", "stop_timeout = 0.5"))
    pid = r.wait_state("db", "ready")["pid"]
    os.kill(pid, 9)
    wait_until(lambda: (s := r.svc("db"))["state"] == "ready" and s["pid"] != pid, RUN_BOUND,
               "the restart after the post_stop was killed")
    log = open(r.log).read()
    assert "db: post_stop still running after stop_timeout (0.5 s): killed" in log, log
    assert "db: post_stop killed by SIGKILL" in log


@pytest.mark.slow
def test_a_new_restarter_waits_for_a_post_stop_it_finds_running(restarter: Any,
                                                               tmp_path: Any) -> None:
    go, mark = tmp_path / "go", tmp_path / "post"
    r = restarter(stop_conf(f"echo $$ > {mark}; while [ ! -e {go} ]; do sleep 0.05; done"))
    pid = r.wait_state("db", "ready")["pid"]
    os.kill(pid, 9)
    post = int(wait_until(lambda: mark.exists() and mark.read_text().strip(), RUN_BOUND,
                          "the post_stop to run"))
    rec = wait_until(lambda: json.load(open(os.path.join(r.state_dir, "services", "db.json"))
                                       ).get("post_stop"), RUN_BOUND, "the record")
    r.kill_restarter()
    r.pids_seen.update((post, rec[0]))
    r.start()
    assert f"db: its post_stop (pid {rec[0]}) still runs; a start waits for it" in \
        open(r.log).read()
    r.beats(3)
    st = r.svc("db")
    assert st["pid"] is None, st  # not started beside it
    go.touch()
    r.wait_state("db", "ready", timeout=RUN_BOUND)


def test_import_carries_exec_start_post_and_exec_stop_post_over(tmp_path: Any) -> None:
    """Debian's php-fpm unit makes its socket's ACL after the start and removes it after
    the stop; a '-' line may fail, an empty one resets the list; a oneshot's
    ExecStartPost= joins its sequence."""
    unit = tmp_path / "php-fpm.service"
    unit.write_text("""\
[Service]
Type=notify
ExecStart=/usr/sbin/php-fpm --nodaemonize
ExecStartPost=/bin/false
ExecStartPost=
ExecStartPost=-/usr/lib/php/php-fpm-socket-helper install /run/php/php-fpm.sock
ExecStopPost=-/usr/lib/php/php-fpm-socket-helper remove /run/php/php-fpm.sock
ExecStopPost=/bin/echo $SERVICE_RESULT
""")
    text, conv = importer.import_files([str(unit)])
    s = config.parse(text, "imported.toml").services["php-fpm"]
    assert s.post_start == (("-/usr/lib/php/php-fpm-socket-helper", "install",
                             "/run/php/php-fpm.sock"),)
    assert s.post_stop == (("-/usr/lib/php/php-fpm-socket-helper", "remove",
                            "/run/php/php-fpm.sock"),
                           ("/bin/sh", "-c", "set -f; exec /bin/echo $SERVICE_RESULT"))
    assert [w for w in conv.warnings if "ExecStartPost" in w or "ExecStopPost" in w] == [
        f"{unit}:8: ExecStopPost: $VARIABLE references: run through /bin/sh so that they "
        "expand from env and env_file as systemd expands them"]
    once = tmp_path / "seed.service"
    once.write_text("[Service]\nType=oneshot\nExecStart=/bin/load\nExecStartPost=/bin/check\n"
                    "ExecStopPost=/bin/clean\n")
    text, conv = importer.import_files([str(once)])
    s = config.parse(text, "imported.toml").services["seed"]
    assert (s.pre_start, s.command, s.post_stop) == ((("/bin/load",),), ("/bin/check",), ())
    assert conv.warnings == [f"{once}:5: ExecStopPost: a oneshot has no post_stop in hachain; "
                             "dropped (a teardown at its stop belongs in ExecStop=, which "
                             "becomes its stop_command)"]
