"""The cluster layer without etcd or processes (issue 18, the last three points): an RPC
that fails moves the round to the next endpoint at once, and an orderly stop withdraws
the grants, waits until the singletons are shown down here, then deletes their keys with
a `released` marker and revokes the lease, so another node takes them without waiting
for the lease to expire. Against an in-memory etcd with etcd's rules for what is used:
leases, keys with mod revisions, transactions comparing create or mod revision."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hachain import channels, config
from hachain.cluster import node as cnode


class Etcd:
    def __init__(self) -> None:
        self.rev = 1
        self.leases: dict[int, float] = {}  # id -> expiry (monotonic)
        self.kv: dict[bytes, dict[str, Any]] = {}
        self.next_lease = 100
        self.down: set[int] = set()  # ports that refuse
        self.calls: list[tuple[int, str]] = []  # (port, rpc)

    def drop_lease(self, lid: int) -> None:
        self.leases.pop(lid, None)
        for k in [k for k, v in self.kv.items() if v["lease"] == lid]:
            del self.kv[k]
            self.rev += 1


class Obj:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class Cmp:
    """`tx.create(key) == 0`, `tx.mod(key) == token`: a comparison the fake evaluates."""

    def __init__(self, field: str, key: bytes) -> None:
        self.field, self.key, self.want = field, key, 0

    def __eq__(self, other: object) -> Any:  # type: ignore[override]
        self.want = other
        return self

    def holds(self, e: Etcd) -> bool:
        v = e.kv.get(self.key)
        return (0 if v is None else v[self.field]) == self.want


class Client:
    def __init__(self, e: Etcd, port: int) -> None:
        self.e, self.port = e, port
        self.transactions = Obj(
            create=lambda k: Cmp("create", k), mod=lambda k: Cmp("mod", k),
            put=lambda k, v, lease=None: ("put", k, v, lease),
            delete=lambda k: ("delete", k, None, None))

    def _check(self, rpc: str) -> None:
        self.e.calls.append((self.port, rpc))
        if self.port in self.e.down:
            raise ConnectionError(f"port {self.port} refuses")

    async def lease(self, ttl: int) -> Any:
        self._check("lease")
        self.e.next_lease += 1
        self.e.leases[self.e.next_lease] = time.monotonic() + ttl
        return Obj(id=self.e.next_lease, ttl=ttl)

    async def refresh_lease(self, lid: int) -> Any:
        self._check("refresh")
        if lid not in self.e.leases:
            return Obj(TTL=0)
        self.e.leases[lid] = time.monotonic() + 4
        return Obj(TTL=4)

    async def revoke_lease(self, lid: int) -> None:
        self._check("revoke")
        self.e.drop_lease(lid)

    async def get(self, key: bytes) -> Any:
        self._check("get")
        v = self.e.kv.get(key)
        return None if v is None else Obj(value=v["value"], lease=v["lease"],
                                          mod_revision=v["mod"])

    async def get_prefix(self, prefix: bytes) -> list[Any]:
        self._check("get_prefix")
        return [Obj(key=k, value=v["value"]) for k, v in sorted(self.e.kv.items())
                if k.startswith(prefix)]

    async def put(self, key: bytes, value: bytes, lease: int | None = None) -> None:
        self._check("put")
        self.e.rev += 1
        old = self.e.kv.get(key)
        self.e.kv[key] = {"value": value, "lease": lease, "mod": self.e.rev,
                          "create": old["create"] if old else self.e.rev}

    async def transaction(self, compare: list[Cmp], success: list[Any],
                          failure: list[Any]) -> Any:
        self._check("txn")
        if not all(c.holds(self.e) for c in compare):
            return False, []
        self.e.rev += 1
        out = []
        for op, key, value, lease in success:
            if op == "put":
                old = self.e.kv.get(key)
                self.e.kv[key] = {"value": value, "lease": lease, "mod": self.e.rev,
                                  "create": old["create"] if old else self.e.rev}
                out.append(Obj(response_put=Obj(header=Obj(revision=self.e.rev))))
            else:
                self.e.kv.pop(key, None)
                out.append(Obj())
        return True, out

    async def close(self) -> None:
        pass


def make_node(tmp: Any, e: Etcd, name: str) -> cnode.Node:
    cfg = config.parse(f"""
[chain]
state_dir = "{tmp}/{name}"
heartbeat_interval = 0.1
[watchdog]
device = "sim"
timeout = 2
pet_interval = 0.25
[cluster]
endpoints = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
node = "{name}"
lease_ttl = 4
margin = 0.25
[service.db]
command = ["/bin/true"]
singleton = true
stop_timeout = 0.5
""")
    # its watchdog is armed: the tickler's heartbeat says so (a node takes no key before)
    channels.HeartbeatWriter(cfg.chain.state_dir, "tickler").beat({"armed": True})
    return cnode.Node(cfg, client_factory=lambda host, port, **_kw: Client(e, port))


async def owner(tmp: Any, e: Etcd, name: str = "a") -> cnode.Node:
    a = make_node(tmp, e, name)
    await a.tick()
    await asyncio.sleep(a.wait + 0.05)
    await a.tick()
    assert list(a.owned) == ["db"]
    return a


def restarter_beat(n: cnode.Node, **extra: Any) -> None:
    channels.HeartbeatWriter(n.cfg.chain.state_dir, "restarter").beat(extra)


def test_a_failed_rpc_retries_the_round_on_the_next_endpoint_at_once(tmp_path: Any) -> None:
    e = Etcd()

    async def go() -> None:
        a = await owner(tmp_path, e)
        t0 = a.t0
        assert t0 is not None and a.ep == 0
        e.down = {1}  # the member it talks to dies
        before = time.monotonic()
        await a.tick()
        # the same round went on at the next member: renewed, no error, the lease kept
        assert a.ep == 1 and a.error == "" and a.t0 is not None and a.t0 >= before
        assert list(a.owned) == ["db"] and a.lease_id in e.leases
        assert (1, "refresh") in e.calls and (2, "refresh") in e.calls
        e.down = {2, 3}  # and on: two members down, the third answers
        await a.tick()
        assert a.ep == 0 and a.error == "" and list(a.owned) == ["db"]
        e.down = {1, 2, 3}  # none answers: each tried once, t0 kept, the error shown
        e.calls.clear()
        t0 = a.t0
        await a.tick()
        assert a.t0 == t0 and a.error.startswith("ConnectionError")
        assert sorted(p for p, rpc in e.calls if rpc == "refresh") == [1, 2, 3]
    asyncio.run(go())


def test_leaving_withdraws_the_grant_and_gives_back_only_once_shown_down(
        tmp_path: Any) -> None:
    e = Etcd()

    async def go() -> None:
        a = await owner(tmp_path, e)
        b = make_node(tmp_path, e, "b")
        b.wait = 100.0  # b could only take it over from a release, never by expiry here
        await b.tick()
        assert b.owners == {"db": "a"}
        token = a.owned["db"]
        restarter_beat(a, cluster_seen=time.monotonic(), singletons_up=["db"])
        a.leave()
        assert a.extra()["owned"] == {} and a.extra()["leaving"] is True
        assert not a.shown_down()  # its restarter has not read the withdrawal yet
        restarter_beat(a, cluster_seen=time.monotonic(), singletons_up=["db"])
        assert not a.shown_down()  # read it, still stopping
        await a.tick()  # meanwhile it keeps its lease and takes nothing
        assert a.lease_id in e.leases and list(a.owned) == ["db"]
        restarter_beat(a, cluster_seen=time.monotonic(), singletons_up=[])
        assert a.shown_down()
        lease = a.lease_id
        await a.give_back()
        assert lease not in e.leases and a.lease_id is None and a.owned == {}
        assert e.kv[b"/hachain/released/db"]["value"] == str(token).encode()
        await b.tick()  # the key is gone, released at the token b saw: at once
        assert b.owned["db"] > token
    asyncio.run(go())


def test_a_stopped_restarter_while_init_stops_shows_the_singletons_down(
        tmp_path: Any) -> None:
    e = Etcd()

    async def go() -> None:
        a = await owner(tmp_path, e)
        a.leave()
        sd = a.cfg.chain.state_dir
        restarter_beat(a, stopped=True, singletons_up=[], cluster_seen=a.leaving - 1)
        channels.HeartbeatWriter(sd, "init").beat({"stopping": False})
        assert not a.shown_down()  # init is not stopping: the restarter may come back
        channels.HeartbeatWriter(sd, "init").beat({"stopping": True})
        assert a.shown_down()
        a.started = time.monotonic() + 1  # a record older than this layer proves nothing
        assert not a.shown_down()
    asyncio.run(go())


def test_giving_back_tries_every_endpoint(tmp_path: Any) -> None:
    e = Etcd()

    async def go() -> None:
        a = await owner(tmp_path, e)
        lease = a.lease_id
        assert lease is not None
        e.down = {1}
        a.leave()
        restarter_beat(a, cluster_seen=time.monotonic(), singletons_up=[])
        await a.give_back()
        assert lease not in e.leases and b"/hachain/singleton/db" not in e.kv
        assert a.ep == 1
    asyncio.run(go())


def test_a_node_owning_nothing_gives_back_at_once(tmp_path: Any) -> None:
    e = Etcd()

    async def go() -> None:
        a = await owner(tmp_path, e)
        b = make_node(tmp_path, e, "b")
        await b.tick()
        b.leave()
        assert b.shown_down()
        await b.give_back()
        assert b.lease_id is None and list(a.owned) == ["db"]
    asyncio.run(go())
