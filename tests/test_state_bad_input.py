"""Bad files where the chain reads its own state back: runtime records, admin.json, the
running snapshot and its parsed copy, the boot record. Each case runs the real restarter
on files damaged while it was down and checks the rule: one line naming the file and what
is wrong, the restarter starts (no traceback, no hang on a FIFO), and what else was
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
  it is now the restarter's warning line about the boot record, and no rescue holds.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import pytest

from hachain import bootrecord, channels
from tests.conftest import RestarterRun, svc, wait_until

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
        _put(admin + ".corrupt", b"")  # the one set aside before: no directory
        os.unlink(admin + ".corrupt")
        _put(admin, what)
        text = _started(r)
        assert r.wait_state("web", "ready", READY)["pid"] == pid  # re-adopted: kept running
        assert f"warning: {admin}: {why}: corrupt, set aside as admin.json.corrupt" in text, \
            text[-3000:]
        os.truncate(r.log, 0)


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


def test_boot_record_with_a_boot_number_not_an_integer(restarter: Any) -> None:
    r = restarter(f'[service.web]\ncommand = {svc("sleep")}\n')
    pid = r.wait_state("web", "ready")["pid"]
    r.kill_restarter()
    record = os.path.join(r.persist_dir, bootrecord.RECORD)
    channels.write_json(record, {"version": 1, "boots": [{"boot": "x"}, {"boot": 1e400}]})
    text = _started(r)
    assert r.wait_state("web", "ready", READY)["pid"] == pid
    assert "warning: cannot read or write the boot record: ValueError: invalid literal" \
        in text, text[-3000:]
