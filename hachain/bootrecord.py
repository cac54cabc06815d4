"""The boot record: why each recent boot of this machine ended, and the boot-loop verdict.

What this module owns: the format of `<persist_dir>/boot_record.json`, every write to it,
and the pure rules read from it (which boots count as unclean, when a run of them is a
boot loop, which services a rescue boot holds). It is stdlib-only and imports nothing but
`hachain.channels`, so any layer may use it, init included.

What it must not do: decide *when* to write. The layers call it: the first of the
restarter and the tickler to start in a boot opens the boot's entry (`begin_boot`), the
tickler writes the reason on every controlled path (`set_reason`), the `hachain clear
--boot-loop` command and the restarter release what a rescue holds (`clear_loop`,
`release`).

The record (see docs/operations.md, "reading a reset record"):

    {"version": 1, "counter": 17, "boots": [<entry>, ...]}   # oldest first, at most 32

    entry = {"boot": 17, "boot_id": "...", "started_wall": 1795441186.9,
             "started_mono": 12.5, "lasted": 900 | absent,
             "bootstatus": 32 | null, "device": "/dev/watchdog0" | null,
             "reason": "unknown" | "gate-failure" | "reboot-requested" |
                       "tickler-failed" | "shutdown",
             "detail": ["reason line", ...], "ended_wall": float | null,
             "failed_critical": ["db"], "rescue": null | {...}, "cleared": float | null}

Facts it relies on:

- *Pre-written "unknown".* An entry is written with reason "unknown" as soon as a boot
  starts, and every controlled end overwrites it. A power cut, a kernel hang or an
  external reset runs no code, so its boot keeps "unknown" and is still counted
  (troglobit/watchdogd's reset counter works the same way).
- *Atomic and durable.* Every change rewrites the whole file through
  `channels.write_atomic(durable=True)`: write `X.new`, fsync, rename, fsync the
  directory. A reset in the middle leaves the old file or the new one, never a torn or
  empty one. Read-modify-write cycles of different processes are serialised by
  `flock` on `boot_record.lock`.
- *One boot, one entry.* A boot is named by the kernel's boot id
  (/proc/sys/kernel/random/boot_id, a fresh UUID per kernel boot; the simulated machine
  bind-mounts its own over it), so layers restarted within a boot find their entry and
  add none. Without a boot id, the boot time in /proc/stat names the boot.
- *Wall clocks.* The loop window compares wall-clock boot times. A box without an RTC may
  start every boot at the same time, or earlier than the last: a clock that went
  backwards counts as "within the window", so such a box still sees its loop. A boot
  that has run `window` s by its own CLOCK_MONOTONIC says so (`lasted`, written once by
  the tickler): it and the boots before it are no part of a loop, so such a box whose
  power is cut once a day is not taken for one.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import time
from typing import Any

from hachain import channels

RECORD = channels.BOOT_RECORD
LOCK = channels.BOOT_RECORD_LOCK
CHECK_PREFIX = channels.CHECK_PREFIX  # a machine check among the blamed and held names
HISTORY = 32  # entries kept
VERSION = 1
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"

UNKNOWN = "unknown"
GATE_FAILURE = "gate-failure"
REBOOT_REQUESTED = "reboot-requested"
TICKLER_FAILED = "tickler-failed"  # init gave up on a tickler that could not run
SHUTDOWN = "shutdown"
CLEAN = (SHUTDOWN,)
WDIOF_CARDRESET = 0x20  # as in hachain.watchdog.device (not imported: stdlib-only here)


def current_boot_id() -> str:
    """This kernel boot's id: the boot_id UUID, else "btime-N" from /proc/stat, else ""."""
    try:
        with open(BOOT_ID_PATH) as f:
            bid = f.read().strip()
        if bid:
            return bid
    except OSError:
        pass
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return "btime-" + line.split()[1]
    except OSError:
        pass
    return ""


# --- reading ------------------------------------------------------------------------------

def empty() -> dict[str, Any]:
    return {"version": VERSION, "counter": 0, "boots": []}


def read(persist_dir: str, regular: bool = False, problems: list[str] | None = None
         ) -> dict[str, Any]:
    """The record; an empty one when missing. A file that is no record (a disk fault or a
    hand edit: writes are atomic) reads as empty, and a field of the wrong type as not
    known (an entry that is no object is dropped), so that every reader and the
    boot-loop count go on; the next write sets the file aside as `.corrupt`
    first. What was wrong is added to `problems` (one phrase each, without the path).
    `regular`: as channels.read_small's (a FIFO there is not waited on)."""
    rec, found = _load(os.path.join(persist_dir, RECORD), regular)
    if problems is not None:
        problems.extend(found)
    return rec


def _load(path: str, regular: bool) -> tuple[dict[str, Any], list[str]]:
    """(the record at `path` made sane, what was wrong with it). A file that cannot be
    read for another reason than its kind (EIO, EACCES) reads as empty with nothing
    said: the layer that writes says why its write fails."""
    try:
        d = channels.read_json(path, regular)
    except channels.NestedTooDeeply:
        return empty(), ["not JSON (nested too deeply)"]
    except ValueError:
        return empty(), ["not JSON"]
    except OSError as e:
        kind = e.errno == errno.EISDIR or (regular and e.errno in (
            errno.EINVAL, errno.ENOENT, errno.ELOOP))
        return empty(), [e.strerror or str(e)] if kind else []
    if d is None:
        return empty(), []
    if not isinstance(d, dict) or not isinstance(d.get("boots"), list):
        return empty(), ["not a boot record (no list of boots)"]
    found: list[str] = []
    boots = []
    for i, b in enumerate(d["boots"], 1):
        if isinstance(b, dict):
            boots.append(_sane_entry(b, f"entry {i}", found))
        else:
            found.append(f"entry {i} is {_show(b)}, not an object")
    d["boots"] = boots
    numbers = [b["boot"] for b in boots if _is_int(b.get("boot"))]
    if "counter" in d and not _is_int(d["counter"]):
        found.append(f"counter is {_show(d['counter'])}, not an integer")
    if not _is_int(d.get("counter")):
        d["counter"] = max(numbers, default=0)
    return d, found


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_time(v: Any) -> bool:
    """A wall-clock time as the record keeps one: a finite number."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _show(v: Any) -> str:
    """`v` for a message: its repr, cut short (a list or an object by its kind)."""
    if isinstance(v, (list, dict)):
        return "a list" if isinstance(v, list) else "an object"
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


_NUMBER = "a finite number"
_NAMES = "a list of strings"
# Each field of an entry a reader relies on: (is its value sane?, what it should be). A
# field of the wrong type is left out: a missing field is one the readers take as not
# known (a boot of no known number, a reason "unknown"). Other fields are kept as they are.
_ENTRY: dict[str, tuple[Any, str]] = {
    "boot": (_is_int, "an integer"),
    "boot_id": (lambda v: isinstance(v, str), "a string"),
    "started_wall": (_is_time, _NUMBER),
    "started_mono": (_is_time, _NUMBER),
    "lasted": (_is_time, _NUMBER),
    "ended_wall": (lambda v: v is None or _is_time(v), _NUMBER),
    "cleared": (lambda v: v is None or _is_time(v), _NUMBER),
    "bootstatus": (lambda v: v is None or _is_int(v), "an integer"),
    "device": (lambda v: v is None or isinstance(v, str), "a string"),
    "reason": (lambda v: isinstance(v, str), "a string"),
    "detail": (_is_names, _NAMES),
    "failed_critical": (_is_names, _NAMES),
    "rescue": (lambda v: v is None or isinstance(v, dict), "an object"),
}
_RESCUE: dict[str, tuple[Any, str]] = {
    "action": (lambda v: isinstance(v, str), "a string"),
    "boots": (lambda v: isinstance(v, list), "a list"),
    "reasons": (lambda v: isinstance(v, list), "a list"),
    "held": (_is_names, _NAMES),
    "released": (_is_names, _NAMES),
}


def _sane_entry(b: dict[str, Any], where: str, found: list[str]) -> dict[str, Any]:
    """`b` without the fields of the wrong type (each said in `found`)."""
    for fields, d, at in ((_ENTRY, b, where), (_RESCUE, b.get("rescue"), f"{where} rescue")):
        if not isinstance(d, dict):
            continue
        for key, (sane, what) in fields.items():
            if key in d and not sane(d[key]):
                found.append(f"{at}: {key} is {_show(d.pop(key))}, not {what}")
    return b


def unclean(entry: dict[str, Any]) -> bool:
    """Did this boot end without an orderly shutdown? ("unknown" counts: nobody said.)"""
    return entry.get("reason") not in CLEAN


def unclean_run(previous: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The consecutive unclean boots at the end of `previous` (oldest first), newest
    first. A boot in which the operator cleared the loop is the last one counted."""
    run = []
    for e in reversed(previous):
        if not unclean(e):
            break
        run.append(e)
        if e.get("cleared"):
            break
    return run


def assess(previous: list[dict[str, Any]], resets: int, window: float, action: str,
           now_wall: float) -> dict[str, Any] | None:
    """The boot-loop verdict for a boot starting at `now_wall` after `previous` boots.

    A loop: the last `resets` boots all ended unclean and the oldest of them started at
    most `window` s ago (or later than now: a clock without RTC). The verdict names the
    boots, their reasons and the critical services that failed the gate in them (plus
    those an earlier rescue in the run held), which a rescue boot holds."""
    run = unclean_run(previous)
    if len(run) < resets:
        return None
    for i, e in enumerate(run):
        if _is_time(e.get("lasted")) and e["lasted"] >= window:
            # this boot ran `window` s before it ended (its own monotonic clock says so):
            # neither it nor those before it are within the window, whatever the wall
            # clocks of a box without an RTC say
            run = run[:i]
            break
    if len(run) < resets:
        return None
    counted = run[:resets]
    oldest = counted[-1].get("started_wall")
    if isinstance(oldest, (int, float)) and now_wall - oldest > window:
        return None  # (a negative age, a clock gone backwards, stays in the window)
    held: dict[str, None] = {}
    for e in reversed(counted):
        for name in e.get("failed_critical") or []:
            held[str(name)] = None
        resc = e.get("rescue") or {}
        if resc.get("action") == "rescue" and not e.get("cleared"):
            for name in resc.get("held") or []:
                if name not in (resc.get("released") or []):
                    held[str(name)] = None
    return {"action": action, "boots": [e.get("boot") for e in reversed(counted)],
            "reasons": [e.get("reason", UNKNOWN) for e in reversed(counted)],
            "held": sorted(held), "released": []}


def entry_for(rec: dict[str, Any], boot_id: str) -> dict[str, Any] | None:
    """The entry of boot `boot_id` (the newest entry when `boot_id` is "")."""
    boots = rec.get("boots") or []
    if not boots:
        return None
    if not boot_id:
        return boots[-1]
    return next((b for b in reversed(boots) if b.get("boot_id") == boot_id), None)


def held_services(entry: dict[str, Any] | None) -> list[str]:
    """What a rescue boot holds in maintenance right now (none once cleared)."""
    if entry is None or entry.get("cleared"):
        return []
    resc = entry.get("rescue") or {}
    if resc.get("action") != "rescue":
        return []
    released = set(resc.get("released") or [])
    return [n for n in resc.get("held") or [] if n not in released]


# --- writing ------------------------------------------------------------------------------

class _Locked:
    """flock on `<persist_dir>/boot_record.lock` for one read-modify-write. Under the lock
    nothing waits on the file: a FIFO there is no record (as `regular` reads), for a
    layer held in its open would hold every other one behind it at the lock (init's
    record thread held so kept a restarter that started later from ever beating)."""

    def __init__(self, persist_dir: str) -> None:
        self.persist_dir = persist_dir
        self.fd = -1

    def __enter__(self) -> dict[str, Any]:
        os.makedirs(self.persist_dir, exist_ok=True)
        self.fd = os.open(os.path.join(self.persist_dir, LOCK),
                          os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return read(self.persist_dir, regular=True)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the lock


def _damage(path: str) -> tuple[str, bool]:
    """What makes the file at `path` no sane boot record ("" when it is one, or missing
    or unreadable: nothing to keep), and whether that is the whole file (else fields).
    Called under the lock: nothing is waited on."""
    rec, found = _load(path, regular=True)
    whole = not rec["boots"] and not rec["counter"]
    if len(found) > 3:
        found = [*found[:3], f"{len(found) - 3} more"]
    return "; ".join(found), whole


def _write(persist_dir: str, rec: dict[str, Any], log: Any = None) -> None:
    """Write `rec`; a file there that is no sane boot record is set aside as `.corrupt`
    first, as it was (one line through `log`)."""
    path = os.path.join(persist_dir, RECORD)
    why, whole = _damage(path)
    if why:
        then = "a new record begins" if whole else "the record goes on without those values"
        try:
            os.replace(path, path + ".corrupt")
            msg = f"{path}: {why}: set aside as {RECORD}.corrupt, {then}"
        except OSError as e:
            msg = f"{path}: {why}, and cannot set it aside: {e.strerror or e}"
        if log is not None:
            log(msg)
    rec["version"] = VERSION
    rec["boots"] = rec["boots"][-HISTORY:]
    channels.write_json(path, rec, durable=True, make_dir=True)


def begin_boot(persist_dir: str, boot_id: str, now_wall: float, resets: int = 3,
               window: float = 900.0, action: str = "rescue", bootstatus: int | None = None,
               device: str | None = None, regular: bool = False, log: Any = None
               ) -> dict[str, Any]:
    """Open this boot's entry (counter + 1, reason "unknown", the loop verdict) unless it
    exists; fill in `bootstatus`/`device` when given and not yet known. Returns the entry.

    Called by every layer that starts: the first one in a boot writes, the others find
    the entry. An entry that says "shutdown" while a layer starts in its boot goes back to
    "unknown": the boot goes on. OSError propagates (the caller logs it and runs on).
    `regular`: the first read, made before the lock, does not wait on a FIFO either (a
    reader with no deadline: the restarter); `log`: as _write's."""
    rec = read(persist_dir, regular)
    cur = entry_for(rec, boot_id) if boot_id else None
    if cur is not None and cur.get("reason") != SHUTDOWN and \
            (bootstatus is None or cur.get("bootstatus") is not None) and \
            (device is None or cur.get("device") is not None):
        return cur  # nothing to change: no lock, no write
    with _Locked(persist_dir) as rec:
        cur = entry_for(rec, boot_id) if boot_id else None
        if cur is None:
            rec["counter"] = int(rec.get("counter", 0)) + 1
            cur = {"boot": rec["counter"], "boot_id": boot_id, "started_wall": now_wall,
                   "started_mono": time.monotonic(),
                   "bootstatus": None, "device": None, "reason": UNKNOWN, "detail": [],
                   "ended_wall": None, "failed_critical": [], "cleared": None,
                   "rescue": assess(rec["boots"], resets, window, action, now_wall)}
            rec["boots"].append(cur)
        if cur.get("reason") == SHUTDOWN:
            cur.update(reason=UNKNOWN, detail=[], ended_wall=None)
        if bootstatus is not None and cur.get("bootstatus") is None:
            cur["bootstatus"] = bootstatus
        if device is not None and cur.get("device") is None:
            cur["device"] = device
        _write(persist_dir, rec, log)
        return cur


def set_reason(persist_dir: str, boot_id: str, reason: str, detail: list[str],
               now_wall: float, failed_critical: list[str] | None = None,
               replacing: str | None = None, log: Any = None) -> None:
    """Say how this boot is ending (or, with "unknown", that it goes on after all).
    `failed_critical` adds to the services blamed in this boot; with `replacing`, only a
    reason equal to it is changed. OSError propagates. `log`: as _write's."""
    with _Locked(persist_dir) as rec:
        cur = entry_for(rec, boot_id)
        if cur is None:
            return  # no entry to explain: begin_boot failed; its caller said so
        if replacing is not None and cur.get("reason") != replacing:
            return
        cur["reason"] = reason
        cur["detail"] = list(detail)
        cur["ended_wall"] = None if reason == UNKNOWN else now_wall
        if failed_critical:
            cur["failed_critical"] = sorted(set(cur.get("failed_critical") or [])
                                            | set(failed_critical))
        _write(persist_dir, rec, log)


def mark_lasted(persist_dir: str, boot_id: str, seconds: float, log: Any = None) -> None:
    """Say that boot `boot_id` has run `seconds` (the loop window) by its monotonic clock:
    however it ends, it is no part of a boot loop (`assess`). Once per boot, by the
    tickler. OSError propagates. `log`: as _write's."""
    with _Locked(persist_dir) as rec:
        cur = entry_for(rec, boot_id)
        if cur is None or (_is_time(cur.get("lasted")) and cur["lasted"] >= seconds):
            return
        cur["lasted"] = seconds
        _write(persist_dir, rec, log)


def clear_loop(persist_dir: str, now_wall: float, log: Any = None) -> list[str]:
    """`hachain clear --boot-loop`: the newest boot (the running one) leaves rescue, and
    the boots before it no longer count towards a loop. Returns what it held. `log`: as
    _write's (a damaged record set aside)."""
    with _Locked(persist_dir) as rec:
        cur = entry_for(rec, "")
        if cur is None:
            return []
        held = held_services(cur)
        cur["cleared"] = now_wall
        _write(persist_dir, rec, log)
        return held


def release(persist_dir: str, boot_id: str, name: str, log: Any = None) -> None:
    """`hachain clear NAME` of a service a rescue holds: it runs (and gates) again. `log`:
    as _write's (a damaged record set aside)."""
    with _Locked(persist_dir) as rec:
        cur = entry_for(rec, boot_id)
        resc = (cur or {}).get("rescue") or {}
        if name not in (resc.get("held") or []) or name in (resc.get("released") or []):
            return
        resc["released"] = sorted({*(resc.get("released") or []), name})
        _write(persist_dir, rec, log)


# --- status -------------------------------------------------------------------------------

def summary(persist_dir: str, boot_id: str = "", running: bool = True,
            problems: list[str] | None = None) -> dict[str, Any]:
    """What `hachain status` shows: this boot, the previous boot's end, the count of
    consecutive unclean boots before this one, the loop verdict and the history. With
    `running` False (no chain runs now) and the newest boot's chain shut down in order,
    there is no current boot: that boot is the previous one, the one that ended last
    (a chain that died without a word may still be in its boot: that stays current).
    A display waits on nothing: a FIFO in the record's place reads as no record. What is
    wrong with the file goes to `problems` (as read's)."""
    rec = read(persist_dir, regular=True, problems=problems)
    boots = rec["boots"]
    cur = entry_for(rec, boot_id)
    if not running and cur is not None and cur is boots[-1] and cur.get("reason") == SHUTDOWN:
        cur = None
    i = boots.index(cur) if cur is not None else len(boots)
    previous = boots[:i]
    return {"counter": rec.get("counter", 0), "current": cur,
            "previous": previous[-1] if previous else None,
            "unclean_before": len(unclean_run(previous)),
            "held": held_services(cur),
            "history": [{k: b.get(k) for k in ("boot", "reason", "bootstatus",
                                                "failed_critical", "started_wall")}
                        for b in boots[-8:]]}


def _number(boot: Any) -> str:
    """A boot's number for a status line ("?": not known, the entry was damaged)."""
    return "?" if boot is None else str(boot)


def describe(s: dict[str, Any]) -> list[str]:
    """The status lines for a `summary`: the previous boot's end, and rescue if any."""
    lines = []
    prev, cur = s.get("previous"), s.get("current")
    if prev is not None:
        why = prev.get("reason", UNKNOWN)
        if prev.get("detail"):
            why += ": " + "; ".join(prev["detail"])
        # the device's boot status, read in the *next* boot, says who reset the previous
        bs = (cur or {}).get("bootstatus")
        dev = ""
        if isinstance(bs, int):
            dev = f"; device boot status 0x{bs:x}" + (" (the watchdog reset it)"
                                                      if bs & WDIOF_CARDRESET else "")
        lines.append(f"previous boot #{_number(prev.get('boot'))} ended: {why}{dev}; "
                     f"{s.get('unclean_before', 0)} consecutive unclean boot(s)")
    resc = (cur or {}).get("rescue")
    if cur is not None and resc:
        hist = ", ".join(f"#{_number(b)} {r}" for b, r in zip(resc.get("boots") or [],
                                                     resc.get("reasons") or [], strict=False))
        act = resc.get("action")
        if cur.get("cleared"):
            state = "boot loop cleared by the operator"
        elif act == "rescue":
            held = ", ".join(s.get("held") or []) or "nothing to hold"
            state = f"RESCUE (boot loop): holding {held}"
        elif act == "disarm":
            state = "BOOT LOOP: watchdog disarmed for an operator"
        else:
            state = "boot loop detected, ignored (boot_loop.action = \"ignore\")"
        lines.append(f"boot #{_number(cur.get('boot'))}: {state}; after {hist}"
                     + ("; hachain clear --boot-loop to leave" if act != "ignore"
                        and not cur.get("cleared") else ""))
    return lines
