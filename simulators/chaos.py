"""`hachain chaos`: a fault-injection campaign on the simulated machine, with a report.

Owns: the fault model (`KINDS`, documented in docs/chaos.md), a deterministic fault
schedule per seed, injecting each fault from the host side, waiting for the machine to
converge, checking the invariants, and the campaign's exit status. Must not: change
`SimMachine` or reach into the chain's code; it only signals processes of the machine it
started, writes `cgroup.freeze` of the services' cgroups of that machine, and fills the
small tmpfs file systems it mounted itself. Reports are `chaos_report.py`.

Facts the fault model relies on:

- From the host (the parent PID namespace) SIGKILL and SIGSTOP reach the machine's PID 1;
  killing it is a kernel panic for the machine (`SimMachine` reboots it).
- `cgroup.freeze` (cgroup v2) stops every task of a cgroup like SIGSTOP does but
  invisibly to the tasks (no SIGCHLD to the parent, `/proc/PID/stat` shows S/D, not T).
  hachain's layers are not in cgroups of their own, so freezing a layer is done as
  SIGSTOP, which has the same effect on the heartbeat (the thing the gate watches).
- `cgroup.kill` SIGKILLs frozen tasks too; but a cgroup stays frozen until someone
  writes `cgroup.freeze = 0`, so a process spawned into it later is born frozen.
- CLOCK_REALTIME is one clock for the whole host: time namespaces offset only
  CLOCK_MONOTONIC and CLOCK_BOOTTIME, so the wall clock of the machine cannot be stepped
  without stepping the host's. hachain times everything with CLOCK_MONOTONIC; the wall
  clock only labels records (gate.json, last_boot.json, boots.jsonl).
- A tmpfs mounted on `<machine>/run` and `<machine>/persist` before the machine starts
  gives the chain a run directory and a "disk" that can fill up without touching the
  host's file systems.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from hachain import __version__, bootrecord, channels, client, config
from hachain import snapshot as snapshot_mod
from hachain.simulators import chaos_report, chaos_svc
from hachain.simulators.machine import CONSOLE_NAME, SimMachine, find_cgroup2_mount

# --- the campaign's own services -------------------------------------------------------

# The service program (simulators/chaos_svc.py), copied into the work directory.
SERVICE_FILE = "chaos_svc.py"

# Watchdog settings of the built-in campaign: tight, so faults resolve in seconds.
WD_TIMEOUT, PET, HB_TIMEOUT, HB_INTERVAL, RESTART_DELAY = 3, 0.5, 1.5, 0.25, 0.5


def campaign_config_text(python: str, svc: str) -> str:
    """The built-in campaign configuration (four services, one critical notify one)."""
    def cmd(*args: str) -> str:
        return json.dumps([python, "-I", "-S", svc, *args])
    common = ('backoff = { initial = 0.1, factor = 2.0, max = 1.0, reset_after = 3 }\n'
              'intensity = { max_restarts = 40, window = 30, action = "maintenance" }\n'
              'stop_timeout = 1\nrlimits = { nofile = 128 }\n')
    return f"""\
# hachain chaos: built-in campaign configuration (the simulated machine overrides
# state_dir, persist_dir, cgroup_root and the device through HACHAIN_* variables).
[chain]
state_dir = "/run/hachain"
persist_dir = "/var/lib/hachain"
heartbeat_interval = {HB_INTERVAL}
restart_delay = {RESTART_DELAY}

[watchdog]
device = "sim"
timeout = {WD_TIMEOUT}
pet_interval = {PET}
heartbeat_timeout = {HB_TIMEOUT}
restart_grace = 4

[service.db]
command = {cmd("notify", "0.2")}
ready = "notify"
ready_timeout = 5
watchdog_sec = 1
critical = true
{common.replace("max_restarts = 40, window = 30,",
                f"max_restarts = {DB_MAX_RESTARTS}, window = 30, decay = 1,")}
[service.cache]
command = {cmd("fd")}
ready = "fd"
ready_timeout = 5
requires = ["db"]
{common}
[service.api]
command = {cmd("notify", "0.1")}
ready = "notify"
ready_timeout = 5
watchdog_sec = 1
after = ["db"]
{common}
[service.worker]
command = {cmd("none")}
{common}"""


# --- the fault model ------------------------------------------------------------------------

@dataclass(frozen=True)
class FaultKind:
    """One kind of fault. `target`: what it picks from — "service" (any long-running
    service), "liveness" (a service with watchdog_sec or a health check: the only ones
    whose hang the chain can see), "layer" (restarter, tickler), "layer+init", "init",
    "machine". `reboot`: None (a reboot is a failure), "watchdog" or "panic"."""
    name: str
    target: str
    reboot: str | None
    summary: str
    needs: str = ""  # "cgroup", "tmpfs", "never"


KINDS: dict[str, FaultKind] = {k.name: k for k in (
    FaultKind("kill-service", "service", None, "SIGKILL the service's main process"),
    FaultKind("crash-loop", "service", None,
              "SIGKILL the service 4 times in a row, each new process as soon as it exists"),
    FaultKind("stop-service", "service", None, "SIGSTOP the service, SIGCONT after 1 s"),
    FaultKind("hang-service", "liveness", None,
              "SIGSTOP the service and leave it: its watchdog must see it hung"),
    FaultKind("freeze-service", "service", None,
              "cgroup.freeze the service's cgroup, thaw after 1 s", "cgroup"),
    FaultKind("freeze-service-hung", "liveness", None,
              "cgroup.freeze the service's cgroup and leave it frozen", "cgroup"),
    FaultKind("fork-bomb", "service", None,
              "the service forks 64 sleepers (half in new sessions) and exits 1"),
    FaultKind("fd-exhaust", "service", None,
              "the service opens fds up to RLIMIT_NOFILE (exits 1, or hangs its pings)"),
    FaultKind("kill-layer", "layer", None, "SIGKILL the restarter or the tickler"),
    FaultKind("pause-layer", "layer+init", None,
              "SIGSTOP a layer for 0.5 s (< heartbeat_timeout): no reboot allowed"),
    FaultKind("hang-layer", "layer+init", "watchdog",
              "SIGSTOP a layer (= freezing it) and leave it: the watchdog must reset"),
    FaultKind("kill-init", "init", "panic", "SIGKILL PID 1 from the host: kernel panic"),
    FaultKind("disk-full", "machine", None,
              "fill the persist file system (tmpfs) for 2 s, then free it", "tmpfs"),
    FaultKind("run-full", "service", None,
              "fill the run file system (tmpfs), SIGKILL the service while it is full, "
              "free it after the reboot bound: supervision must go on, with no reset",
              "tmpfs"),
    FaultKind("clock-step", "machine", None, "step CLOCK_REALTIME by an hour", "never"),
    FaultKind("config-broken", "layer", None,
              "append a TOML syntax error to the configuration file, then SIGKILL a layer: "
              "it must come back from the running snapshot (no reboot), file restored after"),
    FaultKind("io-stall", "gated", "watchdog",
              "bind-mount a FIFO nobody writes over the heartbeat file of init or the "
              "restarter, inside the machine (a read that never returns, as on a hung "
              "mount): the pet loop keeps its timing, the gate fails by the read's deadline "
              "and says so, the watchdog resets", "tmpfs"),
    FaultKind("boot-loop", "critical", "watchdog",
              "the critical service fails at every start, boot after boot: the machine "
              "must come up in rescue within boot_loop.resets resets and stay up; then "
              "the cause is removed and `hachain clear --boot-loop` ends the rescue"),
    FaultKind("power-cut", "machine", "power-cut",
              "pull the plug while the chain writes persisted state (reload, stop, start "
              "in flight): nothing persisted may be torn, and nothing acknowledged lost"),
)}

CLOCK_STEP_REASON = (
    "CLOCK_REALTIME is not namespaced (time namespaces offset only CLOCK_MONOTONIC and "
    "CLOCK_BOOTTIME) and stepping the host clock is not allowed; hachain times everything "
    "with CLOCK_MONOTONIC, the wall clock only labels records")

BOOT_LOOP_RESETS = 3  # [chain] boot_loop's default `resets` (the campaign keeps it)
# db's intensity in the built-in configuration: a decaying count (each second up takes a
# crash off), so faults spread over a campaign never add up, while a crash at every
# start (boot-loop) parks it in maintenance within seconds
DB_MAX_RESTARTS = 6

# Convergence budgets (seconds) beyond the configured delays; see docs/chaos.md.
START_BUDGET = 3.0  # spawn + readiness of a service, or start of a layer
BOOT_BUDGET = 8.0  # from a boot to every service ready
REBOOT_MARGIN = 1.0  # tick period and scheduling on a loaded box
TMPFS_RUN, TMPFS_PERSIST = "8m", "16m"


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: the index in the schedule, the kind and the target."""
    index: int
    kind: str
    target: str


def schedule(seed: int, n: int, kinds: list[str], services: list[str],
             liveness: list[str]) -> list[Fault]:
    """The campaign's faults: a pure function of its arguments (same seed, same list)."""
    rng = random.Random(seed)
    kinds = sorted(kinds)
    pools = {"service": sorted(services), "liveness": sorted(liveness),
             "layer": ["restarter", "tickler"], "layer+init": ["init", "restarter", "tickler"],
             "gated": ["init", "restarter"], "critical": ["db"],
             "init": ["init"], "machine": ["machine"]}
    out = []
    for i in range(n):
        kind = rng.choice(kinds)
        out.append(Fault(i, kind, rng.choice(pools[KINDS[kind].target])))
    return out


def reboot_bound(cfg: config.Config) -> float:
    """Latest reset after a hang: heartbeat age + staleness + last pet + timeout (+margin)."""
    wd = cfg.watchdog
    return (cfg.chain.heartbeat_interval + wd.heartbeat_timeout + wd.pet_interval
            + wd.timeout + REBOOT_MARGIN)


def convergence_bound(kind: str, cfg: config.Config) -> float:
    """How long a fault of `kind` may take until every invariant holds again."""
    svcs = [s for s in cfg.services.values() if s.kind == "longrun"]
    backoff = max((s.backoff.max for s in svcs), default=1.0)
    liveness = max((s.watchdog_sec or (s.health.interval * s.health.failures if s.health else 0)
                    for s in svcs), default=0.0)
    stop = max((s.stop_timeout for s in svcs), default=1.0)
    service = backoff + 2 * START_BUDGET  # the service, then its dependents
    k = KINDS[kind]
    if kind == "boot-loop":  # a crash loop into maintenance, then a reset per boot, rescue
        return (DB_MAX_RESTARTS + 2) * (backoff + 0.5) + BOOT_LOOP_RESETS * (
            reboot_bound(cfg) + BOOT_BUDGET) + BOOT_BUDGET
    if k.reboot == "watchdog":
        return reboot_bound(cfg) + BOOT_BUDGET
    if k.reboot == "panic":
        return PANIC_DELAY + 1.0 + BOOT_BUDGET
    if k.reboot == "power-cut":
        return BOOT_BUDGET
    if kind in ("kill-layer", "config-broken"):
        return cfg.chain.restart_delay + 2 * START_BUDGET
    if kind in ("hang-service", "freeze-service-hung", "fd-exhaust"):
        return liveness + stop + service
    if kind == "crash-loop":
        return 4 * (backoff + START_BUDGET)
    if kind in ("stop-service", "freeze-service", "pause-layer", "disk-full"):
        return 2.0 + service  # the hold, then anything the hold disturbed
    if kind == "run-full":
        return reboot_bound(cfg) + service  # held full for the reboot bound, then catch up
    return service


PANIC_DELAY = 0.5
# SimMachine's "boot N: <what> (...)" event, back to its cause
BOOT_CAUSES = {"power on": "power-on", "watchdog reset": "watchdog", "after panic": "panic",
               "reboot": "reboot", "after a power cut": "power-cut"}
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
TERMINAL_RE = re.compile(r"^[^:]+: (failed|maintenance) \(expected (ready|done)\)")


# --- looking at the machine -------------------------------------------------------------

@dataclass
class Proc:
    """One process of the machine, seen from the host."""
    pid: int  # host pid
    nspid: int
    ppid: int  # host pid of the parent
    state: str
    start: int
    service: str | None  # HACHAIN_SERVICE from its environment
    cgroup: str  # its cgroup v2 path (relative to the mount)


def _read(path: str, mode: str = "rb") -> Any:
    with open(path, mode) as f:
        return f.read()


def _proc(pid: int) -> Proc | None:
    """Read one process's identity; None when it vanished meanwhile."""
    try:
        f = channels.proc_fields(pid)
        if f is None:
            return None
        status = _read(f"/proc/{pid}/status", "r")
        nspid = [ln for ln in status.splitlines() if ln.startswith("NSpid:")][0].split()[-1]
        svc = None
        try:
            for kv in _read(f"/proc/{pid}/environ").split(b"\0"):
                if kv.startswith(channels.ENV_SERVICE.encode() + b"="):
                    svc = kv.split(b"=", 1)[1].decode(errors="replace")
        except OSError:
            pass
        cg = ""
        for line in _read(f"/proc/{pid}/cgroup", "r").splitlines():
            if line.startswith("0::"):
                cg = line[3:]
        return Proc(pid, int(nspid), int(f[1]), f[0].decode(), int(f[19]), svc, cg)
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Snapshot:
    """What the host sees of the machine at one moment."""
    t: float
    boots: int
    init: int | None
    layers: dict[str, int | None]  # host pids of restarter, tickler (None: not found)
    hb_age: dict[str, float | None]
    services: dict[str, Any] | None
    error: str | None
    procs: list[Proc]
    admin: Any
    records: dict[str, Any] | None = None  # <state_dir>/services/NAME.json (None: not read)
    logger: int | None = None  # host pid of the logger (docs/logs.md), from its lock file


def _logger(state_dir: str, by_ns: dict[int, int]) -> int | None:
    """The logger's host pid: its lock file names it (a pid inside the machine). After a
    restarter crash its parent is init, and it is part of the chain, not a stray."""
    try:
        return by_ns.get(int(_read(os.path.join(state_dir, "logger.lock")).split()[0]))
    except (OSError, ValueError, IndexError):
        return None


def _records(state_dir: str) -> dict[str, Any]:
    """The restarter's runtime records, by service name ("unreadable: ..." when corrupt)."""
    out: dict[str, Any] = {}
    d = os.path.join(state_dir, channels.SERVICE_RECORD_DIR)
    try:
        names = [n for n in os.listdir(d) if n.endswith(".json")]
    except OSError:
        return out
    for n in names:
        try:
            out[n[:-5]] = channels.read_json(os.path.join(d, n))
        except (ValueError, OSError) as e:
            out[n[:-5]] = f"unreadable: {e}"
    return out


def snapshot(m: SimMachine) -> Snapshot:
    """Sample the machine: boots, layers, the restarter's status, every process, admin."""
    now = time.monotonic()
    init = m.init_host_pid()
    procs: list[Proc] = []
    if init is not None:
        try:
            ns = os.readlink(f"/proc/{init}/ns/pid")
        except OSError:
            ns = None
        for e in os.listdir("/proc"):
            if e.isdigit():
                try:
                    same = os.readlink(f"/proc/{e}/ns/pid") == ns
                except OSError:
                    continue
                if same and (p := _proc(int(e))) is not None:
                    procs.append(p)
    by_ns = {p.nspid: p.pid for p in procs}
    layers: dict[str, int | None] = {}
    ages: dict[str, float | None] = {}
    for layer in channels.LAYERS:
        hb = m.heartbeat(layer)
        ages[layer] = None if hb is None else round(hb.age(now), 3)
        layers[layer] = None if hb is None else by_ns.get(hb.pid)
    services, error = None, None
    try:
        rep = client.request(m.state_dir, {"op": "status"}, timeout=1.0)
        if rep.get("ok"):
            services = rep.get("services", {})
        else:
            error = str(rep.get("error"))
    except client.ControlError as e:
        error = str(e)
    try:
        admin = channels.read_json(os.path.join(m.persist_dir, channels.ADMIN_STATE))
    except (ValueError, OSError) as e:
        admin = f"unreadable: {e}"
    return Snapshot(now, len(m.boots), init, layers, ages, services, error, procs, admin or {},
                    _records(m.state_dir), _logger(m.state_dir, by_ns))


def _torn_files(persist_dir: str) -> list[str]:
    """Every persisted JSON or JSON-lines file that does not parse (a torn write)."""
    out = []
    for root, _dirs, files in os.walk(persist_dir):
        for n in files:
            path = os.path.join(root, n)
            if n.endswith(".json"):
                try:
                    json.loads(_read(path))
                except (ValueError, OSError) as e:
                    out.append(f"{os.path.relpath(path, persist_dir)}: torn: {e}")
            elif n.endswith(".jsonl"):
                for i, line in enumerate(_read(path).splitlines()):
                    try:
                        json.loads(line)
                    except ValueError as e:
                        out.append(f"{os.path.relpath(path, persist_dir)}:{i + 1}: torn: {e}")
    return out


def _main_procs(snap: Snapshot, name: str) -> list[Proc]:
    """A service's top processes: carrying its name, with a parent that does not."""
    mine = {p.pid: p for p in snap.procs if p.service == name}
    return [p for p in mine.values() if p.ppid not in mine]


def problems(snap: Snapshot, cfg: config.Config, admin0: Any, cg_rel: str | None,
             hb_timeout: float) -> list[str]:
    """Every invariant the snapshot breaks (transient ones included: the caller waits)."""
    out = []
    if snap.init is None:
        out.append("PID 1 not found")
    for layer in channels.LAYERS:
        age = snap.hb_age[layer]
        if snap.layers[layer] is None or age is None:
            out.append(f"{layer}: not running")
        elif age > hb_timeout:
            out.append(f"{layer}: heartbeat {age:.1f} s old")
    if snap.services is None:
        out.append(f"restarter does not answer: {snap.error}")
        return out
    for name, c in cfg.services.items():
        st = snap.services.get(name)
        if st is None:
            out.append(f"{name}: unknown to the restarter")
            continue
        up = c.enabled and st.get("want") == "up"
        mains = _main_procs(snap, name)
        if not up:
            want_state, n = "stopped", 0
        elif c.kind == "oneshot":
            want_state, n = "done", 0
        else:
            want_state, n = "ready", 1
        if st["state"] != want_state:
            out.append(f"{name}: {st['state']} (expected {want_state})"
                       + (f": {st['reason']}" if st.get("reason") else ""))
        if len(mains) != n:
            out.append(f"{name}: {len(mains)} main processes (expected {n}): "
                       f"{sorted(p.nspid for p in mains)}")
        elif n == 1 and st.get("pid") != mains[0].nspid:
            out.append(f"{name}: the restarter says pid {st.get('pid')}, running is "
                       f"{mains[0].nspid}")
        if snap.records is not None:
            # what a restarter restarted now would re-adopt from: it must name what runs
            rec = snap.records.get(name)
            rec_pid = rec.get("pid") if isinstance(rec, dict) else None
            if (st.get("pid") or rec_pid) and rec_pid != st.get("pid"):
                out.append(f"{name}: runtime record names pid {rec_pid}"
                           + ("" if rec is None or isinstance(rec, dict) else f" ({rec})")
                           + f", the restarter runs {st.get('pid')}")
        if cg_rel is not None:
            want_cg = f"{cg_rel}/{name}"
            for p in snap.procs:
                if p.service == name and p.cgroup != want_cg:
                    out.append(f"{name}: pid {p.nspid} outside its cgroup ({p.cgroup})")
    if snap.admin != admin0:
        out.append(f"admin.json changed: {admin0!r} -> {snap.admin!r}")
    return out


def lasting(a: Snapshot, b: Snapshot) -> list[str]:
    """Zombies and strays present in both snapshots (same pid and start time)."""
    def bad(s: Snapshot) -> dict[tuple[int, int], str]:
        known = {s.init, s.logger, *s.layers.values()}
        out = {}
        for p in s.procs:
            if p.state == "Z":
                out[(p.pid, p.start)] = f"zombie pid {p.nspid} (parent host pid {p.ppid})"
            elif p.service is None and p.pid not in known and p.ppid not in known - {s.init}:
                out[(p.pid, p.start)] = f"stray pid {p.nspid} outside the tree"
        return out
    ba = bad(a)
    return [msg for key, msg in bad(b).items() if key in ba]


# --- the campaign ---------------------------------------------------------------------------

@dataclass
class Result:
    """One fault's outcome. Times are seconds from the campaign's start."""
    index: int
    kind: str
    target: str
    component: str
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    t_fault: float = 0.0
    t_detect: float | None = None
    t_recover: float | None = None
    t_end: float = 0.0
    detect: float | None = None
    converge: float | None = None
    bound: float = 0.0
    reboot: str | None = None
    reboot_after: float | None = None
    console: str = ""  # the machine's console log
    console_line: int = 0  # its first line written after the fault (1-based)


class CampaignError(Exception):
    """The campaign cannot run here (no root, no unshare, bad setup)."""


class Campaign:
    """Run a list of faults on one simulated machine; see module docstring."""

    def __init__(self, config_path: str, workdir: str, seed: int, faults: list[Fault],
                 kinds: list[str], skipped: dict[str, str], settle: float = 0.5,
                 progress: Callable[[int, int, Result | None, str], None] | None = None,
                 tmpfs: bool = True) -> None:
        self.config_path = config_path
        self.cfg = config.load(config_path)
        # the machine runs from a copy: config-broken breaks the copy, never the user's file
        os.makedirs(workdir, exist_ok=True)
        self.run_config = os.path.join(workdir, "machine-chain.toml")
        with open(self.run_config, "wb") as f:
            f.write(_read(config_path))
        self.workdir = workdir
        self.seed = seed
        self.faults = faults
        self.kinds = kinds
        self.skipped = skipped
        self.settle = settle
        self.progress = progress or (lambda *_a: None)
        self.want_tmpfs = tmpfs
        self.mounts: list[str] = []
        self.machine: SimMachine | None = None
        self.machine_dir = os.path.join(workdir, "m")
        self.t0 = time.monotonic()
        self.results: list[Result] = []
        self.boot_times: list[float] = []
        self.admin0: Any = {}
        self.resets = 0
        self.started_wall = time.time()  # labels the report only
        self.boot_causes: list[str] = []  # beside boot_times: why each boot came
        self.forced_after: int | None = None  # reset() after this failed fault's index
        self.machine_console = os.path.join(self.machine_dir, CONSOLE_NAME)

    # -- setup and teardown -------------------------------------------------------------

    def mount_tmpfs(self) -> bool:
        """A small tmpfs on <machine>/run and <machine>/persist; False when not possible."""
        for sub, size in (("run", TMPFS_RUN), ("persist", TMPFS_PERSIST)):
            path = os.path.join(self.machine_dir, sub)
            os.makedirs(path, exist_ok=True)
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755",
                                "chaos-" + sub, path], capture_output=True, text=True,
                               timeout=10)
            if r.returncode != 0:
                self.skip_fs = f"cannot mount a tmpfs: {r.stderr.strip() or r.returncode}"
                return False
            self.mounts.append(path)
        return True

    def unmount(self) -> None:
        """Undo mount_tmpfs (lazily when something still holds a file open), and any
        tmpfs of ours still mounted under the machine directory (a signal between the
        mount and its bookkeeping)."""
        for path in reversed([*self.mounts, *campaign_mounts(self.machine_dir)]):
            if path not in campaign_mounts(self.machine_dir):
                continue
            r = subprocess.run(["umount", path], capture_output=True, timeout=10)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", path], capture_output=True, timeout=10)
        self.mounts.clear()

    def power_on(self) -> None:
        """A fresh SimMachine on the machine directory, booted."""
        self.machine = SimMachine(self.run_config, self.machine_dir, panic_delay=PANIC_DELAY,
                                  on_event=self._on_event)
        self.machine.start()

    def _on_event(self, line: str) -> None:
        if line.startswith("boot ") and ": " in line:
            t = round(time.monotonic() - self.t0, 3)
            self.boot_times.append(t)
            what = line.split(": ", 1)[1].split(" (", 1)[0]
            cause = BOOT_CAUSES.get(what, what)
            if self.forced_after is not None:  # the campaign's own power-off and on
                cause, self.forced_after = f"campaign reset after #{self.forced_after}", None
            self.boot_causes.append(cause)

    def power_off(self) -> None:
        """Stop the machine (kills its namespace, removes its cgroups)."""
        if self.machine is not None:
            self.machine.stop()
            self.machine = None
        for path in self.mounts:
            _unfill(path)

    @property
    def cg_rel(self) -> str | None:
        """The machine's cgroup root relative to the cgroup2 mount (as /proc/PID/cgroup)."""
        root = self.machine.cgroup_root if self.machine else None
        mount = find_cgroup2_mount()
        if not root or not mount:
            return None
        return "/" + os.path.relpath(root, mount)

    # -- observation ----------------------------------------------------------------------

    def _problems(self, snap: Snapshot) -> list[str]:
        return problems(snap, self.cfg, self.admin0, self.cg_rel,
                        self.cfg.watchdog.heartbeat_timeout)

    def wait_converged(self, deadline: float, detected: Callable[[Snapshot], bool],
                       watch: Callable[[Snapshot], str | None]) -> tuple[
                           float | None, float | None, list[str], Snapshot]:
        """Poll until `detected` and every invariant holds twice, `settle` apart.

        `watch` may end the wait early with a hard failure (an unexpected reboot).
        Returns (detect time, recover time, problems, last snapshot).
        """
        assert self.machine is not None
        t_detect = None
        probs: list[str] = []
        terminal = 0  # polls in a row with a wanted service held in failed / maintenance
        while True:
            snap = snapshot(self.machine)
            hard = watch(snap)
            if hard:
                return t_detect, None, [hard], snap
            if t_detect is None and detected(snap):
                t_detect = snap.t
            if t_detect is not None:
                probs = self._problems(snap)
                if not probs:
                    time.sleep(self.settle)
                    again = snapshot(self.machine)
                    hard = watch(again)
                    if hard:
                        return t_detect, None, [hard], again
                    probs = self._problems(again) + lasting(snap, again)
                    if not probs:
                        return t_detect, snap.t, [], again
                # failed and maintenance end only by an administrator: no use waiting
                terminal = terminal + 1 if any(TERMINAL_RE.search(p) for p in probs) else 0
                if terminal >= 5:
                    return t_detect, None, probs, snap
            else:
                probs = ["the fault's effect was never seen"] + self._problems(snap)
            if time.monotonic() > deadline:
                return t_detect, None, probs, snap
            time.sleep(0.1)

    def baseline(self) -> list[str]:
        """Wait for the freshly booted machine to converge; its problems if it does not."""
        assert self.machine is not None
        try:
            self.admin0 = channels.read_json(os.path.join(self.machine.persist_dir,
                                                          channels.ADMIN_STATE)) or {}
        except (ValueError, OSError):
            self.admin0 = {}
        deadline = time.monotonic() + BOOT_BUDGET + 10
        _, rec, probs, snap = self.wait_converged(deadline, lambda _s: True, lambda _s: None)
        self.admin0 = snap.admin
        return [] if rec is not None else probs

    # -- one fault ------------------------------------------------------------------------

    def run_fault(self, f: Fault) -> Result:
        """Inject `f`, wait for convergence, judge it."""
        assert self.machine is not None
        m = self.machine
        k = KINDS[f.kind]
        comp = "machine" if f.target == "machine" else f.target
        res = Result(f.index, f.kind, f.target, comp, bound=convergence_bound(f.kind, self.cfg))
        pre = snapshot(m)
        pre_pid = (pre.services or {}).get(f.target, {}).get("pid")
        pre_state = (pre.services or {}).get(f.target, {}).get("state")
        pre_layer = pre.layers.get(f.target)
        res.console, res.console_line = _console_position(m.console)
        t0 = time.monotonic()
        try:
            during = self.inject(f, pre)
        except (OSError, InjectError) as e:
            res.ok, res.problems = False, [f"injection failed: {e}"]
            res.t_fault = res.t_end = round(t0 - self.t0, 3)
            return res
        rb = reboot_bound(self.cfg)

        def detected(s: Snapshot) -> bool:
            if k.reboot:
                return s.boots > pre.boots
            if k.target in ("service", "liveness") and f.kind not in ("stop-service",
                                                                       "freeze-service"):
                # the restarter noticed: the service left its state, or has a new pid
                now = (s.services or {}).get(f.target, {})
                return (now.get("state") not in (None, pre_state)
                        or now.get("pid") not in (None, pre_pid))
            if f.kind in ("kill-layer", "config-broken"):
                return s.layers.get(f.target) not in (None, pre_layer)
            return True

        allowed = BOOT_LOOP_RESETS if f.kind == "boot-loop" else 1

        def watch(s: Snapshot) -> str | None:
            if s.boots > pre.boots + allowed:
                return f"{s.boots - pre.boots} reboots after one fault"
            if s.boots > pre.boots:
                boot = m.boots[pre.boots]
                res.reboot = boot["cause"]
                res.reboot_after = round(boot["mono"] - t0, 3)
                if not k.reboot:
                    return (f"false reboot ({boot['cause']}) {res.reboot_after:.2f} s "
                            "after the fault")
                if boot["cause"] != k.reboot:
                    return f"reboot by {boot['cause']}, expected {k.reboot}"
                if k.reboot == "watchdog" and res.reboot_after > rb and f.kind != "boot-loop":
                    return f"watchdog reset after {res.reboot_after:.2f} s > bound {rb:.2f} s"
            elif k.reboot == "watchdog" and f.kind != "boot-loop" and \
                    time.monotonic() - t0 > rb + PANIC_DELAY + 2:
                return f"no reboot within {rb + PANIC_DELAY + 2:.1f} s of the hang"
            return None

        deadline = t0 + res.bound * 1.5 + 5
        t_det, t_rec, probs, _ = self.wait_converged(deadline, detected, watch)
        res.t_fault = round(t0 - self.t0, 3)
        res.t_end = round(time.monotonic() - self.t0, 3)
        if t_det is not None:
            res.t_detect = round(t_det - self.t0, 3)
            res.detect = round(t_det - t0, 3)
        if t_rec is not None:
            res.t_recover = round(t_rec - self.t0, 3)
            res.converge = round(t_rec - t0, 3)
            if res.converge > res.bound:
                probs = [f"converged in {res.converge:.2f} s > bound {res.bound:.2f} s"]
        probs = during + probs
        res.ok = not probs
        res.problems = probs
        return res

    def inject(self, f: Fault, pre: Snapshot) -> list[str]:
        """Do the fault to the running machine (host side); what broke while doing it
        (only the kinds that hold a condition and watch the chain through it)."""
        assert self.machine is not None
        kind = f.kind
        if kind == "run-full":
            return self._run_full(f.target, pre)
        if kind == "config-broken":
            return self._config_broken(f.target, pre)
        if kind == "power-cut":
            return self._power_cut(f, pre)
        if kind == "io-stall":
            return self._io_stall(f.target, pre)
        if kind == "boot-loop":
            return self._boot_loop(f.target, pre)
        if KINDS[kind].target in ("service", "liveness"):
            pid = self._service_pid(pre, f.target)
            if kind == "kill-service":
                os.kill(pid, signal.SIGKILL)
            elif kind == "crash-loop":
                self._crash_loop(f.target, pid, 4)
            elif kind == "stop-service":
                os.kill(pid, signal.SIGSTOP)
                time.sleep(1.0)
                os.kill(pid, signal.SIGCONT)
            elif kind == "hang-service":
                os.kill(pid, signal.SIGSTOP)
            elif kind in ("freeze-service", "freeze-service-hung"):
                path = self._cgroup(f.target)
                _write(os.path.join(path, "cgroup.freeze"), "1")
                if kind == "freeze-service":
                    time.sleep(1.0)
                    _write(os.path.join(path, "cgroup.freeze"), "0")
            elif kind == "fork-bomb":
                os.kill(pid, signal.SIGUSR1)
            elif kind == "fd-exhaust":
                os.kill(pid, signal.SIGUSR2)
            return []
        if kind in ("kill-layer", "pause-layer", "hang-layer", "kill-init"):
            lpid = pre.init if f.target == "init" else pre.layers.get(f.target)
            if lpid is None:
                raise InjectError(f"{f.target}: no host pid")
            if kind in ("kill-layer", "kill-init"):
                os.kill(lpid, signal.SIGKILL)
            else:
                os.kill(lpid, signal.SIGSTOP)
                if kind == "pause-layer":
                    time.sleep(0.5)
                    os.kill(lpid, signal.SIGCONT)
            return []
        if kind == "disk-full":
            path = self.machine.persist_dir
            _fill(path)
            time.sleep(2.0)
            _unfill(path)
            return []
        raise InjectError(f"{kind}: cannot be injected here")

    def _config_broken(self, layer: str, pre: Snapshot) -> list[str]:
        """Break the configuration file the machine runs from (a copy of the campaign's:
        the user's file is never touched), SIGKILL `layer`, and wait, with the file still
        broken, for init to bring it back with a fresh heartbeat: it must start from the
        running snapshot. Then put the file back."""
        assert self.machine is not None
        lpid = pre.layers.get(layer)
        if lpid is None:
            raise InjectError(f"{layer}: no host pid")
        good = _read(self.run_config)
        seen: list[str] = []
        try:
            with open(self.run_config, "ab") as f:
                f.write(b"\n[service.typo\n")
            os.kill(lpid, signal.SIGKILL)
            limit = self.cfg.chain.restart_delay + 2 * START_BUDGET
            t0 = time.monotonic()
            while True:
                s = snapshot(self.machine)
                age = s.hb_age.get(layer)
                if s.layers.get(layer) not in (None, lpid) and age is not None and \
                        age <= self.cfg.watchdog.heartbeat_timeout:
                    break
                if time.monotonic() - t0 > limit:
                    seen.append(f"{layer}: not back within {limit:.1f} s with the "
                                "configuration file broken on disk")
                    break
                time.sleep(0.1)
        finally:
            with open(self.run_config, "wb") as f:
                f.write(good)
        return seen

    def _io_stall(self, layer: str, pre: Snapshot) -> list[str]:
        """Bind-mount a FIFO nobody writes over `layer`'s heartbeat file in the machine's
        mount namespace: the layer goes on writing through the descriptor it holds, but
        every open of the path (the tickler's reads) blocks for ever, as on a hung NFS or
        FUSE mount. The gate must fail by the read's deadline, the watchdog reset the
        machine (judged by run_fault; the mount dies with the namespace), and the boot
        record of the boot that ended must name the stalled read."""
        assert self.machine is not None
        m = self.machine
        if pre.init is None:
            raise InjectError("no PID 1 to enter")
        fifo = os.path.join(self.workdir, f"stall-{layer}.fifo")
        if not os.path.exists(fifo):
            os.mkfifo(fifo)
        boots = len(m.boots)
        stalled = bootrecord.read(m.persist_dir).get("counter")  # this boot's number
        p = subprocess.run(["nsenter", "-t", str(pre.init), "-m", "--", "mount", "--bind",
                            fifo, channels.heartbeat_path(m.state_dir, layer)],
                           capture_output=True, text=True, timeout=10)
        if p.returncode != 0:
            raise InjectError(f"bind mount of a FIFO over {layer}'s heartbeat: "
                              f"{p.stderr.strip() or p.returncode}")
        try:
            m.wait_boot(boots + 1, reboot_bound(self.cfg) + PANIC_DELAY + 5)
        except Exception as e:  # noqa: BLE001 - reported as the fault's problem
            return [f"no reset after {layer}'s heartbeat read stalled: {e}"]
        rec = bootrecord.read(m.persist_dir)
        ended: dict[str, Any] = next((b for b in rec["boots"] if b.get("boot") == stalled), {})
        detail = "; ".join(map(str, ended.get("detail") or []))
        if ended.get("reason") != bootrecord.GATE_FAILURE or "did not answer" not in detail:
            return [f"the boot record of the stalled boot #{stalled} does not name the "
                    f"stalled read: {ended.get('reason')}: {detail or 'no detail'}"]
        return []

    def _boot_loop(self, name: str, pre: Snapshot) -> list[str]:
        """Make `name` (the critical service) fail at every start, boot after boot, and
        kill its process. Its decaying intensity parks it in maintenance, the gate fails,
        the watchdog resets the machine, and again; the boot after `BOOT_LOOP_RESETS`
        resets must be a rescue that holds it out of the gate, with the machine staying
        up for the reboot bound. Then the cause goes and `hachain clear --boot-loop` ends
        the rescue (run_fault then judges convergence as for every fault)."""
        assert self.machine is not None
        m = self.machine
        program = next(a for a in self.cfg.services[name].command if a.endswith(SERVICE_FILE))
        poison = os.path.join(os.path.dirname(program), "broken-" + name)
        pid = self._service_pid(pre, name)
        boots = len(m.boots)
        seen: list[str] = []
        with open(poison, "w") as f:
            f.write("every start fails (chaos boot-loop)\n")
        try:
            os.kill(pid, signal.SIGKILL)
            limit = convergence_bound("boot-loop", self.cfg)
            deadline = time.monotonic() + limit
            # Unclean boots before the fault (a hang's reset, a panic) count towards the
            # loop too, so the rescue may come after fewer resets, never after more.
            held, at = None, 0
            while time.monotonic() < deadline:
                n = len(m.boots) - boots
                if 1 <= n <= BOOT_LOOP_RESETS:
                    st = (snapshot(m).services or {}).get(name, {})
                    if st.get("state") == "maintenance" and "rescue" in str(st.get("reason")):
                        held, at = time.monotonic(), n
                        break
                elif n > BOOT_LOOP_RESETS:
                    break
                time.sleep(0.2)
            if held is None:
                return [f"{name}: not held by a rescue boot within {limit:.0f} s "
                        f"({len(m.boots) - boots} reset(s); at most {BOOT_LOOP_RESETS})"]
            # the rescue must hold: the machine stays up, petting, for the reboot bound
            while time.monotonic() - held < reboot_bound(self.cfg):
                time.sleep(0.2)
            if len(m.boots) != boots + at:
                seen.append(f"the rescue boot did not stay up: {len(m.boots) - boots} resets")
            st = snapshot(m)
            tk = (st.services or {}).get(name, {})
            if tk.get("state") != "maintenance":
                seen.append(f"{name}: {tk.get('state')} in the rescue boot, expected held in "
                            "maintenance")
        finally:
            os.unlink(poison)
        for line in self._clear_boot_loop():
            seen.append(line)
        return seen

    def _clear_boot_loop(self) -> list[str]:
        """`hachain clear --boot-loop` on the machine, as an operator runs it."""
        assert self.machine is not None
        m = self.machine
        p = subprocess.run([sys.executable, "-m", "hachain.cli", "clear", "--boot-loop",
                            "--state-dir", m.state_dir, "--persist-dir", m.persist_dir],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            return [f"hachain clear --boot-loop failed ({p.returncode}): "
                    f"{(p.stderr or p.stdout).strip()[-300:]}"]
        return []

    def _power_cut(self, f: Fault, pre: Snapshot) -> list[str]:
        """Start a reload and a stop + start of one service through the control socket
        and pull the plug a random 0-60 ms later (the campaign's seeded random source),
        so the cut falls among the persisted writes they cause. After the boot: every
        persisted JSON file parses, the last-known-good configuration reads, and
        admin.json holds what the last acknowledged request asked for. Then the service
        is started again, so the campaign's invariants compare with the state before."""
        assert self.machine is not None
        m = self.machine
        rng = random.Random(f"{self.seed}:{f.index}")
        name = rng.choice(sorted(n for n, c in self.cfg.services.items()
                                 if c.kind == "longrun" and c.enabled))
        acked: list[str] = []

        def requests() -> None:
            for op in ("reload", "stop", "start"):
                try:
                    req: dict[str, Any] = {"op": op}
                    if op != "reload":
                        req["name"] = name
                    if client.request(m.state_dir, req, timeout=2.0).get("ok"):
                        acked.append(op)
                except client.ControlError:
                    return

        boots = len(m.boots)
        t = threading.Thread(target=requests, daemon=True)
        t.start()
        time.sleep(rng.uniform(0.0, 0.06))
        m.power_cut()
        t.join(5.0)
        try:
            m.wait_boot(boots + 1, BOOT_BUDGET)
        except Exception as e:  # noqa: BLE001 - reported as the fault's problem
            return [f"no boot after the power cut: {e}"]
        seen = _torn_files(m.persist_dir)
        if snapshot_mod.read_last_good(m.persist_dir) is None and \
                os.path.exists(os.path.join(m.persist_dir, snapshot_mod.LAST_GOOD)):
            seen.append("the last-known-good configuration does not read after the cut")
        try:
            admin = channels.read_json(os.path.join(m.persist_dir, channels.ADMIN_STATE)) or {}
        except (ValueError, OSError) as e:
            admin = {}
            seen.append(f"admin.json unreadable after the cut: {e}")
        stopped = (admin.get(name) or {}).get("want") == "down"
        last = next((op for op in reversed(acked) if op in ("stop", "start")), None)
        if last == "stop" and not stopped:
            seen.append(f"{name}: the acknowledged stop was lost by the power cut")
        if last == "start" and stopped:
            seen.append(f"{name}: the acknowledged start was lost by the power cut")
        # back to the campaign's baseline (the restarter may take a moment to answer)
        deadline = time.monotonic() + BOOT_BUDGET
        while stopped and time.monotonic() < deadline:
            try:
                if client.request(m.state_dir, {"op": "start", "name": name},
                                  timeout=2.0).get("ok"):
                    break
            except client.ControlError:
                pass
            time.sleep(0.1)
        return seen

    def _run_full(self, name: str, pre: Snapshot) -> list[str]:
        """Fill /run, SIGKILL `name`, and watch for the reboot bound (what a hang would
        take to reset the machine): every heartbeat stays fresh (they are rewritten in
        place, needing no new blocks) and the restarter brings `name` back to ready with
        a new pid. Then free /run; the runtime records must catch up (`problems`)."""
        assert self.machine is not None
        m = self.machine
        pid = self._service_pid(pre, name)
        old = (pre.services or {}).get(name, {}).get("pid")
        hb_timeout = self.cfg.watchdog.heartbeat_timeout
        hold = reboot_bound(self.cfg)
        seen: dict[str, None] = {}  # problems in order, without repeats
        back = None
        _fill(m.run_dir)
        try:
            free = os.statvfs(m.run_dir).f_bavail
            if free:
                raise InjectError(f"{m.run_dir}: {free} blocks still free after the fill")
            os.kill(pid, signal.SIGKILL)
            t0 = time.monotonic()
            while time.monotonic() - t0 < hold:
                s = snapshot(m)
                for layer, age in s.hb_age.items():
                    if age is None or age > hb_timeout:
                        what = "missing" if age is None else f"{age:.1f} s old"
                        seen[f"{layer}: heartbeat {what} while /run was full"] = None
                st = (s.services or {}).get(name, {})
                if back is None and st.get("state") == "ready" and st.get("pid") not in (None, old):
                    back = s.t - t0
                time.sleep(0.1)
        finally:
            _unfill(m.run_dir)
        if back is None:
            seen[f"{name}: not ready again within {hold:.2f} s of its SIGKILL while /run "
                 "was full"] = None
        return list(seen)

    def _service_pid(self, snap: Snapshot, name: str) -> int:
        mains = _main_procs(snap, name)
        if len(mains) != 1:
            raise InjectError(f"{name}: {len(mains)} main processes")
        return mains[0].pid

    def _cgroup(self, name: str) -> str:
        root = self.machine.cgroup_root if self.machine else None
        if not root:
            raise InjectError("no cgroup root")
        return os.path.join(root, name)

    def _crash_loop(self, name: str, pid: int, times: int) -> None:
        """SIGKILL the service, then each new incarnation as soon as it appears."""
        assert self.machine is not None
        os.kill(pid, signal.SIGKILL)
        seen = {pid}
        for _ in range(times - 1):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                mains = [p for p in _main_procs(snapshot_light(self.machine, name), name)
                         if p.pid not in seen]
                if mains:
                    seen.add(mains[0].pid)
                    os.kill(mains[0].pid, signal.SIGKILL)
                    break
                time.sleep(0.02)
            else:
                raise InjectError(f"{name}: no new process within 5 s of a kill")

    # -- the whole campaign ---------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Power on, run every fault, power off; the report (plain dicts)."""
        self.t0 = time.monotonic()
        os.makedirs(self.machine_dir, exist_ok=True)
        baseline_problems: list[str] = []
        interrupted = None
        try:
            self.power_on()
            baseline_problems = self.baseline()
            if not baseline_problems:
                for i, f in enumerate(self.faults):
                    self.progress(i, len(self.faults), None, f"{f.kind} {f.target}")
                    res = self.run_fault(f)
                    self.results.append(res)
                    self.progress(i + 1, len(self.faults), res, "")
                    if not res.ok and i + 1 < len(self.faults):
                        try:
                            self.reset()
                        except CampaignError as e:
                            baseline_problems = [str(e)]
                            break
        except CampaignInterrupted as e:
            interrupted = e.signame  # the fault under way is not judged: a partial report
            _Stop.stopping = True  # a second Ctrl-C must not cut the clean-up short
        finally:
            with signals_deferred():
                self.power_off()
        rep = self.report(baseline_problems)
        if interrupted:
            rep["interrupted"], rep["ok"] = interrupted, False
        return rep

    def reset(self) -> None:
        """After a broken invariant: a fresh machine, so later faults start clean."""
        self.resets += 1
        self.power_off()
        self.forced_after = self.results[-1].index if self.results else -1
        self.power_on()
        probs = self.baseline()
        if probs:
            raise CampaignError("the machine never converged after a reset (campaign "
                                "stopped): " + "; ".join(probs))

    def report(self, baseline_problems: list[str]) -> dict[str, Any]:
        """Everything the JSON and HTML reports show."""
        results = [asdict(r) for r in self.results]
        summary = chaos_report.summarize(results)
        fails = [r for r in results if not r["ok"]]
        return {
            "seed": self.seed, "faults": len(self.faults), "kinds": self.kinds,
            "skipped": self.skipped, "config": self.config_path,
            "config_sha256": hashlib.sha256(_read(self.config_path)).hexdigest(),
            "bounds": {k: convergence_bound(k, self.cfg) for k in self.kinds},
            "reboot_bound": reboot_bound(self.cfg),
            "baseline_problems": baseline_problems,
            "ok": not fails and not baseline_problems, "failures": len(fails),
            "results": results, "summary": summary, "boot_times": self.boot_times,
            "boots": len(self.boot_times), "machine_resets": self.resets,
            "duration": round(time.monotonic() - self.t0, 3), "interrupted": None,
            "version": __version__, "started_wall": self.started_wall,
            "console": self.machine_console, "boot_causes": self.boot_causes,
        }


class InjectError(Exception):
    """A fault could not be injected (its target is not there)."""


def snapshot_light(m: SimMachine, name: str) -> Snapshot:
    """Only the processes (for the crash loop, which must be quick)."""
    init = m.init_host_pid()
    procs = []
    if init is not None:
        try:
            ns = os.readlink(f"/proc/{init}/ns/pid")
        except OSError:
            ns = None
        for e in os.listdir("/proc"):
            if e.isdigit():
                try:
                    if os.readlink(f"/proc/{e}/ns/pid") != ns:
                        continue
                except OSError:
                    continue
                if (p := _proc(int(e))) is not None:
                    procs.append(p)
    return Snapshot(time.monotonic(), 0, init, {}, {}, None, None, procs, {})


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


FILL_NAME = "chaos-fill"


def _fill(directory: str) -> int:
    """Write zeros to <directory>/chaos-fill until the file system is full; bytes written."""
    n = 0
    chunk = b"\0" * (64 * 1024)
    fd = os.open(os.path.join(directory, FILL_NAME), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                n += os.write(fd, chunk)
            except OSError:
                break
    finally:
        os.close(fd)
    return n


def _unfill(directory: str) -> None:
    try:
        os.unlink(os.path.join(directory, FILL_NAME))
    except OSError:
        pass


# --- capabilities and the command line ------------------------------------------------------

def capabilities(kinds: list[str], cfg: config.Config, tmpfs_ok: bool,
                 tmpfs_reason: str = "") -> tuple[list[str], dict[str, str]]:
    """(kinds that can run here, {kind: reason} for those that cannot)."""
    cg_ok = _can_freeze()
    longrun = [n for n, s in cfg.services.items() if s.kind == "longrun" and s.enabled]
    live = [n for n in longrun if cfg.services[n].watchdog_sec or cfg.services[n].health]
    ok, skipped = [], {}
    for k in kinds:
        kind = KINDS[k]
        if kind.needs == "never":
            skipped[k] = CLOCK_STEP_REASON
        elif kind.needs == "cgroup" and not cg_ok:
            skipped[k] = "no writable cgroup v2 hierarchy with cgroup.freeze"
        elif kind.needs == "tmpfs" and not tmpfs_ok:
            skipped[k] = tmpfs_reason or "no tmpfs under the machine directory"
        elif kind.target == "service" and not longrun:
            skipped[k] = "the configuration has no enabled long-running service"
        elif kind.target == "liveness" and not live:
            skipped[k] = ("no service with watchdog_sec or a health check: a hang of any "
                          "other service is invisible to the chain by design")
        elif kind.target == "critical" and not (
                "db" in cfg.services and cfg.services["db"].critical
                and SERVICE_FILE in " ".join(cfg.services["db"].command)):
            skipped[k] = ("needs the built-in configuration: its critical service db is "
                          "the campaign's own program, which the fault makes fail at start")
        else:
            ok.append(k)
    return ok, skipped


def _can_freeze() -> bool:
    """True when a cgroup v2 hierarchy is writable and has cgroup.freeze (Linux 5.2+)."""
    mount = find_cgroup2_mount()
    if not mount or not os.access(mount, os.W_OK):
        return False
    probe = os.path.join(mount, f"hachain-chaos-probe-{os.getpid()}")
    try:
        os.mkdir(probe)
    except OSError:
        return False
    try:
        return os.path.exists(os.path.join(probe, "cgroup.freeze"))
    finally:
        try:
            os.rmdir(probe)
        except OSError:
            pass


def _can_mount_tmpfs(work: str) -> tuple[bool, str]:
    """(True, "") when a tmpfs can be mounted under `work`; else (False, the reason)."""
    probe = os.path.join(work, "tmpfs-probe")
    os.makedirs(probe, exist_ok=True)
    try:
        with signals_deferred():  # never leave the probe mounted
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "chaos-probe",
                                probe], capture_output=True, text=True, timeout=10)
            if r.returncode != 0:
                return False, f"cannot mount a tmpfs: {r.stderr.strip() or r.returncode}"
            subprocess.run(["umount", probe], capture_output=True, timeout=10)
        return True, ""
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"cannot mount a tmpfs: {e}"
    finally:
        try:
            os.rmdir(probe)
        except OSError:
            pass


def add_parser(subparsers: Any) -> None:
    """Register `hachain chaos` on the `hachain` command's subparsers."""
    p = subparsers.add_parser(
        "chaos", help="a fault-injection campaign on the simulated machine, with a report",
        description="Inject N faults (drawn from the fault model by SEED) into the chain "
                    "running on the simulated machine; after each, wait for convergence and "
                    "check the invariants. Writes DIR/report.json and DIR/report.html.")
    p.add_argument("-c", "--config", default=None,
                   help="configuration (default: the built-in campaign configuration)")
    p.add_argument("--faults", type=int, default=20, help="how many faults (default 20)")
    p.add_argument("--seed", type=int, default=None, help="schedule seed (default: random)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="report directory (required unless --list-kinds)")
    p.add_argument("--kinds", default=None,
                   help="comma-separated fault kinds (default: all; see docs/chaos.md)")
    p.add_argument("--only", default=None, metavar="I,J,...",
                   help="run only these indexes of the schedule (a reproduction)")
    p.add_argument("--no-shrink", action="store_true",
                   help="on a failure, do not search for a shorter reproduction")
    p.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    p.add_argument("--list-kinds", action="store_true", help="print the fault model, exit")
    p.add_argument("--qemu", action="store_true",
                   help="run on a real kernel under QEMU (an emulated i6300esb) instead of the "
                   "simulated machine; see docs/chaos.md")
    p.add_argument("--cluster", action="store_true",
                   help="three simulated machines, a singleton and etcd: the cluster kinds "
                   "(docs/cluster.md)")
    p.set_defaults(func=cmd_chaos)


# --- interruption: Ctrl-C, a closed terminal, kill --------------------------------------------
#
# SIGINT, SIGTERM and SIGHUP (the terminal went away) end a campaign the same way: the
# handler raises CampaignInterrupted in the main thread, `Campaign.run` stops at once,
# the machine is powered off, the tmpfs mounts are undone and a partial report is
# written. The steps that must not be cut in half (a mount and its bookkeeping, the
# power-off, the unmount) run with those signals blocked: one that arrives meanwhile is
# delivered when the step is done.

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class CampaignInterrupted(BaseException):
    """A stop signal arrived (BaseException: no `except Exception` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signame = signal.Signals(signum).name


class _Stop:
    """The handler's state: how deep in deferred steps the main thread is, and the
    signal that arrived meanwhile."""
    depth = 0
    pending: int | None = None
    stopping = False  # interrupted once: the rest is cleaning up and reporting


def _raise_interrupted(signum: int, _frame: object) -> None:
    if _Stop.stopping:
        return
    if _Stop.depth:
        _Stop.pending = _Stop.pending or signum
        return
    raise CampaignInterrupted(signum)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """While inside: SIGINT, SIGTERM and SIGHUP raise CampaignInterrupted (main thread)."""
    old = {s: signal.signal(s, _raise_interrupted) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _Stop.pending, _Stop.stopping = None, False


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold the stop signals while inside; one that arrived meanwhile raises on the way
    out. (Not the signal mask: Python runs handlers in the main thread, but the kernel
    may hand a process signal to any thread, e.g. the simulated machine's.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _Stop.depth += 1
    try:
        yield
    finally:
        _Stop.depth -= 1
    if not _Stop.depth and _Stop.pending is not None:
        signum, _Stop.pending = _Stop.pending, None
        if signal.getsignal(signum) is _raise_interrupted:
            raise CampaignInterrupted(signum)


def campaign_mounts(under: str) -> list[str]:
    """The tmpfs mount points of a campaign (source chaos-*) at or below `under`."""
    under = os.path.realpath(under)
    out: list[str] = []
    try:
        lines = _read("/proc/self/mounts", "r").splitlines()
    except OSError:
        return out
    for line in lines:
        f = line.split()
        if len(f) < 3 or f[2] != "tmpfs" or not f[0].startswith("chaos-"):
            continue
        point = f[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        if point == under or point.startswith(under + "/"):
            out.append(point)
    return out


def _console_position(path: str) -> tuple[str, int]:
    """(path, the number of the next line to be written to it)."""
    try:
        with open(path, "rb") as f:
            return path, sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b"")) + 1
    except OSError:
        return path, 1


# --- what the campaign prints ----------------------------------------------------------------

def _clock(seconds: float) -> str:
    """12 s, 3m05s, 1h02m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def failure_lines(r: dict[str, Any]) -> list[str]:
    """What a failed fault shows: what was observed, and where the console log is."""
    head = f"fault #{r['index']} {r['kind']} {r['target']}"
    seen = r.get("problems") or ["(no problem recorded)"]
    out = [f"{head}: {p}" for p in seen]
    if r.get("console"):
        out.append(f"{head}: console log {r['console']}:{r.get('console_line') or 1} "
                   "(from the fault on)")
    return out


class Progress:
    """The campaign's progress on stderr: on a terminal one bar, rewritten in place, with
    the elapsed time and an estimate of the time left; every failure on lines of its own
    above it, so they stay on screen. Elsewhere one line per fault. Never fails: a write
    to a terminal that went away (EIO after SIGHUP) is dropped."""

    def __init__(self, stream: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (OSError, ValueError):
            self.tty = False
        self.clock = clock
        self.t0 = clock()
        self.t_first: float | None = None  # the first fault's start (boot time excluded)
        self.fails = 0

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def times(self, done: int, n: int) -> str:
        """"elapsed 1m05s, ~2m10s left" (no estimate before the first fault is done)."""
        now = self.clock()
        out = f"elapsed {_clock(now - self.t0)}"
        if self.t_first is not None and 0 < done < n:
            per = (now - self.t_first) / done
            out += f", ~{_clock(per * (n - done))} left"
        return out

    def __call__(self, i: int, n: int, res: Result | None, what: str) -> None:
        if res is None and self.t_first is None:
            self.t_first = self.clock()
        if res is not None and not res.ok:
            self.fails += 1
            lines = "".join(f"chaos: FAIL {line}\n" for line in failure_lines(asdict(res)))
            self._write(("\r\033[K" if self.tty else "") + lines)
        if self.tty:
            width = 30
            done = int(width * i / max(n, 1))
            tail = what or (f"#{res.index} {res.kind} {res.target} "
                            f"{'%.2f s' % res.converge if res.ok and res.converge else 'FAIL'}"
                            if res else "")
            self._write(f"\r\033[K[{'#' * done}{'-' * (width - done)}] {i}/{n} "
                        f"fails {self.fails} | {self.times(i, n)} | {tail}")
            if i == n and res is not None:
                self._write("\n")
        elif res is not None:
            verdict = (f"converged in {res.converge:.2f} s" if res.ok and res.converge
                       is not None else "FAILED (above)" if not res.ok else "ok")
            self._write(f"chaos: {i}/{n} #{res.index} {res.kind} {res.target}: {verdict} "
                        f"| {self.times(i, n)}\n")

    def interrupted(self) -> None:
        """End the bar's line (a signal stopped the campaign)."""
        if self.tty:
            self._write("\n")


def kind_list(arg: str | None, known: Iterable[str], what: str = "fault kind") -> list[str]:
    """The --kinds list (default: every known kind), sorted and without repeats;
    ValueError naming the unknown ones."""
    known = sorted(known)
    if not arg:
        return known
    kinds = sorted({k.strip() for k in arg.split(",") if k.strip()})
    bad = [k for k in kinds if k not in known]
    if bad:
        raise ValueError(f"unknown {what}(s) {', '.join(bad)}; known: " + ", ".join(known))
    return kinds


def _campaign_setup(args: argparse.Namespace, work: str) -> tuple[str, config.Config]:
    """The configuration path (the built-in one written into `work`) and its parse."""
    svc = os.path.join(work, SERVICE_FILE)
    shutil.copyfile(chaos_svc.__file__, svc)
    if args.config:
        return os.path.abspath(args.config), config.load(args.config)
    path = os.path.join(work, "chain.toml")
    with open(path, "w") as f:
        f.write(campaign_config_text(sys.executable, svc))
    return path, config.load(path)


def run_campaign(cfg_path: str, work: str, seed: int, faults: list[Fault], kinds: list[str],
                 skipped: dict[str, str], tmpfs: bool,
                 progress: Callable[..., None] | None) -> dict[str, Any]:
    """One Campaign on a fresh machine directory under `work`, mounts cleaned up after."""
    c = Campaign(cfg_path, work, seed, faults, kinds, skipped, progress=progress)
    longest = os.path.join(c.machine_dir, "run", "hachain", channels.CONTROL_SOCKET)
    if len(longest.encode()) > MAX_SOCKET_PATH:
        raise CampaignError(f"{longest}: {len(longest.encode())} bytes, too long for a Unix "
                            f"socket ({MAX_SOCKET_PATH}); give --dir a shorter path")
    os.makedirs(c.machine_dir, exist_ok=True)
    try:
        try:
            with signals_deferred():  # a mount and its bookkeeping are one step
                mounted = not tmpfs or c.mount_tmpfs()
        except CampaignInterrupted as e:  # arrived while mounting: delivered just after
            _Stop.stopping = True
            rep = c.report([])
            rep["interrupted"], rep["ok"] = e.signame, False
            return rep
        if not mounted:
            raise CampaignError(getattr(c, "skip_fs", "cannot mount tmpfs"))
        return c.run()
    finally:
        with signals_deferred():
            c.power_off()
            c.unmount()


def shrink(cfg_path: str, base: str, seed: int, sched: list[Fault], failing: Fault,
           kinds: list[str], tmpfs: bool, budget: int = 6) -> tuple[list[int], str]:
    """The shortest run (indexes) found that breaks an invariant again at `failing`:
    the fault alone, then growing suffixes of the prefix before it."""
    prior = [f for f in sched if f.index < failing.index]
    tries: list[list[Fault]] = [[]]
    k = 1
    while k < len(prior) and len(tries) < budget - 1:
        tries.append(prior[-k:])
        k *= 2
    if prior:
        tries.append(prior)
    for n, pre in enumerate(tries):
        run = pre + [failing]
        work = os.path.join(base, f"s{n}")
        os.makedirs(work, exist_ok=True)
        try:
            rep = run_campaign(cfg_path, work, seed, run, kinds, {}, tmpfs, None)
        except CampaignError as e:
            print(f"chaos: shrink run {n} could not run: {e}", file=sys.stderr)
            continue
        if rep.get("interrupted"):
            return [f.index for f in sched if f.index <= failing.index], \
                f"not shrunk (interrupted by {rep['interrupted']})"
        last = rep["results"][-1] if rep["results"] else None
        if last and last["index"] == failing.index and not last["ok"]:
            return [f.index for f in run], "reproduced"
        if any(not r["ok"] for r in rep["results"]):
            bad = [r["index"] for r in rep["results"] if not r["ok"]]
            return [f.index for f in run], f"reproduced a failure at {bad}"
    return [f.index for f in sched if f.index <= failing.index], "not reproduced by a shorter run"


def cmd_chaos(args: argparse.Namespace) -> int:
    """`hachain chaos`: run the campaign, write the reports, exit 1 on a broken invariant."""
    if getattr(args, "cluster", False) and not args.list_kinds:
        from hachain.simulators import cluster_chaos
        return cluster_chaos.cmd(args)
    if args.list_kinds:
        for k in sorted(KINDS):
            d = KINDS[k]
            print(f"{k:<20} {d.target:<10} reboot={d.reboot or '-':<9} {d.summary}")
        return 0
    if not args.report:
        print("hachain chaos: --report DIR is required", file=sys.stderr)
        return 2
    if args.faults < 0:
        print("hachain chaos: --faults must be >= 0", file=sys.stderr)
        return 2
    if args.qemu:
        from hachain.simulators.qemu import campaign  # imports this module: no cycle at load
        return campaign.cmd_chaos_qemu(args)
    try:
        kinds = kind_list(args.kinds, KINDS)
    except ValueError as e:
        print(f"hachain chaos: --kinds: {e}", file=sys.stderr)
        return 2
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        print("hachain chaos: needs root and unshare(1) (the simulated machine)",
              file=sys.stderr)
        return 1
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    work = os.path.abspath(args.dir) if args.dir else tempfile.mkdtemp(prefix="hachain-chaos-")
    os.makedirs(work, exist_ok=True)
    os.makedirs(args.report, exist_ok=True)
    cfg_path, cfg = _campaign_setup(args, work)
    tmpfs, tmpfs_reason = _can_mount_tmpfs(work)
    runnable, skipped = capabilities(kinds, cfg, tmpfs, tmpfs_reason)
    longrun = sorted(n for n, s in cfg.services.items() if s.kind == "longrun" and s.enabled)
    live = [n for n in longrun if cfg.services[n].watchdog_sec or cfg.services[n].health]
    if not runnable:
        print("hachain chaos: no fault kind can run here: "
              + "; ".join(f"{k}: {v}" for k, v in skipped.items()), file=sys.stderr)
        return 1
    sched = schedule(seed, args.faults, runnable, longrun, live)
    chosen = sched
    if args.only:
        try:
            only = {int(x) for x in args.only.split(",") if x.strip()}
        except ValueError:
            print("hachain chaos: --only takes comma-separated indexes", file=sys.stderr)
            return 2
        chosen = [f for f in sched if f.index in only]
    for k, why in skipped.items():
        print(f"chaos: skipping {k}: {why}", file=sys.stderr)
    print(f"chaos: seed {seed}, {len(chosen)} fault(s), kinds {','.join(runnable)}; "
          f"work dir {work}", file=sys.stderr)
    progress = Progress()
    try:
        with stop_signals_raise():
            try:
                rep = run_campaign(cfg_path, os.path.join(work, "c"), seed, chosen, runnable,
                                   skipped, tmpfs, progress)
            except CampaignError as e:
                _say(f"hachain chaos: {e} (seed {seed})", sys.stderr)
                return 1
            if rep.get("interrupted"):
                progress.interrupted()
            return _finish(args, rep, seed, work, cfg_path, chosen, runnable, tmpfs)
    except CampaignInterrupted as e:  # outside the campaign's own run: nothing to report
        with signals_deferred():
            _say(f"chaos: FAIL: seed {seed}: interrupted by {e.signame} "
                 "(no fault judged, no report)", sys.stderr)
        return 1


def _say(text: str, stream: Any = None) -> None:
    """print(), except that a terminal gone away (SIGHUP, EIO) does not stop the end."""
    try:
        print(text, file=stream or sys.stdout, flush=True)
    except (OSError, ValueError):
        pass


def repro_report_dir(report: str) -> str:
    """Where the reproduction command writes its report: next to, never over, the
    evidence of the run being reproduced."""
    return os.path.normpath(report) + "-repro"


def _finish(args: argparse.Namespace, rep: dict[str, Any], seed: int, work: str,
            cfg_path: str, chosen: list[Fault], runnable: list[str], tmpfs: bool) -> int:
    """Shrink a failure, write the reports, print the table and the one verdict line."""
    rep["config"] = args.config or "built-in campaign configuration"
    _Stop.stopping = True  # from here on a stop signal is too late to lose the report

    def command(faults: int, only: list[int] | None) -> str:
        return (f"hachain chaos{' -c ' + args.config if args.config else ''} --faults {faults} "
                f"--seed {seed} --kinds {','.join(runnable)} "
                f"--report {repro_report_dir(args.report)}"
                + ("" if only is None else " --only " + ",".join(map(str, only))))
    fails = [r for r in rep["results"] if not r["ok"]]
    if fails:
        first = next(f for f in chosen if f.index == fails[0]["index"])
        if args.no_shrink or rep.get("interrupted"):
            idx = [f.index for f in chosen if f.index <= first.index]
            note = "not shrunk" + (" (interrupted)" if rep.get("interrupted") else "")
        else:
            _say("chaos: looking for a shorter reproduction...", sys.stderr)
            _Stop.stopping = False  # Ctrl-C ends the search, and the report is still written
            try:
                idx, note = shrink(cfg_path, work, seed, chosen, first, runnable, tmpfs)
            except CampaignInterrupted as e:
                idx = [f.index for f in chosen if f.index <= first.index]
                note = f"not shrunk (interrupted by {e.signame})"
            _Stop.stopping = True
        rep["repro"] = {"command": command(args.faults, idx), "indexes": idx, "note": note}
    elif rep["baseline_problems"]:
        rep["repro"] = {"command": command(0, None), "indexes": [],
                        "note": "the machine never converged after power-on, before any fault"}
    with signals_deferred():  # a report is written whole, even on a second Ctrl-C
        chaos_report.write_json(rep, os.path.join(args.report, "report.json"))
        chaos_report.write_html(rep, os.path.join(args.report, "report.html"))
    html_path = os.path.join(args.report, "report.html")
    _say(chaos_report.table_text(rep["summary"]))
    if rep["baseline_problems"] and not rep["results"]:
        _say(f"chaos: seed {seed}: the machine never converged before the first fault: "
             + "; ".join(rep["baseline_problems"]), sys.stderr)
    elif rep["baseline_problems"]:
        _say(f"chaos: seed {seed}: " + "; ".join(rep["baseline_problems"]), sys.stderr)
    for r in fails:
        for line in failure_lines(r):
            _say(f"chaos: seed {seed}: {line}", sys.stderr)
    if rep.get("repro"):
        _say(f"chaos: reproduce ({rep['repro']['note']}): {rep['repro']['command']}",
             sys.stderr)
    _say(verdict_line(rep, html_path))
    return 0 if rep["ok"] else 1


def verdict_line(rep: dict[str, Any], html_path: str) -> str:
    """The campaign's last line: PASS or FAIL, with the counts."""
    n, ran = rep["faults"], len(rep["results"])
    bad = rep["failures"]
    counts = (f"{ran - bad} held, {bad} broke an invariant"
              + (f", {n - ran} not run" if ran < n else ""))
    tail = (f"; {rep.get('boots', 0)} boot(s), {_clock(rep.get('duration', 0))}; "
            f"{'partial ' if rep.get('interrupted') else ''}report {html_path}")
    seed = rep["seed"]
    if rep["ok"]:
        return f"chaos: PASS: seed {seed}: all invariants held over {ran} fault(s) ({counts}){tail}"
    if rep.get("interrupted"):
        why = f"interrupted by {rep['interrupted']} after {ran} of {n} fault(s)"
    elif rep["baseline_problems"] and not ran:
        why = "the machine never converged before the first fault"
    elif rep["baseline_problems"]:
        why = f"the campaign stopped after {ran} of {n} fault(s)"
    else:
        why = f"{bad} of {ran} fault(s) broke an invariant"
    return f"chaos: FAIL: seed {seed}: {why} ({counts}){tail}"
