"""The per-service state machine: every state, every event, one table.

Rule 1: everything that decides what happens to one service lives in this file. The
event loop only turns the outside world into `Event`s, calls `step`, and carries out the
returned `Action`s. Rule 2: nothing here does I/O or reads the clock; `now` comes in with
the event. `hachain verify` imports this same table, so the code that is model-checked
is the code that runs.

`want` (what the administrator asked for: "up" or "down") is kept apart from `state`
(what is), as runit's runsv does; that keeps re-adoption, maintenance and `clear` plain.

States (as `hachain status` shows them):
  stopped      not running, and not asked to be (or exited cleanly with no restart)
  waiting      asked to be up, waiting for what it requires to be ready
  starting     spawned, waiting for readiness (notify / fd / exec / tcp; for a forking
               service its launcher's exit and its main pid) or its timeout;
               a oneshot while it runs (it is ready when done)
  ready        up and ready (a service with ready = "none" is ready once spawned)
  stopping     signalled to stop; SIGKILL of the whole group follows the stop timeout
               (an orderly stop first waits for what requires it to be down)
  backoff      exited; waiting out the backoff delay before the next start
  maintenance  restart intensity exceeded: held down until `hachain clear NAME`
  failed       exited with a failure (or could not be started) and its policy does not
               restart it
  done         a oneshot that completed successfully
  skipped      its `condition` did not hold at its start: not started, no process; what
               requires it goes on (systemd's "start condition failed"); a start, restart
               or reload asks again
  standby      a singleton ([cluster]) that this node does not own: held down until the
               cluster layer grants it (docs/cluster.md)
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from hachain import prestart
from hachain.configtypes import ServiceConfig
from hachain.restarter import policy
from hachain.restarter.policy import ExitStatus


class State(str, enum.Enum):
    STOPPED = "stopped"
    WAITING = "waiting"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    MAINTENANCE = "maintenance"
    FAILED = "failed"
    DONE = "done"
    STANDBY = "standby"
    SKIPPED = "skipped"


class Ev(str, enum.Enum):
    START = "start"              # admin or boot: want up (deps_ready says if deps are up)
    STOP = "stop"                # admin: want down
    RESTART = "restart"          # admin: stop then start again, no backoff
    CLEAR = "clear"              # admin: leave maintenance / failed
    DEPS_READY = "deps_ready"    # what it waits for changed (deps_ready: all satisfied now?)
    DEPS_LOST = "deps_lost"      # something it requires went down (restart_dependents)
    SPAWNED = "spawned"          # fork/exec succeeded (pid)
    SPAWN_FAILED = "spawn_failed"  # fork/exec failed (reason)
    READY = "ready"              # readiness arrived
    EXITED = "exited"            # main process ended (status)
    READY_TIMEOUT = "ready_timeout"
    STOP_TIMEOUT = "stop_timeout"
    BACKOFF_DONE = "backoff_done"
    HEALTH_FAILED = "health_failed"  # a health check failed (reason): hung at `failures`
    HEALTH_OK = "health_ok"      # a health check passed
    WATCHDOG_MISSED = "watchdog_missed"  # no WATCHDOG=1 within watchdog_sec
    LAUNCHED = "launched"        # kind forking: the launcher exited (status; pid: the main
                                 # pid found, or None while it is not known yet)
    OWNED = "owned"              # singleton: this node may run it now (owned is True)
    DISOWNED = "disowned"        # singleton: it may not (lost, or the lease is too old)
    MAIN_PID = "main_pid"        # MAINPID=: another process of the service is its main one
                                 # (pid; the loop checked it belongs to the service)
    ADOPTED = "adopted"          # a starting restarter found it (found: admin state, record)
    # timers that only ask for something to be done (Timer of the same name)
    READY_CHECK = "ready_check"  # run the next exec / tcp readiness check
    HEALTH_CHECK = "health_check"  # run the next health check
    READY_CHECK_TIMEOUT = "ready_check_timeout"  # the running readiness check took too long
    HEALTH_CHECK_TIMEOUT = "health_check_timeout"  # the running health check took too long
    FIND_MAIN = "find_main"      # a forking service: look for its main pid again
    READY_CHECK_FAILED = "ready_check_failed"  # an exec / tcp readiness check failed
    WATCHDOG_PING = "watchdog_ping"  # WATCHDOG=1
    EXTEND_TIMEOUT = "extend_timeout"  # EXTEND_TIMEOUT_USEC= (delay: the seconds asked for)
    CONDITION_FAILED = "condition_failed"  # its `condition` did not hold (reason): not spawned
    TEARDOWN = "teardown"  # a done oneshot's stop_command runs (pid): it is what stops it
    POST_START_DONE = "post_start_done"  # its post_start commands ended (status)


class Timer(str, enum.Enum):
    """Every timer the restarter arms for a service (and its own heartbeat). Each
    service timer fires as one event of the table (TIMER_EVENT): the table decides what it
    means in each state."""

    BACKOFF_DONE = "backoff_done"
    READY_TIMEOUT = "ready_timeout"
    STOP_TIMEOUT = "stop_timeout"
    WATCHDOG = "watchdog"  # no WATCHDOG=1 within watchdog_sec
    READY_CHECK = "ready_check"  # run the next exec / tcp readiness check
    HEALTH_CHECK = "health_check"  # run the next health check
    READY_CHECK_TIMEOUT = "ready_check_timeout"  # the running readiness check took too long
    HEALTH_CHECK_TIMEOUT = "health_check_timeout"  # the running health check took too long
    FIND_MAIN = "find_main"  # a forking service: look for its main pid again
    HEARTBEAT = "heartbeat"  # the restarter's own heartbeat (no service)
    RELOAD_TIMEOUT = "reload_timeout"  # a reload's reload_timeout (the loop's, no event)
    POST_STOP_TIMEOUT = "post_stop_timeout"  # its post_stop ran stop_timeout (the loop's)
    MACHINE = "machine"  # the next try or deadline of the machine checks (the loop's)


# Timers the loop handles itself: no event of the table.
LOOP_TIMERS = frozenset({Timer.HEARTBEAT, Timer.RELOAD_TIMEOUT, Timer.POST_STOP_TIMEOUT,
                         Timer.MACHINE})


# The event each service timer fires as (HEARTBEAT is the restarter's own, no service's).
TIMER_EVENT: dict[Timer, Ev] = {
    Timer.BACKOFF_DONE: Ev.BACKOFF_DONE, Timer.READY_TIMEOUT: Ev.READY_TIMEOUT,
    Timer.STOP_TIMEOUT: Ev.STOP_TIMEOUT, Timer.WATCHDOG: Ev.WATCHDOG_MISSED,
    Timer.READY_CHECK: Ev.READY_CHECK, Timer.HEALTH_CHECK: Ev.HEALTH_CHECK,
    Timer.READY_CHECK_TIMEOUT: Ev.READY_CHECK_TIMEOUT,
    Timer.HEALTH_CHECK_TIMEOUT: Ev.HEALTH_CHECK_TIMEOUT, Timer.FIND_MAIN: Ev.FIND_MAIN,
}
FIND_MAIN_AGAIN = 0.05  # s between looks for a forking service's main pid
READY_CHECK_AGAIN = 0.2  # s between readiness checks that failed

# Events whose cells never read what the core asks the other services about
# (deps_ready, waiting_for, dependents_up, owned, owner): the core steps them without
# asking (test_local_events_do_not_read_the_dependency_fields).
LOCAL_EVENTS = frozenset({
    Ev.ADOPTED, Ev.MAIN_PID, Ev.WATCHDOG_PING, Ev.EXTEND_TIMEOUT, Ev.READY_CHECK,
    Ev.HEALTH_CHECK, Ev.READY_CHECK_TIMEOUT, Ev.HEALTH_CHECK_TIMEOUT, Ev.READY_CHECK_FAILED,
    Ev.FIND_MAIN, Ev.HEALTH_OK, Ev.TEARDOWN, Ev.POST_START_DONE})


# --- actions: what the loop must do (frozen, no behaviour) ------------------------------

@dataclass(frozen=True)
class Spawn:
    """Start its process."""
    name: str


@dataclass(frozen=True)
class Teardown:
    """Stop a done oneshot by running its stop_command (systemd's ExecStop= of a unit
    that remained after its exit); the driver pushes TEARDOWN with its pid, or EXITED
    when it cannot run."""
    name: str


@dataclass(frozen=True)
class PostStart:
    """Run its post_start commands (systemd's ExecStartPost=): it is ready, and counts as
    ready once they are done; the driver pushes POST_START_DONE with their status."""
    name: str


@dataclass(frozen=True)
class Kill:
    """Send `signal` to its main process, or to all of it (`group`)."""
    name: str
    signal: int
    group: bool = True  # the whole cgroup / process group, not only the main pid


@dataclass(frozen=True)
class ArmTimer:
    """Fire a timer of this kind for it in `delay` seconds (replacing one armed)."""
    name: str
    kind: Timer
    delay: float


@dataclass(frozen=True)
class CancelTimer:
    """Forget its armed timer of this kind."""
    name: str
    kind: Timer


@dataclass(frozen=True)
class Persist:
    """Write its runtime record again: what a new restarter adopts has changed."""
    name: str


@dataclass(frozen=True)
class RestartGroup:
    """Restart it and everything depending on it (restart-group intensity action)."""
    name: str  # restart-group intensity action: restart it and everything depending on it


@dataclass(frozen=True)
class Reboot:
    """Reboot the machine: its intensity action is reboot."""
    name: str
    reason: str


@dataclass(frozen=True)
class StopDependents:
    """Stop what requires it and runs, before it stops or starts again."""
    name: str  # stop (to restart) what requires it and runs: it stops or starts after them
    reason: str


@dataclass(frozen=True)
class KillLeftovers:
    """Its main process is gone: SIGKILL what it left. With `pid`: the exited main
    process's group or cgroup, before its exit is handled; without: whatever is still in
    its cgroup. `why`, when set, is logged with the number of processes killed."""

    name: str
    pid: int | None = None
    why: str = ""


@dataclass(frozen=True)
class RunProbe:
    """Start a readiness ("ready") or health ("health") check unless one runs."""

    name: str
    purpose: str


@dataclass(frozen=True)
class DropProbe:
    """Abandon a running check. `timed_out`: its timeout fired, so a running one is a
    failed check (the loop reports it)."""

    name: str
    purpose: str
    timed_out: bool = False


@dataclass(frozen=True)
class FindMain:
    """A forking service's launcher has exited (`status`, on the first look): look for
    its main process and push `launched`."""

    name: str
    first: bool = False
    status: ExitStatus | None = None


@dataclass(frozen=True)
class Refuse:
    """An administrator's request this state refuses (the reply's error)."""

    name: str
    why: str


@dataclass(frozen=True)
class Later:
    """Adoption: step this event once every service has been rebuilt (core.adopted)."""

    name: str
    kind: Ev
    status: ExitStatus | None = None


Action = (Spawn | Teardown | PostStart | Kill | ArmTimer | CancelTimer | Persist
          | RestartGroup | Reboot | StopDependents | KillLeftovers | RunProbe | DropProbe
          | FindMain | Refuse | Later)

UP_STATES = frozenset({State.STARTING, State.READY})
_RUNNING = UP_STATES | {State.STOPPING}
SIGKILL = 9


@dataclass(frozen=True)
class Svc:
    """Everything the state machine knows about one service."""

    name: str
    state: State = State.STOPPED
    want: str = "up"  # "up" | "down"
    pid: int | None = None
    started_at: float | None = None  # `now` of the spawn (or adoption)
    restarts: int = 0  # automatic restarts since the restarter began supervising it
    history: tuple[float, ...] = ()  # restart times inside the intensity window
    failure_count: float = 0.0  # the decaying count of intensity.decay (0 when unused)
    delay: float | None = None  # the last backoff delay used
    last_exit: ExitStatus | None = None
    reason: str = ""
    restart_after_stop: bool = False  # stopping as part of a restart
    fail_after_stop: ExitStatus | None = None  # stopping because it hung / never got ready
    after_dependents: bool = False  # stopping, its signal held until its dependents are down
    stop_since: float | None = None  # stopping: `now` its stop signal was sent
    health_failures: int = 0  # consecutive failed health checks of this process
    in_post_start: bool = False  # starting: ready, its post_start commands running


_SVC_FIELDS = frozenset(f.name for f in fields(Svc))


def replace(s: Svc, **changes: Any) -> Svc:
    """`dataclasses.replace` for a Svc, without its per-call look at the fields: a
    restart makes four of these before the replacement is spawned, and they were 24 of
    the 32 us the state table took (bench/profile_restarter.py). An unknown field is
    still a TypeError."""
    if not changes.keys() <= _SVC_FIELDS:
        raise TypeError(f"Svc has no field {', '.join(sorted(changes.keys() - _SVC_FIELDS))}")
    new = object.__new__(Svc)
    d = new.__dict__  # frozen: __setattr__ refuses, the instance dict does not
    d.update(s.__dict__)
    d.update(changes)
    return new


class Found(NamedTuple):
    """What a starting restarter found of one service (the `adopted` event): its admin
    state (admin.json, or a rescue boot's hold), its runtime record, and whether the
    record's pid is verifiably still its process. (A NamedTuple: one is made per service
    at every re-adoption.)"""

    want: str = "up"  # admin.json: "down" when stopped by hand
    held: str = ""  # held in maintenance: why (admin.json, or a rescue boot)
    record: str = ""  # the runtime record's state ("" when there is none)
    pid: int | None = None  # the record's main pid
    alive: bool = False  # that pid is still its process (start time, cgroup)
    restarts: int = 0
    started: float | None = None  # the record's started_mono
    stop_since: float | None = None  # the record's: when its stop signal was sent
    # a MAINPID= the record's process sent while no restarter ran, still queued on the
    # notify socket, naming a live process of the service (the loop checked, as it does
    # for one read while it runs)
    main_pid: int | None = None
    # the record's live process is still its pre_start program (hachain/prestart.py),
    # whose readiness pipe died with the previous restarter
    in_pre_start: bool = False
    # the record's process was ready and running its post_start commands
    in_post_start: bool = False


@dataclass(frozen=True)
class Event:
    """Something that happened to a service, as the table takes it."""
    kind: Ev
    now: float
    pid: int | None = None
    status: ExitStatus | None = None
    deps_ready: bool = True
    waiting_for: str = ""  # when not deps_ready: "NAME: its state", for the status reason
    # the services that require it, get restarted with it and still have a process
    # ("a, b"): it stops, or starts again, only once they are down
    dependents_up: str = ""
    reason: str = ""
    transient: bool = False  # SPAWN_FAILED: out of resources (fds, memory, pids), not the config
    owned: bool = True  # a singleton: this node holds it now (always True for the others)
    owner: str = ""  # a singleton not owned: who holds it, for the standby reason
    found: Found | None = None  # ADOPTED: what the new restarter found
    delay: float = 0.0  # EXTEND_TIMEOUT: the seconds asked for


class InvalidTransition(Exception):
    def __init__(self, svc: Svc, ev: Event) -> None:
        super().__init__(f"service {svc.name}: event {ev.kind.value} is not valid in state "
                         f"{svc.state.value}")


Result = tuple[Svc, list[Action]]
Handler = Callable[[Svc, Event, ServiceConfig], Result]


# --- helpers shared by handlers ---------------------------------------------------------

def _spawn_or_wait(s: Svc, ev: Event, reason: str = "") -> Result:
    if not ev.owned:
        # A singleton another node may run: never started here until it is granted.
        why = f"standby: owned by {ev.owner}" if ev.owner else "standby: not owned by this node"
        return (replace(s, state=State.STANDBY, pid=None, after_dependents=False, reason=why),
                [CancelTimer(s.name, Timer.BACKOFF_DONE), Persist(s.name)])
    if ev.dependents_up:
        # A restart: what requires it stops first (systemd's order), then it starts.
        return (replace(s, state=State.WAITING, pid=None, after_dependents=False,
                        reason=f"waiting for {ev.dependents_up} to stop first"),
                [StopDependents(s.name, f"required service {s.name} is restarting"),
                 Persist(s.name)])
    if not ev.deps_ready:
        why = f"waiting for {ev.waiting_for}" if ev.waiting_for else "waiting for dependencies"
        return replace(s, state=State.WAITING, reason=why), [Persist(s.name)]
    return (replace(s, state=State.STARTING, pid=None, reason=reason,
                    restart_after_stop=False, fail_after_stop=None), [Spawn(s.name)])


def _begin_stop(s: Svc, ev: Event, c: ServiceConfig, **kw: object) -> Result:
    # With no main pid (a forking service whose pid file has not appeared yet) no exit
    # will come to end the stop: its cgroup gets the signal, then SIGKILL within a second.
    # The record keeps when the signal went (stop_since): a new restarter carries the
    # stop on from there.
    wait = c.stop_timeout if s.pid is not None else min(c.stop_timeout, 1.0)
    acts: list[Action] = [CancelTimer(s.name, Timer.READY_TIMEOUT),
                          Kill(s.name, c.stop_signal,
                               group=c.kill_mode == "cgroup" or s.pid is None),
                          ArmTimer(s.name, Timer.STOP_TIMEOUT, wait), Persist(s.name)]
    return replace(s, state=State.STOPPING, stop_since=ev.now,  # type: ignore[arg-type]
                   **kw), acts


HELD = "; first stopping "  # in the reason of a stop held for its dependents


def _ordered_stop(s: Svc, ev: Event, c: ServiceConfig, reason: str, **kw: object) -> Result:
    """An orderly stop (administrator, restart, a required service restarting): what
    requires it and runs is stopped first, leaves first; its own signal waits for them."""
    if not ev.dependents_up:
        return _begin_stop(s, ev, c, reason=reason, **kw)
    return (replace(s, state=State.STOPPING, after_dependents=True,  # type: ignore[arg-type]
                    stop_since=None,
                    reason=reason + HELD + ev.dependents_up, **kw),
            [CancelTimer(s.name, Timer.READY_TIMEOUT),
             StopDependents(s.name, f"required service {s.name} is stopping")])


SPAWN_RETRY_MIN = 0.1  # s: a start that cannot succeed is never retried in a tight loop


def _after_exit(s: Svc, st: ExitStatus, ev: Event, c: ServiceConfig,
                min_delay: float = 0.0) -> Result:
    """The process is gone (not by our stop): apply kind, restart policy, intensity, backoff."""
    now = ev.now
    uptime = now - s.started_at if s.started_at is not None else 0.0
    s = replace(s, pid=None, last_exit=st, restart_after_stop=False, fail_after_stop=None)
    clean = policy.is_clean(st, c.success_exit)
    if c.kind == "oneshot" and clean:
        return replace(s, state=State.DONE, reason=f"done ({st.describe()})"), [Persist(s.name)]
    if s.want == "down" or not policy.wants_restart(c.restart, st, c.success_exit):
        if clean:
            return replace(s, state=State.STOPPED, reason=st.describe()), [Persist(s.name)]
        return (replace(s, state=State.FAILED,
                        reason=f"failed: {st.describe()}; restart = {c.restart}"),
                [Persist(s.name)])
    if c.intensity.decay > 0:
        history = s.history
        count = policy.decayed_count(s.failure_count, uptime, c.intensity.decay)
    else:
        history = policy.prune_window(s.history, now, c.intensity.window) + (now,)
        count = 0.0
    s = replace(s, history=history, failure_count=count, restarts=s.restarts + 1)
    verdict = policy.intensity_verdict(history, count, c.intensity)
    if verdict:
        why = f"{verdict}; last: {st.describe()}"
        if c.intensity.action == "maintenance":
            return (replace(s, state=State.MAINTENANCE, reason="maintenance: " + why),
                    [Persist(s.name)])
        if c.intensity.action == "reboot":
            return (replace(s, state=State.MAINTENANCE, reason="reboot requested: " + why),
                    [Persist(s.name), Reboot(s.name, why)])
        if c.intensity.action == "restart-group":
            s = replace(s, history=(), failure_count=0.0)
            delay = max(policy.next_delay(c.backoff, s.delay, uptime), min_delay)
            return (replace(s, state=State.BACKOFF, delay=delay,
                            reason=f"restart-group: {why}"),
                    [RestartGroup(s.name), ArmTimer(s.name, Timer.BACKOFF_DONE, delay)])
        # "ignore": fall through to an ordinary restart
    if not ev.owned:
        return _spawn_or_wait(s, ev)  # a singleton no longer ours: standby, no backoff
    delay = max(policy.next_delay(c.backoff, s.delay, uptime), min_delay)
    s = replace(s, delay=delay)
    if delay <= 0:
        return _spawn_or_wait(s, ev, reason=f"restarted: {st.describe()}")
    return (replace(s, state=State.BACKOFF,
                    reason=f"backoff {delay:g} s after {st.describe()}"),
            [ArmTimer(s.name, Timer.BACKOFF_DONE, delay)])


def exit_restarts_at_once(s: Svc, st: ExitStatus, c: ServiceConfig, now: float) -> bool | None:
    """The restart path's short answer: does EXITED with `st` at `now`, in `s`, go
    straight to a spawn by the policy (`up_exited` and `_after_exit`)? Whether the other
    services let it start (`_spawn_or_wait`'s dependencies and dependents) is left to the
    caller. None: ask the table (another state, or a singleton: its standby path).

    The same decisions as `_after_exit`, taken without building the next cell, the
    event or a reason: after a second of quiet every line of Python on the restart path
    runs cold, and the whole step costs ~80 us there (docs/benchmarks.md). Checked
    against `step` by tests/test_at_once.py (hypothesis) and, at every exit it explores,
    by `hachain verify` (`ahead_not_taken`)."""
    if (s.state is not State.READY and s.state is not State.STARTING) or c.singleton:
        return None
    if c.kind == "oneshot" and policy.is_clean(st, c.success_exit):
        return False
    if s.want == "down" or not policy.wants_restart(c.restart, st, c.success_exit):
        return False
    uptime = now - s.started_at if s.started_at is not None else 0.0
    it = c.intensity
    if it.action != "ignore":
        if it.decay > 0:
            over = policy.decayed_count(s.failure_count, uptime, it.decay) > it.max_restarts
        else:
            cut = now - it.window
            over = sum(1 for t in s.history if t > cut) + 1 > it.max_restarts
        if over:
            return False
    return policy.next_delay(c.backoff, s.delay, uptime) <= 0


# --- handlers, named state_event --------------------------------------------------------

def _ignore(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    return s, []


def _stale(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """A timer firing or a report about a process that is no longer current: harmless."""
    return s, []


def down_start(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    s = replace(s, want="up")
    st, acts = _spawn_or_wait(s, ev)
    return st, acts + [Persist(s.name)]


def any_stop_idle(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    return replace(s, want="down", state=State.STOPPED, reason="stopped by administrator"), [
        CancelTimer(s.name, Timer.BACKOFF_DONE), Persist(s.name)]


def waiting_deps_ready(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    return _spawn_or_wait(s, ev)


def starting_spawned(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    s = replace(s, pid=ev.pid, started_at=ev.now, health_failures=0)
    if c.kind == "oneshot":
        # A oneshot's readiness is its clean exit (-> done): it stays `starting` while it
        # runs, so nothing that requires it or orders itself after it starts before.
        return replace(s, reason="running (oneshot)"), [Persist(s.name)]
    pre = "pre_start, then " if c.pre_start else ""
    if c.kind == "forking":
        return replace(s, reason=f"{pre}waiting for its launcher to exit"), [
            ArmTimer(s.name, Timer.READY_TIMEOUT, c.ready_timeout), Persist(s.name)]
    if c.ready == "none":
        if not c.pre_start:
            return _now_ready(s, c, timer=False)
        # ready when its command is exec'd after them (prestart.ready_pipe)
        return replace(s, reason="running pre_start"), [
            ArmTimer(s.name, Timer.READY_TIMEOUT, c.ready_timeout), Persist(s.name)]
    return replace(s, reason=f"{pre}waiting for readiness ({c.ready})"), [
        ArmTimer(s.name, Timer.READY_TIMEOUT, c.ready_timeout), Persist(s.name)]


def starting_spawn_failed(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """The process could not be started (ev.reason names the setting). The reason says
    whether, and how, it is tried again."""
    if ev.transient:
        # The machine is short of something right now (descriptors, memory, an address
        # or a file system not there yet): try again after the backoff, without counting
        # it against the service's restart intensity.
        delay = max(c.backoff.initial, 0.5)
        return (replace(s, state=State.BACKOFF, pid=None,
                        reason=f"cannot start: {ev.reason}; retrying in {delay:g} s (a "
                               "passing shortage: not counted against intensity)"),
                [ArmTimer(s.name, Timer.BACKOFF_DONE, delay)])
    # Anything else is a failed start: the restart policy decides, as for a failed exit
    # (on-failure and always retry, after the backoff; intensity counts it).
    nxt, acts = _after_exit(replace(s, started_at=ev.now), ExitStatus("spawn"), ev, c,
                            min_delay=SPAWN_RETRY_MIN)
    if nxt.state is State.BACKOFF:
        tail = f"retrying per restart policy in {nxt.delay:g} s"
    elif nxt.state in (State.FAILED, State.STOPPED):
        tail = f"not retried (restart = {c.restart})" if s.want == "up" else "not retried"
    else:
        tail = nxt.reason
    return replace(nxt, reason=f"cannot start: {ev.reason}; {tail}"), acts


def starting_condition_failed(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """The loop asked the service's `condition` before the spawn and it did not hold:
    no process, nothing counted against intensity; what requires it goes on
    (satisfies_dependents), as systemd's dependents of a unit whose condition failed."""
    if s.pid is not None:
        return s, []  # spawned already: not about this start
    return replace(s, state=State.SKIPPED, reason=f"skipped: {ev.reason}"), [Persist(s.name)]


def skipped_start(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """A start (or restart) of a skipped service asks its condition again. What requires
    it runs on nothing of it (it had no process), so nothing is stopped first: the
    `dependents_up` step of a restart does not apply."""
    return down_start(s, dataclasses.replace(ev, dependents_up=""), c)


def _now_ready(s: Svc, c: ServiceConfig, timer: bool = True, **changes: Any) -> Result:
    """The service said it is ready (by its `ready` kind): `ready`, or first its
    post_start commands, bounded by a fresh ready_timeout (systemd's ExecStartPost=:
    the unit is active once they are done)."""
    if c.post_start:
        return replace(s, in_post_start=True, reason="running post_start", **changes), [
            PostStart(s.name), ArmTimer(s.name, Timer.READY_TIMEOUT, c.ready_timeout),
            Persist(s.name)]
    if not timer:  # (none was armed: the restart path of a plain service)
        return replace(s, state=State.READY, reason="", **changes), [Persist(s.name)]
    return replace(s, state=State.READY, reason="", **changes), [
        CancelTimer(s.name, Timer.READY_TIMEOUT), Persist(s.name)]


def starting_ready(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    if s.pid is None or c.kind == "oneshot" or s.in_post_start:
        # before the spawn was recorded: cannot happen; a oneshot is ready when done; a
        # second READY=1 while its post_start runs: nothing new
        return s, []
    return _now_ready(s, c)


def starting_post_start_done(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """Its post_start commands ended: exit 0 is `ready`; anything else a failed start
    (stopped, then its restart policy, as a start that never got ready). An unknown
    status (they ended while no restarter watched: init reaped them) counts as done: a
    failure said so on the service's log, and the service runs."""
    if not s.in_post_start:
        return s, []  # (of a start that is over: the driver killed them)
    st = ev.status or ExitStatus("unknown")
    if st.kind == "unknown" or (st.kind == "exited" and st.code == 0):
        return replace(s, state=State.READY, in_post_start=False, reason=""), [
            CancelTimer(s.name, Timer.READY_TIMEOUT), Persist(s.name)]
    return _begin_stop(s, ev, c, fail_after_stop=st, in_post_start=False,
                       reason=f"post_start failed: {st.describe()}")


def starting_launched(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """kind = "forking": the launcher exited. Exit 0 and a main pid: ready. Exit 0 and no
    main pid yet: wait for it (the loop looks again) until the ready timeout. A failed
    launcher is a failed start. An adopted launcher's status is unknown (it went to
    init): finding the main pid then counts as success."""
    st = ev.status or ExitStatus("unknown")
    if st.kind != "unknown" and not policy.is_clean(st, c.success_exit):
        nxt, acts = _after_exit(s, st, ev, c)
        return nxt, [CancelTimer(s.name, Timer.READY_TIMEOUT)] + acts
    if ev.pid is None:
        return replace(s, pid=None, reason=f"launcher done ({st.describe()}); waiting for "
                       f"the main pid: {ev.reason}"), [
            Persist(s.name), ArmTimer(s.name, Timer.FIND_MAIN, FIND_MAIN_AGAIN)]
    return _now_ready(s, c, pid=ev.pid)


def up_exited(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    st, acts = _after_exit(s, ev.status or ExitStatus("unknown"), ev, c)
    return st, [CancelTimer(s.name, Timer.READY_TIMEOUT)] + acts


def starting_ready_timeout(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    what = "post_start not done" if s.in_post_start else "pre_start not done" \
        if c.ready == "none" and c.kind == "longrun" else \
        f"readiness ({c.ready}) not signalled"
    return _begin_stop(s, ev, c, fail_after_stop=ExitStatus("timeout"),
                       reason=f"{what} within {c.ready_timeout:g} s")


def ready_health_failed(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """One more failed health check of a ready service: below `failures` consecutive
    ones, the next check is armed; at `failures`, it is hung and stopped."""
    if c.health is None:
        return s, []
    n = s.health_failures + 1
    if n < c.health.failures:
        return replace(s, health_failures=n), [
            ArmTimer(s.name, Timer.HEALTH_CHECK, c.health.interval)]
    return _begin_stop(s, ev, c, fail_after_stop=ExitStatus("hung"), health_failures=n,
                       reason=f"hung: health check failed {n} times: {ev.reason}")


def ready_health_ok(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    if c.health is None:
        return s, []
    acts: list[Action] = [ArmTimer(s.name, Timer.HEALTH_CHECK, c.health.interval)]
    return (replace(s, health_failures=0) if s.health_failures else s), acts


def ready_health_check(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """Liveness is checked once start-up is over (as systemd does), only while ready."""
    return s, [RunProbe(s.name, "health")] if c.health is not None else []


def ready_health_check_timeout(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    return s, [DropProbe(s.name, "health", timed_out=True)]


def starting_ready_check(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    return s, [RunProbe(s.name, "ready")]


def starting_ready_check_timeout(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    return s, [DropProbe(s.name, "ready", timed_out=True)]


def starting_ready_check_failed(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    return s, [ArmTimer(s.name, Timer.READY_CHECK, READY_CHECK_AGAIN)]


def ready_watchdog_ping(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """WATCHDOG=1: the service watchdog starts over. It runs once the service is ready
    (as systemd's WatchdogSec=): a ping before is not needed, and ignored."""
    return s, [ArmTimer(s.name, Timer.WATCHDOG, c.watchdog_sec)] if c.watchdog_sec else []


def starting_extend_timeout(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """EXTEND_TIMEOUT_USEC=: a starting service asks for more time to get ready."""
    return s, [ArmTimer(s.name, Timer.READY_TIMEOUT, ev.delay)]


def starting_find_main(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """A forking service whose main pid is not known yet: look again."""
    return s, [FindMain(s.name)] if s.pid is None else []


def up_main_pid(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """MAINPID=: a process of this service (the loop checked) is its main one now."""
    if ev.pid is None or ev.pid == s.pid:
        return s, []
    return replace(s, pid=ev.pid), [Persist(s.name)]


def held_refuse(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """A start or restart of a service held in maintenance: refused, as SMF does."""
    return s, [Refuse(s.name, f"{s.name} is in maintenance ({s.reason}); use "
                              f"'hachain clear {s.name}'")]


_ADOPT_FROM = {"done": State.DONE, "failed": State.FAILED, "skipped": State.SKIPPED}


def stopped_adopted(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """A starting restarter rebuilds the service from what it found (ev.found). What
    is wanted comes from admin.json, never from the record."""
    f = ev.found
    if f is None:
        return s, []
    if f.want == "down" or not c.enabled:
        s = replace(s, want="down", reason="stopped by administrator" if f.want == "down"
                    else "disabled in configuration")
    if f.held:
        s = replace(s, state=State.MAINTENANCE, reason=f.held)
    if f.main_pid and f.record in ("starting", "ready"):
        # It handed over to the process it named (a daemon's launcher, which may be gone):
        # that one is its main process, as it would be had the message been read at once.
        nxt, more = _adopt_running(s, f._replace(pid=f.main_pid), ev, c)
        return nxt, more + [Persist(s.name)]  # the record names the launcher: rewritten
    if f.pid and f.alive:
        return _adopt_running(s, f, ev, c)
    # Not running (any more): clear leftovers of it so we never run two copies
    # (kill_mode = "process": they are meant to outlive it, and stay).
    acts: list[Action] = [KillLeftovers(s.name, why="leftover process(es) in its cgroup")] \
        if kills_leftovers(c) else []
    if not f.record or s.state is State.MAINTENANCE:
        return s, acts
    if f.record in _ADOPT_FROM:
        return replace(s, state=_ADOPT_FROM[f.record], restarts=f.restarts,
                       reason=f"{f.record} (before the restarter restarted)"), acts
    if f.record == "stopping" and s.want == "down":
        # stopped by hand, and it finished stopping while no restarter watched
        return replace(s, state=State.STOPPED, restarts=f.restarts), acts
    if f.record in ("ready", "starting", "stopping") and f.pid:
        # It died while no restarter watched it: that exit goes through policy, once
        # every service has been rebuilt.
        return (replace(s, state=State.READY, pid=f.pid, restarts=f.restarts,
                        started_at=f.started or ev.now),
                acts + [Later(s.name, Ev.EXITED, ExitStatus("unknown"))])
    return s, acts


def _adopt_running(s: Svc, f: Found, ev: Event, c: ServiceConfig) -> Result:
    started = f.started or ev.now
    if f.record == "stopping" and _tears_down(replace(s, pid=None), c) and \
            f.stop_since is not None and not f.held:
        # A done oneshot's teardown, still running: the stop (want down) or the restart
        # (want up: the start follows it) goes on, bounded by what was left of it. Taken
        # for the oneshot's own start, its exit would have made it done without one.
        left = max(0.0, f.stop_since + c.stop_timeout - ev.now)
        return (replace(s, state=State.STOPPING, pid=f.pid, restarts=f.restarts,
                        stop_since=f.stop_since, restart_after_stop=s.want == "up",
                        reason="running its stop_command (carried on after the restarter "
                               "restarted)"),
                [ArmTimer(s.name, Timer.STOP_TIMEOUT, left)])
    if f.record == "stopping" and s.want == "down" and f.stop_since is not None \
            and not f.held:
        # Stopped by hand and signalled, still running (it ignores or is slow to act on
        # the signal): the stop goes on, SIGKILL when what was left of it runs out.
        left = max(0.0, f.stop_since + c.stop_timeout - ev.now)
        return (replace(s, state=State.STOPPING, pid=f.pid, restarts=f.restarts,
                        started_at=started, stop_since=f.stop_since,
                        reason="stopping (administrator; carried on after the restarter "
                               "restarted)"),
                [ArmTimer(s.name, Timer.STOP_TIMEOUT, left)])
    if f.in_post_start and f.record == "starting" and c.post_start and c.kind != "oneshot":
        # ready, its post_start commands running: ready once they are done (the loop
        # watches them, or they ended meanwhile), within a fresh ready_timeout
        post: list[Action] = [ArmTimer(s.name, Timer.READY_TIMEOUT, c.ready_timeout)]
        if s.want == "down":
            post.append(Later(s.name, Ev.STOP))  # stopped by hand: stopped again, in order
        return (replace(s, state=State.STARTING, pid=f.pid, restarts=f.restarts,
                        started_at=started, in_post_start=True,
                        reason="adopted; running post_start"), post)
    st = State.READY if f.record == "ready" else State.STARTING
    pre = st is State.STARTING and f.in_pre_start and c.ready == "none" and \
        prestart.ready_pipe(c)
    if st is State.STARTING and c.kind == "longrun" and c.ready in ("fd", "none") \
            and not pre:
        # the readiness pipe died with the previous restarter; "none" is ready once
        # running (a record caught mid-restart says starting or stopping)
        st = State.READY
    s = replace(s, state=st, pid=f.pid, restarts=f.restarts, started_at=started,
                reason="adopted; running pre_start" if pre else "adopted")
    # still in its pre_start commands: ready once it has exec'd its command, which the
    # loop looks for (READY_CHECK) now that the pipe that would have said so is gone
    acts: list[Action] = [ArmTimer(s.name, Timer.READY_CHECK, READY_CHECK_AGAIN)] \
        if pre else []
    if st is State.STARTING and needs_ready_timer(c):
        acts.append(ArmTimer(s.name, Timer.READY_TIMEOUT, c.ready_timeout))
    elif c.watchdog_sec:
        acts.append(ArmTimer(s.name, Timer.WATCHDOG, c.watchdog_sec))
    if s.want == "down":
        acts.append(Later(s.name, Ev.STOP))  # stopped by hand: stopped again, in order
    return s, acts


def ready_watchdog_missed(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """The service watchdog runs once the service is ready (as systemd's WatchdogSec=):
    a miss before that is stale."""
    return _begin_stop(s, ev, c, fail_after_stop=ExitStatus("hung"),
                       reason=f"hung: no WATCHDOG=1 within {c.watchdog_sec:g} s")


def up_stop(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    st, acts = _ordered_stop(s, ev, c, "stopping (administrator)", want="down")
    return st, acts + [Persist(s.name)]


def up_restart(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    return _ordered_stop(s, ev, c, "restarting (administrator)", want="up",
                         restart_after_stop=True)


def up_deps_lost(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    if not c.restart_dependents:
        return s, []
    return _ordered_stop(s, ev, c, f"restarting: {ev.reason or 'a required service went down'}",
                         restart_after_stop=True)


def stopping_exited(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    acts: list[Action] = [CancelTimer(s.name, Timer.STOP_TIMEOUT)]
    st = ev.status or ExitStatus("unknown")
    if s.fail_after_stop is not None and s.want == "up":
        nxt, more = _after_exit(replace(s, after_dependents=False), s.fail_after_stop, ev, c)
        return nxt, acts + more
    s = replace(s, pid=None, last_exit=st, after_dependents=False)
    if s.want == "up" and s.restart_after_stop:
        nxt, more = _spawn_or_wait(s, ev)
        return nxt, acts + more + [Persist(s.name)]
    return replace(s, state=State.STOPPED, restart_after_stop=False, fail_after_stop=None,
                   reason="stopped by administrator" if s.want == "down" else st.describe()), \
        acts + [Persist(s.name)]


def stopping_stop_timeout(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    if s.pid is None:
        # no main process to wait for (a forking service stopped before its main pid was
        # known): its cgroup is killed, and that is its exit
        gone = Event(Ev.EXITED, ev.now, status=ExitStatus("killed", signal=SIGKILL),
                     deps_ready=ev.deps_ready, waiting_for=ev.waiting_for,
                     dependents_up=ev.dependents_up)
        nxt, acts = stopping_exited(s, gone, c)
        return nxt, [Kill(s.name, SIGKILL, group=True)] + acts
    return replace(s, reason=f"did not stop within {c.stop_timeout:g} s: SIGKILL"), [
        Kill(s.name, SIGKILL, group=kills_leftovers(c))]


def stopping_deps_ready(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """A held stop: once nothing that requires it runs any more, signal it."""
    if not s.after_dependents or ev.dependents_up:
        return s, []
    if _tears_down(s, c):  # a done oneshot's held stop: its teardown now
        return _teardown(s, ev, c, s.reason.partition(HELD)[0])
    return _begin_stop(s, ev, c, after_dependents=False, reason=s.reason.partition(HELD)[0])


def stopping_start(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    return replace(s, want="up", restart_after_stop=True), [Persist(s.name)]


def stopping_stop(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    return replace(s, want="down", restart_after_stop=False, fail_after_stop=None), [
        Persist(s.name)]


def backoff_done(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    return _spawn_or_wait(s, ev, reason=s.reason)


def held_clear(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    s = replace(s, want="up", history=(), failure_count=0.0, delay=None,
                reason="cleared by administrator")
    st, acts = _spawn_or_wait(s, ev, reason="cleared by administrator")
    return st, acts + [Persist(s.name)]


def held_stop(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    return replace(s, want="down", state=State.STOPPED, history=(), failure_count=0.0,
                   delay=None, reason="stopped by administrator"), [Persist(s.name)]


def _tears_down(s: Svc, c: ServiceConfig) -> bool:
    """Is a stop of `s` its teardown (a done oneshot with a stop_command: no process)?"""
    return c.kind == "oneshot" and bool(c.stop_command) and s.pid is None


def _teardown(s: Svc, ev: Event, c: ServiceConfig, reason: str, **kw: Any) -> Result:
    """Run the teardown now, or once what requires it and runs is down (held, as an
    orderly stop is): the oneshot is `stopping` until its stop_command exits."""
    if ev.dependents_up:
        return (replace(s, state=State.STOPPING, pid=None, after_dependents=True,
                        stop_since=None, reason=reason + HELD + ev.dependents_up, **kw),
                [StopDependents(s.name, f"required service {s.name} is stopping"),
                 Persist(s.name)])
    return (replace(s, state=State.STOPPING, pid=None, after_dependents=False,
                    stop_since=ev.now, reason=reason, **kw),
            [Teardown(s.name), ArmTimer(s.name, Timer.STOP_TIMEOUT, c.stop_timeout),
             Persist(s.name)])


def done_stop(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """A done oneshot with a stop_command: its teardown (what its start set up, undone at
    `hachain stop` and at the chain's shutdown) runs as the stop, after what requires it
    and runs has stopped, within stop_timeout; its exit ends the stop (stopping_exited).
    Without one there is nothing to stop."""
    if not _tears_down(s, c):
        return any_stop_idle(s, ev, c)
    return _teardown(s, ev, c, "stopping: running its stop_command", want="down")


def stopping_teardown(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """The teardown runs: its process is the one the stop waits for."""
    if s.pid is not None:
        return s, []
    return replace(s, pid=ev.pid), [Persist(s.name)]


def done_restart(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """A done oneshot started again; with a stop_command, its teardown runs first, as
    systemd runs ExecStop= before ExecStart= at a restart (stopping_exited then starts
    it: restart_after_stop)."""
    if _tears_down(s, c):
        return _teardown(s, ev, c, "restarting: running its stop_command first",
                         want="up", restart_after_stop=True)
    return down_start(s, ev, c)


def up_disowned(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """A running singleton this node may no longer run: stop it (what requires it first);
    when it is down, its exit finds it owned again (restart) or not (standby)."""
    return _ordered_stop(s, ev, c, f"stopping: {ev.reason or 'no longer owned'}",
                         restart_after_stop=True)


def backoff_disowned(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    return _spawn_or_wait(s, ev)


# --- the table ---------------------------------------------------------------------------

S, E = State, Ev
TABLE: dict[tuple[State, Ev], Handler] = {
    # Every cell is written out: a new event or state needs a decision in each row
    # (test_table_is_total). `_stale`: a timer or a process report that is no longer
    # current (cancelled too late, or the state moved on); `_ignore`: nothing to do.
    # Singletons ([cluster]): `owned` on the event says whether this node may run it.
    # `adopted` rebuilds a fresh record (stopped) after a restarter restart; no other
    # state ever sees it.
    (S.STOPPED, E.START): down_start,
    (S.STOPPED, E.STOP): any_stop_idle,
    (S.STOPPED, E.RESTART): down_start,
    (S.STOPPED, E.CLEAR): _ignore,
    (S.STOPPED, E.DEPS_READY): _ignore,
    (S.STOPPED, E.DEPS_LOST): _ignore,
    (S.STOPPED, E.SPAWNED): _stale,
    (S.STOPPED, E.SPAWN_FAILED): _stale,
    (S.STOPPED, E.READY): _stale,
    (S.STOPPED, E.EXITED): _stale,
    (S.STOPPED, E.READY_TIMEOUT): _stale,
    (S.STOPPED, E.STOP_TIMEOUT): _stale,
    (S.STOPPED, E.BACKOFF_DONE): _stale,
    (S.STOPPED, E.WATCHDOG_MISSED): _stale,
    (S.STOPPED, E.HEALTH_FAILED): _stale,
    (S.STOPPED, E.HEALTH_OK): _stale,
    (S.STOPPED, E.LAUNCHED): _stale,
    (S.STOPPED, E.OWNED): _stale,
    (S.STOPPED, E.DISOWNED): _stale,
    (S.STOPPED, E.MAIN_PID): _stale,
    (S.STOPPED, E.ADOPTED): stopped_adopted,
    (S.STOPPED, E.READY_CHECK): _stale,
    (S.STOPPED, E.HEALTH_CHECK): _stale,
    (S.STOPPED, E.READY_CHECK_TIMEOUT): _stale,
    (S.STOPPED, E.HEALTH_CHECK_TIMEOUT): _stale,
    (S.STOPPED, E.FIND_MAIN): _stale,
    (S.STOPPED, E.READY_CHECK_FAILED): _stale,
    (S.STOPPED, E.WATCHDOG_PING): _ignore,
    (S.STOPPED, E.EXTEND_TIMEOUT): _ignore,
    (S.STOPPED, E.CONDITION_FAILED): _stale,
    (S.STOPPED, E.TEARDOWN): _stale,
    (S.STOPPED, E.POST_START_DONE): _stale,

    (S.WAITING, E.START): _ignore,
    (S.WAITING, E.STOP): any_stop_idle,
    (S.WAITING, E.RESTART): waiting_deps_ready,
    (S.WAITING, E.CLEAR): _ignore,
    (S.WAITING, E.DEPS_READY): waiting_deps_ready,
    (S.WAITING, E.DEPS_LOST): _ignore,
    (S.WAITING, E.SPAWNED): _stale,
    (S.WAITING, E.SPAWN_FAILED): _stale,
    (S.WAITING, E.READY): _stale,
    (S.WAITING, E.EXITED): _stale,
    (S.WAITING, E.READY_TIMEOUT): _stale,
    (S.WAITING, E.STOP_TIMEOUT): _stale,
    (S.WAITING, E.BACKOFF_DONE): _stale,
    (S.WAITING, E.WATCHDOG_MISSED): _stale,
    (S.WAITING, E.HEALTH_FAILED): _stale,
    (S.WAITING, E.HEALTH_OK): _stale,
    (S.WAITING, E.LAUNCHED): _stale,
    (S.WAITING, E.OWNED): waiting_deps_ready,
    (S.WAITING, E.DISOWNED): waiting_deps_ready,
    (S.WAITING, E.MAIN_PID): _stale,
    (S.WAITING, E.ADOPTED): _ignore,
    (S.WAITING, E.READY_CHECK): _stale,
    (S.WAITING, E.HEALTH_CHECK): _stale,
    (S.WAITING, E.READY_CHECK_TIMEOUT): _stale,
    (S.WAITING, E.HEALTH_CHECK_TIMEOUT): _stale,
    (S.WAITING, E.FIND_MAIN): _stale,
    (S.WAITING, E.READY_CHECK_FAILED): _stale,
    (S.WAITING, E.WATCHDOG_PING): _ignore,
    (S.WAITING, E.EXTEND_TIMEOUT): _ignore,
    (S.WAITING, E.CONDITION_FAILED): _stale,
    (S.WAITING, E.TEARDOWN): _stale,
    (S.WAITING, E.POST_START_DONE): _stale,

    (S.STARTING, E.START): _ignore,
    (S.STARTING, E.STOP): up_stop,
    (S.STARTING, E.RESTART): up_restart,
    (S.STARTING, E.CLEAR): _ignore,
    (S.STARTING, E.DEPS_READY): _ignore,
    (S.STARTING, E.DEPS_LOST): up_deps_lost,
    (S.STARTING, E.SPAWNED): starting_spawned,
    (S.STARTING, E.SPAWN_FAILED): starting_spawn_failed,
    (S.STARTING, E.READY): starting_ready,
    (S.STARTING, E.EXITED): up_exited,
    (S.STARTING, E.READY_TIMEOUT): starting_ready_timeout,
    (S.STARTING, E.STOP_TIMEOUT): _stale,
    (S.STARTING, E.BACKOFF_DONE): _stale,
    (S.STARTING, E.WATCHDOG_MISSED): _stale,
    (S.STARTING, E.HEALTH_FAILED): _stale,
    (S.STARTING, E.HEALTH_OK): _stale,
    (S.STARTING, E.LAUNCHED): starting_launched,
    (S.STARTING, E.OWNED): _stale,
    (S.STARTING, E.DISOWNED): up_disowned,
    (S.STARTING, E.MAIN_PID): up_main_pid,
    (S.STARTING, E.ADOPTED): _ignore,
    (S.STARTING, E.READY_CHECK): starting_ready_check,
    (S.STARTING, E.HEALTH_CHECK): _stale,
    (S.STARTING, E.READY_CHECK_TIMEOUT): starting_ready_check_timeout,
    (S.STARTING, E.HEALTH_CHECK_TIMEOUT): _stale,
    (S.STARTING, E.FIND_MAIN): starting_find_main,
    (S.STARTING, E.READY_CHECK_FAILED): starting_ready_check_failed,
    (S.STARTING, E.WATCHDOG_PING): _ignore,
    (S.STARTING, E.EXTEND_TIMEOUT): starting_extend_timeout,
    (S.STARTING, E.CONDITION_FAILED): starting_condition_failed,
    (S.STARTING, E.TEARDOWN): _stale,
    (S.STARTING, E.POST_START_DONE): starting_post_start_done,

    (S.READY, E.START): _ignore,
    (S.READY, E.STOP): up_stop,
    (S.READY, E.RESTART): up_restart,
    (S.READY, E.CLEAR): _ignore,
    (S.READY, E.DEPS_READY): _ignore,
    (S.READY, E.DEPS_LOST): up_deps_lost,
    (S.READY, E.SPAWNED): _stale,
    (S.READY, E.SPAWN_FAILED): _stale,
    (S.READY, E.READY): _ignore,
    (S.READY, E.EXITED): up_exited,
    (S.READY, E.READY_TIMEOUT): _ignore,
    (S.READY, E.STOP_TIMEOUT): _stale,
    (S.READY, E.BACKOFF_DONE): _stale,
    (S.READY, E.WATCHDOG_MISSED): ready_watchdog_missed,
    (S.READY, E.HEALTH_FAILED): ready_health_failed,
    (S.READY, E.HEALTH_OK): ready_health_ok,
    (S.READY, E.LAUNCHED): _stale,
    (S.READY, E.OWNED): _stale,
    (S.READY, E.DISOWNED): up_disowned,
    (S.READY, E.MAIN_PID): up_main_pid,
    (S.READY, E.ADOPTED): _ignore,
    (S.READY, E.READY_CHECK): _stale,
    (S.READY, E.HEALTH_CHECK): ready_health_check,
    (S.READY, E.READY_CHECK_TIMEOUT): _stale,
    (S.READY, E.HEALTH_CHECK_TIMEOUT): ready_health_check_timeout,
    (S.READY, E.FIND_MAIN): _stale,
    (S.READY, E.READY_CHECK_FAILED): _stale,
    (S.READY, E.WATCHDOG_PING): ready_watchdog_ping,
    (S.READY, E.EXTEND_TIMEOUT): _ignore,
    (S.READY, E.CONDITION_FAILED): _stale,
    (S.READY, E.TEARDOWN): _stale,
    (S.READY, E.POST_START_DONE): _stale,

    (S.STOPPING, E.START): stopping_start,
    (S.STOPPING, E.STOP): stopping_stop,
    (S.STOPPING, E.RESTART): stopping_start,
    (S.STOPPING, E.CLEAR): _ignore,
    (S.STOPPING, E.DEPS_READY): stopping_deps_ready,
    (S.STOPPING, E.DEPS_LOST): _ignore,
    (S.STOPPING, E.SPAWNED): _stale,
    (S.STOPPING, E.SPAWN_FAILED): _stale,
    (S.STOPPING, E.READY): _ignore,
    (S.STOPPING, E.EXITED): stopping_exited,
    (S.STOPPING, E.READY_TIMEOUT): _ignore,
    (S.STOPPING, E.STOP_TIMEOUT): stopping_stop_timeout,
    (S.STOPPING, E.BACKOFF_DONE): _stale,
    (S.STOPPING, E.WATCHDOG_MISSED): _stale,
    (S.STOPPING, E.HEALTH_FAILED): _stale,
    (S.STOPPING, E.HEALTH_OK): _stale,
    (S.STOPPING, E.LAUNCHED): _stale,
    (S.STOPPING, E.OWNED): _stale,
    (S.STOPPING, E.DISOWNED): _stale,
    (S.STOPPING, E.MAIN_PID): _stale,
    (S.STOPPING, E.ADOPTED): _ignore,
    (S.STOPPING, E.READY_CHECK): _stale,
    (S.STOPPING, E.HEALTH_CHECK): _stale,
    (S.STOPPING, E.READY_CHECK_TIMEOUT): _stale,
    (S.STOPPING, E.HEALTH_CHECK_TIMEOUT): _stale,
    (S.STOPPING, E.FIND_MAIN): _stale,
    (S.STOPPING, E.READY_CHECK_FAILED): _stale,
    (S.STOPPING, E.WATCHDOG_PING): _ignore,
    (S.STOPPING, E.EXTEND_TIMEOUT): _ignore,
    (S.STOPPING, E.CONDITION_FAILED): _stale,
    (S.STOPPING, E.TEARDOWN): stopping_teardown,
    (S.STOPPING, E.POST_START_DONE): _stale,

    (S.BACKOFF, E.START): _ignore,
    (S.BACKOFF, E.STOP): any_stop_idle,
    (S.BACKOFF, E.RESTART): backoff_done,
    (S.BACKOFF, E.CLEAR): backoff_done,
    (S.BACKOFF, E.DEPS_READY): _ignore,
    (S.BACKOFF, E.DEPS_LOST): _ignore,
    (S.BACKOFF, E.SPAWNED): _stale,
    (S.BACKOFF, E.SPAWN_FAILED): _stale,
    (S.BACKOFF, E.READY): _stale,
    (S.BACKOFF, E.EXITED): _stale,
    (S.BACKOFF, E.READY_TIMEOUT): _stale,
    (S.BACKOFF, E.STOP_TIMEOUT): _stale,
    (S.BACKOFF, E.BACKOFF_DONE): backoff_done,
    (S.BACKOFF, E.WATCHDOG_MISSED): _stale,
    (S.BACKOFF, E.HEALTH_FAILED): _stale,
    (S.BACKOFF, E.HEALTH_OK): _stale,
    (S.BACKOFF, E.LAUNCHED): _stale,
    (S.BACKOFF, E.OWNED): _stale,
    (S.BACKOFF, E.DISOWNED): backoff_disowned,
    (S.BACKOFF, E.MAIN_PID): _stale,
    (S.BACKOFF, E.ADOPTED): _ignore,
    (S.BACKOFF, E.READY_CHECK): _stale,
    (S.BACKOFF, E.HEALTH_CHECK): _stale,
    (S.BACKOFF, E.READY_CHECK_TIMEOUT): _stale,
    (S.BACKOFF, E.HEALTH_CHECK_TIMEOUT): _stale,
    (S.BACKOFF, E.FIND_MAIN): _stale,
    (S.BACKOFF, E.READY_CHECK_FAILED): _stale,
    (S.BACKOFF, E.WATCHDOG_PING): _ignore,
    (S.BACKOFF, E.EXTEND_TIMEOUT): _ignore,
    (S.BACKOFF, E.CONDITION_FAILED): _stale,
    (S.BACKOFF, E.TEARDOWN): _stale,
    (S.BACKOFF, E.POST_START_DONE): _stale,

    (S.MAINTENANCE, E.START): held_refuse,  # held down until cleared, as SMF does
    (S.MAINTENANCE, E.STOP): held_stop,
    (S.MAINTENANCE, E.RESTART): held_refuse,
    (S.MAINTENANCE, E.CLEAR): held_clear,
    (S.MAINTENANCE, E.DEPS_READY): _ignore,
    (S.MAINTENANCE, E.DEPS_LOST): _ignore,
    (S.MAINTENANCE, E.SPAWNED): _stale,
    (S.MAINTENANCE, E.SPAWN_FAILED): _stale,
    (S.MAINTENANCE, E.READY): _stale,
    (S.MAINTENANCE, E.EXITED): _stale,
    (S.MAINTENANCE, E.READY_TIMEOUT): _stale,
    (S.MAINTENANCE, E.STOP_TIMEOUT): _stale,
    (S.MAINTENANCE, E.BACKOFF_DONE): _ignore,
    (S.MAINTENANCE, E.WATCHDOG_MISSED): _stale,
    (S.MAINTENANCE, E.HEALTH_FAILED): _stale,
    (S.MAINTENANCE, E.HEALTH_OK): _stale,
    (S.MAINTENANCE, E.LAUNCHED): _stale,
    (S.MAINTENANCE, E.OWNED): _stale,
    (S.MAINTENANCE, E.DISOWNED): _stale,
    (S.MAINTENANCE, E.MAIN_PID): _stale,
    (S.MAINTENANCE, E.ADOPTED): _ignore,
    (S.MAINTENANCE, E.READY_CHECK): _stale,
    (S.MAINTENANCE, E.HEALTH_CHECK): _stale,
    (S.MAINTENANCE, E.READY_CHECK_TIMEOUT): _stale,
    (S.MAINTENANCE, E.HEALTH_CHECK_TIMEOUT): _stale,
    (S.MAINTENANCE, E.FIND_MAIN): _stale,
    (S.MAINTENANCE, E.READY_CHECK_FAILED): _stale,
    (S.MAINTENANCE, E.WATCHDOG_PING): _ignore,
    (S.MAINTENANCE, E.EXTEND_TIMEOUT): _ignore,
    (S.MAINTENANCE, E.CONDITION_FAILED): _stale,
    (S.MAINTENANCE, E.TEARDOWN): _stale,
    (S.MAINTENANCE, E.POST_START_DONE): _stale,

    (S.FAILED, E.START): held_clear,
    (S.FAILED, E.STOP): held_stop,
    (S.FAILED, E.RESTART): held_clear,
    (S.FAILED, E.CLEAR): held_clear,
    (S.FAILED, E.DEPS_READY): _ignore,
    (S.FAILED, E.DEPS_LOST): _ignore,
    (S.FAILED, E.SPAWNED): _stale,
    (S.FAILED, E.SPAWN_FAILED): _stale,
    (S.FAILED, E.READY): _stale,
    (S.FAILED, E.EXITED): _stale,
    (S.FAILED, E.READY_TIMEOUT): _stale,
    (S.FAILED, E.STOP_TIMEOUT): _stale,
    (S.FAILED, E.BACKOFF_DONE): _stale,
    (S.FAILED, E.WATCHDOG_MISSED): _stale,
    (S.FAILED, E.HEALTH_FAILED): _stale,
    (S.FAILED, E.HEALTH_OK): _stale,
    (S.FAILED, E.LAUNCHED): _stale,
    (S.FAILED, E.OWNED): _stale,
    (S.FAILED, E.DISOWNED): _stale,
    (S.FAILED, E.MAIN_PID): _stale,
    (S.FAILED, E.ADOPTED): _ignore,
    (S.FAILED, E.READY_CHECK): _stale,
    (S.FAILED, E.HEALTH_CHECK): _stale,
    (S.FAILED, E.READY_CHECK_TIMEOUT): _stale,
    (S.FAILED, E.HEALTH_CHECK_TIMEOUT): _stale,
    (S.FAILED, E.FIND_MAIN): _stale,
    (S.FAILED, E.READY_CHECK_FAILED): _stale,
    (S.FAILED, E.WATCHDOG_PING): _ignore,
    (S.FAILED, E.EXTEND_TIMEOUT): _ignore,
    (S.FAILED, E.CONDITION_FAILED): _stale,
    (S.FAILED, E.TEARDOWN): _stale,
    (S.FAILED, E.POST_START_DONE): _stale,

    (S.DONE, E.START): _ignore,
    (S.DONE, E.STOP): done_stop,
    (S.DONE, E.RESTART): done_restart,
    (S.DONE, E.CLEAR): _ignore,
    (S.DONE, E.DEPS_READY): _ignore,
    (S.DONE, E.DEPS_LOST): _ignore,
    (S.DONE, E.SPAWNED): _stale,
    (S.DONE, E.SPAWN_FAILED): _stale,
    (S.DONE, E.READY): _stale,
    (S.DONE, E.EXITED): _stale,
    (S.DONE, E.READY_TIMEOUT): _stale,
    (S.DONE, E.STOP_TIMEOUT): _stale,
    (S.DONE, E.BACKOFF_DONE): _stale,
    (S.DONE, E.WATCHDOG_MISSED): _stale,
    (S.DONE, E.HEALTH_FAILED): _stale,
    (S.DONE, E.HEALTH_OK): _stale,
    (S.DONE, E.LAUNCHED): _stale,
    (S.DONE, E.OWNED): _stale,
    (S.DONE, E.DISOWNED): _stale,
    (S.DONE, E.MAIN_PID): _stale,
    (S.DONE, E.ADOPTED): _ignore,
    (S.DONE, E.READY_CHECK): _stale,
    (S.DONE, E.HEALTH_CHECK): _stale,
    (S.DONE, E.READY_CHECK_TIMEOUT): _stale,
    (S.DONE, E.HEALTH_CHECK_TIMEOUT): _stale,
    (S.DONE, E.FIND_MAIN): _stale,
    (S.DONE, E.READY_CHECK_FAILED): _stale,
    (S.DONE, E.WATCHDOG_PING): _ignore,
    (S.DONE, E.EXTEND_TIMEOUT): _ignore,
    (S.DONE, E.CONDITION_FAILED): _stale,
    (S.DONE, E.TEARDOWN): _stale,
    (S.DONE, E.POST_START_DONE): _stale,

    (S.SKIPPED, E.START): skipped_start,
    (S.SKIPPED, E.STOP): any_stop_idle,
    (S.SKIPPED, E.RESTART): skipped_start,
    (S.SKIPPED, E.CLEAR): _ignore,
    (S.SKIPPED, E.DEPS_READY): _ignore,
    (S.SKIPPED, E.DEPS_LOST): _ignore,
    (S.SKIPPED, E.SPAWNED): _stale,
    (S.SKIPPED, E.SPAWN_FAILED): _stale,
    (S.SKIPPED, E.READY): _stale,
    (S.SKIPPED, E.EXITED): _stale,
    (S.SKIPPED, E.READY_TIMEOUT): _stale,
    (S.SKIPPED, E.STOP_TIMEOUT): _stale,
    (S.SKIPPED, E.BACKOFF_DONE): _stale,
    (S.SKIPPED, E.WATCHDOG_MISSED): _stale,
    (S.SKIPPED, E.HEALTH_FAILED): _stale,
    (S.SKIPPED, E.HEALTH_OK): _stale,
    (S.SKIPPED, E.LAUNCHED): _stale,
    (S.SKIPPED, E.OWNED): _stale,
    (S.SKIPPED, E.DISOWNED): _stale,
    (S.SKIPPED, E.MAIN_PID): _stale,
    (S.SKIPPED, E.ADOPTED): _ignore,
    (S.SKIPPED, E.READY_CHECK): _stale,
    (S.SKIPPED, E.HEALTH_CHECK): _stale,
    (S.SKIPPED, E.READY_CHECK_TIMEOUT): _stale,
    (S.SKIPPED, E.HEALTH_CHECK_TIMEOUT): _stale,
    (S.SKIPPED, E.FIND_MAIN): _stale,
    (S.SKIPPED, E.READY_CHECK_FAILED): _stale,
    (S.SKIPPED, E.WATCHDOG_PING): _ignore,
    (S.SKIPPED, E.EXTEND_TIMEOUT): _ignore,
    (S.SKIPPED, E.CONDITION_FAILED): _stale,
    (S.SKIPPED, E.TEARDOWN): _stale,
    (S.SKIPPED, E.POST_START_DONE): _stale,

    (S.STANDBY, E.START): _ignore,
    (S.STANDBY, E.STOP): any_stop_idle,
    (S.STANDBY, E.RESTART): waiting_deps_ready,
    (S.STANDBY, E.CLEAR): _ignore,
    (S.STANDBY, E.DEPS_READY): waiting_deps_ready,
    (S.STANDBY, E.DEPS_LOST): _ignore,
    (S.STANDBY, E.SPAWNED): _stale,
    (S.STANDBY, E.SPAWN_FAILED): _stale,
    (S.STANDBY, E.READY): _stale,
    (S.STANDBY, E.EXITED): _stale,
    (S.STANDBY, E.READY_TIMEOUT): _stale,
    (S.STANDBY, E.STOP_TIMEOUT): _stale,
    (S.STANDBY, E.BACKOFF_DONE): _stale,
    (S.STANDBY, E.WATCHDOG_MISSED): _stale,
    (S.STANDBY, E.HEALTH_FAILED): _stale,
    (S.STANDBY, E.HEALTH_OK): _stale,
    (S.STANDBY, E.LAUNCHED): _stale,
    (S.STANDBY, E.OWNED): waiting_deps_ready,
    (S.STANDBY, E.DISOWNED): waiting_deps_ready,  # a new owner to show
    (S.STANDBY, E.MAIN_PID): _stale,
    (S.STANDBY, E.ADOPTED): _ignore,
    (S.STANDBY, E.READY_CHECK): _stale,
    (S.STANDBY, E.HEALTH_CHECK): _stale,
    (S.STANDBY, E.READY_CHECK_TIMEOUT): _stale,
    (S.STANDBY, E.HEALTH_CHECK_TIMEOUT): _stale,
    (S.STANDBY, E.FIND_MAIN): _stale,
    (S.STANDBY, E.READY_CHECK_FAILED): _stale,
    (S.STANDBY, E.WATCHDOG_PING): _ignore,
    (S.STANDBY, E.EXTEND_TIMEOUT): _ignore,
    (S.STANDBY, E.CONDITION_FAILED): _stale,
    (S.STANDBY, E.TEARDOWN): _stale,
    (S.STANDBY, E.POST_START_DONE): _stale,
}


def step(s: Svc, ev: Event, c: ServiceConfig) -> Result:
    """Apply one event. Raises InvalidTransition for a (state, event) not in the table."""
    handler = TABLE.get((s.state, ev.kind))
    if handler is None:
        raise InvalidTransition(s, ev)
    nxt, acts = handler(s, ev, c)
    if nxt.in_post_start and (nxt.state is not State.STARTING or nxt.pid is None):
        nxt = replace(nxt, in_post_start=False)  # (the start it was part of is over)
    return nxt, acts


def is_up(s: Svc) -> bool:
    return s.state in UP_STATES


def is_up_or_skipped(s: Svc) -> bool:
    return s.state in UP_STATES or s.state is State.SKIPPED


def satisfies_dependents(s: Svc) -> bool:
    """What a dependent waits for: ready (longrun) or done (oneshot); or skipped (its
    condition did not hold: nothing of it is coming, as systemd goes on)."""
    return s.state in (State.READY, State.DONE, State.SKIPPED)


def went_down(old: Svc, new: Svc) -> bool:
    """Did this step end a process its `requires` dependents relied on? A oneshot's clean
    exit (-> done) does not: done is what they waited for."""
    return old.pid is not None and new.pid != old.pid and new.state is not State.DONE


def needs_ready_timer(c: ServiceConfig) -> bool:
    """Is a starting process of this service bounded by `ready_timeout`? A oneshot is
    not: it is done when it exits cleanly, however long that takes. A forking one is (its
    launcher must exit and its main pid appear in time)."""
    return c.kind == "forking" or (c.kind != "oneshot" and c.ready != "none") or \
        prestart.ready_pipe(c)


def kills_leftovers(c: ServiceConfig) -> bool:
    """kill_mode: does the end of the main process (or the stop timeout) SIGKILL what is
    left in the service's cgroup? Not with "process": leftovers keep running there."""
    return c.kill_mode != "process"


def waits_for_dependents(s: Svc) -> bool:
    """Held until what requires it is down: a stop, or a start after a restart."""
    return s.after_dependents or (s.state is State.WAITING and s.want == "up")


def dependents_up(name: str, dependents: Iterable[str], confs: Mapping[str, ServiceConfig],
                  svcs: Mapping[str, Svc]) -> str:
    """Of `name`'s direct dependents, those that `require` it, are restarted with it
    (restart_dependents) and still run (starting, ready or stopping), as "a, b"."""
    up = [d for d in dependents
          if (ds := svcs.get(d)) is not None and ds.state in _RUNNING
          and name in confs[d].requires and confs[d].restart_dependents]
    return ", ".join(up)


def describe_for_dependents(s: Svc) -> str:
    """One service's state as its waiting dependents show it ("failed (exit status 3)")."""
    if s.state in (State.FAILED, State.MAINTENANCE, State.BACKOFF):
        return f"{s.state.value} ({s.last_exit.describe() if s.last_exit else s.reason})"
    if s.state is State.STOPPED and s.want == "down":
        return "stopped by administrator"
    return s.state.value


def deps_blocker(c: ServiceConfig, svcs: Mapping[str, Svc]) -> str:
    """What keeps `c` from starting now, as "NAME: state"; "" when nothing does.

    `requires`: each must be ready (longrun) or done (oneshot); a failed one keeps it
    waiting. `after` and `wants`: order only, so each must be ready or done unless it is
    not coming (stopped, failed, maintenance, or wanted down)."""
    for d in c.requires:
        ds = svcs.get(d)
        if ds is not None and not satisfies_dependents(ds):
            return f"{d}: {describe_for_dependents(ds)}"
    for d in c.after + c.wants:
        ds = svcs.get(d)
        if d in c.requires or ds is None:
            continue
        if ds.want == "up" and ds.state not in (State.FAILED, State.MAINTENANCE,
                                                State.STOPPED) \
                and not satisfies_dependents(ds):
            return f"{d}: {describe_for_dependents(ds)}"
    return ""


def initial(name: str) -> Svc:
    return Svc(name=name)


__all__ = ["State", "Ev", "Timer", "TIMER_EVENT", "LOOP_TIMERS", "Event", "Found", "Svc",
           "TABLE", "step",
           "InvalidTransition", "Spawn", "Kill", "ArmTimer", "CancelTimer", "Persist",
           "RestartGroup", "Reboot", "StopDependents", "KillLeftovers", "RunProbe", "Teardown",
           "DropProbe", "FindMain", "Refuse", "Later", "Action", "field"]
