"""`hachain verify --cluster`: the timed model of two nodes and one singleton.

What this module owns: a small discrete-time model of two hachain nodes sharing an etcd
lease service and one `singleton = true` service, an exhaustive exploration of every
state reachable with at most F faults (crash, hang, partition, partition while the
service's stop hangs), and two checks:

- safety: never two nodes running the singleton at the same tick (a hung node's process
  and one still stopping count as running; a reset kills it);
- liveness: from every reachable state, every fault-free path gets it running on exactly
  one node within a bound, which is reported in ticks and seconds.

The deadlines are the real ones: `hachain.cluster.timing.fence_at`, `start_until` and
`takeover_wait` with the model's TTL, watchdog timeout and margin, so the rule checked is
the rule that runs. Mutants break one part of it and must be caught:

- `cluster-no-wait`: the new owner starts at the lease's expiry, without the takeover
  wait, while the watchdog timeout is longer than half the TTL;
- `cluster-no-fence`: the gate ignores the fence (a node cut off whose stop hangs keeps
  petting);
- `cluster-fence-at-ttl`: the node fences at t0 + TTL instead of t0 + TTL/2;
- `cluster-stale-absence` (needs 2 faults): a node counts the takeover wait from an
  absence of the key it saw *before* it lost contact with etcd, so after a partition
  heals it may take a key that has only just expired (the bug this model found in the
  first version of the cluster layer: it now forgets what it saw on any failed RPC).

Abstractions (docs/verify.md): one tick is `TICK` seconds; a keepalive, an ownership
poll, the restarter's poll and the tickler's tick happen once per tick, in that order; a
stop takes one tick unless it hangs; etcd expires a lease exactly TTL ticks after the
tick of its last renewal (the earliest it may: the node's t0 is that tick); a reset
machine reboots after `REBOOT` ticks; a partition heals after `HEAL` ticks.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from hachain.cluster import timing

CLUSTER_MUTANTS = ("cluster-no-wait", "cluster-no-fence", "cluster-fence-at-ttl",
                   "cluster-stale-absence")
TICK = 0.5
REBOOT = 2
FAULTS = ("crash", "hang", "cut", "cut-stuck")


@dataclass(frozen=True)
class Params:
    ttl: int = 8  # ticks
    wd: int = 6  # watchdog timeout, ticks (longer than ttl / 2: the wait matters)
    margin: int = 1
    faults: int = 1
    mutant: str | None = None

    @property
    def fence(self) -> int:
        if self.mutant == "cluster-fence-at-ttl":
            return self.ttl
        return math.ceil(timing.fence_at(0, self.ttl))

    @property
    def start_until(self) -> int:
        # stop budget: one tick to stop, one for the restarter to report it
        return math.floor(timing.start_until(0, self.ttl, 2))

    @property
    def wait(self) -> int:
        if self.mutant == "cluster-no-wait":
            return 0
        return math.ceil(timing.takeover_wait(self.ttl, self.wd, self.margin))

    @property
    def heal(self) -> int:
        return self.ttl + self.wait + 4


# One node: (st, cut, gen, has, age, svc, stuck, wd, seen, left, mine)
#   st "up" | "hung" | "down"; cut: ticks until the partition heals (0: connected);
#   gen: its lease generation (0/1); has: it believes it holds a lease; age: ticks since
#   its last acknowledged renewal (capped); svc "off" | "on" | "stopping"; stuck: its
#   stop hangs; wd: ticks since its last pet; seen: ticks it has seen the key absent (-1:
#   present); left: reboot countdown; mine: it believes it owns the key.
Node = tuple[str, int, int, bool, int, str, bool, int, int, int, bool]
# The world: (nodes, key holder (node, gen) or None, lease ticks left per (node, gen),
#             faults used)
World = tuple[tuple[Node, ...], Any, tuple[int, int, int, int], int]

FRESH: Node = ("up", 0, 0, False, 99, "off", False, 0, -1, 0, False)


def running(n: Node) -> bool:
    return n[0] in ("up", "hung") and n[5] in ("on", "stopping")


def step(p: Params, w: World, fault: tuple[str, int] | None, first: int) -> World:
    """One tick of both nodes; `first` is the node whose ownership poll runs first."""
    nodes: list[list[Any]] = [list(n) for n in w[0]]
    key, rem, used = w[1], list(w[2]), w[3]
    cap = p.ttl + 2
    if fault is not None:
        kind, i = fault
        used += 1
        n = nodes[i]
        if kind == "crash":
            n[0], n[5], n[9] = "down", "off", REBOOT
        elif kind == "hang":
            n[0] = "hung"
        else:
            n[1] = p.heal
            n[6] = kind == "cut-stuck"
    # etcd: leases run down; an expired lease takes its key with it
    for j in range(4):
        if rem[j] > 0:
            rem[j] -= 1
            if rem[j] == 0 and key == (j // 2, j % 2):
                key = None
    for i in (first, 1 - first):
        n = nodes[i]
        if n[0] == "down":
            n[9] -= 1
            if n[9] <= 0:
                nodes[i] = list(FRESH)
                nodes[i][1], nodes[i][2] = n[1], n[2]  # the network; the last generation
            continue
        if n[0] == "hung":
            n[7] = min(n[7] + 1, p.wd + 1)
            continue
        lid = 2 * i + n[2]
        # keepalive (or a new lease)
        if n[1] == 0:
            if n[3] and rem[lid] > 0:
                rem[lid], n[4] = p.ttl, 0
            elif n[3]:
                n[3], n[10] = False, False  # expired at etcd: not ours any more
            if not n[3]:
                other = 2 * i + (1 - n[2])
                if rem[other] == 0:  # a free generation for the new lease
                    n[2], lid = 1 - n[2], other
                    rem[lid], n[3], n[4], n[10] = p.ttl, True, 0, False
        else:
            n[4] = min(n[4] + 1, cap)
            if p.mutant != "cluster-stale-absence":
                n[8] = -1  # no poll: an absence seen before the cut proves nothing now
        # ownership poll and claim
        if n[1] == 0:
            n[10] = n[3] and key == (i, n[2])
            if key is None:
                n[8] = min(n[8] + 1, p.wait) if n[8] >= 0 else 0
                if n[3] and n[4] < p.start_until and n[8] >= p.wait:
                    key, n[10], n[8] = (i, n[2]), True, -1
            else:
                n[8] = -1
        # the restarter
        allowed = n[10] and n[3] and n[4] < p.start_until
        if n[5] == "stopping" and not n[6]:
            n[5] = "off"
        if allowed and n[5] == "off":
            n[5] = "on"
        elif not allowed and n[5] == "on":
            n[5] = "stopping"
        # the tickler's gate
        fenced = n[4] >= p.fence and n[5] != "off" and p.mutant != "cluster-no-fence"
        n[7] = min(n[7] + 1, p.wd + 1) if fenced else 0
    for i, n in enumerate(nodes):
        if n[0] in ("up", "hung") and n[7] > p.wd:  # the watchdog resets the machine
            nodes[i] = ["down", n[1], n[2], False, cap, "off", False, 0, -1, REBOOT, False]
        if n[1] > 0:
            n[1] -= 1
            if n[1] == 0:
                n[6] = False
    out = tuple(tuple(n) for n in nodes)
    return out, key, (rem[0], rem[1], rem[2], rem[3]), used  # type: ignore[return-value]


def goal(w: World) -> bool:
    """Exactly one node runs it, holding the key, and nobody else is stopping it."""
    run = [i for i, n in enumerate(w[0]) if running(n)]
    return len(run) == 1 and w[0][run[0]][5] == "on" and w[1] is not None \
        and w[1][0] == run[0]


@dataclass
class Result:
    params: Params
    states: int = 0
    elapsed: float = 0.0
    violation: dict[str, Any] | None = None
    bound_ticks: int = 0

    @property
    def ok(self) -> bool:
        return self.violation is None

    def to_json(self) -> dict[str, Any]:
        p = self.params
        return {"ok": self.ok, "states": self.states, "elapsed": round(self.elapsed, 3),
                "ttl_s": p.ttl * TICK, "watchdog_s": p.wd * TICK, "margin_s": p.margin * TICK,
                "takeover_wait_s": p.wait * TICK, "faults": p.faults, "mutant": p.mutant,
                "bound_ticks": self.bound_ticks, "bound_s": self.bound_ticks * TICK,
                "violation": self.violation}


def _describe(a: World, b: World, label: str) -> str:
    def one(n: Node) -> str:
        return (f"{n[0]}{' cut' if n[1] else ''} lease {'age ' + str(n[4]) if n[3] else '-'} "
                f"svc {n[5]}{' (stop hangs)' if n[6] else ''} wd {n[7]}")
    return f"{label}: n0 [{one(b[0][0])}] n1 [{one(b[0][1])}] key {b[1]}"


def explore(p: Params, max_states: int = 2_000_000) -> Result:
    t = time.monotonic()
    res = Result(p)
    init: World = ((FRESH, FRESH), None, (0, 0, 0, 0), 0)
    parent: dict[World, tuple[World, str] | None] = {init: None}
    succ: dict[World, list[World]] = {}
    q = deque([init])
    while q:
        w = q.popleft()
        nxt: list[World] = []
        choices: list[tuple[str, tuple[str, int] | None]] = [("tick", None)]
        if w[3] < p.faults:
            choices += [(f"{k} n{i}", (k, i)) for k in FAULTS for i in (0, 1)
                        if w[0][i][0] == "up"]
        for label, fault in choices:
            for first in (0, 1):
                v = step(p, w, fault, first)
                if fault is None:
                    nxt.append(v)
                if v not in parent:
                    parent[v] = (w, label)
                    if sum(running(n) for n in v[0]) > 1:
                        res.violation = {"kind": "safety", "message": "two nodes run the "
                                         "singleton at once", "trace": _trace(parent, v)}
                        res.states, res.elapsed = len(parent), time.monotonic() - t
                        return res
                    q.append(v)
        succ[w] = nxt
        if len(parent) > max_states:
            res.violation = {"kind": "size", "message": "state space too large",
                             "trace": []}
            break
    res.states = len(parent)
    if res.violation is None:
        res.bound_ticks, bad = _longest(succ)
        if bad is not None:
            res.violation = {"kind": "liveness", "message": "a fault-free path never gets "
                             "the singleton running on exactly one node",
                             "trace": _trace(parent, bad)}
    res.elapsed = time.monotonic() - t
    return res


def _trace(parent: dict[World, tuple[World, str] | None], w: World) -> list[str]:
    out = []
    while parent.get(w) is not None:
        prev, label = parent[w]  # type: ignore[misc]
        out.append(_describe(prev, w, label))
        w = prev
    return out[::-1][-40:]


def _longest(succ: dict[World, list[World]]) -> tuple[int, World | None]:
    """The most fault-free ticks any reachable state needs to reach the goal (and stay
    there one tick); a state on a fault-free cycle that avoids the goal is returned."""
    memo: dict[World, int] = {}
    on_stack: set[World] = set()
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def dist(w: World) -> int | None:
        if goal(w):
            return 0
        if w in memo:
            return memo[w]
        if w in on_stack:
            return None
        on_stack.add(w)
        best = 0
        for v in succ.get(w, []):
            d = dist(v)
            if d is None:
                return None
            best = max(best, d + 1)
        on_stack.discard(w)
        memo[w] = best
        return best

    worst = 0
    for w in succ:
        d = dist(w)
        if d is None:
            return 0, w
        worst = max(worst, d)
    return worst, None


def run(faults: int, mutant: str | None, as_json: bool) -> int:
    configs = [Params(faults=faults, mutant=mutant)]
    if mutant is None:
        configs.append(Params(wd=3, faults=faults))  # W <= TTL/2: no wait needed
    results = []
    for p in configs:
        results.append(explore(p))
    if as_json:
        print(json.dumps([r.to_json() for r in results], indent=1))
    else:
        for r in results:
            p = r.params
            print(f"cluster model: 2 nodes, 1 singleton, 1 tick = {TICK:g} s, TTL "
                  f"{p.ttl * TICK:g} s, watchdog {p.wd * TICK:g} s, margin "
                  f"{p.margin * TICK:g} s: fence at {p.fence * TICK:g} s, takeover wait "
                  f"{p.wait * TICK:g} s; at most {p.faults} fault(s) of "
                  f"{', '.join(FAULTS)}" + (f"; mutant {p.mutant}" if p.mutant else ""))
            print(f"explored {r.states} states in {r.elapsed:.2f} s")
            if r.ok:
                print(f"PASS: never two nodes running the singleton; from every reachable "
                      f"state it runs on exactly one node within {r.bound_ticks} ticks "
                      f"({r.bound_ticks * TICK:g} s) of fault-free time")
            else:
                v = r.violation or {}
                print(f"FAIL: COUNTEREXAMPLE ({v.get('kind')}): {v.get('message')}")
                for k, line in enumerate(v.get("trace", [])):
                    print(f"  {k:3d}. {line}")
    return 0 if all(r.ok for r in results) else 1
