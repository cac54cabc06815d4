"""`python -m hachain.restarter -c F`: the restarter process (started by hachain-init)."""

from __future__ import annotations

import argparse
import os
import sys

from hachain import channels, config, snapshot
from hachain.restarter.loop import AlreadyRunning, Restarter, log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hachain-restarter")
    p.add_argument("-c", "--config", default=os.environ.get(channels.ENV_CONFIG,
                                                             config.DEFAULT_PATH))
    args = p.parse_args(argv)
    try:
        # this chain run's running snapshot, never the live file (docs/configuration.md)
        cfg, snap = snapshot.for_layer(args.config, log=log)
    except config.ConfigError as e:
        for line in e.errors:
            log(line)
        return 2
    os.environ[channels.ENV_LOG_FORMAT] = cfg.chain.log_format
    try:
        r = Restarter(cfg, int(os.environ.get(channels.ENV_LAYER_RESTARTS, "0") or 0))
    except AlreadyRunning as e:
        log(str(e))
        return 1
    what = "the last-known-good configuration of " if snap.fallback else ""
    log(f"supervising {len(cfg.services)} service(s) from {what}{cfg.path} "
        f"(pid {os.getpid()})")
    return r.run()


if __name__ == "__main__":
    sys.exit(main())
