"""The whole-chain health gate: may the tickler pet the watchdog right now?

What this module owns: the one decision "is the chain healthy?", as a pure function of
what the tickler observed (heartbeats, whether their processes are alive) and the
`[watchdog]` configuration. It must not do I/O and must not read the clock: `now` is
passed in, so every rule here is tested with plain values and no sleeps.

The rules (docs/tickler.md explains why each exists):

- init and the restarter must each have a heartbeat no older than `heartbeat_timeout`.
  A layer whose heartbeat is older than that but whose process is *alive* is hung
  (stopped, deadlocked, busy-looping): fail at once.
- A layer whose process is *dead* is being restarted by init; it may go without a fresh
  heartbeat for up to `restart_grace` (measured from its last heartbeat). Longer means
  the restart is not working: fail.
- A layer that never wrote a heartbeat gets `restart_grace` from `started` (when the
  tickler began watching); with no `started`, a missing heartbeat fails at once.
- From the restarter's heartbeat: its event-loop lag must be at most `max_loop_lag`,
  its automatic restart rate at most `max_restart_rate`, no reboot may be requested,
  with `gate_critical` every critical service must report ok, and no machine check
  (`[check.NAME]`, run by the restarter) may report that it failed for good.
- Busy is not stuck: the restarter's heartbeat carries a progress counter (work items
  its loop handled). When the observer saw that counter change within the last
  `heartbeat_timeout`, a lag over `max_loop_lag` is a loop that is late but moving (a
  restart storm on a loaded machine), not a hang, and does not fail the gate. Without
  progress for `heartbeat_timeout` (or with no progress information) it fails. A hung
  restarter stops writing heartbeats at all, and the staleness rule above catches it in
  the same bound as ever.
- While init's *fresh* heartbeat says `stopping` (an orderly shutdown), the restarter's
  and the cluster layer's liveness rules are skipped: init is stopping them on purpose,
  under its own deadlines, and will stop the tickler (magic close) next. Init itself is
  still checked, so a shutdown that hangs in init still ends in a reset, and so is the
  cluster fence below: a node stopping past its fence with a singleton still up could
  otherwise run it beside the node that takes it over.

- With `[cluster]` (`cluster=True`): a hung cluster layer fails as the others do (a dead
  or missing one does not: it holds no lease, so nothing runs on it), and
  once the node's fence time has passed (half the lease TTL after its last acknowledged
  renewal, `fence_at` in the cluster heartbeat) the restarter must have shown every
  singleton down in a heartbeat written at or after `start_until` (when it stopped
  running them); else the node stops petting and the watchdog resets it before another
  node may start them (docs/cluster.md, hachain/cluster/timing.py).

Every failed rule adds one human line to `reasons`; the gate passes when there are none.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from hachain.channels import Heartbeat

if TYPE_CHECKING:
    from hachain.configtypes import WatchdogConfig

# The layers whose heartbeats gate the watchdog. The tickler does not gate itself: if it
# is stuck, it does not pet, which is the same outcome.
GATED_LAYERS = ("init", "restarter")


class GateResult(NamedTuple):
    """The verdict: `ok` when nothing is wrong, else one line per problem in `reasons`."""

    ok: bool
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The form published in the tickler's heartbeat and in gate.json."""
        return {"ok": self.ok, "reasons": list(self.reasons)}


def _num(x: float) -> str:
    """A number for a reason line: '3', '3.4', '0.25' (no trailing zeros)."""
    if not math.isfinite(x):
        return str(x)
    text = f"{x:.1f}" if abs(x) >= 1 else f"{x:.2g}"
    return text.removesuffix(".0")


def layer_reasons(layer: str, hb: Heartbeat | None, alive: bool, now: float,
                  cfg: WatchdogConfig, started: float | None) -> list[str]:
    """Why `layer`'s heartbeat does not show a live, unstuck process (empty if it does)."""
    if hb is None:
        if started is not None and now - started <= cfg.restart_grace:
            return []  # not started yet: give it the restart grace
        waited = f" after {_num(now - started)} s" if started is not None else ""
        return [f"{layer} heartbeat missing{waited} (grace {_num(cfg.restart_grace)} s)"]
    if not math.isfinite(hb.mono):
        return [f"{layer} heartbeat malformed: mono is {hb.mono!r}"]
    if hb.mono - now > cfg.heartbeat_timeout:
        # not written in this boot: a state_dir kept across a reboot (CLOCK_MONOTONIC
        # starts again at 0), which would otherwise read as fresh for that boot's uptime
        return [f"{layer} heartbeat from the future: written at {_num(hb.mono)} s, now "
                f"{_num(now)} s (monotonic; a file from another boot?)"]
    age = hb.age(now)
    if age <= cfg.heartbeat_timeout:
        return []
    if alive:
        shown = _num(age)
        if shown == _num(cfg.heartbeat_timeout):  # "3 s > 3 s" would read as a bug
            shown = f"{age:.2f}"
        return [(f"{layer} heartbeat stale: {shown} s > {_num(cfg.heartbeat_timeout)} s "
                 f"(pid {hb.pid} alive: hung)")]
    if age <= cfg.restart_grace:
        return []  # dead: init restarts it; allow the grace
    return [(f"{layer} heartbeat stale: {_num(age)} s > restart grace "
             f"{_num(cfg.restart_grace)} s (pid {hb.pid} dead: not restarted)")]


def _float_field(extra: Mapping[str, Any], key: str, reasons: list[str]) -> float | None:
    """extra[key] as a float; None when absent; a reason when it is not a number."""
    v = extra.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        reasons.append(f"restarter heartbeat malformed: {key} is {v!r}, expected a number")
        return None
    return float(v)


def restarter_reasons(extra: Mapping[str, Any], cfg: WatchdogConfig,
                      stalled: float | None = None) -> list[str]:
    """What the restarter's own report (its heartbeat's extra) says is wrong. `stalled`:
    seconds since its progress counter was last seen to change (None: unknown)."""
    reasons: list[str] = []
    lag = _float_field(extra, "lag", reasons)
    if lag is not None and lag > cfg.max_loop_lag and \
            (stalled is None or stalled > cfg.heartbeat_timeout):
        why = "" if stalled is None else f", no progress for {_num(stalled)} s"
        reasons.append(f"restarter loop lag {_num(lag)} s > {_num(cfg.max_loop_lag)} s{why}")
    rate = _float_field(extra, "restart_rate", reasons)
    if rate is not None and rate > cfg.max_restart_rate:
        reasons.append(f"restart storm: {_num(rate)} restarts/s > "
                       f"{_num(cfg.max_restart_rate)}/s")
    req = extra.get("reboot_requested")
    if req:
        reasons.append(f"reboot requested: {req}")
    if cfg.gate_critical:
        reasons.extend(critical_reasons(extra.get("critical"), reasons))
    reasons.extend(check_reasons(extra.get("checks"), reasons))
    return reasons


def _not_ok(table: Any, key: str, what: str, sink: list[str],
            line: Callable[[str, Mapping[str, Any]], str]) -> list[str]:
    """One reason per entry of the restarter's report `table` (its heartbeat's `key`)
    that is not `ok: true`, worded by `line(name, entry)`; an entry that is no table is
    "WHAT NAME: malformed status ...", a report that is no table goes to `sink`."""
    if table is None:
        return []
    if not isinstance(table, Mapping):
        sink.append(f"restarter heartbeat malformed: {key} is {table!r}, expected a table")
        return []
    out = []
    for name in sorted(table):
        info = table[name]
        if not isinstance(info, Mapping):
            out.append(f"{what} {name}: malformed status {info!r}")
        elif info.get("ok") is not True:
            out.append(line(name, info))
    return out


def check_reasons(checks: Any, sink: list[str]) -> list[str]:
    """One reason per machine check that failed for good with `action = "reboot"` (the
    restarter's report says `ok: false` for exactly those); malformed input to `sink`."""
    return _not_ok(checks, "checks", "check", sink, lambda name, info:
                   f"check {name} failed: {info.get('detail') or 'no detail'}")


def critical_reasons(critical: Any, sink: list[str]) -> list[str]:
    """One reason per critical service that is not ok; malformed input goes to `sink`."""
    def line(name: str, info: Mapping[str, Any]) -> str:
        why = info.get("reason")
        return f"critical service {name} not ok: {info.get('state', 'unknown')}" + \
            (f" ({why})" if why else "")
    return _not_ok(critical, "critical", "critical service", sink, line)


def fence_reasons(now: float, chb: Heartbeat | None, rhb: Heartbeat | None) -> list[str]:
    """Past the fence time, singletons must be shown down by a fresh enough report."""
    x = chb.extra if chb is not None else {}
    fence, until = x.get("fence_at"), x.get("start_until")
    if not isinstance(fence, (int, float)) or isinstance(fence, bool) or now < fence:
        return []
    up = rhb.extra.get("singletons_up") if rhb is not None else None
    until = float(until) if isinstance(until, (int, float)) else float(fence)
    if rhb is not None and rhb.mono >= until and up == []:
        return []
    late = f"lease not renewed for {_num(now - fence)} s past the fence (half the TTL)"
    if rhb is None or rhb.mono < until:
        return [f"{late}, and the restarter has not shown its singletons down since"]
    names = up if isinstance(up, list) and up else ["unknown" if not up else repr(up)]
    return [f"{late}, and singletons still up: {', '.join(map(str, names))}"]


def evaluate(now: float, hbs: Mapping[str, Heartbeat | None], alive: Mapping[str, bool],
             cfg: WatchdogConfig, started: float | None = None,
             cluster: bool = False,
             progress_at: Mapping[str, float] | None = None) -> GateResult:
    """The gate for the chain as observed at monotonic time `now`.

    `hbs[layer]` is the layer's last heartbeat (None when missing), `alive[layer]`
    whether the process that wrote it still exists (a missing entry counts as dead).
    `started` is when the observer began watching: layers with no heartbeat yet get
    `restart_grace` from then. `progress_at[layer]`, when known, is when the observer
    last saw that layer's progress counter change (see `ProgressWatch`).
    """
    ihb = hbs.get("init")
    reasons = layer_reasons("init", ihb, bool(alive.get("init", False)), now, cfg, started)
    # an orderly shutdown in progress (init alive): init stops the other layers under its
    # own deadlines, so their rules are skipped; not the fence, which protects the others
    stopping = ihb is not None and ihb.extra.get("stopping") is True and not reasons
    rhb = hbs.get("restarter")
    if not stopping:
        reasons.extend(layer_reasons("restarter", rhb, bool(alive.get("restarter", False)),
                                     now, cfg, started))
    if rhb is not None and not stopping:
        seen = (progress_at or {}).get("restarter")
        reasons.extend(restarter_reasons(rhb.extra, cfg,
                                         None if seen is None else max(0.0, now - seen)))
    if cluster:
        # A hung cluster layer is a hang of the chain; a dead or missing one is not a
        # reason to reset (say the etcd client is not installed): it holds no lease, so
        # the restarter stands its singletons by and the fence rule still holds.
        if alive.get("cluster", False) and not stopping:
            reasons.extend(layer_reasons("cluster", hbs.get("cluster"), True, now, cfg,
                                         started))
        # past the fence, even while stopping: another node may take the singletons
        # over once the lease is gone, and a node that still runs one must be reset
        reasons.extend(fence_reasons(now, hbs.get("cluster"), rhb))
    return GateResult(not reasons, tuple(reasons))


class ProgressWatch:
    """When each layer's progress counter was last seen to change: the observer's memory
    behind `evaluate(progress_at=...)`. Pure: `now` is passed in.

    A counter is keyed by the writer's pid, so a restarted layer starts afresh; a
    heartbeat without a whole-number `progress` forgets the layer (its lag is then judged
    without progress, as before counters existed)."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[int, int]] = {}  # layer -> (pid, counter)
        self.at: dict[str, float] = {}  # layer -> when the counter last changed

    def observe(self, layer: str, hb: Heartbeat | None, now: float) -> None:
        value = hb.extra.get("progress") if hb is not None else None
        if hb is None or not isinstance(value, int) or isinstance(value, bool):
            self.seen.pop(layer, None)
            self.at.pop(layer, None)
            return
        key = (hb.pid, value)
        if self.seen.get(layer) != key:
            self.seen[layer] = key
            self.at[layer] = now
