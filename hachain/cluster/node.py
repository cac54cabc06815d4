"""The cluster layer: holds this node's etcd lease and its singletons' ownership keys.

Owns: the lease (granted, then kept alive every TTL/10), the ownership keys of the
`singleton = true` services (taken in an etcd transaction on the lease when a key is
free and the takeover wait has passed), and this layer's heartbeat,
`<state_dir>/hb/cluster.json`, whose `extra` is the whole channel to the rest of the
chain (docs/channels.md): the restarter reads which singletons it may run and until
when, the tickler's gate reads when the node fences itself. Must not: start, stop or
signal a service (the restarter does), pet or gate the watchdog (the tickler does).

This is the only module that imports an etcd client, and only when init starts the
layer (`[cluster]` is set). The timing rule is `hachain/cluster/timing.py`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import time
from typing import Any

from hachain import channels
from hachain.cluster import timing
from hachain.configtypes import Config

PROG = "hachain-cluster"
LAYER = "cluster"


ERR = channels.ErrOut(PROG)  # stderr, never waited on: a stuck console must not stop
# the lease's keep-alives (the lines it does not take wait in memory, retried each beat)


def log(msg: str) -> None:
    ERR.write(channels.log_line(PROG, msg))


class Node:
    """One node's view of the cluster; `tick()` does one round of RPCs."""

    def __init__(self, cfg: Config, client_factory: Any = None) -> None:
        assert cfg.cluster is not None
        self.cfg = cfg
        cl = cfg.cluster
        self.node = cl.node
        self.ttl = cl.lease_ttl
        self.period = timing.keepalive_period(cl.lease_ttl)
        self.endpoints = list(cl.endpoints)
        self.prefix = cl.prefix.rstrip("/") + "/"
        self.singletons = sorted(n for n, s in cfg.services.items() if s.singleton)
        stop = max((cfg.services[n].stop_timeout for n in self.singletons), default=0.0)
        self.budget = timing.stop_budget(stop, cfg.chain.heartbeat_interval)
        self.wait = timing.takeover_wait(cl.lease_ttl, cfg.watchdog.timeout, cl.margin)
        self.client_factory = client_factory
        self.client: Any = None
        self.ep = 0
        self.lease_id: int | None = None
        self.t0: float | None = None  # send time of the last acknowledged keepalive
        self.renewed_wall: float | None = None
        self.owned: dict[str, int] = {}  # singleton -> fencing token (mod_revision)
        self.owners: dict[str, str] = {}  # singleton -> the node that holds it (not us)
        self.absent_since: dict[str, float] = {}  # singleton -> first seen without owner
        self.absent_last: dict[str, float] = {}  # singleton -> last seen without owner
        self.error = ""
        self.since: dict[str, float] = {}  # singleton -> wall time we took it
        self.releasing: dict[str, float] = {}  # moving away: mono of the withdrawal's beat
        self.last_token: dict[str, int] = {}  # the token last seen on each key
        self.published: tuple[Any, ...] | None = None  # what the node record last said
        self.published_at = 0.0
        self.started = time.monotonic()
        self.leaving: float | None = None  # orderly stop: mono of the withdrawal's beat
        self.unarmed_logged = False  # a free key was passed over: the watchdog not armed
        self.last_boot_problem = ""  # what is wrong with last_boot.json, as last logged
        restarts = os.environ.get(channels.ENV_LAYER_RESTARTS, "0")
        self.hb = channels.HeartbeatWriter(cfg.chain.state_dir, LAYER,
                                           int(restarts) if restarts.isdigit() else 0,
                                           steady=False)  # (its lease times move on)
        self._resume()

    def key(self, name: str) -> bytes:
        return f"{self.prefix}singleton/{name}".encode()

    def _resume(self) -> None:
        """After a restart of this layer (same boot: state_dir is tmpfs): keep the lease
        and what it owns, so a crash of the layer is no failover. The first keepalive says
        whether the lease still lives."""
        old = channels.read_heartbeat(self.cfg.chain.state_dir, LAYER, regular=True)
        if old is None:
            return
        x = old.extra
        if isinstance(x.get("lease"), int) and isinstance(x.get("t0"), (int, float)) and \
                x.get("node") == self.node:
            self.lease_id, self.t0 = x["lease"], float(x["t0"])
            owned = x.get("owned")
            if isinstance(owned, dict):
                self.owned = {str(k): int(v) for k, v in owned.items()
                              if k in self.singletons and isinstance(v, int)}
            log(f"resuming lease {self.lease_id:x} of the previous cluster layer")

    # --- what the rest of the chain sees ------------------------------------------------

    def extra(self) -> dict[str, Any]:
        t0 = self.t0
        return {
            "node": self.node, "lease": self.lease_id, "ttl": self.ttl, "t0": t0,
            "fence_at": None if t0 is None else timing.fence_at(t0, self.ttl),
            "start_until": None if t0 is None else timing.start_until(t0, self.ttl,
                                                                      self.budget),
            "owned": {} if self.leaving is not None else
            {n: t for n, t in self.owned.items() if n not in self.releasing},
            "owners": dict(self.owners), "since": self.since,
            "releasing": sorted(self.releasing),
            "renewed_wall": self.renewed_wall, "endpoint": self.endpoints[self.ep],
            "error": self.error, "takeover_wait": self.wait,
            "leaving": self.leaving is not None,
        }

    def beat(self) -> None:
        self.hb.beat(self.extra())

    # --- etcd ---------------------------------------------------------------------------

    async def connect(self) -> Any:
        if self.client is None:
            host, _, port = self.endpoints[self.ep].rpartition(":")
            factory = self.client_factory
            if factory is None:
                import aetcd  # only here: a single-machine chain never imports it
                factory = aetcd.Client
            self.client = factory(host=host.strip("[]"), port=int(port),
                                  timeout=self.period, connect_wait_timeout=self.period)
        return self.client

    async def next_endpoint(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), self.period)
            except Exception:  # noqa: BLE001 - a broken channel is dropped anyway
                pass
        self.ep = (self.ep + 1) % len(self.endpoints)

    def lease_valid(self, now: float) -> bool:
        return self.t0 is not None and now < timing.fence_at(self.t0, self.ttl)

    async def renew(self) -> None:
        c = await self.connect()
        sent = time.monotonic()
        if self.lease_id is None:
            lease = await c.lease(self.ttl)
            self.lease_id, self.t0 = int(lease.id), sent
            self.owned, self.since = {}, {}
            self.renewed_wall = time.time()
            log(f"lease {self.lease_id:x} granted (TTL {self.ttl} s) by "
                f"{self.endpoints[self.ep]}")
            return
        reply = await c.refresh_lease(self.lease_id)
        if reply is None or int(reply.TTL) <= 0:
            log(f"lease {self.lease_id:x} expired at etcd: singletons "
                f"{', '.join(sorted(self.owned)) or '(none)'} are no longer ours")
            self.lease_id, self.owned, self.since = None, {}, {}
            return
        self.t0, self.renewed_wall = sent, time.time()

    def key_of(self, kind: str, name: str) -> bytes:
        return f"{self.prefix}{kind}/{name}".encode()

    async def release(self, c: Any, name: str, token: int) -> None:
        """`hachain move`: hand `name` over. First withdraw the grant (the restarter stops
        it); once a restarter heartbeat that read the withdrawal shows it down, delete the
        key at this token and leave a `released` marker in the same transaction, which
        lets the target take it at once (no lease expiry to wait for)."""
        if name not in self.releasing:
            self.beat()  # the withdrawal, now
            hb = channels.read_heartbeat(self.cfg.chain.state_dir, LAYER, regular=True)
            self.releasing[name] = hb.mono if hb is not None else time.monotonic()
            log(f"{name}: handing it over: stopping it here first")
            return
        rhb = channels.read_heartbeat(self.cfg.chain.state_dir, "restarter", regular=True)
        seen = rhb.extra.get("cluster_seen") if rhb is not None else None
        if rhb is None or not isinstance(seen, (int, float)) or \
                seen < self.releasing[name] or name in rhb.extra.get("singletons_up", [name]):
            return
        tx = c.transactions
        ok, _ = await c.transaction(
            compare=[tx.mod(self.key(name)) == token],
            # the request stays until the target holds the key (`hachain move` then
            # withdraws it): meanwhile no other node, this one included, takes it
            success=[tx.delete(self.key(name)),
                     tx.put(self.key_of("released", name), str(token).encode())],
            failure=[])
        if ok:
            log(f"{name}: released (token {token}): stopped here")
            self.owned.pop(name, None)
            self.since.pop(name, None)
            self.releasing.pop(name, None)

    async def moves(self, c: Any) -> dict[str, str]:
        """Pending `hachain move` requests: singleton -> target node."""
        out = {}
        for kv in await c.get_prefix(self.key_of("move", "")):
            out[bytes(kv.key).decode(errors="replace").rsplit("/", 1)[-1]] = \
                bytes(kv.value).decode(errors="replace")
        return out

    def held_here(self) -> set[str]:
        """Singletons the restarter holds down here (maintenance, failed): this node
        cannot run them, so it must not keep or take their keys."""
        rhb = channels.read_heartbeat(self.cfg.chain.state_dir, "restarter", regular=True)
        held = rhb.extra.get("singletons_held") if rhb is not None else None
        return {str(n) for n in held} if isinstance(held, list) else set()

    def watchdog_armed(self) -> bool:
        """Has this node's watchdog been armed, so that a hang of this node ends in a
        reset? The tickler's last heartbeat says `armed` (it writes none before it has
        opened the device, and says false after a magic close). Until then the node takes
        no key: a singleton started before the device is armed would outlive a hang of
        the chain (the tickler can take seconds to arm it on a slow box)."""
        thb = channels.read_heartbeat(self.cfg.chain.state_dir, "tickler", regular=True)
        return thb is not None and thb.extra.get("armed") is True

    async def claim(self) -> None:
        """Look at every ownership key; take the free ones once it is safe."""
        c = await self.connect()
        moves = await self.moves(c) if self.singletons else {}
        held = self.held_here() if self.singletons else set()
        armed = self.watchdog_armed() if self.singletons else False
        if armed:
            self.unarmed_logged = False
        for name in list(self.releasing):
            if moves.get(name, self.node) == self.node and name not in held:
                log(f"{name}: move request gone: keeping it")
                self.releasing.pop(name)
        for name in self.singletons:
            got = await c.get(self.key(name))
            now = time.monotonic()
            if got is not None:
                self.absent_since.pop(name, None)
                self.absent_last.pop(name, None)
                self.last_token[name] = int(got.mod_revision)
                holder = bytes(got.value).decode(errors="replace")
                if holder == self.node and self.lease_id is not None and \
                        int(got.lease) == self.lease_id:
                    self.owned[name] = int(got.mod_revision)
                    self.owners.pop(name, None)
                    if moves.get(name, self.node) != self.node or name in held:
                        # moved away, or held down here (maintenance, failed): hand it
                        # to a node that can run it
                        await self.release(c, name, int(got.mod_revision))
                else:
                    if name in self.owned:
                        log(f"{name}: ownership key now held by {holder}: not ours")
                    self.owned.pop(name, None)
                    self.since.pop(name, None)
                    self.owners[name] = holder
                continue
            if name in self.owned:
                log(f"{name}: ownership key gone: not ours")
            self.owned.pop(name, None)
            self.since.pop(name, None)
            self.owners.pop(name, None)
            # the wait counts from an absence seen by polls no more than two periods
            # apart: after a gap (this layer stopped, etcd unreachable) it starts over
            last = self.absent_last.get(name)
            if last is None or now - last > 2 * self.period:
                self.absent_since[name] = now
            self.absent_last[name] = now
            first = self.absent_since[name]
            if self.lease_id is None or self.t0 is None or \
                    now >= timing.start_until(self.t0, self.ttl, self.budget):
                continue
            if moves.get(name, self.node) != self.node or name in held or \
                    self.leaving is not None:
                continue  # being moved, this node cannot run it, or it is stopping
            if not armed:
                if not self.unarmed_logged:
                    self.unarmed_logged = True
                    log(f"{name}: free, but not taken: this node's watchdog is not armed "
                        "yet (the tickler's heartbeat does not say armed)")
                continue
            if now - first < self.wait:
                # released by its owner at the token we last saw (it was shown down
                # there first): no lease expiry to wait for. Otherwise, the rule.
                rel = await c.get(self.key_of("released", name))
                if rel is None or name not in self.last_token or \
                        bytes(rel.value) != str(self.last_token[name]).encode():
                    continue
            tx = c.transactions
            ok, resp = await c.transaction(
                compare=[tx.create(self.key(name)) == 0],
                success=[tx.put(self.key(name), self.node.encode(), lease=self.lease_id)],
                failure=[])
            if ok:
                token = int(resp[0].response_put.header.revision)
                self.owned[name], self.since[name] = token, time.time()
                self.absent_since.pop(name, None)
                log(f"{name}: ownership taken, fencing token {token}")

    def last_boot(self) -> dict[str, Any] | None:
        """Why this machine last booted (the tickler's record), for `status --cluster`.
        Read without waiting (a FIFO there is no record: this runs in the loop that
        renews the lease); a file that is no record, or a field of the wrong type, is
        left out, with one line the first time it is seen."""
        path = os.path.join(self.cfg.chain.persist_dir, channels.LAST_BOOT)
        why = ""
        try:
            rec = channels.read_json(path, regular=True)
        except OSError as e:
            rec, why = None, e.strerror or str(e)
        except ValueError as e:  # (nested too deeply included)
            rec, why = None, channels.json_problem(e)
        if rec is not None and not isinstance(rec, dict):
            rec, why = None, f"not a JSON object but {type(rec).__name__}"
        if rec is None:
            self._say_last_boot(path, why)
            return None
        gate = rec.get("last_gate_failure")
        out = {"cause": rec.get("cause"), "wall": rec.get("wall"),
               "reasons": gate.get("reasons") if isinstance(gate, dict) else None}
        wrong = []
        for key, ok, what in (
                ("cause", lambda v: isinstance(v, str), "a string"),
                ("wall", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                 and math.isfinite(v), "a finite number"),
                ("reasons", lambda v: isinstance(v, list) and
                 all(isinstance(x, str) for x in v), "a list of strings")):
            if out[key] is not None and not ok(out[key]):
                wrong.append(f"{key} is {out[key]!r:.40}, not {what}")
                out[key] = None  # (1e400 published would be no JSON to a strict reader)
        self._say_last_boot(path, "; ".join(wrong))
        return out

    def _say_last_boot(self, path: str, why: str) -> None:
        """One line for what is wrong with last_boot.json, once until it changes."""
        if why and why != self.last_boot_problem:
            log(f"warning: {path}: {why}: ignored")
        self.last_boot_problem = why

    async def publish(self) -> None:
        """`<prefix>node/<node>` on the lease: what `hachain status --cluster` shows of
        this node. Written when it changes, else about once a second."""
        if self.lease_id is None:
            return
        now = time.monotonic()
        what = (self.lease_id, tuple(sorted(self.owned.items())))
        if what == self.published and now - self.published_at < 1.0:
            return
        rec = {"node": self.node, "lease": self.lease_id, "ttl": self.ttl,
               "renewed_wall": self.renewed_wall, "last_boot": self.last_boot(),
               "owned": {n: {"token": t, "since": self.since.get(n)}
                         for n, t in self.owned.items()}}
        c = await self.connect()
        await c.put(f"{self.prefix}node/{self.node}".encode(),
                    json.dumps(rec, sort_keys=True).encode(), lease=self.lease_id)
        self.published, self.published_at = what, now

    async def tick(self) -> None:
        """One round: renew, look at the keys, publish. When an RPC fails, the next
        endpoint gets the whole round again at once, while the round is younger than one
        keepalive period (each endpoint at most once a round): a member that died or
        hangs costs one RPC deadline, not a keepalive period."""
        started = time.monotonic()
        for _ in self.endpoints:
            if await self.round() or time.monotonic() - started >= self.period:
                return

    async def round(self) -> bool:
        try:
            await asyncio.wait_for(self.renew(), 2 * self.period)
            await asyncio.wait_for(self.claim(), 2 * self.period)
            await asyncio.wait_for(self.publish(), 2 * self.period)
            self.error = ""
            return True
        except Exception as e:  # noqa: BLE001 - any failure: try the next member
            # An absence seen before losing contact proves nothing about the key now: it
            # may have been taken and have expired again since (found by `hachain verify
            # --cluster`): the takeover wait starts over from the next poll that sees it.
            self.absent_since.clear()
            self.absent_last.clear()
            why = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            if why != self.error:
                log(f"etcd {self.endpoints[self.ep]}: {why}")
            self.error = why
            await self.next_endpoint()
            return False

    # --- an orderly stop ----------------------------------------------------------------

    def leave(self) -> None:
        """SIGTERM: withdraw every grant (the restarter stops what runs) and take nothing
        more; `left_safely` then says when the lease may be given back."""
        if self.leaving is None:
            self.beat()  # the withdrawal, now
            hb = channels.read_heartbeat(self.cfg.chain.state_dir, LAYER, regular=True)
            self.leaving = hb.mono if hb is not None else time.monotonic()
            log("stopping: singletons "
                f"{', '.join(sorted(self.owned)) or '(none)'} withdrawn; the lease is "
                "given back once they are shown down here")

    def shown_down(self) -> bool:
        """Are this node's singletons certainly down? Either a restarter heartbeat that
        read the withdrawal lists none of them up (the cluster layer alone is stopped),
        or the chain is stopping (init says so) and the restarter's last heartbeat, from
        after this layer started, says its orderly stop is over (every service reaped)."""
        if not self.owned:
            return True
        sd = self.cfg.chain.state_dir
        rhb = channels.read_heartbeat(sd, "restarter", regular=True)
        if rhb is None:
            return False
        x = rhb.extra
        if x.get("stopped") is True and rhb.mono >= self.started:
            ihb = channels.read_heartbeat(sd, "init", regular=True)
            if ihb is not None and ihb.extra.get("stopping") is True:
                return True
        seen, up = x.get("cluster_seen"), x.get("singletons_up")
        return self.leaving is not None and isinstance(seen, (int, float)) and \
            seen >= self.leaving and isinstance(up, list) and not set(up) & set(self.owned)

    async def give_back(self) -> None:
        """The singletons are down here: delete each key at its token with a `released`
        marker (the next node takes it at once, as after `hachain move`), then revoke
        the lease (this node's record goes with it). Every endpoint is tried."""
        for _ in self.endpoints:
            try:
                c = await self.connect()
                tx = c.transactions
                for name, token in sorted(self.owned.items()):
                    await asyncio.wait_for(c.transaction(
                        compare=[tx.mod(self.key(name)) == token],
                        success=[tx.delete(self.key(name)),
                                 tx.put(self.key_of("released", name), str(token).encode())],
                        failure=[]), 2 * self.period)
                    log(f"{name}: released (token {token}): stopped here")
                    self.owned.pop(name)
                if self.lease_id is not None:
                    await asyncio.wait_for(c.revoke_lease(self.lease_id), 2 * self.period)
                    log(f"lease {self.lease_id:x} revoked")
                self.lease_id, self.t0, self.owned, self.since = None, None, {}, {}
                return
            except Exception as e:  # noqa: BLE001 - try the next member
                log(f"etcd {self.endpoints[self.ep]}: giving the lease back: "
                    f"{type(e).__name__}: {e}".splitlines()[0][:200])
                await self.next_endpoint()


async def _run(node: Node, hb_interval: float) -> int:
    term = asyncio.Event()  # SIGTERM, SIGINT: leave (below)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, term.set)
    init = channels.init_from_env()

    async def beats() -> None:
        while not done.is_set():
            node.beat()
            if ERR.pending:
                ERR.retry()
            if (why := channels.init_gone(init)) is not None:
                log(f"{why}: exiting")
                done.set()
                return
            try:
                await asyncio.wait_for(done.wait(), hb_interval)
            except TimeoutError:
                pass

    async def keepalives() -> None:
        # An orderly stop withdraws the grants and keeps renewing until the singletons
        # are shown down here, then gives the lease back: another node takes over at
        # once. If that cannot be shown within one TTL (a restarter killed mid-stop), it
        # exits with the lease, whose expiry then hands them over (docs/cluster.md).
        deadline: float | None = None
        last = -math.inf
        while not done.is_set():
            now = time.monotonic()
            if term.is_set():
                node.leave()
                deadline = deadline or now + node.ttl
                if node.shown_down():
                    await node.give_back()
                    break
                if now > deadline:
                    log("stopping with the lease: the singletons were not shown down "
                        f"within {node.ttl} s; it expires at etcd")
                    break
            # after a round no member answered (say the raft leader died and the rest
            # are electing one), the next comes a heartbeat interval later, not a period
            every = min(node.period, hb_interval) if node.error else node.period
            if now - last >= every:
                last = now
                await node.tick()
                node.beat()
                every = min(node.period, hb_interval) if node.error else node.period
            wait = hb_interval if term.is_set() else \
                max(0.0, every - (time.monotonic() - last))
            try:
                await asyncio.wait_for(done.wait() if term.is_set() else term.wait(), wait)
            except TimeoutError:
                pass
        done.set()

    await asyncio.gather(beats(), keepalives())
    node.beat()
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    from hachain import config, snapshot
    p = argparse.ArgumentParser(prog=PROG, description="hachain cluster layer")
    p.add_argument("-c", "--config",
                   default=os.environ.get(channels.ENV_CONFIG) or config.DEFAULT_PATH)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg, _snap = snapshot.for_layer(args.config)
    except config.ConfigError as e:
        for line in e.errors:
            log(line)
        return 2
    if cfg.cluster is None:
        log(f"{args.config}: no [cluster] table: nothing to do")
        return 2
    node = Node(cfg)
    log(f"node {node.node}: etcd {', '.join(node.endpoints)}, lease TTL {node.ttl} s, "
        f"singletons: {', '.join(node.singletons) or '(none)'}")
    try:
        return asyncio.run(_run(node, cfg.chain.heartbeat_interval))
    finally:
        ERR.drain(1.0)  # the last lines, to a stderr that may be slow
