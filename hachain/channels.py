"""The narrow channels between hachain's layers: names, formats, atomic writes.

This module owns every file name and format that more than one layer reads or writes.
It is stdlib-only and does no work of its own beyond reading and writing those files,
so that `hachain.init` (which must stay stdlib-only) can import it. See
docs/channels.md for the prose description of each channel.

Two directories:

- the *runtime* directory (`[chain] state_dir`, like /run: wiped at boot) holds the
  control socket, the heartbeats and the restarter's per-service runtime records (the
  pids that re-adoption verifies);
- the *persistent* directory (`[chain] persist_dir`, like /var/lib: survives reboots)
  holds administrative state (a service stopped by hand or held in maintenance), the
  tickler's record of why it stopped petting, and the boot log.

Rule: a file here is written whole by exactly one layer, by writing `X.new`, optionally
fsync-ing it, and renaming it over `X`, so a reader sees the old or the new file, never
half of one.
"""

from __future__ import annotations

import _thread
import errno
import json
import json.scanner
import os
import re
import select
import stat
import time
import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse
    import socket
    from collections.abc import Callable
    from typing import Any

# --- names ------------------------------------------------------------------------------

# Where things are when nothing says otherwise (config.py's defaults are these; the status
# path reads them here so that `hachain status` need not import the configuration schema).
DEFAULT_CONFIG = "/etc/hachain/chain.toml"
DEFAULT_STATE_DIR = "/run/hachain"
DEFAULT_PERSIST_DIR = "/var/lib/hachain"

CONTROL_SOCKET = "control.sock"
HEARTBEAT_DIR = "hb"
SERVICE_RECORD_DIR = "services"
LOG_DIR = "log"

ADMIN_STATE = "admin.json"  # in persist_dir, written by the restarter
CHECK_STANDING = "checks.json"  # in state_dir: failing machine checks, for the next restarter
GATE_RECORD = "gate.json"  # in persist_dir, written by the tickler
LAST_BOOT = "last_boot.json"  # in persist_dir, written by the tickler once per boot
BOOT_LOG = "boots.jsonl"  # in persist_dir, appended by the simulated machine / tickler
BOOT_RECORD = "boot_record.json"  # in persist_dir: this boot's record (bootrecord.py)
BOOT_RECORD_LOCK = "boot_record.lock"  # in persist_dir: serialises its read-modify-write
LAST_GOOD_CONFIG = "config/last-good.json"  # in persist_dir: the last configuration that ran

RESTARTER_LOCK = "restarter.lock"  # in state_dir: one restarter per chain
INIT_LOCK = "init.lock"  # in state_dir: one chain per state_dir (init holds it)
LOGGER_SOCKET = "logger.sock"  # in state_dir: a new restarter gets the log sockets here
LOGGER_LOCK = "logger.lock"  # in state_dir: one logger per chain
STATUS_LAST_TABLE = "status-last.json"  # in state_dir: the last service table status saw
RUNNING_CONFIG = "config/running.json"  # in state_dir: the configuration this run uses
DISK_VERDICT = "config/disk-verdict.json"  # in state_dir: the file's validation, cached
RUNNING_PARSED = "config/running.parsed"  # in state_dir: RUNNING_CONFIG, parsed (pickle)
LAST_GOOD_PARSED = "config/last-good.parsed"  # in persist_dir: LAST_GOOD_CONFIG, parsed

LAYERS = ("init", "restarter", "tickler")

# Service names: also a file name (NAME.log), a cgroup name and a status-table cell. The
# configuration's rule (config.py), checked here too wherever a name comes from outside a
# configuration: the command line (`hachain start/logs NAME`) and the control socket.
SERVICE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
SERVICE_NAME_RULE = ("1 to 64 letters, digits, '_', '.', '@' or '-', starting with a letter "
                     "or digit")


def service_name_problem(name: Any) -> str | None:
    """Why `name` cannot be a service's name (one line, naming it), or None when it can."""
    if not isinstance(name, str) or not SERVICE_NAME_RE.fullmatch(name):
        shown = name if isinstance(name, str) else json.dumps(name)
        return f"{shown}: not a service name ({SERVICE_NAME_RULE})"
    return None


# A machine check ([check.NAME]) where a service name could stand: the boot record's
# blamed and held names, and `hachain clear check:NAME` (no service name has a ":")
CHECK_PREFIX = "check:"


def clear_name_problem(name: Any) -> str | None:
    """As service_name_problem, for `clear` and `logs`, which also take `check:NAME`."""
    if isinstance(name, str) and name.startswith(CHECK_PREFIX):
        problem = service_name_problem(name[len(CHECK_PREFIX):])
        return None if problem is None else f"{name}: not a check name ({SERVICE_NAME_RULE})"
    return service_name_problem(name)

# Environment variables a parent layer passes to a child layer.
ENV_CONFIG = "HACHAIN_CONFIG"
ENV_STATE_DIR = "HACHAIN_STATE_DIR"
ENV_SIM_WATCHDOG = "HACHAIN_SIM_WATCHDOG"  # socket path of the software watchdog
ENV_SERVICE = "HACHAIN_SERVICE"  # set in every service's environment: its name
ENV_LAYER_RESTARTS = "HACHAIN_LAYER_RESTARTS"  # how often init restarted this layer
ENV_INIT_PID = "HACHAIN_INIT_PID"  # init's pid, for its children to notice it is gone
# Sockets init creates once and hands to every restarter it starts (inherited fds), so
# what is queued on them survives a restarter crash: a READY=1 sent while no restarter
# ran is read by the next one, and a client connecting meanwhile waits in the backlog.
ENV_NOTIFY_FD = "HACHAIN_NOTIFY_FD"
ENV_CONTROL_FD = "HACHAIN_CONTROL_FD"
# init -> restarter: "<fd variable>=<device>:<inode>,...", what init's held sockets' paths
# were when it bound them (Kept): a restarter that inherits one can tell whether its path
# still leads to it (state_dir cleaned by hand since, or a restarter bound its own there)
ENV_HELD_IDS = "HACHAIN_HELD_IDS"
# `hachain run` -> init (across its exec): the descriptor of the init lock it took
ENV_INIT_LOCK_FD = "HACHAIN_INIT_LOCK_FD"
# ... and the stash, a socket pair: what the restarter writes on one end (its services'
# listen sockets and stored descriptors, with SCM_RIGHTS) waits on the other, which the
# next restarter reads (hachain/restarter/stash.py)
ENV_STASH_FD = "HACHAIN_STASH_FD"
ENV_STASH_PEER_FD = "HACHAIN_STASH_PEER_FD"
NOTIFY_SOCKET = "notify.sock"  # in state_dir
ENV_FAULT_HOOKS = "HACHAIN_FAULT_HOOKS"  # "1" enables the documented fault-injection hooks

ENV_LOG_FORMAT = "HACHAIN_LOG_FORMAT"  # "json" for JSON-lines logs, else human lines
ENV_CHAIN_ID = "HACHAIN_CHAIN_ID"  # set by init for its layers: which chain run they serve
ENV_LOGGER_FDS = "HACHAIN_LOGGER_FDS"  # the logger's 4 inherited sockets, "r,w,r,w"
ENV_FENCING_TOKEN = "HACHAIN_FENCING_TOKEN"  # a cluster singleton's current token
# a machine check's repair command (docs/checks.md, "What a repair command is told")
ENV_CHECK = "HACHAIN_CHECK"  # the check's name
ENV_CHECK_KIND = "HACHAIN_CHECK_KIND"
ENV_CHECK_ERROR = "HACHAIN_CHECK_ERROR"  # the failed try's error number (checks.py)
ENV_CHECK_DETAIL = "HACHAIN_CHECK_DETAIL"  # the failed try's line
ENV_CHECK_REPAIR = "HACHAIN_CHECK_REPAIR"  # which repair this is (1, 2, ...)
ENV_CHECK_REPAIRS = "HACHAIN_CHECK_REPAIRS"  # of how many
# Overrides of the configuration file (config.with_env_overrides) an operator may set.
ENV_PERSIST_DIR = "HACHAIN_PERSIST_DIR"
ENV_CGROUP_ROOT = "HACHAIN_CGROUP_ROOT"
ENV_WATCHDOG_DEVICE = "HACHAIN_WATCHDOG_DEVICE"
# The environment variables a parent layer sets to override a [chain] or [watchdog] key
# (hachain.config applies them; the tickler keys its cache of the parsed tables on them)
CONFIG_OVERRIDES = {
    ENV_STATE_DIR: ("chain", "state_dir"),
    ENV_PERSIST_DIR: ("chain", "persist_dir"),
    ENV_CGROUP_ROOT: ("chain", "cgroup_root"),
    ENV_WATCHDOG_DEVICE: ("watchdog", "device"),
}

# Control protocol limits.
MAX_REQUEST_BYTES = 64 * 1024
REQUEST_TIMEOUT = 2.0


def cgroup_name(state_dir: str) -> str:
    """The name of the chain's cgroup under the cgroup2 mount (`cgroup_root = "auto"`).

    One name per chain: the state directory's last component for reading, plus 8 hex
    digits of a hash of its real path, so `/run/hachain` and `/x/hachain` never share a
    cgroup (a crash of one chain's `web` must not kill the other's)."""
    real = os.path.realpath(state_dir)
    base = os.path.basename(os.path.normpath(real)) or "root"
    base = base if base.startswith("hachain") else "hachain-" + base
    return f"{base}-{sha256_hex(real.encode())[:8]}"


def sha256_hex(data: bytes) -> str:
    """The hex SHA-256 of `data`, by CPython's own SHA-256 where it is built in (as it is
    by default): `hashlib` maps OpenSSL into the process, about 1 MB of PSS in each layer
    that asks for one small hash."""
    try:
        from _sha256 import sha256  # CPython 3.11 (3.12: _sha2)
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found,no-redef]
        except ImportError:
            from hashlib import sha256  # type: ignore[assignment]
    return sha256(data).hexdigest()


def layer_parser(prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """An `argparse.ArgumentParser` for a layer's command line whose help formatter takes
    the terminal's width from `os.get_terminal_size`. argparse's own formatter, which 3.11
    builds at every `add_argument`, imports `shutil` for it, and shutil loads the bz2 and
    lzma libraries: more memory in every layer, for a line width."""
    import argparse  # at run time: the layers that never parse a command line skip it

    def formatter(prog: str) -> argparse.HelpFormatter:
        try:
            width = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size(2).columns
        except (OSError, ValueError):
            width = 80
        return argparse.HelpFormatter(prog, width=max(width - 2, 20))
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=formatter)


def raise_fd_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard limit (a layer that holds a descriptor per
    service: the restarter's pidfds, the logger's pipes)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def chain_id(pid: int) -> str:
    """The id of the chain run whose init is `pid`: boot id, pid and the pid's start time,
    so a recycled pid or a new boot never matches an older run. `hachain run` computes it
    for its own pid before it execs init (same pid, same start time)."""
    try:
        boot = read_small("/proc/sys/kernel/random/boot_id").decode().strip()
    except OSError:
        boot = ""
    return f"{boot}:{pid}:{proc_start_time(pid) or 0}"


# --- atomic files -----------------------------------------------------------------------

def write_atomic(path: str, data: bytes, durable: bool = False,
                 make_dir: bool = False) -> None:
    """Replace `path` with `data` so readers see either the old or the new content.

    With `durable`, the data and the rename are fsync'd (for the persistent directory);
    without it the write is atomic but not crash-durable (enough for tmpfs runtime files).
    `make_dir`: a directory that is not there (removed by hand while the chain runs) is
    made again, and with `durable` its entry fsync'd too; for the chain's own
    directories only (a reader such as `hachain status` must not make one).
    Raises OSError (for example ENOSPC) and leaves the old file intact in that case.
    """
    tmp = path + ".new"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        if not make_dir:
            raise
        make_parent(path, durable)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    os.rename(tmp, path)
    if durable:
        dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def make_parent(path: str, durable: bool = False) -> None:
    """Make the directory `path` is in (and those above it); with `durable`, each new
    one's entry fsync'd in its parent, so a power cut does not take it back."""
    d = os.path.dirname(path) or "."
    made = []
    while d and not os.path.isdir(d):
        made.append(d)
        d = os.path.dirname(d)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if durable:
        for new in made:
            dfd = os.open(os.path.dirname(new) or ".", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


def write_json(path: str, obj: Any, durable: bool = False, make_dir: bool = False) -> None:
    write_atomic(path, json.dumps(obj, sort_keys=True).encode() + b"\n", durable, make_dir)


def read_small(path: str, regular: bool = False) -> bytes:
    """The whole content of a small file: open, read, close, without the io layer's extra
    system calls (this runs on every tick of the chain's loops). OSError propagates.
    `regular`: OSError for anything but a regular file too, and a FIFO in the file's place
    is opened without waiting for a writer and never read (for a reader with no deadline
    of its own: a restarter blocked there would stop the chain)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_NONBLOCK if regular else 0))
    try:
        if regular and not stat.S_ISREG(mode := os.fstat(fd).st_mode):
            raise OSError(errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL,
                          f"not a regular file ({file_kind(mode)})", path)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def file_kind(mode: int) -> str:
    """What a file of `mode` is, in words: "a directory", "a FIFO", ..."""
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return kind
    return "a regular file" if stat.S_ISREG(mode) else "an unknown kind of file"


class NestedTooDeeply(json.JSONDecodeError):
    """JSON nested deeper than the parser's recursion goes (json raises RecursionError,
    which is no ValueError): a JSONDecodeError, so that every reader that handles a
    corrupt file handles this one too. `pos` is where the nesting is deepest."""


# A JSON string (skipped whole: brackets in it do not nest) or one bracket.
_JSON_NESTING = re.compile(r'"(?:[^"\\]++|\\.)*+"|[][{}]', re.DOTALL)


def _deepest(text: str) -> int:
    """The offset of the first bracket at the greatest depth of `text` (for the error)."""
    depth = best = pos = 0
    for m in _JSON_NESTING.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > best:
                best, pos = depth, m.start()
        elif c in "]}":
            depth -= 1
    return pos


def loads(raw: bytes | str, **kw: Any) -> Any:
    """json.loads (`kw` passed on), with JSON nested too deeply a ValueError
    (NestedTooDeeply) too."""
    try:
        return json.loads(raw, **kw)
    except RecursionError:
        text = raw if isinstance(raw, str) else \
            raw.decode(json.detect_encoding(raw), "surrogatepass")
        raise NestedTooDeeply("nested too deeply", text, _deepest(text)) from None


def json_problem(e: ValueError) -> str:
    """What a ValueError of read_json/loads says is wrong, in words: "not JSON (...)"."""
    if isinstance(e, NestedTooDeeply):
        why = e.msg
    elif isinstance(e, json.JSONDecodeError):
        why = f"{e.msg} at byte {e.pos}"
    elif isinstance(e, UnicodeDecodeError):
        why = "not UTF-8 text"
    else:  # an integer of more than 4300 digits: the first clause of its message
        why = str(e).split(";")[0]
    return f"not JSON ({why})"


def read_json(path: str, regular: bool = False) -> Any:
    """The parsed content of `path`; None when it is missing. ValueError when corrupt
    (JSON nested too deeply included: NestedTooDeeply; json_problem says what is wrong),
    OSError when it cannot be read; with `regular` also when it is no regular file
    (read_small) or a dangling symbolic link."""
    try:
        raw = read_small(path, regular)
    except FileNotFoundError:
        if regular and os.path.islink(path):
            raise OSError(errno.ENOENT, "a dangling symbolic link", path) from None
        return None
    return loads(raw)


# --- what a layer keeps in state_dir ------------------------------------------------------
#
# state_dir is a runtime directory (a tmpfs): an `rm -rf` of it by hand, or a cleaner of
# /run or /tmp, removes the heartbeats, sockets, locks and records a running chain keeps
# there. Each layer notes what it made (Kept) and makes it again when it finds it gone,
# rather than let the gate reset a healthy machine or a later restarter miss what runs.


class Kept:
    """Paths a layer made, each with the (device, inode) it had then. `lost()` names those
    now missing or replaced by another file: one stat each. (A file removed and then made
    again may be given the removed one's inode number on a disk filesystem, and then
    counts as the same; on a tmpfs, state_dir's usual home, inode numbers come from a
    counter and a new file never has an old one's.)"""

    def __init__(self) -> None:
        self.ids: dict[str, tuple[int, int]] = {}

    def note(self, path: str) -> None:
        """Remember what is at `path` now (nothing, if nothing is: it then counts as lost)."""
        try:
            st = os.stat(path)
        except OSError:
            self.ids[path] = (-1, -1)
            return
        self.ids[path] = (st.st_dev, st.st_ino)

    def encode(self, names: dict[str, str]) -> str:
        """The ids of the paths `names` maps to (name -> path), for ENV_HELD_IDS."""
        return ",".join(f"{n}={self.ids[p][0]}:{self.ids[p][1]}"
                        for n, p in names.items() if p in self.ids)

    @staticmethod
    def decode(text: str) -> dict[str, tuple[int, int]]:
        out = {}
        for item in text.split(","):
            name, _, ident = item.partition("=")
            dev, _, ino = ident.partition(":")
            if dev.lstrip("-").isdigit() and ino.lstrip("-").isdigit():
                out[name] = (int(dev), int(ino))
        return out

    def lost(self) -> list[str]:
        out = []
        for path, ident in self.ids.items():
            try:
                st = os.stat(path)
            except FileNotFoundError:
                out.append(path)
                continue
            except NotADirectoryError:
                out.append(path)
                continue
            except OSError:
                continue  # EACCES, ELOOP, a hung mount's EIO: not proof it is gone
            if (st.st_dev, st.st_ino) != ident:
                out.append(path)
        return out


class LockHeld(Exception):
    """Another process holds the lock file `path`; `holder` is the pid it wrote there
    (text, "?" when unreadable)."""

    def __init__(self, path: str, holder: str) -> None:
        super().__init__(f"{path} is held by pid {holder}")
        self.holder = holder


class ChainRunning(LockHeld):
    """Another chain's init holds the init lock of this state_dir."""


def take_lock_file(path: str, held: type[LockHeld] = LockHeld) -> int:
    """Take the lock file `path` (an flock the kernel drops when its holder dies) without
    waiting, and write our pid in it; its descriptor (close-on-exec). `held` (LockHeld or
    a subclass) when another process holds it; OSError naming the file when it cannot be
    one (a FIFO, a directory, a symbolic link in its place)."""
    import fcntl
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                     | os.O_NONBLOCK, 0o600)
    except OSError as e:
        raise OSError(e.errno, f"{path}: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"{path}: not a regular file ({file_kind(mode)})")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        except OSError:
            holder = "?"
        os.close(fd)
        raise held(path, holder) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def take_init_lock(state_dir: str) -> int:
    """`<state_dir>/init.lock`, one chain per state directory (take_lock_file);
    ChainRunning when another chain's init holds it."""
    return take_lock_file(os.path.join(state_dir, INIT_LOCK), ChainRunning)


def bind_unix(path: str, kind: int, mode: int) -> socket.socket:
    """A new AF_UNIX socket of `kind` bound at `path` with `mode`, put in place by a
    rename: a client finds the old path or the new socket, never nothing. The directory
    is made when it is gone. The temporary name is no longer than `path`'s own, which
    the configuration checks fits a socket address."""
    import socket
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.getpid():x}")
    s = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            s.bind(tmp)
        finally:
            os.umask(old)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        s.close()
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return s


# --- heartbeats ----------------------------------------------------------------------------
#
# Each layer writes <state_dir>/hb/<layer>.json from inside its event loop, once per
# heartbeat interval. `mono` is CLOCK_MONOTONIC (shared by every process of one boot, in
# any PID namespace), so a reader computes the age without trusting the wall clock.
# `extra` is layer-specific (the restarter publishes its loop lag and the health of
# critical services there; see docs/channels.md).

class Heartbeat:
    """One heartbeat record (a plain class: init imports this module, and dataclasses
    would cost it over a megabyte of memory)."""

    __slots__ = ("extra", "layer", "mono", "pid", "pidns", "restarts", "seq", "start",
                 "started_mono")

    def __init__(self, layer: str, pid: int, mono: float, started_mono: float, seq: int,
                 restarts: int, extra: dict[str, Any], start: int | None = None,
                 pidns: str | None = None) -> None:
        self.layer = layer
        self.pid = pid
        self.mono = mono  # time.monotonic() when written
        self.started_mono = started_mono  # when this process started
        self.seq = seq  # beats written by this process
        self.restarts = restarts  # how often the layer below restarted this layer
        self.extra = extra
        # who wrote it, for a reader in another PID namespace or after the pid was
        # recycled: the process's start time (/proc/PID/stat field 22) and its PID
        # namespace (the link /proc/self/ns/pid, e.g. "pid:[4026531836]")
        self.start = start
        self.pidns = pidns

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Heartbeat) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"Heartbeat({self.to_json()!r})"

    def age(self, now: float) -> float:
        return max(0.0, now - self.mono)

    def moved_on(self, mono: float, seq: int, extra: dict[str, Any]) -> Heartbeat:
        """The same writer's record with a later `mono`, `seq` and `extra`."""
        return Heartbeat(self.layer, self.pid, mono, self.started_mono, seq, self.restarts,
                         extra, self.start, self.pidns)

    def to_json(self) -> dict[str, Any]:
        d = {
            "layer": self.layer, "pid": self.pid, "mono": self.mono,
            "started_mono": self.started_mono, "seq": self.seq,
            "restarts": self.restarts, "extra": self.extra,
        }
        if self.start is not None:
            d["start"] = self.start
        if self.pidns is not None:
            d["pidns"] = self.pidns
        return d


def heartbeat_path(state_dir: str, layer: str) -> str:
    return os.path.join(state_dir, HEARTBEAT_DIR, layer + ".json")


# A heartbeat file is rewritten in place (pwrite at offset 0, padded with spaces to a
# fixed size), not replaced by rename: a beat costs one system call and no new inode,
# which is most of what an idle chain spends. A reader may then catch a write half done,
# so the record carries a CRC-32 of the text after it: `{"crc": "1a2b3c4d", "extra": ...}`.
# It is still plain JSON (trailing spaces are allowed); readers that do not check the
# CRC just see one more key.

# A slot is a whole page: tmpfs gives a file a page anyway, and a record that grows
# within its page needs no new block, so a full /run cannot stop a heartbeat whose
# `extra` got longer (a critical service's reason, say) while it was full.
HEARTBEAT_SLOT = 4096

_CRC_HEAD = b'{"crc": "'
_CRC_BODY = len(_CRC_HEAD) + 8 + 3  # the head, 8 hex digits, '", '
_EXTRA_AT = _CRC_BODY + 9  # where `extra` begins in a record written here


def _extra_encoder() -> Callable[[Any], str]:
    """json.dumps(obj, sort_keys=True) for a beat's `extra`, with the encoder made once:
    json.dumps makes a new one on every call with sort_keys, and an idle layer's beat runs
    with its caches cold, where that is half the cost of the record."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # (no _json accelerator: the pure-Python path)
        return lambda obj: json.dumps(obj, sort_keys=True)
    enc = json.JSONEncoder(sort_keys=True)
    c = make(None, enc.default, json.encoder.encode_basestring_ascii, None, ": ", ", ",
             True, False, True)
    return lambda obj: "".join(c(obj, 0))


_encode_extra = _extra_encoder()


def heartbeat_bytes(hb: Heartbeat) -> bytes:
    """The record as written: JSON with its CRC first (no padding)."""
    body = json.dumps(hb.to_json(), sort_keys=True).encode()[1:]  # without the '{'
    return b'%s%08x", %s\n' % (_CRC_HEAD, zlib.crc32(body), body)


def parse_heartbeat(raw: bytes) -> Heartbeat | None:
    """A heartbeat from a file's bytes; None when malformed or torn (CRC mismatch)."""
    raw = _record_text(raw)
    if raw.startswith(_CRC_HEAD) and not _crc_matches(raw):
        return None
    try:
        d = _loads_record(raw)
    except ValueError:  # (nested too deeply included: was RecursionError, to every reader)
        return None
    return _heartbeat_from(d)


def _crc_matches(raw: bytes) -> bool:
    """Does a record that starts with its CRC match it (not torn, not changed)?"""
    try:
        crc = int(raw[len(_CRC_HEAD):len(_CRC_HEAD) + 8], 16)
    except ValueError:
        return False
    return zlib.crc32(raw[_CRC_BODY:]) == crc


# The values in a record that record_template leaves open, in the order
# hachain.watchdog._tick numbers them (its SLOTS): the CRC, `mono`, `seq`, a number a gate
# rule reads as the restarter's loop lag, and a number no rule reads.
SLOT_KINDS = ("crc", "mono", "seq", "lag", "number")


def record_template(text: bytes, numbers: dict[str, str] | None = None
                    ) -> tuple[tuple[bytes, ...], tuple[int, ...]] | None:
    """A record written here (its text up to the newline), cut around the values that
    change from one beat of an idle layer to the next: the pieces between them, the
    newline ending the last, and each value's kind (SLOT_KINDS). `numbers`: keys of
    `extra` whose values are left open too (a key to "lag" or "number"), found as the
    last of that name before the record's own fields; a key that is not there, or whose
    value is no plain number, gives None, as does a record not written here. What the
    compiled tick (hachain.watchdog._tick) compares the next records with."""
    if not text.startswith(_CRC_HEAD) or text[_CRC_BODY:_EXTRA_AT] != b'"extra": ' or \
            b"\n" in text:
        return None
    cut = text.rfind(b', "layer": ')
    if cut < _EXTRA_AT:
        return None
    spans = [(len(_CRC_HEAD), len(_CRC_HEAD) + 8, 0)]
    want = [(b', "mono": ', cut, len(text), 1), (b', "seq": ', cut, len(text), 2)]
    for key, what in (numbers or {}).items():
        want.append((b"%s: " % json.dumps(key).encode(), _EXTRA_AT, cut,
                     SLOT_KINDS.index(what)))
    for name, lo, hi, kind in want:
        at = text.rfind(name, lo, hi)
        if at < 0 or (kind >= 3 and text[at - 2:at] != b", " and text[at - 1:at] != b"{"):
            return None
        start = at + len(name)
        end = start
        while end < hi and text[end:end + 1] in b"-0123456789.":
            end += 1
        if end == start or text[end:end + 1] not in (b",", b"}"):
            return None
        spans.append((start, end, kind))
    spans.sort()
    pieces: list[bytes] = []
    kinds: list[int] = []
    at = 0
    for start, end, kind in spans:
        if start < at:
            return None
        pieces.append(text[at:start])
        kinds.append(kind)
        at = end
    pieces.append(text[at:] + b"\n")
    return tuple(pieces), tuple(kinds)


def _record_text(raw: bytes) -> bytes:
    """A heartbeat file's record without its padding: up to the newline a writer here
    ends it with (JSON text has no raw newline: a search of its length, not of the
    file's), else stripped."""
    if raw.startswith(_CRC_HEAD) and (nl := raw.find(b"\n")) > 0:
        return raw[:nl]
    return raw.rstrip()


_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # (C where built)


def _loads_record(raw: bytes) -> Any:
    """loads, for a record that is one JSON object from its first byte to its last (a
    heartbeat's): the scanner called directly, without loads's encoding detection and
    whitespace searches, which with the caches cold cost as much as the parse. Whatever
    it does not take whole goes through loads (its errors, as every reader knows them)."""
    try:
        text = raw.decode()
        obj, end = _SCAN(text, 0)
        if end == len(text):
            return obj
    except (ValueError, StopIteration, RecursionError):
        pass
    return loads(raw)


def write_heartbeat(state_dir: str, hb: Heartbeat) -> None:
    """Write a whole heartbeat file (atomically); layers use HeartbeatWriter instead."""
    write_atomic(heartbeat_path(state_dir, hb.layer), heartbeat_bytes(hb))


def read_heartbeat(state_dir: str, layer: str, regular: bool = False) -> Heartbeat | None:
    """The layer's last heartbeat, or None when missing or unreadable. A read that races
    with the writer is retried (twice). `regular`: as read_small's (a reader with no
    deadline of its own: init, the restarter)."""
    for _ in range(3):
        try:
            raw = read_small(heartbeat_path(state_dir, layer), regular)
        except OSError:
            return None
        if (hb := parse_heartbeat(raw)) is not None:
            return hb
    return None


class _KeptFd:
    """A descriptor kept open from call to call (`fd`; None while there is none)."""

    fd: int | None = None

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                os.close(fd)
            except OSError:
                pass


class HeartbeatReader(_KeptFd):
    """Reads one layer's heartbeat over and over (the tickler's gate, at every tick),
    as read_heartbeat would, for less: the file is kept open, and a read is a `stat` of
    the path and, while that still names the open file, a `pread` of it. A path that
    names another file (replaced, removed, or a FIFO or a mount put over it) is opened
    again, with read_heartbeat's waits: what is at the path is always what is read. Not
    thread-safe: one reader per thread."""

    def __init__(self, state_dir: str, layer: str) -> None:
        self.path = heartbeat_path(state_dir, layer)
        self.fd: int | None = None
        self.ident = (-1, -1)  # (device, inode) of the open file
        self.cap = 2 * HEARTBEAT_SLOT  # one read takes the whole of a file this size
        self.extra_text = b""  # the last record's `extra`, as text and parsed (_parse)
        self.extra: dict[str, Any] = {}
        self.text = b""  # the last record read whole, up to its newline

    def read(self) -> Heartbeat | None:
        if self.fd is not None:
            try:
                st = os.stat(self.path)  # may hang (a hung mount): the reader's thread
                same = (st.st_dev, st.st_ino) == self.ident
            except OSError:
                same = False
            if same:
                for _ in range(3):  # (as read_heartbeat: a read torn by the writer is
                    try:  # retried)
                        hb = self._parse(self._pread(self.fd))
                    except OSError:
                        break
                    if hb is not None:
                        return hb
                else:
                    return None
            self.close()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)  # may hang (a FIFO)
            except OSError:
                return None
            try:
                st = os.fstat(fd)
                hb = self._parse(self._pread(fd))
            except OSError:
                os.close(fd)
                return None
            if hb is not None:
                self.fd, self.ident = fd, (st.st_dev, st.st_ino)
                return hb
            os.close(fd)
        return None

    def _parse(self, raw: bytes) -> Heartbeat | None:
        """parse_heartbeat, parsing `extra` only when its text changed since the last
        record: a layer's `extra` is mostly the same from beat to beat, and it is most of
        the record (the fields after it, a CRC-checked writer's own, are parsed alone).
        The Heartbeat gets a copy of the kept `extra` (its top level: readers only read
        what is nested)."""
        raw = self.text = _record_text(raw)
        cut = raw.rfind(b', "layer": ')
        if not raw.startswith(_CRC_HEAD) or cut < _EXTRA_AT or \
                raw[_CRC_BODY:_EXTRA_AT] != b'"extra": ':
            return parse_heartbeat(raw)
        if not _crc_matches(raw):
            return None
        text = raw[_EXTRA_AT:cut]
        if text != self.extra_text:
            hb = parse_heartbeat(raw)
            if hb is not None:
                self.extra_text, self.extra = text, dict(hb.extra)
            return hb
        try:
            d = _loads_record(b"{" + raw[cut + 2:])
        except ValueError:
            return None
        if not isinstance(d, dict) or "extra" in d:
            return parse_heartbeat(raw)
        d["extra"] = self.extra
        return _heartbeat_from(d)

    def _pread(self, fd: int) -> bytes:
        while len(raw := os.pread(fd, self.cap, 0)) == self.cap:
            self.cap *= 2  # a file grown past it: read again, whole
        return raw



def _heartbeat_from(d: Any) -> Heartbeat | None:
    if not isinstance(d, dict):
        return None
    try:
        return Heartbeat(
            layer=str(d["layer"]), pid=int(d["pid"]), mono=float(d["mono"]),
            started_mono=float(d["started_mono"]), seq=int(d["seq"]),
            restarts=int(d.get("restarts", 0)), extra=dict(d.get("extra") or {}),
            start=None if d.get("start") is None else int(d["start"]),
            pidns=None if d.get("pidns") is None else str(d["pidns"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


class HeartbeatWriter(_KeptFd):
    """Writes one layer's heartbeat; call `beat()` from inside the event loop."""

    def __init__(self, state_dir: str, layer: str, restarts: int = 0,
                 steady: bool = True) -> None:
        self.state_dir = state_dir
        self.layer = layer
        self.restarts = restarts
        self.started = time.monotonic()
        self.seq = 0
        self.path = heartbeat_path(state_dir, layer)
        self.fd: int | None = None
        self.size = 0  # the file's size: every record is padded to it
        self.opened = 0  # how often the file was opened (made again, when it was lost)
        self.start = proc_start_time(os.getpid())
        try:
            self.pidns: str | None = os.readlink("/proc/self/ns/pid")
        except OSError:
            self.pidns = None
        self.pid = 0
        self._fixed(os.getpid())
        # `steady`: a layer whose `extra` is mostly the same from one beat to the next
        # (an idle restarter's, init's): the last one's text is kept and written again
        # while the new one compares equal to it. An idle layer beats with its caches
        # cold, and there encoding `extra` is the largest part of a beat.
        self.steady = steady
        self.last_extra: Any = None
        self.last_text = b""
        os.makedirs(os.path.join(state_dir, HEARTBEAT_DIR), exist_ok=True)

    def beat(self, extra: dict[str, Any] | None = None,
             volatile: dict[str, Any] | None = None) -> None:
        """Write a beat with `extra`, and in it the keys of `volatile` too: those that
        change at nearly every beat (a loop's lag), encoded each time on their own, so
        the rest can be kept (`steady`). They go last in `extra`'s object, out of the
        sorted order (no reader depends on the order)."""
        self.seq += 1
        pid = os.getpid()
        if pid != self.pid:  # (a writer carried over a fork: the new process's own)
            self._fixed(pid)
        extra = extra or {}
        if not self.steady:
            text = _encode_extra(extra).encode()
        elif extra == self.last_extra:
            text = self.last_text
        else:
            text = self.last_text = _encode_extra(extra).encode()
            # what was written, as a copy of its own: the caller's objects may change
            # after the beat, and a copy sharing them would then compare equal to them
            # (equal as Python compares: a bool where an int of the same value was
            # written keeps the int's text; nothing in a heartbeat changes so)
            self.last_extra = json.loads(text)
        if volatile:
            more = _encode_extra(volatile).encode()
            text = b"%s, %s" % (text[:-1], more[1:]) if extra else more
        body = b'"extra": %s, %s%r, %s%d, %s' % (
            text, self.head, time.monotonic(), self.middle, self.seq, self.tail)
        try:
            self._write(b'%s%08x", %s\n' % (_CRC_HEAD, zlib.crc32(body), body))
        except OSError:
            # A full or read-only runtime dir must not kill the layer; the missing
            # heartbeat is itself the signal (the gate sees it go stale).
            self.close()

    def pieces(self, keys: tuple[str, ...], rest: dict[str, Any]
               ) -> tuple[int, tuple[bytes, ...], int] | None:
        """The last beat, for a writer in compiled code (the restarter's idle beats,
        _clone3.wait; the tickler's idle ticks, hachain.watchdog._tick): (fd, the record's
        text in len(keys) + 3 pieces, the size to pad to). The pieces go around the
        numbers the writer fills in: `extra[key]` for each of `keys`, in that order, then
        `mono` and `seq`; `extra` is the last steady one, with `rest` after `keys` (the
        volatile keys a beat's `volatile` gave, as fixed values). The CRC and its head
        come first. None when there is no file open or no steady `extra` written yet."""
        if self.fd is None or not self.steady or not self.last_text or \
                self.pid != os.getpid() or not keys:
            return None
        steady = self.last_text
        names = [b"%s: " % json.dumps(k).encode() for k in keys]
        more = _encode_extra(rest).encode()[1:-1] if rest else b""
        return self.fd, (
            b'"extra": ' + (steady[:-1] + b", " if steady != b"{}" else b"{") + names[0],
            *(b", " + name for name in names[1:]),
            (b", " + more if more else b"") + b"}, " + self.head,
            b", " + self.middle,
            b", " + self.tail), self.size

    def _fixed(self, pid: int) -> None:
        """The record's parts that do not change from beat to beat, encoded once: what
        goes between `extra` and `mono`, between `mono` and `seq`, and after `seq`
        (the keys in heartbeat_bytes's sorted order, so the record is the same bytes)."""
        self.pid = pid
        dumps = json.dumps
        self.head = b'"layer": %s, "mono": ' % dumps(self.layer).encode()
        pidns = b"" if self.pidns is None else b'"pidns": %s, ' % dumps(self.pidns).encode()
        self.middle = b'"pid": %d, %s"restarts": %d, "seq": ' % (pid, pidns, self.restarts)
        start = b"" if self.start is None else b'"start": %d, ' % self.start
        self.tail = b'%s"started_mono": %r}' % (start, self.started)

    def _write(self, rec: bytes) -> None:
        if self.fd is not None and os.fstat(self.fd).st_nlink == 0:
            self.close()  # our file was removed or replaced: start a new one
        if self.fd is None:
            self.opened += 1
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                # the directory was removed (an `rm -rf` of the run directory, a cleaner
                # of /run or /tmp): make it again rather than let the gate reset a
                # healthy chain for a file
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self.size = os.fstat(self.fd).st_size
        if len(rec) > self.size:
            # grow the slot (rounded up, so it rarely happens twice); a new size goes
            # through a whole-file replace, so no reader ever sees a short file
            self.size = -(-len(rec) // HEARTBEAT_SLOT) * HEARTBEAT_SLOT
            write_atomic(self.path, rec.ljust(self.size))
            self.close()
            return
        os.pwrite(self.fd, rec.ljust(self.size), 0)



# --- lean interpreters ---------------------------------------------------------------------
#
# The chain's long-running processes start Python with -S: no site module, so no .pth
# files and no import hooks of editable installs, about 1.5 MB less per process. What
# site would have put on sys.path goes into PYTHONPATH instead.

# init, after giving up on a tickler that kept dying with the device armed: how long until
# it tries one again (--tickler-pause). An armed device has expired long before, so a try
# then means no device was left armed (the deaths came before the open) and the machine
# would otherwise run with no tickler for the rest of the boot.
TICKLER_PAUSE_MIN = 600.0


def tickler_pause(timeout: float) -> float:
    """--tickler-pause for a watchdog `timeout`: twice it, and never under
    TICKLER_PAUSE_MIN (a driver's own timeout, before SETTIMEOUT, can be longer)."""
    return max(TICKLER_PAUSE_MIN, 2.0 * timeout)


def lean_python(python: str, module: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment to run `python -S -m module` with this process's packages.

    In a process that is itself lean (started with -S by this function), PYTHONPATH is
    already right and is passed on unchanged."""
    env = dict(os.environ)
    path = lean_pythonpath()
    if path is not None:
        env["PYTHONPATH"] = path
    return [python, "-S", "-m", module], env


def lean_pythonpath() -> str | None:
    """The PYTHONPATH under which `python -S` finds what this process finds through
    `site`: hachain's own directory, the site-packages directories, then any PYTHONPATH
    given. None in a process started with -S: its PYTHONPATH is that already. (`site`
    costs every start of a layer its scan of site-packages and its .pth files: 10-20 ms
    here, half a second in an emulated guest reading them over 9p.)"""
    import sys
    if sys.flags.no_site:
        return None
    import site
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [here, *site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        paths.append(site.getusersitepackages())
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(dict.fromkeys(paths))


# --- log lines ------------------------------------------------------------------------------

def log_line(prog: str, msg: str) -> bytes:
    """One log line for stderr, as `[chain] log_format` asks (passed down in the
    environment): `prog: msg`, or a JSON object with time, program, pid and message."""
    if os.environ.get(ENV_LOG_FORMAT) == "json":
        return json.dumps({"time": round(time.time(), 3), "prog": prog, "pid": os.getpid(),
                           "msg": msg}).encode() + b"\n"
    return f"{prog}: {msg}\n".encode(errors="replace")


ERR_PENDING_MAX = 256 * 1024  # bytes of log lines kept for a stderr that does not take them


class ErrOut:
    """stderr for a loop that must never wait on it (the restarter, its standby, the
    logger). A console or journald that stops reading (a hung journald, a terminal
    paused with Ctrl-S, a pipe whose reader is stopped) fills the pipe, and a blocking
    write then stopped the loop: the restarter's heartbeat went stale and a healthy box
    was reset. Here a write that would wait is not made: what is left waits in memory
    (up to ERR_PENDING_MAX bytes) and goes out at the next `write` or `retry`, in order.
    Past that, lines are dropped (whole) and counted until all that was kept is out;
    then one line says how many.

    How without a thread or a shared flag: O_NONBLOCK belongs to an open file
    description, which stderr shares with init and the rest of the chain, so it is not set
    there. A pipe, FIFO or terminal is opened again through /proc/self/fd/2 (a
    description of our own, non-blocking); a socket (journald's stream) is sent to with
    MSG_DONTWAIT. A regular file, or a stderr that cannot be reopened, is written as
    before (a regular file never makes a write wait for a reader)."""

    def __init__(self, prog: str, fd: int = 2) -> None:
        self.prog = prog
        self.fd = fd
        self.out: int | None = None  # our descriptor (or `fd`), made at the first write
        self.sock: Any = None  # stderr as a socket, sent to with MSG_DONTWAIT
        self.pending = bytearray()
        self.dropped = 0  # lines dropped since the last that went out
        self.lock = _thread.allocate_lock()  # the logger writes from two threads

    def _open(self) -> None:
        self.out = self.fd
        try:
            mode = os.fstat(self.fd).st_mode
        except OSError:
            return
        if stat.S_ISSOCK(mode):
            import socket
            try:
                self.sock = socket.socket(fileno=os.dup(self.fd))
            except OSError:
                self.sock = None
        elif stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            try:  # O_NOCTTY: a session leader (the restarter) opening a terminal must not
                # make it its controlling one, a Ctrl-C there would reach it (a write-only
                # open does not on Linux since 4.x; older kernels need the flag)
                self.out = os.open(f"/proc/self/fd/{self.fd}",
                                   os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_APPEND
                                   | os.O_NOCTTY)
            except OSError:
                self.out = self.fd

    def write(self, data: bytes) -> None:
        """Write `data` (whole lines) now, or keep it for later."""
        with self.lock:
            self._write(data)

    def retry(self) -> None:
        """Write what was kept, as much as stderr takes now."""
        with self.lock:
            self._retry()

    def forget(self) -> None:
        """In a forked child: what the parent kept is the parent's to write (both would,
        twice)."""
        self.pending = bytearray()
        self.dropped = 0
        self.lock = _thread.allocate_lock()  # (one held at the fork stays held here)

    def drain(self, timeout: float) -> bool:
        """Before the process exits: give what was kept up to `timeout` seconds to go out
        (a slow stderr gets it, a stuck one costs that long). True when all went."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.pending or self.dropped:
                self._retry()
                left = deadline - time.monotonic()
                if not (self.pending or self.dropped) or left <= 0:
                    break
                fd: int = self.sock.fileno() if self.sock is not None else \
                    self.fd if self.out is None else self.out
                try:
                    select.select([], [fd], [], min(left, 0.1))
                except (OSError, ValueError):
                    time.sleep(min(left, 0.1))
            return not (self.pending or self.dropped)

    def _write(self, data: bytes) -> None:
        if self.out is None:
            self._open()
        if self.dropped:  # dropping goes on until what was kept is out, so that the
            self.dropped += data.count(b"\n") or 1  # count is said where they went missing
            self._retry()
            return
        if self.pending:
            self._keep(data)
            self._retry()
            return
        n = self._send(data)
        if n < len(data):
            self._keep(data[n:])

    def _retry(self) -> None:
        while self.pending:
            n = self._send(bytes(self.pending))
            if n <= 0:
                return
            del self.pending[:n]
        if self.dropped:  # said once what was kept before them is out
            line = log_line(self.prog, f"{self.dropped} log line(s) dropped: stderr did "
                                       "not take them")
            self.dropped = 0
            n = self._send(line)
            if n < len(line):
                self.pending += line[n:]

    def _keep(self, data: bytes) -> None:
        room = ERR_PENDING_MAX - len(self.pending)
        if len(data) <= room:
            self.pending += data
            return
        cut = data.rfind(b"\n", 0, room) + 1  # whole lines only
        self.pending += data[:cut]
        self.dropped += data.count(b"\n", cut) or 1

    def _send(self, data: bytes) -> int:
        """Bytes written; 0 when stderr takes nothing now. A stderr that is gone (EPIPE,
        EIO) takes everything: a closed console must not stop the loop either."""
        try:
            if self.sock is not None:
                import socket
                return int(self.sock.send(data, socket.MSG_DONTWAIT))
            assert self.out is not None
            return os.write(self.out, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            return len(data)


# --- process identity ----------------------------------------------------------------------

def proc_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (index 0 is the state letter,
    field 3 in proc(5)), or None when the process is gone. The command name may hold
    spaces and parentheses, so the split starts after the last ')'. The one parser of
    that file for the library, the tests, the benchmarks and the simulators."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:  # (one read: the kernel makes the whole line, a few hundred bytes, at once)
            raw = os.read(fd, 4096)
            while len(raw) >= 4096 and (more := os.read(fd, 4096)):
                raw += more
        finally:
            os.close(fd)
        return raw[raw.rindex(b")") + 2:].split()
    except (OSError, ValueError):
        return None


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from one read of /proc/PID/stat, or None."""
    f = proc_fields(pid)
    try:
        return (f[0].decode(), int(f[19])) if f is not None else None
    except (ValueError, IndexError):
        return None


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), or None.

    A pid together with its start time names one process for the life of a boot: a
    recycled pid has a later start time.
    """
    st = proc_stat(pid)
    return st[1] if st is not None else None


def _tick_ns() -> int | None:
    """Nanoseconds per clock tick of /proc/PID/stat (USER_HZ), where a tick is a whole
    number of them (None elsewhere: then nothing is computed, all is read)."""
    try:
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    return 10**9 // hz if hz > 0 and 10**9 % hz == 0 else None


TICK_NS = _tick_ns()


def boottime_ns() -> int:
    """CLOCK_BOOTTIME now, in ns: the clock a new process's start time is taken from."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def start_time_between(pid: int, before: int, after: int) -> int | None:
    """The start time of child `pid` (as proc_start_time says it), which this process
    cloned between two readings `before` and `after` of boottime_ns().

    The kernel stamps a new task with CLOCK_BOOTTIME while cloning it (copy_process sets
    start_boottime), and field 22 of /proc/PID/stat is that stamp in USER_HZ ticks,
    rounded down (nsec_to_clock_t), both in this process's time namespace. So when both
    readings fall in one tick, the start time is that tick, with nothing read: the read
    right after the clone costs 40-55 us here against 3 us at other times, as the new
    child is still in its exec. Otherwise (about one spawn in 50 with a
    10 ms tick), or where ticks are not whole nanoseconds, /proc is read."""
    if TICK_NS is not None and before <= after and before // TICK_NS == after // TICK_NS:
        return before // TICK_NS
    return proc_start_time(pid)


OOM_SCORE_ADJ = "/proc/self/oom_score_adj"


def own_oom_score_adj() -> int:
    """This process's OOM score adjustment (0 when /proc cannot say)."""
    try:
        with open(OOM_SCORE_ADJ, "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def set_own_oom_score_adj(value: int) -> str | None:
    """Set this process's OOM score adjustment (inherited by what it starts from then
    on); a one-line warning when that is refused (lowering needs CAP_SYS_RESOURCE, which
    a container may not grant even to root), else None. Nothing is written when it
    already has that value (inherited from init)."""
    now = own_oom_score_adj()
    if now == value:
        return None
    try:
        with open(OOM_SCORE_ADJ, "w") as f:
            f.write(str(value))
    except OSError as e:
        why = e.strerror or str(e)
        if e.errno == errno.EACCES and value < now:
            why += "; lowering it needs CAP_SYS_RESOURCE"
        return (f"cannot set its own oom_score_adj to {value} ({why}): it stays at "
                f"{own_oom_score_adj()}, so a machine out of memory may pick it before a "
                "service")
    return None


def proc_state(pid: int) -> str | None:
    """The one-letter state of /proc/PID/stat (R, S, D, T, Z, ...), or None when gone."""
    f = proc_fields(pid)
    return f[0].decode() if f else None


def set_process_name(name: str) -> None:
    """This process's name as ps and top show it (/proc/self/comm, 15 bytes at most):
    for a layer forked from another, which keeps the other's command line."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass


def proc_ppid(pid: int) -> int | None:
    """The parent pid from /proc/PID/stat (field 4), or None when gone."""
    f = proc_fields(pid)
    try:
        return int(f[1]) if f is not None else None
    except (ValueError, IndexError):
        return None


def proc_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of `pid` in seconds (fields 14 and 15), or None."""
    f = proc_fields(pid)
    try:
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK") if f is not None else None
    except (ValueError, IndexError):
        return None


def init_from_env() -> tuple[int, int | None] | None:
    """The init that started this layer: its pid ($HACHAIN_INIT_PID) and start time, or
    None when no init started it (a layer run on its own)."""
    try:
        pid = int(os.environ.get(ENV_INIT_PID, ""))
    except ValueError:
        return None
    return pid, proc_start_time(pid)


_INIT_PIDFDS: dict[tuple[int, int], int] = {}  # init_gone's pidfds, by (pid, start time)


def readable(fd: int, timeout: float = 0.0) -> bool:
    """Is `fd` readable (a pidfd: its process has ended), waiting up to `timeout` s? poll,
    not select: a restarter forked by its standby (restarter/standby.py) inherits a
    thousand descriptors, and select() refuses any numbered 1024 or more."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(timeout * 1000))


def init_pidfd(init: tuple[int, int | None]) -> int | None:
    """The pidfd init_gone keeps of `init` (readable once it has ended), None before its
    first look or where it has none."""
    return None if init[1] is None else _INIT_PIDFDS.get((init[0], init[1]))


def init_gone(init: tuple[int, int | None] | None) -> str | None:
    """Why the init that started this layer no longer runs (dead, a zombie, or its pid now
    names another process), or None. Checked on every heartbeat: the layers' answer to an
    orphaned chain (docs/init.md). By pid and start time rather than getppid(), so a
    layer started through a wrapper that does not exec is never taken for an orphan.

    The first check reads /proc and then keeps a pidfd of that very process (its start
    time read again after the pidfd was opened); later checks ask only whether the
    pidfd is readable, which it becomes when the process exits (a zombie included): one
    system call per heartbeat instead of an open, two reads and a close."""
    if init is None:
        return None
    if init[1] is None:  # no /proc to read (or init gone before we looked): the parent
        return None if os.getppid() == init[0] else f"init (pid {init[0]}) is gone"
    gone = f"init (pid {init[0]}) is gone"
    key = (init[0], init[1])
    if (fd := _INIT_PIDFDS.get(key)) is not None:
        try:
            return gone if readable(fd) else None
        except (OSError, ValueError):
            del _INIT_PIDFDS[key]  # closed under us: back to /proc
    why = _init_gone_proc(init[0], init[1], gone)
    if why is None and hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(init[0])
        except OSError:
            return None  # no pidfds (or none left): /proc again next time
        if _init_gone_proc(init[0], init[1], gone) is None:
            _INIT_PIDFDS[key] = fd
        else:
            os.close(fd)
    return why


def _init_gone_proc(pid: int, start: int, gone: str) -> str | None:
    try:
        raw = read_small(f"/proc/{pid}/stat")
    except (FileNotFoundError, ProcessLookupError):
        return gone
    except OSError:
        return None  # cannot tell now (no descriptor left, say): the next heartbeat will
    try:
        fields = raw[raw.rindex(b")") + 2:].split()
        return gone if fields[0] in (b"Z", b"X") or int(fields[19]) != start else None
    except (ValueError, IndexError):
        return None


def next_tick(now: float, interval: float, offset: float = 0.0) -> float:
    """The first instant after `now` on the grid `offset + k * interval` of
    CLOCK_MONOTONIC, which every process of the machine shares.

    The chain's layers schedule their heartbeats on this grid (the same
    `heartbeat_interval`; the tickler a few ms after, to read fresh heartbeats), so an
    idle chain wakes the machine once per interval instead of once per layer at random
    phases: a wake-up of an idle CPU costs a few hundred microseconds here, a second one
    right after it much less (docs/benchmarks.md). No heartbeat comes later for it:
    the gap between two ticks is still at most `interval`."""
    t = offset + ((now - offset) // interval + 1) * interval
    return t if t > now else t + interval


def pid_alive(pid: int) -> bool:
    """True when `pid` names a process that is not a zombie."""
    st = proc_state(pid)
    return st is not None and st not in ("Z", "X")


# --- control protocol ----------------------------------------------------------------------
#
# Unix stream socket <state_dir>/control.sock. A request is one JSON object on one line
# (at most MAX_REQUEST_BYTES), a reply is one JSON object on one line, then the server
# closes the connection. Requests: {"op": "status"} | {"op": "start"|"stop"|"restart"|
# "clear"|"reload-service", "name": NAME} | {"op": "reload-result", "id": ID} |
# {"op": "ping"} | {"op": "status-doc", "json": BOOL, "tty": BOOL,
# "pidns": "pid:[N]", "persist_dir": PATH (optional)}. Replies: {"ok": true, ...} or
# {"ok": false, "error": "one line"}. `status-doc` (asked by the native `hachain` front,
# hachain/_front.c) is the one reply with a body: {"ok": true, "exit": N, "bytes": N} and
# then exactly that many bytes, what `hachain status [--json]` prints.

# the requests that name a service
NAME_OPS = ("start", "stop", "restart", "clear", "kill", "reload-service")
REPLY_BODY = "_body"  # a handler's reply key: these bytes follow the reply line

def encode_message(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def decode_request(line: bytes) -> dict[str, Any]:
    """Parse one request line; ValueError with a one-line reason when it is not valid."""
    if len(line) > MAX_REQUEST_BYTES:
        raise ValueError(f"request too large ({len(line)} bytes, limit {MAX_REQUEST_BYTES})")
    try:
        obj = json.loads(line.decode("utf-8"))
    except RecursionError:  # not a ValueError: it escaped, and the client got no reply
        raise ValueError("request is not a JSON object: nested too deeply") from None
    except ValueError as e:  # (UnicodeDecodeError, JSONDecodeError, an int of 4300+ digits)
        raise ValueError(f"request is not a JSON object: {str(e).split(';')[0]}") from None
    if not isinstance(obj, dict):
        raise ValueError("request is not a JSON object")
    op = obj.get("op")
    if not isinstance(op, str):
        raise ValueError("request has no string 'op'")
    if op in NAME_OPS:
        name = obj.get("name")
        if not isinstance(name, str):
            raise ValueError(f"request {op!r} has no string 'name'")
        problem = clear_name_problem(name) if op == "clear" else service_name_problem(name)
        if problem:
            raise ValueError(problem)
    return obj
