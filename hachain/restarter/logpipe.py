"""Effects: the restarter's side of the logger (docs/logs.md).

Owns: the pipe each spawned service writes its stdout and stderr into, passing the read
end to the logger, and keeping exactly one logger process running for the chain
(starting it, taking it over from a previous restarter, restarting it when it dies).
Must not: read a service's output or touch a log file (the logger does), or keep a
descriptor per service: every descriptor the restarter holds is copied into each child
it spawns, so it holds only the four sockets shared with the logger and a pidfd.

Some facts this code relies on:

- The inbox is a socketpair whose two ends the restarter and the logger both hold. A
  read end sent on it waits in the receiving end's queue, which lives as long as
  either process holds that end: a logger that dies loses nothing sent to it, and
  a restarter that dies loses nothing it sent. Only a full queue (the logger far
  behind) makes a send fail; such read ends wait here, in `pending`, and go out later.
- A new restarter finds the running logger through its hand-over socket and receives
  the four sockets from it (SCM_RIGHTS); when none answers, it starts a logger with
  new sockets. A second logger started by mistake exits at once (the logger's lock).
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable

from hachain import channels
from hachain.configtypes import ServiceConfig
from hachain.logger import wire
from hachain.restarter import spawn

RESTART_DELAY = 1.0  # between a logger's exit and its restart (init's delay for layers)
PENDING_MAX = 4096  # read ends kept here while the inbox is full; then the oldest go
STOP_SECONDS = 3.0  # how long an orderly shutdown waits for the logger to finish
HANDOVER_SECONDS = 1.0  # a running logger answers a new restarter within this
MAX_FD = 1 << 20  # closerange's end in the forked logger (close_range(2): no cost)
STUCK_BEATS = 5  # heartbeats a logger may stay stopped, or leave its inbox full


def fork_logger(args: list[str], keep: list[int]) -> int:
    """Start the logger as a fork of this process, not a new interpreter: it runs at once
    (no start-up and import of its own, ~80 ms) and shares the pages of every module it
    uses with the restarter (docs/benchmarks.md, memory). The child keeps only stdin
    (/dev/null), stdout, stderr and the four sockets `keep`, in a session of its own, with
    default signals, as the exec'd logger had. Its pid; OSError when fork fails."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _become_logger(args, keep)
        from hachain.logger import main as logger_main
        code = logger_main.main(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # noqa: BLE001 - the child must end here, whatever happens
        with contextlib.suppress(OSError):
            os.write(2, channels.log_line("hachain-logger", f"failed to start: {e!r}"))
    finally:
        os._exit(code)


def _become_logger(args: list[str], keep: list[int]) -> None:
    """In the forked child: drop everything of the restarter's that the logger must not
    hold (above all the restarter's lock, the services' pidfds and pipes, the control
    socket), then look like a process of its own."""
    gc.freeze()  # the restarter's objects: never scanned (and so never copied) here
    os.setsid()
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    # SIGHUP asks the logger to make its socket and lock again (the restarter sends it
    # when state_dir lost them); one sent before the logger's handler is in place, while
    # this child still showed the restarter's, is of no use and must not kill it
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, MAX_FD)
    null = os.open(os.devnull, os.O_RDONLY)
    if null != 0:
        os.dup2(null, 0)
        os.close(null)
    os.environ[wire.ENV_FDS] = ",".join(str(fd) for fd in keep)
    channels.set_process_name("hachain-logger")


class LogPipes:
    """The logger as the restarter sees it: sockets, pid, read ends still to send."""

    def __init__(self, state_dir: str, log_dir: str, log: Callable[[str], None],
                 heartbeat_interval: float = 1.0) -> None:
        self.state_dir = state_dir
        self.stuck_after = STUCK_BEATS * heartbeat_interval  # then it is replaced
        self.log_dir = log_dir
        self.log = log
        self.socks: wire.Sockets | None = None
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.stat_fd: int | None = None  # the logger's /proc/PID/stat, open
        self.started = 0  # loggers started by this restarter
        self.due = 0.0  # when to (re)start the logger if none runs
        self.pending: deque[tuple[int, wire.PipeInfo]] = deque()
        self.stuck_since: float | None = None
        self.spare: tuple[int, int] | None = None  # the next spawn's pipe, made ahead

    # --- the logger process -------------------------------------------------------------

    def start(self, now: float) -> None:
        """Take over a running logger, or start one."""
        if not self.adopt():
            self.spawn_logger(now)

    def adopt(self) -> bool:
        """Ask a running logger for its sockets through the hand-over socket."""
        path = os.path.join(self.state_dir, wire.HANDOVER_SOCKET)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            s.settimeout(HANDOVER_SECONDS)
            s.connect(path)
            data, fds, _f, _a = socket.recv_fds(s, 4096, 8, socket.MSG_CMSG_CLOEXEC)
        except TimeoutError:
            self._kill_if_stopped()
            return False
        except OSError:
            return False
        finally:
            s.close()
        try:
            pid = int(channels.loads(data)["pid"])
            if len(fds) != 4:
                raise ValueError(f"{len(fds)} descriptors")
        except (ValueError, KeyError, TypeError) as e:
            wire.close_all(fds)
            self.log(f"logger hand-over: bad answer ({e}); starting a new logger")
            return False
        if self.socks is not None:
            self._salvage()
            self.socks.close()
        self.socks = wire.Sockets.from_fds(fds)
        self._watch(pid)
        self.log(f"took over the running logger (pid {pid})")
        return True

    def _salvage(self) -> None:
        """Before our own sockets are dropped for a running logger's: read ends still
        queued on them (sent while a logger of ours was starting) go to `pending`, and
        from there to the logger taken over (it ignores a pipe it holds already)."""
        assert self.socks is not None
        for sock in (self.socks.inbox_r, self.socks.stash_r):
            while (got := wire.recv(sock)) is not None:
                data, fds = got
                infos = wire.decode(data, len(fds))
                if infos is None:
                    wire.close_all(fds)
                    continue
                self.pending.extend(zip(fds, infos, strict=True))

    def _kill_if_stopped(self) -> None:
        """The logger holding the lock does not answer the hand-over (or had not
        opened it yet): if it is stopped (SIGSTOP), it is hung; kill it, so the next
        attempt starts a new one."""
        path = os.path.join(self.state_dir, wire.LOCK_FILE)
        try:  # (regular: a FIFO there is not waited on)
            pid = int(channels.read_small(path, regular=True).split()[0])
        except FileNotFoundError:
            return  # not written yet
        except (OSError, ValueError, IndexError) as e:
            self.log(f"{path}: cannot read the logger's pid ({e}): not checked for a "
                     "stopped logger")
            return
        if pid <= 0:
            return
        if channels.proc_state(pid) in ("T", "t"):
            self.log(f"logger (pid {pid}) is stopped and does not answer: killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def spawn_logger(self, now: float) -> None:
        if self.socks is None:
            self.socks = wire.Sockets.new()
        args = ["--state-dir", self.state_dir, "--log-dir", self.log_dir,
                "--restarter-pid", str(os.getpid())]
        try:
            pid = fork_logger(args, self.socks.fds())
        except OSError as e:
            self.log(f"cannot start the logger: {e}; retrying in {RESTART_DELAY} s")
            self.due = now + RESTART_DELAY
            return
        self.started += 1
        self._watch(pid)
        self.log(f"started the logger (pid {pid})")

    def _watch(self, pid: int) -> None:
        self._unwatch()
        self.pid = pid
        try:
            self.pidfd = os.pidfd_open(pid)
        except OSError:
            self.pidfd = None  # gone already: tick() sees it
        try:  # kept open: each heartbeat's look at its state is one pread (_stuck)
            self.stat_fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.stat_fd = None

    def _unwatch(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
        if self.stat_fd is not None:
            os.close(self.stat_fd)
        self.pid = self.pidfd = self.stat_fd = None

    def alive(self) -> bool:
        if self.pidfd is None:
            return False
        return not channels.readable(self.pidfd)

    def tick(self, now: float) -> None:
        """From the heartbeat: notice a dead logger, restart it when due, send what waits."""
        if self.pid is not None and not self.alive():
            st = spawn.reap(self.pid)
            self.log(f"logger (pid {self.pid}) {st.describe() if st else 'exited'}; "
                     f"restarting in {RESTART_DELAY} s")
            self._unwatch()
            self.due = now + RESTART_DELAY
            if st is not None and st.kind == "exited" and st.code == wire.LOCKED_EXIT:
                self._kill_if_stopped()  # the holder may be stopped before it could answer
        elif self.pid is not None and (why := self._stuck(now)):
            self.log(f"logger (pid {self.pid}) {why}: killing it (the pipes it holds wait "
                     "in the stash for the next one)")
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.stuck_since = None
        if self.pid is None and now >= self.due and not self.adopt():
            self.spawn_logger(now)
        self.flush()

    def _stuck(self, now: float) -> str | None:
        """Why the logger counts as hung (stopped, or its inbox left full, for
        `stuck_after` seconds), or None. Costs no wake-up of the logger."""
        why = None
        if self._state() in ("T", "t"):
            why = "stopped"
        elif self.pending:
            why = "not taking new pipes (its inbox is full)"
        if why is None:
            self.stuck_since = None
            return None
        if self.stuck_since is None:
            self.stuck_since = now
        if now - self.stuck_since < self.stuck_after:
            return None
        return f"{why} for {now - self.stuck_since:.1f} s"

    def _state(self) -> str | None:
        """The logger's state letter (R, S, T, ...), or None when gone."""
        if self.stat_fd is None:
            return channels.proc_state(self.pid or 0)
        try:
            raw = os.pread(self.stat_fd, 1024, 0)
            return raw[raw.rindex(b")") + 2:][:1].decode()
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """At the end of an orderly shutdown (no service runs): let the logger write
        what is left and exit; bounded."""
        self.flush()
        if self.pid is None or self.pidfd is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        channels.readable(self.pidfd, STOP_SECONDS)
        spawn.reap(self.pid)
        self._unwatch()

    def status(self) -> dict[str, object]:
        return {"pid": self.pid, "pending": len(self.pending), "started": self.started}

    # --- pipes ------------------------------------------------------------------------

    def pipe(self) -> tuple[int, int]:
        """(read end, write end) for a service about to be spawned: the spare one made
        after the last spawn (make_spare), else a new one."""
        got, self.spare = self.spare, None
        return got if got is not None else os.pipe2(os.O_CLOEXEC)

    def make_spare(self) -> None:
        """Make the next spawn's pipe now, after a spawn: a pipe2 less on the restart path
        (~25 us there after a quiet second). Both ends are close-on-exec, and the forked
        logger closes them (fork_logger), so nobody else holds them when a service gets
        them. A failure is left for the spawn itself to meet and report."""
        if self.spare is None:
            with contextlib.suppress(OSError):
                self.spare = os.pipe2(os.O_CLOEXEC)

    def drop_spare(self) -> None:
        for fd in self.spare or ():
            os.close(fd)
        self.spare = None

    def send(self, rfd: int, cfg: ServiceConfig) -> None:
        """Give the read end of a spawned service's pipe to the logger."""
        self.send_as(rfd, cfg.name, cfg.log_max_bytes, cfg.log_keep)

    def send_as(self, rfd: int, name: str, max_bytes: int, keep: int) -> None:
        """Give the logger a read end whose output goes to `<log_dir>/<name>.log`."""
        self.pending.append((rfd, wire.PipeInfo(name, max_bytes, keep)))
        self.flush()

    def flush(self) -> None:
        """Send the waiting read ends, a batch per message, until the inbox is full."""
        if self.socks is None:
            self._bound_pending()
            return
        while self.pending:
            batch = [self.pending[i] for i in range(min(len(self.pending), wire.MAX_FDS))]
            try:
                wire.send(self.socks.inbox_w, [i for _, i in batch], [fd for fd, _ in batch])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self.log(f"cannot pass pipes to the logger: {e}")
                break
            for _ in batch:
                os.close(self.pending.popleft()[0])
        self._bound_pending()

    def _bound_pending(self) -> None:
        """Keep `pending` bounded while no logger takes anything: pipes whose writers
        are all gone go first, then the oldest."""
        if len(self.pending) <= PENDING_MAX:
            return
        p = select.poll()
        for fd, _ in self.pending:
            p.register(fd, select.POLLIN)
        hung = {fd for fd, ev in p.poll(0) if ev & select.POLLHUP and not ev & select.POLLIN}
        keep = deque((fd, i) for fd, i in self.pending if fd not in hung)
        for fd in hung:
            os.close(fd)
        while len(keep) > PENDING_MAX:
            fd, info = keep.popleft()
            os.close(fd)
            self.log(f"{info.name}: an output pipe was closed: no logger took it in time")
        self.pending = keep

