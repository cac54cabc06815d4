"""pre_start (systemd's ExecStartPre=): commands run in turn before a service's own.

First the /bin/sh program itself (hachain/prestart.py), run for real: order, the
environment and descriptors each command gets, a failing command and one that may fail,
and (hypothesis) that any argument reaches its program unchanged. Then a real restarter:
what requires the service waits for the commands, the pid stays the main pid across the
exec, a failed command is a failed start the policy answers, a hung one is bounded by
ready_timeout, and a missing program fails the start before any command ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hachain import config, prestart
from hachain.configtypes import ServiceConfig
from tests.conftest import wait_until

RUN_BOUND = 30.0  # a few /bin/sh and coreutils processes; no chain timer involved
LOGGED = 20.0  # a line a service printed reaches its log through the logger

# prints what a command sees: NOTIFY_SOCKET and whether descriptor 3 is open
SHOW = 'echo "$1 NS=${NOTIFY_SOCKET-unset} fd3=$(test -e /proc/self/fd/3 && echo open || echo closed)"'


def seen(tag: str) -> tuple[str, ...]:
    return ("/bin/sh", "-c", SHOW, "show", tag)


# (SIGPIPE back to its default, as the restarter starts a service: Python ignores it)
MAP_FD = ("import os, signal, sys; signal.signal(signal.SIGPIPE, signal.SIG_DFL); "
          "w = int(sys.argv[1]); os.dup2(w, 3); os.close(w); "
          "os.execv(sys.argv[2], sys.argv[2:])")


def run(c: ServiceConfig, env: dict[str, str] | None = None
        ) -> tuple[int, str, str, bytes]:
    """The program of `c`, with the readiness pipe at descriptor 3 when the restarter
    gives it one: (status, out, err, what came through the pipe)."""
    r, w = os.pipe()
    try:
        # the pipe's write end becomes the program's descriptor 3, as the restarter does
        argv = list(prestart.exec_argv(c))
        if prestart.ready_pipe(c):  # as the restarter: descriptor 3 only then
            argv = [sys.executable, "-c", MAP_FD, str(w)] + argv
        p = subprocess.run(argv,
                           capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", **(env or {})}, pass_fds=(w,),
                           timeout=RUN_BOUND)
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        piped = f.read()
    return p.returncode, p.stdout, p.stderr, piped


def test_commands_run_in_order_without_the_notify_socket_or_the_readiness_fd() -> None:
    c = ServiceConfig("web", seen("main"), pre_start=(seen("pre1"), seen("pre2")))
    code, out, err, piped = run(c, {"NOTIFY_SOCKET": "/run/n.sock"})
    assert code == 0, err
    assert out.splitlines() == ["pre1 NS=unset fd3=closed", "pre2 NS=unset fd3=closed",
                                "main NS=/run/n.sock fd3=closed"]
    assert piped == b"\n"  # ready = "none": the newline at the exec, then closed
    # ready = "notify": no newline of the program's; the service says READY=1 itself
    c = ServiceConfig("web", seen("main"), ready="notify", pre_start=(seen("pre"),))
    code, out, _err, piped = run(c)
    assert (code, piped) == (0, b"")
    assert out.splitlines() == ["pre NS=unset fd3=closed", "main NS=unset fd3=closed"]
    # ready = "fd": the service writes the descriptor; it gets it, the commands do not
    c = ServiceConfig("web", ("/bin/sh", "-c", SHOW + "; echo up >&3", "show", "main"),
                      ready="fd", pre_start=(seen("pre"),))
    code, out, _err, piped = run(c)
    assert (code, piped) == (0, b"up\n")
    assert out.splitlines() == ["pre NS=unset fd3=closed", "main NS=unset fd3=open"]


def test_a_failing_command_ends_the_start_with_its_status_naming_it() -> None:
    fail7 = ("/bin/sh", "-c", "exit 7")
    c = ServiceConfig("web", seen("main"), pre_start=(seen("pre1"), fail7, seen("pre3")))
    code, out, err, piped = run(c)
    assert code == 7
    assert out.splitlines() == ["pre1 NS=unset fd3=closed"]  # neither pre3 nor main ran
    assert "hachain: pre_start 2/3 (exit 7) failed: status 7; the start fails" in err
    assert piped == b""  # never ready
    # a program killed by a signal: the shell's 128 + n
    c = ServiceConfig("web", seen("main"), pre_start=(("/bin/sh", "-c", "kill -9 $$"),))
    code, _out, err, _piped = run(c)
    assert code == 137 and "failed: status 137" in err


def test_a_command_with_the_dash_prefix_may_fail() -> None:
    c = ServiceConfig("web", seen("main"),
                      pre_start=(("-/bin/sh", "-c", "exit 3"), ("-/bin/true",), seen("pre")))
    code, out, err, piped = run(c)
    assert code == 0 and piped == b"\n"
    assert out.splitlines() == ["pre NS=unset fd3=closed", "main NS=unset fd3=closed"]
    assert err.splitlines() == ["hachain: pre_start 1/3 (exit 3) failed: status 3 (may "
                                "fail: next)"]


ARG = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
              max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pre=st.lists(ARG, max_size=5), main=st.lists(ARG, max_size=5))
def test_every_argument_reaches_its_program_unchanged(pre: list[str], main: list[str]) -> None:
    """Quotes, $, backslashes, newlines, globs, leading dashes: literal in the program."""
    py = (sys.executable, "-c", "import sys; sys.stdout.write(repr(sys.argv[1:]) + '\\n')")
    c = ServiceConfig("web", py + tuple(main), pre_start=(py + tuple(pre),))
    code, out, err, _piped = run(c)
    assert code == 0, err
    assert out.splitlines() == [repr(pre), repr(main)]


def test_the_program_names_its_service_and_is_plain_without_pre_start() -> None:
    c = ServiceConfig("web", ("/bin/true",), pre_start=(("/bin/true",),))
    argv = prestart.exec_argv(c)
    assert argv[0] == "/bin/sh" and argv[-1] == "hachain-pre-start:web"
    assert prestart.exec_argv(ServiceConfig("web", ("/bin/true",))) == ("/bin/true",)
    assert prestart.ready_pipe(c)
    assert not prestart.ready_pipe(ServiceConfig("w", ("/bin/true",), kind="oneshot",
                                                 pre_start=(("/bin/true",),)))


@pytest.mark.parametrize("body, error", [
    ('pre_start = ["/bin/true"]', 'service.web.pre_start: item 1 is a string, "/bin/true": '
     'write each command as an argv list'),
    ('pre_start = [["-"]]', 'service.web.pre_start: item 1: the "-" prefix must be '
     'followed by the program'),
    ('pre_start = [[]]', "service.web.pre_start: must not be empty"),
    ('pre_start = "x"', "service.web.pre_start: must be a list"),
])
def test_config_errors_name_the_key(body: str, error: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.parse(f'[service.web]\ncommand = ["/bin/true"]\n{body}\n', "c.toml")
    assert f"c.toml:3: {error}" in str(e.value)


def test_a_readiness_descriptor_above_9_is_refused_with_pre_start() -> None:
    with pytest.raises(config.ConfigError) as e:
        config.parse('[service.web]\ncommand = ["/bin/true"]\nready = "fd"\nready_fd = 12\n'
                     'pre_start = [["/bin/true"]]\n', "c.toml")
    assert "c.toml:4: service.web.ready_fd: must be at most 9 with pre_start" in str(e.value)


def test_shell_lines_with_shell_true() -> None:
    s = config.parse('[service.web]\ncommand = "exec sleep 1"\nshell = true\n'
                     'pre_start = ["test -d /", "-false"]\n', "c.toml").services["web"]
    assert s.pre_start == (("/bin/sh", "-c", "test -d /"), ("-/bin/sh", "-c", "false"))


# --- with a real restarter ----------------------------------------------------------------

def log_of(r: Any, name: str) -> str:
    try:
        return open(os.path.join(r.persist_dir, "log", name + ".log")).read()
    except FileNotFoundError:
        return ""


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def gated(gate: Any) -> str:
    """db's pre_start waits until `gate` exists; web requires db."""
    return f'''
[service.db]
command = ["/bin/sleep", "1000"]
pre_start = [["/bin/sh", "-c", "echo checking; while [ ! -e {gate} ]; do sleep 0.05; done"]]
ready_timeout = 120
[service.web]
command = ["/bin/sleep", "1001"]
requires = ["db"]
'''


@pytest.mark.slow
def test_dependents_wait_for_the_commands_and_the_pid_stays_the_main_pid(
        restarter: Any, tmp_path: Any) -> None:
    gate = tmp_path / "gate"
    r = restarter(gated(gate))
    db = r.wait_state("db", "starting")
    assert db["reason"] == "running pre_start"
    wait_until(lambda: "checking" in log_of(r, "db"), LOGGED, "the pre-start command to run")
    assert r.svc("web")["state"] == "waiting"  # db is not ready while its command runs
    pid = db["pid"]
    assert cmdline(pid)[-1] == "hachain-pre-start:db"
    shown = subprocess.run([sys.executable, "-m", "hachain.cli", "status", "db", "-n", "0",
                            "--state-dir", r.state_dir, "--persist-dir", r.persist_dir],
                           capture_output=True, text=True, timeout=RUN_BOUND).stdout
    assert f"  process:   {pid} /bin/sh, running the pre_start commands (then it execs the " \
           "command)" in shown.splitlines(), shown
    assert "  why:       running pre_start" in shown.splitlines(), shown
    gate.touch()
    r.wait_state("web", "ready", timeout=RUN_BOUND)
    db = r.svc("db")
    assert db["state"] == "ready" and db["pid"] == pid  # the same process, exec'd
    # the newline comes just before the exec: the exec itself may still be under way
    wait_until(lambda: cmdline(pid) == ["/bin/sleep", "1000"], what="db's exec of its command")


@pytest.mark.slow
def test_a_failed_command_is_a_failed_start_and_the_service_never_runs(
        restarter: Any, tmp_path: Any) -> None:
    ran = tmp_path / "ran"
    r = restarter(f'''
[service.web]
command = ["/bin/sh", "-c", "touch {ran}; exec sleep 1000"]
pre_start = [["-/bin/false"], ["/bin/sh", "-c", "echo bad config >&2; exit 255"]]
restart = "on-failure"
backoff = {{ initial = 0.2, factor = 1.0, max = 0.2 }}
intensity = {{ max_restarts = 2, window = 60 }}
''')
    st = r.wait_state("web", "maintenance", timeout=RUN_BOUND)
    assert "last: exit status 255" in st["reason"], st
    log = log_of(r, "web")
    assert "hachain: pre_start 1/2 (/bin/false) failed: status 1 (may fail: next)" in log
    assert "bad config\nhachain: pre_start 2/2 (echo bad config >&2; exit 255) failed: " \
           "status 255; the start fails" in log, log
    assert not ran.exists()


@pytest.mark.slow
def test_a_hung_command_is_bounded_by_ready_timeout(restarter: Any, tmp_path: Any) -> None:
    r = restarter('''
[service.web]
command = ["/bin/sleep", "1000"]
pre_start = [["/bin/sh", "-c", "sleep 1000 & exec sleep 1000"]]
ready_timeout = 0.5
stop_timeout = 0.5
restart = "never"
''')
    st = r.wait_state("web", "failed", timeout=0.5 + 0.5 + RUN_BOUND)
    assert st["pid"] is None
    log = open(r.log).read()
    assert "pre_start not done within 0.5 s" in log, log[-2000:]


@pytest.mark.slow
def test_a_missing_program_fails_the_start_before_any_command(restarter: Any,
                                                               tmp_path: Any) -> None:
    ran = tmp_path / "ran"
    r = restarter(f'''
[service.web]
command = ["/nonexistent/web"]
pre_start = [["/bin/touch", "{ran}"]]
restart = "never"
''')
    r.wait_state("web", "failed", timeout=RUN_BOUND)
    log = open(r.log).read()
    assert 'command[0] = "/nonexistent/web": exec: No such file or directory' in log, log
    assert not ran.exists()


@pytest.mark.slow
def test_a_new_restarter_adopts_a_service_in_its_pre_start_as_starting(
        restarter: Any, tmp_path: Any) -> None:
    """The restarter dies while a service runs its pre_start commands: the readiness pipe
    died with it, so the new one does not take the service for ready (what requires it
    would start too early) but looks for the exec of its command, and only then starts
    the dependents. The same process throughout: nothing runs twice."""
    gate = tmp_path / "gate"
    r = restarter(gated(gate))
    pid = r.wait_state("db", "starting")["pid"]
    r.kill_restarter()
    r.start()
    db = r.svc("db")
    assert (db["state"], db["pid"], db["reason"]) == ("starting", pid,
                                                      "adopted; running pre_start"), db
    r.beats(5)  # a second or so of the new restarter's looks: still its pre_start
    assert r.svc("db")["state"] == "starting" and r.svc("web")["state"] == "waiting"
    gate.touch()
    r.wait_state("web", "ready", timeout=RUN_BOUND)
    db = r.svc("db")
    assert (db["state"], db["pid"], db["restarts"]) == ("ready", pid, 0)
    # the newline comes just before the exec: the exec itself may still be under way
    wait_until(lambda: cmdline(pid) == ["/bin/sleep", "1000"], what="db's exec of its command")


def test_a_readiness_pipe_nobody_reads_any_more_does_not_end_the_program() -> None:
    """The restarter that spawned it died during the commands (its end of the pipe went
    with it): the newline's write fails, and the command still runs, with SIGPIPE at its
    default (an ignored one would outlive the exec)."""
    c = ServiceConfig("web", ("/bin/sh", "-c", "grep SigIgn /proc/self/status"),
                      pre_start=(("/bin/true",),))
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-c", MAP_FD, str(w), *prestart.exec_argv(c)],
                           capture_output=True, text=True, timeout=RUN_BOUND, pass_fds=(w,))
    finally:
        os.close(w)
    assert p.returncode == 0, p.stderr
    ignored = int(p.stdout.split()[1], 16)
    assert not ignored & (1 << 12), p.stdout  # SIGPIPE (13) not ignored
