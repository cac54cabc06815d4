"""`hachain status`: each layer's state, the verdict line and the exit code, the last
known service table, aligned columns and escaped foreign text.

Pure parts on hand-made snapshots; then the whole chain on real processes (`hachain run`
with no watchdog device), and the simulated machine in its hung, stale and resetting
states, with status run from the host as an operator would (through `hachain.cli.main`,
which returns the exit code).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import channels, cli, config, status
from hachain.simulators.machine import SimMachine
from tests.conftest import KILLED_BOUND, SVC, sim_machine_head, wait_until
from tests.test_chain import Chain

PY = sys.executable
WD = config.WatchdogConfig()  # heartbeat_timeout 5, restart_grace 10
INJECT = "\x1b[2J\rfake"  # clear the screen, back to column 0, print a fake row


# --- pure parts ------------------------------------------------------------------------------

@pytest.mark.parametrize(("layer", "age", "process", "init_alive", "run_by_init", "want"), [
    ("restarter", 0.2, "running", True, True, "alive"),
    ("restarter", 0.2, "stopped", True, True, "hung"),  # T: hung before the age shows it
    ("restarter", 9.0, "stopped", True, True, "hung"),
    ("restarter", 9.0, "running", True, True, "stale"),  # runs, does not beat
    ("restarter", 0.2, "gone", True, True, "restarting"),
    ("restarter", None, "gone", True, True, "restarting"),
    ("restarter", 0.2, "gone", False, True, "dead"),  # nobody left to restart it
    ("tickler", None, "gone", True, False, "absent"),  # --no-tickler
    ("init", 0.2, "gone", False, True, "dead"),
    ("init", 9.0, "running", False, True, "stale"),
])
def test_layer_state_from_process_and_heartbeat(layer: str, age: float | None, process: str,
                                                init_alive: bool, run_by_init: bool,
                                                want: str) -> None:
    assert status.layer_state(layer, age, process, WD.heartbeat_timeout, init_alive,
                              run_by_init) == want


def test_a_tickler_init_gave_up_on_is_dead_and_the_verdict_says_why() -> None:
    """init stops restarting a tickler that kept dying (tickler_deaths): it is dead, not
    restarting, and with the watchdog armed the verdict is the coming reset."""
    assert status.layer_state("tickler", 3.0, "gone", WD.heartbeat_timeout, True,
                              True, gave_up=True) == "dead"
    assert status.layer_state("tickler", 3.0, "gone", WD.heartbeat_timeout, True,
                              True) == "restarting"
    layers = {n: {"state": "alive", "heartbeat_age": 0.1} for n in ("init", "restarter")}
    layers["tickler"] = {"state": "dead", "heartbeat_age": 3.0, "pid": 77, "gave_up": True}
    st = {"chain": {"layers": layers, "watchdog": {"armed": True, "expires_in": 6.5}},
          "services": {}}
    v = status.verdict(st, WD)
    assert v["state"] == "resetting" and v["resetting_in"] == 6.5
    assert "tickler dead: init gave up restarting it" in v["line"], v["line"]


def test_escape_shows_controls_and_keeps_text() -> None:
    assert status.escape(INJECT) == "\\x1b[2J\\rfake"
    assert status.escape("a\nb\tc\x7f\x9b\u202eevil") == "a\\nb\\tc\\x7f\\x9b\\u202eevil"
    assert status.escape("ready: café 5 ms, /srv/a b") == "ready: café 5 ms, /srv/a b"
    for ch in map(chr, (*range(0x20), *range(0x7F, 0xA0))):
        assert status.escape(ch).isprintable() and len(status.escape(ch)) > 1


def test_table_columns_align_whatever_the_contents() -> None:
    rows = [["a", "exited (status unknown; none)", "x"], ["a_long_service_name", "-", INJECT]]
    lines = status.table(["NAME", "LAST EXIT", "WHY"], rows)
    starts = {ln.index(word) for ln, word in zip(lines, ("LAST EXIT", "exited", "-"),
                                                 strict=True)}
    assert len(starts) == 1  # every row's second column starts at the same place
    assert "exited (status unknown; none)" in lines[1]  # never cut
    assert "\x1b" not in "\n".join(lines) and "\\x1b[2J\\rfake" in lines[2]


def _layer(state: str, age: float | None = 0.1, pid: int | None = 7) -> dict[str, Any]:
    return {"state": state, "process": {"hung": "stopped", "dead": "gone",
                                        "restarting": "gone"}.get(state, "running"),
            "alive": state == "alive", "stopped": state == "hung", "heartbeat_age": age,
            "pid": pid, "host_pid": pid}


def _snap(now: float = 100.0, **layers: dict[str, Any]) -> dict[str, Any]:
    ls = {n: layers.get(n, _layer("alive")) for n in channels.LAYERS}
    return {"chain": {"layers": ls, "restarter": {}, "watchdog": {
                "device": "/dev/watchdog0", "armed": True, "petting": True, "timeout": 10,
                "gate": {"ok": True, "reasons": []}, "last_pet_mono": now - 1,
                "expires_in": 9.0}},
            "services": {"db": {"state": "ready", "want": "up"},
                         "off": {"state": "stopped", "want": "down"}}}


def test_verdict_healthy_degraded_resetting() -> None:
    st = _snap()
    assert status.verdict(st, WD)["line"] == "healthy"
    st["services"]["db"]["state"] = "backoff"
    v = status.verdict(st, WD)
    assert v["state"] == "degraded" and v["line"] == "degraded: 1 service not ready: db backoff"
    # the restarter stopped: hung at once, although its heartbeat is still fresh
    st = _snap(restarter=_layer("hung", 0.3))
    st["chain"]["restarter_error"] = "not asked: its process is stopped"
    v = status.verdict(st, WD)
    assert v["line"] == "degraded: restarter hung (pid 7 stopped, heartbeat 0.3 s old)"
    # then the gate fails: the tickler stops petting and the watchdog runs down
    st["chain"]["watchdog"].update(petting=False, expires_in=6.4,
                                   gate={"ok": False, "reasons": ["restarter stale"]})
    v = status.verdict(st, WD)
    assert v["state"] == "resetting" and v["resetting_in"] == 6.4
    assert v["line"].startswith("resetting in 7 s: restarter hung")  # 6.4, rounded up
    assert "gate failing: restarter stale" in v["line"]
    # a tickler that init is restarting is not a reset: the device stays armed briefly
    st = _snap(tickler=_layer("restarting", 0.5))
    assert status.verdict(st, WD)["line"] == "degraded: tickler restarting (heartbeat 0.5 s old)"
    # everything gone and the watchdog long run out: the machine is not there any more
    gone = _layer("dead", 40.0)
    st = _snap(init=gone, restarter=gone, tickler=gone)
    st["chain"]["watchdog"]["expires_in"] = -30.0
    assert status.verdict(st, WD)["line"].startswith(
        "degraded: the watchdog ran out 30 s ago: init dead (heartbeat 40.0 s old")


def test_heartbeats_are_judged_by_the_running_configuration(tmp_path: Any) -> None:
    from hachain import snapshot
    state = tmp_path / "run"
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[chain]\nstate_dir = "{state}"\npersist_dir = "{tmp_path / "p"}"\n'
                   'heartbeat_interval = 0.5\n[watchdog]\ndevice = "none"\nheartbeat_timeout = 1.5\n')
    given = config.WatchdogConfig(heartbeat_timeout=7.0)
    assert status._timing(str(state), given).heartbeat_timeout == 7.0  # no snapshot yet
    snapshot.accept(str(cfg))
    assert status._timing(str(state), given).heartbeat_timeout == 1.5  # what runs wins
    assert status._timing(str(state), None).restart_grace == WD.restart_grace


@pytest.mark.parametrize(("text", "quick"), [
    ('[chain]\nstate_dir = "/r/x"\n[service.a]\ncommand = ["x"]\n', ("/r/x", "/var/lib/hachain")),
    ('[chain] # c\npersist_dir = "/p"\nstate_dir = "/r"\n', ("/r", "/p")),
    ('[service.a]\ncommand = ["x"]\n', ("/run/hachain", "/var/lib/hachain")),
    ('chain.state_dir = "/r"\n', None),           # set outside a [chain] header
    ('[chain]\nstate_dir = 3\n', None),            # the whole load names the error
    ('[chain]\nstate_dir = "/r"\n[service.x\n', ("/r", "/var/lib/hachain")),  # broken after
    ('[chain]\nstate_dir = "/r" "/s"\n', None),      # the table does not parse alone
    ('[service.a]\nenv = { state_dir = "/x" }\n', None),  # the word elsewhere: be safe
])
def test_the_directories_come_from_the_chain_table_alone(
        tmp_path: Any, text: str, quick: tuple[str, str] | None) -> None:
    """Status and the control commands read the [chain] table alone when it says
    everything; anything else takes the whole load (as before)."""
    from hachain import cmdline
    f = tmp_path / "chain.toml"
    f.write_text(text)
    assert cmdline._chain_dirs(str(f)) == quick


def test_odd_heartbeat_values_are_shown_escaped_not_crashed_on(tmp_path: Any,
                                                              capsys: Any) -> None:
    state, persist = tmp_path / "run", tmp_path / "persist"
    me, start = os.getpid(), channels.proc_start_time(os.getpid())
    odd = {"device": INJECT, "armed": "yes", "petting": 1, "timeout": INJECT, "pets": INJECT,
           "timeleft": "soon", "gate": INJECT, "last_pet_mono": INJECT,
           "pet_late_worst": 0.5, "pet_late_warn": INJECT, "pet_late_warnings": INJECT}
    for layer in channels.LAYERS:
        channels.HeartbeatWriter(str(state), layer)  # makes hb/
        channels.write_heartbeat(str(state), channels.Heartbeat(
            layer, me, time.monotonic(), time.monotonic(), 1, 0,
            odd if layer == "tickler" else {"children": INJECT}, start))
    persist.mkdir()
    (persist / channels.LAST_BOOT).write_text(json.dumps([INJECT]))
    (persist / channels.GATE_RECORD).write_text(json.dumps({"reasons": [INJECT, 3]}))
    rc, out = _status(capsys, "--state-dir", str(state), "--persist-dir", str(persist))
    assert rc == 1  # the restarter does not answer: degraded, whatever else is odd
    assert "\x1b" not in out and "\r" not in out and "\\x1b[2J\\rfake" in out
    rc, js = _status(capsys, "--json", "--state-dir", str(state), "--persist-dir",
                     str(persist))
    assert rc == 1 and json.loads(js)["chain"]["watchdog"]["device"] == INJECT


@pytest.mark.parametrize(("text", "want"), [
    ('[chain]\nx = 1\n[watchdog] # dev\nheartbeat_timeout = 1.5\n[service.a]\ny = 2\n',
     {"heartbeat_timeout": 1.5}),
    ('watchdog.heartbeat_timeout = 2\n[chain]\nx = 1\n', {"heartbeat_timeout": 2}),
    ('watchdog = { restart_grace = 3 }\n', {"restart_grace": 3}),
    ('[chain]\nx = 1\n', {}),
])
def test_the_watchdog_table_is_read_alone(text: str, want: dict[str, Any]) -> None:
    assert status._watchdog_table(text) == want


def test_status_exit_2_on_bad_usage(capsys: Any) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["status", "--bogus"])
    assert e.value.code == 2
    capsys.readouterr()


# --- real processes ----------------------------------------------------------------------------

def _status(capsys: Any, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main(["status", *args])
    return rc, capsys.readouterr().out


@pytest.fixture
def chain(tmp_path: Any) -> Iterator[Any]:
    made: list[Chain] = []

    def make(body: str, **kw: Any) -> Chain:
        c = Chain(str(tmp_path), body, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.mark.slow
def test_status_of_a_real_chain(chain: Any, capsys: Any) -> None:
    c = chain(f"""
[service.db]
command = {json.dumps([PY, SVC, "notify", "0", INJECT])}
ready = "notify"
critical = true

[service.worker-with-a-long-name]
command = {json.dumps([PY, SVC, "sleep"])}
""", restart_delay=3.0)
    wait_until(lambda: c.all_ready(2), 30, "both services ready")
    args = ("-c", c.config)
    rc, out = wait_until(lambda: (r := _status(capsys, *args))[0] == 0 and r, 15,
                         "a healthy verdict")
    lines = out.splitlines()
    assert lines[0] == "healthy"
    # the service's STATUS= text is shown escaped, and exactly in JSON
    assert "\x1b" not in out and "\r" not in out and "[\\x1b[2J\\rfake]" in out
    rc, js = _status(capsys, "--json", *args)
    st = json.loads(js)
    assert rc == 0 and st["verdict"]["state"] == "healthy"
    assert st["services"]["db"]["status_text"] == INJECT
    assert {d["state"] for d in st["chain"]["layers"].values()} == {"alive"}
    # the status of a running chain reads its snapshot: no configuration schema loaded
    # (that import alone is ~45 ms, a third of what status cost under a crash storm)
    probe = ("import sys; from hachain.cli import main; rc = main(sys.argv[1:]); "
             "print(' '.join(m for m in sys.modules if m.startswith('hachain')), "
             "file=sys.stderr); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", probe, "status", "--json", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["verdict"]["state"] == "healthy"
    loaded = r.stderr.split()
    assert "hachain.status" in loaded and "hachain.config" not in loaded, loaded
    # columns line up: each row's STATE starts under the header's
    table = lines[lines.index(next(ln for ln in lines if ln.startswith("SERVICE"))):]
    col = table[0].index("STATE")
    assert {ln[col:].split()[0] for ln in table[1:3]} == {"ready"}

    # SIGSTOP the restarter: hung at once, exit 1, the last known table stays on screen
    restarter = st["chain"]["layers"]["restarter"]["pid"]
    os.kill(restarter, signal.SIGSTOP)
    try:
        # the stop is delivered asynchronously: status judges what /proc shows
        wait_until(lambda: channels.proc_state(restarter) in ("T", "t"), KILLED_BOUND,
                   "stopped")
        rc, out = _status(capsys, *args)
        assert rc == 1, out
        assert out.splitlines()[0].startswith(f"degraded: restarter hung (pid {restarter} "
                                              "stopped")
        assert "last known services," in out and "s old (the restarter does not answer" in out
        assert "worker-with-a-long-name" in out
        rc, js = _status(capsys, "--json", *args)
        d = json.loads(js)["chain"]["layers"]["restarter"]
        assert (d["state"], d["alive"], d["stopped"]) == ("hung", False, True)
    finally:
        os.kill(restarter, signal.SIGCONT)
    wait_until(lambda: _status(capsys, *args)[0] == 0, 15, "healthy again after SIGCONT")

    # SIGKILL the tickler while init restarts it: restarting, exit 1. A tickler that ran
    # STABLE_AFTER s is restarted at once and is back within ~0.1 s, too soon for a status
    # to see reliably; each quick death after that doubles init's delay from 0.1 s up to
    # restart_delay (3 s). Six deaths in a row: the sixth waits 1.6 s for its restart.
    for kill in range(1, 7):
        tickler = wait_until(lambda: (hb := c.hb("tickler")) and channels.pid_alive(hb.pid)
                             and hb.pid, 20, "a tickler")
        os.kill(tickler, signal.SIGKILL)
        if kill < 6:
            wait_until(lambda t=tickler: (hb := c.hb("tickler")) and hb.pid != t, 20,
                       "the next tickler")
    rc, out = wait_until(lambda: (r := _status(capsys, *args))[0] == 1
                         and "tickler restarting" in r[1] and r, 1.6, "tickler restarting")
    assert out.startswith("degraded: tickler restarting")
    wait_until(lambda: _status(capsys, *args)[0] == 0, 20, "healthy again")


# --- the simulated machine -------------------------------------------------------------------

def needs_machine(f: Any) -> Any:
    """Marks of a test that boots the simulated machine."""
    f = pytest.mark.slow(f)
    f = pytest.mark.skipif(os.geteuid() != 0, reason="the simulated machine needs root "
                           "(PID and mount namespaces)")(f)
    return pytest.mark.skipif(shutil.which("unshare") is None,
                              reason="the simulated machine needs unshare(1)")(f)


def machine_config(timeout: float, hb_timeout: float) -> str:
    return sim_machine_head(timeout, 0.5, hb_timeout, 4) + f"""
[service.db]
command = {json.dumps([PY, SVC, "notify", "0", INJECT])}
ready = "notify"
critical = true
"""


@pytest.fixture
def boot(tmp_path: Any) -> Iterator[Any]:
    made: list[SimMachine] = []

    def make(text: str, **kw: Any) -> SimMachine:
        cfg = tmp_path / f"chain{len(made)}.toml"
        cfg.write_text(text)
        m = SimMachine(str(cfg), str(tmp_path / f"m{len(made)}"), panic_delay=0.2,
                       on_event=lambda _m: None, **kw)
        made.append(m)
        m.start()
        return m

    yield make
    for m in made:
        m.stop()


def _m_status(m: SimMachine, capsys: Any, json_: bool = False) -> tuple[int, Any]:
    args = ["--state-dir", m.state_dir, "--persist-dir", m.persist_dir]
    rc, out = _status(capsys, *(["--json"] if json_ else []), *args)
    return rc, json.loads(out) if json_ else out


def _healthy(m: SimMachine, capsys: Any, timeout: float = 30) -> dict[str, Any]:
    return wait_until(lambda: (r := _m_status(m, capsys, True))[0] == 0 and r[1], timeout,
                      "a healthy verdict from the machine")


@needs_machine
def test_hung_restarter_on_the_machine(boot: Any, capsys: Any) -> None:
    # heartbeat_timeout 20 s: the gate keeps passing for a while, so what is seen is
    # status's own judgement of a stopped process, not the gate's
    m = boot(machine_config(timeout=30, hb_timeout=20))
    st = _healthy(m, capsys)
    d = st["chain"]["layers"]["restarter"]
    host = m.host_pid_of("restarter")
    assert host is not None and d["host_pid"] == host and d["pid"] != host  # mapped
    os.kill(host, signal.SIGSTOP)
    try:
        wait_until(lambda: channels.proc_state(host) in ("T", "t"), KILLED_BOUND, "stopped")
        rc, out = _m_status(m, capsys)
        assert rc == 1
        # the pid as seen from here, which is the one an operator here can act on
        assert out.splitlines()[0].startswith(f"degraded: restarter hung (pid {host} stopped")
        assert "last known services," in out and "\\x1b[2J\\rfake" in out and "\x1b" not in out
        rc, st = _m_status(m, capsys, True)
        assert st["chain"]["layers"]["restarter"]["state"] == "hung"
        assert st["chain"]["last_known"]["services"]["db"]["status_text"] == INJECT
    finally:
        os.kill(host, signal.SIGCONT)
    _healthy(m, capsys)
    assert len(m.boots) == 1


@needs_machine
def test_stale_init_on_the_machine(boot: Any, capsys: Any) -> None:
    # init's fault hook hangs its loop (state S, not T): the heartbeat goes stale while
    # the process runs. No device, so no reset follows: the state stays to be seen.
    m = boot(machine_config(timeout=3, hb_timeout=1),
             env_extra={"HACHAIN_WATCHDOG_DEVICE": "none"})
    _healthy(m, capsys)
    init = m.init_host_pid()
    assert init is not None
    os.kill(init, signal.SIGRTMIN + 2)
    rc, st = wait_until(lambda: (r := _m_status(m, capsys, True))[1]["chain"]["layers"]
                        ["init"]["state"] == "stale" and r, 10, "init stale")
    assert rc == 1 and st["verdict"]["state"] == "degraded"
    assert st["verdict"]["line"].startswith("degraded: init stale (heartbeat ")
    assert channels.proc_state(init) not in ("T", "t")


@needs_machine
def test_resetting_then_healthy_again_on_the_machine(boot: Any, capsys: Any) -> None:
    timeout = 3
    m = boot(machine_config(timeout=timeout, hb_timeout=1))
    _healthy(m, capsys)
    host = m.host_pid_of("restarter")
    assert host is not None
    os.kill(host, signal.SIGSTOP)
    rc, out = wait_until(lambda: (r := _m_status(m, capsys))[1].startswith("resetting in")
                         and r, 10, "a resetting verdict")
    assert rc == 1
    first = out.splitlines()[0]
    n = int(first.split()[2])
    assert 0 <= n <= timeout and "restarter hung" in first
    m.wait_boot(2, timeout + 10)
    _healthy(m, capsys)
    # the machine switched off: what is left on disk is not shown as a live chain
    # the machine switched off: what is left on disk is not shown as a live chain. Every
    # layer is dead and nobody pets: resetting, until the watchdog's time has run out
    m.stop()
    rc, out = _m_status(m, capsys)
    assert rc == 1 and "init dead" in out.splitlines()[0]
    assert "(as the tickler last said" in out and "it is dead)" in out
    rc, out = wait_until(lambda: (r := _m_status(m, capsys))[1].startswith(
        "degraded: the watchdog ran out") and r, timeout + 5, "the watchdog's time run out")
    assert rc == 1 and "restarter dead" in out.splitlines()[0]


@needs_machine
def test_one_service_of_a_machine_in_its_own_pid_namespace(boot: Any, capsys: Any) -> None:
    """`hachain status db` from the host: the machine's pids are not the host's. The
    main process's command line is read through the pid as seen here (a scan of the
    machine's namespace), never /proc of the machine's number, which names another
    process here; the cgroup's processes are written as the machine sees them."""
    m = boot(machine_config(timeout=30, hb_timeout=20))
    st = _healthy(m, capsys)
    db = st["services"]["db"]["pid"]
    rc, out = _status(capsys, "db", "-n", "0", "--state-dir", m.state_dir,
                      "--persist-dir", m.persist_dir)
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0].startswith(f"db: ready (want up, pid {db}, up ")
    (proc,) = [ln for ln in lines if ln.startswith("  process:")]
    # (the injected STATUS= text is in its argv too: shown escaped, as everything is)
    assert proc == "  process:   " + status.escape(f"{db} {PY} {SVC} notify 0 {INJECT}"), out
    if m.cgroup_root:  # the machine has cgroups where a writable cgroup2 is (CI)
        (cg,) = [ln for ln in lines if ln.startswith("  cgroup:")]
        assert cg == f"  cgroup:    {m.cgroup_root}/db: 1 process(es): {db}", out
