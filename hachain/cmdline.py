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
from typing import TYPE_CHECKING, Any

from hachain import channels
from hachain.errors import ConfigError

if TYPE_CHECKING:
    from hachain import config


def err(msg: str) -> None:
    sys.stderr.write(f"hachain: {msg}\n")


def load(path: str) -> config.Config:
    from hachain import config  # ~45 ms: only the sub-commands that need it pay
    return config.with_env_overrides(config.load(path))


def dirs(args: argparse.Namespace) -> tuple[str, str]:
    """(state_dir, persist_dir) from --state-dir / -c / environment / defaults.

    The file's `[chain]` table alone is read when that is enough (what status and the
    control commands need: they run often, and the whole file with 1000 services takes
    ~80 ms to validate); the whole file is loaded when that table is written another way
    (dotted keys) or does not read."""
    state = getattr(args, "state_dir", None)
    persist = getattr(args, "persist_dir", None)
    cpath = getattr(args, "config", None)
    if cpath or (not state and os.path.exists(channels.DEFAULT_CONFIG)):
        path = cpath or channels.DEFAULT_CONFIG
        quick = _chain_dirs(path)
        if quick is not None:
            return (state or os.environ.get(channels.ENV_STATE_DIR) or quick[0],
                    persist or os.environ.get(channels.ENV_PERSIST_DIR) or quick[1])
        from hachain import config
        try:
            cfg = load(path)
        except ConfigError as e:
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
                    persist or salvaged.get("persist_dir") or channels.DEFAULT_PERSIST_DIR)
        return state or cfg.chain.state_dir, persist or cfg.chain.persist_dir
    state = state or os.environ.get(channels.ENV_STATE_DIR) or channels.DEFAULT_STATE_DIR
    persist = (persist or os.environ.get(channels.ENV_PERSIST_DIR)
               or channels.DEFAULT_PERSIST_DIR)
    return state, persist


def _chain_dirs(path: str) -> tuple[str, str] | None:
    """(state_dir, persist_dir) from the file's `[chain]` table read on its own, or None
    when only a whole load can tell (the file does not read, the table does not parse on
    its own, or a directory is named outside it)."""
    from hachain import snapshot
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    table = snapshot.chain_table(text)
    if table is None:
        return None
    found = {k: v for k, v in table.items() if k in ("state_dir", "persist_dir")}
    if any(not isinstance(v, str) or not os.path.isabs(v) for v in found.values()):
        return None  # the whole load names the error
    for key in ("state_dir", "persist_dir"):
        if key not in found and key in text:
            return None  # set some other way (e.g. `chain.state_dir = ...`)
    return (found.get("state_dir", channels.DEFAULT_STATE_DIR),
            found.get("persist_dir", channels.DEFAULT_PERSIST_DIR))


# Options naming a path: given empty, they are a mistake (a variable that was not set), not
# "unset": `-c ''` read the current directory, `--state-dir ''` used the default one.
PATH_OPTIONS = (("config", "-c/--config"), ("state_dir", "--state-dir"),
                ("persist_dir", "--persist-dir"), ("log_dir", "--log-dir"))


def run(args: argparse.Namespace) -> int:
    """Run a parsed sub-command: its exit code; 2 on a configuration error or an empty
    path option, 130 on ^C."""
    for attr, option in PATH_OPTIONS:
        if getattr(args, attr, None) == "":
            err(f"{option}: empty path")
            return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
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
