"""What every `hachain` sub-command shares: where the chain's directories are, and running
one sub-command as a program of its own (`python -m hachain.logs ...`).

The sub-command modules (logs, metrics, importer, ...) import this module, never
`hachain.cli`: the CLI imports them to build its parser, and this keeps that one way.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from hachain import channels, config


def err(msg: str) -> None:
    sys.stderr.write(f"hachain: {msg}\n")


def load(path: str) -> config.Config:
    return config.with_env_overrides(config.load(path))


def dirs(args: argparse.Namespace) -> tuple[str, str]:
    """(state_dir, persist_dir) from --state-dir / -c / environment / defaults."""
    state = getattr(args, "state_dir", None)
    persist = getattr(args, "persist_dir", None)
    cpath = getattr(args, "config", None)
    if cpath or (not state and os.path.exists(config.DEFAULT_PATH)):
        path = cpath or config.DEFAULT_PATH
        try:
            cfg = load(path)
        except config.ConfigError as e:
            # a broken file must not silence status or reload: the chain runs a snapshot,
            # so find it through the last-known-good copy of this same file
            # (its [chain] table, else the last-known-good copy of this same file)
            from hachain import snapshot
            salvaged = snapshot.salvage_chain(path)
            lkg = snapshot.find_last_good(os.path.abspath(path))
            if lkg is not None:
                cfg = config.with_env_overrides(config.parse(lkg.text, lkg.source))
                salvaged = {"state_dir": cfg.chain.state_dir,
                            "persist_dir": cfg.chain.persist_dir, **salvaged}
            if "state_dir" not in salvaged and not state:
                raise
            err(f"warning: {e.errors[0]} (the chain's directories come from "
                + ("its [chain] table)" if lkg is None else "its last-known-good copy)"))
            return (state or salvaged["state_dir"],
                    persist or salvaged.get("persist_dir") or config.ChainConfig().persist_dir)
        return state or cfg.chain.state_dir, persist or cfg.chain.persist_dir
    state = state or os.environ.get(channels.ENV_STATE_DIR) or config.ChainConfig().state_dir
    persist = (persist or os.environ.get(channels.ENV_PERSIST_DIR)
               or config.ChainConfig().persist_dir)
    return state, persist


def run(args: argparse.Namespace) -> int:
    """Run a parsed sub-command: its exit code; 2 on a configuration error, 130 on ^C."""
    try:
        return int(args.func(args) or 0)
    except config.ConfigError as e:
        for line in e.errors:
            err(line)
        return 2
    except KeyboardInterrupt:
        return 130


def main_of(name: str, add_parser: Callable[[Any], Any], argv: list[str] | None) -> int:
    """`python -m hachain.<module> ARGS`: the same as `hachain <name> ARGS`."""
    p = argparse.ArgumentParser(prog="hachain")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    add_parser(sub)
    return run(p.parse_args([name] + (sys.argv[1:] if argv is None else argv)))
