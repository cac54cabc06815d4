"""The per-service state machine and restart policy, pure: no processes, no clock."""

from __future__ import annotations

import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hachain.config import Backoff, Intensity, ServiceConfig
from hachain.restarter import policy, states
from hachain.restarter.policy import ExitStatus
from hachain.restarter.states import Ev, Event, State, Svc, step

SVC = ServiceConfig(name="a", command=("/bin/true",))


def run(s: Svc, *events: Event, c: ServiceConfig = SVC) -> tuple[Svc, list]:
    acts: list = []
    for e in events:
        s, a = step(s, e, c)
        acts += a
    return s, acts


def test_table_is_total():
    missing = [(s.value, e.value) for s in State for e in Ev if (s, e) not in states.TABLE]
    assert missing == []


def test_start_spawn_ready_none():
    s, acts = run(Svc("a"), Event(Ev.START, 0), Event(Ev.SPAWNED, 0, pid=10))
    assert s.state is State.READY and s.pid == 10
    assert states.Spawn("a") in acts


def test_start_waits_for_deps():
    s, acts = run(Svc("a"), Event(Ev.START, 0, deps_ready=False))
    assert s.state is State.WAITING and not any(isinstance(a, states.Spawn) for a in acts)
    s, acts = run(s, Event(Ev.DEPS_READY, 1))
    assert s.state is State.STARTING and states.Spawn("a") in acts


def test_notify_service_waits_for_ready_with_timeout():
    c = ServiceConfig(name="a", command=("x",), ready="notify", ready_timeout=7)
    s, acts = run(Svc("a"), Event(Ev.START, 0), Event(Ev.SPAWNED, 0, pid=5), c=c)
    assert s.state is State.STARTING
    assert states.ArmTimer("a", "ready_timeout", 7) in acts
    s, acts = run(s, Event(Ev.READY_TIMEOUT, 7), c=c)
    assert s.state is State.STOPPING and s.fail_after_stop == ExitStatus("timeout")
    s, acts = run(s, Event(Ev.EXITED, 7.1, status=ExitStatus("killed", signal=15)), c=c)
    assert s.state is State.BACKOFF and s.last_exit == ExitStatus("timeout")


@pytest.mark.parametrize("pol,status,restart", [
    ("always", ExitStatus("exited", 0), True),
    ("on-failure", ExitStatus("exited", 0), False),
    ("on-failure", ExitStatus("exited", 2), True),
    ("on-failure", ExitStatus("killed", signal=signal.SIGTERM), False),
    ("on-failure", ExitStatus("killed", signal=signal.SIGKILL), True),
    ("on-abnormal", ExitStatus("exited", 2), False),
    ("on-abnormal", ExitStatus("killed", signal=signal.SIGSEGV), True),
    ("on-abnormal", ExitStatus("hung"), True),
    ("on-failure", ExitStatus("unknown"), True),
    ("never", ExitStatus("killed", signal=signal.SIGKILL), False),
])
def test_restart_policy(pol, status, restart):
    assert policy.wants_restart(pol, status) is restart


def test_backoff_grows_caps_and_resets():
    b = Backoff(initial=0.1, factor=2.0, max=0.5, reset_after=10)
    d = policy.next_delay(b, None, 0)
    seq = [d]
    for _ in range(5):
        d = policy.next_delay(b, d, 1.0)
        seq.append(d)
    assert seq == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5])
    assert policy.next_delay(b, 0.5, 10.0) == 0.1  # a stable run resets it


@given(st.lists(st.floats(0, 100, allow_nan=False), max_size=30),
       st.integers(0, 10), st.floats(0.1, 50))
def test_intensity_window_counts_only_recent(times, maxr, window):
    now = 100.0
    pruned = policy.prune_window(tuple(sorted(times)), now, window)
    assert all(t > now - window for t in pruned)
    assert policy.intensity_exceeded(pruned, Intensity(maxr, window)) == (len(pruned) > maxr)


def test_crash_loop_reaches_maintenance_then_clear():
    c = ServiceConfig(name="a", command=("x",), backoff=Backoff(0, 1, 0),
                      intensity=Intensity(2, 60, "maintenance"))
    s, _ = run(Svc("a"), Event(Ev.START, 0), Event(Ev.SPAWNED, 0, pid=1), c=c)
    for i in range(3):
        s, _ = run(s, Event(Ev.EXITED, i + 1, status=ExitStatus("exited", 1)), c=c)
        if s.state is State.STARTING:
            s, _ = run(s, Event(Ev.SPAWNED, i + 1, pid=10 + i), c=c)
    assert s.state is State.MAINTENANCE and "3 restarts in 60 s" in s.reason
    s, _ = run(s, Event(Ev.START, 5), c=c)
    assert s.state is State.MAINTENANCE  # held down until cleared
    s, acts = run(s, Event(Ev.CLEAR, 6), c=c)
    assert s.state is State.STARTING and s.history == ()


def _crash_loop(c: ServiceConfig, uptimes: list[float]) -> Svc:
    """Start `a`, then let it crash after each of `uptimes` seconds of running."""
    now = 0.0
    s, _ = run(Svc("a"), Event(Ev.START, now), Event(Ev.SPAWNED, now, pid=1), c=c)
    for i, up in enumerate(uptimes):
        now += up
        s, _ = run(s, Event(Ev.EXITED, now, status=ExitStatus("exited", 1)), c=c)
        if s.state is not State.STARTING:
            break
        s, _ = run(s, Event(Ev.SPAWNED, now, pid=10 + i), c=c)
    return s


def test_decaying_intensity_never_parks_a_rare_crasher():
    """Issue 15.5: with decay = 300, a service that crashes once an hour stays at a count
    of 1 forever, where a window of a day would have parked it after max_restarts."""
    decaying = ServiceConfig(name="a", command=("x",), backoff=Backoff(0, 1, 0),
                             intensity=Intensity(3, 86400, "maintenance", decay=300))
    s = _crash_loop(decaying, [3600.0] * 50)
    assert s.state is State.READY and s.restarts == 50 and s.failure_count == 1.0
    windowed = ServiceConfig(name="a", command=("x",), backoff=Backoff(0, 1, 0),
                             intensity=Intensity(3, 86400, "maintenance"))
    assert _crash_loop(windowed, [3600.0] * 50).state is State.MAINTENANCE


def test_decaying_intensity_still_stops_a_crash_loop():
    c = ServiceConfig(name="a", command=("x",), backoff=Backoff(0, 1, 0),
                      intensity=Intensity(3, 60, "maintenance", decay=300))
    s = _crash_loop(c, [1.0] * 10)
    assert s.state is State.MAINTENANCE and s.restarts == 4
    assert "failure count" in s.reason and "-1 per 300 s up" in s.reason


@given(st.floats(0, 20), st.floats(0, 1e6), st.floats(1, 1e4))
def test_decayed_count_adds_one_and_never_goes_negative(prev, uptime, decay):
    n = policy.decayed_count(prev, uptime, decay)
    assert 1.0 <= n <= prev + 1.0
    assert policy.decayed_count(prev, 0.0, decay) == prev + 1.0


def test_oneshot_done_not_confused_with_longrun():
    one = ServiceConfig(name="a", command=("x",), kind="oneshot", restart="never")
    s, _ = run(Svc("a"), Event(Ev.START, 0), Event(Ev.SPAWNED, 0, pid=1),
               Event(Ev.EXITED, 1, status=ExitStatus("exited", 0)), c=one)
    assert s.state is State.DONE and states.satisfies_dependents(s)
    long = ServiceConfig(name="a", command=("x",), restart="never")
    s, _ = run(Svc("a"), Event(Ev.START, 0), Event(Ev.SPAWNED, 0, pid=1),
               Event(Ev.EXITED, 1, status=ExitStatus("exited", 0)), c=long)
    assert s.state is State.STOPPED and not states.satisfies_dependents(s)


def test_stop_timeout_escalates_to_sigkill_of_group():
    s, _ = run(Svc("a"), Event(Ev.START, 0), Event(Ev.SPAWNED, 0, pid=1))
    s, acts = run(s, Event(Ev.STOP, 1))
    assert s.state is State.STOPPING and s.want == "down"
    assert states.Kill("a", signal.SIGTERM) in acts
    s, acts = run(s, Event(Ev.STOP_TIMEOUT, 6))
    assert states.Kill("a", 9, group=True) in acts
    s, _ = run(s, Event(Ev.EXITED, 6.1, status=ExitStatus("killed", signal=9)))
    assert s.state is State.STOPPED


EVENTS = st.sampled_from(list(Ev))


@settings(max_examples=300)
@given(st.lists(st.tuples(EVENTS, st.sampled_from([True, False])), max_size=40))
def test_any_event_sequence_keeps_invariants(seq):
    """Random event sequences never raise, and the record stays coherent."""
    c = ServiceConfig(name="a", command=("x",), ready="notify",
                      intensity=Intensity(3, 60, "maintenance"))
    s = Svc("a")
    pid = 100
    for i, (ev, deps) in enumerate(seq):
        pid += 1
        e = Event(ev, float(i), pid=pid, deps_ready=deps,
                  status=ExitStatus("exited", 1) if ev is Ev.EXITED else None)
        s, acts = step(s, e, c)
        if s.state in (State.STOPPED, State.BACKOFF, State.MAINTENANCE, State.FAILED,
                       State.DONE, State.WAITING):
            assert s.pid is None or s.state is State.WAITING
        assert len(s.history) <= c.intensity.max_restarts + 1
        assert s.want in ("up", "down")


@given(st.integers(min_value=1, max_value=1 << 22), st.text(max_size=20),
       st.sampled_from(list(State)))
def test_replace_matches_dataclasses_replace(pid, reason, state):
    import dataclasses
    s = Svc("a", state=State.READY, pid=7, history=(1.0, 2.0), restarts=3)
    fast = states.replace(s, pid=pid, reason=reason, state=state)
    slow = dataclasses.replace(s, pid=pid, reason=reason, state=state)
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert s.pid == 7 and s.reason == ""  # the original is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.pid = 1  # type: ignore[misc]


def test_replace_refuses_an_unknown_field():
    with pytest.raises(TypeError, match="Svc has no field nosuch"):
        states.replace(Svc("a"), nosuch=1)
