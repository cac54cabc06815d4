"""The restarter's core: every decision about services that is not one cell of the table.

Owns: the services' `Svc`s and the dependency plan (requires / wants / after, conflicts,
critical), what an event means for the other services (waiting dependents look again,
DEPS_LOST to what *requires* a service that went down, restart groups, conflicts),
the order of re-adoption at start, the admin state kept across restarts, the orderly
shutdown, refusals during it, and a reboot request. Everything about one service is a
cell of `states.TABLE` (Rule 1 of states.py): its timers, check results, MAINPID=, what
an adopted record means, a request refused in maintenance; the core only turns what the
driver saw into those events.

Must not: do I/O or read the clock (no os, socket, subprocess, time: test_layering holds
it). `now` comes in with each call.

How it is driven (h11's and s6's way: an event yields actions, a queue runs them in
order, nothing re-enters). A driver pushes events (`push`, or the helpers `exited`,
`timer`, `probe_result`, `adopt`, `request`, ...), then takes effects one at a time with
`next_effect()` and carries each out. What carrying one out teaches it (a spawned pid, a
failed spawn, a main pid found) it pushes back with `push_front`, and it keeps taking
effects until there is none. `next_effect` steps queued events only once every effect of
the previous one was taken, so effects come out in the order the decisions were made.
Two drivers use this same object: the restarter's event loop (restarter/loop.py: epoll,
fork/exec, signals, sockets, files) and `hachain verify` (hachain/simulators/verify.py: a model of
processes and timers), so the code model-checked is the code that runs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from hachain.configtypes import ServiceConfig
from hachain.errors import closest
from hachain.restarter import graph, policy, states
from hachain.restarter.policy import ExitStatus
from hachain.restarter.states import Ev, Event, State, Svc, Timer

# --- effects: what the driver must do (states' Spawn, Kill, ArmTimer, CancelTimer and
# Persist pass through as they are) ---------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """A service changed state (the loop logs it, verify notes it)."""

    name: str
    old: Svc
    new: Svc


@dataclass(frozen=True)
class Log:
    """A line for the restarter's log."""
    text: str


# The table's own actions that the driver carries out (states.py defines them).
KillLeftovers = states.KillLeftovers
RunProbe = states.RunProbe
DropProbe = states.DropProbe
FindMain = states.FindMain


@dataclass(frozen=True)
class MainFound:
    """The main pid a `launched` or `main_pid` event reported: `accepted` (watch it, in
    place of the former main process if any) or not (let it go). `via`: "MAINPID" when
    the service named it."""

    name: str
    pid: int
    accepted: bool
    via: str = ""


@dataclass(frozen=True)
class ReleaseRescue:
    """`hachain clear NAME` of a service a rescue boot holds: record its release."""

    name: str


@dataclass(frozen=True)
class Forget:
    """A service a reload removed is down: drop its record and everything about it."""

    name: str


@dataclass(frozen=True)
class Monitor:
    """`name` is started because `failed` failed for good (its on_failure): its next
    spawn is told so (MONITOR_* in its environment, the last exit of `failed`)."""

    name: str
    failed: str
    status: ExitStatus | None


Effect = (states.Spawn | states.Teardown | states.Kill | states.ArmTimer | states.CancelTimer
          | states.Persist | Transition | Log | KillLeftovers | RunProbe | DropProbe | FindMain
          | MainFound | ReleaseRescue | Forget | Monitor)

_GAVE_UP = (State.FAILED, State.MAINTENANCE)  # what starts a service's on_failure


class Record(Protocol):
    """What adoption reads of a service's runtime record (persist.RuntimeRecord)."""

    @property
    def state(self) -> str: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def restarts(self) -> int: ...
    @property
    def started_mono(self) -> float | None: ...
    @property
    def stop_since(self) -> float | None: ...


@dataclass(frozen=True)
class Plan:
    """Everything computed from the services' configurations (again after a reload)."""

    conf: Mapping[str, ServiceConfig]
    deps: dict[str, tuple[str, ...]]  # what each orders itself after, among these services
    rev: dict[str, list[str]]  # who orders itself after each
    conflicts: dict[str, tuple[str, ...]]  # both directions
    critical: tuple[str, ...]
    singletons: tuple[str, ...]  # [cluster] services this node runs only while it owns them
    order: tuple[str, ...]  # dependencies first


def make_plan(conf: Mapping[str, ServiceConfig]) -> Plan:
    deps = {n: tuple(d for d in c.deps if d in conf) for n, c in conf.items()}
    conflicts: dict[str, tuple[str, ...]] = {n: c.conflicts for n, c in conf.items()}
    for n, c in conf.items():
        for o in c.conflicts:
            if o in conflicts and n not in conflicts[o]:
                conflicts[o] += (n,)
    return Plan(conf=dict(conf), deps=deps, rev=graph.reverse(deps), conflicts=conflicts,
                critical=tuple(n for n, c in conf.items() if c.critical),
                singletons=tuple(n for n, c in conf.items() if c.singleton),
                order=tuple(n for level in graph.start_levels(deps) for n in level))


# A queued event: (service, event, now, event fields, a condition on the service's state
# when it is its turn, or None). Event None: after an exit, sweep what it left behind.
Item = tuple[str, "Ev | None", float, dict[str, Any], "Callable[[Svc], bool] | None"]

READY_CHECK_FIRST = 0.02  # s after the spawn: the first exec / tcp readiness check
READY_CHECK_AGAIN = states.READY_CHECK_AGAIN
RESCUE_HELD = "rescue: boot loop (hachain clear --boot-loop)"


def _waiting(s: Svc) -> bool:
    return s.state is State.WAITING


# Keys whose change a configuration reload takes without restarting the service: they
# are read only when `hachain reload NAME` runs (loop.py reads them from the plan then).
_TAKEN_WITHOUT_RESTART = ("reload_command", "reload_signal", "reload_notify",
                          "reload_timeout")


def _restarts_for(old: ServiceConfig, new: ServiceConfig) -> bool:
    """Does a running service restart for this change of its configuration?"""
    return replace(new, **{k: getattr(old, k) for k in _TAKEN_WITHOUT_RESTART}) != old


class Core:
    """The decisions. `svcs` may be given (verify rebuilds a Core from each model state)."""

    def __init__(self, plan: Plan, svcs: dict[str, Svc] | None = None) -> None:
        self.plan = plan
        self.svcs: dict[str, Svc] = svcs if svcs is not None else {
            n: states.initial(n) for n in plan.conf}
        self.queue: deque[Item] = deque()
        self.out: deque[Any] = deque()
        # events held back to be released a batch at a time (`release`): the first start
        # of many services must not stall the loop's heartbeat and control socket
        self.later: deque[tuple[str, Ev, dict[str, Any]]] = deque()
        self.removing: set[str] = set()  # removed by a reload, still stopping
        # services stepped (or added) since the driver last looked: their compiled
        # restart is made again (loop.py _rearm)
        self.touched: set[str] = set(self.svcs)
        self.shutting_down = False
        self.stop_levels: list[list[str]] = []  # the orderly shutdown, last level first
        self.rescue_held: set[str] = set()  # critical services a rescue boot holds
        self.reboot_requested: str | None = None
        self.grants: dict[str, int] = {}  # singletons this node may run: fencing token
        self.grant_owners: dict[str, str] = {}  # singletons held elsewhere: the node
        self.cells: set[tuple[str, str]] | None = None  # (state, event) stepped, if kept
        self._deferred: list[tuple[str, Ev, dict[str, Any]]] = []  # adoption's Later

    # --- the queue ---------------------------------------------------------------------

    def push(self, name: str, kind: Ev, now: float, **kw: Any) -> None:
        self.queue.append((name, kind, now, kw, None))

    def push_front(self, name: str, kind: Ev, now: float, **kw: Any) -> None:
        """What carrying out an effect taught (SPAWNED, SPAWN_FAILED, LAUNCHED): stepped
        before anything queued earlier, as the next thing that happens to the service."""
        self.queue.appendleft((name, kind, now, kw, None))

    def next_effect(self) -> Any:
        """The next effect to carry out, or None once nothing is left to do."""
        out, queue = self.out, self.queue
        while not out:
            if not queue:
                return None
            self._process(*queue.popleft())
        return out.popleft()

    def release(self, limit: int, now: float) -> int:
        """Queue up to `limit` held-back events; returns how many were taken."""
        n = 0
        while self.later and n < limit:
            name, kind, kw = self.later.popleft()
            n += 1
            if name in self.svcs and not self.shutting_down:
                self.queue.append((name, kind, now, kw, None))
        return n

    def _process(self, name: str, kind: Ev | None, now: float, kw: dict[str, Any],
                 only: Callable[[Svc], bool] | None) -> None:
        s = self.svcs.get(name)
        if s is None:
            if kind in (Ev.LAUNCHED, Ev.MAIN_PID) and kw.get("pid") is not None:
                self.out.append(MainFound(name, kw["pid"], False))  # its pidfd goes
            return  # removed by a reload since
        if kind is None:
            self._sweep(name, s)
            return
        if only is not None and not only(s):
            return
        c = self.plan.conf[name]
        first = kw.pop("first", False) if kind is Ev.LAUNCHED else False
        ev = self._event(name, c, kind, now, kw)
        if self.cells is not None:
            self.cells.add((s.state.value, kind.value))
        try:
            nxt, actions = states.step(s, ev, c)
        except states.InvalidTransition as e:
            self.out.append(Log(f"warning: {e}"))
            return
        self.svcs[name] = nxt
        self.touched.add(name)
        if nxt.state is not s.state or nxt.want != s.want:
            # what its dependents' starts wait for (states.deps_blocker) changed: their
            # compiled restarts are made again too (at_once_mask)
            self.touched.update(self.plan.rev.get(name, ()))
        if nxt.state is not s.state and kind is not Ev.ADOPTED:
            self.out.append(Transition(name, s, nxt))
            if nxt.state in _GAVE_UP and c.on_failure:
                self._on_failure(name, nxt, now)
        for a in actions:
            self._action(a, now)
        if kind is Ev.MAIN_PID:  # the same service going on under another pid
            self.out.append(MainFound(name, ev.pid or 0, nxt.pid == ev.pid != s.pid,
                                      via="MAINPID"))
        else:
            self._after_change(name, s, nxt, now)
        if kind is Ev.SPAWN_FAILED:
            why = nxt.reason.removeprefix("cannot start: ")
            self.out.append(Log(f"cannot start {name}: {why}"))
        elif kind is Ev.LAUNCHED:
            self._after_launch(name, nxt, ev, first)
        elif kind is Ev.HEALTH_FAILED and nxt.health_failures > s.health_failures:
            h = c.health
            self.out.append(Log(f"{name}: health check failed ({nxt.health_failures}/"
                                f"{h.failures if h else '?'}): {ev.reason}"))
        if name in self.removing:
            self._forget_if_stopped(name)

    def _event(self, name: str, c: ServiceConfig, kind: Ev, now: float,
               kw: dict[str, Any]) -> Event:
        """The event a cell is stepped with: what the driver saw, and (unless the event is
        local) what the other services mean for this one right now."""
        if kind in states.LOCAL_EVENTS:  # its cells ask nothing about the others
            return Event(kind, now, **kw)
        blocker = states.deps_blocker(c, self.svcs)
        if c.singleton:
            kw.setdefault("owned", name in self.grants)
            kw.setdefault("owner", self.grant_owners.get(name, ""))
        plan = self.plan
        return Event(kind, now, deps_ready=not blocker, waiting_for=blocker,
                     dependents_up=states.dependents_up(name, plan.rev.get(name, ()),
                                                        plan.conf, self.svcs), **kw)

    def _action(self, a: states.Action, now: float) -> None:
        if isinstance(a, states.Spawn):
            for other in self.plan.conflicts.get(a.name, ()):
                self.queue.appendleft((other, Ev.STOP, now, {}, states.is_up))
            self.out.append(a)
        elif isinstance(a, states.StopDependents):
            self._deps_lost(a.name, a.reason, now)
        elif isinstance(a, states.RestartGroup):
            for d in graph.dependents(self.plan.rev, a.name):
                self.queue.append((d, Ev.RESTART, now, {}, states.is_up))
        elif isinstance(a, states.Reboot):
            self.reboot_requested = f"{a.name}: {a.reason}"
            self.out.append(Log(f"{a.name}: restart intensity exceeded with action reboot: "
                                "asking the tickler to stop petting the watchdog"))
        elif isinstance(a, states.Later):
            self._deferred.append((a.name, a.kind, {"status": a.status} if a.status else {}))
        elif isinstance(a, states.Refuse):
            self.out.append(Log(f"{a.name}: request refused: {a.why}"))
        else:  # Kill, ArmTimer, CancelTimer, Persist, KillLeftovers, checks: the driver's
            self.out.append(a)

    def _after_change(self, name: str, old: Svc, new: Svc, now: float) -> None:
        """What a service's step means for its checks and for the services around it."""
        c = self.plan.conf[name]
        out = self.out
        if new.state is State.STARTING and new.pid is not None and old.pid != new.pid and \
                c.ready in ("exec", "tcp") and states.needs_ready_timer(c):
            out.append(states.ArmTimer(name, Timer.READY_CHECK, READY_CHECK_FIRST))
        if new.state is State.READY and old.state is not State.READY:
            # liveness is watched once start-up is over (as systemd does), never while
            # a slow service is still getting ready
            if c.health:
                out.append(states.ArmTimer(name, Timer.HEALTH_CHECK, c.health.interval))
            if c.watchdog_sec:
                out.append(states.ArmTimer(name, Timer.WATCHDOG, c.watchdog_sec))
        if old.state is State.STARTING and (new.state is not State.STARTING
                                            or new.pid != old.pid) \
                and c.ready in ("exec", "tcp"):
            out.append(DropProbe(name, "ready"))
        if old.state is State.READY and (new.state is not State.READY or new.pid != old.pid) \
                and c.health:
            out.append(DropProbe(name, "health"))
        rev = self.plan.rev.get(name, ())
        queue = self.queue
        if new.state is not old.state:
            # Waiting dependents look again: started now, or a new reason to show.
            for d in rev:
                queue.append((d, Ev.DEPS_READY, now, {}, _waiting))
        if new.state is not old.state or (new.pid is None) is not (old.pid is None):
            # What it requires may be holding its stop or restart until it is down.
            for r in c.requires:
                queue.append((r, Ev.DEPS_READY, now, {}, states.waits_for_dependents))
        if states.went_down(old, new) and not self.shutting_down:
            # its process ended (even if a new one is already starting)
            self._deps_lost(name, f"required service {name} went down", now)

    def _on_failure(self, name: str, s: Svc, now: float) -> None:
        """`name` failed for good (failed, maintenance; never on adoption: a restarter
        that restarts finds what was, it does not see it happen): start its on_failure
        services, each told what failed (Monitor)."""
        c = self.plan.conf[name]
        self.out.append(Log(f"{name}: {s.state.value}; starting its on_failure: "
                            + ", ".join(c.on_failure)))
        for target in c.on_failure:
            if target in self.svcs:
                self.out.append(Monitor(target, name, s.last_exit))
                self.queue.append((target, Ev.START, now, {}, None))

    def _deps_lost(self, name: str, reason: str, now: float) -> None:
        """DEPS_LOST routing: what *requires* `name` and runs restarts with it (its cell
        says how; restart_dependents = false keeps it running); what only wants it or
        orders itself after it does not."""
        conf = self.plan.conf
        for d in self.plan.rev.get(name, ()):
            if name in conf[d].requires:
                self.queue.append((d, Ev.DEPS_LOST, now, {"reason": reason}, states.is_up))

    def _sweep(self, name: str, s: Svc) -> None:
        """After an exit was handled: the service is down (not stopping), so whatever its
        main process left in its cgroup goes too (unless kill_mode = "process")."""
        if not states.is_up(s) and s.state is not State.STOPPING and \
                states.kills_leftovers(self.plan.conf[name]):
            self.out.append(KillLeftovers(name))

    def _forget_if_stopped(self, name: str) -> None:
        s = self.svcs[name]
        if name in self.removing and not states.is_up(s) and s.state is not State.STOPPING:
            self.removing.discard(name)
            del self.svcs[name]
            self.plan = make_plan({n: c for n, c in self.plan.conf.items() if n != name})
            self.out.append(Forget(name))

    # --- what the driver saw -----------------------------------------------------------

    def exited(self, name: str, pid: int, status: ExitStatus, now: float) -> None:
        """A watched process `pid` of `name` ended (the driver stopped watching it)."""
        s = self.svcs.get(name)
        if s is None:
            return
        c = self.plan.conf[name]
        self.out.append(states.CancelTimer(name, Timer.WATCHDOG))
        if s.pid == pid and s.state is State.STARTING and c.kind == "forking":
            self.out.append(FindMain(name, True, status))  # its launcher
        elif s.pid == pid:
            if s.state is not State.STOPPING:
                self.out.append(Log(f"{name}: pid {pid} {status.describe()}"))
            if states.kills_leftovers(c):
                # kill_mode cgroup / mixed: the main process is gone, so is the rest of
                # the cgroup (or process group), before anything starts in it again
                self.out.append(KillLeftovers(name, pid))
            self.queue.append((name, Ev.EXITED, now, {"status": status}, None))
        self.queue.append((name, None, now, {}, None))

    def restarts_at_once(self, name: str, pid: int, status: ExitStatus, now: float) -> bool:
        """Will `exited(name, pid, status, now)`, pushed now, spawn `name` again before
        anything else is decided? The driver asks this first: when it will, the driver
        starts the replacement at once (after the main process's leftovers are killed,
        as the exit's effects would have it) and hands the process over when the Spawn
        effect comes. The log lines, timers and records of the exit follow the
        replacement instead of going before it (docs/restarter.md, "Restart latency").

        The same cell with the same event the queue would step: True only when nothing
        is queued ahead of the exit, and not for a forking service (its exit may be
        its launcher's), one with conflicts (they are stopped on the spawn) or one with
        post_stop commands (they run first). A pure
        question: nothing changes. For a starting or ready service that is not a
        singleton, the policy answers without a step (states.exit_restarts_at_once,
        checked equal to the step by tests/test_at_once.py)."""
        if self.queue or self.out or self.shutting_down or name in self.removing:
            return False
        s = self.svcs.get(name)
        c = self.plan.conf.get(name)
        if s is None or c is None or s.pid != pid or c.kind == "forking" or \
                self.plan.conflicts.get(name) or c.post_stop:
            return False  # (post_stop: a start waits for those commands)
        by_policy = states.exit_restarts_at_once(s, status, c, now)
        if by_policy is not None:  # the usual case, without building a cell (cold: fast)
            if not by_policy:
                return False
            # (each asked only where there is something to ask: a call costs there too)
            if (c.requires or c.after or c.wants) and states.deps_blocker(c, self.svcs):
                return False
            plan = self.plan
            dependents = plan.rev.get(name)
            return not dependents or \
                not states.dependents_up(name, dependents, plan.conf, self.svcs)
        return self._table_restarts_at_once(name, s, c, status, now)

    def at_once_mask(self, name: str, now: float) -> bytes | None:
        """The compiled restart's arming (loop.py _arm): None, or the exits of a child
        that the service's policy does not restart (policy.exit_mask), such that
        restarts_at_once(name, its pid, status, t) is True for every other exit of its
        main process and every t >= now, as long as nothing else is stepped or queued.
        Its replacement is then started before Python has seen the exit; a masked exit is
        left to Python. Time only makes the policy's yes surer: a count in the intensity
        window or a decaying one only falls, and a backoff without an initial delay stays
        at 0 once it is there; and but for the policy's own question (the mask) the
        answer does not depend on the status (tests/test_at_once.py). A service that
        orders itself after others is armed while none of them keeps it from starting:
        a step that changes one of them touches it (step), so its arm is made again
        before the loop waits. One with dependents or conflicts is never armed: its
        restart stops them first."""
        s = self.svcs.get(name)
        c = self.plan.conf.get(name)
        if s is None or c is None or s.pid is None or c.restart == "never" or \
                c.kind != "longrun" or c.backoff.initial > 0 or c.post_stop or \
                c.singleton or name in self.removing or self.plan.conflicts.get(name) \
                or self.plan.rev.get(name):
            return None
        if c.deps and states.deps_blocker(c, self.svcs):
            return None
        # (a SIGKILL: every policy but "never" restarts it)
        if states.exit_restarts_at_once(s, ExitStatus("killed", signal=9), c, now) is not True:
            return None
        return policy.exit_mask(c.restart, c.success_exit)

    def _table_restarts_at_once(self, name: str, s: Svc, c: ServiceConfig,
                                status: ExitStatus, now: float) -> bool:
        """restarts_at_once asked of the table itself: the step the queue would take."""
        try:
            _, actions = states.step(s, self._event(name, c, Ev.EXITED, now,
                                                    {"status": status}), c)
        except states.InvalidTransition:
            return False
        return any(type(a) is states.Spawn for a in actions)

    def launched(self, name: str, status: ExitStatus, pid: int | None, reason: str,
                 first: bool, now: float) -> None:
        """A forking service's main pid looked for (`pid` None: not found, `reason`)."""
        self.push_front(name, Ev.LAUNCHED, now, status=status, pid=pid, reason=reason,
                        first=first)

    def _after_launch(self, name: str, s: Svc, ev: Event, first: bool) -> None:
        if ev.pid is not None:
            self.out.append(MainFound(name, ev.pid, s.pid == ev.pid))
        if first and s.state is State.STARTING and s.pid is None:
            self.out.append(Log(f"{name}: {s.reason}"))

    def timer(self, name: str, kind: Timer, now: float) -> None:
        """A service's timer fired (the driver dropped stale ones): the table's event of
        that name (states.TIMER_EVENT) says what it means in the service's state."""
        if name in self.svcs:  # (not a timer of a service removed by a reload)
            self.queue.append((name, states.TIMER_EVENT[kind], now, {}, None))

    def probe_result(self, name: str, purpose: str, ok: bool, detail: str,
                     now: float) -> None:
        """A readiness or health check ended (ok or not, `detail` says why)."""
        s = self.svcs.get(name)
        if s is None:
            return
        if purpose == "ready":
            self.push(name, Ev.READY if ok else Ev.READY_CHECK_FAILED, now)
            return
        # the table counts consecutive failures and stops it as hung at the threshold
        self.push(name, Ev.HEALTH_OK if ok else Ev.HEALTH_FAILED, now, reason=detail)

    def watchdog_ping(self, name: str, now: float) -> None:
        """WATCHDOG=1 (the table: the service watchdog starts over once it is ready)."""
        self.push(name, Ev.WATCHDOG_PING, now)

    def extend_timeout(self, name: str, seconds: float, now: float) -> None:
        """EXTEND_TIMEOUT_USEC= (the table: more time to get ready while starting)."""
        self.push(name, Ev.EXTEND_TIMEOUT, now, delay=seconds)

    def main_pid(self, name: str, pid: int, now: float) -> None:
        """MAINPID=: `pid`, which the driver checked is a process of the service and
        holds a pidfd of, may be its main process now; the table says (MainFound)."""
        self.push(name, Ev.MAIN_PID, now, pid=pid)

    # --- re-adoption ---------------------------------------------------------------------

    def adopt(self, name: str, admin: Mapping[str, str], rec: Record | None, alive: bool,
              now: float, main: int | None = None, in_pre_start: bool = False) -> bool:
        """Rebuild `name` from its admin state (admin.json), its runtime record, whether
        the record's pid is verifiably still its process (`alive`) and the live process
        of the service a MAINPID= of the record's process still queued names (`main`,
        read before adoption): the table's `adopted` cell decides. True: it is adopted
        (the driver watches its pid, `svcs[name].pid`). Call `adopted` once every service
        is done."""
        held = RESCUE_HELD if name in self.rescue_held else admin.get("maintenance", "")
        found = states.Found(
            want=admin.get("want", "up"), held=held, record=rec.state if rec else "",
            pid=rec.pid if rec else None, alive=alive, restarts=rec.restarts if rec else 0,
            started=rec.started_mono if rec else None,
            stop_since=getattr(rec, "stop_since", None), main_pid=main,
            in_pre_start=in_pre_start, in_post_start=bool(getattr(rec, "post_start", None)))
        self._process(name, Ev.ADOPTED, now, {"found": found}, None)
        pid = self.svcs[name].pid
        return pid is not None and (pid == main or alive and pid == found.pid)

    def adopted(self, now: float, names: Collection[str] | None = None) -> None:
        """Every service (or every one of `names`, rebuilt ahead of the others) was adopted
        or not: hold back what their `adopted` cells deferred (the exit of one that died
        unwatched, the stop of one stopped by hand), then the start of every one wanted
        up, in dependency order."""
        self.later.extend(self._deferred)
        self._deferred = []
        for name in self.plan.order:
            s = self.svcs[name]
            if names is not None and name not in names:
                continue
            if s.state is State.STOPPED and s.want == "up":
                self.later.append((name, Ev.START, {}))
            if names is None and not states.is_up(s) and not states.satisfies_dependents(s):
                # Down as adopted without an exit to go through (stopped by hand and its
                # process gone while no restarter watched, failed, in maintenance): what
                # requires it and was adopted running runs on a process that is gone.
                self._deps_lost(name, f"required service {name} is {s.state.value}", now)

    # --- the administrator ---------------------------------------------------------------

    def unknown(self, name: Any) -> str | None:
        """The refusal of a request that names no service of the plan, else None."""
        if not isinstance(name, str) or name not in self.plan.conf:
            near = closest(name, self.plan.conf) if isinstance(name, str) else None
            return f"unknown service {name!r}" + (f" (did you mean {near!r}?)" if near else "")
        return None

    def request(self, op: str, name: Any, now: float) -> str | None:
        """start / stop / restart / clear NAME: queued, or refused (the error)."""
        if (error := self.unknown(name)) is not None:
            return error
        if self.shutting_down:
            return "the restarter is shutting down"
        kind = Ev(op)
        # The table says what the request means in the service's state; one its cell
        # refuses (states.Refuse: a start in maintenance) is answered, not queued. (step
        # is pure: asking it changes nothing.)
        _, acts = states.step(self.svcs[name], Event(kind, now), self.plan.conf[name])
        for a in acts:
            if isinstance(a, states.Refuse):
                return a.why
        if op == "clear" and name in self.rescue_held:
            self.rescue_held.discard(name)
            self.out.append(ReleaseRescue(name))
        self.push(name, kind, now)
        return None

    def admin_entry(self, name: str) -> dict[str, str] | None:
        """What admin.json keeps for `name`: held down by hand, or in maintenance (a
        rescue's hold is the boot record's, not admin state)."""
        s = self.svcs.get(name)
        if s is None:
            return None  # removed by a reload
        if s.state is State.MAINTENANCE and name not in self.rescue_held:
            return {"want": s.want, "maintenance": s.reason}
        if s.want == "down" and self.plan.conf[name].enabled:
            return {"want": "down"}
        return None

    def admin(self) -> dict[str, dict[str, str]]:
        return {n: e for n in self.svcs if (e := self.admin_entry(n)) is not None}

    def critical_report(self) -> dict[str, dict[str, Any]]:
        """The critical services as the heartbeat reports them to the health gate: a
        service in maintenance or failed fails it, unless a rescue boot holds it."""
        out = {}
        for n in self.plan.critical:
            s = self.svcs[n]
            out[n] = {"state": s.state.value,
                      "ok": s.state not in (State.MAINTENANCE, State.FAILED)
                      or n in self.rescue_held,
                      "reason": s.reason}
        return out

    def reload(self, new: Mapping[str, ServiceConfig], now: float
               ) -> tuple[list[str], list[str], list[str]]:
        """A new, valid set of services: start the added ones, restart the changed ones
        that run, stop the removed ones (forgotten once down). (added, changed, removed)"""
        old = self.plan.conf
        added = [n for n in new if n not in old]
        removed = [n for n in old if n not in new]
        changed = [n for n in new if n in old and _restarts_for(old[n], new[n])]
        self.plan = make_plan({**old, **new})  # removed ones stay until they have stopped
        self.touched.update(self.plan.conf)  # (a new configuration object each)
        for n in added:
            self.svcs[n] = states.initial(n)
        for n in removed:
            self.removing.add(n)
            self.push(n, Ev.STOP, now)
        for n in changed:
            # (a skipped one asks its condition again: the change may be to it)
            self.queue.append((n, Ev.RESTART, now, {}, states.is_up_or_skipped))
        for n in self.plan.order:
            if n in added and new[n].enabled:
                self.later.append((n, Ev.START, {}))
        return added, changed, removed

    # --- the orderly shutdown ---------------------------------------------------------

    def begin_shutdown(self) -> None:
        self.shutting_down = True
        self.stop_levels = list(reversed(graph.start_levels(self.plan.deps)))

    def stop_level(self, now: float) -> None:
        """Stop what still runs (or is about to) in the level that leaves first."""
        if self.stop_levels:
            for name in self.stop_levels[0]:
                s = self.svcs[name]
                if states.is_up(s) or s.state in (State.BACKOFF, State.WAITING) or \
                        s.state is State.DONE and self.plan.conf[name].stop_command:
                    self.push(name, Ev.STOP, now)  # (a done oneshot: its teardown)

    def level_stopped(self) -> bool:
        """Is every service of the first level down (then the next level is first)?"""
        if any(self.svcs[n].state is State.STOPPING for n in self.stop_levels[0]):
            return False
        self.stop_levels.pop(0)
        return True


__all__ = ["Core", "Plan", "make_plan", "Effect", "Transition", "Log", "KillLeftovers",
           "RunProbe", "DropProbe", "FindMain", "MainFound", "ReleaseRescue", "Forget"]
