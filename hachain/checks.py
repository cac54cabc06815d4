"""Machine checks: what one try of a check found, and when a failing check has failed.

A machine check (`[check.NAME]`, docs/checks.md) tests the machine rather than one
service, as the `watchdog` daemon's tests do: the load average, the memory available, a
temperature, a file that must keep changing, a pid file, an interface that must keep
receiving, a host that must answer a ping, a command. This module owns two pure things:

- the verdict of one try from what was read (`load_verdict(text, c)` and its kin): a
  pass or a failure and one line saying what was found;
- the streak of one check (`observe`, `repaired`): how long it has failed, which repair
  command is next, whether it has failed for good, and the error number of its last
  failing try (told to a repair command). `now` is passed in;
- the standing a restarter leaves for the next one (`saved`, `restored`): a failing
  check's streak, so a restarter that is restarted does not start its failure afresh,
  and the repair command it left running (`InFlight`: pid, start time, deadline), so
  the next one waits for it instead of starting another beside it.

Must not: read a file, run a command or look at a clock; the restarter's
`hachain/restarter/machine.py` does that and feeds the results here.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from hachain.configtypes import CheckConfig

# A streak's states, as `hachain status` shows them
PENDING = "pending"  # not tried yet
OK = "ok"
FAILING = "failing"  # failing, for less than retry_timeout (or a repair's time to prove)
REPAIRING = "repairing"  # a repair command runs
FAILED = "failed"  # failing past retry_timeout with no repair left
HELD = "held"  # a rescue boot holds it out of the gate (the boot loop blamed it)


# The error number of a failed try, told to the repair commands ($HACHAIN_CHECK_ERROR)
# as the `watchdog` daemon tells its repair-binary (its first argument): an errno value,
# or one of the daemon's own from 245 up (watchdog(8), "CHECK BINARY"). A repair script
# written for the daemon therefore finds the number it expects.
EMAXLOAD = 253  # the load average is too high
ETOOHOT = 252  # the temperature is too high
ENOLOAD = 251  # /proc/loadavg has no data
ENOCHANGE = 250  # the file did not change within its max_age
EINVMEM = 249  # /proc/meminfo has no usable data
ECHKILL = 248  # the check command was killed by a signal
ETOOLONG = 247  # the try did not answer within its timeout
EDONTKNOW = 245  # none of the above is known


class Verdict(NamedTuple):
    ok: bool
    detail: str
    code: int = 0  # a failure's error number (above); 0 on a pass


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def load_verdict(text: str, c: CheckConfig) -> Verdict:
    """`/proc/loadavg` ("0.52 0.58 0.59 1/389 12345") against `max_load`."""
    fields = text.split()
    try:
        load = float(fields[(1, 5, 15).index(c.average)])
    except (IndexError, ValueError):
        return Verdict(False, f"/proc/loadavg unreadable: {text[:40]!r}", ENOLOAD)
    what = f"load average ({c.average} min) {_num(load)}"
    if load > c.max_load:
        return Verdict(False, f"{what} > {_num(c.max_load)}", EMAXLOAD)
    return Verdict(True, what)


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


def memory_verdict(text: str, c: CheckConfig) -> Verdict:
    """`/proc/meminfo`'s MemAvailable against `min_available`."""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            try:
                avail = int(parts[1]) * (1024 if parts[2:3] == ["kB"] else 1)
            except (IndexError, ValueError):
                break
            if avail < c.min_available:
                return Verdict(False, f"{_mib(avail)} available < {_mib(c.min_available)}",
                               errno.ENOMEM)
            return Verdict(True, f"{_mib(avail)} available")
    return Verdict(False, "/proc/meminfo has no MemAvailable line", EINVMEM)


def temperature_verdict(text: str, c: CheckConfig) -> Verdict:
    """A sensor file in millidegrees Celsius (hwmon's temp*_input, thermal's temp)."""
    try:
        deg = int(text.strip()) / 1000
    except ValueError:
        return Verdict(False, f"{c.path}: not a temperature: {text.strip()[:40]!r}",
                       errno.EINVAL)
    if deg > c.max_temperature:
        return Verdict(False, f"{c.path}: {_num(deg)} °C > {_num(c.max_temperature)} °C",
                       ETOOHOT)
    return Verdict(True, f"{_num(deg)} °C")


def pid_in(text: str) -> int | str:
    """The pid a pid file holds (its first word), or why it holds none."""
    word = text.split()[0] if text.split() else ""
    if not word.isdigit() or not 0 < int(word) < 1 << 22:
        return f"holds no pid ({text.strip()[:24]!r})"
    return int(word)


class Seen(NamedTuple):
    """What a `file` or `interface` check saw last: the value (mtime in ns, or bytes
    received) and the monotonic time it last changed."""

    value: int
    changed: float


def file_verdict(mtime_ns: int, wall_ns: int, seen: Seen | None, now: float,
                 c: CheckConfig) -> tuple[Verdict, Seen]:
    """Has the file changed within `max_age`? The first look dates its mtime by the wall
    clock; from then on a change is timed by the monotonic clock, so a wall clock that
    steps makes no file look old or new."""
    if seen is None:
        age = max(0.0, (wall_ns - mtime_ns) / 1e9)
        seen = Seen(mtime_ns, now - age)
    elif mtime_ns != seen.value:
        seen = Seen(mtime_ns, now)
    age = now - seen.changed
    if age > c.max_age:
        return Verdict(False, f"{c.path}: unchanged for {age:.0f} s > {_num(c.max_age)} s",
                       ENOCHANGE), seen
    return Verdict(True, f"changed {age:.0f} s ago"), seen


def interface_verdict(rx: int, seen: Seen | None, now: float,
                      c: CheckConfig) -> tuple[Verdict, Seen]:
    """Have the interface's received bytes grown since the last try? The first try has
    nothing to compare with and passes."""
    if seen is None or rx != seen.value:
        return Verdict(True, f"{rx} bytes received"), Seen(rx, now)
    return Verdict(False, f"{c.interface}: nothing received for {now - seen.changed:.0f} s "
                   f"({rx} bytes)", errno.ENETUNREACH), seen


# --- the streak ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Streak:
    """One check's standing. `since`: what retry_timeout counts from (the failure's
    first failing try, then the end of each repair; monotonic; None while it passes);
    `began`: the failure's first failing try; `repairs`: the repair commands run in this
    failure."""

    state: str = PENDING
    since: float | None = None
    began: float | None = None
    detail: str = ""
    repairs: int = 0
    tries: int = 0
    failures: int = 0
    last_try: float | None = None
    code: int = 0  # the last failing try's error number (0 while it passes)


# What observe/repaired ask the caller to do
REPAIR = "repair"  # run c.repair[streak.repairs - 1]
FAIL = "failed"  # it has failed for good (log it once)
RECOVER = "recovered"  # it passes again after a failure (log it once)


def observe(st: Streak, v: Verdict, now: float, c: CheckConfig) -> tuple[Streak, str | None]:
    """A try's verdict: the new streak, and REPAIR, FAIL, RECOVER or None."""
    tried = replace(st, tries=st.tries + 1, last_try=now, detail=v.detail)
    if v.ok:
        was = st.state
        ok = replace(tried, state=OK, since=None, began=None, repairs=0, code=0)
        return ok, RECOVER if was in (FAILING, FAILED, REPAIRING) else None
    since = st.since if st.since is not None else now
    failing = replace(tried, since=since, failures=st.failures + 1, code=v.code or EDONTKNOW,
                      began=st.began if st.began is not None else now,
                      state=FAILED if st.state == FAILED else FAILING)
    if now - since < c.retry_timeout or st.state == FAILED:
        return failing, None
    if failing.repairs < len(c.repair):
        return replace(failing, state=REPAIRING, repairs=failing.repairs + 1), REPAIR
    return replace(failing, state=FAILED), FAIL


def repaired(st: Streak, v: Verdict, now: float) -> Streak:
    """A repair command ended (`v`: how): the check has retry_timeout again from now to
    pass; its next try says whether the repair worked."""
    return replace(st, state=FAILING, since=now,
                   detail=f"{st.detail}; repair {st.repairs}: {v.detail}")


# --- the standing carried over to the next restarter -------------------------------------

_SAVED_FLOATS = ("since", "began", "last_try")
_SAVED_INTS = ("repairs", "tries", "failures", "code")
PID_MAX = 1 << 22  # the kernel's highest pid_max (PID_MAX_LIMIT on 64-bit)


class InFlight(NamedTuple):
    """A repair command under way, as the next restarter finds it: its pid, its start
    time (field 22 of /proc/PID/stat: with the pid, one process for the life of a boot)
    and its deadline (monotonic: started + repair_timeout)."""

    pid: int
    start_time: int
    deadline: float


class Restored(NamedTuple):
    """A standing taken back: the streak, what its check saw last, and the repair the
    last restarter left running (None: none; the streak is then never `repairing`)."""

    streak: Streak
    seen: Seen | None
    repair: InFlight | None = None


def saved(st: Streak, seen: Seen | None, key: str,
          repair: InFlight | None = None) -> dict[str, Any] | None:
    """A failing streak as the next restarter takes it back (None: nothing to carry:
    a check that passes or was not tried starts as well afresh). `key` names the
    check's configuration: a changed check is not taken back. `repair`: the repair
    command running now (kept only while the streak is `repairing`)."""
    if st.state not in (FAILING, REPAIRING, FAILED):
        return None
    d: dict[str, Any] = {"key": key, "state": st.state, "detail": st.detail}
    d.update({f: getattr(st, f) for f in _SAVED_FLOATS + _SAVED_INTS})
    if seen is not None:
        d["seen"] = [seen.value, seen.changed]
    if repair is not None and st.state == REPAIRING:
        d["repair"] = {"pid": repair.pid, "start_time": repair.start_time,
                       "deadline": repair.deadline}
    return d


def _count(v: Any, below: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < below


def _in_flight(raw: Any, now: float, repair_timeout: float) -> InFlight | str:
    """A saved repair under way, or what is wrong with it. Its deadline was at most
    repair_timeout after a time of this boot not later than now."""
    if not isinstance(raw, dict):
        return f"repair is {raw!r}, not a table"
    pid: Any = raw.get("pid")
    start: Any = raw.get("start_time")
    deadline: Any = raw.get("deadline")
    if not _count(pid, PID_MAX + 1) or pid < 2:
        return f"repair pid is {pid!r}"
    if not _count(start, 1 << 63):
        return f"repair start_time is {start!r}"
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) \
            or not -1e15 < deadline <= now + repair_timeout:
        return f"repair deadline is {deadline!r}, not within repair_timeout of now"
    return InFlight(pid, start, float(deadline))


def taken_as_ended(st: Streak, now: float) -> Streak:
    """A repair the last restarter ran whose end nobody saw (gone when this restarter
    looked): ended now; the check has retry_timeout again, and the next repair is the
    next one."""
    return replace(st, state=FAILING, since=now)


def restored(d: Any, key: str, now: float, repair_timeout: float) -> Restored | str | None:
    """A saved standing taken back; None when it is for another configuration of the
    check; a line saying what is wrong with it. A repair that ran when the last
    restarter ended comes back in flight (`repair`, the streak `repairing`) when its
    pid, start time and deadline were saved: the caller looks whether it still runs
    (else `taken_as_ended`); without them it is taken as ended now. Times are
    monotonic: the caller keeps them to this boot."""
    if not isinstance(d, dict) or d.get("key") != key:
        return None if isinstance(d, dict) else "not a table"
    state = d.get("state")
    if state not in (FAILING, REPAIRING, FAILED):
        return f"state {state!r} is not a failing one"
    if not isinstance(d.get("detail"), str):
        return "detail is not a string"
    vals: dict[str, Any] = {}
    for f in _SAVED_FLOATS:
        v = d.get(f)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not -1e15 < v <= now):
            return f"{f} is {v!r}, not a time of this boot"
        vals[f] = v
    for f in _SAVED_INTS:
        v = d.get(f)
        if not _count(v, 1 << 53):
            return f"{f} is {v!r}, not a count"
        vals[f] = v
    if vals["since"] is None or vals["began"] is None:
        return "a failing check without since or began"
    seen = None
    if (raw := d.get("seen")) is not None:
        if not (isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], int)
                and not isinstance(raw[0], bool) and isinstance(raw[1], (int, float))
                and not isinstance(raw[1], bool) and raw[1] <= now):
            return f"seen is {raw!r}"
        seen = Seen(raw[0], float(raw[1]))
    repair = None
    if (raw := d.get("repair")) is not None:
        if state != REPAIRING:
            return f"a repair under way in state {state!r}"
        got = _in_flight(raw, now, repair_timeout)
        if isinstance(got, str):
            return got
        repair = got
    st = Streak(state=state, detail=d["detail"], **vals)
    if state == REPAIRING and repair is None:
        st = taken_as_ended(st, now)
    return Restored(st, seen, repair)


def report(st: Streak, c: CheckConfig, held: bool, now: float) -> dict[str, Any]:
    """The form in the restarter's heartbeat (the gate reads `ok`) and in its status."""
    state = HELD if held and st.state in (FAILING, FAILED, REPAIRING) else st.state
    out: dict[str, Any] = {
        "ok": not (st.state == FAILED and c.action == "reboot" and not held),
        "state": state, "kind": c.kind, "action": c.action, "detail": st.detail,
        "failing_for": None if st.began is None else round(now - st.began, 1),
        "repairs": st.repairs}
    return out


__all__ = ["Verdict", "Seen", "Streak", "InFlight", "Restored", "observe", "repaired",
           "report", "saved", "restored", "taken_as_ended", "load_verdict",
           "memory_verdict", "temperature_verdict", "pid_in", "file_verdict",
           "interface_verdict", "PENDING", "OK", "FAILING", "REPAIRING", "FAILED", "HELD",
           "REPAIR", "FAIL", "RECOVER", "EMAXLOAD", "ETOOHOT", "ENOLOAD", "ENOCHANGE",
           "EINVMEM", "ECHKILL", "ETOOLONG", "EDONTKNOW"]
