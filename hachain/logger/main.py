"""hachain-logger: reads every service's output pipe and writes bounded log files.

Owns: the read ends of the services' stdout/stderr pipes, the log files they go to
(through `writer.Writer`, whose thread makes every write: a log disk that hangs never
stops this loop), and the stash that keeps those read ends open while no logger runs.
Must not: start, stop or signal a service, or decide anything about one. It is started
by the restarter (docs/logs.md), one per chain, and outlives a restarter crash.

Some facts this code relies on:

- A pipe whose last read end closes makes every write to it fail with EPIPE, and
  SIGPIPE kills a writer that does not handle it. So a read end must never be without a
  holder while its service runs. A full pipe, on the other hand, only blocks the writer
  until someone reads: that is the backpressure this logger gives a service writing
  faster than the disk (or the logger) takes it, as s6-log and svlogd do.
- A descriptor sent with SCM_RIGHTS and not yet received lives in the receiving
  socket's queue: the kernel holds it open, owned by no process. The stash is such a
  queue (a socketpair the restarter holds too): every read end the logger holds also
  waits there, so a logger killed at any moment leaves them open, and its successor
  takes them back. Entries of pipes that have since closed are dropped by compaction.
- O_NONBLOCK on the read end belongs to the read end's open file only; the service's
  write end stays blocking.
- Pipe inodes are unique while the pipe exists, so (st_dev, st_ino) names a pipe across
  the several descriptors that refer to it.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import struct
import sys
import time

from hachain import channels
from hachain.logger import wire
from hachain.logger.writer import STALL_SECONDS, Writer

CHUNK = 64 * 1024  # one read per ready pipe per round: the default pipe capacity
HOLD_MAX = 4096  # an unfinished line waits for its newline up to this many bytes...
HOLD_SECONDS = 0.2  # ...or this long, so a line cut by the writer's buffer stays whole
STASH_SLACK = 32  # stash messages beyond the minimum before it is compacted
DRAIN_SECONDS = 1.0  # on SIGTERM: how long to keep reading what is still buffered
ERR_RETRY = 1.0  # s between tries to write log lines a stuck stderr did not take
IDLE_EXIT = 0  # exit status when there is nothing to hold and no restarter to serve


# stderr, never waited on (channels.ErrOut), made in main(): a forked logger must not
# take the restarter's, whose descriptor it closes
_ERR: list[channels.ErrOut] = []


def log(msg: str) -> None:
    line = channels.log_line("hachain-logger", msg)
    if _ERR:
        _ERR[0].write(line)
        return
    try:
        os.write(2, line)
    except OSError:
        pass


def follows(peer: int, holder: int | None) -> bool:
    """Whether a hand-over's peer becomes the restarter the logger follows: any peer
    while no live restarter holds the lock (a logger started by hand), else only that
    restarter (root's `socat` on logger.sock gets the sockets, not the logger's watch)."""
    return holder is None or peer == holder


def take_lines(held: bytes, data: bytes) -> tuple[bytes, bytes]:
    """(what to write now, what to hold back) after `data` was read behind `held`.

    Writers flush whole buffers, not whole lines: the unfinished last line waits for
    its end (up to HOLD_MAX bytes), so a rotation never falls inside it and another
    pipe's output of the same service never lands in the middle of it."""
    if held:
        data = held + data
    cut = data.rfind(b"\n") + 1
    if 0 < len(data) - cut <= HOLD_MAX:
        return data[:cut], data[cut:]
    return data, b""


class Pipe:
    __slots__ = ("fd", "ino", "info", "held", "held_since")

    def __init__(self, fd: int, ino: tuple[int, int], info: wire.PipeInfo) -> None:
        self.fd = fd
        self.ino = ino
        self.info = info
        self.held = b""  # the unfinished last line of what was read, not written yet
        self.held_since = 0.0


class Logger:
    def __init__(self, state_dir: str, log_dir: str, socks: wire.Sockets,
                 restarter_pid: int | None) -> None:
        self.state_dir = state_dir
        self.log_dir = log_dir
        self.socks = socks
        self.ep = select.epoll()
        self.pipes: dict[int, Pipe] = {}
        self.by_ino: dict[tuple[int, int], int] = {}
        self.per_name: dict[str, int] = {}  # pipes held per service
        self.holding: set[int] = set()  # pipes with an unfinished line held back
        self.stashed = 0  # messages in the stash
        self.stopping = False
        self.restarter_fd: int | None = None
        self.restarter_pid: int | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda _s, _f: self._stop())
        # SIGHUP: the restarter found our socket or lock removed from state_dir (mend)
        self.mend_asked = False
        self.lock_fd: int | None = None  # set by main
        signal.signal(signal.SIGHUP, self._ask_mend)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.handover = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        path = os.path.join(state_dir, wire.HANDOVER_SOCKET)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            self.handover.bind(path)
        finally:
            os.umask(old)
        self.handover.listen(8)
        self.handover.setblocking(False)
        self.kept = channels.Kept()
        self.kept.note(path)
        self.kept.note(os.path.join(state_dir, wire.LOCK_FILE))
        self.ep.register(self._wake_r.fileno(), select.EPOLLIN)
        self.ep.register(self.handover.fileno(), select.EPOLLIN)
        self.ep.register(socks.inbox_r.fileno(), select.EPOLLIN)
        self.watch_restarter(restarter_pid)
        # the log files, every write made by its thread; after the hand-over socket
        # listens, which a new restarter may be waiting for
        self.writer = Writer(log_dir, log)

    def _stop(self) -> None:
        self.stopping = True

    def _ask_mend(self, _sig: int, _frame: object) -> None:
        self.mend_asked = True

    def mend(self) -> None:
        """Make our hand-over socket and lock again where state_dir lost them (cleaned
        by hand): without them a new restarter would not find us and would start a second
        logger on the same files. Asked by the restarter (SIGHUP), which checks their
        paths at each heartbeat."""
        for path in self.kept.lost():
            try:
                if path.endswith(wire.HANDOVER_SOCKET):
                    new = channels.bind_unix(path, socket.SOCK_SEQPACKET, 0o600)
                    new.listen(8)
                    self.ep.unregister(self.handover.fileno())
                    self.handover.close()
                    self.handover = new
                    self.ep.register(new.fileno(), select.EPOLLIN)
                else:
                    fd = take_lock(self.state_dir)
                    if fd is None:
                        log(f"{path} was removed and another logger holds the new one")
                        continue
                    if self.lock_fd is not None:
                        os.close(self.lock_fd)
                    self.lock_fd = fd
            except OSError as e:
                log(f"{path} was removed and cannot be made again: {e.strerror or e}")
                continue
            self.kept.note(path)
            log(f"{path} was removed: made again")

    # --- the restarter ----------------------------------------------------------------

    def watch_restarter(self, pid: int | None) -> None:
        """Follow the restarter `pid` (the one that started or last adopted us)."""
        if self.restarter_fd is not None:
            self.ep.unregister(self.restarter_fd)
            os.close(self.restarter_fd)
            self.restarter_fd = None
        self.restarter_pid = None
        if pid is None or pid <= 1:
            return
        try:
            self.restarter_fd = os.pidfd_open(pid)
        except OSError:
            return
        self.restarter_pid = pid
        self.ep.register(self.restarter_fd, select.EPOLLIN)

    def on_handover(self) -> None:
        """A (new) restarter asks for the sockets: send them with our pid, then follow
        it. Only a peer with our uid (or root) gets them."""
        try:
            conn, _ = self.handover.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", creds)
            if uid not in (0, os.geteuid()):
                log(f"hand-over refused to pid {pid} (uid {uid})")
                return
            conn.settimeout(1.0)
            try:
                socket.send_fds(conn, [f'{{"pid": {os.getpid()}}}'.encode()],
                                self.socks.fds())
            except OSError as e:
                log(f"hand-over to pid {pid} failed: {e}")
                return
        holder = self.restarter_holder()
        if not follows(pid, holder):
            log(f"sockets handed over to pid {pid}, which is not the chain's restarter "
                f"({wire.RESTARTER_LOCK} names pid {holder}): still following pid "
                f"{self.restarter_pid or '-'}")
            return
        log(f"sockets handed over to the restarter (pid {pid}); "
            f"{len(self.pipes)} pipe(s) held")
        self.watch_restarter(pid)

    def restarter_holder(self) -> int | None:
        """The live pid the restarter lock names (None: no lock file, no pid, or gone)."""
        try:
            text = channels.read_small(os.path.join(self.state_dir, wire.RESTARTER_LOCK),
                                       regular=True).decode(errors="replace").strip()
        except OSError:
            return None
        if not text.isdigit() or not channels.pid_alive(int(text)):
            return None
        return int(text)

    def restarter_gone(self) -> bool:
        if self.restarter_fd is None:
            return True
        return bool(select.select([self.restarter_fd], [], [], 0)[0])

    # --- pipes and the stash ----------------------------------------------------------

    def add(self, fd: int, info: wire.PipeInfo) -> None:
        """Start reading a pipe (a duplicate of one held already is closed)."""
        try:
            st = os.fstat(fd)
        except OSError:
            return
        ino = (st.st_dev, st.st_ino)
        if ino in self.by_ino:
            os.close(fd)
            self.pipes[self.by_ino[ino]].info = info
            return
        os.set_blocking(fd, False)
        self.pipes[fd] = Pipe(fd, ino, info)
        self.by_ino[ino] = fd
        self.per_name[info.name] = self.per_name.get(info.name, 0) + 1
        self.ep.register(fd, select.EPOLLIN)
        self.writer.put(info.name, info.max_bytes, info.keep, b"")  # its file, its limits

    def drop(self, p: Pipe) -> None:
        """A pipe reached its end. The service's log file is closed when no other pipe of
        it is left (a crash-looping service's next pipe opens it again); the writer keeps
        its LogFile, so its limits are not checked on disk again."""
        if p.held:
            self.write(p, p.held)
        self.holding.discard(p.fd)
        self.ep.unregister(p.fd)
        os.close(p.fd)
        del self.pipes[p.fd]
        del self.by_ino[p.ino]
        left = self.per_name.pop(p.info.name, 1) - 1
        if left:
            self.per_name[p.info.name] = left
        else:
            self.writer.put(p.info.name, p.info.max_bytes, p.info.keep, None)

    def stash(self, infos: list[wire.PipeInfo], fds: list[int]) -> bool:
        try:
            wire.send(self.socks.stash_w, infos, fds)
        except BlockingIOError:
            return False
        self.stashed += 1
        return True

    def on_inbox(self) -> None:
        """New read ends from the restarter: stash each message as it came, then read."""
        for _ in range(64):
            got = wire.recv(self.socks.inbox_r)
            if got is None:
                return
            data, fds = got
            infos = wire.decode(data, len(fds))
            if infos is None:
                log(f"malformed inbox message ({len(data)} bytes, {len(fds)} fds): dropped")
                wire.close_all(fds)
                continue
            if not self.stash(infos, fds):
                self.compact()
                if not self.stash(infos, fds):
                    log("stash full: a logger crash now would close these pipes")
            for fd, info in zip(fds, infos, strict=True):
                self.add(fd, info)

    def compact(self) -> None:
        """Copies of every live pipe in as few messages as can be, then the old
        entries dropped: at no moment is a live pipe outside the stash."""
        old = self.stashed
        items = list(self.pipes.values())
        for i in range(0, len(items), wire.MAX_FDS):
            batch = items[i:i + wire.MAX_FDS]
            if not self.stash([p.info for p in batch], [p.fd for p in batch]):
                log("stash full while compacting")
                return
        for _ in range(old):
            got = wire.recv(self.socks.stash_r)
            if got is None:
                break
            wire.close_all(got[1])
            self.stashed -= 1

    def recover(self) -> int:
        """Take back what a previous logger left in the stash; each message is put back
        at once (behind a marker), so it is never out of the stash for longer than one
        recv and one send. Returns the number of pipes recovered."""
        token = f"{os.getpid()}-{time.monotonic_ns()}"
        try:
            self.socks.stash_w.send(f'{{"marker": "{token}"}}'.encode())
        except BlockingIOError:
            log("stash full: cannot recover it")
            return 0
        before = len(self.pipes)
        while True:
            got = wire.recv(self.socks.stash_r)
            if got is None:
                break  # the marker was lost?  nothing more to take
            data, fds = got
            if not fds and token.encode() in data:
                break
            infos = wire.decode(data, len(fds))
            if infos is None:
                wire.close_all(fds)
                continue
            self.stash(infos, fds)
            for fd, info in zip(fds, infos, strict=True):
                self.add(fd, info)
        self.compact()
        return len(self.pipes) - before

    def on_pipe(self, p: Pipe) -> bool:
        """One read; False when the pipe reached its end (every writer closed it)."""
        try:
            data = os.read(p.fd, CHUNK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as e:
            log(f"{p.info.name}: read error {e}; closing this pipe")
            return False
        if not data:
            return False
        out, held = take_lines(p.held, data)
        if out:
            self.write(p, out)
        if held and (not p.held or out):  # a new unfinished line: its own time
            p.held_since = time.monotonic()
            self.holding.add(p.fd)
        elif not held:
            self.holding.discard(p.fd)
        p.held = held
        return True

    def write(self, p: Pipe, data: bytes) -> None:
        self.writer.put(p.info.name, p.info.max_bytes, p.info.keep, data)

    def release_held(self, now: float) -> None:
        """Write the unfinished lines held for HOLD_SECONDS (a prompt, a writer that
        stopped mid-line)."""
        for fd in list(self.holding):
            p = self.pipes.get(fd)
            if p is None:
                self.holding.discard(fd)
            elif now - p.held_since >= HOLD_SECONDS:
                self.write(p, p.held)
                p.held = b""
                self.holding.discard(fd)

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> int:
        n = self.recover()
        if n:
            log(f"took back {n} pipe(s) from the stash")
        while not self.stopping:
            err = _ERR[0] if _ERR else None
            wait = HOLD_SECONDS if self.holding else ERR_RETRY if err and err.pending else -1
            for fd, _ev in self.ep.poll(wait):
                if fd == self._wake_r.fileno():
                    try:
                        self._wake_r.recv(512)
                    except BlockingIOError:
                        pass
                elif fd == self.handover.fileno():
                    self.on_handover()
                elif fd == self.socks.inbox_r.fileno():
                    self.on_inbox()
                elif fd == self.restarter_fd:
                    self.watch_restarter(None)
                elif (p := self.pipes.get(fd)) is not None and not self.on_pipe(p):
                    self.drop(p)
            if self.holding:
                self.release_held(time.monotonic())
            if self.mend_asked:
                self.mend_asked = False
                self.mend()
            if err is not None and err.pending:
                err.retry()
            if self.stashed > len(self.pipes) // wire.MAX_FDS + 1 + STASH_SLACK:
                self.compact()
            if not self.pipes and self.restarter_gone() and not self._inbox_waiting():
                log("no pipe to hold and no restarter: exiting")
                return IDLE_EXIT
        self.drain()
        return 0

    def _inbox_waiting(self) -> bool:
        return bool(select.select([self.socks.inbox_r], [], [], 0)[0])

    def drain(self) -> None:
        """On SIGTERM: write what the pipes still hold (bounded), then exit."""
        deadline = time.monotonic() + DRAIN_SECONDS
        busy = True
        while busy and time.monotonic() < deadline:
            busy = False
            for p in list(self.pipes.values()):
                try:
                    data = os.read(p.fd, CHUNK)
                except (BlockingIOError, InterruptedError, OSError):
                    continue
                if data:
                    self.write(p, p.held + data)
                    p.held = b""
                    busy = True
        for p in self.pipes.values():
            if p.held:
                self.write(p, p.held)
        if self.writer.flush(STALL_SECONDS):  # as long as one write may take
            self.writer.close_all()
        else:
            log(f"the last output is not written within {STALL_SECONDS:g} s: exiting "
                f"without it")


def take_lock(state_dir: str) -> int | None:
    """The logger's lock, holding our pid; None when another logger holds it. OSError
    naming the file when it cannot be one (a FIFO or a directory in its place)."""
    try:
        return channels.take_lock_file(os.path.join(state_dir, wire.LOCK_FILE))
    except channels.LockHeld:
        return None
    except OSError as e:
        if e.errno == errno.EINVAL:  # no regular file there: say whose lock it is
            raise OSError(e.errno, f"{e.strerror}: the logger cannot take its lock") from None
        raise


USAGE = "usage: hachain-logger --state-dir D --log-dir D [--restarter-pid P]"


def parse_args(argv: list[str]) -> dict[str, str] | None:
    """The options as a dict; None when malformed. (No argparse: it costs 1 MB.)"""
    if len(argv) % 2:
        return None
    opts = dict(zip(argv[::2], argv[1::2], strict=True))
    if set(opts) - {"--state-dir", "--log-dir", "--restarter-pid"} or \
            "--state-dir" not in opts or "--log-dir" not in opts or \
            not opts.get("--restarter-pid", "0").isdigit():
        return None
    return opts


def yield_on_wakeup() -> None:
    """Run as SCHED_BATCH: the same share of the CPU as before (the nice value is kept),
    but a wake-up of the logger no longer preempts the task running on its CPU. The task
    it would preempt is often the service whose exit woke it: closing the pipe's last write
    end happens in exit(2) before the parent is told, so a preempting logger held up the
    restarter's SIGCHLD, and the restart, by 100-170 us (docs/benchmarks.md, thirteenth
    session). A refusal (a seccomp filter, say) changes nothing else."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if opts is None:
        log(USAGE)
        return 2
    _ERR[:] = [channels.ErrOut("hachain-logger")]
    state_dir, log_dir = opts["--state-dir"], opts["--log-dir"]
    restarter_pid = int(opts.get("--restarter-pid", "0")) or None
    try:
        fds = [int(x) for x in os.environ.pop(wire.ENV_FDS, "").split(",")]
        if len(fds) != 4:
            raise ValueError
        socks = wire.Sockets.from_fds(fds)
    except (ValueError, OSError):
        log(f"{wire.ENV_FDS} must name 4 inherited sockets")
        return 2
    try:
        lock = take_lock(state_dir)
    except OSError as e:  # (its text names the file)
        log(f"cannot start: {e.strerror or e}")
        return 1
    if lock is None:
        log(f"another logger is already running on {state_dir}")
        return wire.LOCKED_EXIT
    channels.raise_fd_limit()  # a read end and a log file per service
    yield_on_wakeup()
    lg = Logger(state_dir, log_dir, socks, restarter_pid)
    lg.lock_fd = lock
    log(f"writing service logs to {log_dir} (pid {os.getpid()})")
    code = lg.run()
    _ERR[0].drain(ERR_RETRY)
    return code


if __name__ == "__main__":
    sys.exit(main())
