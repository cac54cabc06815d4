"""Configuration: one TOML file → frozen dataclasses, validated by one schema.

Owns: the schema that describes every key once (kind, bounds, default, doc text), the
rules across keys, and loading. The dataclasses a file becomes are in
`hachain/configtypes.py` and re-exported here. The generic kinds (and
the rules every value keeps: no NUL, finite numbers, a table where a table belongs) are
in `hachain/schema.py`. Must not: start, signal or open anything but the file itself.
Every error is one line naming the file, the line, the dotted key and the rule:

    chain.toml:14: service.web.backoff.factor: must be >= 1, got 0.5

Errors are collected and reported together (one per line); rules across keys are checked
once the keys they relate are right. docs/configuration.md's reference tables are
generated from the schema (`python -m hachain.config docs/configuration.md`).
"""

from __future__ import annotations

import graphlib
import math
import os
import re
import signal
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from hachain import channels, conditions, listen
from hachain import schema as S
from hachain.configtypes import (
    BOOT_LOOP_ACTIONS,
    CAPABILITIES,
    CHECK_ACTIONS,
    CHECK_KINDS,
    DEFAULT_PATH,  # noqa: F401 - re-exported (config.DEFAULT_PATH)
    HEALTH_KINDS,
    INTENSITY_ACTIONS,
    KILL_MODES,
    KINDS,
    LOAD_AVERAGES,
    PROTECT_HOME,
    PROTECT_SYSTEM,
    READY_KINDS,
    RESTART_POLICIES,
    RLIMITS,
    Backoff,
    BootLoop,
    ChainConfig,
    CheckConfig,
    ClusterConfig,
    Config,
    HealthCheck,
    Intensity,
    ServiceConfig,
    StartChecks,
    WatchdogConfig,
)
from hachain.errors import ConfigError, closest

# --- the schema: every key once, with its kind, default (the dataclass field's) and doc ---
#
# To add a key: a field in its dataclass (hachain/configtypes.py), and one Key(...)
# below (a Custom kind also lists a few good `examples`). Validation, the unknown-key
# check, the defaults and the reference tables of docs/configuration.md (regenerate them
# with `python -m hachain.config docs/configuration.md`) all follow from it, and
# tests/test_config_schema.py tries the new key with every value in its NASTY_VALUES.

WEEK = 604800.0  # the upper bound of a duration that has no tighter one
# Service names: also a file name (NAME.log), a cgroup name and a status-table cell.
NAME_RE = channels.SERVICE_NAME_RE  # kept in channels: the CLI checks names without this
NAME_RULE = channels.SERVICE_NAME_RULE
_SERVICE_NAME = S.Text(nonempty=True, pattern=NAME_RE.pattern, what=NAME_RULE)
# User and group names as useradd(8) takes them (and a trailing $ for machine accounts).
_UNIX_NAME = S.Text(nonempty=True, pattern=r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}\$?",
                    what="a user or group name (letters, digits, '_', '.', '-'; at most 32)")
_ENV_NAME = S.Text(nonempty=True, pattern=r"[^=]+", what="a name without '='", max_len=255)
_RLIM_MAX = (1 << 63) - 1  # what setrlimit(2) takes through Python; -1 is RLIM_INFINITY


def _seconds(lo: float, hi: float = WEEK, lo_open: bool = False) -> S.Number:
    return S.Number(lo, hi, lo_open=lo_open)


def _integer(lo: int, hi: int) -> S.Number:
    return S.Number(lo, hi, integer=True)


def _device(v: Any) -> str:
    s: str = S.Text(nonempty=True).one(v)
    if s in ("auto", "sim", "none") or s.startswith("/"):
        return s
    if s.startswith("sim:") and s[4:].startswith("/"):
        return s
    raise S.Bad('must be "auto", "sim", "sim:/path", "none" or a device path')


def _signal(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool) and 0 < v < signal.NSIG:
        return v
    if isinstance(v, str):
        name = v.upper() if v.upper().startswith("SIG") else "SIG" + v.upper()
        if name in signal.Signals.__members__:
            return int(signal.Signals[name])
        near = closest(name, signal.Signals.__members__)
        if near:
            raise S.Bad(f'must be a signal name such as "SIGTERM" or a number (did you mean '
                        f'"{near}"?)')
    raise S.Bad('must be a signal name such as "SIGTERM" or a number')


def _timeout(lo_open: bool) -> S.Custom:
    """Seconds, or "infinity" for no timeout at all (systemd's 0 / infinity): math.inf."""
    finite = _seconds(0, lo_open=lo_open)

    def one(v: Any) -> float:
        if v == "infinity":
            return math.inf
        try:
            return float(finite.one(v))
        except S.Bad as e:
            raise S.Bad(f"{e}, or \"infinity\"") from None
    return S.Custom(one, finite.rule.rstrip(".") + ", or `\"infinity\"` (no timeout).",
                    examples=(0.5, 5, 30, "infinity"))


def _umask(v: Any) -> int:
    if isinstance(v, str) and re.fullmatch(r"0?[0-7]{1,3}", v):
        return int(v, 8)
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0o777:
        return v
    raise S.Bad('must be an octal string such as "022"')


def _rlimit(v: Any) -> tuple[int, int]:
    pair = v if isinstance(v, list) else [v, v]
    if len(pair) != 2 or not all(isinstance(x, int) and not isinstance(x, bool)
                                 and -1 <= x <= _RLIM_MAX for x in pair):
        raise S.Bad(f"must be an integer or [soft, hard], each -1 (unlimited) to {_RLIM_MAX}")
    soft, hard = pair
    if hard != -1 and (soft == -1 or soft > hard):
        raise S.Bad("the soft limit must be <= the hard limit")
    return soft, hard


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RULE = ('must be a size: bytes as an integer, or a string with K, M, G or T (1024-'
              'based, as systemd reads them) such as "512M", or "infinity" (no limit)')


def _size(v: Any) -> int:
    """A memory size in bytes (0: no limit), as systemd's MemoryMax= is written."""
    if isinstance(v, int) and not isinstance(v, bool):
        if 0 <= v <= 1 << 50:
            return v
        raise S.Bad(_SIZE_RULE + " (0 to 2^50 bytes)")
    if isinstance(v, str):
        text = v.strip()
        if text == "infinity":
            return 0
        m = re.fullmatch(r"([0-9]+)([KMGT]?)", text.upper())
        if m and int(m.group(1)) * _SIZE_UNITS[m.group(2)] <= 1 << 50:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise S.Bad(_SIZE_RULE)


def _optional_path(v: Any) -> str:
    """An absolute path, with systemd's leading "-" when a missing one is no error
    (env_file, and the sandbox's path lists)."""
    s: str = S.Text(nonempty=True).one(v)
    if s.removeprefix("-").startswith("/") and "\0" not in s:
        return s
    raise S.Bad('must be an absolute path, with a leading "-" when a missing one is no error')


_ENV_FILE = S.Custom(_optional_path, 'An absolute path, with a leading "-" when a missing '
                     "file is no error.", examples=("/etc/default/web", "-/etc/default/web"))
_SIZE = S.Custom(_size, _SIZE_RULE + ".", examples=("512M", "1G", 1 << 30, "infinity", "64K"))
_DEVICE = S.Custom(_device, examples=("auto", "sim", "none", "sim:/run/wd.sock", "/dev/wd0"))
_SIGNAL = S.Custom(_signal, examples=("SIGTERM", "INT", 9, "sigusr1"))
_UMASK = S.Custom(_umask, examples=("022", "0077", 0o27))


def _namespaces(v: Any) -> bool | tuple[str, ...]:
    from hachain.seccomp import NAMESPACE_KINDS
    if isinstance(v, bool):
        return v
    if not isinstance(v, list) or not v:
        raise S.Bad("must be true, false, or a non-empty list of namespace kinds")
    kinds = [S.Text(nonempty=True).one(k) for k in v]
    for k in kinds:
        if k.removeprefix("~") not in NAMESPACE_KINDS:
            raise S.Bad(f"{k!r} is not a namespace kind: " + ", ".join(sorted(
                NAMESPACE_KINDS)) + ' (a leading "~" refuses it)')
    if len({k.startswith("~") for k in kinds}) > 1:
        raise S.Bad('either the kinds allowed or the "~" kinds refused, not both')
    return tuple(kinds)


_NAMESPACES = S.Custom(_namespaces, "true, false, or a list of namespace kinds: those "
                       "allowed, or with \"~\" those refused.",
                       examples=(True, False, ["net", "mnt"], ["~user"]))


def _device_allow(v: Any) -> str:
    from hachain import devices
    s: str = S.Text(nonempty=True).one(v)
    try:
        devices.split(s)
    except ValueError as e:
        raise S.Bad(str(e)) from None
    return " ".join(s.split())


def _ip_prefix(v: Any) -> str:
    from hachain import ipfilter
    s: str = S.Text(nonempty=True).one(v).strip()
    try:
        ipfilter.networks(s)
    except ValueError as e:
        raise S.Bad(str(e)) from None
    return s


_IP_PREFIX = S.Custom(_ip_prefix, "An IPv4 or IPv6 address or prefix, or any, localhost, "
                      "link-local, multicast.",
                      examples=("10.0.0.0/8", "::1", "localhost", "192.168.1.7", "any"))
def _listen(v: Any) -> str:
    s: str = S.Text(nonempty=True).one(v).strip()
    try:
        listen.parse(s)
    except ValueError as e:
        raise S.Bad(str(e)) from None
    return s


_LISTEN = S.Custom(_listen, "tcp:PORT, tcp:ADDRESS:PORT, udp:..., unix:/PATH, unix:@NAME, "
                   "unix-dgram:..., unix-seqpacket:...",
                   examples=("tcp:8080", "tcp:127.0.0.1:8080", "unix:/run/web.sock",
                             "udp:[::1]:5353"))
_DEVICE_ALLOW = S.Custom(_device_allow, "\"SPEC\" or \"SPEC ACCESS\": a device node's path, "
                         "or char-NAME / block-NAME; ACCESS some of r, w, m.",
                         examples=("/dev/null rw", "char-pts", "block-loop rwm", "/dev/fuse"))


def _mode(v: Any) -> int:
    if isinstance(v, str) and re.fullmatch(r"0?[0-7]{3,4}", v):
        return int(v, 8)
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0o7777:
        return v
    raise S.Bad('must be an octal string such as "0750" or "2755"')


_MODE = S.Custom(_mode, examples=("0755", "2755", 0o700))


def _capability(v: Any) -> str:
    name = v.upper().removeprefix("CAP_") if isinstance(v, str) else ""
    if name not in CAPABILITIES:
        hint = closest(name, CAPABILITIES) if name else None
        raise S.Bad("must be a Linux capability such as \"CAP_NET_BIND_SERVICE\""
                    + (f"; did you mean 'CAP_{hint}'?" if hint else ""))
    return "CAP_" + name


_CAPABILITY = S.Custom(_capability, examples=("CAP_NET_BIND_SERVICE", "net_raw"))
_RLIMIT = S.Custom(_rlimit, examples=(0, 1024, -1, [1024, 4096], [0, -1]))

BACKOFF = S.Table(Backoff, (
    S.Key("initial", _seconds(0), "The first delay."),
    S.Key("factor", S.Number(1, 1000), "Each further delay is the previous one times this "
          "(1 = a fixed delay)."),
    S.Key("max", _seconds(0), "The delay never grows beyond this. At least `initial`."),
    S.Key("reset_after", _seconds(0), "A run that lasted at least this long starts the "
          "sequence again at `initial`."),
), checks=(lambda b, at, r: r.err(at + ("max",), f"must be >= backoff.initial "
                                  f"({S.fmt(b.initial)}), got {S.fmt(b.max)}")
           if b.max < b.initial else None,))

INTENSITY = S.Table(Intensity, (
    S.Key("max_restarts", _integer(0, 1_000_000_000), ""),
    S.Key("window", _seconds(0, lo_open=True), "Seconds."),
    S.Key("action", S.Choice(INTENSITY_ACTIONS), "What happens when the limit is exceeded. "
          "`\"maintenance\"`: held down until `hachain clear NAME` (like SMF). "
          "`\"restart-group\"`: restart the service and everything that depends on it "
          "(OTP's one_for_all / rest_for_one), and start counting again. `\"reboot\"`: the "
          "restarter asks for a reboot; the tickler stops petting and the watchdog resets "
          "the machine. `\"ignore\"`: keep restarting with backoff."),
    S.Key("decay", _seconds(0, 365 * 86400), "Seconds. When greater than 0, a *decaying* "
          "failure count replaces the window: each crash adds 1, each `decay` seconds the "
          "service runs takes 1 away (never below 0), and the action is taken when the "
          "count exceeds `max_restarts`. A service that crashes once an hour with "
          "`decay = 300` is never parked, however long it runs; a crash loop still is. 0 "
          "(the default): the fixed `window`."),
))


def _health_checks(h: HealthCheck, at: S.Path, r: S.Report) -> None:
    if h.kind == "exec" and not h.command:
        r.err(at + ("command",), "is required when health.kind = \"exec\"")
    if h.kind == "tcp" and not h.port:
        r.err(at + ("port",), "is required when health.kind = \"tcp\"")


HEALTH = S.Table(HealthCheck, (
    S.Key("kind", S.Choice(HEALTH_KINDS), "`\"exec\"`: `health.command` exits 0. `\"tcp\"`: "
          "`health.port` accepts a connection on localhost."),
    S.Key("command", S.Argv(), "argv for `kind = \"exec\"` (required then). It runs as the "
          "service does: its user and groups, umask, environment, cwd and "
          "`oom_score_adj`; for a sandboxed service also in its namespaces (its private "
          "`/tmp`, its loopback), cgroup and system call filters, with `MAINPID`."),
    S.Key("port", _integer(0, 65535), "Port for `kind = \"tcp\"` (required then)."),
    S.Key("interval", _seconds(0.05), "Seconds between checks, starting once the service "
          "is ready."),
    S.Key("timeout", _seconds(0.01), "A check that takes longer failed."),
    S.Key("failures", _integer(1, 1000), "This many failed checks in a row count as a hang."),
), checks=(_health_checks,))

_DEPS = S.ListOf(_SERVICE_NAME, one_ok=True)


def _check_arg(kind: str) -> S.Custom:
    """An argument of a `condition` or `assert` check: `kind` ("path", "word",
    "capability") after an optional `|`, `!` or `|!` prefix."""
    def one(v: Any) -> str:
        if not isinstance(v, str):
            raise S.Bad("must be a string")
        trigger, negate, value = conditions.split(v)
        prefix = (conditions.TRIGGER if trigger else "") + (conditions.NEGATE if negate else "")
        if kind == "path":
            if not value.startswith("/") or "\0" in value:
                raise S.Bad('must be an absolute path after an optional "!" (negate) or "|" '
                            '(triggering) prefix')
            return prefix + value
        if kind == "capability":
            return prefix + _capability(value)
        if kind == "security":
            if value not in conditions.SECURITY:
                raise S.Bad("must be one of " + ", ".join(conditions.SECURITY) +
                            " after an optional prefix")
            return prefix + value
        if kind == "boolean":
            if value.lower() not in ("yes", "true", "1", "on", "no", "false", "0", "off"):
                raise S.Bad("must be true or false (a string) after an optional prefix")
            return prefix + value.lower()
        if not value or not value.isprintable() or any(ch.isspace() for ch in value):
            raise S.Bad("must be one word (NAME or NAME=VALUE) after an optional prefix")
        return prefix + value
    examples = {"path": ("/etc/app/enabled", "!/etc/app/disabled", "|/run/a"),
                "word": ("rescue", "!app.off", "|app=on"),
                "capability": ("CAP_SYS_ADMIN", "!CAP_NET_ADMIN"),
                "security": ("apparmor", "!selinux", "|tpm2"),
                "boolean": ("true", "false")}[kind]
    return S.Custom(one, "", examples=examples)


def _protect(choices: tuple[str, ...]) -> S.Custom:
    """`true` (systemd's "yes"), `false` (off: ""), or one of `choices`."""
    def one(v: Any) -> str:
        if v is True:
            return "yes"
        if v is False:
            return ""
        if isinstance(v, str) and v in choices:
            return v
        raise S.Bad("must be true, false or one of " + ", ".join(f'"{c}"' for c in choices))
    return S.Custom(one, examples=(True, False) + choices)


def _credential_name(v: Any) -> str:
    s: str = S.Text(nonempty=True, max_len=255).one(v)
    if "/" in s or s in (".", "..") or not s.isprintable():
        raise S.Bad(f"{s!r} is not a credential name (a file name: no '/', printable)")
    return s


def _credential_source(v: Any) -> str:
    s: str = S.Text(nonempty=True).one(v)
    path = s.removeprefix("-")
    if not path or (not path.startswith("/") and "/" in path):
        raise S.Bad(f"{s!r} must be an absolute path (a leading \"-\": it may be missing) "
                    "or a name to look for in the credential stores")
    return s


def _syscall_item(v: Any) -> str:
    from hachain import seccomp
    s: str = S.Text(nonempty=True).one(v)
    if (problem := seccomp.item_problem(s)) is not None:
        raise S.Bad(problem)
    return s


def _errno_name(v: Any) -> str:
    from hachain import seccomp
    s: str = S.Text(nonempty=True).one(v)
    if seccomp.errno_number(s) is None:
        raise S.Bad(f"{s!r} is not an errno name such as \"EPERM\"")
    return s


def _family(v: Any) -> str:
    from hachain import seccomp
    s: str = S.Text(nonempty=True).one(v)
    if s != "none" and seccomp.family_number(s.removeprefix("~")) is None:
        raise S.Bad(f"{s!r} is not an address family such as \"AF_INET\" (or \"none\")")
    return s


def _arch(v: Any) -> str:
    from hachain import seccomp
    s: str = S.Text(nonempty=True).one(v)
    if (problem := seccomp.arch_problem(s)) is not None:
        raise S.Bad(problem)
    return s


_SANDBOX_PATHS = S.ListOf(S.Custom(_optional_path, examples=("/srv/data", "-/var/cache/x")),
                          one_ok=True, max_items=64)


START_CHECKS = S.Table(StartChecks, tuple(
    S.Key(name, S.ListOf(_check_arg(kind), one_ok=True, max_items=64),
          what[0].upper() + what[1:] + ".", shown="`[]`")
    for name, (_fn, kind, what) in conditions.CHECKS.items()))

FD_STORE_MOST = 512  # fd_store_max's highest: a service's descriptors
# handed over (with its 64 listen sockets at most) stay under _clone3.c's MAX_LISTEN

SERVICE_KEYS: tuple[S.Key, ...] = (
    # What to run
    S.Key("command", S.Argv(string_ok=True), "The argv list, run without a shell: "
          "`[\"/usr/bin/web\", \"--port\", \"80\"]`. A string is only accepted with "
          "`shell = true`. Must not be empty, nor start with a blank program name.",
          group="run"),
    S.Key("shell", S.Bool(), "`true`: run `command` through `/bin/sh -c`. A string is passed "
          "as is; a list is joined with spaces first.", default=False, group="run"),
    S.Key("kind", S.Choice(KINDS), "`\"longrun\"`: a process that should keep running. "
          "`\"oneshot\"`: a task that runs to completion; a clean exit leaves it `done`, "
          "which satisfies its dependents (`requires` and `after`); until then they wait, "
          "and its clean exit never restarts them. `ready` and `ready_timeout` do not apply "
          "to it. `\"forking\"`: a daemon that puts itself in the background (systemd's "
          "`Type=forking`): `command` is a launcher that starts it and exits; see \"Forking "
          "daemons\" below.", group="run"),
    S.Key("env_file", S.ListOf(_ENV_FILE, one_ok=True, max_items=64), "Files of "
          "`NAME=VALUE` lines read at each start, as systemd's `EnvironmentFile=` (its format: "
          "`#` comments, quoted values, a trailing `\\` joins lines); their variables "
          "replace those of `env`, a later file's an earlier one's. A path with a leading "
          "`-` may be missing; any other missing or unreadable file fails the start, naming "
          "it. A line that is not `NAME=VALUE` is left out with a warning.",
          shown="`[]`", group="run"),
    S.Key("directories", S.ListOf(S.PathText(nonempty=True), one_ok=True, max_items=64),
          "Directories made before each start when they are missing (with their parents), "
          "mode `directory_mode` (0755), owned by the service's `user` and `group`: what systemd's "
          "`RuntimeDirectory=`, `StateDirectory=`, `CacheDirectory=` and `LogsDirectory=` "
          "make, so a daemon that needs `/run/NAME` finds it on a fresh tmpfs at every "
          "boot. An existing one is left as it is; none is removed. One that cannot be "
          "made fails the start, naming it.", shown="`[]`", group="run"),
    S.Key("directory_mode", _MODE, "The mode `directories` are made with, an octal string "
          "(`\"0750\"`, `\"2755\"` for a setgid one): systemd's `RuntimeDirectoryMode=` and "
          "its kin. Applied to the ones this start makes, whatever the umask.",
          shown="`\"0755\"`", group="run"),
    S.Key("pre_start", S.ListOf(S.Argv(string_ok=True), max_items=64), "Commands run in "
          "turn before `command`, each an argv list (`[[\"/usr/sbin/sshd\", \"-t\"]]`), or "
          "with `shell = true` a `/bin/sh` line: systemd's `ExecStartPre=`, or what a runit "
          "or s6 `run` script does before it execs the daemon. They run as the service "
          "does (user, environment, cwd, limits, cgroup), within `ready_timeout`, without "
          "`NOTIFY_SOCKET`. One that fails ends the start with its status, which the restart "
          "policy answers as any failed start; one whose program is written with a leading "
          "`-` (`[\"-/usr/bin/x\"]`) may fail. Each failure is a line on the service's "
          "log. A `ready = \"none\"` service is ready when the last of them has succeeded, "
          "as `command` is exec'd.",
          shown="`[]`", group="run"),
    S.Key("post_start", S.ListOf(S.Argv(string_ok=True), max_items=64), "Commands run in "
          "turn once the service is ready (by its `ready` kind), before it counts as "
          "`ready`: systemd's `ExecStartPost=`. In the form of `pre_start` (a leading `-` "
          "may fail). They run as the service does, in its namespaces, with `MAINPID`, "
          "their output on its log, and the service stays `starting` (`running post_start`) "
          "until they are done, which `ready_timeout` bounds afresh. One that fails stops "
          "the service and counts as a failed start; an end of the service meanwhile kills "
          "them. Not for a oneshot.", shown="`[]`", group="run"),
    S.Key("post_stop", S.ListOf(S.Argv(string_ok=True), max_items=64), "Commands run in "
          "turn after each end of the service's main process (a stop, a crash, a failed "
          "start), before it is started again: systemd's `ExecStopPost=`, for what a "
          "crash leaves behind (a socket file, a lock, a firewall rule). In the form of "
          "`pre_start`; as the service runs, with `EXIT_CODE` (`exited`, `killed`, "
          "`dumped`) and `EXIT_STATUS` (the code or the signal's name) of the end, their "
          "output on its log. `stop_timeout` bounds them, then they are killed; their "
          "failure is logged and changes nothing. Not for a oneshot.", shown="`[]`",
          group="run"),
    S.Key("condition", START_CHECKS, "What must hold on the host for the service to start "
          "(systemd's `ConditionPathExists=` and its kin), a table of checks, each a list "
          "of arguments, asked before every start. Not met: the service is not started and "
          "shows `skipped` with the check that failed; what requires it or orders itself "
          "after it goes on, as after a `done` oneshot. `hachain start NAME`, `hachain "
          "restart NAME`, a reload that changes the service and the next boot ask again. "
          "An argument prefixed with `!` negates its check; one "
          "with `|` is *triggering*: the table holds when every check without `|` holds and, "
          "if there is any, at least one with `|` does (`|!` is both). "
          "`condition = { path_exists = \"!/etc/ssh/sshd_not_to_be_run\" }`. Its checks:",
          group="run"),
    S.Key("assert", START_CHECKS, "The same checks as `condition` (systemd's "
          "`AssertPathExists=` and its kin), but one that does not hold is a failed start, "
          "naming it, which the restart policy answers (retried after the backoff, then "
          "`maintenance` once `intensity` is exceeded).", default=None, group="run"),
    S.Key("pid_file", S.PathText(nonempty=True), "Only with `kind = \"forking\"`: the "
          "absolute path where the daemon writes its main pid.", group="run"),
    S.Key("enabled", S.Bool(), "`false`: not started at boot (`hachain start NAME` still "
          "starts it by hand).", group="run"),
    S.Key("env", S.MapOf(_ENV_NAME, S.Text(line=False, max_len=S.MAX_ARG - 256),
                         label="a variable name", to=lambda d: tuple(sorted(d.items()))),
          "Environment variables, a table of strings (names non-empty and without `=`). "
          "A service gets only `PATH`, `HACHAIN_SERVICE` (its name), "
          "`NOTIFY_SOCKET`/`WATCHDOG_USEC` for `ready = \"notify\"`, and these; nothing of "
          "the chain's own environment.", shown="`{}`", group="run"),
    S.Key("credentials", S.MapOf(S.Custom(_credential_name, examples=("tls.key", "token")),
                                 S.Custom(
          _credential_source, examples=("/etc/ssl/private/web.key", "-/etc/web/token",
                                        "web.token")),
          label="a credential name", to=lambda d: tuple(sorted(d.items()))),
          "Secrets the service gets a copy of at each start (systemd's "
          "`LoadCredential=`): a table of name = source, `{ \"tls.key\" = "
          "\"/etc/ssl/private/web.key\" }`. The restarter reads each source (as root) and "
          "writes it to `$CREDENTIALS_DIRECTORY/NAME` under `state_dir`, mode 0400, owned "
          "by the service's user; the directory is removed when the service stops. A "
          "source with a leading `-` may be missing; a bare name is looked for in "
          "`/etc/credstore`, `/run/credstore` and `/usr/lib/credstore` and left out when "
          "none has it; any other missing source fails the start, naming it. At most 1 MiB "
          "each.", shown="`{}`", group="run"),
    S.Key("cwd", S.PathText(nonempty=True), "Working directory, an absolute path. Unset: "
          "the restarter's.", group="run"),
    S.Key("user", _UNIX_NAME, "User name to run as, with its primary group (unless "
          "`group` is set) and its supplementary groups, as `initgroups` gives them. "
          "Looked up at each start, by a thread of the restarter's own: a name service "
          "that does not answer within 0.5 s (LDAP, sssd or NIS gone) does not stop the "
          "restarter; the start runs as the user resolved last, or is put off and tried "
          "again after the backoff when it never was ([fault model](fault-model.md)).",
          group="run"),
    S.Key("group", _UNIX_NAME, "Group name to run as.", group="run"),
    S.Key("umask", _UMASK, "File-mode creation mask: an octal string such as "
          "`\"022\"` (or an integer 0 to 0o777).", group="run"),
    S.Key("capabilities", S.ListOf(_CAPABILITY, one_ok=True, max_items=len(CAPABILITIES)),
          "Capabilities the service keeps when it runs as `user` (systemd's "
          "`AmbientCapabilities=`), such as `[\"CAP_NET_BIND_SERVICE\"]` for a daemon "
          "that binds port 80 as its own user: the only ones it has, in each set and as "
          "ambient ones, so its program keeps them over its `exec`. Needs `user`. One the "
          "restarter does not have itself fails the start, naming it.",
          shown="`[]`", group="run"),
    S.Key("capability_bounding_set", S.ListOf(_CAPABILITY, one_ok=True,
                                              max_items=len(CAPABILITIES)),
          "The capabilities the service and everything it runs may ever have (systemd's "
          "`CapabilityBoundingSet=`): the others leave its bounding set before its exec, "
          "so even a service that runs as root, or a set-user-ID program it runs, cannot "
          "get them. `[]`: none at all. Unset: the host's bounding set. Must hold "
          "`capabilities`.", shown="unset", group="run"),
    S.Key("private_tmp", S.Bool(), "`true`: the service gets a mount namespace of its own "
          "with a fresh, empty tmpfs on `/tmp` and `/var/tmp` at each start (systemd's "
          "`PrivateTmp=`): what it leaves there goes with its last process, and it sees no "
          "other program's files there. A socket another service expects in `/tmp` is then "
          "out of its reach (the chain's own are in `state_dir`, under `/run`).",
          group="run"),
    S.Key("protect_system", _protect(PROTECT_SYSTEM), "Read-only system directories in "
          "the service's own mount namespace (systemd's `ProtectSystem=`): `true` makes "
          "`/usr`, `/boot` and `/efi` read-only, `\"full\"` `/etc` too, `\"strict\"` the "
          "whole file system but `/dev`, `/proc`, `/sys` and the service's `directories` "
          "(open more with `read_write_paths`). Everything mounted below a path is "
          "read-only with it. Needs root (CAP_SYS_ADMIN).", shown="`false`", group="run"),
    S.Key("protect_home", _protect(PROTECT_HOME), "`/home`, `/root` and `/run/user` in "
          "the service's own mount namespace (systemd's `ProtectHome=`): `true` hides "
          "them (each an empty directory nothing can read), `\"read-only\"`, or "
          "`\"tmpfs\"` (each an empty read-only tmpfs).", shown="`false`", group="run"),
    S.Key("read_only_paths", _SANDBOX_PATHS, "Paths the service can read and not write, "
          "with everything mounted below them (systemd's `ReadOnlyPaths=`). A path with "
          "a leading `-` may be missing; any other that is missing fails the start, "
          "naming it. Where these lists and `protect_system`/`protect_home` overlap, the "
          "more specific path wins.", shown="`[]`", group="run"),
    S.Key("read_write_paths", _SANDBOX_PATHS, "Paths the service can write under a "
          "read-only one (systemd's `ReadWritePaths=`), such as its data directory "
          "with `protect_system = \"strict\"`; the file system's own permissions still "
          "apply.", shown="`[]`", group="run"),
    S.Key("inaccessible_paths", _SANDBOX_PATHS, "Directories the service cannot see into "
          "(systemd's `InaccessiblePaths=`): each becomes an empty directory of mode "
          "000.", shown="`[]`", group="run"),
    S.Key("system_call_filter", S.ListOf(S.Custom(_syscall_item, examples=(
          "@system-service", "~@privileged", "read")), one_ok=True, max_items=512),
          "The system calls the service may make (systemd's `SystemCallFilter=`): names "
          "and systemd's `@groups` (`\"@system-service\"`). When the first item starts "
          "with `~` the list is what it may not make instead; each later item adds to the "
          "list with the first one's sign and takes from it with the other "
          "(`[\"@system-service\", \"~@privileged\"]`). A call outside it kills the "
          "service by SIGSYS, or fails with `system_call_error_number`. An allow list "
          "always holds `@default`, what starting a program takes. Installed last before "
          "the exec; a service that runs as its own user gets `no_new_privileges` with it, "
          "as the kernel asks.", shown="`[]`", group="run"),
    S.Key("system_call_error_number", S.Custom(_errno_name, examples=("EPERM", "EACCES")),
          "What a call the filter refuses returns (systemd's `SystemCallErrorNumber=`), "
          "an errno name such as `\"EPERM\"`; unset, the service is killed by SIGSYS.",
          shown="unset", group="run"),
    S.Key("system_call_architectures", S.ListOf(S.Custom(_arch, examples=("native",)),
                                                one_ok=True, max_items=8),
          "The system call ABIs the service may use (systemd's "
          "`SystemCallArchitectures=`): `\"native\"`, `\"x86\"`, `\"x32\"`, ...; "
          "a call through any other (a 32-bit `int 0x80` on x86-64) kills it. Unset: "
          "the native one and those it runs (x86 and x32 on x86-64).", shown="`[]`",
          group="run"),
    S.Key("restrict_address_families", S.ListOf(S.Custom(_family, examples=(
          "AF_UNIX", "~AF_PACKET", "none")), one_ok=True, max_items=64),
          "The socket families the service may open (systemd's "
          "`RestrictAddressFamilies=`): `[\"AF_UNIX\", \"AF_INET\", \"AF_INET6\"]`; "
          "with a leading `~` on the first, the ones it may not; `[\"none\"]`: none. "
          "Any other `socket()` fails with EAFNOSUPPORT. Native calls only: add "
          "`system_call_architectures = \"native\"` against 32-bit ones.", shown="`[]`",
          group="run"),
    S.Key("memory_deny_write_execute", S.Bool(), "`true`: no memory both writable and "
          "executable, and none made executable later (systemd's "
          "`MemoryDenyWriteExecute=`): such `mmap`, `mprotect` and `shmat` fail with "
          "EPERM. A JIT (Java, some regex engines) stops working.", group="run"),
    S.Key("lock_personality", S.Bool(), "`true`: the execution domain cannot be "
          "changed (systemd's `LockPersonality=`): `personality()` with anything but the "
          "default fails with EPERM.", group="run"),
    S.Key("restrict_realtime", S.Bool(), "`true`: no real-time scheduling (systemd's "
          "`RestrictRealtime=`): `sched_setscheduler` to FIFO, RR or DEADLINE, and "
          "`sched_setattr`, fail with EPERM.", group="run"),
    S.Key("restrict_suid_sgid", S.Bool(), "`true`: no set-user-ID or set-group-ID files "
          "made (systemd's `RestrictSUIDSGID=`): `chmod`, `open` with `O_CREAT`, `mkdir` "
          "and `mknod` with those bits fail with EPERM.", group="run"),
    S.Key("restrict_namespaces", _NAMESPACES, "`true`: no new namespaces (systemd's "
          "`RestrictNamespaces=yes`): `unshare` and `clone` with a `CLONE_NEW*` flag, and "
          "`setns`, fail with EPERM (`clone3` says ENOSYS: the C library falls back to "
          "`clone`). A list names the kinds allowed (`[\"net\", \"mnt\"]`), or with `~` "
          "the kinds refused (`[\"~user\"]`), of `cgroup`, `ipc`, `mnt`, `net`, `pid`, "
          "`time`, `user`, `uts`, as systemd's list form.", shown="`false`", group="run"),
    S.Key("private_devices", S.Bool(), "`true`: a `/dev` of its own with only the pseudo "
          "devices (`null`, `zero`, `full`, `random`, `urandom`, `tty`, a `pts` of its "
          "own with `ptmx`, and the host's `shm`, `mqueue`, `hugepages`): no disk, no "
          "hardware (systemd's `PrivateDevices=`). CAP_MKNOD and CAP_SYS_RAWIO leave the "
          "bounding set and the `@raw-io` calls fail with EPERM.", group="run"),
    S.Key("device_allow", S.ListOf(_DEVICE_ALLOW, max_items=256), "The device nodes it "
          "may use (systemd's `DeviceAllow=`): each `\"SPEC\"` or `\"SPEC ACCESS\"`, SPEC a "
          "node's path (`/dev/fuse`) or `char-NAME` / `block-NAME` (a driver's name as "
          "`/proc/devices` lists it, such as `char-pts`, `block-loop`; `*` and `?` "
          "match), ACCESS some of `r`, `w`, `m` (mknod; all three when left out). A cgroup "
          "device program holds every process of the service to them (EPERM otherwise); "
          "with the default `device_policy`, the pseudo devices are allowed too. A node or "
          "driver missing at a start is left out, with a line on the restarter's log. "
          "Needs the chain's cgroups.", shown="`[]`", group="run"),
    S.Key("device_policy", S.Choice(("auto", "closed", "strict")), "systemd's "
          "`DevicePolicy=`: `\"strict\"` allows only `device_allow`; `\"closed\"` also the "
          "pseudo devices (`/dev/null`, `zero`, `full`, `random`, `urandom`, `tty`, "
          "`ptmx`, the pseudo terminals); `\"auto\"` is `\"closed\"` when `device_allow` "
          "lists anything, else every device.", group="run"),
    S.Key("ip_address_allow", S.ListOf(_IP_PREFIX, max_items=256), "Remote addresses the "
          "service may exchange IP packets with even when `ip_address_deny` matches them "
          "(systemd's `IPAddressAllow=`): addresses or prefixes (`\"10.0.0.0/8\"`, "
          "`\"::1\"`), or `\"any\"`, `\"localhost\"`, `\"link-local\"`, `\"multicast\"`. "
          "Held by two cgroup programs on the service's cgroup, which check the "
          "destination of each packet it sends and the source of each it receives. Needs "
          "the chain's cgroups.", shown="`[]`", group="run"),
    S.Key("ip_address_deny", S.ListOf(_IP_PREFIX, max_items=256), "Remote addresses it "
          "may not exchange packets with, unless `ip_address_allow` has them (systemd's "
          "`IPAddressDeny=`): `[\"any\"]` with `ip_address_allow = [\"localhost\"]` keeps "
          "it to the loopback. A datagram it sends there fails with EPERM; a TCP "
          "connection there never opens (`connect` times out).", shown="`[]`",
          group="run"),
    S.Key("ignore_sigpipe", S.Bool(), "`true`: the service starts with SIGPIPE ignored, "
          "so a write to a closed pipe or socket fails with EPIPE instead of killing it "
          "(systemd's `IgnoreSIGPIPE=`, on by default there; s6, runit and supervisord "
          "leave it at its default, as hachain does). `hachain import` sets it unless the "
          "unit says `IgnoreSIGPIPE=no`.", group="run"),
    S.Key("private_network", S.Bool(), "`true`: a network namespace of its own with only "
          "a loopback interface, brought up (systemd's `PrivateNetwork=`): it reaches no "
          "other host and nothing on this host's own interfaces, `127.0.0.1` included; "
          "unix sockets in the file system still work. Needs root (CAP_SYS_ADMIN).",
          group="run"),
    S.Key("listen", S.ListOf(_LISTEN, one_ok=True, max_items=64), "Sockets the restarter "
          "opens and hands to the service already listening, as descriptors 3, 4, ... in "
          "this order, with `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES` (systemd's "
          "socket activation: `ListenStream=`, `ListenDatagram=`, "
          "`ListenSequentialPacket=`; `sd_listen_fds()` reads them). `\"tcp:PORT\"` "
          "listens on every address, IPv6 and IPv4; `\"tcp:127.0.0.1:PORT\"`, "
          "`\"tcp:[::1]:PORT\"`; `\"udp:...\"` the same; `\"unix:/run/x.sock\"` "
          "(`unix-dgram:`, `unix-seqpacket:`; `@name` for an abstract one). They are opened "
          "at its first start and stay open while it is wanted up, through its restarts: "
          "a client that connects while it is down or restarting waits in the backlog and "
          "is answered by the next process instead of being refused. A restarter that "
          "starts again takes them back from the running service. They close when it is "
          "stopped, fails for good or leaves the configuration. They are opened in the "
          "host's network, so a `private_network` service can still serve on them. "
          "Non-blocking and close-on-exec in the restarter, as systemd opens them.",
          shown="`[]`", group="run"),
    S.Key("listen_backlog", _integer(1, 65535), "The backlog of each `listen` stream "
          "socket (systemd's `Backlog=`): how many connections wait for the service; the "
          "kernel caps it at `net.core.somaxconn`.", shown="4096", group="run"),
    S.Key("socket_mode", _MODE, "The mode of each `listen` unix socket's file, an octal "
          "string (systemd's `SocketMode=`).", shown="`\"0666\"`", group="run"),
    S.Key("socket_user", _UNIX_NAME, "The owner of each `listen` unix socket's file "
          "(systemd's `SocketUser=`); unset: root.", shown="unset", group="run"),
    S.Key("socket_group", _UNIX_NAME, "Its group (systemd's `SocketGroup=`).",
          shown="unset", group="run"),
    S.Key("fd_name", S.Text(nonempty=True), "The name every `listen` socket gets in "
          "`LISTEN_FDNAMES` (systemd's `FileDescriptorName=`). Unset: `NAME.socket`, "
          "NAME the service's, as systemd names those of `NAME.socket`.", shown="unset",
          group="run"),
    S.Key("socket_options", S.ListOf(S.Choice(listen.OPTIONS), max_items=8), "Options of "
          "the `listen` sockets, each set on those it applies to: `\"reuse_port\"` "
          "(systemd's `ReusePort=`), `\"free_bind\"` (`FreeBind=`: bind an address the "
          "host does not have yet), `\"transparent\"` (`Transparent=`), "
          "`\"keep_alive\"`, `\"no_delay\"` (`KeepAlive=`, `NoDelay=`: TCP), "
          "`\"pass_credentials\"`, `\"pass_security\"` (`PassCredentials=`, "
          "`PassSecurity=`: unix), `\"ipv6_only\"` (`BindIPv6Only=ipv6-only`: a "
          "`tcp:PORT` or `udp:PORT` takes no IPv4).", shown="`[]`", group="run"),
    S.Key("socket_receive_buffer", S.Custom(_size, examples=("8M", 262144)), "The receive "
          "buffer of each `listen` socket, in bytes or with K, M, G (systemd's "
          "`ReceiveBuffer=`): past `net.core.rmem_max` only as root. 0: the kernel's.",
          shown="0", group="run"),
    S.Key("socket_send_buffer", S.Custom(_size, examples=("1M",)), "Their send buffer "
          "(systemd's `SendBuffer=`).", shown="0", group="run"),
    S.Key("fd_store_max", _integer(0, FD_STORE_MOST), "How many descriptors the service "
          "may hand the restarter to keep for it (systemd's `FileDescriptorStoreMax=`): it sends "
          "`FDSTORE=1` (and `FDNAME=NAME`) with them on `$NOTIFY_SOCKET` "
          "(`sd_pid_notify_with_fds()`), and every later start gets them back after its "
          "`listen` sockets, named in `LISTEN_FDNAMES` (`stored` unless named): an open "
          "connection, a memfd of state, a device that is slow to open, kept through a "
          "crash. `FDSTOREREMOVE=1` with `FDNAME=` drops them; one that hangs up (a socket "
          "whose peer closed) is dropped at the next start unless it came with `FDPOLL=0`. "
          "The service gets `NOTIFY_SOCKET` whatever its `ready`. A new restarter takes "
          "them back from the running service's processes where they still hold a copy; "
          "those only the old restarter held are lost with it, and it says so. 0: none "
          "kept (any sent are closed, with a warning).", shown="0", group="run"),
    S.Key("fd_store_preserve", S.Bool(), "`true`: the stored descriptors are kept while the "
          "service is stopped too, until it leaves the configuration (systemd's "
          "`FileDescriptorStorePreserve=yes`); by default they are closed when it is "
          "stopped or fails for good, as its `listen` sockets.", group="run"),
    S.Key("protect_proc", S.Choice(("invisible", "noaccess", "ptraceable")), "A `/proc` of "
          "its own in which other users' processes are `\"invisible\"` (not listed), "
          "`\"noaccess\"` (listed, not readable) or visible only when it may ptrace them "
          "(`\"ptraceable\"`): systemd's `ProtectProc=`, procfs's `hidepid`. Unset: the "
          "host's `/proc`.", shown="unset", group="run"),
    S.Key("proc_subset", S.Choice(("pid",)), "`\"pid\"`: that `/proc` holds only the "
          "process directories, none of the kernel's files (`/proc/meminfo`, `/proc/sys`, "
          "...): systemd's `ProcSubset=pid`.", shown="unset", group="run"),
    S.Key("protect_kernel_tunables", S.Bool(), "`true`: the kernel's tunables read-only "
          "(systemd's `ProtectKernelTunables=`): `/proc/sys`, `/sys`, `/proc/sysrq-trigger` "
          "and the rest of systemd's list, in its own mount namespace.", group="run"),
    S.Key("protect_control_groups", S.Bool(), "`true`: `/sys/fs/cgroup` read-only "
          "(systemd's `ProtectControlGroups=`).", group="run"),
    S.Key("protect_kernel_modules", S.Bool(), "`true`: no module loaded or removed "
          "(systemd's `ProtectKernelModules=`): the `@module` calls fail with EPERM, "
          "CAP_SYS_MODULE leaves the bounding set, `/lib/modules` and `/usr/lib/modules` "
          "are hidden.", group="run"),
    S.Key("protect_kernel_logs", S.Bool(), "`true`: the kernel's log buffer out of reach "
          "(systemd's `ProtectKernelLogs=`): `syslog()` fails with EPERM and CAP_SYSLOG "
          "leaves the bounding set (so `/proc/kmsg` cannot be opened; `/dev/kmsg` as the "
          "host's `kernel.dmesg_restrict` says).", group="run"),
    S.Key("protect_clock", S.Bool(), "`true`: the clocks cannot be set (systemd's "
          "`ProtectClock=`): the `@clock` calls fail with EPERM, CAP_SYS_TIME and "
          "CAP_WAKE_ALARM leave the bounding set.", group="run"),
    S.Key("protect_hostname", S.Bool(), "`true`: a UTS namespace of its own, in which "
          "`sethostname` and `setdomainname` fail with EPERM (systemd's "
          "`ProtectHostname=`): it sees the host's name as it was at its start and can "
          "change no one's. Needs root (CAP_SYS_ADMIN).", group="run"),
    S.Key("private_mounts", S.Bool(), "`true`: a mount namespace of its own, with the "
          "host's mounts as slaves (systemd's `PrivateMounts=`): what it mounts stays its "
          "own, while what the host mounts later still reaches it. The other file system "
          "keys imply it.", group="run"),
    S.Key("remove_ipc", S.Bool(), "`true`: once the service is down (stopped, failed, in "
          "maintenance) and nothing else running runs as its user, the System V shared "
          "memory, semaphores and message queues and the POSIX ones (`/dev/shm`, "
          "`/dev/mqueue`) that its `user` or `group` owns are removed (systemd's "
          "`RemoveIPC=`): what a crashed daemon left cannot pile up or be found by the next "
          "thing that runs as that user. Needs `user` or `group` (never root's).",
          group="run"),
    S.Key("private_ipc", S.Bool(), "`true`: an IPC namespace of its own (systemd's "
          "`PrivateIPC=`): System V semaphores, message queues and shared memory, and POSIX "
          "message queues, apart from the host's and every other service's.", group="run"),
    S.Key("no_exec_paths", _SANDBOX_PATHS, "Paths below which nothing may be executed, "
          "in its own mount namespace (systemd's `NoExecPaths=`): `[\"/\"]` and then "
          "`exec_paths` for what it runs is the strictest. Needs Linux 5.12.",
          shown="`[]`", group="run"),
    S.Key("exec_paths", _SANDBOX_PATHS, "Paths (files or directories) executable again "
          "under `no_exec_paths` (systemd's `ExecPaths=`): its own program and the "
          "libraries it loads, `[\"/usr/bin/redis-server\", \"/usr/lib\", \"/lib\"]`.",
          shown="`[]`", group="run"),
    S.Key("nice", _integer(-20, 19), "Its nice value (systemd's `Nice=`): 19 yields the CPU "
          "to everything else. Unset: 0, whatever the restarter's own.", shown="`0`",
          group="run"),
    S.Key("cpu_scheduling_policy", S.Choice(("other", "batch", "idle", "fifo", "rr")),
          "Its CPU scheduling policy (systemd's `CPUSchedulingPolicy=`): `\"batch\"` or "
          "`\"idle\"` for work that may wait, `\"fifo\"` or `\"rr\"` (real time, with "
          "`cpu_scheduling_priority`) for a control loop that must not. Unset: inherited "
          "(`\"other\"`).", shown="unset", group="run"),
    S.Key("cpu_scheduling_priority", _integer(0, 99), "The real-time priority of a "
          "`\"fifo\"` or `\"rr\"` policy, 1 (lowest) to 99 (systemd's "
          "`CPUSchedulingPriority=`).", shown="`0`", group="run"),
    S.Key("cpu_scheduling_reset_on_fork", S.Bool(), "`true`: what it forks starts at "
          "the normal policy again (`SCHED_RESET_ON_FORK`, systemd's "
          "`CPUSchedulingResetOnFork=`).", group="run"),
    S.Key("io_scheduling_class", S.Choice(("realtime", "best-effort", "idle")), "Its I/O "
          "scheduling class (systemd's `IOSchedulingClass=`, `ionice`): `\"idle\"` gets "
          "the disk only when nothing else wants it. Unset: inherited.", shown="unset",
          group="run"),
    S.Key("io_scheduling_priority", _integer(0, 7), "Its I/O priority within a "
          "`\"realtime\"` or `\"best-effort\"` class, 0 (first) to 7 (systemd's "
          "`IOSchedulingPriority=`).", shown="`4`", group="run"),
    S.Key("cpu_affinity", S.ListOf(_integer(0, 4095), max_items=4096), "The CPUs it and "
          "what it runs may use, by number (systemd's `CPUAffinity=`). Unset: every CPU the "
          "restarter may use.", shown="`[]`", group="run"),
    S.Key("no_new_privileges", S.Bool(), "`true`: the service and everything it runs can "
          "never gain privileges (set-user-ID programs, file capabilities): Linux's "
          "`no_new_privs`, systemd's `NoNewPrivileges=`.", group="run"),
    S.Key("rlimits", S.MapOf(S.Choice(RLIMITS), _RLIMIT, label="the limit",
                             to=lambda d: tuple((n, s, h) for n, (s, h) in d.items())),
          "Resource limits: " + ", ".join(f"`{n}`" for n in RLIMITS) + ". Each an integer "
          "(soft = hard) or `[soft, hard]`; `-1` is unlimited (not for `nofile`, which Linux "
          "caps at `fs.nr_open`); soft at most hard.",
          shown="`{}`", group="run"),
    # When it is restarted
    S.Key("restart", S.Choice(RESTART_POLICIES), "`\"always\"`: after every exit. "
          "`\"on-failure\"`: after an exit code not in `success_exit`, a kill by an unclean "
          "signal, a readiness timeout or a hang. `\"on-abnormal\"`: only after an unclean "
          "signal, a timeout or a hang (not after an exit code). `\"never\"`. A oneshot "
          "cannot use `\"always\"`.", shown="`\"always\"` (`\"never\"` for a oneshot)",
          group="restart"),
    S.Key("pids_max", _integer(0, 4194304), "The service cgroup's `pids.max` (0: no limit): "
          "a fork bomb stops at this many tasks. Needs cgroup v2 with the pids controller; "
          "where the host binds it to cgroup v1, a warning is logged and the bound is the "
          "kill of the whole cgroup on stop.", group="restart"),
    S.Key("oom_score_adj", _integer(-1000, 1000), "The OOM score adjustment of the "
          "service's processes, as systemd's `OOMScoreAdjust=`: higher is killed sooner when "
          "the machine runs out of memory, -1000 never. Set in the new process before its "
          "exec, before its user is switched; its children inherit it. A value the host "
          "refuses (below the restarter's, without CAP_SYS_RESOURCE) leaves the service at "
          "the restarter's value, with one warning: it still starts.",
          shown="`0`", group="restart"),
    S.Key("memory_max", _SIZE, "The service cgroup's `memory.max` (`\"infinity\"` or 0: no "
          "limit), as systemd's `MemoryMax=`: a leak stops at this size, the kernel's OOM "
          "killer ends the service inside its own cgroup, and its exit says `out of memory` "
          "(the restart policy then applies). Needs cgroup v2 with the memory controller; "
          "without it a warning is logged.", shown="no limit", group="restart"),
    S.Key("success_exit", S.ListOf(_integer(0, 255), min_items=1), "Exit codes (0 to "
          "255) that count as a clean exit, for `restart` and for a oneshot being `done`; "
          "at least one.", group="restart"),
    S.Key("backoff", BACKOFF, "The delay before each restart.", shown="see below",
          group="restart"),
    S.Key("intensity", INTENSITY, "Restart intensity: at most `max_restarts` restarts "
          "within `window` seconds.", shown="see below", group="restart"),
    # Dependencies
    S.Key("requires", _DEPS, "Start only once these are ready (or `done`); when one of "
          "them goes down, this one is stopped and started again after it (see "
          "`restart_dependents`).", group="deps"),
    S.Key("wants", _DEPS, "Start after these are ready, unless they are down, failed or in "
          "maintenance: then start anyway.", group="deps"),
    S.Key("after", _DEPS, "Ordering only: when both are to start, wait for these to be "
          "ready first.", group="deps"),
    S.Key("conflicts", _DEPS, "Starting this service stops these (and the reverse). A "
          "service cannot both require and conflict with another.", group="deps"),
    S.Key("on_failure", _DEPS, "Services started when this one fails for good: it enters "
          "`failed` (its restart policy gave up) or `maintenance` (its restart intensity "
          "was exceeded), not when it is stopped by hand or restarted (systemd's "
          "`OnFailure=`): a notifier, or a degraded mode that takes over. Each is started "
          "as `hachain start` would, unless it is up already; give it `enabled = false` "
          "when it should not run at boot. That start is told what failed, as systemd "
          "tells its `OnFailure=` units: `MONITOR_SERVICE` (the name), "
          "`MONITOR_SERVICE_RESULT`, `MONITOR_EXIT_CODE`, `MONITOR_EXIT_STATUS`.",
          group="deps"),
    S.Key("tty_path", S.PathText(nonempty=True), "A terminal (`/dev/ttyS0`, `/dev/tty1`) "
          "the service gets as its stdin, stdout and stderr and as the controlling "
          "terminal of a session of its own (systemd's `TTYPath=` with "
          "`StandardInput=tty`): a getty on a serial console, supervised and restarted "
          "like any service. Its output goes to the terminal, not to its log.",
          shown="unset", group="run"),
    S.Key("tty_reset", S.Bool(), "`true`: the terminal's settings are made sane before "
          "the service gets it (systemd's `TTYReset=`).", group="run"),
    S.Key("tty_vhangup", S.Bool(), "`true`: the terminal is hung up first, so what still "
          "had it open from an earlier session loses it (systemd's `TTYVHangup=`).",
          group="run"),
    S.Key("send_sighup", S.Bool(), "`true`: SIGHUP right after the stop signal, to the same "
          "processes (systemd's `SendSIGHUP=`): for a shell or a terminal session, which "
          "ends on a hang-up.", group="stop"),
    S.Key("requires_mounts_for", S.ListOf(S.PathText(nonempty=True), one_ok=True,
                                          max_items=64),
          "Paths whose file systems must be mounted before each start (systemd's "
          "`RequiresMountsFor=`): each mount point `/etc/fstab` names at or above one of "
          "them must be in `/proc/self/mountinfo`. One that is not holds the start back: "
          "it is tried again after `backoff.initial` (0.5 s at least), not counted "
          "against `intensity`, and the reason names the mount point (`requires_mounts_for "
          "/data/db: /data (/etc/fstab) is not mounted; waiting for it`). So a database "
          "whose data partition failed to mount waits for it instead of writing into the "
          "directory under it on the root file system. A path under no fstab entry needs "
          "nothing.", shown="`[]`", group="deps"),
    S.Key("restart_dependents", S.Bool(), "`false`: keep running when something this "
          "service `requires` goes down.", group="deps"),
    # Readiness
    S.Key("ready", S.Choice(READY_KINDS), "`\"none\"`: ready once spawned. `\"notify\"`: "
          "the service sends `READY=1` on `$NOTIFY_SOCKET` (systemd's sd_notify protocol; "
          "`STATUS=` is shown by `hachain status`). `\"fd\"`: the service writes a line to "
          "file descriptor `ready_fd` and closes it (s6's notification-fd). `\"exec\"`: "
          "`ready_command` exits 0. `\"tcp\"`: `ready_port` accepts a connection on "
          "localhost.", group="ready"),
    S.Key("ready_fd", _integer(3, 1023), "The descriptor for `ready = \"fd\"`.",
          group="ready"),
    S.Key("ready_command", S.Argv(), "The check for `ready = \"exec\"` (an argv list, "
          "required then), run as the service runs (as `health.command`).", group="ready"),
    S.Key("ready_port", _integer(0, 65535), "The port for `ready = \"tcp\"` (required "
          "then).", group="ready"),
    S.Key("ready_timeout", _timeout(lo_open=True), "Seconds from spawn to ready.",
          group="ready"),
    # Liveness
    S.Key("watchdog_sec", _seconds(0), "The service must send `WATCHDOG=1` on the notify "
          "socket at least this often once it is ready (0 = off), as systemd's "
          "`WatchdogSec=`. It gets `NOTIFY_SOCKET` for that whatever its `ready` kind, and "
          "`WATCHDOG_USEC`; only a `ready = \"notify\"` service's `READY=1` says it is "
          "ready. Not for a oneshot.", group="live"),
    S.Key("health", HEALTH, "A periodic health check, a table:", group="live"),
    S.Key("critical", S.Bool(), "`true`: this service being in `maintenance` or `failed` "
          "fails the chain's health gate (with `[watchdog] gate_critical`), so the watchdog "
          "resets the machine.", group="live"),
    S.Key("singleton", S.Bool(), "`true`: runs on at most one node of the cluster, the one "
          "holding its ownership key in etcd; the others show it `standby`. Needs "
          "`[cluster]`; gets `HACHAIN_FENCING_TOKEN` (docs/cluster.md).", group="live"),
    # Stopping and logs
    S.Key("stop_command", S.Argv(string_ok=True), "A command that asks the service to "
          "stop, run at each stop instead of sending `stop_signal` at once (systemd's "
          "`ExecStop=`, such as `[\"/usr/bin/pg_ctlcluster\", \"15\", \"main\", "
          "\"stop\", \"-m\", \"fast\"]`). It runs as the service does (user, "
          "environment, cwd, limits, cgroup) with `MAINPID` set to the main process, its "
          "output on the service's log. Once it has exited, what is left of the service "
          "gets `stop_signal`; `stop_timeout` bounds the two together, then SIGKILL. With "
          "`shell = true`, a string is a `/bin/sh` line. Not run when the service is "
          "killed at once (`stop_timeout = 0`). For a oneshot it is its teardown "
          "(systemd's `ExecStop=` of a unit that remained after its exit): once it is "
          "`done`, `hachain stop NAME` and the chain's shutdown run it after what "
          "requires the oneshot has stopped, and `hachain restart NAME` runs it before "
          "the start again; the oneshot is `stopping` until it exits, within "
          "`stop_timeout`. A oneshot still running is stopped by its signal.",
          shown="`[]`", group="stop"),
    S.Key("stop_signal", _SIGNAL, "The signal that asks the service to stop: a "
          "name (`\"SIGINT\"`, `\"INT\"`) or a number.", shown="`\"SIGTERM\"`",
          group="stop"),
    S.Key("stop_timeout", _timeout(lo_open=False), "Seconds to wait after `stop_signal` "
          "before SIGKILL of the whole cgroup (or process group); 0: SIGKILL right after "
          "the signal (`\"infinity\"` is systemd's `TimeoutStopSec=0` or `infinity`).",
          group="stop"),
    S.Key("kill_mode", S.Choice(KILL_MODES), "Which processes a stop signals, as systemd's "
          "`KillMode=`. `\"cgroup\"`: `stop_signal` to every process of the service, "
          "SIGKILL to all after `stop_timeout`. `\"mixed\"`: `stop_signal` to the main "
          "process only, SIGKILL to all the rest once it has exited (or after "
          "`stop_timeout`). `\"process\"`: only the main process is signalled, SIGKILL "
          "included; what it leaves in its cgroup keeps running, is listed by `hachain "
          "status` (`leftovers`), and never delays or hinders the next start (sshd's "
          "sessions survive its restart).", group="stop"),
    # Reloading
    S.Key("reload_command", S.Argv(string_ok=True), "The command `hachain reload NAME` "
          "runs to make the running service read its configuration again (systemd's "
          "`ExecReload=`, such as `[\"/usr/sbin/nginx\", \"-s\", \"reload\"]`), as the "
          "service runs (user, environment with `MAINPID`, cwd, limits, cgroup), its output "
          "on the service's log. Exit 0 within `reload_timeout`: reloaded; anything else: "
          "the reload failed, and the service goes on as it was. With `shell = true`, a "
          "string is a `/bin/sh` line. A oneshot's runs once it is `done` (systemd's "
          "`RemainAfterExit=`).", shown="`[]`", group="reload"),
    S.Key("reload_signal", _SIGNAL, "Or the signal `hachain reload NAME` sends to the main "
          "process (`\"HUP\"` for most daemons; systemd's `ExecReload=kill -HUP $MAINPID`, "
          "or `ReloadSignal=`). Reloaded once it is sent, or with `reload_notify` once the "
          "service says so.", shown="unset", group="reload"),
    S.Key("reload_notify", S.Bool(), "`true`: a reload is over when the service sends "
          "`RELOADING=1` and then `READY=1` on the notify socket (systemd's "
          "`Type=notify-reload`); needs `ready = \"notify\"`.", group="reload"),
    S.Key("reload_timeout", _timeout(lo_open=True), "Seconds a reload may take; past them "
          "it has failed (a `reload_command` still running is killed, the service is left "
          "running).", group="reload"),
    S.Key("log_max_bytes", _integer(1024, 1 << 40), "stdout and stderr go to "
          "`<log_dir>/NAME.log`, which never grows past this: before a write would, the "
          "file is renamed to `NAME.log.1` (older copies move up to `.2`, `.3`, …) and a new "
          "one started. A service's logs take at most `log_max_bytes × (log_keep + 1)` "
          "([logs](logs.md)).", group="stop"),
    S.Key("log_keep", _integer(0, 100), "How many rotated copies to keep (0: the full file "
          "is removed, no copy).", group="stop"),
)


def _command_list(items: Any, shell: bool, at: S.Path, r: S.Report
                  ) -> tuple[tuple[str, ...], ...] | None:
    """pre_start, post_start, post_stop: argv lists, or /bin/sh lines with shell = true;
    a program written with a leading "-" may fail. None (reported) when one is wrong."""
    out = []
    for i, c in enumerate(items):
        if isinstance(c, str):
            if not shell:
                r.err(at, f"item {i + 1} is a string, {S.show(c)}: write each command as an "
                      "argv list, [[\"/usr/bin/x\", \"--flag\"]] (a string is a /bin/sh "
                      "line only with shell = true)")
                return None
            ign = c.startswith("-")
            c = ("-" if ign else "") + "/bin/sh", "-c", c[1:] if ign else c
        if c[0].startswith("-") and not c[0][1:].strip():
            r.err(at, f"item {i + 1}: the \"-\" prefix must be followed by the program, "
                  f"got {S.show(list(c))}")
            return None
        out.append(tuple(c))
    return tuple(out)


def _build_service(v: dict[str, Any], given: set[str], at: S.Path,
                   r: S.Report) -> ServiceConfig | Any:
    v = dict(v)
    shell, cmd = v.pop("shell"), v["command"]
    if isinstance(cmd, str) and not shell:
        r.err(at + ("command",), "must be an argv list such as [\"/usr/bin/x\", \"--flag\"] "
              "(a string runs through /bin/sh only with shell = true)")
        return S.INVALID
    if shell:
        v["command"] = ("/bin/sh", "-c", cmd if isinstance(cmd, str) else " ".join(cmd))
    for key in ("pre_start", "post_start", "post_stop"):
        if key in v:
            cmds = _command_list(v[key], shell, at + (key,), r)
            if cmds is None:
                return S.INVALID
            v[key] = cmds
    v["assertion"] = v.pop("assert")
    stop = v.get("stop_command", ())
    if isinstance(stop, str):
        if not shell:
            r.err(at + ("stop_command",), "must be an argv list such as [\"/usr/bin/x\", "
                  "\"stop\"] (a string runs through /bin/sh only with shell = true)")
            return S.INVALID
        v["stop_command"] = ("/bin/sh", "-c", stop)
    rel = v.get("reload_command", ())
    if isinstance(rel, str):
        if not shell:
            r.err(at + ("reload_command",), "must be an argv list such as "
                  "[\"/usr/sbin/nginx\", \"-s\", \"reload\"] (a string runs through /bin/sh "
                  "only with shell = true)")
            return S.INVALID
        v["reload_command"] = ("/bin/sh", "-c", rel)
    if v.get("listen") and v.get("pre_start") and v["ready"] == "none" and \
            "ready_fd" not in given:
        # the pipe that says when its command is exec'd after pre_start is the chain's
        # own: it goes above the listen sockets, not on 3, the first of them
        v["ready_fd"] = listen.FIRST_FD + len(v["listen"])
    if v["kind"] == "oneshot" and "restart" not in given:
        v["restart"] = "never"
    return ServiceConfig(name=at[-1], **v)


NR_OPEN_MAX = 2147483584  # the highest fs.nr_open Linux allows; nofile may not exceed it


def _service_checks(s: ServiceConfig, at: S.Path, r: S.Report) -> None:
    for name, soft, hard in s.rlimits:
        if name == "nofile" and (soft == -1 or hard == -1 or hard > NR_OPEN_MAX):
            r.err(at + ("rlimits", "nofile"), f"cannot be unlimited (-1) or above "
                  f"{NR_OPEN_MAX}: Linux caps open files at fs.nr_open, got "
                  f"{S.show([soft, hard])}")
    if s.ready == "exec" and not s.ready_command:
        r.err(at + ("ready_command",), "is required when ready = \"exec\"", [at + ("ready",)])
    if s.private_network and (s.ready == "tcp" or (s.health and s.health.kind == "tcp")):
        key = "ready" if s.ready == "tcp" else "health"
        r.err(at + (key,), "a tcp check connects from the host's network, which cannot "
              "reach the loopback of a service with private_network = true: use "
              "ready = \"notify\" or an exec check", [at + ("private_network",)])
    if s.ready == "tcp" and not s.ready_port:
        r.err(at + ("ready_port",), "is required when ready = \"tcp\"", [at + ("ready",)])
    if s.watchdog_sec and s.kind == "oneshot":
        r.err(at + ("watchdog_sec",), "a oneshot is never ready, so its watchdog would "
              "never run: use ready_timeout to bound it", [at + ("kind",)])
    if s.reload_command and s.reload_signal is not None:
        r.err(at + ("reload_signal",), "give reload_command or reload_signal, not both (a "
              "command that signals reads $MAINPID)", [at + ("reload_command",)])
    if s.reload_notify and s.ready != "notify":
        r.err(at + ("reload_notify",), "needs ready = \"notify\" (RELOADING=1 and READY=1 "
              "arrive on the notify socket)", [at + ("ready",)])
    if s.reload_notify and not s.reload_command and s.reload_signal is None:
        r.err(at + ("reload_notify",), "needs reload_signal or reload_command: what asks "
              "the service to reload")
    realtime = s.cpu_scheduling_policy in ("fifo", "rr")
    if realtime and not s.cpu_scheduling_priority:
        r.err(at + ("cpu_scheduling_priority",), f"is required (1-99) with "
              f"cpu_scheduling_policy = \"{s.cpu_scheduling_policy}\"",
              [at + ("cpu_scheduling_policy",)])
    elif s.cpu_scheduling_priority and not realtime:
        r.err(at + ("cpu_scheduling_priority",), "only a \"fifo\" or \"rr\" "
              "cpu_scheduling_policy has a priority", [at + ("cpu_scheduling_policy",)])
    if s.kind == "oneshot" and (s.post_start or s.post_stop):
        key = "post_start" if s.post_start else "post_stop"
        r.err(at + (key,), "a oneshot's commands already run in turn: put the ones after it "
              "in its sequence (pre_start, then command), or a teardown in stop_command",
              [at + ("kind",)])
    if s.kind == "oneshot" and s.reload_signal is not None:
        r.err(at + ("reload_signal",), "a oneshot has no running process to signal (its "
              "reload_command runs once it is done)", [at + ("kind",)])
    if s.kind == "oneshot" and s.restart == "always":
        r.err(at + ("restart",), "a oneshot cannot use restart = \"always\" (it would never "
              "be done); use \"on-failure\" or \"never\"")
    if s.pre_start and s.ready_fd > 9 and s.ready_pipe:
        r.err(at + ("ready_fd",), f"must be at most 9 with pre_start (/bin/sh, which runs "
              f"them, redirects descriptors 0-9 only), got {s.ready_fd}", [at + ("pre_start",)])
    if s.capability_bounding_set is not None and \
            (out := sorted(set(s.capabilities) - set(s.capability_bounding_set))):
        r.err(at + ("capabilities",), f"{', '.join(out)} not in capability_bounding_set: "
              "the service could never have it", [at + ("capability_bounding_set",)])
    if s.capabilities and s.user is None:
        r.err(at + ("capabilities",), "needs user: a service that runs as root has every "
              "capability already")
    if s.system_call_error_number and not s.system_call_filter:
        r.err(at + ("system_call_error_number",), "has no effect without "
              "system_call_filter", [at + ("system_call_filter",)])
    fams = s.restrict_address_families
    if "none" in fams and len(fams) > 1:
        r.err(at + ("restrict_address_families",), "\"none\" stands alone (no family at "
              f"all), got {S.show(list(fams))}")
    elif len({f.startswith("~") for f in fams}) > 1:
        r.err(at + ("restrict_address_families",), "give the families it may use, or "
              "(each with ~) those it may not, not both")
    if s.listen and s.ready_pipe and \
            listen.FIRST_FD <= s.ready_fd < listen.FIRST_FD + len(s.listen):
        r.err(at + ("ready_fd",), f"{s.ready_fd} is one of the listen sockets' descriptors "
              f"({listen.FIRST_FD}-{listen.FIRST_FD + len(s.listen) - 1}): give it "
              f"{listen.FIRST_FD + len(s.listen)} or more", [at + ("listen",)])
    held = {int(x.rpartition(":")[2]) for x in s.listen if x.startswith("tcp:")}
    for key, port in (("ready_port", s.ready_port if s.ready == "tcp" else None),
                      ("health", s.health.port if s.health and s.health.kind == "tcp"
                       else None)):
        if port is not None and port in held:
            r.err(at + (key,), f"a tcp check of port {port}, which listen holds open, "
                  "always connects (the kernel queues the connection whether the service "
                  "runs or not): use ready = \"notify\" or an exec check that asks it "
                  "something", [at + ("listen",)])
    if len(set(s.listen)) != len(s.listen):
        r.err(at + ("listen",), "names a socket twice: "
              + ", ".join(sorted({x for x in s.listen if s.listen.count(x) > 1})))
    if s.remove_ipc and s.user in (None, "root") and s.group in (None, "root"):
        r.err(at + ("remove_ipc",), "needs user or group, other than root: root's IPC "
              "objects are the system's", [at + ("user",)])
    if s.fd_store_preserve and not s.fd_store_max:
        r.err(at + ("fd_store_preserve",), "keeps stored descriptors, and fd_store_max "
              "(0) lets the service store none", [at + ("fd_store_max",)])
    if (s.socket_user or s.socket_group or s.socket_mode != 0o666) and \
            not any(x.startswith("unix") and ":/" in x for x in s.listen):
        key = "socket_user" if s.socket_user else \
            "socket_group" if s.socket_group else "socket_mode"
        r.err(at + (key,), "applies to a listen unix socket's file, and listen has none")
    if s.pid_file is not None and s.kind != "forking":
        r.err(at + ("pid_file",), f"only with kind = \"forking\" (kind is {s.kind!r})")
    if s.kind == "forking" and s.ready != "none":
        r.err(at + ("ready",), "a forking service is ready when its launcher exits 0 (and its "
              "main pid is known): leave ready unset", [at + ("kind",)])


SERVICE = S.Table(ServiceConfig, SERVICE_KEYS, build=_build_service,
                  checks=(_service_checks,))


def _chain_checks(c: ChainConfig, at: S.Path, r: S.Report) -> None:
    too_long = socket_path_problem(c.state_dir)
    if too_long:
        r.err(at + ("state_dir",), too_long)


BOOT_LOOP = S.Table(BootLoop, (
    S.Key("resets", _integer(1, 1000), "Consecutive boots that ended in an unclean reset "
          "(anything but an orderly shutdown; a reset nobody explained counts)."),
    S.Key("window", _seconds(0, lo_open=True), "Seconds: the oldest of those boots "
          "started at most this long before this boot (a clock that went backwards counts "
          "as inside)."),
    S.Key("action", S.Choice(BOOT_LOOP_ACTIONS), "What a boot-loop boot does. "
          "`\"rescue\"`: the critical services that failed the gate in those boots are held "
          "in maintenance and do not gate the watchdog; everything else starts and the "
          "layers still gate it. `\"disarm\"`: everything starts as configured and the "
          "tickler disarms the watchdog (magic close) so the box stays up for an operator. "
          "`\"ignore\"`: recorded only. `hachain clear --boot-loop` leaves it (see "
          "operations.md, \"reading a reset record\")."),
))


CHAIN = S.Table(ChainConfig, (
    S.Key("state_dir", S.PathText(nonempty=True), "Runtime directory: the control socket, "
          "the layers' heartbeats (`hb/`), the restarter's per-service runtime records. "
          "Meant for a tmpfs that a reboot wipes. Absolute path."),
    S.Key("persist_dir", S.PathText(nonempty=True), "Persistent directory: services "
          "stopped by hand or in maintenance (`admin.json`), the tickler's `gate.json` and "
          "`last_boot.json`, the boot record `boot_record.json`, and by default the service "
          "logs. Must survive reboots. Absolute path."),
    S.Key("cgroup_root", S.PathText(nonempty=True, special=("auto", "none")),
          "Where each service gets its own cgroup v2 directory. `\"auto\"`: `<cgroup2 "
          "mount>/hachain-<state_dir name>-<8 hex digits of its path>` when it is writable, "
          "else none; so two chains never share a cgroup. A chain takes its cgroup root for "
          "as long as its restarter runs (a lock on the directory) and refuses one that "
          "another running chain holds. `\"none\"`: no cgroups; each service gets its own "
          "process group instead. Or an absolute path to a cgroup2 directory (for example "
          "one delegated by systemd). A path that is not in a cgroup v2 file system (a "
          "tmpfs, `/sys/fs/cgroup` of a hybrid host, a v1 hierarchy) is not used: the "
          "restarter says so in one line and runs without cgroups, as with `\"none\"`, "
          "making nothing there."),
    S.Key("heartbeat_interval", _seconds(0.05, 60), "How often each layer writes its "
          "heartbeat, from inside its event loop. Less than `[watchdog] heartbeat_timeout`, "
          "and best well below it."),
    S.Key("restart_delay", _seconds(0, 3600), "The longest init waits before it restarts "
          "the restarter or the tickler after it exits. The first exit after 10 s or more of "
          "running is restarted at once; exits in quick succession wait 0.1 s, 0.2 s, "
          "0.4 s, ... up to `restart_delay`, and init never gives up. Keep `restart_delay` "
          "plus the tickler's start-up time below `[watchdog] timeout`."),
    S.Key("restarter_nice", _integer(-20, 0), "The restarter's nice value. Below 0 it "
          "gets more of a busy CPU than ordinary work, so control requests (`hachain "
          "status` included) and its heartbeat do not wait behind other jobs during a "
          "crash storm; the services it starts run at 0 all the same "
          "(SCHED_RESET_ON_FORK). 0 leaves it as started. Needs root or CAP_SYS_NICE; "
          "without them the restarter logs one warning and runs at 0."),
    S.Key("oom_score_adj", _integer(-1000, 1000), "The OOM score adjustment of the chain's "
          "own processes (init, the restarter, the tickler, the logger, the cluster layer): "
          "when the machine runs out of memory, the kernel's OOM killer takes a service "
          "first, not the layers that bring it back (-1000 would exempt them; the default "
          "leaves a last resort against a layer that leaks). Each service runs at its own "
          "`oom_score_adj`, 0 unless set. Lowering it needs root (CAP_SYS_RESOURCE); "
          "without, each layer logs one warning and keeps what it inherited."),
    S.Key("restarter_standby", S.Bool(), "`true`: the restarter process init starts "
          "stays behind as a standby of the restarter it forks, and forks the replacement "
          "the moment that one dies: a service killed with the restarter is back in tens "
          "of milliseconds instead of after a new interpreter's start (docs/restarter.md, "
          "\"The standby\"). It costs about 5 MB of memory (PSS). `false`: init starts the "
          "restarter itself, as before. Read when the chain starts (`hachain run`)."),
    S.Key("log_dir", S.PathText(special=("",)), "Directory of the service logs, "
          "`<log_dir>/<NAME>.log`. Empty means `<persist_dir>/log`."),
    S.Key("log_format", S.Choice(("human", "json")), "The chain's own log lines: "
          "`\"human\"` or `\"json\"`."),
    S.Key("control_group", S.Text(pattern=f"(?:{_UNIX_NAME.pattern})?",
                                  what="empty or a group name"),
          "A group whose members may use the control socket (`hachain status`, `start`, "
          "`stop`, `restart`, `clear`, `kill`) besides root and the chain's own user. Empty: only "
          "those two. An unknown group name leaves the socket to root and the chain's "
          "user."),
    S.Key("boot_loop", BOOT_LOOP, "The reboot-loop breaker, a table: when the last "
          "`resets` boots all ended in an unclean reset within `window` seconds, this boot "
          "is a boot-loop boot and `action` says what it does.", shown="see below"),
), checks=(_chain_checks,))


def _watchdog_checks(w: WatchdogConfig, at: S.Path, r: S.Report) -> None:
    if w.pet_interval >= w.timeout:
        r.err(at + ("pet_interval",), f"must be < watchdog.timeout ({w.timeout}), got "
              f"{S.fmt(w.pet_interval)}", [at + ("timeout",)])
    if w.pretimeout and w.pretimeout >= w.timeout:
        r.err(at + ("pretimeout",), f"must be < watchdog.timeout ({w.timeout}), got "
              f"{w.pretimeout}", [at + ("timeout",)])


WATCHDOG = S.Table(WatchdogConfig, (
    S.Key("device", _DEVICE, "`\"auto\"`: the first watchdog device found. A path "
          "such as `\"/dev/watchdog0\"`. `\"sim\"`: the software simulator (socket from "
          "`$HACHAIN_SIM_WATCHDOG`); `\"sim:/path/to/socket\"` names the socket. `\"none\"`: "
          "no device; the gate is still evaluated and published."),
    S.Key("timeout", _integer(1, 3600), "Seconds without a pet after which the device "
          "resets the machine. Drivers round; the tickler logs what was applied."),
    S.Key("pretimeout", _integer(0, 3600), "Seconds before the reset at which the driver "
          "raises its pretimeout interrupt (if it has one); 0 is off. Less than `timeout`."),
    S.Key("pet_interval", _seconds(0.05, 3600), "How often the tickler pets while the gate "
          "passes. Less than `timeout`."),
    S.Key("nowayout", S.Bool(), "`true`: never disarm the device, not even on an orderly "
          "stop (no magic close), so a shutdown that hangs still ends in a reset."),
    S.Key("heartbeat_timeout", _seconds(0.1, 3600), "A layer whose process is alive but "
          "whose heartbeat is older than this is hung: the gate fails."),
    S.Key("restart_grace", _seconds(0, 3600), "A layer whose process is dead may go this "
          "long (from its last heartbeat, or from the tickler's start when it never wrote "
          "one) without a new heartbeat while init restarts it."),
    S.Key("max_loop_lag", _seconds(0.01, 3600), "The restarter publishes the worst lag of "
          "its event loop (its longest round, a late heartbeat); more than this fails the "
          "gate once the restarter has also made no progress for `heartbeat_timeout` "
          "(busy is not hung: docs/tickler.md)."),
    S.Key("gate_critical", S.Bool(), "A service with `critical = true` that is in "
          "`maintenance` or `failed` fails the gate. `false`: critical services are not "
          "part of the gate."),
    S.Key("max_restart_rate", S.Number(0, 1_000_000, lo_open=True), "Automatic restarts "
          "per second, averaged over the last 10 s, above which the restarter is in an "
          "unbounded restart storm: the gate fails. Per-service `intensity` limits keep "
          "ordinary crash loops far below this."),
    S.Key("tickler_deaths", _integer(0, 1000), "init stops restarting the tickler after "
          "it died this many times in a row, each within `tickler_min_run` seconds of its "
          "start, and left the device armed (a death by a signal, or an error after the "
          "open: its close pets the device once, so restarting it for ever would keep the "
          "machine up unsupervised). The watchdog then resets the machine. Exits before "
          "the open (no device yet, busy, a bad configuration) do not count. 0: restart "
          "it for ever. Ignored with `device = \"none\"` (nothing to expire: restarted for "
          "ever)."),
    S.Key("tickler_min_run", _seconds(0.1, 3600), "A tickler that ran this long before "
          "it died starts the count of `tickler_deaths` again."),
), checks=(_watchdog_checks,))


_HOST_PORT = S.Text(nonempty=True,
                    pattern=r"[A-Za-z0-9_.-]+:[0-9]{1,5}|\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}",
                    what="host:port, such as \"10.0.0.1:2379\"")


def _endpoint(v: Any) -> str:
    s: str = _HOST_PORT.one(v)
    if not 1 <= int(s.rsplit(":", 1)[1]) <= 65535:
        raise S.Bad("must have a port from 1 to 65535")
    return s


_ENDPOINT = S.Custom(_endpoint, examples=("127.0.0.1:2379", "etcd-1:2379", "[::1]:2379"))

CLUSTER = S.Table(ClusterConfig, (
    S.Key("endpoints", S.ListOf(_ENDPOINT, one_ok=True, max_items=64), "The etcd members' "
          "client addresses, `host:port` (a list; tried in turn)."),
    S.Key("node", _SERVICE_NAME, "This node's name, unique in the cluster: the value of "
          "the ownership keys it holds."),
    S.Key("lease_ttl", _integer(2, 3600), "Seconds: the TTL of the node's etcd lease. The "
          "node stops its singletons, and stops petting if it cannot, at half the TTL "
          "after its last acknowledged renewal; at least 10/3 x (`margin` + the largest "
          "singleton `stop_timeout` + 2 x `[chain] heartbeat_interval`)."),
    S.Key("prefix", S.Text(nonempty=True, pattern=r"/[\x21-\x7e]*", what="a key prefix "
          "starting with '/', printable ASCII without spaces"), "Every etcd key of this "
          "cluster starts with it."),
    S.Key("margin", _seconds(0, 60), "Seconds added to the watchdog timeout in the timing "
          "rule, for the drift between two nodes' monotonic clocks and the tickler's last "
          "tick: a new owner waits max(0, `[watchdog] timeout` + margin - lease_ttl / 2) "
          "after the old lease expired."),
), checks=(lambda c, at, r: r.err(at + ("endpoints",), "must name at least one etcd "
                                  "member, got []") if not c.endpoints else None,))


def _cluster_checks(top: _File, r: S.Report) -> None:
    singletons = [s for s in top.service.values() if s.singleton]
    if top.cluster is None:
        for s in singletons:
            r.err(("service", s.name, "singleton"), "needs a [cluster] table (etcd "
                  "endpoints and this node's name)")
        return
    from hachain.cluster import timing
    stop = max((s.stop_timeout for s in singletons), default=0.0)
    if stop == math.inf:
        name = next(s.name for s in singletons if s.stop_timeout == math.inf)
        r.err(("service", name, "stop_timeout"), "a singleton needs a finite stop_timeout "
              "(it must be down before its node fences itself), got \"infinity\"")
        return
    for key, rule in timing.problems(top.cluster.lease_ttl, top.cluster.margin, stop,
                                     top.chain.heartbeat_interval, bool(singletons),
                                     top.watchdog.device != "none"):
        r.err(tuple(key.split(".")), rule, [("cluster",)])


def _cycle(deps: dict[str, list[str]]) -> list[str]:
    """One dependency cycle, each name followed by one it depends on, starting at the
    least name; [] when there is none. (stdlib graphlib: config needs no restarter code.)"""
    try:
        graphlib.TopologicalSorter(deps).prepare()
    except graphlib.CycleError as e:
        ring = list(reversed(e.args[1][1:]))  # graphlib lists dependency before dependent
        i = ring.index(min(ring))
        return ring[i:] + ring[:i]
    return []


def _listen_clashes(services: dict[str, ServiceConfig], r: S.Report) -> None:
    """Two services that `listen` on one address (a port on every address clashes with
    the same port on one) would each keep the other's start failing, unless they
    conflict and so never run together."""
    for name, spec, other, other_spec in listen.clashes(
            [(s.name, s.listen, frozenset(s.conflicts)) for s in services.values()]):
        r.err(("service", name, "listen"), f"{S.show(spec)} is taken by service {other} "
              f"({S.show(other_spec)}): the second to start could never bind it")


def _graph_checks(top: _File, at: S.Path, r: S.Report) -> None:
    _cluster_checks(top, r)
    services = top.service
    for s in services.values():
        for rel in ("requires", "wants", "after", "conflicts", "on_failure"):
            for dep in getattr(s, rel):
                if dep not in services:
                    near = closest(dep, services)
                    r.err(("service", s.name, rel), f"unknown service {S.show(dep)}"
                          + (f' (did you mean "{near}"?)' if near else ""))
                elif dep == s.name:
                    r.err(("service", s.name, rel), "a service cannot name itself")
        for dep in s.conflicts:
            if dep in s.requires:
                r.err(("service", s.name, "conflicts"), f"{S.show(dep)} is both required "
                      "and conflicting")
    _listen_clashes(services, r)
    cycle = _cycle({n: [d for d in s.deps if d in services and d != n]
                    for n, s in services.items()})
    if cycle:
        r.err(("service", cycle[0]), "dependency cycle: " + " -> ".join(cycle + [cycle[0]]))
    if top.chain.heartbeat_interval >= top.watchdog.heartbeat_timeout:
        r.err(("chain", "heartbeat_interval"), "must be < watchdog.heartbeat_timeout "
              f"({S.fmt(top.watchdog.heartbeat_timeout)}), got "
              f"{S.fmt(top.chain.heartbeat_interval)}: every heartbeat would look stale",
              [("watchdog", "heartbeat_timeout")])


# --- [check.NAME]: machine checks (hachain/checks.py, docs/checks.md) ----------------------

# What each kind needs, and the keys only it takes (a key of another kind is a mistake)
_CHECK_NEEDS: dict[str, tuple[str, ...]] = {
    "command": ("command",), "load": ("max_load",), "memory": ("min_available",),
    "temperature": ("path", "max_temperature"), "file": ("path", "max_age"),
    "pidfile": ("path",), "interface": ("interface",), "ping": ("host",)}
_CHECK_OWN = {"command": {"command"}, "load": {"max_load", "average"},
              "memory": {"min_available"}, "temperature": {"path", "max_temperature"},
              "file": {"path", "max_age"}, "pidfile": {"path"},
              "interface": {"interface"}, "ping": {"host"}}
_KIND_KEYS = set().union(*_CHECK_OWN.values())


def _ip_address(v: Any) -> str:
    import ipaddress
    s: str = S.Text(nonempty=True).one(v)
    try:
        ipaddress.ip_address(s)
    except ValueError:
        raise S.Bad("must be an IPv4 or IPv6 address (a name would need the resolver, "
                    "which may hang with the network)") from None
    return s


def _average(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool) and v in LOAD_AVERAGES:
        return v
    raise S.Bad("must be 1, 5 or 15 (minutes)")


def _build_check(v: dict[str, Any], given: set[str], at: S.Path,
                 r: S.Report) -> CheckConfig | Any:
    kind = v["kind"]
    for key in _CHECK_NEEDS[kind]:
        if key not in given:
            r.err(at + (key,), f"is required when kind = \"{kind}\"", [at + ("kind",)])
    for key in sorted((given & _KIND_KEYS) - _CHECK_OWN[kind]):
        owner = next(k for k, keys in _CHECK_OWN.items() if key in keys)
        r.err(at + (key,), f"is for kind = \"{owner}\", not \"{kind}\"",
              [at + ("kind",)])
    repair = _command_list(v["repair"], False, at + ("repair",), r)
    if repair is None:
        return S.INVALID
    if "timeout" not in given:  # (the default, 5 s, is no error with a shorter interval)
        v = {**v, "timeout": min(v["timeout"], v["interval"])}
    return CheckConfig(name=str(at[-1]), **{**v, "repair": repair})


def _check_checks(c: CheckConfig, at: S.Path, r: S.Report) -> None:
    if c.timeout > c.interval:
        r.err(at + ("timeout",), f"must be at most interval ({S.fmt(c.interval)}), got "
              f"{S.fmt(c.timeout)}", [at + ("interval",)])


CHECK = S.Table(CheckConfig, (
    S.Key("kind", S.Choice(CHECK_KINDS), "What is tested. `\"command\"`: `command` exits "
          "0 within `timeout`. `\"load\"`: the load average over `average` minutes is at "
          "most `max_load`. `\"memory\"`: MemAvailable (/proc/meminfo) is at least "
          "`min_available`. `\"temperature\"`: the sensor file `path` (millidegrees "
          "Celsius, as /sys/class/hwmon/*/temp*_input and /sys/class/thermal/*/temp) reads "
          "at most `max_temperature`. `\"file\"`: the file `path` changed (its mtime) "
          "within `max_age` seconds. `\"pidfile\"`: `path` holds the pid of a live "
          "process. `\"interface\"`: the bytes `interface` received grew since the last "
          "try. `\"ping\"`: `host` answers an ICMP echo within `timeout`."),
    S.Key("command", S.Argv(), "argv for `kind = \"command\"` (the `watchdog` daemon's "
          "test-binary): run as root with an empty environment but `PATH`, its output "
          "discarded; exit 0 passes, anything else (or no exit within `timeout`) fails."),
    S.Key("path", S.PathText(), "The file of `kind = \"file\"`, `\"pidfile\"` and "
          "`\"temperature\"`."),
    S.Key("max_age", _seconds(0.05), "`kind = \"file\"`: the most seconds since the "
          "file last changed. The first try reads its age from its mtime; after that a "
          "change is timed by the monotonic clock, so a wall clock that steps neither "
          "ages nor freshens it."),
    S.Key("max_load", S.Number(0, 1e6, lo_open=True), "`kind = \"load\"`: the highest "
          "load average that passes."),
    S.Key("average", S.Custom(_average, "One of 1, 5 and 15.", examples=(1, 5, 15)),
          "`kind = \"load\"`: which load average, over 1, 5 or 15 minutes."),
    S.Key("min_available", _SIZE, "`kind = \"memory\"`: the least memory available "
          "for new work (MemAvailable), in bytes or as \"64M\"."),
    S.Key("max_temperature", S.Number(-273, 1000), "`kind = \"temperature\"`: the "
          "highest reading that passes, degrees Celsius."),
    S.Key("interface", S.Text(nonempty=True, pattern=r"[^/\s]{1,15}",
                              what="a network interface name"),
          "`kind = \"interface\"`: its received bytes "
          "(/sys/class/net/NAME/statistics/rx_bytes) must have grown since the last try."),
    S.Key("host", S.Custom(_ip_address, "An IPv4 or IPv6 address, not a name.",
                           examples=("127.0.0.1", "::1", "192.168.1.1")),
          "`kind = \"ping\"`: the address that must answer an ICMP echo within `timeout`."),
    S.Key("interval", _seconds(0.05, 86400), "Seconds between two tries. Tries run on the "
          "restarter's heartbeat grid (`[chain] heartbeat_interval`), so an interval is "
          "rounded up to a multiple of it and a check adds no wake-up of its own."),
    S.Key("timeout", _seconds(0.1, 3600), "A try that has not answered within this long "
          "failed (a command is killed; a read of a hung file system is given up on). "
          "At most `interval` (unset: 5 s, or `interval` when that is shorter)."),
    S.Key("retry_timeout", _seconds(0, 86400), "How long the check may fail before it "
          "counts as failed (every try failing), as the `watchdog` daemon's "
          "retry-timeout; then the next `repair` command runs, or, with none left, the "
          "check has failed for good."),
    S.Key("repair", S.ListOf(S.Argv(), max_items=16), "Commands tried in turn, one each "
          "time the check has failed for `retry_timeout` (the `watchdog` daemon's "
          "repair-binary), each given `repair_timeout`; after each the check has "
          "`retry_timeout` again to pass. A pass starts the list afresh. Each finds the check "
          "and the error number of its failed try in its environment (`HACHAIN_CHECK`, "
          "`HACHAIN_CHECK_ERROR`, ...: docs/checks.md)."),
    S.Key("repair_timeout", _seconds(0.1, 86400), "A repair command that runs longer is "
          "killed."),
    S.Key("action", S.Choice(CHECK_ACTIONS), "What a check failed for good does: "
          "`\"reboot\"` fails the health gate, so the watchdog resets the machine (the "
          "boot record names the check, and the boot-loop breaker counts it); `\"log\"` "
          "only reports it (`hachain status`, the log)."),
), build=_build_check, checks=(_check_checks,))


@dataclass(frozen=True)
class _File:
    """The whole file as the schema sees it; parse() turns it into a Config."""

    chain: ChainConfig = field(default_factory=ChainConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    service: dict[str, ServiceConfig] = field(default_factory=dict)
    cluster: ClusterConfig | None = None
    check: dict[str, CheckConfig] = field(default_factory=dict)


FILE = S.Table(_File, (
    S.Key("chain", CHAIN, "Where the chain keeps its files and how fast its layers beat."),
    S.Key("watchdog", WATCHDOG, "The device and the health gate."),
    S.Key("service", S.MapOf(_SERVICE_NAME, SERVICE, label="a service name"),
          "One table per service."),
    S.Key("cluster", CLUSTER, "Optional: this node's place in a cluster (docs/cluster.md)."),
    S.Key("check", S.MapOf(_SERVICE_NAME, CHECK, label="a check name"),
          "One table per machine check (docs/checks.md)."),
), checks=(_graph_checks,))

# The key names of each table (tests and the importer use them).
_CHAIN_KEYS = set(CHAIN.names)
_WD_KEYS = set(WATCHDOG.names)
_SVC_KEYS = set(SERVICE.names)


MAX_NESTING = 32  # a configuration nests 6 levels at most (service.a.health.command)


def _too_deep(data: Any) -> tuple[str, ...] | None:
    """The key path to the first value nested deeper than MAX_NESTING, or None."""
    stack: list[tuple[Any, tuple[str, ...], int]] = [(data, (), 0)]
    while stack:
        v, at, depth = stack.pop()
        if depth > MAX_NESTING:
            return at
        if isinstance(v, dict):  # the path named: its first 4 keys
            stack += [(x, at + (str(k),) if len(at) < 4 else at, depth + 1)
                      for k, x in v.items()]
        elif isinstance(v, list):
            stack += [(x, at, depth + 1) for x in v]
    return None


def parse(text: str, path: str = "chain.toml") -> Config:
    """Parse and validate TOML text. Raises ConfigError listing every problem."""
    import tomllib  # here: the layers start from the parsed snapshot (snapshot.PARSED)
    r = S.Report(os.path.basename(path), text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+)", str(e))
        where = f"{r.fname}:{m.group(1)}" if m else r.fname
        raise ConfigError([f"{where}: invalid TOML: {str(e).split(' (at line')[0]}"]) from None
    except RecursionError:  # tomllib descends one Python frame per level of [ or {
        raise ConfigError([f"{r.fname}: invalid TOML: arrays or inline tables nested too "
                           "deeply"]) from None
    deep = _too_deep(data)
    if deep is not None:  # the schema walks values by recursion too: refuse before it
        r.err(deep, f"arrays or tables nested more than {MAX_NESTING} levels deep")
        raise ConfigError(r.errors)
    top = FILE.parse(data, (), r)
    if r.errors or top is S.INVALID:
        raise ConfigError(r.errors or [f"{r.fname}: invalid configuration"])
    return Config(path=os.path.abspath(path), chain=top.chain, watchdog=top.watchdog,
                  services=top.service, cluster=top.cluster, checks=top.check)


# --- the reference tables of docs/configuration.md ----------------------------------------

DOC_TABLES: dict[str, list[str]] = {
    "chain": S.doc_rows(CHAIN),
    "watchdog": S.doc_rows(WATCHDOG),
    "cluster": S.doc_rows(CLUSTER),
    "check": S.doc_rows(CHECK),
    **{f"service.{g}": S.doc_rows(SERVICE, group=g)
       for g in ("run", "restart", "deps", "ready", "live", "stop", "reload")},
}
_BEGIN = re.compile(r"^<!-- schema: ([a-z.]+) .*-->$")
_HEAD = ["| key | default | meaning |", "|---|---|---|"]


def render_doc(doc: str) -> str:
    """`doc` with each generated table (between `<!-- schema: NAME ... -->` and the next
    blank line) rewritten from the schema."""
    out: list[str] = []
    lines = iter(doc.splitlines())
    for ln in lines:
        out.append(ln)
        m = _BEGIN.match(ln)
        if m:
            out += _HEAD + DOC_TABLES[m.group(1)]
            for rest in lines:  # skip the old table
                if not rest.strip():
                    out.append(rest)
                    break
    return "\n".join(out) + "\n"


# Environment overrides, set by a parent layer (init, the simulated machine, tests) so one
# configuration file serves every place the chain runs.
ENV_OVERRIDES = channels.CONFIG_OVERRIDES


SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_LONGEST_SOCKET = "/control.sock"


def socket_path_problem(state_dir: str) -> str:
    """Why `state_dir` cannot hold the chain's Unix sockets, or ''."""
    n = len(os.fsencode(state_dir + _LONGEST_SOCKET))
    if n > SUN_PATH_MAX:
        return (f"too long for the chain's Unix sockets ({len(os.fsencode(state_dir))} bytes; "
                f"at most {SUN_PATH_MAX - len(_LONGEST_SOCKET)})")
    return ""


def with_env_overrides(cfg: Config, environ: dict[str, str] | None = None) -> Config:
    """`cfg` with the HACHAIN_* overrides of `environ` (default os.environ) applied; each
    value obeys the rule of the key it overrides."""
    env = os.environ if environ is None else environ
    chain, wd = cfg.chain, cfg.watchdog
    for var, (section, key) in ENV_OVERRIDES.items():
        val = env.get(var)
        if not val:
            continue
        table = CHAIN if section == "chain" else WATCHDOG
        kind = next(k.kind for k in table.keys if k.name == key)
        try:
            val = kind.one(val)
        except S.Bad as e:
            raise ConfigError([f"{var}: {e}, got {S.show(val)}"]) from None
        if section == "chain":
            chain = replace(chain, **{key: val})  # type: ignore[arg-type]
        else:
            wd = replace(wd, **{key: val})  # type: ignore[arg-type]
    problem = socket_path_problem(chain.state_dir)
    if problem:
        raise ConfigError([f"{channels.ENV_STATE_DIR}: {problem}"])
    return replace(cfg, chain=chain, watchdog=wd)


def load(path: str) -> Config:
    """Read and validate a configuration file. ConfigError (one line per problem) on error."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError([f"{S.plain(path)}: cannot read configuration: {e.strerror}"]) \
            from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{S.plain(path)}: not UTF-8 text (byte {e.start})"]) from None
    return parse(text, path)


if __name__ == "__main__":
    # python -m hachain.config docs/configuration.md: regenerate its reference tables.
    for doc_path in sys.argv[1:]:
        with open(doc_path) as f:
            old = f.read()
        new = render_doc(old)
        if new != old:
            with open(doc_path, "w") as f:
                f.write(new)
            print(f"{doc_path}: reference tables rewritten")
