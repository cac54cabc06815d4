"""Bad files where the tickler's records and the boot record are read back for display
and for the boot-loop count: `<persist_dir>/gate.json`, `last_boot.json` and
`boot_record.json`, read by `hachain status` (text and --json), by `hachain metrics`, by
`hachain clear --boot-loop` and the layers that write the boot record, and (gate.json
and last_boot.json) by the tickler's record writer. Each case runs the real command on a
file damaged in one way while the others are good, and checks the rule: the answer
comes, whole but for the bad file, with one line naming the file and what is wrong; no
traceback, no hang on a FIFO; the bad file is left as it was (or set aside whole by the
writer that replaces it).

What was wrong before:
- a boot entry whose "boot" was no integer ("x", 1e400, null, a list) raised in
  bootrecord.read (ValueError, OverflowError, TypeError) when the record had no valid
  counter: every reader and writer of the record failed, `hachain status` with a
  traceback, and no boot of the machine was counted again until someone mended the file;
  a field of another wrong type ("reason": 5, "failed_critical": 5) gave tracebacks in
  `hachain status` too;
- `hachain status` and `hachain metrics` read gate.json, last_boot.json and the boot
  record with an open that waits for a FIFO's writer: a FIFO there held the command for
  good (and the restarter, which renders `hachain status` for the native front);
- JSON nested too deeply there raised RecursionError (a traceback, a scrape answered
  500), and `"reasons": 5` in gate.json a TypeError in `hachain status`;
- a directory, a dangling symbolic link, JSON of the wrong shape and fields of the wrong
  type there were passed over without a word, or shown as they were;
- the boot record was read under its lock with an open that waits on a FIFO: `hachain
  clear --boot-loop` (and init's record thread, and the tickler's set_reason) stayed
  there for good, holding the lock that a restarter starting later waits for;
- the tickler's record writer read gate.json (after a watchdog reset) with an open that
  waits on a FIFO, and let RecursionError through from both files: last_boot.json was
  not written, and a FIFO held every later record of the boot behind it.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

from hachain import bootrecord, channels
from tests.conftest import wait_until
from tests.test_cli_bad_input import hachain
from tests.test_state_bad_input import READY, _put

pytestmark = pytest.mark.timeout(300)

# A bound on one scrape of `hachain metrics`: generous (loaded CI); a FIFO that holds it
# holds it for good.
SCRAPE_TIMEOUT = 30.0

GOOD_GATE = {"wall": 1795441186.9, "mono": 1014.1, "device": "sim:/x", "boot_id": "b-1",
             "reasons": ["restarter heartbeat stale: 3.4 s > 3 s"]}
GOOD_LAST_BOOT = {"boot_id": "b-2", "wall": 1795441190.2, "device": "sim:/x",
                  "bootstatus": 32, "flags": ["CARDRESET"], "cause": "watchdog reset",
                  "last_gate_failure": GOOD_GATE}
GOOD_RECORD = {"version": 1, "counter": 2, "boots": [
    {"boot": 1, "boot_id": "b-1", "started_wall": 1795441100.0, "bootstatus": 0,
     "device": "sim:/x", "reason": "gate-failure", "detail": ["restarter hung"],
     "ended_wall": 1795441186.9, "failed_critical": [], "rescue": None, "cleared": None},
    {"boot": 2, "boot_id": "b-2", "started_wall": 1795441190.0, "bootstatus": 32,
     "device": "sim:/x", "reason": "unknown", "detail": [], "ended_wall": None,
     "failed_critical": [], "rescue": None, "cleared": None}]}

# The lines (text) each good file gives `hachain status`.
GOOD_LINES = {
    channels.GATE_RECORD: "last gate failure: restarter heartbeat stale: 3.4 s > 3 s",
    channels.LAST_BOOT: "last boot: watchdog reset",
    bootrecord.RECORD: "previous boot #1 ended: gate-failure: restarter hung; device boot "
                       "status 0x20 (the watchdog reset it); 1 consecutive unclean boot(s)",
}
GOOD = {channels.GATE_RECORD: GOOD_GATE, channels.LAST_BOOT: GOOD_LAST_BOOT,
        bootrecord.RECORD: GOOD_RECORD}

DEEP = b"[" * 100000 + b"]" * 100000
RECORD_SHAPE = "not a boot record (no list of boots)"
# name: (what is put there, {file: what the warning says is wrong with it})
CASES: dict[str, tuple[Any, dict[str, str]]] = {
    "garbage": (b"\x00garbage", {
        channels.GATE_RECORD: "not JSON (Expecting value at byte 0)",
        channels.LAST_BOOT: "not JSON (Expecting value at byte 0)",
        bootrecord.RECORD: "not JSON"}),
    "list": (b"[1, 2]", {channels.GATE_RECORD: "not a JSON object but list",
                         channels.LAST_BOOT: "not a JSON object but list",
                         bootrecord.RECORD: RECORD_SHAPE}),
    "string": (b'"x"', {channels.GATE_RECORD: "not a JSON object but str",
                        channels.LAST_BOOT: "not a JSON object but str",
                        bootrecord.RECORD: RECORD_SHAPE}),
    "number": (b"1e400", {channels.GATE_RECORD: "not a JSON object but float",
                          channels.LAST_BOOT: "not a JSON object but float",
                          bootrecord.RECORD: RECORD_SHAPE}),
    "deep": (DEEP, dict.fromkeys(GOOD, "not JSON (nested too deeply)")),
    "fields": (None, {  # per file: FIELDS below
        channels.GATE_RECORD: "reasons is 5, not a list of strings; wall is 'x', not a "
                              "finite number; mono is inf, not a finite number",
        channels.LAST_BOOT: "cause is 5, not a string; wall is 'x', not a finite number; "
                            "bootstatus is inf, not an integer; last_gate_failure.reasons "
                            "is 'r', not a list of strings",
        bootrecord.RECORD: "entry 1: boot is 'x', not an integer; entry 1: started_wall is "
                           "inf, not a finite number; entry 1: reason is 5, not a string; "
                           "entry 2: detail is 5, not a list of strings"}),
    "dir": ("dir", dict.fromkeys(GOOD, "not a regular file (a directory)")),
    "fifo": ("fifo", dict.fromkeys(GOOD, "not a regular file (a FIFO)")),
    "dangling": ("dangling", dict.fromkeys(GOOD, "a dangling symbolic link")),
}
FIELDS = {
    channels.GATE_RECORD: b'{"reasons": 5, "wall": "x", "mono": 1e400, "device": "sim:/x"}',
    channels.LAST_BOOT: b'{"cause": 5, "wall": "x", "bootstatus": 1e400, "device": "d", '
                        b'"last_gate_failure": {"reasons": "r"}}',
    bootrecord.RECORD: b'{"boots": [{"boot": "x", "started_wall": 1e400, "reason": 5}, '
                       b'{"boot": 2, "reason": "unknown", "detail": 5}]}',
}


def _dirs(tmp_path: Any) -> tuple[str, str]:
    """A state directory with no chain in it, and a persist directory with good records."""
    state, persist = tmp_path / "run", tmp_path / "persist"
    state.mkdir()
    persist.mkdir()
    for name, rec in GOOD.items():
        channels.write_json(str(persist / name), rec)
    return str(state), str(persist)


def _damage(persist: str, name: str, case: str) -> Any:
    """Put case `case` in place of record `name`; what to compare it with afterwards."""
    what = CASES[case][0] if CASES[case][0] is not None else FIELDS[name]
    path = os.path.join(persist, name)
    _put(path, what)
    return _kind(path)


def _kind(path: str) -> Any:
    """What is at `path`, to see that nobody changed it: its bytes, or its kind."""
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            return f.read()
    return stat.S_IFMT(st.st_mode), os.readlink(path) if os.path.islink(path) else None


def _status(state: str, persist: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`hachain status ARGS`: no chain runs, so it answers degraded (exit 1), and says
    nothing on stderr."""
    try:
        p = hachain("status", *args, "--state-dir", state, "--persist-dir", persist)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"hachain status {' '.join(args)} hung") from None
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert p.stderr == "", p.stderr
    return p


@pytest.mark.parametrize("name", list(GOOD))
def test_status_says_what_is_wrong_with_a_record_and_shows_the_rest(
        tmp_path: Any, name: str) -> None:
    state, persist = _dirs(tmp_path)
    path = os.path.join(persist, name)
    for case, (_, whys) in CASES.items():
        before = _damage(persist, name, case)
        warning = f"{path}: {whys[name]}: ignored"
        p = _status(state, persist)
        lines = p.stdout.splitlines()
        assert lines[0].startswith("degraded: init dead"), (case, p.stdout)
        assert f"warning: {warning}" in lines, (case, p.stdout)
        for other, line in GOOD_LINES.items():
            assert (line in lines) == (other != name), (case, other, p.stdout)
        p = _status(state, persist, "--json")
        chain = json.loads(p.stdout)["chain"]
        assert chain["warnings"] == [warning], (case, chain["warnings"])
        assert chain["last_boot"] == (GOOD_LAST_BOOT if name != channels.LAST_BOOT else
                                      chain["last_boot"])
        assert chain["gate_failure"] == (GOOD_GATE if name != channels.GATE_RECORD else
                                         chain["gate_failure"])
        assert chain["boot"]["counter"] == (2 if name != bootrecord.RECORD else
                                            chain["boot"]["counter"])
        assert _kind(path) == before, case  # a reader changes nothing
    # the fields of the right type in a record with others of the wrong type are shown
    _damage(persist, name, "fields")
    chain = json.loads(_status(state, persist, "--json").stdout)["chain"]
    if name == channels.GATE_RECORD:
        assert chain["gate_failure"] == {"device": "sim:/x"}
    elif name == channels.LAST_BOOT:
        assert chain["last_boot"] == {"device": "d", "last_gate_failure": {}}
    else:
        assert chain["boot"]["counter"] == 2
        assert [h["boot"] for h in chain["boot"]["history"]] == [None, 2]
        assert "reason" not in chain["boot"]["previous"]  # 5: left out, as not known


def _scrape(url: str) -> dict[str, float]:
    """One scrape: {sample name with its labels as text: value}."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as r:
        assert r.status == 200
        text = r.read().decode()
    return {s.name + json.dumps(s.labels, sort_keys=True): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_answers_every_scrape_whatever_the_records(tmp_path: Any) -> None:
    pytest.importorskip("prometheus_client")
    from tests.test_metrics import _read_line, _stop
    state, persist = _dirs(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "hachain.metrics", "--listen",
                             "127.0.0.1:0", "--state-dir", state, "--persist-dir", persist],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        addr = _read_line(proc, SCRAPE_TIMEOUT).rsplit(" on ", 1)[1].strip()
        url = f"http://{addr}/metrics"
        last_boot = 'hachain_last_boot_info{"cause": "watchdog reset"}'
        boots = "hachain_boots_total{}"
        m = _scrape(url)
        assert m[last_boot] == 1 and m[boots] == 2
        for name in GOOD:
            for case in CASES:
                _damage(persist, name, case)
                try:
                    m = _scrape(url)
                except OSError as e:  # a timeout or an error answer (500)
                    raise AssertionError(f"{name} {case}: scrape failed: {e}") from None
                assert any(k.startswith("hachain_build_info{") for k in m)
                assert (last_boot in m) == (name != channels.LAST_BOOT), (name, case)
                if name != bootrecord.RECORD:
                    assert m[boots] == 2, (name, case)
                elif case == "fields":  # the entries are kept, the counter from them
                    assert m[boots] == 2, (name, case)
                else:
                    assert boots not in m, (name, case)
            _put(os.path.join(persist, name), json.dumps(GOOD[name]).encode())
        assert proc.poll() is None
    finally:
        _stop(proc)
    assert proc.returncode == 0


def test_boot_numbers_that_are_not_integers_are_damaged_entries(tmp_path: Any) -> None:
    """A record without a valid counter whose entries have boot numbers of the wrong
    type: each such entry reads as a boot of unknown number (its reason still counts
    towards a boot loop), the counter is the highest valid number, and the next write
    sets the file aside whole and writes the record again, sane."""
    persist = tmp_path / "persist"
    persist.mkdir()
    record = persist / bootrecord.RECORD
    now = time.time()
    entries = b", ".join(
        b'{"boot": %s, "boot_id": "b-%d", "started_wall": %f, "reason": "unknown"}'
        % (num, i, now - 60 + i) for i, num in enumerate(
            [b"7", b'"x"', b"1e400", b"null", b"[1]", b'{"n": 1}', b"true"]))
    raw = b'{"version": 1, "boots": [%s]}' % entries
    record.write_bytes(raw)
    rec = bootrecord.read(str(persist))  # (raised ValueError)
    assert rec["counter"] == 7
    problems: list[str] = []
    bootrecord.read(str(persist), problems=problems)
    assert [b.get("boot") for b in rec["boots"]] == [7, None, None, None, None, None, None]
    assert problems == [f"entry {i}: boot is {shown}, not an integer" for i, shown in (
        (2, "'x'"), (3, "inf"), (4, "None"), (5, "a list"), (6, "an object"), (7, "True"))]
    # the layers read it to open this boot's entry: numbered on, a boot loop seen
    lines: list[str] = []
    entry = bootrecord.begin_boot(str(persist), "this-boot", now, resets=3, window=900,
                                  action="rescue", log=lines.append)
    assert entry["boot"] == 8
    assert entry["rescue"] is not None and entry["rescue"]["boots"] == [None, None, None]
    assert lines == [f"{record}: entry 2: boot is 'x', not an integer; entry 3: boot is "
                     "inf, not an integer; entry 4: boot is None, not an integer; 3 more: "
                     f"set aside as {bootrecord.RECORD}.corrupt, the record goes on "
                     "without those values"]
    assert (persist / (bootrecord.RECORD + ".corrupt")).read_bytes() == raw  # kept whole
    problems = []
    again = bootrecord.read(str(persist), problems=problems)
    assert problems == [] and again["counter"] == 8 and len(again["boots"]) == 8
    # a later write finds a sane record: what was set aside stays
    bootrecord.set_reason(str(persist), "this-boot", bootrecord.SHUTDOWN, [], time.time())
    assert (persist / (bootrecord.RECORD + ".corrupt")).read_bytes() == raw
    assert bootrecord.read(str(persist))["boots"][-1]["reason"] == bootrecord.SHUTDOWN
    # `hachain status` on the damaged record: the boots, the loop, one warning line
    record.write_bytes(raw)
    state = tmp_path / "run"
    state.mkdir()
    p = _status(str(state), str(persist))
    assert "previous boot #? ended: unknown; 6 consecutive unclean boot(s)" in p.stdout
    assert f"warning: {record}: entry 2: boot is 'x', not an integer;" in p.stdout
    assert record.read_bytes() == raw


def test_clear_boot_loop_waits_on_no_fifo_and_holds_no_lock(tmp_path: Any) -> None:
    """`hachain clear --boot-loop` reads the boot record under its lock, as init's record
    thread and the tickler's writer do. A FIFO there held the command in open() for good,
    and with it the lock: a restarter starting then (which reads without waiting, then
    takes the lock to open its boot's entry) waited at the lock for good. Under the lock
    the record is now read without waiting: a FIFO is no record, and is left as it is
    (the layer that opens this boot's entry sets it aside)."""
    state, persist = tmp_path / "run", tmp_path / "persist"
    state.mkdir()
    persist.mkdir()
    record = str(persist / bootrecord.RECORD)
    os.mkfifo(record)
    try:
        p = hachain("clear", "--boot-loop", "--state-dir", str(state), "--persist-dir",
                    str(persist))
    except subprocess.TimeoutExpired:
        raise AssertionError("hachain clear --boot-loop hung on a FIFO") from None
    assert p.returncode == 0 and "Traceback" not in p.stderr, (p.stdout, p.stderr)
    assert stat.S_ISFIFO(os.lstat(record).st_mode)
    # the lock is free: a restarter's opening of this boot's entry goes through
    lines: list[str] = []
    entry = bootrecord.begin_boot(str(persist), "this-boot", time.time(), regular=True,
                                  log=lines.append)
    assert entry["boot"] == 1
    assert lines == [f"{record}: not a regular file (a FIFO): set aside as "
                     f"{bootrecord.RECORD}.corrupt, a new record begins"]


def test_a_gate_record_that_is_a_fifo_or_nested_too_deeply_leaves_last_boot_written(
        tmp_path: Any) -> None:
    """After a watchdog reset the tickler's record writer reads last_boot.json (is this
    boot recorded?) and gate.json (why the previous boot ended), then writes
    last_boot.json. A FIFO as gate.json held the writer thread in open() for good
    (last_boot.json never written, and every later record, the boot record's reason for
    this boot included, queued behind it); JSON nested too deeply in either raised
    RecursionError there (last_boot.json not written, an internal error logged)."""
    from hachain.watchdog.device import WDIOF_CARDRESET
    from tests.test_tickler import ForgedLayers, Rig
    rig = Rig(str(tmp_path), bootstatus=WDIOF_CARDRESET)
    os.makedirs(rig.persist_dir)
    gate = os.path.join(rig.persist_dir, channels.GATE_RECORD)
    last = os.path.join(rig.persist_dir, channels.LAST_BOOT)
    rig.server.start()
    try:
        with ForgedLayers(rig.state_dir, rig.sleeper.pid):
            for what in ("fifo", DEEP):
                _put(gate, what)
                _put(last, DEEP)  # (nested too deeply: no record of this boot either)
                if os.path.exists(rig.log):
                    os.truncate(rig.log, 0)  # (the last tickler has exited)
                p = rig.start_tickler()
                rig.wait_log("previous boot ended by: watchdog reset (boot status 0x20)",
                             READY)
                rec = wait_until(lambda: os.path.isfile(last) and channels.read_json(last),
                                 READY, "last_boot.json")
                assert rec["cause"] == "watchdog reset" and rec["last_gate_failure"] is None
                p.send_signal(signal.SIGTERM)
                assert p.wait(READY) == 0, rig.log_text()[-3000:]
                assert "Traceback" not in rig.log_text()
                assert "cannot write" not in rig.log_text(), rig.log_text()[-3000:]
        assert stat.S_ISREG(os.lstat(gate).st_mode)  # the last one, left as it was
        with open(gate, "rb") as f:
            assert f.read() == DEEP
    finally:
        rig.close()



def init_giving_up_on_the_tickler(tmp_path: Any, state: Any, persist: Any,
                                  config: Any = None) -> tuple[subprocess.Popen[bytes], Any]:
    """A real init whose tickler dies at once and is not restarted (one death allowed), so
    init gives up on it and writes why the boot ends (set_reason, in a thread of its own);
    the restarter is a sleep. The process and the file its stderr goes to; the caller
    ends it with conftest.end_init. With a `config`, that is init's --config and it gets
    no persist dir (`persist` is not used): it takes the one the configuration names."""
    if config is None:
        config = tmp_path / "chain.toml"
        config.write_text(f'[chain]\nstate_dir = "{state}"\npersist_dir = "{persist}"\n'
                          '[watchdog]\ndevice = "none"\n')
        where = ["--config", str(config), "--persist-dir", str(persist)]
    else:
        where = ["--config", str(config)]
    env = {k: v for k, v in os.environ.items() if k != channels.ENV_PERSIST_DIR}
    err = tmp_path / "init.err"
    with open(err, "wb") as errf:
        init = subprocess.Popen(
            [sys.executable, "-m", "hachain.init.main", "--state-dir", str(state), *where,
             "--heartbeat-interval", "0.2", "--restarter-cmd", "sleep 600", "--tickler-cmd",
             "sh -c 'exit 1'", "--tickler-deaths", "1", "--tickler-min-run", "60",
             "--tickler-pause", "600"],
            stderr=errf, env=env)
    return init, err


def test_init_giving_up_on_the_tickler_holds_no_lock_on_a_fifo_record(
        tmp_path: Any) -> None:
    """init says in the boot record why the boot ends when it gives up on a tickler that
    keeps dying (a thread of its own: set_reason, under the record's lock). With a FIFO
    as the record that thread stayed in open() for good, holding the lock, and a layer
    that opened this boot's entry afterwards (a restarter starting) waited at the lock
    for good: no heartbeat. The record is now read under the lock without waiting; the
    layer that opens the entry sets the FIFO aside and goes on. (Played here by a
    begin_boot in a thread of the test with the restarter's arguments; the race it
    depends on, init's thread reaching the lock first, is won by init in practice:
    the test starts only once init has logged that it gave up.)"""
    import threading

    from tests.conftest import end_init
    state, persist = tmp_path / "run", tmp_path / "persist"
    persist.mkdir()
    record = str(persist / bootrecord.RECORD)
    os.mkfifo(record)
    init, err = init_giving_up_on_the_tickler(tmp_path, state, persist)
    try:
        wait_until(lambda: "not restarting it again" in err.read_text(errors="replace"),
                   READY, "init to give up on the tickler")
        lines: list[str] = []
        done = threading.Event()

        def restarter_start() -> None:
            bootrecord.begin_boot(str(persist), "this-boot", time.time(), regular=True,
                                  log=lines.append)
            done.set()
        threading.Thread(target=restarter_start, daemon=True).start()
        assert done.wait(READY), "the boot record's lock is held: " + \
            err.read_text(errors="replace")[-3000:]
        assert lines == [f"{record}: not a regular file (a FIFO): set aside as "
                         f"{bootrecord.RECORD}.corrupt, a new record begins"]
        assert init.poll() is None
        assert "Traceback" not in err.read_text(errors="replace")
    finally:
        end_init(init)
