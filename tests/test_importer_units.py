"""`hachain import` fidelity (issue 16.6): no-timeout values, supervisord expansions and
includes, masked units, exit statuses, Type=forking; and an import of every unit this
machine ships under /lib/systemd/system."""

from __future__ import annotations

import contextlib
import io
import math
import os
import subprocess
import sys
import time
import tomllib
from typing import Any

import pytest

from hachain import cli, config, importer

UNIT_DIR = "/lib/systemd/system"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hachain.importer", *args],
                          capture_output=True, text=True, timeout=30, check=False)


def _check(path: str) -> tuple[int, str]:
    """`hachain check -c path` in this process (the same code as the command)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(["check", "-c", path])
        except SystemExit as e:
            rc = int(e.code or 0)
    return rc, out.getvalue() + err.getvalue()


# --- timeouts --------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("option,keys", [
    ("TimeoutStopSec=0", ["stop_timeout"]),
    ("TimeoutStopSec=infinity", ["stop_timeout"]),
    ("TimeoutSec=0", ["stop_timeout", "ready_timeout"]),
    ("TimeoutStartSec=0", ["ready_timeout"])])
def test_zero_timeouts_mean_no_timeout(tmp_path: Any, option: str, keys: list[str]) -> None:
    unit = tmp_path / "r.service"
    unit.write_text(f"[Service]\nType=notify\nExecStart=/usr/bin/r\n{option}\n")
    r = _run(str(unit))
    assert r.returncode == 0, r.stderr
    data = tomllib.loads(r.stdout)["service"]["r"]
    for k in keys:
        assert data[k] == "infinity", (k, r.stdout)
    toml = tmp_path / "r.toml"
    toml.write_text(r.stdout)
    rc, out = _check(str(toml))
    assert rc == 0, out
    svc = config.load(str(toml)).services["r"]
    assert all(getattr(svc, k) == math.inf for k in keys)


def test_finite_timeouts_kept() -> None:
    conv = importer.convert_systemd("[Service]\nExecStart=/bin/x\nTimeoutSec=7\n", "x.service")
    assert conv.services["x"]["stop_timeout"] == conv.services["x"]["ready_timeout"] == 7.0


# --- supervisord -----------------------------------------------------------------------------

def test_supervisord_expansions_complete() -> None:
    conv = importer.convert_supervisord(
        "[program:w]\n"
        "command=/usr/bin/w --id %(process_num)02d --of %(numprocs)d --name %(program_name)s"
        " --fmt 100%% --here %(here)s --mode %(ENV_MODE)s\n"
        "process_name=%(program_name)s_%(process_num)d\n"
        "numprocs=3\nnumprocs_start=8\n"
        "environment=MODE=\"fast\"\n"
        "[program:odd]\ncommand=/bin/date +%s %(nope)s\n", "/etc/x/s.conf")
    assert list(conv.services) == ["w_8", "w_9", "w_10", "odd"]
    assert conv.services["w_9"]["command"] == [
        "/usr/bin/w", "--id", "09", "--of", "3", "--name", "w", "--fmt", "100%", "--here",
        "/etc/x", "--mode", "fast"]
    # a lone '%' and an unknown name: warned once each, left as they were
    assert conv.services["odd"]["command"] == ["/bin/date", "+%s", "%(nope)s"]
    assert any(":8: command: a lone '%'" in w for w in conv.warnings), conv.warnings
    assert any(":8: command: %(nope)s cannot be expanded" in w for w in conv.warnings)
    assert len(conv.warnings) == 2, conv.warnings  # not once per copy
    config.parse(importer.to_toml(conv, ["s.conf"]))


@pytest.mark.slow
def test_supervisord_numprocs_without_process_num_is_refused(tmp_path: Any) -> None:
    p = tmp_path / "s.conf"
    p.write_text("[program:w]\ncommand=/bin/w\nnumprocs=2\n")
    r = _run(str(p))
    assert r.returncode == 2 and r.stdout == ""
    assert f"refused: {p}:3: [program:w] numprocs: numprocs = 2 needs %(process_num)" in r.stderr


def test_supervisord_group_name() -> None:
    conv = importer.convert_supervisord(
        "[program:a]\ncommand=/bin/a %(group_name)s\n[program:b]\ncommand=/bin/b %(group_name)s\n"
        "[group:web]\nprograms=a\n", "s.conf")
    assert conv.services["a"]["command"] == ["/bin/a", "web"]
    assert conv.services["b"]["command"] == ["/bin/b", "b"]


def test_supervisord_debian_include_layout(tmp_path: Any) -> None:
    """Debian: /etc/supervisor/supervisord.conf includes conf.d/*.conf, relative to the
    including file; an included file's own [include] is not followed, and says so."""
    etc = tmp_path / "etc" / "supervisor"
    (etc / "conf.d").mkdir(parents=True)
    (etc / "supervisord.conf").write_text(
        "[supervisord]\nlogfile=/var/log/supervisor/supervisord.log\n\n"
        "[program:main]\ncommand=/bin/main\n\n"
        "[include]\nfiles = conf.d/*.conf %(here)s/extra/*.ini missing/*.conf\n")
    (etc / "conf.d" / "b.conf").write_text("[program:bee]\ncommand=/bin/bee %(here)s\n")
    (etc / "conf.d" / "a.conf").write_text(
        "[program:ay]\ncommand=/bin/ay\n[include]\nfiles = nested/*.conf\n")
    (etc / "conf.d" / "nested").mkdir()
    (etc / "conf.d" / "nested" / "n.conf").write_text("[program:never]\ncommand=/bin/n\n")
    (etc / "extra").mkdir()
    (etc / "extra" / "e.ini").write_text("[program:ex]\ncommand=/bin/ex\n")
    main = str(etc / "supervisord.conf")
    text, conv = importer.import_files([main])
    assert list(conv.services) == ["main", "ay", "bee", "ex"]
    assert conv.services["bee"]["command"] == ["/bin/bee", str(etc / "conf.d")]
    assert f"{etc}/conf.d/a.conf:4: [include]: not followed" in "\n".join(conv.warnings)
    assert any("missing/*.conf matches no file" in w for w in conv.warnings), conv.warnings
    assert not conv.errors
    config.parse(text)
    r = _run(main)
    assert r.returncode == 1 and "[service.bee]" in r.stdout


# --- systemd: masked, non-service, forking, exit statuses ------------------------------------

def test_masked_unit_says_so(tmp_path: Any) -> None:
    link = tmp_path / "gone.service"
    os.symlink(os.devnull, link)
    r = _run(str(link))
    assert r.returncode == 2 and r.stdout == ""
    assert f"refused: {link}: the unit is masked (a link to /dev/null)" in r.stderr


@pytest.mark.slow
def test_exit_status_0_1_2(tmp_path: Any) -> None:
    clean = tmp_path / "clean.service"
    clean.write_text("[Service]\nExecStart=/bin/clean\nRestart=always\n")
    warned = tmp_path / "warned.service"
    warned.write_text("[Service]\nExecStart=/bin/w\nRestart=always\nPrivateUsers=yes\n")
    target = tmp_path / "multi-user.target"
    target.write_text("[Unit]\nDescription=x\n")
    r = _run(str(clean))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = _run(str(warned))
    assert r.returncode == 1 and f"warning: {warned}:4: PrivateUsers:" in r.stderr
    r = _run(str(target))
    assert r.returncode == 2 and f"refused: {target}:1: unit type: a target unit" in r.stderr
    # several inputs: the refused one is named, the rest still printed, exit 2
    r = _run(str(clean), str(target))
    assert r.returncode == 2 and "[service.clean]" in r.stdout and "a target unit" in r.stderr


def test_forking_unit_converts_to_kind_forking(tmp_path: Any) -> None:
    unit = tmp_path / "d.service"
    unit.write_text("[Service]\nType=forking\nPIDFile=d/d.pid\nExecStart=/usr/sbin/d -D\n"
                    "Restart=on-failure\n")
    r = _run(str(unit))
    assert r.returncode == 0, r.stderr  # no "cannot run" warning any more
    svc = tomllib.loads(r.stdout)["service"]["d"]
    assert svc["kind"] == "forking" and svc["pid_file"] == "/run/d/d.pid"
    # PIDFile= of a unit that does not fork is not needed, and not a warning
    conv = importer.convert_systemd("[Service]\nType=notify\nExecStart=/bin/r\n"
                                    "PIDFile=/run/r.pid\n", "r.service")
    assert "pid_file" not in conv.services["r"] and not conv.warnings


# --- every unit this machine ships ------------------------------------------------------------

@pytest.mark.slow  # every unit file of this machine
@pytest.mark.timeout(120)
def test_every_unit_under_lib_systemd_system(tmp_path: Any) -> None:
    """No crash; every converted unit passes `hachain check`; every refusal says why."""
    names = sorted(n for n in os.listdir(UNIT_DIR)
                   if not os.path.isdir(os.path.join(UNIT_DIR, n)))
    assert len(names) > 50, names  # systemd's own units at least
    started = time.monotonic()
    converted = refused = 0
    for n in names:
        path = os.path.join(UNIT_DIR, n)
        text, conv = importer.import_files([path])
        if conv.services:
            converted += 1
            out = tmp_path / (n + ".toml")
            out.write_text(text)
            rc, msg = _check(str(out))
            assert rc == 0, (n, msg)
        else:
            refused += 1
            assert conv.errors, n
        for e in conv.errors:
            assert e.startswith(path + ":"), e  # names the unit ...
            assert len(e.split(": ", 1)[1]) > 10, e  # ... and why
        if os.path.realpath(path) == os.devnull:
            assert "masked" in conv.errors[0], conv.errors
    assert converted > 20 and refused > 10, (converted, refused)
    # and the command on all of them at once: refusals named, the rest loads
    r = subprocess.run([sys.executable, "-m", "hachain.importer"]
                       + [os.path.join(UNIT_DIR, n) for n in names],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    config.parse(r.stdout)
    assert all(line.startswith(("hachain import: warning: ", "hachain import: refused: "))
               or line == "" for line in r.stderr.splitlines()), r.stderr[-2000:]
    assert time.monotonic() - started < 60


def test_debian_units_of_the_daemons() -> None:
    """The units of the daemons tests/test_daemons.py runs, as Debian ships them."""
    nginx = os.path.join(UNIT_DIR, "nginx.service")
    redis = os.path.join(UNIT_DIR, "redis-server.service")
    for p in (nginx, redis):
        if not os.path.exists(p):
            pytest.fail(f"{p} missing: run `bash scripts/setup.sh --test`")
    _, conv = importer.import_files([nginx])
    svc = conv.services["nginx"]
    assert svc["kind"] == "forking" and svc["pid_file"] == "/run/nginx.pid"
    assert svc["command"] == ["/usr/sbin/nginx", "-g", "daemon on; master_process on;"]
    assert not any("forking" in w for w in conv.warnings), conv.warnings
    _, conv = importer.import_files([redis])
    assert conv.services["redis-server"]["stop_timeout"] == "infinity"  # TimeoutStopSec=0


def test_values_the_schema_refuses_are_dropped_by_name(tmp_path: Any) -> None:
    """A key whose value breaks a configuration rule (User=%i of a template) is dropped
    with a warning naming the unit, so the result still loads; a bad command refuses."""
    unit = tmp_path / "t@.service"
    unit.write_text("[Service]\nExecStart=/usr/bin/t\nUser=%i\nUMask=0022\n")
    text, conv = importer.import_files([str(unit)])
    assert "user" not in conv.services["t@"] and conv.services["t@"]["umask"] == "022"
    assert any(w.startswith(f"{unit}: user: must be a user or group name")
               and w.endswith("got \"%i\"; dropped") for w in conv.warnings), conv.warnings
    config.parse(text)
    bad = tmp_path / "b.service"
    bad.write_text("[Service]\nExecStart=/usr/bin/b\x00x\n")
    _, conv = importer.import_files([str(bad)])
    assert not conv.services and conv.errors and conv.errors[0].startswith(f"{bad}: command:")
