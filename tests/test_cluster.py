"""Singletons on a real etcd cluster (issue 18): three simulated machines (`hachain sim`:
each its own PID namespace and software watchdog) share a 3-member etcd cluster on
127.0.0.1. An observer outside the machines judges from the service's own stamps
(hachain/simulators/singleton_svc.py, CLOCK_MONOTONIC) that the singleton runs on exactly one
node, and that after a fault it starts elsewhere only after the old instance is gone and
the timing rule's safe time has passed, with a larger fencing token.

Every bound below comes from the configuration through hachain/cluster/timing.py, plus
a stated slack for a loaded machine. Everything started is stopped in `finally` blocks
(the machines, then the etcd members, whose data directories are removed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hachain.cluster import timing
from hachain.simulators import singleton_svc
from hachain.simulators.cluster_harness import config_text
from hachain.simulators.machine import SimMachine
from tests.conftest import SIM_MACHINE, wait_until
from tests.helpers.etcd import ETCD, EtcdCluster

pytestmark = [
    *SIM_MACHINE,
    pytest.mark.skipif(not os.access(ETCD, os.X_OK), reason="needs etcd (Debian's "
                       "etcd-server: bash scripts/setup.sh --test installs it)"),
]
try:
    import aetcd  # noqa: F401
except ImportError:
    pytestmark.append(pytest.mark.skip(reason="needs the cluster extra (aetcd): bash "
                                       "scripts/setup.sh --test installs it"))

HERE = os.path.dirname(os.path.abspath(__file__))
SVC = singleton_svc.__file__  # run by path: it imports only the standard library
TTL, W, MARGIN, STOP, HB = 4, 2, 0.25, 0.5, 0.1
WAIT = timing.takeover_wait(TTL, W, MARGIN)
# Slack for a loaded 2-core machine: process start-up, a late tick, the etcd election.
SLACK = 3.0
BOUND = timing.failover_bound(TTL, W, MARGIN, HB)


def node_config(path: str, node: str, endpoints: list[str], stamps: str,
                prefix: str) -> None:
    with open(path, "w") as f:
        f.write(config_text(node, endpoints, stamps, prefix, SVC, ttl=TTL, wd=W,
                            margin=MARGIN, stop=STOP, hb=HB))


def read_stamps(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            return [json.loads(ln) for ln in f if ln.endswith("\n")]
    except FileNotFoundError:
        return []

class Cluster:
    """The etcd members and the machines of one test."""

    def __init__(self, tmp: str, n: int = 3) -> None:
        self.tmp = tmp
        self.stamps = os.path.join(tmp, "stamps.jsonl")
        self.etcd = EtcdCluster(os.path.join(tmp, "etcd"))
        self.machines: dict[str, SimMachine] = {}
        self.n = n

    def start(self) -> None:
        self.etcd.start()
        for i in range(self.n):
            name = f"n{i}"
            cfg = os.path.join(self.tmp, f"{name}.toml")
            node_config(cfg, name, self.etcd.endpoints, self.stamps, f"/t{os.getpid()}/")
            m = SimMachine(cfg, os.path.join(self.tmp, name), panic_delay=0.2,
                           on_event=lambda _m: None)
            self.machines[name] = m
            m.start()

    def stop(self) -> None:
        for m in self.machines.values():
            m.stop()
        self.etcd.stop()

    def owner_state(self) -> dict[str, str]:
        """node -> the singleton's state there, from the restarter's runtime records
        (`hachain status` reads the same)."""
        out = {}
        for name, m in self.machines.items():
            hb = m.heartbeat("restarter")
            if hb is not None:
                out[name] = "up" if hb.extra.get("singletons_up") else "down"
        return out

    def alive_nodes(self, since: float) -> set[str]:
        return {s["node"] for s in read_stamps(self.stamps)
                if s["ev"] == "alive" and s["mono"] >= since}

    def wait_single_owner(self, timeout: float) -> str:
        def one() -> str | None:
            now = time.monotonic()
            nodes = self.alive_nodes(now - 0.3)
            return next(iter(nodes)) if len(nodes) == 1 else None
        return str(wait_until(one, timeout, "the singleton running on exactly one node"))

    def hang(self, name: str) -> None:
        """hang-node: every process of the machine SIGSTOPped, from the host."""
        m = self.machines[name]
        for pid in m.namespace_pids().values():
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass


@pytest.fixture
def cluster(tmp_path: Any) -> Iterator[Cluster]:
    c = Cluster(str(tmp_path))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def instance(s: dict[str, Any]) -> tuple[str, str, int]:
    """One run of the service: its node, that machine's boot and its pid there."""
    return s["node"], s["boot"], s["pid"]


def never_two(stamps: list[dict[str, Any]]) -> None:
    """The observer's invariant: between one node's first and last stamp of an instance
    (start..stop, or start..last alive when it was killed) no other node has a stamp."""
    spans: dict[tuple[str, str, int], list[float]] = {}
    for s in stamps:
        span = spans.setdefault(instance(s), [s["mono"], s["mono"]])
        span[0], span[1] = min(span[0], s["mono"]), max(span[1], s["mono"])
    items = sorted(spans.items(), key=lambda kv: kv[1][0])
    for (a, sa), (b, sb) in zip(items, items[1:]):
        assert sb[0] > sa[1], f"two live instances: {a} ran {sa}, {b} started {sb[0]}"


def test_singleton_runs_on_exactly_one_node_and_others_stand_by(cluster: Cluster) -> None:
    owner = cluster.wait_single_owner(60)
    for name, m in cluster.machines.items():
        want = [] if name != owner else ["db"]
        wait_until(lambda m=m, want=want: (hb := m.heartbeat("restarter")) is not None
                   and hb.extra.get("singletons_up") == want, 10,
                   f"{name}'s restarter to show db {'up' if want else 'down'}")
        if name != owner:
            wait_until(lambda m=m: (hb := m.heartbeat("cluster")) is not None
                       and hb.extra["owners"] == {"db": owner}, 10,
                       f"{name}'s cluster layer to see {owner} as the owner")
    # stays on that one node over several lease periods
    t = time.monotonic()
    time.sleep(TTL * 1.5)
    assert cluster.alive_nodes(t) == {owner}
    never_two(read_stamps(cluster.stamps))
    tokens = {s["token"] for s in read_stamps(cluster.stamps)}
    assert len(tokens) == 1 and next(iter(tokens)) > 0
    # hachain status --cluster: every node, and the singleton's owner and token
    cfg = os.path.join(cluster.tmp, "n0.toml")
    out = subprocess.run([sys.executable, "-m", "hachain.cli", "status", "--cluster",
                          "-c", cfg, "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    v = json.loads(out.stdout)
    assert sorted(v["nodes"]) == ["n0", "n1", "n2"]
    assert v["singletons"]["db"]["owner"] == owner
    assert v["singletons"]["db"]["token"] == next(iter(tokens))
    assert list(v["nodes"][owner]["owned"]) == ["db"]
    out = subprocess.run([sys.executable, "-m", "hachain.cli", "status", "--cluster",
                          "-c", cfg], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    row = next(ln for ln in out.stdout.splitlines() if ln.split()[:1] == ["db"])
    assert row.split()[1:3] == [owner, str(next(iter(tokens)))]


def failover(cluster: Cluster, fault: str) -> dict[str, Any]:
    owner = cluster.wait_single_owner(60)
    m = cluster.machines[owner]
    hb = wait_until(lambda: m.heartbeat("cluster"), 10, "the owner's cluster heartbeat")
    first = read_stamps(cluster.stamps)
    old_token = max(s["token"] for s in first)
    if fault == "hang":
        cluster.hang(owner)
    else:
        m.power_cut()
    t_fault = time.monotonic()
    # The last keepalive the owner's lease could have been renewed by was sent no later
    # than the fault: its t0 is at most t_fault.
    t0 = min(t_fault, float(m.heartbeat("cluster").extra["t0"]) if fault == "hang"
             and m.heartbeat("cluster") is not None else t_fault)

    def new_start() -> dict[str, Any] | None:
        # any node, the old owner's next boot included: it plays by the same rule
        return next((s for s in read_stamps(cluster.stamps) if s["ev"] == "start"
                     and s["mono"] > t_fault), None)
    started = wait_until(new_start, BOUND + SLACK + 10, "the singleton to start elsewhere")
    stamps = read_stamps(cluster.stamps)
    before = {instance(s) for s in first}
    last_old = max(s["mono"] for s in stamps if instance(s) in before)
    never_two(stamps)
    assert started["mono"] > last_old
    # only after the safe time: the old lease cannot expire before t0 + TTL, then WAIT
    assert started["mono"] >= hb.extra["t0"] + TTL + WAIT
    assert started["mono"] - t_fault <= BOUND + SLACK, \
        f"failover took {started['mono'] - t_fault:.2f} s, bound {BOUND:g} s + {SLACK:g}"
    assert started["token"] > old_token
    return {"owner": owner, "new": started["node"], "t0": t0, "fault": t_fault,
            "took": started["mono"] - t_fault}


def test_hung_owner_is_reset_and_the_singleton_moves_after_the_safe_time(
        cluster: Cluster) -> None:
    r = failover(cluster, "hang")
    m = cluster.machines[r["owner"]]
    # the hung machine was reset by its watchdog, and boots again as a standby
    try:
        wait_until(lambda: len(m.boots) >= 2, W + 10, "the hung owner's watchdog reset")
    except AssertionError as e:  # what the machine did meanwhile says why
        exp = m.server.expirations if m.server is not None else None
        raise AssertionError(f"{e}; its watchdog expired {exp} time(s); its last events: "
                             f"{[msg for _, msg in m.events[-8:]]}") from None
    assert m.boots[1]["cause"] == "watchdog"
    # (the new owner may be the rebooted node itself: it plays by the same rule)
    wait_until(lambda: (hb := m.heartbeat("cluster")) is not None
               and (hb.extra.get("owners", {}).get("db") == r["new"] or
                    "db" in hb.extra.get("owned", {}) and r["new"] == r["owner"]), 30,
               "the rebooted node to see the new owner")
    t = time.monotonic()
    time.sleep(1.0)
    assert cluster.alive_nodes(t) == {r["new"]}
    never_two(read_stamps(cluster.stamps))


def test_killed_owner_moves_the_singleton_with_a_larger_token(cluster: Cluster) -> None:
    failover(cluster, "kill")
    never_two(read_stamps(cluster.stamps))


def test_lost_quorum_stops_the_singleton_by_half_the_ttl_without_a_reset(
        cluster: Cluster) -> None:
    """lose-etcd-quorum: no node can renew. The owner stops the singleton itself before
    its fence time (half the TTL after its last renewal), shows it down, and so keeps
    petting: no node is reset. When the quorum is back, it runs on one node again."""
    owner = cluster.wait_single_owner(60)
    m = cluster.machines[owner]
    for member in cluster.etcd.members[1:]:
        cluster.etcd.kill_member(member)
    t_fault = time.monotonic()

    def stopped() -> dict[str, Any] | None:
        return next((s for s in read_stamps(cluster.stamps) if s["ev"] == "stop"
                     and s["mono"] > t_fault), None)
    stop = wait_until(stopped, TTL / 2 + SLACK, "the owner to stop the singleton")
    hb = m.heartbeat("cluster")
    assert hb is not None and hb.extra["error"], "the cluster layer should see etcd fail"
    t0 = float(hb.extra["t0"])  # the last acknowledged renewal: frozen since the fault
    assert stop["node"] == owner and stop["mono"] <= timing.fence_at(t0, TTL)
    # past the fence and one watchdog timeout more: nobody was reset, nothing started
    fence = timing.fence_at(t0, TTL)
    time.sleep(max(0.0, fence + W + 1.0 - time.monotonic()))
    assert all(len(x.boots) == 1 for x in cluster.machines.values()), \
        {n: x.boots for n, x in cluster.machines.items()}
    assert not [s for s in read_stamps(cluster.stamps) if s["ev"] == "start"
                and s["mono"] > t_fault]
    for member in cluster.etcd.members[1:]:
        cluster.etcd.start_member(member)
    cluster.etcd.wait_healthy(30)
    cluster.wait_single_owner(TTL + SLACK + 10)
    never_two(read_stamps(cluster.stamps))


def test_move_hands_the_singleton_over_after_it_stopped(cluster: Cluster) -> None:
    """`hachain move db NODE`: the owner stops it, shows it down, releases the key; the
    target takes it without waiting for a lease to expire, with a larger token."""
    owner = cluster.wait_single_owner(60)
    target = next(n for n in sorted(cluster.machines) if n != owner)
    wait_until(lambda: all((hb := m.heartbeat("cluster")) is not None and
                           hb.extra.get("owners", {}).get("db") == owner
                           for n, m in cluster.machines.items() if n != owner), 10,
               "every node to see the owner")
    old_token = max(s["token"] for s in read_stamps(cluster.stamps))
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "hachain.cli", "move", "db", target, "-c",
                          os.path.join(cluster.tmp, "n0.toml"), "--timeout", "20"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"db moved to {target}" in out.stdout
    # `move` returns once the key is handed over; the target's start follows it
    start = wait_until(lambda: next((s for s in read_stamps(cluster.stamps)
                                     if s["ev"] == "start" and s["mono"] > t), None),
                       TTL + SLACK, f"db to start on {target}")
    stop = next(s for s in read_stamps(cluster.stamps) if s["ev"] == "stop"
                and s["node"] == owner and s["mono"] > t)
    assert start["node"] == target and start["token"] > old_token
    assert start["mono"] > stop["mono"]
    # no lease expiry was waited for: the old owner's lease is still alive and renewed
    hb = cluster.machines[owner].heartbeat("cluster")
    assert hb is not None and not hb.extra["error"]
    assert len(cluster.machines[owner].boots) == 1
    never_two(read_stamps(cluster.stamps))
    print(f"move: stopped on {owner} -> started on {target} in "
          f"{start['mono'] - stop['mono']:.2f} s")


def test_move_to_an_unknown_node_is_refused(cluster: Cluster) -> None:
    cluster.wait_single_owner(60)
    out = subprocess.run([sys.executable, "-m", "hachain.cli", "move", "db", "nowhere", "-c",
                          os.path.join(cluster.tmp, "n0.toml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no live node named 'nowhere'" in out.stderr


def test_a_singleton_held_down_on_its_owner_is_handed_to_another_node(
        cluster: Cluster) -> None:
    """The service cannot run on its owner (it exits at once there, until its restart
    intensity puts it in maintenance): the owner releases the key once the service is
    shown down, and another node runs it; the owner does not take it back."""
    owner = cluster.wait_single_owner(60)
    with open(f"{cluster.stamps}.fail-{owner}", "w"):
        pass
    m = cluster.machines[owner]
    for pid in m.namespace_pids().values():  # kill the running instance: it restarts
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if cluster.stamps.encode() in f.read():
                    os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    t = time.monotonic()
    wait_until(lambda: any(s["ev"] == "start" and s["node"] != owner and s["mono"] > t
                           for s in read_stamps(cluster.stamps)), 60,
               "the singleton to start on another node")
    new = cluster.wait_single_owner(10)
    assert new != owner
    hb = m.heartbeat("restarter")
    assert hb is not None and hb.extra.get("singletons_held") == ["db"]
    time.sleep(1.0)
    assert cluster.wait_single_owner(10) == new
    never_two([s for s in read_stamps(cluster.stamps) if s["ev"] != "fail"])
