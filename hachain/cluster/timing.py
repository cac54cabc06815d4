"""The timing rule of self-fencing, as plain functions of plain numbers.

Owns: every deadline of the cluster layer, derived from the lease TTL L, the watchdog
timeout W, the drift margin m and the time t0 at which the last acknowledged keepalive
(or the lease grant) was *sent*, all on CLOCK_MONOTONIC. Must not: read a clock, do I/O
or import anything but the standard library (the tickler's gate and the restarter's
loop use it; docs/cluster.md explains the rule with a worked example).

- etcd cannot expire the lease before t0 + L (it started counting after t0).
- The node fences itself at F = t0 + L/2: from then on the tickler's gate fails unless
  the restarter has shown every singleton down, so a node that could not stop them is
  reset by the watchdog no later than F + W (its last pet was before F).
- The restarter starts no singleton from S = F - stop budget on, and stops those that
  run, so that an orderly stop (SIGTERM, then SIGKILL after stop_timeout) is over and
  reported before F: budget = max stop_timeout + 2 x heartbeat_interval (one interval to
  see the deadline, one to publish the result).
- Another node may start a singleton once its key is gone (the lease expired, at etcd,
  no earlier than t0 + L) and it has waited takeover_wait = max(0, W + m - L/2) more on
  its own clock: t0 + L + W + m - L/2 >= F + W + m. The margin m covers the rate drift
  of the two monotonic clocks over L/2 and the tickler's last tick before F.
- Keepalives go out every L/10, so between t0 and S at least two more are tried when
  the configuration passes `problems`: one lost keepalive never stops a singleton.
"""

from __future__ import annotations

import math

KEEPALIVE_FRACTION = 10  # keepalives every TTL / this


def keepalive_period(ttl: float) -> float:
    return ttl / KEEPALIVE_FRACTION


def fence_at(t0: float, ttl: float) -> float:
    """F: the node must not be running a singleton (nor pet, if it is) after this."""
    return t0 + ttl / 2


def stop_budget(max_stop_timeout: float, heartbeat_interval: float) -> float:
    return max_stop_timeout + 2 * heartbeat_interval


def start_until(t0: float, ttl: float, budget: float) -> float:
    """S: a singleton may be started (or kept running) only before this."""
    return fence_at(t0, ttl) - budget


def takeover_wait(ttl: float, watchdog_timeout: float, margin: float) -> float:
    """How long after its key is gone a singleton may start on another node."""
    return max(0.0, watchdog_timeout + margin - ttl / 2)


def failover_bound(ttl: float, watchdog_timeout: float, margin: float,
                   heartbeat_interval: float = 0.0) -> float:
    """From the owner's death or cut-off (its last acknowledged keepalive was no later) to
    the moment another node's restarter starts the singleton: the lease expires within
    the TTL, the next ownership poll (every keepalive period) sees the key gone, the
    takeover wait is served in whole polls, and the restarter sees the grant at its next
    heartbeat. The service's own start-up comes on top."""
    period = keepalive_period(ttl)
    wait = takeover_wait(ttl, watchdog_timeout, margin)
    return ttl + period + math.ceil(wait / period - 1e-9) * period + heartbeat_interval


def min_ttl(margin: float, budget: float) -> float:
    """The smallest TTL that leaves, between t0 and S, room for two keepalive periods:
    L/2 - budget - m >= 2 L/10, that is L >= 10/3 (budget + m)."""
    return 10 * (budget + margin) / 3


def problems(ttl: float, margin: float, max_stop_timeout: float, heartbeat_interval: float,
             has_singletons: bool, has_device: bool) -> list[tuple[str, str]]:
    """(key, rule) pairs for what makes this configuration unable to fence itself safely."""
    out: list[tuple[str, str]] = []
    budget = stop_budget(max_stop_timeout, heartbeat_interval)
    if has_singletons and not has_device:
        out.append(("watchdog.device", "singleton services need a watchdog device: a hung "
                    "node is fenced only by its reset"))
    need = min_ttl(margin, budget)
    if ttl < need:
        out.append(("cluster.lease_ttl", f"must be >= {need:.3g} = 10/3 x (margin {margin:g} "
                    f"+ singleton stop_timeout {max_stop_timeout:g} + 2 x heartbeat_interval "
                    f"{heartbeat_interval:g}), to stop singletons before half the TTL and "
                    f"still renew twice first, got {ttl:g}"))
    return out
