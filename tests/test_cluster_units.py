"""The cluster pieces without etcd or processes (issue 18): the gate's fence rule, the
singleton cells of the restarter's state table, and the cluster layer's ownership logic
against an in-memory etcd (leases, keys with create/mod revisions, transactions)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from hachain import config
from hachain.channels import Heartbeat, HeartbeatWriter
from hachain.cluster import node as cnode
from hachain.cluster import timing
from hachain.restarter import states
from hachain.restarter.states import Ev, Event, State, Svc
from hachain.watchdog import health

WD = config.WatchdogConfig(device="sim", timeout=2, pet_interval=0.25)


def hb(layer: str, mono: float, **extra: Any) -> Heartbeat:
    return Heartbeat(layer, 10, mono, 0.0, 1, 0, extra)


# --- the gate ---------------------------------------------------------------------------

def gate(now: float, chb: Heartbeat | None, rhb: Heartbeat) -> health.GateResult:
    hbs = {"init": hb("init", now), "restarter": rhb, "cluster": chb}
    alive = {"init": True, "restarter": True, "cluster": True}
    return health.evaluate(now, hbs, alive, WD, cluster=True)


def test_gate_passes_before_the_fence_whatever_runs() -> None:
    c = hb("cluster", 100.0, fence_at=102.0, start_until=101.3)
    assert gate(101.9, c, hb("restarter", 101.9, singletons_up=["db"])).ok


def test_gate_fails_past_the_fence_while_a_singleton_is_up() -> None:
    c = hb("cluster", 102.5, fence_at=102.0, start_until=101.3)
    g = gate(102.5, c, hb("restarter", 102.4, singletons_up=["db"]))
    assert not g.ok and g.reasons == ("lease not renewed for 0.5 s past the fence (half the "
                                      "TTL), and singletons still up: db",)


def test_gate_fails_past_the_fence_without_a_report_written_since_start_until() -> None:
    # "none up" as of before start_until proves nothing: it may have started since
    c = hb("cluster", 102.5, fence_at=102.0, start_until=101.3)
    g = gate(102.5, c, hb("restarter", 101.2, singletons_up=[]))
    assert not g.ok and "has not shown its singletons down" in g.reasons[0]


def test_gate_passes_past_the_fence_when_singletons_were_shown_down() -> None:
    c = hb("cluster", 102.5, fence_at=102.0, start_until=101.3)
    assert gate(102.5, c, hb("restarter", 101.4, singletons_up=[])).ok


def test_gate_fails_when_the_cluster_layer_is_hung() -> None:
    c = hb("cluster", 90.0, fence_at=200.0, start_until=199.0)  # stale, process alive
    g = gate(100.0, c, hb("restarter", 100.0, singletons_up=[]))
    assert not g.ok and g.reasons[0].startswith("cluster heartbeat stale")


def test_gate_does_not_reset_for_a_dead_cluster_layer() -> None:
    # e.g. the etcd client is missing: no lease, nothing granted, nothing to fence
    hbs = {"init": hb("init", 100.0), "restarter": hb("restarter", 100.0, singletons_up=[]),
           "cluster": None}
    alive = {"init": True, "restarter": True, "cluster": False}
    assert health.evaluate(100.0, hbs, alive, WD, started=0.0, cluster=True).ok


def test_gate_without_cluster_ignores_the_cluster_layer() -> None:
    hbs = {"init": hb("init", 100.0), "restarter": hb("restarter", 100.0)}
    assert health.evaluate(100.0, hbs, {"init": True, "restarter": True}, WD).ok


# --- the state table ----------------------------------------------------------------------

SINGLE = config.ServiceConfig(name="db", command=("/bin/true",), singleton=True,
                              stop_timeout=0.5)


def run(s: Svc, *events: Event) -> tuple[Svc, list[Any]]:
    acts: list[Any] = []
    for e in events:
        s, a = states.step(s, e, SINGLE)
        acts += a
    return s, acts


def test_not_owned_start_is_standby_and_spawns_nothing() -> None:
    s, acts = run(Svc("db"), Event(Ev.START, 0, owned=False, owner="n1"))
    assert s.state is State.STANDBY and s.reason == "standby: owned by n1"
    assert not any(isinstance(a, states.Spawn) for a in acts)


def test_owned_takes_it_out_of_standby() -> None:
    s, acts = run(Svc("db"), Event(Ev.START, 0, owned=False), Event(Ev.OWNED, 1))
    assert s.state is State.STARTING and states.Spawn("db") in acts


def test_disowned_stops_a_running_singleton_then_it_stands_by() -> None:
    s, acts = run(Svc("db"), Event(Ev.START, 0), Event(Ev.SPAWNED, 0, pid=7),
                  Event(Ev.DISOWNED, 1, owned=False, reason="lease not renewed in time"))
    assert s.state is State.STOPPING and states.Kill("db", 15) in acts
    s, acts = run(s, Event(Ev.EXITED, 1.1, owned=False,
                           status=states.ExitStatus("killed", signal=15)))
    assert s.state is State.STANDBY and s.want == "up"
    assert not any(isinstance(a, states.Spawn) for a in acts)


def test_a_crash_while_not_owned_does_not_restart_it() -> None:
    s, _ = run(Svc("db"), Event(Ev.START, 0), Event(Ev.SPAWNED, 0, pid=7))
    s, acts = run(s, Event(Ev.EXITED, 20, owned=False, status=states.ExitStatus("exited", 1)))
    assert s.state is State.STANDBY
    assert not any(isinstance(a, states.Spawn) for a in acts)


def test_backoff_then_disowned_goes_to_standby() -> None:
    s, _ = run(Svc("db"), Event(Ev.START, 0), Event(Ev.SPAWNED, 0, pid=7),
               Event(Ev.EXITED, 0.1, status=states.ExitStatus("exited", 1)))
    assert s.state is State.BACKOFF
    s, acts = run(s, Event(Ev.DISOWNED, 0.2, owned=False))
    assert s.state is State.STANDBY and states.CancelTimer("db", "backoff_done") in acts
    s, acts = run(s, Event(Ev.BACKOFF_DONE, 0.5, owned=False))
    assert s.state is State.STANDBY and not acts


def test_stop_in_standby_is_stopped_by_administrator() -> None:
    s, _ = run(Svc("db"), Event(Ev.START, 0, owned=False), Event(Ev.STOP, 1, owned=False))
    assert s.state is State.STOPPED and s.want == "down"


# --- the cluster layer against an in-memory etcd --------------------------------------

class FakeEtcd:
    """Just what the cluster layer uses of etcd, with etcd's revision and lease rules."""

    def __init__(self) -> None:
        self.rev = 1
        self.leases: dict[int, float] = {}  # id -> expiry (monotonic)
        self.kv: dict[bytes, dict[str, Any]] = {}
        self.next_lease = 100
        self.down = False

    def expire(self, now: float) -> None:
        for lid, exp in list(self.leases.items()):
            if now >= exp:
                del self.leases[lid]
                for k in [k for k, v in self.kv.items() if v["lease"] == lid]:
                    del self.kv[k]
                    self.rev += 1


class Obj:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class FakeClient:
    def __init__(self, etcd: FakeEtcd, **_kw: Any) -> None:
        self.e = etcd
        self.transactions = Obj(create=lambda k: Obj(key=k, __eq__=None),
                                put=lambda k, v, lease=None: ("put", k, v, lease))

    def _check(self) -> None:
        if self.e.down:
            raise ConnectionError("unreachable")
        self.e.expire(time.monotonic())

    async def lease(self, ttl: int) -> Any:
        self._check()
        self.e.next_lease += 1
        self.e.leases[self.e.next_lease] = time.monotonic() + ttl
        return Obj(id=self.e.next_lease, ttl=ttl)

    async def refresh_lease(self, lid: int) -> Any:
        self._check()
        if lid not in self.e.leases:
            return Obj(TTL=0)
        self.e.leases[lid] = time.monotonic() + 4
        return Obj(TTL=4)

    async def get(self, key: bytes) -> Any:
        self._check()
        v = self.e.kv.get(key)
        return None if v is None else Obj(value=v["value"], lease=v["lease"],
                                          mod_revision=v["mod"])

    async def transaction(self, compare: Any, success: Any, failure: Any) -> Any:
        self._check()
        _op, key, value, lease = success[0]
        if key in self.e.kv:
            return False, []
        self.e.rev += 1
        self.e.kv[key] = {"value": value, "lease": lease, "mod": self.e.rev}
        return True, [Obj(response_put=Obj(header=Obj(revision=self.e.rev)))]

    async def get_prefix(self, prefix: bytes) -> list[Any]:
        self._check()
        return [Obj(key=k, value=v["value"]) for k, v in sorted(self.e.kv.items())
                if k.startswith(prefix)]

    async def put(self, key: bytes, value: bytes, lease: int | None = None) -> None:
        self._check()
        self.e.rev += 1
        self.e.kv[key] = {"value": value, "lease": lease, "mod": self.e.rev}

    async def close(self) -> None:
        pass


class EqCreate:
    pass


def make_node(tmp_path: Any, etcd: FakeEtcd, name: str) -> cnode.Node:
    text = f"""
[chain]
state_dir = "{tmp_path}/{name}"
heartbeat_interval = 0.1
[watchdog]
device = "sim"
timeout = 2
pet_interval = 0.25
[cluster]
endpoints = ["127.0.0.1:1", "127.0.0.1:2"]
node = "{name}"
lease_ttl = 4
margin = 0.25
[service.db]
command = ["/bin/true"]
singleton = true
stop_timeout = 0.5
"""
    cfg = config.parse(text)

    class Create:
        def __init__(self, key: bytes) -> None:
            self.key = key

        def __eq__(self, other: object) -> bool:  # type: ignore[override]
            return True

    def factory(**kw: Any) -> FakeClient:
        c = FakeClient(etcd, **kw)
        c.transactions.create = Create
        return c
    # its watchdog is armed: the tickler's heartbeat says so (a node takes no key before)
    HeartbeatWriter(cfg.chain.state_dir, "tickler").beat({"armed": True})
    return cnode.Node(cfg, client_factory=factory)


def test_first_node_takes_ownership_after_the_wait_and_the_second_stands_by(
        tmp_path: Any) -> None:
    etcd = FakeEtcd()
    a, b = make_node(tmp_path, etcd, "a"), make_node(tmp_path, etcd, "b")

    async def go() -> None:
        await a.tick()
        assert a.lease_id is not None and a.owned == {}  # key free: the wait starts
        assert a.wait == timing.takeover_wait(4, 2, 0.25) == 0.25
        await asyncio.sleep(a.wait + 0.05)
        await a.tick()
        assert list(a.owned) == ["db"]
        await b.tick()
        assert b.owned == {} and b.owners == {"db": "a"}
    asyncio.run(go())
    x = a.extra()
    assert x["fence_at"] == pytest.approx(x["t0"] + 2)
    assert x["start_until"] == pytest.approx(x["fence_at"] - timing.stop_budget(0.5, 0.1))


def test_unreachable_etcd_keeps_t0_and_moves_to_the_next_endpoint(tmp_path: Any) -> None:
    etcd = FakeEtcd()
    a = make_node(tmp_path, etcd, "a")

    async def go() -> None:
        await a.tick()
        t0 = a.t0
        etcd.down = True
        await a.round()  # one round: it fails and moves on (tick tries each member)
        assert a.t0 == t0 and a.error.startswith("ConnectionError") and a.ep == 1
    asyncio.run(go())


def test_an_expired_lease_loses_ownership_and_the_token_grows(tmp_path: Any) -> None:
    etcd = FakeEtcd()
    a, b = make_node(tmp_path, etcd, "a"), make_node(tmp_path, etcd, "b")

    async def go() -> None:
        await a.tick()
        await asyncio.sleep(a.wait + 0.05)
        await a.tick()
        token = a.owned["db"]
        await b.tick()
        etcd.leases[a.lease_id] = time.monotonic()  # a's lease expires now (a cut off)
        await b.tick()  # b sees the key gone: its wait starts
        assert b.owned == {}
        await asyncio.sleep(b.wait + 0.05)
        await b.tick()
        assert b.owned["db"] > token
        await a.tick()  # a learns at its next keepalive: not ours any more
        assert a.owned == {} and a.owners.get("db") == "b"
    asyncio.run(go())


def test_no_claim_once_start_until_has_passed(tmp_path: Any) -> None:
    etcd = FakeEtcd()
    a = make_node(tmp_path, etcd, "a")

    async def go() -> None:
        await a.tick()
        assert a.t0 is not None
        a.t0 -= 2  # as if the last renewal was 2 s ago: past start_until (t0 + 1.3)
        await asyncio.sleep(a.wait + 0.05)
        await a.claim()
        assert a.owned == {}
    asyncio.run(go())


def test_takeover_wait_starts_over_after_a_gap_in_observation(tmp_path: Any) -> None:
    """An absence seen before etcd became unreachable (or before this layer stopped)
    proves nothing about the key now (found by `hachain verify --cluster`)."""
    etcd = FakeEtcd()
    a = make_node(tmp_path, etcd, "a")
    a.wait = 0.3  # as with a watchdog timeout longer than half the TTL

    async def go() -> None:
        await a.tick()  # sees the key absent: the wait starts
        first = a.absent_since["db"]
        etcd.down = True
        await a.tick()  # a failed RPC: what it saw is forgotten
        assert a.absent_since == {}
        etcd.down = False
        await asyncio.sleep(0.35)
        await a.tick()
        assert a.owned == {} and a.absent_since["db"] > first + 0.3  # waits again
        a.absent_last["db"] -= 10 * a.period  # a gap of polls: it starts over too
        await a.claim()
        assert a.owned == {} and a.absent_since["db"] == a.absent_last["db"]
    asyncio.run(go())
