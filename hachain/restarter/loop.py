"""The restarter's event loop: turns the world into events, carries out actions.

Owns: the epoll loop (pidfds, readiness fds, the notify socket, the control socket, a
signal wakeup fd), the timer heap, fork/exec, checks, persistence, the heartbeat. Must
not: decide anything about a service. What the world does becomes an event pushed into
the core (restarter/core.py: dependencies, adoption, admin state, and through it
`states.step`); `run_core` then carries out the core's effects one at a time, in order,
and pushes back what they teach (a spawned pid). Nothing here re-enters the core.

No polling: an idle restarter wakes only for its own heartbeat. Service output goes
through pipes to the logger process (`logpipe`, docs/logs.md), never through this loop.
"""

from __future__ import annotations

import fcntl
import gc
import heapq
import math
import os
import resource
import select
import selectors
import signal
import socket
import time
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hachain import bootrecord, channels, prestart
from hachain.configtypes import Config, ServiceConfig
from hachain.restarter import (
    core,
    fdstore,
    logpipe,
    notify,
    policy,
    probes,
    reloads,
    spawn,
    stash,
    states,
)
from hachain.restarter.persist import RuntimeRecord, Store
from hachain.restarter.policy import ExitStatus
from hachain.restarter.states import Ev, State, Svc, Timer

if TYPE_CHECKING:
    from hachain.restarter.machine import MachineChecks

STORM_WINDOW = 10.0
EXIT_BATCH = 8  # exits handled per loop round
# idle heartbeats _clone3.wait writes in a row before the Python round runs once again
COMPILED_BEATS = 8
# An adopted main process (not our child: init reaps it) has exited but is not reaped
# yet: its exit status comes with the reap, which the pidfd tells (POLLHUP). Waited for
# this long at most, then the exit goes on with the status unknown.
REAP_WAIT = 2.0
TIMER_BATCH = 16  # timers fired per loop round (1000 backoffs may end at once)
START_BATCH = 32  # queued starts per loop round
HOLD_SHARE = 4  # HeldOutput: at most this share of the file limit
# Restart work (exits and timers, each of which may spawn) stops for the round once the
# round has run this long, or as soon as a control request or a signal waits, so the loop
# polls them again and the heartbeat is written on time however many services crash-loop.
# See round_budget(). Queued starts (start-up, reload) keep their START_BATCH.
ROUND_BUDGET_MAX = 0.05
_SIGNAMES = frozenset(int(x) for x in signal.Signals)
# a service in these states runs nothing: its credentials' copies are removed
_NO_CREDENTIALS = frozenset({State.STOPPED, State.FAILED, State.MAINTENANCE, State.SKIPPED})
CHILD = -1  # in pidfds: the main process is our child, watched through SIGCHLD
ARM_BATCH = 64  # compiled restarts made again per wait at most (_rearm)
_PRIORITY = {"signal": 0, "control-listen": 0, "control-conn": 0}
_CHECK_TIMEOUT = {"ready": Timer.READY_CHECK_TIMEOUT, "health": Timer.HEALTH_CHECK_TIMEOUT}


_held: list[bytes] | None = None  # log lines of the loop iteration in progress
# stderr, never waited on (a console or journald that stops reading must not stop the
# loop: channels.ErrOut); the standby's too, and its worker's, which inherits it
ERR = channels.ErrOut("hachain-restarter")


EXIT_WRITE_WAIT = 5.0  # s the last durable writes (admin.json) get when the restarter exits


def log(msg: str) -> None:
    """One line to stderr. Inside a loop iteration it is held and written, in order, when
    the iteration ends: a restart's replacement is spawned before its log lines are
    written (stderr may be a slow pipe or terminal)."""
    line = channels.log_line("hachain-restarter", msg)
    if _held is not None:
        _held.append(line)
        return
    ERR.write(line)


def log_now(msg: str) -> None:
    """One line to stderr at once, from any thread (the persist writer's)."""
    ERR.write(channels.log_line("hachain-restarter", msg))


def hold_log() -> None:
    global _held
    if _held is None:
        _held = []


def release_log() -> None:
    """Write the held lines (one write) and stop holding."""
    global _held
    lines, _held = _held, None
    if lines:
        ERR.write(b"".join(lines))
    elif ERR.pending:
        ERR.retry()



_PIDNS: list[str | None] = []


def _own_pidns() -> str | None:
    """This process's PID namespace, as /proc/self/ns/pid names it (read once)."""
    if not _PIDNS:
        try:
            _PIDNS.append(os.readlink("/proc/self/ns/pid"))
        except OSError:
            _PIDNS.append(None)
    return _PIDNS[0]


def take_priority(nice: int) -> str | None:
    """Run at `nice` (<= 0), with SCHED_RESET_ON_FORK so that every process this one
    spawns (the services, their checks) starts at nice 0 again, whichever way it is
    spawned. A warning line when it is refused (not root, no CAP_SYS_NICE), else None."""
    if nice == 0:
        return None
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER | os.SCHED_RESET_ON_FORK, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as e:
        return (f"cannot run at restarter_nice {nice} ({e.strerror or e}): control requests "
                "and heartbeats may wait behind other work on a busy host")
    return None


def in_pre_start(name: str, pid: int) -> bool:
    """Is `pid` still the pre_start program of `name` (its last argument names it; the
    exec of the service's command replaces it)?"""
    try:
        raw = channels.read_small(f"/proc/{pid}/cmdline")
    except OSError:
        return False
    return raw.rstrip(b"\0").rsplit(b"\0", 1)[-1] == f"hachain-pre-start:{name}".encode()


class Launched:
    """A service process just started (_launch): what spawn returned, the read end of its
    output pipe (for the logger), the write end the restarter holds while the process
    runs (None: not held; see HeldOutput), and the configuration it was started with."""

    __slots__ = ("spawned", "out_r", "out_w", "cfg")

    def __init__(self, spawned: spawn.Spawned, out_r: int, out_w: int | None,
                 cfg: ServiceConfig) -> None:
        self.spawned = spawned
        self.out_r = out_r
        self.out_w = out_w
        self.cfg = cfg

    def close(self) -> None:
        """Close what the restarter holds of a process it will not watch."""
        os.close(self.out_r)
        if self.out_w is not None:
            os.close(self.out_w)
        if self.spawned.ready_fd is not None:
            os.close(self.spawned.ready_fd)


class Skip:
    """A start not made: the service's `condition` did not hold (why: the check that
    failed and what it found), for the core's CONDITION_FAILED."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


Started = Launched | Skip | tuple[str, bool]  # _launch: or why not (reason, transient)


class HeldOutput:
    """The write end of each running service's output pipe, held by the restarter until
    that process's exit has been handled.

    Why: when a service dies, the kernel closes its files before it tells the parent, and
    closing the last write end of the pipe wakes the logger with an end of file. Queued on
    the CPU the service died on, the logger then often ran before the restarter and held
    up the restart by 100-200 us (docs/benchmarks.md, thirteenth session). With a write
    end still open here, the exit wakes only the restarter; the end of file comes when
    the restarter closes its copy, after the replacement is started.

    Where a spawned child copies the restarter's whole descriptor table (the fallback
    spawn, Linux < 5.9: spawn.descriptors_not_copied() is False) only in a chain of at
    most spawn.KEEP_SERVICES services, as the cgroup descriptors Cgroups.kept holds:
    there each descriptor the restarter holds costs each spawn 0.2-0.4 us (the child
    copies it and closes it at exec), some 300 us per spawn with 1000 services. And at
    most a quarter of the file limit (beyond that a pipe is not held)."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}
        self.room = max(0, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // HOLD_SHARE)
        self.keep = True

    def keep_for(self, services: int) -> None:
        """Hold pipes only where spawn.keep_descriptors_for says so (a reload that grows
        the chain past that lets go of those held)."""
        self.keep = spawn.keep_descriptors_for(services)
        if not self.keep:
            for name in list(self.fds):
                self.hold(name, None)

    def may_hold(self) -> bool:
        return self.keep and len(self.fds) < self.room

    def hold(self, name: str, fd: int | None) -> None:
        old = self.fds.pop(name, None)
        if old is not None:
            os.close(old)
        if fd is not None:
            self.fds[name] = fd

    def release(self, fd: int | None) -> None:
        if fd is not None:
            os.close(fd)


class AlreadyRunning(Exception):
    pass


def take_lock(state_dir: str, wait: bool = False) -> int:
    """Take the one-restarter-per-chain lock of `state_dir` (an flock the kernel releases
    when its holder dies) and write our pid in it; its fd. Without `wait`, AlreadyRunning
    when another restarter holds it; with it, say so and wait until that one is gone."""
    path = os.path.join(state_dir, channels.RESTARTER_LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        why = f"another restarter is already running on {state_dir} (pid {holder})"
        if not wait and holder.isdigit() and \
                channels.proc_state(int(holder)) in (None, "Z", "X"):
            # That restarter is gone; a process it forked (its logger, before that has
            # closed what it inherited, or a spawn's child before its exec) holds the
            # lock a moment longer: wait for it, not exit (a busy host delays that
            # child's first steps: tests/test_conditions.py met it in CI).
            wait = True
            why = f"the restarter that held the lock of {state_dir} (pid {holder}) is " \
                "gone, and a process it forked still holds it"
        if not wait:
            os.close(fd)
            raise AlreadyRunning(why) from None
        log(f"{why}; waiting for it to end")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Restarter:
    def __init__(self, cfg: Config, layer_restarts: int = 0,
                 lock_fd: int | None = None, plan: core.Plan | None = None) -> None:
        """`lock_fd`: the restarter lock, already taken; `plan`: core.make_plan of these
        very services, already made (both by a standby's worker: restarter/standby.py)."""
        self.cfg = cfg
        self.core = core.Core(plan if plan is not None else core.make_plan(cfg.services))
        self.state_dir = cfg.chain.state_dir
        os.makedirs(self.state_dir, exist_ok=True)
        # an adopted service holds a pidfd (and a starting one a readiness fd): 1000 fit
        channels.raise_fd_limit()
        spawn.reserve_descriptor_slots()  # first: the lowest free descriptors are low now
        self._lock_fd = self._take_lock(lock_fd)
        self.store = Store(self.state_dir, cfg.chain.persist_dir, log=log_now)
        self.log_dir = cfg.chain.service_log_dir
        self.cgroups = spawn.Cgroups.from_config(cfg.chain.cgroup_root,
                                                 channels.cgroup_name(self.state_dir))
        if self.cgroups.problem:
            log(f"warning: {self.cgroups.problem}")
        self.cgroups.keep_for(len(cfg.services))
        try:
            self.cgroups.claim(os.path.realpath(self.state_dir))
        except spawn.CgroupInUse as e:
            os.close(self._lock_fd)
            raise AlreadyRunning(str(e)) from None
        self.pidfds: dict[str, tuple[int, int]] = {}  # name -> (pid, pidfd or CHILD)
        self.ready_fds: dict[str, int] = {}
        self.by_pid: dict[int, str] = {}
        self.status_text: dict[str, str] = {}
        self.probes: dict[tuple[str, str], probes.Probe] = {}
        self.children_pending = False  # exited children left for the next round
        self.cluster_seen: float | None = None  # mono of the cluster heartbeat last read
        self.health_detail: dict[str, str] = {}
        self.timers: list[tuple[float, int, str, Timer]] = []
        self.timer_live: dict[tuple[str, Timer], int] = {}
        self.seq = 0
        self.dirty: set[str] = set()
        self.admin_dirty = False
        self.admin: dict[str, dict[str, str]] = {}  # as last built for admin.json
        self.restart_times: deque[float] = deque()
        self.init = channels.init_from_env()
        self.orphaned: str | None = None  # why init is gone, once a heartbeat saw it
        self.max_lag = 0.0  # the loop's own lag: longest round, heartbeat lateness
        self.timer_lag = 0.0  # how late service timers fired (the paced backlog)
        self.progress = 0  # work items handled: the gate's "busy, not stuck" evidence
        self.beat_due = 0.0
        self.beat_fresh = False  # the last heartbeat says how things stand now
        # (dev, inode, mtime ns) of state_dir at that heartbeat
        self.state_dir_seen: tuple[int, int, int] | None = None
        self.compiled_beats = 0  # idle heartbeats _clone3.wait wrote (_compiled_beat)
        self.round_end = 0.0  # restart work of the current round stops at this time
        self.round_floor = 0.0  # ... and no waiting request cuts it short before this
        self.budget = round_budget(cfg)
        self.beats = 0
        self.logs = logpipe.LogPipes(self.state_dir, self.log_dir, log,
                                     cfg.chain.heartbeat_interval)
        self.sel = selectors.EpollSelector()
        self.machine: MachineChecks | None = None  # [check.NAME] (made when there is one)
        self.checks_held: set[str] = set()  # checks a rescue boot holds out of the gate
        self.boot_id = ""  # this kernel boot's (read when a machine check needs it)
        self.hb = channels.HeartbeatWriter(self.state_dir, "restarter", layer_restarts)
        self._sig_r, self._sig_w = socket.socketpair()
        for s in (self._sig_r, self._sig_w):
            s.setblocking(False)
        self.pending_signals: list[int] = []
        self._start_times: dict[str, int | None] = {}  # /proc start time of each main pid
        self._procs_seen: dict[str, list[int]] = {}  # during adoption: each cgroup.procs
        self._found: dict[str, int] = {}  # forking: pidfd of the main pid being reported
        # adopted exits waiting for init's reap (REAP_WAIT): pidfd -> (name, deadline),
        # those pidfds in an epoll of their own that reports only their POLLHUP
        self._reaping: dict[int, tuple[str, float]] = {}
        self._reap_ep = select.epoll()
        self._queued: dict[int, str] = {}  # during adoption: sender pid -> MAINPID= queued
        self._queued_from: dict[int, str] = {}  # ... and the service of each sender used
        self._early: list[notify.Notification] = []  # during adoption: all read so far
        self.notify_warnings = notify.WarnQuota()  # lines about bad notify messages
        self._main_guess: dict[str, int] = {}  # forking: a cgroup guess to confirm
        self._zombie: int | None = None  # the exited main process not yet reaped
        self._limited: set[str] = set()  # pids_max / memory_max written (_apply_limits)
        self._env_notes: dict[str, tuple[str, ...]] = {}  # env_file lines left out, as said
        self.launch_status: dict[str, ExitStatus] = {}  # forking: how the launcher ended
        self.launch_leftovers: dict[str, frozenset[int]] = {}  # forking: in its cgroup before
        notify_fd = _inherited_fd(channels.ENV_NOTIFY_FD)
        self.notify = notify.NotifySocket(os.path.join(self.state_dir, channels.NOTIFY_SOCKET),
                                          notify_fd)
        self.sel.register(self.notify.fileno(), selectors.EVENT_READ, ("notify", None))
        self._notify_poll = select.poll()  # _on_exit: anything sent before the exit?
        self._notify_poll.register(self.notify.fileno(), select.POLLIN)
        # replacements started ahead of their exit's effects, until the Spawn takes them
        self._ahead: dict[str, Started] = {}
        # The compiled restart (_rearm, _wait): main pid -> (its cgroup.events descriptor,
        # _clone3.spawn's arguments, the exits left to Python: policy.exit_mask) of each
        # service whose replacement _clone3.wait may start before Python runs; service ->
        # that pid; the replacement it started, until
        # _on_exit takes it
        self._armed: dict[int, tuple[int, tuple, bytes]] = {}
        self._armed_pid: dict[str, int] = {}
        self._armed_kept = 0  # Cgroups.closed_kept when the arms were made
        self._compiled: tuple[str, Launched] | None = None
        self.compiled_restarts = 0  # replacements _clone3.wait started (the heartbeat)
        # running stop_commands: pid -> (service, its main pid then, signal its group);
        # service -> (pid, start time) for its record (a new restarter carries the stop
        # on: _adopt_stop_command)
        self.stop_cmds: dict[int, tuple[str, int, bool]] = {}
        self.stop_cmd_ids: dict[str, tuple[int, int]] = {}
        # running post_start programs: pid -> service; service -> (pid, start time), as
        # for stop_commands (_adopt_post_start)
        self.post_cmds: dict[int, str] = {}
        self.post_ids: dict[str, tuple[int, int]] = {}
        # running post_stop programs: pid -> service; service -> (pid, start time); the
        # services whose Spawn waits for theirs (_post_stop)
        self.post_stop_cmds: dict[int, str] = {}
        self.post_stop_ids: dict[str, tuple[int, int]] = {}
        self._spawn_after_post_stop: set[str] = set()
        self._no_cgroups = spawn.Cgroups(None)
        # service -> MONITOR_* its next start is told (core.Monitor: an on_failure start)
        self._monitor_env: dict[str, tuple[tuple[str, str], ...]] = {}
        # pid -> pidfd of a command a new restarter found running (not our child: init
        # reaps it; _watch_adopted_command)
        self.adopted_cmd_fds: dict[int, int] = {}
        # `hachain reload NAME` (reloads.py): those under way, the reload_commands running
        # (pid -> service, until reaped), the outcomes clients ask after (oldest first)
        self.reloads: dict[str, reloads.Reload] = {}
        self.reload_cmds: dict[int, str] = {}
        self.reload_ids: dict[str, tuple[int, int]] = {}  # for the record, as stop_cmd_ids
        self.reload_outcomes: dict[str, reloads.Outcome] = {}
        self.reload_last: dict[str, tuple[str, float]] = {}  # the last outcome, when
        # service -> (its `listen` as opened, the sockets): held open while it is wanted
        # up, handed to each start (hachain/listen.py)
        self.listening: dict[str, tuple[tuple[str, ...], list[Any]]] = {}
        self._listen_settings: dict[str, tuple[Any, ...]] = {}  # what they were opened with
        # service -> the descriptors it stored (FDSTORE=1), handed to each start after
        # its listen sockets (fdstore.py)
        self.fd_stores: dict[str, fdstore.Store] = {}
        # init's stash (stash.py): copies of both, so a restarter's death closes neither;
        # written again (flush) when they changed
        self.stash = stash.Stash.inherited()
        self._stash_dirty = False
        self._reload_seq = 0
        self.held_out = HeldOutput()  # after raise_fd_limit: its room depends on the limit
        self.held_out.keep_for(len(cfg.services))
        self.sel.register(self._sig_r, selectors.EVENT_READ, ("signal", None))
        self.sel.register(self._reap_ep.fileno(), selectors.EVENT_READ, ("reaped", None))
        from hachain.restarter.control import ControlServer
        self.control = ControlServer(os.path.join(self.state_dir, channels.CONTROL_SOCKET),
                                     self.sel, self.handle_request,
                                     group=cfg.chain.control_group or None,
                                     fd=(control_fd := _inherited_fd(
                                         channels.ENV_CONTROL_FD)))
        # What ends a round's restart work early: a new control connection or a signal.
        self.urgent = selectors.EpollSelector()
        self.urgent.register(self.control.sock, selectors.EVENT_READ)
        self.urgent.register(self._sig_r, selectors.EVENT_READ)
        # What this restarter keeps in state_dir, made again when found gone at a
        # heartbeat (_mend_state_dir). `snap`: the running snapshot, set by __main__.
        self.snap: Any = None
        self.kept = channels.Kept()
        for path in (self.store.rec_dir, self.control.path, self.notify.path,
                     os.path.join(self.state_dir, channels.RESTARTER_LOCK),
                     os.path.join(self.state_dir, channels.RUNNING_CONFIG)):
            self.kept.note(path)
        # a socket inherited from init: what its path was when init bound it (the path
        # may lead elsewhere by now: to a dead restarter's own, after a cleaning)
        held = channels.Kept.decode(os.environ.get(channels.ENV_HELD_IDS, ""))
        for var, path, inherited in ((channels.ENV_NOTIFY_FD, self.notify.path, notify_fd),
                                     (channels.ENV_CONTROL_FD, self.control.path,
                                      control_fd)):
            if inherited is not None and var in held:
                self.kept.ids[path] = held[var]
        self.mend_failed: dict[str, str] = {}  # path -> the error last said

    # --- the core's state, as the shell reads it ----------------------------------------

    @property
    def conf(self) -> Mapping[str, ServiceConfig]:
        return self.core.plan.conf

    @property
    def svcs(self) -> dict[str, Svc]:
        return self.core.svcs

    @property
    def shutting_down(self) -> bool:
        return self.core.shutting_down

    @property
    def singletons(self) -> tuple[str, ...]:
        return self.core.plan.singletons  # the heartbeat's

    @property
    def reboot_requested(self) -> str | None:
        return self.core.reboot_requested

    # --- set-up ----------------------------------------------------------------------------

    def _take_lock(self, lock_fd: int | None) -> int:
        """The restarter lock: `lock_fd` when the caller already holds it for this state
        dir (a standby's worker, which waits for it), else taken now or AlreadyRunning."""
        if lock_fd is not None:
            if os.path.samefile(os.path.join(self.state_dir, channels.RESTARTER_LOCK),
                                f"/proc/self/fd/{lock_fd}"):
                return lock_fd
            os.close(lock_fd)
        return take_lock(self.state_dir)

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._sig_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self._chld_fd = spawn.sigchld_fd()
        if self._chld_fd is not None:
            self.sel.register(self._chld_fd, selectors.EVENT_READ, ("sigchld", None))

    def _on_signal(self, signum: int, frame: object) -> None:
        self.pending_signals.append(signum)

    def adopt_or_start(self, now: float) -> None:
        """Rebuild every service from persisted state and what is really running: this
        shell reads the records and checks their pids; the core decides.

        What died while no restarter ran does not wait behind the re-adoption of what
        still runs: one read of each service's cgroup.procs finds the empty ones, and
        those that no other service depends on, requires or conflicts with (so that no
        decision about them can touch a service not yet rebuilt) are rebuilt and restarted
        first; then the rest is re-adopted (their membership already read)."""
        admin = self.store.read_admin()
        self._unstash()
        self.core.rescue_held = self._rescue_holds()
        # What was sent while no restarter ran is read first (as _on_exit reads it before
        # an exit): a daemon's launcher that named its server (MAINPID=) and exited handed
        # over, and the server is adopted in its place. The rest of it is handled below.
        self._read_queued()
        first, rest = self._dead_first()
        if first:
            self._adopt(first, admin, now)
            self.core.adopted(now, set(first))
            self.core.release(len(self.core.later), now)  # theirs only: restart them now
            self.run_core(now)
            log(f"restarted {len(first)} service(s) that stopped running while no "
                f"restarter ran, {since_process_start() * 1e3:.0f} ms after the restarter "
                "process started; re-adopting the rest")
        adopted = self._adopt(rest, admin, now)
        for w in self.store.warnings:
            log("warning: " + w)
        if adopted:
            log(f"re-adopted {adopted} running service(s) in "
                f"{(time.monotonic() - now) * 1e3:.0f} ms, {since_process_start() * 1e3:.0f} ms "
                "after the restarter process started")
        self.core.adopted(now, set(rest) if first else None)
        self._on_notify(now, self._early, self._queued_from)
        self._queued, self._queued_from, self._early = {}, {}, []
        self._procs_seen = {}
        self.cgroups.drop_held()  # read once; the standby keeps its own for the next one
        self.admin_dirty = True
        for name in list(self.listening) + list(self.fd_stores):
            # the stash's of a service that is down for good now (stopped while no
            # restarter ran, or by the table just now): closed as a transition closes them
            if (s := self.svcs.get(name)) is not None and s.state in _NO_CREDENTIALS:
                if name in self.listening:
                    self._close_listen(name)
                if name in self.fd_stores and not self.conf[name].fd_store_preserve:
                    self._release_store(name)

    def _unstash(self) -> None:
        """What the last restarter stashed (listen sockets, stored descriptors) becomes
        this one's, for the services that still have them in their configuration; the
        rest is closed. Written back at once: the stash is empty while taken."""
        if self.stash is None:
            return
        socks: dict[str, list[tuple[str, int]]] = {}
        for it in self.stash.take():
            c = self.conf.get(it.service)
            if it.kind == "listen" and c is not None and c.listen:
                socks.setdefault(it.service, []).append((str(it.meta), it.fd))
            elif it.kind == "store" and c is not None and c.fd_store_max and \
                    isinstance(it.meta, list) and len(it.meta) == 2:
                store = self.fd_stores.setdefault(it.service, fdstore.Store())
                store.entries.append(fdstore.Entry(it.fd, str(it.meta[0]), bool(it.meta[1])))
            else:
                os.close(it.fd)
        for name, got in socks.items():
            if tuple(spec for spec, _ in got) == self.conf[name].listen:
                self.listening[name] = (self.conf[name].listen,
                                        [socket.socket(fileno=fd) for _, fd in got])
                self._listen_settings[name] = _socket_settings(self.conf[name])
            else:  # (its listen changed meanwhile: opened afresh at its next start)
                for _, fd in got:
                    os.close(fd)
        if self.listening or self.fd_stores:
            log(f"took back from init's stash the sockets of {len(self.listening)} and the "
                f"stored descriptors of {len(self.fd_stores)} service(s)")
        self._stash_dirty = True
        self._write_stash()

    def _write_stash(self) -> None:
        if self.stash is None or not self._stash_dirty:
            return
        self._stash_dirty = False
        items: list[tuple[str, str, Any, int]] = [
            (n, "listen", spec, sk.fileno())
            for n, (specs, socks) in self.listening.items()
            for spec, sk in zip(specs, socks, strict=True)]
        items += [(n, "store", [e.name, e.poll], e.fd)
                  for n, st in self.fd_stores.items() for e in st.entries]
        if why := self.stash.put(items):
            log(f"warning: cannot write init's stash ({why}): a restarter that dies now "
                "loses the sockets and stored descriptors only it holds")

    def _dead_first(self) -> tuple[list[str], list[str]]:
        """(services to rebuild and restart first, the rest), in configuration order. First:
        at most START_BATCH of those whose cgroup exists (it ran before: a first start of
        the chain has none, and its starts keep their pace of START_BATCH a round) and is
        empty, and that have no relation to another service (requires, wants, after,
        conflicts, either way; no singleton). Without cgroups, all come in one go. The
        membership read here is kept for _verify."""
        if not self.cgroups.active:
            return [], list(self.conf)
        plan = self.core.plan
        first: list[str] = []
        rest: list[str] = []
        there = self.cgroups.children()
        for name, c in self.conf.items():
            procs = self.cgroups.members(name) if there is None or name in there else None
            self._procs_seen[name] = procs or []
            if procs == [] and len(first) < START_BATCH and not plan.deps[name] and \
                    not plan.rev.get(name) and not plan.conflicts[name] and not c.singleton:
                first.append(name)
            else:
                rest.append(name)
        return first, rest

    def _adopt(self, names: list[str], admin: dict[str, dict[str, str]], now: float) -> int:
        """Read the records of `names`, check their pids, let the core rebuild them, carry
        out what it decided; the number adopted."""
        adopted = 0
        present = self.store.record_names()
        for name in names:
            c = self.conf[name]
            rec = self.store.read_record(name) if present is None or name in present \
                else None
            fd = spawn.pidfd_open(rec.pid) if rec is not None and rec.pid and \
                self._verify(rec) else None
            main, mfd = self._queued_main(name, rec, fd is None)
            pre = fd is not None and rec is not None and rec.pid is not None and \
                bool(c.pre_start) and in_pre_start(name, rec.pid)
            ok = self.core.adopt(name, admin.get(name, {}), rec, fd is not None, now, main,
                                 pre)
            if ok and main is not None and self.svcs[name].pid == main:
                fd, mfd = mfd, fd  # the server its launcher named: the record is rewritten
                self._start_times[name] = channels.proc_start_time(main)
            elif ok:
                assert rec is not None
                self._start_times[name] = rec.start_time  # the record stays as it is
            if ok:
                pid = self.svcs[name].pid
                assert pid is not None and fd is not None
                self._watch(name, pid, fd)
                adopted += 1
            for x in (mfd,) if ok else (fd, mfd):
                if x is not None:
                    os.close(x)
            if ok:
                if rec is not None and rec.sockets and c.listen and name not in self.listening:
                    pid = self.svcs[name].pid
                    assert pid is not None
                    self._recover_listen(name, pid, rec.sockets)
                if rec is not None and rec.fd_store and c.fd_store_max and \
                        name not in self.fd_stores:
                    pid = self.svcs[name].pid
                    assert pid is not None
                    self._recover_store(name, pid, rec.fd_store)
                if rec is not None and rec.stop_command is not None:
                    self._adopt_stop_command(name, rec.stop_command)
                if rec is not None and rec.post_start is not None:
                    self._adopt_post_start(name, rec.post_start, now)
            if ok and rec is not None and rec.reload is not None:
                self._adopt_reload(name, rec.reload, now)
            if rec is not None and rec.post_stop is not None:
                self._adopt_post_stop(name, rec.post_stop)
            elif not ok and c.post_stop and rec is not None and rec.pid and \
                    rec.state in ("starting", "ready", "stopping"):
                # it ended while no restarter ran: what follows an end follows this one
                self._post_stop(name, ExitStatus("unknown"), now)
            if ok:
                continue
            if not states.kills_leftovers(c) and self.cgroups.active and \
                    (left := self._procs_seen.get(name) or self.cgroups.procs(name)):
                log(f"{name}: {len(left)} leftover process(es) stay in its cgroup "
                    "(kill_mode = \"process\")")
        self.run_core(now)
        return adopted

    def _leftovers(self, name: str) -> list[int]:
        """The pids in the service's cgroup; during adoption, none without a read when
        _dead_first found it empty or missing and it has not been spawned since (nothing
        else puts a process there: this saves 1000 opens of missing files at a first
        start of 1000 services)."""
        if name in self._procs_seen and not self._procs_seen[name]:
            return []
        return self.cgroups.procs(name)

    def _read_queued(self) -> None:
        """Adoption: read everything queued on the notify socket, keeping each sender's
        MAINPID=."""
        got = self.notify.drain(len(self.conf))
        self._early += got
        self._queued.update({n.pid: n.fields["MAINPID"] for n in got
                             if n.pid and not n.error and "MAINPID" in n.fields})

    def _queued_main(self, name: str, rec: RuntimeRecord | None, gone: bool = False
                     ) -> tuple[int | None, int | None]:
        """The pid a MAINPID= of the record's process, read before adoption, names and a
        pidfd of it, when it is a live process of the service (checked as
        _new_main_pid checks one read while running); else (None, None). `gone`: the
        record's process is not running; what it sent before it ended is queued by
        now (it may have waited on a full queue until the first read), so it is read."""
        if gone and rec is not None and rec.pid and rec.pid not in self._queued:
            self._read_queued()
        value = self._queued.get(rec.pid) if rec is not None and rec.pid else None
        if value is None or rec is None or rec.pid is None:
            return None, None
        self._queued_from[rec.pid] = name  # the rest of its message is this service's
        try:
            pid = int(value)
        except ValueError:
            return None, None
        if self.cgroups.active:
            same = self.cgroups.contains(name, pid)
        else:
            try:
                same = os.getpgid(pid) == rec.pid
            except OSError:
                same = False
        fd = spawn.pidfd_open(pid) if same else None
        if fd is None or channels.proc_state(pid) in (None, "Z", "X"):
            if fd is not None:
                os.close(fd)
            return None, None
        return pid, fd

    def _rescue_holds(self) -> set[str]:
        """This boot's entry in the boot record (opened here if the restarter starts
        first); in a rescue boot, the critical services to hold in maintenance."""
        bl = self.cfg.chain.boot_loop
        try:
            entry = bootrecord.begin_boot(self.cfg.chain.persist_dir,
                                          bootrecord.current_boot_id(), time.time(),
                                          bl.resets, bl.window, bl.action, regular=True,
                                          log=lambda m: log("warning: " + m))
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as e:
            # (a record of valid JSON with a wrong type inside is no reason to stop)
            log(f"warning: cannot read or write the boot record: {type(e).__name__}: {e}")
            return set()
        names = bootrecord.held_services(entry)
        held = {n for n in names if n in self.conf and self.conf[n].critical}
        pre = bootrecord.CHECK_PREFIX
        self.checks_held = {n[len(pre):] for n in names
                            if n.startswith(pre) and n[len(pre):] in self.cfg.checks}
        if held or self.checks_held:
            resc = entry.get("rescue") or {}
            what = [f"{', '.join(sorted(held))} in maintenance"] if held else []
            if self.checks_held:
                what.append(f"the check(s) {', '.join(sorted(self.checks_held))}")
            log(f"RESCUE boot: boots {resc.get('boots')} ended {resc.get('reasons')}; "
                f"holding {' and '.join(what)} out of the health gate "
                "(hachain clear --boot-loop releases them)")
        return held

    def _release_rescue(self, name: str) -> None:
        """`hachain clear NAME` of a service the rescue holds: it runs and gates again."""
        try:
            bootrecord.release(self.cfg.chain.persist_dir, bootrecord.current_boot_id(), name,
                               log)
        except OSError as e:
            log(f"warning: {name}: cannot record its release from rescue: {e}")

    def _verify(self, rec: RuntimeRecord) -> bool:
        """Is rec.pid still the process we started? (start time, then cgroup membership)"""
        assert rec.pid is not None
        st = channels.proc_stat(rec.pid)
        if st is None or st[0] in ("Z", "X") or rec.start_time is None or \
                st[1] != rec.start_time:
            return False
        if rec.cgroup and self.cgroups.active:
            seen = self._procs_seen.get(rec.name)  # read by _dead_first a moment ago
            return rec.pid in seen if seen else self.cgroups.contains(rec.name, rec.pid)
        return True

    # --- the core's effects ----------------------------------------------------------------

    def feed(self, name: str, kind: Ev, now: float, **kw: Any) -> None:
        """One event for `name`, and everything that follows from it."""
        self.core.push(name, kind, now, **kw)
        self.run_core(now)

    def run_core(self, now: float) -> None:
        """Carry out the core's effects, in order, until it has nothing left to do. An
        effect only pushes what it learnt back into the core: nothing re-enters."""
        nxt = self.core.next_effect
        while (e := nxt()) is not None:
            t = type(e)
            if t is states.Persist:
                self.dirty.add(e.name)
                if self.core.admin_entry(e.name) != self.admin.get(e.name):
                    self.admin_dirty = True  # a restart leaves it alone: no O(services) flush
            elif t is states.ArmTimer:
                self.arm(e.name, e.kind, e.delay, now)
            elif t is states.CancelTimer:
                self.timer_live.pop((e.name, e.kind), None)
            elif t is states.Spawn:
                self._spawn(e.name, now)
            elif t is core.Transition:
                self._transition_note(e.name, e.old, e.new)
                if e.old.in_post_start and e.name in self.post_ids:
                    self._end_post_start(e.name)
                if e.new.state in _NO_CREDENTIALS and (c := self.conf.get(e.name)) and \
                        c.credentials:
                    from hachain import credentials
                    credentials.remove(self.state_dir, e.name)
                if e.new.state in _NO_CREDENTIALS and e.name in self.listening:
                    self._close_listen(e.name)
                if e.new.state in _NO_CREDENTIALS and (c := self.conf.get(e.name)) and \
                        c.remove_ipc:
                    self._remove_ipc(e.name, c)
                if e.new.state in _NO_CREDENTIALS and e.name in self.fd_stores and \
                        not ((c := self.conf.get(e.name)) and c.fd_store_preserve):
                    self._release_store(e.name)
                if e.name in self.reloads and \
                        (out := reloads.lost(self.reloads[e.name], e.new)) is not None:
                    self._reload_over(e.name, out, now)
            else:
                self._do_rare(e, now)

    def _do_rare(self, e: Any, now: float) -> None:
        if isinstance(e, states.Kill):
            s = self.svcs[e.name]
            if e.signal == states.SIGKILL:
                log(f"{e.name}: {s.reason or 'killing'} (" + (
                    "main process only" if not e.group else "whole cgroup"
                    if self.cgroups.active else "whole process group") + ")")
                self._end_stop_command(e.name)
            elif self.conf[e.name].stop_command and s.pid is not None and \
                    self.conf[e.name].kind != "oneshot" and \
                    self._stop_command(e.name, s.pid, e.group):
                return  # its stop_signal follows the command's exit (_stop_command_done)
            self._stop_signal(e.name, s.pid, e.signal, e.group)
        elif isinstance(e, states.Teardown):
            self._teardown(e.name, now)
        elif isinstance(e, states.PostStart):
            self._post_start(e.name, now)
        elif isinstance(e, core.Monitor):
            # what its next start is told (systemd's MONITOR_* of an OnFailure= unit)
            self._monitor_env[e.name] = (("MONITOR_SERVICE", e.failed),) + tuple(
                ("MONITOR_" + k, v) for k, v in policy.exit_env(
                    e.status or ExitStatus("unknown"), self.conf[e.failed].success_exit))
        elif isinstance(e, core.Log):
            log(e.text)
        elif isinstance(e, core.KillLeftovers):
            if e.pid is not None and e.name in self._ahead:
                pass  # done before the replacement was started (_on_exit)
            elif e.pid is not None:
                spawn.kill_leftovers(e.pid, e.name, self.cgroups, zombie=self._zombie == e.pid)
            elif self.cgroups.active and (left := self._leftovers(e.name)):
                if e.why:
                    log(f"{e.name}: killing {len(left)} {e.why}")
                self.cgroups.kill(e.name)
        elif isinstance(e, core.RunProbe):
            self._run_probe(e.name, e.purpose, now)
        elif isinstance(e, core.DropProbe):
            pr = self.probes.pop((e.name, e.purpose), None)
            if pr is not None:
                self._drop_probe(pr)
                if e.timed_out:
                    self._probe_result(e.name, e.purpose, False, "timed out", now)
        elif isinstance(e, core.FindMain):
            if e.status is not None:
                self.launch_status[e.name] = e.status
            self._look_for_main(e.name, now, e.first)
        elif isinstance(e, core.MainFound):
            fd = self._found.pop(e.name)
            if e.accepted:
                self._unwatch(e.name)  # MAINPID=: the former main process
                self._watch(e.name, e.pid, fd)
                self._start_times[e.name] = channels.proc_start_time(e.pid)
                c = self.conf[e.name]
                log(f"{e.name}: main pid " + (f"is now {e.pid} (MAINPID)" if e.via else
                    f"{e.pid}" + (f" (from {c.pid_file})" if c.pid_file
                                  else " (the cgroup's only root process)")))
            else:
                os.close(fd)
        elif isinstance(e, core.ReleaseRescue):
            self._release_rescue(e.name)
        elif isinstance(e, core.Forget):
            self.dirty.discard(e.name)
            self.cgroups.close_kept(e.name)
            self.store.drop_record(e.name, time.monotonic())
            self.admin_dirty = True

    def _transition_note(self, name: str, old: Svc, new: Svc) -> None:
        extra = f" ({new.reason})" if new.reason else ""
        pid = f" pid {new.pid}" if new.pid else ""
        log(f"{name}: {old.state.value} -> {new.state.value}{pid}{extra}")

    def _spawn(self, name: str, now: float) -> None:
        """The core's Spawn: start the service, or take the replacement that _on_exit
        started ahead of the exit's other effects (restarts_at_once)."""
        if name in self.post_ids:
            self._end_post_start(name)  # (a start again at once, while it still ran)
        if name in self.post_stop_ids:
            if name not in self._spawn_after_post_stop:
                self._spawn_after_post_stop.add(name)
                log(f"{name}: its start waits for its post_stop (pid "
                    f"{self.post_stop_ids[name][0]})")
            return
        got = self._ahead.pop(name, None) or self._launch(name, now)
        if isinstance(got, tuple):
            self._spawn_failed(name, now, *got)
            return
        if isinstance(got, Skip):
            self.core.push_front(name, Ev.CONDITION_FAILED, now, reason=got.why)
            return
        sp, out_r, c = got.spawned, got.out_r, got.cfg
        self.held_out.hold(name, got.out_w)
        s = self.svcs[name]
        if s.restarts and s.last_exit is not None:
            self.restart_times.append(now)
        self._watch(name, sp.pid, CHILD)
        self.logs.send(out_r, c)  # after the spawn: off the restart path
        self.logs.make_spare()
        if sp.ready_fd is not None:
            os.set_blocking(sp.ready_fd, False)
            self.ready_fds[name] = sp.ready_fd
            self.sel.register(sp.ready_fd, selectors.EVENT_READ, ("readyfd", name))
        self._start_times[name] = sp.start_time
        self.core.push_front(name, Ev.SPAWNED, now, pid=sp.pid)

    def _apply_limits(self, name: str, c: ServiceConfig, quiet: bool = False) -> None:
        """Write the service's pids.max and memory.max once per configuration of it (a
        reload that changes it writes them again, "max" for one no longer set;
        Cgroups.renew writes them into a new cgroup), and take its OOM kill count to
        compare each exit with. `quiet`: an adopted service (the lines were logged when
        it was started)."""
        self._limited.add(name)
        for key, file, value, controller, without in (
                ("pids_max", "pids.max", c.pids_max, "pids",
                 "the whole cgroup is still killed on stop"),
                ("memory_max", "memory.max", c.memory_max, "memory",
                 "a leak is bounded by the host's memory")):
            if not value and not self.cgroups.has_limit(name, file):
                continue
            self.cgroups.ensure(name)
            if self.cgroups.limit(name, file, value):
                if not quiet:
                    log(f"{name}: {file} = {value or 'max'}")
                if file == "memory.max":
                    self.cgroups.oom_since(name)
            elif value:
                log(f"{name}: {key} = {value} not applied: the cgroup v2 {controller} "
                    f"controller is not enabled here; {without}")

    def _launch(self, name: str, now: float, thaw: bool = True) -> Started:
        """Start one process of `name`: what was started, or why not (a one-line reason,
        and whether it is transient) for the core's SPAWN_FAILED, or Skip when its
        `condition` does not hold. `thaw` False: its cgroup was just read empty and not
        frozen (spawn.kill_leftovers)."""
        self._procs_seen.pop(name, None)  # (_leftovers: its cgroup is in use from now)
        c = self.conf[name]
        if c.condition is not None or c.assertion is not None:
            from hachain import conditions  # only for a service that has them
            if c.condition is not None and (why := conditions.verdict(c.condition)):
                return Skip(why)
            if c.assertion is not None and (why := conditions.verdict(c.assertion, "assert")):
                return why, False
        if c.requires_mounts_for:
            from hachain import mounts
            if why := mounts.check(c.requires_mounts_for):
                return why, True  # (waits: tried again, not counted against intensity)
        if name not in self._limited and self.cgroups.active:
            self._apply_limits(name, c)
        if c.kind == "forking" and self.cgroups.active and not states.kills_leftovers(c):
            # what earlier runs left there is not the new daemon (kill_mode = "process")
            self.launch_leftovers[name] = frozenset(self.cgroups.procs(name))
        try:
            out_r, out_w = self.logs.pipe()
        except OSError as e:
            return f"output pipe: {spawn.errno_text(e)}", True
        if self._monitor_env and name in self._monitor_env:  # started for a failure
            c = replace(c, env=c.env + self._monitor_env.pop(name))
        if c.credentials:  # its secrets, copied afresh for this start
            try:
                c = replace(c, env=c.env + self._credentials_env(name, c, prepare=True))
            except spawn.SpawnError as e:
                os.close(out_r)
                os.close(out_w)
                return str(e), e.transient
        if c.singleton:  # the token of the grant it starts under (docs/cluster.md)
            c = replace(c, env=c.env + ((channels.ENV_FENCING_TOKEN,
                                                     str(self.core.grants.get(name, 0))),))
        held = False
        fds: tuple[int, ...] = ()
        names: tuple[str, ...] = ()
        if c.listen:
            try:
                fds = self._listen_fds(name, c)
            except Exception as e:  # ListenError: one line naming the socket
                os.close(out_r)
                os.close(out_w)
                return str(e), bool(getattr(e, "transient", False))
            names = (c.fd_name or f"{name}.socket",) * len(fds)
        if (store := self.fd_stores.get(name)) is not None:
            for gone in store.drop_hung_up():
                log(f"{name}: its stored descriptor {gone!r} hung up: dropped")
                self.dirty.add(name)
                self._stash_dirty = True
            fds += store.fds()
            names += store.names()
        try:
            sp = spawn.spawn(c, self.log_dir, self.cgroups, self.notify.path, out=out_w,
                             yield_cpu=not self._more_work(now), thaw=thaw, listen_fds=fds,
                             fd_names=names)
            held = self.held_out.may_hold()
            if sp.notes != self._env_notes.get(name, ()):  # said once, not at each restart
                self._env_notes[name] = sp.notes
                for note in sp.notes:
                    log(f"{name}: warning: {note}")
        except (spawn.SpawnError, OSError) as e:
            os.close(out_r)
            msg = str(e) if isinstance(e, spawn.SpawnError) else spawn.errno_text(e)
            transient = e.transient if isinstance(e, spawn.SpawnError) else \
                e.errno in spawn.TRANSIENT_ERRNOS
            return msg, transient
        except Exception as e:  # a bug on the spawn path fails this start, not the restarter
            import traceback
            os.close(out_r)
            ERR.write(traceback.format_exc().encode(errors="replace"))
            return f"internal error: {type(e).__name__}: {e}", False
        finally:
            if not held:
                os.close(out_w)
        return Launched(sp, out_r, out_w if held else None, c)

    def _listen_fds(self, name: str, c: ServiceConfig) -> tuple[int, ...]:
        """The descriptors of `name`'s listen sockets, opened now unless held already
        (those of an earlier `listen` closed first). ListenError when one cannot be."""
        from hachain import listen
        held = self.listening.get(name)
        if held is not None and (held[0] != c.listen or
                                 self._listen_settings.get(name) != _socket_settings(c)):
            # (a reload changed them: the ones of the new settings, from this start on)
            self._close_listen(name)
            held = None
        if held is None:
            import grp
            import pwd
            uid, gid = (_socket_owner("socket_user", c.socket_user,
                                      lambda n: pwd.getpwnam(n).pw_uid),
                        _socket_owner("socket_group", c.socket_group,
                                      lambda n: grp.getgrnam(n).gr_gid))
            held = (c.listen, listen.open_all(c.listen, c.listen_backlog, c.socket_mode,
                                              uid, gid, c.socket_options,
                                              (c.socket_receive_buffer,
                                               c.socket_send_buffer)))
            self.listening[name] = held
            self._listen_settings[name] = _socket_settings(c)
            self.dirty.add(name)  # the record names them
            self._stash_dirty = True
        return tuple(sk.fileno() for sk in held[1])

    def _close_listen(self, name: str) -> None:
        from hachain import listen
        _, socks = self.listening.pop(name)
        self._listen_settings.pop(name, None)
        listen.close_all(socks)
        self._stash_dirty = True
        if name in self.svcs:
            self.dirty.add(name)

    def _store_fds(self, name: str, n: notify.Notification) -> frozenset[int]:
        """FDSTORE=1: keep the descriptors `n` carried for `name`'s next starts (as many
        as its fd_store_max allows); those kept. FDSTOREREMOVE=1: drop those named."""
        f = n.fields
        c = self.conf[name]
        fdname = f.get("FDNAME", fdstore.DEFAULT_NAME)
        if (why := fdstore.name_problem(fdname)) and ("FDNAME" in f):
            self._notify_warn(name, f"warning: {name}: FDNAME={fdname[:40]!r} {why}: "
                              "nothing stored or removed")
            return frozenset()
        if f.get("FDSTOREREMOVE") == "1":
            if (store := self.fd_stores.get(name)) is not None and store.remove(fdname):
                self.dirty.add(name)
                self._stash_dirty = True
            return frozenset()
        if f.get("FDSTORE") != "1" or not n.fds:
            return frozenset()
        if not c.fd_store_max:
            self._notify_warn(name, f"warning: {name}: FDSTORE=1 with {len(n.fds)} "
                              "descriptor(s), and its fd_store_max is 0: closed")
            return frozenset()
        store = self.fd_stores.setdefault(name, fdstore.Store())
        kept, why = store.add(n.fds, fdname, f.get("FDPOLL") != "0", c.fd_store_max)
        if why:
            self._notify_warn(name, f"warning: {name}: FDSTORE=1: {why}: "
                              f"{len(n.fds) - len(kept)} descriptor(s) closed")
        if kept:
            self.dirty.add(name)
            self._stash_dirty = True
        return frozenset(kept)

    def _remove_ipc(self, name: str, c: ServiceConfig) -> None:
        """remove_ipc: `name` is down; what its user and group own goes, unless another
        service with a process runs as the same user or group (ipc.py)."""
        from hachain.restarter import ipc
        try:
            who = spawn.credentials(c)
        except spawn.SpawnError:
            return  # (its user is gone: its start says so)
        uid = -1 if who.uid in (None, 0) else who.uid
        gid = -1 if who.gid in (None, 0) else who.gid
        for other, s in self.svcs.items():
            oc = self.conf.get(other)
            if other == name or s.pid is None or oc is None or \
                    (oc.user is None and oc.group is None):
                continue
            try:
                ow = spawn.credentials(oc)
            except spawn.SpawnError:
                continue
            if (uid >= 0 and ow.uid == uid) or (gid >= 0 and ow.gid == gid):
                return  # (systemd too keeps them while the user is in use)
        if done := ipc.remove(uid, gid):
            log(f"{name}: remove_ipc: removed " + ", ".join(done[:8])
                + (f" and {len(done) - 8} more" if len(done) > 8 else ""))

    def _release_store(self, name: str) -> None:
        self.fd_stores.pop(name).close()
        self._stash_dirty = True
        if name in self.svcs:
            self.dirty.add(name)

    def _recover_store(self, name: str, pid: int,
                       described: tuple[tuple[str, int, int, bool], ...]) -> None:
        """Adoption: take back what `name` had stored from its running processes (the
        record's devices and inodes). What only the old restarter held is gone: said."""
        from hachain import listen
        pids = [pid] + [p for p in (self.cgroups.procs(name) if self.cgroups.active else [])
                        if p != pid]
        found = listen.take_back(pids, {(d, i) for _, d, i, _ in described})
        store = self.fd_stores.setdefault(name, fdstore.Store())
        for fdname, dev, ino, poll in described:
            if (fd := found.pop((dev, ino), None)) is not None:
                store.entries.append(fdstore.Entry(fd, fdname, poll))
        self._stash_dirty = True
        lost = len(described) - len(store.entries)
        if lost:
            log(f"{name}: warning: {lost} of its {len(described)} stored descriptor(s) were "
                "held by the restarter alone and are gone with it")
        for fd in found.values():  # (one inode named twice)
            os.close(fd)

    def _recover_listen(self, name: str, pid: int, inodes: tuple[int, ...]) -> None:
        """Adoption: take back the listen sockets of `name` from its running processes
        (the record's inodes), so that they are not bound again beside the ones it
        serves on. What cannot be found is opened afresh at its next start."""
        from hachain import listen
        c = self.conf[name]
        pids = [pid] + [p for p in (self.cgroups.procs(name) if self.cgroups.active else [])
                        if p != pid]
        socks = listen.recover(pids, list(inodes))
        if socks is None:
            log(f"{name}: warning: its listen sockets were not found in its processes: "
                "opened afresh at its next start")
            return
        self.listening[name] = (c.listen, socks)
        self._listen_settings[name] = _socket_settings(c)
        self._stash_dirty = True

    def _drop_ahead(self, name: str) -> None:
        """A replacement started ahead of an exit's effects that no Spawn took: the core
        decided otherwise after all (restarts_at_once and the queue disagree: a bug).
        It must not run: killed at once, its exit reaped as any stray child's."""
        got = self._ahead.pop(name)
        if not isinstance(got, Launched):
            return
        log(f"error: {name}: pid {got.spawned.pid} was started ahead of the table's "
            "decision, which did not start it: killing it")
        try:
            os.kill(got.spawned.pid, signal.SIGKILL)
        except OSError:
            pass
        got.close()

    def _credentials_env(self, name: str, c: ServiceConfig, prepare: bool = False
                         ) -> tuple[tuple[str, str], ...]:
        """CREDENTIALS_DIRECTORY for a process of `name` (its stop and reload commands
        too, as systemd gives them); `prepare`: the copies made afresh first (a start).
        SpawnError (one line naming the credential) when they cannot be."""
        if not c.credentials:
            return ()
        from hachain import credentials
        if prepare:
            who = spawn.credentials(c)
            try:
                d = credentials.prepare(self.state_dir, name, c, who.uid, who.gid)
            except credentials.CredentialError as e:
                raise spawn.SpawnError(str(e), transient=e.transient) from None
        else:
            d = credentials.directory(self.state_dir, name)
        return (("CREDENTIALS_DIRECTORY", d),)

    def _stop_command(self, name: str, pid: int, group: bool) -> bool:
        """Start `name`'s stop_command (systemd's ExecStop=) in place of its stop signal,
        as the service runs (user, environment and MAINPID, cwd, limits, cgroup), its
        output on the service's log. False: send the signal now (the service is killed at
        once, a stop_command of it still runs, or this one cannot start: logged)."""
        c = self.conf[name]
        if c.stop_timeout <= 0 or any(n == name for n, _, _ in self.stop_cmds.values()):
            return False
        cmd = replace(c, command=c.stop_command, kind="longrun", ready="none", pre_start=(),
                      pid_file=None, directories=(), condition=None, assertion=None,
                      env=c.env + (("MAINPID", str(pid)),) + self._credentials_env(name, c))
        sp = self._spawn_command(name, cmd, pid)
        if isinstance(sp, str):
            log(f"{name}: stop_command cannot run: {sp}; sending its stop signal")
            return False
        self.stop_cmds[sp.pid] = (name, pid, group)
        if sp.start_time is not None:
            self.stop_cmd_ids[name] = (sp.pid, sp.start_time)
            self.dirty.add(name)  # its record names it: a new restarter signals after it
        log(f"{name}: stop_command started (pid {sp.pid})")
        return True

    def _stop_signal(self, name: str, pid: int | None, sig: int, group: bool) -> None:
        """A stop's signal to `name`; with send_sighup (systemd's SendSIGHUP=) SIGHUP
        right after it, for a shell or a session that hangs up only on that."""
        spawn.kill_service(pid, name, sig, group, self.cgroups)
        if self.conf[name].send_sighup and sig not in (signal.SIGKILL, signal.SIGHUP):
            spawn.kill_service(pid, name, signal.SIGHUP, group, self.cgroups)

    def _adopt_stop_command(self, name: str, cmd: tuple[int, int]) -> None:
        """The previous restarter died while `name`'s stop_command ran (its record names
        it): the stop goes on as it would have. The command still running is watched
        through a pidfd (init reaps it now) and the stop signal follows its exit; one
        that ended while no restarter ran gets its stop signal now. (Without this the
        service would wait for SIGKILL at the end of stop_timeout, never signalled.)"""
        s, c = self.svcs[name], self.conf[name]
        if s.state is not State.STOPPING or s.pid is None or c.kind == "oneshot":
            return  # (a restart's stop is adopted as running: its exit goes through policy)
        pid = cmd[0]
        group = c.kill_mode == "cgroup"
        if self._watch_adopted_command(cmd):
            self.stop_cmds[pid] = (name, s.pid, group)
            self.stop_cmd_ids[name] = cmd
            log(f"{name}: its stop_command (pid {pid}) still runs; the stop signal follows "
                "its exit")
            return
        log(f"{name}: its stop_command ended while no restarter ran; sending its stop signal")
        self._stop_signal(name, s.pid, c.stop_signal, group)
        self.dirty.add(name)  # the record names the command no more

    def _watch_adopted_command(self, cmd: tuple[int, int]) -> bool:
        """A command of a service that a record names, (pid, start time): is it still
        running? Then it is watched through a pidfd ("cmdfd": its end is handled as the
        reap of our own child would be, its status unknown)."""
        pid, start = cmd
        fd = spawn.pidfd_open(pid)
        st = channels.proc_stat(pid) if fd is not None else None  # (after the open: the
        if fd is not None and st is not None and st[0] not in ("Z", "X") and \
                st[1] == start:  # pidfd is of the process that start time names)
            self.adopted_cmd_fds[pid] = fd
            self.sel.register(fd, selectors.EVENT_READ, ("cmdfd", pid))
            return True
        if fd is not None:
            os.close(fd)
        return False

    def _kill_command(self, pid: int) -> None:
        """SIGKILL a command's process group (its own), unless it is an adopted one that
        has ended: its pid may be another's by now (ours stay zombies until reaped)."""
        fd = self.adopted_cmd_fds.get(pid)
        if fd is not None and select.select([fd], [], [], 0)[0]:
            return
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass

    def _unwatch_command(self, pid: int) -> None:
        if (fd := self.adopted_cmd_fds.pop(pid, None)) is not None:
            self.sel.unregister(fd)
            os.close(fd)

    def _forget_stop_command(self, pid: int) -> tuple[str, int, bool]:
        """Stop tracking the stop_command `pid`: (its service, main pid, group)."""
        name, main, group = self.stop_cmds.pop(pid)
        if self.stop_cmd_ids.get(name, (0,))[0] == pid:
            del self.stop_cmd_ids[name]
            if name in self.svcs:
                self.dirty.add(name)
        self._unwatch_command(pid)
        return name, main, group

    # --- post_start (systemd's ExecStartPost=) ---------------------------------------------

    def _post_start(self, name: str, now: float) -> None:
        """The table's PostStart: the service is ready; run its post_start commands in
        turn (one /bin/sh program, prestart.in_turn) as its stop command runs (its
        namespaces, cgroup, user, MAINPID, its log). Their exit is POST_START_DONE."""
        s, c = self.svcs[name], self.conf[name]
        self._end_post_start(name)  # (one of a start that is over: cannot be, but never two)
        argv = prestart.in_turn(c.post_start, "post_start", "the service stops")
        try:
            env = c.env + (("MAINPID", str(s.pid)),) + self._credentials_env(name, c)
        except spawn.SpawnError as e:
            sp: spawn.Spawned | str = str(e)
        else:
            cmd = replace(c, command=argv, kind="longrun", ready="none", pre_start=(),
                          pid_file=None, directories=(), condition=None, assertion=None,
                          env=env)
            sp = self._spawn_command(name, cmd, s.pid)
        if isinstance(sp, str):
            log(f"{name}: post_start cannot run: {sp}")
            self.core.push_front(name, Ev.POST_START_DONE, now, status=ExitStatus("spawn"))
            return
        self.post_cmds[sp.pid] = name
        if sp.start_time is not None:
            self.post_ids[name] = (sp.pid, sp.start_time)
        self.dirty.add(name)
        log(f"{name}: post_start started (pid {sp.pid})")

    def _adopt_post_start(self, name: str, cmd: tuple[int, int], now: float) -> None:
        """The previous restarter died while `name`'s post_start ran (its record names
        the program; the table adopted the service `starting`, running post_start): the
        program still running is watched and its end makes the service ready; one that
        ended meanwhile has, as far as anyone can tell now (its status went to init)."""
        if not self.svcs[name].in_post_start:
            return
        if self._watch_adopted_command(cmd):
            self.post_cmds[cmd[0]] = name
            self.post_ids[name] = cmd
            log(f"{name}: its post_start (pid {cmd[0]}) still runs; ready once it ends")
            return
        log(f"{name}: its post_start ended while no restarter ran (its status unknown)")
        self.core.push(name, Ev.POST_START_DONE, now, status=ExitStatus("unknown"))

    def _post_cmd_done(self, pid: int, st: ExitStatus, now: float) -> None:
        """A post_start program ended: the table hears of it if it is the current one."""
        name = self.post_cmds.pop(pid)
        self._unwatch_command(pid)
        if self.post_ids.get(name, (0,))[0] != pid:
            return  # of a start that is over (killed then)
        del self.post_ids[name]
        self.dirty.add(name)
        self.feed(name, Ev.POST_START_DONE, now, status=st)

    # --- post_stop (systemd's ExecStopPost=) -----------------------------------------------

    def _post_stop(self, name: str, st: ExitStatus, now: float) -> None:
        """The main process of `name` ended (`st`): run its post_stop commands in turn, as
        the service runs (user, environment, its log), told of the end (policy.exit_env),
        outside its cgroup: the end's sweep and a stop of the cgroup do not cut them
        short. A start of it waits for them (_spawn); stop_timeout bounds them."""
        c = self.conf[name]
        if name in self.post_stop_ids:
            log(f"{name}: post_stop (pid {self.post_stop_ids[name][0]}) still runs; not run "
                "again for this end")
            return
        argv = prestart.in_turn(c.post_stop, "post_stop", "the rest are not run")
        cmd = replace(c, command=argv, kind="longrun", ready="none", pre_start=(),
                      pid_file=None, directories=(), condition=None, assertion=None,
                      env=c.env + policy.exit_env(st, c.success_exit),
                      device_allow=(), device_policy="auto", ip_address_allow=(),
                      ip_address_deny=())  # (held through the service's cgroup)
        sp = self._spawn_command(name, cmd, cgroups=self._no_cgroups)
        if isinstance(sp, str):
            log(f"{name}: post_stop cannot run: {sp}")
            return
        self.post_stop_cmds[sp.pid] = name
        self.post_stop_ids[name] = (sp.pid, sp.start_time or 0)
        self.dirty.add(name)
        self.arm(name, Timer.POST_STOP_TIMEOUT, c.stop_timeout, now)
        log(f"{name}: post_stop started (pid {sp.pid})")

    def _adopt_post_stop(self, name: str, cmd: tuple[int, int]) -> None:
        """The previous restarter died while `name`'s post_stop ran: a start waits for it
        still (it is watched through a pidfd), or it ended meanwhile."""
        if self._watch_adopted_command(cmd):
            self.post_stop_cmds[cmd[0]] = name
            self.post_stop_ids[name] = cmd
            log(f"{name}: its post_stop (pid {cmd[0]}) still runs; a start waits for it")
        else:
            self.dirty.add(name)  # (the record names it no more)

    def _post_stop_done(self, pid: int, st: ExitStatus, now: float) -> None:
        """A post_stop program ended: a start that waited for it goes ahead."""
        name = self.post_stop_cmds.pop(pid)
        self._unwatch_command(pid)
        if self.post_stop_ids.get(name, (0,))[0] == pid:
            del self.post_stop_ids[name]
            self.timer_live.pop((name, Timer.POST_STOP_TIMEOUT), None)
        if name in self.svcs:
            self.dirty.add(name)
        if st.kind != "exited" or st.code != 0:
            log(f"{name}: post_stop {st.describe()}")
        if name in self._spawn_after_post_stop:
            self._spawn_after_post_stop.discard(name)
            s = self.svcs.get(name)
            if s is not None and s.state is State.STARTING and s.pid is None:
                self._spawn(name, now)
                self.run_core(now)

    def _post_stop_expired(self, name: str) -> None:
        """Its post_stop ran stop_timeout: killed (its process group); its exit follows."""
        cmd = self.post_stop_ids.get(name)
        if cmd is None:
            return
        log(f"{name}: post_stop still running after stop_timeout "
            f"({self.conf[name].stop_timeout:g} s): killed")
        self._kill_command(cmd[0])

    def _end_post_start(self, name: str) -> None:
        """The start `name`'s post_start was part of is over: a program of it still
        running is killed (its process group; its end, reaped later, is then ignored)."""
        cmd = self.post_ids.pop(name, None)
        if cmd is None:
            return
        self.dirty.add(name)
        self._kill_command(cmd[0])

    def _spawn_command(self, name: str, cmd: ServiceConfig, main: int | None = None,
                       cgroups: spawn.Cgroups | None = None) -> spawn.Spawned | str:
        """Spawn `cmd` (a command of `name`'s, as the service runs) with its output on the
        service's log: what was started, or why not (one line). `main`: the running
        service's main pid, whose mount and network namespaces the command joins (it
        sees the service's /tmp and loopback)."""
        try:
            out_r, out_w = self.logs.pipe()
        except OSError as e:
            return f"output pipe: {spawn.errno_text(e)}"
        join = spawn.join_namespaces(cmd, main) if main is not None else None
        try:
            sp = spawn.spawn(cmd, self.log_dir, cgroups or self.cgroups, None, out=out_w,
                             yield_cpu=False, join=join)
        except (spawn.SpawnError, OSError) as e:
            os.close(out_r)
            return str(e) if isinstance(e, spawn.SpawnError) else spawn.errno_text(e)
        finally:
            os.close(out_w)
            if join is not None:
                os.close(join[0])
        self.logs.send(out_r, self.conf[name])
        return sp

    def _teardown(self, name: str, now: float) -> None:
        """A done oneshot's stop: its stop_command, spawned as its start was (its cgroup,
        its log), watched as its process; the table's stop ends with its exit. One that
        cannot start ends the stop at once, saying why."""
        c = self.conf[name]
        cmd = replace(c, command=c.stop_command, pre_start=(), directories=(),
                      condition=None, assertion=None,
                      env=c.env + self._credentials_env(name, c))
        sp = self._spawn_command(name, cmd)
        if isinstance(sp, str):
            self._teardown_failed(name, sp, now)
            return
        self._watch(name, sp.pid, CHILD)
        self._start_times[name] = sp.start_time
        log(f"{name}: stop_command started (pid {sp.pid})")
        self.core.push_front(name, Ev.TEARDOWN, now, pid=sp.pid)

    def _teardown_failed(self, name: str, why: str, now: float) -> None:
        log(f"{name}: stop_command cannot run: {why}")
        self.core.push_front(name, Ev.EXITED, now, status=ExitStatus("spawn"))

    def _stop_command_done(self, pid: int, st: ExitStatus) -> None:
        """A stop_command exited: what is left of its service gets the stop signal (the
        stop's timer, armed by the table, still bounds it)."""
        name, main, group = self._forget_stop_command(pid)
        s, c = self.svcs.get(name), self.conf.get(name)
        if s is None or c is None or s.state is not State.STOPPING or s.pid != main:
            return  # the stop is over (the end of the main process took it with it)
        if st.kind != "exited" or st.code != 0:
            log(f"{name}: stop_command {st.describe()}")
        self._stop_signal(name, main, c.stop_signal, group)

    def _end_stop_command(self, name: str) -> None:
        """The stop is over (SIGKILL): a stop_command of `name` still running is killed
        with it (without cgroups it is in a process group of its own); its exit is then
        any stray child's."""
        for pid, (n, _main, _group) in list(self.stop_cmds.items()):
            if n == name:
                self._kill_command(pid)
                self._forget_stop_command(pid)

    def _spawn_failed(self, name: str, now: float, msg: str, transient: bool) -> None:
        """Tell the core; it logs what the table decided: "cannot start web: cwd =
        "/srv": chdir: No such file or directory (errno ENOENT); retrying per restart
        policy in 0.1 s"."""
        self.core.push_front(name, Ev.SPAWN_FAILED, now, reason=msg, transient=transient)

    def _watch(self, name: str, pid: int, fd: int) -> None:
        """Watch a service's main process: our child (fd CHILD: SIGCHLD says when it
        exits) or another process through its pidfd."""
        self.pidfds[name] = (pid, fd)
        self.by_pid[pid] = name
        if fd != CHILD:
            self.sel.register(fd, selectors.EVENT_READ, ("pidfd", name))
            c = self.conf[name]
            if (c.memory_max or c.pids_max) and name not in self._limited and \
                    self.cgroups.active:
                self._apply_limits(name, c, quiet=True)  # adopted: its OOM kill count

    def _reap_children(self, now: float) -> None:
        """After SIGCHLD: handle up to EXIT_BATCH exited children, fewer once the round's
        budget is spent (the rest next round, so a status request is answered between
        batches while hundreds crash-loop)."""
        for i in range(EXIT_BATCH):
            if i and self._over_budget():
                break
            got = spawn.exited_child()
            if got is None:
                self.children_pending = False
                return
            pid, st = got
            name = self.by_pid.get(pid)
            self.progress += 1
            try:
                if name is not None and self.pidfds.get(name) == (pid, CHILD):
                    self._on_exit(name, now, st)
                elif pid in self.stop_cmds:
                    self._stop_command_done(pid, st)
                elif pid in self.post_cmds:
                    self._post_cmd_done(pid, st, now)
                elif pid in self.post_stop_cmds:
                    self._post_stop_done(pid, st, now)
                elif pid in self.reload_cmds:
                    self._reload_command_done(pid, st, now)
                else:
                    spawn.keep_for_later(pid, st)  # a probe or a former main process
            finally:
                spawn.release(pid)
        self.children_pending = True

    def _on_exit(self, name: str, now: float, status: ExitStatus | None = None) -> None:
        """The main process of `name` ended; `status` when it was our child (a zombie
        that _reap_children reaps once this returns)."""
        # What the service sent before it ended is read first (systemd orders them so
        # too): a daemon's launcher that named its server (MAINPID=) and exited at once
        # handed over, it did not fail. Exits can come first otherwise (a batch left
        # over from the last round, a signal's wakeup). hachain verify models this order.
        pid = self.pidfds[name][0]
        if self._notify_poll.poll(0):  # one system call: usually nothing was sent
            self._on_notify(now)
        if self.pidfds.get(name, (0,))[0] != pid:
            return  # no longer its main process (_unwatch saw to it)
        fd = self.pidfds[name][1]
        if fd != CHILD and status is None and fd not in self._reaping and \
                spawn.exit_pending(fd):
            # Adopted, exited, not reaped by init yet (a busy host delays init): its
            # status comes with the reap. Wait for that, not with the loop blocked.
            self.sel.unregister(fd)
            self._reap_ep.register(fd, 0)  # no event asked: only POLLHUP, the reap
            self._reaping[fd] = (name, now + REAP_WAIT)
            return
        pid, fd = self.pidfds.pop(name)
        self.by_pid.pop(pid, None)
        self._disarm(name)
        st = status or spawn.reap(pid)
        if fd != CHILD:
            if st is None or st.kind == "unknown":  # adopted: init reaped it
                # (after a wait for the reap: it came, or REAP_WAIT is over; no more)
                st = spawn.reaped_status(fd, wait=0 if fd in self._reaping else 0.05) or st
            if self._reaping.pop(fd, None) is not None:
                self._reap_ep.unregister(fd)
            else:
                self.sel.unregister(fd)
            os.close(fd)
        rfd = self.ready_fds.pop(name, None)
        if rfd is not None:
            self.sel.unregister(rfd)
            os.close(rfd)
        st = st or ExitStatus("unknown")
        limit = self.conf[name].memory_max
        killed = self.cgroups.active and (
            st.kind == "unknown" or (st.kind == "killed" and st.signal == signal.SIGKILL))
        if limit and killed and self.cgroups.oom_since(name):
            # (the exit's log line and the status say so)
            st = replace(st, oom="memory_max")
        self._zombie = pid if status is not None else None
        held = self.held_out.fds.pop(name, None)  # closed once the replacement runs
        if (c := self.conf[name]).post_stop and not (
                c.kind == "forking" and self.svcs[name].state is State.STARTING):
            # (before the exit's Spawn, which waits for it; a forking service's launcher
            # ending is no end of the service)
            self._post_stop(name, st, now)
        compiled, self._compiled = self._compiled, None  # (_compiled_exit)
        try:
            if compiled is not None:  # started already: taken, or killed (finally)
                self._ahead[name] = compiled[1]
            elif self.core.restarts_at_once(name, pid, st, now):
                # the replacement first: the exit's log lines, timers and records after
                calm = states.kills_leftovers(self.conf[name]) and spawn.kill_leftovers(
                    pid, name, self.cgroups, zombie=status is not None)
                self._ahead[name] = self._launch(name, now, thaw=not calm)
            if not limit and killed and self.cgroups.memory and self.cgroups.oom_since(name):
                # the machine's OOM killer: read after the replacement (no policy
                # depends on it, only what the exit says)
                st = replace(st, oom="machine")
            self.core.exited(name, pid, st, now)
            self.run_core(now)
        finally:
            self._zombie = None
            if name in self._ahead:
                self._drop_ahead(name)
            self.held_out.release(held)

    def _reaped(self, now: float) -> None:
        """Adopted exits whose reap has come (or whose REAP_WAIT is over): handled now,
        with the status the reap left (or unknown)."""
        done = [fd for fd, _ in self._reap_ep.poll(0)]
        done += [fd for fd, (_, due) in self._reaping.items() if due <= now and fd not in done]
        for fd in done:
            got = self._reaping.get(fd)
            if got is None:
                continue
            if self.pidfds.get(got[0], (0, None))[1] == fd:
                self._on_exit(got[0], now)
            else:  # no longer its main process (a bug if ever): never wake on it again
                del self._reaping[fd]
                self._reap_ep.unregister(fd)
                os.close(fd)

    # --- timers ---------------------------------------------------------------------------

    def arm(self, name: str, kind: Timer, delay: float, now: float) -> None:
        if delay == math.inf:  # stop_timeout / ready_timeout = inf: no timeout at all
            self.timer_live.pop((name, kind), None)
            return
        self.seq += 1
        self.timer_live[(name, kind)] = self.seq
        heapq.heappush(self.timers, (now + delay, self.seq, name, kind))

    def _fire(self, name: str, kind: Timer, now: float) -> None:
        if name == "":
            if kind is Timer.HEARTBEAT:
                self.heartbeat(now)
            elif kind is Timer.MACHINE and self.machine is not None:
                self.machine.tick(now)
                self._arm_machine(now)
            return
        if kind is Timer.RELOAD_TIMEOUT:
            self._reload_expired(name, now)
            return
        if kind is Timer.POST_STOP_TIMEOUT:
            self._post_stop_expired(name)
            return
        self.core.timer(name, kind, now)
        self.run_core(now)

    # --- forking services -------------------------------------------------------------------

    def _look_for_main(self, name: str, now: float, first: bool = True) -> None:
        """A forking service's launcher has exited: find its main process (pid_file or
        cgroup) and tell the core (MainFound: watch it). While it is not found the core
        has it looked for again every 50 ms; the table's ready timeout bounds the wait."""
        c = self.conf[name]
        st = self.launch_status.get(name, ExitStatus("unknown"))
        pid, why = spawn.main_pid(c, self.cgroups, self.launch_leftovers.get(name, frozenset()))
        if pid is not None and not c.pid_file and self._main_guess.pop(name, None) != pid:
            # A guess from the cgroup counts once the next look (50 ms on) agrees: for a
            # moment the session leader of a double fork can be its only root, before it
            # exits and leaves the master (seen with both cores busy).
            self._main_guess[name] = pid
            pid, why = None, f"main pid {pid} from the cgroup: looking again to confirm"
        fd = spawn.pidfd_open(pid) if pid is not None else None
        if pid is not None and fd is None:
            pid, why = None, f"main pid {pid} exited at once"
        if fd is not None:
            self._found[name] = fd
        self.core.launched(name, st, pid, why, first, now)

    # --- readiness ------------------------------------------------------------------------

    def _sender(self, pid: int) -> str | None:
        name = self.by_pid.get(pid)
        if name is not None:
            return name
        if self.cgroups.active and self.cgroups.root:
            try:
                with open(f"/proc/{pid}/cgroup") as f:
                    for line in f:
                        if line.startswith("0::"):
                            rel = line[3:].strip()
                            base = os.path.basename(rel)
                            if base in self.conf and rel.rstrip("/").endswith(
                                    os.path.basename(self.cgroups.root) + "/" + base):
                                return base
            except OSError:
                pass
        try:
            return self.by_pid.get(os.getpgid(pid))
        except OSError:
            return None

    def _on_notify(self, now: float, got: list[notify.Notification] | None = None,
                   senders: Mapping[int, str] | None = None) -> None:
        """Messages on the notify socket (`got`: already read, from `senders` too: the
        gone processes whose messages adoption used)."""
        for n in self.notify.drain(len(self.conf)) if got is None else got:
            kept: frozenset[int] = frozenset()
            try:
                kept = self._one_notification(n, now, senders)
            finally:
                # every descriptor it carried that was not stored is closed here (a
                # BARRIER=1's: that answers sd_notify_barrier())
                n.close_fds(kept)

    def _one_notification(self, n: notify.Notification, now: float,
                          senders: Mapping[int, str] | None) -> frozenset[int]:
        """One message: what it says is carried out; the descriptors it carried that were
        stored (the caller closes the rest)."""
        if n.fields.keys() == {"BARRIER"}:
            return frozenset()  # sd_notify_barrier(): the caller closes its fd, the answer
        name = self._sender(n.pid) if n.pid else None
        if name is None and senders:
            name = senders.get(n.pid)
        if name is None:
            what = ",".join(sorted(n.fields)) or n.error
            self._notify_warn("", f"warning: notify message ({what}) from pid "
                              f"{n.pid or '?'} that belongs to no service: ignored")
            return frozenset()
        if n.error:
            self._notify_warn(name, f"warning: {name}: bad notify message: {n.error}")
            return frozenset()
        f = n.fields
        kept = self._store_fds(name, n) if n.fds or "FDSTOREREMOVE" in f else frozenset()
        if "STATUS" in f:
            self.status_text[name] = f["STATUS"][:200]
        if f.get("WATCHDOG") == "1":
            self.core.watchdog_ping(name, now)
        if "EXTEND_TIMEOUT_USEC" in f:
            if (sec := notify.usec_field(f["EXTEND_TIMEOUT_USEC"])) is None:
                self._notify_warn(name, f"warning: {name}: EXTEND_TIMEOUT_USEC="
                                  f"{f['EXTEND_TIMEOUT_USEC'][:24]!r} is not a number "
                                  "of microseconds: ignored")
            else:
                self.core.extend_timeout(name, sec, now)
        if "MAINPID" in f:
            self._new_main_pid(name, f["MAINPID"], now)
        if f.get("STOPPING") == "1":
            self.status_text[name] = "stopping: " + self.status_text.get(name, "")
        if name in self.reloads and \
                (out := reloads.notified(self.reloads[name], f)) is not None:
            self._reload_over(name, out, now)
        if f.get("READY") == "1" and self.conf[name].ready == "notify":
            # (only a notify service's READY=1 says so: one with a watchdog has the
            # socket too, and is ready by its own kind, as under systemd)
            self.core.push(name, Ev.READY, now)
        self.run_core(now)
        return kept

    def _notify_warn(self, key: str, line: str) -> None:
        """A warning about a notify message from `key` (a service, "" for none), within
        the quota (notify.WarnQuota); the heartbeat says how many more there were."""
        if self.notify_warnings.allow(key):
            log(line)

    def _new_main_pid(self, name: str, value: str, now: float) -> None:
        """MAINPID=: the service says another of its processes is now the main one
        (a daemon that forks). Only a process of the same service is passed on, with its
        pidfd held; the table decides (core.MainFound)."""
        pid = notify.pid_field(value)
        if pid is None:  # (int() took 99999999999999999999, and getpgid() raised on it)
            self._notify_warn(name, f"warning: {name}: MAINPID={value[:24]!r} is not a pid: "
                              "ignored")
            return
        s = self.svcs[name]
        if name in self._found or pid == s.pid:
            # (a main pid being reported already: cannot happen between rounds; or its
            # main pid already: adoption read this message first)
            return
        same = self.cgroups.contains(name, pid) if self.cgroups.active else False
        if not same:
            try:
                same = s.pid is not None and os.getpgid(pid) == s.pid
            except OSError:
                same = False
        if not same:
            self._notify_warn(name, f"warning: {name}: MAINPID={pid} is not a process of this "
                              "service: ignored")
            return
        try:
            fd = spawn.pidfd_open(pid)
        except OSError:
            return
        if fd is None:
            return
        self._found[name] = fd
        self.core.main_pid(name, pid, now)

    def _unwatch(self, name: str) -> None:
        """Stop watching the main process `name` had (MAINPID= named another)."""
        old = self.pidfds.pop(name, None)
        if old is not None and old[1] == CHILD:
            self.by_pid.pop(old[0], None)  # our child: the SIGCHLD path reaps it
        elif old is not None:
            self.by_pid.pop(old[0], None)
            if self._reaping.pop(old[1], None) is not None:
                self._reap_ep.unregister(old[1])
            else:
                self.sel.unregister(old[1])
            if spawn.reap(old[0]) is None:
                # still running: reap it when it exits, so it never lingers as a zombie
                self.sel.register(old[1], selectors.EVENT_READ, ("reap", old[0]))
            else:
                os.close(old[1])

    def _on_ready_fd(self, name: str, now: float) -> None:
        fd = self.ready_fds.get(name)
        if fd is None:
            return
        r = notify.read_ready_fd(fd)
        if r:
            self.sel.unregister(fd)
            os.close(fd)
            del self.ready_fds[name]
            if r == "ready":
                self.feed(name, Ev.READY, now)

    # --- probes (exec / tcp readiness and health checks) -----------------------------------

    def _run_probe(self, name: str, purpose: str, now: float) -> None:
        """The core asked for a check (its timer fired in the right state)."""
        c = self.conf[name]
        if purpose == "ready" and c.ready == "none":
            # an adopted service in its pre_start program (states._adopt_running): ready
            # once that has exec'd the service's command
            pid = self.svcs[name].pid
            done = pid is not None and not in_pre_start(name, pid)
            self._probe_result(name, purpose, done, "" if done else "running pre_start", now)
            return
        if (name, purpose) in self.probes:
            return
        pkind = c.ready if purpose == "ready" else c.health.kind  # type: ignore[union-attr]
        try:
            main = self.svcs[name].pid
            if pkind == "exec" and main is not None and spawn.sandboxed(c):
                argv = c.ready_command if purpose == "ready" else c.health.command  # type: ignore[union-attr]
                pr = self._spawn_check(name, purpose, argv, main)
            elif pkind == "exec":
                argv = c.ready_command if purpose == "ready" else c.health.command  # type: ignore[union-attr]
                env = spawn.service_env(c, None)
                if c.env_file:  # as the service itself got it (its start said what failed)
                    try:
                        env.update(spawn.read_env_files(c)[0])
                    except spawn.SpawnError:
                        pass
                pr = probes.start_exec(name, purpose, argv, env, c.cwd,
                                       spawn.credentials(c), c.umask, spawn.oom_for(c))
            else:
                port = c.ready_port if purpose == "ready" else c.health.port  # type: ignore[union-attr]
                pr = probes.start_tcp(name, purpose, port)
        except spawn.SpawnError as e:  # its user or group does not resolve
            self._probe_result(name, purpose, False, f"cannot run check: {e}", now)
            return
        except OSError as e:
            self._probe_result(name, purpose, False, f"cannot run check: {e.strerror or e}", now)
            return
        if pr.fd < 0:
            self._probe_result(name, purpose, False, pr.detail or "check exited at once", now)
            return
        self.probes[(name, purpose)] = pr
        ev = selectors.EVENT_WRITE if pr.kind == "tcp" else selectors.EVENT_READ
        self.sel.register(pr.fd, ev, ("probe", (name, purpose)))
        limit = min(c.ready_timeout, 5.0) if purpose == "ready" else c.health.timeout  # type: ignore[union-attr]
        self.arm(name, _CHECK_TIMEOUT[purpose], limit, now)

    def _spawn_check(self, name: str, purpose: str, argv: tuple[str, ...], main: int
                     ) -> probes.Probe:
        """An exec check of a sandboxed service (spawn.sandboxed), run as its stop command
        runs: joined to the namespaces of its main process `main` (it sees the service's
        /tmp, /dev and loopback), in its cgroup, under its filters, capabilities and
        user, with MAINPID; its output discarded, as every check's is. SpawnError or
        OSError when it cannot run."""
        c = self.conf[name]
        cmd = replace(c, command=argv, kind="longrun", ready="none", pre_start=(),
                      pid_file=None, directories=(), condition=None, assertion=None,
                      env=c.env + (("MAINPID", str(main)),) + self._credentials_env(name, c))
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        join = spawn.join_namespaces(cmd, main)
        try:
            sp = spawn.spawn(cmd, self.log_dir, self.cgroups, None, out=devnull,
                             yield_cpu=False, join=join)
        finally:
            os.close(devnull)
            if join is not None:
                os.close(join[0])
        return probes.watch_exec(name, purpose, sp.pid)

    def _drop_probe(self, pr: probes.Probe) -> None:
        try:
            self.sel.unregister(pr.fd)
        except (KeyError, ValueError):
            pass
        self.timer_live.pop((pr.name, _CHECK_TIMEOUT[pr.purpose]), None)
        pr.close()

    def _on_probe(self, key: tuple[str, str], now: float) -> None:
        pr = self.probes.pop(key, None)
        if pr is None:
            return
        name, purpose = key
        c = self.conf[name]
        if pr.kind == "exec":
            ok = probes.finish_exec(pr)
        else:
            port = c.ready_port if purpose == "ready" else c.health.port  # type: ignore[union-attr]
            ok = probes.finish_tcp(pr, port)
        detail = pr.detail
        self._drop_probe(pr)
        self._probe_result(name, purpose, ok, detail, now)
        self.run_core(now)

    def _probe_result(self, name: str, purpose: str, ok: bool, detail: str, now: float) -> None:
        """A check's outcome, for the core to judge (its caller runs the core)."""
        if purpose == "health":
            self.health_detail[name] = detail
        self.core.probe_result(name, purpose, ok, detail, now)

    # --- heartbeat and status ---------------------------------------------------------------

    def poll_cluster(self, now: float) -> None:
        """[cluster]: which singletons this node may run now, from the cluster layer's
        heartbeat (its only channel to us): those it owns, while `now` is before
        `start_until`. A change is fed to the state table as OWNED / DISOWNED."""
        if self.cfg.cluster is None:
            return  # a single machine: no singletons (the configuration check)
        hb = channels.read_heartbeat(self.state_dir, "cluster", regular=True)
        x = hb.extra if hb is not None else {}
        self.cluster_seen = hb.mono if hb is not None else None
        until, owned, owners = x.get("start_until"), x.get("owned"), x.get("owners")
        grants: dict[str, int] = {}
        if isinstance(until, (int, float)) and now < until and isinstance(owned, dict):
            grants = {n: t for n, t in owned.items() if isinstance(t, int)
                      and n in self.conf and self.conf[n].singleton}
        cr = self.core
        old_owners = cr.grant_owners
        cr.grant_owners = {str(k): str(v) for k, v in owners.items()} \
            if isinstance(owners, dict) else {}
        old, cr.grants = cr.grants, grants
        for n, c in self.conf.items():
            if not c.singleton:
                continue
            if old.get(n) == grants.get(n) and self.beats:
                if n not in grants and old_owners.get(n) != cr.grant_owners.get(n):
                    cr.push(n, Ev.DISOWNED, now, reason="owner changed")  # the reason
                continue
            if n in old and n in grants:  # a new token: the running one is stale
                cr.push(n, Ev.DISOWNED, now, owned=False,
                        reason=f"fencing token changed ({old[n]} -> {grants[n]})")
            why = "granted" if n in grants else \
                ("lease not renewed in time" if isinstance(until, (int, float))
                 and now >= until else "ownership lost")
            cr.push(n, Ev.OWNED if n in grants else Ev.DISOWNED, now, reason=why)
        self.run_core(now)

    def _update_machine(self, now: float) -> None:
        """The machine checks of the running configuration (hachain/restarter/machine.py,
        imported only when there is one), and the rescue boot's holds of them."""
        if self.machine is None and self.cfg.checks:
            from hachain.restarter.machine import MachineChecks
            self.boot_id = self.boot_id or bootrecord.current_boot_id()
            restored, why = self.store.read_checks(self.boot_id)
            if why:
                log("warning: " + why)
            self.machine = MachineChecks(self.cfg.checks, self.cfg.chain.heartbeat_interval,
                                         self.sel, log, output=self._check_output,
                                         restored=restored)
        elif self.machine is not None:
            self.machine.update(self.cfg.checks, now)
        if self.machine is not None:
            self.machine.held = self.checks_held & set(self.cfg.checks)
            self._arm_machine(now)

    def _check_output(self, name: str) -> int:
        """A pipe for machine check `name`'s commands, its read end given to the logger
        as `check:NAME` with a service's default log limits; the write end."""
        out_r, out_w = self.logs.pipe()
        self.logs.send_as(out_r, channels.CHECK_PREFIX + name, ServiceConfig.log_max_bytes,
                          ServiceConfig.log_keep)
        return out_w

    def _arm_machine(self, now: float) -> None:
        t = self.machine.next_event() if self.machine is not None else None
        if t is None:
            self.timer_live.pop(("", Timer.MACHINE), None)
        else:
            self.arm("", Timer.MACHINE, max(0.0, t - now), now)

    def _release_check(self, name: str) -> dict[str, Any]:
        """`hachain clear check:NAME` (as `hachain clear --boot-loop` sends it): a check
        the rescue boot holds gates again."""
        check = name[len(bootrecord.CHECK_PREFIX):]
        if check not in self.checks_held:
            return {"ok": False, "error": f"check {check}: not held by a rescue boot"}
        self.checks_held.discard(check)
        if self.machine is not None:
            self.machine.held.discard(check)
        self._release_rescue(name)
        return {"ok": True, "name": name, "state": "released"}

    def heartbeat(self, now: float) -> None:
        """The heartbeat round: what is looked at once a heartbeat, then the beat itself,
        last, so that it says how things stand after it (as the compiled beats that may
        follow it repeat it: _compiled_beat)."""
        self.poll_cluster(now)
        self.beats += 1
        if self.beat_due:
            self.max_lag = max(self.max_lag, now - self.beat_due)
        while self.restart_times and self.restart_times[0] < now - STORM_WINDOW:
            self.restart_times.popleft()
        self.orphaned = self.orphaned or channels.init_gone(self.init)
        self.control.expire(now)
        for key, more in self.notify_warnings.roll(now):
            log(f"warning: {key or 'processes of no service'}: {more} more bad notify "
                f"message(s) in the last {self.notify_warnings.window:g} s, not logged")
        evicted, pids = self.control.take_evicted()
        if evicted:
            log(f"warning: control socket: {evicted} connection(s) closed as the oldest of "
                f"more than {self.control.max_conns} at once (peer pids "
                f"{', '.join(map(str, pids))}{', ...' if evicted > len(pids) else ''})")
        self.logs.tick(now)
        if (stalled := self.store.durable.stalled(now)) is not None:
            log(stalled)
        if spawn.RESOLVER.notes:  # (a name service that hung, or answers again)
            with spawn.RESOLVER.cond:
                notes, spawn.RESOLVER.notes = spawn.RESOLVER.notes, []
            for line in notes:
                log(line)
        try:  # before the look at what is kept there: a change after it shows (C beats)
            st = os.stat(self.state_dir)
            self.state_dir_seen = (st.st_dev, st.st_ino, st.st_mtime_ns)
        except OSError:
            self.state_dir_seen = None
        self._mend_state_dir(now)
        critical = self.core.critical_report()
        extra: dict[str, Any] = {"checks": self.machine.report(now)} \
            if self.machine is not None else {}
        self.hb.beat({**extra, "critical": critical,
                      "restart_rate": len(self.restart_times) / STORM_WINDOW,
                      "services": len(self.svcs), "reboot_requested": self.reboot_requested,
                      "logger": self.logs.status(),
                      "cluster_seen": self.cluster_seen,
                      "singletons_held": [n for n in self.singletons if
                                          self.svcs[n].state in (State.MAINTENANCE,
                                                                 State.FAILED)],
                      "singletons_up": [n for n in self.singletons if
                                        (self.svcs[n].pid is not None or
                                         self.svcs[n].state is State.STOPPING or
                                         states.is_up(self.svcs[n]))],
                      "progress": self.progress,
                      "compiled_restarts": self.compiled_restarts,
                      "compiled_armed": len(self._armed),
                      "backlog": len(self.core.later) + self._overdue(now)},
                     {"lag": _ms_up(self.max_lag), "timer_lag": _ms_up(self.timer_lag)})
        self.max_lag = self.timer_lag = 0.0
        self.beat_fresh = True  # nothing has happened since (_compiled_beat)
        self.beat_due = channels.next_tick(now, self.cfg.chain.heartbeat_interval)  # shared grid
        self.arm("", Timer.HEARTBEAT, self.beat_due - now, now)

    def _mend_state_dir(self, now: float) -> None:
        """Make again what this restarter keeps in state_dir and finds removed or
        replaced (an `rm -rf` of the run directory, a cleaner of /run): the service
        records (a later restarter re-adopts from them), the running snapshot (a layer
        started later runs this configuration, not the file on disk), the control and
        notify sockets, the lock; and ask the logger to make its own again (SIGHUP).
        A few stats per heartbeat; a failure is said once per path and tried again."""
        lost = self.kept.lost()
        # the logger's: gone, or not made yet by a logger still starting, which has no
        # SIGHUP handler until just before it makes them (the signal would kill it)
        logger_lost = (pid := self.logs.pid) is not None and not all(
            os.path.lexists(os.path.join(self.state_dir, name))
            for name in (channels.LOGGER_SOCKET, channels.LOGGER_LOCK)) and \
            _catches(pid, signal.SIGHUP)
        if not lost and not logger_lost:
            return
        made: list[str] = []
        for path in lost:
            try:
                self._mend(path, now)
            except (OSError, AlreadyRunning) as e:
                why = str(e) if isinstance(e, AlreadyRunning) else spawn.errno_text(e)
                if self.mend_failed.get(path) != why:
                    self.mend_failed[path] = why
                    log(f"warning: {path} was removed and cannot be made again: {why}; "
                        "trying again at each heartbeat")
                continue
            self.mend_failed.pop(path, None)
            self.kept.note(path)
            made.append(os.path.basename(path))
        if logger_lost and self.logs.pid is not None:
            try:
                os.kill(self.logs.pid, signal.SIGHUP)  # it makes its socket and lock again
            except OSError:
                pass
        if made:
            log(f"state_dir {self.state_dir}: made again what was removed or replaced: "
                f"{', '.join(made)}")

    def _mend(self, path: str, now: float) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        if path == self.store.rec_dir:
            os.makedirs(path, exist_ok=True)
            self.dirty.update(self.svcs)  # every record written again at the flush
            self._mend_credentials()
        elif path == self.control.path:
            self.urgent.unregister(self.control.sock)
            try:
                self.control.rebind()
            finally:
                self.urgent.register(self.control.sock, selectors.EVENT_READ)
        elif path == self.notify.path:
            old = self.notify.rebind()
            self.sel.unregister(old.fileno())
            self._notify_poll.unregister(old.fileno())
            self.sel.register(self.notify.fileno(), selectors.EVENT_READ, ("notify", None))
            self._notify_poll.register(self.notify.fileno(), select.POLLIN)
            got = self.notify.receive(self.notify.capacity, old)  # what it still queued
            old.close()
            if got:
                self._on_notify(now, got)
        elif path.endswith(channels.RESTARTER_LOCK):
            # never waited on here (take_lock may wait for a holder that is going)
            try:
                fd = channels.take_lock_file(path)
            except channels.LockHeld as e:
                raise AlreadyRunning(str(e)) from None
            os.close(self._lock_fd)
            self._lock_fd = fd
        elif self.snap is not None:  # the running snapshot
            from hachain import snapshot
            snapshot.restore_running(self.cfg, self.snap)

    def _mend_credentials(self) -> None:
        """The copies of the credentials of the services that run, made again where they
        went with state_dir (read from their sources now, as a start would)."""
        from hachain import credentials
        for name, c in self.conf.items():
            s = self.svcs.get(name)
            if not c.credentials or s is None or s.pid is None or \
                    os.path.isdir(credentials.directory(self.state_dir, name)):
                continue
            try:
                self._credentials_env(name, c, prepare=True)
            except spawn.SpawnError as e:
                log(f"warning: {name}: its credentials were removed with state_dir and "
                    f"cannot be made again: {e}")

    def _overdue(self, now: float) -> int:
        """Live service timers already due (restarts and checks waiting for their turn)."""
        return sum(1 for due, seq, name, kind in self.timers
                   if due <= now and name and self.timer_live.get((name, kind)) == seq)

    def service_status(self, name: str, now: float) -> dict[str, Any]:
        s, c = self.svcs[name], self.conf[name]
        extra: dict[str, Any] = {} if not c.post_stop else {  # its post_stop, while it runs
            "post_stop": self.post_stop_ids[name][0] if name in self.post_stop_ids else None}
        if c.listen:  # what is held open for it now (none while it is down for good)
            extra["listen"] = list(self.listening[name][0]) if name in self.listening else []
        if c.fd_store_max:
            store = self.fd_stores.get(name)
            extra["fd_store"] = list(store.names()) if store is not None else []
        return extra | {
            "state": s.state.value, "want": s.want, "pid": s.pid, "kind": c.kind,
            "uptime": round(now - s.started_at, 3) if s.pid and s.started_at else None,
            "restarts": s.restarts, "reason": s.reason, "critical": c.critical,
            "ready": c.ready, "status_text": self.status_text.get(name, ""),
            "last_exit": s.last_exit.to_json() if s.last_exit else None,
            "health": None if c.health is None else {
                "kind": c.health.kind, "failures": s.health_failures,
                "last": self.health_detail.get(name, "")},
            # kill_mode = "process": what earlier main processes left running in its cgroup
            "leftovers": self.cgroups.outside(name, s.pid) if self.cgroups.active and
            not states.kills_leftovers(c) else [],
            "reload": None if not reloads.configured(c) else {
                "running": name in self.reloads,
                "last": self.reload_last.get(name, ("", 0.0))[0],
                "age": round(now - self.reload_last[name][1], 3)
                if name in self.reload_last else None},
        }

    def reload(self, now: float) -> dict[str, Any]:
        """Apply a changed configuration file: validate it whole first; then start new
        services, restart changed ones, stop removed ones, leave the rest untouched."""
        from hachain import config as config_mod
        from hachain import snapshot
        try:
            # validated whole; only a good file becomes the running (and last-known-good)
            # snapshot that every later start of a layer uses
            new, snap = snapshot.accept(self.cfg.path, fallback=False, log=log,
                                        chain_id=os.environ.get(channels.ENV_CHAIN_ID, ""))
        except config_mod.ConfigError as e:
            log(f"reload refused, configuration unchanged: {e.errors[0]}")
            return {"ok": False, "error": "reload refused, nothing changed:\n" +
                    "\n".join(e.errors)}
        if new.chain != self.cfg.chain:
            log("reload: [chain] changes need a restart of the chain; applying services only")
        self.cfg, self.snap = new, snap
        self._update_machine(now)
        self.kept.note(os.path.join(self.state_dir, channels.RUNNING_CONFIG))
        self.cgroups.keep_for(len(new.services))
        self.held_out.keep_for(len(new.services))
        added, changed, removed = self.core.reload(new.services, now)
        self._limited.difference_update(changed)  # pids_max, memory_max: written again
        self.run_core(now)
        for n in [n for n in self.listening if n in removed and
                  (n not in self.svcs or self.svcs[n].state in _NO_CREDENTIALS)]:
            self._close_listen(n)
        for n in [n for n in self.fd_stores if n in removed and
                  (n not in self.svcs or self.svcs[n].state in _NO_CREDENTIALS)]:
            self._release_store(n)
        log(f"reloaded {self.cfg.path}: {len(added)} added, {len(changed)} changed, "
            f"{len(removed)} removed, {len(new.services) - len(added) - len(changed)} unchanged")
        return {"ok": True, "added": added, "changed": changed, "removed": removed}

    def handle_request(self, req: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        op = req["op"]
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "reload":
            rep = self.reload(now)
            self.flush()
            return rep
        if op == "status-doc":
            return self.status_document(req)
        if op == "status":
            return self.status_reply(now)
        if op == "clear" and str(req.get("name")).startswith(bootrecord.CHECK_PREFIX):
            return self._release_check(str(req.get("name")))
        if op in ("start", "stop", "restart", "clear"):
            name = req.get("name")
            error = self.core.request(op, name, now)
            if error is not None:
                return {"ok": False, "error": error}
            self.run_core(now)
            self.flush()
            s = self.svcs.get(str(name))  # (gone: a removed service that is down now)
            return {"ok": True, "name": name,
                    "state": s.state.value if s is not None else State.STOPPED.value}
        if op == "kill":
            return self.kill_request(req)
        if op == "reload-service":
            return self.reload_request(req, now)
        if op == "reload-result":
            return self.reload_result(req)
        return {"ok": False, "error": f"unknown op {op!r}"}

    def kill_request(self, req: dict[str, Any]) -> dict[str, Any]:
        """`kill`: send a signal to a service's main process, or (whom "all") to every
        process of its cgroup (its process group without cgroups), as `s6-svc -h`,
        `sv hup`, `supervisorctl signal` and `systemctl kill` do. Nothing else changes:
        a process the signal ends is an exit like any other, and the restart policy
        answers it. The main process is signalled through the pidfd the restarter
        watches it by (our own child: by pid, which cannot be reused before we reap it),
        so the signal never reaches a process that took over a recycled pid."""
        name, sig, whom = req.get("name"), req.get("signal"), req.get("whom", "main")
        if (error := self.core.unknown(name)) is not None:
            return {"ok": False, "error": error}
        if isinstance(sig, bool) or not isinstance(sig, int) or sig == 0 or \
                sig not in signal.valid_signals():
            return {"ok": False, "error": f"not a signal number: {sig!r}"}
        if whom not in ("main", "all"):
            return {"ok": False, "error": f"whom must be \"main\" or \"all\", not {whom!r}"}
        name = str(name)
        s = self.svcs[name]
        sent = self._signal(name, sig, whom)
        if isinstance(sent, str):
            return {"ok": False, "error": sent}
        if not sent:
            return {"ok": False, "error": f"no running process to signal ({s.state.value})"}
        what = (f"process group {sent[0]}" if whom == "all" and not self.cgroups.active
                else f"main pid {sent[0]}" if whom == "main"
                else f"{len(sent)} process(es) of its cgroup")
        log(f"{name}: {signal.Signals(sig).name if sig in _SIGNAMES else sig} sent to "
            f"{what} (hachain kill)")
        return {"ok": True, "name": name, "signal": sig, "pids": sent,
                "group": whom == "all" and not self.cgroups.active, "state": s.state.value}

    def _signal(self, name: str, sig: int, whom: str) -> list[int] | str:
        """Send `sig` to `name`'s main process (whom "main") or every process of its
        cgroup or process group ("all"): the pids it went to ([]: none runs), or why it
        could not be sent."""
        watched = self.pidfds.get(name)
        try:
            if whom == "all" and self.cgroups.active:
                return self.cgroups.signal_all(name, sig)
            if watched is None:
                return []
            pid, fd = watched
            if whom == "all":
                os.killpg(pid, sig)
            elif fd == CHILD:
                os.kill(pid, sig)
            else:
                signal.pidfd_send_signal(fd, sig)
            return [pid]
        except ProcessLookupError:
            return []
        except OSError as e:
            pid_text = f" (pid {watched[0]})" if watched else ""
            return f"{e.strerror or e}{pid_text}"

    # --- `hachain reload NAME` (reloads.py decides; these do) ------------------------------

    def reload_request(self, req: dict[str, Any], now: float) -> dict[str, Any]:
        """`reload-service`: begin a reload of a running service, or (one under way)
        queue one that begins once it is over, so that every request is answered by a
        reload that began after it. The reply carries the reload's id; `reload-result`
        says how it ended."""
        name = req.get("name")
        if (error := self.core.unknown(name)) is not None:
            return {"ok": False, "error": error}
        name = str(name)
        r = self.reloads.get(name)
        if r is not None:
            if not r.queued:
                r.queued = self._reload_id()
            return {"ok": True, "name": name, "id": r.queued, "queued": True}
        if (why := reloads.refusal(name, self.conf[name], self.svcs[name])) is not None:
            return {"ok": False, "error": why}
        ident = self._reload_id()
        self._begin_reload(name, ident, now)
        return {"ok": True, "name": name, "id": ident, "queued": False}

    def reload_result(self, req: dict[str, Any]) -> dict[str, Any]:
        """`reload-result`: how the reload `id` ended ({"done": false} while it runs)."""
        ident = req.get("id")
        if not isinstance(ident, str):
            return {"ok": False, "error": "id must be a string"}
        out = self.reload_outcomes.get(ident)
        if out is not None:
            return {"ok": True, "done": True, "reloaded": out.ok, "why": out.why}
        if any(ident in (r.id, r.queued) for r in self.reloads.values()):
            return {"ok": True, "done": False}
        return {"ok": False, "error": f"no reload {ident} known to this restarter (pid "
                f"{os.getpid()}): it restarted since, so how that reload ended is not "
                "known (the service's log says)"}

    def _reload_id(self) -> str:
        self._reload_seq += 1
        return f"{os.getpid()}.{self._reload_seq}"

    def _begin_reload(self, name: str, ident: str, now: float) -> None:
        c, s = self.conf[name], self.svcs[name]
        r = self.reloads[name] = reloads.begin(ident, c, s, now)
        if c.reload_command:
            cmd = replace(c, command=c.reload_command, kind="longrun", ready="none",
                          pre_start=(), pid_file=None, directories=(), condition=None,
                          assertion=None,
                          env=c.env + ((("MAINPID", str(s.pid)),) if s.pid else ()) +
                          self._credentials_env(name, c))
            sp = self._spawn_command(name, cmd, s.pid)
            if isinstance(sp, str):
                self._reload_over(name, reloads.Outcome(
                    ident, False, f"reload_command cannot run: {sp}"), now)
                return
            reloads.command_started(r, sp.pid)
            self.reload_cmds[sp.pid] = name
            if sp.start_time is not None:
                self.reload_ids[name] = (sp.pid, sp.start_time)
                self.dirty.add(name)  # its record names it: a new restarter carries it on
            log(f"{name}: reloading (reload_command pid {sp.pid})")
        else:
            sig = c.reload_signal or signal.SIGHUP
            sent = self._signal(name, sig, "main")
            if not sent or isinstance(sent, str):
                self._reload_over(name, reloads.Outcome(
                    ident, False, f"reload_signal not sent: {sent or 'no main process'}"),
                    now)
                return
            log(f"{name}: reloading ({signal.Signals(sig).name if sig in _SIGNAMES else sig}"
                f" sent to main pid {sent[0]})")
            if (out := reloads.signal_sent(r)) is not None:
                self._reload_over(name, out, now)
                return
        self.arm(name, Timer.RELOAD_TIMEOUT, c.reload_timeout, now)

    def _reload_command_done(self, pid: int, st: ExitStatus, now: float) -> None:
        name = self.reload_cmds.pop(pid)
        self._unwatch_command(pid)
        if self.reload_ids.get(name, (0,))[0] == pid:
            del self.reload_ids[name]
            if name in self.svcs:
                self.dirty.add(name)
        r = self.reloads.get(name)
        if r is None or r.command != pid:
            return  # a reload over before its command ended (killed then)
        if (out := reloads.command_exited(r, st)) is not None:
            self._reload_over(name, out, now)

    def _adopt_reload(self, name: str, cmd: tuple[int, int], now: float) -> None:
        """The previous restarter died while `name`'s reload_command ran: the reload goes
        on (a new request waits behind it, `hachain status` shows it), bounded by a fresh
        reload_timeout; its end is said, with a status init reaped."""
        c, s = self.conf[name], self.svcs[name]
        if reloads.refusal(name, c, s) is not None or not c.reload_command:
            return  # (no longer running as it was: the record is rewritten)
        if not self._watch_adopted_command(cmd):
            log(f"{name}: its reload_command ended while no restarter ran (status unknown)")
            self.dirty.add(name)
            return
        self._reload_seq += 1
        r = self.reloads[name] = reloads.begin(f"adopted-{self._reload_seq}", c, s, now)
        reloads.command_started(r, cmd[0])
        self.reload_cmds[cmd[0]] = name
        self.reload_ids[name] = cmd
        self.arm(name, Timer.RELOAD_TIMEOUT, c.reload_timeout, now)
        log(f"{name}: its reload_command (pid {cmd[0]}) still runs; the reload goes on")

    def _reload_expired(self, name: str, now: float) -> None:
        r = self.reloads.get(name)
        if r is not None and (out := reloads.expired(r, self.conf[name], now)) is not None:
            self._reload_over(name, out, now)

    def _reload_over(self, name: str, out: reloads.Outcome, now: float) -> None:
        """The reload of `name` ended (`out`): said in the log, kept for the client; its
        command, if it still runs, is killed (its exit, reaped later, is then ignored);
        a reload queued meanwhile begins."""
        r = self.reloads.pop(name)
        self.timer_live.pop((name, Timer.RELOAD_TIMEOUT), None)
        if r.command:
            self._kill_command(r.command)  # (its own process group)
        self._reload_outcome(name, out)
        if r.queued:
            c, s = self.conf.get(name), self.svcs.get(name)
            why = "removed by a configuration reload" if c is None or s is None \
                else reloads.refusal(name, c, s)
            if why is not None:
                self._reload_outcome(name, reloads.Outcome(r.queued, False, why))
            else:
                self._begin_reload(name, r.queued, now)

    def _reload_outcome(self, name: str, out: reloads.Outcome) -> None:
        text = "reloaded" if out.ok else f"reload failed: {out.why}"
        log(f"{name}: {text}")
        self.reload_last[name] = (text, time.monotonic())
        self.reload_outcomes[out.id] = out
        while len(self.reload_outcomes) > reloads.KEEP_OUTCOMES:
            del self.reload_outcomes[next(iter(self.reload_outcomes))]

    def status_reply(self, now: float) -> dict[str, Any]:
        """The `status` reply: this restarter and every service."""
        return {"ok": True, "restarter": {
            "pid": os.getpid(), "uptime": round(now - self.hb.started, 3),
            "restarts": self.hb.restarts, "services": len(self.svcs),
            "cgroups": self.cgroups.root if self.cgroups.active else None,
            "log_dir": self.log_dir,
            "reboot_requested": self.reboot_requested,
            "unwritten": self.store.unwritten(now),
            "compiled_beats": self.compiled_beats},
            "services": {n: self.service_status(n, now) for n in self.svcs},
            "checks": self.machine.status(now) if self.machine is not None else {}}

    def status_document(self, req: dict[str, Any]) -> dict[str, Any]:
        """`status-doc`: the whole output of `hachain status [--json]`, gathered and
        rendered here by hachain.status (the same code the CLI runs), for the native
        `hachain` front (hachain/_front.c), which then starts no interpreter. Refused, so
        that the front hands over to the Python CLI, when the asker sees other pids (another
        PID namespace) or names another persist_dir than this chain's."""
        persist = self.cfg.chain.persist_dir
        if req.get("pidns") != _own_pidns():
            return {"ok": False, "error": "asked from another PID namespace"}
        asked = req.get("persist_dir")
        if asked is not None and (not isinstance(asked, str) or "\0" in asked
                                  or os.path.realpath(asked) != os.path.realpath(persist)):
            return {"ok": False, "error": "another persist_dir than this chain's"}
        from hachain import status  # on the first request only (~5 ms)
        code, out = status.document(self.state_dir, persist,
                                    lambda _: self.status_reply(time.monotonic()),
                                    req.get("json") is True, req.get("tty") is True)
        return {"ok": True, "exit": code, channels.REPLY_BODY: out.encode()}

    # --- persistence ----------------------------------------------------------------------

    def flush(self) -> None:
        """Queue the records and admin state that changed, then make every pending write
        that can be made (persist.WriteQueue: retried each round until written)."""
        now = time.monotonic()
        for name in self.dirty:
            s = self.svcs[name]
            rec = RuntimeRecord(name=name, pid=s.pid,
                                start_time=self._start_times.get(name) if s.pid else None,
                                state=s.state.value, want=s.want, started_mono=s.started_at,
                                restarts=s.restarts, cgroup=self.cgroups.path(name),
                                stop_since=s.stop_since if s.state is State.STOPPING
                                else None,
                                stop_command=self.stop_cmd_ids.get(name)
                                if s.state is State.STOPPING else None,
                                post_start=self.post_ids.get(name) if s.in_post_start
                                else None,
                                post_stop=self.post_stop_ids.get(name),
                                reload=self.reload_ids.get(name),
                                sockets=tuple(os.fstat(sk.fileno()).st_ino
                                              for sk in self.listening[name][1])
                                if name in self.listening else None,
                                fd_store=self.fd_stores[name].described()
                                if name in self.fd_stores and self.fd_stores[name].entries
                                else None)
            if rec.pid and rec.start_time is None:
                rec = replace(rec, start_time=channels.proc_start_time(rec.pid))
                self._start_times[name] = rec.start_time
            self.store.write_record(rec, now)
        self.dirty.clear()
        self._write_stash()
        if self.admin_dirty and not self.shutting_down:
            self.admin = self.core.admin()
            self.store.write_admin(self.admin, now)
            self.admin_dirty = False
        if self.machine is not None and (standing := self.machine.standing()) is not None:
            self.store.write_checks(standing, self.boot_id, now)
        for msg in self.store.sync(now):
            log(msg)

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        try:
            return self._run()
        finally:
            if self.machine is not None:
                self.machine.close()  # a check or repair command still running
            release_log()

    def _run(self) -> int:
        if (problem := take_priority(self.cfg.chain.restarter_nice)) is not None:
            log(f"warning: {problem}")
        if (problem := channels.set_own_oom_score_adj(self.cfg.chain.oom_score_adj)) \
                is not None:
            log(f"warning: {problem}")
        spawn.note_own_oom_score_adj()  # what a service's own value is set against
        self._install_signals()
        if (problem := spawn.direct_spawn_problem()) is not None:
            log(f"warning: {problem}")
        now = time.monotonic()
        self.adopt_or_start(now)
        self._update_machine(now)
        self.logs.start(now)  # after re-adoption, which a slow hand-over must not delay
        self.flush()
        self.heartbeat(now)
        frozen = False
        round_start = time.monotonic()
        self.round_end = round_start + self.budget
        while True:
            now = time.monotonic()
            if now >= self.beat_due:
                self.heartbeat(now)  # first: never queued behind overdue restart timers
            fired = 0
            while self.timers and self.timers[0][0] <= now and fired < TIMER_BATCH:
                if fired and self._over_budget():
                    break
                due, seq, name, kind = heapq.heappop(self.timers)
                if self.timer_live.get((name, kind)) != seq:
                    continue
                del self.timer_live[(name, kind)]
                self.timer_lag = max(self.timer_lag, now - due)
                fired += 1
                self.beat_fresh = False
                self.progress += 1
                self._fire(name, kind, now)
            if self.core.later:
                self.beat_fresh = False
                self.progress += self.core.release(START_BATCH, now)
                self.run_core(now)
            self.flush()
            if self.shutting_down and self._shutdown_step(now):
                return 0
            if self.orphaned and not self.shutting_down:
                return self._leave_orphaned(now)
            if self.children_pending:
                self._reap_children(now)
            if self._reaping:
                self._reaped(time.monotonic())  # those whose REAP_WAIT is over
            if self._more_work(time.monotonic()):
                timeout = 0.0
            else:
                timeout = max(0.0, self.timers[0][0] - time.monotonic()) if self.timers \
                    else 1.0
                if self._reaping:
                    due = min(d for _, d in self._reaping.values())
                    timeout = min(timeout, max(0.0, due - time.monotonic()))
            release_log()
            self.max_lag = max(self.max_lag, time.monotonic() - round_start)
            # Control and signals first; then exits until the round's budget is spent (at
            # most EXIT_BATCH; the rest stay readable and come back next round), so
            # `hachain status` is answered within one bounded round even while hundreds
            # of services crash-loop.
            ready, restarted = self._wait(timeout)
            if ready or restarted is not None:
                self.beat_fresh = False
            if len(ready) > 1:
                ready.sort(key=lambda kv: _PRIORITY.get(kv[0].data[0], 1))
            if not frozen and (not ready or self.beats > 1):
                # Everything allocated so far lives as long as the restarter: keep the
                # cyclic GC from rescanning it on every collection (a restart allocates
                # little). At the first quiet moment, not before: after a restarter crash
                # the control requests queued meanwhile come first (~8 ms at 1000).
                gc.collect()
                gc.freeze()
                frozen = True
            round_start = time.monotonic()
            self.round_end = round_start + self.budget
            self.round_floor = round_start
            control = 0.0
            hold_log()
            if restarted is not None:  # before control: its exit came first
                self.progress += 1
                self._compiled_exit(restarted, round_start)
            exits = 0
            for key, _ in ready:
                if key.data[0] == "pidfd":
                    exits += 1
                    if exits > EXIT_BATCH or (exits > 1 and self._over_budget()):
                        continue
                self.progress += 1
                t = time.monotonic()
                try:
                    self._dispatch(key, t)
                    if key.data[0] in _PRIORITY:
                        # Control goes first, but a flood of requests must not stop
                        # restarts: this round's restart work gets as long as its control
                        # took before a waiting request can cut it short.
                        control += time.monotonic() - t
                        self.round_floor = time.monotonic() + control
                        self.round_end = max(self.round_end, self.round_floor)
                except Exception as e:  # never let one bad event take the restarter down
                    import traceback
                    release_log()
                    log(f"error: handling {key.data[0]} event: {type(e).__name__}: {e}")
                    ERR.write(traceback.format_exc().encode(errors="replace"))
                    hold_log()

    def _wait(self, timeout: float) -> tuple[list[tuple[selectors.SelectorKey, int]],
                                              tuple[int, ...] | None]:
        """The loop's wait: sel.select, or, where the compiled restart can be had, the
        same wait in _clone3.wait, which may also have started the replacement of an
        armed service whose exit woke it (docs/restarter.md, "The compiled restart")."""
        if self._chld_fd is None or not spawn.direct_spawn_available():
            return self.sel.select(timeout), None
        armed: dict[int, tuple[int, tuple, bytes]] = {}
        spare = self.logs.spare
        if timeout > 0 and spare is not None and not self.shutting_down and \
                not (self.core.queue or self.core.out or self.core.later):
            self._rearm()
            armed = self._armed
            if self.core.touched:  # more to arm: the next batch at once, not at the next
                timeout = 0.0  # wake-up (a thousand started: 16 quick rounds, then quiet)
        fd_map = self.sel.get_map()
        # (at most an hour: a far timer is looked at again, as any early wake-up)
        raw, restarted, beats, due_ns = spawn.compiled_wait(
            self.sel.fileno(), min(math.ceil(timeout * 1e3), 3_600_000),
            max(len(fd_map), 1), self._chld_fd, self.notify.fileno(), armed,
            spare[1] if spare is not None else -1, True,
            self._compiled_beat(timeout) if timeout > 0 else None)
        if beats:
            self._beaten(beats, due_ns / 1e9)
        ready = []
        for fd, ev in raw:  # as selectors.EpollSelector.select makes them
            key = fd_map.get(fd)
            if key is not None:
                events = (selectors.EVENT_WRITE if ev & ~select.EPOLLIN else 0) | \
                    (selectors.EVENT_READ if ev & ~select.EPOLLOUT else 0)
                ready.append((key, events & key.events))
        return ready, restarted

    def _compiled_beat(self, timeout: float) -> tuple | None:
        """_clone3.wait's `beat` (docs/restarter.md, "The compiled beat"): the idle
        heartbeats to come written by the wait itself, as the last one was, while nothing
        happens; None unless this wait ends at the heartbeat and everything the heartbeat
        round looks at is quiet. Up to COMPILED_BEATS in a row: then the Python round
        runs once (its slow looks: a stuck logger's time, a name service's notes)."""
        timers = self.timers
        if not self.beat_fresh or not timers or timers[0][3] is not Timer.HEARTBEAT or \
                self.timer_live.get(("", Timer.HEARTBEAT)) != timers[0][1] or \
                self.cfg.cluster is not None or self.machine is not None or \
                self._reaping or self.children_pending or self.shutting_down or \
                self.orphaned or self.control.conns or self.control.paused or \
                self.notify_warnings.count or self.store.durable.busy_since is not None \
                or spawn.RESOLVER.busy_since is not None or spawn.RESOLVER.notes:
            return None
        logs = self.logs
        if logs.pid is None or logs.pidfd is None or logs.stat_fd is None or \
                logs.pending or logs.stuck_since is not None:
            return None
        pidfds = [logs.pidfd]
        if self.init is not None:
            if (fd := channels.init_pidfd(self.init)) is None:
                return None
            pidfds.append(fd)
        seen = self.state_dir_seen
        if seen is None:
            return None
        # state_dir as the last round found it: while no entry of it was added, removed
        # or renamed, its modification time stays (one stat for all that is kept there);
        # a path kept elsewhere is looked at itself
        kept = [(os.fsencode(self.state_dir), *seen)]
        for path, (dev, ino) in self.kept.ids.items():
            if dev < 0:
                return None  # lost, and made again at each Python round until it can be
            if os.path.dirname(path) != self.state_dir:
                kept.append((os.fsencode(path), dev, ino, -1))
        made = self.hb.pieces(("lag",), {"timer_lag": 0.0})
        if made is None:
            return None
        fd, pieces, size = made
        period = self.cfg.chain.heartbeat_interval
        due = timers[0][0]
        until = due + COMPILED_BEATS * period
        for i in (1, 2):  # the next other timer is one of these, or later (a heap)
            if i < len(timers):
                until = min(until, timers[i][0])
        if self.restart_times:  # the restart rate the beat reports falls then
            until = min(until, self.restart_times[0] + STORM_WINDOW)
        return (fd, pieces, self.hb.seq, int(due * 1e9), int(period * 1e9), int(until * 1e9),
                size, tuple(pidfds), tuple(kept), logs.stat_fd, zlib.crc32)

    def _beaten(self, beats: int, due: float) -> None:
        """The wait wrote `beats` heartbeats: count them as the Python round's; the next
        one is due at `due` (past already when the wait left it to Python)."""
        self.hb.seq += beats
        self.beats += beats
        self.compiled_beats += beats
        self.beat_due = due
        now = time.monotonic()
        self.arm("", Timer.HEARTBEAT, max(0.0, due - now), now)

    def _rearm(self) -> None:
        """Make the compiled restart of every service stepped since the last look again
        (all of them when a kept cgroup descriptor was closed meanwhile: an arm may name
        its number)."""
        touched = self.core.touched
        if self.cgroups.closed_kept != self._armed_kept:
            self._armed_kept = self.cgroups.closed_kept
            touched.update(self._armed_pid)
        for name in touched:
            self._disarm(name)
        # (at most ARM_BATCH made per wait, so that a request waits for 64 at most after
        # a thousand starts or restarts; _wait comes back at once for the rest)
        for _ in range(min(len(touched), ARM_BATCH)):
            name = touched.pop()
            if (got := self._arm(name)) is not None:
                self._armed[got[0]] = got[1]
                self._armed_pid[name] = got[0]

    def _disarm(self, name: str) -> None:
        pid = self._armed_pid.pop(name, None)
        if pid is not None:
            self._armed.pop(pid, None)

    def _arm(self, name: str) -> tuple[int, tuple[int, tuple, bytes]] | None:
        """(main pid, what _clone3.wait needs) when every exit of `name`'s main process
        but those its policy leaves alone (the mask), whenever it comes, is restarted at
        once with nothing else to wait for (Core.at_once_mask, and nothing of this loop's
        pending for it) and its start is a plain clone3 (spawn.compiled_restart); else
        None. Any step of the service makes it again (_rearm)."""
        s = self.svcs.get(name)
        c = self.conf.get(name)
        if s is None or c is None or s.pid is None or not self.cgroups.active or \
                self.pidfds.get(name) != (s.pid, CHILD) or name not in self._limited or \
                c.post_start or c.condition is not None or c.assertion is not None or \
                c.requires_mounts_for or name in self._monitor_env or name in self.reloads \
                or name in self._ahead or name in self.post_ids or name in self.post_stop_ids:
            return None
        mask = self.core.at_once_mask(name, time.monotonic())
        if mask is None:
            return None
        got = spawn.compiled_restart(c, self.notify.path, self.cgroups)
        return None if got is None else (s.pid, (*got, mask))

    def _compiled_exit(self, restarted: tuple[int, ...], now: float) -> None:
        """_clone3.wait started the replacement of an armed service whose main process
        `pid` exited: that exit is handled now, first, with the replacement taken as the
        one restarts_at_once would have started. Not taken (which _arm rules out), it is
        killed before it runs on."""
        pid, code, status, born, born_by, new = restarted
        name = self.by_pid.get(pid)
        if name is not None and self.pidfds.get(name) != (pid, CHILD):
            name = None
        out_r, out_w = self.logs.spare  # type: ignore[misc]  # (its output, given it)
        self.logs.spare = None
        c = self.conf[name] if name is not None else None
        held = c is not None and self.held_out.may_hold()
        if not held:
            os.close(out_w)
        sp = spawn.compiled_spawned(c, new, born, born_by) if c is not None else \
            spawn.Spawned(pid=new, start_time=None, ready_fd=None)
        got = Launched(sp, out_r, out_w if held else None, c)  # type: ignore[arg-type]
        st = spawn.child_status(code, status)
        if name is None:  # (an arm outlived its service: a bug if ever; the exit is
            # left to _reap_children, this round)
            self._ahead["\0compiled"] = got
            self._drop_ahead("\0compiled")
            return
        self._disarm(name)
        self._procs_seen.pop(name, None)
        self._compiled = (name, got)
        try:
            self._on_exit(name, now, st)
            if self.pidfds.get(name, (0,))[0] == new:
                self.compiled_restarts += 1
        finally:
            spawn.release(pid)
            if self._compiled is not None:  # _on_exit returned before the restart
                self._ahead[name] = got
                self._compiled = None
                self._drop_ahead(name)

    def _over_budget(self) -> bool:
        """The round has spent its restart budget, or a control request or a signal is
        waiting: leave the rest of the restart work for the next round."""
        now = time.monotonic()
        if now >= self.round_end:
            return True
        return now >= self.round_floor and not self.control.paused and \
            bool(self.urgent.select(0))

    def _more_work(self, now: float) -> bool:
        """Restart work is already waiting (the next round must not sleep)."""
        return bool(self.core.later) or self.children_pending or \
            bool(self.timers and self.timers[0][0] <= now)

    def _dispatch(self, key: selectors.SelectorKey, now: float) -> None:
        kind, arg = key.data
        if kind == "pidfd":
            # (unless an event before it in this round let that pidfd go: an exit read a
            # MAINPID= of another launcher that exited too, and its service's watch moved
            # to the server it named; the event would take the server for dead)
            if self.sel.get_map().get(key.fd) is key:
                self._on_exit(arg, now)
        elif kind == "reap":
            self.sel.unregister(key.fd)
            os.close(key.fd)
            spawn.reap(arg)
        elif kind == "reaped":
            self._reaped(now)
        elif kind == "cmdfd":  # an adopted command ended (init reaps it)
            if arg in self.stop_cmds:
                self._stop_command_done(arg, ExitStatus("unknown"))
            elif arg in self.post_cmds:
                self._post_cmd_done(arg, ExitStatus("unknown"), now)
            elif arg in self.post_stop_cmds:
                self._post_stop_done(arg, ExitStatus("unknown"), now)
            elif arg in self.reload_cmds:
                self._reload_command_done(arg, ExitStatus("unknown"), now)
            else:
                self._unwatch_command(arg)
        elif kind == "notify":
            self._on_notify(now)
        elif kind == "readyfd":
            self._on_ready_fd(arg, now)
        elif kind == "probe":
            self._on_probe(arg, now)
        elif kind == "machine":
            if self.machine is not None:
                self.machine.on_event(arg, now)
                self._arm_machine(now)
        elif kind == "control-listen":
            self.control.on_accept()
        elif kind == "control-conn":
            if arg in self.control.conns:
                if key.events & selectors.EVENT_WRITE:
                    self.control.on_writable(arg)
                else:
                    self.control.on_readable(arg)
        elif kind == "sigchld":
            # The exits first, the read that empties the signalfd after them (~17 us off
            # the restart path), then a look for an exit whose SIGCHLD that read took.
            self._reap_children(now)
            spawn.drain_signalfd(key.fd)
            if not self.children_pending:  # (else the next round looks anyway)
                self._reap_children(now)
        elif kind == "signal":
            self._on_signal_fd(now)

    def _on_signal_fd(self, now: float) -> None:
        try:
            while self._sig_r.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        sigs, self.pending_signals = self.pending_signals, []
        self._reap_children(now)  # SIGCHLDs merge: look for exited children on any wakeup
        for sig in sigs:
            if sig in (signal.SIGTERM, signal.SIGINT) and not self.shutting_down:
                log(f"received {signal.Signals(sig).name}: stopping services in reverse "
                    "dependency order")
                self.core.begin_shutdown()
            elif sig == signal.SIGHUP and not self.shutting_down:
                self.reload(now)

    def _leave_orphaned(self, now: float) -> int:
        """Init is gone: exit at once, stopping nothing, every record written (flush ran
        this round), for the restarter of the next `hachain run` to re-adopt."""
        up = sum(1 for s in self.svcs.values() if s.pid)
        log(f"{self.orphaned}: exiting, leaving {up} running service(s) to the next chain")
        self._last_writes(now)
        return 0

    def _last_writes(self, now: float) -> None:
        """At exit: the durable writes get EXIT_WRITE_WAIT s; what is left is said lost."""
        self.store.close(EXIT_WRITE_WAIT)
        for u in self.store.unwritten(now, limit=1 << 30, all_of_them=True):
            log(f"error: exiting with {u['path']} unwritten ({u['error']}): lost")

    def _shutdown_step(self, now: float) -> bool:
        """Advance the orderly shutdown; True when every service is down (and the
        post_stop commands of the last ends have run: stop_timeout bounds them)."""
        while self.core.stop_levels:
            self.core.stop_level(now)
            self.run_core(now)
            if not self.core.level_stopped():
                return False
        if self.post_stop_cmds:
            return False
        self.flush()
        self.logs.drop_spare()
        self.logs.stop()
        # Nothing runs any more: the next restarter starts from the configuration (a
        # oneshot runs again), not from records of this run.
        for name in self.svcs:
            self.store.drop_record(name, now)
            self.cgroups.remove(name)  # empty now; rmdir refuses otherwise
        for msg in self.store.sync(now):
            log(msg)
        self._last_writes(now)
        if self.cgroups.root:
            try:
                os.rmdir(self.cgroups.root)
            except OSError:
                pass
        # the last word: every service is reaped (the cluster layer may give its lease
        # back at once: docs/cluster.md, "an orderly stop")
        self.hb.beat({"stopped": True, "singletons_up": [], "cluster_seen": self.cluster_seen})
        return True


def round_budget(cfg: Config) -> float:
    """How long one loop round may spend on restart work before it polls again: an eighth
    of the heartbeat interval and of the gate's lag bound, at most ROUND_BUDGET_MAX. A
    round always does at least one item of each kind (one spawn may take a few ms more)."""
    return min(ROUND_BUDGET_MAX, cfg.chain.heartbeat_interval / 8,
               cfg.watchdog.max_loop_lag / 8)


def since_process_start() -> float:
    """Seconds since this process was created (from /proc/self/stat, 10 ms resolution)."""
    try:
        ticks = channels.proc_start_time(os.getpid()) or 0
        return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return 0.0


def _socket_owner(key: str, name: str | None, lookup: Any) -> int | None:
    """The id `name` (socket_user or socket_group) stands for; ListenError naming the key
    when the host has no such user or group."""
    if name is None:
        return None
    try:
        return int(lookup(name))
    except KeyError:
        from hachain import listen
        raise listen.ListenError(f'{key} = "{name}": no such {key[7:]}') from None


def _socket_settings(c: ServiceConfig) -> tuple[Any, ...]:
    """What a service's listen sockets are opened with, besides their addresses: one of
    them changed by a reload opens them afresh at its next start."""
    return (c.listen_backlog, c.socket_mode, c.socket_user, c.socket_group,
            c.socket_options, c.socket_receive_buffer, c.socket_send_buffer)


def _ms_up(seconds: float) -> float:
    """A lag as the heartbeat reports it: in whole milliseconds, rounded up (never below
    what it was). Sub-millisecond noise would change the record at every beat, and the
    gate's bounds are 10 ms at the least; the compiled beat writes it so too."""
    return math.ceil(seconds * 1000) / 1000


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (its SigCgt in /proc)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _inherited_fd(var: str) -> int | None:
    """A socket fd init handed down in `var`, when it names an open socket."""
    import stat
    try:
        fd = int(os.environ.pop(var, ""))
        return fd if stat.S_ISSOCK(os.fstat(fd).st_mode) else None
    except (ValueError, OSError):
        return None
