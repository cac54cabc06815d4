"""`hachain logs NAME`: print (and follow) one service's captured output, or a machine
check's (`check:NAME`: what its commands and repairs printed).

Owns: finding `<log dir>/<NAME>.log` and its rotated copies, printing the last lines
across them in order, and following the live file. Must not: write, rotate or truncate
any log (the logger owns them, docs/logs.md), or talk to the control socket: logs are
read even when the restarter is down, which is when they matter most.

Facts about the files it reads (written by `hachain.logger.files.LogFile`):

- The service's stdout and stderr end up in `<NAME>.log`, written by the logger only.
- Rotation is by rename: `.keep-1` → `.keep` (replacing the oldest), …, the live file →
  `.1`, and the next write creates a new live file. So `.1` is the newest rotated copy,
  the oldest lines are in the highest number, and a file never changes once rotated.
  Between a rotation and the next write there is no live file.
- A follower holding a file open keeps reading it after it was renamed. When the live
  path names another file, the one it holds is complete: it reads it to the end, then
  goes on with the next newer file: the one numbered one below its own, or the live
  file when its own is `.1`. A file rotated out of existence (more rotations than
  `keep` while the follower was not reading) is simply gone; it goes on with the
  oldest one left.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from hachain import channels, cmdline, config

PROG = "hachain logs"
POLL_SECONDS = 0.2


class LogsError(Exception):
    """A one-line reason to print before exiting 1 (or 2 for a bad configuration)."""


def log_dir_for(args: argparse.Namespace) -> tuple[str, tuple[str, ...] | None]:
    """(the service log directory, the names configured (services, and `check:NAME` for
    the machine checks) or None if unknown).

    Order: --log-dir, --persist-dir (its `log/`), -c FILE, $HACHAIN_PERSIST_DIR, the
    default configuration file when it exists, else the default persist_dir.
    """
    if getattr(args, "log_dir", None):
        return args.log_dir, None
    if getattr(args, "persist_dir", None):
        return os.path.join(args.persist_dir, "log"), None
    cpath = getattr(args, "config", None)
    env_persist = os.environ.get(channels.ENV_PERSIST_DIR)
    if cpath or (not env_persist and os.path.exists(config.DEFAULT_PATH)):
        cfg = config.with_env_overrides(config.load(cpath or config.DEFAULT_PATH))
        return cfg.chain.service_log_dir, tuple(cfg.services) + tuple(
            channels.CHECK_PREFIX + c for c in cfg.checks)
    return os.path.join(env_persist or config.ChainConfig().persist_dir, "log"), None


def log_files(log_dir: str, name: str) -> list[str]:
    """The service's existing log files, oldest first: ..., .2, .1, then the live file."""
    live = os.path.join(log_dir, name + ".log")
    rotated: list[tuple[int, str]] = []
    try:
        entries = os.listdir(log_dir)
    except OSError:
        entries = []
    pat = re.compile(re.escape(name + ".log") + r"\.([0-9]+)$")
    for e in entries:
        m = pat.match(e)
        if m:
            rotated.append((int(m.group(1)), os.path.join(log_dir, e)))
    out = [p for _, p in sorted(rotated, reverse=True)]
    if os.path.exists(live):
        out.append(live)
    return out


def last_lines(paths: list[str], n: int | None) -> tuple[list[bytes], int]:
    """The last `n` lines (all when None) across `paths`, oldest first, newlines kept,
    and how many bytes of the newest file were read (where a follower starts).

    Reads files newest first and stops once it has more than `n` lines. Files are joined
    as bytes before splitting: a line longer than a whole file is cut across files, and
    the pieces belong together.
    """
    buf = b""
    newest_len = 0
    for i, p in enumerate(reversed(paths)):
        try:
            with open(p, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if i == 0:
            newest_len = len(data)
        buf = data + buf
        if n is not None and buf.count(b"\n") > n:
            break
    lines = buf.splitlines(keepends=True)
    if n is None:
        return lines, newest_len
    return (lines[-n:] if n else []), newest_len


def follow(path: str, start: int, write: Callable[[bytes], None],
           stop: Callable[[], bool] = lambda: False, poll: float = POLL_SECONDS) -> None:
    """Write what is appended to `path` from offset `start` on, until `stop()` is true,
    through rotations (see the module's facts), replacement and a missing file."""
    pos = start
    f: BinaryIO | None = None
    ino = -1
    try:
        while not stop():
            if f is None:
                try:
                    f = open(path, "rb")  # noqa: SIM115 - kept open across iterations
                    ino = os.fstat(f.fileno()).st_ino
                except FileNotFoundError:
                    time.sleep(poll)
                    continue
            try:
                live = os.stat(path).st_ino
            except FileNotFoundError:
                live = None
            if live is not None and live != ino:
                # ours was rotated (or replaced): it is complete; read its end, go newer
                _drain(f, pos, write)
                f.close()
                f, pos, ino = _open_next(path, ino)
                continue
            size = os.fstat(f.fileno()).st_size
            if size > pos:
                pos = _drain(f, pos, write, size)
            else:
                time.sleep(poll)
    finally:
        if f is not None:
            f.close()


def _rotated(path: str) -> list[tuple[int, str]]:
    """(number, path) of the rotated copies of `path`, newest (.1) first."""
    d, base = os.path.split(path)
    pat = re.compile(re.escape(base) + r"\.([0-9]+)$")
    try:
        entries = os.listdir(d or ".")
    except OSError:
        return []
    return sorted((int(m.group(1)), os.path.join(d, e))
                  for e in entries if (m := pat.match(e)))


def _open_next(path: str, ino: int) -> tuple[BinaryIO | None, int, int]:
    """The file that came after the one with inode `ino`, opened at 0 (None: let the
    loop open the live file), with its inode."""
    for _ in range(3):  # a rotation between the listing and the open: look again
        rotated = _rotated(path)
        nxt = None
        for i, (_n, p) in enumerate(rotated):
            try:
                if os.stat(p).st_ino == ino:
                    nxt = rotated[i - 1][1] if i > 0 else None
                    break
            except OSError:
                continue
        else:
            nxt = rotated[-1][1] if rotated else None  # ours is gone: the oldest left
        if nxt is None:
            return None, 0, -1
        try:
            f = open(nxt, "rb")  # noqa: SIM115 - handed to the caller
        except FileNotFoundError:
            continue
        new_ino = os.fstat(f.fileno()).st_ino
        if new_ino != ino:
            return f, 0, new_ino
        f.close()
    return None, 0, -1


def _drain(f: BinaryIO, pos: int, write: Callable[[bytes], None],
           end: int | None = None) -> int:
    """Write `f` from `pos` to `end` (default: its end of file); the new offset."""
    f.seek(pos)
    while end is None or pos < end:
        chunk = f.read(1 << 16 if end is None else min(1 << 16, end - pos))
        if not chunk:
            break
        write(chunk)
        pos += len(chunk)
    return pos


def _write_stdout(data: bytes) -> None:
    """Bytes to stdout as they come (a log may hold anything, not only UTF-8)."""
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def run(name: str, log_dir: str, known: tuple[str, ...] | None, lines: int | None,
        follow_: bool, write: Callable[[bytes], None] = _write_stdout) -> int:
    """Print the tail of NAME's logs and optionally follow; raises LogsError."""
    if known is not None and name not in known:
        hint = f" (configured: {', '.join(sorted(known))})" if known else ""
        what = "check" if name.startswith(channels.CHECK_PREFIX) else "service"
        raise LogsError(f"{name}: no such {what}{hint}")
    paths = log_files(log_dir, name)
    live = os.path.join(log_dir, name + ".log")
    if not paths:
        raise LogsError(f"{name}: no log in {log_dir} (expected {live}; has it started?)")
    shown, size = last_lines(paths, lines)
    for ln in shown:
        write(ln)
    if follow_:
        follow(live, size if paths[-1] == live else 0, write)
    return 0


def _lines_arg(text: str) -> int | None:
    """-n: a count >= 0, or "all"."""
    if text == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def cmd_logs(args: argparse.Namespace) -> int:
    """`hachain logs`: exit 0, 1 when there is no such service or log, 2 on bad config or
    a NAME that no service can have (it names a file: `../../x` would be outside the log
    directory)."""
    problem = channels.clear_name_problem(args.name)  # a service, or check:NAME
    if problem:
        sys.stderr.write(f"{PROG}: {problem}\n")
        return 2
    try:
        log_dir, known = log_dir_for(args)
        if args.follow:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        return run(args.name, log_dir, known, args.lines, args.follow)
    except LogsError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `hachain logs x | head`
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the exit flush
        except OSError:
            pass
        return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `logs` on an argparse sub-parsers object."""
    p = subparsers.add_parser(
        "logs", help="a service's output (rotated files included); -f follows",
        description="Print the last lines of a service's log, oldest first, across its "
                    "rotated copies; -f keeps following the live file through rotations.")
    p.add_argument("name", metavar="NAME", help="the service, or check:NAME for what a "
                   "machine check's commands and repairs printed")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-n", "--lines", type=_lines_arg, default=10, metavar="N",
                   help="how many lines to print first (default 10; 'all' for everything)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-c", "--config", help="configuration file (for [chain] log_dir and "
                   "the service names)")
    g.add_argument("--persist-dir", help="the chain's persistent directory (logs in its log/)")
    g.add_argument("--log-dir", help="the service log directory itself")
    p.set_defaults(func=cmd_logs)
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m hachain.logs ...`: the same as `hachain logs ...`."""
    return cmdline.main_of("logs", add_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
