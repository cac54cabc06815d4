"""Restart policy: pure functions of an exit status, the configuration and `now`.

Owns: how an exit is classified, whether it is restarted, the backoff delay, the
restart-intensity window. Must not: import os, subprocess, socket or time — `now` is
always passed in, so all of this is tested without sleeping.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from hachain.configtypes import Backoff, Intensity

# Signal names by number, looked up once: describe() runs on every restart's path, and the
# enum's own lookup is several calls deep (cold, tens of microseconds).
_SIGNAL_NAMES = {int(s): s.name for s in signal.Signals}

# Signals a service is commonly stopped with: an exit by one of them is "clean".
CLEAN_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE})


@dataclass(frozen=True)
class ExitStatus:
    """How a service's main process ended.

    kind: "exited" (code), "killed" (signal), "unknown" (an adopted process: its parent
    was a previous restarter, so the status was reaped by init and is not known here),
    "timeout" (readiness never came), "hung" (service watchdog or health check), "spawn"
    (it could not be started: counted as a failure, not as abnormal).
    """

    kind: str
    code: int = 0
    signal: int = 0
    # the kernel's OOM killer ended a process of its cgroup: "memory_max" (its own limit)
    # or "machine" (the whole machine was out of memory); "" when it did not
    oom: str = ""

    def describe(self) -> str:
        if self.kind == "exited":
            text = f"exit status {self.code}"
        elif self.kind == "killed":
            text = f"killed by {_SIGNAL_NAMES.get(self.signal, self.signal)}"
        else:
            text = {"unknown": "exited (status unknown: adopted process)",
                    "timeout": "readiness timeout", "hung": "hung",
                    "spawn": "could not be started"}.get(self.kind, self.kind)
        if not self.oom:
            return text
        return text + (" (out of memory: memory_max reached)" if self.oom == "memory_max"
                       else " (out of memory: the machine's OOM killer)")

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "code": self.code, "signal": self.signal,
                "text": self.describe(), **({"oom": True} if self.oom else {})}


def exit_env(st: ExitStatus, success_exit: tuple[int, ...] = (0,)
             ) -> tuple[tuple[str, str], ...]:
    """What a post_stop command is told of the end it follows, in systemd's words:
    SERVICE_RESULT (success, exit-code, signal, oom-kill; "unknown" for an end no
    restarter saw), and EXIT_CODE (exited, killed) with EXIT_STATUS (the code, or the
    signal's name without SIG) when the status is known."""
    if st.kind == "exited":
        code: tuple[tuple[str, str], ...] = (("EXIT_CODE", "exited"), ("EXIT_STATUS", str(st.code)))
    elif st.kind == "killed":
        name = _SIGNAL_NAMES.get(st.signal, str(st.signal))
        code = (("EXIT_CODE", "killed"), ("EXIT_STATUS", name.removeprefix("SIG")))
    else:
        code = ()
    result = "oom-kill" if st.oom else "success" if is_clean(st, success_exit) else \
        "exit-code" if st.kind == "exited" else "signal" if st.kind == "killed" else \
        "timeout" if st.kind == "timeout" else "watchdog" if st.kind == "hung" else \
        "resources" if st.kind == "spawn" else "unknown"
    return (("SERVICE_RESULT", result),) + code


def is_clean(st: ExitStatus, success_exit: tuple[int, ...] = (0,)) -> bool:
    if st.kind == "exited":
        return st.code in success_exit
    if st.kind == "killed":
        return st.signal in CLEAN_SIGNALS
    return False


def is_abnormal(st: ExitStatus) -> bool:
    """Killed by an unclean signal, timed out or hung (systemd's on-abnormal)."""
    if st.kind == "killed":
        return st.signal not in CLEAN_SIGNALS
    return st.kind in ("timeout", "hung", "unknown")


def wants_restart(policy: str, st: ExitStatus, success_exit: tuple[int, ...] = (0,)) -> bool:
    if policy == "always":
        return True
    if policy == "on-failure":
        return not is_clean(st, success_exit)
    if policy == "on-abnormal":
        return is_abnormal(st)
    return False


# The compiled restart's question about an exit (restarter/_clone3.c restart_armed), asked
# in C before any Python runs: one bit per exit of a child, set when the policy does NOT
# restart it. Bits 0-255: exited with that code; 256 + n: killed by signal n (0-127).
EXIT_MASK_BITS = 256 + 128
_exit_masks: dict[tuple[str, tuple[int, ...]], bytes] = {}


def exit_mask(policy: str, success_exit: tuple[int, ...] = (0,)) -> bytes:
    """The exits of a child that `policy` does not restart, as the compiled restart reads
    them (EXIT_MASK_BITS bits): wants_restart itself, asked once per policy."""
    key = (policy, success_exit)
    got = _exit_masks.get(key)
    if got is None:
        mask = bytearray(EXIT_MASK_BITS // 8)
        for bit in range(EXIT_MASK_BITS):
            st = ExitStatus("exited", code=bit) if bit < 256 else \
                ExitStatus("killed", signal=bit - 256)
            if not wants_restart(policy, st, success_exit):
                mask[bit >> 3] |= 1 << (bit & 7)
        got = _exit_masks[key] = bytes(mask)
    return got


def exit_masked(mask: bytes, exited: bool, status: int) -> bool:
    """Does `mask` leave this exit to Python (the test _clone3.c makes, for the tests)?"""
    bit = (status & 255) if exited else 256 + (status & 127)
    return bool(mask[bit >> 3] & (1 << (bit & 7)))


def next_delay(b: Backoff, prev: float | None, uptime: float) -> float:
    """The delay before the next start.

    `prev` is the delay used before the run that just ended (None for the first
    restart); a run of at least `b.reset_after` seconds starts the sequence again.
    """
    if prev is None or uptime >= b.reset_after:
        return b.initial
    if prev <= 0:
        return min(b.max, b.initial) if b.initial > 0 else 0.0
    return min(b.max, prev * b.factor)


def prune_window(history: tuple[float, ...], now: float, window: float) -> tuple[float, ...]:
    """Restart times still inside the intensity window."""
    cut = now - window
    return tuple(t for t in history if t > cut)


def intensity_exceeded(history: tuple[float, ...], it: Intensity) -> bool:
    """True when `history` (already pruned, including the restart being considered)
    holds more restarts than the window allows."""
    return len(history) > it.max_restarts


def decayed_count(prev: float, uptime: float, decay: float) -> float:
    """The decaying failure count after one more crash: what was left of `prev` once
    `uptime` seconds of running have each taken 1 off per `decay` seconds (never below
    0), plus 1 for this crash. finit's rule: a service that crashes once an hour with
    `decay = 300` never counts more than 1, however long it has been supervised."""
    return max(0.0, prev - uptime / decay) + 1.0 if decay > 0 else prev + 1.0


def intensity_verdict(history: tuple[float, ...], count: float, it: Intensity) -> str:
    """'' while the restart is allowed, else why not, in words: the decaying count when
    `it.decay` is set, the restarts inside the window otherwise."""
    if it.decay > 0:
        if count > it.max_restarts:
            return (f"failure count {count:.1f} > {it.max_restarts} (1 per crash, -1 per "
                    f"{it.decay:g} s up)")
        return ""
    if intensity_exceeded(history, it):
        return f"{len(history)} restarts in {it.window:g} s (limit {it.max_restarts})"
    return ""
