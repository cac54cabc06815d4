"""`hachain verify` models MAINPID= and the service watchdog (issue 17): the generic
svc0 is a daemon (each process it is started as forks its server, names it with
MAINPID=, before or after READY=1, and exits) with a service watchdog of 2 ticks (it
sends WATCHDOG=1 every tick; its ready process may hang, a fault). Patching the table's
`main_pid` cells of `starting` and `ready`, the `watchdog_missed` cell of `ready` or the
WATCHDOG=1 re-arm makes verify fail and name the invariant broken; the same patch goes
unseen by the model without them (mainpid=False, watchdog=False)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hachain import config
from hachain.restarter import core, states
from hachain.restarter.states import Ev, State
from hachain.simulators import verify
from hachain.simulators.verify import Options, explore

pytestmark = pytest.mark.timeout(300)

OLD = Options(mainpid=False, watchdog=False)  # the model before MAINPID= and WATCHDOG=1
STALE = states.TABLE[(State.STOPPED, Ev.MAIN_PID)]  # the cell that lets a MAINPID= go
IGNORE = states.TABLE[(State.STOPPED, Ev.WATCHDOG_PING)]


def test_the_real_table_passes_with_mainpid_and_the_watchdog() -> None:
    rep = explore(Options())
    assert rep.ok, rep.violation
    for cell in [("starting", "main_pid"), ("ready", "main_pid"), ("ready", "watchdog_ping"),
                 ("ready", "watchdog_missed")]:
        assert cell in rep.cells
    for kind in ("needless_restart", "wrong_main_pid", "watchdog_kill", "hung_not_restarted"):
        assert rep.others[kind] == 0
    m = verify.Model(Options())
    assert m.confs[0].watchdog_sec == verify.WATCHDOG_TICKS and m.daemons == {0}
    # + its stop timeout and svc1's (an operator's stop waits for what requires it)
    assert m.hang_bound == {0: verify.WATCHDOG_TICKS + 2}
    assert verify.Model(Options(services=3)).hang_bound == {0: verify.WATCHDOG_TICKS + 3}
    old = explore(OLD)
    assert old.ok and not {c for c in old.cells if c[1] in ("main_pid", "watchdog_ping",
                                                            "watchdog_missed")}


def _fails(kind: str, *words: str) -> list[str]:
    """verify fails with `kind`, its message holding `words`; the trace."""
    rep = explore(Options())
    assert not rep.ok and rep.violation is not None
    v = rep.violation
    assert v["kind"] == kind, v
    for w in words:
        assert w in v["message"], v["message"]
    return v["trace"]


@pytest.mark.parametrize("state,cell,kind,words", [
    # MAINPID= let go while starting / ready: the restarter goes on watching the launcher
    (State.STARTING, STALE, "wrong_main_pid", ("MAINPID=", "while starting")),
    (State.READY, STALE, "wrong_main_pid", ("MAINPID=", "while ready")),
    # MAINPID= handled as an exit of the service: a restart without a fault
    (State.STARTING, states.TABLE[(State.STARTING, Ev.EXITED)], "needless_restart",
     ("while starting", "starting -> backoff")),
    (State.READY, states.TABLE[(State.READY, Ev.EXITED)], "needless_restart",
     ("while ready", "ready -> backoff")),
])
def test_a_main_pid_cell_patched_fails_verify(monkeypatch: pytest.MonkeyPatch, state: State,
                                              cell: states.Handler, kind: str,
                                              words: tuple[str, ...]) -> None:
    monkeypatch.setitem(states.TABLE, (state, Ev.MAIN_PID), cell)
    assert explore(OLD).ok  # the model without MAINPID= did not see it
    trace = _fails(kind, *words)
    assert any("sends MAINPID=" in line for line in trace)
    assert trace[-1].startswith("restarter reads MAINPID=")
    assert not any(line.startswith("fault:") for line in trace)


def test_a_watchdog_missed_cell_that_never_stops_fails_verify(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(states.TABLE, (State.READY, Ev.WATCHDOG_MISSED),
                        states.TABLE[(State.STOPPED, Ev.WATCHDOG_MISSED)])
    assert explore(OLD).ok
    trace = _fails("hung_not_restarted", "svc0 pid", "(bound 4)")
    assert any(line.startswith("fault: svc0 pid") and "hangs" in line for line in trace)


def test_a_watchdog_missed_cell_that_does_not_restart_fails_verify(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """It kills the hung process in time, but leaves the service failed."""
    def kill_and_give_up(s: states.Svc, ev: states.Event, c: verify.ServiceConfig
                         ) -> states.Result:
        return replace(s, state=State.FAILED, pid=None, reason="hung"), [
            states.Kill(s.name, verify.SIGKILL)]

    monkeypatch.setitem(states.TABLE, (State.READY, Ev.WATCHDOG_MISSED), kill_and_give_up)
    assert explore(OLD).ok
    rep = explore(Options())
    assert not rep.ok and rep.violation is not None
    # svc0 is critical: failed, it fails the gate and the watchdog resets the machine
    # for a service's hang, which its restart should have repaired
    assert rep.violation["kind"] in ("needless_reboot", "no_convergence")
    trace = "\n".join(rep.violation["trace"])
    assert "hangs" in trace and "svc0 ready->failed" in trace


@pytest.mark.parametrize("cell", [IGNORE, states.TABLE[(State.READY, Ev.WATCHDOG_MISSED)]])
def test_a_watchdog_ping_cell_patched_fails_verify(monkeypatch: pytest.MonkeyPatch,
                                                   cell: states.Handler) -> None:
    """WATCHDOG=1 not re-arming the watchdog (or taken for a miss): a service that pings
    every tick is stopped for its watchdog."""
    monkeypatch.setitem(states.TABLE, (State.READY, Ev.WATCHDOG_PING), cell)
    assert explore(OLD).ok
    trace = _fails("watchdog_kill", "sends WATCHDOG=1 every tick")
    assert not any("hangs" in line for line in trace)


def test_the_core_must_pass_on_what_the_table_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The core's MainFound: a main pid the table took but the driver is told to let go
    (so the restarter would go on watching the launcher)."""
    real = core.Core._process

    def never_accepted(self: core.Core, *a: object) -> None:
        real(self, *a)  # type: ignore[arg-type]
        for k, e in enumerate(self.out):
            if isinstance(e, core.MainFound):
                self.out[k] = replace(e, accepted=False)

    monkeypatch.setattr(core.Core, "_process", never_accepted)
    _fails("wrong_main_pid", "watches pid")


def test_exits_read_before_the_notify_socket_restart_a_daemon(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The restarter reads the notify socket before it handles an exit (loop.py
    _on_exit): without that, a launcher that named its server and exited at once is
    taken for the service's exit, and the daemon restarted."""
    monkeypatch.setattr(verify._Restarter, "drain", lambda self: None)
    trace = _fails("needless_restart", "exited as a daemon's launcher does")
    assert any("sends MAINPID=" in line for line in trace)
    assert trace[-1].startswith("restarter reaps svc0 pid")


def _adoption_fails_needless_restart() -> None:
    trace = _fails("needless_restart", "started after a crash", "MAINPID=", "still queued")
    assert "fault: restarter crashed (SIGKILL)" in trace
    assert any("sends MAINPID=" in line for line in trace)
    assert any("exits (a launcher" in line for line in trace)
    assert trace[-1].startswith("init restarts the restarter")


def test_adoption_before_the_queued_mainpid_restarts_a_daemon(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarter that starts after a crash reads the MAINPID= queued on the notify
    socket before it adopts (loop.py adopt_or_start): without that order, a launcher
    that named its server and exited while no restarter ran is adopted from its record
    (its pid, gone) and the daemon restarted."""
    assert explore(Options()).ok
    monkeypatch.setattr(verify._Restarter, "queued_main", lambda self, i: None)
    _adoption_fails_needless_restart()


def test_an_adopted_cell_that_ignores_the_queued_mainpid_fails_verify(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The table's `adopted` cell is where the decision is: one that drops the queued
    MAINPID= (Found.main_pid) takes the launcher's exit for the service's."""
    real = states.TABLE[(State.STOPPED, Ev.ADOPTED)]

    def drops_it(s: states.Svc, ev: states.Event, c: verify.ServiceConfig) -> states.Result:
        f = ev.found
        return real(s, replace(ev, found=f._replace(main_pid=None) if f else None), c)

    monkeypatch.setitem(states.TABLE, (State.STOPPED, Ev.ADOPTED), drops_it)
    _adoption_fails_needless_restart()


def test_a_hung_watchdog_process_past_its_bound_is_overdue() -> None:
    m = verify.Model(Options())
    w = m.boot()
    while not m.is_goal(w):
        w = next(s.nxt for s in m.successors(w) if s.kind in (verify.EVENT, verify.TICK))
    pid = w.procs[0][0][0]
    hang = next(s for s in m.successors(w) if s.label == f"fault: svc0 pid {pid} hangs "
                "(alive, no answer)")
    assert not m.is_goal(hang.nxt) and m.overdue(hang.nxt) == []
    late = replace(hang.nxt, procs=verify._set(hang.nxt.procs, 0, (
        (pid, verify.HUNG_P, 5) + hang.nxt.procs[0][0][3:],)))
    assert m.overdue(late) == [f"svc0 pid {pid} hung for 5 ticks (bound 4)"]
    # the clock runs while a restarter is up, and stops past the bound
    assert m.hung_for(0, 4, verify.UP) == 5 and m.hung_for(0, 5, verify.UP) == 5
    assert m.hung_for(0, 2, verify.DEAD) == 2 and m.hung_for(1, 2, verify.UP) == 0


def test_cli_flags_leave_the_parts_out(capsys: pytest.CaptureFixture[str]) -> None:
    assert verify.main(["--faults", "0", "--no-mainpid", "--no-watchdog"]) == 0
    assert verify.main(["--faults", "0"]) == 0
    out = capsys.readouterr().out
    assert "MAINPID= tracked" in out and "PASS" in out


def _config(tmp_path, body: str) -> str:  # type: ignore[no-untyped-def]
    p = tmp_path / "chain.toml"
    p.write_text('[chain]\nrestart_delay = 1\nheartbeat_interval = 0.5\n[watchdog]\n'
                 'device = "none"\ntimeout = 10\npet_interval = 1\nheartbeat_timeout = 2\n'
                 + body)
    return str(p)


def test_verify_c_models_a_users_service_watchdog(tmp_path, monkeypatch,  # type: ignore[no-untyped-def]
                                                  capsys) -> None:
    """`-c`: a notify service's watchdog_sec is modelled (in ticks, rounded down), with
    its hang; a watchdog_missed cell that lets a hung service be fails that check."""
    path = _config(tmp_path, """
[service.db]
command = ["/bin/db"]
ready = "notify"
watchdog_sec = 3
""")
    assert verify.main(["-c", path, "--json"]) == 0
    out = capsys.readouterr().out
    assert '"watchdog_missed"' in out and "not modelled" not in out
    opts, notes = verify.options_from_config(config.load(path), 1, 200)
    assert opts.configs is not None and opts.configs[0].watchdog_sec == 3.0 and not notes
    monkeypatch.setitem(states.TABLE, (State.READY, Ev.WATCHDOG_MISSED), STALE)
    assert verify.main(["-c", path]) == 1
    out = capsys.readouterr().out
    assert "FAIL: COUNTEREXAMPLE" in out and "hangs (alive, no answer)" in out
    assert "hung_not_restarted" in out.split("violating states:")[1]
