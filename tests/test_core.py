"""The restarter's pure core (hachain/restarter/core.py): its cross-service decisions on
their own, and proof that `hachain verify` drives this same core (a patched decision
makes verify fail), as tests/test_verify.py proves it for the state table."""

from __future__ import annotations

from typing import Any

import pytest

from hachain.config import Backoff, Intensity, ServiceConfig
from hachain.restarter import core, states
from hachain.restarter.persist import RuntimeRecord
from hachain.restarter.policy import ExitStatus
from hachain.restarter.states import Ev, State, Timer
from hachain.simulators.verify import Options, explore

pytestmark = pytest.mark.timeout(120)


def svc(name: str, **kw: Any) -> ServiceConfig:
    return ServiceConfig(name=name, command=("/bin/true",), **kw)


def make(*confs: ServiceConfig) -> core.Core:
    return core.Core(core.make_plan({c.name: c for c in confs}))


def drain(c: core.Core, pid: int = 100) -> list[Any]:
    """Carry out every effect as a driver does: a Spawn gets a pid at once."""
    out = []
    while (e := c.next_effect()) is not None:
        out.append(e)
        if isinstance(e, states.Spawn):
            pid += 1
            c.push_front(e.name, Ev.SPAWNED, 0.0, pid=pid)
    return out


def up(c: core.Core, *names: str) -> None:
    for n in names:
        c.push(n, Ev.START, 0.0)
    drain(c)
    for n in names:
        assert c.svcs[n].state is State.READY, c.svcs[n]


def test_effects_come_out_in_order_and_nothing_reenters() -> None:
    c = make(svc("a"))
    c.push("a", Ev.START, 0.0)
    first = c.next_effect()
    assert isinstance(first, core.Transition) and first.new.state is State.STARTING
    assert c.next_effect() == states.Spawn("a")
    # the core waits for the driver: the spawn's result is the next thing stepped
    c.push_front("a", Ev.SPAWNED, 0.0, pid=7)
    rest = drain(c)
    assert c.svcs["a"].state is State.READY and c.svcs["a"].pid == 7
    assert states.Persist("a") in rest


def test_waiting_dependent_starts_once_what_it_requires_is_ready() -> None:
    c = make(svc("db", ready="notify"), svc("web", requires=("db",)))
    c.push("db", Ev.START, 0.0)
    c.push("web", Ev.START, 0.0)
    drain(c)
    assert c.svcs["web"].state is State.WAITING
    assert c.svcs["web"].reason == "waiting for db: starting"
    c.push("db", Ev.READY, 1.0)
    effects = drain(c)
    assert states.Spawn("web") in effects and c.svcs["web"].state is State.READY


def test_deps_lost_goes_only_to_what_requires_it() -> None:
    c = make(svc("db"), svc("web", requires=("db",)), svc("cache", wants=("db",)),
             svc("late", after=("db",)))
    up(c, "db", "web", "cache", "late")
    c.exited("db", c.svcs["db"].pid or 0, ExitStatus("exited", code=1), 2.0)
    drain(c)
    assert c.svcs["web"].state is State.STOPPING
    assert "required service db went down" in c.svcs["web"].reason
    assert c.svcs["cache"].state is State.READY and c.svcs["late"].state is State.READY


def test_no_deps_lost_during_shutdown() -> None:
    c = make(svc("db"), svc("web", requires=("db",)))
    up(c, "db", "web")
    c.begin_shutdown()
    assert c.stop_levels == [["web"], ["db"]]
    c.exited("db", c.svcs["db"].pid or 0, ExitStatus("killed", signal=9), 2.0)
    drain(c)
    assert c.svcs["web"].state is State.READY  # its own level stops it, in order


def test_a_start_stops_what_conflicts() -> None:
    c = make(svc("a", conflicts=("b",)), svc("b"))
    up(c, "b")
    c.push("a", Ev.START, 1.0)
    effects = drain(c)
    assert c.svcs["b"].state is State.STOPPING and c.svcs["a"].state is State.READY
    assert any(isinstance(e, states.Kill) and e.name == "b" for e in effects)


def record(name: str, state: str, pid: int | None = 42) -> RuntimeRecord:
    return RuntimeRecord(name=name, pid=pid, start_time=1, state=state, want="up",
                         started_mono=5.0, restarts=2, cgroup=None)


def test_adoption_decisions() -> None:
    c = make(svc("fd", ready="fd"), svc("notify", ready="notify"),
             svc("off", enabled=False), svc("hand"), svc("wd", watchdog_sec=3.0),
             svc("gone"))
    assert c.adopt("fd", {}, record("fd", "starting"), True, 0.0)
    assert c.svcs["fd"].state is State.READY  # its readiness pipe died with the restarter
    assert c.adopt("notify", {}, record("notify", "starting"), True, 0.0)
    assert c.svcs["notify"].state is State.STARTING
    assert not c.adopt("off", {}, None, False, 0.0)
    assert c.svcs["off"].want == "down" and c.svcs["off"].reason == "disabled in configuration"
    assert c.adopt("hand", {"want": "down"}, record("hand", "ready"), True, 0.0)
    assert c.adopt("wd", {}, record("wd", "ready"), True, 0.0)
    assert not c.adopt("gone", {}, record("gone", "ready"), False, 0.0)
    effects = drain(c)
    assert any(isinstance(e, states.ArmTimer) and e.name == "notify"
               and e.kind is Timer.READY_TIMEOUT for e in effects)
    assert states.ArmTimer("wd", Timer.WATCHDOG, 3.0) in effects
    assert core.KillLeftovers("gone", why="leftover process(es) in its cgroup") in effects
    c.adopted(0.0)
    queued = [(n, k) for n, k, _ in c.later]
    assert ("hand", Ev.STOP) in queued  # stopped by hand while running: stopped again
    assert ("gone", Ev.EXITED) in queued  # died unwatched: its exit goes through policy
    assert ("off", Ev.START) not in queued


def test_a_dependent_adopted_running_on_a_gone_requirement_is_restarted() -> None:
    """Found by verify --admin --faults 2: db stopped by hand, the restarter killed before
    it saw db's process end; the next one adopts db as stopped (want down, pid gone) and
    app, which requires db, still running on db's old process. app gets DEPS_LOST (and
    stops to wait for db), as it would have had the old restarter seen db go."""
    for db_rec in ("stopping", "backoff", "ready", "starting"):
        _adopt_gone_requirement(db_rec)
    # a dependent adopted running on a requirement that is ready is left alone
    c2 = make(svc("db"), svc("app", requires=("db",)))
    assert c2.adopt("db", {}, record("db", "ready"), True, 0.0)
    assert c2.adopt("app", {}, record("app", "ready"), True, 0.0)
    c2.adopted(0.0)
    c2.release(len(c2.later), 0.0)
    drain(c2)
    assert c2.svcs["app"].state is State.READY


def _adopt_gone_requirement(db_rec: str) -> None:
    c = make(svc("db"), svc("app", requires=("db",)), svc("side", wants=("db",)))
    c.adopt("db", {"want": "down"}, record("db", db_rec), False, 0.0)
    assert c.adopt("app", {}, record("app", "ready"), True, 0.0)
    assert c.adopt("side", {}, record("side", "ready"), True, 0.0)
    drain(c)
    c.adopted(0.0)
    c.release(len(c.later), 0.0)
    drain(c)
    assert not states.is_up(c.svcs["db"]) and c.svcs["db"].want == "down", db_rec
    assert c.svcs["app"].state is State.STOPPING, db_rec  # DEPS_LOST: stops, then waits
    assert c.svcs["side"].state is State.READY  # only wants db: keeps running


def test_maintenance_and_shutdown_refuse_requests() -> None:
    c = make(svc("a"))
    c.adopt("a", {"want": "up", "maintenance": "too many restarts"}, None, False, 0.0)
    assert c.request("start", "a", 0.0) == \
        "a is in maintenance (too many restarts); use 'hachain clear a'"
    assert c.request("start", "nope", 0.0) == "unknown service 'nope'"
    assert c.request("stop", "aa", 0.0) == "unknown service 'aa' (did you mean 'a'?)"
    assert c.request("stop", ["a"], 0.0) == "unknown service ['a']"
    assert c.request("clear", "a", 0.0) is None
    c.begin_shutdown()
    assert c.request("stop", "a", 0.0) == "the restarter is shutting down"


def test_admin_state_and_critical_report_leave_a_rescue_hold_out() -> None:
    c = make(svc("db", critical=True))
    c.rescue_held = {"db"}
    c.adopt("db", {}, None, False, 0.0)
    assert c.svcs["db"].state is State.MAINTENANCE
    assert c.admin_entry("db") is None  # the boot record keeps it, not admin.json
    assert c.critical_report()["db"]["ok"] is True
    c.request("clear", "db", 0.0)
    assert core.ReleaseRescue("db") in drain(c)
    assert c.critical_report()["db"]["ok"] is True and c.svcs["db"].state is State.READY


def test_health_failures_count_to_the_threshold() -> None:
    from hachain.config import HealthCheck
    c = make(svc("a", health=HealthCheck(kind="exec", command=("/bin/false",), failures=2)))
    up(c, "a")
    c.probe_result("a", "health", False, "exit status 1", 1.0)
    effects = drain(c)
    assert c.svcs["a"].health_failures == 1 and c.svcs["a"].state is State.READY
    assert core.Log("a: health check failed (1/2): exit status 1") in effects
    assert states.ArmTimer("a", Timer.HEALTH_CHECK, 10.0) in effects  # the next check
    c.probe_result("a", "health", True, "", 1.5)
    drain(c)
    assert c.svcs["a"].health_failures == 0  # consecutive failures only
    for t in (2.0, 3.0):
        c.probe_result("a", "health", False, "exit status 1", t)
        drain(c)
    assert c.svcs["a"].state is State.STOPPING and "health check failed 2 times" in \
        c.svcs["a"].reason


def test_service_watchdog_only_once_ready() -> None:
    c = make(svc("a", ready="notify", watchdog_sec=2.0))
    c.push("a", Ev.START, 0.0)
    drain(c)
    c.watchdog_ping("a", 2.5)
    c.timer("a", Timer.WATCHDOG, 3.0)
    assert drain(c) == []  # still starting: no watchdog yet
    c.push("a", Ev.READY, 4.0)
    assert states.ArmTimer("a", Timer.WATCHDOG, 2.0) in drain(c)
    c.timer("a", Timer.WATCHDOG, 6.0)
    drain(c)
    assert c.svcs["a"].state is State.STOPPING and "no WATCHDOG=1 within 2 s" in \
        c.svcs["a"].reason


# --- verify drives this core: a patched decision makes it fail ------------------------

def _drop(queue_filter: Any) -> Any:
    real = core.Core._after_change

    def patched(self: core.Core, name: str, old: states.Svc, new: states.Svc,
                now: float) -> None:
        n = len(self.queue)
        real(self, name, old, new, now)
        added = [self.queue.pop() for _ in range(len(self.queue) - n)][::-1]
        self.queue.extend(it for it in added if not queue_filter(it))
    return patched


def test_verify_fails_when_waiting_dependents_are_not_woken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core.Core, "_after_change", _drop(lambda it: it[1] is Ev.DEPS_READY))
    rep = explore(Options())
    assert not rep.ok
    v = rep.violation
    assert v is not None and v["kind"] == "no_convergence"
    # svc0 gets ready at boot, and svc1, waiting for it, is never told
    assert "[svc0 starting->ready]" in "\n".join(v["trace"])
    assert "a cycle that never reaches the goal" in v["trace"][-1]


@pytest.mark.slow  # a model check of seconds (two faults)
@pytest.mark.timeout(600)  # ~25 s alone; CPU-bound: 190-255 s beside hogs and QEMU
def test_verify_fails_when_adoption_forgets_an_unwatched_exit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = core.Core.adopted

    def forgetful(self: core.Core, now: float) -> None:
        self._deferred = [d for d in self._deferred if d[1] is not Ev.EXITED]
        real(self, now)

    # (without svc0's MAINPID= hand-over and its service watchdog: two faults with them
    # took over 300 s for the two runs with both cores hogged beside the parallel lane;
    # neither takes part in adoption's exit bookkeeping)
    assert explore(Options(faults=2, mainpid=False, watchdog=False)).ok
    monkeypatch.setattr(core.Core, "adopted", forgetful)
    rep = explore(Options(faults=2, mainpid=False, watchdog=False))
    assert not rep.ok and rep.violation is not None and rep.others["no_convergence"] > 0
    # shortest: svc0, taken for ready on its dead pid, lets svc1 start on it
    assert rep.violation["kind"] == "stale_dependent"
    assert "svc1 pid 2 on svc0 pid 1" in rep.violation["message"]
    assert any("restarter crashed" in line for line in rep.violation["trace"])


def test_verify_fails_when_the_critical_report_ignores_a_rescue(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = core.Core.critical_report

    def strict(self: core.Core) -> dict[str, dict[str, Any]]:
        rep = real(self)
        for n, entry in rep.items():
            entry["ok"] = self.svcs[n].state not in (State.MAINTENANCE, State.FAILED)
        return rep

    monkeypatch.setattr(core.Core, "critical_report", strict)
    rep = explore(Options())
    assert rep.violation is not None and rep.violation["kind"] == "boot_loop"


def test_verify_steps_through_the_core(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = core.Core.adopt

    def counting(self: core.Core, name: str, *a: Any) -> bool:
        seen.append(name)
        return real(self, name, *a)

    monkeypatch.setattr(core.Core, "adopt", counting)
    assert explore(Options()).ok
    assert "svc0" in seen and "svc1" in seen


def test_every_table_cell_is_written_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """No cell is filled in by default: dropping any one (for every event) is a gap the
    totality check of tests/test_states.py reports."""
    for ev in Ev:
        for st in State:
            with monkeypatch.context() as m:
                m.delitem(states.TABLE, (st, ev))
                missing = [(s, e) for s in State for e in Ev if (s, e) not in states.TABLE]
                assert missing == [(st, ev)]
    src = open(states.__file__).read()
    assert "setdefault" not in src.split("TABLE: dict")[1].split("def step(")[0]


# --- restarts_at_once: the loop's question before it starts a replacement ahead ----------

def _spawns(c: core.Core, name: str, pid: int, status: ExitStatus, now: float) -> bool:
    """What the queue decides for that exit: is `name` spawned?"""
    c.exited(name, pid, status, now)
    return any(isinstance(e, states.Spawn) and e.name == name for e in drain(c, 500))


KILLED = ExitStatus("killed", signal=9)
CLEAN = ExitStatus("exited", code=0)


NOW = Backoff(initial=0.0, factor=1.0, max=0.0)  # no delay: a restart is a spawn at once


@pytest.mark.parametrize("conf, status, expect", [
    (svc("a", backoff=NOW), KILLED, True),  # restart = "always" (the default)
    (svc("a", backoff=NOW), CLEAN, True),
    (svc("a", backoff=NOW, restart="on-failure"), KILLED, True),
    (svc("a", backoff=NOW, restart="on-failure"), CLEAN, False),  # a clean exit stays down
    (svc("a", backoff=NOW, restart="never"), KILLED, False),
    (svc("a"), KILLED, False),  # the default backoff: a timer first, not a spawn
    (svc("a", backoff=NOW, intensity=Intensity(max_restarts=0, window=60.0)), KILLED,
     False),  # over its intensity: failed, not restarted
    (svc("a", backoff=NOW, kind="forking", pid_file="/run/a.pid"), KILLED,
     False),  # its exit may be its launcher's
    (svc("a", backoff=NOW, conflicts=("b",)), KILLED, False),  # b is stopped on a spawn
])
def test_restarts_at_once_answers_what_the_queue_then_decides(
        conf: ServiceConfig, status: ExitStatus, expect: bool) -> None:
    c = make(conf, *(svc(n) for n in conf.conflicts))
    c.push("a", Ev.START, 0.0)
    drain(c)
    pid = c.svcs["a"].pid or 0
    assert pid
    before = dict(c.svcs)
    assert c.restarts_at_once("a", pid, status, 5.0) is expect
    assert c.svcs == before and not c.queue and not c.out  # a question: nothing changed
    spawned = _spawns(c, "a", pid, status, 5.0)
    assert spawned or not expect  # "at once" is never said of an exit that is not restarted


def test_restarts_at_once_is_false_with_work_queued_or_for_another_pid() -> None:
    c = make(svc("db", backoff=NOW), svc("web", backoff=NOW, requires=("db",)))
    up(c, "db", "web")
    pid = c.svcs["web"].pid or 0
    assert c.restarts_at_once("web", pid, KILLED, 1.0)
    assert not c.restarts_at_once("web", pid + 1000, KILLED, 1.0)  # not its main process
    c.push("db", Ev.STOP, 1.0)  # queued ahead of the exit: the answer could change
    assert not c.restarts_at_once("web", pid, KILLED, 1.0)
    drain(c)
    # web requires db, which is stopped now: it waits, nothing is started
    assert not c.restarts_at_once("web", c.svcs["web"].pid or 0, KILLED, 2.0)


def test_restarts_at_once_waits_for_a_dependent_to_stop_first() -> None:
    """A service that what requires it must stop for first is not started at once."""
    c = make(svc("db", backoff=NOW), svc("web", backoff=NOW, requires=("db",)))
    up(c, "db", "web")
    pid = c.svcs["db"].pid or 0
    assert not c.restarts_at_once("db", pid, KILLED, 1.0)
    assert not _spawns(c, "db", pid, KILLED, 1.0)
    assert c.svcs["db"].state is State.WAITING


def test_verify_fails_when_restarts_at_once_says_yes_too_often(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`hachain verify` asks restarts_at_once where the loop does and checks that the
    table then starts the service (`ahead_not_taken`); an answer that ignores the
    restart policy is caught."""
    assert explore(Options()).ok
    monkeypatch.setattr(core.Core, "restarts_at_once", lambda self, *a: True)
    rep = explore(Options())
    assert not rep.ok and rep.violation is not None
    assert rep.violation["kind"] == "ahead_not_taken"
    assert "Core.restarts_at_once" in rep.violation["message"]


def test_verify_fails_when_the_compiled_restart_is_armed_too_often(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled restart starts an armed service's replacement before Python sees the
    exit; `hachain verify` asks Core.at_once_mask where the loop arms and checks that
    the table then starts the service: an arm that ignores the policy (a mask that
    leaves nothing to Python) is caught as `ahead_not_taken`."""
    monkeypatch.setattr(core.Core, "at_once_mask", lambda self, *a: bytes(48))
    rep = explore(Options())
    assert not rep.ok and rep.violation is not None
    assert rep.violation["kind"] == "ahead_not_taken"
    assert "compiled" in rep.violation["message"]
