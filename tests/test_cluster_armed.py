"""A node takes no singleton before its watchdog is armed.

The fence of a hung node is its watchdog's reset (docs/cluster.md, the timing rule). A
node whose tickler has not armed the device yet (it writes the boot record first, and
takes seconds to start on a slow box) must not take an ownership key: a hang of that
node would then never be reset, its singleton never stopped. That is how
test_cluster.py's hung owner once went without a reset in CI (2026-12-03): the owner was
hung about a second after its power-on, its singleton already running, its tickler not
yet petting; the watchdog never expired.

The unit tests drive the cluster layer against the in-memory etcd of
test_cluster_units; the machine test holds every simulated watchdog closed (EBUSY, as a
device another opener holds) until the test lets the ticklers open it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import channels
from hachain.simulators import machine as sim_machine
from hachain.simulators.wdsim import SoftWatchdog
from tests.conftest import heartbeat_window, wait_until
from tests.test_cluster import SLACK, TTL, WAIT, Cluster, W, read_stamps
from tests.test_cluster import pytestmark as cluster_marks
from tests.test_cluster_units import FakeEtcd, make_node

# --- the cluster layer alone --------------------------------------------------------------


def tickler_beat(state_dir: str, **extra: Any) -> None:
    channels.HeartbeatWriter(state_dir, "tickler").beat(extra)


def test_no_key_is_taken_before_the_tickler_says_the_watchdog_is_armed(
        tmp_path: Any) -> None:
    etcd = FakeEtcd()
    a = make_node(tmp_path, etcd, "a")
    sd = a.cfg.chain.state_dir
    os.unlink(channels.heartbeat_path(sd, "tickler"))  # no tickler has armed it yet

    async def go() -> None:
        await a.tick()
        await asyncio.sleep(a.wait + 0.05)
        await a.tick()
        assert a.owned == {} and a.lease_id is not None  # free, waited for, not taken
        # the device was closed with the magic character (an orderly stop, the boot-loop
        # action "disarm"): nothing would reset this node either
        tickler_beat(sd, armed=False, disarmed="boot loop")
        await a.tick()
        assert a.owned == {}
        tickler_beat(sd, armed=True)
        await a.tick()
        assert list(a.owned) == ["db"]
    asyncio.run(go())


def test_a_key_held_stays_held_while_the_tickler_restarts(tmp_path: Any) -> None:
    """Only taking a key waits for the device: a tickler killed and restarted in the same
    boot leaves the device armed (no magic close) and its old heartbeat says so."""
    etcd = FakeEtcd()
    a = make_node(tmp_path, etcd, "a")

    async def go() -> None:
        await a.tick()
        await asyncio.sleep(a.wait + 0.05)
        await a.tick()
        token = a.owned["db"]
        os.unlink(channels.heartbeat_path(a.cfg.chain.state_dir, "tickler"))
        await a.tick()
        assert a.owned == {"db": token}
    asyncio.run(go())


# --- on simulated machines ----------------------------------------------------------------

def machine_marks(fn: Any) -> Any:
    """test_cluster's marks: a simulated machine (slow, root, unshare), etcd, aetcd."""
    for mark in cluster_marks:
        fn = mark(fn)
    return fn


@pytest.fixture
def held_cluster(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[
        tuple[Cluster, threading.Event, dict[int, float]]]:
    """test_cluster's three machines and etcd, every watchdog closed (EBUSY) until the
    test sets `armable`."""
    armable = threading.Event()
    opened: dict[int, float] = {}  # id(watchdog) -> when its first open armed it

    class HeldWatchdog(SoftWatchdog):
        def open(self, now: float) -> None:
            if not armable.is_set():
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
            super().open(now)
            opened.setdefault(id(self), now)

    monkeypatch.setattr(sim_machine, "SoftWatchdog", HeldWatchdog)
    c = Cluster(str(tmp_path))
    try:
        c.start()
        yield c, armable, opened
    finally:
        c.stop()


@machine_marks
def test_no_singleton_runs_before_the_owner_is_armed_and_a_hang_right_then_is_reset(
        held_cluster: tuple[Cluster, threading.Event, dict[int, float]]) -> None:
    cluster, armable, opened = held_cluster
    period = TTL / 10
    # every node holds its lease and sees the key free for the takeover wait and more:
    # without an armed watchdog none takes it
    for name, m in cluster.machines.items():
        def leased(m: sim_machine.SimMachine = m) -> channels.Heartbeat | None:
            hb = m.heartbeat("cluster")
            return hb if hb is not None and hb.extra.get("lease") else None
        heartbeat_window(leased, WAIT + 3 * period, f"{name}'s cluster layer with a lease")
    for name, m in cluster.machines.items():
        hb = m.heartbeat("cluster")
        assert hb is not None and hb.extra["owned"] == {}, (name, hb.extra)
        assert m.server is not None and not m.server.watchdog.armed
    assert not read_stamps(cluster.stamps)
    armable.set()
    owner = cluster.wait_single_owner(60)
    m = cluster.machines[owner]
    assert m.server is not None
    first = min(s["mono"] for s in read_stamps(cluster.stamps) if s["ev"] == "start")
    assert first > opened[id(m.server.watchdog)], "the singleton started before its " \
        "node's watchdog was armed"
    # hung as soon as the singleton is seen running: the watchdog resets it
    cluster.hang(owner)
    wait_until(lambda: len(m.boots) >= 2, W + SLACK + 10, "the hung owner's watchdog reset")
    assert m.boots[1]["cause"] == "watchdog" and m.server.expirations == 1
