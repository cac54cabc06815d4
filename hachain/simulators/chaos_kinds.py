"""The fault model of `hachain chaos`: one `FaultKind` per kind, in one table (`KINDS`).

Owns: for each kind, what it targets, the reboot it must cause (or that any reboot is a
failure), how it is injected into a running simulated machine, how its effect is
detected, and its convergence bound derived from the configuration; the schedule that
draws kinds and targets from a seed; which kinds can run on this host. A new kind is one
row of `KINDS` (and its row in docs/chaos.md). Must not: wait for convergence or judge
the invariants (chaos.py runs a fault and waits, converge.py says what converged
means), nor touch anything but the machine it is handed: it signals that
machine's processes, writes `cgroup.freeze` of its services' cgroups, fills the tmpfs
file systems the campaign mounted under it, and edits the configuration file the machine
runs from (a copy the campaign made, never the user's).

A kind needs only a `SimMachine` and what the campaign knows of it (`Injection`), so any
campaign that runs simulated machines can inject it: the cluster campaign can take a
row of `KINDS` and hand it one of its nodes.

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

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hachain import bootrecord, channels, checks, client, config
from hachain import snapshot as snapshot_mod
from hachain.simulators.converge import (
    Snapshot,
    main_procs,
    read_admin,
    snapshot,
    snapshot_light,
)
from hachain.simulators.machine import SimMachine, find_cgroup2_mount

# The campaign's service program (hachain/simulators/chaos_svc.py), copied into the work directory.
SERVICE_FILE = "chaos_svc.py"

CLOCK_STEP_REASON = (
    "CLOCK_REALTIME is not namespaced (time namespaces offset only CLOCK_MONOTONIC and "
    "CLOCK_BOOTTIME) and stepping the host clock is not allowed; hachain times everything "
    "with CLOCK_MONOTONIC, the wall clock only labels records")

BOOT_LOOP_RESETS = 3  # [chain] boot_loop's default `resets` (the campaign keeps it)
# The built-in configuration's machine check ([check.NAME], docs/checks.md): it passes
# while <machine>/run/CHECK_MARKER does not exist. The campaign writes the machine's
# directory in place of MACHINE_DIR_MARK in the copy the machine runs from.
CHECK_NAME, CHECK_MARKER, CHECK_RETRY = "marker", "chaos-check-marker", 0.5
MACHINE_DIR_MARK = "@MACHINE_DIR@"
# db's intensity in the built-in configuration: a decaying count (each second up takes a
# crash off), so faults spread over a campaign never add up, while a crash at every
# start (boot-loop) parks it in maintenance within seconds
DB_MAX_RESTARTS = 6

# Convergence budgets (seconds) beyond the configured delays; see docs/chaos.md.
START_BUDGET = 3.0  # spawn + readiness of a service, or start of a layer
BOOT_BUDGET = 8.0  # from a boot to every service ready
REBOOT_MARGIN = 1.0  # tick period and scheduling on a loaded box
PANIC_DELAY = 0.5  # the simulated machine's reboot after a panic (SimMachine panic_delay)


class InjectError(Exception):
    """A fault could not be injected (its target is not there)."""


# --- bounds -----------------------------------------------------------------------------------

def reboot_bound(cfg: config.Config) -> float:
    """Latest reset after a hang: heartbeat age + staleness + last pet + timeout (+margin)."""
    wd = cfg.watchdog
    return (cfg.chain.heartbeat_interval + wd.heartbeat_timeout + wd.pet_interval
            + wd.timeout + REBOOT_MARGIN)


@dataclass(frozen=True)
class Budget:
    """The configured delays a kind's bound is made of, in seconds: the longest backoff,
    the longest time to see a hang (service watchdog or health checks), the longest stop
    timeout of the long-running services, init's restart delay, and the reboot bound."""
    backoff: float
    liveness: float
    stop: float
    restart_delay: float
    reboot: float

    @classmethod
    def of(cls, cfg: config.Config) -> Budget:
        svcs = [s for s in cfg.services.values() if s.kind == "longrun"]
        return cls(
            backoff=max((s.backoff.max for s in svcs), default=1.0),
            liveness=max((s.watchdog_sec or (s.health.interval * s.health.failures
                                             if s.health else 0) for s in svcs), default=0.0),
            stop=max((s.stop_timeout for s in svcs), default=1.0),
            restart_delay=cfg.chain.restart_delay,
            reboot=reboot_bound(cfg), check=cls.check_of(cfg))

    @property
    def service(self) -> float:
        """A service back to ready: its backoff, then it and its dependents start."""
        return self.backoff + 2 * START_BUDGET

    check: float = 0.0  # the longest a machine check takes to fail for good

    @staticmethod
    def check_of(cfg: config.Config) -> float:
        """Its first failing try, retry_timeout before each repair and after the last,
        each repair's run (a few ms here: the campaign's own), and a try at the end."""
        return max((2 * c.interval + c.retry_timeout * (1 + len(c.repair))
                    + len(c.repair) * START_BUDGET
                    for c in getattr(cfg, "checks", {}).values()), default=0.0)


def restart_bound(b: Budget) -> float:
    return b.service


def held_bound(b: Budget) -> float:
    return 2.0 + b.service  # the hold, then anything the hold disturbed


def hung_bound(b: Budget) -> float:
    return b.liveness + b.stop + b.service  # seen hung, stopped, restarted


def layer_bound(b: Budget) -> float:
    return b.restart_delay + 2 * START_BUDGET


def reset_bound(b: Budget) -> float:
    return b.reboot + BOOT_BUDGET


# --- detection: has the fault's effect been seen? --------------------------------------------

Detect = Callable[[Snapshot, Snapshot, str], bool]


def at_once(_pre: Snapshot, _now: Snapshot, _target: str) -> bool:
    """A hold-and-release fault: over when injected, nothing to wait for."""
    return True


def rebooted(pre: Snapshot, now: Snapshot, _target: str) -> bool:
    """The machine booted again."""
    return now.boots > pre.boots


def restarter_noticed(pre: Snapshot, now: Snapshot, target: str) -> bool:
    """The service left its state, or has a new pid, in the restarter's status."""
    old = (pre.services or {}).get(target, {})
    new = (now.services or {}).get(target, {})
    return (new.get("state") not in (None, old.get("state"))
            or new.get("pid") not in (None, old.get("pid")))


def layer_replaced(pre: Snapshot, now: Snapshot, target: str) -> bool:
    """The layer runs again, as a new process."""
    return now.layers.get(target) not in (None, pre.layers.get(target))


# --- injection --------------------------------------------------------------------------------

@dataclass
class Injection:
    """What a kind's `inject` works with: the machine (running), the configuration it
    booted, what it looked like just before the fault, the target (a service, a layer,
    "machine"), a random source seeded for this fault, the configuration file the
    machine runs from (a copy: config-broken edits it) and a scratch directory."""
    machine: SimMachine
    cfg: config.Config
    pre: Snapshot
    target: str
    rng: random.Random
    run_config: str
    workdir: str
    seen: bool = False  # set by an inject that watched the fault's effect itself


Inject = Callable[[Injection], list[str]]


def service_pid(snap: Snapshot, name: str) -> int:
    """The host pid of a service's one main process; InjectError if not exactly one."""
    mains = main_procs(snap.procs, name)
    if len(mains) != 1:
        raise InjectError(f"{name}: {len(mains)} main processes")
    return mains[0].pid


def layer_pid(snap: Snapshot, layer: str) -> int:
    """The host pid of a layer (init: PID 1); InjectError when it was not found."""
    pid = snap.init if layer == "init" else snap.layers.get(layer)
    if pid is None:
        raise InjectError(f"{layer}: no host pid")
    return pid


def _signal(find: Callable[[Any, str], int], sig: int, cont_after: float | None) -> Inject:
    """Send `sig` to the target's host pid (`find(snapshot, target)`); SIGCONT after
    `cont_after` seconds."""
    def inject(x: Injection) -> list[str]:
        pid = find(x.pre, x.target)
        os.kill(pid, sig)
        if cont_after is not None:
            time.sleep(cont_after)
            os.kill(pid, signal.SIGCONT)
        return []
    return inject


def signal_service(sig: int, cont_after: float | None = None) -> Inject:
    """Send `sig` to the service's main process; SIGCONT after `cont_after` seconds."""
    return _signal(service_pid, sig, cont_after)


def signal_layer(sig: int, cont_after: float | None = None) -> Inject:
    """Send `sig` to a layer (or PID 1) from the host; SIGCONT after `cont_after` s."""
    return _signal(layer_pid, sig, cont_after)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _cgroup(m: SimMachine, name: str) -> str:
    if not m.cgroup_root:
        raise InjectError("no cgroup root")
    return os.path.join(m.cgroup_root, name)


def freeze_service(thaw_after: float | None) -> Inject:
    """`cgroup.freeze = 1` on the service's cgroup; thawed after `thaw_after` s."""
    def inject(x: Injection) -> list[str]:
        service_pid(x.pre, x.target)  # there is one to freeze
        path = _cgroup(x.machine, x.target)
        _write(os.path.join(path, "cgroup.freeze"), "1")
        if thaw_after is not None:
            time.sleep(thaw_after)
            _write(os.path.join(path, "cgroup.freeze"), "0")
        return []
    return inject


def crash_loop(times: int) -> Inject:
    """SIGKILL the service, then each new incarnation as soon as it appears."""
    def inject(x: Injection) -> list[str]:
        pid = service_pid(x.pre, x.target)
        os.kill(pid, signal.SIGKILL)
        seen = {pid}
        for _ in range(times - 1):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                mains = [p for p in main_procs(snapshot_light(x.machine).procs, x.target)
                         if p.pid not in seen]
                if mains:
                    seen.add(mains[0].pid)
                    os.kill(mains[0].pid, signal.SIGKILL)
                    break
                time.sleep(0.02)
            else:
                raise InjectError(f"{x.target}: no new process within 5 s of a kill")
        return []
    return inject


FILL_NAME = "chaos-fill"


def fill(directory: str) -> int:
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


def unfill(directory: str) -> None:
    """Remove what `fill` wrote."""
    try:
        os.unlink(os.path.join(directory, FILL_NAME))
    except OSError:
        pass


def _marker(x: Injection) -> str:
    return os.path.join(x.machine.run_dir, CHECK_MARKER)


def _check_state(m: SimMachine) -> dict[str, Any]:
    try:
        rep = client.request(m.state_dir, {"op": "status"}, timeout=1.0)
    except client.ControlError:
        return {}
    return (rep.get("checks") or {}).get(CHECK_NAME) or {}


def check_repaired(x: Injection) -> list[str]:
    """A marker file makes the machine check fail; once it has failed retry_timeout its
    repair removes the file and it passes again: no reset. Watched until the repair ran
    (the marker gone, the check seen failing) within the check's own bound."""
    m, seen = x.machine, []
    with open(_marker(x), "w") as f:
        f.write("chaos\n")
    limit = Budget.check_of(x.cfg) + START_BUDGET
    t0, states = time.monotonic(), set()
    while os.path.exists(_marker(x)):
        states.add(_check_state(m).get("state"))
        if time.monotonic() - t0 > limit:
            return [f"check {CHECK_NAME}: its repair did not remove {_marker(x)} within "
                    f"{limit:.1f} s (states seen: {sorted(map(str, states))})"]
        time.sleep(0.05)
    if not states & {checks.FAILING, checks.REPAIRING, checks.HELD}:  # (held: a rescue boot's)
        seen.append(f"check {CHECK_NAME}: never seen failing before its repair "
                    f"(states seen: {sorted(map(str, states))})")
    return seen


def _held_by_rescue(m: SimMachine) -> bool:
    """Does the boot under way hold the campaign's check out of the gate? A rescue boot
    holds what its looping boots blamed, and the unclean boots of earlier faults (a
    hang's reset, a panic, a failed check) count towards boot_loop.resets as those of a
    boot-loop fault do; the rescue lasts until `hachain clear --boot-loop`."""
    held = bootrecord.summary(m.persist_dir, running=True).get("held") or []
    return bootrecord.CHECK_PREFIX + CHECK_NAME in held


def check_failed(x: Injection) -> list[str]:
    """A marker directory, which the check's repair (rm -f) cannot remove: the check fails
    for good, the gate fails and the watchdog resets the machine; the boot wipes the run
    directory, and the check passes again. In a rescue boot that holds the check, see
    _held_in_rescue."""
    rescue = _held_by_rescue(x.machine)
    os.mkdir(_marker(x))
    return _held_in_rescue(x, kill_restarters=False) if rescue else []


def _held_in_rescue(x: Injection, kill_restarters: bool) -> list[str]:
    """The check failing for good in a rescue boot that holds it: it must be seen held,
    and no reset may come for as long as a failure would have taken to reset the machine
    (the check's own time, then the reboot bound); with `kill_restarters`, each
    restarter is SIGKILLed once it has run the check's retry_timeout, and each next one
    must hold it too. Then the marker goes, as an operator would remove a cause, and the
    check must pass again: the campaign judges that as for every fault."""
    m, seen = x.machine, []
    boots = len(m.boots)
    end = time.monotonic() + Budget.check_of(x.cfg) + reboot_bound(x.cfg)
    states: set[str] = set()
    kills = _RestarterKiller(m) if kill_restarters else None
    while time.monotonic() < end and len(m.boots) == boots:
        states.add(str(_check_state(m).get("state")))
        if kills is not None:
            kills.step()
        time.sleep(0.05)
    if len(m.boots) != boots:
        seen.append(f"check {CHECK_NAME}: the rescue boot that held it was reset "
                    f"(states seen: {sorted(states)})")
    elif checks.HELD not in states:
        seen.append(f"check {CHECK_NAME}: never seen held by the rescue boot "
                    f"(states seen: {sorted(states)})")
    try:
        os.rmdir(_marker(x))
    except FileNotFoundError:
        pass  # the boot wiped the run directory (reported above)
    x.seen = True
    return seen


def check_failed_bound(b: Budget) -> float:
    return b.check + reset_bound(b)


def _restarter_host_pid(m: SimMachine) -> int | None:
    """The host pid of the restarter that wrote the last heartbeat (None: none yet)."""
    hb = m.heartbeat("restarter")
    if hb is None:
        return None
    return {p.nspid: p.pid for p in snapshot_light(m).procs}.get(hb.pid)


class _RestarterKiller:
    """SIGKILLs each new restarter once it has run the check's retry_timeout (CHECK_RETRY
    s from when it was first seen), one at each step()."""

    def __init__(self, m: SimMachine) -> None:
        self.m = m
        self.last: int | None = None  # the restarter killed last
        self.due: tuple[int, float] | None = None  # (the next one, when it is killed)

    def step(self) -> None:
        pid = _restarter_host_pid(self.m)
        if pid is None or pid == self.last:
            return
        if self.due is None or self.due[0] != pid:
            self.due = (pid, time.monotonic() + CHECK_RETRY)
            return
        if time.monotonic() >= self.due[1]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.last, self.due = pid, None


def check_failed_restarters_killed(x: Injection) -> list[str]:
    """As check-failed, and every restarter is SIGKILLed once it has run CHECK_RETRY s
    (its retry_timeout), until the machine resets: a restarter that started the check's
    failure afresh could never let it fail, and the machine would never reset. The
    failure must go on from restarter to restarter (the standby forks the next one). In
    a rescue boot that holds the check, the hold must go on from restarter to restarter
    instead (_held_in_rescue)."""
    m = x.machine
    rescue = _held_by_rescue(m)
    boots = len(m.boots)
    os.mkdir(_marker(x))
    if rescue:
        return _held_in_rescue(x, kill_restarters=True)
    end = time.monotonic() + check_restarters_bound(Budget.of(x.cfg))
    kills = _RestarterKiller(m)
    while time.monotonic() < end and len(m.boots) == boots:
        kills.step()
        time.sleep(0.05)
    return []


def check_restarters_bound(b: Budget) -> float:
    """check-failed's, with the check's own time twice (a repair under way when its
    restarter is killed ends under the next one, which waits for it, or is taken as
    ended when it is gone already: either gives the check its retry_timeout again) and a
    restarter's start."""
    return 2 * b.check + reset_bound(b) + layer_bound(b)


def state_removed(x: Injection) -> list[str]:
    """`rm -rf` of the chain's run directory (state_dir) while it runs: no reset may
    come, and every layer's heartbeat must be fresh again within heartbeat_timeout (each
    layer makes again what it keeps there). Then SIGKILL the restarter: the new one must
    re-adopt every service from the records the old one made again (the campaign then
    checks that nothing runs twice)."""
    m = x.machine
    hb_timeout = x.cfg.watchdog.heartbeat_timeout
    seen: list[str] = []
    shutil.rmtree(m.state_dir)
    limit = hb_timeout + x.cfg.chain.heartbeat_interval
    t0 = time.monotonic()
    while True:
        now = time.monotonic()
        ages = {layer: None if (hb := m.heartbeat(layer)) is None else round(hb.age(now), 3)
                for layer in ("init", "restarter", "tickler")}
        records = os.path.isdir(os.path.join(m.state_dir, channels.SERVICE_RECORD_DIR))
        if records and all(a is not None and a <= hb_timeout for a in ages.values()):
            break
        if time.monotonic() - t0 > limit:
            seen.append(f"state_dir not made again within {limit:.1f} s of its removal "
                        f"(heartbeat ages {ages}, service records {records})")
            return seen
        time.sleep(0.05)
    os.kill(layer_pid(snapshot(m), "restarter"), signal.SIGKILL)
    return seen


def disk_full(x: Injection) -> list[str]:
    """Fill the persist file system for 2 s, then free it."""
    fill(x.machine.persist_dir)
    time.sleep(2.0)
    unfill(x.machine.persist_dir)
    return []


def not_here(_x: Injection) -> list[str]:
    """A kind the simulated machine cannot inject (its `needs` is "never")."""
    raise InjectError("cannot be injected on the simulated machine")


def run_full(x: Injection) -> list[str]:
    """Fill /run, SIGKILL the service, and watch for the reboot bound (what a hang would
    take to reset the machine): every heartbeat stays fresh (they are rewritten in
    place, needing no new blocks) and the restarter brings the service back to ready
    with a new pid. Then free /run; the runtime records must catch up (converge)."""
    m, name = x.machine, x.target
    pid = service_pid(x.pre, name)
    old = (x.pre.services or {}).get(name, {}).get("pid")
    hb_timeout = x.cfg.watchdog.heartbeat_timeout
    hold = reboot_bound(x.cfg)
    seen: dict[str, None] = {}  # problems in order, without repeats
    back = None
    fill(m.run_dir)
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
        unfill(m.run_dir)
    if back is None:
        seen[f"{name}: not ready again within {hold:.2f} s of its SIGKILL while /run "
             "was full"] = None
    return list(seen)


def config_broken(x: Injection) -> list[str]:
    """Break the configuration file the machine runs from, SIGKILL the layer, and wait,
    with the file still broken, for init to bring it back with a fresh heartbeat: it
    must start from the running snapshot. Then put the file back."""
    m, layer = x.machine, x.target
    lpid = x.pre.layers.get(layer)
    if lpid is None:
        raise InjectError(f"{layer}: no host pid")
    with open(x.run_config, "rb") as f:
        good = f.read()
    seen: list[str] = []
    try:
        with open(x.run_config, "ab") as f:
            f.write(b"\n[service.typo\n")
        os.kill(lpid, signal.SIGKILL)
        limit = x.cfg.chain.restart_delay + 2 * START_BUDGET
        t0 = time.monotonic()
        while True:
            s = snapshot(m)
            age = s.hb_age.get(layer)
            if s.layers.get(layer) not in (None, lpid) and age is not None and \
                    age <= x.cfg.watchdog.heartbeat_timeout:
                break
            if time.monotonic() - t0 > limit:
                seen.append(f"{layer}: not back within {limit:.1f} s with the "
                            "configuration file broken on disk")
                break
            time.sleep(0.1)
    finally:
        with open(x.run_config, "wb") as f:
            f.write(good)
    return seen


def io_stall(x: Injection) -> list[str]:
    """Bind-mount a FIFO nobody writes over the layer's heartbeat file in the machine's
    mount namespace: the layer goes on writing through the descriptor it holds, but
    every open of the path (the tickler's reads) blocks for ever, as on a hung NFS or
    FUSE mount. The gate must fail by the read's deadline, the watchdog reset the
    machine (the mount dies with the namespace), and the boot record of the boot that
    ended must name the stalled read."""
    m, layer = x.machine, x.target
    if x.pre.init is None:
        raise InjectError("no PID 1 to enter")
    fifo = os.path.join(x.workdir, f"stall-{layer}.fifo")
    if not os.path.exists(fifo):
        os.mkfifo(fifo)
    boots = len(m.boots)
    stalled = bootrecord.read(m.persist_dir).get("counter")  # this boot's number
    p = subprocess.run(["nsenter", "-t", str(x.pre.init), "-m", "--", "mount", "--bind",
                        fifo, channels.heartbeat_path(m.state_dir, layer)],
                       capture_output=True, text=True, timeout=10)
    if p.returncode != 0:
        raise InjectError(f"bind mount of a FIFO over {layer}'s heartbeat: "
                          f"{p.stderr.strip() or p.returncode}")
    try:
        m.wait_boot(boots + 1, reboot_bound(x.cfg) + PANIC_DELAY + 5)
    except Exception as e:  # noqa: BLE001 - reported as the fault's problem
        return [f"no reset after {layer}'s heartbeat read stalled: {e}"]
    rec = bootrecord.read(m.persist_dir)
    ended: dict[str, Any] = next((b for b in rec["boots"] if b.get("boot") == stalled), {})
    detail = "; ".join(map(str, ended.get("detail") or []))
    if ended.get("reason") != bootrecord.GATE_FAILURE or "did not answer" not in detail:
        return [f"the boot record of the stalled boot #{stalled} does not name the "
                f"stalled read: {ended.get('reason')}: {detail or 'no detail'}"]
    return []


def boot_loop_bound(b: Budget) -> float:
    """A crash loop into maintenance, then a reset per boot, then the rescue boot."""
    return (DB_MAX_RESTARTS + 2) * (b.backoff + 0.5) + BOOT_LOOP_RESETS * (
        b.reboot + BOOT_BUDGET) + BOOT_BUDGET


def _clear_boot_loop(m: SimMachine) -> list[str]:
    """`hachain clear --boot-loop` on the machine, as an operator runs it."""
    p = subprocess.run([sys.executable, "-m", "hachain.cli", "clear", "--boot-loop",
                        "--state-dir", m.state_dir, "--persist-dir", m.persist_dir],
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        return [f"hachain clear --boot-loop failed ({p.returncode}): "
                f"{(p.stderr or p.stdout).strip()[-300:]}"]
    return []


def boot_loop(x: Injection) -> list[str]:
    """Make the critical service fail at every start, boot after boot, and kill its
    process. Its decaying intensity parks it in maintenance, the gate fails, the
    watchdog resets the machine, and again; the boot after `BOOT_LOOP_RESETS` resets
    must be a rescue that holds it out of the gate, with the machine staying up for the
    reboot bound. Then the cause goes and `hachain clear --boot-loop` ends the rescue
    (the campaign then judges convergence as for every fault)."""
    m, name = x.machine, x.target
    program = next(a for a in x.cfg.services[name].command if a.endswith(SERVICE_FILE))
    poison = os.path.join(os.path.dirname(program), "broken-" + name)
    pid = service_pid(x.pre, name)
    boots = len(m.boots)
    seen: list[str] = []
    with open(poison, "w") as f:
        f.write("every start fails (chaos boot-loop)\n")
    try:
        os.kill(pid, signal.SIGKILL)
        limit = boot_loop_bound(Budget.of(x.cfg))
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
        while time.monotonic() - held < reboot_bound(x.cfg):
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
    for line in _clear_boot_loop(m):
        seen.append(line)
    return seen


def torn_files(persist_dir: str) -> list[str]:
    """Every persisted JSON or JSON-lines file that does not parse (a torn write). Each is
    read without waiting: a FIFO or a directory there is a file that does not read."""
    out = []
    for root, dirs, files in os.walk(persist_dir):
        for n in files + dirs:
            path = os.path.join(root, n)
            rel = os.path.relpath(path, persist_dir)
            if not n.endswith((".json", ".jsonl")):
                continue
            try:
                raw = channels.read_small(path, regular=True)
            except OSError as e:
                out.append(f"{rel}: unreadable: {e.strerror or e}")
                continue
            for i, line in enumerate([raw] if n.endswith(".json") else raw.splitlines()):
                try:
                    channels.loads(line)  # (nested too deeply included: a ValueError)
                except ValueError as e:
                    out.append(f"{rel}{'' if n.endswith('.json') else f':{i + 1}'}: torn: {e}")
    return out


def power_cut(x: Injection) -> list[str]:
    """Start a reload and a stop + start of one service through the control socket and
    pull the plug a random 0-60 ms later (the fault's seeded random source), so the cut
    falls among the persisted writes they cause. After the boot: every persisted JSON
    file parses, the last-known-good configuration reads, and admin.json holds what the
    last acknowledged request asked for. Then the service is started again, so the
    campaign's invariants compare with the state before."""
    m, rng = x.machine, x.rng
    name = rng.choice(sorted(n for n, c in x.cfg.services.items()
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
    seen = torn_files(m.persist_dir)
    if snapshot_mod.read_last_good(m.persist_dir) is None and \
            os.path.exists(os.path.join(m.persist_dir, snapshot_mod.LAST_GOOD)):
        seen.append("the last-known-good configuration does not read after the cut")
    admin, bad = read_admin(m.persist_dir)
    if bad:
        seen.append(f"after the cut: {bad}")
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


# --- the table --------------------------------------------------------------------------------

@dataclass(frozen=True)
class FaultKind:
    """One kind of fault, a row of the fault model.

    `target`: the pool it picks from: "service" (any enabled long-running service),
    "liveness" (a service with watchdog_sec or a health check: the only ones whose hang
    the chain can see), "layer" (restarter, tickler), "layer+init", "gated" (the layers
    the gate reads: init, restarter), "critical" (the campaign's critical service),
    "init", "machine". `reboot`: None (any reboot is a failure), "watchdog", "panic" or
    "power-cut". `inject(x)` does the fault and returns what broke while it held a
    condition and watched the chain through it (most kinds: nothing); `detect(pre, now,
    target)` says when its effect has been seen; `bound(budget)` is how long it may take
    until every invariant holds again. `needs`: "cgroup", "tmpfs" or "never" (cannot
    run on a simulated machine). `resets`: boots one fault may cause; `timed_reset`:
    the campaign checks that a watchdog reset comes within the reboot bound (a kind that
    causes several judges them itself)."""
    name: str
    target: str
    reboot: str | None
    summary: str
    inject: Inject
    detect: Detect
    bound: Callable[[Budget], float]
    needs: str = ""
    resets: int = 1
    timed_reset: bool = True

    def bound_for(self, cfg: config.Config) -> float:
        """The convergence bound under configuration `cfg`."""
        return self.bound(Budget.of(cfg))


KINDS: dict[str, FaultKind] = {k.name: k for k in (
    FaultKind("kill-service", "service", None, "SIGKILL the service's main process",
              signal_service(signal.SIGKILL), restarter_noticed, restart_bound),
    FaultKind("crash-loop", "service", None,
              "SIGKILL the service 4 times in a row, each new process as soon as it exists",
              crash_loop(4), restarter_noticed, lambda b: 4 * (b.backoff + START_BUDGET)),
    FaultKind("stop-service", "service", None, "SIGSTOP the service, SIGCONT after 1 s",
              signal_service(signal.SIGSTOP, cont_after=1.0), at_once, held_bound),
    FaultKind("hang-service", "liveness", None,
              "SIGSTOP the service and leave it: its watchdog must see it hung",
              signal_service(signal.SIGSTOP), restarter_noticed, hung_bound),
    FaultKind("freeze-service", "service", None,
              "cgroup.freeze the service's cgroup, thaw after 1 s",
              freeze_service(thaw_after=1.0), at_once, held_bound, "cgroup"),
    FaultKind("freeze-service-hung", "liveness", None,
              "cgroup.freeze the service's cgroup and leave it frozen",
              freeze_service(thaw_after=None), restarter_noticed, hung_bound, "cgroup"),
    FaultKind("fork-bomb", "service", None,
              "the service forks 64 sleepers (half in new sessions) and exits 1",
              signal_service(signal.SIGUSR1), restarter_noticed, restart_bound),
    FaultKind("fd-exhaust", "service", None,
              "the service opens fds up to RLIMIT_NOFILE (exits 1, or hangs its pings)",
              signal_service(signal.SIGUSR2), restarter_noticed, hung_bound),
    FaultKind("kill-layer", "layer", None, "SIGKILL the restarter or the tickler",
              signal_layer(signal.SIGKILL), layer_replaced, layer_bound),
    FaultKind("pause-layer", "layer+init", None,
              "SIGSTOP a layer for 0.5 s (< heartbeat_timeout): no reboot allowed",
              signal_layer(signal.SIGSTOP, cont_after=0.5), at_once, held_bound),
    FaultKind("hang-layer", "layer+init", "watchdog",
              "SIGSTOP a layer (= freezing it) and leave it: the watchdog must reset",
              signal_layer(signal.SIGSTOP), rebooted, reset_bound),
    FaultKind("kill-init", "init", "panic", "SIGKILL PID 1 from the host: kernel panic",
              signal_layer(signal.SIGKILL), rebooted,
              lambda _b: PANIC_DELAY + 1.0 + BOOT_BUDGET),
    FaultKind("disk-full", "machine", None,
              "fill the persist file system (tmpfs) for 2 s, then free it",
              disk_full, at_once, held_bound, "tmpfs"),
    FaultKind("run-full", "service", None,
              "fill the run file system (tmpfs), SIGKILL the service while it is full, "
              "free it after the reboot bound: supervision must go on, with no reset",
              run_full, restarter_noticed, lambda b: b.reboot + b.service, "tmpfs"),
    FaultKind("state-removed", "machine", None,
              "rm -rf the chain's run directory (state_dir) while it runs, then SIGKILL "
              "the restarter: no reset, every layer makes again what it kept there, and "
              "the new restarter re-adopts every service (nothing twice)",
              state_removed, lambda pre, now, _t: layer_replaced(pre, now, "restarter"),
              layer_bound),
    FaultKind("check-repaired", "check", None,
              "a marker file makes the machine check fail; after retry_timeout its repair "
              "removes it and the check passes again: no reset",
              check_repaired, at_once, lambda b: b.check + START_BUDGET),
    FaultKind("check-failed", "check", "watchdog",
              "a marker directory its repair cannot remove makes the machine check fail "
              "for good: the gate fails and the watchdog resets; the new boot passes",
              check_failed, rebooted, check_failed_bound, timed_reset=False),
    FaultKind("check-failed-restarters-killed", "check", "watchdog",
              "check-failed, and each restarter is SIGKILLed once it has run the check's "
              "retry_timeout, until the reset: the failure goes on from one restarter to "
              "the next, and the watchdog still resets",
              check_failed_restarters_killed, rebooted, check_restarters_bound,
              timed_reset=False),
    FaultKind("clock-step", "machine", None, "step CLOCK_REALTIME by an hour",
              not_here, at_once, restart_bound, "never"),
    FaultKind("config-broken", "layer", None,
              "append a TOML syntax error to the configuration file, then SIGKILL a layer: "
              "it must come back from the running snapshot (no reboot), file restored after",
              config_broken, layer_replaced, layer_bound),
    FaultKind("io-stall", "gated", "watchdog",
              "bind-mount a FIFO nobody writes over the heartbeat file of init or the "
              "restarter, inside the machine (a read that never returns, as on a hung "
              "mount): the pet loop keeps its timing, the gate fails by the read's deadline "
              "and says so, the watchdog resets",
              io_stall, rebooted, reset_bound, "tmpfs"),
    FaultKind("boot-loop", "critical", "watchdog",
              "the critical service fails at every start, boot after boot: the machine "
              "must come up in rescue within boot_loop.resets resets and stay up; then "
              "the cause is removed and `hachain clear --boot-loop` ends the rescue",
              boot_loop, rebooted, boot_loop_bound, resets=BOOT_LOOP_RESETS,
              timed_reset=False),
    FaultKind("power-cut", "machine", "power-cut",
              "pull the plug while the chain writes persisted state (reload, stop, start "
              "in flight): nothing persisted may be torn, and nothing acknowledged lost",
              power_cut, rebooted, lambda _b: BOOT_BUDGET),
)}


def convergence_bound(kind: str, cfg: config.Config) -> float:
    """How long a fault of `kind` may take until every invariant holds again."""
    return KINDS[kind].bound_for(cfg)


# --- the schedule and what can run here -------------------------------------------------------

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
             "init": ["init"], "machine": ["machine"],
             "check": ["machine"]}  # (the built-in configuration's check: CHECK_NAME)
    out = []
    for i in range(n):
        kind = rng.choice(kinds)
        out.append(Fault(i, kind, rng.choice(pools[KINDS[kind].target])))
    return out


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
        elif kind.target == "check" and CHECK_NAME not in getattr(cfg, "checks", {}):
            skipped[k] = (f"needs the built-in configuration: its machine check "
                          f"{CHECK_NAME} passes while no marker is in the machine's run "
                          "directory, which the fault creates")
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
