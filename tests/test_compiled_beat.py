"""The compiled beat (docs/restarter.md): an idle restarter's heartbeats written by its
wait (_clone3.wait's `beat`) while nothing happens, and left to Python the moment
anything the heartbeat round looks at has moved.

The first tests call the compiled wait itself with a heartbeat file, an epoll set, a
child process (its pidfd and /proc stat) and state_dir as the restarter gives them; the
last runs a chain and looks at its restarter from outside.
"""

from __future__ import annotations

import math
import os
import re
import select
import signal
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hachain import channels, client
from hachain.restarter import spawn
from tests.conftest import KILLED_BOUND, reap, wait_until
from tests.test_idle_cost import INTERVAL, chain  # noqa: F401 - a fixture, and its interval

pytestmark = pytest.mark.skipif(
    not spawn.direct_spawn_available(),
    reason="hachain.restarter._clone3 is not built (setup.sh builds it with the C compiler)")

PERIOD = 0.1
EXTRA = {"critical": {"db": {"ok": True, "reason": ""}}, "services": 2}


class Rig:
    """A heartbeat writer in state_dir, an epoll set with a pipe, and a child whose
    pidfd and /proc stat stand for the logger's."""

    def __init__(self, tmp_path: Path) -> None:
        self.state = str(tmp_path / "state")
        self.hb = channels.HeartbeatWriter(self.state, "restarter")
        for _ in range(2):  # (the first beat makes the file; the second keeps it open)
            self.hb.beat(EXTRA, {"lag": 0.001, "timer_lag": 0.0})
        self.elsewhere = tmp_path / "kept-elsewhere"
        self.elsewhere.write_text("x")
        self.elsewhere_id = self.stat(str(self.elsewhere))
        self.ep = select.epoll()
        self.r, self.w = os.pipe()
        self.ep.register(self.r, select.EPOLLIN)
        self.child = subprocess.Popen(["sleep", "60"])
        self.pidfd = os.pidfd_open(self.child.pid)
        self.stat_fd = os.open(f"/proc/{self.child.pid}/stat", os.O_RDONLY)
        self.seen = self.stat(self.state, mtime=True)

    @staticmethod
    def stat(path: str, mtime: bool = False) -> tuple[int, int, int]:
        st = os.stat(path)
        return st.st_dev, st.st_ino, st.st_mtime_ns if mtime else -1

    def beat(self, due: float, until: float, **over: Any) -> tuple:
        got = self.hb.pieces(("lag",), {"timer_lag": 0.0})
        assert got is not None
        fd, pieces, size = got
        b: dict[str, Any] = {
            "fd": fd, "pieces": pieces, "seq": self.hb.seq, "due": int(due * 1e9),
            "period": int(PERIOD * 1e9), "until": int(until * 1e9), "size": size,
            "pidfds": (self.pidfd,),
            "kept": ((os.fsencode(self.state), *self.seen),
                     (os.fsencode(str(self.elsewhere)), *self.elsewhere_id)),
            "stat_fd": self.stat_fd, "crc32": zlib.crc32}
        b.update(over)
        return tuple(b.values())

    def wait(self, until_after: float = 1.0, **over: Any) -> tuple[list, int, float, float]:
        """One compiled wait from the next point of the grid: (events, beats, next due,
        when it returned)."""
        now = time.monotonic()
        due = channels.next_tick(now, PERIOD)
        timeout_ms = int((due - now) * 1e3) + 1
        events, restarted, beats, due_ns = spawn.compiled_wait(
            self.ep.fileno(), timeout_ms, 1, -1, -1, {}, -1, False,
            self.beat(due, due + until_after, **over))
        assert restarted is None
        if beats:
            self.hb.seq += beats
        return events, beats, due_ns / 1e9, time.monotonic()

    def record(self) -> channels.Heartbeat:
        hb = channels.read_heartbeat(self.state, "restarter")
        assert hb is not None, "the record does not parse (or its CRC does not match)"
        return hb

    def close(self) -> None:
        if self.child.poll() is None:
            self.child.kill()
            reap(self.child, "the stand-in logger")
        for fd in (self.pidfd, self.stat_fd, self.r, self.w):
            os.close(fd)
        self.ep.close()
        self.hb.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()


def test_idle_wait_writes_the_beats_on_the_grid_until_it_must_return(rig: Rig) -> None:
    before = rig.record()
    events, beats, due, _t = rig.wait(until_after=5 * PERIOD - 0.01)
    assert events == []
    # five points of the grid before `until` (fewer only when a wake-up came so late
    # that it missed one: each beat is at the next point after the last)
    assert 1 <= beats <= 5
    hb = rig.record()
    assert hb.seq == before.seq + beats and hb.pid == os.getpid()
    assert hb.started_mono == before.started_mono and hb.start == before.start
    assert hb.extra == {**EXTRA, "lag": hb.extra["lag"], "timer_lag": 0.0}
    assert 0.0 <= hb.extra["lag"] < 5 * PERIOD
    k = hb.mono / PERIOD - math.floor(hb.mono / PERIOD)
    assert 0.0 <= k * PERIOD <= hb.extra["lag"] + 0.001  # written at its point, lag late
    assert due > hb.mono and abs(due / PERIOD - round(due / PERIOD)) < 1e-6
    # the same size, in place: nothing a reader could catch short
    assert os.path.getsize(rig.hb.path) == rig.hb.size


def test_an_event_returns_at_once_with_the_beats_written_before_it(rig: Rig) -> None:
    before = rig.record()
    timer = threading.Timer(2.5 * PERIOD, os.write, (rig.w, b"x"))
    timer.start()
    try:
        events, beats, due, _t = rig.wait(until_after=600.0)
    finally:
        timer.join()
    assert [fd for fd, _ev in events] == [rig.r]
    assert rig.record().seq == before.seq + beats
    assert due > time.monotonic() - PERIOD  # the next beat: not one written already


def _moved(rig: Rig, what: str) -> None:
    if what == "heartbeat file removed":
        os.unlink(rig.hb.path)
    elif what == "an entry of state_dir added":
        Path(rig.state, "new-file").write_text("")
    elif what == "state_dir replaced":
        os.rename(rig.state, rig.state + ".old")
        os.mkdir(rig.state)
    elif what == "a path kept elsewhere replaced":
        tmp = rig.elsewhere.with_name("other")
        tmp.write_text("y")
        os.rename(tmp, rig.elsewhere)
    elif what == "the watched process ended":
        rig.child.kill()
        wait_until(lambda: channels.proc_state(rig.child.pid) == "Z", KILLED_BOUND,
                   "the zombie")
    elif what == "the logger stopped":
        rig.child.send_signal(signal.SIGSTOP)
        wait_until(lambda: channels.proc_state(rig.child.pid) == "T", KILLED_BOUND,
                   "the stopped state")


@pytest.mark.parametrize("what", [
    "heartbeat file removed", "an entry of state_dir added", "state_dir replaced",
    "a path kept elsewhere replaced", "the watched process ended", "the logger stopped",
])
def test_anything_moved_leaves_the_beat_to_python(rig: Rig, what: str) -> None:
    before = rig.record()
    _moved(rig, what)
    events, beats, due, returned = rig.wait(until_after=20 * PERIOD)
    assert (events, beats) == ([], 0), what
    assert returned >= due  # at the beat's time, for Python's round to write it
    if what not in ("heartbeat file removed", "state_dir replaced"):
        assert rig.record().seq == before.seq  # nothing written


def test_a_record_grown_past_its_slot_is_left_to_python(rig: Rig) -> None:
    got = rig.hb.pieces(("lag",), {"timer_lag": 0.0})
    assert got is not None
    events, beats, _due, _t = rig.wait(until_after=20 * PERIOD, size=len(b"".join(got[1])))
    assert (events, beats) == ([], 0)


def test_pieces_match_what_the_python_beat_writes(rig: Rig) -> None:
    """The C beat and the Python one write the same record but for lag, mono and seq."""
    rig.wait(until_after=1.5 * PERIOD)
    c_made = rig.record()
    rig.hb.beat(EXTRA, {"lag": c_made.extra["lag"], "timer_lag": 0.0})
    py_made = rig.record()
    assert py_made.seq == c_made.seq + 1
    assert (py_made.extra, py_made.layer, py_made.pid, py_made.pidns, py_made.start,
            py_made.started_mono, py_made.restarts) == \
        (c_made.extra, c_made.layer, c_made.pid, c_made.pidns, c_made.start,
         c_made.started_mono, c_made.restarts)


# --- a chain ---------------------------------------------------------------------------


@pytest.mark.slow
def test_an_idle_chain_beats_from_the_compiled_wait_and_still_mends_state_dir(
        chain: tuple[str, subprocess.Popen[bytes]], tmp_path: Path) -> None:  # noqa: F811
    """(tests/test_idle_cost.py's chain: one service, heartbeat_interval INTERVAL)"""
    state = chain[0]
    gate_failed: list[Any] = []

    def seq() -> int:
        """The restarter's heartbeat count, from its file (no request: a request is an
        event, after which the next beat is Python's again); and the gate's verdict."""
        hb = channels.read_heartbeat(state, "tickler")
        if hb is not None and not hb.extra.get("gate", {}).get("ok", True):
            gate_failed.append(hb.extra["gate"])
        hb = channels.read_heartbeat(state, "restarter")
        return hb.seq if hb is not None else 0

    def compiled() -> int:
        reply = client.request(state, {"op": "status"}, timeout=KILLED_BOUND)
        return int(reply["restarter"]["compiled_beats"])

    def quiet_beats(n: int) -> None:
        first = seq()
        wait_until(lambda: seq() >= first + n, (n + 20) * INTERVAL,
                   f"{n} more restarter heartbeats", INTERVAL / 5)

    wait_until(lambda: seq() >= 2, KILLED_BOUND, "the restarter's heartbeat")
    wait_until(lambda: channels.read_heartbeat(state, "restarter").extra.get("progress"),
               KILLED_BOUND, "the service started")
    quiet_beats(8)
    before = compiled()
    assert before >= 3  # of eight quiet beats, the first after start-up is Python's
    sock = os.path.join(state, channels.CONTROL_SOCKET)
    os.unlink(sock)  # a cleaner of /run: the restarter makes it again
    wait_until(lambda: os.path.exists(sock), 10 * INTERVAL,
               "the control socket made again", INTERVAL / 5)
    quiet_beats(8)
    assert compiled() >= before + 3
    hb = channels.read_heartbeat(state, "restarter")
    assert hb is not None and hb.extra["services"] == 1
    assert gate_failed == []
    log_text = (tmp_path / "chain.log").read_text(errors="replace")
    assert "Traceback" not in log_text, log_text


@pytest.mark.parametrize("over, error", [
    ({"pidfds": tuple(range(3, 12))}, "too many pidfds"),
    ({"pidfds": (-1,)}, "a pidfd below 0"),
    ({"kept": (("not bytes", 0, 0, -1),)}, "kept is (path bytes, dev, ino, mtime)"),
    ({"pieces": (b"a", b"b", b"c")}, "4 pieces"),
])
def test_a_malformed_beat_is_refused_before_the_wait(rig: Rig, over: dict, error: str) -> None:
    """What the wait would look at without the GIL is checked and copied first."""
    now = time.monotonic()
    with pytest.raises((ValueError, TypeError), match=re.escape(error)):
        spawn.compiled_wait(rig.ep.fileno(), 1000, 1, -1, -1, {}, -1, False,
                            rig.beat(now + 1, now + 2, **over))
