"""A tickler that can never run must not keep the machine up through init's restarts.

Each start of a tickler opens the watchdog (SETTIMEOUT pets it) and each death closes it
without the magic character, which the Linux watchdog core, and the simulator after it,
answers with one more ping ("watchdog did not stop!"). A tickler killed at every start
(a segfault, the OOM killer) was restarted by init for ever, and the machine was never
reset although nothing supervised it. init now stops restarting the tickler after
`--tickler-deaths` such deaths in a row, each within `--tickler-min-run` s of its start
([watchdog] tickler_deaths, tickler_min_run), and the watchdog fires. A healthy chain
whose tickler is killed now and then is restarted as before.

Real init, the real tickler, the watchdog simulator; the restarter is a `sleep` (the
gate passes for `restart_grace` from each tickler's start).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hachain import bootrecord, channels, status
from hachain.init import main as init_main
from hachain.simulators.wdsim import SoftWatchdog
from hachain.watchdog import tickler
from tests.conftest import children, heartbeat_window, wait_until
from tests.test_tickler import PET, Rig
from tests.test_tickler_robust import init_with_tickler
from tests.test_tickler_robust2 import in_cgroup, pids_cgroup

pytestmark = pytest.mark.timeout(150)
TIMEOUT = 5  # the simulated watchdog's, set by each tickler (SETTIMEOUT)
GRACE = 60.0  # restart_grace: the `sleep` restarter passes the gate this long
START = 30.0  # the bound on one start of the tickler up to its open, on a loaded host
GIVE_UP = "not restarting it again"
LONG_TIMEOUT = 200  # a watchdog that must not fire while a test runs (its bound: 150 s)


class CountingWatchdog(SoftWatchdog):
    """The simulated driver, counting the opens (one per tickler that got to the device)."""

    def __init__(self, timeout: int) -> None:
        super().__init__(timeout=timeout)
        self.opens = 0

    def open(self, now: float) -> None:
        super().open(now)
        self.opens += 1


@contextlib.contextmanager
def looping_chain(tmp_path: Path, deaths: int, min_run: float, timeout: int = TIMEOUT,
                  extra: tuple[str, ...] = (), prefix: tuple[str, ...] = ()
                  ) -> Iterator[tuple[Any, Path, CountingWatchdog, threading.Event, Path]]:
    """Real init (restart delay 1 s, `--tickler-deaths deaths`, `--tickler-min-run
    min_run`, then `extra`) and the real tickler (after `prefix`) on a counting simulated
    watchdog of `timeout`: yields init, its stderr's path, the watchdog, the event its
    firing sets, and the state dir."""
    state_dir, persist_dir = tmp_path / "run", tmp_path / "persist"
    fired = threading.Event()
    wd = CountingWatchdog(timeout)
    with init_with_tickler(tmp_path, state_dir, persist_dir, wd, fired.set, timeout, GRACE,
                           ["--restart-delay", "1", "--tickler-deaths", str(deaths),
                            "--tickler-min-run", str(min_run), *extra],
                           tickler_prefix=prefix) as (init, err):
        yield init, err, wd, fired, state_dir


def restarter_pid(state_dir: Path) -> int:
    """The restarter's pid (the `sleep`), from init's heartbeat."""
    hb = wait_until(lambda: channels.read_heartbeat(str(state_dir), "init"), 10,
                    "init's heartbeat")
    pid = wait_until(lambda: (h := channels.read_heartbeat(str(state_dir), "init"))
                     and h.extra["children"]["restarter"]["pid"], 10, "the restarter")
    assert hb is not None
    return int(pid)


def current_entry(persist_dir: Path) -> dict[str, Any] | None:
    """This boot's entry in the boot record under `persist_dir`, if there is one."""
    return bootrecord.entry_for(bootrecord.read(str(persist_dir)),
                                bootrecord.current_boot_id())


def kill_after_open(init: Any, wd: CountingWatchdog, restarter: int, n: int) -> int:
    """Wait for the `n`th open of the device, then SIGKILL the tickler that made it (init's
    child that is not the restarter; the test started init, so these are its processes).
    Returns the killed pid."""
    wait_until(lambda: wd.opens >= n, START, f"open number {n} of the device")
    pid = wait_until(lambda: next((p for p in children(init.pid) if p != restarter
                                   and channels.proc_state(p) not in (None, "Z")), None),
                     10, "the tickler that opened the device")
    init_main.Init.signal_pid(pid, signal.SIGKILL)
    return int(pid)


def test_the_tickler_exit_status_for_an_unopened_device_is_the_one_init_knows() -> None:
    assert init_main.TICKLER_NOT_OPENED == tickler.EXIT_NOT_OPENED
    assert init_main.TICKLER_NOT_OPENED in init_main.TICKLER_UNTOUCHED


@pytest.mark.slow
def test_a_tickler_killed_at_every_start_is_given_up_and_the_watchdog_fires(
        tmp_path: Path) -> None:
    """SIGKILLed right after each open: every death pets the device (the close without
    'V'), and init used to restart it for ever; the watchdog never fired. After
    `--tickler-deaths 3` init starts no more ticklers, and the simulator fires within the
    timeout of the last pet (the last close, before init's line)."""
    deaths = 3
    state_dir, persist_dir = tmp_path / "run", tmp_path / "persist"
    fired_at: list[float] = []
    wd = CountingWatchdog(TIMEOUT)
    # this boot's entry, as the restarter opens it at its start (here it is a `sleep`)
    bootrecord.begin_boot(str(persist_dir), bootrecord.current_boot_id(), time.time())
    with init_with_tickler(tmp_path, state_dir, persist_dir, wd,
                           lambda: fired_at.append(time.monotonic()), TIMEOUT, GRACE,
                           ["--restart-delay", "1", "--tickler-deaths", str(deaths),
                            "--tickler-min-run", str(START)]) as (init, err):
        restarter = restarter_pid(state_dir)
        killed = [kill_after_open(init, wd, restarter, 1)]
        first_kill = time.monotonic()
        killed += [kill_after_open(init, wd, restarter, n) for n in range(2, deaths + 1)]
        text = wait_until(lambda: (t := err.read_text(errors="replace")) and GIVE_UP in t
                          and t, 10, "init to give up on the tickler")
        seen = time.monotonic()
        assert not fired_at, "fired before the last tickler died:\n" + text[-3000:]
        assert wd.armed, text[-3000:]
        wait_until(lambda: fired_at, TIMEOUT + PET + 2, "the simulated watchdog to fire")
        text = err.read_text(errors="replace")
        assert init.poll() is None, text[-3000:]
        assert text.count("started tickler") == deaths, text[-3000:]
        assert wd.opens == deaths
        assert f"tickler (pid {killed[-1]}) killed by SIGKILL: it died {deaths} times in " \
               "a row" in text, text[-3000:]
        hb = wait_until(lambda: (h := channels.read_heartbeat(str(state_dir), "init"))
                        and h.mono > seen and h, 10, "init's next heartbeat")
        assert hb.extra["children"]["tickler"]["gave_up"] is True
        assert hb.extra["children"]["tickler"]["pid"] is None
        st = status.gather_status(str(state_dir), str(persist_dir))  # hachain status
        tk = st["chain"]["layers"]["tickler"]
        assert tk["state"] == "dead" and tk.get("gave_up") is True, tk
        assert "tickler dead: init gave up restarting it" in st["verdict"]["line"], \
            st["verdict"]
        # the boot record says why this boot ends (init found the persist dir in the
        # configuration file, given no --persist-dir)
        entry = wait_until(lambda: (e := current_entry(persist_dir)) and e.get("reason")
                           == bootrecord.TICKLER_FAILED and e, 10,
                           "init's reason in the boot record")
        assert f"the tickler died {deaths} times in a row" in entry["detail"][0], entry
        assert "killed by SIGKILL" in entry["detail"][0], entry
        assert bootrecord.unclean(entry)
        print(f"init gave up to fired: {fired_at[0] - seen:.2f} s (timeout {TIMEOUT} s); "
              f"first kill to fired: {fired_at[0] - first_kill:.2f} s")


@pytest.mark.slow
def test_a_healthy_tickler_killed_twice_is_restarted_and_the_watchdog_does_not_fire(
        tmp_path: Path) -> None:
    """Two quick deaths, one short of `--tickler-deaths 3`: restarted as before (one start
    each), the third tickler pets, and nothing fires for a whole timeout and more."""
    with looping_chain(tmp_path, 3, START) as (init, err, wd, fired, state_dir):
        restarter = restarter_pid(state_dir)
        killed = {kill_after_open(init, wd, restarter, n) for n in (1, 2)}
        hb = wait_until(lambda: (h := channels.read_heartbeat(str(state_dir), "tickler"))
                        and h.pid not in killed and h.extra.get("pets", 0) >= 1 and h,
                        START, "the third tickler to pet")
        heartbeat_window(lambda: channels.read_heartbeat(str(state_dir), "tickler"),
                         TIMEOUT + PET + 1, "the third tickler")
        text = err.read_text(errors="replace")
        assert not fired.is_set(), text[-3000:]
        assert wd.armed and wd.opens == 3, text[-3000:]
        assert GIVE_UP not in text and text.count("started tickler") == 3, text[-3000:]
        assert channels.read_heartbeat(str(state_dir), "tickler").pid == hb.pid


@pytest.mark.slow
def test_a_tickler_that_ran_min_run_starts_the_count_again(tmp_path: Path) -> None:
    """`--tickler-deaths 2`: a quick death, then one after a run of `--tickler-min-run`
    s, then a quick one. Two quick deaths but not in a row: no giving up, a fourth
    tickler runs and pets."""
    min_run = 8.0  # > a start up to the open on a loaded host (the quick kills come there)
    with looping_chain(tmp_path, 2, min_run) as (init, err, wd, fired, state_dir):
        restarter = restarter_pid(state_dir)
        killed = {kill_after_open(init, wd, restarter, 1)}

        def ran_min_run() -> int | None:
            """The second tickler's pid once init's heartbeat says it ran min_run s."""
            hb = channels.read_heartbeat(str(state_dir), "init")
            t = hb.extra["children"]["tickler"] if hb is not None else {}
            ok = (t.get("pid") not in (None, *killed) and t.get("started_mono") is not None
                  and hb is not None and hb.mono >= t["started_mono"] + min_run)
            return t["pid"] if ok else None
        second = wait_until(ran_min_run, START + min_run + 10, "a run of min_run s")
        assert wd.opens == 2
        init_main.Init.signal_pid(second, signal.SIGKILL)
        killed |= {second, kill_after_open(init, wd, restarter, 3)}
        wait_until(lambda: (h := channels.read_heartbeat(str(state_dir), "tickler"))
                   and h.pid not in killed and h.extra.get("pets", 0) >= 1, START,
                   "a fourth tickler to pet")
        text = err.read_text(errors="replace")
        assert GIVE_UP not in text and text.count("started tickler") == 4, text[-3000:]
        assert not fired.is_set() and wd.armed


@pytest.mark.slow
def test_a_device_that_cannot_be_opened_is_waited_for_without_giving_up(
        tmp_path: Path) -> None:
    """`--tickler-deaths 2`: one quick death that petted the device (SIGKILL after the
    open), then starts that cannot open it (the simulator's socket is away: a device
    that appears late, or is busy for a moment) and exit EXIT_NOT_OPENED, petting
    nothing. Those exits do not count: once the device is back, a start arms it again."""
    state_dir, persist_dir = tmp_path / "run", tmp_path / "persist"
    sock = tmp_path / "wd.sock"
    fired = threading.Event()
    wd = CountingWatchdog(LONG_TIMEOUT)  # armed while the device is away: not to fire
    with init_with_tickler(tmp_path, state_dir, persist_dir, wd, fired.set, LONG_TIMEOUT,
                           GRACE, ["--restart-delay", "0.5", "--tickler-deaths", "2",
                            "--tickler-min-run", str(START)]) as (init, err):
        restarter = restarter_pid(state_dir)
        wait_until(lambda: wd.opens >= 1, START, "the first open of the device")
        sock.rename(tmp_path / "wd.away")
        killed = kill_after_open(init, wd, restarter, 1)
        status = f"exited with status {tickler.EXIT_NOT_OPENED}; restarting in"
        wait_until(lambda: err.read_text(errors="replace").count(status) >= 3, 3 * START,
                   "three starts that could not open the device")
        (tmp_path / "wd.away").rename(sock)
        wait_until(lambda: (h := channels.read_heartbeat(str(state_dir), "tickler"))
                   and h.pid != killed and h.extra.get("pets", 0) >= 1, START,
                   "a tickler to pet")
        text = err.read_text(errors="replace")
        assert GIVE_UP not in text, text[-3000:]
        assert wd.armed and wd.opens == 2 and not fired.is_set()


def test_an_error_before_the_open_exits_not_opened(tmp_path: Path) -> None:
    """A tickler that fails before its open (here it cannot fork its configuration parser:
    a pids cgroup of one task) touched no device: it exits EXIT_NOT_OPENED, which init
    does not count toward giving up, instead of 1 with a traceback."""
    rig = Rig(str(tmp_path))  # the simulator is not started: the device is never reached
    try:
        with pids_cgroup("tickler-preopen", 1) as cg:
            try:
                with open(rig.log, "ab") as logf:
                    p = subprocess.Popen([*in_cgroup(cg), sys.executable, "-m",
                                          "hachain.watchdog.tickler", "-c", rig.config],
                                         stdout=logf, stderr=logf)
                    rig.procs.append(p)
                    assert p.wait(30) == tickler.EXIT_NOT_OPENED, rig.log_text()
                rig.wait_log("error before the watchdog was opened: BlockingIOError")
            finally:
                rig.close()  # (idempotent) before the cgroup is removed
    finally:
        rig.close()


@pytest.mark.slow
def test_a_tickler_given_up_on_is_tried_again_after_the_pause(tmp_path: Path) -> None:
    """Deaths that came before the open (here a wrapper that kills itself by SIGSEGV
    twice, as an OOM kill at boot could): init cannot tell them from deaths after it and
    gives up, but no watchdog reset follows, because nothing was armed. After
    `--tickler-pause` init tries again, and the tickler that then runs opens the device and
    pets it: the machine is not left with no tickler for the rest of the boot."""
    count = tmp_path / "starts"
    wrapper = ("sh", "-c", f'n=$(cat {count} 2>/dev/null || echo 0); echo $((n+1)) > '
               f'{count}; [ "$n" -lt 2 ] && kill -SEGV $$; exec "$@"', "sh")
    pause = 4.0
    # this boot's entry, as a restarter that started first would have opened it
    persist_dir = tmp_path / "persist"
    bootrecord.begin_boot(str(persist_dir), bootrecord.current_boot_id(), time.time())
    with looping_chain(tmp_path, 2, START, LONG_TIMEOUT, ("--tickler-pause", str(pause)),
                       wrapper) as (init, err, wd, fired, state_dir):
        text = wait_until(lambda: (t := err.read_text(errors="replace")) and GIVE_UP in t
                          and t, START, "init to give up on the tickler")
        gave_up = time.monotonic()
        assert wd.opens == 0, text[-3000:]  # both died before the open
        assert f"tried again in {pause:g} s" in text, text[-3000:]
        entry = wait_until(lambda: (e := current_entry(persist_dir)) and e.get("reason")
                           == bootrecord.TICKLER_FAILED and e, 10,
                           "init's reason in the boot record")
        assert "killed by SIGSEGV" in entry["detail"][0], entry
        text = wait_until(lambda: (t := err.read_text(errors="replace"))
                          and "trying the tickler again" in t and t, pause + START,
                          "init to try the tickler again")
        # the boot goes on: the reason is "unknown" again, as when the gate passes again
        entry = wait_until(lambda: (e := current_entry(persist_dir)) and e.get("reason")
                           == bootrecord.UNKNOWN and e, 10, "the reason back to unknown")
        assert entry["detail"] == [] and entry["ended_wall"] is None, entry
        # not before the pause (an ordinary restart comes after --restart-delay 1 s); half
        # of it, since the give-up line may have been seen late on a loaded host
        assert time.monotonic() - gave_up >= pause / 2, text[-3000:]
        wait_until(lambda: wd.opens >= 1, START, "the third tickler to open the device")
        hb = wait_until(lambda: (h := channels.read_heartbeat(str(state_dir), "tickler"))
                        and h.extra.get("pets", 0) >= 1 and h, START,
                        "the third tickler to pet")
        ihb = wait_until(lambda: (h := channels.read_heartbeat(str(state_dir), "init"))
                         and h.extra["children"]["tickler"]["pid"] == hb.pid and h, 10,
                         "init's heartbeat naming the running tickler")
        assert "gave_up" not in ihb.extra["children"]["tickler"]
        assert not fired.is_set() and wd.opens == 1
