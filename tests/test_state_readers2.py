"""More readers of the on-disk state (after tests/test_state_readers.py): the one JSON
reader every layer uses, the cluster layer's and the simulated machine's reads of the
tickler's records, `hachain clear --boot-loop` on a damaged boot record, and `hachain
status --json` on numbers that are not finite. Real files, FIFOs, processes and the real
CLI; each read that could wait on a FIFO runs where a hang fails the test in bounded time.

What was wrong before:
- channels.read_json let RecursionError out of JSON nested too deeply: a reader that
  handled a corrupt file (ValueError) got a traceback instead. The restarter's read of
  admin.json and of its runtime records is one such: it ended at every start (a
  restart loop under init). Now a NestedTooDeeply (a JSONDecodeError) with where the
  nesting is deepest;
- `hachain status` called an integer of more than 4300 digits in gate.json "not UTF-8
  text" (each ValueError that was no JSONDecodeError was);
- the cluster layer's last_boot() (published on every round with etcd) opened
  last_boot.json as any file: a FIFO there held the loop that renews the lease, and
  nested JSON raised RecursionError there; `"wall": 1e400` was published as `Infinity`;
- the simulated machine read gate.json (on a watchdog expiry) and last_boot.json (the
  tour) as any file: a FIFO held it, nested JSON raised RecursionError, and a record of
  the wrong shape (a list; `"reasons": 5`) raised AttributeError or TypeError;
- `hachain clear --boot-loop` set a damaged boot record aside as .corrupt without a word;
- `hachain status --json` printed a number that is not finite (1e400 in a field no
  reader checks) as `Infinity`: no JSON to a strict parser;
- a heartbeat file nested too deeply raised RecursionError out of read_heartbeat (in
  `hachain status`, the tickler's gate, init and the restarter); the tickler's kept
  tables (config/tickler.json) nested too deeply ended the tickler before it opened the
  device; `hachain status` opened its cached verdict on an edited configuration
  (config/disk-verdict.json) as any file: a FIFO there held it for good;
- the chaos harness opened the heartbeats, runtime records, admin.json, the logger's
  lock file and every persisted .json/.jsonl file as any file (a FIFO there held it for
  good), and let RecursionError out of a persisted file nested too deeply;
- the tickler and init set a damaged boot record aside (set_reason) without a word;
- a reply on the control socket nested too deeply raised RecursionError out of
  client.request: a traceback from every command that asks the restarter;
- `hachain status --cluster` gave a traceback on a node record in etcd nested too
  deeply or of another shape, and `--json` printed 1e400 there as Infinity;
- `hachain watchdog info -d sim:PATH` gave a traceback on a reply nested too deeply.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from hachain import bootrecord, channels, config
from tests.conftest import svc
from tests.test_cli_bad_input import hachain
from tests.test_state_bad_input import READY, _log, _put, _started
from tests.test_state_readers import DEEP, GOOD, _dirs, _status

pytestmark = pytest.mark.timeout(300)

# A bound on a read that must not wait: generous (loaded CI); one held by a FIFO is held
# for good.
READ_TIMEOUT = 20.0


def _bounded(call: Callable[[], Any], fifos: list[str]) -> Any:
    """`call()` in a thread, joined with READ_TIMEOUT: what it returned, or what it raised,
    raised again here. A call still waiting then fails the test; the FIFOs in `fifos` are
    opened for writing (without waiting) first, which lets a reader held in open() go."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = call()
        except BaseException as e:  # re-raised in the test's thread
            out["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(READ_TIMEOUT)
    if t.is_alive():
        for path in fifos:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        t.join(READ_TIMEOUT)
        raise AssertionError(f"still waiting after {READ_TIMEOUT:g} s (on a FIFO?)")
    if "error" in out:
        raise out["error"]
    return out["value"]


# --- channels.read_json ----------------------------------------------------------------------

def test_read_json_says_nested_too_deeply_as_a_value_error(tmp_path: Any) -> None:
    path = tmp_path / "deep.json"
    path.write_bytes(b'{"a": "[[{", "b": ' + b"[" * 100000 + b"]" * 100000 + b"}")
    with pytest.raises(ValueError) as info:  # (was RecursionError)
        channels.read_json(str(path))
    assert isinstance(info.value, json.JSONDecodeError)
    assert channels.json_problem(info.value) == "not JSON (nested too deeply)"
    assert info.value.pos == 18 + 99999  # the first bracket of the greatest depth
    with pytest.raises(ValueError):
        channels.read_json(str(path), regular=True)


def test_the_restarter_sets_aside_state_nested_too_deeply(restarter: Any) -> None:
    """admin.json and a service's runtime record nested too deeply: the restarter ended at
    every start (RecursionError out of persist's reader, which handles ValueError). Now
    each is one line and set aside; the service whose record was good is re-adopted, the
    other started again (what a runtime record that cannot be read always meant)."""
    r = restarter(f'[service.web]\ncommand = {svc("sleep")}\n'
                  f'[service.keep]\ncommand = {svc("sleep")}\n')
    r.wait_state("web", "ready")
    keep = r.wait_state("keep", "ready")["pid"]
    admin = os.path.join(r.persist_dir, channels.ADMIN_STATE)
    record = os.path.join(r.state_dir, channels.SERVICE_RECORD_DIR, "web.json")
    r.kill_restarter()
    for path in (admin, record):
        _put(path, DEEP)
    os.truncate(r.log, 0)
    text = _started(r)
    assert r.wait_state("keep", "ready", READY)["pid"] == keep, _log(r)[-3000:]
    r.wait_state("web", "ready", READY)
    for path in (admin, record):
        assert (f"warning: {path}: not JSON (nested too deeply at byte 99999): corrupt, "
                f"set aside as {os.path.basename(path)}.corrupt") in text, text[-3000:]
        with open(path + ".corrupt", "rb") as f:
            assert f.read() == DEEP
    assert r.proc is not None and r.proc.poll() is None


def test_status_names_an_integer_too_long_to_read(tmp_path: Any) -> None:
    state, persist = _dirs(tmp_path)
    gate = os.path.join(persist, channels.GATE_RECORD)
    _put(gate, b'{"reasons": [], "wall": ' + b"7" * 5000 + b"}")
    p = _status(state, persist)
    assert (f"warning: {gate}: not JSON (Exceeds the limit (4300 digits) for integer string "
            "conversion: value has 5000 digits): ignored") in p.stdout.splitlines(), p.stdout


# --- the cluster layer's last_boot() -------------------------------------------------------

def _node(tmp_path: Any) -> Any:
    """A cluster node on a configuration in `tmp_path` (no etcd: last_boot reads a file)."""
    from hachain.cluster import node as cnode
    persist = tmp_path / "persist"
    persist.mkdir()
    cfg = config.parse(f"""
[chain]
state_dir = "{tmp_path}/run"
persist_dir = "{persist}"
heartbeat_interval = 0.1
[watchdog]
device = "sim"
timeout = 2
pet_interval = 0.25
[cluster]
endpoints = ["127.0.0.1:1"]
node = "a"
lease_ttl = 4
margin = 0.25
""")
    return cnode.Node(cfg)


def test_cluster_last_boot_waits_on_no_fifo_and_says_what_is_wrong(
        tmp_path: Any, capfd: Any) -> None:
    node = _node(tmp_path)
    path = os.path.join(node.cfg.chain.persist_dir, channels.LAST_BOOT)
    cases = [("fifo", "not a regular file (a FIFO)"),
             (DEEP, "not JSON (nested too deeply)"),
             (b"[1]", "not a JSON object but list"),
             ("dir", "not a regular file (a directory)")]
    for what, why in cases:
        _put(path, what)
        before = os.lstat(path)
        assert _bounded(node.last_boot, [path]) is None, why
        assert _bounded(node.last_boot, [path]) is None, why  # (said once, not again)
        err = capfd.readouterr().err
        assert err.splitlines() == [f"hachain-cluster: warning: {path}: {why}: ignored"], err
        assert stat.S_IFMT(os.lstat(path).st_mode) == stat.S_IFMT(before.st_mode)
    # fields of the wrong type are left out, the rest published; 1e400 is no JSON to
    # a strict reader of the node record
    _put(path, b'{"cause": "watchdog reset", "wall": 1e400, "last_gate_failure": '
               b'{"reasons": 5}}')
    rec = _bounded(node.last_boot, [path])
    assert rec == {"cause": "watchdog reset", "wall": None, "reasons": None}
    assert capfd.readouterr().err == (f"hachain-cluster: warning: {path}: wall is inf, not a "
                                      "finite number; reasons is 5, not a list of strings: "
                                      "ignored\n")
    _put(path, json.dumps(GOOD[channels.LAST_BOOT]).encode())
    good = GOOD[channels.LAST_BOOT]
    assert _bounded(node.last_boot, [path]) == {
        "cause": good["cause"], "wall": good["wall"],
        "reasons": good["last_gate_failure"]["reasons"]}
    assert capfd.readouterr().err == ""


# --- the simulated machine ---------------------------------------------------------------

def _machine(tmp_path: Any) -> Any:
    """A simulated machine never powered on: its readers of the tickler's records."""
    from hachain.simulators.machine import SimMachine
    m = SimMachine(str(tmp_path / "chain.toml"), str(tmp_path / "m"))
    os.makedirs(m.persist_dir)
    with m._cond:  # two boots seen, the last one this boot id
        m._boots = [{"boot_id": "b-1"}, {"boot_id": "b-2"}]
    return m


BAD_RECORDS = [("fifo", "not a regular file (a FIFO)"),
               (DEEP, "not JSON (nested too deeply)"),
               (b"[1]", "not a JSON object but list"),
               ("dangling", "a dangling symbolic link")]


def test_sim_gate_note_waits_on_no_fifo_and_names_a_bad_record(tmp_path: Any) -> None:
    m = _machine(tmp_path)
    gate = os.path.join(m.persist_dir, channels.GATE_RECORD)
    for what, why in [*BAD_RECORDS, (b'{"boot_id": "b-2", "reasons": 5}',
                                     "reasons is no list")]:
        _put(gate, what)
        assert _bounded(m._gate_note, [gate]) == f"; {gate}: {why}: ignored"
    _put(gate, b'{"boot_id": "b-2", "reasons": ["restarter hung"]}')
    assert _bounded(m._gate_note, [gate]) == "; the tickler had stopped petting: restarter hung"
    _put(gate, b'{"boot_id": "b-1", "reasons": ["restarter hung"]}')  # another boot's
    assert _bounded(m._gate_note, [gate]) == ""


def test_sim_tour_waits_on_no_fifo_and_passes_over_a_bad_last_boot(
        tmp_path: Any, capsys: Any) -> None:
    from hachain.simulators.machine import tour_step
    m = _machine(tmp_path)
    last = os.path.join(m.persist_dir, channels.LAST_BOOT)
    tour = [(0.0, "explain", "")]
    for what, _ in BAD_RECORDS:
        _put(last, what)
        assert _bounded(lambda: tour_step(m, tour, 1.0), [last]) == tour  # not yet written
    # this boot's record whose gate failure is no object: explained, the reasons "?"
    _put(last, b'{"boot_id": "b-2", "cause": "watchdog reset", "last_gate_failure": ["x"]}')
    assert _bounded(lambda: tour_step(m, tour, 1.0), [last]) == []
    assert "the gate had failed with: ?" in capsys.readouterr().out
    _put(last, b'{"boot_id": "b-2", "cause": "watchdog reset", "last_gate_failure": '
               b'{"reasons": ["restarter hung"]}}')
    assert _bounded(lambda: tour_step(m, tour, 1.0), [last]) == []
    assert "the gate had failed with: restarter hung" in capsys.readouterr().out


# --- hachain clear --boot-loop ------------------------------------------------------------------

def test_clear_boot_loop_says_it_set_a_damaged_record_aside(tmp_path: Any) -> None:
    """A record whose entries have fields of the wrong type is written on without them,
    the file first set aside whole: the command says so on stderr, naming both."""
    state, persist = tmp_path / "run", tmp_path / "persist"
    state.mkdir()
    persist.mkdir()
    record = persist / bootrecord.RECORD
    raw = (b'{"version": 1, "counter": 2, "boots": [{"boot": "x", "boot_id": "b-1", '
           b'"reason": "unknown"}, {"boot": 2, "boot_id": "b-2", "started_wall": %f, '
           b'"reason": "unknown"}]}' % time.time())
    record.write_bytes(raw)
    p = hachain("clear", "--boot-loop", "--state-dir", str(state), "--persist-dir",
                str(persist))
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert p.stderr.splitlines() == [
        f"hachain: {record}: entry 1: boot is 'x', not an integer: set aside as "
        f"{bootrecord.RECORD}.corrupt, the record goes on without those values"], p.stderr
    assert p.stdout.startswith("boot loop cleared")
    assert (persist / (bootrecord.RECORD + ".corrupt")).read_bytes() == raw
    rec = bootrecord.read(str(persist))
    assert rec["boots"][-1]["boot"] == 2 and rec["boots"][-1]["cleared"] is not None
    # the record now sane: a second clear says nothing on stderr
    p = hachain("clear", "--boot-loop", "--state-dir", str(state), "--persist-dir",
                str(persist))
    assert p.returncode == 0 and p.stderr == "", (p.stdout, p.stderr)


def test_release_from_rescue_says_it_set_a_damaged_record_aside(tmp_path: Any) -> None:
    """`hachain clear NAME` of a service a rescue holds goes through bootrecord.release in
    the restarter: a damaged record it writes on is set aside with one line in its log."""
    persist = tmp_path / "persist"
    persist.mkdir()
    record = persist / bootrecord.RECORD
    raw = (b'{"version": 1, "counter": 2, "boots": [{"boot": "x", "boot_id": "b-1", '
           b'"reason": "unknown"}, {"boot": 2, "boot_id": "b-2", "reason": "unknown", '
           b'"rescue": {"held": ["web"], "released": []}}]}')
    record.write_bytes(raw)
    lines: list[str] = []
    bootrecord.release(str(persist), "b-2", "web", lines.append)
    assert len(lines) == 1 and "set aside as" in lines[0] and str(record) in lines[0], lines
    assert (persist / (bootrecord.RECORD + ".corrupt")).read_bytes() == raw
    rec = bootrecord.read(str(persist))
    assert rec["boots"][-1]["rescue"]["released"] == ["web"]


# --- hachain status --json ----------------------------------------------------------------------

def _strict(text: str) -> Any:
    def refuse(word: str) -> Any:
        raise AssertionError(f"{word} in `hachain status --json`: no JSON (RFC 8259)")
    return json.loads(text, parse_constant=refuse)


def test_status_json_is_strict_json_with_numbers_that_are_not_finite(tmp_path: Any) -> None:
    state, persist = _dirs(tmp_path)
    gate = dict(GOOD[channels.GATE_RECORD])
    last = dict(GOOD[channels.LAST_BOOT])
    # fields no reader checks: kept as they are, but for the numbers
    _put(os.path.join(persist, channels.GATE_RECORD), json.dumps(gate)[:-1].encode() +
         b', "x": 1e400, "y": [-1e400, "Infinity", {"NaN": NaN}]}')
    _put(os.path.join(persist, channels.LAST_BOOT), json.dumps(last)[:-1].encode() +
         b', "z": -Infinity}')
    chain = _strict(_status(state, persist, "--json").stdout)["chain"]
    assert chain["gate_failure"] == {**gate, "x": None, "y": [None, "Infinity", {"NaN": None}]}
    assert chain["last_boot"] == {**last, "z": None}
    assert chain["warnings"] == []


# --- more readers of the state directory -----------------------------------------------------

def test_a_heartbeat_nested_too_deeply_is_no_heartbeat(tmp_path: Any) -> None:
    """A heartbeat file is read by init, the restarter, the tickler's gate and `hachain
    status`; JSON nested too deeply there raised RecursionError out of read_heartbeat
    (hachain status: a traceback). It is a heartbeat that cannot be read: none."""
    state, persist = _dirs(tmp_path)
    hb = channels.heartbeat_path(state, "restarter")
    os.makedirs(os.path.dirname(hb))
    _put(hb, DEEP)
    assert channels.read_heartbeat(state, "restarter") is None
    assert channels.read_heartbeat(state, "restarter", regular=True) is None
    lines = _status(state, persist).stdout.splitlines()
    assert "restarter dead (no heartbeat)" in lines[0], lines
    with open(hb, "rb") as f:
        assert f.read() == DEEP


def test_the_ticklers_config_files_nested_too_deeply_are_read_anew(
        tmp_path: Any, monkeypatch: Any) -> None:
    """The tickler reads this run's running snapshot (running.json) and the tables it
    kept (config/tickler.json) before it opens the device. JSON nested too deeply in
    either raised RecursionError there: the tickler ended before it opened the device,
    at every start. Each is now one line, and the tickler pets."""
    from tests.test_state_bad_input import tickler_pets_past_its_config_files
    tickler_pets_past_its_config_files(
        tmp_path, monkeypatch, DEEP, "not JSON (nested too deeply): ignored, the "
        "configuration is read anew", "not JSON (nested too deeply): ignored, the tables "
        "are parsed anew")


def test_status_waits_on_no_fifo_as_the_cached_disk_verdict(restarter: Any) -> None:
    """`hachain status` compares the running configuration with the file on disk and
    keeps its verdict on an edited file in <state_dir>/config/disk-verdict.json. That
    cache was opened as any file: a FIFO there held `hachain status` for good (and the
    restarter, which renders it for the native front); JSON nested too deeply there gave
    a traceback. Either is now no verdict: the file is judged again."""
    r = restarter(f'[service.web]\ncommand = {svc("sleep")}\n')
    r.wait_state("web", "ready")
    with open(r.config, "a") as f:
        f.write("# edited\n")
    verdict = os.path.join(r.state_dir, channels.DISK_VERDICT)
    for what in ("fifo", DEEP):
        _put(verdict, what)
        try:
            p = hachain("status", "-c", r.config, "--state-dir", r.state_dir,
                        "--persist-dir", r.persist_dir)
        except subprocess.TimeoutExpired as e:
            raise AssertionError("hachain status hung on the disk verdict") from e
        assert "Traceback" not in p.stderr, p.stderr
        assert "the file has changed on disk since" in p.stdout, (p.stdout, p.stderr)
    assert r.proc is not None and r.proc.poll() is None


# --- the chaos harness's readers --------------------------------------------------------------

def test_chaos_torn_files_waits_on_no_fifo_and_takes_nested_json_as_torn(
        tmp_path: Any) -> None:
    """After a power cut the chaos harness reads every .json and .jsonl file under
    persist_dir to find torn writes. It opened each as any file (a FIFO there held the
    harness for good) and let RecursionError out of JSON nested too deeply."""
    from hachain.simulators.chaos_kinds import torn_files
    persist = tmp_path / "persist"
    (persist / "config").mkdir(parents=True)
    _put(str(persist / "admin.json"), b'{"web": {"want": "down"}}')
    _put(str(persist / "boots.jsonl"), b'{"boot": 1}\n' + DEEP + b"\n")
    _put(str(persist / "config" / "deep.json"), DEEP)
    _put(str(persist / "config" / "fifo.json"), "fifo")
    _put(str(persist / "dir.json"), "dir")
    found = sorted(_bounded(lambda: torn_files(str(persist)),
                            [str(persist / "config" / "fifo.json")]))
    assert [f.split(": ", 1)[0] for f in found] == [
        "boots.jsonl:2", "config/deep.json", "config/fifo.json", "dir.json"], found
    assert "nested too deeply" in found[0] and "nested too deeply" in found[1]
    assert found[2] == "config/fifo.json: unreadable: not a regular file (a FIFO)"
    assert found[3] == "dir.json: unreadable: not a regular file (a directory)"


def test_chaos_snapshot_of_a_machine_waits_on_no_fifo(tmp_path: Any) -> None:
    """The harness samples a machine (converge.snapshot) for its convergence checks: the
    heartbeats, the restarter's runtime records, admin.json and the logger's lock file,
    each opened as any file: a FIFO in any of those places held the harness for good."""
    from hachain.simulators import converge
    m = _machine(tmp_path)
    fifos = [channels.heartbeat_path(m.state_dir, "init"),
             os.path.join(m.state_dir, channels.SERVICE_RECORD_DIR, "web.json"),
             os.path.join(m.state_dir, "logger.lock"),
             os.path.join(m.persist_dir, channels.ADMIN_STATE)]
    for path in fifos:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _put(path, "fifo")
    snap = _bounded(lambda: converge.snapshot(m), fifos)
    assert snap.hb_age["init"] is None
    assert snap.records == {"web": "unreadable: [Errno 22] not a regular file (a FIFO): "
                                   f"'{fifos[1]}'"}
    assert str(snap.admin).startswith("unreadable: ") and "a FIFO" in str(snap.admin)
    assert snap.logger is None


def test_chaos_snapshot_takes_admin_json_as_the_restarter_does(tmp_path: Any) -> None:
    """A misshapen admin.json (a JSON list, an entry that is no object) is what a
    starting restarter sets aside: the snapshot says so instead of passing the list on as
    the administrator's state, which the convergence check then took for a change."""
    from hachain.simulators import converge
    m = _machine(tmp_path)
    path = os.path.join(m.persist_dir, channels.ADMIN_STATE)
    _put(path, b'{"web": {"want": "down"}}')
    assert converge.snapshot(m).admin == {"web": {"want": "down"}}
    for bad in (b'[{"web": "down"}]', b'{"web": 5}'):
        _put(path, bad)
        admin = converge.snapshot(m).admin
        assert isinstance(admin, str) and admin.startswith(f"unreadable: {path}: "), admin
        assert admin.endswith("; ignored")
    os.unlink(path)
    assert converge.snapshot(m).admin == {}


# --- the boot record's other writers say when they set it aside ---------------------------

def _damaged_record(persist: str) -> bytes:
    """A boot record with an entry of the wrong type before this boot's: what it was."""
    path = os.path.join(persist, bootrecord.RECORD)
    rec = bootrecord.read(persist)
    raw = json.dumps({**rec, "boots": [{"boot": "x", "boot_id": "b-0", "reason": "unknown"},
                                       *rec["boots"]]}).encode()
    _put(path, raw)
    return raw


def _set_aside_line(persist: str) -> str:
    return (f"{os.path.join(persist, bootrecord.RECORD)}: entry 1: boot is 'x', not an "
            f"integer: set aside as {bootrecord.RECORD}.corrupt, the record goes on without "
            "those values")


def test_the_ticklers_record_writer_says_when_it_sets_the_record_aside(
        tmp_path: Any) -> None:
    """The tickler writes this boot's reason (gate failure, shutdown, ...) with
    set_reason, which sets a damaged record aside whole before it writes: without a word
    before (it passed no log)."""
    import signal

    from tests.conftest import wait_until
    from tests.test_tickler import ForgedLayers, Rig
    rig = Rig(str(tmp_path))
    record = os.path.join(rig.persist_dir, bootrecord.RECORD)
    rig.server.start()
    try:
        with ForgedLayers(rig.state_dir, rig.sleeper.pid):
            p = rig.start_tickler()
            wait_until(lambda: (hb := rig.tickler_hb()) is not None and hb.pid == p.pid and
                       hb.extra.get("pets", 0) >= 1, READY, "the tickler to pet")
            wait_until(lambda: bootrecord.read(rig.persist_dir)["boots"], READY,
                       "this boot's entry")
            # the writer's start-up jobs are done (the entry again with the boot status,
            # then last_boot.json, which says this line): one still to come would meet
            # the damaged record first (CI, under load: nothing left for the stop)
            rig.wait_log("previous boot ended by:", READY)
            raw = _damaged_record(rig.persist_dir)
            p.send_signal(signal.SIGTERM)  # an orderly stop: the reason "shutdown"
            assert p.wait(READY) == 0, rig.log_text()[-3000:]
        assert _set_aside_line(rig.persist_dir) in rig.log_text(), rig.log_text()[-3000:]
        with open(record + ".corrupt", "rb") as f:
            assert f.read() == raw
        assert bootrecord.read(rig.persist_dir)["boots"][-1]["reason"] == bootrecord.SHUTDOWN
        assert "Traceback" not in rig.log_text()
    finally:
        rig.close()


def test_init_says_when_it_sets_the_record_aside(tmp_path: Any) -> None:
    """init writes why the boot ends when it gives up on a tickler that keeps dying
    (set_reason, in a thread of its own): a damaged record was set aside without a word."""
    from tests.conftest import end_init, wait_until
    from tests.test_state_readers import init_giving_up_on_the_tickler
    state, persist = tmp_path / "run", tmp_path / "persist"
    persist.mkdir()
    bootrecord.begin_boot(str(persist), bootrecord.current_boot_id(), time.time())
    raw = _damaged_record(str(persist))
    init, err = init_giving_up_on_the_tickler(tmp_path, state, persist)
    try:
        line = _set_aside_line(str(persist))
        wait_until(lambda: line in err.read_text(errors="replace"), READY,
                   "init's line on the record it set aside")
        assert (persist / (bootrecord.RECORD + ".corrupt")).read_bytes() == raw
        # (the line comes between the setting aside and the write: no record for a while)
        wait_until(lambda: (b := bootrecord.read(str(persist))["boots"]) and
                   b[-1]["reason"] == bootrecord.TICKLER_FAILED, READY, "the reason written")
        assert init.poll() is None
        assert "Traceback" not in err.read_text(errors="replace")
    finally:
        end_init(init)


# --- a reply on the control socket ----------------------------------------------------------

def _answer_once(path: str, reply: bytes | list[bytes]) -> tuple[Any, threading.Thread]:
    """A stream socket bound at `path` whose first client gets `reply` after its request
    (whatever it sent first), or each of a list of replies after a request each: the
    listening socket and the thread that answers (bounded by READ_TIMEOUT); the caller
    closes the one and joins the other."""
    import socket
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(READ_TIMEOUT)

    def answer() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(READ_TIMEOUT)
            try:
                for one in [reply] if isinstance(reply, bytes) else reply:
                    conn.recv(65536)
                    conn.sendall(one)
            except OSError:
                pass
    t = threading.Thread(target=answer, daemon=True)
    t.start()
    return srv, t


def test_a_control_reply_nested_too_deeply_is_a_malformed_reply(tmp_path: Any) -> None:
    """Whatever answers on <state_dir>/control.sock: a reply nested too deeply raised
    RecursionError out of client.request (every `hachain` command that asks the
    restarter: a traceback). It is a malformed reply, one line, exit 1."""
    from tests.test_cli_bad_input import one_line
    state = tmp_path / "run"
    state.mkdir()
    srv, t = _answer_once(str(state / channels.CONTROL_SOCKET), DEEP + b"\n")
    try:
        p = hachain("stop", "web", "--state-dir", str(state))
        line = one_line(p, 1)
        assert line == (f"hachain: {state / channels.CONTROL_SOCKET}: malformed reply: not "
                        "JSON (nested too deeply)"), line
    finally:
        srv.close()
        t.join(READ_TIMEOUT)


# --- hachain status --cluster -----------------------------------------------------------------

def test_status_cluster_shows_bad_node_records_without_a_traceback(tmp_path: Any) -> None:
    """`hachain status --cluster` reads each node's record from etcd. One nested too
    deeply raised RecursionError (a traceback); one with `1e400` or `Infinity` was printed
    by --json as Infinity (no JSON); one whose last_boot, reasons or owned had another
    shape raised AttributeError or TypeError in the text. Now: a record that is no JSON
    is passed over, a number that is not finite is null, a field of the wrong shape is
    left out."""
    pytest.importorskip("aetcd")
    import asyncio

    from tests.helpers.etcd import ETCD, EtcdCluster
    if not os.access(ETCD, os.X_OK):
        pytest.skip(f"needs etcd ({ETCD})")
    etcd = EtcdCluster(str(tmp_path / "etcd"), n=1)
    prefix = f"/t{os.getpid()}/"
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[chain]\nstate_dir = "{tmp_path}/run"\nheartbeat_interval = 0.1\n'
                   '[watchdog]\ndevice = "sim"\ntimeout = 2\npet_interval = 0.25\n'
                   f'[cluster]\nendpoints = ["{etcd.endpoints[0]}"]\nnode = "a"\n'
                   f'lease_ttl = 4\nmargin = 0.25\nprefix = "{prefix}"\n')
    records = {
        "deep": DEEP,
        "inf": b'{"node": "inf", "lease": 7, "renewed_wall": 1e400, "ttl": Infinity, '
               b'"last_boot": {"cause": "watchdog reset", "wall": NaN, "reasons": 5}, '
               b'"owned": {"db": {"token": 3, "since": -1e400}}}',
        "shapes": b'{"node": "shapes", "last_boot": [1], "owned": [1]}',
        "owned": b'{"node": "owned", "owned": {"db": 5}}',
    }

    async def put() -> None:
        import aetcd
        host, _, port = etcd.endpoints[0].rpartition(":")
        c = aetcd.Client(host=host, port=int(port), timeout=READ_TIMEOUT)
        try:
            for name, raw in records.items():
                await c.put(f"{prefix}node/{name}".encode(), raw)
            await c.put(f"{prefix}singleton/db".encode(), b"owned")
        finally:
            await c.close()
    etcd.start()
    try:
        asyncio.run(asyncio.wait_for(put(), READ_TIMEOUT))
        p = hachain("status", "--cluster", "--json", "-c", str(cfg))
        assert p.returncode == 0 and "Traceback" not in p.stderr, (p.stdout, p.stderr)
        v = _strict(p.stdout)
        assert sorted(v["nodes"]) == ["inf", "owned", "shapes"]
        assert v["nodes"]["inf"] == {
            "node": "inf", "lease": 7, "renewed_wall": None, "ttl": None,
            "last_boot": {"cause": "watchdog reset", "wall": None},
            "owned": {"db": {"token": 3, "since": None}}}
        assert v["nodes"]["shapes"] == {"node": "shapes"}
        assert v["nodes"]["owned"] == {"node": "owned"}
        assert v["singletons"]["db"]["owner"] == "owned"
        p = hachain("status", "--cluster", "-c", str(cfg))
        assert p.returncode == 0 and "Traceback" not in p.stderr, (p.stdout, p.stderr)
        assert "watchdog reset" in p.stdout, p.stdout
    finally:
        etcd.stop()


# --- a simulated watchdog's attributes ----------------------------------------------------------

def test_watchdog_info_on_a_sim_reply_nested_too_deeply(tmp_path: Any) -> None:
    """`hachain watchdog info -d sim:PATH` asks the socket for the device's attributes
    (one JSON line). A reply nested too deeply raised RecursionError (a traceback): it is
    a malformed reply, one line, like any other."""
    from tests.test_cli_bad_input import one_line
    path = str(tmp_path / "wd.sock")
    srv, t = _answer_once(path, b"[" * 4000 + b"\n")  # (the reply is at most 4096 bytes)
    try:
        p = hachain("watchdog", "info", "-d", f"sim:{path}")
        line = one_line(p, 1)  # (as for any malformed reply: EPROTO, and what was wrong)
        assert line == (f"hachain watchdog: sim:{path}: read attributes: malformed reply "
                        "from the watchdog simulator: not JSON (nested too deeply)"), line
    finally:
        srv.close()
        t.join(READ_TIMEOUT)
