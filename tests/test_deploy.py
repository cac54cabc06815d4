"""deploy/ and docs/: every file is checked the way its consumer would read it, and
`hachain.sdnotify` against real datagram sockets."""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import config, sdnotify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
UNIT = os.path.join(DEPLOY, "systemd", "hachain.service")
SCRIPTS = ["runit/hachain/run", "runit/hachain/finish", "s6/hachain/run"]
RUN_LINE = "hachain run -c"


def _read(rel: str) -> str:
    with open(os.path.join(DEPLOY, rel)) as f:
        return f.read()


# --- systemd ------------------------------------------------------------------------------

def _systemd_analyze_works(tmp: str) -> str | None:
    """None when `systemd-analyze verify` runs here, else why not."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        return "systemd-analyze is not installed"
    probe = os.path.join(tmp, "probe.service")
    with open(probe, "w") as f:
        f.write("[Service]\nExecStart=/bin/true\n")
    try:
        r = subprocess.run([exe, "verify", "--man=no", probe], capture_output=True,
                           timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"systemd-analyze cannot run: {e}"
    if r.returncode != 0:
        return f"systemd-analyze verify fails on a trivial unit: {r.stderr.decode()[:200]}"
    return None


def test_unit_passes_systemd_analyze_verify(tmp_path: Any) -> None:
    why = _systemd_analyze_works(str(tmp_path))
    if why:
        pytest.skip(why)
    # verify insists that ExecStart's program exists: point it at a stub, change nothing else
    stub = tmp_path / "hachain"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    unit = tmp_path / "hachain.service"
    text = _read("systemd/hachain.service")
    assert "ExecStart=/usr/bin/hachain " in text
    unit.write_text(text.replace("/usr/bin/hachain", str(stub)))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                       capture_output=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr.decode().strip() == "", r.stderr.decode()  # no ignored/unknown keys


def test_unit_keys() -> None:
    cp = configparser.ConfigParser(strict=True, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(UNIT)
    assert cp.sections() == ["Unit", "Service", "Install"]
    svc = cp["Service"]
    assert svc["Type"] == "notify"
    assert svc["ExecStart"] == "/usr/bin/hachain run -c /etc/hachain/chain.toml"
    assert int(svc["WatchdogSec"]) > 0
    assert svc["KillMode"] == "mixed"
    assert svc["Delegate"] == "yes"
    assert svc["Restart"] == "always"
    assert cp["Unit"]["StartLimitIntervalSec"] == "0"  # never give up restarting
    assert cp["Install"]["WantedBy"] == "multi-user.target"


# --- shell scripts and service directories ---------------------------------------------------

@pytest.mark.parametrize("rel", SCRIPTS)
def test_scripts_are_valid_executable_sh(rel: str) -> None:
    path = os.path.join(DEPLOY, rel)
    assert os.stat(path).st_mode & stat.S_IXUSR, f"{rel} is not executable"
    assert _read(rel).startswith("#!/bin/sh\n")
    for shell in ("sh", "busybox"):
        exe = shutil.which(shell)
        if exe is None:
            continue
        argv = [exe, "sh", "-n", path] if shell == "busybox" else [exe, "-n", path]
        r = subprocess.run(argv, capture_output=True, timeout=30, check=False)
        assert r.returncode == 0, (shell, r.stderr.decode())


@pytest.mark.parametrize("rel", ["runit/hachain/run", "s6/hachain/run"])
def test_run_scripts_exec_the_chain(rel: str) -> None:
    text = _read(rel)
    assert re.search(r"^exec /usr/bin/hachain run -c ", text, re.MULTILINE)


def test_s6_type() -> None:
    assert _read("s6/hachain/type") == "longrun\n"


def test_appliance_initramfs_snippet_is_valid_sh(tmp_path: Any) -> None:
    text = _read("appliance/README.md")
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    assert blocks, "the README has no sh block"
    for i, block in enumerate(blocks):
        p = tmp_path / f"b{i}.sh"
        p.write_text(block)
        r = subprocess.run(["sh", "-n", str(p)], capture_output=True, timeout=30, check=False)
        assert r.returncode == 0, r.stderr.decode()
    assert "init=/usr/bin/hachain-init" in text and "panic=" in text
    assert "exec switch_root" in text


# --- inittab -------------------------------------------------------------------------------

INITTAB_ACTIONS = {"respawn", "wait", "once", "boot", "bootwait", "off", "ondemand",
                   "initdefault", "sysinit", "powerwait", "powerfail", "powerokwait",
                   "ctrlaltdel", "kbrequest", "askfirst", "shutdown", "restart"}


def test_inittab_lines() -> None:
    entries = []
    for ln in _read("inittab").splitlines():
        body = ln.lstrip("#") if re.match(r"^#\w+:", ln) else ln  # commented examples too
        if not body.strip() or body.startswith("#"):
            continue
        fields = body.split(":", 3)
        assert len(fields) == 4, ln
        ident, runlevels, action, process = fields
        assert 1 <= len(ident) <= 4 and re.fullmatch(r"[A-Za-z0-9]+", ident), ln
        assert re.fullmatch(r"[0-6Ss]*", runlevels), ln
        assert action in INITTAB_ACTIONS, ln
        assert process.startswith("/usr/bin/hachain run -c /etc/hachain/chain.toml"), ln
        entries.append(action)
    assert entries.count("respawn") == 2  # one active (sysvinit), one commented (busybox)


# --- udev ----------------------------------------------------------------------------------

UDEV_MATCH = {"SUBSYSTEM", "KERNEL", "ACTION", "DEVPATH", "DRIVER", "ATTR", "SUBSYSTEMS",
              "KERNELS", "DRIVERS", "ATTRS", "ENV", "TAG"}
UDEV_ASSIGN = {"GROUP", "MODE", "OWNER", "TAG", "SYMLINK", "ENV", "RUN", "NAME"}


def test_udev_rule_lines() -> None:
    rules = [ln for ln in _read("udev/60-hachain-watchdog.rules").splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert rules
    pair = re.compile(r'^\s*([A-Z]+)(?:\{[^}]+\})?\s*(==|!=|=|\+=|-=|:=)\s*"([^"]*)"\s*$')
    for ln in rules:
        ops = []
        for part in ln.split(","):
            m = pair.match(part)
            assert m, f"not KEY op \"value\": {part!r} in {ln!r}"
            key, op, value = m.groups()
            if op in ("==", "!="):
                assert key in UDEV_MATCH, key
            else:
                assert key in UDEV_ASSIGN, key
            if key == "MODE":
                assert re.fullmatch(r"0[0-7]{3}", value)
                assert int(value, 8) & 0o007 == 0, "others must get no access"
            if key == "GROUP":
                assert value == "hachain"
            ops.append(op)
        assert "==" in ops and ("=" in ops or "+=" in ops), ln
        assert 'SUBSYSTEM=="watchdog"' in ln


# --- the example configuration and the configuration reference -----------------------------

def test_example_config_loads_and_uses_most_keys() -> None:
    path = os.path.join(DEPLOY, "chain.toml.example")
    cfg = config.load(path)
    assert len(cfg.services) >= 4
    text = _read("chain.toml.example")
    used = set(re.findall(r"^\s*([a-z_]+)\s*=", text, re.MULTILINE))
    used |= set(re.findall(r"[{,]\s*([a-z_]+)\s*=", text))
    assert config._CHAIN_KEYS <= used, config._CHAIN_KEYS - used
    assert config._WD_KEYS <= used, config._WD_KEYS - used
    missing = config._SVC_KEYS - used
    assert len(missing) <= 2, missing


def test_configuration_doc_names_every_key() -> None:
    with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
        doc = f.read()
    named = set(re.findall(r"`([a-z_.]+)`", doc))
    for keys in (config._CHAIN_KEYS, config._WD_KEYS, config._SVC_KEYS):
        assert keys <= named, keys - named
    for sub in ("initial", "factor", "max", "reset_after"):
        assert f"backoff.{sub}" in named
    for sub in ("max_restarts", "window", "action"):
        assert f"intensity.{sub}" in named
    for sub in ("kind", "command", "port", "interval", "timeout", "failures"):
        assert f"health.{sub}" in named
    for var in config.ENV_OVERRIDES:
        assert var in doc


def test_configuration_doc_defaults_match_the_code() -> None:
    with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
        doc = f.read()
    def rows_of(part: str) -> dict[str, str]:
        return dict(re.findall(r"^\| `([a-z_.]+)` \| `([^`]*)`", part, re.MULTILINE))

    # each table's own rows: a key name may be in two tables ([chain] and services:
    # oom_score_adj)
    sections = {h: rows_of(body) for h, body in
                re.findall(r"^## `\[([a-z]+)[^`]*\]`\n(.*?)(?=^## )", doc, re.M | re.S)}
    rows = rows_of(doc.split("## `[service.NAME]`", 1)[1])
    objs = {"chain": config.ChainConfig(), "watchdog": config.WatchdogConfig()}
    for section, keys in (("chain", config._CHAIN_KEYS), ("watchdog", config._WD_KEYS)):
        for k in keys:
            want = getattr(objs[section], k)
            if dataclasses.is_dataclass(want):
                continue  # a table of its own (boot_loop): its keys have their rows
            shown = sections[section][k]
            if isinstance(want, bool):
                assert shown == str(want).lower(), k
            elif isinstance(want, (int, float)):
                assert float(shown) == float(want), k
            else:
                assert shown == f'"{want}"', k
    b, i = config.Backoff(), config.Intensity()
    for k in ("initial", "factor", "max", "reset_after"):
        assert float(rows[f"backoff.{k}"]) == getattr(b, k)
    assert int(rows["intensity.max_restarts"]) == i.max_restarts
    assert float(rows["intensity.window"]) == i.window
    assert rows["intensity.action"] == f'"{i.action}"'


# --- sdnotify ------------------------------------------------------------------------------

@pytest.fixture
def notify_socket(tmp_path: Any, monkeypatch: Any, request: Any) -> Iterator[socket.socket]:
    """A bound datagram socket, named in $NOTIFY_SOCKET (a path, or '@abstract')."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.settimeout(10)
    if getattr(request, "param", "path") == "abstract":
        name = f"hachain-test-{os.getpid()}-{id(s)}"
        s.bind(b"\0" + name.encode())
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    else:
        path = str(tmp_path / "notify")
        s.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield s
    s.close()


@pytest.mark.parametrize("notify_socket", ["path", "abstract"], indirect=True)
def test_fallback_sends_a_datagram(notify_socket: socket.socket) -> None:
    assert sdnotify.notify("READY=1\nSTATUS=all layers up", use_library=False) is True
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=all layers up"
    assert sdnotify.notify_fallback("WATCHDOG=1") is True
    assert notify_socket.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize("notify_socket", ["path", "abstract"], indirect=True)
def test_systemd_python_path(notify_socket: socket.socket) -> None:
    if sdnotify._library_notify() is None:
        pytest.skip("systemd-python is not installed (the optional `systemd` extra)")
    assert sdnotify.notify("READY=1") is True
    assert notify_socket.recv(4096) == b"READY=1"


def test_no_socket_means_false(monkeypatch: Any, tmp_path: Any) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.notify("READY=1", use_library=False) is False
    assert sdnotify.notify("READY=1") is False  # the library path too, no exception
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.notify_fallback("READY=1") is False


def test_watchdog_interval() -> None:
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000",
                                       "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) \
        is None or os.getpid() == 1
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_journal_available(tmp_path: Any) -> None:
    missing = str(tmp_path / "no-journal")
    assert sdnotify.journal_available(missing) is False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "journal")
    sock.bind(path)
    try:
        try:
            import systemd.journal  # type: ignore[import-not-found]  # noqa: F401
            have = True
        except ImportError:
            have = False
        assert sdnotify.journal_available(path) is have
    finally:
        sock.close()


# --- the subcommands plug into `hachain` ---------------------------------------------------

def test_subcommands_plug_into_the_hachain_parser(tmp_path: Any, capsys: Any) -> None:
    """import, logs and metrics register on the real parser and run through cli.main's
    error handling (until cli.py lists them itself, they are added here)."""
    import argparse

    from hachain import cli, importer, logs, metrics
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for mod in (importer, logs, metrics):
        name = mod.PROG.split()[-1]
        if name not in sub.choices:
            mod.add_parser(sub)
    unit = tmp_path / "x.service"
    unit.write_text("[Service]\nExecStart=/bin/true\nRestart=always\n")
    args = parser.parse_args(["import", str(unit)])
    assert args.func(args) == 0
    assert '[service.x]\ncommand = ["/bin/true"]\nrestart = "always"' in capsys.readouterr().out
    args = parser.parse_args(["logs", "x", "--log-dir", str(tmp_path)])
    assert args.func(args) == 1
    assert "no log" in capsys.readouterr().err
    args = parser.parse_args(["metrics", "--listen", "127.0.0.1:0", "--state-dir",
                              str(tmp_path)])
    assert args.func is metrics.cmd_metrics
