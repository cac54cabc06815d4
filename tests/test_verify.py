"""`hachain verify`: the model check of the fault model, its mutants and its command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from hachain.restarter import states
from hachain.restarter.states import Ev, State
from hachain.simulators import verify
from hachain.simulators.verify import MACHINE_CHECK, Model, Options, _Restarter, explore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(120)


def test_real_chain_converges_single_fault() -> None:
    rep = explore(Options())
    assert rep.ok, rep.violation
    assert rep.violation is None
    assert rep.states > 200
    assert rep.transitions > rep.states
    assert rep.k_steps is not None and 0 < rep.k_steps <= rep.opts.bound
    assert rep.k_ticks is not None and 0 < rep.k_ticks <= rep.k_steps
    assert all(c == 0 for c in rep.others.values())


def test_model_reaches_adoption_and_timeouts() -> None:
    # The interesting paths of the real table are actually taken: a stop in the stop
    # timeout, a crash in backoff, and the dependent is restarted when what it requires
    # goes down. (A readiness lost with a crashed restarter used to end in the ready
    # timeout; init now holds the notify socket, so no fault leads there any more.)
    cells = set(explore(Options()).cells)
    assert ("starting", "ready_timeout") not in cells
    for cell in [("stopping", "stop_timeout"),
                 ("backoff", "backoff_done"), ("ready", "deps_lost"),
                 ("waiting", "deps_ready"), ("ready", "exited")]:
        assert cell in cells


@pytest.mark.slow  # a model check of seconds
# ~40 s of CPU on a quiet host: 120 s was passed in CI with both cores loaded by two busy
# loops beside two more xdist workers (2026-12-06). A bound against a hang, not a speed.
@pytest.mark.timeout(600)
def test_two_faults_and_three_services_converge() -> None:
    # (without svc0's MAINPID= hand-over, which makes two faults ~4x larger: minutes on
    # a loaded host; tests/test_verify_mainpid_watchdog.py checks it with one fault)
    rep = explore(Options(faults=2, mainpid=False))
    assert rep.ok, rep.violation
    assert rep.states > 1000
    rep3 = explore(Options(services=3))
    assert rep3.ok, rep3.violation


def test_no_faults_is_just_the_boot() -> None:
    rep = explore(Options(faults=0))
    assert rep.ok
    assert rep.states < 100  # (svc0's MAINPID= hand-over: before or after READY=1)
    assert explore(Options(faults=0, mainpid=False)).states < 50


@pytest.mark.parametrize("mutant,kind,fault", [
    ("init-no-restart", "needless_reboot", "fault: restarter crashed"),
    ("tickler-ignores-restarter", "no_convergence", "fault: restarter hung"),
    ("adopt-duplicates", "duplicate", "fault: restarter crashed"),
    ("layer-reads-live-file", "needless_reboot", "fault: restarter crashed"),
    ("no-last-known-good", "needless_reboot", "fault: init crashed"),
])
def test_mutant_gives_counterexample(mutant: str, kind: str, fault: str) -> None:
    rep = explore(Options(mutant=mutant))
    assert not rep.ok
    v = rep.violation
    assert v is not None and v["kind"] == kind
    assert v["trace"][0] == "boot"
    assert any(line.startswith(fault) for line in v["trace"])
    assert sum(line.startswith("fault:") for line in v["trace"]) == 1


@pytest.mark.slow  # a model check of seconds
def test_a_file_broken_on_disk_is_part_of_the_model() -> None:
    """Issue 15: the operator's edit (not a fault) is explored on every path, the real
    chain converges after it from every single fault, and the two mutants of the running
    configuration fail on it: a layer restart that reads the live file, and a boot with
    no last-known-good snapshot to fall back to."""
    rep = explore(Options())
    assert rep.ok and rep.others["no_convergence"] == 0
    for mutant in ("layer-reads-live-file", "no-last-known-good"):
        v = explore(Options(mutant=mutant)).violation
        assert v is not None
        assert any(line.startswith("operator: the configuration file on disk is broken")
                   for line in v["trace"]), v["trace"]
        assert "it exits 2 (the file on disk is broken)" in "\n".join(v["trace"])


def test_no_reachable_state_boot_loops_under_the_default_policy() -> None:
    """Issue 15: svc0 (critical) broken for good crash-loops into maintenance, the gate
    fails and the watchdog resets the machine, boot after boot; the real
    `bootrecord.assess` puts the fourth boot in rescue, which holds svc0 out of the gate,
    and the machine stays up. Without the breaker (action "ignore") verify finds the loop."""
    rep = explore(Options())
    assert rep.ok and rep.others.get("boot_loop", 0) == 0
    v = explore(Options(mutant="no-boot-loop-breaker", machine_check=False)).violation
    assert v is not None and v["kind"] == "boot_loop", v
    trace = "\n".join(v["trace"])
    assert "fault: svc0 is broken for good" in trace
    assert "svc0 starting->maintenance" in trace
    assert trace.count("tick: watchdog expired: reset, boot") >= 3
    assert "a cycle that never reaches the goal" in v["trace"][-1]


def test_a_machine_check_that_fails_on_every_boot_ends_in_rescue_not_a_loop() -> None:
    """A machine check ([check.NAME], action "reboot") whose target is gone for good
    fails the real gate (health.check_reasons) boot after boot; the boot record blames
    "check:net", and the real `bootrecord.assess` holds it in the rescue boot, which
    stays up. Without the breaker verify finds the loop, through the check."""
    rep = explore(Options(machine_check=True))
    assert rep.ok and rep.others.get("boot_loop", 0) == 0
    v = explore(Options(mutant="no-boot-loop-breaker", machine_check=True)).violation
    assert v is not None and v["kind"] == "boot_loop", v
    trace = "\n".join(v["trace"])
    assert "fault: the machine check's target is gone for good" in trace
    assert trace.count("tick: watchdog expired: reset, boot") >= 3
    # the gate the model asks is the real one: a failed check fails it, a held one not
    m = Model(Options())
    down = replace(m.blank, check_down=True)
    r = _Restarter(m, down)
    assert not m.gate_ok(r.heartbeat(down))
    held = replace(down, held=(MACHINE_CHECK,))
    assert m.gate_ok(_Restarter(m, held).heartbeat(held))


def test_adopt_duplicates_trace_is_short_and_names_the_second_copy() -> None:
    v = explore(Options(mutant="adopt-duplicates")).violation
    assert v is not None
    assert len(v["trace"]) <= 6
    assert "init restarts the restarter" in v["trace"][-1]
    assert "two running copies of svc0" in v["message"]


def test_model_calls_the_real_state_table(monkeypatch: pytest.MonkeyPatch) -> None:
    # A restarter that forgets a ready service's exit: the model must notice, because it
    # drives the real table rather than a copy of it.
    def forget(s: states.Svc, ev: states.Event, c: object) -> tuple[states.Svc, list]:
        return s, []

    monkeypatch.setitem(states.TABLE, (State.READY, Ev.EXITED), forget)
    rep = explore(Options())
    assert not rep.ok
    v = rep.violation
    assert v is not None and rep.others["no_convergence"] > 0
    # (svc1 keeps running on svc0's dead process: the DEPS_LOST invariant says so first)
    assert v["kind"] in ("no_convergence", "stale_dependent")
    assert any("crash" in line for line in v["trace"])


def test_model_uses_real_step(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real = states.step

    def counting(s: states.Svc, ev: states.Event, c: object) -> states.Result:
        calls.append((s.state.value, ev.kind.value))
        return real(s, ev, c)  # type: ignore[arg-type]

    monkeypatch.setattr(states, "step", counting)
    assert explore(Options()).ok
    assert ("stopped", "start") in calls and ("starting", "spawned") in calls


def test_bound_smaller_than_k_is_reported() -> None:
    k = explore(Options()).k_steps
    assert k is not None
    rep = explore(Options(bound=k - 1))
    assert not rep.ok
    assert rep.violation is not None and rep.violation["kind"] == "over_bound"


@pytest.mark.slow  # a model check of seconds
def test_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert verify.main(["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("ok", "states", "transitions", "k_steps", "k_ticks", "elapsed",
                "states_per_second", "faults", "services", "bound", "mutant",
                "violations", "counterexample", "table_cells"):
        assert key in d
    assert d["ok"] is True and d["counterexample"] is None
    assert d["faults"] == 1 and d["services"] == 2
    assert verify.main(["--json", "--mutant", "adopt-duplicates"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["ok"] is False
    assert d["counterexample"]["kind"] == "duplicate"
    assert isinstance(d["counterexample"]["trace"], list)
    assert d["violations"]["duplicate"] > 0


def test_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert verify.main([]) == 0
    out = capsys.readouterr().out
    assert "converges from every reachable state within" in out
    assert "states/s" in out
    assert verify.main(["--mutant", "tickler-ignores-restarter"]) == 1
    out = capsys.readouterr().out
    assert "COUNTEREXAMPLE (no_convergence)" in out
    assert "fault: restarter hung (SIGSTOP)" in out


def test_bad_usage_direct(capsys: pytest.CaptureFixture[str]) -> None:
    assert verify.main(["--faults", "-1"]) == 2
    assert verify.main(["--services", "0"]) == 2
    assert verify.main(["--bound", "0"]) == 2
    assert "--faults: must be" in capsys.readouterr().err


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hachain.cli", "verify", *args], check=False,
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.slow  # a model check of seconds
def test_cli_exit_codes() -> None:
    ok = _cli()
    assert ok.returncode == 0, ok.stderr
    assert "converges from every reachable state" in ok.stdout
    bad = _cli("--mutant", "init-no-restart")
    assert bad.returncode == 1
    assert "fault: restarter crashed (SIGKILL)" in bad.stdout
    assert _cli("--faults", "99").returncode == 2
    assert _cli("--mutant", "no-such-mutant").returncode == 2
    assert _cli("--json").returncode == 0


# --- hachain verify -c: the user's own chain (issue 21.6) ---------------------------------

def _write(tmp_path, body: str) -> str:
    p = tmp_path / "chain.toml"
    p.write_text('[chain]\nrestart_delay = 1\nheartbeat_interval = 0.5\n[watchdog]\ndevice = "none"\ntimeout = 10\n'
                 'pet_interval = 1\nheartbeat_timeout = 2\n' + body)
    return str(p)


@pytest.mark.slow
def test_verify_config_models_the_users_services(tmp_path, capsys) -> None:
    path = _write(tmp_path, """
[service.db]
command = ["/bin/db"]
ready = "notify"
critical = true
[service.web]
command = ["/bin/web"]
requires = ["db"]
[service.worker]
command = ["/bin/worker"]
wants = ["web"]
[service.migrate]
kind = "oneshot"
command = ["/bin/migrate"]
""")
    assert verify.main(["-c", path]) == 0
    out = capsys.readouterr().out
    assert "svc0 = db, svc1 = web, svc2 = worker" in out
    assert "left out (oneshot or disabled): migrate" in out
    assert "PASS: converges from every reachable state" in out
    assert verify.main(["-c", path, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["verdict"] == "PASS" and rep["tick_seconds"] == 1.0
    assert rep["bound_seconds"] == rep["k_ticks"] * 1.0 > 0
    assert rep["config_services"] == {"svc0": "db", "svc1": "web", "svc2": "worker"}


def test_verify_config_finds_a_policy_that_never_converges(tmp_path, capsys) -> None:
    """A service parked in maintenance by its first crash never comes back by itself:
    the model of that configuration must say so."""
    path = _write(tmp_path, """
[service.fragile]
command = ["/bin/fragile"]
intensity = { max_restarts = 0, window = 60, action = "maintenance" }
""")
    assert verify.main(["-c", path]) == 1
    out = capsys.readouterr().out
    assert "FAIL: COUNTEREXAMPLE (no_convergence)" in out
    assert "fault: svc0 pid 1 crashed" in out


def test_verify_config_limits(tmp_path, capsys) -> None:
    body = "".join(f'[service.s{i}]\ncommand = ["/bin/x"]\n' for i in range(5))
    path = _write(tmp_path, body)
    assert verify.main(["-c", path]) == 2
    assert "5 long-running services; the model holds at most 4" in capsys.readouterr().err
    assert verify.main(["-c", path, "--only", "s1,s2"]) == 0
    assert verify.main(["-c", path, "--only", "s1,nope"]) == 2
    assert "--only: unknown service(s) nope" in capsys.readouterr().err
    assert verify.main(["--only", "s1"]) == 2


def test_verify_config_models_readiness_after_pre_start(tmp_path, capsys) -> None:
    """A ready = "none" service with pre_start is ready at the exec of its command
    (prestart.ready_pipe): the model gives it a readiness message, and says so."""
    path = _write(tmp_path, """
[service.db]
command = ["/bin/db"]
pre_start = [["/bin/db", "--check"]]
[service.web]
command = ["/bin/web"]
requires = ["db"]
""")
    assert verify.main(["-c", path]) == 0
    out = capsys.readouterr().out
    assert "db: ready when its command is exec'd after pre_start, modelled as a " \
           "readiness message" in out
    assert "PASS: converges from every reachable state" in out


def test_verify_config_runs_the_tables_post_start_step(tmp_path, capsys) -> None:
    """post_start is a step of the table: the model takes it (done at once, with
    success) and so converges; post_stop, the loop's, is left out with a note. (Before
    the model knew the PostStart action, such a service never became ready in it.)"""
    path = _write(tmp_path, """
[service.db]
command = ["/bin/db"]
post_start = [["/bin/db-ready"]]
post_stop = [["/bin/db-clean"]]
[service.web]
command = ["/bin/web"]
requires = ["db"]
""")
    assert verify.main(["-c", path, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["verdict"] == "PASS", rep["violations"]
    assert ["starting", "post_start_done"] in rep["table_cells"]
    assert any(n.startswith("db: post_start modelled as done at once") for n in rep["notes"])
    assert any(n.startswith("db: post_stop modelled as done at once") for n in rep["notes"])
