"""A running service's reload (`hachain reload NAME`): the decisions, without effects.

Owns: whether a reload may begin, what it waits for (its `reload_command`'s exit, the
service's `RELOADING=1` then `READY=1`), when it is over and with what outcome, and the
queue of one reload asked for while another runs. Must not: spawn, signal, read clocks
or touch the table's state — the loop (loop.py, `_reload_*`) does the effects and tells
this module what happened, with `now` passed in. A reload never changes the service's
state: it succeeds or fails, and the service runs on either way (systemd's rule).
"""

from __future__ import annotations

from dataclasses import dataclass

from hachain.configtypes import ServiceConfig
from hachain.restarter.policy import ExitStatus
from hachain.restarter.states import State, Svc

# Outcomes kept for clients asking after one (per restarter, oldest dropped first).
KEEP_OUTCOMES = 256


@dataclass(frozen=True)
class Outcome:
    """How a reload of a service ended, kept for clients asking after it."""
    id: str
    ok: bool
    why: str  # one line: "reloaded" or what failed


@dataclass
class Reload:
    """One reload under way."""

    id: str
    pid: int  # the main process it reloads (0: a done oneshot's)
    deadline: float
    command: int = 0  # the reload_command's pid while it runs (0: none, or it is over)
    wait_command: bool = False  # its command has not exited yet
    wait_notify: bool = False  # reload_notify: READY=1 after RELOADING=1 is still to come
    reloading_seen: bool = False  # RELOADING=1 has come
    queued: str = ""  # the id of the reload asked for while this one runs ("": none)


def configured(c: ServiceConfig) -> bool:
    return bool(c.reload_command) or c.reload_signal is not None


def refusal(name: str, c: ServiceConfig, s: Svc) -> str | None:
    """Why `name` cannot be reloaded now (one line), or None."""
    if not configured(c):
        return (f"{name} has no reload_command or reload_signal (`hachain kill {name} -s "
                "HUP` sends a signal)")
    what = s.state.value + (f" ({s.reason})" if s.reason else "")
    if c.kind == "oneshot":  # its reload_command, once done (systemd: RemainAfterExit=)
        return None if s.state is State.DONE else f"{name} is not done: {what}"
    if s.state is not State.READY or s.pid is None:
        if s.state is State.STARTING:
            return f"{name} is starting: reload it once it is ready"
        return f"{name} is not running: {what}"
    return None


def begin(ident: str, c: ServiceConfig, s: Svc, now: float) -> Reload:
    """A reload of `s` starts now (refusal() said it may)."""
    return Reload(id=ident, pid=s.pid or 0, deadline=now + c.reload_timeout,
                  wait_command=bool(c.reload_command), wait_notify=c.reload_notify)


def _over(r: Reload) -> Outcome | None:
    if r.wait_command or r.wait_notify:
        return None
    return Outcome(r.id, True, "reloaded")


def command_started(r: Reload, pid: int) -> None:
    r.command = pid


def command_exited(r: Reload, st: ExitStatus, ok_codes: tuple[int, ...] = (0,)
                   ) -> Outcome | None:
    """Its reload_command ended: failed unless it exited 0; else over once nothing else
    is awaited (READY=1 of a reload_notify service may still be to come)."""
    r.command, r.wait_command = 0, False
    if st.kind == "unknown":  # (it outlived the restarter that started it: init reaped it)
        return Outcome(r.id, False, "reload_command ended with a status no restarter saw "
                       "(it outlived the one that started it): see the service's log")
    if not (st.kind == "exited" and st.code in ok_codes):
        return Outcome(r.id, False, f"reload_command {st.describe()}")
    return _over(r)


def signal_sent(r: Reload) -> Outcome | None:
    """The reload_signal has been sent."""
    return _over(r)


def notified(r: Reload, fields: dict[str, str]) -> Outcome | None:
    """A notify message of the service (READY=1 after RELOADING=1 ends the wait; both in
    one message count in that order)."""
    if not r.wait_notify:
        return None
    if fields.get("RELOADING") == "1":
        r.reloading_seen = True
    if r.reloading_seen and fields.get("READY") == "1":
        r.wait_notify = False
        return _over(r)
    return None


def expired(r: Reload, c: ServiceConfig, now: float) -> Outcome | None:
    """Past its deadline: what it still waited for, as the failure."""
    if now < r.deadline:
        return None
    if r.wait_command:
        why = "reload_command still running"
    elif not r.reloading_seen:
        why = "no RELOADING=1"
    else:
        why = "no READY=1 after RELOADING=1"
    return Outcome(r.id, False, f"{why} after reload_timeout ({c.reload_timeout:g} s)")


def lost(r: Reload, s: Svc) -> Outcome | None:
    """The service changed under the reload: over, failed, when it left `ready` (a
    oneshot: `done`). A new main process (MAINPID= of a daemon that re-executes itself
    to reload) does not end it: its pid is followed."""
    if s.state is State.READY and s.pid is not None:
        r.pid = s.pid
        return None
    if s.state is State.DONE:
        return None
    what = s.state.value + (f": {s.reason}" if s.reason else "")
    return Outcome(r.id, False, f"the service left {'done' if not r.pid else 'ready'} "
                   f"during the reload ({what})")


__all__ = ["Outcome", "Reload", "configured", "refusal", "begin", "command_started",
           "command_exited", "signal_sent", "notified", "expired", "lost", "KEEP_OUTCOMES"]
