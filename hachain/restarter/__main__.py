"""`python -m hachain.restarter -c F`: the restarter process (started by hachain-init)."""

from __future__ import annotations

import os
import sys

from hachain import channels, classcache, snapshot
from hachain.errors import ConfigError
from hachain.restarter import standby
from hachain.restarter.loop import ERR, AlreadyRunning, Restarter, log, release_log, take_lock

classcache.release()  # every class is built by now (hachain/classcache.py)


def _cannot_start(e: OSError) -> int:
    """One line for an OS error that stops the start (init restarts the restarter)."""
    where = f"{e.filename}: " if e.filename else ""
    why = "exists and is not a directory" if isinstance(e, FileExistsError) else e.strerror
    log(f"cannot start: {where}{why or e}")
    return 1


def main(argv: list[str] | None = None) -> int:
    p = channels.layer_parser("hachain-restarter")
    p.add_argument("-c", "--config", default=os.environ.get(channels.ENV_CONFIG,
                                                             channels.DEFAULT_CONFIG))
    p.add_argument("--standby", action="store_true",
                   help="fork the working restarter and stay behind as its standby, "
                   "forking a replacement the moment it dies (restarter/standby.py)")
    args = p.parse_args(argv)
    lock_fd = None
    loaded = plan = None
    state = os.environ.get(channels.ENV_STATE_DIR)
    if args.standby and state:
        code = standby.serve(log, args.config, state)
        if code is not None:
            return code
        ERR.forget()  # the worker: lines the standby still keeps are the standby's to write
        # the worker: the lock first (a worker of an earlier standby may still hold it),
        # then the running snapshot, which that one may have changed until it died
        try:
            os.makedirs(state, exist_ok=True)
        except OSError as e:
            return _cannot_start(e)
        lock_fd = take_lock(state, wait=True)
        pre = standby.PRELOADED
        if pre is not None and standby.running_ident(state) == pre.ident:
            loaded, plan = (pre.cfg, pre.snap), pre.plan  # what the standby loaded runs
    try:
        # this chain run's running snapshot, never the live file (docs/configuration.md)
        cfg, snap = loaded or snapshot.for_layer(args.config, log=log)
    except ConfigError as e:
        for line in e.errors:
            log(line)
        return 2
    os.environ[channels.ENV_LOG_FORMAT] = cfg.chain.log_format
    try:
        r = Restarter(cfg, int(os.environ.get(channels.ENV_LAYER_RESTARTS, "0") or 0),
                      lock_fd, plan)
    except AlreadyRunning as e:
        log(str(e))
        return 1
    except OSError as e:  # its directories: a file in the way, a read-only disk
        return _cannot_start(e)
    r.snap = snap  # written again if state_dir loses it (Restarter._mend_state_dir)
    r.cgroups.held.update(standby.HELD)  # the standby's descriptors (none without it)
    what = "the last-known-good configuration of " if snap.fallback else ""
    log(f"supervising {len(cfg.services)} service(s) from {what}{cfg.path} "
        f"(pid {os.getpid()})")
    return r.run()


def _main() -> int:
    try:
        return main()
    finally:
        release_log()
        ERR.drain(ERR_DRAIN)  # the last lines, to a stderr that may be slow


ERR_DRAIN = 1.0  # s the last log lines get at exit


if __name__ == "__main__":
    sys.exit(_main())
