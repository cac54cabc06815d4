"""The restarter's standby: a restarter already imported when the working one dies.

A new restarter process spends most of its first 100 ms starting the interpreter and
importing the restarter (docs/benchmarks.md); a service that died with the old restarter
waits that long before anything can restart it. With `--standby` (what hachain-init
starts), the process init started imports everything, then forks the *worker*, the
restarter that does the work (takes the lock, loads the running snapshot, supervises),
and stays behind as the standby: it waits for the worker to end, and when the worker
dies after running for at least `REFORK_AFTER` seconds it forks the replacement at once,
a copy of an already imported process. The replacement re-adopts what runs and restarts
what died, as a restarter started by init does.

The two share every page the imports made (copy on write; `gc.freeze` keeps the cyclic
GC from writing to them) until the worker writes to it, which Python's reference counts
do to most of them over time: the standby costs the chain 4-6 MB of PSS
(docs/benchmarks.md). `[chain] restarter_standby = false` runs without it.

What stays as it was:
- one restarter at a time: the worker takes the restarter lock and the cgroup claim
  before anything else and waits for them (a worker left over from an earlier standby
  holds them until it dies); the standby never takes them and never acts;
- init's policy: a worker that ends on its own (status 0: stopped, orphaned), that died
  sooner than `REFORK_AFTER` after its start (a crash loop), or that went away while the
  standby was told to stop, ends the standby with the worker's status, and init restarts
  or not as before, with its backoff;
- signals: SIGTERM, SIGINT and SIGHUP sent to the standby (by init or by hand) are passed
  on to the worker; after SIGTERM or SIGINT the standby forks no replacement.

Must not: import anything after the fork that the worker does not need, or hold any fd
of the worker's.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from hachain import channels, snapshot
from hachain.errors import ConfigError
from hachain.restarter import core

if TYPE_CHECKING:
    from hachain.configtypes import Config

REFORK_AFTER = 1.0  # a worker that ran less than this is not replaced here (init's backoff)
_FORWARD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Preloaded(NamedTuple):
    """The running snapshot as the standby loaded it, and which file that was."""

    ident: tuple[int, int, int, int]
    cfg: Config
    snap: snapshot.Snapshot
    plan: core.Plan  # core.make_plan(cfg.services)


def running_ident(state_dir: str) -> tuple[int, int, int, int] | None:
    """Which running snapshot file is in place (it is replaced whole, by a rename)."""
    try:
        st = os.stat(os.path.join(state_dir, channels.RUNNING_CONFIG))
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def preload(path: str, state_dir: str) -> Preloaded | None:
    """In the standby, before the first fork: import what the worker would import later
    (so that its pages are shared and a replacement does not wait for them) and load
    this run's running snapshot and the plan made of it, which a worker uses when the
    same file is still in place after it took the lock. None when there is no running
    snapshot of this run yet; nothing is written."""
    import ctypes  # noqa: F401 - spawn.sigchld_fd
    import pickle  # noqa: F401 - the parsed snapshot
    import stat  # noqa: F401 - loop._inherited_fd

    from hachain.restarter import control  # noqa: F401 - Restarter.__init__
    before = running_ident(state_dir)
    try:
        got = snapshot.running_of_run(path) if before is not None else None
    except ConfigError:
        got = None
    if got is None or running_ident(state_dir) != before:
        return None
    assert before is not None
    return Preloaded(before, got[0], got[1], core.make_plan(got[0].services))


def _status_code(status: int) -> int:
    """An exit code for a wait status: the worker's code, or 128 + its signal."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


# The standby's read-only descriptors of the services' cgroup.procs (path -> fd): a worker
# inherits them, and its scan for what died (loop._dead_first) reads each with one pread
# instead of an open, a read and a close (~1 ms for 1000 against 7-25 ms).
HELD: dict[str, int] = {}
PRELOADED: Preloaded | None = None  # the running snapshot, as the standby last loaded it
HOLD_AFTER = 1.0  # s after a fork: open what the worker has made, then again doubling
HOLD_UNTIL = 64.0  # ... until all are held or this long after the fork


def cgroup_paths(cfg: Config, state_dir: str) -> list[str]:
    """Where the services' cgroups are (spawn.Cgroups.from_config, without making any)."""
    setting = cfg.chain.cgroup_root
    if setting == "none":
        return []
    root = setting
    if setting == "auto":
        from hachain.cgroupfs import find_cgroup2_mount
        mount = find_cgroup2_mount()
        if mount is None:
            return []
        root = os.path.join(mount, channels.cgroup_name(state_dir))
    else:
        from hachain.cgroupfs import cgroup2_problem
        if cgroup2_problem(root) is not None:
            return []  # not cgroups: the worker uses none there either
    return [os.path.join(root, name) for name in cfg.services]


def hold(paths: list[str]) -> bool:
    """Open the cgroup.procs of each path not held yet; True when all are held.

    Only the cgroups that exist are tried, from one listing of their parent: on a first
    start none does, and 1000 failed opens in cgroupfs took 45 ms before the first
    worker was forked."""
    present: dict[str, set[str]] = {}
    for p in paths:
        if p in HELD:
            continue
        parent, name = os.path.split(p)
        names = present.get(parent)
        if names is None:
            try:
                names = present[parent] = set(os.listdir(parent))
            except OSError:
                names = present[parent] = set()  # no cgroups made yet, or none at all
        if name not in names:
            continue  # not made yet: the service has not started
        try:
            HELD[p] = os.open(os.path.join(p, "cgroup.procs"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass  # removed since the listing
    return len(HELD) >= len(paths)


def serve(log: Callable[[str], None], config_path: str, state_dir: str) -> int | None:
    """Fork workers until one ends for good. Returns None in each worker (which goes on
    to be the restarter) and, in the standby, the exit code to end with."""
    global PRELOADED
    stopping = False
    worker: int | None = None

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig != signal.SIGHUP:
            stopping = True
        if worker is not None:
            try:
                os.kill(worker, sig)
            except ProcessLookupError:
                pass

    for sig in _FORWARD:
        signal.signal(sig, forward)
    base = int(os.environ.get(channels.ENV_LAYER_RESTARTS, "0") or 0)
    channels.raise_fd_limit()
    PRELOADED = preload(config_path, state_dir)
    ready = _prepare(state_dir)
    # the imports' objects out of the cyclic GC's reach: the worker's collections then
    # leave their pages shared (no collect first: 30-50 ms here, and it finds nothing)
    gc.freeze()
    forks = 0
    while not stopping:
        # no signal between the fork and knowing the worker's pid goes unforwarded
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARD)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            for sig in _FORWARD:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARD)
            os.environ[channels.ENV_LAYER_RESTARTS] = str(base + forks)
            return None
        worker = pid
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARD)
        if not ready:
            ready = _prepare_while_waiting(pid, config_path, state_dir)
        _, status = os.waitpid(pid, 0)  # retried after a forwarding handler (PEP 475)
        worker = None
        code = _status_code(status)
        ran = time.monotonic() - started
        if stopping or code == 0 or ran < REFORK_AFTER:
            return code
        forks += 1
        log(f"the restarter (pid {pid}) {_describe(status)} after {ran:.1f} s; its "
            "standby forks the replacement")
    return 0


def _prepare(state_dir: str) -> bool:
    """Hold what the preloaded configuration's services have made; True when nothing is
    left to do for the next worker."""
    if PRELOADED is None:
        return False
    return hold(cgroup_paths(PRELOADED.cfg, state_dir))


def _prepare_while_waiting(pid: int, config_path: str, state_dir: str) -> bool:
    """While the worker `pid` runs: HOLD_AFTER s after the fork, then again doubling the
    wait while something is missing, until HOLD_UNTIL, load the running snapshot (when
    there was none: a chain started without `hachain run`) and open the cgroups the
    worker has made. Returns at once when the worker ends; True when all is done."""
    global PRELOADED
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        poll = select.poll()  # not select(): the held descriptors number past 1024
        poll.register(pidfd, select.POLLIN)
        wait = HOLD_AFTER
        while wait <= HOLD_UNTIL:
            if poll.poll(wait * 1000):
                return False  # the worker is gone
            if PRELOADED is None or running_ident(state_dir) != PRELOADED.ident:
                PRELOADED = preload(config_path, state_dir)  # none yet, or reloaded
            if _prepare(state_dir):
                return True
            wait *= 2
        return False
    finally:
        os.close(pidfd)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        try:
            return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
        except ValueError:
            return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.WEXITSTATUS(status)}"
