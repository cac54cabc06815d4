"""An idle chain's wake-ups (issue 19): the layers tick together on one grid of the
monotonic clock (channels.next_tick), and the per-heartbeat look at init is one poll of
a pidfd (channels.init_gone), not a read of /proc."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import channels
from hachain.watchdog import tickler
from tests.conftest import KILLED_BOUND, reap, wait_until

INTERVAL = 0.5  # [chain] heartbeat_interval of the chain below


@pytest.mark.parametrize("interval", [0.05, 0.5, 1.0, 2.0, 3.7])
@pytest.mark.parametrize("offset", [0.0, 0.005])
def test_next_tick_is_the_next_point_of_the_grid(interval: float, offset: float) -> None:
    for now in (0.0, offset, 0.001, 1.0, 2.0, 123.456, 10_000.0 + interval, 987_654.321):
        t = channels.next_tick(now, interval, offset)
        assert now < t <= now + interval + 1e-9, (now, t)
        k = (t - offset) / interval
        assert abs(k - round(k)) < 1e-6, (now, t, k)  # on the grid
    # two processes asking at different moments of one interval get the same instant
    base = channels.next_tick(100.0, interval, offset)
    for frac in (0.01, 0.3, 0.99):
        assert channels.next_tick(base - interval * frac, interval, offset) == \
            pytest.approx(base)


def test_init_gone_follows_the_process_through_its_pidfd() -> None:
    p = subprocess.Popen(["sleep", "60"])
    try:
        start = channels.proc_start_time(p.pid)
        assert start is not None
        init = (p.pid, start)
        assert channels.init_gone(init) is None
        assert init in channels._INIT_PIDFDS  # later checks poll the pidfd
        assert channels.init_gone(init) is None
        assert channels.init_gone((p.pid, start + 1)) is not None  # another process
        p.kill()
        # a zombie counts as gone, before anyone reaps it
        wait_until(lambda: channels.proc_state(p.pid) == "Z", KILLED_BOUND, "the zombie")
        assert channels.init_gone(init) == f"init (pid {p.pid}) is gone"
        reap(p, "the stand-in init")
        assert channels.init_gone(init) == f"init (pid {p.pid}) is gone"
    finally:
        if p.poll() is None:
            p.kill()
            reap(p, "the stand-in init")
        fd = channels._INIT_PIDFDS.pop((p.pid, start), None)
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def idle_chain(tmp_path: Any, interval: float) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A chain of one service and no device, its heartbeats every `interval`, its log
    in tmp_path/chain.log: (state_dir, `hachain run`'s process, init once it execs)."""
    state = str(tmp_path / "run")
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[chain]\nstate_dir = "{state}"\npersist_dir = "{tmp_path / "persist"}"\n'
                   f'cgroup_root = "none"\nheartbeat_interval = {interval}\n'
                   '[watchdog]\ndevice = "none"\n'
                   '[service.s]\ncommand = ["sleep", "600"]\n')
    with open(tmp_path / "chain.log", "ab") as log:
        p = subprocess.Popen([sys.executable, "-m", "hachain.cli", "run", "-c", str(cfg)],
                             stdout=log, stderr=log, start_new_session=True)
    try:
        yield state, p
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)  # init's own session: only this chain
                reap(p, "the chain's init")


@pytest.fixture
def chain(tmp_path: Any) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with idle_chain(tmp_path, INTERVAL) as got:
        yield got


@pytest.mark.slow
def test_the_layers_beat_on_one_grid(chain: tuple[str, subprocess.Popen[bytes]]) -> None:
    """Each heartbeat after the first is written at a point of the grid (the tickler's
    TICK_AFTER later), so the phase of its stamp within the interval is how late that
    wake-up was. At random phases, as before, most stamps would be further than half an
    interval from the grid."""
    state, _p = chain
    offsets = {"init": 0.0, "restarter": 0.0, "tickler": tickler.TICK_AFTER}
    seen: dict[str, dict[int, float]] = {layer: {} for layer in offsets}

    def sample() -> bool:
        for layer in offsets:
            hb = channels.read_heartbeat(state, layer)
            if hb is not None and hb.seq > 2:
                seen[layer][hb.seq] = hb.mono
        return all(len(s) >= 5 for s in seen.values())

    wait_until(sample, 30 * INTERVAL, "five heartbeats of each layer", INTERVAL / 5)
    for layer, stamps in seen.items():
        phases = [(m - offsets[layer]) % INTERVAL for m in stamps.values()]
        assert all(ph < INTERVAL / 2 for ph in phases), (layer, phases)


def _runs(pid: int, tid: int) -> int:
    """How many times thread `tid` of `pid` has run (/proc schedstat, field 3)."""
    with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
        return int(f.read().split()[2])


@pytest.mark.slow
def test_an_idle_tick_wakes_the_tickler_reader_thread_only(
        chain: tuple[str, subprocess.Popen[bytes]]) -> None:
    """The reader's thread runs the tick once its round answered (Tickler.on_round); the
    loop thread sleeps until its interval timer, which each tick pushes past the next
    one. Before, the loop woke at every tick (through the reader's pipe)."""
    state, _p = chain
    wait_until(lambda: (hb := channels.read_heartbeat(state, "tickler")) and hb.seq > 3,
               60 * INTERVAL, "the tickler's heartbeats")
    hb = channels.read_heartbeat(state, "tickler")
    assert hb is not None
    pid, seq0 = hb.pid, hb.seq
    loop0 = _runs(pid, pid)
    wait_until(lambda: (h := channels.read_heartbeat(state, "tickler")) and
               h.seq >= seq0 + 10, 60 * INTERVAL, "ten more ticks", INTERVAL / 5)
    woke = _runs(pid, pid) - loop0
    assert woke <= 5, f"the loop thread woke {woke} times in 10 ticks"
