"""The runner of `hachain chaos`: one campaign of faults on one simulated machine.

Owns: the built-in campaign configuration, powering the simulated machine on and off
(with the small tmpfs file systems it mounts for it), running each scheduled fault
through its kind's row of `KINDS` (hachain/simulators/chaos_kinds.py), waiting for the machine
to converge (the invariants are hachain/simulators/converge.py's), judging the reboots the fault
caused against the kind's expectation, and stopping cleanly on Ctrl-C, a closed
terminal or kill. Must not: know a fault kind by name, change `SimMachine` or reach into
the chain's code. The command line is chaos.py, reports and the progress line
chaos_report.py.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from hachain import __version__, channels, config
from hachain.simulators import chaos_report
from hachain.simulators.chaos_kinds import (
    BOOT_BUDGET,
    CHECK_MARKER,
    CHECK_NAME,
    CHECK_RETRY,
    DB_MAX_RESTARTS,
    KINDS,
    MACHINE_DIR_MARK,
    PANIC_DELAY,
    Fault,
    InjectError,
    Injection,
    convergence_bound,
    reboot_bound,
    unfill,
)
from hachain.simulators.chaos_report import Result
from hachain.simulators.converge import (
    Snapshot,
    lasting,
    read_admin,
    snapshot,
    snapshot_problems,
)
from hachain.simulators.machine import CONSOLE_NAME, SimMachine, find_cgroup2_mount

# --- the campaign's own services -------------------------------------------------------

# Watchdog settings of the built-in campaign: tight, so faults resolve in seconds.
WD_TIMEOUT, PET, HB_TIMEOUT, HB_INTERVAL, RESTART_DELAY = 3, 0.5, 1.5, 0.25, 0.5


def campaign_config_text(python: str, svc: str) -> str:
    """The built-in campaign configuration (four services, one critical notify one, and
    a machine check that the check kinds make fail)."""
    def cmd(*args: str) -> str:
        return json.dumps([python, "-I", "-S", svc, *args])
    common = ('backoff = { initial = 0.1, factor = 2.0, max = 1.0, reset_after = 3 }\n'
              'intensity = { max_restarts = 40, window = 30, action = "maintenance" }\n'
              'stop_timeout = 1\nrlimits = { nofile = 128 }\n')
    return f"""\
# hachain chaos: built-in campaign configuration (the simulated machine overrides
# state_dir, persist_dir, cgroup_root and the device through HACHAIN_* variables).
[chain]
state_dir = "/run/hachain"
persist_dir = "/var/lib/hachain"
heartbeat_interval = {HB_INTERVAL}
restart_delay = {RESTART_DELAY}

[watchdog]
device = "sim"
timeout = {WD_TIMEOUT}
pet_interval = {PET}
heartbeat_timeout = {HB_TIMEOUT}
restart_grace = 4

# a machine check the check-repaired and check-failed kinds make fail: it passes while
# no marker is in the machine's run directory (wiped at each boot); its repair removes a
# marker file, and cannot remove a marker directory
[check.{CHECK_NAME}]
command = ["/bin/sh", "-c", "! test -e {MACHINE_DIR_MARK}/run/{CHECK_MARKER}"]
interval = 1
retry_timeout = {CHECK_RETRY}
repair = [["/bin/rm", "-f", "{MACHINE_DIR_MARK}/run/{CHECK_MARKER}"]]
repair_timeout = 2

[service.db]
command = {cmd("notify", "0.2")}
ready = "notify"
ready_timeout = 5
watchdog_sec = 1
critical = true
{common.replace("max_restarts = 40, window = 30,",
                f"max_restarts = {DB_MAX_RESTARTS}, window = 30, decay = 1,")}
[service.cache]
command = {cmd("fd")}
ready = "fd"
ready_timeout = 5
requires = ["db"]
{common}
[service.api]
command = {cmd("notify", "0.1")}
ready = "notify"
ready_timeout = 5
watchdog_sec = 1
after = ["db"]
{common}
[service.worker]
command = {cmd("none")}
{common}
"""


# SimMachine's "boot N: <what> (...)" event, back to its cause
BOOT_CAUSES = {"power on": "power-on", "watchdog reset": "watchdog", "after panic": "panic",
               "reboot": "reboot", "after a power cut": "power-cut"}
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
TERMINAL_RE = re.compile(r"^[^:]+: (failed|maintenance) \(expected (ready|done)\)")
TMPFS_RUN, TMPFS_PERSIST = "8m", "16m"


# --- the campaign ---------------------------------------------------------------------------

def _read(path: str, mode: str = "rb") -> Any:
    with open(path, mode) as f:
        return f.read()


class CampaignError(Exception):
    """The campaign cannot run here (no root, no unshare, bad setup)."""


class Campaign:
    """Run a list of faults on one simulated machine; see module docstring."""

    def __init__(self, config_path: str, workdir: str, seed: int, faults: list[Fault],
                 kinds: list[str], skipped: dict[str, str], settle: float = 0.5,
                 progress: Callable[[int, int, Result | None, str], None] | None = None,
                 tmpfs: bool = True, note: Callable[[str], None] | None = None) -> None:
        self.config_path = config_path
        self.cfg = config.load(config_path)
        # the machine runs from a copy: config-broken breaks the copy, never the user's file
        os.makedirs(workdir, exist_ok=True)
        self.run_config = os.path.join(workdir, "machine-chain.toml")
        with open(self.run_config, "wb") as f:  # (the machine's directory named in it)
            f.write(_read(config_path).replace(MACHINE_DIR_MARK.encode(),
                                               os.path.join(workdir, "m").encode()))
        self.workdir = workdir
        self.seed = seed
        self.faults = faults
        self.kinds = kinds
        self.skipped = skipped
        self.settle = settle
        self.progress = progress or (lambda *_a: None)
        self.note = note  # writes a line above the progress bar and draws the bar again
        self.want_tmpfs = tmpfs
        self.mounts: list[str] = []
        self.machine: SimMachine | None = None
        self.machine_dir = os.path.join(workdir, "m")
        self.t0 = time.monotonic()
        self.results: list[Result] = []
        self.boot_times: list[float] = []
        self.admin0: Any = {}
        self.resets = 0
        self.started_wall = time.time()  # labels the report only
        self.boot_causes: list[str] = []  # beside boot_times: why each boot came
        self.forced_after: int | None = None  # reset() after this failed fault's index
        self.machine_console = os.path.join(self.machine_dir, CONSOLE_NAME)

    # -- setup and teardown -------------------------------------------------------------

    def mount_tmpfs(self) -> bool:
        """A small tmpfs on <machine>/run and <machine>/persist; False when not possible.
        mount(2) and umount2(2) are called here, in the campaign's process: a Ctrl-C or
        SIGHUP sent to its process group must not kill a mount(8) child half-way. (One in
        a session of its own was still killed when the signal came between its vfork and
        its setsid: "cannot mount a tmpfs: -1" and no report, CI 2026-12-05.)"""
        for sub, size in (("run", TMPFS_RUN), ("persist", TMPFS_PERSIST)):
            path = os.path.join(self.machine_dir, sub)
            os.makedirs(path, exist_ok=True)
            why = _mount_tmpfs("chaos-" + sub, path, f"size={size},mode=0755")
            if why:
                self.skip_fs = f"cannot mount a tmpfs: {why}"
                return False
            self.mounts.append(path)
        return True

    def unmount(self) -> None:
        """Undo mount_tmpfs (lazily when something still holds a file open), and any
        tmpfs of ours still mounted under the machine directory (a signal between the
        mount and its bookkeeping)."""
        for path in reversed([*self.mounts, *campaign_mounts(self.machine_dir)]):
            if path not in campaign_mounts(self.machine_dir):
                continue
            if _umount(path):
                _umount(path, lazy=True)
        self.mounts.clear()

    def power_on(self) -> None:
        """A fresh SimMachine on the machine directory, booted."""
        self.machine = SimMachine(self.run_config, self.machine_dir, panic_delay=PANIC_DELAY,
                                  on_event=self._on_event)
        self.machine.start()

    def _on_event(self, line: str) -> None:
        if line.startswith("boot ") and ": " in line:
            t = round(time.monotonic() - self.t0, 3)
            self.boot_times.append(t)
            what = line.split(": ", 1)[1].split(" (", 1)[0]
            cause = BOOT_CAUSES.get(what, what)
            if self.forced_after is not None:  # the campaign's own power-off and on
                cause, self.forced_after = f"campaign reset after #{self.forced_after}", None
            self.boot_causes.append(cause)

    def power_off(self) -> None:
        """Stop the machine (kills its namespace, removes its cgroups)."""
        if self.machine is not None:
            self.machine.stop()
            self.machine = None
        for path in self.mounts:
            unfill(path)

    @property
    def cg_rel(self) -> str | None:
        """The machine's cgroup root relative to the cgroup2 mount (as /proc/PID/cgroup)."""
        root = self.machine.cgroup_root if self.machine else None
        mount = find_cgroup2_mount()
        if not root or not mount:
            return None
        return "/" + os.path.relpath(root, mount)

    # -- observation ----------------------------------------------------------------------

    def say(self, line: str) -> None:
        """One line on stderr about the machine: through `note` (above the progress bar,
        which it draws again) when given; a terminal gone away (EIO after SIGHUP) drops it."""
        if self.note is not None:
            self.note(f"chaos: {line}")
            return
        try:
            tty = sys.stderr.isatty()
            sys.stderr.write(("\r\033[K" if tty else "") + f"chaos: {line}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    def _problems(self, snap: Snapshot) -> list[str]:
        return snapshot_problems(snap, self.cfg, self.admin0, self.cg_rel,
                                 self.cfg.watchdog.heartbeat_timeout)

    def stalled(self) -> float:
        """The machine's CPU stall so far (SimMachine.cpu_stalled), 0 where unknown."""
        assert self.machine is not None
        return self.machine.cpu_stalled() or 0.0

    def wait_converged(self, deadline: float, detected: Callable[[Snapshot], bool],
                       watch: Callable[[Snapshot], str | None],
                       stall0: float | None = None) -> tuple[
                           float | None, float | None, list[str], Snapshot, float]:
        """Poll until `detected` and every invariant holds twice, `settle` apart.

        `watch` may end the wait early with a hard failure (an unexpected reboot). The
        deadline moves on by the CPU stall of the machine since `stall0` (the machine's
        stall when the wait began, by default now). Returns (detect time, recover time,
        problems, last snapshot, the stall from `stall0` to the recovery, or to the end).
        """
        assert self.machine is not None
        t_detect = None
        probs: list[str] = []
        terminal = 0  # polls in a row with a wanted service held in failed / maintenance
        stall0 = self.stalled() if stall0 is None else stall0
        while True:
            waited = self.stalled() - stall0  # read first: the snapshot comes after it
            snap = snapshot(self.machine)
            hard = watch(snap)
            if hard:
                return t_detect, None, [hard], snap, waited
            if t_detect is None and detected(snap):
                t_detect = snap.t
            if t_detect is not None:
                probs = self._problems(snap)
                if not probs:
                    time.sleep(self.settle)
                    again = snapshot(self.machine)
                    hard = watch(again)
                    if hard:
                        return t_detect, None, [hard], again, waited
                    probs = self._problems(again) + lasting(snap, again)
                    if not probs:
                        return t_detect, snap.t, [], again, waited
                # failed and maintenance end only by an administrator: no use waiting
                terminal = terminal + 1 if any(TERMINAL_RE.search(p) for p in probs) else 0
                if terminal >= 5:
                    return t_detect, None, probs, snap, waited
            else:
                probs = ["the fault's effect was never seen"] + self._problems(snap)
            if time.monotonic() > deadline + waited:
                return t_detect, None, probs, snap, waited
            time.sleep(0.1)

    def baseline(self) -> list[str]:
        """Wait for the freshly booted machine to converge; its problems if it does not."""
        assert self.machine is not None
        self.admin0, bad = read_admin(self.machine.persist_dir)
        if bad:
            self.say(bad)
        deadline = time.monotonic() + BOOT_BUDGET + 10
        _, rec, probs, snap, _ = self.wait_converged(deadline, lambda _s: True,
                                                     lambda _s: None)
        self.admin0 = snap.admin
        return [] if rec is not None else probs

    # -- one fault ------------------------------------------------------------------------

    def run_fault(self, f: Fault) -> Result:
        """Inject `f` (its kind's row of KINDS), wait for convergence, judge it."""
        assert self.machine is not None
        m = self.machine
        k = KINDS[f.kind]
        comp = "machine" if f.target == "machine" else f.target
        res = Result(f.index, f.kind, f.target, comp, bound=k.bound_for(self.cfg))
        pre = snapshot(m)
        res.console, res.console_line = _console_position(m.console)
        stall0 = self.stalled()
        t0 = time.monotonic()
        x = Injection(m, self.cfg, pre, f.target, random.Random(f"{self.seed}:{f.index}"),
                      self.run_config, self.workdir)
        try:
            during = k.inject(x)
        except (OSError, InjectError) as e:
            res.ok, res.problems = False, [f"injection failed: {e}"]
            res.t_fault = res.t_end = round(t0 - self.t0, 3)
            return res
        rb = reboot_bound(self.cfg)

        def watch(s: Snapshot) -> str | None:
            if s.boots > pre.boots + k.resets:
                return f"{s.boots - pre.boots} reboots after one fault"
            if s.boots > pre.boots:
                boot = m.boots[pre.boots]
                res.reboot = boot["cause"]
                res.reboot_after = round(boot["mono"] - t0, 3)
                if not k.reboot:
                    return (f"false reboot ({boot['cause']}) {res.reboot_after:.2f} s "
                            "after the fault")
                if boot["cause"] != k.reboot:
                    return f"reboot by {boot['cause']}, expected {k.reboot}"
                if k.reboot == "watchdog" and k.timed_reset and res.reboot_after > rb:
                    return f"watchdog reset after {res.reboot_after:.2f} s > bound {rb:.2f} s"
            elif k.reboot == "watchdog" and k.timed_reset and \
                    time.monotonic() - t0 > rb + PANIC_DELAY + 2:
                return f"no reboot within {rb + PANIC_DELAY + 2:.1f} s of the hang"
            return None

        deadline = t0 + res.bound * 1.5 + 5
        t_det, t_rec, probs, _, waited = self.wait_converged(
            deadline, lambda s: x.seen or k.detect(pre, s, f.target), watch, stall0)
        if m.cpu_stalled() is not None:
            res.host_wait = round(waited, 2)
        res.t_fault = round(t0 - self.t0, 3)
        res.t_end = round(time.monotonic() - self.t0, 3)
        if t_det is not None:
            res.t_detect = round(t_det - self.t0, 3)
            res.detect = round(t_det - t0, 3)
        if t_rec is not None:
            res.t_recover = round(t_rec - self.t0, 3)
            res.converge = round(t_rec - t0, 3)
            if res.converge > res.bound + waited:
                extra = f" + {waited:.2f} s waited for a CPU" if waited >= 0.01 else ""
                probs = [f"converged in {res.converge:.2f} s > bound {res.bound:.2f} s{extra}"]
        probs = during + probs
        res.ok = not probs
        res.problems = probs
        return res

    # -- the whole campaign ---------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Power on, run every fault, power off; the report (plain dicts)."""
        self.t0 = time.monotonic()
        os.makedirs(self.machine_dir, exist_ok=True)
        baseline_problems: list[str] = []
        interrupted = None
        try:
            with armed():  # a stop signal that came before raises here
                self.power_on()
                baseline_problems = self.baseline()
                if not baseline_problems:
                    for i, f in enumerate(self.faults):
                        self.progress(i, len(self.faults), None, f"{f.kind} {f.target}")
                        res = self.run_fault(f)
                        self.results.append(res)
                        self.progress(i + 1, len(self.faults), res, "")
                        if not res.ok and i + 1 < len(self.faults):
                            try:
                                self.reset()
                            except CampaignError as e:
                                baseline_problems = [str(e)]
                                break
        except CampaignInterrupted as e:
            interrupted = e.signame  # the fault under way is not judged: a partial report
        finally:
            with signals_deferred():  # not armed: a second Ctrl-C only waits
                self.power_off()
        rep = self.report(baseline_problems)
        if interrupted:
            rep["interrupted"], rep["ok"] = interrupted, False
        return rep

    def reset(self) -> None:
        """After a broken invariant: a fresh machine, so later faults start clean."""
        self.resets += 1
        with signals_deferred():
            self.power_off()
        self.forced_after = self.results[-1].index if self.results else -1
        self.power_on()
        probs = self.baseline()
        if probs:
            raise CampaignError("the machine never converged after a reset (campaign "
                                "stopped): " + "; ".join(probs))

    def report(self, baseline_problems: list[str]) -> dict[str, Any]:
        """Everything the JSON and HTML reports show."""
        results = [asdict(r) for r in self.results]
        summary = chaos_report.summarize(results)
        fails = [r for r in results if not r["ok"]]
        return {
            "seed": self.seed, "faults": len(self.faults), "kinds": self.kinds,
            "skipped": self.skipped, "config": self.config_path,
            "config_sha256": hashlib.sha256(_read(self.config_path)).hexdigest(),
            "bounds": {k: convergence_bound(k, self.cfg) for k in self.kinds},
            "reboot_bound": reboot_bound(self.cfg),
            "baseline_problems": baseline_problems,
            "ok": not fails and not baseline_problems, "failures": len(fails),
            "results": results, "summary": summary, "boot_times": self.boot_times,
            "boots": len(self.boot_times), "machine_resets": self.resets,
            "duration": round(time.monotonic() - self.t0, 3), "interrupted": None,
            "version": __version__, "started_wall": self.started_wall,
            "console": self.machine_console, "boot_causes": self.boot_causes,
        }


# --- what the host offers ----------------------------------------------------------------

_MNT_DETACH = 2
_libc: Any = None


def _mount_tmpfs(source: str, path: str, options: str) -> str:
    """mount(2) a tmpfs at `path`: "" or why not."""
    global _libc
    import ctypes
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.mount(source.encode(), path.encode(), b"tmpfs", 0, options.encode()) == 0:
        return ""
    code = ctypes.get_errno()
    return f"{os.strerror(code)} (errno {errno.errorcode.get(code, code)})"


def _umount(path: str, lazy: bool = False) -> str:
    """umount2(2) `path` (MNT_DETACH when `lazy`): "" or why not."""
    global _libc
    import ctypes
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.umount2(path.encode(), _MNT_DETACH if lazy else 0) == 0:
        return ""
    return os.strerror(ctypes.get_errno())


def can_mount_tmpfs(work: str) -> tuple[bool, str]:
    """(True, "") when a tmpfs can be mounted under `work`; else (False, the reason)."""
    probe = os.path.join(work, "tmpfs-probe")
    os.makedirs(probe, exist_ok=True)
    try:
        with signals_deferred():  # never leave the probe mounted
            if why := _mount_tmpfs("chaos-probe", probe, "size=64k"):
                return False, f"cannot mount a tmpfs: {why}"
            _umount(probe)
        return True, ""
    except OSError as e:
        return False, f"cannot mount a tmpfs: {e}"
    finally:
        try:
            os.rmdir(probe)
        except OSError:
            pass


# --- interruption: Ctrl-C, a closed terminal, kill --------------------------------------------
#
# SIGINT, SIGTERM and SIGHUP (the terminal went away) end a campaign the same way. The
# handler always records the first one in Stop.pending. Only while the campaign runs its
# machine (`armed`, inside Campaign.run) does it also raise CampaignInterrupted in the main
# thread, and Campaign.run turns that into a partial report: the machine is powered off,
# the tmpfs mounts are undone. Everywhere else (setting up, mounting, writing the report,
# between shrink runs) the signal only waits in Stop.pending, and the next `armed` region
# raises at its first line, so no moment exists where a stop signal loses the report. The
# steps that must not be cut in half even while armed (a mount and its bookkeeping, a
# power-off) run in `signals_deferred`: a signal arriving meanwhile raises when they end.

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class CampaignInterrupted(BaseException):
    """A stop signal arrived (BaseException: no `except Exception` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signame = signal.Signals(signum).name


class Stop:
    """The handler's state (main thread only)."""
    armed = False  # a stop signal raises at once
    depth = 0  # inside steps that must not be cut in half
    pending: int | None = None  # the first stop signal of this campaign, once one came

    @classmethod
    def signame(cls) -> str | None:
        return signal.Signals(cls.pending).name if cls.pending is not None else None


def _on_stop_signal(signum: int, _frame: object) -> None:
    Stop.pending = Stop.pending or signum
    if Stop.armed and not Stop.depth:
        Stop.armed = False  # once: what follows is cleaning up
        raise CampaignInterrupted(Stop.pending)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """While inside: SIGINT, SIGTERM and SIGHUP are recorded in Stop.pending, and raise
    CampaignInterrupted inside `armed` regions."""
    Stop.pending, Stop.armed, Stop.depth = None, False, 0
    old = {s: signal.signal(s, _on_stop_signal) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        Stop.pending, Stop.armed, Stop.depth = None, False, 0


@contextlib.contextmanager
def armed() -> Iterator[None]:
    """While inside, a stop signal raises CampaignInterrupted; one that came before
    raises on entry. (Outside stop_signals_raise nothing is recorded: it never raises.)"""
    if Stop.pending is not None:
        raise CampaignInterrupted(Stop.pending)
    Stop.armed = True
    try:
        yield
    finally:
        Stop.armed = False


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold the stop signals while inside; one that arrived meanwhile raises on the way
    out when armed. (Not the signal mask: Python runs handlers in the main thread, but the
    kernel may hand a process signal to any thread, e.g. the simulated machine's.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    Stop.depth += 1
    try:
        yield
    finally:
        Stop.depth -= 1
    if not Stop.depth and Stop.armed and Stop.pending is not None:
        Stop.armed = False
        raise CampaignInterrupted(Stop.pending)


def campaign_mounts(under: str) -> list[str]:
    """The tmpfs mount points of a campaign (source chaos-*) at or below `under`."""
    under = os.path.realpath(under)
    out: list[str] = []
    try:
        lines = _read("/proc/self/mounts", "r").splitlines()
    except OSError:
        return out
    for line in lines:
        f = line.split()
        if len(f) < 3 or f[2] != "tmpfs" or not f[0].startswith("chaos-"):
            continue
        point = f[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        if point == under or point.startswith(under + "/"):
            out.append(point)
    return out


def _console_position(path: str) -> tuple[str, int]:
    """(path, the number of the next line to be written to it)."""
    try:
        with open(path, "rb") as f:
            return path, sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b"")) + 1
    except OSError:
        return path, 1


def run_campaign(cfg_path: str, work: str, seed: int, faults: list[Fault], kinds: list[str],
                 skipped: dict[str, str], tmpfs: bool,
                 progress: Callable[..., None] | None,
                 note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One Campaign on a fresh machine directory under `work`, mounts cleaned up after."""
    c = Campaign(cfg_path, work, seed, faults, kinds, skipped, progress=progress, note=note)
    longest = os.path.join(c.machine_dir, "run", "hachain", channels.CONTROL_SOCKET)
    if len(longest.encode()) > MAX_SOCKET_PATH:
        raise CampaignError(f"{longest}: {len(longest.encode())} bytes, too long for a Unix "
                            f"socket ({MAX_SOCKET_PATH}); give --dir a shorter path")
    os.makedirs(c.machine_dir, exist_ok=True)
    try:
        if Stop.pending is None:  # (not armed here: a stop signal only waits)
            with signals_deferred():  # a mount and its bookkeeping are one step
                if tmpfs and not c.mount_tmpfs():
                    raise CampaignError(getattr(c, "skip_fs", "cannot mount tmpfs"))
        return c.run()  # a partial report, when a stop signal came before or comes during
    finally:
        with signals_deferred():
            c.power_off()
            c.unmount()
