"""`hachain verify`: an exhaustive check of the chain's fault model.

What this module owns: a small, finite model of one hachain machine (kernel, init,
restarter, tickler, hardware watchdog, N services and their processes), a breadth-first
exploration of every state reachable with at most F faults, and these checks on it:

- safety: no state has two running copies of a service;
- convergence: from every reachable state, every fault-free path reaches the goal
  (kernel and all three layers up, the gate passing, every service `ready` with exactly
  one process, the one the restarter supervises, none running on a gone process of a
  service it requires) within K steps; K, and the same bound counted in ticks of time,
  are reported;
- no needless reboot: while every fault since boot was a *crash* of a service, the
  restarter or the tickler, the layer below must repair it: the watchdog must not reset
  the machine. (Hangs, init's death and kernel panics are allowed to end in a reboot.)
- DEPS_LOST: whenever time passes with the restarter up, a dependent running on a gone
  process of a service it requires has been asked to stop (`stale_dependent`).
- MAINPID= and the service watchdog: no restart of a daemon for its MAINPID= or for its
  launcher's exit, also when it exited while no restarter ran (`needless_restart`);
  after a MAINPID= in starting or ready the restarter tracks and watches the named pid
  (`wrong_main_pid`); a service sending WATCHDOG=1 is never stopped for its watchdog
  (`watchdog_kill`); a hung one is killed within its watchdog and stop timeout
  (`hung_not_restarted`).
- a replacement started ahead: whenever `Core.restarts_at_once` tells the loop to start
  a service again before the rest of an exit is handled, or `Core.at_once_mask`
  armed it for the compiled restart, the table's own decision then starts it
  (`ahead_not_taken`).

What it must not do: hold a second copy of the per-service state machine. Every service
event goes through the real `hachain.restarter.states.step` with real `ServiceConfig`s,
and the gate is the real `hachain.watchdog.health.evaluate`; what is written here is
only the glue the restarter's event loop puts around `step` (turning actions into
processes and timers, dependencies, re-adoption) and the layers' coarse behaviour.

Abstractions (docs/verify.md explains each):

- Time is a tick (one abstract second). `states.step` is always called with the same
  `now` (EPOCH); times stored in a `Svc` (start time, intensity history) are shifted one
  tick back on every tick and clamped where the policy no longer tells them apart, so the
  state space is finite while backoff, intensity windows and uptimes stay exact.
- Events are urgent: while a live layer or a service has something to do (a process exit
  to reap, a readiness message, a due timer, a child to restart), time does not advance;
  the order of simultaneous events is free, and every order is explored.
- One restarter step (handling an event, carrying out its actions, writing the records it
  marked `Persist`) is atomic with respect to faults.
- A pid is never reused while anything refers to it, so "verified against pid + start
  time" is "the pid is one of this service's live processes".
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from hachain import bootrecord, prestart
from hachain.channels import Heartbeat
from hachain.config import Backoff, Config, HealthCheck, Intensity, ServiceConfig, WatchdogConfig
from hachain.restarter import core, states
from hachain.restarter.policy import ExitStatus, exit_masked
from hachain.restarter.states import Ev, State, Svc, Timer
from hachain.simulators import converge
from hachain.watchdog import health

EPOCH = 1000.0  # the `now` every event carries; stored times are relative to it
SIGKILL, SIGTERM = 9, 15
MUTANTS = ("init-no-restart", "tickler-ignores-restarter", "adopt-duplicates",
           "layer-reads-live-file", "no-last-known-good", "no-boot-loop-breaker")
BOOT_LOOP_RESETS = 3  # [chain] boot_loop's default `resets` (action "rescue")
MACHINE_CHECK = bootrecord.CHECK_PREFIX + "net"  # the model's machine check, as blamed
UP, DEAD, HUNG = "up", "dead", "hung"
LAYERS = ("init", "restarter", "tickler")
RESTARTS_CAP = 9  # `Svc.restarts` counts are clamped: nothing in the policy reads them

# A notify service's process: READY=1 not yet sent, sent (queued on the notify socket,
# which init holds across restarter restarts, so a restarter crash loses nothing), or
# done (read by a restarter).
NOT_SENT, SENT, DONE = "not-sent", "sent", "done"
# A ready process that hangs (a fault: alive, but its health check gets no answer and
# it sends no WATCHDOG=1). For a service with a service watchdog, its "ticks left" count
# up instead: the ticks it has been hung with a restarter up (the hang bound's clock).
HUNG_P = "hung"
# A daemon's process and MAINPID= (`Options.mainpid`): a spawned launcher that will fork
# the real server and name it (MAINPID=), the launcher once it has (it exits at once),
# the server with its MAINPID= queued on the notify socket (init holds it across
# restarter restarts, as READY=1), and read by a restarter.
LAUNCHER, GOING, NAMED, TOLD = "launcher", "going", "named", "told"

# One running process: (pid, READY=1 phase, ticks left before it must send READY=1,
# got SIGTERM and may exit at any moment, the process of each service it requires that
# it was started against: (index, pid), its part in a MAINPID= handover or "").
Proc = tuple[int, str, int, bool, tuple[tuple[int, int], ...], str]

# Transition kinds. An OPERATOR step (breaking the configuration file on disk) is not a
# fault of the chain and is not counted against --faults; it is one-way, so the state
# space stays finite, and convergence must hold on both sides of it.
FAULT, EVENT, TICK, REBOOT, OPERATOR = "fault", "event", "tick", "reboot", "operator"


@dataclass(frozen=True)
class Options:
    """The model's size and timing, all times in ticks."""

    faults: int = 1
    services: int = 2
    bound: int = 200  # a state needing more fault-free steps than this fails the check
    mutant: str | None = None
    wd_timeout: int = 5
    pet_interval: int = 1
    restart_delay: int = 1  # init's fixed delay before restarting a layer
    hb_timeout: int = 1
    restart_grace: int = 3
    ready_within: int = 1  # a notify service sends READY=1 at most this long after spawn
    max_states: int = 2_000_000
    # a user's services (`hachain verify -c`), already in ticks and named svc0..svcN-1
    # in dependency order; None: the generic `service_configs` model
    configs: tuple[ServiceConfig, ...] | None = None
    tick: float = 1.0  # seconds per tick, for reporting bounds in seconds
    legend: tuple[str, ...] = ()  # the user's name of each svcK
    # the generic model's last service has a health check (interval 1 tick, 2 failures)
    # and its ready process may hang (a fault)
    health: bool = True
    # the operator may stop one service by hand (`hachain stop`) and later start it again
    # (`--admin`: not a fault, not counted against --faults, once per run)
    admin: bool = False
    # the generic model's svc0 has a service watchdog (watchdog_sec 2 ticks): it sends
    # WATCHDOG=1 every tick while it runs, and its ready process may hang (a fault)
    watchdog: bool = True
    # the generic model's svc0 is a daemon: each process it is started as forks the real
    # server, names it with MAINPID= (before or after READY=1) and exits
    mainpid: bool = True
    # services with a `condition` (model indexes): the host may stop it holding at any
    # moment (once each, not a fault); the next start of the service then skips it
    conditional: tuple[int, ...] = ()
    # the machine has one machine check ([check.NAME], action "reboot", MACHINE_CHECK)
    # whose target may fail for good (a fault: the gateway gone); the restarter then
    # reports it failed (its retry_timeout and repairs taken as already spent) until a
    # rescue boot holds it
    machine_check: bool = True


MAX_CONFIG_SERVICES = 4  # `-c`: the model's size limit (state space grows ~10x per service)
TICK_CHOICES = (0.5, 1.0, 2.0, 5.0, 10.0)  # `-c`: the largest that resolves the chain's timing


class ModelError(Exception):
    """The configuration cannot be turned into a model (too big, nothing to model)."""


def _to_ticks(seconds: float, tick: float, at_least: int = 0, down: bool = False) -> int:
    """Seconds as whole ticks, at least `at_least`: rounded up (a delay never ends early)
    or, with `down`, down (a deadline never comes late). An infinite time (no timeout)
    becomes 10**6 ticks, longer than any path the search follows."""
    if math.isinf(seconds):
        return 10**6
    n = seconds / tick
    return max(at_least, math.floor(n + 1e-9) if down else math.ceil(n - 1e-9))


def options_from_config(cfg: Config, faults: int, bound: int, only: list[str] | None = None,
                        mutant: str | None = None) -> tuple[Options, list[str]]:
    """The model of a user's chain: its long-running enabled services (or `only`), their
    dependencies among themselves, readiness, critical flags, backoff, intensity and stop
    timeouts, and the chain's watchdog timing, all rounded up to whole ticks of a size
    chosen to resolve the chain's own timing (pet interval, restart delay, heartbeat
    timeout, a quarter of the watchdog timeout). Delays round up and the watchdog's
    timeout rounds down, so the model is never kinder than the chain. Returns the options
    and notes on
    what the model leaves out. ModelError when there is nothing to model or too much."""
    notes: list[str] = []
    chosen = [s for s in cfg.services.values() if s.enabled and s.kind != "oneshot"]
    left_out = [s.name for s in cfg.services.values() if s not in chosen]
    if left_out:
        notes.append("left out (oneshot or disabled): " + ", ".join(left_out))
    if only:
        unknown = [n for n in only if n not in cfg.services]
        if unknown:
            raise ModelError(f"--only: unknown service(s) {', '.join(unknown)}")
        chosen = [s for s in chosen if s.name in only]
    if not chosen:
        raise ModelError("no long-running enabled service to model")
    if len(chosen) > MAX_CONFIG_SERVICES:
        raise ModelError(f"{len(chosen)} long-running services; the model holds at most "
                         f"{MAX_CONFIG_SERVICES}: pick them with --only NAME,NAME,...")
    names = {s.name for s in chosen}
    order: list[ServiceConfig] = []  # dependencies first, so requires point to lower indexes
    todo = sorted(chosen, key=lambda s: s.name)
    while todo:
        ready = [s for s in todo if all(d in {o.name for o in order} or d not in names
                                        for d in s.deps)]
        order.append(ready[0])
        todo.remove(ready[0])
    wd, ch = cfg.watchdog, cfg.chain
    fine = min(t for t in (wd.pet_interval, ch.restart_delay or math.inf,
                           wd.heartbeat_timeout, wd.timeout / 4) if t > 0)
    tick = max((t for t in TICK_CHOICES if t <= fine), default=TICK_CHOICES[0])
    new = {c.name: f"svc{i}" for i, c in enumerate(order)}
    confs = []
    for c in order:
        dropped = [d for d in c.deps if d not in names]
        if dropped:
            notes.append(f"{c.name}: dependencies outside the model dropped: "
                         + ", ".join(dropped))
        if c.ready not in ("none", "notify"):
            notes.append(f"{c.name}: ready = {c.ready!r} modelled as a readiness message "
                         "(like notify)")
        piped = c.ready == "none" and prestart.ready_pipe(c)
        if piped:
            notes.append(f"{c.name}: ready when its command is exec'd after pre_start, "
                         "modelled as a readiness message (like notify)")
        if c.health:
            notes.append(f"{c.name}: health checks are not modelled")
        if c.stop_command:
            notes.append(f"{c.name}: stop_command modelled as its stop signal (the service "
                         "exits when it likes, within stop_timeout)")
        if c.watchdog_sec and c.ready != "notify":
            notes.append(f"{c.name}: watchdog_sec of a ready = {c.ready!r} service is not "
                         "modelled (a notify service's is)")
        if c.on_failure:
            notes.append(f"{c.name}: on_failure not modelled (what it starts is not part "
                         "of converging)")
        if c.post_start:
            notes.append(f"{c.name}: post_start modelled as done at once, with success, "
                         "when it is ready (the table's post_start step runs)")
        if c.post_stop:
            notes.append(f"{c.name}: post_stop modelled as done at once after each end "
                         "(its start waits for nothing)")
        if c.condition is not None:
            notes.append(f"{c.name}: its condition may stop holding at any moment (once "
                         "per run); a start after that skips it")
        if c.assertion is not None:
            notes.append(f"{c.name}: assert modelled as holding (one that does not is a "
                         "failed start, as a crash at its start)")
        confs.append(replace(
            c, name=new[c.name],
            requires=tuple(new[d] for d in c.requires if d in names),
            wants=tuple(new[d] for d in c.wants if d in names),
            after=tuple(new[d] for d in c.after if d in names),
            conflicts=(), on_failure=(),
            ready="none" if c.ready == "none" and not piped else "notify",
            pre_start=(), condition=None, assertion=None, stop_command=(), post_stop=(),
            # (WATCHDOG=1 every tick while it runs; its ready process may hang)
            watchdog_sec=float(_to_ticks(c.watchdog_sec, tick, 1, down=True))
            if c.watchdog_sec and c.ready == "notify" else 0.0, health=None,
            backoff=Backoff(initial=_to_ticks(c.backoff.initial, tick),
                            factor=c.backoff.factor,
                            max=_to_ticks(c.backoff.max, tick),
                            reset_after=_to_ticks(c.backoff.reset_after, tick, 1)),
            intensity=replace(c.intensity, window=_to_ticks(c.intensity.window, tick, 1),
                              decay=_to_ticks(c.intensity.decay, tick)),
            ready_timeout=_to_ticks(c.ready_timeout, tick, 1),
            stop_timeout=_to_ticks(c.stop_timeout, tick, 1)))
    opts = Options(
        faults=faults, services=len(confs), bound=bound, mutant=mutant,
        wd_timeout=_to_ticks(wd.timeout, tick, 2, down=True),
        pet_interval=_to_ticks(wd.pet_interval, tick, 1),
        restart_delay=_to_ticks(ch.restart_delay, tick),
        hb_timeout=_to_ticks(wd.heartbeat_timeout, tick, 1, down=True),
        restart_grace=_to_ticks(wd.restart_grace, tick, 1),
        configs=tuple(confs), tick=tick, legend=tuple(c.name for c in order),
        conditional=tuple(i for i, c in enumerate(order) if c.condition is not None),
        machine_check=any(c.action == "reboot" for c in cfg.checks.values()))
    if opts.machine_check:
        notes.append("machine checks: one that fails for good on every boot is modelled "
                     "(as net: its retry_timeout and repairs taken as spent at once)")
    return opts, notes


@dataclass(frozen=True)
class Record:
    """The restarter's runtime record of one service (state_dir/services/NAME.json)."""

    state: str
    pid: int | None
    want: str
    started_mono: float | None
    restarts: int
    stop_since: float | None = None  # never set: stops by hand are not modelled


@dataclass(frozen=True)
class World:
    """One state of the machine. Every field is hashable so the search can dedupe."""

    kernel: str  # "up" | "panicked"
    layers: tuple[str, str, str]  # init, restarter, tickler: up | dead | hung
    wd: int  # ticks left before the watchdog expires
    pet_in: int  # ticks until the tickler's next pet is due
    restart_in: tuple[int | None, int | None]  # init's pending restart: restarter, tickler
    hb_age: tuple[int, int]  # age in ticks of init's and the restarter's heartbeats
    hb_extra: tuple[tuple[str, str, bool], ...]  # last restarter heartbeat: critical svcs
    hb_reboot: bool  # last restarter heartbeat asked for a reboot
    # the restarter's memory (initial when it is dead)
    svcs: tuple[Svc, ...]
    watched: tuple[int | None, ...]  # the pid each service's pidfd watches
    timers: tuple[tuple[tuple[str, int], ...], ...]  # per service: (event kind, ticks left)
    reboot_req: bool
    # the world outside the restarter
    procs: tuple[tuple[Proc, ...], ...]  # per service: its running processes
    records: tuple[Record | None, ...]  # wiped at boot (tmpfs)
    maint: tuple[bool, ...]  # admin state: held in maintenance (persistent)
    crash_only: bool  # every fault since boot was a crash of a service/restarter/tickler
    # the configuration file on disk no longer loads (persistent; the chain runs its
    # snapshot: a layer start reads this run's running snapshot, a boot falls back to the
    # last-known-good one, see hachain.snapshot)
    cfg_broken: bool = False
    snapshot: bool = True  # this run has a running snapshot (runtime: gone at a reset)
    # the boot-loop breaker's inputs and verdict (hachain.bootrecord): svc0 broken for
    # good (its every start crashes: a missing disk, a bad upgrade; persistent), the
    # last `resets` boots' (reason, critical services that failed the gate), oldest
    # first (persistent), and what this boot's rescue holds
    broken: bool = False
    check_down: bool = False  # what the machine check tests is gone for good (persistent)
    boots: tuple[tuple[str, tuple[str, ...]], ...] = ()
    held: tuple[str, ...] = ()
    # admin state: services stopped by hand (want = "down" in admin.json, persistent)
    down: tuple[bool, ...] = ()
    # the operator's one stop/start (`--admin`): "" none yet, "stop:I" svcI stopped by
    # hand, "start:I" started again (persistent: the operator's intent, what the goal asks)
    op: str = ""
    # services whose `condition` no longer holds on the host (persistent: a file, a mount)
    cond_off: tuple[int, ...] = ()
    # set once (mutants only): an invariant on a single step broke, (kind, message):
    # a restart without a fault of the service, a main pid named but not tracked, a
    # pinging service stopped by its watchdog
    bad: tuple[str, str] | None = None


@dataclass
class Step:
    """One transition: what happened, its kind, and the state it leads to."""

    label: str
    kind: str
    nxt: World
    urgent: bool = True  # time may not pass while an urgent step is enabled


WATCHDOG_TICKS = 2  # the generic svc0's watchdog_sec with `Options.watchdog`


def service_configs(n: int, faults: int, health: bool = False,
                    watchdog: bool = False) -> tuple[ServiceConfig, ...]:
    """The model's services: `svc0` (notify readiness, critical) and a chain of
    dependents `svcK` requiring `svcK-1` (readiness none). Restart "always", a short
    backoff, and an intensity limit above what F faults can cause. `health`: the last
    one has a health check every tick, hung after 2 failures in a row. `watchdog`: svc0
    has a service watchdog of 2 ticks."""
    out = []
    for i in range(n):
        out.append(ServiceConfig(
            name=f"svc{i}", command=("/model",), restart="always",
            backoff=Backoff(initial=1.0, factor=2.0, max=2.0, reset_after=3.0),
            intensity=Intensity(max_restarts=faults + 2, window=8.0, action="maintenance"),
            requires=(f"svc{i - 1}",) if i else (), ready="notify" if i == 0 else "none",
            ready_timeout=3.0, critical=(i == 0), stop_timeout=1.0, stop_signal=SIGTERM,
            watchdog_sec=float(WATCHDOG_TICKS) if watchdog and i == 0 else 0.0,
            health=HealthCheck(kind="exec", command=("/model-check",), interval=1.0,
                               timeout=1.0, failures=2) if health and i == n - 1 else None))
    return tuple(out)


def _ticks(delay: float) -> int:
    """A delay in seconds as whole ticks (a timer never fires early)."""
    return max(0, math.ceil(delay))


class _Restarter:
    """The model's effects around the restarter's real core, on a mutable copy of a World.

    The restarter's decisions (dependencies, DEPS_LOST routing, conflicts, adoption, admin
    state, critical services, and through the core `states.step`) are all made by
    `hachain.restarter.core.Core`, the object the restarter's event loop drives. Like
    loop.py, this class only turns the core's effects into the model's processes, pidfds,
    timers and records, and pushes back what they teach (a spawned pid, an exit).
    """

    def __init__(self, m: Model, w: World) -> None:
        self.m = m
        self.broken = w.broken
        self.cond_off = w.cond_off
        self.watched = list(w.watched)
        self.timers = [dict(t) for t in w.timers]
        self.procs = [{p[0]: p[1:] for p in ps} for ps in w.procs]
        self.records = list(w.records)
        self.persisted = w.maint  # admin.json as a starting restarter reads it
        self.persisted_down = w.down or (False,) * len(w.maint)
        self.dirty: set[int] = set()
        self.notes: list[str] = []
        self.duplicate = False  # the adopt-duplicates mutant, while it adopts
        self.ahead: str | None = None  # on_exit: a replacement started ahead, not yet taken
        self.bad = w.bad
        self.core = core.Core(m.plan, {c.name: s for c, s in zip(m.confs, w.svcs, strict=True)})
        self.core.rescue_held = set(w.held)
        self.core.reboot_requested = "requested" if w.reboot_req else None
        self.core.cells = m.cells

    def feed(self, i: int, kind: Ev, **kw: Any) -> None:
        self.core.push(self.m.confs[i].name, kind, EPOCH, **kw)
        self.run()

    def run(self) -> None:
        """Carry out the core's effects until it has nothing left to do."""
        nxt = self.core.next_effect
        while (e := nxt()) is not None:
            self.do(e)

    def new_pid(self) -> int:
        used = {p for ps in self.procs for p in ps} | {w for w in self.watched if w}
        # a process a dependent was started against keeps its pid while that runs
        used |= {p for ps in self.procs for v in ps.values() for _, p in v[3]}
        used |= {s.pid for s in self.core.svcs.values() if s.pid}
        used |= {r.pid for r in self.records if r is not None and r.pid}
        pid = 1
        while pid in used:
            pid += 1
        return pid

    def do(self, a: Any) -> None:
        if isinstance(a, core.RunProbe) and a.purpose == "health":
            # the health check answers at once: it fails while the main process hangs
            main = self.core.svcs[a.name].pid
            ok = main is None or self.procs[self.m.index[a.name]].get(main, ("",))[0] != HUNG_P
            self.notes.append(f"{a.name} health check " + ("ok" if ok else "failed"))
            self.core.probe_result(a.name, "health", ok, "no answer", EPOCH)
            return
        if isinstance(a, core.MainFound):
            if a.accepted:  # MAINPID=: watch the process it named instead
                self.watched[self.m.index[a.name]] = a.pid
                self.notes.append(f"{a.name} main pid {a.pid}")
            return
        if isinstance(a, (core.Log, core.RunProbe, core.DropProbe, core.FindMain,
                          core.ReleaseRescue, core.Forget)):
            return  # logging; readiness checks, forking services, rescue, reload: not modelled
        i = self.m.index[a.name]
        if isinstance(a, core.Transition):
            self.notes.append(f"svc{i} {a.old.state.value}->{a.new.state.value}")
        elif isinstance(a, states.PostStart):
            # (loop.py spawns them; modelled as done at once, in the same step)
            self.notes.append(f"svc{i} post_start done")
            self.core.push_front(a.name, Ev.POST_START_DONE, EPOCH,
                                 status=ExitStatus("exited", code=0))
        elif isinstance(a, states.Spawn):
            if self.ahead == a.name:
                self.ahead = None  # the replacement on_exit started is this one
            if i in self.cond_off:  # loop.py asks the condition before any spawn
                self.notes.append(f"svc{i} skipped: its condition does not hold")
                self.core.push_front(a.name, Ev.CONDITION_FAILED, EPOCH,
                                     reason="condition failed")
                return
            pid = self.new_pid()
            if self.broken and i == 0:  # it crashes at once: only its exit is left
                self.notes.append(f"svc{i} pid {pid} crashes at once")
            else:
                mp = LAUNCHER if i in self.m.daemons else ""
                ready = self.m.confs[i].ready == "notify"
                self.procs[i][pid] = (NOT_SENT if ready else DONE,
                                      self.m.opts.ready_within if ready else 0, False,
                                      self.on(i), mp)
            self.watched[i] = pid
            self.notes.append(f"spawn svc{i} pid {pid}")
            self.core.push_front(a.name, Ev.SPAWNED, EPOCH, pid=pid)
        elif isinstance(a, states.Kill):
            main = self.core.svcs[a.name].pid
            hit = [p for p in self.procs[i] if a.group or p == main]
            for p in hit:
                if a.signal == SIGKILL:
                    del self.procs[i][p]
                else:  # it exits when it likes; SIGKILL follows the stop timeout
                    phase, left, _, on, mp = self.procs[i][p]
                    self.procs[i][p] = (phase, left, True, on, mp)
        elif isinstance(a, core.KillLeftovers):
            if not self.duplicate:
                self.procs[i].clear()  # its cgroup: never two copies
        elif isinstance(a, states.ArmTimer):
            if math.isinf(a.delay):
                self.timers[i].pop(a.kind, None)
            else:
                self.timers[i][a.kind] = _ticks(a.delay)
        elif isinstance(a, states.CancelTimer):
            self.timers[i].pop(a.kind, None)
        elif isinstance(a, states.Persist):
            self.dirty.add(i)

    def flag(self, kind: str, msg: str) -> None:
        """A step broke an invariant (kept in the World: the first one)."""
        if self.bad is None:
            self.bad = (kind, msg)

    def read(self, i: int, p: int) -> None:
        """The restarter reads what process `p` of svc`i` queued on the notify socket, in
        the order it was sent: MAINPID= (then it is what the core must track, if the
        service is starting or ready), then READY=1 (from the main process)."""
        phase, left, term, on, mp = self.procs[i][p]
        name = self.m.names[i]
        if mp == NAMED:
            mp = TOLD
            self.procs[i][p] = (phase, left, term, on, mp)
            before = self.core.svcs[name].state
            self.core.main_pid(name, p, EPOCH)
            self.run()
            s = self.core.svcs[name]
            if before in (State.STARTING, State.READY) and s.state is not before:
                self.flag("needless_restart",
                          f"svc{i} named pid {p} its main process (MAINPID={p}) while "
                          f"{before.value}, and the restarter took it for a failure: "
                          f"{before.value} -> {s.state.value} (no fault of svc{i})")
            elif before in (State.STARTING, State.READY) and \
                    (s.pid != p or self.watched[i] != p):
                self.flag("wrong_main_pid",
                          f"svc{i} named pid {p} its main process (MAINPID={p}) while "
                          f"{before.value}; the restarter tracks pid {s.pid} and watches "
                          f"pid {self.watched[i]}")
        if phase == SENT:
            self.procs[i][p] = (DONE, left, term, on, mp)
            if self.core.svcs[name].pid == p:
                self.feed(i, Ev.READY)

    def drain(self) -> None:
        """Read every message queued on the notify socket (loop.py does before it handles
        an exit, so a MAINPID= sent before the exit is never read after it)."""
        for i, ps in enumerate(self.procs):
            for p in sorted(ps):
                if ps[p][0] == SENT or ps[p][4] == NAMED:
                    self.read(i, p)

    def on(self, i: int) -> tuple[tuple[int, int], ...]:
        """The processes of what svc`i` requires that it starts against now: the main
        process of each, or the server a daemon's launcher has named (MAINPID=) if the
        restarter has not read that yet."""
        svcs = self.core.svcs
        out = []
        for d in self.m.confs[i].requires:
            j = self.m.index.get(d)
            if j is None or (pid := svcs[d].pid) is None:
                continue
            v = self.procs[j].get(pid)
            named = [p for p, u in self.procs[j].items() if u[4] == NAMED]
            out.append((j, named[0] if named and (v is None or v[4] == GOING) else pid))
        return tuple(out)

    def on_exit(self, i: int) -> None:
        """The watched pid's pidfd became readable: the restarter reads the notify socket
        first (loop.py), then, if it still watches that pid, the core hears of the exit."""
        pid = self.watched[i]
        assert pid is not None
        self.drain()
        if self.watched[i] != pid:
            return  # MAINPID=: no longer the main process, its exit is nobody's business
        self.watched[i] = None
        s = self.core.svcs[self.m.confs[i].name]
        named = [p for p, v in self.procs[i].items() if v[4] in (NAMED, TOLD)]
        if named and s.state in (State.STARTING, State.READY):
            self.flag("needless_restart",
                      f"the restarter takes the exit of svc{i} pid {pid}, which had named "
                      f"pid {named[0]} its main process (MAINPID={named[0]}) and exited "
                      f"as a daemon's launcher does, for the exit of the service (no fault "
                      f"of svc{i})")
        sig = SIGTERM if s.state is State.STOPPING else SIGKILL
        st = ExitStatus("killed", signal=sig)
        # loop.py asks first whether the table restarts it at once; if so, it kills the
        # leftovers and starts the replacement before the exit's other effects, and the
        # Spawn that follows must be that replacement's (`ahead_not_taken`)
        # An armed service (Core.at_once_mask, asked when the loop waits with nothing
        # queued) was restarted by _clone3.wait before Python saw the exit, unless its
        # mask leaves that exit to Python: the same promise, made earlier
        mask = None if self.core.queue or self.core.out else \
            self.core.at_once_mask(s.name, EPOCH)
        armed = mask is not None and not exit_masked(mask, False, sig)
        self.ahead = s.name if armed or self.core.restarts_at_once(s.name, pid, st, EPOCH) \
            else None
        if self.ahead is not None and states.kills_leftovers(self.m.confs[i]) and \
                not self.duplicate:
            self.procs[i].clear()
        self.core.exited(s.name, pid, st, EPOCH)
        self.run()
        if self.ahead is not None:
            self.flag("ahead_not_taken",
                      f"the restarter started svc{i} again ahead of the effects of pid "
                      f"{pid}'s exit (Core.restarts_at_once, or armed for the compiled "
                      "restart: Core.at_once_mask), and the table then did not "
                      "start it")
            self.ahead = None

    def adopt_or_start(self, boot: bool) -> None:
        """A (re)started restarter: the core rebuilds every service from the admin
        state, the records, and whether each record's pid is one of its processes."""
        self.duplicate = self.m.opts.mutant == "adopt-duplicates" and not boot
        handed: dict[int, tuple[int, int | None]] = {}  # a launcher named its server
        for i in self.m.order:
            name = self.m.confs[i].name
            admin = {"want": "up", "maintenance": "maintenance (persisted)"} \
                if self.persisted[i] else {"want": "down"} if self.persisted_down[i] else {}
            rec = None if self.duplicate else self.records[i]
            alive = rec is not None and rec.pid in self.procs[i]
            named = [p for p, v in self.procs[i].items() if v[4] == NAMED]
            if named and rec is not None and rec.state in ("starting", "ready") and not admin \
                    and name not in self.core.rescue_held:
                handed[i] = (named[0], rec.pid)
            main = self.queued_main(i) if rec is not None else None
            if self.core.adopt(name, admin, rec, alive, EPOCH, main):
                assert rec is not None
                pid = self.core.svcs[name].pid
                self.watched[i] = pid
                self.notes.append(f"adopt svc{i} pid {pid}")
                if main is not None and pid == main:  # its MAINPID= was read
                    phase, left, term, on, _ = self.procs[i][pid]
                    self.procs[i][pid] = (phase, left, term, on, TOLD)
        self.run()
        self.duplicate = False
        self.core.adopted(EPOCH)
        self.core.release(len(self.core.later), EPOCH)
        self.run()
        for i, (q, launcher) in handed.items():
            s = self.core.svcs[self.m.names[i]]
            if s.pid != q:
                self.flag("needless_restart",
                          f"a restarter that started after a crash took svc{i} for dead: "
                          f"its record named pid {launcher}, which had named pid {q} its "
                          f"main process (MAINPID={q}, still queued) and exited; svc{i} is "
                          f"now {s.state.value} (no fault of svc{i})")

    def queued_main(self, i: int) -> int | None:
        """What a starting restarter read on the notify socket before adoption (loop.py):
        the server a MAINPID= still queued names, if it runs."""
        named = [p for p, v in self.procs[i].items() if v[4] == NAMED]
        return named[0] if named else None

    def maint(self) -> tuple[bool, ...]:
        """The admin state the core keeps (admin.json): held in maintenance."""
        return tuple(e is not None and "maintenance" in e
                     for e in map(self.core.admin_entry, self.m.names))

    def down(self) -> tuple[bool, ...]:
        """The admin state the core keeps (admin.json): stopped by hand."""
        return tuple(e is not None and e.get("want") == "down" and "maintenance" not in e
                     for e in map(self.core.admin_entry, self.m.names))

    def flush(self) -> None:
        for i in self.dirty:
            s = self.core.svcs[self.m.confs[i].name]
            self.records[i] = Record(s.state.value, s.pid, s.want, s.started_at,
                                     min(s.restarts, RESTARTS_CAP))
        self.dirty.clear()

    def into(self, w: World, **kw: Any) -> World:
        """`w` with this restarter's memory and the world it changed."""
        self.flush()
        svcs = tuple(replace(self.core.svcs[n], restarts=min(self.core.svcs[n].restarts,
                                                               RESTARTS_CAP))
                     for n in self.m.names)
        return replace(
            w, svcs=svcs, watched=tuple(self.watched),
            timers=tuple(tuple(sorted(t.items())) for t in self.timers),
            reboot_req=self.core.reboot_requested is not None,
            procs=tuple(tuple((p,) + v for p, v in sorted(ps.items())) for ps in self.procs),
            records=tuple(self.records), maint=self.maint(), down=self.down(), bad=self.bad,
            **kw)

    def heartbeat(self, w: World) -> World:
        """The restarter's heartbeat: age 0, the core's report on critical services, and
        the machine check's (failed while its target is down, unless the rescue holds
        it: MachineChecks.report)."""
        extra = tuple((n, d["state"], d["ok"]) for n, d in self.core.critical_report().items())
        if self.m.opts.machine_check:
            held = MACHINE_CHECK in w.held
            state = "ok" if not w.check_down else "held" if held else "failed"
            extra += ((MACHINE_CHECK, state, not w.check_down or held),)
        return replace(w, hb_age=(w.hb_age[0], 0), hb_extra=extra, hb_reboot=w.reboot_req)


class Model:
    """The machine: boot state, transitions, the gate and the goal."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.confs = opts.configs or service_configs(opts.services, opts.faults, opts.health,
                                                     opts.watchdog)
        # services whose processes hand over to a server they fork (MAINPID=)
        self.daemons = frozenset({0} if opts.mainpid and not opts.configs else ())
        self.index = {c.name: i for i, c in enumerate(self.confs)}
        self.names = [c.name for c in self.confs]
        # a hung process of a service watchdog's service must be gone within this many
        # ticks of restarter time: the watchdog, then the stop timeout's SIGKILL, after
        # those of what requires it (an operator's stop, ordered, may come first)
        self.hang_bound = {
            i: _ticks(c.watchdog_sec) + _ticks(c.stop_timeout) + sum(
                _ticks(d.stop_timeout) for d in self.confs if self._requires(d.name, i))
            for i, c in enumerate(self.confs) if c.watchdog_sec}
        self.plan = core.make_plan({c.name: c for c in self.confs})  # the restarter's
        self.order = list(range(len(self.confs)))  # requires point to lower indexes
        self.wdc = WatchdogConfig(device="sim", timeout=opts.wd_timeout,
                                  pet_interval=float(opts.pet_interval),
                                  heartbeat_timeout=float(opts.hb_timeout),
                                  restart_grace=float(opts.restart_grace))
        self.age_cap = max(opts.hb_timeout, opts.restart_grace) + 1
        self._gate: dict[tuple[Any, ...], bool] = {}
        self.cells: set[tuple[str, str]] = set()  # (state, event) pairs fed to states.step
        n = len(self.confs)
        self.blank = World(
            kernel="up", layers=(UP, UP, UP), wd=opts.wd_timeout, pet_in=1,
            restart_in=(None, None), hb_age=(0, 0), hb_extra=(), hb_reboot=False,
            svcs=tuple(states.initial(c.name) for c in self.confs), watched=(None,) * n,
            timers=((),) * n, reboot_req=False, procs=((),) * n, records=(None,) * n,
            maint=(False,) * n, crash_only=True, down=(False,) * n)

    # --- boot, gate, goal ------------------------------------------------------------

    def boot(self, prev: World | None = None) -> World:
        """Power on: init starts the restarter and the tickler (which arms the watchdog);
        the runtime directory is empty; the persistent admin state and the file on disk
        are kept (from `prev`, the state before the reset)."""
        w = replace(self.blank, snapshot=False) if prev is None else replace(
            self.blank, maint=prev.maint, down=prev.down, op=prev.op,
            cfg_broken=prev.cfg_broken, snapshot=False,
            broken=prev.broken, check_down=prev.check_down, boots=prev.boots,
            crash_only=not (prev.broken or prev.check_down))
        w = replace(w, held=self.rescue_holds(w.boots))
        if not self.config_loads(w):  # no configuration at all: nothing starts
            return replace(w, layers=(UP, DEAD, DEAD), hb_age=(0, self.age_cap),
                           restart_in=(self.opts.restart_delay, self.opts.restart_delay))
        w = replace(w, snapshot=True)
        r = _Restarter(self, w)
        r.adopt_or_start(boot=True)
        return r.heartbeat(r.into(w))

    def rescue_holds(self, boots: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[str, ...]:
        """What this boot's rescue holds: the real `bootrecord.assess` on the boots
        before it (all inside the window), under the default policy (the mutant: the
        action "ignore", which never holds anything)."""
        action = "ignore" if self.opts.mutant == "no-boot-loop-breaker" else "rescue"
        verdict = bootrecord.assess(
            [{"reason": r, "failed_critical": list(f), "started_wall": 0.0} for r, f in boots],
            BOOT_LOOP_RESETS, 900.0, action, 0.0)
        if verdict is None or verdict["action"] != "rescue":
            return ()
        return tuple(n for n in verdict["held"]
                     if n in self.index and self.confs[self.index[n]].critical
                     or n == MACHINE_CHECK and self.opts.machine_check)

    def ended(self, w: World, reason: str, failed: tuple[str, ...]) -> World:
        """`w` with its boot's end written into the boot record (the last few kept)."""
        return replace(w, boots=(w.boots + ((reason, failed),))[-BOOT_LOOP_RESETS:])

    def panicked(self, w: World) -> World:
        """The machine is down (kernel panic): only the persistent state matters; the
        boot ends with nothing written about why ("unknown")."""
        return replace(self.blank, kernel="panicked", layers=(DEAD, DEAD, DEAD),
                       maint=w.maint, down=w.down, op=w.op, crash_only=False,
                       cfg_broken=w.cfg_broken, broken=w.broken, check_down=w.check_down,
                       boots=self.ended(w, bootrecord.UNKNOWN, ()).boots)

    def gate_ok(self, w: World) -> bool:
        """The real health gate on the heartbeats the tickler would read now."""
        ignore = self.opts.mutant == "tickler-ignores-restarter"
        r_age, r_alive = (0, True) if ignore else (w.hb_age[1], w.layers[1] != DEAD)
        key = (w.hb_age[0], w.layers[0] != DEAD, r_age, r_alive, w.hb_extra, w.hb_reboot)
        ok = self._gate.get(key)
        if ok is None:
            pre = bootrecord.CHECK_PREFIX
            extra: dict[str, Any] = {
                "critical": {n: {"state": st, "ok": good} for n, st, good in w.hb_extra
                             if not n.startswith(pre)},
                # (as the restarter reports its machine checks: MachineChecks.report)
                "checks": {n[len(pre):]: {"state": st, "ok": good, "detail": "target down"}
                           for n, st, good in w.hb_extra if n.startswith(pre)},
                "reboot_requested": "requested" if w.hb_reboot else None}
            hbs = {"init": Heartbeat("init", 1, EPOCH - w.hb_age[0], 0.0, 1, 0, {}),
                   "restarter": Heartbeat("restarter", 2, EPOCH - r_age, 0.0, 1, 0, extra)}
            alive = {"init": key[1], "restarter": r_alive}
            ok = health.evaluate(EPOCH, hbs, alive, self.wdc).ok
            self._gate[key] = ok
        return ok

    def copies(self, w: World) -> list[int]:
        """Services with more than one running process (a daemon's launcher that has
        named its server and is exiting is not a copy)."""
        return [i for i, ps in enumerate(w.procs) if sum(p[5] != GOING for p in ps) > 1]

    def overdue(self, w: World) -> list[str]:
        """Hung processes of a service with a service watchdog that the restarter, up
        for longer than the service's hang bound since the hang, has not killed."""
        return [f"svc{i} pid {p[0]} hung for {p[2]} ticks (bound {b})"
                for i, b in self.hang_bound.items() for p in w.procs[i]
                if p[1] == HUNG_P and p[2] > b]

    def is_goal(self, w: World) -> bool:
        """The shared `converged` predicate (hachain/simulators/converge.py) on what `w` shows:
        every service ready exactly once, every layer up, the gate passing. With svc0
        broken for good, the best there is: the machine up with the gate passing (svc0
        retried by its policy, or held by a rescue once its intensity parked it and the
        gate reset the machine), and what requires it waiting."""
        hung = any(p[1] == HUNG_P for ps in w.procs for p in ps)
        return not hung and not self.stale(w) and \
            converge.converged(self.seen(w), self.goal(w.broken, self.stopped(w)))

    def stopped(self, w: World) -> int | None:
        """The service the operator stopped by hand (and has not started again)."""
        return int(w.op[5:]) if w.op.startswith("stop:") else None

    def _requires(self, name: str, j: int) -> bool:
        """Does `name` require svc`j`, directly or through what it requires?"""
        todo, seen = [name], set()
        while todo:
            n = todo.pop()
            for d in self.confs[self.index[n]].requires:
                if d == self.names[j]:
                    return True
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return False

    def stale(self, w: World, untold: bool = False) -> list[str]:
        """Dependents still running on a process of a service they require that is gone
        (restart_dependents = true): DEPS_LOST should have restarted them with it, as
        "svc1 pid 3 on svc0 pid 1". `untold`: only those the restarter has not asked to
        stop yet (not stopping)."""
        out = []
        for i, ps in enumerate(w.procs):
            if not self.confs[i].restart_dependents or \
                    untold and w.svcs[i].state is State.STOPPING:
                continue
            for pid, _ph, _left, _term, on, _mp in ps:
                out += [f"svc{i} pid {pid} on svc{j} pid {q}" for j, q in on
                        if all(p[0] != q for p in w.procs[j])]
        return out

    def untold_dependents(self, w: World, edges: list[tuple[str, World]]) -> list[str]:
        """The invariant on DEPS_LOST: when time is about to pass (a tick, so a live
        restarter has handled every exit it can see), every dependent running on a
        required process that has gone is stopping."""
        if w.kernel != "up" or w.layers[1] != UP or not any(k == TICK for k, _ in edges):
            return []
        return self.stale(w, untold=True)

    def goal(self, broken: bool, stopped: int | None = None) -> converge.Want:
        """The converged chain: every service wanted as configured; behind a svc0 broken
        for good, svc0 as it may be and every other service waiting. A service the
        operator stopped (`stopped`) is down, with no process, whatever the restarter
        thinks it wants, and what requires it (in the model: every later one) waits."""
        if broken:
            want = {c.name: converge.ServiceWant(held=State.WAITING.value)
                    for c in self.confs[1:]}
        else:
            # one with a condition may be skipped instead of ready
            want = {c.name: converge.ServiceWant(c.kind,
                                                 conditional=i in self.opts.conditional)
                    for i, c in enumerate(self.confs)}
        if stopped is not None and not (broken and stopped == 0):
            want[self.names[stopped]] = converge.ServiceWant(enabled=False)
            for c in self.confs[stopped + 1:]:
                if self._requires(c.name, stopped):
                    want[c.name] = converge.ServiceWant(held=State.WAITING.value)
        return converge.Want(want, heartbeat_timeout=float(self.opts.hb_timeout))

    def seen(self, w: World) -> converge.Seen:
        """What an observer would see of `w`. Heartbeat ages are the real gate's to
        judge (`petting`), so the layers' show as fresh."""
        layers = {n: converge.LayerSeen(None if st == DEAD else i + 1, 0.0,
                                        "alive" if st == UP else st)
                  for i, (n, st) in enumerate(zip(LAYERS, w.layers, strict=True))}
        return converge.Seen(
            layers, {s.name: {"state": s.state.value, "want": s.want, "pid": s.pid}
                     for s in w.svcs},
            {s.name: [p[0] for p in w.procs[i]] for i, s in enumerate(w.svcs)},
            machine_up=w.kernel == "up", petting=self.gate_ok(w),
            reboot_requested=w.reboot_req,
            watched={s.name: w.watched[i] for i, s in enumerate(w.svcs)})

    # --- transitions -----------------------------------------------------------------

    def successors(self, w: World) -> list[Step]:
        """Every transition from `w`: faults, then urgent events, else one tick. (None
        at all once a step broke an invariant: that is the counterexample, the search
        ends there.)"""
        if w.bad is not None:
            return []
        if w.kernel == "panicked":
            return [Step("kernel panic: reboot (panic=N)", REBOOT, self.boot(w))]
        out = list(self.faults(w))
        if not w.cfg_broken:
            out.append(Step("operator: the configuration file on disk is broken (a typo, "
                            "no reload)", OPERATOR, replace(w, cfg_broken=True),
                            urgent=False))
        out.extend(self.admin_ops(w))
        for i in self.opts.conditional:
            if i not in w.cond_off:
                out.append(Step(f"host: svc{i}'s condition no longer holds", OPERATOR,
                                replace(w, cond_off=tuple(sorted(w.cond_off + (i,)))),
                                urgent=False))
        events = list(self.events(w))
        out.extend(events)
        if not any(e.urgent for e in events):
            out.append(self.tick(w))
        return out

    def admin_ops(self, w: World) -> Iterator[Step]:
        """`--admin`: the operator stops svc0 by hand (`hachain stop svc0`), and may
        later start it again; a request needs a live restarter to answer it."""
        if not self.opts.admin or w.layers[1] != UP or w.op.startswith("start:"):
            return
        verb = "start" if w.op else "stop"
        for i in (0,):  # svc0: what everything else requires (bounded: one target)
            r = _Restarter(self, w)
            err = r.core.request(verb, self.names[i], EPOCH)
            r.run()
            what = f" (refused: {err})" if err else ""
            yield Step(f"operator: hachain {verb} svc{i}{what}", OPERATOR,
                       r.into(w, op=f"{verb}:{i}"), urgent=False)

    def faults(self, w: World) -> Iterator[Step]:
        for li, layer in enumerate(LAYERS):
            st = w.layers[li]
            if st == DEAD:
                continue
            yield Step(f"fault: {layer} crashed (SIGKILL)", FAULT, self.crash(w, li))
            if st == UP:
                hung = replace(w, layers=_set(w.layers, li, HUNG), crash_only=False)
                yield Step(f"fault: {layer} hung (SIGSTOP)", FAULT, hung)
        yield Step("fault: kernel panic", FAULT, self.panicked(w))
        if not w.broken and self.confs[0].critical and 0 not in self.opts.conditional:
            procs = _set(w.procs, 0, ())
            yield Step("fault: svc0 is broken for good (a missing disk: its process and "
                       "every start crash)", FAULT,
                       replace(w, broken=True, procs=procs, crash_only=False))
        if self.opts.machine_check and not w.check_down:
            yield Step("fault: the machine check's target is gone for good (the gateway "
                       "it pings)", FAULT, replace(w, check_down=True, crash_only=False))
        for i, ps in enumerate(w.procs):
            for k, (pid, ph, *rest) in enumerate(ps):
                procs = _set(w.procs, i, tuple(p for p in ps if p[0] != pid))
                yield Step(f"fault: svc{i} pid {pid} crashed (SIGKILL)", FAULT,
                           replace(w, procs=procs))
                if ph == DONE and rest[-1] != GOING and (self.confs[i].health is not None
                                                         or self.confs[i].watchdog_sec):
                    # alive, but it no longer answers or pings: only its health check
                    # or its service watchdog can tell
                    procs = _set(w.procs, i, _set(ps, k, (pid, HUNG_P, *rest)))
                    yield Step(f"fault: svc{i} pid {pid} hangs (alive, no answer)", FAULT,
                               replace(w, procs=procs))

    def crash(self, w: World, li: int) -> World:
        """SIGKILL of a layer. Init's death is PID 1's death: a kernel panic."""
        if li == 0:
            return self.panicked(w)
        n = len(self.confs)
        w = replace(w, layers=_set(w.layers, li, DEAD),
                    restart_in=_set(w.restart_in, li - 1, self.opts.restart_delay))
        if li == 1:  # its memory is gone; queued notify messages stay in init's socket
            w = replace(w, svcs=self.blank.svcs, watched=(None,) * n, timers=((),) * n,
                        reboot_req=False)
        return w

    def events(self, w: World) -> Iterator[Step]:
        """Work of live layers and services. Most is urgent (time waits for it); a
        process may send READY=1 any time before its deadline, and a process that got
        SIGTERM may exit any time (the stop timeout's SIGKILL bounds it)."""
        init, restarter, _ = w.layers
        if init == UP:
            for k, left in enumerate(w.restart_in):
                if left == 0 and not (k == 0 and self.opts.mutant == "init-no-restart"):
                    yield self.layer_restart(w, k + 1)
        for i, ps in enumerate(w.procs):
            for k, (pid, ph, left, term, on, mp) in enumerate(ps):
                if ph == NOT_SENT:
                    phase = SENT  # queued even while no restarter runs
                    procs = _set(w.procs, i, _set(ps, k, (pid, phase, 0, term, on, mp)))
                    yield Step(f"svc{i} pid {pid} sends READY=1", EVENT,
                               replace(w, procs=procs), urgent=left == 0)
                if mp == LAUNCHER and ph in (NOT_SENT, DONE) and not term:
                    # a daemon: before READY=1 (the server sends it) or once it was read
                    q = self.new_pid(w)
                    server = (q, ph, left, False, on, NAMED)
                    procs = _set(w.procs, i, tuple(sorted(
                        _set(ps, k, (pid, DONE, 0, term, on, GOING)) + (server,))))
                    # what runs on svc`i` runs on the same service, now served by q
                    procs = tuple(tuple(p[:4] + (tuple((j, q if (j, r) == (i, pid) else r)
                                                       for j, r in p[4]),) + p[5:]
                                        for p in qs) for qs in procs)
                    yield Step(f"svc{i} pid {pid} forks pid {q}, which sends MAINPID={q}",
                               EVENT, replace(w, procs=procs))
                if mp == GOING:
                    procs = _set(w.procs, i, ps[:k] + ps[k + 1:])
                    yield Step(f"svc{i} pid {pid} exits (a launcher: its server runs)",
                               EVENT, replace(w, procs=procs))
                elif term:
                    procs = _set(w.procs, i, ps[:k] + ps[k + 1:])
                    yield Step(f"svc{i} pid {pid} exits on SIGTERM", EVENT,
                               replace(w, procs=procs), urgent=False)
        if restarter != UP:
            return
        for i in range(len(w.svcs)):
            yield from self.restarter_events(w, i)

    def new_pid(self, w: World) -> int:
        """The smallest pid nothing in `w` refers to (as _Restarter.new_pid)."""
        used = {p[0] for ps in w.procs for p in ps} | {p for p in w.watched if p}
        used |= {q for ps in w.procs for p in ps for _, q in p[4]}
        used |= {s.pid for s in w.svcs if s.pid} | {r.pid for r in w.records if r and r.pid}
        pid = 1
        while pid in used:
            pid += 1
        return pid

    def restarter_events(self, w: World, i: int) -> Iterator[Step]:
        pid = w.watched[i]
        if pid is not None and all(p[0] != pid for p in w.procs[i]):
            r = _Restarter(self, w)
            r.on_exit(i)
            yield self.rstep(w, r, f"restarter reaps svc{i} pid {pid}")
        for p, ph, _left, _term, _on, mp in w.procs[i]:
            if ph == SENT or mp == NAMED:
                r = _Restarter(self, w)
                r.read(i, p)
                what = " and ".join(([f"MAINPID={p}"] if mp == NAMED else [])
                                    + (["READY=1"] if ph == SENT else []))
                yield self.rstep(w, r, f"restarter reads {what} from svc{i} pid {p}")
        for kind, left in w.timers[i]:
            if left == 0:
                r = _Restarter(self, w)
                del r.timers[i][kind]
                r.core.timer(self.names[i], Timer(kind), EPOCH)
                r.run()
                main = w.svcs[i].pid
                if kind == Timer.WATCHDOG and r.core.svcs[self.names[i]].state is not \
                        w.svcs[i].state and any(p[0] == main and p[1] != HUNG_P
                                                for p in w.procs[i]):
                    r.flag("watchdog_kill",
                           f"svc{i} pid {main} sends WATCHDOG=1 every tick, and the "
                           f"restarter stopped it for its service watchdog")
                yield self.rstep(w, r, f"restarter: svc{i} {kind} timer fires")

    def rstep(self, w: World, r: _Restarter, label: str) -> Step:
        notes = f" [{', '.join(r.notes)}]" if r.notes else ""
        return Step(label + notes, EVENT, r.into(w))

    def config_loads(self, w: World) -> bool:
        """Whether a starting layer gets a configuration. The real rule
        (`hachain.snapshot.for_layer`): this run's running snapshot when there is one,
        else the file, else the file's last-known-good snapshot. The mutants: every start
        reads the live file, or there is no last-known-good snapshot."""
        if self.opts.mutant == "layer-reads-live-file":
            return not w.cfg_broken
        if w.snapshot or not w.cfg_broken:
            return True
        return self.opts.mutant != "no-last-known-good"

    def layer_restart(self, w: World, li: int) -> Step:
        """Init's restart of the restarter (re-adoption) or the tickler."""
        name = LAYERS[li]
        if not self.config_loads(w):  # it exits 2; init tries again
            return Step(f"init restarts the {name}: it exits 2 (the file on disk is broken)",
                        EVENT, replace(w, restart_in=_set(w.restart_in, li - 1,
                                                          self.opts.restart_delay)))
        w = replace(w, layers=_set(w.layers, li, UP), restart_in=_set(w.restart_in, li - 1, None),
                    snapshot=True)
        if li == 2:  # the new tickler opens the device: SETTIMEOUT pets it
            return Step("init restarts the tickler", EVENT,
                        replace(w, wd=self.opts.wd_timeout, pet_in=1))
        r = _Restarter(self, w)
        # the hang bound counts from the new restarter's start: its adoption arms the
        # service watchdog again, or, when the record did not say ready (it was being
        # stopped for the hang), the ready timeout
        r.procs = [{p: (v[0], self.adopted_hang_clock(i)) + v[2:] if v[0] == HUNG_P else v
                    for p, v in ps.items()} for i, ps in enumerate(r.procs)]
        r.adopt_or_start(boot=False)
        notes = f" [{', '.join(r.notes)}]" if r.notes else ""
        return Step("init restarts the restarter" + notes, EVENT, r.heartbeat(r.into(w)))

    def tick(self, w: World) -> Step:
        """One tick of time: heartbeats, init's countdowns, timers, the tickler, the
        watchdog (an expiry resets the machine)."""
        init, restarter, tickler = w.layers
        cap = self.age_cap
        ages = (0 if init == UP else min(w.hb_age[0] + 1, cap),
                0 if restarter == UP else min(w.hb_age[1] + 1, cap))
        restart_in = w.restart_in
        if init == UP:
            restart_in = tuple(None if x is None else max(0, x - 1)  # type: ignore[assignment]
                               for x in restart_in)
        timers = tuple(tuple((k, max(0, t - 1)) for k, t in ts) for ts in w.timers)
        procs = tuple(tuple((p, ph, self.hung_for(i, left, restarter) if ph == HUNG_P
                             else max(0, left - 1), term, on, mp)
                            for p, ph, left, term, on, mp in ps) for i, ps in enumerate(w.procs))
        w2 = replace(w, hb_age=ages, restart_in=restart_in, timers=timers, procs=procs,
                     svcs=tuple(self.age_svc(s, i) for i, s in enumerate(w.svcs)),
                     records=tuple(self.age_record(r) for r in w.records))
        if restarter == UP:
            r = _Restarter(self, w2)
            for i in self.hang_bound:
                if any(p[1] != HUNG_P and p[5] != GOING for p in w2.procs[i]):
                    # WATCHDOG=1, sent more often than watchdog_sec, read at once
                    before = r.core.svcs[self.names[i]].state
                    r.core.watchdog_ping(self.names[i], EPOCH)
                    r.run()
                    if r.core.svcs[self.names[i]].state is not before:
                        r.flag("watchdog_kill",
                               f"svc{i} sends WATCHDOG=1 every tick, and the restarter "
                               f"took a ping for a reason to stop it ({before.value} -> "
                               f"{r.core.svcs[self.names[i]].state.value})")
            w2 = r.heartbeat(r.into(w2))
            w2 = replace(w2, hb_age=ages)
        wd, pet_in, label = w.wd, w.pet_in, "tick"
        if tickler == UP:
            pet_in = max(0, pet_in - 1)
            if pet_in == 0 and self.gate_ok(w2):
                wd, pet_in, label = self.opts.wd_timeout, self.opts.pet_interval, "tick (pet)"
        wd -= 1
        if wd <= 0:
            failed = tuple(n for n, _st, good in w2.hb_extra if not good)
            return Step("tick: watchdog expired: reset, boot", REBOOT,
                        self.boot(self.ended(w, bootrecord.GATE_FAILURE, failed)))
        return Step(label, TICK, replace(w2, wd=wd, pet_in=pet_in))

    def adopted_hang_clock(self, i: int) -> int:
        """A hung process's clock once a restarter starts: it may have to wait out the
        ready timeout instead of the watchdog, so the clock starts that much lower."""
        c = self.confs[i]
        if i not in self.hang_bound:
            return 0
        return _ticks(c.watchdog_sec) - max(_ticks(c.watchdog_sec), _ticks(c.ready_timeout))

    def hung_for(self, i: int, ticks: int, restarter: str) -> int:
        """A hung process's clock: for a service watchdog's service, the ticks it has
        been hung while a restarter was up (capped past the bound); else unused (0)."""
        b = self.hang_bound.get(i)
        if b is None:
            return 0
        return min(ticks + (restarter == UP), b + 1)

    def age_svc(self, s: Svc, i: int) -> Svc:
        """Shift a Svc's times one tick into the past, clamped where the policy stops
        telling them apart (uptime >= reset_after; restarts outside the window)."""
        c = self.confs[i]
        started = s.started_at
        if started is not None:
            started = max(started - 1, EPOCH - c.backoff.reset_after)
        hist = tuple(t - 1 for t in s.history if t - 1 > EPOCH - c.intensity.window)
        if started == s.started_at and hist == s.history:
            return s
        return replace(s, started_at=started, history=hist)

    def age_record(self, r: Record | None) -> Record | None:
        if r is None or r.started_mono is None:
            return r
        floor = EPOCH - max(c.backoff.reset_after for c in self.confs)
        return replace(r, started_mono=max(r.started_mono - 1, floor))


def _set(t: tuple[Any, ...], i: int, v: Any) -> Any:
    """`t` with item `i` replaced by `v`."""
    return t[:i] + (v,) + t[i + 1:]


# --- the search ----------------------------------------------------------------------

@dataclass
class Report:
    """What `verify` found."""

    ok: bool
    states: int
    transitions: int
    k_steps: int | None
    k_ticks: int | None
    elapsed: float
    opts: Options
    violation: dict[str, Any] | None = None
    others: dict[str, int] = field(default_factory=dict)
    truncated: bool = False
    cells: tuple[tuple[str, str], ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def bound_seconds(self) -> float | None:
        """The worst convergence in seconds (ticks times the tick), an upper bound."""
        return None if self.k_ticks is None else self.k_ticks * self.opts.tick

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "states": self.states, "transitions": self.transitions,
            "k_steps": self.k_steps, "k_ticks": self.k_ticks,
            "elapsed": round(self.elapsed, 3),
            "states_per_second": round(self.states / self.elapsed) if self.elapsed else None,
            "faults": self.opts.faults, "services": self.opts.services,
            "bound": self.opts.bound, "mutant": self.opts.mutant,
            "truncated": self.truncated, "violations": self.others,
            "table_cells": [list(c) for c in self.cells],
            "table_size": len(states.TABLE),
            "verdict": "PASS" if self.ok else "FAIL",
            "bound_seconds": self.bound_seconds, "tick_seconds": self.opts.tick,
            "config_services": dict(zip([f"svc{i}" for i in range(len(self.opts.legend))],
                                        self.opts.legend, strict=True)),
            "notes": self.notes,
            "counterexample": self.violation,
        }


def explore(opts: Options) -> Report:
    """Breadth-first search over (state, faults used), then the three checks."""
    t0 = time.monotonic()
    m = Model(opts)
    init = m.boot()
    succ: dict[World, list[tuple[str, World]]] = {}  # kind, next (labels recomputed)
    parent: dict[tuple[World, int], tuple[World, int] | None] = {(init, 0): None}
    first: dict[World, tuple[World, int]] = {init: (init, 0)}
    queue = deque([(init, 0)])
    transitions = 0
    truncated = False
    while queue:
        node = queue.popleft()
        w, used = node
        edges = succ.get(w)
        if edges is None:
            edges = [(s.kind, s.nxt) for s in m.successors(w)]
            succ[w] = edges
        for kind, nxt in edges:
            n2 = used + (kind == FAULT)
            if n2 > opts.faults:
                continue
            transitions += 1
            key = (nxt, n2)
            if key in parent:
                continue
            parent[key] = node
            first.setdefault(nxt, key)
            queue.append(key)
        if len(succ) > opts.max_states:
            truncated = True
            break
    return _check(m, init, succ, parent, first, transitions, truncated, t0)


def _trace(m: Model, parent: dict[tuple[World, int], tuple[World, int] | None],
           key: tuple[World, int]) -> list[str]:
    """Human-readable transitions from the initial state to `key`'s state."""
    path = [key]
    while (p := parent[path[-1]]) is not None:
        path.append(p)
    path.reverse()
    return ["boot"] + [_label(m, a[0], b[0], b[1] > a[1]) for a, b in itertools.pairwise(path)]


def _label(m: Model, a: World, b: World, fault: bool | None = None) -> str:
    """The step from `a` to `b` (a fault, or not, when known: a crash and an exit of the
    same process lead to the same state)."""
    for s in m.successors(a):
        if s.nxt == b and (fault is None or (s.kind == FAULT) == fault):
            return s.label
    return "?"


def _check(m: Model, init: World, succ: dict[World, list[tuple[str, World]]],
           parent: dict[tuple[World, int], tuple[World, int] | None],
           first: dict[World, tuple[World, int]], transitions: int, truncated: bool,
           t0: float) -> Report:
    opts = m.opts
    order = list(first)  # BFS discovery order: earlier means a shorter trace
    found: list[tuple[str, str, list[str]]] = []
    counts: dict[str, int] = {}

    dup = [w for w in order if m.copies(w)]
    counts["duplicate"] = len(dup)
    if dup:
        w = dup[0]
        i = m.copies(w)[0]
        msg = f"two running copies of svc{i}: pids {[p[0] for p in w.procs[i]]}"
        found.append(("duplicate", msg, _trace(m, parent, first[w])))

    needless = [w for w in order if w.crash_only and w.kernel == "up" and any(
        k == REBOOT for k, _ in succ.get(w, ()))]
    counts["needless_reboot"] = len(needless)
    if needless:
        w = needless[0]
        tr = _trace(m, parent, first[w]) + [s.label for s in m.successors(w)
                                            if s.kind == REBOOT]
        msg = ("the machine was reset although every fault since boot was a crash that "
               "the layer below should have repaired")
        found.append(("needless_reboot", msg, tr))

    untold = [w for w in order if m.untold_dependents(w, succ.get(w, []))]
    counts["stale_dependent"] = len(untold)
    if untold:
        w = untold[0]
        msg = ("a dependent runs on a process of a service it requires that has gone, and "
               "the restarter has not asked it to stop (DEPS_LOST): "
               + "; ".join(m.stale(w, untold=True)))
        found.append(("stale_dependent", msg, _trace(m, parent, first[w])))

    for kind in ("needless_restart", "wrong_main_pid", "watchdog_kill", "ahead_not_taken"):
        hit = [w for w in order if w.bad is not None and w.bad[0] == kind]
        counts[kind] = len(hit)
        if hit:
            w = hit[0]  # (BFS order: the shortest trace there is)
            assert w.bad is not None
            found.append((kind, w.bad[1], _trace(m, parent, first[w])))

    late = [w for w in order if m.overdue(w)]
    counts["hung_not_restarted"] = len(late)
    if late:
        w = late[0]
        msg = ("a process of a service with a service watchdog hangs (alive, no WATCHDOG=1) "
               "and the restarter has not killed it within the watchdog and the stop "
               "timeout: " + "; ".join(m.overdue(w)))
        found.append(("hung_not_restarted", msg, _trace(m, parent, first[w])))

    dist, ticks = _worst_case(m, succ)
    stuck = [w for w in order if w in succ and w not in dist]
    counts["no_convergence"] = len(stuck)
    if stuck:
        w = stuck[0]
        tr = _trace(m, parent, first[w]) + ["-- then, with no further faults --"]
        lasso = _lasso(m, succ, dist, w)
        tr += lasso
        if any(step.endswith("reset, boot") or step.startswith("kernel panic: reboot")
               for step in lasso):
            counts["boot_loop"] = 1
            msg = ("a boot loop: a reachable state from which the machine can reset and boot "
                   "again forever with no further fault")
            found.append(("boot_loop", msg, tr))
        else:
            msg = ("a reachable state from which some fault-free path never reaches the goal "
                   "(every service ready exactly once, every layer up, the gate passing)")
            found.append(("no_convergence", msg, tr))
    over = [w for w in order if dist.get(w, 0) > opts.bound]
    counts["over_bound"] = len(over)
    if over and not stuck:
        w = over[0]
        found.append(("over_bound", f"needs {dist[w]} fault-free steps > bound {opts.bound}",
                      _trace(m, parent, first[w])))
    k_steps = max(dist.values(), default=0) if not stuck else None
    k_ticks = max(ticks.values(), default=0) if not stuck else None
    violation = None
    if found:
        kind, msg, tr = min(found, key=lambda f: len(f[2]))
        violation = {"kind": kind, "message": msg, "trace": tr}
    return Report(ok=not found and not truncated, states=len(succ), transitions=transitions,
                  k_steps=k_steps, k_ticks=k_ticks, elapsed=time.monotonic() - t0,
                  opts=opts, violation=violation, others=counts, truncated=truncated,
                  cells=tuple(sorted(m.cells)))


def _worst_case(m: Model, succ: dict[World, list[tuple[str, World]]]
                ) -> tuple[dict[World, int], dict[World, int]]:
    """For every state from which *every* fault-free path reaches the goal: the largest
    number of steps (and of ticks) that can take. States not in the result can avoid the
    goal forever (a cycle) under no further faults."""
    dist: dict[World, int] = {}
    ticks: dict[World, int] = {}
    pending: dict[World, int] = {}
    preds: dict[World, list[tuple[World, int]]] = {}
    ready: deque[World] = deque()
    for w, edges in succ.items():
        if m.is_goal(w) or w.bad is not None:  # (a broken invariant ends a path)
            dist[w], ticks[w] = 0, 0
            ready.append(w)
            continue
        ff = [(k, n) for k, n in edges if k != FAULT]
        pending[w] = len(ff)
        dist[w], ticks[w] = -1, -1
        for k, n in ff:
            preds.setdefault(n, []).append((w, int(k in (TICK, REBOOT))))
    done = set(ready)
    while ready:
        n = ready.popleft()
        for w, dt in preds.get(n, ()):
            dist[w] = max(dist[w], dist[n] + 1)
            ticks[w] = max(ticks[w], ticks[n] + dt)
            pending[w] -= 1
            if pending[w] == 0:
                done.add(w)
                ready.append(w)
    for w in list(dist):
        if w not in done:
            del dist[w], ticks[w]
    return dist, ticks


def _lasso(m: Model, succ: dict[World, list[tuple[str, World]]], dist: dict[World, int],
           w: World, limit: int = 60) -> list[str]:
    """A fault-free path from `w` that never reaches the goal: into a cycle."""
    out: list[str] = []
    seen = {w: 0}
    while len(out) < limit:
        steps = [s for s in m.successors(w) if s.kind != FAULT and s.nxt not in dist]
        if not steps:
            out.append("(no fault-free transition left)")
            break
        s = next((s for s in steps if s.nxt not in seen), steps[0])
        out.append(s.label)
        if s.nxt in seen:
            out.append(f"(back to the state after step {seen[s.nxt]} of this part: a cycle "
                       "that never reaches the goal)")
            break
        w = s.nxt
        seen[w] = len(out)
    else:
        out.append(f"(... {limit} steps shown, the goal still not reached)")
    return out


# --- the command ---------------------------------------------------------------------

def add_parser(subparsers: Any) -> None:
    """Register `hachain verify` on the `hachain` command's subparsers."""
    p = subparsers.add_parser(
        "verify", help="exhaustive check of the chain's fault model",
        description="Explore every state of a model of the chain reachable with at most "
                    "--faults faults; check that no service ever runs twice and that every "
                    "reachable state converges back to the configured state.")
    _arguments(p)
    p.set_defaults(func=func)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--faults", type=int, default=1, help="faults per run (default 1)")
    p.add_argument("--services", type=int, default=2, help="services in the model (default 2)")
    p.add_argument("--bound", type=int, default=200,
                   help="most fault-free steps allowed to converge (default 200)")
    from hachain.simulators.cluster_verify import CLUSTER_MUTANTS
    p.add_argument("--mutant", choices=MUTANTS + CLUSTER_MUTANTS, default=None,
                   help="check a deliberately broken chain (the checker must catch it); "
                        "the cluster-* ones with --cluster")
    p.add_argument("--cluster", action="store_true",
                   help="the timed model of two nodes and one singleton service "
                        "(docs/cluster.md) instead of one machine")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--admin", action="store_true",
                   help="the operator may stop one service by hand and start it again "
                        "(once per run, not counted as a fault)")
    p.add_argument("--condition", action="store_true",
                   help="the generic model's svc0 has a condition, which the host may stop "
                        "holding at any moment (once, not a fault)")
    p.add_argument("--no-health", dest="health", action="store_false",
                   help="leave out the generic model's health-checked service and its hang")
    p.add_argument("--no-watchdog", dest="watchdog", action="store_false",
                   help="leave out svc0's service watchdog (WATCHDOG=1) and its hang")
    p.add_argument("--no-mainpid", dest="mainpid", action="store_false",
                   help="leave out svc0's MAINPID= hand-over to the server it forks")
    p.add_argument("--no-machine-check", dest="machine_check", action="store_false",
                   help="leave out the machine check ([check.NAME]) whose target may fail "
                        "for good")
    p.add_argument("-c", "--config", default=None,
                   help="model this configuration file's services and timing instead of the "
                        f"generic model (at most {MAX_CONFIG_SERVICES} long-running services)")
    p.add_argument("--only", default=None,
                   help="with -c: the services to model, comma-separated")


def func(args: argparse.Namespace) -> int:
    """Run the check; 0 converges, 1 counterexample, 2 bad usage."""
    if getattr(args, "cluster", False):
        from hachain.simulators import cluster_verify
        if args.mutant is not None and args.mutant not in cluster_verify.CLUSTER_MUTANTS \
                or not 0 <= args.faults <= 3:
            print("hachain verify: --cluster takes --faults 0..3 and the cluster-* mutants",
                  file=sys.stderr)
            return 2
        return cluster_verify.run(args.faults, args.mutant, args.json)
    problems = []
    if not 0 <= args.faults <= 4:
        problems.append(f"--faults: must be 0..4, got {args.faults}")
    if not 1 <= args.services <= 4:
        problems.append(f"--services: must be 1..4, got {args.services}")
    if args.bound < 1:
        problems.append(f"--bound: must be >= 1, got {args.bound}")
    if args.mutant is not None and args.mutant not in MUTANTS:  # cluster-* need --cluster
        problems.append(f"--mutant: unknown {args.mutant!r} (one of {', '.join(MUTANTS)})")
    if getattr(args, "only", None) and not getattr(args, "config", None):
        problems.append("--only needs -c")
    notes: list[str] = []
    opts = Options(faults=args.faults, services=args.services, bound=args.bound,
                   mutant=args.mutant, health=getattr(args, "health", True),
                   admin=getattr(args, "admin", False),
                   watchdog=getattr(args, "watchdog", True),
                   mainpid=getattr(args, "mainpid", True),
                   machine_check=getattr(args, "machine_check", True),
                   conditional=(0,) if getattr(args, "condition", False) else ())
    if not problems and getattr(args, "config", None):
        from hachain import config as config_mod
        try:
            cfg = config_mod.load(args.config)
            only = [n.strip() for n in args.only.split(",")] if args.only else None
            opts, notes = options_from_config(cfg, args.faults, args.bound, only, args.mutant)
            opts = replace(opts, admin=getattr(args, "admin", False))
        except config_mod.ConfigError as e:
            problems.extend(e.errors)
        except ModelError as e:
            problems.append(f"{args.config}: {e}")
    if problems:
        for line in problems:
            print(f"hachain verify: {line}", file=sys.stderr)
        return 2
    rep = explore(opts)
    rep.notes = notes
    if args.json:
        print(json.dumps(rep.to_json(), indent=1))
    else:
        _print(rep)
    return 0 if rep.ok else 1


def _print(rep: Report) -> None:
    o = rep.opts
    rate = rep.states / rep.elapsed if rep.elapsed else 0.0
    what = (f"{o.services} of your services ("
            + ", ".join(f"svc{i} = {n}" for i, n in enumerate(o.legend)) + ")"
            if o.legend else f"{o.services} generic services")
    print(f"model: {what}, at most {o.faults} fault(s), 1 tick = {o.tick:g} s"
          + (f", mutant {o.mutant}" if o.mutant else ""))
    for note in rep.notes:
        print(f"  note: {note}")
    print(f"explored {rep.states} states, {rep.transitions} transitions in "
          f"{rep.elapsed:.2f} s ({rate:.0f} states/s)")
    print(f"state table: {len(rep.cells)} (state, event) cells exercised through "
          f"states.step, of the {len(states.TABLE)} the table defines for every event")
    if rep.truncated:
        print(f"state space larger than {o.max_states} states: search stopped, no verdict")
        print("FAIL: no verdict (state space too large)")
        return
    if rep.violation is None:
        print(f"PASS: converges from every reachable state within {rep.k_steps} steps, "
              f"{rep.k_ticks} ticks (at most {rep.bound_seconds:g} s); never two running "
              "copies of a service; no needless reboot; no dependent left running on a "
              "gone required process; no restart without a fault; MAINPID= tracked; a hung "
              "watchdog service killed within its bound, a pinging one never")
        return
    v = rep.violation
    print(f"FAIL: COUNTEREXAMPLE ({v['kind']}): {v['message']}")
    for n, line in enumerate(v["trace"]):
        print(f"  {n:3d}. {line}")
    more = {k: c for k, c in rep.others.items() if c}
    print("violating states: " + ", ".join(f"{k} {c}" for k, c in more.items()))


def main(argv: list[str] | None = None) -> int:
    """`python -m hachain.simulators.verify`: the same as `hachain verify`."""
    p = argparse.ArgumentParser(prog="hachain verify")
    _arguments(p)
    return func(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
