"""Bad files where the chain reads its own state back: runtime records, admin.json, the
running snapshot and its parsed copy, the boot record, the logger's lock file, heartbeats,
the tickler's kept tables. Each case runs the real layer (restarter, init, tickler) on
files damaged while it was down and checks the rule: one line naming the file and what
is wrong, the layer starts or stops as asked (no traceback, no hang on a FIFO), and what else was
persisted is kept.

What was wrong before:
- a runtime record with `"restarts": 1e400` (or any number int() refuses) ended the
  restarter with OverflowError at every start (a restart loop under init);
- a FIFO in place of a record, admin.json, running.json or running.parsed blocked the
  restarter in open() for good (no heartbeat: the tickler stops petting, the machine is
  reset);
- a directory or a dangling symbolic link there was ignored without a word (a directory
  in a record's place then failed every write of the services directory);
- admin.json entries of the wrong type (`"want": 5`) were taken as they were;
- running.parsed was unpickled with pickle.loads: a pickle the chain did not write ran
  whatever code it named;
- a boot record whose boot number was not an integer ended the restarter (ValueError):
  it is now a damaged entry, the file set aside whole and the record written on without
  that number (tests/test_state_readers.py); a
  boot record that was no JSON was set aside, and one of the wrong shape overwritten,
  without a word, and a FIFO there held the restarter in open();
- a FIFO as the logger's lock file held a new restarter in open() after a hand-over
  timeout; a FIFO as the tickler's heartbeat held init in open() when it stopped the
  chain; a FIFO as running.json or the tickler's kept tables held the tickler before it
  opened the device; a FIFO as a directory's reserve file (.hachain-reserve) held the
  restarter in its open for writing, and a dangling symbolic link there was followed.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from typing import Any

import pytest

from hachain import bootrecord, channels
from hachain.logger import wire
from hachain.restarter import persist
from hachain.watchdog.device import WDIOF_CARDRESET
from hachain.watchdog.tickler import TABLES_CACHE
from tests.conftest import RestarterRun, end_init, svc, wait_until

pytestmark = pytest.mark.timeout(120)

# A bound on the restarter rebuilding its services after a start: generous (loaded CI)
READY = 30.0


def _put(path: str, what: Any) -> None:
    """Put `what` at `path`: bytes, or "dir", "fifo", "dangling" (a symbolic link to
    nothing)."""
    if os.path.isdir(path) and not os.path.islink(path):
        os.rmdir(path)
    elif os.path.lexists(path):
        os.unlink(path)
    if what == "dir":
        os.mkdir(path)
    elif what == "fifo":
        os.mkfifo(path)
    elif what == "dangling":
        os.symlink(path + ".nowhere", path)
    else:
        with open(path, "wb") as f:
            f.write(what)


def _log(r: RestarterRun) -> str:
    with open(r.log, errors="replace") as f:
        return f.read()


def _started(r: RestarterRun) -> str:
    """Start the restarter again; its log, checked for a traceback."""
    r.start()
    text = _log(r)
    assert "Traceback" not in text, text[-3000:]
    return text


RECORDS: dict[str, Any] = {
    "empty": (b"", "not JSON (Expecting value at byte 0)"),
    "garbage": (b"\x00\xffgarbage", "not JSON (not UTF-8 text)"),
    "truncated": (b'{"pid": 12', "not JSON (Expecting ',' delimiter at byte 10)"),
    "list": (b"[1, 2]", "not a JSON object but list"),
    "strpid": (b'{"pid": "12", "start_time": 5, "state": "ready", "restarts": 0}',
               "pid is '12'"),
    "inf": (b'{"pid": null, "state": "ready", "restarts": 1e400}', "restarts is inf"),
    "mono": (b'{"pid": null, "state": "ready", "started_mono": "x"}', "started_mono is 'x'"),
    "dir": ("dir", "not a regular file (a directory)"),
    "fifo": ("fifo", "not a regular file (a FIFO)"),
    "dangling": ("dangling", "a dangling symbolic link"),
}


def test_bad_runtime_records_are_set_aside_and_the_restarter_starts(restarter: Any) -> None:
    body = "".join(f'[service.{n}]\ncommand = {svc("sleep")}\n' for n in [*RECORDS, "good"])
    r = restarter(body)
    for n in [*RECORDS, "good"]:
        r.wait_state(n, "ready")
    good = r.svc("good")["pid"]
    r.kill_restarter()
    services = os.path.join(r.state_dir, channels.SERVICE_RECORD_DIR)
    for n, (what, _) in RECORDS.items():
        _put(os.path.join(services, n + ".json"), what)
    text = _started(r)
    for n in RECORDS:
        r.wait_state(n, "ready", READY)
    assert r.svc("good")["pid"] == good  # its record was read: re-adopted, not restarted
    for n, (_, why) in RECORDS.items():
        path = os.path.join(services, n + ".json")
        assert f"warning: {path}: {why}: corrupt, set aside as {n}.json.corrupt" in text, \
            text[-3000:]
        assert os.path.lexists(path + ".corrupt")
        # the new record is written in its place (a directory there blocked every write)
        wait_until(lambda p=path: os.path.isfile(p) and not os.path.islink(p), READY,
                   f"{n}.json written again")


ADMIN: dict[str, Any] = {
    "list": (b'["web"]', "not a JSON object but list"),
    "want": (b'{"web": {"want": 5}}', "entry 'web' is {'want': 5}"),
    "dir": ("dir", "not a regular file (a directory)"),
    "fifo": ("fifo", "not a regular file (a FIFO)"),
    "dangling": ("dangling", "a dangling symbolic link"),
}


def test_bad_admin_json_is_set_aside_and_running_services_stay(restarter: Any) -> None:
    r = restarter(f'[service.web]\ncommand = {svc("sleep")}\n')
    pid = r.wait_state("web", "ready")["pid"]
    admin = os.path.join(r.persist_dir, channels.ADMIN_STATE)
    for what, why in ADMIN.values():
        r.kill_restarter()
        _put(admin, what)  # (the one set aside before stays: the directory is set
        # aside beside it, under a name of its own)
        text = _started(r)
        assert r.wait_state("web", "ready", READY)["pid"] == pid  # re-adopted: kept running
        assert f"warning: {admin}: {why}: corrupt, set aside as admin.json.corrupt" in text, \
            text[-3000:]
        os.truncate(r.log, 0)
    # admin state is written again (a directory left there blocked every write of
    # persist_dir)
    r.req("stop", "web")
    wait_until(lambda: os.path.isfile(admin) and channels.read_json(admin) ==
               {"web": {"want": "down"}}, READY, "admin.json to say web is stopped")


def _evil_pickle(marker: str) -> bytes:
    class Evil:
        def __reduce__(self) -> Any:
            return (os.mkdir, (marker,))
    return pickle.dumps({"config": Evil()})


def test_bad_running_snapshot_and_parsed_copy(restarter: Any, monkeypatch: Any,
                                              tmp_path: Any) -> None:
    """As a layer restarted by init: this run's running snapshot is read (not the file)."""
    monkeypatch.setenv(channels.ENV_CHAIN_ID, "test-run")
    r = restarter(f'[service.web]\ncommand = {svc("sleep")}\n')
    monkeypatch.setenv(channels.ENV_STATE_DIR, r.state_dir)
    pid = r.wait_state("web", "ready")["pid"]
    running = os.path.join(r.state_dir, channels.RUNNING_CONFIG)
    parsed = os.path.join(r.state_dir, channels.RUNNING_PARSED)
    with open(running, "rb") as f:
        good = f.read()
    marker = str(tmp_path / "the-pickle-ran")
    cases = [
        (parsed, _evil_pickle(marker), f"{parsed}: not a parsed configuration "
         "(UnpicklingError: names posix.mkdir, not a configuration class)"),
        (parsed, b"\x80\x05garbage", f"{parsed}: not a parsed configuration"),
        (parsed, "fifo", None),  # ignored as any file not ours: parsed from the text
        (running, b"garbage", f"{running}: not JSON (Expecting value at byte 0): ignored"),
        (running, b"[]", f"{running}: not a configuration snapshot"),
        (running, "fifo", f"{running}: not a regular file (a FIFO): ignored"),
    ]
    for path, what, line in cases:
        r.kill_restarter()
        _put(path, what)
        text = _started(r)
        assert r.wait_state("web", "ready", READY)["pid"] == pid
        if line is not None:
            assert line in text, text[-3000:]
        assert not os.path.exists(marker), "the foreign pickle ran its code"
        os.truncate(r.log, 0)
        if path == running:
            _put(running, good)


BOOT_RECORDS: list[tuple[Any, str]] = [
    (b"\x00garbage", "not JSON"),
    (b'{"boots": "none"}', "not a boot record (no list of boots)"),
    (b"[]", "not a boot record (no list of boots)"),
    ("fifo", "not a regular file (a FIFO)"),
    ("dir", "not a regular file (a directory)"),
]


def test_bad_boot_record_is_set_aside_and_the_restarter_starts(restarter: Any) -> None:
    """The restarter opens this boot's entry in the boot record at every start when it
    is not there. A damaged record was overwritten without a word (a wrong shape) or set
    aside without one (not JSON), a FIFO held the restarter in open() for good, and a
    boot number not an integer ended it (ValueError, at every start)."""
    r = restarter(f'[service.web]\ncommand = {svc("sleep")}\n')
    pid = r.wait_state("web", "ready")["pid"]
    record = os.path.join(r.persist_dir, bootrecord.RECORD)
    r.kill_restarter()
    channels.write_json(record, {"version": 1, "boots": [{"boot": "x"}, {"boot": 1e400}]})
    text = _started(r)
    assert r.wait_state("web", "ready", READY)["pid"] == pid
    # (it ended the restarter's reading of the record with ValueError: no entry for this
    # boot; now the entries are damaged, the file set aside whole, the record goes on)
    assert f"warning: {record}: entry 1: boot is 'x', not an integer; entry 2: boot is " \
        f"inf, not an integer: set aside as {bootrecord.RECORD}.corrupt, the record goes " \
        "on without those values" in text, text[-3000:]
    assert [b.get("boot") for b in bootrecord.read(r.persist_dir)["boots"]] == [None, None, 1]
    for what, why in BOOT_RECORDS:
        r.kill_restarter()
        os.truncate(r.log, 0)
        _put(record + ".corrupt", b"")
        os.unlink(record + ".corrupt")
        _put(record, what)
        text = _started(r)
        assert r.wait_state("web", "ready", READY)["pid"] == pid
        assert f"warning: {record}: {why}: set aside as {bootrecord.RECORD}.corrupt, a new " \
            "record begins" in text, text[-3000:]
        if isinstance(what, bytes):
            with open(record + ".corrupt", "rb") as f:
                assert f.read() == what  # kept as it was
        assert bootrecord.read(r.persist_dir)["boots"]  # this boot's entry, in a new record


def test_reserve_files_not_regular_are_set_aside(restarter: Any) -> None:
    """Each of the restarter's directories keeps a reserve file for writes on a full disk
    (.hachain-reserve), opened for writing at every start. A FIFO there held the
    restarter in open() for good, a dangling symbolic link made it write 64 KiB where the
    link pointed; each is now set aside with one line, and a new reserve is made."""
    r = restarter(f'[service.web]\ncommand = {svc("sleep")}\n')
    pid = r.wait_state("web", "ready")["pid"]
    services = os.path.join(r.state_dir, channels.SERVICE_RECORD_DIR)
    cases = [(os.path.join(r.persist_dir, persist.RESERVE), "fifo", "a FIFO"),
             (os.path.join(services, persist.RESERVE), "dangling", "a symbolic link")]
    r.kill_restarter()
    for path, what, _ in cases:
        _put(path, what)
    text = _started(r)
    assert r.wait_state("web", "ready", READY)["pid"] == pid
    for path, _, kind in cases:
        assert f"warning: {path}: not a regular file ({kind}): corrupt, set aside as " \
            f"{persist.RESERVE}.corrupt" in text, text[-3000:]
        assert os.path.isfile(path) and not os.path.islink(path)
        assert os.path.getsize(path) == persist.RESERVE_BYTES
    assert not os.path.exists(os.path.join(services, persist.RESERVE + ".nowhere"))


def test_fifo_as_the_loggers_lock_file_does_not_block_the_restarter(restarter: Any) -> None:
    """A new restarter whose hand-over to the running logger times out reads the
    logger's pid from its lock file, to kill a stopped one. A FIFO there kept it in
    open() for good; it now says so in one line and goes on."""
    r = restarter(f'[service.web]\ncommand = {svc("sleep")}\n')
    pid = r.wait_state("web", "ready")["pid"]
    logger = wait_until(r.logger_pid, READY, "the logger's pid in its lock file")
    # listening on its hand-over socket (it says so after): one stopped before would
    # refuse the connection rather than leave it unanswered (CI, under load)
    wait_until(lambda: "hachain-logger: writing service logs to" in _log(r), READY,
               "the logger to listen")
    lock = os.path.join(r.state_dir, wire.LOCK_FILE)
    r.kill_restarter()
    os.kill(logger, signal.SIGSTOP)  # it does not answer the hand-over
    try:
        _put(lock, "fifo")
        text = _started(r)
        assert r.wait_state("web", "ready", READY)["pid"] == pid
        assert f"{lock}: cannot read the logger's pid" in text, text[-3000:]
        # the logger it starts instead names what is in the lock's place
        wait_until(lambda: f"hachain-logger: cannot start: {lock}: not a regular file (a "
                   f"FIFO): the logger cannot take its lock" in _log(r), READY,
                   "the new logger to name the FIFO")
    finally:
        os.kill(logger, signal.SIGKILL)  # ours: the restarter of this test started it
        if os.path.exists(lock) and not os.path.isfile(lock):
            os.unlink(lock)  # (the fixture's cleanup reads the lock file)


def test_fifo_as_the_ticklers_heartbeat_does_not_block_init_stopping(tmp_path: Any) -> None:
    """init reads the tickler's heartbeat when it stops the chain (to know whether the
    tickler has the device open). A FIFO there held init in open() for good, and a
    stopped chain never finished stopping (as PID 1: a shutdown that never ends)."""
    state = tmp_path / "run"
    (state / channels.HEARTBEAT_DIR).mkdir(parents=True)
    os.mkfifo(channels.heartbeat_path(str(state), "tickler"))
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[chain]\nstate_dir = "{state}"\npersist_dir = "{tmp_path}/persist"\n'
                   '[watchdog]\ndevice = "none"\n')
    err = tmp_path / "init.err"
    with open(err, "wb") as errf:
        init = subprocess.Popen([sys.executable, "-m", "hachain.init.main", "--state-dir",
                                 str(state), "--config", str(cfg), "--heartbeat-interval",
                                 "0.2", "--restarter-cmd", "sleep 600", "--no-tickler"],
                                stderr=errf)
    try:
        wait_until(lambda: "started restarter" in err.read_text(errors="replace"), READY,
                   "init to start its restarter")
        init.send_signal(signal.SIGTERM)
        try:
            code = init.wait(READY)
        except subprocess.TimeoutExpired:
            code = None
        text = err.read_text(errors="replace")
        assert code == 0, text[-3000:]
        assert "all processes stopped; exiting" in text, text[-3000:]
    finally:
        end_init(init)


def test_fifos_in_the_ticklers_config_files_do_not_keep_it_from_petting(
        tmp_path: Any, monkeypatch: Any) -> None:
    """The tickler of a chain run reads this run's running snapshot (running.json) and
    the tables it kept (config/tickler.json) before it opens the device. A FIFO in either
    place held it in open() for good: the device was never opened (the next boot's
    watchdog never armed). Each is now one line, and the tickler pets."""
    tickler_pets_past_its_config_files(
        tmp_path, monkeypatch, "fifo", "not a regular file (a FIFO): ignored, the "
        "configuration is read anew", "not a regular file of ours: ignored")


def tickler_pets_past_its_config_files(tmp_path: Any, monkeypatch: Any, what: Any,
                                       running_why: str, kept_why: str) -> None:
    """Put `what` (as _put) at the tickler's running snapshot (running.json), start a
    tickler on a rig whose other layers are forged, and wait for it to pet and for the
    line `<running.json>: <running_why>`; then stop it, put `what` at the tables it kept
    (config/tickler.json) and do the same, with `kept_why`. It must stop cleanly (the
    magic close) both times, with no traceback and no expiry."""
    from tests.test_tickler import ForgedLayers, Rig
    rig = Rig(str(tmp_path))
    monkeypatch.setenv(channels.ENV_CHAIN_ID, "test-run")
    monkeypatch.setenv(channels.ENV_STATE_DIR, rig.state_dir)
    running = os.path.join(rig.state_dir, channels.RUNNING_CONFIG)
    kept = os.path.join(rig.state_dir, TABLES_CACHE)
    rig.server.start()
    try:
        with ForgedLayers(rig.state_dir, rig.sleeper.pid):
            os.makedirs(os.path.dirname(running))
            for path, why in ((running, running_why), (kept, kept_why)):
                if path == kept:  # a good running.json, written by the last tickler
                    wait_until(lambda: os.path.isfile(running), READY, "running.json")
                _put(path, what)
                p = rig.start_tickler()
                wait_until(lambda p=p: (hb := rig.tickler_hb()) is not None and
                           hb.pid == p.pid and hb.extra.get("pets", 0) >= 2,
                           READY, "the tickler to pet")
                rig.wait_log(f"{path}: {why}", READY)
                p.send_signal(signal.SIGTERM)  # an orderly stop: the magic close
                assert p.wait(READY) == 0, rig.log_text()[-3000:]
        assert "Traceback" not in rig.log_text()
        assert not rig.expired.is_set()
    finally:
        rig.close()


def test_gate_record_of_the_wrong_shape_still_says_why_the_last_boot_ended(
        tmp_path: Any) -> None:
    """After a watchdog reset the tickler says why the previous boot ended, with the
    reasons from gate.json. `"reasons": 5` there raised TypeError in its record writer:
    that line was lost (an internal error logged in its place)."""
    from tests.test_tickler import ForgedLayers, Rig
    rig = Rig(str(tmp_path), bootstatus=WDIOF_CARDRESET)
    os.makedirs(rig.persist_dir)
    channels.write_json(os.path.join(rig.persist_dir, channels.GATE_RECORD),
                        {"boot_id": "a previous boot", "reasons": 5})
    rig.server.start()
    try:
        with ForgedLayers(rig.state_dir, rig.sleeper.pid):
            p = rig.start_tickler()
            rig.wait_log("previous boot ended by: ", READY)
            rig.wait_log("; gate had failed: 5", READY)
            p.send_signal(signal.SIGTERM)
            assert p.wait(READY) == 0, rig.log_text()[-3000:]
        assert "Traceback" not in rig.log_text()
    finally:
        rig.close()


def test_damaged_last_known_good_copy_is_named(restarter: Any) -> None:
    """A restarter started with a broken file falls back to the last-known-good copy. A
    damaged copy was passed over without a word ("no last-known-good configuration"
    while one was there; a FIFO in its place held the restarter in open() for good until
    the snapshot reads took regular files only). Now one line names it; the restarter
    exits 2 as with no copy at all."""
    r = restarter(f'[service.web]\ncommand = {svc("sleep")}\n')
    r.wait_state("web", "ready")
    r.stop()
    lkg = os.path.join(r.persist_dir, channels.LAST_GOOD_CONFIG)
    assert os.path.isfile(lkg)
    with open(r.config, "a") as f:
        f.write("[service.web]\n")  # a table defined twice: the file no longer loads
    env = dict(os.environ)
    for var in (channels.ENV_CHAIN_ID, channels.ENV_STATE_DIR, channels.ENV_PERSIST_DIR):
        env.pop(var, None)
    for what, why in ((b"garbage", "not JSON (Expecting value at byte 0)"),
                      ("fifo", "not a regular file (a FIFO)")):
        _put(lkg, what)
        try:
            p = subprocess.run([sys.executable, "-m", "hachain.restarter", "-c", r.config],
                               capture_output=True, text=True, timeout=READY, env=env)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the restarter hung on {lkg} ({what!r})") from None
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr, p.stderr
        assert f"{lkg}: {why}: ignored" in p.stderr, p.stderr
