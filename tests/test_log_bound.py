"""The log bound under a flood (issue 20.3): a service writing as fast as it can never
makes its logs take more than `log_max_bytes × (log_keep + 1)`, lines stay whole across
rotations, and a restarter or logger SIGKILL neither kills the service nor loses its pipe.

A watcher thread samples the files all along; waits are on file content, bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from typing import Any

import pytest

from hachain import channels
from hachain.restarter.logpipe import RESTART_DELAY, STUCK_BEATS
from tests.conftest import PY, RestarterRun, wait_until

pytestmark = pytest.mark.slow  # log floods

MAX, KEEP = 16384, 2
BOUND = MAX * (KEEP + 1)
LINE = re.compile(rb"([0-9]{9}) \.+")
# Numbered 100-byte lines, 40 to a write (4000 bytes: atomic in a pipe), as fast as it
# can; on SIGTERM a last line "END" and exit.
FLOOD = """
import os, signal
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
pad = b"." * 89
n = 0
while not stop:
    os.write(1, b"".join(b"%09d %s\\n" % (i, pad) for i in range(n, n + 40)))
    n += 40
os.write(1, b"END\\n")
"""


# Numbered 3500-byte lines written 8 KiB at a time, as C stdio flushes a full buffer:
# the writes end mid-line, so a rotation would often fall inside a line.
FLOOD_BUFFERED = """
import os, signal
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
pad = b"." * 3489
buf = b""
n = 0
while not stop:
    while len(buf) < 8192:
        buf += b"%09d %s\\n" % (n, pad)
        n += 1
    os.write(1, buf[:8192])
    buf = buf[8192:]
os.write(1, buf + b"END\\n")
"""


def _config(program: str = FLOOD, keep: int = KEEP) -> str:
    return (f"[service.flood]\ncommand = {json.dumps([PY, '-c', program])}\n"
            f"log_max_bytes = {MAX}\nlog_keep = {keep}\n")


def _files(log_dir: str) -> list[str]:
    """The flood's log files, oldest first."""
    from hachain import logs
    return logs.log_files(log_dir, "flood")


class Watcher(threading.Thread):
    """Samples the flood's files until stopped: the largest total and the largest file."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(daemon=True)
        self.log_dir = log_dir
        self.done = threading.Event()
        self.max_total = self.max_file = self.max_files = self.samples = 0

    def run(self) -> None:
        while not self.done.is_set():
            total = files = 0
            try:
                names = os.listdir(self.log_dir)
            except OSError:
                names = []
            for n in names:
                if n == "flood.log" or n.startswith("flood.log."):
                    try:
                        size = os.stat(os.path.join(self.log_dir, n)).st_size
                    except OSError:
                        continue
                    total += size
                    files += 1
                    self.max_file = max(self.max_file, size)
            self.max_total = max(self.max_total, total)
            self.max_files = max(self.max_files, files)
            self.samples += 1
            self.done.wait(0.002)

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def _last_seq(log_dir: str) -> int:
    """The number on the last whole line written so far (-1 when none)."""
    for p in reversed(_files(log_dir)):
        try:
            with open(p, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 9000))
                tail = f.read()
        except OSError:
            continue
        nums = LINE.findall(tail)
        if nums:
            return int(nums[-1])
    return -1


def _advancing(log_dir: str, by: int = 4000) -> None:
    """Wait until the flood has written `by` more lines than now."""
    start = _last_seq(log_dir)
    wait_until(lambda: _last_seq(log_dir) >= start + by, 15,
               f"the flood to go on past line {start + by}")


def _check_lines(log_dir: str, continuous: bool, max_bytes: int = MAX) -> int:
    """Every kept file holds whole lines only and is within `max_bytes`; the numbers
    increase (by one each when `continuous`). Returns how many lines were checked."""
    prev = -1
    count = 0
    for p in _files(log_dir):
        data = open(p, "rb").read()
        assert len(data) <= max_bytes, (p, len(data))
        assert data.endswith(b"\n"), f"{p} ends inside a line"
        for line in data[:-1].split(b"\n"):
            if line == b"END":
                continue
            m = LINE.fullmatch(line)
            assert m, f"{p}: torn or foreign line {line[:120]!r}"
            n = int(m.group(1))
            if continuous and prev >= 0:
                assert n == prev + 1, f"{p}: line {n} follows {prev}"
            assert n > prev, f"{p}: line {n} after {prev}"
            prev = n
            count += 1
    return count


def _ends_with_end(log_dir: str) -> bool:
    """Does the newest log file end with the flood's last line? A file renamed by a
    rotation between the listing and the open (the logger may still be writing the
    flood's tail) is looked at again at the next poll."""
    try:
        return any(open(p, "rb").read().endswith(b"END\n") for p in _files(log_dir)[-1:])
    except FileNotFoundError:
        return False


def _stop_flood(run: RestarterRun, log_dir: str) -> None:
    run.req("stop", "flood")
    run.wait_state("flood", "stopped", 15)
    wait_until(lambda: _ends_with_end(log_dir), 10, "the flood's last line")


def test_a_flood_never_exceeds_the_bound_and_keeps_lines_whole(restarter: Any) -> None:
    run: RestarterRun = restarter(_config(), cgroups=False)
    log_dir = os.path.join(run.persist_dir, "log")
    watcher = Watcher(log_dir)
    watcher.start()
    try:
        pid = run.wait_state("flood", "ready")["pid"]
        # 40 bound's worth of lines (rotated over and over), and many samples meanwhile
        wait_until(lambda: _last_seq(log_dir) > 40 * BOUND // 100, 20, "a long flood")
        wait_until(lambda: watcher.samples >= 300, 20, "300 samples of the flood")
        assert run.svc("flood")["pid"] == pid
        _stop_flood(run, log_dir)
    finally:
        watcher.stop()
    assert watcher.max_total <= BOUND, (watcher.max_total, BOUND)
    assert watcher.max_file <= MAX and watcher.max_files <= KEEP + 1
    # the oldest kept line is recent: older files were really dropped, not kept around
    assert _check_lines(log_dir, continuous=True) > BOUND // 100 // 2


def test_lines_cut_by_the_writers_buffer_stay_whole(restarter: Any) -> None:
    """A writer whose writes end mid-line (stdio buffering): the logger holds the
    unfinished line back until its end arrives, so no rotation splits one. 40 kept
    files: 40 boundaries between files are checked (without the hold-back about one
    in seven splits a line)."""
    keep = 40
    run: RestarterRun = restarter(_config(FLOOD_BUFFERED, keep), cgroups=False)
    log_dir = os.path.join(run.persist_dir, "log")
    watcher = Watcher(log_dir)
    watcher.start()
    try:
        run.wait_state("flood", "ready")
        wait_until(lambda: _last_seq(log_dir) > (keep + 5) * MAX // 3500, 20, "a long flood")
        _stop_flood(run, log_dir)
    finally:
        watcher.stop()
    assert watcher.max_total <= MAX * (keep + 1) and watcher.max_file <= MAX
    assert len(_files(log_dir)) == keep + 1
    assert _check_lines(log_dir, continuous=True) >= keep * MAX // 3500 // 2


def test_restarter_sigkill_during_a_flood_keeps_service_and_pipe(restarter: Any) -> None:
    run: RestarterRun = restarter(_config(), cgroups=False)
    log_dir = os.path.join(run.persist_dir, "log")
    pid = run.wait_state("flood", "ready")["pid"]
    wait_until(lambda: os.path.exists(os.path.join(log_dir, "flood.log.2")), 15, "rotations")
    logger = wait_until(lambda: run.logger_pid(), 10, "the logger's pid")
    watcher = Watcher(log_dir)
    watcher.start()
    try:
        run.kill_restarter()
        _advancing(log_dir)  # no restarter: the logger goes on writing
        assert os.path.exists(f"/proc/{pid}") and os.path.exists(f"/proc/{logger}")
        run.start()
        wait_until(lambda: "took over the running logger" in open(run.log).read(), 10,
                   "the new restarter to take the logger over")
        st = run.svc("flood")
        assert (st["pid"], st["restarts"]) == (pid, 0)  # re-adopted, never restarted
        assert run.logger_pid() == logger
        _advancing(log_dir)
        _stop_flood(run, log_dir)
    finally:
        watcher.stop()
    assert watcher.max_total <= BOUND and watcher.max_file <= MAX
    _check_lines(log_dir, continuous=True)  # the logger lost nothing


def test_logger_sigkill_during_a_flood_keeps_the_pipe(restarter: Any) -> None:
    """The read end waits in the stash: the service blocks on its full pipe, gets no
    SIGPIPE, and goes on once the restarter has started a new logger."""
    run: RestarterRun = restarter(_config(), cgroups=False)
    log_dir = os.path.join(run.persist_dir, "log")
    pid = run.wait_state("flood", "ready")["pid"]
    _advancing(log_dir)
    logger = wait_until(lambda: run.logger_pid(), 10, "the logger's pid")
    watcher = Watcher(log_dir)
    watcher.start()
    try:
        os.kill(logger, signal.SIGKILL)
        wait_until(lambda: run.logger_pid() not in (0, logger), 15, "a new logger")
        _advancing(log_dir)
        st = run.svc("flood")
        assert (st["pid"], st["restarts"]) == (pid, 0)  # no SIGPIPE, no restart
        _stop_flood(run, log_dir)
    finally:
        watcher.stop()
    assert watcher.max_total <= BOUND and watcher.max_file <= MAX
    # whole lines in order; the one chunk the killed logger had read and not yet
    # written (at most 64 KiB) may be missing
    _check_lines(log_dir, continuous=False)
    assert "took back 1 pipe(s) from the stash" in open(run.log).read()


def test_a_stopped_logger_is_replaced(restarter: Any) -> None:
    """SIGSTOP: the logger is alive but takes nothing; after STUCK_BEATS heartbeats the
    restarter kills it and starts another, which takes the pipe back from the stash."""
    run: RestarterRun = restarter(_config(), cgroups=False)
    log_dir = os.path.join(run.persist_dir, "log")
    pid = run.wait_state("flood", "ready")["pid"]
    _advancing(log_dir)
    logger = wait_until(lambda: run.logger_pid(), 10, "the logger's pid")
    started = channels.proc_start_time(logger)
    try:
        os.kill(logger, signal.SIGSTOP)
        wait_until(lambda: run.logger_pid() not in (0, logger),
                   STUCK_BEATS * 0.2 + RESTART_DELAY + 10, "a new logger")  # beats: 0.2 s
        assert "stopped for" in open(run.log).read()
        _advancing(log_dir)
        st = run.svc("flood")
        assert (st["pid"], st["restarts"]) == (pid, 0)
        _stop_flood(run, log_dir)
    finally:
        if channels.proc_start_time(logger) == started:  # still ours: never leave it stopped
            os.kill(logger, signal.SIGKILL)
    _check_lines(log_dir, continuous=False)


def test_the_restarter_heartbeat_names_the_logger(restarter: Any) -> None:
    run: RestarterRun = restarter("[service.quiet]\ncommand = [\"/bin/sleep\", \"60\"]\n",
                                  cgroups=False)
    logger = wait_until(lambda: run.logger_pid(), 10, "the logger's pid")
    hb = wait_until(lambda: (h := channels.read_heartbeat(run.state_dir, "restarter"))
                    and h.extra.get("logger", {}).get("pid") == logger and h, 10,
                    "the logger in the restarter's heartbeat")
    assert hb.extra["logger"] == {"pid": logger, "pending": 0, "started": 1}


def test_a_new_restarter_replaces_a_stopped_logger_it_cannot_take_over(restarter: Any) -> None:
    """Two faults: the logger is stopped and the restarter killed. The new restarter's
    hand-over gets no answer; it kills the stopped logger and starts its own, and the
    chain comes back (the stash died with both, so the service may have been restarted)."""
    run: RestarterRun = restarter(_config(), cgroups=False)
    run.wait_state("flood", "ready")
    logger = wait_until(lambda: run.logger_pid(), 10, "the logger's pid")
    started = channels.proc_start_time(logger)
    try:
        os.kill(logger, signal.SIGSTOP)
        run.kill_restarter()
        run.start()  # waits for its control socket: the hand-over did not block it
        wait_until(lambda: run.logger_pid() not in (0, logger), 15, "a new logger")
        assert "is stopped and does not answer: killing it" in open(run.log).read()
        run.wait_state("flood", "ready", 15)
        _advancing(os.path.join(run.persist_dir, "log"))
    finally:
        if channels.proc_start_time(logger) == started:
            os.kill(logger, signal.SIGKILL)


def test_logs_larger_than_their_disk_shrink_and_the_flood_goes_on(restarter: Any,
                                                                   tmp_path: Any) -> None:
    """The log directory is a 128 KiB tmpfs, the logs may take 3 × 64 KiB: on ENOSPC the
    logger removes the oldest rotated copy and writes on. The service never blocks and
    no line is dropped from what is kept."""
    disk = str(tmp_path / "logdisk")
    os.makedirs(disk)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k,mode=0755", "tmpfs", disk],
                       capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    run: RestarterRun = restarter(
        f"[service.flood]\ncommand = {json.dumps([PY, '-c', FLOOD])}\n"
        "log_max_bytes = 65536\nlog_keep = 2\n", cgroups=False, start=False)
    try:
        os.makedirs(run.persist_dir)
        os.symlink(disk, os.path.join(run.persist_dir, "log"))  # the default log_dir
        run.start()
        pid = run.wait_state("flood", "ready")["pid"]
        _advancing(disk, by=10 * 128 * 1024 // 100)  # ten disks' worth of lines
        st = run.svc("flood")
        assert (st["pid"], st["restarts"]) == (pid, 0)
        _stop_flood(run, disk)
        assert "No space left" not in open(run.log).read()  # nothing was dropped
        _check_lines(disk, continuous=True, max_bytes=65536)
    finally:
        run.stop()
        subprocess.run(["umount", "-l", disk], capture_output=True, timeout=10)
