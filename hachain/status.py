"""`hachain status`: what the chain is doing, judged from what can be seen of it.

Owns: gathering one snapshot (the heartbeats, the processes that wrote them, the
restarter's answer on the control socket, the tickler's records), deriving each layer's
state and the one-line verdict from it, keeping a copy of the last service table the
restarter gave, and rendering it all as text in which every string that came from a
service or a file is escaped. Must not: change anything of the chain; the only file it
writes is its own copy of the last service table (`<state_dir>/status-last.json`).

Facts this relies on:

- A heartbeat names its writer by pid, start time and PID namespace. From another
  namespace (the host looking at a simulated machine) the pid alone names some other
  process, so the writer is looked up by namespace and its innermost `NSpid`.
- `/proc/PID/stat` state `T` (stopped by a signal) or `t` (stopped by a tracer) means
  the process cannot beat, whatever its heartbeat's age says yet.
- CLOCK_MONOTONIC is one clock for every PID namespace of a boot, so the age of a
  heartbeat and the time left on the watchdog are computed here without asking anyone.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Union

from hachain import bootrecord, channels, client

if TYPE_CHECKING:  # imported when needed: `hachain status` must start fast
    from hachain import config

LAYER_STATES = ("alive", "hung", "stale", "restarting", "dead", "absent")
LAST_TABLE = channels.STATUS_LAST_TABLE
ASK_TIMEOUT = 3.0


# --- escaping ---------------------------------------------------------------------------------

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Unicode that moves or reorders what follows it: line and paragraph separators and the
# bidirectional controls, which can make a row read as something else.
_LAYOUT = {0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F),
           *range(0x2066, 0x206A)}


# the states of a service wanted up that is as it should be: ready, a oneshot done, a
# singleton on standby on this node, a service whose condition did not hold skipped
AS_WANTED_UP = ("ready", "done", "standby", "skipped")


def escape(value: Any) -> str:
    """`value` as text safe for a terminal: C0 and C1 controls, DEL and layout controls
    are shown as visible escapes (\\x1b, \\r, \\u202e); everything else is kept."""
    s = str(value)
    if s.isprintable():
        return s
    out = []
    for ch in s:
        o = ord(ch)
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif o < 0x20 or 0x7F <= o <= 0x9F:
            out.append(f"\\x{o:02x}")
        elif o in _LAYOUT:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


# --- who wrote a heartbeat --------------------------------------------------------------------

def _pidns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _innermost_pid(pid: int) -> int | None:
    """The last number of /proc/PID/status's `NSpid:` line: the pid in its own namespace."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class Finder:
    """Maps heartbeat writers to pids of this process's namespace (one /proc scan per
    foreign namespace, at most)."""

    def __init__(self) -> None:
        self.ours = _pidns("self")
        self.foreign: dict[str, dict[int, int]] = {}

    def find(self, hb: channels.Heartbeat) -> int | None:
        """The pid, as seen here, of the process that wrote `hb`; None when it is gone."""
        if hb.pidns is None or hb.pidns == self.ours or self.ours is None:
            pid: int | None = hb.pid
        else:
            if hb.pidns not in self.foreign:
                self.foreign[hb.pidns] = self._scan(hb.pidns)
            pid = self.foreign[hb.pidns].get(hb.pid)
        if pid is None:
            return None
        st = channels.proc_stat(pid)
        if st is None or st[0] in ("Z", "X") or (hb.start is not None and st[1] != hb.start):
            return None  # gone, a zombie, or the pid now names another process
        return pid

    @staticmethod
    def _scan(ns: str) -> dict[int, int]:
        out = {}
        for e in os.listdir("/proc"):
            if e.isdigit() and _pidns(e) == ns:
                inner = _innermost_pid(int(e))
                if inner is not None:
                    out[inner] = int(e)
        return out


# --- each layer's state -----------------------------------------------------------------------

def layer_state(layer: str, age: float | None, process: str, heartbeat_timeout: float,
                init_alive: bool, run_by_init: bool = True, gave_up: bool = False) -> str:
    """One layer's state from its process and its heartbeat (pure).

    `process`: "running", "stopped" (state T: SIGSTOP or a tracer) or "gone" (no
    heartbeat, or its writer no longer exists). `age`: the heartbeat's age, None
    without one. `init_alive`: init itself is alive and so restarts the layers it runs.

    - alive: running, heartbeat younger than heartbeat_timeout;
    - hung: stopped; it cannot beat, whatever the age says yet;
    - stale: running but not beating (busy loop, blocked I/O, a frozen cgroup): the gate
      counts it as hung once the age passes heartbeat_timeout;
    - restarting: gone while a live init restarts it;
    - dead: gone, and nobody restarts it (init itself, or init is not alive, or init
      gave up on it: `gave_up`, a tickler that kept dying, docs/init.md);
    - absent: init does not run this layer (`--no-tickler`): not a fault.
    """
    if process == "stopped":
        return "hung"
    if process == "running":
        return "alive" if age is not None and age <= heartbeat_timeout else "stale"
    if layer != "init" and init_alive and not gave_up:
        return "restarting" if run_by_init else "absent"
    return "dead"


_WATCHDOG_HEAD = re.compile(r"^[ \t]*\[[ \t]*watchdog[ \t]*\][ \t]*(#[^\n]*)?$", re.M)
_NEXT_TABLE = re.compile(r"^[ \t]*\[", re.M)


def _watchdog_table(text: str) -> dict[str, Any]:
    """The `[watchdog]` table of a TOML text: that section alone when it reads on its
    own, else (written another way, e.g. dotted keys) from the whole text."""
    import tomllib
    head = _WATCHDOG_HEAD.search(text)
    if head is not None:
        nxt = _NEXT_TABLE.search(text, head.end())
        try:
            return tomllib.loads(text[head.end():nxt.start() if nxt else len(text)])
        except tomllib.TOMLDecodeError:
            pass
    table = tomllib.loads(text).get("watchdog")
    return table if isinstance(table, dict) else {}


class Timing(NamedTuple):
    """What judges the layers' heartbeats (a WatchdogConfig serves as well)."""

    heartbeat_timeout: float
    restart_grace: float


Judge = Union[Timing, "config.WatchdogConfig"]


def _timing(state_dir: str, wd: config.WatchdogConfig | None,
            config_path: str | None = None) -> Judge:
    """The watchdog timing that judges heartbeats: the running snapshot's (what the chain
    runs), else `wd`, else that of the file at `config_path` (given with -c) when it
    loads, else the defaults."""
    from hachain import snapshot
    snap = snapshot.read_running(state_dir)
    if snap is not None and "heartbeat_timeout" in snap.timing:
        t = snap.timing
        return Timing(float(t["heartbeat_timeout"]), float(t.get("restart_grace", 0.0)))
    from hachain import config  # ~45 ms: only for a snapshot older than its timing record
    if snap is not None:
        # Only [watchdog]'s two durations are needed, and the snapshot was validated when
        # it was accepted: read that table alone.
        try:
            table = _watchdog_table(snap.text)
            base = config.WatchdogConfig()

            def num(key: str, default: float) -> float:
                v = table.get(key)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    return float(v)
                return default
            return Timing(num("heartbeat_timeout", base.heartbeat_timeout),
                          num("restart_grace", base.restart_grace))
        except (ValueError, AttributeError):  # TOMLDecodeError is a ValueError
            pass
    if wd is None and config_path:
        try:
            wd = config.with_env_overrides(config.load(config_path)).watchdog
        except config.ConfigError:
            pass  # the directories were found anyway; the defaults judge
    return wd if wd is not None else config.WatchdogConfig()


def _layer(layer: str, hb: channels.Heartbeat | None, finder: Finder, now: float,
           wd: Judge, init: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON of one layer: what its heartbeat says and the state derived from it."""
    host = finder.find(hb) if hb is not None else None
    pstate = channels.proc_state(host) if host is not None else None
    process = "gone" if pstate is None else ("stopped" if pstate in ("T", "t") else "running")
    age = round(hb.age(now), 3) if hb is not None else None
    init_alive = init is not None and init["state"] == "alive"
    children = ((init or {}).get("extra") or {}).get("children")
    run_by_init = not isinstance(children, dict) or layer in children
    mine = children.get(layer) if isinstance(children, dict) else None
    gave_up = isinstance(mine, dict) and mine.get("gave_up") is True
    state = layer_state(layer, age, process, wd.heartbeat_timeout, init_alive, run_by_init,
                        gave_up and process == "gone")
    d: dict[str, Any] = {"state": state, "process": process, "alive": state == "alive",
                         "stopped": process == "stopped", "heartbeat_age": age,
                         "pid": None, "host_pid": host}
    if gave_up:
        d["gave_up"] = True  # init restarts it no more (it kept dying: docs/init.md)
    if hb is not None:
        up = (now if process != "gone" else hb.mono) - hb.started_mono
        d.update({"pid": hb.pid, "uptime": round(up, 3),
                  "restarts": hb.restarts, "extra": hb.extra})
    return d


# --- the last known service table -------------------------------------------------------------

def _boot_id() -> str:
    try:
        return channels.read_small("/proc/sys/kernel/random/boot_id").decode().strip()
    except OSError:
        return ""


def save_table(state_dir: str, services: dict[str, Any], restarter_pid: Any,
               now: float) -> None:
    """Keep `services` as the last known table (best effort: a status run by a user who
    cannot write there, or on a full /run, still works). Every time: a copy kept only now
    and then would show a state older than the one just seen."""
    path = os.path.join(state_dir, LAST_TABLE)
    rec = {"boot_id": _boot_id(), "mono": now, "wall": time.time(),
           "restarter_pid": restarter_pid, "services": services}
    tmp = f"{path}.{os.getpid()}.new"  # status runs concurrently: no shared temp name
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(rec))  # json.dump() would take the pure-Python encoder
        os.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def load_table(state_dir: str, now: float) -> dict[str, Any] | None:
    """The last known table with its age in seconds, or None."""
    try:
        rec = channels.read_json(os.path.join(state_dir, LAST_TABLE), regular=True)
    except (ValueError, OSError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("services"), dict):
        return None
    try:
        same_boot = rec.get("boot_id") == _boot_id()
        age = now - float(rec["mono"]) if same_boot else time.time() - float(rec["wall"])
    except (KeyError, TypeError, ValueError):
        return None
    return {"age": round(max(0.0, age), 3), "wall": rec.get("wall"),
            "restarter_pid": rec.get("restarter_pid"), "services": rec["services"]}


# --- the tickler's records -------------------------------------------------------------------
#
# gate.json and last_boot.json (docs/tickler.md, "Records") are read as they are, for
# display: read without waiting (a FIFO there is no record: this runs in the restarter
# too, for the native front's `status-doc`), and a file or field that is not what the
# tickler writes is left out with one warning line, the rest of the status intact.

def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _maybe(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


_GATE_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "wall": (_number, "a finite number"), "mono": (_number, "a finite number"),
    "reasons": (_names, "a list of strings"), "device": (_maybe(_text), "a string"),
    "boot_id": (_text, "a string")}
_LAST_BOOT_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "boot_id": (_text, "a string"), "wall": (_number, "a finite number"),
    "device": (_maybe(_text), "a string"),
    "bootstatus": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "flags": (_names, "a list of strings"), "cause": (_text, "a string"),
    "last_gate_failure": (_maybe(lambda v: isinstance(v, dict)), "an object")}


def _shown(v: Any) -> str:
    if isinstance(v, (list, dict)):
        return "a list" if isinstance(v, list) else "an object"
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _sane_fields(d: dict[str, Any], fields: dict[str, tuple[Callable[[Any], bool], str]],
                 at: str, found: list[str]) -> dict[str, Any]:
    """`d` without the fields of the wrong type (each said in `found`)."""
    out = {}
    for key, value in d.items():
        check = fields.get(key)
        if check is not None and not check[0](value):
            found.append(f"{at}{key} is {_shown(value)}, not {check[1]}")
        else:
            out[key] = value
    return out


def read_record(path: str, fields: dict[str, tuple[Callable[[Any], bool], str]]
                ) -> tuple[dict[str, Any] | None, str]:
    """(the tickler's record at `path` with the fields of the wrong type left out, or None
    when missing or no record; what was wrong, "" when nothing)."""
    try:
        d = channels.read_json(path, regular=True)
    except ValueError as e:  # (nested too deeply included)
        return None, channels.json_problem(e)
    except OSError as e:
        return None, e.strerror or str(e)
    if d is None:
        return None, ""
    if not isinstance(d, dict):
        return None, f"not a JSON object but {type(d).__name__}"
    found: list[str] = []
    d = _sane_fields(d, fields, "", found)
    gate = d.get("last_gate_failure")
    if isinstance(gate, dict):
        d["last_gate_failure"] = _sane_fields(gate, _GATE_FIELDS, "last_gate_failure.",
                                              found)
    return d, "; ".join(found)


# --- gathering --------------------------------------------------------------------------------

def ask_socket(state_dir: str) -> dict[str, Any]:
    """The restarter's `status` reply, asked on its control socket (ControlError when it
    cannot be reached)."""
    return client.request(state_dir, {"op": "status"}, timeout=ASK_TIMEOUT)


def gather_status(state_dir: str, persist_dir: str,
                  wd: config.WatchdogConfig | None = None,
                  config_path: str | None = None,
                  ask: Callable[[str], dict[str, Any]] = ask_socket,
                  persist_timeout: float | None = None) -> dict[str, Any]:
    """Everything `hachain status` shows, as one JSON-able object (`verdict` included).

    `ask` gets the restarter's `status` reply: on its socket from outside, a direct call
    inside the restarter itself (the `status-doc` request: `document`). `persist_timeout`:
    what persist_dir keeps is read by a child given that long (_persisted_within)."""
    now = time.monotonic()
    timing = _timing(state_dir, wd, config_path)
    finder = Finder()
    hbs = {layer: channels.read_heartbeat(state_dir, layer, regular=True)
           for layer in channels.LAYERS}
    layers: dict[str, Any] = {}
    layers["init"] = _layer("init", hbs["init"], finder, now, timing, None)
    for layer in channels.LAYERS:
        if layer != "init":
            layers[layer] = _layer(layer, hbs[layer], finder, now, timing, layers["init"])
    services: dict[str, Any] = {}
    restarter: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    error = None
    if layers["restarter"]["state"] == "hung":
        error = "not asked: its process is stopped"  # it would not answer before the timeout
    else:
        try:
            rep = ask(state_dir)
            if rep.get("ok"):
                services = rep.get("services", {})
                restarter = rep.get("restarter", {})
                checks = rep.get("checks") or {}
                save_table(state_dir, services, restarter.get("pid"), now)
            else:
                error = rep.get("error", "error")
        except client.ControlError as e:
            error = str(e)
    out: dict[str, Any] = {"chain": {"state_dir": state_dir, "layers": layers,
                                     "restarter": restarter},
                           "services": services, "checks": checks}
    from hachain import snapshot
    out["chain"]["config"] = snapshot.describe(state_dir)
    if error:
        out["chain"]["restarter_error"] = error
        out["chain"]["last_known"] = load_table(state_dir, now)
    running = layers["init"]["process"] != "gone"
    kept = _persisted(persist_dir, running) if persist_timeout is None else \
        _persisted_within(persist_dir, running, persist_timeout)
    warnings: list[str] = kept.pop("warnings")
    out["chain"].update(kept)
    tk = layers["tickler"].get("extra") or {}
    wdog = {k: tk.get(k) for k in ("device", "armed", "petting", "timeout", "timeleft",
                                   "pets", "gate", "last_pet_mono")}
    wdog["as_of"] = layers["tickler"]["heartbeat_age"]  # how old this table is
    wdog["expires_in"] = _expires_in(tk, layers["tickler"], now)
    wdog["pet_timing"] = {k: tk.get(k) for k in (  # the tickler's, since boot
        "pet_late_worst", "pet_late_warnings", "pet_late_warn", "pet_interval_last",
        "disarmed")}
    out["chain"]["watchdog"] = wdog
    out["chain"]["warnings"] = warnings
    out["verdict"] = verdict(out, timing)
    return out


PERSIST_TIMEOUT = 2.0  # s for `hachain status` to read what persist_dir keeps


def _persisted(persist_dir: str, running: bool) -> dict[str, Any]:
    """What status shows from persist_dir: the last boot, the last gate failure, the boot
    record's summary (with no init at all, the newest boot is one that has ended), and
    `warnings` for the files there that could not be read as they should."""
    out: dict[str, Any] = {}
    warnings: list[str] = []
    for key, fname, fields in (("last_boot", channels.LAST_BOOT, _LAST_BOOT_FIELDS),
                               ("gate_failure", channels.GATE_RECORD, _GATE_FIELDS)):
        path = os.path.join(persist_dir, fname)
        out[key], why = read_record(path, fields)
        if why:
            warnings.append(f"{path}: {why}: ignored")
    damage: list[str] = []
    out["boot"] = bootrecord.summary(persist_dir, running=running, problems=damage)
    if damage:
        warnings.append(f"{os.path.join(persist_dir, bootrecord.RECORD)}: "
                        f"{'; '.join(damage)}: ignored")
    out["warnings"] = warnings
    return out


def _persisted_within(persist_dir: str, running: bool, timeout: float) -> dict[str, Any]:
    """_persisted, read by a child given `timeout` seconds: status answers when
    persist_dir is on a mount that does not (a hung NFS or FUSE mount, a disk in error
    recovery), without what is kept there, and says so."""
    from hachain import snapshot
    got, why = snapshot.answered_within(lambda: _persisted(persist_dir, running), timeout)
    if not why:
        return dict(got)
    return {"last_boot": None, "gate_failure": None,
            "boot": {"counter": 0, "current": None, "previous": None, "unclean_before": 0,
                     "held": [], "history": []},
            "warnings": [f"{persist_dir}: {why}: the last boot, the last gate failure and "
                         f"the boot record are not shown"]}


def _expires_in(tk: dict[str, Any], tickler: dict[str, Any], now: float) -> float | None:
    """Seconds until the armed watchdog fires unless petted again (None: not armed or not
    known): from the last pet and the timeout (one monotonic clock for the whole
    machine), or the device's own time left as the tickler last read it, the sooner."""
    if tk.get("armed") is not True:
        return None
    found = []
    last, timeout = tk.get("last_pet_mono"), tk.get("timeout")
    if isinstance(last, (int, float)) and isinstance(timeout, (int, float)):
        found.append(last + timeout - now)
    age = tickler.get("heartbeat_age")
    left = tk.get("timeleft")  # whole seconds on most devices: the coarser of the two
    if isinstance(left, (int, float)) and age is not None and tickler["state"] == "alive":
        found.append(left - age)
    return round(min(found), 1) if found else None


# --- judging ----------------------------------------------------------------------------------

def _gate(wdog: dict[str, Any]) -> dict[str, Any] | None:
    """The tickler's gate as published (None: not published), a malformed one failed."""
    gate = wdog.get("gate")
    if gate is None or isinstance(gate, dict):
        return gate
    return {"ok": False, "reasons": [f"malformed gate record {gate!r}"]}


def _layer_reason(layer: str, d: dict[str, Any], wd: Judge) -> str:
    age = d.get("heartbeat_age")
    beat = "no heartbeat" if age is None else f"heartbeat {age:.1f} s old"
    pid = d.get("host_pid") or d.get("pid")
    if d["state"] == "hung":
        return f"{layer} hung (pid {pid} stopped, {beat})"
    if d["state"] == "stale":
        return (f"{layer} stale ({beat} > {wd.heartbeat_timeout:g} s, pid {pid} "
                "running but not beating)")
    if d["state"] == "restarting":
        return f"{layer} restarting ({beat})"
    if d.get("gave_up") and d["state"] == "dead":
        return (f"{layer} dead: init gave up restarting it after it kept dying "
                f"({beat}; tickler_deaths; tried again only after the pause, "
                "docs/init.md)")
    return f"{layer} dead ({beat}" + (f", pid {d['pid']} gone)" if d.get("pid") else ")")


def problems(st: dict[str, Any], wd: Judge) -> list[str]:
    """Why the chain is not healthy, most fundamental first ([] when it is)."""
    ch = st["chain"]
    why = [_layer_reason(layer, d, wd) for layer, d in ch["layers"].items()
           if d["state"] not in ("alive", "absent")]
    if ch.get("restarter_error") and ch["layers"]["restarter"]["state"] == "alive":
        why.append(f"restarter not answering ({ch['restarter_error']})")
    gate = _gate(ch.get("watchdog") or {})
    if ch["layers"]["tickler"]["state"] == "alive" and gate and not gate.get("ok"):
        why.append("gate failing: " + "; ".join(map(str, gate.get("reasons") or [])))
    bad = [f"{n} {s.get('state')}" for n, s in sorted(st["services"].items())
           if s.get("want") == "up" and s.get("state") not in AS_WANTED_UP]
    if bad:
        why.append(f"{len(bad)} service{'s' if len(bad) > 1 else ''} not ready: "
                   + ", ".join(bad))
    failing = [f"{n} {c.get('state')}" for n, c in sorted((st.get("checks") or {}).items())
               if isinstance(c, dict) and c.get("state") in CHECK_TROUBLE]
    if failing:
        why.append(f"{len(failing)} check{'s' if len(failing) > 1 else ''} not passing: "
                   + ", ".join(failing))
    unwritten = (ch.get("restarter") or {}).get("unwritten") or []
    if unwritten:
        why.append(f"{len(unwritten)} file{'s' if len(unwritten) > 1 else ''} not written")
    return why


def verdict(st: dict[str, Any], wd: Judge) -> dict[str, Any]:
    """healthy / degraded: why / resetting in N s: why (like `systemctl
    is-system-running`: anything but healthy exits 1)."""
    ch = st["chain"]
    why = problems(st, wd)
    wdog = ch.get("watchdog") or {}
    tickler = ch["layers"]["tickler"]["state"]
    left = wdog.get("expires_in")
    # nobody pets an armed watchdog: the tickler's gate failed, or the tickler itself is
    # hung, stale or dead (a restarting tickler comes back well inside the timeout)
    unpetted = wdog.get("armed") is True and (
        tickler in ("hung", "stale", "dead")
        or (tickler == "alive" and wdog.get("petting") is not True))
    if unpetted and left is not None and left > 0:
        state, line = "resetting", f"resetting in {math.ceil(left)} s"
    elif unpetted and left is not None:
        state, line = "degraded", f"degraded: the watchdog ran out {-left:.0f} s ago"
    elif why:
        state, line = "degraded", "degraded"
    else:
        return {"state": "healthy", "line": "healthy", "reasons": [], "resetting_in": None}
    if why:
        line += ": " + "; ".join(why)
    return {"state": state, "line": line, "reasons": why,
            "resetting_in": left if state == "resetting" else None}


def exit_code(st: dict[str, Any]) -> int:
    """0 healthy, 1 anything else."""
    return 0 if st["verdict"]["state"] == "healthy" else 1


# --- text -------------------------------------------------------------------------------------

def _age(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}s"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Rows under a header, each column as wide as its widest cell (cells escaped
    first, so that what is measured is what is shown)."""
    cells = [[escape(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in cells]


def render(st: dict[str, Any], tty: bool = False) -> list[str]:
    """The text of `hachain status`: the verdict line first."""
    def color(text: str, good: bool | None) -> str:
        if not tty or good is None:
            return text
        return f"\033[{'32' if good else '31'}m{text}\033[0m"

    ch = st["chain"]
    v = st["verdict"]
    out = [color(escape(v["line"]), v["state"] == "healthy")]
    rows = []
    for layer, d in ch["layers"].items():
        pid = "-" if d.get("pid") is None else str(d["pid"])
        if d.get("host_pid") and d["host_pid"] != d.get("pid"):
            pid += f" (here {d['host_pid']})"
        rows.append([layer, pid, _age(d.get("uptime")), str(d.get("restarts", "-")),
                     _age(d.get("heartbeat_age")), d["state"]])
    out.append("")
    lines = table(["LAYER", "PID", "UP", "RESTARTS", "HEARTBEAT", "STATE"], rows)
    out.append(lines[0])
    for line, d in zip(lines[1:], ch["layers"].values(), strict=True):
        good = None if d["state"] == "absent" else d["state"] == "alive"
        out.append(line[:len(line) - len(d["state"])] + color(d["state"], good))
    out += _watchdog_lines(ch, color)
    conf = ch.get("config") or {}
    if conf.get("source"):
        ok = not conf.get("last_known_good") and conf.get("disk") == "same"
        out.append("config: " + color(escape(conf["summary"]), ok))
    lb = ch.get("last_boot")
    if isinstance(lb, dict) and isinstance(lb.get("cause"), str):
        out.append(f"last boot: {escape(lb['cause'])}")
    gf = ch.get("gate_failure")
    if isinstance(gf, dict) and isinstance(gf.get("reasons"), list):
        out.append(f"last gate failure: {escape('; '.join(map(str, gf['reasons'])))}")
    out += _boot_lines(ch, color)
    for w in ch.get("warnings") or []:
        out.append(color(f"warning: {escape(w)}", False))
    if ch.get("restarter_error"):
        out.append(color(f"restarter: {escape(ch['restarter_error'])}", False))
    for u in (ch.get("restarter") or {}).get("unwritten") or []:
        out.append(color(escape(f"unwritten: {u['file']} since {u['since']:.0f} s: "
                                f"{u['error']}"), False))
    services, note = st["services"], ""
    last = ch.get("last_known")
    if not services and last and last.get("services"):
        services = last["services"]
        note = (f"last known services, {last['age']:.0f} s old (the restarter does not "
                "answer: this is what it said then)")
    if services:
        out += ["", note] if note else [""]
        out += _service_lines(services, color, live=not note)
    if st.get("checks"):
        out += [""] + _check_lines(st["checks"], color)
    return out


CHECK_TROUBLE = ("failing", "repairing", "failed", "held")  # a check's states shown red


def _check_lines(checks: dict[str, Any], color: Any) -> list[str]:
    """The machine checks ([check.NAME], docs/checks.md): one row each."""
    rows, goods = [], []
    for name, c in sorted(checks.items()):
        if not isinstance(c, dict):
            continue
        state = str(c.get("state"))
        rows.append([name + ("" if c.get("action") == "reboot" else " (log)"),
                     str(c.get("kind", "-")), state,
                     _age(c.get("failing_for")), str(c.get("repairs", 0)),
                     _age(c.get("last_try")), str(c.get("detail") or "")])
        goods.append(None if state == "pending" else state not in CHECK_TROUBLE)
    lines = table(["CHECK", "KIND", "STATE", "FAILING", "REPAIRS", "LAST TRY", "DETAIL"],
                  rows)
    out = [lines[0]]
    width = lines[0].index("STATE")
    for line, row, good in zip(lines[1:], rows, goods, strict=True):
        state = escape(row[2])
        out.append(line[:width] + color(state, good) + line[width + len(state):])
    return out


def _boot_lines(ch: dict[str, Any], color: Any) -> list[str]:
    """The reset record (previous boot's end, rescue) and the pets' worst lateness."""
    out = [color(escape(line), False if "RESCUE" in line or "LOOP" in line else None)
           for line in bootrecord.describe(ch.get("boot") or {})]
    pt = (ch.get("watchdog") or {}).get("pet_timing") or {}
    if isinstance(pt.get("pet_late_worst"), (int, float)):
        warned = escape(pt.get("pet_late_warnings") or 0)
        warn = pt.get("pet_late_warn")
        warn_s = f"{warn:g}" if isinstance(warn, (int, float)) else escape(warn or 0)
        out.append(f"pets: worst lateness {pt['pet_late_worst']:.3f} s since boot (warning "
                   f"above {warn_s} s; {warned} late)")
    return out


def _watchdog_lines(ch: dict[str, Any], color: Any) -> list[str]:
    wd = ch.get("watchdog") or {}
    if not wd.get("device"):
        return []
    tickler = ch["layers"]["tickler"]
    parts = [f"watchdog: {escape(wd['device'])}"]
    if wd.get("timeout") is not None:
        parts.append(f"timeout {escape(wd['timeout'])}s")
    if wd.get("expires_in") is not None:
        parts.append(f"time left {max(0.0, wd['expires_in']):.0f}s")
    parts.append(f"pets {escape(wd.get('pets') or 0)}")
    gate = _gate(wd) or {}
    verdict_ = ("pass" if gate.get("ok") else
                "FAIL: " + escape("; ".join(map(str, gate.get("reasons", [])))))
    text = " ".join(parts) + " gate " + color(verdict_, bool(gate.get("ok")))
    if tickler["state"] != "alive":
        text += color(f" (as the tickler last said, {_age(wd.get('as_of'))} ago: it is "
                      f"{tickler['state']})", False)
    return [text]


def _service_lines(services: dict[str, Any], color: Any, live: bool) -> list[str]:
    rows, goods = [], []
    for name, s in sorted(services.items()):
        why = s.get("reason") or ""
        if s.get("status_text"):
            why = (why + " " if why else "") + f"[{s['status_text']}]"
        if (s.get("reload") or {}).get("running"):
            why = (why + " " if why else "") + "[reloading]"
        if s.get("post_stop"):
            why = (why + " " if why else "") + f"[post_stop running, pid {s['post_stop']}]"
        if left := s.get("leftovers"):
            why = (why + " " if why else "") + f"[{len(left)} leftover process(es): " + \
                " ".join(map(str, left[:8])) + (" ..." if len(left) > 8 else "") + "]"
        last = (s.get("last_exit") or {}).get("text", "-")
        h = s.get("health")
        health = "-" if not h else ("ok" if not h.get("failures") else f"{h['failures']} fail")
        rows.append([name + ("*" if s.get("critical") else ""), str(s.get("state")),
                     str(s.get("pid") or "-"), _age(s.get("uptime")),
                     str(s.get("restarts", "-")), str(last), str(s.get("ready", "-")),
                     health, why])
        goods.append(s.get("state") in AS_WANTED_UP
                     if s.get("want") == "up" and live
                     else None)
    lines = table(["SERVICE", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "READY",
                   "HEALTH", "WHY"], rows)
    out = [lines[0]]
    width = lines[0].index("STATE")  # where the STATE column starts
    for line, row, good in zip(lines[1:], rows, goods, strict=True):
        state = escape(row[1])
        out.append(line[:width] + color(state, good) + line[width + len(state):])
    if any(s.get("critical") for s in services.values()):
        out.append("(* critical: part of the health gate)")
    return out


def text(st: dict[str, Any], as_json: bool, tty: bool = False) -> str:
    """What `hachain status` prints: one JSON line (compact: the C encoder; indented, 1000
    services took ~60 ms of pure Python), or the rendered text. The JSON is strict: a
    number that is not finite (a field no reader checks, 1e400 in a record) is null,
    never the `Infinity` or `NaN` that strict parsers refuse."""
    if as_json:
        try:
            return json.dumps(st, sort_keys=True, allow_nan=False) + "\n"
        except ValueError:  # rare: only then is the line scanned again
            return strict_json(json.dumps(st, sort_keys=True)) + "\n"
    return "\n".join(render(st, tty)) + "\n"


# In json.dumps's output (ASCII, strings quoted with their escapes): a string, or one of
# the words it writes for a number that is not finite.
_NOT_FINITE = re.compile(r'"(?:[^"\\]++|\\.)*+"|-?Infinity|NaN')


def strict_json(line: str) -> str:
    """json.dumps's `line` with each Infinity, -Infinity and NaN written as null. (A scan
    of the text, not a walk of the object: a record may nest as deep as the parser went.)"""
    return _NOT_FINITE.sub(lambda m: m.group() if m.group()[0] == '"' else "null", line)


def print_status(st: dict[str, Any], stream: Any = None) -> None:
    stream = stream or sys.stdout
    stream.write(text(st, False, stream.isatty()))


# --- one service: `hachain status NAME...` ---------------------------------------------------

def as_wanted(s: dict[str, Any]) -> bool:
    """The service is as its administrator wants it: wanted up and ready (a oneshot done,
    a singleton on standby on this node, skipped by its condition), or wanted down and
    stopped."""
    if s.get("want") == "down":
        return s.get("state") == "stopped"
    return s.get("state") in AS_WANTED_UP


def _cmdline(pid: int) -> str:
    try:
        raw = channels.read_small(f"/proc/{pid}/cmdline")
    except OSError:
        return "?"
    words = [w.decode(errors="replace") for w in raw.rstrip(b"\0").split(b"\0")]
    if len(words) == 4 and words[:2] == ["/bin/sh", "-c"] and \
            words[3].startswith("hachain-pre-start:"):
        return "/bin/sh, running the pre_start commands (then it execs the command)"
    text = " ".join(words)
    # one line whatever the arguments hold (a newline, an escape sequence)
    return text if text.isprintable() else text.encode("unicode_escape").decode()


def _memory(cgroup: str) -> dict[str, Any] | None:
    """{"current": bytes, "max": bytes or None (no limit), "oom_kills": N} of a cgroup
    with the v2 memory controller; None without it."""
    def read(file: str) -> str:
        return channels.read_small(os.path.join(cgroup, file)).decode().strip()
    try:
        current = int(read("memory.current"))
        limit = read("memory.max")
        events = dict(ln.split() for ln in read("memory.events").splitlines())
        return {"current": current, "max": None if limit == "max" else int(limit),
                "oom_kills": int(events.get("oom_kill", 0))}
    except (OSError, ValueError):
        return None


def _pid_mapping(restarter: dict[str, Any]) -> tuple[bool, dict[int, int] | None]:
    """(same, mapping): `same` when the restarter runs in this PID namespace (the chain's
    pids are ours); else {the chain's pid: the same process's pid here} from a scan of
    its namespace (a simulated machine seen from the host), or None when that cannot be
    known (no live restarter to tell): then no /proc of a service's pid is read here,
    since that pid may name another process in this namespace."""
    pid, host = restarter.get("pid"), restarter.get("host_pid")
    if host is None:
        return False, None
    if pid == host:
        return True, None
    ns = _pidns(host)
    return False, Finder._scan(ns) if ns is not None else None


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def service_details(st: dict[str, Any], names: list[str], log_lines: int | None,
                    log_dir: str | None = None, log_timeout: float | None = None
                    ) -> dict[str, dict[str, Any]]:
    """What `hachain status NAME` shows of each named service (all known to `st`): its
    status entry, the main process's command line, its cgroup and the processes in it,
    and the last `log_lines` lines of its log (None: all; read by a child given
    `log_timeout` seconds when that is set: the logs are in persist_dir by default). A
    service the restarter did not answer for comes from the last known table (`"as_of"`:
    how old)."""
    ch = st["chain"]
    rs = ch.get("restarter") or {}
    last = ch.get("last_known") or {}
    live = bool(st["services"])
    log_dir = log_dir or rs.get("log_dir")
    same, mapping = _pid_mapping(ch["layers"].get("restarter") or {})
    back = {here: chain for chain, here in (mapping or {}).items()}  # here -> the chain's
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        s = dict(st["services"][name] if live else last["services"][name])
        if not live:
            s["as_of"] = last.get("age")
        main = int(s["pid"]) if s.get("pid") else None
        here = main if same or main is None else (mapping or {}).get(main)
        if here is not None:
            s["command"] = _cmdline(here)
        cg = rs.get("cgroups")
        if live and cg:
            s["cgroup"] = os.path.join(cg, name)
            try:  # pids as this process sees them: written as the chain sees them
                raw = channels.read_small(os.path.join(cg, name, "cgroup.procs"))
                s["processes"] = sorted(back.get(int(p), int(p)) for p in raw.split())
            except (OSError, ValueError):
                s["processes"] = []
            if (mem := _memory(os.path.join(cg, name))) is not None:
                s["memory"] = mem
        out[name] = s
    if log_dir:
        for name, part in _log_tails(log_dir, names, log_lines, log_timeout).items():
            out[name].update(part)
    return out


def _log_tails(log_dir: str, names: list[str], lines: int | None,
               timeout: float | None) -> dict[str, dict[str, Any]]:
    """Each service's log file, whether it was written and its last `lines` lines; with
    `timeout`, read by a child given that long (a log directory on a mount that does not
    answer is `log_error` then, not a status that never comes)."""
    from hachain import logs

    def read() -> dict[str, dict[str, Any]]:
        got = {}
        for name in names:
            paths = logs.log_files(log_dir, name)
            tail, _ = logs.last_lines(paths, lines) if paths else ([], 0)
            got[name] = {"log_file": os.path.join(log_dir, name + ".log"),
                         "log_written": bool(paths),
                         "log_tail": [ln.decode(errors="replace").rstrip("\n")
                                      for ln in tail]}
        return got
    if timeout is None:
        return read()
    from hachain import snapshot
    got, why = snapshot.answered_within(read, timeout)
    if not why:
        return dict(got)
    return {name: {"log_file": os.path.join(log_dir, name + ".log"), "log_error": why}
            for name in names}


def render_details(details: dict[str, dict[str, Any]], tty: bool = False) -> list[str]:
    """The text of `hachain status NAME...`: a block per service."""
    def color(text: str, good: bool) -> str:
        return f"\033[{'32' if good else '31'}m{text}\033[0m" if tty else text

    out: list[str] = []
    for name, s in details.items():
        if out:
            out.append("")
        head = f"{escape(name)}: " + color(escape(s.get("state")), as_wanted(s))
        facts = [f"want {escape(s.get('want'))}"]
        if s.get("pid"):
            facts.append(f"pid {s['pid']}, up {_age(s.get('uptime'))}")
        facts.append(f"{escape(s.get('restarts', 0))} restart(s)")
        if s.get("critical"):
            facts.append("critical")
        out.append(head + " (" + ", ".join(facts) + ")")
        if "as_of" in s:
            out.append(color(f"  as the restarter last said, {s['as_of'] or 0:.0f} s ago: it "
                             "does not answer", False))
        why = s.get("reason") or ""
        if s.get("status_text"):
            why = (why + " " if why else "") + f"[{s['status_text']}]"
        rows = []
        if why:
            rows.append(("why", why))
        if s.get("command"):
            rows.append(("process", f"{s['pid']} {s['command']}"))
        if "cgroup" in s:
            procs = s.get("processes") or []
            rows.append(("cgroup", f"{s['cgroup']}: {len(procs)} process(es)" + (
                ": " + " ".join(map(str, procs[:16])) + (" ..." if len(procs) > 16 else "")
                if procs else "")))
        if mem := s.get("memory"):
            rows.append(("memory", _mib(mem["current"]) + (
                f" of memory_max {_mib(mem['max'])}" if mem.get("max") else "") + (
                f", {mem['oom_kills']} OOM kill(s)" if mem.get("oom_kills") else "")))
        rows.append(("last exit", str((s.get("last_exit") or {}).get("text", "-"))))
        rows.append(("ready", str(s.get("ready", "-"))))
        h = s.get("health")
        if h:
            rows.append(("health", f"{h.get('kind')}: " + (
                "ok" if not h.get("failures") else f"{h['failures']} failure(s)") + (
                f" ({h['last']})" if h.get("last") else "")))
        if rl := s.get("reload"):
            rows.append(("reload", "under way" if rl.get("running") else
                         f"{rl['last']}, {_age(rl.get('age'))} ago" if rl.get("last")
                         else "not asked for yet"))
        if s.get("post_stop"):
            rows.append(("post_stop", f"running (pid {s['post_stop']}); a start waits for it"))
        if "listen" in s:
            rows.append(("listen", "held open: " + ", ".join(map(str, s["listen"]))
                         if s["listen"] else "closed (opened at its next start)"))
        if "fd_store" in s:
            names = s["fd_store"] or []
            rows.append(("fd store", f"{len(names)} descriptor(s)" + (
                ": " + ", ".join(map(str, names[:16])) + (" ..." if len(names) > 16 else "")
                if names else "")))
        if s.get("leftovers"):
            rows.append(("leftovers", " ".join(map(str, s["leftovers"]))))
        if "log_file" in s:
            tail = s.get("log_tail") or []
            rows.append(("log", s["log_file"] + (
                f": {s['log_error']}" if s.get("log_error") else
                f", last {len(tail)} line(s):" if tail else
                "" if s.get("log_written") else " (not written yet)")))
        width = max(len(k) for k, _ in rows)
        out += [f"  {k + ':':<{width + 1}} {escape(v)}" for k, v in rows]
        out += ["    " + escape(ln) for ln in s.get("log_tail") or []]
    return out


def document(state_dir: str, persist_dir: str, ask: Callable[[str], dict[str, Any]],
             as_json: bool, tty: bool) -> tuple[int, str]:
    """(exit code, output) of `hachain status [--json]`, made where `ask` answers without a
    socket: the restarter serves it to the native `hachain` front (`status-doc`), which
    then has no interpreter to start. The same gathering and rendering as the CLI's."""
    st = gather_status(state_dir, persist_dir, ask=ask)
    return exit_code(st), text(st, as_json, tty)
