"""Bad input to the `hachain` command: each case runs the real command as a subprocess and
checks the exact one-line error, the exit status (2 bad usage or configuration, 1 a failed
operation) and that nothing was lost (a file named by mistake is unchanged)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import ROOT, RestarterRun, reap, svc

# A bound on a Python process's start and a one-line refusal; nothing here waits on the
# chain. Generous: a loaded CI host must not make a refusal look like a hang.
CLI_TIMEOUT = 60.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("HACHAIN_STATE_DIR", "HACHAIN_PERSIST_DIR", "HACHAIN_SIM_WATCHDOG"):
        env.pop(var, None)
    return env


def hachain(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hachain.cli", *args], capture_output=True,
                          text=True, timeout=CLI_TIMEOUT, env=_env(), cwd=cwd)


def one_line(p: subprocess.CompletedProcess[str], code: int) -> str:
    """The one line on stderr of a command that exited with `code` (and no traceback)."""
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    return lines[0]


# --- watchdog: a path that is no device is never opened -------------------------------------

def test_watchdog_regular_file_is_not_opened_nor_written(tmp_path: Any) -> None:
    f = tmp_path / "notes.txt"
    f.write_bytes(b"precious\n")
    for args in (("info",), ("info", "--open"), ("info", "--json"),
                 ("set-timeout", "5"), ("set-timeout", "5", "--open")):
        p = hachain("watchdog", *args, "-d", str(f))
        assert one_line(p, 1) == (
            f"hachain watchdog: {f}: open: not a character device (a watchdog is a device "
            "node such as /dev/watchdog0); left untouched")
        assert p.stdout == ""
    assert f.read_bytes() == b"precious\n"  # was b"Vrecious\n": the magic close wrote 'V'


# --- metrics: --unix removes only a stale socket of its own kind ----------------------------

def _metrics_started(proc: subprocess.Popen[str]) -> str:
    """The start-up line of a `hachain metrics` child (its first line on stderr)."""
    assert proc.stderr is not None
    line = proc.stderr.readline()  # bounded by the child's own start; killed on failure
    assert "serving" in line, line
    return line


def test_metrics_unix_path_that_is_a_file_or_in_use_is_left_alone(tmp_path: Any) -> None:
    pytest.importorskip("prometheus_client")
    f = tmp_path / "notes.txt"
    f.write_bytes(b"precious\n")
    p = hachain("metrics", "--unix", str(f), "--state-dir", str(tmp_path))
    assert one_line(p, 1) == (f"hachain metrics: cannot listen on {f}: exists and is not "
                              "a socket; left untouched")
    assert f.read_bytes() == b"precious\n"  # was unlinked, then served on

    sock = os.path.join(tmp_path, "m.sock")
    first = subprocess.Popen([sys.executable, "-m", "hachain.cli", "metrics", "--unix", sock,
                              "--state-dir", str(tmp_path)], stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True, env=_env())
    try:
        _metrics_started(first)
        ino = os.lstat(sock).st_ino
        p = hachain("metrics", "--unix", sock, "--state-dir", str(tmp_path))
        assert one_line(p, 1) == (f"hachain metrics: cannot listen on {sock}: another "
                                  "process serves on this socket")
        assert os.lstat(sock).st_ino == ino  # the first one's socket, still served
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(CLI_TIMEOUT)
            c.connect(sock)
            c.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert c.recv(12).startswith(b"HTTP/1.0 200")
    finally:
        first.terminate()
        try:
            first.wait(CLI_TIMEOUT)
        except subprocess.TimeoutExpired:
            first.kill()
            reap(first, "the first metrics server")
    assert first.returncode == 0 and not os.path.exists(sock)


def test_metrics_port_out_of_range_is_one_line(tmp_path: Any) -> None:
    pytest.importorskip("prometheus_client")
    p = hachain("metrics", "--listen", "127.0.0.1:99999", "--state-dir", str(tmp_path))
    assert one_line(p, 1) == ("hachain metrics: cannot listen on 127.0.0.1:99999: --listen "
                              "must be HOST:PORT, got '127.0.0.1:99999'")  # was a traceback


# --- a configuration nested too deeply --------------------------------------------------------

def _nested(n: int) -> str:
    return "[" * n + "]" * n


def test_check_a_config_nested_too_deeply_is_one_line(tmp_path: Any) -> None:
    head = '[watchdog]\ndevice = "none"\n[service.a]\n'
    deep = tmp_path / "deep.toml"  # deeper than tomllib's recursion: was a RecursionError
    deep.write_text(head + f"command = {_nested(5000)}\n")
    p = hachain("check", "-c", str(deep))
    assert one_line(p, 2) == ("hachain: deep.toml: invalid TOML: arrays or inline tables "
                              "nested too deeply")
    # within tomllib's reach but past the schema's (its walk recursed out)
    for n in (300, 480):
        deep.write_text(head + f"command = {_nested(n)}\n")
        p = hachain("check", "-c", str(deep))
        assert one_line(p, 2) == ("hachain: deep.toml:4: service.a.command: arrays or "
                                  "tables nested more than 32 levels deep")
    deep.write_text(head + 'command = ["/bin/true"]\nenv = ' + "{a=" * 300 + "1"
                    + "}" * 300 + "\n")
    p = hachain("check", "-c", str(deep))
    assert one_line(p, 2) == ("hachain: deep.toml:5: service.a.env.a: arrays or tables "
                              "nested more than 32 levels deep")
    for cmd in (("status", "--cluster"), ("move", "a", "b"), ("logs", "a")):
        deep.write_text(head + f"command = {_nested(5000)}\n")
        p = hachain(*cmd, "-c", str(deep))
        assert one_line(p, 2) == ("hachain: deep.toml: invalid TOML: arrays or inline "
                                  "tables nested too deeply"), cmd


def test_reload_of_a_config_nested_too_deeply_changes_nothing(
        restarter: Callable[..., RestarterRun]) -> None:
    run = restarter(f"[service.a]\ncommand = {svc('sleep')}\n")
    pid = run.wait_state("a", "ready")["pid"]
    with open(run.config) as f:
        good = f.read()
    with open(run.config, "w") as f:
        f.write(good + f"[service.b]\ncommand = {_nested(5000)}\n")
    p = hachain("reload", "--state-dir", run.state_dir)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    # the refusal's documented form: a head line, then one line per error (was
    # "hachain: internal error: RecursionError: maximum recursion depth exceeded")
    assert p.stderr.splitlines() == [
        "hachain: reload refused, nothing changed:",
        "hachain: chain.toml: invalid TOML: arrays or inline tables nested too deeply"]
    st = run.status()
    assert list(st) == ["a"] and st["a"]["state"] == "ready" and st["a"]["pid"] == pid


# --- run: the chain's directories ------------------------------------------------------------

def _chain_toml(tmp_path: Any, state_dir: str, persist_dir: str) -> str:
    path = os.path.join(tmp_path, "chain.toml")
    with open(path, "w") as f:
        f.write(f'[chain]\nstate_dir = "{state_dir}"\npersist_dir = "{persist_dir}"\n'
                'cgroup_root = "none"\n[watchdog]\ndevice = "none"\n'
                f"[service.a]\ncommand = {svc('sleep')}\n")
    return path


def test_run_with_a_file_where_a_directory_goes_starts_nothing(tmp_path: Any) -> None:
    """Init used to start anyway and restart a restarter that died with a traceback at
    every start (FileExistsError / NotADirectoryError), for ever."""
    f = tmp_path / "notes.txt"
    f.write_bytes(b"precious\n")
    ok = str(tmp_path / "ok")
    for key, state, persist, why in (
            ("state_dir", str(f), ok, "exists and is not a directory"),
            ("state_dir", f"{f}/run", ok, "cannot create the directory: a part of the path "
             "is not a directory"),
            ("persist_dir", ok, f"{f}/persist", "cannot create the directory: a part of the "
             "path is not a directory")):
        cfg = _chain_toml(tmp_path, state, persist)
        p = hachain("run", "-c", cfg)  # an exec'd init would run until the timeout
        d = state if key == "state_dir" else persist
        assert one_line(p, 2) == f"hachain: {cfg}: chain.{key} {d}: {why}; nothing started"
    assert f.read_bytes() == b"precious\n"
    assert not os.path.exists(os.path.join(ok, "hb"))  # no layer ever ran


def test_restarter_that_cannot_make_its_directory_says_so_in_one_line(tmp_path: Any) -> None:
    f = tmp_path / "notes.txt"
    f.write_bytes(b"precious\n")
    cfg = _chain_toml(tmp_path, str(tmp_path / "run"), f"{f}/persist")
    p = subprocess.run([sys.executable, "-m", "hachain.restarter", "-c", cfg],
                       capture_output=True, text=True, timeout=CLI_TIMEOUT, env=_env())
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.splitlines()[-1] == (f"hachain-restarter: cannot start: {f}/persist: Not "
                                         "a directory")
    assert f.read_bytes() == b"precious\n"


# --- import: a line of a few MB ------------------------------------------------------------

def test_import_of_a_multi_megabyte_command_line_is_refused_at_once(tmp_path: Any) -> None:
    """shlex split it a character at a time: minutes for 3 MB (the test timed out)."""
    unit = tmp_path / "big.service"
    unit.write_text("[Service]\nExecStart=/bin/true " + "x" * 3_000_000 + "\n")
    p = hachain("import", str(unit))
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stdout == ""
    assert p.stderr.splitlines() == [
        f"hachain import: refused: {unit}:2: ExecStart: cannot split the command line: "
        "longer than 131071 bytes (3000010)"]  # the refusal alone: it says why
    conf = tmp_path / "big.conf"  # supervisord's command= and environment=
    conf.write_text("[program:big]\ncommand=/bin/true\nenvironment=A=" + "x" * 3_000_000
                    + "\n")
    p = hachain("import", str(conf))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.splitlines() == [
        f"hachain import: warning: {conf}:3: environment: longer than 131071 bytes; dropped"]


# --- sim: its options, checked before a machine boots ---------------------------------------

def test_sim_bad_dir_and_durations_are_one_line_exit_2(tmp_path: Any) -> None:
    f = tmp_path / "notes.txt"
    f.write_bytes(b"precious\n")
    for args, line in (
            (("--dir", str(f)), f"--dir {f}: exists and is not a directory"),  # traceback
            (("--dir", f"{f}/m"), f"--dir {f}/m: cannot create the directory: Not a directory"),
            (("--duration", "-1"), "--duration must be a number of seconds > 0, got -1"),
            (("--duration", "nan"), "--duration must be a number of seconds > 0, got nan"),
            (("--status-every", "-1"), "--status-every must be a number of seconds >= 0, "
             "got -1"),
            (("--panic-delay", "nan"), "--panic-delay must be a number of seconds >= 0, "
             "got nan")):
        p = hachain("sim", *args)
        if p.returncode == 1 and "needs root" in p.stderr:
            pytest.skip(p.stderr.strip())
        assert one_line(p, 2) == f"hachain sim: {line}", args
        assert p.stdout == ""  # no machine directory announced: nothing booted
    assert f.read_bytes() == b"precious\n"


# --- service names: the configuration's rule, wherever a name comes from outside it -------

RULE = "1 to 64 letters, digits, '_', '.', '@' or '-', starting with a letter or digit"


def test_logs_name_outside_the_rule_reads_nothing(tmp_path: Any) -> None:
    """`../../x` was joined to --log-dir: it printed a file outside the log directory."""
    logs = tmp_path / "a" / "b" / "log"
    logs.mkdir(parents=True)
    (tmp_path / "secret.log").write_text("secret line\n")
    for name in ("../../secret", "-", ".hidden", "a/b", "x" * 65):
        p = hachain("logs", "--log-dir", str(logs), "--", name)
        assert one_line(p, 2) == f"hachain logs: {name}: not a service name ({RULE})"
        assert p.stdout == ""


def test_control_and_move_names_outside_the_rule_are_bad_usage(tmp_path: Any) -> None:
    state = tmp_path / "run"  # no chain here: the name is refused before anything is asked
    for cmd in ("start", "stop", "restart", "clear"):
        p = hachain(cmd, "--state-dir", str(state), "--", "../x")
        assert one_line(p, 2) == f"hachain: {cmd}: ../x: not a service name ({RULE})"
        assert p.stdout == ""
    p = hachain("move", "--", "../x", "node2")
    assert one_line(p, 2) == f"hachain: move: ../x: not a service name ({RULE})"
    assert not state.exists()


def _raw_request(state_dir: str, line: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(CLI_TIMEOUT)
        c.connect(os.path.join(state_dir, "control.sock"))
        c.sendall(line + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            got = c.recv(4096)
            if not got:
                break
            buf += got
    rep: dict[str, Any] = json.loads(buf)
    return rep


def test_control_request_without_a_string_name_is_refused(
        restarter: Callable[..., RestarterRun]) -> None:
    run = restarter(f"[service.a]\ncommand = {svc('sleep')}\n")
    pid = run.wait_state("a", "ready")["pid"]
    for line, error in (
            (b'{"op": "stop"}', "request 'stop' has no string 'name'"),  # was: unknown service None
            (b'{"op": "restart", "name": null}', "request 'restart' has no string 'name'"),
            (b'{"op": "stop", "name": ["a"]}', "request 'stop' has no string 'name'"),
            (b'{"op": "start", "name": 7}', "request 'start' has no string 'name'"),
            (b'{"op": "stop", "name": "../a"}', f"../a: not a service name ({RULE})"),
            (b'{"op": "clear", "name": ""}', f": not a service name ({RULE})")):
        assert _raw_request(run.state_dir, line) == {"ok": False, "error": error}, line
    st = run.status()  # still running, and nothing changed
    assert st["a"]["state"] == "ready" and st["a"]["pid"] == pid


# --- status: a state directory that is not there ----------------------------------------------

def test_status_of_a_state_dir_that_is_missing_or_a_file(tmp_path: Any) -> None:
    """Was 'degraded: init dead ...', as if a chain had died there."""
    f = tmp_path / "notes.txt"
    f.write_bytes(b"precious\n")
    for d, why in ((str(tmp_path / "nothing"), "missing"), (str(f), "not a directory")):
        msg = f"status: {d}: not a chain's state directory ({why})"
        p = hachain("status", "--state-dir", d, "--persist-dir", str(tmp_path / "p"))
        assert one_line(p, 1) == f"hachain: {msg}"
        assert p.stdout == ""
        p = hachain("status", "--json", "--state-dir", d, "--persist-dir",
                    str(tmp_path / "p"))
        assert p.returncode == 1 and p.stderr == ""
        assert json.loads(p.stdout) == {"error": msg, "state_dir": d}
    assert f.read_bytes() == b"precious\n"
    assert not (tmp_path / "nothing").exists() and not (tmp_path / "p").exists()


# --- an empty path is a mistake, not "unset" --------------------------------------------------

def test_empty_path_options_are_bad_usage(tmp_path: Any) -> None:
    """`run -c ''` read the current directory; `--state-dir ''` and friends used the
    defaults without a word."""
    (tmp_path / "chain.toml").write_text('[watchdog]\ndevice = "none"\n')
    for args, option in (
            (("run", "-c", ""), "-c/--config"), (("check", "--config="), "-c/--config"),
            (("status", "-c", ""), "-c/--config"), (("status", "--state-dir", ""), "--state-dir"),
            (("status", "--json", "--persist-dir", ""), "--persist-dir"),
            (("stop", "a", "--state-dir", ""), "--state-dir"),
            (("reload", "--state-dir", ""), "--state-dir"),
            (("logs", "a", "--log-dir", ""), "--log-dir"),
            (("logs", "a", "--persist-dir", ""), "--persist-dir"),
            (("move", "a", "b", "-c", ""), "-c/--config")):
        p = hachain(*args, cwd=str(tmp_path))  # nothing may start: `run` would not return
        assert one_line(p, 2) == f"hachain: {option}: empty path", args
        assert p.stdout == ""
    assert os.listdir(tmp_path) == ["chain.toml"]


# --- move --timeout: a number of seconds ------------------------------------------------------

def test_move_timeout_negative_or_not_finite_is_refused_at_parsing(tmp_path: Any) -> None:
    """-1 and nan were taken (nan never times out); refused before the configuration is
    read (there is none here: it would be a different line)."""
    for value in ("-1", "nan", "inf", "-inf", "soon"):
        p = hachain("move", "web", "node2", "-c", str(tmp_path / "none.toml"),
                    f"--timeout={value}")  # (`--timeout -inf` reads as an option)
        assert p.returncode == 2 and "Traceback" not in p.stderr and p.stdout == ""
        usage, line = p.stderr.splitlines()  # argparse's usage line, then the error
        assert usage.startswith("usage: hachain move ")
        assert line == ("hachain move: error: argument --timeout: must be a number of "
                        f"seconds >= 0, got '{value}'")
    p = hachain("move", "web", "node2", "-c", str(tmp_path / "none.toml"), "--timeout", "0")
    assert one_line(p, 2) == (f"hachain: {tmp_path}/none.toml: cannot read configuration: "
                              "No such file or directory")  # 0 is a timeout: parsed


# --- import: a refusal is the whole answer ----------------------------------------------------

def test_import_of_only_refused_inputs_says_the_refusals_alone(tmp_path: Any) -> None:
    """Each refusal was followed by 'hachain import: nothing to import'."""
    unit = tmp_path / "empty.service"
    unit.write_text("[Unit]\nDescription=nothing\n[Service]\nType=simple\n")
    p = hachain("import", str(unit))
    assert one_line(p, 2).startswith(f"hachain import: refused: {unit}")
    assert "ExecStart: missing" in p.stderr and p.stdout == ""
    masked = tmp_path / "masked.service"
    masked.symlink_to(os.devnull)
    p = hachain("import", str(unit), str(masked))
    assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 2 and all(ln.startswith("hachain import: refused: ") for ln in lines)
    assert f"{masked}: the unit is masked" in lines[1]
    assert unit.read_text() == "[Unit]\nDescription=nothing\n[Service]\nType=simple\n"


# --- check: users and groups this host does not know ------------------------------------------

def test_check_warns_of_each_unknown_user_and_group_and_passes(tmp_path: Any) -> None:
    """`user = "nosuchuser"` passed without a word. A warning, not an error: the file may
    be checked on a build host where the users do not exist yet."""
    for name in ("nosuchuser", "nosuchgroup"):
        for lookup in (pwd.getpwnam, grp.getgrnam):
            with pytest.raises(KeyError):
                lookup(name)
    root_group = grp.getgrgid(0).gr_name
    cfg = tmp_path / "chain.toml"
    text = ('[watchdog]\ndevice = "none"\n'
            '[service.web]\ncommand = ["/bin/true"]\nuser = "nosuchuser"\n'
            '[service.db]\ncommand = ["/bin/true"]\nuser = "root"\n'
            f'group = "{root_group}"\n'
            '[service.job]\ncommand = ["/bin/true"]\nuser = "nosuchuser"\n'
            'group = "nosuchgroup"\n')
    cfg.write_text(text)
    p = hachain("check", "-c", str(cfg))
    assert p.returncode == 0 and "Traceback" not in p.stderr
    assert p.stdout.startswith(f"{cfg}: OK: 3 service(s)")
    assert p.stderr.splitlines() == [
        f"hachain: {cfg}: warning: service web: user nosuchuser does not exist on this host",
        f"hachain: {cfg}: warning: service job: user nosuchuser does not exist on this host",
        f"hachain: {cfg}: warning: service job: group nosuchgroup does not exist on this "
        "host"]
    assert cfg.read_text() == text


def test_check_warns_of_a_cgroup_root_outside_cgroup2_and_passes(tmp_path: Any) -> None:
    """A `cgroup_root` in a file system that is not cgroup v2 (here the test's tmp dir) is
    accepted, as on a build host, with one warning naming what it is in; the restarter
    would run without cgroups there. Nothing is made under it."""
    root = tmp_path / "not-cgroups" / "chain"
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[chain]\ncgroup_root = "{root}"\n[watchdog]\ndevice = "none"\n'
                   '[service.web]\ncommand = ["/bin/true"]\n')
    p = hachain("check", "-c", str(cfg))
    assert p.returncode == 0 and p.stdout.startswith(f"{cfg}: OK: 1 service(s)")
    lines = p.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"hachain: {cfg}: warning: chain.cgroup_root {root}: not in a "
                               "cgroup v2 file system ("), lines[0]
    assert lines[0].endswith("the restarter will run without cgroups here (process groups)")
    assert not (tmp_path / "not-cgroups").exists()


# --- ^C before the command runs ---------------------------------------------------------------

@pytest.mark.parametrize("script", ["hachain-py", "hachain"])
def test_ctrl_c_while_the_cli_imports_exits_130_without_a_traceback(tmp_path: Any,
                                                                    script: str) -> None:
    """A real SIGINT arrives in the middle of the CLI's imports: the process sends it to
    itself from a module the CLI imports (json, shadowed on PYTHONPATH for this run). The
    installed command ends with 130 and nothing on stderr, as a ^C during a command does.
    `hachain` is the native front where a compiler built it: it execs the Python CLI."""
    exe = os.path.join(os.path.dirname(sys.executable), script)
    if not os.path.exists(exe):
        pytest.skip(f"{exe} is not installed (scripts/setup.sh installs it)")
    (tmp_path / "json.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n"
        "raise AssertionError('SIGINT was not delivered during the import')\n")
    env = _env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    # SIGINT at its default first, as a terminal's foreground command has it: a suite run
    # in the background (a shell's `&`, nohup) hands its children SIGINT ignored, and an
    # ignored ^C rightly reaches no Python program
    p = subprocess.run([sys.executable, "-S", "-c", DEFAULT_SIGINT_EXEC, exe, "check", "-c",
                        str(tmp_path / "none.toml")], capture_output=True,
                       text=True, timeout=CLI_TIMEOUT, env=env)
    assert (p.returncode, p.stderr, p.stdout) == (130, "", "")


DEFAULT_SIGINT_EXEC = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                       "os.execv(sys.argv[1], sys.argv[1:])")
