"""The compiled tick (docs/tickler.md): an idle chain's ticks made by the tickler's
reader thread in compiled code (hachain.watchdog._tick) while the heartbeats it reads
are the ones the gate last passed but for their fresh stamps, and handed back to Python
the moment anything the gate weighs has moved.

The first tests call `_tick.run` itself, with heartbeat files written here, a child
process for each pidfd, and a lock; the last run a chain and look at its tickler from
outside.
"""

from __future__ import annotations

import array
import os
import signal
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hachain import channels
from hachain.watchdog import tickler
from tests.conftest import KILLED_BOUND, reap, wait_until
from tests.test_idle_cost import idle_chain

_tick = tickler._tick
pytestmark = pytest.mark.skipif(
    _tick is None,
    reason="hachain.watchdog._tick is not built (setup.sh builds it with the C compiler)")

PERIOD = 0.1
TIMEOUT = 60.0  # heartbeat_timeout in the direct tests: records written once stay fresh
INIT_EXTRA = {"children": {"restarter": {"pid": 1, "restarts": 0}}, "stopping": False}
REST_EXTRA = {"critical": {"db": {"ok": True, "reason": ""}}, "progress": 7, "services": 2}
TICK_EXTRA = {"device": "none", "gate": {"ok": True, "reasons": []}}
# a bound for what must happen within a few ticks, on a loaded machine too
TICKS_BOUND = KILLED_BOUND


def ns(seconds: float) -> int:
    return int(seconds * 1e9)


class Rig:
    """init's and the restarter's heartbeats in state_dir, read once by the tickler's
    readers; a child process standing for each layer and for init (their pidfds); the
    tickler's own heartbeat; a device whose pets are counted."""

    def __init__(self, tmp_path: Path) -> None:
        self.state = str(tmp_path / "state")
        self.writers = {layer: channels.HeartbeatWriter(self.state, layer)
                        for layer in ("init", "restarter")}
        self.lag = 0.001
        for _ in range(2):  # (the first beat makes the file; the second keeps it open)
            self.beat_layers()
        self.me = channels.HeartbeatWriter(self.state, "tickler")
        for _ in range(2):
            self.me.beat(TICK_EXTRA, self.volatile(None, None, 0, None))
        self.procs = {name: subprocess.Popen(["sleep", "60"])
                      for name in ("init", "restarter", "the init")}
        self.pidfds = {name: os.pidfd_open(p.pid) for name, p in self.procs.items()}
        self.readers = [channels.HeartbeatReader(self.state, layer)
                        for layer in ("init", "restarter")]
        for r in self.readers:
            assert r.read() is not None
        self.lock = threading.Lock()
        self.pets = 0
        self.pet_error: Exception | None = None
        self.state_array = array.array("q", bytes(8 * len(_tick.STATE)))
        self.thread: threading.Thread | None = None
        self.got: Any = None

    @staticmethod
    def volatile(last: float | None, interval: float | None, pets: int,
                 left: int | None, ticks: int = 0) -> dict[str, Any]:
        return {"compiled_ticks": ticks, "last_pet_mono": last, "pet_interval_last": interval,
                "pets": pets, "timeleft": left}

    def beat_layers(self, **rest: Any) -> None:
        self.writers["init"].beat(INIT_EXTRA)
        self.writers["restarter"].beat(dict(REST_EXTRA, **rest),
                                       {"lag": self.lag, "timer_lag": 0.0})

    def pet(self) -> None:
        if self.pet_error is not None:
            raise self.pet_error
        self.pets += 1

    def __getitem__(self, name: str) -> int:
        return self.state_array[tickler.STATE[name]]

    def __setitem__(self, name: str, value: int) -> None:
        self.state_array[tickler.STATE[name]] = value

    def start(self, ticks: int = 1000, device: bool = True, **over: int) -> None:
        """_tick.run in a thread, from the next point of the grid, for `ticks` ticks at
        most; `over`: state values other than the defaults."""
        now = time.monotonic()
        due = channels.next_tick(now, PERIOD)
        values = {
            "DUE": ns(due), "UNTIL": ns(due + (ticks - 0.5) * PERIOD), "PERIOD": ns(PERIOD),
            "OFFSET": 0, "READ_DEADLINE": ns(0.5), "HB_TIMEOUT": ns(TIMEOUT),
            "MAX_LAG": ns(1.0), "PET_INTERVAL": ns(PERIOD), "PET_EARLY": ns(0.01),
            "PET_GRACE": ns(0.05), "ALARM_MIN": ns(0.0005), "NEXT_PET": 0, "PET_DUE": -1,
            "LAST_PET": -1, "PET_INTERVAL_LAST": -1, "PETS": 0, "WORST": ns(10.0),
            "LATE_WARN": ns(10.0), "LATENESS": -1, "HB_SEQ": self.me.seq, "BUSY_SINCE": -1,
            "ANSWERED": 5}
        values.update(over)
        for name, value in values.items():
            self[name] = value
        args = self.args(device)

        def run() -> None:
            self.got = _tick.run(*args)

        # SIGALRM from the run's interval timer must not end this process (the
        # tickler's handler does nothing; so does this one)
        signal.signal(signal.SIGALRM, lambda *_: None)
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def args(self, device: bool = True) -> list[Any]:
        """_tick.run's arguments, as Tickler._arm makes them."""
        layers = []
        for r, layer in zip(self.readers, ("init", "restarter"), strict=True):
            template = channels.record_template(r.text, tickler.COMPILED_NUMBERS.get(layer))
            assert template is not None, r.text
            assert r.fd is not None
            layers.append((os.fsencode(r.path), r.fd, self.pidfds[layer], *r.ident, r.cap,
                           *template))
        made = self.me.pieces(tickler.COMPILED_KEYS, {})
        assert made is not None
        fd, pieces, size = made
        wd = (-1, 0, 0, self.pet, lambda: 9) if device else (-1, 0, 0, None, None)
        return [self.state_array, tuple(layers), wd, self.pidfds["the init"], fd, pieces,
                size, self.lock, zlib.crc32]

    def ended(self, bound: float = TICKS_BOUND) -> int:
        assert self.thread is not None
        self.thread.join(bound)
        assert not self.thread.is_alive(), "the compiled run did not return"
        return int(self.got)

    def ticks_reach(self, n: int) -> None:
        wait_until(lambda: self["TICKS"] >= n, TICKS_BOUND, f"{n} compiled ticks",
                   PERIOD / 4)

    def stop(self) -> None:
        self["CANCEL"] = 1
        if self.thread is not None:
            self.thread.join(TICKS_BOUND)
        signal.setitimer(signal.ITIMER_REAL, 0)

    def close(self) -> None:
        self.stop()
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
            reap(p, "a stand-in process")
        for fd in self.pidfds.values():
            os.close(fd)
        for r in self.readers:
            r.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    try:
        yield r
    finally:
        r.close()
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def test_the_state_and_slot_names_are_the_ones_python_uses() -> None:
    assert _tick.SLOTS == channels.SLOT_KINDS
    for name in ("CANCEL", "ANSWERED", "BUSY_SINCE", "DUE", "TICKS", "HB_SEQ", "MONO0",
                 "LAG1"):
        assert name in tickler.STATE


def test_it_ticks_on_the_grid_until_it_must_hand_the_round_back(rig: Rig) -> None:
    rig.start(ticks=4)
    assert rig.ended() == _tick.ROUND
    assert rig["TICKS"] == 4 and rig["ANSWERED"] == 5 + 4
    assert rig.pets == rig["PETS"] == 4
    # its own heartbeat: every tick's, a record any reader takes, as Python writes it
    hb = channels.read_heartbeat(rig.state, "tickler")
    assert hb is not None and hb.seq == rig["HB_SEQ"] == rig.me.seq + 4
    assert hb.extra["pets"] == 4 and hb.extra["timeleft"] == 9
    assert hb.extra["compiled_ticks"] == 4
    assert hb.extra["last_pet_mono"] == pytest.approx(rig["LAST_PET"] / 1e9)
    assert hb.extra["pet_interval_last"] == pytest.approx(rig["PET_INTERVAL_LAST"] / 1e9)
    assert 0 < hb.extra["pet_interval_last"] < 3 * PERIOD + TICKS_BOUND
    # the next round due is a point of the grid, after the last tick
    due = rig["DUE"] / 1e9
    assert abs(due / PERIOD - round(due / PERIOD)) < 1e-6
    assert due > hb.mono
    # and the layers' records as read at the last tick
    for i, layer in enumerate(("init", "restarter")):
        read = channels.read_heartbeat(rig.state, layer)
        assert read is not None
        assert rig[f"MONO{i}"] == ns(read.mono) or abs(rig[f"MONO{i}"] - read.mono * 1e9) < 2
        assert rig[f"SEQ{i}"] == read.seq
    assert rig["LAG1"] == ns(0.001) and rig["LAG0"] == -1


def test_its_heartbeat_is_the_python_one_but_for_the_values_it_fills_in(rig: Rig) -> None:
    rig.start(ticks=2)
    assert rig.ended() == _tick.ROUND
    c = channels.read_heartbeat(rig.state, "tickler")
    assert c is not None
    rig.me.seq = rig["HB_SEQ"] - 1
    rig.me.beat(TICK_EXTRA, rig.volatile(rig["LAST_PET"] / 1e9,
                                         rig["PET_INTERVAL_LAST"] / 1e9, 2, 9, 2))
    py = channels.read_heartbeat(rig.state, "tickler")
    assert py is not None
    assert (py.seq, py.pid, py.start, py.pidns, py.started_mono) == \
        (c.seq, c.pid, c.start, c.pidns, c.started_mono)
    floats = ("last_pet_mono", "pet_interval_last")  # (C writes them to the ns)
    assert {k: v for k, v in py.extra.items() if k not in floats} == \
        {k: v for k, v in c.extra.items() if k not in floats}
    for k in floats:
        assert py.extra[k] == pytest.approx(c.extra[k], abs=1e-9)
    assert py.mono >= c.mono


def test_without_a_device_nothing_is_petted(rig: Rig) -> None:
    rig.start(ticks=2, device=False)
    assert rig.ended() == _tick.ROUND
    assert rig["TICKS"] == 2 and rig["PETS"] == 0 and rig.pets == 0
    hb = channels.read_heartbeat(rig.state, "tickler")
    assert hb is not None and hb.extra["timeleft"] is None and hb.extra["pets"] == 0


def _torn_stamp(rig: Rig) -> None:
    """The restarter's record with another digit in its `mono` and the CRC as it was:
    only the CRC tells (a record half written over the last)."""
    fd = rig.writers["restarter"].fd
    assert fd is not None
    raw = os.pread(fd, 4096, 0)
    at = raw.index(b', "pid": ', raw.index(b', "mono": ')) - 1  # its last digit
    os.pwrite(fd, b"7" if raw[at:at + 1] != b"7" else b"8", at)


def _kill(rig: Rig, name: str) -> None:
    rig.procs[name].kill()


CHANGES: dict[str, Callable[[Rig], None]] = {
    # the restarter's report changed (a service, its progress counter)
    "extra": lambda rig: rig.beat_layers(progress=8),
    # a loop lag over max_loop_lag (the gate weighs it with the progress: Python's)
    "lag": lambda rig: (setattr(rig, "lag", 2.5), rig.beat_layers()),
    # a record from the future (another boot's), and one torn (its CRC does not match)
    "future": lambda rig: rig.writers["init"]._write(
        channels.heartbeat_bytes(channels.Heartbeat(
            "init", os.getpid(), time.monotonic() + 3 * TIMEOUT, 1.0, 99, 0, INIT_EXTRA))),
    "torn": lambda rig: os.pwrite(rig.writers["restarter"].fd or -1, b"X", 40),
    "torn stamp": lambda rig: _torn_stamp(rig),
    # the path names another file now (replaced, as by a restore of state_dir)
    "replaced": lambda rig: channels.write_atomic(
        channels.heartbeat_path(rig.state, "init"),
        Path(channels.heartbeat_path(rig.state, "init")).read_bytes()),
    # a gated layer, or init, ended
    "layer died": lambda rig: _kill(rig, "restarter"),
    "init died": lambda rig: _kill(rig, "the init"),
    # the tickler's loop took the state over
    "cancel": lambda rig: rig.__setitem__("CANCEL", 1),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_the_gate_weighs_hands_the_round_back(rig: Rig, change: str) -> None:
    rig.start()
    rig.ticks_reach(2)
    with rig.lock:  # (between two ticks: the run decides under this lock)
        CHANGES[change](rig)
        ticks = rig["TICKS"]
    assert rig.ended() == _tick.ROUND
    # no tick after the change: the round that saw it is Python's
    assert rig["TICKS"] == ticks
    assert rig["ANSWERED"] == 5 + ticks
    hb = channels.read_heartbeat(rig.state, "tickler")
    assert hb is not None and hb.seq == rig["HB_SEQ"]


def test_a_lag_within_bounds_and_new_stamps_are_no_change(rig: Rig) -> None:
    rig.start()
    rig.ticks_reach(1)
    with rig.lock:
        rig.lag = 0.9  # under max_loop_lag (1 s)
        rig.beat_layers()  # new mono and seq too
        ticks = rig["TICKS"]
    rig.ticks_reach(ticks + 3)
    assert rig.thread is not None and rig.thread.is_alive()
    assert rig["LAG1"] == ns(0.9)


def test_a_record_going_stale_hands_the_round_back(rig: Rig) -> None:
    timeout = 4 * PERIOD
    rig.beat_layers()
    written = max(hb.mono for hb in (channels.read_heartbeat(rig.state, layer)
                                     for layer in ("init", "restarter")) if hb is not None)
    for r in rig.readers:
        assert r.read() is not None
    rig.start(HB_TIMEOUT=ns(timeout))
    assert rig.ended() == _tick.ROUND
    # each tick found the records within heartbeat_timeout; the round that did not is
    # Python's (which fails the gate on it)
    assert time.monotonic() - written > timeout
    assert rig["TICKS"] <= timeout / PERIOD + 1


def test_a_pet_that_fails_is_left_to_python(rig: Rig) -> None:
    rig.start()
    rig.ticks_reach(1)
    with rig.lock:
        rig.pet_error = OSError(5, "Input/output error")
        ticks, pets = rig["TICKS"], rig["PETS"]
    assert rig.ended() == _tick.ROUND
    assert (rig["TICKS"], rig["PETS"]) == (ticks, pets)


def test_a_pet_later_than_the_worst_ends_the_run_after_its_tick(rig: Rig) -> None:
    # the first pet has no schedule to be late against; the second is late by how long
    # it came after its point of the grid (> 0 ns): worse than the worst so far (0)
    rig.start(WORST=0)
    assert rig.ended() == _tick.TICKED
    assert rig["TICKS"] == 2 and rig["PETS"] == 2
    assert 0 <= rig["LATENESS"] < ns(TICKS_BOUND)
    hb = channels.read_heartbeat(rig.state, "tickler")
    assert hb is not None and hb.extra["pets"] == 2  # written: Python records the lateness


def test_a_pet_due_between_ticks_ends_the_run_after_its_tick(rig: Rig) -> None:
    rig.start(PET_INTERVAL=ns(PERIOD / 4))
    assert rig.ended() == _tick.TICKED
    assert rig["TICKS"] == 1 and rig["PETS"] == 1


def test_its_heartbeat_file_removed_leaves_the_beat_to_python(rig: Rig) -> None:
    rig.start()
    rig.ticks_reach(1)
    with rig.lock:
        os.unlink(channels.heartbeat_path(rig.state, "tickler"))
        ticks = rig["TICKS"]
    assert rig.ended() == _tick.TICKED
    assert rig["TICKS"] == ticks + 1
    assert not os.path.exists(channels.heartbeat_path(rig.state, "tickler"))


def test_malformed_arguments_are_refused(rig: Rig) -> None:
    rig["PERIOD"] = rig["PET_INTERVAL"] = ns(PERIOD)
    for at, bad, error, match in (
            (0, array.array("q", [0]), ValueError, "state"),
            (0, array.array("d", bytes(8 * len(_tick.STATE))), ValueError, "state"),
            (1, (), ValueError, "layers"),
            (1, ((b"/x", 0, 0, 0, 0, 4096, (b"a",), (1,)),), ValueError, "template"),
            (1, ((b"/x", 0, 0, 0, 0, 4096, (b"a", b"b"), (9,)),), ValueError, "slot kind"),
            (2, (-1, 0, 0, 5, None), TypeError, "callables"),
            (5, (b"a",) * 3, ValueError, "8 pieces")):
        args = rig.args()
        args[at] = bad
        with pytest.raises(error, match=match):
            _tick.run(*args)
    args = rig.args()
    rig["PERIOD"] = 0
    with pytest.raises(ValueError, match="period"):
        _tick.run(*args)


def test_record_template_cuts_a_record_around_its_open_values(rig: Rig) -> None:
    r = rig.readers[1]
    got = channels.record_template(r.text, tickler.COMPILED_NUMBERS["restarter"])
    assert got is not None
    pieces, kinds = got
    names = [channels.SLOT_KINDS[k] for k in kinds]
    assert names == ["crc", "lag", "number", "mono", "seq"]
    assert b"".join(pieces) + b"\n" != r.text  # (the values are out)
    assert pieces[-1].endswith(b"}\n") and pieces[0] == b'{"crc": "'
    # a key asked for that is not there, a record not written here, an exponent
    assert channels.record_template(r.text, {"nope": "number"}) is None
    assert channels.record_template(b'{"layer": "init"}') is None
    text = rig.readers[0].text.replace(b'"stopping": false', b'"stopping": 1e-05')
    assert channels.record_template(text, {"stopping": "number"}) is None
    assert channels.record_template(rig.readers[0].text) is not None


# --- in a chain ------------------------------------------------------------------------

CHAIN_INTERVAL = 0.1  # [chain] heartbeat_interval


def _tickler_extra(state: str) -> dict[str, Any]:
    hb = channels.read_heartbeat(state, "tickler")
    return hb.extra if hb is not None else {}


@pytest.mark.slow
def test_an_idle_chain_is_ticked_in_compiled_code_and_a_hang_still_fails_the_gate(
        tmp_path: Path) -> None:
    with idle_chain(tmp_path, CHAIN_INTERVAL) as (state, _p):
        _compiled_ticks_and_a_hang(state, tmp_path / "chain.log")


def _compiled_ticks_and_a_hang(state: str, log: Path) -> None:
    # the tickler's heartbeat counts them (each compiled tick writes it)
    wait_until(lambda: _tickler_extra(state).get("compiled_ticks", 0) > 0, TICKS_BOUND,
               "compiled ticks in the tickler's heartbeat", CHAIN_INTERVAL)
    rhb = channels.read_heartbeat(state, "restarter")
    assert rhb is not None
    os.kill(rhb.pid, signal.SIGSTOP)  # a hung restarter: its heartbeat goes stale
    try:
        def failed() -> bool:
            gate = _tickler_extra(state).get("gate", {})
            return gate.get("ok") is False and \
                any("restarter heartbeat stale" in r for r in gate.get("reasons", ()))
        # the default heartbeat_timeout is 3 heartbeat_intervals at least (config)
        wait_until(failed, TICKS_BOUND, "the gate failed on the hung restarter",
                   CHAIN_INTERVAL)
    finally:
        os.kill(rhb.pid, signal.SIGCONT)
    wait_until(lambda: _tickler_extra(state).get("gate", {}).get("ok") is True,
               TICKS_BOUND, "the gate passing again", CHAIN_INTERVAL)
    before = _tickler_extra(state).get("compiled_ticks", 0)
    wait_until(lambda: _tickler_extra(state).get("compiled_ticks", 0) > before, TICKS_BOUND,
               "compiled ticks again after the gate passed", CHAIN_INTERVAL)
    assert b"compiled ticks off" not in log.read_bytes()
