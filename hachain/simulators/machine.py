"""The simulated machine: the chain as PID 1 of a PID namespace, reset by a software watchdog.

`hachain sim` and `SimMachine` play the *hardware* of an appliance from the host side:

- the watchdog chip is a `WatchdogServer` on `<dir>/watchdog.sock`;
- a *boot* wipes `<dir>/run` (like /run on tmpfs), keeps `<dir>/persist` (like a disk),
  gives the boot a fresh boot id, and runs `hachain.init.main` as PID 1 of new PID and
  mount namespaces (`unshare --pid --mount --fork --mount-proc`);
- a watchdog expiry is a *reset*: SIGKILL to the namespace's init from the host, which
  takes down every process of the machine at once, then a boot with boot status
  WDIOF_CARDRESET;
- PID 1 exiting is a *kernel panic*: the machine boots again after `panic_delay` with
  boot status 0. A reboot(2) inside the namespace (init's orderly end) is a clean reboot,
  a halt or power-off stops the machine.

Every boot is one line of `<dir>/persist/boots.jsonl`. What this module must not do: reach
into the chain. It only starts PID 1, watches it die, and reads heartbeat files; faults
are injected by the caller through the host pids it exposes.

Facts it relies on:

- When a PID namespace's init exits, the kernel SIGKILLs every other process in the
  namespace and `unshare` (waiting for it) returns only after all are gone, so the next
  boot never overlaps the previous one.
- `unshare --fork` re-raises the signal that killed its child: reboot(2) with RB_AUTOBOOT
  in a child namespace kills its init with SIGHUP, halt / power-off with SIGINT.
- From the parent namespace SIGKILL and SIGSTOP reach the namespace's init; from inside
  they do not (DESIGN.md). So the host can crash or hang "PID 1" and nothing else can.
- Heartbeat pids are namespace pids. `/proc/<hostpid>/status` has an `NSpid:` line
  listing the pid in each nested namespace (host first, innermost last), and
  `/proc/<hostpid>/ns/pid` names the namespace, which together map one to the other.
- CLOCK_MONOTONIC is the same in and out of the namespace, so heartbeat ages computed
  on the host are right.
- The machine dies with the process that owns this object, however it dies (SIGKILL
  included): `setpriv --pdeathsig KILL` starts each boot, so `unshare` runs with
  PR_SET_PDEATHSIG = SIGKILL (kept across the exec of nsenter and unshare), and
  `--kill-child` passes its death on to the namespace's init. The parent-death signal
  fires when the *thread* that forked ends, so every boot is forked by the machine
  thread (`_run`), which lives until the last boot is over; start(), resets and power
  cuts may come from threads that end at any time. What a dead owner cannot remove is
  its cgroup subtree: the next machine's start sweeps the empty subtrees of owners that
  are gone (`sweep_stale_cgroups`).
- The machine is a cgroup (when cgroup v2 is writable): `<mount>/hachain-sim-<owner>-<id>`
  holds `chain/`, where the boot's first process joins itself before it execs (so every
  process of the machine's chain is in it), and `services/`, the chain's `cgroup_root`.
  Between two boots and at stop() the whole of it is killed (`cgroup.kill`) and removed,
  so nothing of one boot outlives it. Removing it while a process of the machine still
  ran was not enough: when `unshare` died first (a terminal's SIGHUP reaches the whole
  process group), a restarter still starting in the namespace made its `cgroup_root`
  again after the removal, and the machine's cgroup was left behind.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Self

from hachain import channels, config
from hachain.cgroupfs import find_cgroup2_mount, remove_cgroup_tree
from hachain.simulators.wdsim import SoftWatchdog, WatchdogServer
from hachain.watchdog.device import WDIOF_CARDRESET, flag_names

SOCKET_NAME = "watchdog.sock"
CONSOLE_NAME = "console.log"
BOOT_ID_FILE = "boot_id"  # in <dir>/run: bind-mounted over /proc/sys/kernel/random/boot_id
FIND_INIT_TIMEOUT = 10.0
CGROUP_PREFIX = "hachain-sim-"  # <cgroup2 mount>/hachain-sim-<owner pid>-<random>

# Runs as PID 1 of the new namespaces, then execs init (keeping PID 1): gives the boot its
# own boot id, as a real reboot would. $1 is the boot id file, the rest is init's argv.
BOOT_WRAPPER = ('b="$1"; shift; mount --bind "$b" /proc/sys/kernel/random/boot_id '
                '2>/dev/null || echo "sim: cannot set the boot id" >&2; exec "$@"')


# --- /proc helpers --------------------------------------------------------------------------

def _ppid(pid: int) -> int | None:
    """The parent pid of `pid` from /proc/PID/stat; None when gone."""
    return channels.proc_ppid(pid)


def _all_pids() -> Iterable[int]:
    """Every pid in this process's /proc."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def children_of(parent: int) -> list[int]:
    """Pids whose parent is `parent`."""
    return [p for p in _all_pids() if _ppid(p) == parent]


def ns_pids(pid: int) -> list[int]:
    """The `NSpid:` line of /proc/PID/status: this pid in each namespace, outermost first."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


def pid_namespace(pid: int) -> str | None:
    """The identity of `pid`'s PID namespace (e.g. 'pid:[4026532]'); None when gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


# --- the machine dies with its owner -------------------------------------------------------

# Wrapped around the machine's nsenter / unshare: setpriv(1) sets PR_SET_PDEATHSIG =
# SIGKILL and execs a shell that quits at once if its parent is no longer the owner ($0:
# the owner died before the prctl took effect), else execs the rest. No Python code runs
# between fork and exec (a preexec_fn would: the owner's Python signal handlers then ran
# in the child, and a campaign's SIGHUP raised in it).
OWNER_CHECK = ('test "$PPID" = "$0" || exit 1; c="$1"; shift; if [ -n "$c" ]; then '
               'echo 0 2>/dev/null > "$c/cgroup.procs" || '
               'echo "sim: cannot join the machine cgroup $c" >&2; fi; exec "$@"')
CHAIN_CGROUP, SERVICES_CGROUP = "chain", "services"  # in the machine's cgroup
EMPTY_BOUND = 60.0  # s for the processes of a killed machine cgroup to be gone


def _die_with_owner(owner: int, cgroup: str | None = None) -> list[str]:
    """The argv prefix that ties a boot to the thread forking it and to `owner`, and
    moves it into the cgroup directory `cgroup` (when given) before anything runs."""
    return ["setpriv", "--pdeathsig", "KILL", "--", "/bin/sh", "-c", OWNER_CHECK, str(owner),
            cgroup or ""]


def _psi_some_us(path: str) -> int | None:
    """The `total=` of the "some" line of a PSI file (µs), or None (no file, no PSI)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("some "):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def sweep_stale_cgroups(mount: str) -> list[str]:
    """Remove the cgroup subtrees of machines whose owner process is gone (SIGKILLed: it
    could not clean up); the paths removed. Only empty cgroups go (rmdir); one a process
    still runs in is left as it is, and nothing is signalled. An owner is gone when no
    process has its pid here (a reused pid keeps the subtree: harmless)."""
    removed: list[str] = []
    try:
        entries = os.listdir(mount)
    except OSError:
        return removed
    for entry in entries:
        if not entry.startswith(CGROUP_PREFIX):
            continue
        owner = entry[len(CGROUP_PREFIX):].split("-", 1)[0]
        if not owner.isdigit() or os.path.exists(f"/proc/{owner}"):
            continue
        path = os.path.join(mount, entry)
        for root, _dirs, _files in os.walk(path, topdown=False):
            try:
                os.rmdir(root)
            except OSError:
                pass
        if not os.path.exists(path):
            removed.append(path)
    return removed


# --- the machine ----------------------------------------------------------------------------

class SimMachine:
    """One simulated machine. `start()` powers it on; `stop()` pulls the plug.

    Boots are numbered across the life of `<dir>/persist` (the boot log is on the
    "disk"); `boots` and `wait_boot(n)` count the boots of this SimMachine object.
    """

    def __init__(self, config_path: str, dir: str, panic_delay: float = 1.0,
                 env_extra: dict[str, str] | None = None, init_args: list[str] | None = None,
                 console: str | None = None, on_event: Callable[[str], None] | None = None,
                 max_boots: int | None = None, python: str | None = None,
                 netns: str | None = None) -> None:
        self.config_path = os.path.abspath(config_path)
        self.dir = os.path.abspath(dir)
        self.panic_delay = panic_delay
        self.env_extra = dict(env_extra or {})
        self.init_args = list(init_args or [])
        self.console = console if console is not None else os.path.join(self.dir, CONSOLE_NAME)
        self.on_event = on_event if on_event is not None else _print_event
        self.max_boots = max_boots
        self.python = python or sys.executable
        self.netns = netns  # a network namespace (`ip netns add`) the machine runs in
        self.run_dir = os.path.join(self.dir, "run")
        self.state_dir = os.path.join(self.run_dir, "hachain")
        self.persist_dir = os.path.join(self.dir, "persist")
        self.socket_path = os.path.join(self.dir, SOCKET_NAME)
        self.cgroup: str | None = None  # the machine's own cgroup (see the module doc)
        self.cgroup_root: str | None = None  # its services/: the chain's cgroup_root
        self.events: list[tuple[float, str]] = []  # (monotonic, line)
        self.server: WatchdogServer | None = None
        self.finished = threading.Event()  # set when the machine stopped on its own
        self.failure: str | None = None  # why the machine thread failed (a harness error)
        self._boots: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._ns_init: int | None = None
        self._reset_pending = False
        self._power_cut_pending = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._init_timing: list[str] = []
        # cpu_stalled's count, in µs: what earlier cgroups of the machine recorded, and
        # how much of the present one's total is already in it
        self._stalled_before = 0
        self._stall_base = 0

    # -- public API ---------------------------------------------------------------------

    @property
    def boots(self) -> list[dict[str, Any]]:
        """The boot records of this run, oldest first (copies)."""
        with self._cond:
            return [dict(b) for b in self._boots]

    def start(self) -> None:
        """Power on: start the watchdog chip and boot. ConfigError for a bad config."""
        cfg = config.load(self.config_path)
        wd = cfg.watchdog
        # init reads no TOML: hand it the chain's timings on its command line.
        self._init_timing = ["--restart-delay", f"{cfg.chain.restart_delay:g}",
                             "--heartbeat-interval", f"{cfg.chain.heartbeat_interval:g}",
                             "--tickler-deaths", str(wd.tickler_deaths),
                             "--tickler-min-run", f"{wd.tickler_min_run:g}",
                             "--tickler-pause", f"{channels.tickler_pause(wd.timeout):g}",
                             "--persist-dir", self.persist_dir,
                             "--oom-score-adj", str(cfg.chain.oom_score_adj)]
        if cfg.cluster is not None:
            self._init_timing.append("--cluster")
        os.makedirs(self.persist_dir, exist_ok=True)
        self.cgroup = self._cgroup()
        self.cgroup_root = os.path.join(self.cgroup, SERVICES_CGROUP) if self.cgroup else None
        self.server = WatchdogServer(
            self.socket_path, SoftWatchdog(wd.timeout, wd.pretimeout, wd.nowayout),
            self._on_expire, self._on_pretimeout)
        self.server.start()
        self._thread = threading.Thread(target=self._run, name="sim-machine", daemon=True)
        self._thread.start()
        atexit.register(self.stop)  # never leave a machine running behind a crashed caller

    def stop(self) -> None:
        """Pull the plug: kill the namespace (everything dies), stop the chip, clean up."""
        atexit.unregister(self.stop)
        self._stopping.set()
        self._kill_machine()
        if self._thread is not None:
            try:
                self._thread.join(30)
            except RuntimeError:  # made but never started: a signal cut start() short
                pass
            self._thread = None
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            try:
                self._proc.wait(EMPTY_BOUND)
            except subprocess.TimeoutExpired:  # the cgroup's kill below still runs
                self._event(f"unshare (pid {self._proc.pid}) not gone {EMPTY_BOUND:g} s "
                            "after SIGKILL")
        if self.server is not None:
            self.server.stop()
        self._remove_cgroup()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_boot(self, n: int, timeout: float) -> dict[str, Any]:
        """Block until this run has had `n` boots; the n-th record. TimeoutError if not."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._boots) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"sim: boot {n} did not happen within {timeout:g} s "
                                       f"({len(self._boots)} boots so far)")
                self._cond.wait(left)
            return dict(self._boots[n - 1])

    def init_host_pid(self) -> int | None:
        """The host pid of the machine's PID 1 while it runs; None between boots."""
        pid = self._ns_init
        if pid is None or self._proc is None or self._proc.poll() is not None:
            return None
        return pid if _ppid(pid) == self._proc.pid else None

    def namespace_pids(self) -> dict[int, int]:
        """{namespace pid: host pid} for every process of the running machine."""
        init = self.init_host_pid()
        ns = pid_namespace(init) if init is not None else None
        if init is None or ns is None:
            return {}
        out = {}
        for pid in _all_pids():
            if pid_namespace(pid) == ns:
                nsp = ns_pids(pid)
                if nsp:
                    out[nsp[-1]] = pid
        return out

    def host_pid_of(self, layer: str) -> int | None:
        """The host pid of the process that wrote `layer`'s heartbeat, if it still runs."""
        hb = channels.read_heartbeat(self.state_dir, layer)
        if hb is None:
            return None
        if hb.pid == 1:
            return self.init_host_pid()
        return self.namespace_pids().get(hb.pid)

    def heartbeat(self, layer: str) -> channels.Heartbeat | None:
        """`layer`'s current heartbeat in this boot's state directory."""
        return channels.read_heartbeat(self.state_dir, layer, regular=True)  # (no FIFO wait)

    def wait_heartbeats(self, layers: Iterable[str] = channels.LAYERS, timeout: float = 30.0,
                        fresh: float | None = 3.0) -> dict[str, channels.Heartbeat]:
        """Block until every layer has a heartbeat (no older than `fresh` s, unless None)."""
        layers = tuple(layers)
        deadline = time.monotonic() + timeout
        while True:
            found = {}
            for layer in layers:
                hb = self.heartbeat(layer)
                if hb is not None and (fresh is None or hb.age(time.monotonic()) <= fresh):
                    found[layer] = hb
            if len(found) == len(layers):
                return found
            if time.monotonic() > deadline:
                missing = sorted(set(layers) - set(found))
                raise TimeoutError(f"sim: no fresh heartbeat from {', '.join(missing)} "
                                   f"within {timeout:g} s")
            time.sleep(0.05)

    # -- the machine thread -------------------------------------------------------------

    def _run(self) -> None:
        """Boot, wait for the machine to go down, decide how it comes back; repeat."""
        cause, bootstatus = "power-on", 0
        try:
            while not self._stopping.is_set():
                self._boot(cause, bootstatus)
                if self._stopping.is_set():
                    self._kill_machine()  # stop() came while this boot was starting
                assert self._proc is not None
                rc = self._proc.wait()
                with self._cond:
                    reset, self._reset_pending = self._reset_pending, False
                    cut, self._power_cut_pending = self._power_cut_pending, False
                self._ns_init = None
                self._remove_cgroup()  # nothing of this boot runs into the next one
                if self._stopping.is_set():
                    break
                if self.max_boots is not None and len(self._boots) >= self.max_boots:
                    self._event(f"boot {self._boots[-1]['boot']} ended; stopping after "
                                f"{self.max_boots} boot(s)")
                    break
                if cut:
                    cause, bootstatus = "power-cut", 0
                elif reset:
                    cause, bootstatus = "watchdog", WDIOF_CARDRESET
                elif rc == -signal.SIGHUP:
                    self._event("PID 1 called reboot(2): rebooting")
                    cause, bootstatus = "reboot", 0
                elif rc == -signal.SIGINT:
                    self._event("PID 1 called reboot(2) to halt or power off: machine off")
                    break
                else:
                    self._event(f"PID 1 exited ({_describe_rc(rc)}): kernel panic; "
                                f"rebooting in {self.panic_delay:g} s")
                    if self._stopping.wait(self.panic_delay):
                        break
                    cause, bootstatus = "panic", 0
                assert self.server is not None
                self.server.reset_for_boot(bootstatus)
        except Exception as e:  # noqa: BLE001 - report, and let stop() clean up
            self.failure = f"machine thread failed: {type(e).__name__}: {e}"
            self._event(self.failure)
        finally:
            self.finished.set()

    def _boot(self, cause: str, bootstatus: int) -> None:
        """Wipe /run, log the boot, start PID 1 in fresh namespaces, find its host pid.
        Called by the machine thread only: the unshare it forks dies with that thread."""
        shutil.rmtree(self.run_dir, ignore_errors=True)
        os.makedirs(self.state_dir, exist_ok=True)
        boot_id = str(uuid.uuid4())
        with open(os.path.join(self.run_dir, BOOT_ID_FILE), "w") as f:
            f.write(boot_id + "\n")
        chain = None
        if self.cgroup and self.cgroup_root:
            chain = os.path.join(self.cgroup, CHAIN_CGROUP)
            try:
                os.makedirs(chain, exist_ok=True)
                os.makedirs(self.cgroup_root, exist_ok=True)
                with self._cond:  # a new cgroup starts from 0, one that stayed from its total
                    self._stall_base = _psi_some_us(self._pressure_file()) or 0
            except OSError as e:
                self._event(f"cannot create {self.cgroup}: {e}; the machine runs without it")
                chain = None
        number = _count_lines(os.path.join(self.persist_dir, channels.BOOT_LOG)) + 1
        rec = {"boot": number, "wall": time.time(), "mono": time.monotonic(), "cause": cause,
               "bootstatus": bootstatus, "boot_id": boot_id}
        _append_line(os.path.join(self.persist_dir, channels.BOOT_LOG), rec)
        flags = " ".join(flag_names(bootstatus))
        what = {"power-on": "power on", "watchdog": "watchdog reset", "panic": "after panic",
                "reboot": "reboot", "power-cut": "after a power cut"}.get(cause, cause)
        self._event(f"boot {number}: {what} (boot status 0x{bootstatus:x}"
                    + (f" {flags}" if flags else "") + ")")
        # nsenter joins the network namespace only (`ip netns exec` would also remount
        # /sys, hiding the cgroup2 mount) and execs the rest in place: same pid
        argv = _die_with_owner(os.getpid(), chain)
        if self.netns:
            argv += ["nsenter", f"--net=/run/netns/{self.netns}", "--"]
        argv += ["unshare", "--pid", "--mount", "--fork", "--mount-proc", "--kill-child", "--",
                "/bin/sh", "-c", BOOT_WRAPPER, "sh", os.path.join(self.run_dir, BOOT_ID_FILE),
                self.python, "-m", "hachain.init.main", "--state-dir", self.state_dir,
                "--config", self.config_path, *self._init_timing, *self.init_args]
        with self._cond:
            # A reset or power cut that came while the machine was down (an expiry in the
            # panic delay, say) found no boot to kill: it is not this boot's end.
            self._reset_pending = self._power_cut_pending = False
            console = open(self.console, "ab") if self.console else None  # noqa: SIM115
            try:
                if console is not None:
                    console.write(f"=== sim boot {number} ({cause}) ===\n".encode())
                    console.flush()
                self._proc = subprocess.Popen(
                    argv, env=self._env(), cwd="/", stdin=subprocess.DEVNULL,
                    stdout=console, stderr=console)
            finally:
                if console is not None:
                    console.close()
            self._boots.append(rec)
            self._cond.notify_all()
        self._ns_init = self._find_ns_init()

    def _env(self) -> dict[str, str]:
        """The environment of PID 1: ours plus the machine's HACHAIN_* settings."""
        env = dict(os.environ)
        env.update({
            channels.ENV_SIM_WATCHDOG: self.socket_path,
            "HACHAIN_WATCHDOG_DEVICE": "sim",
            channels.ENV_STATE_DIR: self.state_dir,
            "HACHAIN_PERSIST_DIR": self.persist_dir,
            channels.ENV_FAULT_HOOKS: "1",
        })
        env.pop("HACHAIN_CGROUP_ROOT", None)
        if self.cgroup_root:
            env["HACHAIN_CGROUP_ROOT"] = self.cgroup_root
        env.update(self.env_extra)
        return env

    def _find_ns_init(self) -> int | None:
        """The child of the unshare process: the machine's PID 1, seen from the host."""
        proc = self._proc
        deadline = time.monotonic() + FIND_INIT_TIMEOUT
        while proc is not None and proc.poll() is None and time.monotonic() < deadline:
            kids = children_of(proc.pid)
            if kids:
                return kids[0]
            time.sleep(0.005)
        return None

    def _cgroup(self) -> str | None:
        """The machine's cgroup, `<cgroup2 mount>/hachain-sim-<id>`, when cgroup v2 is
        writable, else None. The pids controller is offered to it where the host has it
        in v2 (the chain passes it on to its services, for pids_max)."""
        mount = find_cgroup2_mount()
        if not mount or not os.access(mount, os.W_OK):
            return None
        for stale in sweep_stale_cgroups(mount):
            self._event(f"removed {stale}, left by a machine whose owner died")
        path = os.path.join(mount, f"{CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with open(os.path.join(mount, "cgroup.subtree_control"), "w") as f:
                f.write("+pids")
        except OSError:
            pass  # (a hybrid host binds it to v1)
        try:
            os.mkdir(path)
        except OSError:
            return None
        return path

    def cpu_stalled(self) -> float | None:
        """Seconds, since power-on, during which some task of the machine was runnable
        but waited for a CPU: the "some" total of its cgroup's `cpu.pressure` (PSI,
        Linux 4.20+; it counts the whole subtree), added up over the boots (each boot
        has a new cgroup). None without a machine cgroup or PSI. A campaign adds what
        accrued during a fault to that fault's bound: while none of the machine's tasks
        waits for a CPU, a host busy with other work does not slow the chain's way back
        to health, so that wait bounds the delay a busy host adds; on an idle host it is
        next to nothing, and the bound stays as tight as configured."""
        if not self.cgroup:
            return None
        with self._cond:
            now = _psi_some_us(self._pressure_file())
            if now is None and not self._stalled_before:
                return None
            return (self._stalled_before + max(0, (now or 0) - self._stall_base)) / 1e6

    def _pressure_file(self) -> str:
        assert self.cgroup
        return os.path.join(self.cgroup, "cpu.pressure")

    def _count_stall(self) -> None:
        """Move what the machine's cgroup recorded so far into cpu_stalled's count."""
        with self._cond:
            now = _psi_some_us(self._pressure_file()) if self.cgroup else None
            if now is not None:
                self._stalled_before += max(0, now - self._stall_base)
                self._stall_base = now

    def _remove_cgroup(self) -> None:
        """Kill whatever still runs in the machine's cgroup and remove it (every boot
        makes it again); one event line when the kernel keeps it past EMPTY_BOUND. The
        CPU stall it recorded is kept (cpu_stalled)."""
        if not self.cgroup:
            return
        self._count_stall()
        if not remove_cgroup_tree(self.cgroup, EMPTY_BOUND):
            self._event(f"cannot remove {self.cgroup}: processes of the machine still "
                        f"there {EMPTY_BOUND:g} s after cgroup.kill")

    # -- the hardware's reactions -------------------------------------------------------

    def _on_expire(self) -> None:
        """The watchdog fired (server thread): reset the machine by killing its PID 1."""
        pid = self._ns_init or (self._find_ns_init() if self._proc is not None else None)
        with self._cond:  # the flag and the kill go to the same boot (see _boot)
            self._reset_pending = True
            self._kill_machine()
        self._event(f"watchdog expired: resetting the machine (SIGKILL to PID 1, host pid "
                    f"{pid})" + self._gate_note())

    def power_cut(self) -> None:
        """Pull the plug: every process of the machine dies at once, wherever it was (in
        the middle of a write included), and the machine boots again with boot status 0
        and nothing written down about why: the boot cause the chain must count as
        "unknown"."""
        with self._cond:  # the flag and the kill go to the same boot (see _boot)
            self._power_cut_pending = True
            self._kill_machine()
        self._event("power cut")

    def _gate_note(self) -> str:
        """"; tickler: REASONS" from this boot's gate.json, or "" when it left none, or
        "; PATH: what is wrong: ignored" for a file there that is no record (read without
        waiting: a FIFO there held the watchdog's expiry in open() for good)."""
        path = os.path.join(self.persist_dir, channels.GATE_RECORD)
        rec, why = read_record(path)
        if why:
            return f"; {path}: {why}: ignored"
        with self._cond:
            boot_id = self._boots[-1]["boot_id"] if self._boots else None
        if rec is None or rec.get("boot_id") != boot_id:
            return ""
        reasons = rec.get("reasons")
        if not isinstance(reasons, list):
            return f"; {path}: reasons is no list: ignored"
        return "; the tickler had stopped petting: " + "; ".join(map(str, reasons))

    def _on_pretimeout(self) -> None:
        """The pretimeout fired: a real machine would raise an NMI or log; we log."""
        self._event("watchdog pretimeout: the machine resets soon unless it is petted")

    def _kill_machine(self) -> None:
        """SIGKILL the namespace's init (everything in it dies); the unshare if none yet."""
        pid = self._ns_init
        proc = self._proc
        if pid is not None and proc is not None and _ppid(pid) == proc.pid:
            try:
                os.kill(pid, signal.SIGKILL)
                return
            except ProcessLookupError:
                return
        if proc is not None and proc.poll() is None:
            proc.kill()  # --kill-child takes the namespace's init down with it

    def _event(self, msg: str) -> None:
        """One machine event: remembered and reported."""
        self.events.append((time.monotonic(), msg))
        try:
            self.on_event(msg)
        except Exception as e:  # noqa: BLE001 - a broken reporter must not stop the machine
            print(f"sim: event reporter failed: {e!r}: {msg}", file=sys.stderr)


def read_record(path: str) -> tuple[dict[str, Any] | None, str]:
    """(the tickler's record at `path`, or None when missing or no record; what is wrong
    with the file, "" when nothing). Read without waiting: a FIFO there is no record."""
    try:
        rec = channels.read_json(path, regular=True)
    except OSError as e:
        return None, e.strerror or str(e)
    except ValueError as e:  # (nested too deeply included)
        return None, channels.json_problem(e)
    if rec is not None and not isinstance(rec, dict):
        return None, f"not a JSON object but {type(rec).__name__}"
    return rec, ""


def _print_event(msg: str) -> None:
    print(f"sim: {msg}", flush=True)


def _describe_rc(rc: int) -> str:
    """unshare's exit status in words (it re-raises the signal that killed PID 1)."""
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"status {rc}"


def _count_lines(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0


def _append_line(path: str, obj: dict[str, Any]) -> None:
    """Append one JSON line durably (the boot log is on the machine's "disk")."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, (json.dumps(obj, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


# --- `hachain sim` --------------------------------------------------------------------------

def add_parser(subparsers: Any) -> None:
    """Register `hachain sim` on the `hachain` command's subparsers."""
    p = subparsers.add_parser(
        "sim", help="run the chain as PID 1 of a simulated machine with a software watchdog",
        description="Boot the chain as PID 1 of a PID namespace; the host process plays the "
                    "hardware: a watchdog expiry resets the machine, PID 1 exiting panics it.")
    p.add_argument("-c", "--config", default=None,
                   help="configuration (default: the embedded demo appliance)")
    p.add_argument("--dir", default=None,
                   help="machine directory (default: a fresh temporary directory)")
    p.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds (default: until Ctrl-C / SIGTERM)")
    p.add_argument("--boots", type=int, default=None,
                   help="stop when the N-th boot ends instead of booting again")
    p.add_argument("--panic-delay", type=float, default=1.0,
                   help="seconds from a kernel panic to the next boot (default 1)")
    p.add_argument("--console", action="store_true",
                   help="show the machine's console here instead of <dir>/console.log")
    p.add_argument("--tour", action="store_true",
                   help="a guided tour: crash the restarter, then hang it, and show how the "
                   "chain recovers and what the next boot records")
    p.add_argument("--status-every", type=float, default=5.0, metavar="S",
                   help="print a one-line chain status every S seconds (0: never; default 5)")
    p.set_defaults(func=cmd_sim)


def status_line(machine: SimMachine, t: float) -> str:
    """One line: boot, layers, watchdog, services — what `hachain status` says, compressed."""
    from hachain.status import gather_status
    st = gather_status(machine.state_dir, machine.persist_dir)
    parts = []
    for layer, d in st["chain"]["layers"].items():
        # heartbeat pids are the machine's own (namespace) pids: look at the host's view
        host = machine.host_pid_of(layer) if d.get("pid") else None
        pstate = channels.proc_state(host) if host else None
        if pstate is None:
            word = d.get("state", "down") if not d.get("pid") else "DOWN"
        elif pstate == "T":
            word = "HUNG (stopped)"
        else:
            word = "up"
        parts.append(f"{layer} {word}")
    wd = st["chain"].get("watchdog") or {}
    gate = wd.get("gate") or {}
    if wd.get("device"):
        parts.append(f"watchdog {'petting' if gate.get('ok') else 'NOT petting'} "
                     f"({wd.get('pets') or 0} pets)")
    svcs = ", ".join(f"{n} {s['state']}" + (f" ({s['restarts']} restart"
                                             f"{'s' if s['restarts'] > 1 else ''})"
                                             if s["restarts"] else "")
                     for n, s in sorted(st["services"].items())) or "services: no answer"
    checks = ", ".join(f"{n} {c.get('state')}" for n, c in sorted(st.get("checks", {}).items())
                       if isinstance(c, dict))
    return f"sim: t={t:4.0f}s boot {len(machine.boots)} | " + ", ".join(parts) + " | " + svcs \
        + (f" | checks: {checks}" if checks else "")


# The guided tour (`hachain sim --tour`, what scripts/demo.sh runs): (seconds after
# power-on, what to do, what to say).
TOUR = [
    (12.0, "kill", "SIGKILL to the restarter: init restarts it and it re-adopts every running "
                   "service (same pids, no second copy)"),
    (24.0, "stop", "SIGSTOP to the restarter (a hang, not a crash): its heartbeat goes stale, "
                   "the tickler stops petting, the watchdog resets the machine"),
    (0.0, "explain", ""),
]


def tour_step(machine: SimMachine, tour: list[tuple[float, str, str]],
              t: float) -> list[tuple[float, str, str]]:
    """Run the next tour step when its time has come; the steps left."""
    at, what, say = tour[0]
    if what == "explain":
        if len(machine.boots) < 2:
            return tour
        path = os.path.join(machine.persist_dir, channels.LAST_BOOT)
        rec, _ = read_record(path)  # (what is wrong with it: the tickler says, in its log)
        if not rec or rec.get("boot_id") != machine.boots[-1].get("boot_id"):
            return tour  # the new boot's tickler has not written it yet
        gate = rec.get("last_gate_failure")
        gate = gate.get("reasons") if isinstance(gate, dict) else None
        gate = gate if isinstance(gate, list) and gate else ["?"]
        print(f"sim: tour: boot {len(machine.boots)} knows why it happened: last boot "
              f"{rec.get('cause')!r}, and the gate had failed with: {gate[0]}", flush=True)
        print("sim: tour: done; the machine keeps running (Ctrl-C to stop)", flush=True)
        return tour[1:]
    if t < at:
        return tour
    pid = machine.host_pid_of("restarter")
    if pid is None:
        return tour
    print(f"sim: tour: t={t:.0f}s {say}", flush=True)
    os.kill(pid, signal.SIGKILL if what == "kill" else signal.SIGSTOP)
    return tour[1:]


def fault_hints(machine: SimMachine) -> str:
    """How a user can poke the running machine from another shell."""
    r = machine.host_pid_of("restarter")
    exe = shutil.which("hachain") or os.path.join(os.path.dirname(sys.executable), "hachain")
    return (f"sim: try from another shell:\n"
            f"       {exe} status --state-dir {machine.state_dir} --persist-dir "
            f"{machine.persist_dir}\n"
            f"       kill -KILL {r}   # the restarter dies: init restarts it, services are "
            "re-adopted\n"
            f"       kill -STOP {r}   # the restarter hangs: the watchdog resets the machine")


def cmd_sim(args: argparse.Namespace) -> int:
    """Run the simulated machine until the duration, the boot count, or a signal."""
    if shutil.which("unshare") is None:
        print("hachain sim: unshare(1) not found (util-linux); it is needed to make the "
              "machine's PID namespace", file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print("hachain sim: needs root (PID and mount namespaces)", file=sys.stderr)
        return 1
    if args.boots is not None and args.boots < 1 or args.panic_delay < 0:
        print("hachain sim: --boots must be >= 1 and --panic-delay >= 0", file=sys.stderr)
        return 2
    for opt, value, low in (("--duration", args.duration, 0.0),
                            ("--panic-delay", args.panic_delay, None),
                            ("--status-every", args.status_every, None)):
        # nan passed every comparison above (and ran for ever), a negative --duration
        # ended at once with exit 0
        if value is not None and (not math.isfinite(value) or value < 0
                                  or (low is not None and value <= low)):
            print(f"hachain sim: {opt} must be a number of seconds "
                  f"{'> 0' if low is not None else '>= 0'}, got {value:g}", file=sys.stderr)
            return 2
    d = os.path.abspath(args.dir) if args.dir else tempfile.mkdtemp(prefix="hachain-sim-")
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        why = ("exists and is not a directory" if isinstance(e, FileExistsError)
               else f"cannot create the directory: {e.strerror or e}")
        print(f"hachain sim: --dir {args.dir}: {why}", file=sys.stderr)
        return 2
    print(f"sim: machine directory {d}", flush=True)
    cfg_path = args.config
    if cfg_path is None:
        from hachain.simulators.demo import demo_config_text
        cfg_path = os.path.join(d, "chain.toml")
        with open(cfg_path, "w") as f:
            f.write(demo_config_text(sys.executable))
        print(f"sim: demo appliance configuration {cfg_path}", flush=True)
    config.load(cfg_path)  # a ConfigError reaches `hachain`'s main: message, exit 2
    machine = SimMachine(cfg_path, d, panic_delay=args.panic_delay,
                         console="" if args.console else None, max_boots=args.boots)
    if not args.console:
        print(f"sim: console {machine.console}", flush=True)
    stop = threading.Event()
    old = signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    machine.start()
    t0 = time.monotonic()
    deadline = None if args.duration is None else t0 + args.duration
    every = args.status_every
    next_status = t0 + min(every, 3.0) if every > 0 else None
    hinted = False
    tour = list(TOUR) if args.tour else []
    try:
        while not stop.is_set() and not machine.finished.is_set():
            now = time.monotonic()
            left = None if deadline is None else deadline - now
            if left is not None and left <= 0:
                break
            if next_status is not None and now >= next_status:
                next_status = now + every
                print(status_line(machine, now - t0), flush=True)
                if not hinted and machine.host_pid_of("restarter"):
                    hinted = True
                    print(fault_hints(machine), flush=True)
            if tour:
                tour = tour_step(machine, tour, now - t0)
            stop.wait(0.2 if left is None else min(0.2, left))
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        print("sim: stopping the machine", flush=True)
        machine.stop()
    n = len(machine.boots)
    print(f"sim: {n} boot(s); boot log {os.path.join(machine.persist_dir, channels.BOOT_LOG)}",
          flush=True)
    return 0
