"""Configuration: one TOML file → frozen dataclasses, validated as a whole.

Owns: parsing, defaults, validation and error messages. Must not: start, signal or
open anything but the file itself. Every error names the file, the line (where the TOML
text lets us find it), the dotted key and what was expected:

    chain.toml:14: service.web.backoff.factor: must be >= 1, got 0.5

All errors in a file are collected and reported together (one per line) so a user fixes
a file in one pass. See docs/configuration.md for every key and its default.
"""

from __future__ import annotations

import os
import re
import signal
import tomllib
from dataclasses import dataclass, field
from typing import Any

DEFAULT_PATH = "/etc/hachain/chain.toml"

RESTART_POLICIES = ("always", "on-failure", "on-abnormal", "never")
KINDS = ("longrun", "oneshot")
READY_KINDS = ("none", "notify", "fd", "exec", "tcp")
INTENSITY_ACTIONS = ("maintenance", "restart-group", "reboot", "ignore")
HEALTH_KINDS = ("exec", "tcp")
RLIMITS = ("as", "core", "cpu", "data", "fsize", "memlock", "nofile", "nproc", "stack")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


class ConfigError(Exception):
    """One or more configuration errors; str() gives one line per error."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.1
    factor: float = 2.0
    max: float = 30.0
    reset_after: float = 10.0  # a run this long resets the delay to `initial`


@dataclass(frozen=True)
class Intensity:
    max_restarts: int = 5
    window: float = 60.0
    action: str = "maintenance"
    decay: float = 0.0  # > 0: a decaying count (1 per crash, -1 per `decay` s up) instead


@dataclass(frozen=True)
class HealthCheck:
    kind: str = "exec"
    command: tuple[str, ...] = ()
    port: int = 0
    interval: float = 10.0
    timeout: float = 5.0
    failures: int = 3  # consecutive failures that count as the service being hung


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    command: tuple[str, ...]
    kind: str = "longrun"
    restart: str = "always"
    backoff: Backoff = field(default_factory=Backoff)
    intensity: Intensity = field(default_factory=Intensity)
    enabled: bool = True
    requires: tuple[str, ...] = ()
    wants: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    restart_dependents: bool = True
    ready: str = "none"
    ready_fd: int = 3
    ready_command: tuple[str, ...] = ()
    ready_port: int = 0
    ready_timeout: float = 30.0
    watchdog_sec: float = 0.0
    health: HealthCheck | None = None
    critical: bool = False
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 5.0
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    user: str | None = None
    group: str | None = None
    umask: int | None = None
    rlimits: tuple[tuple[str, int, int], ...] = ()
    log_max_bytes: int = 1024 * 1024
    log_keep: int = 3
    success_exit: tuple[int, ...] = (0,)
    pids_max: int = 0  # cgroup pids.max for the service (0: no limit)

    @property
    def deps(self) -> tuple[str, ...]:
        """Everything this service orders itself after (requires ∪ wants ∪ after)."""
        seen: dict[str, None] = {}
        for n in self.requires + self.wants + self.after:
            seen[n] = None
        return tuple(seen)


@dataclass(frozen=True)
class WatchdogConfig:
    device: str = "auto"  # "auto" | "sim" | "none" | a path such as /dev/watchdog0
    timeout: int = 10
    pretimeout: int = 0
    pet_interval: float = 2.0
    nowayout: bool = False
    heartbeat_timeout: float = 5.0  # a live layer whose heartbeat is older is hung
    restart_grace: float = 10.0  # a dead layer may be without heartbeat this long
    max_loop_lag: float = 2.0  # the restarter's event-loop lag bound
    gate_critical: bool = True  # a critical service in maintenance/failed fails the gate
    # automatic restarts per second (averaged over 10 s) above which the restarter is in
    # an unbounded storm; per-service intensity limits keep ordinary crash loops far below
    max_restart_rate: float = 1000.0


@dataclass(frozen=True)
class ChainConfig:
    state_dir: str = "/run/hachain"
    persist_dir: str = "/var/lib/hachain"
    cgroup_root: str = "auto"  # "auto" | "none" | an absolute cgroup2 directory
    heartbeat_interval: float = 2.0
    restart_delay: float = 1.0
    log_dir: str = ""  # default: <persist_dir>/log
    log_format: str = "human"  # "human" | "json"
    control_group: str = ""  # members of this group may use the control socket too

    @property
    def service_log_dir(self) -> str:
        return self.log_dir or os.path.join(self.persist_dir, "log")


@dataclass(frozen=True)
class Config:
    path: str
    chain: ChainConfig
    watchdog: WatchdogConfig
    services: dict[str, ServiceConfig]


# --- locating keys in the source text ---------------------------------------------------

class _Locator:
    """Finds the line of a dotted key in TOML text (best effort, for error messages)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def line_of(self, path: list[str]) -> int | None:
        # Try the longest table prefix that appears as a header, then the next key below it.
        for cut in range(len(path), 0, -1):
            header = ".".join(path[:cut])
            hdr_line = self._header(header)
            if hdr_line is None:
                continue
            if cut == len(path):
                return hdr_line
            return self._key_after(hdr_line, path[cut]) or hdr_line
        return self._key_after(0, path[0]) if path else None

    def _header(self, dotted: str) -> int | None:
        pat = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(
            r'(?:"?%s"?)' % re.escape(p) for p in dotted.split(".")) + r"\s*\]")
        for i, ln in enumerate(self.lines):
            if pat.match(ln):
                return i + 1
        return None

    def _key_after(self, start: int, key: str) -> int | None:
        """The 1-based line of `key = ...` in the table whose header is line `start`."""
        pat = re.compile(r'^\s*"?%s"?\s*[=.]' % re.escape(key))
        for i in range(start, len(self.lines)):
            ln = self.lines[i]
            if re.match(r"^\s*\[", ln):
                break
            if pat.match(ln):
                return i + 1
        return None


class _Checker:
    def __init__(self, path: str, text: str) -> None:
        self.fname = os.path.basename(path)
        self.loc = _Locator(text)
        self.errors: list[str] = []

    def err(self, key: list[str], msg: str) -> None:
        line = self.loc.line_of(key)
        where = f"{self.fname}:{line}" if line else self.fname
        self.errors.append(f"{where}: {'.'.join(key)}: {msg}")

    # typed getters: return the default (and record an error) on a bad value
    def table(self, d: dict[str, Any], key: list[str], allowed: set[str]) -> None:
        for k in d:
            if k not in allowed:
                self.err(key + [k], f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def number(self, d: dict[str, Any], key: list[str], default: float, lo: float | None = None,
               hi: float | None = None, integer: bool = False, lo_open: bool = False) -> Any:
        name = key[-1]
        if name not in d:
            return default
        v = d[name]
        ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok_type:
            self.err(key, f"must be {'an integer' if integer else 'a number'}, got {v!r}")
            return default
        if lo is not None and (v <= lo if lo_open else v < lo):
            self.err(key, f"must be {'>' if lo_open else '>='} {lo:g}, got {v!r}")
            return default
        if hi is not None and v > hi:
            self.err(key, f"must be <= {hi:g}, got {v!r}")
            return default
        return int(v) if integer else float(v)

    def boolean(self, d: dict[str, Any], key: list[str], default: bool) -> bool:
        v = d.get(key[-1], default)
        if not isinstance(v, bool):
            self.err(key, f"must be true or false, got {v!r}")
            return default
        return v

    def choice(self, d: dict[str, Any], key: list[str], default: str,
               choices: tuple[str, ...]) -> str:
        v = d.get(key[-1], default)
        if v not in choices:
            self.err(key, f"must be one of {', '.join(repr(c) for c in choices)}, got {v!r}")
            return default
        return str(v)

    def string(self, d: dict[str, Any], key: list[str], default: str | None) -> Any:
        v = d.get(key[-1], default)
        if v is not None and not isinstance(v, str):
            self.err(key, f"must be a string, got {v!r}")
            return default
        return v

    def strlist(self, d: dict[str, Any], key: list[str],
                allow_str: bool = False) -> tuple[str, ...]:
        v = d.get(key[-1], [])
        if allow_str and isinstance(v, str):
            return (v,)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            self.err(key, f"must be a list of strings, got {v!r}")
            return ()
        return tuple(v)


# --- sections --------------------------------------------------------------------------

_CHAIN_KEYS = {"state_dir", "persist_dir", "cgroup_root", "heartbeat_interval",
               "restart_delay", "log_dir", "log_format", "control_group"}
_WD_KEYS = {"device", "timeout", "pretimeout", "pet_interval", "nowayout", "heartbeat_timeout",
            "restart_grace", "max_loop_lag", "gate_critical", "max_restart_rate"}
_SVC_KEYS = {"command", "shell", "kind", "restart", "backoff", "intensity", "enabled",
             "requires", "wants", "after", "conflicts", "restart_dependents", "ready",
             "ready_fd", "ready_command", "ready_port", "ready_timeout", "watchdog_sec",
             "health", "critical", "stop_signal", "stop_timeout", "env", "cwd", "user",
             "group", "umask", "rlimits", "log_max_bytes", "log_keep", "success_exit",
             "pids_max"}


def _chain(c: _Checker, d: dict[str, Any]) -> ChainConfig:
    k = ["chain"]
    c.table(d, k, _CHAIN_KEYS)
    dflt = ChainConfig()
    out = ChainConfig(
        state_dir=c.string(d, k + ["state_dir"], dflt.state_dir),
        persist_dir=c.string(d, k + ["persist_dir"], dflt.persist_dir),
        cgroup_root=c.string(d, k + ["cgroup_root"], dflt.cgroup_root),
        heartbeat_interval=c.number(d, k + ["heartbeat_interval"], dflt.heartbeat_interval,
                                    lo=0.05, hi=60),
        restart_delay=c.number(d, k + ["restart_delay"], dflt.restart_delay, lo=0, hi=3600),
        log_dir=c.string(d, k + ["log_dir"], ""),
        log_format=c.choice(d, k + ["log_format"], "human", ("human", "json")),
        control_group=c.string(d, k + ["control_group"], ""),
    )
    for key in ("state_dir", "persist_dir"):
        if not os.path.isabs(getattr(out, key)):
            c.err(k + [key], f"must be an absolute path, got {getattr(out, key)!r}")
    too_long = socket_path_problem(out.state_dir)
    if too_long:
        c.err(k + ["state_dir"], too_long)
    if out.cgroup_root not in ("auto", "none") and not os.path.isabs(out.cgroup_root):
        c.err(k + ["cgroup_root"], f"must be \"auto\", \"none\" or an absolute path, got "
              f"{out.cgroup_root!r}")
    return out


def _watchdog(c: _Checker, d: dict[str, Any]) -> WatchdogConfig:
    k = ["watchdog"]
    c.table(d, k, _WD_KEYS)
    df = WatchdogConfig()
    dev = c.string(d, k + ["device"], df.device)
    if dev not in ("auto", "sim", "none") and not dev.startswith("sim:") and not os.path.isabs(dev):
        c.err(k + ["device"], f"must be \"auto\", \"sim\", \"none\" or a device path, got {dev!r}")
        dev = df.device
    out = WatchdogConfig(
        device=dev,
        timeout=c.number(d, k + ["timeout"], df.timeout, lo=1, hi=3600, integer=True),
        pretimeout=c.number(d, k + ["pretimeout"], df.pretimeout, lo=0, hi=3600, integer=True),
        pet_interval=c.number(d, k + ["pet_interval"], df.pet_interval, lo=0.05, hi=3600),
        nowayout=c.boolean(d, k + ["nowayout"], df.nowayout),
        heartbeat_timeout=c.number(d, k + ["heartbeat_timeout"], df.heartbeat_timeout, lo=0.1),
        restart_grace=c.number(d, k + ["restart_grace"], df.restart_grace, lo=0),
        max_loop_lag=c.number(d, k + ["max_loop_lag"], df.max_loop_lag, lo=0.01),
        gate_critical=c.boolean(d, k + ["gate_critical"], df.gate_critical),
        max_restart_rate=c.number(d, k + ["max_restart_rate"], df.max_restart_rate, lo=0,
                                  lo_open=True),
    )
    if out.pet_interval >= out.timeout:
        c.err(k + ["pet_interval"], f"must be < watchdog.timeout ({out.timeout}), got "
              f"{out.pet_interval:g}")
    if out.pretimeout and out.pretimeout >= out.timeout:
        c.err(k + ["pretimeout"], f"must be < watchdog.timeout ({out.timeout}), got "
              f"{out.pretimeout}")
    return out


def _signal(c: _Checker, d: dict[str, Any], key: list[str], default: int) -> int:
    v = d.get(key[-1])
    if v is None:
        return default
    if isinstance(v, int) and not isinstance(v, bool) and 0 < v < signal.NSIG:
        return v
    if isinstance(v, str):
        name = v.upper() if v.upper().startswith("SIG") else "SIG" + v.upper()
        sig = getattr(signal.Signals, name, None) if name in signal.Signals.__members__ else None
        if sig is not None:
            return int(sig)
    c.err(key, f"must be a signal name such as \"SIGTERM\" or a number, got {v!r}")
    return default


def _exit_codes(c: _Checker, d: dict[str, Any], key: list[str]) -> tuple[int, ...]:
    v = d.get(key[-1], [0])
    if not isinstance(v, list) or not all(
            isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 255 for x in v):
        c.err(key, f"must be a list of exit codes 0-255, got {v!r}")
        return (0,)
    return tuple(v)


def _service(c: _Checker, name: str, d: Any) -> ServiceConfig | None:
    k = ["service", name]
    if not isinstance(d, dict):
        c.err(k, f"must be a table, got {d!r}")
        return None
    if not NAME_RE.match(name):
        c.err(k, "service names are 1-64 characters of letters, digits, '_', '.', '@', '-'")
    c.table(d, k, _SVC_KEYS)
    shell = c.boolean(d, k + ["shell"], False)
    raw_cmd = d.get("command")
    command: tuple[str, ...] = ()
    if raw_cmd is None:
        c.err(k + ["command"], "is required (an argv list, or a string with shell = true)")
    elif shell and isinstance(raw_cmd, str):
        command = ("/bin/sh", "-c", raw_cmd)
    elif isinstance(raw_cmd, str):
        c.err(k + ["command"], "must be an argv list such as [\"/usr/bin/x\", \"--flag\"] "
              "(a string runs through /bin/sh only with shell = true)")
    else:
        command = c.strlist(d, k + ["command"])
        if raw_cmd == []:
            c.err(k + ["command"], "must not be empty")
        if shell and command:
            command = ("/bin/sh", "-c", " ".join(command))

    b = d.get("backoff", {})
    backoff = Backoff()
    if not isinstance(b, dict):
        c.err(k + ["backoff"], f"must be a table {{initial, factor, max, reset_after}}, got {b!r}")
    else:
        bk = k + ["backoff"]
        c.table(b, bk, {"initial", "factor", "max", "reset_after"})
        backoff = Backoff(
            initial=c.number(b, bk + ["initial"], backoff.initial, lo=0),
            factor=c.number(b, bk + ["factor"], backoff.factor, lo=1),
            max=c.number(b, bk + ["max"], backoff.max, lo=0),
            reset_after=c.number(b, bk + ["reset_after"], backoff.reset_after, lo=0),
        )
        if backoff.max < backoff.initial:
            c.err(bk + ["max"], f"must be >= backoff.initial ({backoff.initial:g}), got "
                  f"{backoff.max:g}")

    i = d.get("intensity", {})
    intensity = Intensity()
    if not isinstance(i, dict):
        c.err(k + ["intensity"], f"must be a table {{max_restarts, window, action}}, got {i!r}")
    else:
        ik = k + ["intensity"]
        c.table(i, ik, {"max_restarts", "window", "action", "decay"})
        intensity = Intensity(
            max_restarts=c.number(i, ik + ["max_restarts"], intensity.max_restarts, lo=0,
                                  integer=True),
            window=c.number(i, ik + ["window"], intensity.window, lo=0, lo_open=True),
            action=c.choice(i, ik + ["action"], intensity.action, INTENSITY_ACTIONS),
            decay=c.number(i, ik + ["decay"], intensity.decay, lo=0, hi=365 * 86400),
        )

    health = None
    h = d.get("health")
    if h is not None:
        hk = k + ["health"]
        if not isinstance(h, dict):
            c.err(hk, f"must be a table {{kind, command|port, interval, timeout, failures}}, "
                  f"got {h!r}")
        else:
            c.table(h, hk, {"kind", "command", "port", "interval", "timeout", "failures"})
            health = HealthCheck(
                kind=c.choice(h, hk + ["kind"], "exec", HEALTH_KINDS),
                command=c.strlist(h, hk + ["command"]),
                port=c.number(h, hk + ["port"], 0, lo=0, hi=65535, integer=True),
                interval=c.number(h, hk + ["interval"], 10.0, lo=0.05),
                timeout=c.number(h, hk + ["timeout"], 5.0, lo=0.01),
                failures=c.number(h, hk + ["failures"], 3, lo=1, integer=True),
            )
            if health.kind == "exec" and not health.command:
                c.err(hk + ["command"], "is required when health.kind = \"exec\"")
            if health.kind == "tcp" and not health.port:
                c.err(hk + ["port"], "is required when health.kind = \"tcp\"")

    env: list[tuple[str, str]] = []
    e = d.get("env", {})
    if not isinstance(e, dict) or not all(isinstance(v, str) for v in e.values()):
        c.err(k + ["env"], f"must be a table of strings, got {e!r}")
    else:
        env = sorted(e.items())

    rl: list[tuple[str, int, int]] = []
    r = d.get("rlimits", {})
    if not isinstance(r, dict):
        c.err(k + ["rlimits"], f"must be a table such as {{nofile = 1024}}, got {r!r}")
    else:
        for rname, val in r.items():
            rk = k + ["rlimits", rname]
            if rname not in RLIMITS:
                c.err(rk, f"unknown limit (expected one of: {', '.join(RLIMITS)})")
                continue
            if isinstance(val, int) and not isinstance(val, bool) and val >= -1:
                rl.append((rname, val, val))
            elif (isinstance(val, list) and len(val) == 2
                  and all(isinstance(x, int) and not isinstance(x, bool) and x >= -1 for x in val)):
                rl.append((rname, val[0], val[1]))
            else:
                c.err(rk, f"must be an integer or [soft, hard] (-1 = unlimited), got {val!r}")

    umask = None
    if "umask" in d:
        u = d["umask"]
        if isinstance(u, str) and re.fullmatch(r"0?[0-7]{1,3}", u):
            umask = int(u, 8)
        elif isinstance(u, int) and not isinstance(u, bool) and 0 <= u <= 0o777:
            umask = u
        else:
            c.err(k + ["umask"], f"must be an octal string such as \"022\", got {u!r}")

    kind = c.choice(d, k + ["kind"], "longrun", KINDS)
    dflt_restart = "never" if kind == "oneshot" else "always"
    ready = c.choice(d, k + ["ready"], "none", READY_KINDS)
    svc = ServiceConfig(
        name=name, command=command, kind=kind,
        restart=c.choice(d, k + ["restart"], dflt_restart, RESTART_POLICIES),
        backoff=backoff, intensity=intensity,
        enabled=c.boolean(d, k + ["enabled"], True),
        requires=c.strlist(d, k + ["requires"], allow_str=True),
        wants=c.strlist(d, k + ["wants"], allow_str=True),
        after=c.strlist(d, k + ["after"], allow_str=True),
        conflicts=c.strlist(d, k + ["conflicts"], allow_str=True),
        restart_dependents=c.boolean(d, k + ["restart_dependents"], True),
        ready=ready,
        ready_fd=c.number(d, k + ["ready_fd"], 3, lo=3, hi=1023, integer=True),
        ready_command=c.strlist(d, k + ["ready_command"]),
        ready_port=c.number(d, k + ["ready_port"], 0, lo=0, hi=65535, integer=True),
        ready_timeout=c.number(d, k + ["ready_timeout"], 30.0, lo=0, lo_open=True),
        watchdog_sec=c.number(d, k + ["watchdog_sec"], 0.0, lo=0),
        health=health,
        critical=c.boolean(d, k + ["critical"], False),
        stop_signal=_signal(c, d, k + ["stop_signal"], int(signal.SIGTERM)),
        stop_timeout=c.number(d, k + ["stop_timeout"], 5.0, lo=0),
        env=tuple(env),
        cwd=c.string(d, k + ["cwd"], None),
        user=c.string(d, k + ["user"], None),
        group=c.string(d, k + ["group"], None),
        umask=umask,
        rlimits=tuple(rl),
        log_max_bytes=c.number(d, k + ["log_max_bytes"], 1024 * 1024, lo=1024, integer=True),
        log_keep=c.number(d, k + ["log_keep"], 3, lo=0, hi=100, integer=True),
        success_exit=_exit_codes(c, d, k + ["success_exit"]),
        pids_max=c.number(d, k + ["pids_max"], 0, lo=0, integer=True),
    )
    if ready == "exec" and not svc.ready_command:
        c.err(k + ["ready_command"], "is required when ready = \"exec\"")
    if ready == "tcp" and not svc.ready_port:
        c.err(k + ["ready_port"], "is required when ready = \"tcp\"")
    if svc.watchdog_sec and ready != "notify":
        c.err(k + ["watchdog_sec"], "needs ready = \"notify\" (WATCHDOG=1 arrives on the "
              "notify socket)")
    if kind == "oneshot" and svc.restart == "always":
        c.err(k + ["restart"], "a oneshot cannot use restart = \"always\" (it would never be "
              "done); use \"on-failure\" or \"never\"")
    if svc.cwd is not None and not os.path.isabs(svc.cwd):
        c.err(k + ["cwd"], f"must be an absolute path, got {svc.cwd!r}")
    return svc


def _graph_errors(c: _Checker, services: dict[str, ServiceConfig]) -> None:
    for s in services.values():
        for rel in ("requires", "wants", "after", "conflicts"):
            for dep in getattr(s, rel):
                if dep not in services:
                    c.err(["service", s.name, rel], f"unknown service {dep!r}")
                elif dep == s.name:
                    c.err(["service", s.name, rel], "a service cannot name itself")
        for dep in s.conflicts:
            if dep in s.requires:
                c.err(["service", s.name, "conflicts"], f"{dep!r} is both required and "
                      "conflicting")
    from hachain.restarter.graph import find_cycle
    cycle = find_cycle({n: tuple(d for d in s.deps if d in services and d != n)
                        for n, s in services.items()})
    if cycle:
        c.err(["service", cycle[0]], "dependency cycle: " + " -> ".join(cycle + [cycle[0]]))


def parse(text: str, path: str = "chain.toml") -> Config:
    """Parse and validate TOML text. Raises ConfigError listing every problem."""
    c = _Checker(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+)", str(e))
        where = f"{c.fname}:{m.group(1)}" if m else c.fname
        raise ConfigError([f"{where}: invalid TOML: {str(e).split(' (at line')[0]}"]) from None
    c.table(data, [], {"chain", "watchdog", "service"})
    chain_raw = data.get("chain", {})
    wd_raw = data.get("watchdog", {})
    chain = _chain(c, chain_raw) if isinstance(chain_raw, dict) else ChainConfig()
    wd = _watchdog(c, wd_raw) if isinstance(wd_raw, dict) else WatchdogConfig()
    services: dict[str, ServiceConfig] = {}
    raw_svcs = data.get("service", {})
    if not isinstance(raw_svcs, dict):
        c.err(["service"], "must be a table of [service.NAME] tables")
        raw_svcs = {}
    if chain.heartbeat_interval >= wd.heartbeat_timeout:
        c.err(["chain", "heartbeat_interval"], f"must be < watchdog.heartbeat_timeout "
              f"({wd.heartbeat_timeout:g}), got {chain.heartbeat_interval:g}: every "
              "heartbeat would look stale")
    for name, sd in raw_svcs.items():
        svc = _service(c, name, sd)
        if svc is not None:
            services[name] = svc
    _graph_errors(c, services)
    if c.errors:
        raise ConfigError(c.errors)
    return Config(path=os.path.abspath(path), chain=chain, watchdog=wd, services=services)


# Environment overrides, set by a parent layer (init, the simulated machine, tests) so one
# configuration file serves every place the chain runs.
ENV_OVERRIDES = {
    "HACHAIN_STATE_DIR": ("chain", "state_dir"),
    "HACHAIN_PERSIST_DIR": ("chain", "persist_dir"),
    "HACHAIN_CGROUP_ROOT": ("chain", "cgroup_root"),
    "HACHAIN_WATCHDOG_DEVICE": ("watchdog", "device"),
}


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
    """`cfg` with the HACHAIN_* overrides of `environ` (default os.environ) applied."""
    from dataclasses import replace
    env = os.environ if environ is None else environ
    chain, wd = cfg.chain, cfg.watchdog
    for var, (section, key) in ENV_OVERRIDES.items():
        val = env.get(var)
        if not val:
            continue
        if section == "chain":
            chain = replace(chain, **{key: val})  # type: ignore[arg-type]
        else:
            wd = replace(wd, **{key: val})  # type: ignore[arg-type]
    problem = socket_path_problem(chain.state_dir)
    if problem:
        raise ConfigError([f"HACHAIN_STATE_DIR: {problem}"])
    return replace(cfg, chain=chain, watchdog=wd)


def load(path: str) -> Config:
    """Read and validate a configuration file. ConfigError (one line per problem) on error."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read configuration: {e.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text (byte {e.start})"]) from None
    return parse(text, path)
