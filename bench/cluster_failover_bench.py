"""Singleton failover time on a real etcd cluster and three simulated machines.

    .venv/bin/python bench/cluster_failover_bench.py [--runs 20] [--kind kill|hang|partition|stop]
                                                     [--ttl 4] [--timeout 2] [--json]

Starts a 3-member etcd cluster (Debian's etcd-server) on free 127.0.0.1 ports and three
`hachain sim` machines (for `--kind partition` each also in its own network namespace,
joined to the host by a veth pair), with one `singleton = true` service that stamps its
start (hachain/simulators/singleton_svc.py). Each run finds the owner and injects the fault:

- kill: a power cut of the owner's machine (every process dies at once; it boots again);
- hang: every process of the owner's machine SIGSTOPped (its watchdog resets it);
- partition: `ip link set <host side of its veth> down` (healed after the run);
- stop: an orderly stop of the owner's chain (SIGTERM to its init, which then reboots the
  machine): its cluster layer gives the lease back once the singleton is down, so this
  is a hand-over, not a failover: no lease expiry is waited for.

Failover time = from the fault to the service's start stamp on the new owner (the
service is ready when it starts: `ready = "none"`), both CLOCK_MONOTONIC. Reported: the
median, 90th percentile and maximum over the runs, beside the timing rule's bound
(`hachain/cluster/timing.py`: TTL, one ownership poll, the takeover wait in whole polls,
one restarter heartbeat; plus start-up)
and sbd's diskless default (stonith-watchdog-timeout = 2 x SBD_WATCHDOG_TIMEOUT 5 s =
10 s, before Pacemaker even starts the resource). Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hachain.cluster import timing  # noqa: E402
from hachain.simulators import singleton_svc  # noqa: E402
from hachain.simulators.cluster_harness import EtcdCluster, Net, config_text  # noqa: E402
from hachain.simulators.machine import SimMachine  # noqa: E402
from tests.conftest import wait_until as wait  # noqa: E402

SBD_DISKLESS_DEFAULT = 10.0
SVC = singleton_svc.__file__


def stamps_of(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            return [json.loads(ln) for ln in f if ln.endswith("\n")]
    except FileNotFoundError:
        return []


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--kind", choices=("kill", "hang", "partition", "stop"), default="kill")
    p.add_argument("--ttl", type=int, default=4)
    p.add_argument("--timeout", type=int, default=2)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="hachain-failover-")
    stamps = os.path.join(tmp, "stamps.jsonl")
    net = Net(3) if a.kind == "partition" else None
    machines: dict[str, SimMachine] = {}
    etcd: EtcdCluster | None = None
    took: list[float] = []
    try:
        if net is not None:
            net.setup()
        hosts = tuple(net.host_ip(i) for i in range(3)) if net is not None else ()
        etcd = EtcdCluster(os.path.join(tmp, "etcd"), extra_hosts=hosts)
        etcd.start()
        for i in range(3):
            name = f"n{i}"
            host = net.host_ip(i) if net is not None else "127.0.0.1"
            eps = [f"{host}:{m.client_port}" for m in etcd.members]
            cfg = os.path.join(tmp, f"{name}.toml")
            with open(cfg, "w") as f:
                f.write(config_text(name, eps, stamps, "/bench/", SVC, a.ttl, a.timeout))
            machines[name] = SimMachine(cfg, os.path.join(tmp, name), panic_delay=0.2,
                                        on_event=lambda _m: None,
                                        netns=net.names[i] if net is not None else None)
            machines[name].start()

        def single_owner() -> str | None:
            now = time.monotonic()
            nodes = {s["node"] for s in stamps_of(stamps)
                     if s["ev"] == "alive" and s["mono"] >= now - 0.3}
            return next(iter(nodes)) if len(nodes) == 1 else None

        for run in range(a.runs):
            owner = str(wait(single_owner, 60, "single owner"))
            # every machine up, with a fresh cluster heartbeat and no etcd error
            wait(lambda: all((hb := m.heartbeat("cluster")) is not None
                             and hb.age(time.monotonic()) < 1 and not hb.extra.get("error")
                             for m in machines.values()), 60, "all nodes settled")
            m = machines[owner]
            i = int(owner[1:])
            t_fault = time.monotonic()
            if a.kind == "kill":
                m.power_cut()
            elif a.kind == "stop":
                init = m.init_host_pid()
                assert init is not None
                os.kill(init, signal.SIGTERM)
            elif a.kind == "hang":
                for pid in m.namespace_pids().values():
                    try:
                        os.kill(pid, signal.SIGSTOP)
                    except ProcessLookupError:
                        pass
            else:
                assert net is not None
                net.cut(i)
            new = wait(lambda t=t_fault: next((s for s in stamps_of(stamps)
                                               if s["ev"] == "start" and s["mono"] > t),
                                              None), 60, "failover")
            took.append(new["mono"] - t_fault)
            if not a.json:
                print(f"run {run + 1}: {owner} -> {new['node']} in {took[-1]:.2f} s "
                      f"(token {new['token']})", flush=True)
            if net is not None:
                net.heal(i)
    finally:
        for x in machines.values():
            x.stop()
        if etcd is not None:
            etcd.stop()
        if net is not None:
            net.teardown()
    bound = timing.failover_bound(a.ttl, a.timeout, 0.25, 0.1)
    took.sort()
    res = {"kind": a.kind, "runs": len(took), "ttl": a.ttl, "watchdog_timeout": a.timeout,
           "median": statistics.median(took), "p90": took[int(0.9 * (len(took) - 1))],
           "max": took[-1], "min": took[0], "bound": bound,
           "target": a.ttl + a.timeout + 1, "sbd_diskless_default": SBD_DISKLESS_DEFAULT}
    if a.json:
        print(json.dumps(res))
    else:
        print(f"{a.kind}: failover over {len(took)} runs: median {res['median']:.2f} s, "
              f"p90 {res['p90']:.2f} s, max {res['max']:.2f} s (min {res['min']:.2f} s); "
              f"timing-rule bound {bound:g} s + start-up; target TTL + W + 1 = "
              f"{res['target']:g} s; sbd diskless default {SBD_DISKLESS_DEFAULT:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
