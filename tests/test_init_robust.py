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
from collections.abc import Iterator
from pathlib import Path

import pytest

from hachain.init import main as init_main
from tests.conftest import children, heartbeat_window, wait_until
from tests.test_init import InitRun, fake_cmd, kill_if_ours

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
        proc.wait(10)
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
