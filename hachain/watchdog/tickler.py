"""hachain's tickler: pets the watchdog only while the whole chain is healthy.

    python -m hachain.watchdog.tickler -c /etc/hachain/chain.toml

A separate process, started (and blindly restarted) by init. What it owns:

- the open watchdog device: opening it (which arms it), setting the timeout and
  pretimeout, petting it, and the magic close on an orderly stop;
- the health gate's *inputs*: it reads the heartbeats of init and the restarter and
  whether their processes are alive, and asks `health.evaluate` for the verdict;
- its records in the persistent directory: `gate.json` (why it stopped petting, written
  durably on the first failure, so it survives the reset it causes), `last_boot.json`
  (why the previous boot ended, read once at start from the device's boot status), and
  its part of the boot record (`hachain.bootrecord`): this boot's entry before the device
  is armed, the device's boot status, and the reason on every controlled end (gate
  failure, reboot requested, orderly stop);
- the boot-loop action `disarm` (magic close at start, so the box stays up);
- the timing of its pets: the interval between pets, how late each came, a warning when
  one came later than half the margin (timeout - pet_interval);
- its own heartbeat, `hb/tickler.json`.

The pet loop never waits on a file: the gated layers' heartbeats are read by a thread of
their own, and a round of reads that does not answer within `read_deadline` fails the
gate (a FIFO in place of the file, a hung FUSE or NFS mount under state_dir); a round
still hanging is not asked again until it returns. Durable writes (fsync) go through a
writer thread.

What it must not do: pet when the gate fails; keep running without petting because the
device is broken (it exits non-zero, and init restarts it; a silent non-petting tickler
would reset the machine with no explanation); decide anything the gate does not. Any
other failure after the open is the opposite case: it stops petting and stays up
(`fail_unpetted`), since a tickler that exits is restarted by init, and every restart
pets the device.

Facts this relies on (see the essay in `hachain.watchdog.device`): a tickler that dies
leaves the device armed (no magic character was written), so init has the whole timeout
to restart it; the restarted tickler opens the device again and SETTIMEOUT pets it.
"""

from __future__ import annotations

import argparse
import array
import atexit
import contextlib
import ctypes
import errno
import functools
import json
import os
import queue
import selectors
import signal
import sys
import threading
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from hachain import bootrecord, channels, sdnotify
from hachain.errors import ConfigError
from hachain.watchdog import health
from hachain.watchdog.device import (
    WDIOC_GETTIMELEFT,
    WDIOC_KEEPALIVE,
    WDIOF_CARDRESET,
    FdTransport,
    TimeoutRefused,
    Watchdog,
    WatchdogError,
    describe_bootstatus,
    flag_names,
    open_watchdog,
)

try:
    from hachain.watchdog import _tick  # type: ignore[attr-defined]
except ImportError:  # not built (no C compiler): every tick is Python's
    _tick = None

if TYPE_CHECKING:
    from hachain.configtypes import Config

PROG = "hachain-tickler"
DEFAULT_PATH = channels.DEFAULT_CONFIG
LAST_BOOT = channels.LAST_BOOT  # in persist_dir; written by the tickler once per boot
READ_DEADLINE_MAX = 0.5  # a heartbeat read slower than this (or margin / 4) fails the gate
RECORD_DEADLINE = 5.0  # the boot record at start, before the device is armed
PET_EARLY = 0.01  # a pet due this soon after a tick goes out in that tick
PET_GRACE = 0.05  # a pet due with a tick waits this long for the tick's round at most
ALARM_MIN = 0.0005  # the shortest interval timer set (0 would cancel it)
TICK_AFTER = 0.005  # ticks come this long after the chain's heartbeat grid (next_tick)
# The compiled tick (hachain/watchdog/_tick.c): at most this many in a row, then a Python
# one; its heartbeat's values that change at every tick, in _tick.c's order (sorted, as
# a Python beat writes them); and the keys of a layer's `extra` it lets change, with what
# they are to the gate ("lag": judged against max_loop_lag; "number": read by no rule)
COMPILED_TICKS = 32
COMPILED_KEYS = ("compiled_ticks", "last_pet_mono", "pet_interval_last", "pets", "timeleft")
COMPILED_NUMBERS = {"restarter": {"lag": "lag", "timer_lag": "number"}}
RT_PRIORITY = 50  # SCHED_FIFO priority: above ordinary services, below kernel threads
# The exit status of a tickler that leaves no armed device behind: it could not open the
# device, failed before the open, or had nothing armed (device "none", disarmed). init
# tells it from a death that petted the device (its close without 'V'): only those count
# toward giving up on the tickler (hachain.init.main TICKLER_NOT_OPENED, the same number).
EXIT_NOT_OPENED = 3
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOP_EARLY = [False]  # a stop signal came before the loop took them over (main, run)


def _stop_early(_sig: int, _frame: object) -> None:
    STOP_EARLY[0] = True


LOG_QUEUE_MAX = 1000  # log lines waiting for a stderr that does not take them
LOG_FLUSH = 1.0  # at exit, how long the lines still queued may take


class LogWriter:
    """stderr written by a thread of its own: a write to a pipe or socket whose reader is
    stuck (a hung journald, a full console pipe) blocks, and must not block the loop, or
    the start before the open. Lines past LOG_QUEUE_MAX are dropped, and counted."""

    def __init__(self) -> None:
        self.q: queue.Queue[bytes | None] = queue.Queue(LOG_QUEUE_MAX)
        self.dropped = 0
        self.thread = threading.Thread(target=self.run, name="log", daemon=True)
        self.thread.start()

    def put(self, line: bytes) -> None:
        try:
            self.q.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def run(self) -> None:
        while (line := self.q.get()) is not None:
            if self.dropped:
                n, self.dropped = self.dropped, 0
                _write_err(channels.log_line(PROG, f"{n} log line(s) dropped: stderr "
                                                   "did not take them"))
            _write_err(line)

    def flush(self, timeout: float) -> None:
        """Write what is queued, waiting at most `timeout` s (at exit)."""
        try:
            self.q.put(None, timeout=timeout)
        except queue.Full:
            return
        self.thread.join(timeout)


_LOG: list[LogWriter] = []  # the writer, once main started it


def _write_err(line: bytes) -> None:
    try:
        os.write(2, line)
    except OSError:
        pass


def log(msg: str) -> None:
    """One line on stderr, prefixed with the program name (through the log thread once
    main has started it)."""
    line = channels.log_line(PROG, msg)
    if _LOG:
        _LOG[0].put(line)
    else:
        _write_err(line)


def _on_alarm(_sig: int, _frame: object) -> None:
    """SIGALRM: nothing to do; its number through the wake-up fd woke the loop."""


def bounded(fn: Callable[[], Any], deadline: float, name: str) -> tuple[bool, Any]:
    """Run `fn` in a thread and wait at most `deadline` s: (True, its value) or
    (False, None) when it did not answer in time (it may go on, stuck, in its thread).
    An exception of `fn` is returned as the value."""
    box: list[Any] = []
    done = threading.Event()

    def run() -> None:
        try:
            box.append(fn())
        except Exception as e:  # noqa: BLE001 - handed to the caller
            box.append(e)
        done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    if not done.wait(deadline):
        return False, None
    return True, box[0]


class Reader:
    """Reads the gated layers' heartbeats in a thread of its own, so a read that hangs
    holds up that thread only. One thread for all of them: one stuck read fails the gate
    anyway.

    The thread keeps the loop's schedule itself (the same grid, channels.next_tick), and
    when a round has answered it runs the tick itself (`on_round`: Tickler.on_round,
    under the tickler's lock), so an idle tick wakes this thread only; the loop sleeps
    until a signal, a layer's death, or the interval timer the tick pushes forward each
    time (it fires when a round is late: the loop then ticks without it). Without
    `on_round` it tells the loop through a pipe. `answered` counts the rounds that
    answered and `result` is the last one; `busy_since` is when the round under way
    started (None between rounds),
    `layer` the file it is reading. A round still hanging is not started again until it
    returns. Each file is read through a channels.HeartbeatReader (kept open: a stat of
    the path and a pread a round while the path names it)."""

    def __init__(self, state_dir: str, layers: tuple[str, ...], period: float,
                 offset: float) -> None:
        self.state_dir = state_dir
        self.layers = layers
        self.period = period
        self.offset = offset
        self.fd, self.fd_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.answered = 0
        self.busy_since: float | None = None
        self.layer = ""
        self.result: dict[str, channels.Heartbeat | None] = {}
        self.due = time.monotonic()  # the next round
        # called by this thread after each round that answered (the tickler's on_round:
        # it ticks here); while None, the loop is told through the pipe instead
        self.on_round: Callable[[], None] | None = None
        # set by the tickler (under its lock) when the next ticks may be compiled ones:
        # this thread runs it, and it returns when the round due is this thread's again
        self.compiled: Callable[[], None] | None = None
        self.readers = [channels.HeartbeatReader(state_dir, layer) for layer in layers]
        threading.Thread(target=self.run, name="read-heartbeats", daemon=True).start()

    def run(self) -> None:
        readers = self.readers
        while True:
            if (go := self.compiled) is not None:
                self.compiled = None
                go()
                continue
            now = time.monotonic()
            if now < self.due:
                time.sleep(self.due - now)
                continue
            self.busy_since = now
            out: dict[str, channels.Heartbeat | None] = {}
            for layer, reader in zip(self.layers, readers, strict=True):
                self.layer = layer
                try:
                    out[layer] = reader.read()  # may hang
                except Exception:  # noqa: BLE001 - a file it cannot parse is no heartbeat;
                    out[layer] = None  # this thread dying would fail every later tick
                    reader.close()
            self.result = out
            self.answered += 1
            self.busy_since = None
            self.due = channels.next_tick(time.monotonic(), self.period, self.offset)
            if (cb := self.on_round) is not None:
                cb()
            else:
                self.poke()

    def poke(self) -> None:
        """Wake the loop (through the pipe in its selector)."""
        try:
            os.write(self.fd_w, b".")
        except OSError:
            pass  # the pipe is full: the loop has a wake-up waiting already

    def stuck(self, since: float) -> bool:
        """Is a round that started before `since` still under way?"""
        busy = self.busy_since
        return busy is not None and busy < since


class RecordWriter:
    """Durable writes of the persistent records, in order, in a thread of their own: an
    fsync on a slow or hung disk must not hold up the pet loop."""

    SLOW = 1.0  # a write under way this long is said in the log (see slow())

    def __init__(self) -> None:
        self.q: queue.SimpleQueue[tuple[str, Callable[[], None] | None]] = queue.SimpleQueue()
        self.submitted = 0  # counted by the submitting thread,
        self.done = 0  # and by the writer thread: each counter has one writer
        self.busy: tuple[str, float] | None = None  # the write under way and its start
        self.told: tuple[str, float] | None = None  # the slow write already logged
        self.thread = threading.Thread(target=self.run, name="records", daemon=True)
        self.thread.start()

    def submit(self, what: str, fn: Callable[[], None]) -> None:
        self.submitted += 1
        self.q.put((what, fn))

    def run(self) -> None:
        while True:
            what, fn = self.q.get()
            if fn is None:
                return
            self.busy = (what, time.monotonic())
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - the thread must outlive any one record
                why = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
                log(f"cannot write {what}: {why}")
            busy, self.busy = self.busy, None
            self.done += 1
            if busy is self.told:
                log(f"{what}: written after {time.monotonic() - busy[1]:.1f} s")

    def slow(self, now: float) -> str | None:
        """Once per write under way for SLOW s or more, the line that says so (called by
        the loop, which never waits on this thread). A reset that comes before a record
        is written then leaves this line on the console, not a silent gap."""
        busy = self.busy
        if busy is None or busy is self.told or now - busy[1] < self.SLOW:
            return None
        self.told = busy
        behind = max(0, self.submitted - self.done - 1)
        return (f"{busy[0]}: still being written after {now - busy[1]:.1f} s (persistent "
                f"storage slow or hung); {behind} more record(s) wait behind it")

    def close(self, timeout: float) -> bool:
        """Finish what is queued, waiting at most `timeout` s; False when it did not."""
        self.q.put(("", None))
        self.thread.join(timeout)
        return not self.thread.is_alive()


def boot_cause(bootstatus: int) -> str:
    """The previous boot's end in words: "watchdog reset" when WDIOF_CARDRESET is set."""
    if bootstatus & WDIOF_CARDRESET:
        return "watchdog reset"
    if bootstatus == 0:
        return "normal"
    return describe_bootstatus(bootstatus)


def go_realtime(priority: int = RT_PRIORITY) -> list[str]:
    """Ask for SCHED_FIFO and mlockall; returns one warning per thing refused."""
    warnings = []
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as e:
        warnings.append(f"cannot use SCHED_FIFO (petting may be delayed under load): {e}")
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # MCL_ONFAULT (Linux 4.4): lock each page once it is touched, not every page of
        # every mapped library. The loop's pages are touched by its first ticks (before
        # the device is armed) and then stay resident: about 3 MB less RSS.
        if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0 and \
                libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
            err = ctypes.get_errno()
            warnings.append(f"cannot mlockall (petting may wait on paging): "
                            f"{os.strerror(err)}")
    except (OSError, AttributeError) as e:
        warnings.append(f"cannot mlockall: {e}")
    return warnings


STATE = {name: i for i, name in enumerate(_tick.STATE)} if _tick is not None else {}


def _ns(seconds: float | None) -> int:
    """CLOCK_MONOTONIC seconds as the compiled tick keeps them: ns, -1 for None."""
    return -1 if seconds is None else int(seconds * 1e9)


def _seconds(ns: int) -> float | None:
    return None if ns < 0 else ns / 1e9


class CompiledRun(NamedTuple):
    """A run of compiled ticks (Tickler._arm): its state (_tick.STATE), _tick.run's
    arguments, and the heartbeats of the tick it began after."""

    state: array.array[int]
    args: tuple[Any, ...]
    result: dict[str, channels.Heartbeat | None]


class Tickler:
    """The petting loop. `wd` is None for device = "none" (gate evaluated, nothing petted)."""

    sd_ready = False

    def __init__(self, cfg: Config, wd: Watchdog | None, started: float) -> None:
        self.cfg = cfg
        self.wdc = cfg.watchdog
        self.wd = wd
        self.started = started
        self.state_dir = cfg.chain.state_dir
        self.persist_dir = cfg.chain.persist_dir
        self.boot_id = bootrecord.current_boot_id()
        self.boot_entry: dict[str, Any] | None = None
        self.lasted_due = True  # note_lasted: this boot has not yet been said to last
        self.device = wd.path if wd is not None else "none"
        self.timeout: int | None = None
        self.pretimeout: int | None = None
        self.pets = 0
        self.last_pet: float | None = None
        self.next_pet = 0.0
        self.gate = health.GateResult(True, ())
        self.progress = health.ProgressWatch()
        self.failing = False
        self.stop_requested = False
        self.init = channels.init_from_env()
        self.orphaned: str | None = None  # why init is gone, once it is
        self.sel: selectors.BaseSelector | None = None  # the loop's, while it runs
        self.watched: dict[str, tuple[int, int]] = {}  # layer -> (pid, pidfd or -1)
        self.dead: set[int] = set()
        self.period = min(self.wdc.pet_interval, cfg.chain.heartbeat_interval)
        self.tick_offset = min(TICK_AFTER, self.period / 4)
        margin = max(0.0, self.wdc.timeout - self.wdc.pet_interval)
        self.read_deadline = max(0.01, min(READ_DEADLINE_MAX, margin / 4))
        self.reader = Reader(self.state_dir, health.GATED_LAYERS + (
            ("cluster",) if cfg.cluster else ()), self.period, self.tick_offset)
        self.seen_round = 0  # the reader's rounds the gate has seen
        # Ticks run in the reader's thread (on_round) and, when a round is late, in the
        # loop's: one at a time, and everything a tick touches is read under this lock
        self.lock = threading.Lock()
        self.next_tick = 0.0  # when the next tick is due (set by run)
        self.failure: BaseException | None = None  # raised by a tick in the reader's thread
        self.waiting_since: float | None = None  # a due tick found its round not begun
        self.last_hbs: dict[str, channels.Heartbeat | None] = {}
        self.missing: set[str] = set()  # layers whose file the last round did not find
        self.restarter_extra: dict[str, Any] = {}
        self.records = RecordWriter()
        self.recorded_critical: set[str] = set()
        self.disarmed: str | None = None  # why the boot-loop action disarmed the device
        # pet timing: when the next pet is due (None: no schedule yet, or the gate failed),
        # the last interval, the worst lateness this boot and how many pets were late
        self.pet_due: float | None = None
        self.pet_interval_last: float | None = None
        self.pet_late_worst = 0.0
        self.pet_late_warnings = 0
        restarts = os.environ.get(channels.ENV_LAYER_RESTARTS, "0")
        self.restarts = int(restarts) if restarts.isdigit() else 0
        self.carry_pet_timing()
        # made by beat(), again until it can be: a state_dir where hb/ cannot be made
        # (read-only, full) must not end a tickler that has armed the device (init's
        # restarts of it would pet the device for ever); the gate fails on it instead
        self.hb: channels.HeartbeatWriter | None = None
        self.hb_error = ""
        # the compiled ticks (_arm): the run under way (None: none, or taken over), how
        # many ticks runs made, and why they are off for good (an error of the run)
        self.compiled: CompiledRun | None = None
        self.compiled_ticks = 0
        self.compiled_off: str | None = None

    def carry_pet_timing(self) -> None:
        """A tickler restarted within a boot goes on with the worst pet lateness of the
        previous one (read from its heartbeat, with a deadline)."""
        ok, old = bounded(lambda: channels.read_heartbeat(self.state_dir, "tickler"),
                          self.read_deadline, "read-tickler")
        if ok and isinstance(old, channels.Heartbeat) and self.boot_id and \
                old.extra.get("boot_id") == self.boot_id:
            worst, n = old.extra.get("pet_late_worst"), old.extra.get("pet_late_warnings")
            if isinstance(worst, (int, float)) and isinstance(n, int):
                self.pet_late_worst, self.pet_late_warnings = float(worst), n

    @property
    def late_warn(self) -> float:
        """A pet later than this (half the margin timeout - pet_interval) is warned about."""
        timeout = self.timeout if self.timeout is not None else self.wdc.timeout
        return max(0.0, timeout - self.wdc.pet_interval) / 2

    # -- setup ------------------------------------------------------------------------

    def configure_device(self) -> None:
        """Set timeout and pretimeout and check what the driver applied. Raises WatchdogError."""
        if self.wd is None:
            return
        want = self.wdc.timeout
        got = self.wd.set_timeout(want)
        self.timeout = got
        if got != want:
            log(f"{self.device}: asked for timeout {want} s, driver applied {got} s")
        if got <= self.wdc.pet_interval:
            log(f"{self.device}: warning: timeout {got} s is not longer than pet_interval "
                f"{self.wdc.pet_interval:g} s; the machine will reset")
        if self.wdc.pretimeout > 0:
            try:
                pre = self.wd.set_pretimeout(self.wdc.pretimeout)
            except WatchdogError as e:
                # A driver without one (EOPNOTSUPP), or a timeout rounded below it
                # (EINVAL). Only a warning is lost; exiting would not do: init's restarts
                # of the tickler, each opening the device, would pet it for ever.
                log(f"{self.device}: warning: cannot set pretimeout "
                    f"{self.wdc.pretimeout} s ({e}); running without one")
                pre = 0
            self.pretimeout = pre
            if pre and pre != self.wdc.pretimeout:
                log(f"{self.device}: asked for pretimeout {self.wdc.pretimeout} s, driver "
                    f"applied {pre} s")
        self.last_pet = time.monotonic()  # SETTIMEOUT pets
        log(f"{self.device}: armed, timeout {got} s"
            + (f", pretimeout {self.pretimeout} s" if self.pretimeout else "")
            + f", petting every {self.wdc.pet_interval:g} s while the gate passes")

    def record_last_boot(self) -> None:
        """Write last_boot.json once per boot: the boot status and the last gate failure.
        The files are read and written by the writer thread, in order before any record
        of this boot's gate: the device is armed, and a hung or slow persist_dir (an fsync
        in a disk's error recovery) must not keep the loop from its first pet."""
        if self.wd is None:
            return
        try:
            bootstatus = self.wd.get_bootstatus()
        except WatchdogError as e:
            log(f"cannot read boot status: {e}")
            return
        path = os.path.join(self.persist_dir, LAST_BOOT)
        # (a restarted tickler's begin_boot finds the boot status there and writes nothing)
        self.records.submit(bootrecord.RECORD, lambda: self.begin_boot(bootstatus))
        self.records.submit(path, lambda: self.write_last_boot(path, bootstatus))

    def write_last_boot(self, path: str, bootstatus: int) -> None:
        """record_last_boot's reads and writes, in the writer thread. A file that is no
        record (not JSON, nested too deeply) reads as none. gate.json is read without
        waiting: a FIFO there is none (waited on, it held this thread and every record
        behind it for good). last_boot.json is opened as any file: a persist_dir that
        hangs holds this thread, and the loop says so (RecordWriter.slow; the tests make
        such a hang with a FIFO there)."""
        try:
            old = channels.read_json(path)
        except (ValueError, OSError):
            old = None
        if isinstance(old, dict) and self.boot_id and old.get("boot_id") == self.boot_id:
            return  # a restarted tickler: this boot is already recorded
        try:
            gate = channels.read_json(os.path.join(self.persist_dir, channels.GATE_RECORD),
                                      regular=True)
        except (ValueError, OSError):
            gate = None
        if isinstance(gate, dict) and self.boot_id and gate.get("boot_id") == self.boot_id:
            gate = None  # from this boot (an earlier tickler): not about the previous one
        cause = boot_cause(bootstatus)
        rec = {
            "boot_id": self.boot_id, "wall": time.time(), "device": self.device,
            "bootstatus": bootstatus, "flags": flag_names(bootstatus), "cause": cause,
            "last_gate_failure": gate if isinstance(gate, dict) else None,
        }
        try:
            channels.write_json(path, rec, durable=True, make_dir=True)
        except OSError as e:
            log(f"cannot write {path}: {e}")
        msg = f"previous boot ended by: {cause} (boot status 0x{bootstatus:x})"
        if bootstatus & WDIOF_CARDRESET and isinstance(gate, dict):
            reasons = gate.get("reasons", [])  # a list, unless the file was damaged
            msg += "; gate had failed: " + "; ".join(
                map(str, reasons if isinstance(reasons, list) else [reasons]))
        log(msg)

    def begin_boot(self, bootstatus: int | None = None) -> None:
        """Add the device's boot status to this boot's entry in the boot record."""
        self.boot_entry = begin_boot_record(self.cfg, self.boot_id, bootstatus, self.device)

    def disarm_for_boot_loop(self) -> None:
        """`boot_loop.action = "disarm"` in a boot-loop boot: magic close, so the machine
        stays up for an operator; the gate is still evaluated and published."""
        entry = self.boot_entry if isinstance(self.boot_entry, dict) else {}
        resc = entry.get("rescue")  # (a field of the wrong type must not end the tickler)
        if self.wd is None or not isinstance(resc, dict) or \
                resc.get("action") != "disarm" or entry.get("cleared"):
            return
        why = f"boot loop: boots {resc.get('boots')} ended {resc.get('reasons')}"
        try:
            closed = not (self.wd.nowayout or self.wdc.nowayout) and self.wd.magic_close()
        except WatchdogError as e:
            log(f"{why}; cannot disarm the watchdog ({e}); petting as usual")
            return
        if not closed:
            log(f"{why}; the watchdog is nowayout and cannot be disarmed; petting as usual")
            return
        self.disarmed = why
        self.wd = None
        log(f"{self.device}: {why}; watchdog DISARMED (boot_loop.action = \"disarm\") so "
            "the machine stays up for an operator")

    # -- one tick ----------------------------------------------------------------------

    def observe(self) -> tuple[dict[str, channels.Heartbeat | None], dict[str, bool],
                               list[str]]:
        """The gated layers' heartbeats, whether the processes that wrote them live, and
        a reason when the heartbeat reads did not answer within `read_deadline` (then the
        last heartbeats read stand in for them)."""
        r = self.reader
        late = []
        if r.answered != self.seen_round:
            self.seen_round = r.answered
            # A heartbeat file that went missing (its directory removed) or unreadable
            # after one was read: the last one read stands, so the layer is judged by its
            # age as if it had stopped beating (stale after heartbeat_timeout). Its writer
            # makes the file again at its next beat; the gate fails only if it does not.
            self.missing = set()
            for layer, hb in r.result.items():
                if hb is not None or self.last_hbs.get(layer) is None:
                    self.last_hbs[layer] = hb
                else:
                    self.missing.add(layer)
        else:
            since = r.busy_since
            waited = f" (waiting {time.monotonic() - since:.1f} s)" if since is not None else ""
            late.append(f"{r.layer} heartbeat read did not answer within "
                        f"{self.read_deadline:g} s{waited}: "
                        f"{channels.heartbeat_path(self.state_dir, r.layer)}")
        hbs = {layer: self.last_hbs.get(layer) for layer in r.layers}
        alive = {layer: hb is not None and self.alive(layer, hb.pid)
                 for layer, hb in hbs.items()}
        return hbs, alive, late

    def alive(self, layer: str, pid: int) -> bool:
        """Whether `pid` (the writer of `layer`'s heartbeat) still lives.

        Each layer's process is watched through a pidfd in the loop's selector: its death
        arrives as an event (on_pidfd), so a tick asks no system call. Without pidfds
        (kernel < 5.3) this reads /proc/PID/stat instead."""
        if self.sel is None:  # outside the loop (a single tick): look once
            return channels.pid_alive(pid)
        watched = self.watched.get(layer)
        if watched is not None and watched[0] == pid:
            return pid not in self.dead
        if watched is not None:
            self.unwatch(layer)
        try:
            fd = os.pidfd_open(pid)
        except OSError as e:
            if e.errno == errno.ESRCH:
                self.watched[layer] = (pid, -1)
                self.dead.add(pid)
                return False
            return channels.pid_alive(pid)  # no pidfd here: ask /proc every tick
        self.watched[layer] = (pid, fd)
        self.sel.register(fd, selectors.EVENT_READ, ("pidfd", pid))
        return True

    def on_pidfd(self, pid: int) -> None:
        """A watched layer process exited (a zombie counts as dead, as in pid_alive)."""
        self.dead.add(pid)
        for layer, (p, _fd) in list(self.watched.items()):
            if p == pid:
                self.unwatch(layer, keep_dead=True)

    def unwatch(self, layer: str, keep_dead: bool = False) -> None:
        pid, fd = self.watched.pop(layer)
        if fd >= 0:
            if self.sel is not None:
                self.sel.unregister(fd)
            os.close(fd)
        if keep_dead:
            self.watched[layer] = (pid, -1)  # remembered as dead until a new pid appears
        else:
            self.dead.discard(pid)

    def tick(self, now: float) -> None:
        """Evaluate the gate; pet when it passes and a pet is due; publish the heartbeat."""
        if (why := channels.init_gone(self.init)) is not None:
            self.orphaned, self.stop_requested = why, True  # never pet for a chain with no init
            return
        hbs, alive, late = self.observe()
        self.progress.observe("restarter", hbs.get("restarter"), now)
        self.gate = health.evaluate(now, hbs, alive, self.wdc, self.started,
                                    cluster=self.cfg.cluster is not None,
                                    progress_at=self.progress.at)
        if self.missing and not self.gate.ok:
            self.gate = health.GateResult(False, tuple(
                r + f" (its file {channels.heartbeat_path(self.state_dir, r.split()[0])} is "
                "missing)" if r.split()[0] in self.missing and " heartbeat " in r else r
                for r in self.gate.reasons))
        if late:
            self.gate = health.GateResult(False, self.gate.reasons + tuple(late))
        self.restarter_extra = (hbs.get("restarter") or channels.Heartbeat(
            "restarter", 0, 0, 0, 0, 0, {})).extra
        if self.gate.ok:
            if self.failing:
                log("gate passes again; petting resumes")
                self.failing = False
                self.recorded_critical = set()
                self.records.submit(bootrecord.RECORD, lambda: bootrecord.set_reason(
                    self.persist_dir, self.boot_id, bootrecord.UNKNOWN, [], time.time(),
                    log=log))
            # Under systemd (Type=notify, WatchdogSec=), tell it the chain is up and
            # healthy: systemd's watchdog then means what the hardware one means.
            if not self.sd_ready:
                self.sd_ready = sdnotify.notify("READY=1\nSTATUS=chain healthy", wait=False)
            else:
                sdnotify.notify("WATCHDOG=1", wait=False)  # a full queue must not stop pets
            if self.wd is not None and now + PET_EARLY >= self.next_pet:
                self.pet(now)
        else:
            self.pet_due = None  # no pet is owed while the gate fails
            if not self.failing:
                self.failing = True
                self.on_gate_failure()
            elif self.failed_critical() - self.recorded_critical:
                self.record_end()  # more critical services failing: blame them too
        if self.lasted_due:
            self.note_lasted(now)
        if (slow := self.records.slow(now)) is not None:
            log(slow)
        self.beat()

    def note_lasted(self, now: float) -> None:
        """Once this boot has run the boot-loop window (by CLOCK_MONOTONIC, from its
        entry's start), say so in its entry: whatever ends it, it is then no part of a
        loop, even on a box whose wall clock starts each boot at the same time."""
        entry = self.boot_entry
        if entry is None:
            return  # not begun yet (the records thread): look again at the next tick
        window = float(self.cfg.chain.boot_loop.window)
        started = entry.get("started_mono")
        if not isinstance(started, (int, float)) or isinstance(started, bool) or \
                started > now or entry.get("lasted") is not None:
            self.lasted_due = False  # an entry of older code, or said already
            return
        if now - started >= window:
            self.lasted_due = False
            self.records.submit(bootrecord.RECORD, lambda: bootrecord.mark_lasted(
                self.persist_dir, self.boot_id, window, log=log))

    def pet(self, now: float) -> None:
        """Keepalive, and the timing: the interval since the last pet, and how late this
        one came against its schedule (a warning beyond half the margin)."""
        assert self.wd is not None
        self.wd.keepalive()
        t = time.monotonic()
        self.pets += 1
        if self.pet_due is not None and self.last_pet is not None:
            self.pet_interval_last = t - self.last_pet
            self.pet_lateness(max(0.0, t - self.pet_due))
        self.last_pet = t
        # The next one by plan, not by when this one went out: on the ticks' grid
        # (channels.next_tick), so pets come with ticks when pet_interval is a multiple of
        # the tick (one wake-up, not two). The first interval may be shorter (a pet
        # earlier than needed); a pet a whole interval late is followed by the next
        # point of the grid; one that went out up to PET_EARLY before its point is
        # followed by the point after that.
        self.pet_due = self.next_pet = channels.next_tick(now + PET_EARLY,
                                                          self.wdc.pet_interval,
                                                          self.tick_offset)

    def pet_lateness(self, lateness: float) -> None:
        """A pet `lateness` s after it was due: the worst, and a warning past half the
        margin (pet_interval_last is this pet's interval)."""
        self.pet_late_worst = max(self.pet_late_worst, lateness)
        if lateness > self.late_warn:
            self.pet_late_warnings += 1
            interval = self.pet_interval_last or 0.0
            log(f"warning: pet {lateness:.3f} s late (interval {interval:.3f}"
                f" s, pet_interval {self.wdc.pet_interval:g} s); warning above "
                f"{self.late_warn:g} s, half the margin before the watchdog fires")

    def failed_critical(self) -> set[str]:
        """The critical services the restarter reports not ok (from its last heartbeat),
        and its machine checks that failed for good ("check:NAME"): what the boot record
        blames, and what a rescue boot after a loop of them holds."""
        out: set[str] = set()
        for key, prefix in (("critical", ""), ("checks", bootrecord.CHECK_PREFIX)):
            got = self.restarter_extra.get(key)
            if isinstance(got, dict):
                out |= {prefix + str(n) for n, i in got.items()
                        if not (isinstance(i, dict) and i.get("ok"))}
        return out

    def record_end(self) -> None:
        """The boot record's reason while the gate fails: this is how the boot will end
        unless the gate passes again (then it goes back to "unknown")."""
        crit = self.failed_critical()
        self.recorded_critical |= crit
        req = self.restarter_extra.get("reboot_requested")
        reason = bootrecord.REBOOT_REQUESTED if req else bootrecord.GATE_FAILURE
        detail = list(self.gate.reasons)
        self.records.submit(bootrecord.RECORD, lambda: bootrecord.set_reason(
            self.persist_dir, self.boot_id, reason, detail, time.time(), sorted(crit),
            log=log))

    def on_gate_failure(self) -> None:
        """First failure of a streak: log the reasons and record them durably."""
        what = "not petting" if self.wd is not None else "no device to stop petting"
        log(f"health gate FAILED, {what}: " + "; ".join(self.gate.reasons))
        self.record_failure()

    def record_failure(self) -> None:
        """The boot record's reason, then gate.json (durable), through the writer thread.
        The reason goes first: it is what the next boot's boot-loop count and rescue
        read, and on slow storage the reset may come before the second write is done."""
        rec = {"wall": time.time(), "mono": time.monotonic(),
               "reasons": list(self.gate.reasons), "device": self.device,
               "boot_id": self.boot_id}
        path = os.path.join(self.persist_dir, channels.GATE_RECORD)
        self.record_end()
        self.records.submit(path, lambda: channels.write_json(path, rec, durable=True,
                                                              make_dir=True))

    def beat(self) -> None:
        """Publish hb/tickler.json."""
        timeleft = None
        if self.wd is not None:
            try:
                timeleft = self.wd.get_timeleft()
            except WatchdogError:
                timeleft = None
        extra: dict[str, Any] = {
            "device": self.device, "armed": self.wd is not None and not self.wd.closed,
            "petting": self.wd is not None and self.gate.ok,
            "gate": self.gate.to_json(), "timeout": self.timeout,
            "boot_id": self.boot_id, "pet_late_worst": round(self.pet_late_worst, 4),
            "pet_late_warnings": self.pet_late_warnings, "pet_late_warn": self.late_warn,
            "read_deadline": self.read_deadline, "disarmed": self.disarmed,
        }
        if self.hb is None:
            try:
                self.hb = channels.HeartbeatWriter(self.state_dir, "tickler", self.restarts)
            except OSError as e:
                if str(e) != self.hb_error:  # once, not every tick
                    self.hb_error = str(e)
                    log(f"cannot write the heartbeat in {self.state_dir}: {e}")
                return
        self.hb.beat(extra, {"compiled_ticks": self.compiled_ticks,
                             "last_pet_mono": self.last_pet, "pets": self.pets,
                             "timeleft": timeleft,
                             "pet_interval_last": self.pet_interval_last})

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> int:
        """Tick until SIGTERM/SIGINT; returns the exit status. WatchdogError propagates
        (from a tick in either thread).

        An idle tick wakes the reader's thread only: once its round has answered it runs
        the tick (on_round). This thread sleeps, without a timeout, until a stop signal,
        a layer's death (its pidfd), or SIGALRM from the interval timer that every tick
        sets to when this thread must look (_next_wake): when a round is `read_deadline`
        late (the tick then fails the gate, as a read that does not answer must), a
        round from an earlier tick still hangs, or a pet is due that no tick will make."""
        sel = self.sel = selectors.DefaultSelector()
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        sel.register(wake_r, selectors.EVENT_READ, ("wake", 0))
        sel.register(self.reader.fd, selectors.EVENT_READ, ("read", self.reader.fd))
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGALRM, _on_alarm)
        self.stop_requested = self.stop_requested or STOP_EARLY[0]  # (after the swap)
        self.next_tick = time.monotonic()
        self.reader.on_round = self.on_round
        try:
            while not self.stop_requested:
                with self.lock:
                    self._absorb()  # a compiled run's ticks: this thread's from here
                    if self.failure is not None:
                        raise self.failure
                    now = time.monotonic()
                    due = self.next_tick
                    until = self.tick_wait(now, due) if now >= due else None
                    if now >= due and until is None:
                        self.tick_now(now)
                    elif self.wd is not None and self.gate.ok and \
                            now + PET_EARLY >= self.next_pet:
                        self.pet(now)  # between ticks, or a tick's whose round is late:
                        # on the last tick's verdict (<= a tick old)
                    self.alarm(self._next_wake(time.monotonic()))
                for key, _ in sel.select():
                    if key.data[0] == "pidfd":
                        with self.lock:
                            self._absorb()
                            self.on_pidfd(key.data[1])
                        continue
                    try:
                        os.read(key.data[1] if key.data[0] == "read" else wake_r, 256)
                    except BlockingIOError:
                        pass
        finally:
            with self.lock:
                self._absorb()  # (no compiled tick acts after this)
                self.reader.on_round = None
                signal.setitimer(signal.ITIMER_REAL, 0)
        return self.shutdown()

    def on_round(self) -> None:
        """In the reader's thread, after a round answered: the tick it was read for, when
        that is due; anything else is the loop's (woken through the pipe). An exception
        is handed to the loop, which raises it."""
        try:
            with self.lock:
                now = time.monotonic()
                if self.reader.on_round is None or self.stop_requested or \
                        self.failure is not None or now < self.next_tick or \
                        self.tick_wait(now, self.next_tick) is not None:
                    # (on_round None: the loop has ended, and must be the last to act)
                    self.reader.poke()
                    return
                self.tick_now(now)
                self.alarm(self._next_wake(time.monotonic()))
                self._arm()
        except BaseException as e:  # noqa: BLE001 - the loop raises it
            self.failure = e
            self.reader.poke()

    # -- the compiled tick (docs/tickler.md, "The compiled tick") ---------------------

    def _arm(self) -> None:
        """After a tick in the reader's thread (under the lock): when the chain is as
        steady as a compiled tick can judge it, hand the reader the next ticks in
        compiled code (_tick.run). Not with `[cluster]`, under systemd's notify socket,
        with a record being written, a pet due between ticks, or
        anything the gate found wrong; and not past the boot-loop window's end while this
        boot has not been said to have lasted it (Python's tick says so)."""
        r = self.reader
        if _tick is None or self.compiled_off is not None or r.on_round is None or \
                self.stop_requested or self.failure is not None or \
                self.orphaned is not None or not self.gate.ok or self.failing or \
                self.missing or self.cfg.cluster is not None or \
                r.answered != self.seen_round or os.environ.get("NOTIFY_SOCKET"):
            return
        device: tuple[Any, ...] = (-1, 0, 0, None, None)
        if self.wd is not None:
            transport = self.wd.transport
            if self.wd.closed or self.next_pet + PET_EARLY < r.due:
                return
            device = (transport.fd, WDIOC_KEEPALIVE, WDIOC_GETTIMELEFT, None, None) \
                if isinstance(transport, FdTransport) else \
                (-1, 0, 0, self.wd.keepalive, self.wd.get_timeleft)
        records = self.records
        if records.busy is not None or records.submitted != records.done:
            return
        until = r.due + COMPILED_TICKS * self.period
        if self.lasted_due:
            started = (self.boot_entry or {}).get("started_mono")
            if not isinstance(started, (int, float)) or isinstance(started, bool):
                return
            until = min(until, started + float(self.cfg.chain.boot_loop.window))
        init_fd = channels.init_pidfd(self.init) if self.init is not None else None
        made = self.hb.pieces(COMPILED_KEYS, {}) if self.hb is not None else None
        if init_fd is None or made is None:
            return
        layers = []
        for layer, reader in zip(r.layers, r.readers, strict=True):
            hb, watched = r.result.get(layer), self.watched.get(layer)
            if hb is None or watched is None or watched[0] != hb.pid or watched[1] < 0 or \
                    reader.fd is None:
                return
            template = channels.record_template(reader.text, COMPILED_NUMBERS.get(layer))
            if template is None:
                return
            layers.append((os.fsencode(reader.path), reader.fd, watched[1], *reader.ident,
                           reader.cap, *template))
        hb_fd, pieces, size = made
        ns = _ns
        state = array.array("q", bytes(8 * len(_tick.STATE)))
        for name, value in (
                ("ANSWERED", r.answered), ("BUSY_SINCE", -1), ("DUE", ns(r.due)),
                ("UNTIL", ns(until)), ("PERIOD", ns(self.period)),
                ("OFFSET", ns(self.tick_offset)), ("READ_DEADLINE", ns(self.read_deadline)),
                ("HB_TIMEOUT", ns(self.wdc.heartbeat_timeout)),
                ("MAX_LAG", ns(self.wdc.max_loop_lag)),
                ("PET_INTERVAL", ns(self.wdc.pet_interval)), ("PET_EARLY", ns(PET_EARLY)),
                ("PET_GRACE", ns(PET_GRACE)), ("ALARM_MIN", ns(ALARM_MIN)),
                ("NEXT_PET", ns(self.next_pet)), ("PET_DUE", ns(self.pet_due)),
                ("LAST_PET", ns(self.last_pet)),
                ("PET_INTERVAL_LAST", ns(self.pet_interval_last)), ("PETS", self.pets),
                ("WORST", ns(self.pet_late_worst)), ("LATE_WARN", ns(self.late_warn)),
                ("LATENESS", -1), ("HB_SEQ", self.hb.seq if self.hb is not None else 0),
                ("TICKS", self.compiled_ticks)):
            state[STATE[name]] = value
        run = self.compiled = CompiledRun(state, (
            state, tuple(layers), device, init_fd, hb_fd, pieces, size, self.lock,
            zlib.crc32), dict(r.result))
        r.compiled = functools.partial(self._run_compiled, run)

    def _run_compiled(self, run: CompiledRun) -> None:
        """In the reader's thread: the compiled ticks, until they hand back. After a
        tick (TICKED: a pet to record, a beat for Python to write), the beat and the
        interval timer as a Python tick leaves them; else the round due is the reader's."""
        assert _tick is not None
        try:
            got = _tick.run(*run.args)
        except Exception as e:  # noqa: BLE001 - a defect here must not stop the pets
            with self.lock:
                self._absorb()
                self.compiled_off = f"{type(e).__name__}: {e}"
            log(f"compiled ticks off for this run of the tickler: {self.compiled_off}")
            return
        with self.lock:
            if self.compiled is not run:
                return  # the loop took the state over (and may have ticked since)
            self._absorb()
            if got == _tick.TICKED and self.reader.on_round is not None and \
                    not self.stop_requested:
                self.beat()
                self.alarm(self._next_wake(time.monotonic()))

    def _absorb(self) -> None:
        """Take over what a compiled run did (under the lock): from here it acts no more,
        and the tickler's state is as if its ticks had been Python's."""
        run = self.compiled
        if run is None:
            return
        self.compiled = None
        st = run.state
        st[STATE["CANCEL"]] = 1
        r = self.reader
        r.due = st[STATE["DUE"]] / 1e9
        busy = st[STATE["BUSY_SINCE"]]
        r.busy_since = None if busy < 0 else busy / 1e9
        if busy >= 0:
            r.layer = r.layers[st[STATE["LAYER"]]]
        ticks = st[STATE["TICKS"]] - self.compiled_ticks
        if not ticks:
            return
        self.compiled_ticks += ticks
        self.next_tick = r.due
        self.waiting_since = None
        r.answered = self.seen_round = st[STATE["ANSWERED"]]
        result: dict[str, channels.Heartbeat | None] = {}
        for i, (layer, hb) in enumerate(run.result.items()):
            if hb is None:
                continue
            at = STATE["MONO0"] + 3 * i
            extra = hb.extra
            if st[at + 2] >= 0:
                extra = dict(extra, lag=st[at + 2] / 1e9)
            result[layer] = hb.moved_on(st[at] / 1e9, st[at + 1], extra)
        r.result = result
        self.last_hbs.update(result)
        self.restarter_extra = (result.get("restarter") or channels.Heartbeat(
            "restarter", 0, 0, 0, 0, 0, {})).extra
        self.pets = st[STATE["PETS"]]
        self.last_pet = _seconds(st[STATE["LAST_PET"]])
        self.pet_due = _seconds(st[STATE["PET_DUE"]])
        self.next_pet = st[STATE["NEXT_PET"]] / 1e9
        self.pet_interval_last = _seconds(st[STATE["PET_INTERVAL_LAST"]])
        if (late := st[STATE["LATENESS"]]) >= 0:
            self.pet_lateness(late / 1e9)
        if self.hb is not None:
            self.hb.seq = st[STATE["HB_SEQ"]]

    def tick_now(self, now: float) -> None:
        """A tick, and the next one on the chain's shared grid, just after init and the
        restarter wrote their heartbeats on it (channels.next_tick): one wake-up of the
        machine. (Under the lock.)"""
        self.tick(now)
        self.waiting_since = None
        self.next_tick = channels.next_tick(now, self.period, self.tick_offset)

    def _next_wake(self, now: float) -> float:
        """When the loop must look next, the reader ticking on time (under the lock): at
        the tick when no round will tick it (one answered already, or one of an earlier
        tick still hangs), else when its round is `read_deadline` late; for a pet due
        between ticks at the pet, and for one with a tick PET_GRACE after it, so a late
        round does not keep it waiting."""
        r, due = self.reader, self.next_tick
        if now >= due:
            wake = self.tick_wait(now, due) or now
        elif r.answered != self.seen_round or r.stuck(due - self.period / 2):
            wake = due
        else:
            wake = due + self.read_deadline
        if self.wd is not None and self.gate.ok:
            if self.next_pet + PET_EARLY < due:
                wake = min(wake, self.next_pet)
            else:
                wake = min(wake, self.next_pet + PET_GRACE)
        return wake

    @staticmethod
    def alarm(at: float) -> None:
        """SIGALRM at `at` (CLOCK_MONOTONIC), replacing the one set before: what wakes
        the loop when nothing else does."""
        signal.setitimer(signal.ITIMER_REAL, max(at - time.monotonic(), ALARM_MIN))

    def tick_wait(self, now: float, due: float) -> float | None:
        """For a tick due since `due`: None to tick now (its round of heartbeat reads has
        answered, or a round of an earlier tick still hangs), else when to tick at the
        latest: `read_deadline` after its round began, or, while that round has not
        begun, after the loop first found the tick due (a tickler stopped as a whole,
        SIGSTOP or starved, is not taken for a hung read). The tick then fails the gate,
        as a read that does not answer must."""
        r = self.reader
        if r.answered != self.seen_round or r.stuck(due - self.period / 2):
            return None
        began = r.busy_since
        if began is None:
            if self.waiting_since is None:
                self.waiting_since = now
            began = self.waiting_since
        until = began + self.read_deadline
        return None if now >= until else until

    def _on_stop(self, sig: int, _frame: object) -> None:
        """SIGTERM/SIGINT handler: ask the loop to stop."""
        self.stop_requested = True

    def shutdown(self) -> int:
        """Orderly stop: magic close (disarm) unless nowayout, and "shutdown" in the boot
        record (a layer that starts again in this boot takes it back). Returns 0.
        Orphaned (init gone): a plain close, so the device stays armed for the next chain
        to take over, and the boot record is left as it is (this is no shutdown)."""
        if self.orphaned:
            self.records.close(RECORD_DEADLINE)  # what is queued (a gate failure) is kept
            if self.wd is None:
                log(f"{self.orphaned}: exiting (no device: nothing will reset this machine)")
                return 0
            try:
                self.wd.close()
            except WatchdogError:
                pass
            log(f"{self.orphaned}: exiting without the magic close: the watchdog stays "
                f"armed and resets the machine unless a new chain's tickler opens it within "
                f"its timeout ({self.timeout} s)")
            return 0
        self.record_shutdown()
        # The device before the wait for the records: init SIGKILLs the tickler
        # min(stop_timeout, 5) s after its SIGTERM, and a SIGKILL before the magic close
        # would leave the watchdog armed, to reset a machine whose chain was stopped.
        if self.wd is not None:
            stop_device(self.wd, self.wdc.nowayout)
        if not self.records.close(RECORD_DEADLINE):
            log(f"the records in {self.persist_dir} did not finish writing within "
                f"{RECORD_DEADLINE:g} s")
        if self.wd is None:
            log("stopping (no device)")
            return 0
        self.beat()
        return 0

    def record_shutdown(self) -> None:
        """The boot record's reason on an orderly stop (through the writer thread)."""
        self.records.submit(bootrecord.RECORD, lambda: bootrecord.set_reason(
            self.persist_dir, self.boot_id, bootrecord.SHUTDOWN,
            ["orderly stop (SIGTERM or SIGINT to the tickler)"], time.time(), log=log))


def stop_device(wd: Watchdog, nowayout_cfg: bool) -> None:
    """An orderly stop's close: the magic close (disarmed) unless nowayout; logged."""
    try:
        if wd.nowayout or nowayout_cfg:
            wd.close()
            log(f"{wd.path}: stopping; nowayout: the watchdog stays armed")
        elif wd.magic_close():
            log(f"{wd.path}: stopping; magic close: watchdog disarmed")
        else:
            log(f"{wd.path}: stopping; driver is nowayout: watchdog stays armed")
    except WatchdogError as e:
        log(f"{wd.path}: stopping; magic close failed, watchdog stays armed: {e}")


HOLD_POLL = 0.1  # a failed tickler looks for a stop signal this often


def fail_unpetted(cfg: Config, wd: Watchdog | None, tickler: Tickler | None,
                  exc: Exception, what: str = "internal error") -> int:
    """Any error after the open but the device's own (a thread that cannot start under
    a pids limit, a bug): one line, no more pets, and the tickler stays up until a stop
    signal, so the watchdog resets the machine. Exiting would not: init restarts the
    tickler and every restart pets the device (the open, SETTIMEOUT), so a tickler that
    fails for ever kept the machine from ever being reset. A stop signal still makes the
    orderly close (magic close unless nowayout); then it exits 1."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = "" if tb is None else \
        f" (at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno})"
    why = f"{type(exc).__name__}: {exc}{where}"
    if wd is None or wd.closed:  # nothing armed (device "none", disarmed): nothing to hold
        log(f"internal error: {why}; exiting (init will restart the tickler)")
        return EXIT_NOT_OPENED  # no armed device behind: init does not count it
    if tickler is not None and tickler.orphaned:  # init gone: never the magic close
        with contextlib.suppress(WatchdogError):
            wd.close()
        log(f"internal error: {why}; {tickler.orphaned}: exiting without the magic close")
        return 1
    stop = [STOP_EARLY[0] or (tickler is not None and tickler.stop_requested)]

    def on_stop(_sig: int, _frame: object) -> None:
        stop[0] = True
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop)
    within = "the driver's timeout" if isinstance(exc, TimeoutRefused) else \
        f"{cfg.watchdog.timeout} s"
    log(f"{what} after the watchdog was armed: {why}; not petting any more: the watchdog "
        f"resets this machine within {within} (a stop signal still disarms it)")
    if tickler is not None:  # why the machine was reset, through the writer thread
        try:
            tickler.gate = health.GateResult(False, (f"the tickler failed: {why}",))
            tickler.record_failure()
        except Exception:  # noqa: BLE001 - best effort: the reset comes all the same
            pass
    while not stop[0]:
        time.sleep(HOLD_POLL)
    if tickler is not None:
        with contextlib.suppress(Exception):
            tickler.record_shutdown()
    stop_device(wd, cfg.watchdog.nowayout)
    if tickler is not None:
        with contextlib.suppress(Exception):
            tickler.records.close(RECORD_DEADLINE)
    return 1


def begin_boot_record(cfg: Config, boot_id: str, bootstatus: int | None = None,
                      device: str | None = None) -> dict[str, Any]:
    """This boot's entry in the boot record: opened by the first layer to start in a
    boot, with the loop verdict of `[chain] boot_loop`. OSError propagates."""
    bl = cfg.chain.boot_loop
    return bootrecord.begin_boot(cfg.chain.persist_dir, boot_id, time.time(), bl.resets,
                                 bl.window, bl.action, bootstatus=bootstatus, device=device,
                                 log=log)


class Tables:
    """A configuration table as the tickler keeps it: the fields of the dataclass of
    hachain.config that `asdict` gave, as attributes (no code of hachain.config needed)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        if not isinstance(fields, dict):
            raise TypeError("a table")
        self.__dict__.update(fields)

    def __repr__(self) -> str:
        return f"Tables({self.__dict__!r})"


# The tables a tickler of this chain run parsed, for the next tickler of the same run:
# in state_dir, next to the running snapshot they came from.
TABLES_CACHE = "config/tickler.json"
TABLES_CACHE_VERSION = 1
_CACHE_CODE = ("config.py", "schema.py", "watchdog/tickler.py")  # in the hachain package


def _cache_key(path: str) -> dict[str, Any] | None:
    """What the cached tables must have been made from: this run's running snapshot of
    `path` (its chain id, file and SHA-256, as running.json declares them), the HACHAIN_*
    overrides, and the code that parsed them (size and mtime of its files: an upgrade
    of hachain parses again). None when this run has no running snapshot of `path`."""
    cid = os.environ.get(channels.ENV_CHAIN_ID, "")
    state = os.environ.get(channels.ENV_STATE_DIR, "")
    if not cid or not state:
        return None
    running_path = os.path.join(state, channels.RUNNING_CONFIG)
    try:
        running = channels.read_json(running_path, regular=True)
    except (OSError, ValueError) as e:
        why = e.strerror or str(e) if isinstance(e, OSError) else channels.json_problem(e)
        log(f"{running_path}: {why}: ignored, the configuration is read anew")
        return None
    if not isinstance(running, dict) or running.get("chain_id") != cid or \
            running.get("source") != os.path.abspath(path) or \
            not isinstance(running.get("sha256"), str):
        return None
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = []
    for rel in _CACHE_CODE:
        try:
            st = os.stat(os.path.join(pkg, rel))
        except OSError:
            return None
        code.append(f"{rel}:{st.st_size}:{st.st_mtime_ns}")
    return {"version": TABLES_CACHE_VERSION, "chain_id": cid, "source": running["source"],
            "sha256": running["sha256"], "code": code,
            "env": {k: os.environ.get(k) for k in sorted(channels.CONFIG_OVERRIDES)}}


def _read_cached(key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached tables for `key`, or None: none there, made from something else, or
    a file that is not a regular one owned by us and writable by nobody else (the tables
    choose the device and the gate's timing)."""
    cache = os.path.join(str(key["env"][channels.ENV_STATE_DIR]), TABLES_CACHE)
    try:  # O_NONBLOCK: a FIFO there is opened without waiting for a writer
        fd = os.open(cache, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022 or \
                st.st_mode & 0o170000 != 0o100000:
            log(f"{cache}: not a regular file of ours: ignored, the tables are parsed anew")
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            d = channels.loads(f.read(1 << 20))
    except OSError as e:
        log(f"{cache}: unreadable ({e}): ignored, the tables are parsed anew")
        return None
    except ValueError as e:  # (nested too deeply included)
        log(f"{cache}: {channels.json_problem(e)}: ignored, the tables are parsed anew")
        return None
    finally:
        os.close(fd)
    if not isinstance(d, dict) or d.get("key") != key or not isinstance(d.get("tables"), dict):
        return None
    return cast("dict[str, Any]", d["tables"])


def _write_cached(key: dict[str, Any], tables: dict[str, Any]) -> None:
    """Keep `tables` for the next tickler of this run (state_dir is a tmpfs)."""
    cache = os.path.join(str(key["env"][channels.ENV_STATE_DIR]), TABLES_CACHE)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    channels.write_json(cache, {"key": key, "tables": tables})


def _tables_config(d: dict[str, Any], path: str) -> Config:
    """The Config the tickler keeps, from the parser's reply (or the cached copy of it)."""
    try:
        if "errors" in d:
            raise ConfigError([str(x) for x in d["errors"]])
        chain = dict(d["chain"])
        chain["boot_loop"] = Tables(chain["boot_loop"])
        return cast("Config", Tables({
            "path": d["path"], "chain": Tables(chain),
            "watchdog": Tables(d["watchdog"]), "services": {},
            "cluster": Tables(d["cluster"]) if d.get("cluster") else None}))
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ConfigError([f"{path}: the configuration parser process failed"]) from None


def load_config(path: str, left: list[int] | None = None,
                cache: list[Callable[[], None]] | None = None) -> Config:
    """[chain] and [watchdog] of this chain run's running configuration snapshot
    (`snapshot.for_layer`: never the live file once the run has one), HACHAIN_* overrides
    applied; no services.

    A tickler restarted in the same run takes the tables the one before it parsed from
    the same snapshot (TABLES_CACHE, checked against running.json's SHA-256, the chain
    id, the overrides and the code): no parser process and no configuration code on the
    way to the open, which init's restart of a killed tickler must reach within the
    watchdog's timeout (66 of 146 ms here, bench/tickler_restart.py). With
    `cache`, the write of that copy is appended there for the caller to run (after the
    open), instead of being done here.

    The file is parsed in a short-lived child process. Parsing 1000 services leaves about
    3 MB in Python's allocator that the tickler, which locks its memory, would otherwise
    carry for its whole life; and only the child imports the configuration code (the
    schema, tomllib, dataclasses: about 4 MB more). The tickler keeps the tables as plain
    attribute holders (`Tables`) with the same names. Raises ConfigError as load() does.

    With no running snapshot the child accepts the file itself and writes the
    last-known-good copy into persist_dir (an fsync) *after* it handed the tables back: a
    persist_dir that hangs must not keep the device from being opened. With `left`, such
    a child is not waited for: its pid goes into `left`, for the caller to reap.
    """
    key = _cache_key(path)
    if key is not None:
        cached = _read_cached(key)
        if cached is not None:
            try:
                return _tables_config(cached, path)
            except ConfigError:
                pass  # a copy that does not make tables: parse as if it were not there
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the parser: hand back two small tables, then vanish
        code = 0
        try:
            os.close(r)
            try:
                from dataclasses import asdict

                from hachain import snapshot
                got = snapshot.running_of_run(path)  # (snapshot.for_layer, in two steps)
                cfg, snap = got or snapshot.accept(
                    path, chain_id=os.environ.get(channels.ENV_CHAIN_ID, ""), last_good=False)
                out: dict[str, Any] = {"path": cfg.path, "chain": asdict(cfg.chain),
                                       "watchdog": asdict(cfg.watchdog),
                                       "cluster": cfg.cluster and asdict(cfg.cluster),
                                       "last_good_next": got is None,
                                       "sha256": snap.sha256}
            except ConfigError as e:
                out = {"errors": list(e.errors)}
            with os.fdopen(w, "wb") as f:
                f.write(json.dumps(out).encode())
            if out.get("last_good_next"):
                snapshot.save_last_good(cfg, snap)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        raw = f.read()
    try:
        d = json.loads(raw)
    except ValueError:
        d = None
    if left is not None and isinstance(d, dict) and d.get("last_good_next") is True:
        left.append(pid)  # writing the last-known-good copy: not waited for here
    else:
        os.waitpid(pid, 0)
    if not isinstance(d, dict):
        raise ConfigError([f"{path}: the configuration parser process failed"])
    cfg = _tables_config(d, path)
    # kept only when the tables came from this run's running snapshot, the one the key
    # names (a file the parser accepted itself became that snapshot, unless another
    # layer's accept came between: then the hashes differ and nothing is kept)
    key = _cache_key(path) if key is None else key
    if key is not None and d.get("sha256") == key["sha256"]:
        tables = {k: d[k] for k in ("path", "chain", "watchdog", "cluster")}
        if cache is not None:
            cache.append(functools.partial(_write_cached, key, tables))
        else:
            _write_cached(key, tables)
    return cfg


def _reap(pid: int) -> None:
    """Wait for the configuration parser (in a thread of its own, after the open)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = channels.layer_parser(PROG, "Pet the watchdog while the hachain health gate passes.")
    p.add_argument("-c", "--config",
                   default=os.environ.get(channels.ENV_CONFIG) or DEFAULT_PATH,
                   help="configuration file (default: $HACHAIN_CONFIG or %(default)s)")
    p.add_argument("--no-realtime", action="store_true",
                   help="do not ask for SCHED_FIFO and mlockall")
    return p


OPENING = [False]  # set just before the open: from then on an error may have petted it


def main(argv: list[str] | None = None) -> int:
    """Entry point. 0 after an orderly stop, 1 on a device error after the open, 2 on a
    bad config, EXIT_NOT_OPENED (3) when the device could not be opened, nor tried: an
    error before the open (a thread that cannot start, a bug) touched no device, and
    init does not count it toward giving up on the tickler (docs/init.md)."""
    try:
        return _main(argv)
    except Exception as e:  # noqa: BLE001 - only before the open; after it, raised on
        if OPENING[0]:
            raise
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = "" if tb is None else \
            f" (at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno})"
        log(f"error before the watchdog was opened: {type(e).__name__}: {e}{where}; "
            "exiting (init will retry)")
        return EXIT_NOT_OPENED


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    # A stop signal from here on is kept for the loop: one that killed the tickler between
    # the open and the loop would leave the device armed (no magic close) and reset a
    # machine whose chain was stopped.
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop_early)
    parser_left: list[int] = []  # the parser, when it goes on to write into persist_dir
    cache_writes: list[Callable[[], None]] = []  # the parsed tables, for the next tickler
    try:
        cfg = load_config(args.config, parser_left, cache_writes)
    except ConfigError as e:
        for line in e.errors:
            log(line)
        return 2
    os.environ[channels.ENV_LOG_FORMAT] = cfg.chain.log_format
    if not _LOG:  # after load_config's fork: no thread is copied into its child
        _LOG.append(LogWriter())
        atexit.register(_LOG[0].flush, LOG_FLUSH)
    if not args.no_realtime:
        for w in go_realtime():
            log(f"warning: {w}")
    if (oom := channels.set_own_oom_score_adj(cfg.chain.oom_score_adj)) is not None:
        log(f"warning: {oom}")
    try:
        os.makedirs(cfg.chain.state_dir, exist_ok=True)
    except OSError as e:
        log(f"cannot create {cfg.chain.state_dir}: {e}")
    # The boot record first, before the device is armed: a boot that goes wrong from here
    # on is counted even if nothing gets to say why. persist_dir (a disk, which can hang)
    # is touched only under this deadline before the open: a hang there must not keep the
    # device from being armed.
    boot_id = bootrecord.current_boot_id()

    def first_records() -> tuple[dict[str, Any], list[str]]:
        try:
            os.makedirs(cfg.chain.persist_dir, exist_ok=True)
        except OSError as e:
            log(f"cannot create {cfg.chain.persist_dir}: {e}")
        entry = begin_boot_record(cfg, boot_id)
        return entry, bootrecord.describe(bootrecord.summary(cfg.chain.persist_dir, boot_id))

    answered, got = bounded(first_records, RECORD_DEADLINE, "boot-record")
    entry: dict[str, Any] | None = None
    if not answered or not isinstance(got, tuple):
        why = got if answered else f"no answer within {RECORD_DEADLINE:g} s"
        log(f"cannot write the boot record in {cfg.chain.persist_dir}: {why}")
    else:
        entry = got[0]
        for line in got[1]:
            log(line)
    wd: Watchdog | None = None
    if STOP_EARLY[0]:  # (a tickler that never opened it has nothing to disarm)
        log("stopped before the watchdog was opened")
        return 0
    if cfg.watchdog.device == "none":
        log('WARNING: [watchdog] device = "none": nothing will reset this machine; the '
            "health gate is evaluated and published only")
    else:
        OPENING[0] = True
        try:
            # the configured timeout at once: the driver's initial one may be short, and
            # a slow box must not spend it on what comes before the first pet
            wd = open_watchdog(cfg.watchdog.device, cfg.watchdog.nowayout,
                               timeout=cfg.watchdog.timeout)
        except TimeoutRefused as e:
            # Open and armed: exiting would not do (the close without 'V' pets it, and so
            # would each of init's restarts of the tickler, for ever). Held, unpetted.
            return fail_unpetted(cfg, e.wd, None, e, "the driver refused the timeout")
        except WatchdogError as e:
            log(f"cannot open the watchdog: {e}; exiting (init will retry)")
            return EXIT_NOT_OPENED
    tickler: Tickler | None = None
    try:
        tickler = Tickler(cfg, wd, started)
        tickler.boot_entry = entry
        for pid in parser_left:  # reaped once it wrote the last-known-good copy, by a
            # thread of its own: on the writer thread, a parser slow on persist_dir held
            # up this boot's records behind it (the device, the gate's reason)
            threading.Thread(target=_reap, args=(pid,), name="parser-reaper",
                             daemon=True).start()
        for write in cache_writes:
            tickler.records.submit(TABLES_CACHE, write)
        tickler.configure_device()
        tickler.record_last_boot()
        tickler.disarm_for_boot_loop()
        return tickler.run()
    except WatchdogError as e:
        # Leave it armed (plain close): the restarted tickler takes over within the timeout.
        log(f"watchdog error: {e}; exiting without disarming (init will restart the tickler)")
        if wd is not None:
            try:
                wd.close()
            except WatchdogError:
                pass
        return 1
    except Exception as e:  # noqa: BLE001 - any other failure after the open
        return fail_unpetted(cfg, wd, tickler, e)


if __name__ == "__main__":
    sys.exit(main())
