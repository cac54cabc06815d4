"""The restarter's persisted state: runtime records (for re-adoption) and admin state.

Owns: the formats of `<state_dir>/services/<name>.json` (one small record per service,
rewritten atomically whenever its pid or state changes), `<state_dir>/checks.json` (the
failing machine checks' standing, with the boot it belongs to) and
`<persist_dir>/admin.json`
(what an administrator asked for: a service stopped by hand, one held in maintenance;
written durably), and the queue of writes not made yet. Must not: decide anything about
them.

A corrupt file is never fatal: it is moved aside as `<file>.corrupt`, a warning is
returned, and the restarter rebuilds from what is actually running.

Writes go through a `WriteQueue` and are retried until made (ENOSPC on a full disk, EIO):

- one entry per file holding its newest content (or "remove it"): a newer write of the
  same file replaces the older content in place, so nothing stale is ever written after
  something newer, and a removal queued after a write wins over it;
- entries are tried oldest first; in a directory where a write failed, the later entries
  wait for the next round, so one directory's files land in the order they were asked
  for, and a full disk costs one failed attempt per directory and round;
- the two directories do not wait for each other: no file's meaning depends on another
  file being written first. `admin.json` alone says what is wanted (stopped by hand, in
  maintenance); a runtime record only says which process runs and in what state, and the
  restarter believes it only when that process really runs (pid, start time, cgroup).

A full disk first meets the *reserve*: each of the two directories keeps a file of
RESERVE_BYTES zeros (`.hachain-reserve`), made while there is room. A write that fails
for want of space (ENOSPC, EDQUOT) is written into the reserve instead (its blocks are
already allocated, so overwriting them needs no new space), truncated to its length,
fsync'd when durable, and renamed over the target: as atomic and durable as the usual
write. The rename frees the old file, the truncation the reserve's tail, and the reserve
is refilled from them at once: a record or admin.json rewritten on a full disk costs no
space. Only when the reserve is gone too (something else took the space) do writes wait
in the queue. (On a copy-on-write file system, btrfs or zfs, an overwrite needs new
blocks too; there the reserve write fails like any other and the queue takes over.)
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hachain import channels


@dataclass(frozen=True)
class RuntimeRecord:
    """What the restarter keeps of one service in state_dir, for a new restarter to adopt it."""
    name: str
    pid: int | None
    start_time: int | None
    state: str
    want: str
    started_mono: float | None
    restarts: int
    cgroup: str | None
    stop_since: float | None = None  # stopping: when its stop signal was sent (monotonic)
    # stopping: its stop_command still running, (pid, /proc start time); the stop signal
    # is sent once it has exited (a new restarter watches it, or sends the signal at once
    # when it ended while no restarter ran)
    stop_command: tuple[int, int] | None = None
    # starting: ready, its post_start commands running, (pid, start time): a new
    # restarter takes it as ready once they have ended
    post_start: tuple[int, int] | None = None
    # its post_stop commands running (any state): a new restarter waits for them before
    # it starts the service again
    post_stop: tuple[int, int] | None = None
    # its reload_command running (`hachain reload`): a new restarter carries the reload on
    reload: tuple[int, int] | None = None
    # the inodes of its listen sockets (hachain/listen.py): a new restarter takes them
    # back from the running service
    sockets: tuple[int, ...] | None = None
    # its stored descriptors (FDSTORE=1): (name, device, inode, poll) each, found again
    # in its processes by a new restarter
    fd_store: tuple[tuple[str, int, int, bool], ...] | None = None

    def to_json(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        for k in _COMMAND_KEYS + ("sockets", "fd_store"):
            if d[k] is None:
                del d[k]  # (the record most services have stays as it was)
        return d


# the commands of a service a record may name as running beside (or after) its main process
_COMMAND_KEYS = ("stop_command", "post_start", "post_stop", "reload")


def _set_aside(path: str, why: str) -> str:
    """Move `path` to `<path>.corrupt`, or, when that name holds something a rename
    cannot replace (a directory, or a file where this is one), `<path>.corrupt.<ns>`."""
    for target in (path + ".corrupt", f"{path}.corrupt.{time.time_ns()}"):
        try:
            os.replace(path, target)
        except OSError as e:
            err = e
            continue
        return f"{path}: {why}: corrupt, set aside as {os.path.basename(target)}"
    return f"{path}: {why}: corrupt, and cannot set it aside: {err.strerror or err}"


def _read(path: str) -> tuple[Any, str]:
    """(the JSON in `path` or None when missing, "") or (None, why it is unusable). A
    file that is no regular one (a directory, a FIFO) or a dangling symbolic link is
    set aside: a write could not replace it; one that cannot be read is left."""
    try:
        return channels.read_json(path, regular=True), ""
    except ValueError as e:
        why = f"{e.msg} at byte {e.pos}" if isinstance(e, json.JSONDecodeError) else \
            "not UTF-8 text"
        return None, _set_aside(path, f"not JSON ({why})")
    except OSError as e:
        why = e.strerror or str(e)
        if e.errno in (errno.EISDIR, errno.EINVAL, errno.ENOENT, errno.ELOOP):
            return None, _set_aside(path, why)
        return None, f"{path}: cannot read: {why}; ignored"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _record_error(d: Any) -> str:
    """What is wrong with a runtime record's JSON ("" when nothing)."""
    if not isinstance(d, dict):
        return f"not a JSON object but {type(d).__name__}"
    for key, ok in (("pid", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0),
                    ("start_time", lambda v: isinstance(v, int) and not isinstance(v, bool)),
                    ("started_mono", _number), ("stop_since", _number),
                    ("cgroup", lambda v: isinstance(v, str))):
        if d.get(key) is not None and not ok(d[key]):
            return f"{key} is {d[key]!r}"
    for k in _COMMAND_KEYS:
        sc = d.get(k)
        if sc is not None and not (isinstance(sc, list) and len(sc) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in sc) and sc[0] > 0
                and sc[1] >= 0):
            return f"{k} is {sc!r}"
    st = d.get("fd_store")
    if st is not None and not (isinstance(st, list) and all(
            isinstance(e, list) and len(e) == 4 and isinstance(e[0], str)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in e[1:3])
            and isinstance(e[3], bool) for e in st)):
        return f"fd_store is {st!r}"[:200]
    socks = d.get("sockets")
    if socks is not None and not (isinstance(socks, list) and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in socks)):
        return f"sockets is {socks!r}"
    if not isinstance(d.get("state"), str):
        return f"state is {d.get('state')!r}"
    if d.get("want", "up") not in ("up", "down"):
        return f"want is {d.get('want')!r}"
    r = d.get("restarts", 0)
    if not isinstance(r, int) or isinstance(r, bool) or r < 0:
        return f"restarts is {r!r}"
    return ""


def admin_error(d: Any) -> str:
    """What is wrong with admin.json's JSON ("" when nothing)."""
    if not isinstance(d, dict):
        return f"not a JSON object but {type(d).__name__}"
    for name, e in d.items():
        if not isinstance(e, dict) or not all(isinstance(v, str) for v in e.values()):
            return f"entry {name!r} is {e!r}"
        if e.get("want", "up") not in ("up", "down"):
            return f"entry {name!r}: want is {e['want']!r}"
    return ""


class _Pending:
    """A write not made yet: the newest content (None: remove the file)."""

    __slots__ = ("data", "durable", "error", "since")

    def __init__(self, data: bytes | None, durable: bool, since: float) -> None:
        self.data = data
        self.durable = durable
        self.since = since  # when this file first had a write pending (monotonic)
        self.error = ""  # why the last attempt failed ("" before any attempt)


RESERVE = ".hachain-reserve"
RESERVE_BYTES = 64 * 1024  # more than admin.json with a few hundred services held
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class WriteQueue:
    """Writes still to be made, oldest first, one per file; `sync` makes what it can.
    `reserve_dirs`: the directories that keep a reserve for writes on a full disk."""

    def __init__(self, reserve_dirs: Iterable[str] = ()) -> None:
        self.pending: dict[str, _Pending] = {}  # insertion order is the order asked
        self.failing: dict[str, float] = {}  # directory -> when its writes began failing
        self.reserves = {d: os.path.join(d, RESERVE) for d in reserve_dirs}
        self.short: set[str] = set()  # directories whose reserve is not full-size
        self.on_reserve: set[str] = set()  # directories written from the reserve lately
        self.warnings: list[str] = []  # reserves that were no regular file, set aside
        for d in self.reserves:
            self.refill(d)

    def put(self, path: str, data: bytes | None, now: float, durable: bool = False) -> None:
        p = self.pending.get(path)
        if p is None:
            self.pending[path] = _Pending(data, durable, now)
        else:  # newest content wins; the place in the queue and `since` stay
            p.data, p.durable = data, durable or p.durable

    def sync(self, now: float) -> list[str]:
        """Try every pending write once (in order, a failed directory skipped for the rest
        of the round). Returns log lines: a directory that began failing, or recovered."""
        msgs: list[str] = []
        blocked: dict[str, str] = {}  # directory -> the error of this round
        for path, p in list(self.pending.items()):
            d = os.path.dirname(path)
            if d in blocked:
                p.error = blocked[d]
                continue
            try:
                if p.data is None:
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                else:
                    try:
                        channels.write_atomic(path, p.data, p.durable)
                    except FileNotFoundError:
                        # its directory was removed while we run (cleaned by hand):
                        # made again, with its reserve (refilled below)
                        channels.write_atomic(path, p.data, p.durable, make_dir=True)
                        if d in self.reserves:
                            self.short.add(d)
                    if d in self.on_reserve:
                        self.on_reserve.discard(d)
                        msgs.append(f"{d} has room again")
            except OSError as e:
                if e.errno not in NO_SPACE or not self.write_reserved(path, p):
                    p.error = blocked[d] = e.strerror or str(e)
                    continue
                if d not in self.on_reserve:
                    self.on_reserve.add(d)
                    msgs.append(f"warning: {d} is full ({e.strerror}): writing into its "
                                "reserve space")
            del self.pending[path]
        for d in list(self.short):
            self.refill(d)
        for d, err in blocked.items():
            if d not in self.failing:
                self.failing[d] = now
                n = sum(1 for path in self.pending if os.path.dirname(path) == d)
                msgs.append(f"warning: cannot write in {d}: {err}; {n} write(s) pending, "
                            "retried every loop round until made")
        for d in [d for d in self.failing if d not in blocked]:
            msgs.append(f"pending writes in {d} made after {now - self.failing.pop(d):.1f} s")
        return msgs

    def write_reserved(self, path: str, p: _Pending) -> bool:
        """Write `p` into its directory's reserve and rename that over `path`; False when
        there is no reserve, or not enough of it."""
        d = os.path.dirname(path)
        r = self.reserves.get(d)
        if r is None or p.data is None:
            return False
        self.short.add(d)  # used or not, look at it again
        try:
            fd = os.open(r, os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size < len(p.data):
                return False
            view = memoryview(p.data)
            while view:
                view = view[os.pwrite(fd, view, len(p.data) - len(view)):]
            os.ftruncate(fd, len(p.data))
            if p.durable:
                os.fsync(fd)
            os.rename(r, path)
        except OSError:
            return False
        finally:
            os.close(fd)
        if p.durable:
            try:
                dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            except OSError:
                pass  # renamed already; the next write of the directory syncs it
        self.refill(d)
        return True

    def refill(self, d: str) -> None:
        """Bring the reserve of `d` up to RESERVE_BYTES, as far as the space allows. What
        is no regular file there (a FIFO, which an open for writing would wait on, a
        directory, a symbolic link) is set aside as `.corrupt` first."""
        path = self.reserves[d]
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NONBLOCK | \
            os.O_NOFOLLOW
        try:
            fd = os.open(path, flags, 0o600)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(errno.EINVAL, "not a regular file")
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENXIO, errno.EISDIR, errno.ELOOP):
                self.short.add(d)
                return
            try:
                kind = channels.file_kind(os.lstat(path).st_mode)
            except OSError:
                kind = e.strerror or str(e)
            self.warnings.append(_set_aside(path, f"not a regular file ({kind})"))
            try:
                fd = os.open(path, flags | os.O_EXCL, 0o600)
            except OSError:
                self.short.add(d)
                return
        try:
            size = os.fstat(fd).st_size
            while size < RESERVE_BYTES:
                size += os.write(fd, bytes(min(4096, RESERVE_BYTES - size)))
            self.short.discard(d)
        except OSError:
            self.short.add(d)
        finally:
            os.close(fd)


RETRY = 1.0  # s between two tries of a durable write that failed (ENOSPC, EROFS, ...)
STALL = 5.0  # s a durable write may take before the disk is said not to answer
WRITE_WAIT = 1.0  # s the loop waits for a durable write it asked for (Store.sync)


class DurableWriter:
    """The writes to persist_dir (admin.json), made by a thread of their own, so that a
    disk that stops answering (a hung NFS or FUSE mount, a disk in error recovery) holds
    that thread and never the restarter's loop: `hachain stop NAME` then stops the
    service and is written when the disk answers, where the loop used to wait, stop
    beating and have the box reset, the change lost with it. The thread owns its
    WriteQueue; the loop hands it writes through `put` and reads what is left through
    `unwritten`. It starts with the first write (an idle chain has no thread more) and
    waits for nothing while nothing fails: no wake-up of its own."""

    def __init__(self, persist_dir: str, log: Any) -> None:
        self.queue = WriteQueue((persist_dir,))
        self.log = log
        self.cond = threading.Condition()
        self.inbox: list[tuple[str, bytes | None, float]] = []  # (under cond)
        self.closing = False
        self.thread: threading.Thread | None = None
        self.busy_since: float | None = None  # when the sync under way began
        self.stall_said = False
        self.view: list[tuple[str, _Pending]] = []  # what is left, after each sync
        self.asked = 0  # writes handed over (under cond) ...
        self.tried = 0  # ... and how many of them the thread has tried (under cond)

    def put(self, path: str, data: bytes | None, now: float) -> int:
        """Hand a write over; its number, for `wait_tried`."""
        with self.cond:
            self.inbox.append((path, data, now))
            self.asked += 1
            gen = self.asked
            self.cond.notify_all()
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="persist-writer",
                                           daemon=True)
            self.thread.start()
        return gen

    def wait_tried(self, gen: int, timeout: float) -> bool:
        """Wait until write `gen` (and those before it) has been tried, for at most
        `timeout` s: on a disk that answers, the loop goes on with it made, as when it
        wrote itself; on one that does not, it goes on without."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.tried < gen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def stuck(self, now: float, after: float) -> bool:
        """Has the write under way taken `after` s already?"""
        busy = self.busy_since
        return busy is not None and now - busy >= after

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.inbox and not self.closing and not self.queue.pending \
                        and not self.queue.short:
                    self.cond.wait()
                if (self.queue.pending or self.queue.short) and not self.inbox and \
                        not self.closing:
                    self.cond.wait(RETRY)  # a failed write, a reserve short: again later
                batch, self.inbox = self.inbox, []
                closing = self.closing
                gen = self.asked
            for path, data, now in batch:
                self.queue.put(path, data, now, durable=True)
            self.view = list(self.queue.pending.items())  # (status sees what is under way)
            self.busy_since = time.monotonic()
            try:
                msgs = self.queue.sync(self.busy_since)
            except Exception as e:  # noqa: BLE001 - the thread must outlive any write
                msgs = [f"error: writing in persist_dir: {type(e).__name__}: {e}"]
            self.busy_since = None
            self.view = list(self.queue.pending.items())
            with self.cond:
                self.tried = gen
                self.cond.notify_all()
            for m in msgs:
                self.log(m)
            if self.stall_said:
                self.stall_said = False
                self.log("persist_dir answers again")
            if closing and not self.inbox:
                return

    def stalled(self, now: float) -> str | None:
        """A line once a write has not returned for STALL s (asked at each heartbeat)."""
        busy = self.busy_since
        if busy is None or now - busy < STALL or self.stall_said:
            return None
        self.stall_said = True
        return (f"warning: a write in persist_dir has not returned for {now - busy:.0f} s "
                "(a hung mount or a failing disk?): changes held by hand apply now and are "
                "written when it answers")

    def pending_paths(self) -> list[tuple[str, float, str]]:
        """(path, since, error) of each write not made: queued, under way or failed."""
        with self.cond:
            waiting = [(p, now, "not written yet") for p, _d, now in self.inbox]
        busy = self.busy_since
        hung = busy is not None and time.monotonic() - busy >= WRITE_WAIT
        out = [(path, p.since, p.error or ("no answer from the disk" if hung
                                           else "not written yet"))
               for path, p in self.view]
        seen = {path for path, _s, _e in out}
        return out + [w for w in waiting if w[0] not in seen]

    def close(self, timeout: float) -> None:
        """Let the thread make what is queued, for at most `timeout` s."""
        if self.thread is None:
            return
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join(timeout)


class Store:
    def __init__(self, state_dir: str, persist_dir: str, log: Any = None) -> None:
        self.state_dir = state_dir
        self.persist_dir = persist_dir
        self.rec_dir = os.path.join(state_dir, channels.SERVICE_RECORD_DIR)
        self.admin_path = os.path.join(persist_dir, channels.ADMIN_STATE)
        os.makedirs(self.rec_dir, exist_ok=True)
        os.makedirs(persist_dir, exist_ok=True)
        self.warnings: list[str] = []
        self.queue = WriteQueue((self.rec_dir,))  # the records, on tmpfs: in the loop
        self.durable = DurableWriter(persist_dir, log or (lambda _m: None))
        self._gen = self._waited = 0  # durable writes handed over, and waited for
        self.warnings += self.queue.warnings + self.durable.queue.warnings
        self._admin_asked: dict[str, dict[str, str]] | None = None  # newest content queued

    def write_record(self, rec: RuntimeRecord, now: float) -> None:
        data = json.dumps(rec.to_json(), sort_keys=True).encode() + b"\n"
        self.queue.put(os.path.join(self.rec_dir, rec.name + ".json"), data, now)

    def record_names(self) -> set[str] | None:
        """The services with a record file (one listing: at a chain's first start there is
        none, and adoption then reads no file); None when the directory cannot be listed
        (each record is then read)."""
        try:
            return {n[:-5] for n in os.listdir(self.rec_dir) if n.endswith(".json")}
        except OSError:
            return None

    def read_record(self, name: str) -> RuntimeRecord | None:
        path = os.path.join(self.rec_dir, name + ".json")
        d, why = _read(path)
        if d is not None and (wrong := _record_error(d)):
            why = _set_aside(path, wrong)
        if why:
            self.warnings.append(why)
            return None
        if d is None:
            return None
        return RuntimeRecord(
            name=name, pid=d.get("pid"), start_time=d.get("start_time"), state=d["state"],
            want=d.get("want", "up"), started_mono=d.get("started_mono"),
            restarts=d.get("restarts", 0), cgroup=d.get("cgroup"),
            stop_since=d.get("stop_since"),
            stop_command=(sc[0], sc[1]) if (sc := d.get("stop_command")) else None,
            post_start=(ps[0], ps[1]) if (ps := d.get("post_start")) else None,
            post_stop=(pp[0], pp[1]) if (pp := d.get("post_stop")) else None,
            reload=(rl[0], rl[1]) if (rl := d.get("reload")) else None,
            sockets=tuple(sk) if (sk := d.get("sockets")) else None,
            fd_store=tuple((e[0], e[1], e[2], e[3]) for e in fs)
            if (fs := d.get("fd_store")) else None)

    def write_checks(self, standing: dict[str, Any], boot_id: str, now: float) -> None:
        """The failing machine checks' standing (machine.MachineChecks.standing); the
        file is removed when none fails."""
        path = os.path.join(self.state_dir, channels.CHECK_STANDING)
        data = None if not standing else json.dumps(
            {"boot_id": boot_id, "checks": standing}, sort_keys=True).encode() + b"\n"
        self.queue.put(path, data, now)

    def read_checks(self, boot_id: str) -> tuple[dict[str, Any], str]:
        """(the standing the last restarter of this boot left, "") — {} when there is
        none, or when the file is from another boot: its times are another boot's
        monotonic clock — or ({}, why the file is unusable; it was set aside)."""
        path = os.path.join(self.state_dir, channels.CHECK_STANDING)
        d, why = _read(path)
        if d is not None and not (isinstance(d, dict) and isinstance(d.get("checks"), dict)
                                  and isinstance(d.get("boot_id"), str)):
            why = _set_aside(path, "not a table of checks with its boot_id")
        if why or d is None or d["boot_id"] != boot_id or not boot_id:
            return {}, why
        return dict(d["checks"]), ""

    def drop_record(self, name: str, now: float) -> None:
        self.queue.put(os.path.join(self.rec_dir, name + ".json"), None, now)

    def read_admin(self) -> dict[str, dict[str, str]]:
        """{name: {"want": "down"} or {"want": "up", "maintenance": reason}}."""
        d, why = _read(self.admin_path)
        if d is not None and (wrong := admin_error(d)):
            why = _set_aside(self.admin_path, wrong)
        if why:
            self.warnings.append(why)
            return {}
        if d is None:  # nothing asked: the same as an empty file, which is not written
            self._admin_asked = {}
            return {}
        self._admin_asked = d
        return d

    def write_admin(self, admin: dict[str, dict[str, str]], now: float) -> None:
        """Queue a durable write of admin state when it differs from the newest queued."""
        if admin == self._admin_asked:
            return
        data = json.dumps(admin, sort_keys=True).encode() + b"\n"
        self._gen = self.durable.put(self.admin_path, data, now)
        self._admin_asked = {k: dict(v) for k, v in admin.items()}

    def sync(self, now: float) -> list[str]:
        """Make the pending writes that can be made; log lines about failures. A durable
        write handed over since the last sync is waited for, up to WRITE_WAIT s (none
        while an earlier one has not returned for that long): made before the loop goes
        on, as when the loop wrote it itself, unless the disk does not answer."""
        if self._gen > self._waited:
            self._waited = self._gen
            wait = 0.0 if self.durable.stuck(now, WRITE_WAIT) else WRITE_WAIT
            self.durable.wait_tried(self._gen, wait)
        return self.queue.sync(now) if self.queue.pending or self.queue.short else []

    def unwritten(self, now: float, limit: int = 20, all_of_them: bool = False
                  ) -> list[dict[str, Any]]:
        """The writes still pending, oldest first (at most `limit`), for status:
        [{"file": "admin.json", "path": ..., "since": 12.0, "error": "No space left..."}].
        A write queued and not tried yet is left out, unless `all_of_them` (at exit)."""
        out = []
        found = [(path, p.since, p.error) for path, p in self.queue.pending.items()]
        for path, since, error in found + self.durable.pending_paths():
            if not error and not all_of_them:
                continue  # queued this round, not tried yet
            if error == "not written yet" and not all_of_them:
                continue
            base = self.persist_dir if path == self.admin_path else self.state_dir
            out.append({"file": os.path.relpath(path, base), "path": path,
                        "since": round(now - since, 1), "error": error or "not written yet"})
            if len(out) >= limit:
                break
        return out

    def close(self, timeout: float) -> None:
        """At exit: the durable writes get up to `timeout` s to be made."""
        self.durable.close(timeout)
