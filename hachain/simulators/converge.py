"""What "the chain has converged" means, once, for every campaign and the model checker.

Owns: the `converged` predicate (`problems(seen, want)`: every invariant a `Seen` breaks
against a `Want`), and the observer of a running machine: the /proc reader that finds
every process of a machine and each service's main processes, and `snapshot` of a
simulated machine from the host. `hachain chaos` (hachain/simulators/chaos.py), the QEMU
campaign's guest probe (hachain/simulators/qemu/campaign_probe.py) and `hachain verify`
(hachain/simulators/verify.py, `Model.is_goal`) each turn what they see into a `Seen` and ask
`problems`; none keeps a copy of the rules. Must not: inject anything, wait, or decide
what a fault should do (that is hachain/simulators/chaos_kinds.py). Imports no simulated machine
at run time: the guest probe runs this module inside a QEMU guest.

The invariants (docs/chaos.md, "Invariants"):

1. every layer runs (not hung, not dead) with a heartbeat younger than the timeout; the
   machine is up and nothing asked for a reboot;
2. the restarter answers; the tickler pets (when the observer can tell);
3. every configured service is in the state its configuration and the administrator
   want: `ready` (long-running, wanted up), `done` (oneshot), `stopped` (wanted down or
   disabled), or `skipped` for one whose `condition` did not hold at its start;
4. exactly once: a ready service has exactly one main process, the one the restarter
   names (and watches, and records); no other service has one; no process of a
   service outside its cgroup; no process of a service nobody configured;
5. the administrator's persisted state did not change behind their back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hachain import channels, client
from hachain.restarter.persist import admin_error

if TYPE_CHECKING:
    from hachain.simulators.machine import SimMachine

# --- the predicate ---------------------------------------------------------------------------

UNSEEN: Any = object()  # a Seen field the observer could not see: not judged


@dataclass(frozen=True)
class LayerSeen:
    """One layer as observed: its pid (None: not running or not found), its heartbeat's
    age in seconds (None: no heartbeat) and its state in `hachain status`'s words
    ("alive", "hung", "restarting", "dead")."""
    pid: int | None
    hb_age: float | None
    state: str = "alive"


@dataclass
class Seen:
    """What an observer saw of the chain at one moment.

    `services` is the restarter's status per service (state, want, pid, reason), None
    when it does not answer (`error` says why). `mains` is each service's main
    processes, numbered as the restarter numbers them. The other fields are judged only
    when the observer saw them (`UNSEEN` or None otherwise)."""
    layers: dict[str, LayerSeen]
    services: dict[str, dict[str, Any]] | None
    mains: dict[str, list[int]]
    error: str | None = None
    machine_up: bool = True  # PID 1 found, the kernel up
    petting: bool | None = None  # the tickler pets (None: not seen)
    gate: Any = None  # what the tickler says of its gate, when it does not pet
    reboot_requested: bool = False
    watched: dict[str, int | None] | None = None  # the pid the restarter watches
    records: dict[str, Any] | None = None  # the restarter's runtime records
    outside: dict[str, list[tuple[int, str]]] | None = None  # (pid, cgroup) out of place
    admin: Any = UNSEEN  # the persisted administrator state
    checks: dict[str, Any] | None = None  # the restarter's machine checks (None: not seen)


@dataclass(frozen=True)
class ServiceWant:
    """What a service's configuration asks for: its kind and whether it is enabled.
    `held`: a state it must be in whatever else (its main processes not counted), for
    a service that cannot do better (the model's dependents of a service broken for
    good wait). A singleton may be `standby` (no process) instead of ready: which node
    runs it is the cluster's to judge. A service with a `condition` may be `skipped` (no
    process) instead: whether the condition holds is the host's to say."""
    kind: str = "longrun"
    enabled: bool = True
    held: str | None = None
    singleton: bool = False  # [cluster]: ready on its owner, standby on the other nodes
    conditional: bool = False  # it has a `condition`: skipped is as good as ready


@dataclass(frozen=True)
class Want:
    """The converged chain: the services to judge (others are not), the heartbeat
    timeout, the administrator state that must not have changed (UNSEEN: not judged),
    and whether processes of services not in `services` are a problem."""
    services: dict[str, ServiceWant]
    heartbeat_timeout: float
    admin: Any = UNSEEN
    strangers: bool = False
    layers: tuple[str, ...] = channels.LAYERS
    checks: tuple[str, ...] = ()  # machine checks that must pass ([check.NAME])


def expected(want: ServiceWant, status: dict[str, Any]) -> tuple[str, int | None]:
    """(the state a converged chain shows for this service, how many main processes)."""
    if want.held is not None:
        return want.held, None
    if not (want.enabled and status.get("want") == "up"):
        return "stopped", 0
    if want.kind == "oneshot":
        return "done", 0
    if want.singleton and status.get("state") == "standby":
        return "standby", 0
    if want.conditional and status.get("state") == "skipped":
        return "skipped", 0
    return "ready", 1


def problems(seen: Seen, want: Want) -> list[str]:
    """Every invariant `seen` breaks ([] when the chain has converged)."""
    out = []
    if not seen.machine_up:
        out.append("PID 1 not found")
    for layer in want.layers:
        d = seen.layers.get(layer)
        if d is None or d.pid is None or d.hb_age is None:
            out.append(f"{layer}: not running")
        elif d.state != "alive":
            out.append(f"{layer}: pid {d.pid} {d.state}")
        elif d.hb_age > want.heartbeat_timeout:
            out.append(f"{layer}: heartbeat {d.hb_age:.1f} s old")
    if seen.reboot_requested:
        out.append("a reboot is requested")
    if seen.services is None:
        out.append(f"restarter does not answer: {seen.error}")
        return out
    if seen.petting is False:
        out.append(f"tickler not petting (gate {seen.gate})")
    for name, w in want.services.items():
        st = seen.services.get(name)
        if st is None:
            out.append(f"{name}: unknown to the restarter")
            continue
        want_state, n = expected(w, st)
        mains = seen.mains.get(name, [])
        if st["state"] != want_state:
            out.append(f"{name}: {st['state']} (expected {want_state})"
                       + (f": {st['reason']}" if st.get("reason") else ""))
        if n is None:
            continue
        if len(mains) != n:
            out.append(f"{name}: {len(mains)} main processes (expected {n}): {sorted(mains)}")
        elif n == 1 and st.get("pid") != mains[0]:
            out.append(f"{name}: the restarter says pid {st.get('pid')}, running is "
                       f"{mains[0]}")
        elif n == 1 and seen.watched is not None and seen.watched.get(name) != mains[0]:
            out.append(f"{name}: the restarter watches pid {seen.watched.get(name)}, "
                       f"running is {mains[0]}")
        if seen.records is not None:
            # what a restarter restarted now would re-adopt from: it must name what runs
            rec = seen.records.get(name)
            rec_pid = rec.get("pid") if isinstance(rec, dict) else None
            if (st.get("pid") or rec_pid) and rec_pid != st.get("pid"):
                out.append(f"{name}: runtime record names pid {rec_pid}"
                           + ("" if rec is None or isinstance(rec, dict) else f" ({rec})")
                           + f", the restarter runs {st.get('pid')}")
        for pid, cg in (seen.outside or {}).get(name, []):
            out.append(f"{name}: pid {pid} outside its cgroup ({cg})")
    if want.strangers:
        for name in sorted(set(seen.mains) - set(want.services)):
            if seen.mains[name]:
                out.append(f"unknown service {name}: processes {seen.mains[name]}")
    if want.admin is not UNSEEN and seen.admin is not UNSEEN and seen.admin != want.admin:
        out.append(f"admin.json changed: {want.admin!r} -> {seen.admin!r}")
    if seen.checks is not None:
        for name in want.checks:
            c = seen.checks.get(name)
            state = c.get("state") if isinstance(c, dict) else None
            if state != "ok":
                out.append(f"check {name}: {state or 'unknown to the restarter'}"
                           + (f" ({c.get('detail')})" if isinstance(c, dict) and
                              c.get("detail") else ""))
    return out


def converged(seen: Seen, want: Want) -> bool:
    """True when `seen` breaks no invariant of `want`."""
    return not problems(seen, want)


def want_of(cfg: Any, heartbeat_timeout: float, admin: Any = UNSEEN) -> Want:
    """The Want of a loaded configuration (`hachain.config.Config`): every service."""
    return Want({n: ServiceWant(c.kind, c.enabled, singleton=c.singleton,
                                conditional=c.condition is not None)
                 for n, c in cfg.services.items()},
                heartbeat_timeout, admin, checks=tuple(getattr(cfg, "checks", {})))


# --- observing processes through /proc ------------------------------------------------------

@dataclass
class Proc:
    """One process of a machine, seen from the observer's /proc."""
    pid: int  # pid in the observer's namespace
    nspid: int  # pid in the machine's own namespace (what the chain calls it)
    ppid: int  # the parent, in the observer's namespace
    state: str
    start: int
    service: str | None  # HACHAIN_SERVICE from its environment
    cgroup: str  # its cgroup v2 path (relative to the mount)


def _read(path: str, mode: str = "rb") -> Any:
    with open(path, mode) as f:
        return f.read()


def read_proc(pid: int) -> Proc | None:
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


def machine_procs(init: int | None) -> list[Proc]:
    """Every process in the PID namespace of `init` (an observer's pid); with init None,
    every process the observer sees (inside a guest: the whole machine)."""
    ns = None
    if init is not None:
        try:
            ns = os.readlink(f"/proc/{init}/ns/pid")
        except OSError:
            ns = None
    procs = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            if init is not None:
                try:
                    if os.readlink(f"/proc/{e}/ns/pid") != ns:
                        continue
                except OSError:
                    continue
            if (p := read_proc(int(e))) is not None:
                procs.append(p)
    return procs


def main_procs(procs: Iterable[Proc], name: str) -> list[Proc]:
    """A service's top processes: carrying its name, with a parent that does not."""
    mine = {p.pid: p for p in procs if p.service == name}
    return [p for p in mine.values() if p.ppid not in mine]


def mains(procs: list[Proc]) -> dict[str, list[int]]:
    """Every service's main processes (machine pids, sorted), zombies left out."""
    live = [p for p in procs if p.state != "Z"]
    return {n: sorted(p.nspid for p in main_procs(live, n))
            for n in sorted({p.service for p in live if p.service is not None})}


def seen_of_status(st: dict[str, Any], procs: list[Proc]) -> Seen:
    """The Seen of what `hachain status --json` shows (`hachain.status.gather_status`,
    read inside the machine) and of the machine's processes (`machine_procs(None)`)."""
    ch = st["chain"]
    layers = {}
    for layer, d in ch["layers"].items():
        state = d.get("state") or ("hung" if d.get("stopped") else
                                   "alive" if d.get("alive") else "dead")
        # stale: running with an old heartbeat, which the age says
        layers[layer] = LayerSeen(d.get("pid"), d.get("heartbeat_age"),
                                  "alive" if state == "stale" else state)
    wd = ch.get("watchdog") or {}
    error = ch.get("restarter_error")
    return Seen(layers, None if error else st["services"], mains(procs), error=error,
                petting=bool(wd.get("petting")), gate=wd.get("gate"),
                checks=None if error else st.get("checks"))


# --- a simulated machine, seen from the host -------------------------------------------------

@dataclass
class Snapshot:
    """What the host sees of a simulated machine at one moment."""
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
    checks: dict[str, Any] | None = None  # the restarter's machine checks (None: not read)


def _logger(state_dir: str, by_ns: dict[int, int]) -> int | None:
    """The logger's host pid: its lock file names it (a pid inside the machine). After a
    restarter crash its parent is init, and it is part of the chain, not a stray."""
    try:
        lock = channels.read_small(os.path.join(state_dir, "logger.lock"), regular=True)
        return by_ns.get(int(lock.split()[0]))
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
            out[n[:-5]] = channels.read_json(os.path.join(d, n), regular=True)
        except (ValueError, OSError) as e:
            out[n[:-5]] = f"unreadable: {e}"
    return out


def read_admin(persist_dir: str) -> tuple[dict[str, Any], str]:
    """admin.json of `persist_dir` as a starting restarter takes it: (its content, "");
    ({}, "") when there is none; ({}, one line naming the file and what is wrong) when it
    is no regular file (a FIFO there is not waited on), not JSON, or not of admin.json's
    shape (a JSON list, an entry that is no object...). The restarter sets such a file
    aside and holds nothing, so the harness ignores it too."""
    path = os.path.join(persist_dir, channels.ADMIN_STATE)
    try:
        d = channels.read_json(path, regular=True)
    except ValueError as e:
        return {}, f"{path}: {channels.json_problem(e)}; ignored"
    except OSError as e:
        return {}, f"{path}: {e.strerror or e}; ignored"
    if d is None:
        return {}, ""
    wrong = admin_error(d)
    if wrong:
        return {}, f"{path}: {wrong}; ignored"
    return d, ""


def snapshot(m: SimMachine) -> Snapshot:
    """Sample the machine: boots, layers, the restarter's status, every process, admin."""
    now = time.monotonic()
    init = m.init_host_pid()
    procs = machine_procs(init) if init is not None else []
    by_ns = {p.nspid: p.pid for p in procs}
    layers: dict[str, int | None] = {}
    ages: dict[str, float | None] = {}
    for layer in channels.LAYERS:
        hb = m.heartbeat(layer)
        ages[layer] = None if hb is None else round(hb.age(now), 3)
        layers[layer] = None if hb is None else by_ns.get(hb.pid)
    services, error, checks = None, None, None
    try:
        rep = client.request(m.state_dir, {"op": "status"}, timeout=1.0)
        if rep.get("ok"):
            services = rep.get("services", {})
            checks = rep.get("checks") or {}
        else:
            error = str(rep.get("error"))
    except client.ControlError as e:
        error = str(e)
    # as a starting restarter takes it; a file it would set aside (no regular file, not
    # JSON, not of admin.json's shape) is seen as "unreadable: what is wrong with it"
    held, why = read_admin(m.persist_dir)
    admin: Any = f"unreadable: {why}" if why else held
    return Snapshot(now, len(m.boots), init, layers, ages, services, error, procs, admin,
                    _records(m.state_dir), _logger(m.state_dir, by_ns), checks)


def snapshot_light(m: SimMachine) -> Snapshot:
    """Only the processes (for the crash loop, which must be quick)."""
    init = m.init_host_pid()
    procs = machine_procs(init) if init is not None else []
    return Snapshot(time.monotonic(), 0, init, {}, {}, None, None, procs, {})


def seen_of(snap: Snapshot, cg_rel: str | None, names: Iterable[str]) -> Seen:
    """A simulated machine's Seen: its processes' cgroups judged against `cg_rel` (the
    machine's cgroup root as /proc/PID/cgroup shows it; None: not judged)."""
    layers = {layer: LayerSeen(snap.layers.get(layer), snap.hb_age.get(layer))
              for layer in channels.LAYERS}
    outside: dict[str, list[tuple[int, str]]] | None = None
    if cg_rel is not None:
        outside = {}
        for name in names:
            want_cg = f"{cg_rel}/{name}"
            bad = [(p.nspid, p.cgroup) for p in snap.procs
                   if p.service == name and p.cgroup != want_cg]
            if bad:
                outside[name] = bad
    return Seen(layers, snap.services,
                {n: [p.nspid for p in main_procs(snap.procs, n)] for n in names},
                error=snap.error, machine_up=snap.init is not None, records=snap.records,
                outside=outside, admin=snap.admin, checks=snap.checks)


def lasting(a: Snapshot, b: Snapshot) -> list[str]:
    """Zombies and strays present in both snapshots (same pid and start time)."""
    def bad(s: Snapshot) -> dict[tuple[int, int], str]:
        known = {s.init, s.logger, *s.layers.values()}
        # the restarter's standby (hachain/restarter/standby.py): the working restarter's
        # parent when that is not init; it writes no heartbeat of its own
        known |= {p.ppid for p in s.procs if p.pid == s.layers.get("restarter")}
        out = {}
        for p in s.procs:
            if p.state == "Z":
                out[(p.pid, p.start)] = f"zombie pid {p.nspid} (parent host pid {p.ppid})"
            elif p.service is None and p.pid not in known and p.ppid not in known - {s.init}:
                out[(p.pid, p.start)] = f"stray pid {p.nspid} outside the tree"
        return out
    ba = bad(a)
    return [msg for key, msg in bad(b).items() if key in ba]


def snapshot_problems(snap: Snapshot, cfg: Any, admin0: Any, cg_rel: str | None,
                      heartbeat_timeout: float) -> list[str]:
    """Every invariant a simulated machine's snapshot breaks against the configuration
    `cfg` and the administrator state `admin0` it started with (transient ones
    included: the caller waits)."""
    return problems(seen_of(snap, cg_rel, cfg.services),
                    want_of(cfg, heartbeat_timeout, admin0))
