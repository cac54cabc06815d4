"""`hachain chaos --cluster`: a fault campaign on three simulated machines and etcd.

Three `hachain sim` machines (each in its own PID and network namespace, joined to the
host by a veth pair) share a 3-member etcd cluster on the host and run one singleton
service that stamps its start, its life (every 50 ms) and its stop with CLOCK_MONOTONIC
into a file on the host (`hachain/simulators/singleton_svc.py`). Each fault,
drawn by the seed from the kinds below, is injected from the host; the campaign then
waits for the cluster to settle (the singleton on exactly one node, every machine up and
renewing, every etcd member healthy) and checks, as an observer outside the nodes:

- never two live instances: no two instances' stamp spans overlap (checked over the
  whole campaign);
- failover within the bound: when the fault took the owner away, the singleton starts
  again within `timing.failover_bound` + slack of the fault;
- no needless reset: a machine that was not hung or killed is never reset (a cut-off
  owner stops the singleton itself; a lost quorum stops it everywhere, resetting none).

Kinds: kill-node (a power cut), hang-node (every process SIGSTOPped), partition-node
(its veth down for TTL + wait + 3 s), kill-etcd-member (one member SIGKILLed, restarted
after 3 s; the owner's member more often; no node may lose its lease), lose-etcd-quorum
(two members SIGKILLed, restarted after TTL + 2 s), and the single-machine kinds of
`hachain chaos` that apply to a node (`NODE_KINDS`), injected by their own rows of the
fault table (hachain/simulators/chaos_kinds.py) into one node (the owner with probability 0.6),
the cluster layer joining the layers they may hit. Those keep their own expectation (a
reset by the watchdog or a panic, or none at all) besides the cluster's invariants: when
one resets the owner, the singleton starts elsewhere within the reboot bound + the
failover bound; when it may not reset, the singleton stays on its node. After every
fault, every node converges: all four layers beat, the cluster layer renews without
error, and only the owner's restarter shows the singleton up. The report is
`DIR/report.json`. Needs root, unshare, nsenter, ip and etcd.

The work directory (`--dir`, else a new `/tmp/hachain-chaos-cluster-*`, named on the
first line of stderr) stays after the campaign: the nodes' configurations and consoles,
the stamps and the etcd members' logs are its evidence (the etcd data is removed).

What the host fails to do (an `ip` command, an etcd member that cannot start, exits or
is not healthy in time, a machine that cannot power on, a cluster that never settles
before a fault) ends the campaign as a stop signal does, with one line on stderr saying
what failed and where, kept as the report's `"error"`; a bug in the campaign still ends
in its traceback, after the same clean-up.

Ctrl-C, a closed terminal (SIGHUP) and SIGTERM end a campaign as they end the
single-machine one (chaos_runner's `stop_signals_raise` / `armed` /
`signals_deferred`): the fault under way is not judged, every machine, etcd member,
namespace and veth is removed, and the report holds the faults judged so far with
`"interrupted"` naming the signal. The steps that make something `stop()` must undo (the
namespaces, an etcd member's start, a machine's power-on) run whole.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from typing import Any

from hachain import channels, config
from hachain.cluster import timing
from hachain.simulators import chaos_kinds, chaos_report, converge
from hachain.simulators.chaos import _say
from hachain.simulators.chaos_runner import (
    MAX_SOCKET_PATH,
    CampaignError,
    CampaignInterrupted,
    Stop,
    armed,
    signals_deferred,
    stop_signals_raise,
)
from hachain.simulators.cluster_harness import EtcdCluster, HarnessError, Net, config_text
from hachain.simulators.machine import CONSOLE_NAME, SimMachine

CLUSTER_KINDS = ("kill-node", "hang-node", "partition-node", "kill-etcd-member",
                 "lose-etcd-quorum")
# The single-machine kinds that apply to a node of this campaign (its one service is the
# singleton, with no service watchdog: no "liveness" kinds; no tmpfs of the campaign's
# under the machines: no disk-full, run-full; boot-loop needs the built-in configuration),
# and the targets each draws from on that node: the cluster layer is a layer too.
NODE_KINDS: dict[str, tuple[str, ...]] = {
    "kill-service": ("db",), "stop-service": ("db",),
    "kill-layer": ("restarter", "tickler", "cluster"),
    "pause-layer": ("init", "restarter", "tickler", "cluster"),
    "hang-layer": ("init", "restarter", "tickler", "cluster"),
    "kill-init": ("init",), "config-broken": ("restarter", "tickler"),
    "io-stall": ("init", "restarter"),
}
ALL_KINDS = CLUSTER_KINDS + tuple(NODE_KINDS)
LAYERS = ("init", "restarter", "tickler", "cluster")
TTL, WD, MARGIN, HB = 4, 2, 0.25, 0.1
SLACK = 3.0  # start-up and scheduling on a loaded host
SETTLE = 60.0


def _stamps(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            return [json.loads(ln) for ln in f if ln.endswith("\n")]
    except FileNotFoundError:
        return []


def _instance(s: dict[str, Any]) -> tuple[str, str, int]:
    return s["node"], s.get("boot", ""), s["pid"]


def overlaps(stamps: list[dict[str, Any]]) -> list[str]:
    """Pairs of instances whose lives overlap (each: first to last stamp)."""
    spans: dict[tuple[str, str, int], list[float]] = {}
    for s in stamps:
        sp = spans.setdefault(_instance(s), [s["mono"], s["mono"]])
        sp[0], sp[1] = min(sp[0], s["mono"]), max(sp[1], s["mono"])
    items = sorted(spans.items(), key=lambda kv: kv[1][0])
    return [f"{a[0]} ran {sa[0]:.2f}..{sa[1]:.2f} while {b[0]} started at {sb[0]:.2f}"
            for (a, sa), (b, sb) in zip(items, items[1:], strict=False) if sb[0] <= sa[1]]


class Campaign:
    def __init__(self, dir: str, service: str, seed: int, kinds: tuple[str, ...],
                 log: Any = _say) -> None:
        self.dir = dir
        self.service = service
        self.rng = random.Random(seed)
        self.seed = seed
        self.kinds = kinds
        self.log = log
        self.stamps = os.path.join(dir, "stamps.jsonl")
        self.net = Net(3)
        self.etcd: EtcdCluster | None = None
        self.machines: dict[str, SimMachine] = {}
        self.bound = timing.failover_bound(TTL, WD, MARGIN, HB)
        self.wait = timing.takeover_wait(TTL, WD, MARGIN)
        self.cfg: config.Config | None = None

    def start(self) -> None:
        """Namespaces, etcd, the three machines. A stop signal may end it between steps,
        never inside one that makes something: `stop()` undoes what was made."""
        with signals_deferred():
            self.net.setup()
        self.etcd = EtcdCluster(os.path.join(self.dir, "etcd"), keep_logs=True,
                                extra_hosts=tuple(self.net.host_ip(i) for i in range(3)))
        for mem in self.etcd.members:
            with signals_deferred():
                self.etcd.start_member(mem)
        self.etcd.wait_healthy(30.0)
        for i in range(3):
            name = f"n{i}"
            eps = [f"{self.net.host_ip(i)}:{m.client_port}" for m in self.etcd.members]
            cfg = os.path.join(self.dir, f"{name}.toml")
            with open(cfg, "w") as f:
                f.write(config_text(name, eps, self.stamps, "/chaos/", self.service, TTL, WD,
                                    MARGIN, 0.5, HB))
            self.machines[name] = SimMachine(cfg, os.path.join(self.dir, name),
                                             panic_delay=0.2, on_event=lambda _m: None,
                                             netns=self.net.names[i])
            with signals_deferred():
                try:
                    self.machines[name].start()
                except (OSError, config.ConfigError) as e:
                    raise CampaignError(f"machine {name} cannot power on: {e} (console: "
                                        f"{self.machines[name].console})") from e
            self.cfg = config.load(cfg)

    def stop(self) -> None:
        """Every machine, etcd member, namespace and veth: each step runs even when one
        before it failed."""
        try:
            for m in self.machines.values():
                m.stop()
        finally:
            try:
                if self.etcd is not None:
                    self.etcd.stop()
            finally:
                self.net.teardown()

    def alive_on(self) -> list[str]:
        """The nodes whose singleton stamped its life in the last 0.3 s."""
        now = time.monotonic()
        return sorted({s["node"] for s in _stamps(self.stamps)
                       if s["ev"] == "alive" and s["mono"] >= now - 0.3})

    def owner(self) -> str | None:
        nodes = self.alive_on()
        return nodes[0] if len(nodes) == 1 else None

    def unsettled(self) -> tuple[str | None, str]:
        """(the owner, "") once the cluster has converged: every etcd member healthy; on
        every machine all four layers beating (no older than heartbeat_timeout), the
        cluster layer renewing without error; the singleton alive on one node only, and
        only that node's restarter showing it up. Else (None, the first condition not
        met). HarnessError when an etcd member the campaign did not kill has exited."""
        assert self.etcd is not None
        self.etcd.check_running()
        sick = [m.name for m in self.etcd.members if not self.etcd.healthy(m)]
        if sick:
            return None, f"etcd member {', '.join(sick)} not healthy"
        now = time.monotonic()
        for n, m in self.machines.items():
            if m.failure is not None:  # the simulator, not the chain: the campaign ends
                raise HarnessError(f"machine {n}: {m.failure}")
            if m.finished.is_set():  # its machine thread ended: it will not come back
                return None, f"{n} is off: {m.events[-1][1] if m.events else 'no event'}"
            hbs = {layer: m.heartbeat(layer) for layer in LAYERS}
            stale = [la for la, hb in hbs.items() if hb is None or hb.age(now) > 1.0]
            if stale:
                return None, f"{n}: no fresh heartbeat from {', '.join(stale)}"
            x = hbs["cluster"].extra  # type: ignore[union-attr]
            if x.get("error") or x.get("lease") is None:
                return None, f"{n}: cluster layer: {x.get('error') or 'no lease'}"
        alive = self.alive_on()
        if len(alive) != 1:
            return None, f"the singleton alive on {', '.join(alive) or 'no node'}"
        for n, m in self.machines.items():
            hb = m.heartbeat("restarter")
            up = hb.extra.get("singletons_up") if hb is not None else None
            if up != (["db"] if n == alive[0] else []):
                return None, f"{n}'s restarter shows singletons up: {up} (owner {alive[0]})"
        return alive[0], ""

    def settled(self) -> str | None:
        """The owner once the cluster has converged (`unsettled`), else None."""
        return self.unsettled()[0]

    def stalled(self) -> float:
        """Seconds some task of any node waited for a host CPU since the nodes powered
        on, summed over the nodes (SimMachine.cpu_stalled; 0 where unknown): what a busy
        host may add to a failover."""
        return sum(m.cpu_stalled() or 0.0 for m in self.machines.values())

    def wait_settled(self) -> str:
        """The owner once `settled` holds twice, half a second apart, with the same
        owner (a fault's effect may not show at once). TimeoutError naming the condition
        last unmet, at once when a machine is off for good (nothing to wait for);
        HarnessError (from `unsettled`) when the simulator itself failed."""
        deadline = time.monotonic() + SETTLE
        while True:
            o, why = self.unsettled()
            off = [n for n, m in self.machines.items() if m.finished.is_set()]
            if o is None and off:
                last = self.machines[off[0]].events
                raise TimeoutError(f"the cluster cannot settle: {off[0]} is off for good ("
                                   f"{last[-1][1] if last else 'no event'})")
            if o is not None:
                time.sleep(0.5)
                o2, why = self.unsettled()
                if o2 == o:
                    return o
                why = why or f"the owner changed from {o} to {o2}"
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster did not settle within {SETTLE:g} s "
                                   f"({why})")
            time.sleep(0.05)

    def talks_to(self, node: str) -> int | None:
        """The index of the etcd member `node`'s cluster layer talks to."""
        assert self.etcd is not None
        hb = self.machines[node].heartbeat("cluster")
        ep = str(hb.extra.get("endpoint", "")) if hb is not None else ""
        port = ep.rpartition(":")[2]
        return next((i for i, m in enumerate(self.etcd.members)
                     if str(m.client_port) == port), None)

    def effect_seen(self, kind: str, name: str, layer: str, t: float) -> bool:
        """Has the node noticed the fault injected at `t` (one the node rides out)? A
        killed service runs again (a new start stamp there), a killed layer beats again
        as a new process; the kinds that hold a condition are over when injected."""
        if kind == "kill-service":
            return any(s["ev"] == "start" and s["node"] == name and s["mono"] > t
                       for s in _stamps(self.stamps))
        if kind in ("kill-layer", "config-broken"):
            hb = self.machines[name].heartbeat(layer)
            return hb is not None and hb.started_mono > t
        return True

    def inject_node_kind(self, kind: str, name: str, layer: str, index: int) -> list[str]:
        """One single-machine fault on node `name`: its row of the fault table
        (hachain/simulators/chaos_kinds.py) does it, as on one machine; what broke while it held
        (config-broken, io-stall watch the node through it). config-broken edits the
        file the node runs from: the campaign's own copy."""
        assert self.cfg is not None
        m = self.machines[name]
        pre = converge.snapshot(m)
        if layer == "cluster":  # the table knows init's layers; this one is ours
            pre.layers = {**pre.layers, "cluster": m.host_pid_of("cluster")}
        work = os.path.join(self.dir, f"{name}-faults")
        os.makedirs(work, exist_ok=True)
        x = chaos_kinds.Injection(m, self.cfg, pre, layer,
                                  random.Random(f"{self.seed}:{index}"),
                                  os.path.join(self.dir, f"{name}.toml"), work)
        try:
            return chaos_kinds.KINDS[kind].inject(x)
        except (OSError, chaos_kinds.InjectError) as e:
            return [f"injection failed: {e}"]

    def inject(self, kind: str, target: int, layer: str = "", index: int = 0) -> dict[str, Any]:
        """Inject one fault; return when it is over (healed, restarted)."""
        assert self.etcd is not None
        name = f"n{target}"
        m = self.machines[name]
        if kind in NODE_KINDS:
            return {"target": name, "layer": layer,
                    "during": self.inject_node_kind(kind, name, layer, index)}
        if kind == "kill-node":
            m.power_cut()
        elif kind == "hang-node":
            for pid in m.namespace_pids().values():
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass
        elif kind == "partition-node":
            self.net.cut(target)
            time.sleep(TTL + self.wait + 3)
            self.net.heal(target)
        elif kind == "kill-etcd-member":
            mem = self.etcd.members[target]
            self.etcd.kill_member(mem)
            time.sleep(3)
            with signals_deferred():
                self.etcd.start_member(mem)
        elif kind == "lose-etcd-quorum":
            down = [x for j, x in enumerate(self.etcd.members) if j != target]
            for mem in down:
                self.etcd.kill_member(mem)
            time.sleep(TTL + 2)
            for mem in down:
                with signals_deferred():
                    self.etcd.start_member(mem)
        if kind in ("kill-etcd-member", "lose-etcd-quorum"):
            return {"target": f"m{target}"}  # the member killed, or the one left
        return {"target": name}

    def one(self, index: int, kind: str) -> dict[str, Any]:
        assert self.cfg is not None
        try:
            owner = self.wait_settled()
        except TimeoutError as e:  # no fault of this one's: the campaign cannot go on
            consoles = os.path.join(self.dir, "n*", CONSOLE_NAME)
            raise CampaignError(f"{e} before fault {index + 1} (consoles: {consoles})") from e
        target = self.rng.randrange(3)
        layer = ""
        if kind in ("kill-node", "hang-node", "partition-node", *NODE_KINDS) and \
                self.rng.random() < 0.6:
            target = int(owner[1:])  # the owner more often: that is where failover is
        talks_to = None
        if kind == "kill-etcd-member" and self.rng.random() < 0.6:
            # the member the owner's cluster layer talks to, more often: it must move to
            # another one without losing its lease
            talks_to = self.talks_to(owner)
            target = talks_to if talks_to is not None else target
        if kind in NODE_KINDS:
            if NODE_KINDS[kind] == ("db",):
                target = int(owner[1:])  # only the owner runs it
            layer = self.rng.choice(NODE_KINDS[kind])
        # the reset a fault must cause on its target: a node kind's own ("watchdog",
        # "panic"), a power cut's, a hung machine's watchdog's; any other is a failure
        expect = chaos_kinds.KINDS[kind].reboot if kind in NODE_KINDS else \
            {"kill-node": "power-cut", "hang-node": "watchdog"}.get(kind)
        rb = chaos_kinds.reboot_bound(self.cfg) + chaos_kinds.PANIC_DELAY
        boots = {n: len(m.boots) for n, m in self.machines.items()}
        stall0 = self.stalled()
        t = time.monotonic()
        rec: dict[str, Any] = {"index": index, "kind": kind, "owner_before": owner,
                               "mono": round(t, 3)}
        leases = {}
        if kind == "kill-etcd-member":
            rec["owners_member"] = talks_to is not None
            leases = {n: (hb.extra.get("lease") if (hb := m.heartbeat("cluster")) else None)
                      for n, m in self.machines.items()}
        rec.update(self.inject(kind, target, layer, index))
        problems: list[str] = list(rec.pop("during", []))
        if kind in NODE_KINDS and expect is None:
            limit = chaos_kinds.convergence_bound(kind, self.cfg)
            while not self.effect_seen(kind, rec["target"], layer, t) and \
                    time.monotonic() < t + limit:
                time.sleep(0.05)
            if not self.effect_seen(kind, rec["target"], layer, t):
                problems.append(f"the fault's effect was not seen within {limit:g} s")
        took = None
        hit_owner = rec["target"] == owner
        if hit_owner and (kind in ("kill-node", "hang-node", "partition-node") or
                          kind in NODE_KINDS and expect is not None):
            # a reset of the owner by a node kind comes within the reboot bound, while
            # its cluster layer may go on renewing: the failover bound counts from there
            limit = self.bound + SLACK + (TTL + self.wait + 3 if kind == "partition-node"
                                          else rb if kind in NODE_KINDS else 0)
            # plus the time the nodes' tasks waited for a host CPU (SimMachine.cpu_stalled)
            while True:
                waited = self.stalled() - stall0
                new = next((s for s in _stamps(self.stamps)
                            if s["ev"] == "start" and s["mono"] > t), None)
                if new is not None or time.monotonic() > t + limit + waited:
                    break
                time.sleep(0.05)
            rec["host_wait_s"] = round(waited, 2)
            if new is None:
                problems.append(f"no failover within {limit + waited:.2f} s")
            else:
                took = new["mono"] - t
                rec["new_owner"] = new["node"]
                if took > limit + waited:
                    problems.append(f"failover took {took:.2f} s > {limit:g} s (bound "
                                    f"{self.bound:g} s + {SLACK:g} s"
                                    + (f" + reboot bound {rb:g} s" if kind in NODE_KINDS
                                       else "")
                                    + f" + {waited:.2f} s waited for a CPU)")
        if expect is not None:
            # its reset belongs to this fault: wait for it before settling, or the next
            # fault would be blamed for it
            m = self.machines[rec["target"]]
            deadline = time.monotonic() + rb + 10
            while len(m.boots) <= boots[rec["target"]] and time.monotonic() < deadline:
                time.sleep(0.05)
            if len(m.boots) <= boots[rec["target"]]:
                problems.append(f"{rec['target']} was not reset within {rb + 10:g} s")
            elif kind in NODE_KINDS:
                boot = m.boots[boots[rec["target"]]]
                after = boot["mono"] - t
                rec["reset"], rec["reset_after_s"] = boot.get("cause"), round(after, 3)
                if boot.get("cause") != expect:
                    problems.append(f"{rec['target']} reset by {boot.get('cause')}, "
                                    f"expected {expect}")
                elif expect == "watchdog" and after > rb:
                    problems.append(f"{rec['target']} reset {after:.2f} s after the fault "
                                    f"> reboot bound {rb:g} s")
        try:
            rec["owner_after"] = self.wait_settled()
        except TimeoutError as e:
            problems.append(str(e))
        for n, m in self.machines.items():
            if len(m.boots) > boots[n] and (n != rec["target"] or expect is None):
                problems.append(f"{n} was reset though the fault ({kind} on "
                                f"{rec['target']}) may not reset it: "
                                + str(m.boots[-1].get("cause")))
        if kind == "kill-etcd-member":
            # the quorum stayed: no node lost its lease, the singleton did not move
            after = {n: (hb.extra.get("lease") if (hb := m.heartbeat("cluster")) else None)
                     for n, m in self.machines.items()}
            lost = sorted(n for n in leases if after[n] != leases[n])
            if lost:
                problems.append(f"{', '.join(lost)} lost the lease to one member's death")
            if rec.get("owner_after", owner) != owner:
                problems.append(f"the singleton moved from {owner} to {rec['owner_after']} "
                                "on one member's death")
        if kind in NODE_KINDS and expect is None:
            # a fault the node rides out moves nothing: no start on another node
            moved = sorted({s["node"] for s in _stamps(self.stamps) if s["ev"] == "start"
                            and s["mono"] > t and s["node"] != owner})
            if moved:
                problems.append(f"the singleton started on {', '.join(moved)} after "
                                f"{kind} on {rec['target']}, which needs no failover")
        problems += overlaps(_stamps(self.stamps))
        rec.update({"failover_s": took, "ok": not problems, "problems": problems})
        what = f"{kind}{' ' + layer if layer else ''} on {rec['target']}" + \
            (" (the owner's member)" if rec.get("owners_member") else "")
        self.log(f"fault {index + 1}: {what} (owner {owner})"
                 + (f": failover {took:.2f} s to {rec.get('new_owner')}" if took else "")
                 + ("" if not problems else " PROBLEM: " + "; ".join(problems)))
        return rec


def summarize(recs: list[dict[str, Any]], seed: int, kinds: tuple[str, ...],
              elapsed: float, interrupted: str | None,
              error: str | None = None) -> dict[str, Any]:
    """The report's summary of the faults judged (`ok`: none broke an invariant and the
    campaign was neither interrupted nor ended by an error)."""
    by_kind: dict[str, list[float]] = {}
    for r in recs:
        if r.get("failover_s") is not None:
            by_kind.setdefault(r["kind"], []).append(r["failover_s"])
    failed = sum(not r["ok"] for r in recs)
    return {
        "seed": seed, "faults": len(recs), "failed": failed,
        "elapsed_s": round(elapsed, 1), "bound_s": timing.failover_bound(TTL, WD, MARGIN, HB),
        "slack_s": SLACK, "kinds": {k: sum(r["kind"] == k for r in recs) for k in kinds},
        "failover": {k: {"n": len(v), "median": round(statistics.median(v), 2),
                         "max": round(max(v), 2)} for k, v in by_kind.items()},
        "ok": not failed and not interrupted and not error,
    }


def verdict(summary: dict[str, Any], scheduled: int, interrupted: str | None,
            path: str | None, error: str | None = None) -> str:
    """The campaign's last line: PASS or FAIL, with the counts and the report's path
    (None: it could not be written, the line before says why)."""
    broke = f"{summary['failed']} with a broken invariant; " + (
        f"report in {path}" if path else "report not written (see above)")
    if interrupted:
        return (f"FAIL: interrupted by {interrupted} after {summary['faults']} of "
                f"{scheduled} faults, {broke}")
    if error:
        return (f"FAIL: stopped by an error after {summary['faults']} of {scheduled} "
                f"faults, {broke}")
    return ("PASS" if not summary["failed"] else "FAIL") + f": {summary['faults']} faults, " \
        + broke


def run_campaign(faults: int, seed: int | None, report: str, kinds: list[str] | None,
                 service: str, work: str | None = None) -> int:
    """Run the campaign in `work` (default: a new temporary directory), inside
    stop_signals_raise: a stop signal or a failure of the host's ends it with a partial
    report. Write DIR/report.json, print the summary and the verdict; the exit status."""
    seed = seed if seed is not None else random.randrange(1 << 31)
    kinds_t = tuple(kinds or ALL_KINDS)
    os.makedirs(report, exist_ok=True)  # (cmd checked it can be made)
    if work is None:
        work = tempfile.mkdtemp(prefix="hachain-chaos-cluster-")
    os.makedirs(work, exist_ok=True)
    _say(f"chaos: --cluster seed {seed}, {faults} fault(s), kinds {','.join(kinds_t)}; "
         f"work dir {work}", sys.stderr)
    rng = random.Random(seed ^ 0x5EED)
    schedule = [rng.choice(kinds_t) for _ in range(faults)]
    recs: list[dict[str, Any]] = []
    t0 = time.monotonic()
    c: Campaign | None = None
    interrupted: str | None = None
    error: str | None = None
    try:
        with armed():  # a stop signal that came before raises here
            longest = os.path.join(work, "n0", "run", "hachain", channels.CONTROL_SOCKET)
            if len(longest.encode()) > MAX_SOCKET_PATH:
                raise CampaignError(f"{longest}: {len(longest.encode())} bytes, too long "
                                    f"for a Unix socket ({MAX_SOCKET_PATH}); give --dir a "
                                    "shorter path")
            c = Campaign(work, service, seed, kinds_t)
            c.start()
            for i, kind in enumerate(schedule):
                recs.append(c.one(i, kind))
    except CampaignInterrupted as e:
        interrupted = e.signame  # the fault under way is not judged: a partial report
    except (CampaignError, HarnessError) as e:
        if Stop.pending is not None:  # a child of ours the signal reached first
            interrupted = Stop.signame()
        else:  # the host failed the campaign: one line, a partial report, no traceback
            error = f"hachain chaos --cluster: {e} (seed {seed})"
            _say(error, sys.stderr)
    except Exception:
        if Stop.pending is None:
            raise  # a bug: its traceback (after the clean-up below)
        # a child the signal reached first (Ctrl-C goes to the whole process group: an
        # `ip` of ours dies of it): the signal ended the campaign, not the child's error
        interrupted = Stop.signame()
    finally:
        if c is not None:
            with signals_deferred():  # not armed: a second Ctrl-C only waits
                c.stop()
    # (not armed: a stop signal now only waits, and the report is written whole)
    summary = summarize(recs, seed, kinds_t, time.monotonic() - t0, interrupted, error)
    path = os.path.join(report, "report.json")
    unwritten = chaos_report.save(report, {"report.json": json.dumps(
        {"summary": summary, "faults": recs, "interrupted": interrupted, "error": error,
         "work_dir": work}, indent=1)})
    if unwritten:
        _say(f"hachain chaos --cluster: {unwritten}", sys.stderr)
    _say(json.dumps(summary))
    _say(verdict(summary, faults, interrupted, None if unwritten else path, error))
    return 0 if summary["ok"] and not unwritten else 1


CLUSTER_SUMMARY = {
    "kill-node": "power cut of a machine (the owner more often)",
    "hang-node": "every process of a machine SIGSTOPped: its watchdog resets it",
    "partition-node": "the machine's veth down for TTL + takeover wait + 3 s",
    "kill-etcd-member": "one etcd member SIGKILLed for 3 s (the owner's member more often)",
    "lose-etcd-quorum": "two etcd members SIGKILLed for TTL + 2 s",
}


def list_kinds() -> None:
    for k in CLUSTER_KINDS:
        print(f"{k:<20} {'cluster':<38} {CLUSTER_SUMMARY[k]}")
    for k, targets in NODE_KINDS.items():
        row = chaos_kinds.KINDS[k]
        print(f"{k:<20} {'node: ' + ','.join(targets):<38} reboot={row.reboot or '-'}: "
              f"{row.summary}")


def cmd(args: Any) -> int:
    if getattr(args, "list_kinds", False):
        list_kinds()
        return 0
    kinds = args.kinds.split(",") if args.kinds else None
    bad = [k for k in kinds or [] if k not in ALL_KINDS]
    if bad or not args.report or args.faults < 0:
        print(f"hachain chaos --cluster: needs --report DIR, --faults >= 0 and kinds of "
              f"{', '.join(ALL_KINDS)}" + (f" (got {', '.join(bad)})" if bad else ""),
              file=sys.stderr)
        return 2
    work = os.path.abspath(args.dir) if getattr(args, "dir", None) else None
    if work is not None and os.path.exists(work) and \
            (not os.path.isdir(work) or os.listdir(work)):
        print(f"hachain chaos --cluster: --dir {work}: not an empty directory (another "
              "campaign's evidence?): give a new or empty one", file=sys.stderr)
        return 2
    if (problem := chaos_report.report_dir_problem(args.report)) is not None:
        print(f"hachain chaos --cluster: {problem}", file=sys.stderr)
        return 2
    from hachain.simulators import singleton_svc
    service = singleton_svc.__file__  # run by path: it imports only the standard library
    with stop_signals_raise():  # Ctrl-C, SIGHUP, SIGTERM: a partial report, nothing left
        return run_campaign(args.faults, args.seed, args.report, kinds, service, work)
