"""Heartbeat files (hachain.channels): written in place with a CRC, read back whole.

A writer process beats as fast as it can while this process reads: every read must give
either a complete record or None (a torn read detected by the CRC and retried), never a
record with mixed fields.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time

import pytest

from hachain import channels


def _beat_fast(state_dir: str, seconds: float) -> None:
    w = channels.HeartbeatWriter(state_dir, "x")
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        i += 1
        # extra mirrors seq, and its length varies, so a mixed record would show
        w.beat({"copy": i, "pad": "z" * (i % 7)})


def test_record_is_plain_json_with_a_crc_and_keeps_its_size(tmp_path):
    w = channels.HeartbeatWriter(str(tmp_path), "restarter", restarts=2)
    w.beat({"lag": 0.001})
    path = channels.heartbeat_path(str(tmp_path), "restarter")
    raw = open(path, "rb").read()
    d = json.loads(raw)  # trailing padding is whitespace: any JSON reader copes
    assert d["layer"] == "restarter" and d["seq"] == 1 and d["restarts"] == 2
    assert set(d) >= {"crc", "pid", "mono", "started_mono", "extra"}
    ino, size = os.stat(path).st_ino, os.stat(path).st_size
    w.beat({"lag": 0.002})
    w.beat({})  # shorter: padded to the same size, the same inode (written in place)
    st = os.stat(path)
    assert (st.st_ino, st.st_size) == (ino, size)
    hb = channels.read_heartbeat(str(tmp_path), "restarter")
    assert hb is not None and hb.seq == 3 and hb.extra == {}


def test_growing_record_and_removed_file(tmp_path):
    w = channels.HeartbeatWriter(str(tmp_path), "init")
    w.beat({})
    w.beat({"children": {f"c{i}": {"pid": i} for i in range(40)}})  # past the slot
    hb = channels.read_heartbeat(str(tmp_path), "init")
    assert hb is not None and hb.seq == 2 and len(hb.extra["children"]) == 40
    os.unlink(channels.heartbeat_path(str(tmp_path), "init"))
    w.beat({})  # the writer notices its file is gone and makes a new one
    hb = channels.read_heartbeat(str(tmp_path), "init")
    assert hb is not None and hb.seq == 3


def test_corrupt_record_reads_as_missing(tmp_path):
    w = channels.HeartbeatWriter(str(tmp_path), "init")
    w.beat({"a": 1})
    path = channels.heartbeat_path(str(tmp_path), "init")
    raw = bytearray(open(path, "rb").read())
    raw[raw.index(b'"a": 1') + 5] = ord("7")  # still valid JSON, but not what was written
    open(path, "wb").write(bytes(raw))
    assert channels.read_heartbeat(str(tmp_path), "init") is None
    # a record without a CRC (an older writer, a hand-written test file) is accepted
    channels.write_json(path, {"layer": "init", "pid": 1, "mono": 1.0, "started_mono": 0.5,
                               "seq": 9, "restarts": 0, "extra": {}})
    hb = channels.read_heartbeat(str(tmp_path), "init")
    assert hb is not None and hb.seq == 9


@pytest.mark.slow
def test_reads_racing_a_fast_writer_are_never_mixed(tmp_path):
    proc = multiprocessing.get_context("fork").Process(
        target=_beat_fast, args=(str(tmp_path), 3.0), daemon=True)
    proc.start()
    try:
        path = channels.heartbeat_path(str(tmp_path), "x")
        good = torn = 0
        end = time.monotonic() + 3.0
        while time.monotonic() < end and proc.is_alive():
            try:
                raw = channels.read_small(path)
            except FileNotFoundError:
                continue
            hb = channels.parse_heartbeat(raw)
            if hb is None:
                torn += 1
                continue
            good += 1
            assert hb.extra["copy"] == hb.seq, raw
            assert hb.extra["pad"] == "z" * (hb.seq % 7), raw
        assert good > 1000, (good, torn)
    finally:
        proc.kill()
        proc.join(5)


def _record(tmp_path, layer: str) -> dict:
    return json.loads(open(channels.heartbeat_path(str(tmp_path), layer), "rb").read())


def test_steady_extra_is_written_as_it_is_at_each_beat(tmp_path):
    """The writer keeps the last `extra`'s text while the next compares equal: a caller
    that changes an object it passed before, and passes again, must see the change."""
    w = channels.HeartbeatWriter(str(tmp_path), "restarter")
    critical = {"db": {"ok": True, "reason": ""}}
    w.beat({"critical": critical, "services": 1}, {"lag": 0.0012})
    critical["db"]["ok"] = False  # the same objects, changed in place
    w.beat({"critical": critical, "services": 1}, {"lag": 0.0007})
    d = _record(tmp_path, "restarter")
    assert d["seq"] == 2
    assert d["extra"] == {"critical": {"db": {"ok": False, "reason": ""}}, "services": 1,
                          "lag": 0.0007}
    w.beat({"critical": critical, "services": 1})  # unchanged: the kept text, no volatile
    assert _record(tmp_path, "restarter")["extra"] == {
        "critical": {"db": {"ok": False, "reason": ""}}, "services": 1}
    w.beat({}, {"lag": 0.5})
    assert _record(tmp_path, "restarter")["extra"] == {"lag": 0.5}
    hb = channels.read_heartbeat(str(tmp_path), "restarter")
    assert hb is not None and hb.seq == 4 and hb.extra == {"lag": 0.5}


def test_writer_record_is_the_bytes_heartbeat_bytes_gives(tmp_path):
    """The writer encodes the fixed fields once; the record must stay what
    heartbeat_bytes makes of the same heartbeat (sorted keys, floats as repr)."""
    for steady in (True, False):
        w = channels.HeartbeatWriter(str(tmp_path), "tick\"ler", restarts=3, steady=steady)
        for i in range(20):
            w.beat({"a": i / 7, "b": [None, "é\n"], "c": {"z": i % 2 == 0, "y": float("inf")}})
            raw = open(w.path, "rb").read()
            hb = channels.parse_heartbeat(raw)
            assert hb is not None and hb.seq == i + 1 and hb.restarts == 3
            assert raw.rstrip() == channels.heartbeat_bytes(hb).rstrip()
        w.close()


def test_reader_follows_the_writer_and_a_replaced_or_removed_file(tmp_path):
    sd = str(tmp_path)
    w = channels.HeartbeatWriter(sd, "init")
    r = channels.HeartbeatReader(sd, "init")
    assert r.read() is None  # no file yet
    w.beat({"n": 1})
    hb = r.read()
    assert hb is not None and hb.extra == {"n": 1} and r.fd is not None
    fd = r.fd
    w.beat({"n": 2})
    hb = r.read()
    assert hb is not None and hb.extra == {"n": 2} and r.fd == fd  # the kept file
    # the writer stalls and the file is replaced under it (a new inode at the path):
    # what the kept file holds did not move on, so the path is read again
    other = channels.HeartbeatWriter(str(tmp_path / "elsewhere"), "init")
    other.beat({"n": "other"})
    os.rename(other.path, w.path)
    hb = r.read()
    assert hb is not None and hb.extra == {"n": "other"}
    # the path removed: as read_heartbeat, nothing
    os.unlink(w.path)
    assert r.read() is None and channels.read_heartbeat(sd, "init") is None
    w.beat({"n": 3})  # the writer makes it again
    hb = r.read()
    assert hb is not None and hb.extra == {"n": 3} and hb.seq == 3
    # a record grown past the reader's first read size is read whole
    w.beat({"children": {f"c{i}": {"pid": i, "pad": "x" * 200} for i in range(60)}})
    hb = r.read()
    assert hb is not None and len(hb.extra["children"]) == 60 and r.cap > 8192
    # a stale record is no fresh one: the same record twice reads again from the path,
    # and gives it (what read_heartbeat gives) rather than nothing
    again = r.read()
    assert again is not None and again.seq == hb.seq
    r.close()
    w.close()


def test_reader_parses_extra_again_only_when_its_text_changed(tmp_path):
    sd = str(tmp_path)
    w = channels.HeartbeatWriter(sd, "restarter")
    r = channels.HeartbeatReader(sd, "restarter")
    seen = []
    for i, extra in enumerate([{"a": 1, "n": [1, 2]}, {"a": 1, "n": [1, 2]},
                               {"a": 2, "n": [1, 2]}, {"a": 2, "n": [1, 2]}, {}]):
        w.beat(extra, {"lag": i / 1000})
        hb = r.read()
        assert hb is not None and hb.seq == i + 1 and hb.layer == "restarter"
        assert hb == channels.read_heartbeat(sd, "restarter")  # as a whole read gives
        assert hb.extra == {**extra, "lag": i / 1000}
        seen.append(hb)
    for hb in seen:  # a reader's change to one heartbeat's extra stays there
        hb.extra["a"] = 99
    w.beat({}, {"lag": 0.004})  # the text of the last one again: from the kept extra
    hb = r.read()
    assert hb is not None and hb.extra == {"lag": 0.004} and hb.seq == 6
    assert seen[1].extra["n"] == [1, 2]
    # a record whose text no longer matches its CRC is no heartbeat, kept text or not
    raw = bytearray(open(w.path, "rb").read())
    raw[raw.index(b'"seq": ') + 7] = ord("7")
    open(w.path, "r+b").write(bytes(raw))
    assert r.read() is None
    # one without a CRC (an older writer, a file written by hand) reads as before
    channels.write_json(w.path, {"layer": "restarter", "pid": 1, "mono": 1.0,
                                 "started_mono": 0.5, "seq": 9, "restarts": 0,
                                 "extra": {"a": 2, "n": [1, 2]}})
    hb = r.read()
    assert hb is not None and hb.seq == 9 and hb.extra == {"a": 2, "n": [1, 2]}
    r.close()
    w.close()


def test_reader_reads_what_is_at_the_path_even_while_the_open_file_moves_on(tmp_path):
    """The writer keeps beating into its file, which still has a link elsewhere, while
    the path names another file: a FIFO nobody writes (a read that never returns, as
    chaos's io-stall makes with a bind mount). The reader must open the path, and hang
    there, not go on reading the file it holds (which moves on)."""
    sd = str(tmp_path)
    w = channels.HeartbeatWriter(sd, "init")
    r = channels.HeartbeatReader(sd, "init")
    w.beat({"n": 1})
    w.beat({"n": 2})
    assert (hb := r.read()) is not None and hb.extra == {"n": 2}
    os.link(w.path, str(tmp_path / "other-link"))  # the writer's file lives on
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    os.rename(fifo, w.path)
    w.beat({"n": 3})  # still into its own file (its link count is not 0)
    assert channels.read_json(str(tmp_path / "other-link"))["extra"] == {"n": 3}
    box: list = []
    t = threading.Thread(target=lambda: box.append(r.read()), daemon=True)
    t.start()
    t.join(0.5)
    assert t.is_alive() and box == []  # blocked in the open of the FIFO
    fd = os.open(w.path, os.O_WRONLY | os.O_NONBLOCK)  # a writer: the open returns,
    os.close(fd)  # and the read finds nothing there
    t.join(10)
    assert box == [None]
