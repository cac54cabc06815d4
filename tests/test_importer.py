"""`hachain import`: systemd units and supervisord programs → TOML that `config.parse`
accepts, with one warning line (file:line: option) for everything left behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hachain import config, importer
from hachain.configtypes import StartChecks

WEB_UNIT = """\
# a typical unit
[Unit]
Description=Web front end
Documentation=man:web(8)
After=network-online.target db.service
Requires=db.service
Wants=cache.service
Conflicts=maint.service
StartLimitBurst=4
StartLimitIntervalSec=2min

[Service]
Type=notify
ExecStartPre=/bin/mkdir -p /run/web
ExecStart=-/usr/bin/web --listen "0.0.0.0:8080" \\
    --name 'front end'
Restart=on-abnormal
RestartSec=500ms
WatchdogSec=20s
Environment=WEB_ENV=production "GREETING=hello world"
Environment=TZ=UTC
WorkingDirectory=/srv/web
User=web
Group=www
UMask=0027
LimitNOFILE=4096:65536
LimitCORE=infinity
LimitMEMLOCK=64K
LimitRTPRIO=10
KillSignal=SIGINT
KillMode=process
TimeoutStopSec=1min 30s
TimeoutStartSec=45
SuccessExitStatus=3 SIGUSR1
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
Alias=www.service
"""

DB_UNIT = """\
[Service]
ExecStart=/usr/bin/mydb --foreground
Restart=always
StartLimitAction=reboot
StartLimitBurst=3
"""

ONESHOT_UNIT = """\
[Unit]
Description=prepare
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/prepare one
ExecStart=/usr/sbin/prepare two
Restart=always
"""

SUPERVISORD = """\
[supervisord]
logfile=/var/log/supervisord.log

[program:api]
command=/usr/bin/api --port 9000 --name %(program_name)s
directory=/srv/api
user=api
autorestart=unexpected
exitcodes=0,2
startsecs=5
startretries=4
stopsignal=QUIT
stopwaitsecs=20
priority=10
umask=022
environment=API_MODE="prod",GREETING="hi, there",
    EXTRA=1
stdout_logfile=/var/log/api.log
stdout_logfile_maxbytes=10MB
stdout_logfile_backups=5
redirect_stderr=true ; same log

[program:worker]
command=/usr/bin/worker %(ENV_HOME)s
autorestart=true
autostart=false
numprocs=2
process_name=%(program_name)s-%(process_num)d
serverurl=AUTO

[program:once]
command=/usr/bin/once
autorestart=false

[group:all]
programs=api,worker
"""


def _files(tmp_path: Any, **files: str) -> list[str]:
    out = []
    for name, text in files.items():
        p = tmp_path / name.replace("_", ".")
        p.write_text(text)
        out.append(str(p))
    return out


def _warned(conv: importer.Conversion, path: str, line: int, option: str,
            about: str = "") -> str:
    """The one warning for `option` at `path:line` (that mentions `about`)."""
    hits = [w for w in conv.warnings
            if w.startswith(f"{path}:{line}: {option}: ") and about in w]
    assert len(hits) == 1, (path, line, option, conv.warnings)
    return hits[0]


def test_systemd_units_map_to_keys_and_load(tmp_path: Any) -> None:
    web, db = _files(tmp_path, web_service=WEB_UNIT, db_service=DB_UNIT)
    text, _conv = importer.import_files([web, db])
    cfg = config.parse(text, "imported.toml")
    w = cfg.services["web"]
    assert w.command == ("/usr/bin/web", "--listen", "0.0.0.0:8080", "--name", "front end")
    assert w.pre_start == (("/bin/mkdir", "-p", "/run/web"),)
    assert (w.kind, w.ready, w.restart) == ("longrun", "notify", "on-abnormal")
    assert w.backoff.initial == 0.5
    assert (w.intensity.max_restarts, w.intensity.window) == (4, 120.0)
    assert w.watchdog_sec == 20.0
    assert w.requires == ("db",) and w.after == ("db",)
    assert w.wants == () and w.conflicts == ()  # cache, maint not imported: comments
    assert dict(w.env) == {"WEB_ENV": "production", "GREETING": "hello world", "TZ": "UTC"}
    assert (w.cwd, w.user, w.group, w.umask) == ("/srv/web", "web", "www", 0o027)
    assert {n: (s, h) for n, s, h in w.rlimits} == {
        "nofile": (4096, 65536), "core": (-1, -1), "memlock": (65536, 65536)}
    assert w.stop_signal == signal.SIGINT and w.kill_mode == "process"
    assert (w.stop_timeout, w.ready_timeout) == (90.0, 45.0)
    # success_exit is checked on the TOML: config.parse maps every code to 0 for now
    assert tomllib.loads(text)["service"]["web"]["success_exit"] == [0, 3]
    d = cfg.services["db"]
    assert d.restart == "always"
    assert (d.intensity.max_restarts, d.intensity.window, d.intensity.action) == (3, 10.0,
                                                                                  "reboot")
    assert "# wants = [\"cache\"]  (not imported)" in text
    assert "# Description: Web front end" in text


def test_systemd_warnings_name_file_line_and_option(tmp_path: Any) -> None:
    (web,) = _files(tmp_path, web_service=WEB_UNIT)
    _text, conv = importer.import_files([web])
    assert _warned(conv, web, 5, "After", "network-online.target")
    assert not any("ExecStartPre" in w for w in conv.warnings)  # carried over: pre_start
    assert _warned(conv, web, 15, "ExecStart", "'-' prefix")
    assert _warned(conv, web, 29, "LimitRTPRIO")
    assert not any(": KillMode: " in w for w in conv.warnings)  # process: carried over
    assert _warned(conv, web, 34, "SuccessExitStatus", "SIGUSR1")
    assert not any(": PrivateTmp: " in w for w in conv.warnings)  # private_tmp
    assert _warned(conv, web, 39, "Alias")
    # dependencies on units that were not imported: warned at the line that named them
    assert _warned(conv, web, 6, "Requires", "db")
    assert _warned(conv, web, 7, "Wants", "cache")
    assert _warned(conv, web, 8, "Conflicts", "maint")
    assert _warned(conv, web, 5, "After", "db:")
    assert len(conv.warnings) == 9
    # nothing said twice, nothing said about what did carry over
    assert len(conv.warnings) == len(set(conv.warnings))
    for quiet in ("Description", "User", "Environment", "RestartSec", "WantedBy"):
        assert not any(f": {quiet}: " in w for w in conv.warnings), quiet


def test_oneshot_and_restart_corner_cases(tmp_path: Any) -> None:
    (p,) = _files(tmp_path, prep_service=ONESHOT_UNIT)
    text, conv = importer.import_files([p])
    s = config.parse(text).services["prep"]
    # both lines, in turn: the first as pre_start (test_a_oneshots_lines_run_in_turn...)
    assert s.kind == "oneshot" and s.command == ("/usr/sbin/prepare", "two")
    assert s.pre_start == (("/usr/sbin/prepare", "one"),)
    assert s.restart == "on-failure"
    assert "oneshot" in _warned(conv, p, 8, "Restart")
    assert not any("RemainAfterExit" in w for w in conv.warnings)


@pytest.mark.parametrize("value,restart,warns", [
    ("always", "always", False), ("on-failure", "on-failure", False),
    ("on-abnormal", "on-abnormal", False), ("no", "never", False),
    ("on-success", "always", True), ("on-watchdog", "on-abnormal", True),
    ("sometimes", "never", True),
])
def test_restart_values(value: str, restart: str, warns: bool) -> None:
    conv = importer.convert_systemd(f"[Service]\nExecStart=/bin/x\nRestart={value}\n",
                                    "x.service")
    assert conv.services["x"]["restart"] == restart
    assert bool([w for w in conv.warnings if ": Restart: " in w]) == warns


def test_systemd_default_restart_is_no() -> None:
    conv = importer.convert_systemd("[Service]\nExecStart=/bin/x\n", "x.service")
    text = importer.to_toml(conv, ["x.service"])
    assert config.parse(text).services["x"].restart == "never"
    assert "Restart=no" in text


def test_exec_prefixes_and_variables() -> None:
    conv = importer.convert_systemd(
        "[Service]\nExecStart=@+/usr/bin/daemon daemon-name -v $OPTS %i\n", "t@.service")
    # $OPTS expands from env / env_file at start, as in systemd: through /bin/sh
    assert conv.services["t@"]["command"] == "set -f; exec /usr/bin/daemon -v $OPTS %i"
    assert conv.services["t@"]["shell"] is True
    joined = "\n".join(conv.warnings)
    for what in ("'@' prefix", "'+' prefix", "$VARIABLE", "%-specifiers", "template"):
        assert what in joined, what
    config.parse(importer.to_toml(conv, ["t@.service"]))


def test_watchdog_without_notify_and_infinite_timeouts() -> None:
    conv = importer.convert_systemd(
        "[Service]\nExecStart=/bin/x\nWatchdogSec=10\nTimeoutStartSec=infinity\n"
        "TimeoutStopSec=0\nRestartSec=2min\nKillSignal=NOPE\nUMask=99\n", "x.service")
    s = conv.services["x"]
    assert s["watchdog_sec"] == 10.0  # (systemd watches a Type=simple service too)
    # systemd: 0 and infinity both mean no timeout (not SIGKILL at once)
    assert s["ready_timeout"] == s["stop_timeout"] == "infinity"
    assert s["backoff"] == {"initial": 120.0, "max": 120.0}
    for opt in ("KillSignal", "UMask"):
        assert any(f":{n}: {opt}: " in w for w in conv.warnings for n in range(1, 9)), opt
    config.parse(importer.to_toml(conv, ["x.service"]))


def test_start_limit_interval_zero_means_ignore() -> None:
    conv = importer.convert_systemd(
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/x\nRestart=always\n",
        "x.service")
    assert conv.services["x"]["intensity"] == {"action": "ignore"}


def test_unit_without_execstart_is_an_error(tmp_path: Any) -> None:
    (p,) = _files(tmp_path, empty_service="[Unit]\nDescription=nothing\n[Service]\nType=simple\n")
    r = subprocess.run([sys.executable, "-m", "hachain.importer", p], capture_output=True,
                       timeout=30, check=False)
    assert r.returncode == 2 and r.stdout == b""
    assert "refused: " in r.stderr.decode() and "ExecStart: missing" in r.stderr.decode()


def test_supervisord_programs(tmp_path: Any) -> None:
    (p,) = _files(tmp_path, apps_conf=SUPERVISORD)
    text, conv = importer.import_files([p])
    cfg = config.parse(text)
    assert set(cfg.services) == {"api", "worker-0", "worker-1", "once"}
    api = cfg.services["api"]
    assert api.command == ("/usr/bin/api", "--port", "9000", "--name", "api")
    assert (api.cwd, api.user, api.umask) == ("/srv/api", "api", 0o022)
    assert api.restart == "on-failure"
    assert tomllib.loads(text)["service"]["api"]["success_exit"] == [0, 2]
    assert api.backoff.reset_after == 5.0
    assert api.intensity.max_restarts == 4 and api.intensity.action == "maintenance"
    assert api.stop_signal == signal.SIGQUIT and api.stop_timeout == 20.0
    assert dict(api.env) == {"API_MODE": "prod", "GREETING": "hi, there", "EXTRA": "1"}
    assert (api.log_max_bytes, api.log_keep) == (10 * 1024 * 1024, 5)
    worker = cfg.services["worker-1"]
    assert worker.restart == "always" and worker.enabled is False
    assert worker.command == ("/usr/bin/worker", "%(ENV_HOME)s")
    assert cfg.services["once"].restart == "never"
    assert _warned(conv, p, 14, "priority")
    assert _warned(conv, p, 18, "stdout_logfile")
    assert _warned(conv, p, 24, "command", "ENV_HOME")
    assert _warned(conv, p, 29, "serverurl")
    assert _warned(conv, p, 35, "[group:all]")
    assert len(conv.warnings) == 5
    assert not any(":2: " in w for w in conv.warnings)  # [supervisord] is not a program


def test_supervisord_odd_names_and_bad_values() -> None:
    conv = importer.convert_supervisord(
        "[program:my app]\ncommand=/bin/x\nstopsignal=BOGUS\nexitcodes=0,300\n"
        "directory=relative\nautorestart=maybe\n", "s.conf")
    assert list(conv.services) == ["my-app"]
    assert conv.warnings[0] == "s.conf:1: [program:my app]: renamed to 'my-app' (hachain " \
        "service names)"
    for line, opt in ((3, "stopsignal"), (4, "exitcodes"), (5, "directory"), (6, "autorestart")):
        assert _warned(conv, "s.conf", line, opt)
    assert len(conv.warnings) == 5
    config.parse(importer.to_toml(conv, ["s.conf"]))


def test_detection_and_the_command(tmp_path: Any) -> None:
    web, db, sup, junk = _files(tmp_path, web_service=WEB_UNIT, db_service=DB_UNIT,
                                s_conf=SUPERVISORD, junk_txt="hello\n")
    assert importer.detect_format(WEB_UNIT) == "systemd"
    assert importer.detect_format(SUPERVISORD) == "supervisord"
    assert importer.detect_format("hello") is None
    r = subprocess.run([sys.executable, "-m", "hachain.importer", web, db], capture_output=True,
                       timeout=30, check=False)
    assert r.returncode == 1  # converted, with warnings that need a look
    data = tomllib.loads(r.stdout.decode())
    assert set(data["service"]) == {"web", "db"}
    err = r.stderr.decode().splitlines()
    assert err and all(line.startswith("hachain import: warning: ") for line in err)
    assert all(re.match(r"hachain import: warning: \S+:\d+: \S", line) for line in err)
    r = subprocess.run([sys.executable, "-m", "hachain.importer", junk], capture_output=True,
                       timeout=30, check=False)
    assert r.returncode == 2 and "--format" in r.stderr.decode()
    r = subprocess.run([sys.executable, "-m", "hachain.importer", "--format", "supervisord",
                        sup], capture_output=True, timeout=30, check=False)
    assert r.returncode == 1 and "[service.api]" in r.stdout.decode()


def test_toml_writer_escapes_round_trip() -> None:
    conv = importer.Conversion(services={"q": {
        "command": ["/bin/echo", 'a "quoted" \\ back\tslash', "ünï"],
        "env": {"WEIRD": "line\nbreak", "EMPTY": ""}, "restart": "never"}})
    cfg = config.parse(importer.to_toml(conv, ["x"]))
    s = cfg.services["q"]
    assert s.command[1] == 'a "quoted" \\ back\tslash' and s.command[2] == "ünï"
    assert dict(s.env) == {"WEIRD": "line\nbreak", "EMPTY": ""}


@pytest.mark.parametrize("text,seconds", [
    ("5", 5.0), ("5s", 5.0), ("100ms", 0.1), ("1min 30s", 90.0), ("2h", 7200.0),
    ("1.5s", 1.5), ("infinity", None)])
def test_timespans(text: str, seconds: float | None) -> None:
    assert importer.parse_timespan(text) == seconds


@pytest.mark.parametrize("bad", ["", "5 parsecs", "s", "1min x"])
def test_bad_timespans(bad: str) -> None:
    with pytest.raises(ValueError):
        importer.parse_timespan(bad)


@pytest.mark.parametrize("reload, keys", [
    ("/bin/kill -HUP $MAINPID", {"reload_signal": "SIGHUP"}),
    ("-/usr/bin/kill -s USR1 ${MAINPID}", {"reload_signal": "SIGUSR1"}),
    ("/bin/kill --signal=SIGUSR2 $MAINPID", {"reload_signal": "SIGUSR2"}),
    ("/bin/kill -1 $MAINPID", {"reload_signal": "SIGHUP"}),
    ("/usr/sbin/x -s reload", {"reload_command": ["/usr/sbin/x", "-s", "reload"]}),
    ("/bin/kill -HUP 1", {"reload_command": ["/bin/kill", "-HUP", "1"]}),
    ("/usr/bin/ctl reload --pid $MAINPID",
     {"reload_command": ["/bin/sh", "-c", "set -f; exec /usr/bin/ctl reload --pid $MAINPID"]}),
])
def test_exec_reload_becomes_a_reload_signal_or_command(reload: str, keys: dict[str, Any]
                                                        ) -> None:
    conv = importer.convert_systemd(f"[Service]\nExecStart=/bin/x\nExecReload={reload}\n",
                                    "x.service")
    assert [w for w in conv.warnings if ": ExecReload: " in w] == []
    got = {k: v for k, v in conv.services["x"].items() if k.startswith("reload_")}
    assert got == keys
    config.parse(importer.to_toml(conv, ["x.service"]), "imported.toml")


def test_an_instance_of_a_template_has_its_specifiers_expanded(tmp_path: Any) -> None:
    """`hachain import DIR/pg@15-main.service` with only DIR/pg@.service there: the
    template, as systemd finds it, with %i, %I, %n, %p and the directories expanded."""
    (tmp_path / "pg@.service").write_text(
        "[Unit]\nDescription=cluster %i\nAssertPathExists=/etc/pg/%I/pg.conf\n"
        "[Service]\nType=forking\nPIDFile=%t/pg/%i.pid\n"
        "ExecStart=/usr/bin/pg_ctl %i start --unit %n --name %p --dir %S/%p\n"
        "ExecReload=/usr/bin/pg_ctl %i reload --key %d/k\n")
    text, conv = importer.import_files([str(tmp_path / "pg@15-main.service")])
    s = config.parse(text, "i.toml").services["pg@15-main"]
    assert s.command == ("/usr/bin/pg_ctl", "15-main", "start", "--unit", "pg@15-main.service",
                         "--name", "pg", "--dir", "/var/lib/pg")
    assert s.pid_file == "/run/pg/15-main.pid"
    assert s.assertion is not None and s.assertion.path_exists == ("/etc/pg/15/main/pg.conf",)
    # %d: the credentials' directory, through /bin/sh
    assert s.reload_command[:2] == ("/bin/sh", "-c") and \
        '"${CREDENTIALS_DIRECTORY}"/k' in s.reload_command[2]
    assert not any("%-specifiers" in w for w in conv.warnings), conv.warnings
    # the template itself: named after it, %i left, and told how to name an instance
    _, conv = importer.import_files([str(tmp_path / "pg@.service")])
    assert any("import an instance of it by its name" in w for w in conv.warnings)


def test_runtime_directory_preserve_is_what_hachain_does() -> None:
    conv = importer.convert_systemd("[Service]\nExecStart=/bin/x\nRuntimeDirectory=x\n"
                                    "RuntimeDirectoryPreserve=yes\n", "x.service")
    assert conv.warnings == [] and conv.services["x"]["directories"] == ["/run/x"]
    conv = importer.convert_systemd("[Service]\nExecStart=/bin/x\n"
                                    "RuntimeDirectoryPreserve=no\n", "x.service")
    _warned(conv, "x.service", 3, "RuntimeDirectoryPreserve", "keeps")


def test_virtualization_security_and_power_conditions_carry_over() -> None:
    conv = importer.convert_systemd("[Unit]\nConditionVirtualization=!container\n"
                                    "ConditionSecurity=apparmor\nAssertACPower=true\n"
                                    "ConditionSecurity=!frobnix\n"
                                    "[Service]\nExecStart=/bin/x\n", "x.service")
    s = config.parse(importer.to_toml(conv, ["x.service"]), "i.toml").services["x"]
    assert s.condition is not None and s.assertion is not None
    assert (s.condition.virtualization, s.condition.security) == (("!container",),
                                                                  ("apparmor",))
    assert s.assertion.ac_power == ("true",)
    _warned(conv, "x.service", 5, "ConditionSecurity", "frobnix")


def test_idle_is_simple_with_a_comment() -> None:
    conv = importer.convert_systemd("[Service]\nType=idle\nExecStart=/bin/x\n", "x.service")
    assert conv.warnings == [] and "ready" not in conv.services["x"]
    assert any("Type=idle" in c for c in conv.comments["x"])


def test_binds_to_is_requires(tmp_path: Any) -> None:
    a, b = _files(tmp_path, net_service="[Service]\nExecStart=/bin/net\n",
                  app_service="[Unit]\nBindsTo=net.service\nAfter=net.service\n"
                  "[Service]\nExecStart=/bin/app\n")
    text, conv = importer.import_files([a, b])
    s = config.parse(text, "i.toml").services["app"]
    assert (s.requires, s.after) == (("net",), ("net",)) and conv.warnings == []


def test_success_exit_status_takes_sysexits_names() -> None:
    conv = importer.convert_systemd("[Service]\nExecStart=/bin/x\n"
                                    "SuccessExitStatus=DATAERR 3 CANTCREAT SIGKILL\n",
                                    "x.service")
    assert conv.services["x"]["success_exit"] == [0, 3, 65, 73]
    _warned(conv, "x.service", 3, "SuccessExitStatus", "SIGKILL")


def test_a_oneshots_lines_run_in_turn_as_pre_start_then_the_command() -> None:
    """systemd runs each ExecStart= of a oneshot in turn and stops at the first failure
    (a '-' line may fail): the same as pre_start then command."""
    conv = importer.convert_systemd("[Service]\nType=oneshot\nExecStartPre=/bin/prep\n"
                                    "ExecStart=-/bin/a one\nExecStart=/bin/b\n"
                                    "ExecStart=/bin/c two\n", "x.service")
    assert conv.warnings == []
    s = config.parse(importer.to_toml(conv, ["x.service"]), "i.toml").services["x"]
    assert s.pre_start == (("/bin/prep",), ("-/bin/a", "one"), ("/bin/b",))
    assert s.command == ("/bin/c", "two")
    conv = importer.convert_systemd("[Service]\nType=oneshot\nExecStart=-/bin/a\n",
                                    "x.service")
    assert conv.warnings == []
    s = config.parse(importer.to_toml(conv, ["x.service"]), "i.toml").services["x"]
    assert (s.pre_start, s.command) == ((("-/bin/a",),), ("/bin/true",))
    # a long-running service still has one command
    conv = importer.convert_systemd("[Service]\nExecStart=/bin/a\nExecStart=/bin/b\n",
                                    "x.service")
    _warned(conv, "x.service", 3, "ExecStart", "only one command per service")


def test_dbus_type_is_ready_once_its_bus_name_has_an_owner() -> None:
    """Type=dbus (or BusName= with no Type=, systemd's default then): ready = "exec",
    asking the bus whether the name has an owner (dbus-send exits 0 only then)."""
    for head in ("Type=dbus\n", ""):
        conv = importer.convert_systemd(f"[Service]\n{head}BusName=org.example.Thing\n"
                                        "ExecStart=/bin/x\n", "x.service")
        svc = config.parse(importer.to_toml(conv, ["x.service"]), "i.toml").services["x"]
        if not os.path.exists(importer.DBUS_SEND):
            assert any("needs /usr/bin/dbus-send" in w for w in conv.warnings)
            continue
        assert conv.warnings == [] and svc.ready == "exec"
        assert svc.ready_command[-2:] == ("org.freedesktop.DBus.GetNameOwner",
                                          "string:org.example.Thing")
    conv = importer.convert_systemd("[Service]\nType=dbus\nExecStart=/bin/x\n", "x.service")
    _warned(conv, "x.service", 2, "Type", "dbus without BusName=")
    conv = importer.convert_systemd("[Service]\nType=notify\nBusName=a.b\nExecStart=/bin/x\n",
                                    "x.service")
    _warned(conv, "x.service", 3, "BusName", "only read with Type=dbus")
    assert conv.services["x"]["ready"] == "notify"


def test_notify_reload_is_notify_with_its_reload_signal() -> None:
    conv = importer.convert_systemd("[Service]\nType=notify-reload\nExecStart=/bin/x\n"
                                    "ReloadSignal=USR2\nTimeoutStartSec=40\n", "x.service")
    assert conv.warnings == []
    svc = config.parse(importer.to_toml(conv, ["x.service"]), "i.toml").services["x"]
    assert (svc.ready, svc.reload_signal, svc.reload_notify, svc.reload_timeout) == (
        "notify", signal.SIGUSR2, True, 40.0)


def test_reload_leftovers_are_warned_about() -> None:
    """Several ExecReload= lines run in turn, stopping at the first failure ('-': one that
    may fail), as systemd runs them (haproxy.service checks its file, then signals)."""
    conv = importer.convert_systemd("[Service]\nExecStart=/bin/x\nExecReload=-/bin/x reload\n"
                                    "ExecReload=/bin/kill -USR2 $MAINPID\nReloadSignal=HUP\n",
                                    "x.service")
    assert conv.services["x"]["reload_command"] == [
        "/bin/sh", "-c", "set -f; { /bin/x reload || true; } && /bin/kill -USR2 $MAINPID"]
    _warned(conv, "x.service", 5, "ReloadSignal", "only meaningful with Type=notify-reload")
    assert len(conv.warnings) == 1, conv.warnings
    # a oneshot that remains after its exit keeps its ExecReload= (apparmor.service)
    conv = importer.convert_systemd("[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                                    "ExecStart=/bin/x start\nExecReload=/bin/x reload\n",
                                    "x.service")
    svc = config.parse(importer.to_toml(conv, ["x.service"]), "i.toml").services["x"]
    assert (svc.kind, svc.reload_command) == ("oneshot", ("/bin/x", "reload"))


@pytest.mark.parametrize("line, value, warns", [
    ("MemoryMax=512M", "512M", False), ("MemoryLimit=1G", "1G", False),
    ("MemoryMax=1048576", 1048576, False), ("MemoryMax=infinity", "infinity", False),
    ("MemoryMax=50%", None, True), ("MemoryMax=1.5G", None, True),
])
def test_memory_max_carries_over(line: str, value: Any, warns: bool) -> None:
    conv = importer.convert_systemd(f"[Service]\nExecStart=/bin/x\n{line}\n", "x.service")
    assert conv.services["x"].get("memory_max") == value
    assert bool([w for w in conv.warnings if ": Memory" in w]) == warns
    config.parse(importer.to_toml(conv, ["x.service"]))


def test_environment_files_carry_over_in_order() -> None:
    conv = importer.convert_systemd(
        "[Service]\nExecStart=/bin/x\nEnvironmentFile=-/etc/default/x\n"
        "EnvironmentFile=/etc/x.env\nEnvironmentFile=relative.env\n", "x.service")
    assert conv.services["x"]["env_file"] == ["-/etc/default/x", "/etc/x.env"]
    assert conv.warnings == ["x.service:5: EnvironmentFile: 'relative.env': not an absolute "
                             "path; dropped"]
    cfg = config.parse(importer.to_toml(conv, ["x.service"]))
    assert cfg.services["x"].env_file == ("-/etc/default/x", "/etc/x.env")


def test_service_directories_carry_over() -> None:
    conv = importer.convert_systemd(
        "[Service]\nExecStart=/usr/sbin/sshd -D\nRuntimeDirectory=sshd\nRuntimeDirectoryMode=0755\n"
        "StateDirectory=a b/c\nCacheDirectory=x\nLogsDirectory=y\nRuntimeDirectory=/abs ../up\n"
        "StateDirectoryMode=0700\n", "ssh.service")
    assert conv.services["ssh"]["directories"] == [
        "/run/sshd", "/var/lib/a", "/var/lib/b/c", "/var/cache/x", "/var/log/y"]
    assert conv.warnings == [
        "ssh.service:8: RuntimeDirectory: '/abs': not a plain relative name; dropped",
        "ssh.service:8: RuntimeDirectory: '../up': not a plain relative name; dropped",
        "ssh.service:9: StateDirectoryMode: 0700: hachain gives all of a service's "
        "directories one mode, 0755 from an earlier line; dropped"]
    ssh = config.parse(importer.to_toml(conv, ["ssh.service"])).services["ssh"]
    assert ssh.directories == ("/run/sshd", "/var/lib/a", "/var/lib/b/c", "/var/cache/x",
                               "/var/log/y")
    assert ssh.directory_mode == 0o755
    # redis-server.service: RuntimeDirectoryMode=2755 (setgid)
    conv = importer.convert_systemd("[Service]\nExecStart=/usr/bin/redis-server\n"
                                    "RuntimeDirectory=redis\nRuntimeDirectoryMode=2755\n",
                                    "redis-server.service")
    assert not conv.warnings
    redis = config.parse(importer.to_toml(conv, ["x"])).services["redis-server"]
    assert (redis.directories, redis.directory_mode) == (("/run/redis",), 0o2755)


def _systemd_expands(argv: list[str], env: dict[str, str]) -> list[str]:
    """What systemd makes of ExecStart's words (systemd.service(5), "Command lines"):
    `$NAME` alone is split at whitespace (unset: no word), `${NAME}` is one value inside
    its word, `$$` is `$`."""
    out: list[str] = []
    for a in argv:
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", a)
        if m:
            out += env.get(m.group(1), "").split()
            continue
        out.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\$",
                          lambda v: env.get(v.group(1), "") if v.group(1) else "$", a))
    return out


_VALUE = st.text(alphabet=" \t*?[]'\"\\$;&|<>(){}~#=aZ9-", max_size=12)
_WORD = st.one_of(st.sampled_from(["$A", "$B", "${A}", "x${B}y", "$$", "a$$b", "--o=${A}",
                                   "$A$B", "plain", "it's", "*", "", "$1"]), _VALUE)


@settings(max_examples=60, deadline=None)
@given(words=st.lists(_WORD, min_size=1, max_size=5),
       env=st.dictionaries(st.sampled_from(["A", "B"]), _VALUE))
def test_the_shell_line_expands_as_systemd_would(words: list[str],
                                                 env: dict[str, str]) -> None:
    """The /bin/sh line `hachain import` writes for an ExecStart with variables gives
    the program exactly the argv systemd would (a real shell runs it)."""
    show = [sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))"]
    line = importer.expanding_command(show + words)
    if line is None:  # no reference: the argv is kept as it is
        assert not any(re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", w)
                       or re.search(r"\$(\{[A-Za-z_][A-Za-z0-9_]*\}|\$)", w) for w in words)
        return
    p = subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True, env=env,
                       timeout=30, cwd="/")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == _systemd_expands(words, env), line


def test_exec_start_pre_lines_become_pre_start(tmp_path: Any) -> None:
    """ExecStartPre= lines in order; '-' kept (may fail), '+' warned (runs as the
    service's user), an empty one resets the list, $VAR through /bin/sh."""
    (unit,) = _files(tmp_path, ssh_service="""\
[Service]
ExecStartPre=/bin/true dropped
ExecStartPre=
ExecStartPre=/usr/sbin/sshd -t
ExecStartPre=-/bin/mkdir -p /run/sshd
ExecStartPre=+/bin/chown root /run/sshd
ExecStartPre=/usr/bin/check $OPTS
ExecStart=/usr/sbin/sshd -D
""")
    text, conv = importer.import_files([unit])
    s = config.parse(text, "imported.toml").services["ssh"]
    assert s.pre_start == (("/usr/sbin/sshd", "-t"), ("-/bin/mkdir", "-p", "/run/sshd"),
                           ("/bin/chown", "root", "/run/sshd"),
                           ("/bin/sh", "-c", "set -f; exec /usr/bin/check $OPTS"))
    assert _warned(conv, unit, 6, "ExecStartPre", "'+' prefix")
    assert _warned(conv, unit, 7, "ExecStartPre", "$VARIABLE")
    assert not any(":5: " in w or ":4: " in w for w in conv.warnings), conv.warnings


def test_oom_score_adjust_carries_over(tmp_path: Any) -> None:
    (unit,) = _files(tmp_path, db_service="""\
[Service]
ExecStart=/usr/bin/db
OOMScoreAdjust=-500
""", bad_service="""\
[Service]
ExecStart=/usr/bin/bad
OOMScoreAdjust=-2000
""")[:1]
    text, conv = importer.import_files([unit])
    assert config.parse(text, "imported.toml").services["db"].oom_score_adj == -500
    assert not conv.warnings
    bad = str(tmp_path / "bad.service")
    text, conv = importer.import_files([bad])
    assert config.parse(text, "imported.toml").services["bad"].oom_score_adj == 0
    assert _warned(conv, bad, 3, "OOMScoreAdjust", "-1000 to 1000")


def test_before_orders_the_other_imported_service_after_this_one(tmp_path: Any) -> None:
    """Before=B in A is B's After=A: kept among the units imported together, warned
    about (naming file and line) for one that is not."""
    a, b = _files(tmp_path, prep_service="""\
[Unit]
Before=app.service gone.service network.target

[Service]
ExecStart=/usr/bin/prep
""", app_service="""\
[Service]
ExecStart=/usr/bin/app
""")
    text, conv = importer.import_files([a, b])
    cfg = config.parse(text, "imported.toml")
    assert cfg.services["app"].after == ("prep",)
    assert cfg.services["prep"].after == ()
    assert _warned(conv, a, 2, "Before", "gone: not among the imported services")
    assert _warned(conv, a, 2, "Before", "network.target")


def test_ambient_capabilities_and_no_new_privileges_carry_over(tmp_path: Any) -> None:
    (unit, root_unit) = _files(tmp_path, web_service="""\
[Service]
ExecStart=/usr/bin/web
User=www-data
AmbientCapabilities=CAP_NET_BIND_SERVICE net_raw CAP_BOGUS
NoNewPrivileges=yes
""", rootweb_service="""\
[Service]
ExecStart=/usr/bin/web
AmbientCapabilities=CAP_NET_BIND_SERVICE
""")
    text, conv = importer.import_files([unit])
    web = config.parse(text, "imported.toml").services["web"]
    assert web.capabilities == ("CAP_NET_BIND_SERVICE", "CAP_NET_RAW")
    assert web.no_new_privileges is True
    assert _warned(conv, unit, 4, "AmbientCapabilities", "CAP_BOGUS: not a Linux capability")
    # as root it has them all: the key would not load, so it is dropped, said why
    text, conv = importer.import_files([root_unit])
    assert config.parse(text, "imported.toml").services["rootweb"].capabilities == ()
    assert any("capabilities: needs user" in w for w in conv.warnings), conv.warnings


def test_conditions_and_asserts_carry_over(tmp_path: Any) -> None:
    """Condition*= and Assert*= of the checks hachain has → `condition` / `assert`, with
    their `!` and `|` prefixes; an empty one resets its table; one hachain lacks, or an
    argument with a %-specifier, is warned about and dropped (the service starts as if
    it held, not skipped for ever on a path that cannot exist)."""
    (unit,) = _files(tmp_path, app_service="""\
[Unit]
ConditionPathExists=!/etc/app/not_to_be_run
ConditionDirectoryNotEmpty=|/etc/app.d
ConditionKernelCommandLine=|app.force
ConditionCapability=net_admin
ConditionFirmware=uefi
AssertFileNotEmpty=/etc/app.conf
AssertPathExists=/etc/app/%I.conf
AssertPathIsDirectory=relative/dir

[Service]
ExecStart=/usr/bin/app
""")
    text, conv = importer.import_files([unit])
    s = config.parse(text, "imported.toml").services["app"]
    assert s.condition == StartChecks(path_exists=("!/etc/app/not_to_be_run",),
                                      directory_not_empty=("|/etc/app.d",),
                                      kernel_command_line=("|app.force",),
                                      capability=("CAP_NET_ADMIN",))
    assert s.assertion == StartChecks(file_not_empty=("/etc/app.conf",))
    assert _warned(conv, unit, 6, "ConditionFirmware", "not supported by hachain")
    assert _warned(conv, unit, 8, "AssertPathExists", "%-specifiers are not expanded")
    assert _warned(conv, unit, 9, "AssertPathIsDirectory", "not an absolute path")
    assert len(conv.warnings) == 3, conv.warnings
    (reset,) = _files(tmp_path, reset_service="""\
[Unit]
ConditionPathExists=/a
ConditionPathExists=

[Service]
ExecStart=/usr/bin/app
""")
    text, conv = importer.import_files([reset])
    assert config.parse(text, "imported.toml").services["reset"].condition is None


def test_sandboxing_carries_over(tmp_path: Any) -> None:
    """ProtectSystem=, ProtectHome= and the path lists (their older *Directories= names
    too) → protect_system, protect_home, read_write_paths, ...; `-` kept, `+` dropped
    (there is no RootDirectory=), an empty one resets its list; a %-specifier or a
    relative path is warned about and dropped (a %-specifier hachain expands, such as %N,
    is not: test_an_instance_of_a_template_has_its_specifiers_expanded)."""
    (unit,) = _files(tmp_path, redis_service="""\
[Service]
ExecStart=/usr/bin/redis-server
ProtectSystem=strict
ProtectHome=yes
ReadWritePaths=-/var/lib/redis +/var/log/redis
ReadWritePaths=/run/%H
ReadOnlyDirectories=/etc/redis
InaccessiblePaths=/srv
InaccessiblePaths=
ReadOnlyPaths=data
""")
    text, conv = importer.import_files([unit])
    s = config.parse(text, "imported.toml").services["redis"]
    assert (s.protect_system, s.protect_home) == ("strict", "yes")
    assert s.read_write_paths == ("-/var/lib/redis", "/var/log/redis")
    assert s.read_only_paths == ("/etc/redis",) and s.inaccessible_paths == ()
    assert _warned(conv, unit, 6, "ReadWritePaths", "%-specifiers")
    assert _warned(conv, unit, 10, "ReadOnlyPaths", "not an absolute path")
    assert len(conv.warnings) == 2, conv.warnings
    (off,) = _files(tmp_path, off_service="[Service]\nExecStart=/x\nProtectSystem=no\n"
                    "ProtectHome=read-only\n")
    text, conv = importer.import_files([off])
    s = config.parse(text, "imported.toml").services["off"]
    assert (s.protect_system, s.protect_home) == ("", "read-only") and not conv.warnings


def test_capability_bounding_set_carries_over(tmp_path: Any) -> None:
    """CapabilityBoundingSet=: a list, or `~` for all but those; lines add up."""
    (unit,) = _files(tmp_path, a_service="""\
[Service]
ExecStart=/usr/bin/a
CapabilityBoundingSet=CAP_NET_BIND_SERVICE cap_chown
CapabilityBoundingSet=CAP_SETUID CAP_BOGUS
""")
    text, conv = importer.import_files([unit])
    assert config.parse(text, "imported.toml").services["a"].capability_bounding_set == \
        ("CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_SETUID")
    assert _warned(conv, unit, 4, "CapabilityBoundingSet", "CAP_BOGUS")
    (inv,) = _files(tmp_path, b_service="[Service]\nExecStart=/b\n"
                    "CapabilityBoundingSet=~CAP_SYS_ADMIN CAP_SYS_MODULE\n")
    text, conv = importer.import_files([inv])
    kept = config.parse(text, "imported.toml").services["b"].capability_bounding_set
    assert kept is not None and len(kept) == len(config.CAPABILITIES) - 2
    assert "CAP_SYS_ADMIN" not in kept and "CAP_NET_RAW" in kept
    # an empty one (redis-server.service's): no capability at all, whatever came before
    (empty,) = _files(tmp_path, c_service="[Service]\nExecStart=/c\n"
                      "CapabilityBoundingSet=CAP_CHOWN\nCapabilityBoundingSet=\n")
    text, conv = importer.import_files([empty])
    assert config.parse(text, "imported.toml").services["c"].capability_bounding_set == ()


def test_tasks_max_unset_environment_and_syslog_identifier() -> None:
    """TasksMax= is the cgroup's pids.max (pids_max); UnsetEnvironment= can only take back
    what the unit set itself (a hachain service inherits no environment);
    SyslogIdentifier= says nothing hachain needs (each service has its own log)."""
    conv = importer.convert_systemd(
        "[Service]\nExecStart=/bin/x\nEnvironment=A=1 B=2 C=3\nUnsetEnvironment=A B=9 TERM\n"
        "TasksMax=512\nSyslogIdentifier=xx\n", "x.service")
    s = conv.services["x"]
    assert (s["env"], s["pids_max"]) == ({"B": "2", "C": "3"}, 512)
    assert conv.warnings == []
    conv = importer.convert_systemd("[Service]\nExecStart=/bin/x\nTasksMax=infinity\n"
                                    "TasksMax=50%\n", "y.service")
    assert "pids_max" not in conv.services["y"]
    assert conv.warnings == ["y.service:4: TasksMax: '50%': hachain's pids_max takes a "
                             "number of tasks (not a percentage) or infinity; dropped"]
