"""hachain-init: layer 1 of the chain, PID 1 of the machine or a subreaper under another init.

What this module owns:
- starting the two layer-2 processes, the restarter and the tickler, and restarting each
  one *blindly* a fixed delay after it exits, forever;
- reaping every zombie that comes back to it (its own children and every orphan below);
- the shutdown sequence: restarter first, then tickler (one that has the watchdog open,
  so that its orderly stop can disarm it), then whatever is left, then (as PID 1) sync
  and reboot / halt / power off;
- its own heartbeat, `<state_dir>/hb/init.json`, written from inside the event loop.

What it must not do:
- import anything but the standard library and `hachain.channels`; read TOML; know about
  services; make a policy decision (no backoff, no intensity, no "give up" but the
  tickler's count of deaths that pet the device, below);
- exit on an error. Every loop iteration is wrapped; a failure is logged and followed by a
  one-second pause. As PID 1, returning from `main` is a kernel panic;
- write to stderr from the loop's thread: a console or journald that stops reading would
  stop the loop. Lines go through a thread of their own (LogWriter).

Some facts this code is built on:

- PID 1 and signals. The kernel delivers a signal to the init of a PID namespace only if
  init installed a handler for it, when the sender is inside that namespace. SIGKILL and
  SIGSTOP cannot have handlers, so `kill -9 1` from inside does nothing; from the parent
  namespace they do arrive. That is why a crash or a hang of PID 1 has to be injected
  through init's own code (the fault hooks below, off unless HACHAIN_FAULT_HOOKS=1).
- PID 1 exit. When the root namespace's init exits, the kernel panics (with `panic=N` it
  reboots after N s). When a child namespace's init exits, the kernel SIGKILLs everything
  else in that namespace. reboot(2) inside a child namespace does not reboot the machine:
  it kills that namespace's init, which its parent then sees as killed by SIGHUP (restart)
  or SIGINT (halt / power off).
- Subreaper. prctl(PR_SET_CHILD_SUBREAPER) makes orphans of our subtree reparent to us
  rather than to the real PID 1, so services that double-fork still come back here and
  are reaped (and killed at shutdown). Reparenting sends us nothing; only the orphan's
  eventual exit does (SIGCHLD), which is why shutdown rescans /proc.
- SIGCHLD coalesces: one signal may stand for many exits, so every wakeup ends with a
  `waitpid(-1, WNOHANG)` loop until it says "no more".
- Signals reach the loop through `signal.set_wakeup_fd`: the C-level handler writes the
  signal number to a non-blocking pipe the selector watches, so no signal is lost between
  a check and a sleep, and nothing polls.
- Python starts with SIGPIPE (and SIGXFSZ) ignored, and an ignored disposition survives
  exec; the children get them reset to default, as `subprocess` does.
- Restart at once, then back off, but never give up. Init's children are the chain
  itself: holding one down would leave the machine unmanaged until the watchdog fires, so
  there is no "give up" and no policy beyond this: the first restart after a layer ran for
  `STABLE_AFTER` seconds is immediate (a SIGKILLed restarter is back in milliseconds, not
  a second later: s6-overlay's most-cited complaint), repeated quick deaths wait
  `FIRST_BACKOFF` doubling up to `--restart-delay`. The cap bounds the spawn rate (a crash
  loop cannot starve the loop or the machine) and the recovery time stays a constant
  anyone can add up: at most `--restart-delay` after any death.
- One exception, the tickler that can never run. Each start of a tickler opens the
  watchdog (arming it, and SETTIMEOUT pets it), and each death closes it without the magic
  character, which the kernel answers with one more ping ("watchdog did not stop!"). So a
  tickler killed at every start (a segfault, the OOM killer) or failing in its loop would
  keep the machine alive for ever through init's restarts, with nothing supervising it.
  After `--tickler-deaths` such deaths in a row, each before the tickler ran
  `--tickler-min-run` s, init stops restarting it and leaves the device alone: it expires
  and resets the machine. If no reset comes within `--tickler-pause` s, nothing was
  armed (the deaths came before the open), and init tries a tickler again. Exits that
  say the device was not opened (0, a bad configuration 2, TICKLER_NOT_OPENED) neither
  count nor start the count again: a device that appears late, or is busy for a moment,
  is waited for as before. This is a count, not a policy: `hachain run` passes 0
  (restart for ever) with `device = "none"`.
"""

from __future__ import annotations

import _thread  # built in: nothing to read from a disk that may hang at the end
import argparse
import collections
import ctypes
import os
import selectors
import shlex
import signal
import socket
import sys
import time
from typing import Any

from hachain import channels

PROG = "hachain-init"
ENV_LAYER_RESTARTS = channels.ENV_LAYER_RESTARTS
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FAULT_EXIT_STATUS = 70
ERROR_PAUSE = 1.0  # after any exception in the loop
SHUTDOWN_POLL = 0.1  # rescan for reparented orphans while stopping
MAX_GRACE = 5.0  # SIGTERM-to-SIGKILL grace for the tickler and the leftovers
SYNC_LIMIT = 30.0  # the last sync before reboot(2): longer, and the box reboots unsynced
FIRST_BACKOFF = 0.1  # the delay after a second quick death; doubles up to --restart-delay
STABLE_AFTER = 10.0  # a layer that ran this long starts the sequence again (immediate)
LOG_QUEUE_MAX = 1000  # log lines waiting for a stderr that does not take them; more: dropped
LOG_FLUSH = 1.0  # before an exit or reboot(2), how long the queued lines may take
# The tickler's exit status when it could not open the device (hachain.watchdog.tickler
# EXIT_NOT_OPENED; a test checks they agree): like 0 and 2, it touched nothing.
TICKLER_NOT_OPENED = 3
TICKLER_UNTOUCHED = (0, 2, TICKLER_NOT_OPENED)

# reboot(2) commands and prctl / mount(2) constants (x86_64 and generic Linux).
RB_AUTOBOOT = 0x01234567
RB_HALT_SYSTEM = 0xCDEF0123
RB_POWER_OFF = 0x4321FEDC
RB_DISABLE_CAD = 0
PR_SET_CHILD_SUBREAPER = 36
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
PID1_MOUNTS = (  # (fstype, target, flags, data)
    ("proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    ("sysfs", "/sys", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
    ("devtmpfs", "/dev", MS_NOSUID, "mode=0755"),
    ("tmpfs", "/run", MS_NOSUID | MS_NODEV, "mode=0755"),
    # the unified cgroup hierarchy, so the restarter can give each service a cgroup
    ("cgroup2", "/sys/fs/cgroup", MS_NOSUID | MS_NODEV | MS_NOEXEC, ""),
)

# The init lock's link count is looked at every this many heartbeats (mend_lock), and at
# once when state_dir lost the heartbeat file too: a lock file removed alone (by hand) is
# taken again within this many heartbeat_intervals.
LOCK_LOOK_EVERY = 8
LOOP_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                signal.SIGUSR1, signal.SIGUSR2)
SIG_CRASH = signal.SIGRTMIN + 1  # fault hook: exit now with FAULT_EXIT_STATUS
SIG_HANG = signal.SIGRTMIN + 2  # fault hook: stop running the loop, forever


def _release(lock: Any) -> None:
    """Release a lock used as a wake-up; one that is already released stays so."""
    try:
        lock.release()
    except RuntimeError:
        pass


def write_err(line: bytes) -> None:
    """Write all of `line` to fd 2; a broken console loses the line, nothing else."""
    view = memoryview(line)
    while view:
        try:
            view = view[os.write(2, view):]
        except OSError:
            return


class LogWriter:
    """stderr written by a thread of its own. A write to a pipe whose reader is stuck (a
    hung journald, a console nobody drains) blocks; on the loop's thread it stopped the
    loop, and with it the heartbeat: the gate failed and a healthy box was reset.

    Lines wait in a deque of at most LOG_QUEUE_MAX; past that they are dropped and
    counted, and the count goes out where they went missing (a `[n]` marker in the deque).
    Nothing here takes a lock that `put` could find held: `put` runs on the loop's thread
    and in signal handlers (the fault hooks), which may interrupt it. Deque operations are
    atomic, and the two locks are used as wake-ups only (released by one thread,
    acquired by the other)."""

    def __init__(self) -> None:
        self.lines: collections.deque[bytes | list[int]] = collections.deque()
        self.wake = _thread.allocate_lock()  # released by put: lines are waiting
        self.wake.acquire()
        self.idle = _thread.allocate_lock()  # released by the writer: deque empty
        self.idle.acquire()
        _thread.start_new_thread(self.run, ())

    def put(self, line: bytes) -> None:
        q = self.lines
        if len(q) < LOG_QUEUE_MAX:
            q.append(line)
        elif isinstance(q[-1], list):
            q[-1][0] += 1  # the marker at the tail: far from the writer at the head
        else:
            q.append([1])
        _release(self.wake)

    def run(self) -> None:
        """The thread: write the head of the deque, then drop it (so `flush` sees a line
        until it is out); signals are left to the loop's thread."""
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        except (OSError, ValueError):
            pass
        q = self.lines
        while True:
            self.wake.acquire()
            while q:
                try:
                    head = q[0]
                    if isinstance(head, list):
                        head = channels.log_line(PROG, f"{head[0]} log line(s) dropped: "
                                                       "stderr did not take them")
                    write_err(head)
                    q.popleft()
                except Exception:  # noqa: BLE001 - the thread must outlive any line
                    if q:
                        q.popleft()
            _release(self.idle)

    def flush(self, timeout: float) -> bool:
        """Wait at most `timeout` s for the queued lines to be written; False if not."""
        deadline = time.monotonic() + timeout
        while self.lines:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.idle.acquire(timeout=left)
        return True


LOG: list[LogWriter] = []  # the writer, once main() has started it


def log(msg: str) -> None:
    """One line on stderr (through the log thread once main() started it); a broken or
    stuck console must never stop init."""
    line = channels.log_line(PROG, msg)
    if LOG:
        LOG[0].put(line)
    else:
        write_err(line)


def flush_log() -> None:
    """Before init exits or reboots: give the queued lines LOG_FLUSH s to go out."""
    if LOG:
        LOG[0].flush(LOG_FLUSH)


def libc_call(name: str, *args: Any) -> None:
    """Call a libc function through ctypes; OSError with errno when it returns -1."""
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def sig_name(sig: int) -> str:
    """'SIGTERM', or 'signal 36' for a number without a name."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def describe_status(status: int) -> str:
    """A wait status in words: 'exited with status 3', 'killed by SIGKILL (core dumped)'."""
    if os.WIFSIGNALED(status):
        core = " (core dumped)" if os.WCOREDUMP(status) else ""
        return f"killed by {sig_name(os.WTERMSIG(status))}{core}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"changed state (wait status {status:#x})"


def child_pids(parent: int) -> list[int]:
    """Pids whose parent is `parent`, from /proc (reparented orphans included)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        if channels.proc_ppid(int(entry)) == parent:
            found.append(int(entry))
    return found


# --- options -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The command line; see docs/init.md."""
    p = channels.layer_parser(PROG, "hachain layer 1: PID 1 or subreaper")
    p.add_argument("--state-dir", default="/run/hachain")
    p.add_argument("--config", default="/etc/hachain/chain.toml")
    p.add_argument("--restart-delay", type=float, default=1.0)
    p.add_argument("--heartbeat-interval", type=float, default=0.5)
    p.add_argument("--stop-timeout", type=float, default=30.0)
    p.add_argument("--restarter-cmd", type=shlex.split, default=None)
    p.add_argument("--tickler-cmd", type=shlex.split, default=None)
    p.add_argument("--no-tickler", action="store_true")
    # [watchdog] tickler_deaths / tickler_min_run: give up on a tickler that cannot run
    p.add_argument("--tickler-deaths", type=int, default=20)
    p.add_argument("--tickler-min-run", type=float, default=10.0)
    p.add_argument("--tickler-pause", type=float, default=channels.TICKLER_PAUSE_MIN)
    # [chain] persist_dir: where init says why the boot ends when it gives up on the tickler
    p.add_argument("--persist-dir", default=None)
    # [chain] restarter_standby = false: the default restarter command without --standby
    p.add_argument("--no-restarter-standby", action="store_true")
    # [cluster]: also run the cluster layer (`hachain run` adds this; init reads no TOML)
    p.add_argument("--cluster", action="store_true")
    p.add_argument("--cluster-cmd", type=shlex.split, default=None)
    # [chain] oom_score_adj: init's own, which the layers it starts inherit
    p.add_argument("--oom-score-adj", type=int, default=-900)
    return p


def parse_options(argv: list[str], pid1: bool) -> argparse.Namespace:
    """Parse `argv`. As PID 1 never fail: stray kernel arguments are logged and ignored."""
    parser = build_parser()
    if not pid1:
        opts = parser.parse_args(argv)
    else:
        try:
            opts, unknown = parser.parse_known_args(argv)
            if unknown:
                log(f"ignoring unknown arguments: {' '.join(unknown)}")
        except SystemExit:
            log("bad arguments; using the defaults")
            opts = parser.parse_args([])
    if (opts.restart_delay < 0 or opts.heartbeat_interval <= 0 or opts.stop_timeout < 0
            or opts.tickler_deaths < 0 or not opts.tickler_min_run > 0
            or not opts.tickler_pause > 0 or not -1000 <= opts.oom_score_adj <= 1000):
        if not pid1:
            parser.error("delays, timeouts and --tickler-deaths must be >= 0 (heartbeat "
                         "interval, --tickler-min-run and --tickler-pause > 0; "
                         "--oom-score-adj from -1000 to 1000)")
        log("negative delay or timeout; using the defaults")
        opts = parser.parse_args([])
    python = sys.executable or "/usr/bin/python3"
    # The layers start lean (-S, the packages in PYTHONPATH: channels.lean_python) even
    # when init was not (init= on an appliance runs the hachain-init script with site):
    # site's scan of site-packages is paid again at every restart of a layer otherwise,
    # and a killed tickler must be back at the device within the watchdog's timeout.
    opts.pythonpath = None
    lean: list[str] = []
    try:
        opts.pythonpath = channels.lean_pythonpath()
        lean = ["-S"]
    except Exception as e:  # noqa: BLE001 - a broken site module: the layers keep site
        log(f"cannot find the packages' directories ({e}); the layers start with site")
    if opts.restarter_cmd is None:
        # --standby: the restarter keeps an imported copy of itself to fork a replacement
        # from the moment it dies (hachain/restarter/standby.py)
        opts.restarter_cmd = [python, *lean, "-m", "hachain.restarter", "-c", opts.config,
                              *([] if opts.no_restarter_standby else ["--standby"])]
    if opts.tickler_cmd is None:
        opts.tickler_cmd = [python, *lean, "-m", "hachain.watchdog.tickler", "-c",
                            opts.config]
    if opts.cluster_cmd is None:
        opts.cluster_cmd = [python, *lean, "-m", "hachain.cluster", "-c", opts.config]
    return opts


# --- the init process ------------------------------------------------------------------------

class Child:
    """One supervised layer-2 process; `due` is when to (re)start it, None while it runs."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.argv = argv
        self.pid: int | None = None
        self.restarts = 0
        self.started_mono: float | None = None
        self.due: float | None = 0.0
        self.attempts = 0  # spawn attempts, failed ones included
        self.quick_deaths = 0  # deaths (or failed spawns) in a row, each before STABLE_AFTER
        self.armed_deaths = 0  # tickler: deaths in a row that petted the device (see reap)
        self.gave_up = False  # tickler: no more restarts this run (the device expires)

    def next_delay(self, now: float, cap: float) -> float:
        """The delay before the next start, after a death or failed spawn at `now`: 0 for
        the first in a row, then FIRST_BACKOFF doubling, never more than `cap`."""
        ran = now - self.started_mono if self.started_mono is not None else 0.0
        if ran >= STABLE_AFTER:
            self.quick_deaths = 0
        n = self.quick_deaths
        self.quick_deaths += 1
        return 0.0 if n == 0 else min(cap, FIRST_BACKOFF * 2 ** min(n - 1, 30))


class Init:
    """The event loop: signals and timers in, spawns, kills and heartbeats out."""

    def __init__(self, opts: argparse.Namespace, pid1: bool) -> None:
        self.opts = opts
        # which chain run the layers serve: they run this run's configuration snapshot
        self.chain_id = channels.chain_id(os.getpid())
        self.pid1 = pid1
        self.children = [Child("restarter", opts.restarter_cmd)]
        if not opts.no_tickler:
            self.children.append(Child("tickler", opts.tickler_cmd))
        if opts.cluster:  # stopped last, with the leftovers: its lease outlives the stop
            self.children.append(Child("cluster", opts.cluster_cmd))
        self.stopping = False
        self.final_cmd = RB_AUTOBOOT
        self.phase = ""  # "", "restarter", "tickler-start", "tickler", "rest", "done"
        self.phase_deadline = 0.0
        self.tickler_wait = 0.0  # tickler-start: how long the wait for its first beat is
        self.rest_termed: dict[int, float] = {}  # subreaper: pid -> when to SIGKILL it
        self.rest_killed = False  # PID 1: kill(-1, SIGKILL) already sent
        self.reap_due = True  # a signal came since the last reap (step)
        self.hb: channels.HeartbeatWriter | None = None  # created by the first beat()
        # the init lock (main sets it), taken again where state_dir lost it (mend_lock)
        self.lock_fd: int | None = None
        self.lock_said = ""
        self.lock_opened = 0  # the heartbeat file's opens when beat() last looked
        self.next_beat = 0.0
        self.sel = selectors.DefaultSelector()
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        self.sel.register(self.wake_r, selectors.EVENT_READ)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for sig in LOOP_SIGNALS:
            signal.signal(sig, lambda _s, _f: None)  # the wakeup fd does the work
        self.held = self.hold_sockets()
        if os.environ.get(channels.ENV_FAULT_HOOKS) == "1":
            signal.signal(SIG_CRASH, fault_crash)
            signal.signal(SIG_HANG, fault_hang)
            log("fault hooks enabled: SIGRTMIN+1 exits, SIGRTMIN+2 hangs")

    # -- loop --

    def run(self) -> int:
        """Run until shutdown completes; returns the exit status (subreaper only)."""
        while self.phase != "done":
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - init must survive anything
                log(f"error in event loop: {type(e).__name__}: {e}; pausing {ERROR_PAUSE} s")
                time.sleep(ERROR_PAUSE)
        self.beat()
        return 0

    def step(self) -> None:
        """One iteration: wait for a signal or the next timer, then act on everything due."""
        timeout = max(0.0, self.next_deadline() - time.monotonic())
        for _key, _ev in self.sel.select(timeout):
            # a child's exit comes as SIGCHLD through the wakeup fd (several as one, or
            # none with the pipe full: the pipe then wakes us anyway); a wake-up of the
            # timer alone has nothing to reap
            self.reap_due = True
            for sig in self.drain_wakeups():
                self.on_signal(sig)
        if self.reap_due:
            self.reap()
            self.reap_due = False  # (after it: a reap that raised is made again)
        now = time.monotonic()
        if self.stopping:
            self.advance_shutdown(now)
        else:
            for child in self.children:
                if child.due is not None and now >= child.due:
                    self.spawn(child, now)
        if now >= self.next_beat:
            self.beat()
            # on the chain's shared grid: the layers wake together (channels.next_tick)
            self.next_beat = channels.next_tick(now, self.opts.heartbeat_interval)

    def next_deadline(self) -> float:
        """The earliest timer: heartbeat, a pending restart, or a shutdown step."""
        times = [self.next_beat]
        if self.stopping:
            times.append(min(self.phase_deadline, time.monotonic() + SHUTDOWN_POLL))
        else:
            times.extend(c.due for c in self.children if c.due is not None)
        return min(times)

    def drain_wakeups(self) -> bytes:
        """The signal numbers the wakeup fd collected (anything left wakes us again)."""
        try:
            return os.read(self.wake_r, 4096)
        except BlockingIOError:
            return b""

    def on_signal(self, sig: int) -> None:
        """Map a signal to an action; SIGCHLD needs none here (every step reaps)."""
        actions: dict[int, int] = {signal.SIGTERM: RB_AUTOBOOT, signal.SIGINT: RB_AUTOBOOT}
        if self.pid1:
            actions.update({signal.SIGUSR1: RB_HALT_SYSTEM, signal.SIGUSR2: RB_POWER_OFF})
        if sig == signal.SIGCHLD:
            return
        if sig not in actions:
            log(f"{sig_name(sig)} received; ignored")
            return
        self.final_cmd = actions[sig]
        if not self.stopping:
            log(f"{sig_name(sig)} received; stopping the chain")
            self.stopping = True
            self.enter_phase("restarter", time.monotonic())

    # -- children --

    def hold_sockets(self) -> dict[str, socket.socket]:
        """Create the restarter's notify and control sockets once and keep them open, so
        messages and connections queued on them outlive any one restarter; and its stash,
        a socket pair whose queue (descriptors in flight) outlives it too."""
        held: dict[str, socket.socket] = {}
        self.held_paths: dict[str, tuple[str, int]] = {}  # path -> (env name, kind)
        self.held_kept = channels.Kept()
        try:
            os.makedirs(self.opts.state_dir, exist_ok=True)
            for env, name, kind in ((channels.ENV_NOTIFY_FD, channels.NOTIFY_SOCKET,
                                     socket.SOCK_DGRAM),
                                    (channels.ENV_CONTROL_FD, channels.CONTROL_SOCKET,
                                     socket.SOCK_STREAM)):
                path = os.path.join(self.opts.state_dir, name)
                if os.path.exists(path):
                    os.unlink(path)
                s = socket.socket(socket.AF_UNIX, kind)
                if kind == socket.SOCK_DGRAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                old = os.umask(0o177)
                try:
                    s.bind(path)
                finally:
                    os.umask(old)
                if kind == socket.SOCK_STREAM:
                    s.listen(128)
                s.set_inheritable(True)
                held[env] = s
                self.held_paths[path] = (env, kind)
                self.held_kept.note(path)
        except OSError as e:
            log(f"cannot create the restarter's sockets in {self.opts.state_dir}: {e}; "
                "the restarter will make its own")
            for s in held.values():
                s.close()
            held = {}
            self.held_paths, self.held_kept = {}, channels.Kept()
        try:
            pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as e:
            log(f"cannot create the restarter's stash: {e}; a restarter that dies loses "
                "what only it held")
        else:
            for env, s in zip((channels.ENV_STASH_FD, channels.ENV_STASH_PEER_FD), pair,
                              strict=True):
                s.set_inheritable(True)
                held[env] = s
        return held


    def mend_held(self) -> None:
        """Before a restarter starts: a held socket whose path was removed or replaced
        (state_dir cleaned by hand; the last restarter then made one of its own there,
        gone with it) is made again, so the new restarter gets one its services and
        clients reach. What the old one queued is lost with its path."""
        for path in self.held_kept.lost():
            env, kind = self.held_paths[path]
            try:
                s = channels.bind_unix(path, kind, 0o600)
                if kind == socket.SOCK_DGRAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                else:
                    s.listen(128)
                s.set_inheritable(True)
            except OSError as e:
                log(f"{path} was removed and cannot be made again: {e}; the restarter "
                    "will make its own")
                continue
            self.held[env].close()
            self.held[env] = s
            self.held_kept.note(path)
            log(f"{path} was removed: made again for the restarter")

    def child_env(self, child: Child) -> dict[str, str]:
        """The environment a layer-2 child gets: ours plus the chain's variables."""
        env = dict(os.environ)
        env.setdefault("PATH", DEFAULT_PATH)
        env[channels.ENV_CONFIG] = self.opts.config
        env[channels.ENV_STATE_DIR] = self.opts.state_dir
        env[channels.ENV_CHAIN_ID] = self.chain_id
        env[ENV_LAYER_RESTARTS] = str(child.restarts)
        env[channels.ENV_INIT_PID] = str(os.getpid())  # so an orphaned layer can tell
        if self.opts.pythonpath is not None:  # the layers' -S (parse_options)
            env["PYTHONPATH"] = self.opts.pythonpath
        for name, sock in self.held.items():
            if child.name == "restarter":
                env[name] = str(sock.fileno())
            else:
                env.pop(name, None)
        env.pop(channels.ENV_HELD_IDS, None)
        if child.name == "restarter" and self.held_paths:
            env[channels.ENV_HELD_IDS] = self.held_kept.encode(
                {name: path for path, (name, _kind) in self.held_paths.items()})
        return env

    def spawn(self, child: Child, now: float) -> None:
        """Start `child`; on failure log it and try again after the fixed delay."""
        if child.gave_up and not self.stopping:
            log(f"trying the tickler again, {self.opts.tickler_pause:g} s after giving up "
                "on it: no watchdog reset came, so it had left no device armed")
            child.gave_up = False
            self.record_boot_end(None)
        child.restarts = child.attempts
        child.attempts += 1
        if child.name == "restarter" and self.held:
            self.mend_held()
        try:
            closes = [] if child.name == "restarter" else [
                (os.POSIX_SPAWN_CLOSE, s.fileno()) for s in self.held.values()]
            pid = os.posix_spawnp(
                child.argv[0], child.argv, self.child_env(child), setsid=True,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, *LOOP_SIGNALS), setsigmask=(),
                file_actions=closes)
        except Exception as e:  # noqa: BLE001 - a bad command must not stop init
            child.started_mono = None
            delay = max(child.next_delay(now, self.opts.restart_delay), FIRST_BACKOFF)
            child.due = now + delay
            log(f"cannot start {child.name}: {e}; retrying in {delay:g} s")
            return
        child.pid, child.started_mono, child.due = pid, now, None
        log(f"started {child.name} (pid {pid}, restarts {child.restarts})")

    def reap(self) -> None:
        """Collect every exited child and orphan; schedule restarts of our layers."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.rest_termed.pop(pid, None)
            child = next((c for c in self.children if c.pid == pid), None)
            if child is None:
                continue  # an orphan of the tree: reaping it is all there is to do
            now = time.monotonic()
            ran = now - child.started_mono if child.started_mono is not None else 0.0
            delay = child.next_delay(now, self.opts.restart_delay)
            child.pid, child.started_mono = None, None
            if self.stopping:
                log(f"{child.name} (pid {pid}) {describe_status(status)}")
            elif child.name == "tickler" and self.tickler_cannot_run(child, status, ran):
                child.due, child.gave_up = now + self.opts.tickler_pause, True
                log(f"tickler (pid {pid}) {describe_status(status)}: it died "
                    f"{child.armed_deaths} times in a row, each within "
                    f"{self.opts.tickler_min_run:g} s of its start and each petting the "
                    "watchdog by its close; not restarting it again: the watchdog resets "
                    "this machine within its timeout (--tickler-deaths "
                    f"{self.opts.tickler_deaths}); if none comes, the tickler is tried "
                    f"again in {self.opts.tickler_pause:g} s")
                self.record_boot_end(
                    f"the tickler died {child.armed_deaths} times in a row, each within "
                    f"{self.opts.tickler_min_run:g} s of its start (the last: "
                    f"{describe_status(status)}); init stopped restarting it and let the "
                    "watchdog expire")
            else:
                child.due = now + delay
                log(f"{child.name} (pid {pid}) {describe_status(status)}; "
                    + (f"restarting in {delay:g} s" if delay else "restarting now"))

    def record_boot_end(self, detail: str | None) -> None:
        """With a `detail`: the boot record says this boot ends because the tickler
        could not run, so the next boot can tell (`hachain status`, the boot-loop count);
        with None: it goes on after all (the reason goes back to "unknown", unless a
        tickler has written another since). Only a record the chain has opened this boot
        is written (in persist_dir(): the layers open it). Written by a thread of its
        own: the persist dir is a disk that may be slow or hung, and the loop, whose
        heartbeat the gate reads, must not wait on it. The boot-record module is imported
        there too, and only then: init keeps nothing of it otherwise."""
        def write() -> None:
            persist_dir = "?"
            try:
                signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
                from hachain import bootrecord
                persist_dir = self.persist_dir()
                if not os.path.exists(os.path.join(persist_dir, bootrecord.RECORD)):
                    log(f"no boot record in {persist_dir} to say why this boot ends")
                    return
                boot_id = bootrecord.current_boot_id()
                if detail is None:
                    bootrecord.set_reason(persist_dir, boot_id, bootrecord.UNKNOWN, [],
                                          time.time(), replacing=bootrecord.TICKLER_FAILED,
                                          log=log)
                else:
                    bootrecord.set_reason(persist_dir, boot_id, bootrecord.TICKLER_FAILED,
                                          [detail], time.time(), log=log)
            except Exception as e:  # noqa: BLE001 - the record is lost, nothing else
                log(f"cannot write the boot record in {persist_dir}: {e}")
        try:
            _thread.start_new_thread(write, ())
        except RuntimeError as e:
            log(f"cannot write the boot record: no thread: {e}")

    def persist_dir(self) -> str:
        """The chain's persist dir: --persist-dir (`hachain run` and the simulated machine
        pass it), else $HACHAIN_PERSIST_DIR, else `[chain] persist_dir` of --config, else
        the default. Init reads no TOML in its loop; this runs only on the record's thread,
        and a file it cannot parse means the default. One that cannot be read (a FIFO, or
        anything but a regular file, is not waited on), or a symbolic link to nothing,
        means the default with one line."""
        if self.opts.persist_dir:
            return str(self.opts.persist_dir)
        if os.environ.get(channels.ENV_PERSIST_DIR):
            return os.environ[channels.ENV_PERSIST_DIR]
        try:
            import tomllib
            raw = channels.read_small(self.opts.config, regular=True)
            chain = tomllib.loads(raw.decode()).get("chain")
            value = chain.get("persist_dir") if isinstance(chain, dict) else None
            if isinstance(value, str) and value:
                return value
        except FileNotFoundError:  # no file is the defaults; a dangling link is a mistake
            if os.path.islink(self.opts.config):
                try:
                    target = os.readlink(self.opts.config)
                except OSError:
                    target = "?"
                log(f"{self.opts.config}: a symbolic link to {target}, which does not exist: "
                    f"ignored, the persist dir is {channels.DEFAULT_PERSIST_DIR}")
        except OSError as e:  # a FIFO, a directory (read_small says which), EACCES, ...
            log(f"{self.opts.config}: {e.strerror or e}: ignored, the persist dir is "
                f"{channels.DEFAULT_PERSIST_DIR}")
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            pass
        return channels.DEFAULT_PERSIST_DIR

    def tickler_cannot_run(self, child: Child, status: int, ran: float) -> bool:
        """Count a tickler's death that petted the device (one that may have opened it:
        killed by a signal, or an exit status not in TICKLER_UNTOUCHED) before it ran
        --tickler-min-run s; a run that long starts the count again. True once
        --tickler-deaths are counted in a row (never with 0)."""
        touched = not (os.WIFEXITED(status) and os.WEXITSTATUS(status) in TICKLER_UNTOUCHED)
        if ran >= self.opts.tickler_min_run:
            child.armed_deaths = 0
        elif touched:
            child.armed_deaths += 1
        return 0 < self.opts.tickler_deaths <= child.armed_deaths

    def mend_lock(self) -> None:
        """The init lock again, where state_dir lost it (removed by hand): without it a
        second `hachain run` would not see this chain. One fstat per heartbeat: the file
        removed, or another put in its place, has no link left (as the heartbeat
        writer's own file; a state_dir moved away whole takes both along, and the gate
        then fails on the heartbeat missing at its path)."""
        if self.lock_fd is None:
            return
        try:
            if os.fstat(self.lock_fd).st_nlink > 0:
                return
        except OSError:
            pass
        path = os.path.join(self.opts.state_dir, channels.INIT_LOCK)
        try:
            os.makedirs(self.opts.state_dir, exist_ok=True)
            fd = channels.take_init_lock(self.opts.state_dir)
        except (OSError, channels.ChainRunning) as e:
            if str(e) != self.lock_said:
                self.lock_said = str(e)
                log(f"warning: {path} was removed and cannot be taken again: {e}")
            return
        os.close(self.lock_fd)
        self.lock_fd = fd
        self.lock_said = ""
        log(f"{path} was removed: taken again")

    def beat(self) -> None:
        """Write the heartbeat; a missing or unwritable state dir is retried next time.
        The init lock is looked at every LOCK_LOOK_EVERY beats, and at once when the
        heartbeat's own file had to be made again (state_dir removed)."""
        if self.hb is None:
            self.mend_lock()
            try:
                self.hb = channels.HeartbeatWriter(self.opts.state_dir, "init")
            except OSError as e:
                log(f"cannot create heartbeat dir in {self.opts.state_dir}: {e}")
                return
        self.hb.beat({
            "pid1": self.pid1,
            "stopping": self.stopping,
            "children": {c.name: {"pid": c.pid, "restarts": c.restarts,
                                  "started_mono": c.started_mono,
                                  **({"gave_up": True} if c.gave_up else {})}
                         for c in self.children},
        })
        if self.hb.opened != self.lock_opened or self.hb.seq % LOCK_LOOK_EVERY == 0:
            self.lock_opened = self.hb.opened
            self.mend_lock()

    # -- shutdown --

    def enter_phase(self, phase: str, now: float) -> None:
        """Start a shutdown phase: SIGTERM the layer it names and arm its deadline."""
        self.phase = phase
        grace = min(self.opts.stop_timeout, MAX_GRACE)
        self.phase_deadline = now + (self.opts.stop_timeout if phase == "restarter" else grace)
        child = next((c for c in self.children if c.name == phase), None)
        if child is not None and child.pid is not None:
            log(f"stopping {child.name} (pid {child.pid}) with SIGTERM")
            self.signal_pid(child.pid, signal.SIGTERM)
        elif phase == "rest" and self.pid1:
            log("sending SIGTERM to all processes")
            self.signal_pid(-1, signal.SIGTERM)

    def advance_shutdown(self, now: float) -> None:
        """Move through restarter -> (tickler-start) -> tickler -> rest -> done as each
        phase finishes."""
        if self.phase in ("restarter", "tickler"):
            child = next((c for c in self.children if c.name == self.phase), None)
            if child is not None and child.pid is not None:
                if now < self.phase_deadline:
                    return
                log(f"{child.name} (pid {child.pid}) did not stop in time; SIGKILL")
                self.signal_pid(child.pid, signal.SIGKILL)
            if self.phase == "restarter":
                self.before_tickler_stop(now)
            else:
                self.enter_phase("rest", now)
            self.advance_shutdown(now)  # a layer that is not running needs no wait
        elif self.phase == "tickler-start":
            child = next(c for c in self.children if c.name == "tickler")
            if child.pid is None:  # reap() said how it ended
                log("the tickler ended before it was stopped; the watchdog stays as it "
                    "left it")
            elif not self.tickler_has_beaten(child):
                if now < self.phase_deadline:
                    return
                log(f"tickler (pid {child.pid}) did not open the watchdog within "
                    f"{self.tickler_wait:.3g} s; stopping it anyway")
            self.enter_phase("tickler", now)
            self.advance_shutdown(now)
        elif self.phase == "rest":
            if self.pid1:
                self.stop_rest_pid1(now)
            else:
                self.stop_rest_subreaper(now)

    def before_tickler_stop(self, now: float) -> None:
        """Only the tickler disarms the watchdog (the magic close of its orderly stop), and
        only once it has the device open: a tickler stopped before its open exits without
        touching it. When this run's tickler ran before and may have left the device armed
        (one that dies closes it without the magic character), the one that gets the
        SIGTERM must first have opened it, seen by its first heartbeat: one between
        restarts is started once more, one just restarted is waited for. The wait ends at
        --stop-timeout, or sooner, once the tickler has been starting for the device's
        timeout (from the last heartbeat): by then the device left armed has fired, and a
        tickler that opened it and failed before its first heartbeat (it stays up without
        petting, tickler.fail_unpetted) must get the SIGTERM before it fires. A crash
        still disarms nothing; nowayout is the tickler's to honour."""
        child = next((c for c in self.children if c.name == "tickler"), None)
        hb = channels.read_heartbeat(self.opts.state_dir, "tickler", regular=True)
        if (child is None or child.attempts == 0  # --no-tickler, or never started
                or (hb is not None and hb.extra.get("armed") is False)):  # "none", disarmed
            self.enter_phase("tickler", now)
            return
        if child.pid is None:
            log("tickler is not running: starting it once, so that its orderly stop "
                "disarms the watchdog")
            self.spawn(child, now)
            if child.pid is None:  # spawn() logged why
                self.enter_phase("tickler", now)
                return
        elif child.restarts == 0 or self.tickler_has_beaten(child, hb):
            self.enter_phase("tickler", now)  # the first one, or one with the device open
            return
        deadline = now + self.opts.stop_timeout
        timeout = hb.extra.get("timeout") if hb is not None else None
        if (isinstance(timeout, (int, float)) and timeout > 0
                and child.started_mono is not None):
            deadline = min(deadline, child.started_mono + timeout)
        if deadline <= now:
            self.enter_phase("tickler", now)
            return
        self.tickler_wait = deadline - now
        log(f"waiting up to {self.tickler_wait:.3g} s for tickler (pid {child.pid}) to "
            "open the watchdog before stopping it")
        self.phase = "tickler-start"
        self.phase_deadline = deadline

    def tickler_has_beaten(self, child: Child,
                           hb: channels.Heartbeat | None = None) -> bool:
        """True once the tickler process `child` runs has written its heartbeat (it does
        from its loop, after the open); `hb`: the heartbeat just read, else read here."""
        if hb is None:
            hb = channels.read_heartbeat(self.opts.state_dir, "tickler", regular=True)
        return (hb is not None and hb.pid == child.pid and child.started_mono is not None
                and hb.mono >= child.started_mono)

    def stop_rest_pid1(self, now: float) -> None:
        """PID 1: everything in the namespace is ours; TERM went out, KILL after the grace."""
        if not self.have_children():
            self.phase = "done"
        elif now >= self.phase_deadline:
            if self.rest_killed:
                log("processes survive SIGKILL (uninterruptible?); going down anyway")
                self.phase = "done"
                return
            log("sending SIGKILL to all processes")
            self.signal_pid(-1, signal.SIGKILL)
            self.rest_killed = True
            self.phase_deadline = now + MAX_GRACE

    def stop_rest_subreaper(self, now: float) -> None:
        """Subreaper: SIGTERM each child once (orphans included), SIGKILL it after the grace."""
        if not self.have_children():
            self.phase = "done"
            return
        grace = min(self.opts.stop_timeout, MAX_GRACE)
        for pid in child_pids(os.getpid()):
            if pid not in self.rest_termed:
                log(f"stopping leftover pid {pid} with SIGTERM")
                self.signal_pid(pid, signal.SIGTERM)
                self.rest_termed[pid] = now + grace
            elif now >= self.rest_termed[pid]:
                log(f"leftover pid {pid} did not stop in time; SIGKILL")
                self.signal_pid(pid, signal.SIGKILL)
                self.rest_termed[pid] = now + grace  # again later if it is stuck in D
        self.phase_deadline = min(self.rest_termed.values(), default=now + SHUTDOWN_POLL)

    def have_children(self) -> bool:
        """True while waitpid says some child (exited or not) remains."""
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return True

    @staticmethod
    def signal_pid(pid: int, sig: int) -> None:
        """kill(2) that tolerates a process already gone."""
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except OSError as e:
            log(f"kill({pid}, {sig_name(sig)}) failed: {e}")


# --- fault-injection hooks (only with HACHAIN_FAULT_HOOKS=1) ---------------------------------

def fault_crash(_sig: int, _frame: object) -> None:
    """SIGRTMIN+1: die at once. As PID 1 this is a kernel panic, which is the point."""
    log(f"fault hook: exiting with status {FAULT_EXIT_STATUS}")
    flush_log()
    os._exit(FAULT_EXIT_STATUS)


def fault_hang(_sig: int, _frame: object) -> None:
    """SIGRTMIN+2: stop the loop forever: no heartbeat, no reaping, no restarts."""
    log("fault hook: hanging forever")
    signal.set_wakeup_fd(-1)
    for sig in LOOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL if sig == signal.SIGCHLD else signal.SIG_IGN)
    while True:  # SIGRTMIN+1 still works from here: the handler runs between pauses
        signal.pause()


# --- PID 1 setup and the end ----------------------------------------------------------------

def setup_pid1() -> None:
    """Mount the kernel filesystems that are missing, fix stdio, route ctrl-alt-del."""
    for fstype, target, flags, data in PID1_MOUNTS:
        try:
            if os.path.ismount(target):
                continue
            os.makedirs(target, mode=0o755, exist_ok=True)
            libc_call("mount", fstype.encode(), target.encode(), fstype.encode(),
                      ctypes.c_ulong(flags), data.encode())
            log(f"mounted {fstype} on {target}")
        except Exception as e:  # noqa: BLE001
            log(f"cannot mount {fstype} on {target}: {e}")
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                os.dup2(os.open("/dev/null", os.O_RDWR), fd)
            except OSError:
                pass
    try:
        libc_call("reboot", ctypes.c_int(RB_DISABLE_CAD))  # ctrl-alt-del becomes SIGINT
    except OSError as e:
        log(f"cannot disable ctrl-alt-del (expected in a PID namespace): {e}")


def setup_subreaper() -> None:
    """Make orphans of our subtree come back to us instead of the real PID 1."""
    try:
        libc_call("prctl", ctypes.c_int(PR_SET_CHILD_SUBREAPER), ctypes.c_ulong(1),
                  ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    except OSError as e:
        log(f"cannot become a subreaper; orphans will go to PID 1: {e}")


def final_reboot(cmd: int) -> None:
    """PID 1's last act: sync and reboot(2). Returns only if the kernel refused."""
    names = {RB_AUTOBOOT: "reboot", RB_HALT_SYSTEM: "halt", RB_POWER_OFF: "power off"}
    log(f"all processes stopped; sync and {names.get(cmd, hex(cmd))}")
    # The tickler has disarmed the watchdog by now: a sync that never returns (a dead NFS
    # server, a disk in error recovery) would hang the box for good. It gets SYNC_LIMIT.
    busy = _thread.allocate_lock()
    busy.acquire()

    def sync() -> None:
        os.sync()
        busy.release()
    _thread.start_new_thread(sync, ())
    if not busy.acquire(timeout=SYNC_LIMIT):
        log(f"sync did not return within {SYNC_LIMIT:g} s: {names.get(cmd, hex(cmd))} "
            "without it (unwritten data may be lost)")
    flush_log()  # reboot(2) does not wait for a thread
    try:
        libc_call("reboot", ctypes.c_int(cmd))
    except OSError as e:
        log(f"reboot(2) failed: {e}; exiting")


def init_lock(state_dir: str, pid1: bool) -> int | bool | None:
    """The chain's claim on its state directory: the lock `hachain run` took and handed
    over across its exec, else taken here. False: another chain's init holds it (a
    subreaper then starts nothing; PID 1 goes on, saying so). None: no lock to be had."""
    got = os.environ.pop(channels.ENV_INIT_LOCK_FD, "")
    if got.isdigit():
        try:
            os.set_inheritable(int(got), False)  # not the layers': init's alone
            return int(got)
        except OSError:
            pass
    try:
        os.makedirs(state_dir, exist_ok=True)
        return channels.take_init_lock(state_dir)
    except channels.ChainRunning as e:
        if pid1:
            log(f"warning: {e}: another chain runs on {state_dir}")
            return None
        log(f"a chain already runs on {state_dir} (its init is pid {e.holder}); nothing "
            "started")
        return False
    except OSError as e:
        log(f"warning: cannot take the chain's lock in {state_dir}: {e}; going on without it")
        return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of `hachain-init`; as PID 1 it only returns if reboot(2) fails."""
    pid1 = os.getpid() == 1
    if not LOG:
        try:
            LOG.append(LogWriter())
        except Exception as e:  # noqa: BLE001 - no thread: write from the loop, as before
            log(f"cannot start the log thread: {e}; writing stderr from the loop")
    opts = parse_options(sys.argv[1:] if argv is None else argv, pid1)
    if pid1:
        setup_pid1()
    else:
        setup_subreaper()
    # Before any layer starts: they inherit it (a machine out of memory loses a service
    # first). PID 1 of the machine is never chosen anyway; a subreaper's init may be.
    if (problem := channels.set_own_oom_score_adj(opts.oom_score_adj)) is not None:
        log(f"warning: {problem}")
    lock = init_lock(opts.state_dir, pid1)
    if lock is False:
        flush_log()
        return 1
    while True:
        try:
            init = Init(opts, pid1)
            break
        except Exception as e:  # noqa: BLE001 - e.g. no fds left; keep trying
            log(f"cannot set up the event loop: {e}; pausing {ERROR_PAUSE} s")
            time.sleep(ERROR_PAUSE)
    init.lock_fd = None if lock is None else int(lock)
    status = init.run()
    if pid1:
        final_reboot(init.final_cmd)
    else:
        log("all processes stopped; exiting")
    flush_log()
    return status


if __name__ == "__main__":
    sys.exit(main())
