"""The running configuration: what the chain accepted, kept apart from the file on disk.

svc.startd never runs the repository's editing area; it runs a *snapshot*, and only
`svcadm refresh` moves edits into it. This module is that rule for a TOML file:

- `accept(path)` parses and validates the file once. When it is good, its exact text
  becomes the *running* snapshot (`<state_dir>/config/running.json`, runtime) and the
  *last-known-good* one (`<persist_dir>/config/last-good.json`, durable: write, fsync,
  rename, fsync the directory). When it is not, the last-known-good snapshot of the same
  file runs instead (`fallback` names why), or, with none, ConfigError says so in one line.
- `for_layer(path)` is how the restarter and the tickler get their configuration at every
  start: the running snapshot of this chain run when there is one, never the live file.
  A layer restarted by init with a broken file on disk therefore supervises exactly what
  ran before. A new chain run (a new init, a new boot) accepts the file anew.
- `accept(path, fallback=False)` is `hachain reload`: a bad file is refused and nothing
  changes.
- `describe(state_dir)` is what `hachain status` shows: which snapshot runs, since when,
  why (last-known-good), and whether the file on disk still matches it.

A chain run is named by `HACHAIN_CHAIN_ID`, which init sets for its children from the
boot id, its pid and its start time (`hachain run` execs init, so it can compute the same
id before the exec). Must not: start, signal or supervise anything.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from hachain import channels
from hachain.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    from hachain.configtypes import Config


def parse(text: str, source: str) -> Config:
    """config.parse, imported when first needed: reading snapshots (`hachain status`)
    must not pay for the configuration schema."""
    from hachain import config
    return config.parse(text, source)


def with_env_overrides(cfg: Config, environ: dict[str, str] | None = None) -> Config:
    """config.with_env_overrides, imported only when an override changes something. A
    layer's parent sets them to what the configuration already says (init passes the
    state directory on), and a value equal to the one the file gave was validated with
    it: the restarter then starts without importing the schema."""
    env = os.environ if environ is None else environ
    tables = {"chain": cfg.chain, "watchdog": cfg.watchdog}
    if all(not env.get(var) or env[var] == getattr(tables[section], key)
           for var, (section, key) in channels.CONFIG_OVERRIDES.items()):
        return cfg
    from hachain import config
    return config.with_env_overrides(cfg, environ)

RUNNING = channels.RUNNING_CONFIG  # in state_dir
LAST_GOOD = channels.LAST_GOOD_CONFIG  # in persist_dir
FORMAT = 1


class Snapshot(NamedTuple):
    """One accepted configuration: the file's exact text and where and when it came from.
    (A NamedTuple, not a dataclass: `hachain status` reads it, and importing dataclasses
    alone would cost it some 6 ms.)"""

    source: str  # absolute path of the file the text was read from
    text: str
    sha256: str
    accepted_wall: float  # time.time() of the accept
    chain_id: str = ""  # the chain run this running snapshot belongs to
    fallback: str = ""  # "" or the error that made this run the last-known-good one
    format: int = FORMAT
    # the accepted watchdog timing that judges heartbeats (env overrides applied), so
    # that `hachain status` judges without parsing the text: {} in older snapshots
    timing: dict[str, float] = {}  # never mutated: replaced whole

    def to_json(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_json(cls, d: Any) -> Snapshot | None:
        """The snapshot in `d`, or None when it is not one (damaged, other format, text
        not matching its hash: a torn or edited file is never run)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            return None
        try:
            snap = cls(**{k: d[k] for k in ("source", "text", "sha256", "accepted_wall",
                                            "chain_id", "fallback", "format")})
        except KeyError:
            return None
        timing = d.get("timing")
        if isinstance(timing, dict) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in timing.values()):
            snap = snap._replace(timing=timing)
        if not isinstance(snap.text, str) or not isinstance(snap.sha256, str) \
                or digest(snap.text) != snap.sha256:
            return None
        return snap


def digest(text: str) -> str:
    """The hex SHA-256 of `text` (channels.sha256_hex: without loading OpenSSL)."""
    return channels.sha256_hex(text.encode())


def read_snapshot(path: str, log: Any = None, timeout: float | None = None
                  ) -> Snapshot | None:
    """The snapshot in `path`, or None; a file there that is not one is logged through
    `log` (one line naming it and what is wrong). `timeout`: read by a child given that
    long (in_child), and one that does not answer in time is such a line too."""
    try:
        d = channels.read_json(path, regular=True) if timeout is None else \
            _read_json_in_child(path, timeout)
    except (ValueError, OSError) as e:
        why = e.strerror or str(e) if isinstance(e, OSError) else \
            str(e) if isinstance(e, _Corrupt) else channels.json_problem(e)
    else:
        if d is None or (snap := Snapshot.from_json(d)) is not None:
            return None if d is None else snap
        why = "not a configuration snapshot of this format, or its text does not match " \
              "its sha256"
    if log is not None:
        log(f"{path}: {why}: ignored")
    return None


def read_running(state_dir: str, log: Any = None) -> Snapshot | None:
    return read_snapshot(os.path.join(state_dir, RUNNING), log)


def read_last_good(persist_dir: str, log: Any = None, timeout: float | None = None
                   ) -> Snapshot | None:
    return read_snapshot(os.path.join(persist_dir, LAST_GOOD), log, timeout)


class _Corrupt(ValueError):
    """A corrupt file, as a child read it: the text is json_problem's already."""


def _read_json_in_child(path: str, timeout: float) -> Any:
    """channels.read_json(path, regular=True), made by a child given `timeout` seconds
    (TimeoutError when it does not answer; a corrupt file is ValueError as there)."""
    def work() -> bytes:
        try:
            return b"J" + json.dumps(channels.read_json(path, regular=True)).encode()
        except ValueError as e:  # carried back as its text
            return b"V" + channels.json_problem(e).encode()
    got = in_child(work, timeout)
    if got.startswith(b"V"):
        raise _Corrupt(got[1:].decode())
    return json.loads(got[1:])


def _write(path: str, snap: Snapshot, durable: bool) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    channels.write_json(path, snap.to_json(), durable=durable)


def _config_of(snap: Snapshot, environ: dict[str, str] | None,
               state_dir: str | None = None, log: Any = None) -> Config:
    """The configuration of `snap`; from the parsed copy in `state_dir` when it is there
    and belongs to this very text (and code), else parsed and validated anew."""
    cfg = _load_parsed(state_dir, snap, log) if state_dir else None
    return with_env_overrides(cfg if cfg is not None else parse(snap.text, snap.source),
                              environ)


# The running snapshot's text, parsed and validated, kept next to it (PARSED): the
# restarter and the tickler start from it instead of parsing the text again, which for
# 1000 services costs 0.2-0.4 s of CPU in each of them, in the middle of the chain's
# start-up (docs/benchmarks.md). It is a pickle, so it is read only when this process's
# user owns it and nobody else may write it, and only when it names the same text
# (sha256), file and code (config.py, configtypes.py and schema.py as they are on
# disk); anything else, and any error, means the text is parsed as before. What runs is
# the same either way. It is unpickled by an Unpickler (_find_class) that makes no object but the
# configuration's own classes: a foreign pickle there runs no code of its own choosing.
PARSED = channels.RUNNING_PARSED  # in state_dir
# The same, kept with the last-known-good snapshot in persist_dir (LAST_GOOD_PARSED), so
# that `hachain run` at the next boot, given the very same file, starts from it too
# instead of importing the schema and validating the file again (cached_parse).
LAST_GOOD_PARSED = channels.LAST_GOOD_PARSED


# The code that decides what a parsed Config is: config.py, configtypes.py, schema.py and
# what they call on (listen, seccomp, conditions, devices, cluster/timing, ...). Its files
# are stat'ed, not imported (the restarter loads the pickle without the schema): every
# module of the package's top level and of hachain/cluster, so that a copy parsed by
# other code, an upgrade or an edit of any of them, is never taken for this code's.
_CODE_DIRS = ("", "cluster")


def _code_tag() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    tag = []
    for sub in _CODE_DIRS:
        with os.scandir(os.path.join(here, sub)) as it:
            for e in it:
                if e.name.endswith(".py") and e.is_file():
                    st = e.stat()
                    tag.append(f"{sub}/{e.name}:{st.st_size}:{st.st_mtime_ns}")
    return " ".join(sorted(tag))


def _save_parsed(state_dir: str, snap: Snapshot, cfg: Config,
                 data: bytes | None = None) -> None:
    """Write the parsed copy of `snap` (`cfg`) to state_dir. `data`: the very bytes of a
    kept copy of the same text, file and code (_cached), written as they are instead of
    pickling the configuration again (with 1000 services: 15-40 ms off `hachain run`)."""
    import pickle
    try:
        if data is None:
            data = pickle.dumps({"sha256": snap.sha256, "source": snap.source,
                                 "code": _code_tag(), "config": cfg},
                                protocol=pickle.HIGHEST_PROTOCOL)
        path = os.path.join(state_dir, PARSED)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        channels.write_atomic(path, data)
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        pass  # the layers parse the text instead


def _find_class(module: str, name: str) -> Any:
    """The only globals a parsed configuration's pickle names: the classes of
    hachain.configtypes and signal.Signals (anything else is refused, so no foreign
    pickle calls a function of its choosing)."""
    import signal

    from hachain import configtypes
    if module == "signal" and name == "Signals":
        return signal.Signals
    obj = getattr(configtypes, name, None) if module == configtypes.__name__ else None
    if isinstance(obj, type) and obj.__module__ == module and "." not in name:
        return obj
    import pickle
    raise pickle.UnpicklingError(f"names {module}.{name}, not a configuration class")


def _read_private(path: str) -> bytes | None:
    """The bytes of `path` when it is a regular file of this process's user that nobody
    else may write (what a pickle must be to be loaded), else None."""
    try:  # O_NONBLOCK: a FIFO there is opened without waiting for a writer
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022 or \
                st.st_mode & 0o170000 != 0o100000:  # a regular file only
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _decode_parsed(data: bytes, snap: Snapshot, path: str, log: Any = None) -> Config | None:
    """The configuration pickled in `data` when it names `snap`'s text, file and this
    code, else None (a damaged or foreign one is a line through `log`)."""
    import io
    import pickle
    try:
        class Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                return _find_class(module, name)
        d = Unpickler(io.BytesIO(data)).load()
        from hachain.configtypes import Config
        if not isinstance(d, dict) or d.get("sha256") != snap.sha256 or \
                d.get("source") != snap.source or d.get("code") != _code_tag() or \
                not isinstance(d.get("config"), Config):
            return None
        return d["config"]  # type: ignore[no-any-return]
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: parse the text
        if log is not None:
            log(f"{path}: not a parsed configuration ({type(e).__name__}: {e}): ignored, "
                "parsing the running snapshot's text")
        return None


def _load_parsed(state_dir: str, snap: Snapshot, log: Any = None) -> Config | None:
    path = os.path.join(state_dir, PARSED)
    data = _read_private(path)
    return None if data is None else _decode_parsed(data, snap, path, log)


def in_child(work: Callable[[], bytes], timeout: float,
             then: Callable[[], object] | None = None) -> bytes:
    """What `work()` returns, run by a forked child given `timeout` seconds: a persist_dir
    on a hung NFS or FUSE mount, or a disk in error recovery, blocks a lookup there for
    good, and the caller then goes on without the answer. TimeoutError when none came in
    time; OSError when no child or pipe is to be had (EAGAIN, EMFILE), or the one `work`
    raised in the child (errno and text carried over). `then`: more work for the child
    after it has answered (nobody waits for it); with none, a child that did not answer
    is SIGKILLed and reaped when it dies within 1 s. A child left is reaped by the
    caller's own reaping (`hachain run` becomes init, which reaps every child)."""
    import select
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        raise
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            if then is None:
                # Its answer goes through the pipe only. A child stuck for good (blocked
                # uninterruptibly behind a hung mount, past the SIGKILL) must not hold the
                # caller's output open: `hachain status | jq` would wait on it for ever.
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.close(null)
            try:
                answer = b"1" + work()
            except OSError as e:
                answer = b"0" + json.dumps([e.errno or 0, e.strerror or str(e)]).encode()
            view = memoryview(answer)
            try:
                while view:
                    view = view[os.write(w, view):]
            except OSError:  # the caller gave up on the answer (EPIPE): `then` still runs
                pass
            os.close(w)
            if then is not None:
                then()
        finally:
            os._exit(0)
    os.close(w)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                if then is None:
                    _kill_and_reap(pid)
                raise TimeoutError(f"no answer within {timeout:g} s")
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
    if then is None:
        os.waitpid(pid, 0)  # it closed the pipe: it is exiting
    data = b"".join(chunks)
    if data.startswith(b"1"):
        return data[1:]
    try:
        err, text = json.loads(data[1:])
    except ValueError:  # the child died before its answer was whole
        raise OSError(0, "the reading process ended without an answer") from None
    raise OSError(err, text)


def _kill_and_reap(pid: int, within: float = 1.0) -> None:
    """SIGKILL our child `pid` (a wait on FUSE or NFS ends for it) and reap it as soon
    as it is dead, for up to `within` seconds; one still there is left to the caller's
    reaping."""
    import select
    import signal
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = None
    os.kill(pid, signal.SIGKILL)
    if pidfd is not None:
        try:
            select.select([pidfd], [], [], within)
        finally:
            os.close(pidfd)
    os.waitpid(pid, os.WNOHANG)


def answered_within(work: Callable[[], Any], timeout: float) -> tuple[Any, str]:
    """(what `work()` returns, "") with the work done by a child given `timeout` seconds
    (in_child; the value must be JSON-able), or (None, why there is none): "no answer
    within T s (a hung mount or a failing disk?)", or the error. A host out of processes
    or descriptors for the child (EAGAIN, EMFILE, ENFILE, ENOMEM) gets the work done
    here, without a deadline."""
    import errno
    try:
        return json.loads(in_child(lambda: json.dumps(work()).encode(), timeout)), ""
    except TimeoutError:
        return None, f"no answer within {timeout:g} s (a hung mount or a failing disk?)"
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.ENOMEM):
            return work(), ""
        return None, f"not read: {e.strerror or e}"
    except ValueError as e:  # pragma: no cover - the child's answer was no JSON
        return None, f"not read: {e}"


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read configuration: {e.strerror}"]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text (byte {e.start})"]) from None


def salvage_chain(path: str) -> dict[str, Any]:
    """The `[chain]` table of a file that does not load as a whole ({} when that table
    cannot be read either): a typo in a service must not hide where the chain lives."""
    try:
        text = _read_text(path)
    except ConfigError:
        return {}
    d = chain_table(text) or {}
    return {k: v for k, v in d.items() if k in ("state_dir", "persist_dir")
            and isinstance(v, str) and os.path.isabs(v)}


def _chain_body(text: str) -> str | None:
    """The text of the `[chain]` section, up to the next table header (None: no such
    header)."""
    # (TOML allows blanks inside the brackets: `[ chain ]` is the same table)
    m = re.search(r"^[ \t]*\[[ \t]*chain[ \t]*\][ \t]*(#[^\n]*)?$(.*?)(?=^\s*\[)"
                  r"|^[ \t]*\[[ \t]*chain[ \t]*\][ \t]*(#[^\n]*)?$(.*)\Z", text, re.M | re.S)
    if m is None:
        return None
    return m.group(2) if m.group(2) is not None else m.group(4)


_PLAIN_PERSIST_DIR = re.compile(
    r'^[ \t]*persist_dir[ \t]*=[ \t]*"([^"\\\n]*)"[ \t]*(#[^\n]*)?$', re.M)


def _persist_dir_named(text: str) -> str | None:
    """The persist_dir a configuration text names, where that is plain without a TOML
    parser (the import alone is 7 ms of `hachain run`): the default when the word is not
    in the text; the value of the one line `persist_dir = "..."` (no escapes) of its
    `[chain]` section when the word occurs nowhere else and the section has no
    multi-line string. None: ask chain_table. (Only where to look for a parsed copy
    hangs on it: a copy is taken only for this very text, so one found is right
    wherever it was found.)"""
    count = text.count("persist_dir")
    if count == 0:
        return channels.DEFAULT_PERSIST_DIR
    body = _chain_body(text) if count == 1 else None
    if body is None or '"""' in body or "'''" in body:
        return None  # (a line of a multi-line string is no key)
    m = _PLAIN_PERSIST_DIR.search(body)
    return m.group(1) if m is not None else None


def chain_table(text: str) -> dict[str, Any] | None:
    """The `[chain]` table of a TOML text parsed on its own: {} when the text has no
    `[chain]` header, None when that section does not parse by itself."""
    body = _chain_body(text)
    if body is None:
        return {}
    import tomllib
    try:
        return tomllib.loads(body)
    except (tomllib.TOMLDecodeError, RecursionError):
        return None


def persist_candidates(environ: dict[str, str] | None = None,
                       source: str | None = None) -> list[str]:
    """Where a last-known-good snapshot may be when the file itself cannot say: the
    HACHAIN_PERSIST_DIR override, the file's own `[chain] persist_dir` when that table
    still reads, the persist_dir of this run's running snapshot, the default. In that
    order, without duplicates."""
    env = os.environ if environ is None else environ
    out: list[str] = []
    if env.get(channels.ENV_PERSIST_DIR):
        out.append(env[channels.ENV_PERSIST_DIR])
    if source is not None and (p := salvage_chain(source).get("persist_dir")):
        out.append(p)
    state = env.get(channels.ENV_STATE_DIR)
    running = read_running(state) if state else None
    if running is not None:
        try:
            out.append(parse(running.text, running.source).chain.persist_dir)
        except ConfigError:
            pass
    out.append(channels.DEFAULT_PERSIST_DIR)
    return list(dict.fromkeys(out))


LAST_GOOD_READ_TIMEOUT = 2.0  # s for each place a last-known-good snapshot may be


def find_last_good(source: str, environ: dict[str, str] | None = None,
                   log: Any = None, timeout: float = LAST_GOOD_READ_TIMEOUT
                   ) -> Snapshot | None:
    """The newest last-known-good snapshot of the file `source` in the candidate places
    (one that is damaged, or a place that does not answer within `timeout` seconds, is a
    line through `log`: each is read by a child, so a hung mount costs that long)."""
    found = [s for d in persist_candidates(environ, source)
             if (s := read_last_good(d, log, timeout)) is not None and s.source == source]
    return max(found, key=lambda s: s.accepted_wall, default=None)


def accept(path: str, chain_id: str = "", fallback: bool = True,
           environ: dict[str, str] | None = None, log: Any = None,
           last_good: bool = True, kept: bool = False,
           claim: Callable[[Config], None] | None = None) -> tuple[Config, Snapshot]:
    """Validate the file at `path` and make it the running configuration.

    Good file: running and last-known-good snapshots are written (a failed write is
    logged through `log` and does not stop the chain). Bad file: with `fallback`, the
    last-known-good snapshot of the same file runs and its `fallback` field says why;
    without one, or without `fallback`, ConfigError (one line first: the file's error).
    `last_good` False: the caller writes the last-known-good copy (save_last_good).
    `kept`: start from the parsed copy kept with the last-known-good snapshot when it is
    this very text's (cached_parse; `hachain run`, on its way to init, asks for it).
    `claim`: called with the configuration before anything is written (`hachain run`
    takes the state directory there); what it raises propagates, nothing written."""
    source = os.path.abspath(path)
    try:
        text = _read_text(source)
        sha = digest(text)
        copy = _cached(text, source, sha, environ) if kept else None
        parsed = copy[0] if copy is not None else parse(text, source)
        cfg = with_env_overrides(parsed, environ)
    except ConfigError as e:
        if not fallback:
            raise
        unread: list[str] = []  # copies that are damaged or did not answer, said once
        lkg = find_last_good(source, environ, unread.append)
        if lkg is None:
            where = ', '.join(persist_candidates(environ, source))
            raise ConfigError([e.errors[0] + f" (and no last-known-good configuration of "
                               f"{source} in {where}" + "".join(
                                   f"; {line}" for line in unread) + ")",
                               *e.errors[1:]]) from None
        for line in unread:
            if log is not None:
                log(line)
        snap = lkg._replace(chain_id=chain_id, fallback=e.errors[0])
        cfg = _config_of(snap, environ)
        snap = snap._replace(timing=_timing_of(cfg))
        if claim is not None:
            claim(cfg)
        if log is not None:  # the one line that says so, from whoever accepted
            log(f"{e.errors[0]}: running the last-known-good configuration of {source} "
                f"accepted {_when(lkg.accepted_wall)}")
        _save(cfg, snap, last_good=False, log=log)
        return cfg, snap
    snap = Snapshot(source=source, text=text, sha256=sha, accepted_wall=time.time(),
                    chain_id=chain_id, timing=_timing_of(cfg))
    if claim is not None:
        claim(cfg)
    # first: running.json points to it
    _save_parsed(cfg.chain.state_dir, snap, parsed, copy[1] if copy is not None else None)
    _save(cfg, snap, last_good=last_good, log=log)
    if last_good:
        _keep_parsed(cfg)
    return cfg, snap


def save_last_good(cfg: Config, snap: Snapshot, log: Any = None) -> None:
    """Write `snap` as the last-known-good snapshot (durable: fsync-ed), for an accept
    made with last_good=False; a snapshot that ran as a fallback is not written again."""
    if snap.fallback:
        return
    target = os.path.join(cfg.chain.persist_dir, LAST_GOOD)
    try:
        _write(target, snap, True)
    except OSError as e:
        if log is not None:
            log(f"cannot write the configuration snapshot {target}: {e.strerror or e}")
        return
    _keep_parsed(cfg)


def _keep_parsed(cfg: Config) -> None:
    """Copy this run's parsed configuration (state_dir's PARSED, just written by accept)
    next to the last-known-good snapshot: the next `hachain run` of the same file starts
    from it (cached_parse). Not fsync-ed: a copy a crash damaged is not loaded, and the
    file is then parsed as before. A copy that cannot be written is no error."""
    try:
        with open(os.path.join(cfg.chain.state_dir, PARSED), "rb") as f:
            data = f.read()
        path = os.path.join(cfg.chain.persist_dir, LAST_GOOD_PARSED)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        channels.write_atomic(path, data)
    except OSError:
        pass


KEPT_READ_TIMEOUT = 0.5  # s for the parsed copy in persist_dir (cached_parse)


def cached_parse(text: str, source: str, sha: str,
                 environ: dict[str, str] | None = None,
                 timeout: float = KEPT_READ_TIMEOUT) -> Config | None:
    """The configuration `text` (of the file `source`, SHA-256 `sha`) parsed and validated
    when it last ran, from the last-known-good's parsed copy in the persist_dir the text
    names (or HACHAIN_PERSIST_DIR), or None: only a copy of this very text, file and
    code is taken (_decode_parsed). The text's `[chain]` table alone is parsed to find
    that directory; a table that does not parse on its own means no copy. The copy is
    read by a child given `timeout` seconds (in_child): a persist_dir that does not
    answer costs that long, never a hang."""
    got = _cached(text, source, sha, environ, timeout)
    return got[0] if got is not None else None


def _cached(text: str, source: str, sha: str, environ: dict[str, str] | None = None,
            timeout: float = KEPT_READ_TIMEOUT) -> tuple[Config, bytes] | None:
    """cached_parse, with the bytes of the copy it took."""
    env = os.environ if environ is None else environ
    where: Any = env.get(channels.ENV_PERSIST_DIR) or _persist_dir_named(text)
    if where is None:
        table = chain_table(text)
        if table is None:
            return None
        where = table.get("persist_dir") or channels.DEFAULT_PERSIST_DIR
    if not isinstance(where, str) or not os.path.isabs(where):
        return None
    probe = Snapshot(source=source, text=text, sha256=sha, accepted_wall=0.0)
    path = os.path.join(where, LAST_GOOD_PARSED)
    try:
        data = in_child(lambda: _read_private(path) or b"", timeout)
    except OSError:  # no answer in time, no process or pipe (EAGAIN, EMFILE): parse
        return None
    cfg = _decode_parsed(data, probe, path) if data else None
    return (cfg, data) if cfg is not None else None


def _timing_of(cfg: Config) -> dict[str, float]:
    return {"heartbeat_timeout": cfg.watchdog.heartbeat_timeout,
            "restart_grace": cfg.watchdog.restart_grace}


def _save(cfg: Config, snap: Snapshot, last_good: bool, log: Any) -> None:
    targets = [(os.path.join(cfg.chain.state_dir, RUNNING), False)]
    if last_good:
        targets.append((os.path.join(cfg.chain.persist_dir, LAST_GOOD), True))
    for target, durable in targets:
        try:
            _write(target, snap, durable)
        except OSError as e:
            if log is not None:
                log(f"cannot write the configuration snapshot {target}: {e.strerror or e}")


def restore_running(cfg: Config, snap: Snapshot) -> None:
    """Write this run's running snapshot and its parsed copy again: the restarter, when
    state_dir lost them (cleaned by hand), so that a layer started later still runs this
    configuration, not whatever the file on disk says now. OSError when it cannot."""
    _save_parsed(cfg.chain.state_dir, snap, cfg)  # first: running.json points to it
    _write(os.path.join(cfg.chain.state_dir, RUNNING), snap, False)


def for_layer(path: str, environ: dict[str, str] | None = None,
              log: Any = None) -> tuple[Config, Snapshot]:
    """The configuration a layer starts with: this chain run's running snapshot when
    there is one (whatever the file on disk now says), else `accept(path)`."""
    got = running_of_run(path, environ, log)
    if got is not None:
        return got
    env = os.environ if environ is None else environ
    return accept(path, chain_id=env.get(channels.ENV_CHAIN_ID, ""), environ=environ, log=log)


def running_of_run(path: str, environ: dict[str, str] | None = None, log: Any = None
                   ) -> tuple[Config, Snapshot] | None:
    """This chain run's running snapshot of the file `path` and its configuration, or
    None when there is none (nothing is written either way; a damaged running snapshot
    or parsed copy is one line through `log`)."""
    env = os.environ if environ is None else environ
    cid = env.get(channels.ENV_CHAIN_ID, "")
    state = env.get(channels.ENV_STATE_DIR)
    if cid and state:
        snap = read_running(state, log)
        if snap is not None and snap.chain_id == cid and snap.source == os.path.abspath(path):
            return _config_of(snap, environ, state, log), snap
    return None


DISK_VERDICT = channels.DISK_VERDICT  # in state_dir: a cache


def _judge_edit(state_dir: str, source: str, text: str, sha: str) -> tuple[str, str | None]:
    """("changed", None) or ("broken", "file:line: error") for an edited file. A full
    validation of a large file takes a good part of a second, and `hachain status` may be
    asked often: the verdict is kept per content hash, so each edit is judged once."""
    path = os.path.join(state_dir, DISK_VERDICT)
    try:  # not waited on: a FIFO there held `hachain status` (and the restarter's status-doc)
        cached = channels.read_json(path, regular=True)
    except (ValueError, OSError):
        cached = None
    if isinstance(cached, dict) and cached.get("sha256") == sha and \
            cached.get("disk") in ("changed", "broken"):
        return cached["disk"], cached.get("error")
    try:
        parse(text, source)
        verdict: tuple[str, str | None] = ("changed", None)
    except ConfigError as e:
        verdict = ("broken", e.errors[0])
    try:
        channels.write_json(path, {"sha256": sha, "disk": verdict[0], "error": verdict[1]})
    except OSError:
        pass  # a read-only or full state dir: judged again next time
    return verdict


def _when(wall: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))


def describe(state_dir: str) -> dict[str, Any]:
    """What runs and how it compares with the file on disk, for `hachain status`.

    Keys: source, accepted (wall time), sha256, last_known_good (bool), because (the
    error that made it so), disk ("same" | "changed" | "broken" | "missing"), disk_error
    (file:line: error when broken), summary (one line for people)."""
    snap = read_running(state_dir)
    if snap is None:
        return {"summary": "no running configuration snapshot", "source": None}
    out: dict[str, Any] = {"source": snap.source, "accepted": snap.accepted_wall,
                           "sha256": snap.sha256, "last_known_good": bool(snap.fallback),
                           "because": snap.fallback or None, "disk_error": None}
    when = _when(snap.accepted_wall)
    try:
        text = _read_text(snap.source)
    except ConfigError as e:
        out["disk"], out["disk_error"] = "missing", e.errors[0]
    else:
        sha = digest(text)
        if sha == snap.sha256:
            out["disk"] = "same"
        else:
            out["disk"], out["disk_error"] = _judge_edit(state_dir, snap.source, text, sha)
    if snap.fallback:
        head = (f"running the last-known-good configuration of {when} because "
                f"{snap.fallback}")
    else:
        head = f"running {snap.source} as accepted at {when}"
    tail = {"same": "",
            "changed": "; the file has changed on disk since: `hachain reload` applies it",
            "broken": f"; the file on disk does not load: {out['disk_error']}",
            "missing": f"; the file on disk cannot be read: {out['disk_error']}"}[out["disk"]]
    if snap.fallback and out["disk"] in ("changed", "same"):
        tail = "; the file on disk loads now: `hachain reload` applies it"
    out["summary"] = head + tail
    return out
