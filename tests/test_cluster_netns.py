"""A network partition (issue 18): three simulated machines, each in its own PID namespace
*and* its own network namespace, joined to the host by a veth pair; the 3-member etcd
cluster runs on the host and also listens on the host side of every veth. Cutting the
owner off is `ip link set <host side> down`: nothing leaves the machine.

The cut-off owner cannot renew: it stops the singleton itself before half the TTL after
its last renewal (and, having shown it down, is not reset); another node starts it only
after the old lease expired and the takeover wait passed, with a larger fencing token.
When the link comes back, the old owner stands by. The namespaces, links and addresses
are this test's own (a subnet no route of the host uses) and are removed in `finally`.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import pytest

from hachain.cluster import timing
from hachain.simulators.cluster_harness import ETCD, EtcdCluster, Net, config_text
from hachain.simulators.machine import SimMachine
from tests.conftest import wait_until
from tests.test_cluster import (
    HB,
    MARGIN,
    SLACK,
    STOP,
    SVC,
    TTL,
    WAIT,
    W,
    instance,
    never_two,
    read_stamps,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("nsenter") is None,
                       reason="needs ip(8) (iproute2) and nsenter(1) (util-linux)"),
    pytest.mark.skipif(not os.access(ETCD, os.X_OK), reason="needs etcd (Debian's "
                       "etcd-server: bash scripts/setup.sh --test installs it)"),
]
try:
    import aetcd  # noqa: F401
except ImportError:
    pytestmark.append(pytest.mark.skip(reason="needs the cluster extra (aetcd): bash "
                                       "scripts/setup.sh --test installs it"))


def test_partitioned_owner_stops_itself_and_the_singleton_moves(tmp_path: Any) -> None:
    tmp = str(tmp_path)
    stamps = os.path.join(tmp, "stamps.jsonl")
    net = Net(3)
    machines: dict[str, SimMachine] = {}
    etcd: EtcdCluster | None = None
    try:
        net.setup()
        etcd = EtcdCluster(os.path.join(tmp, "etcd"),
                           extra_hosts=tuple(net.host_ip(i) for i in range(3)))
        etcd.start()
        for i in range(3):
            name = f"n{i}"
            # each node reaches every member on the host side of its own veth
            eps = [f"{net.host_ip(i)}:{m.client_port}" for m in etcd.members]
            cfg = os.path.join(tmp, f"{name}.toml")
            with open(cfg, "w") as f:
                f.write(config_text(name, eps, stamps, f"/p{os.getpid()}/", SVC, TTL, W,
                                    MARGIN, STOP, HB))
            machines[name] = SimMachine(cfg, os.path.join(tmp, name), panic_delay=0.2,
                                        on_event=lambda _m: None, netns=net.names[i])
            machines[name].start()

        def single() -> str | None:
            now = time.monotonic()
            nodes = {s["node"] for s in read_stamps(stamps)
                     if s["ev"] == "alive" and s["mono"] >= now - 0.3}
            return next(iter(nodes)) if len(nodes) == 1 else None
        owner = str(wait_until(single, 60, "the singleton on exactly one node"))
        i = int(owner[1:])
        m = machines[owner]
        wait_until(lambda: m.heartbeat("cluster") is not None, 10, "a cluster heartbeat")
        first = read_stamps(stamps)
        old_token = max(s["token"] for s in first)
        net.cut(i)
        t_cut = time.monotonic()

        def stopped() -> dict[str, Any] | None:
            return next((s for s in read_stamps(stamps) if s["ev"] == "stop"
                         and s["node"] == owner and s["mono"] > t_cut), None)
        stop = wait_until(stopped, TTL / 2 + SLACK, "the cut-off owner to stop it")
        hb = m.heartbeat("cluster")
        assert hb is not None
        t0 = float(hb.extra["t0"])  # its last acknowledged renewal, frozen by the cut
        assert stop["mono"] <= timing.fence_at(t0, TTL)

        def started() -> dict[str, Any] | None:
            return next((s for s in read_stamps(stamps) if s["ev"] == "start"
                         and s["mono"] > t_cut), None)
        new = wait_until(started, timing.failover_bound(TTL, W, MARGIN, HB) + SLACK + 10,
                         "the singleton to start on another node")
        assert new["node"] != owner  # the cut-off node cannot reach etcd to take it
        assert new["mono"] >= t0 + TTL + WAIT and new["mono"] > stop["mono"]
        assert new["token"] > old_token
        took = new["mono"] - t_cut
        assert took <= timing.failover_bound(TTL, W, MARGIN, HB) + SLACK
        # the cut-off node showed the singleton down: it was not reset
        assert len(m.boots) == 1, m.boots
        net.heal(i)
        wait_until(lambda: (x := m.heartbeat("cluster")) is not None
                   and x.extra.get("owners", {}).get("db") == new["node"]
                   and not x.extra.get("error"), 30,
                   "the healed node to see the new owner")
        t = time.monotonic()
        time.sleep(1.0)
        assert {s["node"] for s in read_stamps(stamps) if s["ev"] == "alive"
                and s["mono"] >= t} == {new["node"]}
        never_two(read_stamps(stamps))
        assert {instance(s) for s in first} < {instance(s) for s in read_stamps(stamps)}
        print(f"failover after a partition: {took:.2f} s")
    finally:
        for x in machines.values():
            x.stop()
        if etcd is not None:
            etcd.stop()
        net.teardown()
