"""An orderly stop and a lost etcd member on a real etcd cluster (issue 18).

- Stopping the owner's cluster layer (SIGTERM), or its whole chain (SIGTERM to init,
  which stops the restarter, then the tickler, then the cluster layer), gives the lease
  back once its singletons are shown down there: another node starts the singleton well
  before the old lease could have expired (it was renewed until the hand-over), with a
  larger token, and never while the old instance lives.
- The owner's cluster layer moves to another member when the one it talks to dies (the
  raft leader first), and keeps its lease and its singleton: no stop, no reset.

Machines and etcd members are stopped in `finally` blocks (the `cluster` fixture)."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from hachain.cluster import timing
from hachain.simulators.machine import SimMachine
from tests.conftest import wait_until
from tests.helpers.etcd import EtcdCluster
from tests.test_cluster import (
    HB,
    SLACK,
    STOP,
    TTL,
    Cluster,
    never_two,
    node_config,
    read_stamps,
)
from tests.test_cluster import pytestmark as cluster_marks

pytestmark = cluster_marks
PERIOD = timing.keepalive_period(TTL)


@pytest.fixture
def cluster(tmp_path: Any) -> Iterator[Cluster]:
    c = Cluster(str(tmp_path))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def handed_over(c: Cluster, owner: str, t_term: float) -> dict[str, Any]:
    """The singleton's next start after `t_term`, on another node; checks the order."""
    old_token = max(s["token"] for s in read_stamps(c.stamps))
    start = wait_until(lambda: next((s for s in read_stamps(c.stamps) if s["ev"] == "start"
                                     and s["mono"] > t_term), None),
                       TTL + SLACK, "the singleton to start on another node")
    stop = next(s for s in read_stamps(c.stamps) if s["ev"] == "stop"
                and s["node"] == owner and s["mono"] > t_term)
    assert start["node"] != owner and start["token"] > old_token
    assert start["mono"] > stop["mono"]
    # The old lease was renewed until it was given back: an expiry could not have freed
    # the key before TTL after the stop began. This was sooner: no expiry was waited for.
    took = start["mono"] - t_term
    assert took < TTL, f"took {took:.2f} s: as long as a lease expiry"
    never_two(read_stamps(c.stamps))
    return {"node": start["node"], "took": took, "gap": start["mono"] - stop["mono"]}


def test_an_orderly_stop_gives_the_lease_back_and_another_node_takes_over_at_once(
        cluster: Cluster) -> None:
    a = cluster.wait_single_owner(60)
    ma = cluster.machines[a]
    lease = wait_until(lambda: (hb := ma.heartbeat("cluster")) is not None
                       and hb.extra.get("lease"), 10, "the owner's lease")
    wait_until(lambda: all((hb := m.heartbeat("cluster")) is not None and
                           hb.extra.get("owners", {}).get("db") == a
                           for n, m in cluster.machines.items() if n != a), 10,
               "every node to see the owner")
    # 1. the cluster layer alone: init restarts it, with a new lease (the old is revoked)
    pid = ma.host_pid_of("cluster")
    assert pid is not None
    t = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    r1 = handed_over(cluster, a, t)
    wait_until(lambda: (hb := ma.heartbeat("cluster")) is not None and
               hb.extra.get("lease") not in (None, lease) and not hb.extra.get("error"),
               10, f"{a}'s restarted cluster layer with a new lease")
    assert len(ma.boots) == 1, ma.boots
    b = r1["node"]
    mb = cluster.machines[b]
    wait_until(lambda: all((hb := m.heartbeat("cluster")) is not None and
                           hb.extra.get("owners", {}).get("db") == b
                           for n, m in cluster.machines.items() if n != b), 10,
               "every node to see the new owner")
    # 2. the whole chain of the new owner (init: restarter, tickler, then cluster layer)
    init = mb.init_host_pid()
    assert init is not None
    t = time.monotonic()
    os.kill(init, signal.SIGTERM)
    r2 = handed_over(cluster, b, t)
    mb.wait_boot(2, 30)  # init's orderly stop ends in a reboot of the machine
    assert mb.boots[1]["cause"] == "reboot" and len(ma.boots) == 1
    print(f"orderly stop, cluster layer: started on {r1['node']} {r1['took']:.2f} s after "
          f"the SIGTERM ({r1['gap']:.2f} s after the old stop stamp); whole chain: on "
          f"{r2['node']} {r2['took']:.2f} s ({r2['gap']:.2f} s)")


def etcd_leader(etcd: EtcdCluster) -> Any:
    """The member that is the raft leader (etcd's JSON gateway, maintenance status)."""
    for m in etcd.members:
        req = urllib.request.Request(f"http://{m.endpoint}/v3/maintenance/status",
                                     data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                st = json.loads(r.read())
        except OSError:
            continue
        if st.get("leader") and st["leader"] == st["header"]["member_id"]:
            return m
    return None


def test_the_owner_keeps_its_lease_when_the_etcd_member_it_talks_to_dies(
        tmp_path: Any) -> None:
    """One machine whose endpoints are a follower, the raft leader, another follower:
    kill the member it talks to (the follower: it moves to the leader), bring it back,
    kill the one it moved to (the leader: a new election follows). Each time the layer
    renews the same lease through another member, the singleton keeps its key and token
    (no failover) and the machine is not reset. After the follower's death the renewal
    comes before the singleton's start_until, so it runs on with no stop; after the
    leader's, the election may take longer than that (0.7 to 1.5 s measured, against
    1.3 s): then the restarter stops it and starts it again with the same token."""
    tmp = str(tmp_path)
    stamps = os.path.join(tmp, "stamps.jsonl")
    etcd = EtcdCluster(os.path.join(tmp, "etcd"))
    m: SimMachine | None = None
    budget = timing.stop_budget(STOP, HB)
    try:
        etcd.start()
        leader = wait_until(lambda: etcd_leader(etcd), 10, "an etcd leader")
        followers = [x.endpoint for x in etcd.members if x is not leader]
        eps = [followers[0], leader.endpoint, followers[1]]
        cfg = os.path.join(tmp, "n0.toml")
        node_config(cfg, "n0", eps, stamps, f"/t{os.getpid()}/")
        m = SimMachine(cfg, os.path.join(tmp, "n0"), panic_delay=0.2,
                       on_event=lambda _m: None)
        m.start()
        mach = m
        hb = wait_until(lambda: (h := mach.heartbeat("cluster")) is not None and
                        "db" in h.extra.get("owned", {}) and not h.extra["error"] and h,
                        60, "n0 to own db")
        lease = hb.extra["lease"]
        wait_until(lambda: any(s["ev"] == "start" for s in read_stamps(stamps)), 10,
                   "db to start")
        for round_, want in enumerate(("follower", "leader")):
            before = mach.heartbeat("cluster")
            assert before is not None
            ep, t0 = before.extra["endpoint"], before.extra["t0"]
            member = next(x for x in etcd.members if x.endpoint == ep)
            is_leader = etcd_leader(etcd) is member
            t = time.monotonic()
            etcd.kill_member(member)
            after = wait_until(
                lambda ep=ep, t=t: (h := mach.heartbeat("cluster")) is not None and
                h.extra["endpoint"] != ep and not h.extra["error"] and
                h.extra["t0"] > t and h, TTL, "the layer to renew through another "
                "member")
            assert after.extra["lease"] == lease and "db" in after.extra["owned"]
            gap = after.extra["t0"] - t0
            print(f"round {round_}: killed {member.name} ({ep}, "
                  f"{'leader' if is_leader else 'follower'}, wanted {want}); renewed "
                  f"through {after.extra['endpoint']} {after.extra['t0'] - t:.2f} s "
                  f"after the kill, {gap:.2f} s after the previous renewal")
            assert after.extra["t0"] < t0 + TTL  # (etcd said so: same lease, refreshed)
            if want == "follower":
                # renewed again before start_until of the renewal before the kill: the
                # restarter never saw its grant run out
                assert after.extra["t0"] < timing.start_until(t0, TTL, budget)
                assert not [s for s in read_stamps(stamps) if s["ev"] == "stop"]
            etcd.start_member(member)
            etcd.wait_healthy(30)
        # a restarter heartbeat that read the layer's state after the last round
        t = time.monotonic()
        wait_until(lambda: (h := mach.heartbeat("restarter")) is not None and
                   isinstance(h.extra.get("cluster_seen"), float) and
                   h.extra["cluster_seen"] > t and h.extra.get("singletons_up") == ["db"],
                   10, "the restarter to read the layer's state and show db up")
        st = read_stamps(stamps)
        assert {(s["node"], s["token"]) for s in st} == {("n0", st[0]["token"])}
        assert len(mach.boots) == 1 and mach.heartbeat("cluster").extra["lease"] == lease
    finally:
        if m is not None:
            m.stop()
        etcd.stop()
