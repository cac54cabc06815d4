"""`hachain import /etc/watchdog.conf`: the `watchdog` daemon's configuration → hachain.

Owns: reading watchdog.conf(5) (`key = value` lines, `#` comments, keys that may repeat:
`ping`, `interface`, `file`, `pidfile`, `temperature-sensor`, `test-binary`) and mapping
it onto `[watchdog]` and one `[check.NAME]` per test (docs/checks.md, docs/coming-from.md).
Every option hachain cannot carry over gets one warning naming the file, the line and
the option. Pure: text in, tables out (the `test-directory` option is the only one
that looks at the file system, to list its scripts).
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import TYPE_CHECKING, Any

from hachain import channels

if TYPE_CHECKING:
    from hachain.importer import Conversion

# The daemon's defaults (watchdog.conf(5)) where hachain's differ
_DEFAULTS = {"interval": "1", "retry-timeout": "60", "repair-maximum": "1",
             "max-temperature": "90", "test-timeout": "60", "repair-timeout": "60"}
# Options that have nothing to carry over to, and why
_NOT_NEEDED = {
    "realtime": "the tickler always runs at real-time priority",
    "priority": "the tickler always runs at real-time priority",
    "lock-memory": "the tickler always locks its memory",
    "verbose": "hachain logs every check's failure, repair and recovery",
    "logtick": "hachain logs every check's failure, repair and recovery",
    "log-dir": "the chain's log goes to its stderr (the journal, a console, a file)",
    "heartbeat-file": "the boot record says why each of the last boots ended",
    "heartbeat-stamps": "the boot record says why each of the last boots ended",
    "admin": "no mail is sent: scrape `hachain metrics` and alert there",
    "sigterm-delay": "`hachain` stops the services itself (stop_signal, stop_timeout)",
    "allocatable-memory": "not a check kind: a `kind = \"command\"` check can allocate",
    "ping-count": "a ping check sends one echo per try and fails after retry_timeout",
    "watchdog-refresh": "the tickler pets every `[watchdog] pet_interval`",
}
_DETECT = re.compile(r"^\s*(watchdog-device|watchdog-timeout|max-load-(1|5|15)|min-memory|"
                     r"test-binary|repair-binary|retry-timeout|temperature-sensor)\s*=",
                     re.MULTILINE)


def looks_like(text: str) -> bool:
    """Is this a watchdog.conf (no section headers, the daemon's own option names)?"""
    return _DETECT.search(text) is not None and \
        re.search(r"^\s*\[", text, re.MULTILINE) is None


def _entries(text: str) -> list[tuple[int, str, str]]:
    out = []
    for ln, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        out.append((ln, key.strip().lower(), value.strip() if sep else ""))
    return out


def repair_with_error(program: str, *args: str) -> list[str]:
    """The daemon runs its repair-binary with the error number as its argument (a
    test-directory script with `repair` and the number): a shell puts hachain's
    $HACHAIN_CHECK_ERROR, the same number, in that place."""
    return ["/bin/sh", "-c", f'exec "$0" "$@" "${channels.ENV_CHECK_ERROR}"', program, *args]


def _name(stem: str, value: str, taken: set[str]) -> str:
    """A check name from what it tests ("ping-192.168.1.1", "file-messages")."""
    base = re.sub(r"[^A-Za-z0-9_.@-]+", "-", f"{stem}-{value}").strip("-.")[:60] or stem
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def convert_watchdog(text: str, path: str, conv: Conversion) -> None:
    """Fill `conv.tables` with `[watchdog]` and the checks; warnings into `conv`."""
    def warn(line: int, key: str, msg: str) -> None:
        conv.warnings.append(f"{path}:{line}: {key}: {msg}")

    single: dict[str, tuple[int, str]] = {}
    multi: list[tuple[int, str, str]] = []
    for ln, key, value in _entries(text):
        if key in ("ping", "interface", "file", "pidfile", "temperature-sensor",
                   "test-binary", "change"):
            multi.append((ln, key, value))
        elif key in _NOT_NEEDED:
            warn(ln, key, f"not carried over: {_NOT_NEEDED[key]}")
        else:
            single[key] = (ln, value)

    def get(key: str) -> str | None:
        got = single.pop(key, None)
        return got[1] if got is not None else _DEFAULTS.get(key)

    def number(key: str, cast: Any = float) -> Any:
        text = get(key)
        if text is None:
            return None
        try:
            return cast(text)
        except ValueError:
            warn(single_line.get(key, 0), key, f"not a number: {text!r}; the default used")
            return cast(_DEFAULTS[key]) if key in _DEFAULTS else None

    single_line = {k: ln for k, (ln, _) in single.items()}
    wd: dict[str, Any] = {}
    if dev := get("watchdog-device"):
        wd["device"] = dev if dev.startswith("/") else "auto"
    if (t := number("watchdog-timeout", int)) is not None:
        wd["timeout"] = t
    interval_given = "interval" in single
    interval = number("interval") or 1.0
    if not interval_given:
        pass  # (the daemon's 1 s is for its tests; the tickler keeps its own default)
    elif "timeout" in wd and interval >= wd["timeout"]:
        warn(single_line.get("interval", 0), "interval", f"{interval:g} s is not below the "
             f"watchdog-timeout ({wd['timeout']} s): pet_interval left at its default")
    else:
        wd["pet_interval"] = interval
    retry = number("retry-timeout")
    repair_max = number("repair-maximum", int)
    repair_bin = get("repair-binary")
    repair_timeout = number("repair-timeout")
    test_timeout = number("test-timeout")
    max_temp = number("max-temperature")

    def common() -> dict[str, Any]:
        c: dict[str, Any] = {"interval": max(interval, 1.0), "retry_timeout": retry}
        if repair_bin:
            # the daemon runs its repair-binary up to repair-maximum times for one
            # problem (0: without limit; here at most 16 in turn)
            times = min(repair_max or 16, 16)
            c["repair"] = [repair_with_error(repair_bin)] * times
            c["repair_timeout"] = repair_timeout
        return c

    checks: dict[str, dict[str, Any]] = {}
    taken: set[str] = set()
    for n in (1, 5, 15):
        if (load := number(f"max-load-{n}")) is not None:
            if load > 0:
                checks[_name("load", str(n), taken)] = {
                    "kind": "load", "max_load": load, "average": n, **common()}
    if (pages := number("min-memory", int)) is not None and pages > 0:
        checks[_name("memory", "available", taken)] = {
            "kind": "memory", "min_available": pages * os.sysconf("SC_PAGE_SIZE"),
            **common()}
    last_file: dict[str, Any] | None = None
    for ln, key, value in multi:
        if key == "change":
            if last_file is None:
                warn(ln, key, "no `file =` before it: dropped")
                continue
            try:
                last_file["max_age"] = float(value)
            except ValueError:
                warn(ln, key, f"not a number: {value!r}; dropped")
            continue
        if not value:
            warn(ln, key, "empty: dropped")
            continue
        if key == "ping":
            try:
                ipaddress.ip_address(value)
            except ValueError:
                warn(ln, key, f"{value!r} is a name: a ping check takes an address (a "
                     "lookup could hang with the network); dropped")
                continue
            checks[_name("ping", value, taken)] = {"kind": "ping", "host": value,
                                                   **common(), "timeout": 1.0}
        elif key == "interface":
            checks[_name("interface", value, taken)] = {"kind": "interface",
                                                        "interface": value, **common()}
        elif key == "file":
            last_file = {"kind": "file", "path": value, "max_age": 0.0, **common()}
            checks[_name("file", os.path.basename(value), taken)] = last_file
        elif key == "pidfile":
            checks[_name("pidfile", os.path.basename(value), taken)] = {
                "kind": "pidfile", "path": value, **common()}
        elif key == "temperature-sensor":
            checks[_name("temperature", os.path.basename(os.path.dirname(value)) or value,
                         taken)] = {"kind": "temperature", "path": value,
                                    "max_temperature": max_temp, **common()}
        elif key == "test-binary":
            checks[_name("test", os.path.basename(value), taken)] = {
                "kind": "command", "command": [value], **common(),
                "timeout": min(test_timeout or 60.0, max(interval, 1.0))}
    for name, c in list(checks.items()):
        if c["kind"] == "file" and not c["max_age"]:
            # the daemon only checks that a file without `change` can be stat'ed
            path = c.pop("path")
            del c["max_age"], c["kind"]
            checks[name] = {"kind": "command", "command": ["/usr/bin/test", "-e", path], **c}
            conv.comments.setdefault(f"check.{name}", []).append(
                "no `change =` for this file: it only has to exist")
    if (tdir := get("test-directory")) is not None and os.path.isdir(tdir):
        for script in sorted(os.listdir(tdir)):
            full = os.path.join(tdir, script)
            if os.path.isfile(full) and os.access(full, os.X_OK):
                checks[_name("test", script, taken)] = {
                    "kind": "command", "command": [full, "test"], **common(),
                    "repair": [repair_with_error(full, "repair")],
                    "repair_timeout": repair_timeout,
                    "timeout": min(test_timeout or 60.0, max(interval, 1.0))}
    for key, (ln, _v) in single.items():
        if key not in ("test-directory",):
            warn(ln, key, "not a watchdog.conf option hachain knows; dropped")
    if wd:
        conv.tables["watchdog"] = wd
    for name, c in checks.items():
        conv.tables[f"check.{name}"] = c
