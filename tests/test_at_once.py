"""The restart path's short answer (states.exit_restarts_at_once) against the table.

The loop asks `Core.restarts_at_once` before anything else when a main process exits;
a yes starts the replacement before the exit's own effects. The short answer decides
that without stepping the table (every line runs cold after a quiet second). It must
say what the table would: a yes where the table does not spawn would start a process
the policy forbids, and a no where it does is only a slower restart. Both are checked
here, exactly, over generated cells, configurations, exit statuses and times.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from hachain.config import (
    INTENSITY_ACTIONS,
    KINDS,
    RESTART_POLICIES,
    Backoff,
    Intensity,
    ServiceConfig,
)
from hachain.restarter import core, states
from hachain.restarter.policy import ExitStatus, exit_mask, exit_masked, wants_restart
from hachain.restarter.states import Ev, Event, State, Svc

SMALL = st.sampled_from([0.0, 0.05, 0.1, 1.0, 2.0, 5.0, 10.0, 60.0])

configs = st.builds(
    ServiceConfig,
    name=st.just("a"),
    command=st.just(("/bin/true",)),
    kind=st.sampled_from(KINDS),
    restart=st.sampled_from(RESTART_POLICIES),
    backoff=st.builds(Backoff, initial=SMALL, factor=st.sampled_from([1.0, 2.0]),
                      max=SMALL, reset_after=SMALL),
    intensity=st.builds(Intensity, max_restarts=st.integers(0, 4), window=SMALL,
                        action=st.sampled_from(INTENSITY_ACTIONS),
                        decay=st.sampled_from([0.0, 0.0, 1.0, 30.0])),
    success_exit=st.sampled_from([(0,), (0, 3)]),
    singleton=st.booleans(),
)

statuses = st.one_of(
    st.builds(ExitStatus, kind=st.just("exited"), code=st.sampled_from([0, 1, 3, 255])),
    st.builds(ExitStatus, kind=st.just("killed"),
              signal=st.sampled_from([1, 2, 6, 9, 11, 13, 15])),
    st.builds(ExitStatus, kind=st.sampled_from(["unknown", "timeout", "hung"])),
)

NOW = 100.0
cells = st.builds(
    Svc,
    name=st.just("a"),
    state=st.sampled_from(list(State)),
    want=st.sampled_from(["up", "up", "down"]),
    pid=st.just(4242),
    started_at=st.one_of(st.none(), st.floats(0.0, NOW)),
    restarts=st.integers(0, 5),
    history=st.lists(st.floats(0.0, NOW), max_size=5).map(lambda xs: tuple(sorted(xs))),
    failure_count=st.floats(0.0, 6.0),
    delay=st.one_of(st.none(), SMALL),
)


def _table_spawns(s: Svc, c: ServiceConfig, status: ExitStatus, ev: Event) -> bool:
    try:
        _, actions = states.step(s, ev, c)
    except states.InvalidTransition:
        return False
    return any(isinstance(a, states.Spawn) for a in actions)


@settings(max_examples=3000, deadline=None)
@given(cells, configs, statuses, st.floats(NOW, NOW + 120.0), st.booleans())
def test_the_short_answer_is_the_tables(s: Svc, c: ServiceConfig, status: ExitStatus,
                                        now: float, owned: bool) -> None:
    short = states.exit_restarts_at_once(s, status, c, now)
    if short is None:  # the table is asked: only where the short answer has no say
        assert c.singleton or s.state not in (State.READY, State.STARTING)
        return
    ev = Event(Ev.EXITED, now, status=status, owned=owned or not c.singleton)
    assert short == _table_spawns(s, c, status, ev), (s, c, status, now)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(list(State)), st.sampled_from(list(State)), configs, statuses,
       st.sampled_from(["requires", "after", "dependent", "none"]),
       st.floats(NOW, NOW + 120.0))
def test_the_core_answers_as_the_table_with_other_services_around(
        mine: State, other: State, c: ServiceConfig, status: ExitStatus, link: str,
        now: float) -> None:
    """With a dependency or a dependent in any state, Core.restarts_at_once (the short
    answer plus the others' say) equals the table's own step of that exit."""
    c = replace(c, name="a", singleton=False,
                requires=("b",) if link == "requires" else (),
                after=("b",) if link == "after" else ())
    b = ServiceConfig(name="b", command=("/bin/true",),
                      requires=("a",) if link == "dependent" else ())
    cr = core.Core(core.make_plan({"a": c, "b": b}))
    cr.svcs["a"] = Svc(name="a", state=mine, pid=4242, started_at=NOW - 30.0)
    cr.svcs["b"] = Svc(name="b", state=other, pid=4343 if other in (
        State.READY, State.STARTING, State.STOPPING) else None)
    got = cr.restarts_at_once("a", 4242, status, now)
    s, conf = cr.svcs["a"], cr.plan.conf["a"]
    assert got == (conf.kind != "forking" and
                   cr._table_restarts_at_once("a", s, conf, status, now))


@settings(max_examples=3000, deadline=None)
@given(cells, configs, st.lists(statuses, min_size=1, max_size=4),
       st.lists(st.floats(0.0, 600.0), min_size=1, max_size=4),
       st.sampled_from(["requires", "after", "wants", "dependent", "conflict", "none"]),
       st.sampled_from(list(State)), st.sampled_from(["up", "down"]))
def test_an_armed_service_is_restarted_at_once_for_each_exit_its_mask_takes_and_whenever(
        s: Svc, c: ServiceConfig, exits: list[ExitStatus], later: list[float],
        link: str, other: State, other_want: str) -> None:
    """The compiled restart starts an armed service's replacement before Python sees the
    exit (loop.py _arm, _clone3.wait), unless the arm's mask leaves that exit to Python:
    Core.at_once_mask must imply restarts_at_once for every exit of a child the mask
    takes, at that moment and at any later one (nothing else stepped). A yes the table
    would not give starts a process the policy forbids."""
    c = replace(c, name="a", requires=("b",) if link == "requires" else (),
                after=("b",) if link == "after" else (),
                wants=("b",) if link == "wants" else (),
                conflicts=("b",) if link == "conflict" else ())
    b = ServiceConfig(name="b", command=("/bin/true",),
                      requires=("a",) if link == "dependent" else ())
    cr = core.Core(core.make_plan({"a": c, "b": b}))
    cr.svcs["a"] = replace(s, name="a")
    cr.svcs["b"] = Svc(name="b", state=other, want=other_want, pid=4343 if other in (
        State.READY, State.STARTING, State.STOPPING) else None)
    mask = cr.at_once_mask("a", NOW)
    if mask is None:
        return
    for status in exits:
        if status.kind not in ("exited", "killed"):
            continue  # (not an exit of a child: never seen by _clone3.wait)
        exited = status.kind == "exited"
        if exit_masked(mask, exited, status.code if exited else status.signal):
            continue
        for dt in later:
            assert cr.restarts_at_once("a", 4242, status, NOW + dt), (s, c, status, dt)


@given(st.sampled_from(RESTART_POLICIES), st.sampled_from([(0,), (0, 3), (0, 1, 255)]),
       st.integers(0, 255), st.integers(1, 127))
def test_the_mask_is_the_policy(restart: str, success: tuple[int, ...], code: int,
                                sig: int) -> None:
    """exit_mask leaves to Python exactly the exits the policy does not restart."""
    mask = exit_mask(restart, success)
    assert exit_masked(mask, True, code) == \
        (not wants_restart(restart, ExitStatus("exited", code=code), success))
    assert exit_masked(mask, False, sig) == \
        (not wants_restart(restart, ExitStatus("killed", signal=sig), success))


def test_a_plain_service_that_restarts_is_armed() -> None:
    """The implication above is not empty: the plain case arms, with a mask that takes
    every exit its policy restarts, and each thing that puts the exit's answer in doubt
    takes the arm away."""
    c = ServiceConfig(name="a", command=("/bin/true",), restart="always",
                      backoff=Backoff(initial=0.0, factor=1.0, max=0.0, reset_after=10.0))
    s = Svc(name="a", state=State.READY, pid=4242, started_at=NOW - 30.0)

    def mask(c: ServiceConfig, s: Svc = s, other: ServiceConfig | None = None) -> bytes | None:
        conf = {"a": c} if other is None else {"a": c, "b": other}
        cr = core.Core(core.make_plan(conf))
        cr.svcs["a"] = s
        return cr.at_once_mask("a", NOW)

    def armed(c: ServiceConfig, s: Svc = s, other: ServiceConfig | None = None) -> bool:
        return mask(c, s, other) is not None
    assert mask(c) == bytes(len(exit_mask("always")))  # nothing left to Python
    on_failure = mask(replace(c, restart="on-failure"))
    assert on_failure is not None and exit_masked(on_failure, True, 0) and \
        not exit_masked(on_failure, True, 1) and not exit_masked(on_failure, False, 9) \
        and exit_masked(on_failure, False, 15)
    on_abnormal = mask(replace(c, restart="on-abnormal"))
    assert on_abnormal is not None and exit_masked(on_abnormal, True, 1) and \
        not exit_masked(on_abnormal, False, 11)
    assert not armed(replace(c, restart="never"))
    assert not armed(replace(c, backoff=replace(c.backoff, initial=0.1)))
    assert not armed(replace(c, kind="oneshot"))
    assert not armed(c, replace(s, want="down"))
    assert not armed(c, replace(s, state=State.STOPPING))
    assert not armed(c, other=ServiceConfig(name="b", command=("/bin/true",),
                                            requires=("a",)))
    assert not armed(replace(c, intensity=Intensity(max_restarts=1, window=60.0)),
                     replace(s, history=(NOW - 1.0,)))


def test_a_dependency_s_step_makes_the_arm_again() -> None:
    """A service ordered after another is armed while that one is ready; the other's
    step touches it (an order alone does not step it), so the loop makes its arm again:
    none while the other is on its way back."""
    a = ServiceConfig(name="a", command=("/bin/true",), after=("b",),
                      backoff=Backoff(initial=0.0, factor=1.0, max=0.0, reset_after=10.0))
    b = ServiceConfig(name="b", command=("/bin/true",))
    cr = core.Core(core.make_plan({"a": a, "b": b}))
    cr.svcs["a"] = Svc(name="a", state=State.READY, pid=4242, started_at=NOW - 30.0)
    cr.svcs["b"] = Svc(name="b", state=State.READY, pid=4343, started_at=NOW - 30.0)
    assert cr.at_once_mask("a", NOW) is not None
    assert cr.at_once_mask("b", NOW) is None  # (a depends on it: its restart stops a)
    cr.touched.clear()
    cr.exited("b", 4343, ExitStatus("killed", signal=9), NOW)
    while cr.next_effect() is not None:  # (the effects are not carried out here)
        pass
    assert cr.svcs["b"].state is not State.READY and "a" in cr.touched
    assert cr.at_once_mask("a", NOW) is None
