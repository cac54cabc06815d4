"""hachain's tickler: pets the watchdog only while the whole chain is healthy.

    python -m hachain.watchdog.tickler -c /etc/hachain/chain.toml

A separate process, started (and blindly restarted) by init. What it owns:

- the open watchdog device: opening it (which arms it), setting the timeout and
  pretimeout, petting it, and the magic close on an orderly stop;
- the health gate's *inputs*: it reads the heartbeats of init and the restarter and
  whether their processes are alive, and asks `health.evaluate` for the verdict;
- two records in the persistent directory: `gate.json` (why it stopped petting, written
  durably on the first failure, so it survives the reset it causes) and `last_boot.json`
  (why the previous boot ended, read once at start from the device's boot status);
- its own heartbeat, `hb/tickler.json`.

What it must not do: pet when the gate fails; keep running without petting because the
device is broken (it exits non-zero, and init restarts it; a silent non-petting tickler
would reset the machine with no explanation); decide anything the gate does not.

Facts this relies on (see the essay in `hachain.watchdog.device`): a tickler that dies
leaves the device armed (no magic character was written), so init has the whole timeout
to restart it; the restarted tickler opens the device again and SETTIMEOUT pets it.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import selectors
import signal
import sys
import time
from dataclasses import asdict
from typing import Any

from hachain import channels, sdnotify, snapshot
from hachain.config import (
    DEFAULT_PATH,
    ChainConfig,
    Config,
    ConfigError,
    WatchdogConfig,
)
from hachain.watchdog import health
from hachain.watchdog.device import (
    WDIOF_CARDRESET,
    Watchdog,
    WatchdogError,
    describe_bootstatus,
    flag_names,
    open_watchdog,
)

PROG = "hachain-tickler"
LAST_BOOT = "last_boot.json"  # in persist_dir; written by the tickler once per boot
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
RT_PRIORITY = 50  # SCHED_FIFO priority: above ordinary services, below kernel threads
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def log(msg: str) -> None:
    """One line on stderr, prefixed with the program name."""
    try:
        os.write(2, channels.log_line(PROG, msg))
    except OSError:
        pass


def read_boot_id() -> str:
    """This boot's id (a fresh UUID per kernel boot); "" when unavailable."""
    try:
        with open(BOOT_ID_PATH) as f:
            return f.read().strip()
    except OSError:
        return ""


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
        self.boot_id = read_boot_id()
        self.device = wd.path if wd is not None else "none"
        self.timeout: int | None = None
        self.pretimeout: int | None = None
        self.pets = 0
        self.last_pet: float | None = None
        self.next_pet = 0.0
        self.gate = health.GateResult(True, ())
        self.failing = False
        self.stop_requested = False
        self.init = channels.init_from_env()
        self.orphaned: str | None = None  # why init is gone, once it is
        self.sel: selectors.BaseSelector | None = None  # the loop's, while it runs
        self.watched: dict[str, tuple[int, int]] = {}  # layer -> (pid, pidfd or -1)
        self.dead: set[int] = set()
        restarts = os.environ.get(channels.ENV_LAYER_RESTARTS, "0")
        self.hb = channels.HeartbeatWriter(self.state_dir, "tickler",
                                           int(restarts) if restarts.isdigit() else 0)

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
            pre = self.wd.set_pretimeout(self.wdc.pretimeout)
            self.pretimeout = pre
            if pre != self.wdc.pretimeout:
                log(f"{self.device}: asked for pretimeout {self.wdc.pretimeout} s, driver "
                    f"applied {pre} s")
        self.last_pet = time.monotonic()  # SETTIMEOUT pets
        log(f"{self.device}: armed, timeout {got} s"
            + (f", pretimeout {self.pretimeout} s" if self.pretimeout else "")
            + f", petting every {self.wdc.pet_interval:g} s while the gate passes")

    def record_last_boot(self) -> None:
        """Write last_boot.json once per boot: the boot status and the last gate failure."""
        if self.wd is None:
            return
        try:
            bootstatus = self.wd.get_bootstatus()
        except WatchdogError as e:
            log(f"cannot read boot status: {e}")
            return
        path = os.path.join(self.persist_dir, LAST_BOOT)
        try:
            old = channels.read_json(path)
        except (ValueError, OSError):
            old = None
        if isinstance(old, dict) and self.boot_id and old.get("boot_id") == self.boot_id:
            return  # a restarted tickler: this boot is already recorded
        try:
            gate = channels.read_json(os.path.join(self.persist_dir, channels.GATE_RECORD))
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
            channels.write_json(path, rec, durable=True)
        except OSError as e:
            log(f"cannot write {path}: {e}")
        msg = f"previous boot ended by: {cause} (boot status 0x{bootstatus:x})"
        if bootstatus & WDIOF_CARDRESET and isinstance(gate, dict):
            msg += "; gate had failed: " + "; ".join(map(str, gate.get("reasons", [])))
        log(msg)

    # -- one tick ----------------------------------------------------------------------

    def observe(self) -> tuple[dict[str, channels.Heartbeat | None], dict[str, bool]]:
        """The gated layers' heartbeats and whether the processes that wrote them live."""
        hbs: dict[str, channels.Heartbeat | None] = {}
        alive: dict[str, bool] = {}
        for layer in health.GATED_LAYERS:
            hb = channels.read_heartbeat(self.state_dir, layer)
            hbs[layer] = hb
            alive[layer] = hb is not None and self.alive(layer, hb.pid)
        return hbs, alive

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
        hbs, alive = self.observe()
        self.gate = health.evaluate(now, hbs, alive, self.wdc, self.started)
        if self.gate.ok:
            if self.failing:
                log("gate passes again; petting resumes")
                self.failing = False
            # Under systemd (Type=notify, WatchdogSec=), tell it the chain is up and
            # healthy: systemd's watchdog then means what the hardware one means.
            if not self.sd_ready:
                self.sd_ready = sdnotify.notify("READY=1\nSTATUS=chain healthy")
            else:
                sdnotify.notify("WATCHDOG=1")
            if self.wd is not None and now >= self.next_pet:
                self.wd.keepalive()
                self.pets += 1
                self.last_pet = time.monotonic()
                self.next_pet = now + self.wdc.pet_interval
        elif not self.failing:
            self.failing = True
            self.on_gate_failure()
        self.beat()

    def on_gate_failure(self) -> None:
        """First failure of a streak: log the reasons and record them durably."""
        what = "not petting" if self.wd is not None else "no device to stop petting"
        log(f"health gate FAILED, {what}: " + "; ".join(self.gate.reasons))
        rec = {"wall": time.time(), "mono": time.monotonic(),
               "reasons": list(self.gate.reasons), "device": self.device,
               "boot_id": self.boot_id}
        path = os.path.join(self.persist_dir, channels.GATE_RECORD)
        try:
            channels.write_json(path, rec, durable=True)
        except OSError as e:
            log(f"cannot write {path}: {e}")

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
            "last_pet_mono": self.last_pet, "pets": self.pets,
            "gate": self.gate.to_json(), "timeout": self.timeout, "timeleft": timeleft,
        }
        self.hb.beat(extra)

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> int:
        """Tick until SIGTERM/SIGINT; returns the exit status. WatchdogError propagates."""
        sel = self.sel = selectors.DefaultSelector()
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        sel.register(wake_r, selectors.EVENT_READ, ("wake", 0))
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop)
        period = min(self.wdc.pet_interval, self.cfg.chain.heartbeat_interval)
        next_tick = time.monotonic()
        while not self.stop_requested:
            now = time.monotonic()
            if now >= next_tick:
                self.tick(now)
                next_tick = max(next_tick + period, now)
            for key, _ in sel.select(max(0.0, next_tick - time.monotonic())):
                if key.data[0] == "pidfd":
                    self.on_pidfd(key.data[1])
                    continue
                try:
                    os.read(wake_r, 256)
                except BlockingIOError:
                    pass
        return self.shutdown()

    def _on_stop(self, sig: int, _frame: object) -> None:
        """SIGTERM/SIGINT handler: ask the loop to stop."""
        self.stop_requested = True

    def shutdown(self) -> int:
        """Orderly stop: magic close (disarm) unless nowayout. Returns 0. Orphaned (init
        gone): a plain close, so the device stays armed for the next chain to take over."""
        if self.orphaned:
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
        if self.wd is None:
            log("stopping (no device)")
            return 0
        nowayout = self.wd.nowayout or self.wdc.nowayout
        try:
            if nowayout:
                self.wd.close()
                log(f"{self.device}: stopping; nowayout: the watchdog stays armed")
            elif self.wd.magic_close():
                log(f"{self.device}: stopping; magic close: watchdog disarmed")
            else:
                log(f"{self.device}: stopping; driver is nowayout: watchdog stays armed")
        except WatchdogError as e:
            log(f"{self.device}: stopping; magic close failed, watchdog stays armed: {e}")
        self.beat()
        return 0


def load_config(path: str) -> Config:
    """[chain] and [watchdog] of this chain run's running configuration snapshot
    (`snapshot.for_layer`: never the live file once the run has one), HACHAIN_* overrides
    applied; no services.

    The file is parsed in a short-lived child process. Parsing 1000 services leaves about
    3 MB in Python's allocator that the tickler, which locks its memory, would otherwise
    carry for its whole life. Raises ConfigError as load() does.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the parser: hand back two small tables, then vanish
        code = 0
        try:
            os.close(r)
            try:
                cfg, _snap = snapshot.for_layer(path)
                out: dict[str, Any] = {"path": cfg.path, "chain": asdict(cfg.chain),
                                       "watchdog": asdict(cfg.watchdog)}
            except ConfigError as e:
                out = {"errors": list(e.errors)}
            with os.fdopen(w, "wb") as f:
                f.write(json.dumps(out).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        raw = f.read()
    os.waitpid(pid, 0)
    try:
        d = json.loads(raw)
        if "errors" in d:
            raise ConfigError([str(x) for x in d["errors"]])
        return Config(path=d["path"], chain=ChainConfig(**d["chain"]),
                      watchdog=WatchdogConfig(**d["watchdog"]), services={})
    except (ValueError, TypeError, KeyError):
        raise ConfigError([f"{path}: the configuration parser process failed"]) from None


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(
        prog=PROG, description="Pet the watchdog while the hachain health gate passes.")
    p.add_argument("-c", "--config",
                   default=os.environ.get(channels.ENV_CONFIG) or DEFAULT_PATH,
                   help="configuration file (default: $HACHAIN_CONFIG or %(default)s)")
    p.add_argument("--no-realtime", action="store_true",
                   help="do not ask for SCHED_FIFO and mlockall")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point. 0 after an orderly stop, 1 on a device error, 2 on a bad config."""
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        for line in e.errors:
            log(line)
        return 2
    os.environ[channels.ENV_LOG_FORMAT] = cfg.chain.log_format
    if not args.no_realtime:
        for w in go_realtime():
            log(f"warning: {w}")
    for d in (cfg.chain.state_dir, cfg.chain.persist_dir):
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as e:
            log(f"cannot create {d}: {e}")
    wd: Watchdog | None = None
    if cfg.watchdog.device == "none":
        log('WARNING: [watchdog] device = "none": nothing will reset this machine; the '
            "health gate is evaluated and published only")
    else:
        try:
            wd = open_watchdog(cfg.watchdog.device, cfg.watchdog.nowayout)
        except WatchdogError as e:
            log(f"cannot open the watchdog: {e}; exiting (init will retry)")
            return 1
    tickler = Tickler(cfg, wd, started)
    try:
        tickler.configure_device()
        tickler.record_last_boot()
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


if __name__ == "__main__":
    sys.exit(main())
