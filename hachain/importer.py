"""`hachain import`: systemd units and supervisord programs → hachain TOML.

(The `watchdog` daemon's watchdog.conf → `[watchdog]` and `[check.NAME]` tables:
hachain/importer_watchdog.py.)

Owns: reading a systemd `.service` file or a supervisord configuration, mapping every
option hachain has a key for, and printing the result as TOML on stdout. Every option it
cannot carry over gets exactly one warning line on stderr that names the file, the line
and the option, so nothing is dropped silently. Must not: start, stop or touch any
service, or write any file; the output is checked with `hachain.config.parse` before the
command reports success.

The conversion is pure (text in, `Conversion` out), so tests feed it strings.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shlex
import signal
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from hachain import cmdline, conditions, config
from hachain.configtypes import CAPABILITIES
from hachain.schema import MAX_ARG

PROG = "hachain import"


def _split(value: str) -> list[str]:
    """shlex.split, for a value no longer than the longest argument execve(2) takes: shlex
    builds a word a character at a time (a 3 MB ExecStart= line took minutes). ValueError
    when the value is longer, as for a value that does not split."""
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > MAX_ARG:
        raise ValueError(f"longer than {MAX_ARG} bytes ({size})")
    return shlex.split(value)

# --- small value parsers --------------------------------------------------------------------

_TIME_UNITS = {
    "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50,
               "e": 1 << 60, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}


def parse_timespan(text: str) -> float | None:
    """systemd time span ("5", "1min 30s", "100ms") in seconds; None for "infinity".

    ValueError when the text is not a time span.
    """
    t = text.strip().lower()
    if t == "infinity":
        return None
    if not t:
        raise ValueError("empty time span")
    total = 0.0
    pos = 0
    for m in re.finditer(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-z]*)", t):
        if m.start() != pos:
            raise ValueError(f"not a time span: {text!r}")
        unit = m.group(2) or "s"
        if unit not in _TIME_UNITS:
            raise ValueError(f"unknown time unit {m.group(2)!r} in {text!r}")
        total += float(m.group(1)) * _TIME_UNITS[unit]
        pos = m.end()
    if pos != len(t):
        raise ValueError(f"not a time span: {text!r}")
    return total


def parse_size(text: str) -> int:
    """A byte count with an optional 1024-based suffix ("64K", "50MB"); ValueError if not."""
    m = re.fullmatch(r"\s*([0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {text!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def signal_name(text: str) -> str | None:
    """"SIGTERM" for "TERM", "sigterm", "15"; None when it names no signal."""
    t = text.strip().upper()
    if t.isdigit():
        try:
            return signal.Signals(int(t)).name
        except ValueError:
            return None
    name = t if t.startswith("SIG") else "SIG" + t
    return name if name in signal.Signals.__members__ else None


# systemd's per-service directories, by the base their names are relative to (system units)
_DIRECTORY_BASES = {"RuntimeDirectory": "/run", "StateDirectory": "/var/lib",
                    "CacheDirectory": "/var/cache", "LogsDirectory": "/var/log"}


def _reload_signal(text: str) -> str | None:
    """The signal of an `ExecReload=` that only signals the main process (`/bin/kill
    -HUP $MAINPID`, `kill -s USR1 ${MAINPID}`, `--signal=HUP`), else None."""
    words = text.lstrip("-@:+!").split()
    if len(words) < 3 or os.path.basename(words[0]) != "kill" or \
            words[-1] not in ("$MAINPID", "${MAINPID}"):
        return None
    opts = words[1:-1]
    if len(opts) == 2 and opts[0] in ("-s", "--signal"):
        return signal_name(opts[1])
    if len(opts) == 1 and opts[0].startswith("--signal="):
        return signal_name(opts[0][len("--signal="):])
    if len(opts) == 1 and opts[0].startswith("-") and not opts[0].startswith("--"):
        return signal_name(opts[0][1:])
    return None


def _umask(text: str) -> str:
    """An octal umask as hachain writes it ("022"); ValueError when out of range."""
    u = int(text, 8)
    if not 0 <= u <= 0o777:
        raise ValueError(f"umask out of range: {text!r}")
    return f"{u:03o}"


def service_name(raw: str) -> str:
    """A valid hachain service name made from a unit or program name."""
    name = re.sub(r"[^A-Za-z0-9_.@-]", "-", raw)[:64]
    if not name or not name[0].isalnum():
        name = "x" + name[:63]
    return name


# --- the result -----------------------------------------------------------------------------

@dataclass
class Conversion:
    """Services as plain TOML-able dicts, plus the warnings and errors of the conversion."""
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    comments: dict[str, list[str]] = field(default_factory=dict)  # printed above each table
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # (service, relation, dependency) → "file:line" of the option that named it
    dep_origin: dict[tuple[str, str, str], str] = field(default_factory=dict)
    # supervisord [include] files = ... of this file: (line, value), followed by import_files
    includes: list[tuple[int, str]] = field(default_factory=list)
    installed: set[str] = field(default_factory=set)  # units with WantedBy= / RequiredBy=
    # tables other than services ("watchdog", "check.NAME"), printed first
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)

    def merge(self, other: Conversion) -> None:
        """Add `other`'s services and messages (a later duplicate name is an error)."""
        for name, svc in other.services.items():
            if name in self.services:
                self.errors.append(f"service {name!r} is defined twice; the second is dropped")
                continue
            self.services[name] = svc
            self.comments[name] = other.comments.get(name, [])
        for key, table in other.tables.items():
            if key in self.tables:
                self.errors.append(f"[{key}] comes from two files; the second is dropped")
                continue
            self.tables[key] = table
            self.comments[key] = other.comments.get(key, [])
        self.warnings += other.warnings
        self.errors += other.errors
        self.dep_origin.update(other.dep_origin)
        self.installed |= other.installed

    def sort_messages(self) -> None:
        """Warnings and errors of one file in line order."""
        def line(msg: str) -> int:
            m = re.match(r".*?:(\d+): ", msg)
            return int(m.group(1)) if m else 0
        self.warnings.sort(key=line)
        self.errors.sort(key=line)


class _Notes:
    """Collects `file:line: option: message` warnings for one input file."""

    def __init__(self, path: str, conv: Conversion) -> None:
        self.path = path
        self.conv = conv

    def warn(self, line: int, option: str, msg: str) -> None:
        self.conv.warnings.append(f"{self.path}:{line}: {option}: {msg}")

    def error(self, line: int, option: str, msg: str) -> None:
        self.conv.errors.append(f"{self.path}:{line}: {option}: {msg}")


# --- INI-ish reading (both formats keep line numbers) ---------------------------------------

@dataclass(frozen=True)
class Entry:
    section: str
    key: str
    value: str
    line: int


def read_unit(text: str) -> list[Entry]:
    """systemd unit syntax: [Section], Key=Value, `#`/`;` comments, `\\` continuations."""
    out: list[Entry] = []
    section = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = i
        ln = lines[i].strip()
        i += 1
        if not ln or ln[0] in "#;":
            continue
        while ln.endswith("\\") and i < len(lines):
            nxt = lines[i].strip()
            i += 1
            if nxt and nxt[0] in "#;":
                continue  # comment lines inside a continuation are skipped
            ln = ln[:-1] + " " + nxt
        if ln.startswith("[") and ln.endswith("]"):
            section = ln[1:-1].strip()
            continue
        key, sep, value = ln.partition("=")
        if sep:
            out.append(Entry(section, key.strip(), value.strip(), start + 1))
    return out


def read_supervisord(text: str) -> list[Entry]:
    """supervisord's INI: `key = value`, `;`/`#` comments, indented continuation lines."""
    out: list[Entry] = []
    section = ""
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip()[0] in ";#":
            continue
        if raw[0] in " \t" and out and out[-1].section == section:
            last = out[-1]
            out[-1] = Entry(last.section, last.key, (last.value + " " + raw.strip()).strip(),
                            last.line)
            continue
        ln = re.sub(r"\s;.*$", "", raw).strip()  # inline comments need a space before ';'
        if ln.startswith("[") and ln.endswith("]"):
            section = ln[1:-1].strip()
            continue
        m = re.match(r"([^=:]+?)\s*[=:]\s*(.*)$", ln)
        if m:
            out.append(Entry(section, m.group(1).strip().lower(), m.group(2).strip(), n))
    return out


def detect_format(text: str) -> str | None:
    """"supervisord", "systemd", "watchdog" or None, from the section headers (a
    watchdog.conf has none, and the daemon's option names)."""
    if re.search(r"^\s*\[program:[^\]]+\]", text, re.MULTILINE):
        return "supervisord"
    if re.search(r"^\s*\[(Service|Unit|Install)\]", text, re.MULTILINE):
        return "systemd"
    from hachain import importer_watchdog
    if importer_watchdog.looks_like(text):
        return "watchdog"
    return None


# --- systemd --------------------------------------------------------------------------------

_RLIMIT_KEYS = {"Limit" + n.upper(): n for n in config.RLIMITS}
_NON_SERVICE_UNITS = (".target", ".socket", ".mount", ".device", ".path", ".timer",
                      ".slice", ".scope", ".swap", ".automount")
_SILENT = {("Unit", "Description"), ("Unit", "Documentation"), ("Install", "WantedBy"),
           ("Install", "RequiredBy"), ("Unit", "DefaultDependencies")}
# BindsTo= is Requires= that also follows the other's unexpected end: hachain's
# `requires` does (restart_dependents, on by default)
_DEP_KEYS = {"Requires": "requires", "BindsTo": "requires", "Wants": "wants",
             "After": "after", "Conflicts": "conflicts", "OnFailure": "on_failure"}


@dataclass
class _Unit:
    """What one unit file says, before it becomes a service table."""
    exec_start: list[Entry] = field(default_factory=list)
    exec_start_pre: list[Entry] = field(default_factory=list)
    exec_stop: list[Entry] = field(default_factory=list)
    exec_start_post: list[Entry] = field(default_factory=list)
    exec_stop_post: list[Entry] = field(default_factory=list)
    type: Entry | None = None
    restart: Entry | None = None
    entries: list[Entry] = field(default_factory=list)


def _exec_argv(e: Entry, n: _Notes, may_fail: bool = False) -> list[str] | None:
    """ExecStart= (ExecStartPre=) → argv: prefixes stripped (with warnings), split the
    way systemd does. `may_fail`: a '-' prefix is kept on argv[0], as pre_start takes it."""
    v, k = e.value, e.key
    prefixes = re.match(r"[-@+!:|]*", v)
    pre = prefixes.group(0) if prefixes else ""
    v = v[len(pre):]
    try:
        argv = _split(v)
    except ValueError as ex:
        n.error(e.line, k, f"cannot split the command line: {ex}")
        return None
    if not argv:
        n.error(e.line, k, "empty command")
        return None
    if "-" in pre and not may_fail:
        n.warn(e.line, k, "'-' prefix (ignore a failing exit status) dropped; "
               "list the exit codes that count as success in success_exit")
    if "@" in pre:
        alias = argv[1] if len(argv) > 1 else ""
        n.warn(e.line, k, f"'@' prefix dropped: argv[0] {alias!r}"
               " is not carried over, the program sees its own path as argv[0]")
        argv = argv[:1] + argv[2:]
    for ch, what in (("+", "full privileges: it runs as the service's user"),
                     ("!", "ambient-capability privileges"),
                     (":", "no variable expansion"), ("|", "login-shell invocation")):
        if ch in pre:
            n.warn(e.line, k, f"'{ch}' prefix ({what}) dropped")
    if any(re.search(r"%[a-zA-Z%]", a) for a in argv):
        n.warn(e.line, k, "%-specifiers are not expanded by hachain; they are "
               "passed literally")
    if "-" in pre and may_fail:
        argv[0] = "-" + argv[0]
    return argv


def _pre_start(entries: list[Entry], n: _Notes) -> list[list[str]]:
    """ExecStartPre= lines → pre_start argv lists (an empty one resets the list, as in
    systemd). A line with $VARIABLE references becomes a /bin/sh line that expands them
    as systemd does (expanding_command), written as an argv list."""
    out: list[list[str]] = []
    for e in entries:
        if not e.value:
            out.clear()
            continue
        argv = _exec_argv(e, n, may_fail=True)
        if argv is None:
            continue
        ign = argv[0].startswith("-")
        plain = [argv[0][1:]] + argv[1:] if ign else argv
        line = expanding_command(plain)
        if line is not None:
            plain = ["/bin/sh", "-c", line]
            n.warn(e.line, e.key, "$VARIABLE references: run through /bin/sh so that they "
                   "expand from env and env_file as systemd expands them")
        out.append(["-" + plain[0]] + plain[1:] if ign else plain)
    return out


def _stop_command(entries: list[Entry], n: _Notes) -> list[str] | None:
    """ExecStop= → stop_command: the first line (a '-' prefix dropped quietly: the stop
    signal follows whatever it exits with), with $VARIABLE references through /bin/sh
    as for ExecStartPre=. A oneshot's is its teardown, as systemd runs the ExecStop= of
    a unit that remained after its exit: at a stop of the done oneshot."""
    if not entries:
        return None
    if len(entries) > 1:
        return _in_turn(entries, n)
    argv = _exec_argv(entries[0], n, may_fail=True)
    if argv is None:
        return None
    argv[0] = argv[0].removeprefix("-")
    line = expanding_command(argv)
    if line is not None:
        n.warn(entries[0].line, "ExecStop", "$VARIABLE references: run through /bin/sh so "
               "that they expand from env and env_file as systemd expands them")
        return ["/bin/sh", "-c", line]
    return argv


DBUS_SEND = "/usr/bin/dbus-send"


def _bus_ready(svc: dict[str, Any], unit_type: Entry | None, bus_name: Entry | None,
               n: _Notes) -> None:
    """Type=dbus (systemd's default for a unit with BusName= and no Type=): ready once
    its name has an owner on the system bus, which `ready = "exec"` asks with
    dbus-send's GetNameOwner (exit 0 only then). BusName= of another type is only a
    name: dropped."""
    t = unit_type.value if unit_type is not None else None
    if t not in (None, "dbus"):
        if bus_name is not None:
            n.warn(bus_name.line, "BusName", f"only read with Type=dbus (this unit is "
                   f"Type={t}); dropped")
        return
    if bus_name is None:
        if t == "dbus":
            n.warn(unit_type.line if unit_type else 1, "Type", "dbus without BusName=: "
                   "treated as simple")
        return
    name = bus_name.value.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)+", name):
        n.warn(bus_name.line, "BusName", f"{name!r} is not a bus name; dropped (treated "
               "as simple)")
        return
    if not os.path.exists(DBUS_SEND):
        n.warn(bus_name.line, "BusName", f"ready when {name} is on the bus needs "
               f"{DBUS_SEND} (Debian: dbus-bin), missing here; treated as simple")
        return
    svc["ready"] = "exec"
    svc["ready_command"] = [DBUS_SEND, "--system", "--print-reply",
                            "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
                            "org.freedesktop.DBus.GetNameOwner", f"string:{name}"]


def _reload(svc: dict[str, Any], unit_type: str, lines: list[Entry],
            sig_entry: Entry | None, n: _Notes) -> None:
    """ExecReload=, ReloadSignal= and Type=notify-reload → the reload keys. One ExecReload=
    that only signals the main process (`kill -HUP $MAINPID`) is `reload_signal`; another
    is `reload_command` (its $VARIABLEs through /bin/sh). notify-reload: ReloadSignal=
    (SIGHUP) then RELOADING=1 and READY=1 (`reload_notify`). A reload's time is systemd's
    TimeoutStartSec=, as it is hachain's ready_timeout."""
    if sig_entry is not None and unit_type != "notify-reload":
        n.warn(sig_entry.line, "ReloadSignal", "only meaningful with Type=notify-reload; "
               "dropped")
    if unit_type == "notify-reload":
        name = "SIGHUP"
        if sig_entry is not None:
            got = signal_name(sig_entry.value)
            if got is None:
                n.warn(sig_entry.line, "ReloadSignal", f"unknown signal "
                       f"{sig_entry.value!r}; using SIGHUP")
            else:
                name = got
        for e in lines:
            n.warn(e.line, "ExecReload", "with Type=notify-reload hachain reloads by "
                   f"reload_signal ({name}) and READY=1 alone; this command is dropped")
        svc["reload_signal"], svc["reload_notify"] = name, True
    elif len(lines) > 1 or lines and lines[0].value.lstrip("@:+!").startswith("-") \
            and _reload_signal(lines[0].value) is None:
        # in turn, stopping at the first failure; '-': one that may fail (systemd's)
        if (cmd := _in_turn(lines, n)) is None:
            return
        svc["reload_command"] = cmd
    elif lines:
        e = lines[0]
        sig = _reload_signal(e.value) if len(lines) == 1 else None
        if sig is not None:
            svc["reload_signal"] = sig
        else:
            argv = _exec_argv(e, n, may_fail=True)
            if argv is None:
                return
            line = expanding_command(argv)
            svc["reload_command"] = ["/bin/sh", "-c", line] if line is not None else argv
    else:
        return
    if "ready_timeout" in svc:
        svc["reload_timeout"] = svc["ready_timeout"]


_WORD_VAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_IN_WORD = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\$")


def _shell_words(argv: list[str]) -> str:
    """argv as /bin/sh words, its variable references expanded as systemd does (see
    expanding_command)."""
    words = []
    for a in argv:
        if _WORD_VAR.fullmatch(a):
            words.append(a)
            continue
        parts, pos = [], 0
        for m in _IN_WORD.finditer(a):
            if m.start() > pos:
                parts.append(shlex.quote(a[pos:m.start()]))
            parts.append(f'"${{{m.group(1)}}}"' if m.group(1) else "'$'")
            pos = m.end()
        if pos < len(a) or not parts:
            parts.append(shlex.quote(a[pos:]))
        words.append("".join(parts))
    return " ".join(words)


def _in_turn(entries: list[Entry], n: _Notes) -> list[str] | None:
    """Several ExecStop= or ExecReload= lines as one command that runs them in turn and
    stops at the first that fails, as systemd does ('-': one that may fail); None when
    none can be read."""
    steps = []
    for e in entries:
        argv = _exec_argv(e, n, may_fail=True)
        if argv is None:
            continue
        may_fail = argv[0].startswith("-")
        argv[0] = argv[0].removeprefix("-")
        steps.append(f"{{ {_shell_words(argv)} || true; }}" if may_fail
                     else _shell_words(argv))
    return ["/bin/sh", "-c", "set -f; " + " && ".join(steps)] if steps else None


def expanding_command(argv: list[str]) -> str | None:
    """ExecStart's argv as one /bin/sh line that expands its variable references the way
    systemd does, or None when it has none: `$NAME` as a whole word is split at blanks
    (unquoted in the shell; `set -f`: no globbing, which systemd does not do either),
    `${NAME}` anywhere is one argument (double-quoted), `$$` is a `$`; everything else
    is quoted as written. `exec`: the shell becomes the program (the main pid)."""
    if not any(_WORD_VAR.fullmatch(a) or _IN_WORD.search(a) for a in argv):
        return None
    return "set -f; exec " + _shell_words(argv)


def _systemd_env(e: Entry, env: dict[str, str], n: _Notes) -> None:
    """One Environment= line into `env` (an empty assignment clears it, as in systemd)."""
    if not e.value:
        env.clear()
        return
    try:
        words = _split(e.value)
    except ValueError as ex:
        n.warn(e.line, "Environment", f"cannot parse {e.value!r} ({ex}); dropped")
        return
    for w in words:
        k, sep, v = w.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            n.warn(e.line, "Environment", f"{w!r} is not NAME=VALUE; dropped")
            continue
        env[k] = v


def _rlimit(e: Entry, n: _Notes) -> Any:
    """LimitX=soft[:hard] → an int or [soft, hard] (-1 = unlimited); None when unusable."""
    def one(text: str) -> int:
        t = text.strip().lower()
        if t == "infinity":
            return -1
        if e.key == "LimitCPU" and re.search(r"[a-z]", t):
            span = parse_timespan(t)
            return -1 if span is None else int(span)
        return parse_size(t)
    try:
        parts = [one(p) for p in e.value.split(":")]
    except ValueError as ex:
        n.warn(e.line, e.key, f"{ex}; dropped")
        return None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts
    n.warn(e.line, e.key, f"expected SOFT[:HARD], got {e.value!r}; dropped")
    return None


def _deps(e: Entry, n: _Notes, own: frozenset[str] = frozenset()) -> list[str]:
    """Requires= and friends → hachain service names; non-service units are dropped (the
    service's `own` socket units silently: their sockets become its `listen`)."""
    out = []
    for word in e.value.split():
        if word in own:
            continue
        if word.endswith(_NON_SERVICE_UNITS):
            n.warn(e.line, e.key, f"{word}: only services can be dependencies in hachain; "
                   "dropped")
            continue
        out.append(service_name(word.removesuffix(".service")))
    return out


def _unescape(text: str) -> str:
    """systemd's unit name unescaping: `-` is `/`, `\\xNN` the byte NN."""
    out = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)),
                 text.replace("-", "/"))
    return out


def specifiers(unit: str) -> dict[str, str]:
    """What systemd's %-specifiers mean for the system unit `unit` ("getty@tty1.service"),
    those that do not depend on the machine it runs on (%H, %m, %b, ... are left, and
    warned about where they stay). %d, the credentials' directory, is a reference to
    $CREDENTIALS_DIRECTORY (a command with it then runs through /bin/sh)."""
    stem = unit.removesuffix(".service")
    prefix, at, instance = stem.partition("@")
    out = {"n": unit, "N": stem, "p": prefix, "P": _unescape(prefix),
           "j": prefix.rsplit("-", 1)[-1], "J": _unescape(prefix.rsplit("-", 1)[-1]),
           "t": "/run", "S": "/var/lib", "C": "/var/cache", "L": "/var/log", "E": "/etc",
           "T": "/tmp", "V": "/var/tmp", "h": "/root", "u": "root", "U": "0", "g": "root",
           "G": "0", "s": "/bin/sh", "d": "${CREDENTIALS_DIRECTORY}", "%": "%"}
    if at and instance:
        out.update(i=instance, I=_unescape(instance), f="/" + _unescape(instance))
    elif not at:
        out["f"] = "/" + _unescape(prefix)
    return out


def _expand_specifiers(value: str, known: dict[str, str]) -> str:
    """`value` with each %X in `known` replaced (others left as they are)."""
    if "%" not in value:
        return value
    return re.sub(r"%(.)", lambda m: known.get(m.group(1), m.group(0)), value)


def convert_systemd(text: str, path: str, name: str | None = None,
                    sockets: tuple[str, ...] = ()) -> Conversion:
    """One unit file → one service. `name`: the unit's name when not the file's (an
    instance of the template `path`: "getty@tty1.service")."""
    conv = Conversion()
    n = _Notes(path, conv)
    base = os.path.basename(path)
    if base.endswith(_NON_SERVICE_UNITS):
        n.error(1, "unit type", f"a {base.rsplit('.', 1)[1]} unit: hachain imports services "
                "(.service units) only")
        return conv
    unit = name or base
    svc_name = service_name(unit.removesuffix(".service") or "service")
    if svc_name.endswith("@"):
        n.warn(1, "unit name", f"{base} is a template; import an instance of it by its "
               f"name (`hachain import {os.path.join(os.path.dirname(path), svc_name)}"
               "NAME.service`) to have %i expanded; this one is named after the template")
    known = specifiers(unit)
    svc: dict[str, Any] = {}
    comments: list[str] = [f"from {base}"]
    env: dict[str, str] = {}
    rlimits: dict[str, Any] = {}
    backoff: dict[str, Any] = {}
    intensity: dict[str, Any] = {}
    deps: dict[str, list[str]] = {}
    before: list[str] = []  # Before=: these services start after this one
    u = _Unit()
    entries = read_unit(text)
    own_sockets = _socket_units(entries, unit, path, known) | frozenset(sockets)
    unit_dir = os.path.dirname(path)
    paired = unit.removesuffix(".service") + ".socket"
    if paired not in own_sockets and os.path.exists(os.path.join(unit_dir, paired)) and \
            not sockets:
        n.warn(1, "sockets", f"{paired} beside it is not carried over: systemd hands the "
               "service its sockets only while that socket unit is enabled, and the service "
               "does not name it; if it is, give the service its `listen` by hand")
    for e in entries:
        if "%" in e.value and e.section in ("Unit", "Service"):
            e = replace(e, value=_expand_specifiers(e.value, known))
        if e.section not in ("Unit", "Service", "Install"):
            n.warn(e.line, f"[{e.section}] {e.key}", "section not supported by hachain; dropped")
            continue
        if e.section == "Install" and e.key in ("WantedBy", "RequiredBy") and e.value:
            conv.installed.add(svc_name)  # started at boot under systemd
        if (e.section, e.key) in _SILENT:
            if e.key in ("Description", "Documentation") and e.value:
                comments.append(f"{e.key}: {e.value}")
            continue
        k = e.key
        if k == "ExecStart":
            if not e.value:
                u.exec_start.clear()
            else:
                u.exec_start.append(e)
        elif k == "ExecStartPre":
            u.exec_start_pre.append(e)
        elif k == "ExecStartPost":
            u.exec_start_post.append(e)  # (an empty one resets: _pre_start)
        elif k == "ExecStopPost":
            u.exec_stop_post.append(e)
        elif k == "ExecStop":
            if not e.value:
                u.exec_stop.clear()
            else:
                u.exec_stop.append(e)
        elif k == "Type":
            u.type = e
        elif k == "Restart":
            u.restart = e
        elif k == "Sockets" and e.section == "Service":
            continue  # (_socket_units: their sockets become `listen`)
        elif k == "RequiresMountsFor" and e.section == "Unit":
            paths = svc.setdefault("requires_mounts_for", [])
            if not e.value:
                paths.clear()
            for word in e.value.split():
                if not word.startswith("/"):
                    n.warn(e.line, k, f"{word}: not an absolute path; dropped")
                elif word not in paths:
                    paths.append(word)
            if not paths:
                del svc["requires_mounts_for"]
        elif k in _DEP_KEYS and e.section == "Unit":
            deps.setdefault(_DEP_KEYS[k], [])
            for d in _deps(e, n, own_sockets):
                if d not in deps[_DEP_KEYS[k]]:
                    deps[_DEP_KEYS[k]].append(d)
                    conv.dep_origin[(svc_name, _DEP_KEYS[k], d)] = f"{path}:{e.line}: {k}"
        elif k == "Before" and e.section == "Unit":
            # the other unit's After=: resolve_deps adds it there once all are read
            for d in _deps(e, n, own_sockets):
                if d not in before:
                    before.append(d)
                    conv.dep_origin[(d, "after", svc_name)] = f"{path}:{e.line}: {k}"
        elif k == "Environment":
            _systemd_env(e, env, n)
        elif k == "UnsetEnvironment":
            # a hachain service's environment is PATH, env and env_file, nothing
            # inherited: only what this unit set itself can be unset
            for word in e.value.split():
                name, eq, value = word.partition("=")
                if name in env and (not eq or env[name] == value):
                    del env[name]
            comments.append(f"UnsetEnvironment={e.value}: a service inherits no "
                            "environment in hachain (PATH, env and env_file only)")
        elif k in _RLIMIT_KEYS:
            v = _rlimit(e, n)
            if v is not None:
                rlimits[_RLIMIT_KEYS[k]] = v
        else:
            u.entries.append(e)

    # ExecStart and Type decide the kind, which other keys depend on.
    kind = "longrun"
    ready = "none"
    if u.type is not None:
        t = u.type.value
        if t == "notify":
            ready = "notify"
        elif t == "oneshot":
            kind = "oneshot"
        elif t == "forking":
            kind = "forking"
        elif t == "notify-reload":  # notify, and a reload is its signal, then READY=1
            ready = "notify"
        elif t == "dbus":
            pass  # ready once its BusName= has an owner on the bus (_bus_ready below)
        elif t == "idle":  # simple, started once the boot's other jobs are out (console)
            comments.append("Type=idle: started as simple (systemd only holds it back for a "
                            "quiet console)")
        elif t not in ("simple", "exec"):
            n.warn(u.type.line, "Type", f"unknown type {t!r}; treated as simple")
    if kind != "longrun":
        svc["kind"] = kind
    if ready != "none":
        svc["ready"] = ready
    starts_pre: list[Entry] = []  # a oneshot's ExecStart= lines run as pre_start
    if kind == "oneshot" and u.exec_start and u.exec_start_post:
        # systemd runs a oneshot's ExecStartPost= once its ExecStart= lines are done: the
        # same sequence, so they join it
        u.exec_start = u.exec_start + [e for e in u.exec_start_post if e.value]
        u.exec_start_post = []
    if kind == "oneshot" and u.exec_stop_post:
        n.warn(u.exec_stop_post[0].line, "ExecStopPost", "a oneshot has no post_stop in "
               "hachain; dropped (a teardown at its stop belongs in ExecStop=, which "
               "becomes its stop_command)")
        u.exec_stop_post = []
    if kind == "oneshot" and u.exec_start and (
            len(u.exec_start) > 1 or u.exec_start[-1].value.lstrip().startswith("-")):
        # systemd runs a oneshot's lines in turn, stopping at the first failure ('-':
        # one that may fail), as pre_start does: all but the last run as pre_start, the
        # last as the command (one that may fail too, with /bin/true the command)
        last = u.exec_start[-1]
        may_fail = last.value.lstrip().startswith("-")
        starts_pre = u.exec_start if may_fail else u.exec_start[:-1]
        u.exec_start = [Entry("Service", "ExecStart", "/bin/true", last.line)] if may_fail \
            else [last]
    if not u.exec_start:
        n.error(1, "ExecStart", "missing: hachain needs a command to run")
    else:
        if len(u.exec_start) > 1:
            for extra in u.exec_start[1:]:
                n.warn(extra.line, "ExecStart", "only one command per service in hachain; "
                       "this additional ExecStart is dropped (make it a oneshot that "
                       "requires this one)")
        argv = _exec_argv(u.exec_start[0], n)
        line = expanding_command(argv) if argv else None
        if line is not None:
            svc["command"], svc["shell"] = line, True
            n.warn(u.exec_start[0].line, "ExecStart", "$VARIABLE references: run through "
                   "/bin/sh (shell = true, `exec`) so that they expand from env and "
                   "env_file as systemd expands them")
        elif argv:
            svc["command"] = argv
    pre_start = _pre_start(u.exec_start_pre + starts_pre, n)
    if pre_start:
        svc["pre_start"] = pre_start
    stop = _stop_command(u.exec_stop, n)
    if stop:
        svc["stop_command"] = stop
    for key, entries in (("post_start", u.exec_start_post), ("post_stop", u.exec_stop_post)):
        if cmds := _pre_start(entries, n):
            svc[key] = cmds

    # Restart policy (systemd's default is Restart=no).
    restart = "never"
    if u.restart is not None:
        r = u.restart.value
        if r in ("always", "on-failure", "on-abnormal"):
            restart = r
        elif r == "no":
            restart = "never"
        elif r in ("on-success", "on-watchdog", "on-abort"):
            restart = {"on-success": "always", "on-watchdog": "on-abnormal",
                       "on-abort": "on-abnormal"}[r]
            n.warn(u.restart.line, "Restart", f"{r} has no hachain equivalent; using "
                   f"restart = {restart!r}")
        else:
            n.warn(u.restart.line, "Restart", f"unknown value {r!r}; using restart = \"never\"")
    if kind == "oneshot" and restart == "always":
        n.warn(u.restart.line if u.restart else 1, "Restart",
               "a oneshot cannot restart always in hachain; using \"on-failure\"")
        restart = "on-failure"
    svc["restart"] = restart
    if u.restart is None and kind == "longrun":
        comments.append("restart = \"never\": systemd's default Restart=no")

    stop_signal = None
    start_limit: dict[str, Entry] = {}
    reload_lines: list[Entry] = []
    reload_sig: Entry | None = None
    bus_name: Entry | None = None
    ignore_sigpipe = True  # systemd's default
    for e in u.entries:
        k, v = e.key, e.value
        try:
            if k == "RestartSec":
                span = parse_timespan(v)
                if span is None:
                    raise ValueError("infinity is not a delay")
                backoff["initial"] = span
            elif k == "RestartMaxDelaySec":
                span = parse_timespan(v)
                if span is not None:
                    backoff["max"] = span
            elif k in ("StartLimitBurst", "StartLimitIntervalSec", "StartLimitInterval",
                       "StartLimitAction"):
                start_limit[k.removesuffix("Sec") if k.startswith("StartLimitInterval")
                            else k] = e
            elif k == "WatchdogSec":
                span = parse_timespan(v)
                if span and kind == "oneshot":
                    n.warn(e.line, k, "a oneshot is never ready in hachain, so its "
                           "watchdog would never run; dropped")
                elif span:
                    svc["watchdog_sec"] = span
            elif k in ("TimeoutStopSec", "TimeoutStartSec", "TimeoutSec"):
                span = parse_timespan(v)
                targets = {"TimeoutStopSec": ["stop_timeout"],
                           "TimeoutStartSec": ["ready_timeout"],
                           "TimeoutSec": ["stop_timeout", "ready_timeout"]}[k]
                for t in targets:
                    # systemd: 0 and "infinity" both switch the timeout off
                    svc[t] = "infinity" if span is None or span == 0 else span
                if span is None or span == 0:
                    comments.append(f"{k}={v}: no timeout (\"infinity\")")
            elif k == "PIDFile":
                if kind == "forking":
                    svc["pid_file"] = v if os.path.isabs(v) else os.path.join("/run", v)
                else:
                    comments.append(f"PIDFile={v} not needed: hachain knows the main pid "
                                    f"of a Type={u.type.value if u.type else 'simple'} "
                                    "service")
            elif k == "WorkingDirectory":
                d = v.removeprefix("-")
                if not os.path.isabs(d):
                    n.warn(e.line, k, f"{v!r}: hachain needs an absolute cwd ('~' and "
                           "specifiers are not expanded); dropped")
                else:
                    if v.startswith("-"):
                        n.warn(e.line, k, "'-' prefix (ignore a missing directory) dropped")
                    svc["cwd"] = d
            elif k in ("User", "Group"):
                svc[k.lower()] = v
            elif k == "UMask":
                svc["umask"] = _umask(v)
            elif k == "KillSignal":
                sig = signal_name(v)
                if sig is None:
                    raise ValueError(f"{v!r} is not a signal")
                stop_signal = sig
            elif k == "KillMode":
                if v in ("process", "mixed"):
                    svc["kill_mode"] = v
                elif v == "none":
                    svc["kill_mode"] = "process"
                    n.warn(e.line, k, "none (nothing killed, deprecated in systemd): imported "
                           "as kill_mode = \"process\", which still ends the main process")
                elif v != "control-group":
                    raise ValueError(f"{v!r} is not a kill mode")
            elif k == "SuccessExitStatus":
                codes = []
                for word in v.split():
                    named = getattr(os, "EX_" + word, None) if word.isupper() else None
                    if word.isdigit() and int(word) <= 255:
                        codes.append(int(word))
                    elif isinstance(named, int):  # BSD's sysexits names: DATAERR is 65
                        codes.append(named)
                    else:
                        n.warn(e.line, k, f"{word}: only exit codes 0-255 (or their "
                               "sysexits names) carry over; dropped")
                if codes:
                    svc["success_exit"] = sorted(set([0] + codes))
            elif k == "TTYPath":
                svc["tty_path"] = v
            elif k == "StandardInput":
                if v in ("tty", "tty-force", "tty-fail"):
                    svc.setdefault("tty_path", "/dev/console")  # (systemd's TTYPath=)
                elif v != "null":
                    raise ValueError(f"{v!r}: a service's stdin is /dev/null or its "
                                     "terminal (tty) in hachain")
            elif k in ("TTYReset", "TTYVHangup"):
                if _unit_bool(v):
                    svc["tty_reset" if k == "TTYReset" else "tty_vhangup"] = True
            elif k == "UtmpIdentifier":
                comments.append(f"UtmpIdentifier={v}: hachain writes no utmp record (the "
                                "login program the getty runs does)")
            elif k in ("StandardOutput", "StandardError") and v == "tty":
                pass  # (with a terminal for stdin, it is its stdout and stderr too)
            elif k in ("StandardOutput", "StandardError"):
                if v not in ("journal", "inherit", "journal+console", "kmsg"):
                    n.warn(e.line, k, f"{v}: hachain captures output to <log_dir>/"
                           f"{svc_name}.log; dropped")
            elif k in _DIRECTORY_BASES:
                for word in v.split():
                    rel = word.split(":")[0]  # (a ":" names a symlink systemd makes too)
                    if rel.startswith("/") or ".." in rel.split("/") or "%" in rel:
                        n.warn(e.line, k, f"{word!r}: not a plain relative name; dropped")
                        continue
                    svc.setdefault("directories", []).append(
                        os.path.join(_DIRECTORY_BASES[k], rel))
            elif k in ("RuntimeDirectoryMode", "StateDirectoryMode", "CacheDirectoryMode",
                       "LogsDirectoryMode"):
                mode = v.strip()
                if not re.fullmatch(r"0?[0-7]{3,4}", mode):
                    raise ValueError(f"{v!r} is not an octal mode")
                mode = mode.zfill(4)
                if mode != svc.get("directory_mode", mode):
                    n.warn(e.line, k, f"{v}: hachain gives all of a service's directories "
                           f"one mode, {svc['directory_mode']} from an earlier line; dropped")
                else:
                    svc["directory_mode"] = mode  # (the default, 0755, left out below)
            elif k == "EnvironmentFile":
                path = v.strip()
                if path.removeprefix("-").startswith("/"):
                    svc.setdefault("env_file", []).append(path)
                else:
                    n.warn(e.line, k, f"{v!r}: not an absolute path; dropped")
            elif k in ("MemoryMax", "MemoryLimit"):
                size = v.strip()
                if size == "infinity" or re.fullmatch(r"[0-9]+[KMGT]?", size):
                    svc["memory_max"] = size if size == "infinity" or not size.isdigit() \
                        else int(size)
                else:
                    n.warn(e.line, k, f"{v!r}: hachain's memory_max takes bytes with K, M, G "
                           "or T, or infinity (not a percentage); dropped")
            elif k == "AmbientCapabilities":
                if not v.strip():
                    svc.pop("capabilities", None)  # an empty one resets the list
                    continue
                if v.strip().startswith("~"):
                    raise ValueError("an inverted (~) list is not supported")
                caps = svc.setdefault("capabilities", [])
                for word in v.split():
                    name = word.upper().removeprefix("CAP_")
                    if name not in CAPABILITIES:
                        n.warn(e.line, k, f"{word}: not a Linux capability; dropped")
                    elif "CAP_" + name not in caps:
                        caps.append("CAP_" + name)
                if not caps:
                    del svc["capabilities"]
            elif k == "CapabilityBoundingSet":
                words = v.split()
                if not words:
                    # systemd: the bounding set becomes empty, whatever came before
                    svc["capability_bounding_set"] = []
                    continue
                invert = words[0].startswith("~")
                names = []
                for word in [words[0].removeprefix("~")] + words[1:]:
                    name = word.upper().removeprefix("CAP_")
                    if name not in CAPABILITIES:
                        n.warn(e.line, k, f"{word}: not a Linux capability; dropped")
                    else:
                        names.append("CAP_" + name)
                have = svc.get("capability_bounding_set")
                if invert:  # all but these (of what earlier lines kept)
                    kept_before = have if have is not None else ["CAP_" + c for c in CAPABILITIES]
                    svc["capability_bounding_set"] = [c for c in kept_before if c not in names]
                else:
                    svc["capability_bounding_set"] = (have or []) + [
                        c for c in names if c not in (have or [])]
            elif k == "RuntimeDirectoryPreserve":
                if v in ("yes", "restart", "true", "1", "on"):
                    comments.append(f"{k}={v}: hachain keeps `directories` always")
                else:
                    n.warn(e.line, k, f"{v}: hachain keeps `directories` across stops "
                           "(systemd removes /run ones then); dropped")
            elif k in ("ProtectProc", "ProcSubset"):
                allowed = ("invisible", "noaccess", "ptraceable") if k == "ProtectProc" \
                    else ("pid",)
                if v in allowed:
                    svc["protect_proc" if k == "ProtectProc" else "proc_subset"] = v
                elif v not in ("default", "all"):
                    raise ValueError(f"{v!r} is not one of default, " + ", ".join(allowed))
            elif k == "DeviceAllow":
                if not v.strip():
                    svc.pop("device_allow", None)  # an empty one resets the list
                    continue
                from hachain import devices
                devices.split(v)  # (a bad one: ValueError, the line dropped with why)
                svc.setdefault("device_allow", []).append(" ".join(v.split()))
            elif k in ("IPAddressAllow", "IPAddressDeny"):
                key = "ip_address_allow" if k == "IPAddressAllow" else "ip_address_deny"
                if not v.strip():
                    svc.pop(key, None)  # an empty one resets the list
                    continue
                from hachain import ipfilter
                for word in v.split():
                    ipfilter.networks(word)  # (a bad one: ValueError, the line dropped)
                have = svc.setdefault(key, [])
                have += [w for w in v.split() if w not in have]
            elif k == "DevicePolicy":
                if v not in ("auto", "closed", "strict"):
                    raise ValueError(f"{v!r} is not one of auto, closed, strict")
                if v != "auto":
                    svc["device_policy"] = v
            elif k == "LoadCredential":
                cred, colon, src = v.strip().partition(":")
                src = src if colon else cred  # a bare name: looked for in the stores
                if "%" in src or "/" in cred or not cred:
                    raise ValueError(f"{v!r}: " + ("%-specifiers are not expanded by "
                                     "hachain" if "%" in src else "not a credential name"))
                if colon and not src.startswith("/"):
                    raise ValueError(f"{src!r}: hachain takes an absolute path (or a bare "
                                     "name alone, looked for in the credential stores)")
                svc.setdefault("credentials", {})[cred] = src
            elif k in _SECCOMP_FLAGS:
                svc[_SECCOMP_FLAGS[k]] = _unit_bool(v)
            elif k in ("SystemCallFilter", "SystemCallErrorNumber", "SystemCallArchitectures",
                       "RestrictAddressFamilies", "RestrictNamespaces"):
                _seccomp_key(e, svc, n)
            elif k == "CPUSchedulingPolicy":
                if v not in ("other", "batch", "idle", "fifo", "rr"):
                    raise ValueError(f"{v!r} is not one of other, batch, idle, fifo, rr")
                svc["cpu_scheduling_policy"] = v
            elif k == "CPUSchedulingPriority":
                svc["cpu_scheduling_priority"] = _int_in(v, 1, 99)
            elif k == "CPUSchedulingResetOnFork":
                if _unit_bool(v):
                    svc["cpu_scheduling_reset_on_fork"] = True
            elif k == "IOSchedulingClass":
                cls = {"0": "none", "1": "realtime", "2": "best-effort", "3": "idle"}.get(v, v)
                if cls not in ("none", "realtime", "best-effort", "idle"):
                    raise ValueError(f"{v!r} is not one of realtime, best-effort, idle, none")
                if cls != "none":
                    svc["io_scheduling_class"] = cls
            elif k == "IOSchedulingPriority":
                svc["io_scheduling_priority"] = _int_in(v, 0, 7)
            elif k == "CPUAffinity":
                if not v.strip():
                    svc.pop("cpu_affinity", None)  # an empty one resets the list
                    continue
                cpus = svc.setdefault("cpu_affinity", [])
                for word in v.replace(",", " ").split():
                    lo, dash, hi = word.partition("-")
                    if not lo.isdigit() or (dash and not hi.isdigit()):
                        raise ValueError(f"{word!r}: hachain takes CPU numbers and ranges "
                                         "(not numa or %-specifiers)")
                    cpus += [c for c in range(int(lo), int(hi if dash else lo) + 1)
                             if c not in cpus]
            elif k == "SendSIGHUP":
                if _unit_bool(v):
                    svc["send_sighup"] = True
            elif k == "RemoveIPC":
                if _unit_bool(v):
                    svc["remove_ipc"] = e.line  # (kept when it has a user: below)
                else:
                    svc.pop("remove_ipc", None)
            elif k == "FileDescriptorStoreMax":
                most = config.FD_STORE_MOST
                count = int(v)
                if count > most:
                    n.warn(e.line, k, f"{count}: hachain keeps at most {most}; {most} it is")
                if count:
                    svc["fd_store_max"] = min(count, most)
                else:
                    svc.pop("fd_store_max", None)
            elif k == "FileDescriptorStorePreserve":
                if v == "yes" or (v != "restart" and v != "no" and _unit_bool(v)):
                    svc["fd_store_preserve"] = True
                else:  # "restart", systemd's default, is hachain's; "no" near enough
                    svc.pop("fd_store_preserve", None)
            elif k in ("PrivateTmp", "NoNewPrivileges"):
                svc[{"PrivateTmp": "private_tmp", "NoNewPrivileges": "no_new_privileges"}[k]] \
                    = _unit_bool(v)
            elif k in ("ProtectSystem", "ProtectHome"):
                v = v.strip()
                flag = _bool(v)
                choices = config.PROTECT_SYSTEM if k == "ProtectSystem" else config.PROTECT_HOME
                if flag is None and v not in choices:
                    raise ValueError(f"{v!r} is not one of yes, no, " + ", ".join(choices[1:]))
                key = "protect_system" if k == "ProtectSystem" else "protect_home"
                if flag is False:
                    svc.pop(key, None)
                else:
                    svc[key] = True if flag else v
            elif k in _SANDBOX_PATH_KEYS:
                key = _SANDBOX_PATH_KEYS[k]
                if not v.strip():
                    svc.pop(key, None)  # an empty one resets the list
                    continue
                for word in v.split():
                    opt = word.startswith("-") or word.startswith("+-")
                    path = word.lstrip("-+")
                    if "%" in path or not path.startswith("/"):
                        n.warn(e.line, k, f"{word!r}: " + ("%-specifiers are not expanded by "
                               "hachain" if "%" in path else "not an absolute path")
                               + "; dropped")
                        continue
                    svc.setdefault(key, []).append(("-" if opt else "") + path)
            elif k == "Nice":
                svc["nice"] = _int_in(v, -20, 19)
            elif k == "TasksMax":
                if v.strip() == "infinity":
                    svc.pop("pids_max", None)  # (0: no limit, the default)
                elif v.strip().isdigit() and 0 < int(v) <= 4194304:
                    svc["pids_max"] = int(v)
                else:
                    raise ValueError(f"{v!r}: hachain's pids_max takes a number of tasks "
                                     "(not a percentage) or infinity")
            elif k == "SyslogIdentifier":
                comments.append(f"SyslogIdentifier={v}: the output goes to the service's "
                                "own log file, named after it")
            elif k == "OOMScoreAdjust":
                svc["oom_score_adj"] = _int_in(v, -1000, 1000)
            elif k.startswith(("Condition", "Assert")):
                _start_check(e, svc, n)
            elif k == "ExecReload":
                if not v:
                    reload_lines.clear()
                else:
                    reload_lines.append(e)
            elif k == "ReloadSignal":
                reload_sig = e
            elif k == "BusName":
                bus_name = e
            elif k == "IgnoreSIGPIPE":
                ignore_sigpipe = _unit_bool(v)
            elif k == "RemainAfterExit":
                if kind != "oneshot":
                    n.warn(e.line, k, "only meaningful for a oneshot; dropped")
                # a hachain oneshot stays "done" after success: the same thing
            else:
                n.warn(e.line, k, "not supported by hachain; dropped")
        except ValueError as ex:
            n.warn(e.line, k, f"{ex}; dropped")
    if stop_signal:
        svc["stop_signal"] = stop_signal
    _reload(svc, u.type.value if u.type else "simple", reload_lines, reload_sig, n)
    _bus_ready(svc, u.type, bus_name, n)
    if ignore_sigpipe:  # (systemd's default; hachain's is s6's and runit's: not ignored)
        svc["ignore_sigpipe"] = True
    if svc.get("directory_mode") == "0755":
        del svc["directory_mode"]
    if (line := svc.pop("remove_ipc", None)) is not None:
        if svc.get("user", "root") != "root" or svc.get("group", "root") != "root":
            svc["remove_ipc"] = True
        else:
            n.warn(line, "RemoveIPC", "has no effect for a service that runs as root; "
                   "dropped")
    for sock in sorted(own_sockets):
        if _socket_unit(os.path.join(unit_dir, sock), sock, svc_name, svc, conv):
            comments.append(f"its sockets from {sock} (opened at its start, not on demand)")
    svc.pop("_fd_names", None)

    if backoff:
        if "initial" in backoff and backoff["initial"] > config.Backoff().max and \
                "max" not in backoff:
            backoff["max"] = backoff["initial"]
        if backoff.get("max", config.Backoff().max) < backoff.get("initial", 0.1):
            backoff["max"] = backoff["initial"]
        svc["backoff"] = backoff
    _start_limit(start_limit, intensity, n)
    if intensity:
        svc["intensity"] = intensity
    for rel, names in deps.items():
        if names:
            svc[rel] = names
    if env:
        svc["env"] = env
    if rlimits:
        svc["rlimits"] = rlimits
    if before:
        svc["_before"] = before
    if "command" in svc:
        conv.services[svc_name] = svc
        conv.comments[svc_name] = comments
    conv.sort_messages()
    return conv


def _socket_units(entries: list[Entry], unit: str, path: str,
                  known: dict[str, str]) -> frozenset[str]:
    """The socket units whose sockets a service gets: those its Sockets= names, or else
    the one of its own name beside it (systemd pairs foo.socket with foo.service) when
    the service depends on it (dbus.service: Requires=dbus.socket). One it does not name
    (ssh.socket beside ssh.service) hands it sockets under systemd only when enabled,
    which a unit file does not say: not carried, and said so."""
    where = os.path.dirname(path)
    named = {w for e in entries if e.section == "Service" and e.key == "Sockets"
             for w in _expand_specifiers(e.value, known).split() if w.endswith(".socket")}
    own = unit.removesuffix(".service") + ".socket"
    deps = {w for e in entries if e.section == "Unit" and (e.key in _DEP_KEYS or
                                                          e.key == "Before")
            for w in _expand_specifiers(e.value, known).split() if w.endswith(".socket")}
    if not named and own in deps and _read_socket_unit(where, own) is not None:
        named.add(own)
    for other in deps - named - {own}:
        # one whose Service= is this unit hands it its sockets too (journald's varlink)
        got = _read_socket_unit(where, other)
        if got is not None and any(e.section == "Socket" and e.key == "Service" and
                                   e.value == unit for e in got[1]):
            named.add(other)
    return frozenset(named)


def _read_socket_unit(where: str, name: str) -> tuple[str, list[Entry]] | None:
    """(path, entries) of socket unit `name` in directory `where`; an instance with no
    file of its own made from its template (`x@.socket`) with its specifiers expanded,
    as systemd makes it. None when there is neither (OSError, UnicodeDecodeError when
    it cannot be read)."""
    path = os.path.join(where, name)
    known: dict[str, str] = {}
    stem, at, instance = name.removesuffix(".socket").partition("@")
    template = os.path.join(where, f"{stem}@.socket")
    if at and instance and not os.path.exists(path) and os.path.exists(template):
        known = specifiers(f"{stem}@{instance}.service") | {"n": name}
        path = template
    elif not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        entries = read_unit(fh.read())
    if known:
        entries = [replace(e, value=_expand_specifiers(e.value, known)) for e in entries]
    return path, entries


# [Socket] Listen*= → the form of `listen`; the others are not carried
_LISTEN_KEYS = {"ListenStream": ("tcp", "unix"), "ListenDatagram": ("udp", "unix-dgram"),
                "ListenSequentialPacket": (None, "unix-seqpacket")}
_SOCKET_SILENT = {"Service", "RemoveOnStop", "DirectoryMode", "Timestamping"}
_SOCKET_FLAGS = {"ReusePort": "reuse_port", "FreeBind": "free_bind",
                 "Transparent": "transparent", "PassCredentials": "pass_credentials",
                 "PassSecurity": "pass_security", "KeepAlive": "keep_alive",
                 "NoDelay": "no_delay"}


def _listen_spec(key: str, value: str) -> str | None:
    """One Listen*= value in the form of `listen`; None when hachain has none for it."""
    inet, local = _LISTEN_KEYS[key]
    if value.startswith(("/", "@")):
        return f"{local}:{value}"
    if inet is None:
        return None
    if value.isdigit():
        return f"{inet}:{value}"
    host, _, port = value.rpartition(":")
    if host and port.isdigit():
        return f"{inet}:{host}:{port}"
    return None


def _socket_unit(path: str, name: str, svc_name: str, svc: dict[str, Any],
                 conv: Conversion) -> bool:
    """Carry socket unit `name` (at `path`) into `svc`: its Listen*= as `listen`, its
    SocketMode=, SocketUser=, SocketGroup=, Backlog=, FileDescriptorName=; False (with a
    warning) when it cannot be read."""
    try:
        got = _read_socket_unit(os.path.dirname(path), name)
        if got is None:
            raise FileNotFoundError(2, "No such file or directory")
    except (OSError, UnicodeDecodeError) as ex:
        conv.warnings.append(f"{path}: Sockets: {name}: cannot read it "
                             f"({getattr(ex, 'strerror', None) or ex}); its sockets are not "
                             "carried over")
        return False
    path, entries = got
    n = _Notes(path, conv)
    listen = svc.setdefault("listen", [])
    before = len(listen)
    flags: list[str] = []  # (given to the service only when this unit gives it sockets)
    buffers: dict[str, int] = {}
    for e in entries:
        if e.section == "Install" and e.key in ("WantedBy", "RequiredBy") and e.value:
            conv.installed.add(svc_name)  # the socket starts at boot: so does the service
        if e.section != "Socket":
            continue
        k, v = e.key, e.value
        try:
            if k in _LISTEN_KEYS:
                if not v:
                    listen.clear()
                elif (spec := _listen_spec(k, v)) is not None:
                    if spec not in listen:
                        listen.append(spec)
                else:
                    n.warn(e.line, k, f"{v}: not an address hachain can listen on; dropped")
            elif k == "Accept":
                if _unit_bool(v):
                    n.warn(e.line, k, "yes (a service instance per connection, inetd's way) is "
                           "not supported: hachain hands the service its listening socket; "
                           "dropped")
            elif k == "SocketMode":
                mode = _umask(v)
                if (had := svc.get("socket_mode")) is not None and had != mode:
                    mode = f"{int(had, 8) & int(mode, 8):03o}"
                    n.warn(e.line, k, f"{v}: hachain gives all of a service's unix sockets "
                           f"one mode, and another of its socket units says {had}: {mode} "
                           "(what both allow) it is")
                svc["socket_mode"] = mode
            elif k in ("SocketUser", "SocketGroup"):
                key = "socket_user" if k == "SocketUser" else "socket_group"
                if (had := svc.get(key)) is not None and had != v:
                    n.warn(e.line, k, f"{v}: hachain gives all of a service's unix sockets "
                           f"one owner, and another of its socket units says {had}: {had} "
                           "it stays")
                else:
                    svc[key] = v
            elif k == "Backlog":
                svc["listen_backlog"] = _int_in(v, 1, 65535)
            elif k == "FileDescriptorName":
                svc["fd_name"] = v
            elif k in _SOCKET_FLAGS or (k == "BindIPv6Only" and v == "ipv6-only"):
                flag = _SOCKET_FLAGS.get(k, "ipv6_only")
                if k == "BindIPv6Only" or _unit_bool(v):
                    flags.append(flag)
                elif flag in flags:
                    flags.remove(flag)
            elif k in ("ReceiveBuffer", "SendBuffer"):
                buffers[k] = parse_size(v)
            elif k in _SOCKET_SILENT:
                continue
            elif k.startswith("Listen"):
                n.warn(e.line, k, "not supported by hachain (it listens on stream, datagram "
                       "and sequential-packet sockets); dropped")
            else:
                n.warn(e.line, k, "not supported by hachain; dropped")
        except ValueError as ex:
            n.warn(e.line, k, f"{ex}; dropped")
    if any(x.startswith("unix") and ":/" in x for x in listen[before:]) and \
            not any(e.section == "Socket" and e.key == "SocketMode" for e in entries) and \
            (had := svc.get("socket_mode")) is not None and had != "666":
        # (its own are systemd's default 0666, which the mode given to all narrows)
        n.warn(1, "SocketMode", f"(unset: 0666) hachain gives all of a service's unix "
               f"sockets one mode, and another of its socket units says {had}: {had} it is")
    if len(listen) > before:  # its options and buffers, for all the service's sockets
        opts = svc.setdefault("socket_options", [])
        opts += [f for f in flags if f not in opts]
        if not opts:
            del svc["socket_options"]
        for k, size in buffers.items():
            key = "socket_receive_buffer" if k == "ReceiveBuffer" else "socket_send_buffer"
            svc[key] = max(svc.get(key, 0), size)
    if len(listen) == before:  # (nothing of it carried: its name is not given out)
        if not listen:
            del svc["listen"]
        return True
    given = svc.get("fd_name")
    name_of_this = next((e.value for e in entries if e.section == "Socket"
                         and e.key == "FileDescriptorName"), name)
    if "_fd_names" in svc and name_of_this not in svc["_fd_names"]:
        n.warn(1, "FileDescriptorName", f"{name_of_this}: hachain gives all of a service's "
               f"sockets one name in LISTEN_FDNAMES; they are all named {given or name}")
    svc.setdefault("_fd_names", []).append(name_of_this)
    if given is None and name != f"{svc_name}.socket":
        svc["fd_name"] = name  # systemd's default name: the socket unit's
    if not listen:
        del svc["listen"]
    return True


# ReadWritePaths= and its kin (the *Directories= spellings are systemd's older names)
_SANDBOX_PATH_KEYS = {
    "ReadWritePaths": "read_write_paths", "ReadWriteDirectories": "read_write_paths",
    "ReadOnlyPaths": "read_only_paths", "ReadOnlyDirectories": "read_only_paths",
    "InaccessiblePaths": "inaccessible_paths", "InaccessibleDirectories": "inaccessible_paths",
    "NoExecPaths": "no_exec_paths", "ExecPaths": "exec_paths"}

# ConditionPathExists= / AssertPathExists= → the check path_exists of condition / assert
_CHECK_KEYS = {"".join(w.capitalize() for w in name.split("_")): name
               for name in conditions.CHECKS} | {"ACPower": "ac_power"}


def _start_check(e: Entry, svc: dict[str, Any], n: _Notes) -> None:
    """One Condition*= or Assert*= line → its check in `condition` or `assert`. An empty
    one resets that table, as in systemd. A check hachain does not have, or an argument
    with a %-specifier, is dropped with a warning: the service then starts as if it held."""
    table = "condition" if e.key.startswith("Condition") else "assert"
    check = _CHECK_KEYS.get(e.key.removeprefix("Condition").removeprefix("Assert"))
    v = e.value.strip()
    if not v:
        svc.pop(table, None)
        return
    if check is None:
        n.warn(e.line, e.key, "not supported by hachain; dropped (the service starts as "
               "if it held)")
        return
    trigger, negate, arg = conditions.split(v)
    kind = conditions.CHECKS[check][1]
    if "%" in arg:
        n.warn(e.line, e.key, f"{v!r}: %-specifiers are not expanded by hachain; dropped "
               "(the service starts as if it held)")
        return
    if kind == "security" and arg not in conditions.SECURITY:
        n.warn(e.line, e.key, f"{arg}: hachain does not know this framework; dropped (the "
               "service starts as if it held)")
        return
    if kind == "path" and not arg.startswith("/"):
        n.warn(e.line, e.key, f"{v!r}: not an absolute path; dropped")
        return
    if kind == "capability":
        name = arg.upper().removeprefix("CAP_")
        if name not in CAPABILITIES:
            n.warn(e.line, e.key, f"{arg}: not a Linux capability; dropped")
            return
        arg = "CAP_" + name
    prefix = (conditions.TRIGGER if trigger else "") + (conditions.NEGATE if negate else "")
    svc.setdefault(table, {}).setdefault(check, []).append(prefix + arg)


def _start_limit(sl: dict[str, Entry], intensity: dict[str, Any], n: _Notes) -> None:
    """StartLimitBurst / StartLimitIntervalSec / StartLimitAction → intensity."""
    if not sl:
        return
    burst, window = 5, 10.0  # systemd's defaults
    try:
        if "StartLimitBurst" in sl:
            burst = int(sl["StartLimitBurst"].value)
        if "StartLimitInterval" in sl:
            span = parse_timespan(sl["StartLimitInterval"].value)
            window = 0.0 if span is None else span
    except ValueError as ex:
        e = sl.get("StartLimitBurst") or sl["StartLimitInterval"]
        n.warn(e.line, e.key, f"{ex}; dropped")
        return
    if window == 0:
        intensity["action"] = "ignore"  # rate limiting switched off
    else:
        intensity.update(max_restarts=burst, window=window)
    act = sl.get("StartLimitAction")
    if act is not None and act.value != "none":
        if act.value.startswith("reboot"):
            intensity["action"] = "reboot"
        else:
            n.warn(act.line, act.key, f"{act.value}: no hachain equivalent (actions: "
                   f"{', '.join(config.INTENSITY_ACTIONS)}); dropped")


# --- supervisord ----------------------------------------------------------------------------

_SUPERVISORD_IGNORED_SECTIONS = ("supervisord", "supervisorctl", "unix_http_server",
                                 "inet_http_server", "rpcinterface:", "include")


def _supervisord_env(value: str, line: int, n: _Notes) -> dict[str, str]:
    """`KEY="val",KEY2=val2` → a dict; unparsable pairs are warned about and dropped."""
    if len(value.encode("utf-8", "surrogateescape")) > MAX_ARG:
        n.warn(line, "environment", f"longer than {MAX_ARG} bytes; dropped")
        return {}
    lex = shlex.shlex(value, posix=True)
    lex.whitespace = ","
    lex.whitespace_split = True
    out: dict[str, str] = {}
    try:
        words = [w.strip() for w in lex]
    except ValueError as ex:
        n.warn(line, "environment", f"cannot parse ({ex}); dropped")
        return out
    for w in words:
        k, sep, v = w.partition("=")
        k = k.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            n.warn(line, "environment", f"{w!r} is not KEY=VALUE; dropped")
            continue
        out[k] = v.strip()
    return out


# supervisord expands option values with Python's % operator on a dict: `%(name)s`,
# `%(process_num)02d`, `%%` for a literal '%'. A lone '%' is an error there.
_EXPANSION = re.compile(r"%(?:(%)|\(([^)]*)\)([-#0 +]*[0-9]*(?:\.[0-9]+)?[diouxXeEfFgGcrs])|(.?))")


def _expand(value: str, names: dict[str, Any], e: Entry, n: _Notes) -> str:
    """supervisord's %-expansions of one value: the names known at import are expanded
    with their format (`%(process_num)02d` gives 07), `%%` becomes `%`; an unknown name
    or a malformed '%' is warned about and left as it is."""
    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return "%"
        if m.group(4) is not None:
            n.warn(e.line, e.key, f"a lone '%' in {value!r} (supervisord wants '%%' for a "
                   "literal '%', or %(name)s); left as is")
            return m.group(0)
        name, spec = m.group(2), m.group(3)
        if name not in names:
            why = ("supervisord's environment is not known at import" if name.startswith("ENV_")
                   else "not a supervisord expansion")
            n.warn(e.line, e.key, f"%({name}){spec} cannot be expanded at import ({why}); "
                   "left as is")
            return m.group(0)
        try:
            return ("%" + spec) % (names[name],)
        except (TypeError, ValueError) as ex:
            n.warn(e.line, e.key, f"%({name}){spec}: {ex}; left as is")
            return m.group(0)
    return _EXPANSION.sub(sub, value)


def _unit_bool(v: str) -> bool:
    """A unit's boolean ("yes", "true", "on", "1" and their opposites); ValueError else."""
    flag = _bool(v)
    if flag is None:
        raise ValueError(f"{v!r} is not a boolean")
    return flag


def _int_in(v: str, lo: int, hi: int) -> int:
    """An integer from lo to hi; ValueError (its message names the range) else."""
    value = int(v.strip())
    if not lo <= value <= hi:
        raise ValueError(f"{v!r} is not from {lo} to {hi}")
    return value


_SECCOMP_FLAGS = {"MemoryDenyWriteExecute": "memory_deny_write_execute",
                  "LockPersonality": "lock_personality", "RestrictRealtime": "restrict_realtime",
                  "RestrictSUIDSGID": "restrict_suid_sgid",
                  "ProtectKernelTunables": "protect_kernel_tunables",
                  "ProtectControlGroups": "protect_control_groups",
                  "ProtectKernelModules": "protect_kernel_modules",
                  "ProtectKernelLogs": "protect_kernel_logs", "ProtectClock": "protect_clock",
                  "ProtectHostname": "protect_hostname", "PrivateDevices": "private_devices",
                  "PrivateNetwork": "private_network", "PrivateMounts": "private_mounts",
                  "PrivateIPC": "private_ipc"}


def _seccomp_key(e: Entry, svc: dict[str, Any], n: _Notes) -> None:
    """SystemCallFilter= and its kin → hachain/seccomp.py's keys. A line's leading `~`
    goes on each of its items (hachain's lists carry the sign per item); an empty line
    resets, as in systemd."""
    from hachain import seccomp
    k, v = e.key, e.value.strip()
    if k == "RestrictNamespaces":
        flag = _bool(v)
        if flag is None:
            neg = v.startswith("~")
            kinds = v.removeprefix("~").split()
            bad = [x for x in kinds if x not in seccomp.NAMESPACE_KINDS]
            if bad:
                n.warn(e.line, k, f"{' '.join(bad)}: not a namespace kind; dropped")
            else:
                svc["restrict_namespaces"] = [("~" if neg else "") + x for x in kinds]
        elif flag:
            svc["restrict_namespaces"] = True
        else:
            svc.pop("restrict_namespaces", None)
        return
    if k == "SystemCallErrorNumber":
        if seccomp.errno_number(v) is None:
            n.warn(e.line, k, f"{v!r}: hachain takes an errno name such as EPERM; dropped "
                   "(a refused call kills the service)")
        else:
            svc["system_call_error_number"] = v
        return
    key = {"SystemCallFilter": "system_call_filter", "SystemCallArchitectures":
           "system_call_architectures", "RestrictAddressFamilies":
           "restrict_address_families"}[k]
    if not v:
        svc.pop(key, None)
        return
    neg = v.startswith("~")
    items = []
    for w in v[1:].split() if neg else v.split():
        if k == "SystemCallArchitectures":
            problem = seccomp.arch_problem(w)
        elif k == "RestrictAddressFamilies":
            problem = None if w == "none" or seccomp.family_number(w) is not None \
                else f"unknown address family {w!r}"
        else:
            w, colon, err = w.partition(":")
            if colon:
                n.warn(e.line, k, f"{w}: a per-call errno (':{err}') is not supported by "
                       "hachain; the call is refused as the others are")
            problem = seccomp.item_problem(w)
        if problem:
            n.warn(e.line, k, f"{problem}; dropped")
            continue
        items.append(("~" if neg and k != "SystemCallArchitectures" else "") + w)
    have = svc.get(key, [])
    if k == "RestrictAddressFamilies" and have and have[0].startswith("~") != neg:
        # the other sign takes from the list the first line made (systemd's rule)
        gone = {x.removeprefix("~") for x in items}
        svc[key] = [x for x in have if x.removeprefix("~") not in gone]
        return
    svc[key] = have + [x for x in items if x not in have]


def _bool(v: str) -> bool | None:
    """supervisord truthiness ("true", "yes", "on", "1"), None when neither."""
    t = v.strip().lower()
    if t in ("true", "yes", "on", "1"):
        return True
    if t in ("false", "no", "off", "0"):
        return False
    return None


def convert_supervisord(text: str, path: str) -> Conversion:
    """Every [program:x] section → one service named x."""
    conv = Conversion()
    n = _Notes(path, conv)
    entries = read_supervisord(text)
    programs: dict[str, list[Entry]] = {}
    headers: dict[str, int] = {}
    for ln, raw in enumerate(text.splitlines(), 1):
        m = re.match(r"\s*\[([^\]]+)\]", raw)
        if m:
            headers.setdefault(m.group(1).strip(), ln)
    for sect, line in headers.items():
        if sect.startswith("program:"):
            programs[sect.split(":", 1)[1].strip()] = []
        elif not sect.startswith(_SUPERVISORD_IGNORED_SECTIONS):
            n.warn(line, f"[{sect}]", "section not supported by hachain; dropped")
    groups: dict[str, str] = {}
    for e in entries:
        if e.section.startswith("program:"):
            programs[e.section.split(":", 1)[1].strip()].append(e)
        elif e.section.startswith("group:") and e.key == "programs":
            for member in e.value.split(","):
                groups.setdefault(member.strip(), e.section.split(":", 1)[1].strip())
        elif e.section == "include" and e.key == "files":
            conv.includes.append((e.line, e.value))
    if "include" in headers and not conv.includes:
        n.warn(headers["include"], "[include]", "no files = setting; nothing included")
    for prog, ents in programs.items():
        _program(prog, ents, path, headers.get(f"program:{prog}", 1), n, conv,
                 groups.get(prog))
    conv.sort_messages()
    return conv


def _program(prog: str, ents: list[Entry], path: str, header: int, n: _Notes,
             conv: Conversion, group: str | None = None) -> None:
    """One [program:x] section into `conv`: one service per process supervisord would run
    (`numprocs` copies, numbered from `numprocs_start`, named by `process_name`)."""
    opts = {e.key: e for e in ents}
    try:
        numprocs = int(opts["numprocs"].value) if "numprocs" in opts else 1
        start = int(opts["numprocs_start"].value) if "numprocs_start" in opts else 0
        if numprocs < 1 or start < 0:
            raise ValueError(f"numprocs must be >= 1 and numprocs_start >= 0, got {numprocs} "
                             f"and {start}")
    except ValueError as ex:
        n.error(header, f"[program:{prog}]", f"{ex}")
        return
    pname = opts["process_name"].value if "process_name" in opts else "%(program_name)s"
    if numprocs > 1 and "%(process_num)" not in pname:
        n.error(opts["numprocs"].line, f"[program:{prog}] numprocs",
                f"numprocs = {numprocs} needs %(process_num)... in process_name "
                "(supervisord refuses this program too)")
        return
    base = {"program_name": prog, "group_name": group or prog, "numprocs": numprocs,
            "numprocs_start": start, "here": os.path.dirname(os.path.abspath(path)),
            "host_node_name": platform.node()}
    for num in range(start, start + numprocs):
        names = dict(base, process_num=num)
        # the environment= of the program is seen as ENV_X by its other options
        for e in ents:
            if e.key == "environment":
                quiet = _Notes(path, Conversion())
                for k, v in _supervisord_env(_expand(e.value, names, e, quiet), e.line,
                                             quiet).items():
                    names[f"ENV_{k}"] = v
        pe = Entry(f"program:{prog}", "process_name", pname,
                   opts["process_name"].line if "process_name" in opts else header)
        # warnings once for the program, not once per copy
        notes = n if num == start else _Notes(path, Conversion())
        _process(prog, _expand(pname, names, pe, notes), ents, names, path, header, notes,
                 conv)


def _process(prog: str, pname: str, ents: list[Entry], names: dict[str, Any], path: str,
             header: int, n: _Notes, conv: Conversion) -> None:
    """One process of a [program:x] section into `conv` as a service."""
    name = service_name(pname)
    if name != pname:
        n.warn(header, f"[program:{prog}]", f"renamed to {name!r} (hachain service names)")
    svc: dict[str, Any] = {}
    comments = [f"from [program:{prog}] in {os.path.basename(path)}"
                + (f" (process {names['process_num']})" if names["numprocs"] > 1 else "")]
    startsecs, startretries = 1.0, 3
    autorestart = "unexpected"
    limit_set = False
    for e in ents:
        k, v = e.key, _expand(e.value, names, e, n)
        try:
            if k == "command":
                argv = _split(v)
                if not argv:
                    raise ValueError("empty command")
                svc["command"] = argv
            elif k == "autorestart":
                b = _bool(v)
                if v.strip().lower() == "unexpected":
                    autorestart = "unexpected"
                elif b is None:
                    raise ValueError(f"expected true, false or unexpected, got {v!r}")
                else:
                    autorestart = "true" if b else "false"
            elif k == "autostart":
                b = _bool(v)
                if b is None:
                    raise ValueError(f"expected true or false, got {v!r}")
                if not b:
                    svc["enabled"] = False
            elif k == "startsecs":
                startsecs = float(int(v))
                limit_set = True
            elif k == "startretries":
                startretries = int(v)
                limit_set = True
            elif k == "stopsignal":
                sig = signal_name(v)
                if sig is None:
                    raise ValueError(f"{v!r} is not a signal")
                svc["stop_signal"] = sig
            elif k == "stopwaitsecs":
                svc["stop_timeout"] = float(int(v))
            elif k == "user":
                svc["user"] = v
            elif k == "directory":
                if not os.path.isabs(v):
                    raise ValueError(f"hachain needs an absolute cwd, got {v!r}")
                svc["cwd"] = v
            elif k == "umask":
                svc["umask"] = _umask(v)
            elif k == "environment":
                env = _supervisord_env(v, e.line, n)
                if env:
                    svc["env"] = env
            elif k == "exitcodes":
                codes = sorted({int(x) for x in v.split(",") if x.strip()})
                if not codes or any(c < 0 or c > 255 for c in codes):
                    raise ValueError(f"exit codes must be 0-255, got {v!r}")
                svc["success_exit"] = codes
            elif k in ("stdout_logfile_maxbytes", "logfile_maxbytes"):
                size = parse_size(v)
                if size == 0:
                    n.warn(e.line, k, "0 (never rotate) has no hachain equivalent; "
                           "default kept")
                else:
                    svc["log_max_bytes"] = max(size, 1024)
            elif k in ("stdout_logfile_backups", "logfile_backups"):
                svc["log_keep"] = min(int(v), 100)
            elif k == "redirect_stderr":
                if _bool(v) is False:
                    n.warn(e.line, k, "hachain writes stdout and stderr to one log "
                           "(<log_dir>/NAME.log); stderr is not kept apart")
            elif k in ("stopasgroup", "killasgroup"):
                pass  # hachain always signals the whole cgroup / process group
            elif k == "priority":
                n.warn(e.line, k, "start order in hachain comes from dependencies: use "
                       "requires / after; dropped")
            elif k in ("numprocs", "numprocs_start", "process_name"):
                pass  # one service per process: see _program
            elif k in ("stdout_logfile", "stderr_logfile", "logfile"):
                n.warn(e.line, k, f"hachain writes output to <log_dir>/{name}.log; {v} "
                       "not used")
            else:
                n.warn(e.line, k, "not supported by hachain; dropped")
        except ValueError as ex:
            n.warn(e.line, k, f"{ex}; dropped")
    if "command" not in svc:
        n.error(header, f"[program:{prog}] command", "missing: hachain needs a command")
        return
    svc["restart"] = {"true": "always", "false": "never", "unexpected": "on-failure"}[autorestart]
    if limit_set or autorestart != "false":
        # supervisord: FATAL after `startretries` starts in a row that each died within
        # `startsecs`, with delays of 1, 2, 3 ... s; FATAL waits for a manual start.
        svc["backoff"] = {"initial": 1.0, "reset_after": startsecs}
        window = (startretries + 1) * max(startsecs, 1.0) + startretries * (startretries + 1) / 2
        svc["intensity"] = {"max_restarts": startretries, "window": window,
                            "action": "maintenance"}
        comments.append(f"intensity: supervisord gives up (FATAL) after startretries = "
                        f"{startretries} quick failures in a row")
    order = ["command", "restart", "enabled", "backoff", "intensity", "success_exit",
             "stop_signal", "stop_timeout", "user", "cwd", "umask", "env", "log_max_bytes",
             "log_keep"]
    conv.services[name] = {k: svc[k] for k in order if k in svc}
    conv.comments[name] = comments


# --- TOML out -------------------------------------------------------------------------------

def _toml_value(v: Any) -> str:
    """One TOML value: strings via JSON escapes (valid TOML basic strings), inline tables."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return str(int(v)) + ".0" if v.is_integer() else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def _toml_key(k: str) -> str:
    """A bare key when allowed, else a quoted one."""
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


_KEY_ORDER = ["command", "kind", "pid_file", "restart", "enabled", "requires", "wants", "after",
              "conflicts", "ready", "ready_command", "ready_timeout", "watchdog_sec",
              "backoff", "intensity", "success_exit", "stop_command", "stop_signal",
              "stop_timeout", "kill_mode", "reload_command", "reload_signal", "reload_notify",
              "reload_timeout", "user", "group", "umask", "cwd", "env", "rlimits",
              "log_max_bytes", "log_keep"]


def to_toml(conv: Conversion, sources: list[str]) -> str:
    """The whole converted configuration as TOML text.

    Dependencies on services that are not part of `conv` are written as comments (the
    configuration would not load otherwise) and warned about by `resolve_deps`.
    """
    out = [f"# converted by `hachain import` from {', '.join(sources)}",
           "# review every line, then check it with `hachain check -c FILE`", ""]
    for key, table in conv.tables.items():
        for c in conv.comments.get(key, []):
            out.append(f"# {c}")
        head, _, name = key.partition(".")
        out.append(f"[{head}.{_toml_key(name)}]" if name else f"[{head}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        out.append("")
    for name, svc in conv.services.items():
        for c in conv.comments.get(name, []):
            out.append(f"# {c}")
        out.append(f"[service.{_toml_key(name)}]")
        keys = [k for k in _KEY_ORDER if k in svc] + [
            k for k in svc if k not in _KEY_ORDER and not k.startswith("_")]
        for k in keys:
            out.append(f"{k} = {_toml_value(svc[k])}")
        for rel, missing in svc.get("_missing", {}).items():
            out.append(f"# {rel} = {_toml_value(missing)}  (not imported)")
        out.append("")
    return "\n".join(out)


def drop_invalid(conv: Conversion, origin: dict[str, str]) -> None:
    """Check each converted service against the configuration schema on its own: a key
    that breaks a rule (a User= of %i, say) is dropped with a warning naming the unit; a
    service whose command breaks one is refused. So the printed result always loads."""
    from hachain.schema import key_text
    for name in list(conv.services):
        svc = conv.services[name]
        where = origin.get(name, f"service {name}")
        for _ in range(len(svc) + 1):
            alone = {k: v for k, v in svc.items() if k not in _DEP_RELS and
                     not k.startswith("_")}
            try:
                config.parse(to_toml(Conversion(services={name: alone}), []), "unit.toml")
                break
            except config.ConfigError as e:
                errors = e.errors
            bad = [k for k in alone if any(f" {key_text(('service', name, k))}{sep}" in err
                                           for err in errors for sep in (":", "."))]
            for k in bad:
                why = next(err.split(": ", 2)[-1] for err in errors
                           if key_text(("service", name, k)) in err)
                if k == "command":
                    conv.errors.append(f"{where}: command: {why}")
                else:
                    conv.warnings.append(f"{where}: {k}: {why}; dropped")
                svc.pop(k, None)
            if "command" not in svc:
                del conv.services[name]
                break
            if not bad:
                conv.errors += [f"{where}: {err}" for err in errors]
                del conv.services[name]
                break


_DEP_RELS = ("requires", "wants", "after", "conflicts", "on_failure")


def resolve_deps(conv: Conversion) -> None:
    """Turn each Before= into the other service's `after`; move dependencies on services
    not in `conv` aside (into comments), with warnings."""
    for name, svc in conv.services.items():
        for d in svc.get("on_failure", []):
            # started by the failure, not at boot (systemd does not start a unit with no
            # [Install] but through its OnFailure=)
            if d in conv.services and d not in conv.installed and d != name and \
                    "enabled" not in conv.services[d]:
                conv.services[d]["enabled"] = False
                conv.comments.setdefault(d, []).append(
                    f"enabled = false: started by the failure of {name} (its OnFailure=), "
                    "not at boot (no [Install] section)")
        for d in svc.pop("_before", []):
            where = conv.dep_origin.get((d, "after", name), f"service {name}: before")
            if d in conv.services and d != name:
                after = conv.services[d].setdefault("after", [])
                if name not in after:
                    after.append(name)
            else:
                conv.warnings.append(f"{where}: {d}: not among the imported services; "
                                     "dropped (it orders that service after this one: "
                                     "import it in the same command to keep it)")
    for name, svc in conv.services.items():
        missing: dict[str, list[str]] = {}
        for rel in _DEP_RELS:
            if rel not in svc:
                continue
            keep = [d for d in svc[rel] if d in conv.services and d != name]
            gone = [d for d in svc[rel] if d not in keep]
            if gone:
                missing[rel] = gone
            for d in gone:
                where = conv.dep_origin.get((name, rel, d), f"service {name}: {rel}")
                why = ("a service cannot name itself" if d == name else "not among the "
                       "imported services; left as a comment (import that unit in the same "
                       "command to keep it)")
                conv.warnings.append(f"{where}: {d}: {why}")
            if keep:
                svc[rel] = keep
            else:
                del svc[rel]
        if missing:
            svc["_missing"] = missing


def convert(text: str, path: str, fmt: str | None = None, unit: str | None = None,
            sockets: tuple[str, ...] = ()) -> Conversion:
    """Convert one file's text; `fmt` None detects the format from the content. `unit`:
    a systemd unit's name when not the file's (an instance of a template). `sockets`:
    socket units it gets whether it names them or not (`hachain import x.socket`)."""
    fmt = fmt or detect_format(text)
    if fmt == "systemd":
        return convert_systemd(text, path, unit, sockets)
    if fmt == "supervisord":
        return convert_supervisord(text, path)
    conv = Conversion()
    if fmt == "watchdog":
        from hachain import importer_watchdog
        importer_watchdog.convert_watchdog(text, path, conv)
        conv.sort_messages()
        if not conv.tables:
            conv.errors.append(f"{path}: no watchdog.conf option hachain can carry over")
        return conv
    conv.errors.append(f"{path}: neither a systemd unit ([Service]), a supervisord "
                       "configuration ([program:NAME]) nor a watchdog.conf; use --format")
    return conv


def _include_patterns(path: str, line: int, value: str, conv: Conversion) -> list[str]:
    """The glob patterns of a supervisord `[include] files = ...` line, made absolute the
    way supervisord does: %(here)s expanded, relative to the including file."""
    here = os.path.dirname(os.path.abspath(path))
    names = {"here": here, "host_node_name": platform.node()}
    value = _expand(value, names, Entry("include", "files", value, line), _Notes(path, conv))
    return [os.path.join(here, pat) for pat in value.split()]


def _drop_listen_clashes(conv: Conversion) -> None:
    """Units imported together that would listen on one address (two instances of one
    template, a service and its alternative): the later one's `listen` is dropped, with a
    warning, so the result loads; give each its own address by hand."""
    from hachain import listen
    svcs = conv.services
    for name, spec, other, _ in listen.clashes(
            [(n, tuple(s.get("listen", ())), frozenset(s.get("conflicts", ())))
             for n, s in svcs.items()]):
        if "listen" in svcs[name]:
            conv.warnings.append(f"service {name}: listen {spec!r} is also service "
                                 f"{other}'s: its listen dropped (both would bind it)")
            for k in ("listen", "socket_mode", "socket_user", "socket_group",
                      "listen_backlog", "fd_name", "socket_options",
                      "socket_receive_buffer", "socket_send_buffer"):
                svcs[name].pop(k, None)


def _service_of_socket(path: str) -> tuple[str, tuple[str, ...], str]:
    """(the service file a socket unit activates, (the socket's name,), "") as systemd
    pairs them (its Service=, or the socket's own name); or ("", (), why not)."""
    where, name = os.path.dirname(path), os.path.basename(path)
    try:
        got = _read_socket_unit(where, name)
    except (OSError, UnicodeDecodeError) as e:
        return "", (), f"{path}: cannot read: {getattr(e, 'strerror', None) or e}"
    if got is None:
        return "", (), f"{path}: cannot read: No such file or directory"
    entries = got[1]
    if any(e.section == "Socket" and e.key == "Accept" and e.value and _unit_bool(e.value)
           for e in entries):
        return "", (), (f"{path}: Accept=yes (a service instance per connection, inetd's "
                        "way) is not supported: hachain hands one service its listening "
                        "sockets")
    service = next((e.value for e in entries if e.section == "Socket" and
                    e.key == "Service" and e.value), name.removesuffix(".socket") + ".service")
    if name.endswith("@.socket"):
        # a template with no instance: the template service, as its own import does
        # (systemd makes neither without an instance)
        service = name.removesuffix(".socket") + ".service"
    target = os.path.join(where, service)
    if not os.path.exists(target) and _template_of(target) is None:
        return "", (), (f"{path}: the service it starts, {service}, is not beside it; "
                        "import that service with it")
    return target, (name,), ""


def _template_of(path: str) -> str | None:
    """For a unit instance that has no file of its own (`getty@tty1.service`), the
    template it is made from (`getty@.service` in the same directory), as systemd finds
    it; None otherwise."""
    base = os.path.basename(path)
    m = re.fullmatch(r"([^@/]+)@([^/]+)\.service", base)
    if m is None or os.path.exists(path):
        return None
    template = os.path.join(os.path.dirname(path), f"{m.group(1)}@.service")
    return template if os.path.exists(template) else None


def import_files(paths: list[str], fmt: str | None = None) -> tuple[str, Conversion]:
    """Read and convert every file; returns the TOML text and the combined conversion.

    A supervisord `[include] files = ...` is followed as supervisord does (globs relative
    to the including file, in sorted order; an included file's own [include] is not
    followed, and says so). Every input that gives no service is in `errors`, named.
    """
    total = Conversion()
    todo: list[tuple[str, str | None, bool]] = [(p, fmt, False) for p in paths]
    seen: set[str] = set()
    sources: list[str] = []
    while todo:
        p, f, included = todo.pop(0)
        real = os.path.realpath(p)
        if real in seen:
            continue
        seen.add(real)
        sources.append(os.path.basename(p))
        unit = None
        sockets: tuple[str, ...] = ()
        if p.endswith(".socket") and f in (None, "systemd"):
            # `hachain import x.socket`: the service it activates, with its sockets
            p, sockets, why = _service_of_socket(p)
            if why:
                total.errors.append(why)
                continue
            if os.path.realpath(p) in seen:
                continue
            seen.add(os.path.realpath(p))
        if (template := _template_of(p)) is not None:  # "getty@tty1.service": getty@.service
            unit, p = os.path.basename(p), template
        if real == os.devnull:
            total.errors.append(f"{p}: the unit is masked (a link to /dev/null): systemd never "
                                "starts it, so there is nothing to import")
            continue
        try:
            with open(p, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as e:
            total.errors.append(f"{p}: cannot read: {getattr(e, 'strerror', None) or e}")
            continue
        conv = convert(text, p, f, unit, sockets)
        drop_invalid(conv, {n: p for n in conv.services})
        found: list[tuple[str, str | None, bool]] = []
        for line, value in conv.includes:
            if included:
                conv.warnings.append(f"{p}:{line}: [include]: not followed: supervisord reads "
                                     "the [include] of its main configuration file only")
                continue
            for pattern in _include_patterns(p, line, value, conv):
                matches = sorted(glob.glob(pattern))
                if not matches:
                    conv.warnings.append(f"{p}:{line}: [include] files: {pattern} matches no "
                                         "file")
                found += [(m, "supervisord", True) for m in matches]
        todo[0:0] = found
        total.merge(conv)
    resolve_deps(total)
    _drop_listen_clashes(total)
    return to_toml(total, sources), total


# --- the command ----------------------------------------------------------------------------

def cmd_import(args: argparse.Namespace) -> int:
    """Print the TOML; warnings and refusals on stderr. Exit 0 when everything converted
    as it was, 1 when converted with warnings that need a look, 2 when an input (a unit,
    a program, a file) was refused: each refusal names it and says why."""
    text, conv = import_files(args.files, args.format)
    for w in conv.warnings:
        sys.stderr.write(f"{PROG}: warning: {w}\n")
    for e in conv.errors:
        sys.stderr.write(f"{PROG}: refused: {e}\n")
    if not conv.services and not conv.tables:
        if not conv.errors:  # else the refusals said why, each naming its input
            sys.stderr.write(f"{PROG}: nothing to import\n")
        return 2
    sys.stdout.write(text)
    try:
        config.parse(text, "imported.toml")
    except config.ConfigError as e:
        for line in e.errors:
            sys.stderr.write(f"{PROG}: refused: the result does not load: {line}\n")
        return 2
    if conv.errors:
        return 2
    return 1 if conv.warnings else 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `import` on an argparse sub-parsers object."""
    p = subparsers.add_parser(
        "import", help="convert systemd units / supervisord programs / watchdog.conf to "
        "hachain TOML",
        description="Convert systemd .service files, supervisord [program:x] sections and "
                    "the watchdog daemon's watchdog.conf into hachain TOML on stdout. Every "
                    "option that cannot be carried over gets one warning line on stderr "
                    "(file:line: option: why).")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="a .service file or a supervisord .conf (several: one configuration, "
                        "dependencies between them kept)")
    p.add_argument("--format", choices=("systemd", "supervisord", "watchdog"), default=None,
                   help="the input format (default: detected from the content)")
    p.set_defaults(func=cmd_import)
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m hachain.importer ...`: the same as `hachain import ...`."""
    return cmdline.main_of("import", add_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
