"""stop_command (systemd's ExecStop=): a command that asks a service to stop.

A real restarter, real processes: the command runs at a stop in place of the stop
signal, as the service runs (its user, MAINPID, its log); the signal follows once the
command has exited, for what is left; a command that hangs is bounded by stop_timeout
and killed with the service; one that cannot run does not keep the service from
stopping. And the configuration's and the importer's side.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from hachain import channels, config, importer
from hachain.channels import pid_alive
from hachain.configtypes import ServiceConfig
from hachain.restarter import states
from hachain.restarter.persist import RuntimeRecord, Store
from hachain.restarter.policy import ExitStatus
from hachain.restarter.states import Ev, Event, State, Svc
from tests.conftest import START_TIMEOUT, wait_until

RUN_BOUND = 30.0  # a restarter answering, a few /bin/sh processes; no chain timer involved

# exits 0 on SIGUSR1 (its own way to stop), 7 on SIGTERM, saying which
SERVICE = ("trap 'echo got-usr1; exit 0' USR1; trap 'echo got-term; exit 7' TERM; "
           "echo armed; while :; do sleep 0.05; done")


def armed(r: Any) -> None:
    """Wait for the service's traps (ready = "none" is ready at its spawn, before its
    shell has set them: a signal then would end it by its default action)."""
    wait_until(lambda: "armed" in log_of(r, "db"), RUN_BOUND, "the service's traps")


def log_of(r: Any, name: str) -> str:
    try:
        return open(os.path.join(r.persist_dir, "log", name + ".log")).read()
    except FileNotFoundError:
        return ""


def conf(stop: str, extra: str = "") -> str:
    return f'''
[service.db]
command = ["/bin/sh", "-c", "{SERVICE}"]
stop_command = ["/bin/sh", "-c", "{stop}"]
restart = "never"
{extra}
'''


@pytest.mark.slow
def test_the_command_stops_the_service_in_place_of_the_signal(restarter: Any) -> None:
    r = restarter(conf("echo stopping $MAINPID as $(id -u); kill -USR1 $MAINPID",
                       'user = "nobody"'))
    pid = r.wait_state("db", "ready")["pid"]
    armed(r)
    assert r.req("stop", "db")["ok"]
    st = r.wait_state("db", "stopped", timeout=RUN_BOUND)
    assert st["pid"] is None
    # its user, MAINPID; on the service's log (through a pipe of its own: the logger may
    # write the two lines in either order)
    wait_until(lambda: "got-usr1" in (log := log_of(r, "db")) and
               f"stopping {pid} as 65534" in log, RUN_BOUND, "both lines on the log")
    log = log_of(r, "db")
    assert "got-term" not in log  # the signal never came: it had stopped
    assert "db: stop_command started (pid " in open(r.log).read()


@pytest.mark.slow
def test_the_stop_signal_follows_a_command_that_did_not_stop_it(restarter: Any) -> None:
    r = restarter(conf("echo asked; exit 3"))
    r.wait_state("db", "ready")
    armed(r)
    assert r.req("stop", "db")["ok"]
    r.wait_state("db", "stopped", timeout=RUN_BOUND)
    # the signal came (only once the command had exited: the restarter sends it then)
    wait_until(lambda: "got-term" in (log := log_of(r, "db")) and "asked" in log, RUN_BOUND,
               "both lines on the log")
    assert "db: stop_command exit status 3" in open(r.log).read()


@pytest.mark.slow
def test_a_hung_command_is_bounded_by_stop_timeout_and_killed_with_the_service(
        restarter: Any, tmp_path: Any) -> None:
    mark = tmp_path / "stopper"
    r = restarter(conf(f"echo $$ > {mark}; exec sleep 1000",
                       "stop_timeout = 0.5"))
    r.wait_state("db", "ready")
    assert r.req("stop", "db")["ok"]
    wait_until(lambda: mark.exists() and mark.read_text().strip(), RUN_BOUND,
               "the stop command to start")
    stopper = int(mark.read_text())
    st = r.wait_state("db", "stopped", timeout=0.5 + RUN_BOUND)
    assert st["pid"] is None
    wait_until(lambda: not pid_alive(stopper), RUN_BOUND, "the hung stop command to be gone")
    assert "got-usr1" not in log_of(r, "db")


@pytest.mark.slow
def test_a_command_that_cannot_run_does_not_keep_the_service_up(restarter: Any) -> None:
    r = restarter('''
[service.db]
command = ["/bin/sleep", "1000"]
stop_command = ["/nonexistent/stopper"]
restart = "never"
''')
    r.wait_state("db", "ready")
    assert r.req("stop", "db")["ok"]
    r.wait_state("db", "stopped", timeout=RUN_BOUND)
    log = open(r.log).read()
    assert 'db: stop_command cannot run: command[0] = "/nonexistent/stopper": exec: No such ' \
           'file or directory (errno ENOENT); sending its stop signal' in log, log[-2000:]


def test_config_takes_an_argv_or_a_shell_line() -> None:
    s = config.parse('[service.a]\ncommand = "exec sleep 9"\nshell = true\n'
                     'stop_command = "kill -QUIT $MAINPID"\n', "c.toml").services["a"]
    assert s.stop_command == ("/bin/sh", "-c", "kill -QUIT $MAINPID")
    with pytest.raises(config.ConfigError) as e:
        config.parse('[service.a]\ncommand = ["/bin/true"]\nstop_command = "x"\n', "c.toml")
    assert 'c.toml:3: service.a.stop_command: must be an argv list such as ["/usr/bin/x", ' \
           '"stop"]' in str(e.value)


def test_import_carries_exec_stop_over(tmp_path: Any) -> None:
    unit = tmp_path / "nginx.service"
    unit.write_text("""\
[Service]
Type=forking
PIDFile=/run/nginx.pid
ExecStart=/usr/sbin/nginx
ExecStop=-/sbin/start-stop-daemon --quiet --stop --retry QUIT/5 --pidfile /run/nginx.pid
ExecStop=/bin/true
""")
    text, conv = importer.import_files([str(unit)])
    s = config.parse(text, "imported.toml").services["nginx"]
    # several lines: in turn, as systemd runs them, stopping at the first failure ('-':
    # one that may fail)
    assert s.stop_command == ("/bin/sh", "-c", "set -f; { /sbin/start-stop-daemon --quiet "
                              "--stop --retry QUIT/5 --pidfile /run/nginx.pid || true; } && "
                              "/bin/true")
    assert conv.warnings == []
    pg = tmp_path / "pg.service"
    pg.write_text("[Service]\nExecStart=/usr/bin/pg\nExecStop=/usr/bin/pg_ctl stop -D "
                  "$PGDATA\n")
    text, conv = importer.import_files([str(pg)])
    assert config.parse(text, "imported.toml").services["pg"].stop_command == \
        ("/bin/sh", "-c", "set -f; exec /usr/bin/pg_ctl stop -D $PGDATA")
    # a oneshot's (RemainAfterExit=) is its teardown
    once = tmp_path / "seed.service"
    once.write_text("[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/load\n"
                    "ExecStop=/bin/save\n")
    text, conv = importer.import_files([str(once)])
    assert config.parse(text, "imported.toml").services["seed"].stop_command == ("/bin/save",)
    assert not conv.warnings


# --- a oneshot's teardown ----------------------------------------------------------------

def oneshot(tmp_path: Any, teardown: str, extra: str = "") -> str:
    """`setup` writes `up` when done; its teardown is `teardown`; `app` requires it."""
    return f'''
[service.setup]
kind = "oneshot"
command = ["/bin/sh", "-c", "echo up > {tmp_path}/state"]
stop_command = ["/bin/sh", "-c", "{teardown}"]
{extra}
[service.app]
command = ["/bin/sleep", "1000"]
requires = ["setup"]
'''


@pytest.mark.slow
def test_a_done_oneshots_teardown_runs_at_its_stop(restarter: Any, tmp_path: Any) -> None:
    r = restarter(oneshot(tmp_path, f"echo tearing down; echo down > {tmp_path}/state"))
    r.wait_state("app", "ready")
    assert r.svc("setup")["state"] == "done"
    assert (tmp_path / "state").read_text() == "up\n"
    assert r.req("stop", "setup")["ok"]
    st = r.wait_state("setup", "stopped", timeout=RUN_BOUND)
    assert st["reason"] == "stopped by administrator" and st["pid"] is None
    assert (tmp_path / "state").read_text() == "down\n"
    wait_until(lambda: "tearing down" in log_of(r, "setup"), RUN_BOUND, "its log line")
    # started again: its start runs again
    assert r.req("start", "setup")["ok"]
    r.wait_state("setup", "done", timeout=RUN_BOUND)
    assert (tmp_path / "state").read_text() == "up\n"
    # a restart of the done oneshot: its teardown first, then its start (as systemd's
    # ExecStop= then ExecStart=); the log says both ran, in that order
    assert r.req("restart", "setup")["ok"]
    wait_until(lambda: log_of(r, "setup").count("tearing down") == 2, RUN_BOUND,
               "the second teardown")
    st = r.wait_state("setup", "done", timeout=RUN_BOUND)
    assert (tmp_path / "state").read_text() == "up\n" and st["want"] == "up"
    # in systemd's order: what requires it stops, the teardown, the start, then app
    order = ["app: ready -> stopping", "setup: stop_command started",
             "setup: stopping -> starting", "setup: starting -> done", "app: starting -> ready"]
    wait_until(lambda: order[-1] in open(r.log).read(), RUN_BOUND, "app to be ready again")
    log = open(r.log).read()
    log = log[log.index("setup: done -> stopping (restarting: running its stop_command "
                        "first; first stopping app)"):]
    at = [log.find(line) for line in order]
    assert -1 not in at and at == sorted(at), log


@pytest.mark.slow
def test_the_chains_shutdown_tears_it_down_after_what_requires_it(
        restarter: Any, tmp_path: Any) -> None:
    """Reverse dependency order: app is gone before setup's teardown runs (it says
    whether app's process was still there)."""
    r = restarter(oneshot(tmp_path, f"kill -0 $(cat {tmp_path}/app.pid) && echo app-up > "
                                    f"{tmp_path}/state || echo down > {tmp_path}/state"))
    app = r.wait_state("app", "ready")
    r.pids_seen.add(app["pid"])
    (tmp_path / "app.pid").write_text(str(app["pid"]))
    r.stop()  # SIGTERM: the orderly shutdown
    assert r.proc is not None and r.proc.returncode is not None
    assert (tmp_path / "state").read_text() == "down\n"


@pytest.mark.slow
def test_a_hung_teardown_is_bounded_by_stop_timeout(restarter: Any, tmp_path: Any) -> None:
    r = restarter(oneshot(tmp_path, "exec sleep 1000", "stop_timeout = 0.5"))
    r.wait_state("setup", "done")
    assert r.req("stop", "setup")["ok"]
    st = r.wait_state("setup", "stopped", timeout=0.5 + RUN_BOUND)
    assert st["last_exit"]["text"] == "killed by SIGKILL", st


@pytest.mark.parametrize("want", ["up", "down"])
def test_a_new_restarter_carries_a_running_teardown_on(want: str) -> None:
    """The restarter died while a done oneshot's teardown ran (a stop, or the first half
    of a restart): the next one adopts the teardown as the stop it is, bounded by what
    was left of stop_timeout, and after a restart's teardown the start follows. (Taken
    for the oneshot's own start, its exit would have made the oneshot done.)"""
    c = ServiceConfig("setup", ("/bin/true",), kind="oneshot", restart="never",
                      stop_command=("/bin/save",), stop_timeout=10.0)
    found = states.Found(want=want, record="stopping", pid=42, alive=True, stop_since=100.0)
    s, acts = states.step(Svc("setup", want=want), Event(Ev.ADOPTED, 104.0, found=found), c)
    assert (s.state, s.pid) == (State.STOPPING, 42)
    assert acts == [states.ArmTimer("setup", states.Timer.STOP_TIMEOUT, 6.0)]
    nxt, acts = states.step(s, Event(Ev.EXITED, 105.0, status=ExitStatus("exited", code=0)), c)
    if want == "up":
        assert nxt.state is State.STARTING and states.Spawn("setup") in acts
    else:
        assert nxt.state is State.STOPPED and nxt.reason == "stopped by administrator"


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="private_tmp needs root (a mount namespace)")
def test_the_command_sees_the_services_own_tmp(restarter: Any) -> None:
    """systemd runs ExecStop= in the service's namespaces: a stop command that reads
    what the service keeps in its private /tmp (a socket, a pid file) finds it."""
    r = restarter('''
[service.db]
command = ["/bin/sh", "-c", "echo inside > /tmp/db.mark; echo armed; exec sleep 600"]
private_tmp = true
stop_command = ["/bin/sh", "-c", "echo stop sees $(cat /tmp/db.mark); kill $MAINPID"]
restart = "never"
''')
    r.wait_state("db", "ready")
    armed(r)
    assert r.req("stop", "db")["ok"]
    r.wait_state("db", "stopped", timeout=RUN_BOUND)
    wait_until(lambda: "stop sees inside" in log_of(r, "db"), RUN_BOUND,
               "the stop command's line")


def test_the_record_names_a_running_stop_command(tmp_path: Any) -> None:
    """What a new restarter reads to carry the stop on; a wrong value sets the record
    aside (rebuilt from what runs) instead of being believed."""
    st = Store(str(tmp_path / "run"), str(tmp_path / "persist"))
    rec = RuntimeRecord("db", 10, 20, "stopping", "down", 1.0, 0, None, stop_since=2.0,
                        stop_command=(11, 21))
    st.write_record(rec, 0.0)
    st.write_record(RuntimeRecord("web", 12, 22, "ready", "up", 1.0, 0, None), 0.0)
    st.sync(0.0)
    assert st.read_record("db") == rec
    web = json.load(open(tmp_path / "run" / "services" / "web.json"))
    assert "stop_command" not in web  # (the record of one not stopping is as it was)
    assert st.read_record("web").stop_command is None  # type: ignore[union-attr]
    for bad in ([11], [0, 21], ["11", 21], [11, -1], 11):
        (tmp_path / "run" / "services" / "db.json").write_text(
            json.dumps(dict(rec.to_json(), stop_command=bad)))
        assert st.read_record("db") is None
        assert st.warnings[-1].endswith(f"stop_command is {bad!r}: corrupt, set aside as "
                                        "db.json.corrupt"), st.warnings[-1]


# The service says which signal ended it in a file (its log goes through the logger,
# which the restarter's SIGKILL may take with it); the stop command waits for `go`.
CRASH_SERVICE = ("trap 'echo term > {d}/got; exit 0' TERM; "
                 "echo armed > {d}/got; while :; do sleep 0.05; done")
CRASH_STOP = "echo $$ > {d}/stopper; while [ ! -e {d}/go ]; do sleep 0.05; done; exit 0"


def crash_conf(d: Any) -> str:
    # stop_timeout: SIGKILL (which these tests must not see) would come only after 300 s
    return f'''
[service.db]
command = ["/bin/sh", "-c", "{CRASH_SERVICE.format(d=d)}"]
stop_command = ["/bin/sh", "-c", "{CRASH_STOP.format(d=d)}"]
stop_timeout = 300
restart = "never"
'''


def stop_then_kill_the_restarter(r: Any, d: Any) -> int:
    """Stop db, wait for its stop command to run, SIGKILL the restarter: the stop
    command's pid."""
    r.wait_state("db", "ready")
    wait_until(lambda: (d / "got").exists(), RUN_BOUND, "the service's traps")
    assert r.req("stop", "db")["ok"]
    stopper = int(wait_until(lambda: (d / "stopper").exists() and
                             (d / "stopper").read_text().strip(), RUN_BOUND,
                             "the stop command to start"))
    rec = json.load(open(os.path.join(r.state_dir, "services", "db.json")))
    assert rec["state"] == "stopping" and rec["stop_command"][0] == stopper, rec
    r.kill_restarter()
    r.pids_seen.add(stopper)
    return stopper


@pytest.mark.slow
def test_a_new_restarter_signals_once_the_stop_command_it_finds_has_ended(
        restarter: Any, tmp_path: Any) -> None:
    """The restarter died while a stop command ran: the next one watches the command
    and sends the stop signal when it exits, as the first would have (not SIGKILL when
    stop_timeout runs out, with no signal before it)."""
    r = restarter(crash_conf(tmp_path))
    stopper = stop_then_kill_the_restarter(r, tmp_path)
    r.start()
    st = r.svc("db")
    assert st["state"] == "stopping", st
    assert f"db: its stop_command (pid {stopper}) still runs; the stop signal follows " \
           "its exit" in open(r.log).read()
    assert (tmp_path / "got").read_text() == "armed\n"  # no signal before the command ends
    (tmp_path / "go").touch()
    r.wait_state("db", "stopped", timeout=RUN_BOUND)  # (SIGKILL would be 300 s away)
    assert (tmp_path / "got").read_text() == "term\n"


@pytest.mark.slow
def test_a_stop_command_that_ended_while_no_restarter_ran_is_followed_by_the_signal(
        restarter: Any, tmp_path: Any) -> None:
    r = restarter(crash_conf(tmp_path))
    stopper = stop_then_kill_the_restarter(r, tmp_path)
    (tmp_path / "go").touch()
    wait_until(lambda: channels.proc_state(stopper) in (None, "Z", "X"), START_TIMEOUT,
               "the stop command to end")
    assert (tmp_path / "got").read_text() == "armed\n"
    r.start()
    r.wait_state("db", "stopped", timeout=RUN_BOUND)
    assert (tmp_path / "got").read_text() == "term\n"
    assert "db: its stop_command ended while no restarter ran; sending its stop signal" \
        in open(r.log).read()


@pytest.mark.slow
def test_send_sighup_follows_the_stop_signal(restarter: Any, tmp_path: Any) -> None:
    """systemd's SendSIGHUP=: a shell that ignores the stop signal but ends on a hang-up
    stops at once, not at stop_timeout's SIGKILL (300 s away)."""
    out = tmp_path / "out"
    r = restarter(f'''
[service.sh]
command = ["/bin/sh", "-c", "trap 'echo term >> {out}' TERM; trap 'echo hup >> {out}; exit 0' HUP; echo armed >> {out}; while :; do sleep 0.05; done"]
send_sighup = true
stop_timeout = 300
restart = "never"
''')
    r.wait_state("sh", "ready")
    wait_until(lambda: out.exists() and "armed" in out.read_text(), RUN_BOUND, "its traps")
    assert r.req("stop", "sh")["ok"]
    r.wait_state("sh", "stopped", timeout=RUN_BOUND)  # (not SIGKILL, 300 s away)
    # both signals arrive together: the shell runs its traps in the order it likes
    assert out.read_text().splitlines()[-1] == "hup", out.read_text()


def test_import_carries_send_sighup() -> None:
    conv = importer.convert_systemd("[Service]\nExecStart=/bin/sh\nSendSIGHUP=yes\n", "s.service")
    assert conv.services["s"]["send_sighup"] is True and not conv.warnings
