"""hachain-init against what can stop a layer that must not stop: a stderr nobody reads,
and a clean stop that comes while the tickler is not there to disarm the watchdog.

Init runs as a real subprocess: with tests/helpers/fake_layer.py for its children where
only init is under test, with the real tickler on the software watchdog simulator where
the watchdog is. Every wait is on a condition with a deadline, and every process a test
starts is killed at its end, failed or not.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hachain import bootrecord, channels
from hachain.init import main as init_main
from hachain.simulators.wdsim import SoftWatchdog
from tests.conftest import KILLED_BOUND, children, heartbeat_window, reap, wait_until
from tests.test_init import InitRun, fake_cmd, kill_if_ours, launch  # noqa: F401
from tests.test_tickler_robust import init_with_tickler

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
pytestmark = pytest.mark.timeout(120)


# --- a stderr nobody reads -----------------------------------------------------------------

def full_pipe() -> tuple[int, int, int]:
    """A pipe already full, as a console or journald that stopped reading leaves it:
    (read end, blocking write end, bytes in it). Filled through a second, non-blocking
    open of the write end, so the end init gets blocks as a real stderr does."""
    r, w = os.pipe()
    filler = os.open(f"/proc/self/fd/{w}", os.O_WRONLY | os.O_NONBLOCK)
    size = 0
    try:
        while True:
            size += os.write(filler, b"x" * 4096)
    except BlockingIOError:
        pass
    finally:
        os.close(filler)
    return r, w, size


class PipeReader:
    """Drains a pipe from a thread (once started) and keeps what came after the filler."""

    def __init__(self, fd: int, skip: int) -> None:
        self.fd = fd
        self.skip = skip
        self.data = b""
        self.eof = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while chunk := os.read(self.fd, 65536):
            self.data += chunk
        self.eof.set()

    def text(self) -> str:
        return self.data[self.skip:].decode(errors="replace")

    def wait_for(self, needle: str, timeout: float) -> str:
        return str(wait_until(lambda: needle in (t := self.text()) and t, timeout,
                              f"init to write {needle!r}"))


@contextlib.contextmanager
def init_on_full_pipe(tmp_path: Path, *args: str) -> Iterator[tuple[InitRun, PipeReader]]:
    """hachain-init (subreaper) with a full pipe for stderr; yields it and a reader of the
    pipe, not started. At the end: init and everything it recorded killed, pipe closed."""
    r, w, size = full_pipe()
    workdir = tmp_path / "run"
    workdir.mkdir()
    argv = [PY, "-m", "hachain.init.main", "--state-dir", str(workdir / "state"),
            "--config", str(workdir / "chain.toml"), "--heartbeat-interval", "0.1", *args]
    try:
        proc = subprocess.Popen(argv, stderr=w, cwd=ROOT)
    finally:
        os.close(w)  # init (and what it starts) hold the only write ends now
    run = InitRun(proc, workdir)
    reader = PipeReader(r, size)
    try:
        yield run, reader
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGSTOP)  # no more restarts while we clean up
            for pid in children(proc.pid):
                kill_if_ours(pid, "")  # its children: fakes, `true`, nothing else
        for pid in run.recorded_pids():
            kill_if_ours(pid, str(workdir))
        proc.kill()
        reap(proc, "init")
        if reader.thread.is_alive():
            reader.eof.wait(10)  # the read ends once the last writer is gone
        os.close(r)


@pytest.mark.slow
def test_a_stderr_nobody_reads_does_not_stop_init(tmp_path: Path) -> None:
    """init's log lines were written by its loop's own thread: with a stderr that does not
    take them (a stuck console, a hung journald) the first line blocked it for good, no
    heartbeat, no restarts, no shutdown: the gate failed and a healthy box was reset. The
    loop now goes on, and a SIGTERM still stops the chain with the pipe still full."""
    with init_on_full_pipe(
            tmp_path, "--restart-delay", "0.3", "--stop-timeout", "1",
            "--restarter-cmd", fake_cmd("restarter", tmp_path / "run"),
            "--tickler-cmd", fake_cmd("tickler", tmp_path / "run")) as (run, _reader):
        heartbeat_window(run.heartbeat, 1.0, "init")
        first = run.wait_starts("restarter", 1)[0]
        run.wait_starts("tickler", 1)
        os.kill(first["pid"], signal.SIGKILL)
        second = run.wait_starts("restarter", 2)[1]
        assert second["pid"] != first["pid"] and second["restarts"] == "1"
        os.kill(run.proc.pid, signal.SIGTERM)
        # the stop (1 s for the restarter, min(1, 5) each for the tickler and the rest)
        # and the bounded wait for the lines still queued (LOG_FLUSH)
        assert run.proc.wait(timeout=3 + init_main.LOG_FLUSH + 20) == 0


@pytest.mark.slow
def test_lines_a_stuck_stderr_did_not_take_are_counted_when_it_moves(tmp_path: Path) -> None:
    """Two layers that exit at once, restarted at once (--restart-delay 0), make two lines
    each while stderr is stuck: past LOG_QUEUE_MAX they are dropped, counted, and the
    count is said where they went missing once stderr takes lines again. Every line that
    does come out is whole, and the last line of the stop comes out too."""
    with init_on_full_pipe(tmp_path, "--restart-delay", "0", "--restarter-cmd", "true",
                           "--tickler-cmd", "true") as (run, reader):
        wait_until(lambda: (hb := run.heartbeat()) is not None
                   and hb.extra["children"]["tickler"]["restarts"] > init_main.LOG_QUEUE_MAX,
                   90, f"more than {init_main.LOG_QUEUE_MAX} restarts of the tickler")
        reader.thread.start()
        text = reader.wait_for("log line(s) dropped", 30)
        os.kill(run.proc.pid, signal.SIGTERM)
        assert run.proc.wait(timeout=30) == 0
        assert reader.eof.wait(30), "init or a child kept stderr open"
        text = reader.text()
    lines = text.splitlines()
    assert lines and all(line.startswith("hachain-init: ") for line in lines), [
        line for line in lines if not line.startswith("hachain-init: ")][:5]
    drops = [i for i, line in enumerate(lines) if "log line(s) dropped" in line]
    counts = [int(m) for m in re.findall(r"(\d+) log line\(s\) dropped", text)]
    assert drops and all(n > 0 for n in counts)
    # the queue held LOG_QUEUE_MAX lines (the one stuck in the write among them) and the
    # count stands right after them: where the lines went missing
    assert drops[0] == init_main.LOG_QUEUE_MAX, drops[:3]
    assert lines[-1] == "hachain-init: all processes stopped; exiting"


# --- a clean stop while the tickler is not there -------------------------------------------

TIMEOUT = 15  # the simulated watchdog's, set by the tickler; > a tickler's start or two


# The system calls init's loop waits in (selectors' epoll_wait; the others for another
# selector), by machine: /proc/PID/syscall names the one a stopped task is in.
WAIT_SYSCALLS = {"x86_64": {7, 23, 232, 270, 271, 281, 441},  # poll select epoll_wait
                 "aarch64": {22, 72, 73, 441}}  # pselect6 ppoll epoll_pwait(2)


def waiting_in_its_loop(pid: int) -> bool:
    """Is the stopped process `pid` inside its loop's wait (not between the wait and what
    it does next)? A SIGTERM sent now is then the first thing it sees on SIGCONT: the
    signal interrupts the wait and its wake-up fd is read before any timer is acted on."""
    waits = WAIT_SYSCALLS.get(os.uname().machine)
    if waits is None:
        return True  # no table for this machine: the check is left out
    try:
        with open(f"/proc/{pid}/syscall") as f:
            first = f.read().split()[0]
    except (OSError, IndexError):
        return False
    return first.isdigit() and int(first) in waits


def stop_while_no_tickler_runs(init: subprocess.Popen[bytes], restarter: int) -> bool:
    """SIGSTOP init; True (init left stopped) when its only live child is the restarter
    (pid `restarter`) and init is waiting in its loop, i.e. between two starts of the
    tickler, else SIGCONT and False. (Any other child counts as a tickler: one caught
    inside posix_spawn, before its exec, still shows init's command line.) Init stopped
    after its wait returned for a restart that was due would start the tickler before it
    saw the SIGTERM: seen on a loaded CI host, where the stop then found a tickler running
    and never started one "once"."""
    os.kill(init.pid, signal.SIGSTOP)
    wait_until(lambda: channels.proc_state(init.pid) == "T", KILLED_BOUND, "init to stop")
    if not waiting_in_its_loop(init.pid) or any(
            pid != restarter and channels.proc_state(pid) not in (None, "Z")
            for pid in children(init.pid)):
        os.kill(init.pid, signal.SIGCONT)
        return False
    return True


def wait_armed_and_petting(state_dir: Path, wd: SoftWatchdog) -> channels.Heartbeat:
    """The tickler's heartbeat once it has petted the armed simulator."""
    hb = wait_until(lambda: (h := channels.read_heartbeat(str(state_dir), "tickler"))
                    and h.extra.get("pets", 0) >= 1 and h, 60, "the tickler to pet")
    assert wd.armed
    return hb  # type: ignore[no-any-return]


def assert_disarmed_and_never_fires(wd: SoftWatchdog, fired: threading.Event,
                                    deadline: float, err: Path) -> None:
    """The stopped chain disarmed the watchdog: it does not fire at `deadline`, when the
    armed one would have (the last pet before the stop plus its timeout)."""
    wait_until(lambda: not wd.armed or fired.is_set(), TIMEOUT + 10,
               "the simulated watchdog to be disarmed (or to fire)")
    text = err.read_text(errors="replace")
    assert not fired.is_set(), "the watchdog fired after the clean stop:\n" + text[-3000:]
    assert "magic close: watchdog disarmed" in text, text[-3000:]
    wait_until(lambda: time.monotonic() > deadline + 1.0, TIMEOUT + 10,
               "the time the watchdog would have fired")
    assert not fired.is_set() and not wd.armed


@pytest.mark.slow
@pytest.mark.parametrize("nowayout", [False, True], ids=["disarms", "nowayout"])
def test_a_clean_stop_while_the_tickler_is_between_restarts_disarms(
        tmp_path: Path, nowayout: bool) -> None:
    """The tickler was SIGKILLed (the device stays armed: no magic close) and its restarts
    fail (the simulator's socket is away, as a device can be for a moment), so init waits
    between them when the chain gets its SIGTERM. init's stop used to skip a tickler that
    was not running: nobody disarmed the device, and the cleanly stopped machine was reset
    `timeout` s later. init now starts it once more and stops it when it has the device.
    A nowayout device cannot be disarmed: the tickler says so and leaves it armed."""
    state_dir, persist_dir = tmp_path / "run", tmp_path / "persist"
    sock = tmp_path / "wd.sock"
    fired = threading.Event()
    wd = SoftWatchdog(timeout=TIMEOUT, nowayout=nowayout)
    with init_with_tickler(tmp_path, state_dir, persist_dir, wd, fired.set, TIMEOUT, 60,
                           ["--restart-delay", "30", "--stop-timeout", "20"]) as (init, err):
        first = wait_armed_and_petting(state_dir, wd)
        ihb = channels.read_heartbeat(str(state_dir), "init")
        assert ihb is not None
        restarter = ihb.extra["children"]["restarter"]["pid"]
        sock.rename(tmp_path / "wd.away")
        os.kill(first.pid, signal.SIGKILL)
        wait_until(lambda: "exited with status 3; restarting in" in err.read_text(
            errors="replace"), 30, "a restart of the tickler that failed")
        wait_until(lambda: stop_while_no_tickler_runs(init, restarter), 30,
                   "init between two starts of the tickler")
        (tmp_path / "wd.away").rename(sock)
        deadline = wd.deadline()
        assert deadline is not None  # armed, with the last pet of the killed tickler
        init.send_signal(signal.SIGTERM)
        os.kill(init.pid, signal.SIGCONT)
        assert init.wait(60) == 0
        if nowayout:
            text = err.read_text(errors="replace")
            assert "nowayout: the watchdog stays armed" in text, text[-3000:]
            assert wd.armed
        else:
            assert_disarmed_and_never_fires(wd, fired, deadline, err)
        text = err.read_text(errors="replace")
        assert "tickler is not running: starting it once" in text, text[-3000:]


@pytest.mark.slow
def test_a_clean_stop_before_a_restarted_tickler_opened_the_device_disarms(
        tmp_path: Path) -> None:
    """The tickler was SIGKILLed and init restarted it; the new one is still on its way to
    the open (held 5 s, RECORD_DEADLINE, by a boot record that does not answer: a FIFO)
    when the chain gets its SIGTERM. A tickler stopped before its open exits without
    touching the device, which the killed one left armed: the stopped machine was reset.
    init now lets a restarted tickler open the device (its first heartbeat) first."""
    state_dir, persist_dir = tmp_path / "run", tmp_path / "persist"
    persist_dir.mkdir()
    os.mkfifo(persist_dir / bootrecord.RECORD)
    fired = threading.Event()
    wd = SoftWatchdog(timeout=TIMEOUT)
    with init_with_tickler(tmp_path, state_dir, persist_dir, wd, fired.set, TIMEOUT, 60,
                           ["--stop-timeout", "20"]) as (init, err):
        first = wait_armed_and_petting(state_dir, wd)
        os.kill(first.pid, signal.SIGKILL)
        wait_until(lambda: (hb := channels.read_heartbeat(str(state_dir), "init"))
                   and hb.extra["children"]["tickler"]["pid"] not in (None, first.pid),
                   10, "init to restart the tickler")
        deadline = wd.deadline()
        assert deadline is not None
        hb = channels.read_heartbeat(str(state_dir), "tickler")
        assert hb is not None and hb.pid == first.pid  # the new one has not opened it yet
        init.send_signal(signal.SIGTERM)
        assert init.wait(60) == 0
        assert_disarmed_and_never_fires(wd, fired, deadline, err)
        text = err.read_text(errors="replace")
        assert "to open the watchdog before stopping it" in text, text[-3000:]



@pytest.mark.slow
def test_a_restarted_tickler_that_never_beats_is_stopped_after_stop_timeout(
        launch: Callable[..., InitRun]) -> None:  # noqa: F811
    """The wait for a restarted tickler's first heartbeat is bounded by --stop-timeout:
    one that never writes it (a fake layer here) is then stopped as before."""
    run = launch("", "", "--stop-timeout", "1")
    first = run.wait_starts("tickler", 1)[0]
    run.wait_starts("restarter", 1)
    os.kill(first["pid"], signal.SIGKILL)
    second = run.wait_starts("tickler", 2)[1]
    t0 = time.monotonic()
    os.kill(run.proc.pid, signal.SIGTERM)
    assert run.proc.wait(timeout=30) == 0
    assert time.monotonic() - t0 >= 1.0  # it was waited for
    err = run.stderr()
    assert (f"waiting up to 1 s for tickler (pid {second['pid']}) to open the watchdog "
            "before stopping it") in err
    assert f"tickler (pid {second['pid']}) did not open the watchdog within 1 s" in err
    assert f"stopping tickler (pid {second['pid']}) with SIGTERM" in err
    assert len(run.starts("tickler")) == 2


@pytest.mark.slow
def test_a_tickler_started_once_at_the_stop_is_not_started_again(
        launch: Callable[..., InitRun]) -> None:  # noqa: F811
    """A tickler that keeps dying (exit 3 at once) is started once more by the stop, and
    when that one dies too the stop goes on: one start, no restart loop."""
    run = launch("", "--exit 3", "--stop-timeout", "1", delay=30)
    run.wait_starts("tickler", 3)
    restarter = run.wait_starts("restarter", 1)[0]["pid"]
    before = stop_between_tickler_starts(run, restarter)
    err = run.stderr()
    assert "tickler is not running: starting it once" in err
    assert "the tickler ended before it was stopped" in err
    assert len(run.starts("tickler")) == before + 1


def stop_between_tickler_starts(run: InitRun, restarter: int) -> int:
    """SIGTERM init while no tickler runs (it is held stopped there, then continued), and
    wait for its clean exit; how many ticklers had started before the stop."""
    wait_until(lambda: stop_while_no_tickler_runs(run.proc, restarter), 30,
               "init between two starts of the tickler")
    before = len(run.starts("tickler"))
    os.kill(run.proc.pid, signal.SIGTERM)
    os.kill(run.proc.pid, signal.SIGCONT)
    assert run.proc.wait(timeout=30) == 0
    return before


def forge_tickler_beat(run: InitRun, pid: int, **extra: object) -> None:
    """A tickler heartbeat in init's state dir (the fake layers write none)."""
    now = time.monotonic()
    channels.write_heartbeat(str(run.state_dir), channels.Heartbeat(
        "tickler", pid, now, now, 1, 0, dict(extra)))


@pytest.mark.slow
def test_no_tickler_is_started_at_the_stop_when_its_device_was_not_armed(
        launch: Callable[..., InitRun]) -> None:  # noqa: F811
    """The last tickler heartbeat says the device is not armed (`device = "none"`, or
    disarmed for a boot loop): nothing to disarm, so no tickler is started at the stop."""
    run = launch("", "--exit 3", "--stop-timeout", "1", delay=30)
    last = run.wait_starts("tickler", 3)[-1]
    restarter = run.wait_starts("restarter", 1)[0]["pid"]
    forge_tickler_beat(run, last["pid"], armed=False, device="none")
    before = stop_between_tickler_starts(run, restarter)
    assert "starting it once" not in run.stderr()
    assert len(run.starts("tickler")) == before


@pytest.mark.slow
def test_the_wait_for_a_restarted_tickler_ends_at_the_device_timeout(
        launch: Callable[..., InitRun]) -> None:  # noqa: F811
    """With the device's timeout known from the last tickler heartbeat (2 s here), the
    wait for a restarted tickler's first heartbeat ends 2 s after its start, not at
    --stop-timeout (30 s): by then the device left armed has fired anyway, and one the
    new tickler opened must get the SIGTERM before its own pet runs out."""
    run = launch("", "", "--stop-timeout", "30")
    first = run.wait_starts("tickler", 1)[0]
    run.wait_starts("restarter", 1)
    forge_tickler_beat(run, first["pid"], armed=True, timeout=2)
    os.kill(first["pid"], signal.SIGKILL)
    second = run.wait_starts("tickler", 2)[1]
    os.kill(run.proc.pid, signal.SIGTERM)
    assert run.proc.wait(timeout=25) == 0  # < --stop-timeout: the wait did not run to it
    err = run.stderr()
    waited = re.search(rf"waiting up to (\S+) s for tickler \(pid {second['pid']}\)", err)
    assert waited is not None and 0 < float(waited.group(1)) <= 2.0, err
    assert f"tickler (pid {second['pid']}) did not open the watchdog within" in err
