"""Tests of hachain-init (layer 1) with real processes.

Init runs as a subprocess with tests/helpers/fake_layer.py standing in for the restarter
and the tickler. The fakes record every start (pid, CLOCK_MONOTONIC, HACHAIN_* variables)
and every orphan they make in the test's directory, so the tests wait on those records and
on init's heartbeat, never on a fixed sleep. Every process a test starts is killed in the
fixture finalizer, even when the test fails.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hachain import channels
from tests.conftest import KILLED_BOUND, LIVENESS, reap, wait_until

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "helpers" / "fake_layer.py"
PY = sys.executable

pytestmark = pytest.mark.timeout(60)

def records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines the fake layer appended to `path` (empty when it does not exist)."""
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line]
    except FileNotFoundError:
        return []


def ppid_of(pid: int) -> int | None:
    """The parent pid from /proc/PID/stat, or None when the process is gone."""
    return channels.proc_ppid(pid)


def gone(pid: int) -> bool:
    """True once `pid` has exited and been reaped (no zombie left behind)."""
    return channels.proc_state(pid) is None


class InitRun:
    """One hachain-init under test, its directory and the records of its fake children."""

    def __init__(self, proc: subprocess.Popen[bytes], workdir: Path) -> None:
        self.proc = proc
        self.dir = workdir
        self.state_dir = workdir / "state"

    def starts(self, name: str) -> list[dict[str, Any]]:
        return records(self.dir / f"{name}.log")

    def orphans(self, name: str) -> list[dict[str, Any]]:
        return records(self.dir / f"{name}.orphans")

    def done(self, name: str) -> list[dict[str, Any]]:
        return records(self.dir / f"{name}.done")

    def wait_starts(self, name: str, n: int, timeout: float = LIVENESS) -> list[dict[str, Any]]:
        """Wait until `name` has been started at least `n` times; its start records."""
        return wait_until(lambda: len(self.starts(name)) >= n and self.starts(name),
                          timeout, f"{n} starts of {name}")

    def command(self, name: str, line: str, timeout: float = LIVENESS) -> dict[str, Any]:
        """Have the running fake `name` execute `line`; wait until it has."""
        before = len(self.done(name))
        tmp = self.dir / f"{name}.cmd.new"
        tmp.write_text(line + "\n")
        tmp.rename(self.dir / f"{name}.cmd")
        return wait_until(lambda: self.done(name)[before:] and self.done(name)[before],
                          timeout, f"{name} to run {line!r}")

    def heartbeat(self) -> channels.Heartbeat | None:
        return channels.read_heartbeat(str(self.state_dir), "init")

    def wait_beat_after(self, mono: float, timeout: float = LIVENESS) -> channels.Heartbeat:
        """Wait for a heartbeat written after CLOCK_MONOTONIC time `mono`."""
        return wait_until(lambda: (hb := self.heartbeat()) is not None and hb.mono > mono
                          and hb, timeout, "a fresh init heartbeat")

    def stderr(self) -> str:
        return (self.dir / "init.err").read_text(errors="replace")

    def wait_stderr(self, text: str, timeout: float = LIVENESS) -> str:
        """init's stderr once it holds `text`: its lines go out through a thread of their
        own, after the start or heartbeat a test may have waited for."""
        return str(wait_until(lambda: text in (t := self.stderr()) and t, timeout,
                              f"init to log {text!r}"))

    def recorded_pids(self) -> set[int]:
        """Every pid a fake child or grandchild recorded (host pids outside a namespace)."""
        pids: set[int] = set()
        for pattern in ("*.log", "*.orphans"):
            for path in self.dir.glob(pattern):
                pids.update(r["pid"] for r in records(path))
        return pids


def fake_cmd(name: str, workdir: Path, args: str = "") -> str:
    """The --restarter-cmd / --tickler-cmd value that runs the fake layer."""
    return shlex.join([PY, str(FAKE), name, str(workdir)]) + (" " + args if args else "")


def kill_if_ours(pid: int, marker: str) -> None:
    """SIGKILL `pid` only if its command line still names this test's directory."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if marker.encode() in cmdline:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., InitRun]]:
    """Start hachain-init with fake children; everything is killed at teardown."""
    runs: list[InitRun] = []

    def _launch(restarter: str = "", tickler: str = "", *extra: str,
                env: dict[str, str] | None = None, delay: float = 0.3) -> InitRun:
        workdir = tmp_path / f"run{len(runs)}"
        workdir.mkdir()
        argv = [PY, "-m", "hachain.init.main", "--state-dir", str(workdir / "state"),
                "--config", str(workdir / "chain.toml"), "--restart-delay", str(delay),
                "--heartbeat-interval", "0.1",
                "--restarter-cmd", fake_cmd("restarter", workdir, restarter),
                "--tickler-cmd", fake_cmd("tickler", workdir, tickler), *extra]
        with open(workdir / "init.err", "wb") as err:
            proc = subprocess.Popen(argv, stderr=err, cwd=ROOT,
                                    env={**os.environ, **(env or {})})
        run = InitRun(proc, workdir)
        runs.append(run)
        return run

    yield _launch
    for run in runs:
        if run.proc.poll() is None:
            os.kill(run.proc.pid, signal.SIGSTOP)  # no more restarts while we clean up
        for pid in run.recorded_pids():
            kill_if_ours(pid, str(run.dir))
        run.proc.kill()
        reap(run.proc, "init")
        for pid in run.recorded_pids():  # anything started before the SIGSTOP landed
            kill_if_ours(pid, str(run.dir))


# --- 1, 2: blind restarts: at once, then backing off up to --restart-delay -------------------

@pytest.mark.parametrize("name", ["restarter", "tickler"])
def test_killed_child_is_restarted_with_count(launch: Callable[..., InitRun],
                                              name: str) -> None:
    run = launch(delay=0.3)
    first = run.wait_starts(name, 1)[0]
    assert first["restarts"] == "0"
    assert first["ppid"] == run.proc.pid
    assert first["config"] == str(run.dir / "chain.toml")
    assert first["state_dir"] == str(run.state_dir)
    other = "tickler" if name == "restarter" else "restarter"
    run.wait_starts(other, 1)

    killed_at = time.monotonic()
    os.kill(first["pid"], signal.SIGKILL)
    second = run.wait_starts(name, 2)[1]
    assert second["pid"] != first["pid"]
    assert second["restarts"] == "1"
    assert second["mono"] >= killed_at
    assert len(run.starts(other)) == 1  # the other layer was left alone
    # the first death in a row is restarted at once, with no delay at all
    run.wait_stderr(f"{name} (pid {first['pid']}) killed by SIGKILL; restarting now")


@pytest.mark.slow
def test_repeated_deaths_back_off_to_the_cap(launch: Callable[..., InitRun]) -> None:
    """A layer that keeps dying quickly: restarted at once, then after 0.1 s, 0.2 s, 0.4 s,
    ... never more than --restart-delay apart, and never given up."""
    run = launch(tickler="--exit 3", delay=0.25)
    starts = run.wait_starts("tickler", 6)[:6]
    assert [s["restarts"] for s in starts] == [str(i) for i in range(6)]
    gaps = [b["mono"] - a["mono"] for a, b in itertools.pairwise(starts)]
    # the scheduled delays are 0, 0.1, 0.2, 0.25, 0.25: a gap is at least its delay
    for gap, delay in zip(gaps, (0.0, 0.1, 0.2, 0.25, 0.25)):
        assert gap >= delay - 0.005, gaps
    run.wait_stderr(f"tickler (pid {starts[0]['pid']}) exited with status 3; restarting now")
    run.wait_stderr(f"tickler (pid {starts[1]['pid']}) exited with status 3; "
                    "restarting in 0.1 s")
    run.wait_stderr(f"tickler (pid {starts[3]['pid']}) exited with status 3; "
                    "restarting in 0.25 s")


def test_failed_spawn_is_retried(launch: Callable[..., InitRun], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-program"
    run = launch("", "", "--tickler-cmd", str(missing), delay=0.2)
    wait_until(lambda: run.stderr().count("cannot start tickler") >= 3, 10,
               "three failed spawns of the tickler")
    assert run.proc.poll() is None
    assert len(run.starts("restarter")) == 1


# --- 3: heartbeat, and a hang made visible ---------------------------------------------------

@pytest.mark.slow
def test_heartbeat_lists_children_and_stalls_when_stopped(
        launch: Callable[..., InitRun]) -> None:
    run = launch()
    r = run.wait_starts("restarter", 1)[0]
    t = run.wait_starts("tickler", 1)[0]
    hb = wait_until(lambda: (h := run.heartbeat()) and h.extra["children"]["tickler"]["pid"]
                    and h, 10, "a heartbeat naming both children")
    assert hb.layer == "init" and hb.pid == run.proc.pid
    assert hb.extra["pid1"] is False and hb.extra["stopping"] is False
    assert hb.extra["children"]["restarter"]["pid"] == r["pid"]
    assert hb.extra["children"]["tickler"]["pid"] == t["pid"]
    assert hb.extra["children"]["restarter"]["restarts"] == 0
    later = run.wait_beat_after(hb.mono)
    assert later.seq > hb.seq

    os.kill(run.proc.pid, signal.SIGSTOP)
    wait_until(lambda: channels.proc_state(run.proc.pid) == "T", KILLED_BOUND, "init to stop")
    frozen = run.heartbeat()
    assert frozen is not None
    wait_until(lambda: frozen.age(time.monotonic()) > 1.0, 5, "the heartbeat to age 1 s")
    assert run.heartbeat() == frozen  # ten intervals passed and nothing was written

    os.kill(run.proc.pid, signal.SIGCONT)
    resumed = run.wait_beat_after(frozen.mono)
    assert resumed.seq > frozen.seq


@pytest.mark.slow
def test_fault_hooks_hang_then_exit(launch: Callable[..., InitRun]) -> None:
    run = launch(env={channels.ENV_FAULT_HOOKS: "1"})
    run.wait_starts("tickler", 1)
    hb = run.wait_beat_after(0)
    os.kill(run.proc.pid, signal.SIGRTMIN + 2)
    wait_until(lambda: "fault hook: hanging forever" in run.stderr(), 5, "the hang hook")
    stale = run.heartbeat()
    assert stale is not None and stale.seq >= hb.seq
    wait_until(lambda: stale.age(time.monotonic()) > 1.0, 5, "the heartbeat to age 1 s")
    assert run.heartbeat() == stale and run.proc.poll() is None
    os.kill(run.proc.pid, signal.SIGTERM)  # ignored while hung
    os.kill(run.proc.pid, signal.SIGRTMIN + 1)
    assert run.proc.wait(timeout=5) == 70


# --- 4: subreaper ---------------------------------------------------------------------------

@pytest.mark.slow
def test_orphans_come_back_and_are_reaped(launch: Callable[..., InitRun]) -> None:
    run = launch(restarter="--orphan 1.0 --exit 0", delay=5.0)
    parent = run.wait_starts("restarter", 1)[0]
    # (init restarts the restarter at once, and the next one makes an orphan too: the
    # first one's is the one whose parent link this test breaks)
    orphan = wait_until(lambda: next((o for o in run.orphans("restarter")
                                      if o["layer"] == parent["pid"]), None), 10,
                        "the first restarter's grandchild")
    wait_until(lambda: gone(parent["pid"]), 5, "the restarter to exit and be reaped")
    assert ppid_of(orphan["pid"]) in (run.proc.pid, None)  # reparented to init, not 1
    wait_until(lambda: gone(orphan["pid"]), 10, "the orphan to exit and be reaped")

    run.wait_starts("tickler", 1)
    run.command("tickler", "orphan 1.0")  # double fork from a child that stays up
    orphan2 = wait_until(lambda: run.orphans("tickler"), 10, "the tickler's orphan")[0]
    assert ppid_of(orphan2["pid"]) == run.proc.pid
    assert channels.proc_state(orphan2["pid"]) in ("S", "R")
    wait_until(lambda: gone(orphan2["pid"]), 10, "the second orphan to be reaped")


# --- 5: shutdown ----------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_stops_the_whole_tree(launch: Callable[..., InitRun]) -> None:
    run = launch("--ignore-term", "--orphan 60", "--stop-timeout", "1")
    run.wait_starts("restarter", 1)
    run.wait_starts("tickler", 1)
    run.command("restarter", "orphan 60 ignore-term")
    run.command("tickler", "orphan 60")
    wait_until(lambda: len(run.orphans("restarter")) == 1 and len(run.orphans("tickler")) == 2,
               10, "three grandchildren")
    pids = run.recorded_pids()
    assert len(pids) == 5 and all(not gone(p) for p in pids)

    t0 = time.monotonic()
    os.kill(run.proc.pid, signal.SIGTERM)
    assert run.proc.wait(timeout=20) == 0
    elapsed = time.monotonic() - t0
    assert [p for p in pids if not gone(p)] == []
    assert elapsed < 10, elapsed
    err = run.stderr()
    assert "restarter" in err and "did not stop in time; SIGKILL" in err
    assert "all processes stopped; exiting" in err
    hb = run.heartbeat()
    assert hb is not None and hb.extra["stopping"] is True


# --- 6: PID 1 of a fresh PID namespace ------------------------------------------------------

def ns_members(ns_init: int) -> dict[int, int]:
    """Processes in the PID namespace of host pid `ns_init`: {pid inside: pid on host}."""
    try:
        ns = os.readlink(f"/proc/{ns_init}/ns/pid")
    except OSError:
        return {}
    found = {}
    for entry in os.listdir("/proc"):
        try:
            if not entry.isdigit() or os.readlink(f"/proc/{entry}/ns/pid") != ns:
                continue
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
        found[int(nspid.split()[-1])] = int(entry)
    return found


@pytest.fixture
def unshare_ok() -> None:
    """Skip unless this user may create PID and mount namespaces."""
    try:
        probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                               check=False, capture_output=True, timeout=10)
    except FileNotFoundError:
        pytest.skip("unshare(1) is not installed")
    if probe.returncode != 0:
        pytest.skip(f"unshare --pid --mount-proc not permitted here: "
                    f"{probe.stderr.decode(errors='replace').strip()}")


@pytest.fixture
def ns_launch(tmp_path: Path, unshare_ok: None) -> Iterator[Callable[..., tuple[InitRun, int]]]:
    """Start hachain-init as PID 1 of a new PID namespace; returns it and its host pid.

    Teardown SIGKILLs the namespace's init from the host, which kills everything inside.
    """
    started: list[tuple[subprocess.Popen[bytes], list[int]]] = []

    def _launch(restarter: str = "", tickler: str = "", *extra: str) -> tuple[InitRun, int]:
        workdir = tmp_path / f"ns{len(started)}"
        workdir.mkdir()
        argv = ["unshare", "--pid", "--fork", "--mount-proc", "--propagation", "private",
                PY, "-m", "hachain.init.main", "--state-dir", str(workdir / "state"),
                "--restart-delay", "0.3", "--heartbeat-interval", "0.1",
                "--restarter-cmd", fake_cmd("restarter", workdir, restarter),
                "--tickler-cmd", fake_cmd("tickler", workdir, tickler), *extra]
        with open(workdir / "init.err", "wb") as err:
            proc = subprocess.Popen(argv, stderr=err, cwd=ROOT,
                                    env={**os.environ, channels.ENV_FAULT_HOOKS: "1"})
        host_pids: list[int] = []
        started.append((proc, host_pids))
        host_pids.append(wait_until(
            lambda: [p for p in map(int, filter(str.isdigit, os.listdir("/proc")))
                     if ppid_of(p) == proc.pid], 5, "the namespace's init on the host")[0])
        return InitRun(proc, workdir), host_pids[0]

    yield _launch
    for proc, host_pids in started:
        for pid in host_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
        reap(proc, "unshare")


def wait_ns_ready(run: InitRun) -> channels.Heartbeat:
    """Wait until the namespace init beats with both fake children started."""
    hb = wait_until(lambda: (h := run.heartbeat()) and h.extra["children"]["tickler"]["pid"]
                    and h, 15, "the namespace init's heartbeat")
    run.wait_starts("restarter", 1)
    run.wait_starts("tickler", 1)
    return hb


@pytest.mark.slow
def test_pid1_in_a_pid_namespace(ns_launch: Callable[..., tuple[InitRun, int]]) -> None:
    run, ns_init = ns_launch()
    hb = wait_ns_ready(run)
    assert hb.pid == 1 and hb.extra["pid1"] is True

    # An orphan inside the namespace is reparented to init (pid 1) and reaped.
    run.command("restarter", "orphan 1.0")
    orphan_ns = wait_until(lambda: run.orphans("restarter"), 10, "the orphan")[0]["pid"]
    orphan_host = ns_members(ns_init).get(orphan_ns)
    assert orphan_host is not None
    # it records itself before the double fork's middle process has exited: wait for that
    wait_until(lambda: ppid_of(orphan_host) in (ns_init, None), 10,
               "the orphan to be reparented to pid 1")
    wait_until(lambda: gone(orphan_host), 10, "the orphan to be reaped by pid 1")
    assert all(channels.proc_state(h) != "Z" for h in ns_members(ns_init).values())

    # kill -9 1 from inside the namespace is dropped by the kernel.
    sent = run.command("restarter", "kill 1 9")
    after = run.wait_beat_after(sent["mono"] + 0.3)
    assert after.pid == 1 and run.proc.poll() is None and not gone(ns_init)

    # The documented crash hook does end it, and with it the namespace.
    run.command("tickler", f"kill 1 {int(signal.SIGRTMIN) + 1}")
    assert run.proc.wait(timeout=10) == 70
    assert "fault hook: exiting with status 70" in run.stderr()


@pytest.mark.slow
@pytest.mark.parametrize("sig, seen_as", [(signal.SIGTERM, signal.SIGHUP),
                                          (signal.SIGUSR2, signal.SIGINT)],
                         ids=["SIGTERM-reboot", "SIGUSR2-poweroff"])
def test_pid1_shutdown_empties_the_namespace(ns_launch: Callable[..., tuple[InitRun, int]],
                                             sig: signal.Signals,
                                             seen_as: signal.Signals) -> None:
    run, ns_init = ns_launch("--ignore-term", "", "--stop-timeout", "1")
    wait_ns_ready(run)
    run.command("tickler", "orphan 60 ignore-term")
    wait_until(lambda: run.orphans("tickler"), 10, "the orphan")
    # init, restarter, tickler and the orphan; the orphan records itself before the
    # double fork's middle process has exited and been reaped by the tickler, so the
    # middle may still be there for a moment (it was, with both cores busy)
    wait_until(lambda: len(ns_members(ns_init)) == 4, 10,
               "exactly four processes in the namespace")

    os.kill(ns_init, sig)
    # reboot(2) in a child namespace kills its init; the parent (unshare, which re-raises
    # the child's fate) sees SIGHUP for a restart and SIGINT for a halt or power-off.
    assert run.proc.wait(timeout=20) == -seen_as
    err = run.stderr()
    # its pid inside the namespace (not 2: init's log thread took a pid of it first)
    restarter = run.starts("restarter")[0]["pid"]
    assert f"restarter (pid {restarter}) did not stop in time; SIGKILL" in err
    assert "sending SIGKILL to all processes" in err
    assert "all processes stopped; sync and" in err


# --- 7: layering ----------------------------------------------------------------------------

def test_lean_python_finds_the_packages_without_site() -> None:
    """`hachain run` starts init (and init the layers) with python -S: the environment
    from channels.lean_python must still find hachain and the installed libraries, and
    an init started that way passes -S on to the layers it starts."""
    argv, env = channels.lean_python(sys.executable, "hachain.init.main")
    assert argv[:3] == [sys.executable, "-S", "-m"]
    code = ("import sys, hachain.channels, hachain.watchdog.tickler, pyudev; "
            "import hachain.init.main as m; o = m.parse_options(['--config', '/x.toml'], False); "
            "print(sys.flags.no_site, 'site' in sys.modules, o.restarter_cmd[1], "
            "o.tickler_cmd[1])")
    p = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True,
                       text=True, timeout=60, cwd="/")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["1", "False", "-S", "-S"], p.stdout


def test_an_init_started_with_site_starts_its_layers_lean() -> None:
    """init= on an appliance runs the hachain-init script, with site: the layers still
    start with -S, and the PYTHONPATH init gives them finds hachain and the installed
    libraries from any directory (site's scan is not paid again at each layer's start)."""
    code = ("import json, hachain.init.main as m; "
            "o = m.parse_options(['--config', '/x.toml'], False); "
            "print(json.dumps([o.restarter_cmd[1], o.tickler_cmd[1], o.pythonpath]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                       text=True, timeout=60, cwd="/")
    assert p.returncode == 0, p.stderr
    restarter_flag, tickler_flag, path = json.loads(p.stdout)
    assert restarter_flag == tickler_flag == "-S"
    assert str(ROOT) in path.split(os.pathsep)
    q = subprocess.run([sys.executable, "-S", "-c", "import sys, hachain.watchdog.tickler, "
                        "hachain.restarter.loop, pyudev; print('site' in sys.modules)"],
                       env={**env, "PYTHONPATH": path}, capture_output=True, text=True,
                       timeout=60, cwd="/")
    assert q.returncode == 0, q.stderr
    assert q.stdout.split() == ["False"]


def test_restart_schedule_resets_after_a_stable_run() -> None:
    """Child.next_delay: 0, 0.1, 0.2, 0.4 ... capped; a run of STABLE_AFTER seconds starts
    the sequence again at 0 (no clock read: `now` and the start time are given)."""
    from hachain.init.main import FIRST_BACKOFF, STABLE_AFTER, Child
    c = Child("restarter", ["x"])
    delays = []
    for _ in range(7):
        c.started_mono = 100.0
        delays.append(c.next_delay(100.5, 1.0))
    assert delays == [0.0, FIRST_BACKOFF, 0.2, 0.4, 0.8, 1.0, 1.0]
    c.started_mono = 100.0
    assert c.next_delay(100.0 + STABLE_AFTER, 1.0) == 0.0
    c.started_mono = 200.0
    assert c.next_delay(200.1, 1.0) == FIRST_BACKOFF
