"""`hachain logs`: the tail across rotated files, and following through rotations.

Files are written and rotated with the logger's own `LogFile`, so the follower is tested
against the files the chain really produces. Waits are on content, bounded.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import logs
from hachain.logger.files import LogFile
from tests.conftest import RestarterRun, reap, wait_until

PY = sys.executable


def _write(path: str, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([PY, "-m", "hachain.logs", *args], capture_output=True, timeout=30,
                          check=False, env=env)


def test_tail_crosses_rotated_files_oldest_first(tmp_path: Any) -> None:
    d = str(tmp_path)
    for suffix, first in ((".3", 1), (".2", 4), (".1", 7), ("", 10)):
        _write(os.path.join(d, f"web.log{suffix}"),
               b"".join(b"line %d\n" % i for i in range(first, first + 3)))
    files = logs.log_files(d, "web")
    assert [os.path.basename(p) for p in files] == ["web.log.3", "web.log.2", "web.log.1",
                                                    "web.log"]
    lines, size = logs.last_lines(files, 5)
    assert lines == [b"line 8\n", b"line 9\n", b"line 10\n", b"line 11\n", b"line 12\n"]
    assert size == os.path.getsize(os.path.join(d, "web.log"))
    everything, _ = logs.last_lines(files, None)
    assert everything == [b"line %d\n" % i for i in range(1, 13)]
    assert logs.last_lines(files, 0)[0] == []
    # another service's files are not mixed in
    _write(os.path.join(d, "web2.log"), b"other\n")
    assert os.path.join(d, "web2.log") not in logs.log_files(d, "web")


def test_a_line_cut_by_rotation_is_joined(tmp_path: Any) -> None:
    d = str(tmp_path)
    lf = LogFile(d, "a", 1024, 3)
    long = b"L" * 1500 + b"\n"
    lf.append(b"one\n")
    lf.append(long)  # "one" goes to .2 whole; the long line is cut where .1 ends
    lf.append(b"three\n")
    assert os.path.getsize(os.path.join(d, "a.log.1")) == 1024
    assert logs.last_lines(logs.log_files(d, "a"), 3)[0] == [b"one\n", long, b"three\n"]


def test_real_rotation_loses_nothing_written_between_rotations(tmp_path: Any) -> None:
    d = str(tmp_path)
    lf = LogFile(d, "svc", 1024, 100)
    expect = []
    for i in range(200):
        line = b"%04d %s\n" % (i, b"x" * 40)
        expect.append(line)
        lf.append(line)
    assert lf.rotations >= 8
    got, _ = logs.last_lines(logs.log_files(d, "svc"), None)
    assert got == expect
    for p in logs.log_files(d, "svc"):  # whole lines in every file: none cut by rotation
        data = open(p, "rb").read()
        assert data.endswith(b"\n") and len(data) <= 1024


@pytest.mark.slow
def test_cli_tail_and_errors(tmp_path: Any) -> None:
    persist = tmp_path / "persist"
    (persist / "log").mkdir(parents=True)
    _write(str(persist / "log" / "db.log"), b"".join(b"db %d\n" % i for i in range(30)))
    r = _cli("db", "--persist-dir", str(persist))
    assert r.returncode == 0
    assert r.stdout.splitlines() == [b"db %d" % i for i in range(20, 30)]  # default 10
    r = _cli("db", "-n", "3", "--log-dir", str(persist / "log"))
    assert r.stdout == b"db 27\ndb 28\ndb 29\n"
    r = _cli("db", "-n", "all", "--persist-dir", str(persist))
    assert len(r.stdout.splitlines()) == 30
    # no log: one line, exit 1
    r = _cli("nope", "--persist-dir", str(persist))
    assert r.returncode == 1 and r.stdout == b""
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "nope" in err and "no log" in err
    r = _cli("db", "-n", "-2", "--persist-dir", str(persist))
    assert r.returncode == 2


def test_cli_with_config_knows_the_services(tmp_path: Any) -> None:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[chain]\nlog_dir = "{logdir}"\npersist_dir = "{tmp_path}"\n'
                   '[service.web]\ncommand = ["/bin/true"]\n'
                   '[service.db]\ncommand = ["/bin/true"]\n')
    _write(str(logdir / "web.log"), b"hello\n")
    r = _cli("web", "-c", str(cfg))
    assert (r.returncode, r.stdout) == (0, b"hello\n")
    r = _cli("wbe", "-c", str(cfg))
    assert r.returncode == 1
    assert r.stderr.decode() == "hachain logs: wbe: no such service (configured: db, web)\n"
    r = _cli("db", "-c", str(cfg))  # configured, never started
    assert r.returncode == 1 and "no log" in r.stderr.decode()
    cfg.write_text("[chain\n")
    r = _cli("web", "-c", str(cfg))
    assert r.returncode == 2 and "invalid TOML" in r.stderr.decode()


class _Follower:
    """`follow()` in a thread, collecting what it writes."""

    def __init__(self, path: str, start: int = 0) -> None:
        self.out = bytearray()
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.t = threading.Thread(target=logs.follow, args=(path, start, self.write,
                                                           self.done.is_set, 0.01))
        self.t.start()

    def write(self, b: bytes) -> None:
        with self.lock:
            self.out += b

    def text(self) -> bytes:
        with self.lock:
            return bytes(self.out)

    def wait_for(self, data: bytes, timeout: float = 10) -> None:
        wait_until(lambda: data in self.text(), timeout, f"{data!r} to be followed")

    def stop(self) -> None:
        self.done.set()
        self.t.join(10)
        assert not self.t.is_alive()


@pytest.fixture
def follower(tmp_path: Any) -> Iterator[Any]:
    made: list[_Follower] = []

    def make(path: str, start: int = 0) -> _Follower:
        f = _Follower(path, start)
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop()


def _held_follower(live: str, start: int) -> tuple[threading.Thread, threading.Event,
                                                     threading.Event, list[bytes]]:
    """follow() in a thread whose first write blocks until `release` is set."""
    release, done = threading.Event(), threading.Event()
    got: list[bytes] = []

    def write(b: bytes) -> None:
        got.append(b)
        if len(got) == 1:
            release.wait(10)  # hold the follower while the file is rotated under it

    t = threading.Thread(target=logs.follow, args=(live, start, write, done.is_set, 0.01))
    t.start()
    return t, release, done, got


@pytest.mark.parametrize("rotations", [1, 3])
def test_follow_reads_every_file_rotated_while_it_was_held(tmp_path: Any,
                                                           rotations: int) -> None:
    """The follower is busy while the live file is rotated once, or several times:
    it finishes its file, then reads each newer one, then the live file."""
    d = str(tmp_path)
    live = os.path.join(d, "w.log")
    lf = LogFile(d, "w", 1024, 5)
    lf.append(b"before\n")
    t, release, done, got = _held_follower(live, 7)
    expect = b""
    try:
        lf.append(b"a1\n")
        expect += b"a1\n"
        wait_until(lambda: got, 10, "the first write")
        for r in range(rotations):
            chunk = b"r%d " % r + b"p" * 1020 + b"\n"  # 1024: a file each
            lf.append(chunk)
            expect += chunk
        lf.append(b"end\n")
        expect += b"end\n"
        assert lf.rotations == rotations + 1  # "end" needs a new file too
        release.set()
        wait_until(lambda: b"end\n" in b"".join(got), 10, "end to be followed")
    finally:
        release.set()
        done.set()
        t.join(10)
    assert b"".join(got) == expect


def test_follow_goes_on_with_the_oldest_left_when_its_file_is_gone(tmp_path: Any) -> None:
    """More rotations than `keep` while the follower was held: what was rotated out is
    lost, the rest comes in order, nothing twice."""
    d = str(tmp_path)
    live = os.path.join(d, "w.log")
    lf = LogFile(d, "w", 1024, 1)
    t, release, done, got = _held_follower(live, 0)
    try:
        lf.append(b"first\n")
        wait_until(lambda: got, 10, "the first write")
        for r in range(4):
            lf.append(b"r%d " % r + b"p" * 1020 + b"\n")  # a file each
        lf.append(b"end\n")
        release.set()
        wait_until(lambda: b"end\n" in b"".join(got), 10, "end to be followed")
    finally:
        release.set()
        done.set()
        t.join(10)
    # r0..r2 were rotated out of existence meanwhile
    assert b"".join(got) == b"first\nr3 " + b"p" * 1020 + b"\nend\n"


def test_follow_through_rotations_while_writing(tmp_path: Any, follower: Any) -> None:
    d = str(tmp_path)
    live = os.path.join(d, "w.log")
    lf = LogFile(d, "w", 1024, 3)
    lf.append(b"before\n")
    f = follower(live, os.path.getsize(live))
    lf.append(b"a1\n")
    f.wait_for(b"a1\n")
    expect = b"a1\n"
    for i in range(40):
        line = b"%03d %s\n" % (i, b"x" * 60)
        lf.append(line)
        expect += line
        if i % 10 == 9:
            f.wait_for(line)
    assert lf.rotations >= 2
    assert f.text() == expect


def test_follow_waits_for_a_replaced_or_missing_file(tmp_path: Any, follower: Any) -> None:
    live = str(tmp_path / "r.log")
    _write(live, b"old\n")
    f = follower(live, 0)
    f.wait_for(b"old\n")
    os.unlink(live)
    _write(live, b"new\n")
    f.wait_for(b"new\n")
    assert f.text() == b"old\nnew\n"


def _read_until(proc: subprocess.Popen[bytes], data: bytes, timeout: float = 15) -> bytes:
    assert proc.stdout is not None
    buf = b""
    deadline = time.monotonic() + timeout
    while data not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            raise AssertionError(f"{data!r} not followed within {timeout} s; got {buf!r}")
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            raise AssertionError(f"logs -f exited early: {buf!r}")
        buf += chunk
    return buf


def test_cli_follow_of_a_real_service(restarter: Any) -> None:
    run: RestarterRun = restarter(
        "[service.echo]\ncommand = \"echo started; exec sleep 3600\"\nshell = true\n")
    run.wait_state("echo", "ready")
    logdir = os.path.join(run.persist_dir, "log")
    wait_until(lambda: os.path.exists(os.path.join(logdir, "echo.log")), 10, "echo.log")
    proc = subprocess.Popen([PY, "-m", "hachain.logs", "echo", "-f", "-c", run.config],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _read_until(proc, b"started\n")
        _write(os.path.join(logdir, "echo.log"), b"appended by the test\n")
        _read_until(proc, b"appended by the test\n")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            reap(proc, "hachain logs -f")
    assert proc.returncode == 0


def test_copies_above_log_keep_are_removed_and_keep_0_keeps_none(tmp_path: Any) -> None:
    d = str(tmp_path)
    for n in range(1, 6):
        _write(os.path.join(d, f"a.log.{n}"), b"old %d\n" % n)
    lf = LogFile(d, "a", 1024, 4)  # a larger log_keep before: .5 goes
    assert sorted(os.listdir(d)) == ["a.log.1", "a.log.2", "a.log.3", "a.log.4"]
    lf.configure(1024, 2)  # a reload lowered it
    assert sorted(os.listdir(d)) == ["a.log.1", "a.log.2"]
    z = LogFile(d, "z", 1024, 0)
    for _ in range(3):
        z.append(b"z" * 1000 + b"\n")
    assert sorted(n for n in os.listdir(d) if n.startswith("z")) == ["z.log"]
    assert os.path.getsize(os.path.join(d, "z.log")) == 1001


def test_the_logger_imports_only_stdlib_channels_and_itself() -> None:
    """It runs beside every service for the chain's life: nothing it does not need."""
    from tests.test_layering import files, imports_of
    for f in files("logger"):
        for m in imports_of(f):
            assert m.split(".")[0] in sys.stdlib_module_names or m == "__future__" or \
                m == "hachain.channels" or m.startswith("hachain.logger"), f"{f} imports {m}"


def test_a_line_written_in_two_pieces_is_not_split_by_a_rotation(tmp_path: Any) -> None:
    """The file has room for the first piece of a line but not for the whole line: held
    back until its end came, the line goes whole into the next file."""
    from hachain.logger.main import take_lines
    d = str(tmp_path)
    lf = LogFile(d, "a", 1024, 2)
    held = b""
    for piece in (b"x" * 993 + b"\n", b"first half, ", b"second half of a long line\n", b"next\n"):
        out, held = take_lines(held, piece)
        lf.append(out)
    assert held == b""
    assert open(os.path.join(d, "a.log.1"), "rb").read() == b"x" * 993 + b"\n"
    assert open(os.path.join(d, "a.log"), "rb").read() == b"first half, second half of a long line\nnext\n"
    # a naive writer would have split it: the first half fits in the old file
    naive = LogFile(str(tmp_path / "naive"), "a", 1024, 2)
    for piece in (b"x" * 993 + b"\n", b"first half, ", b"second half of a long line\n"):
        naive.append(piece)
    assert open(naive.path + ".1", "rb").read().endswith(b"first half, ")
    # an unfinished line longer than HOLD_MAX is not held
    assert take_lines(b"", b"y" * 5000) == (b"y" * 5000, b"")
    assert take_lines(b"ab", b"c\nde") == (b"abc\n", b"de")


def test_the_writer_joins_consecutive_output_of_a_service_and_keeps_the_order() -> None:
    """The logger's writing thread takes what was queued at once; consecutive output of
    one service with the same limits becomes one write, and nothing moves past a close
    or another service's output."""
    import collections

    from hachain.logger.writer import _coalesced
    jobs = collections.deque([("a", 1, 2, b"x"), ("a", 1, 2, b"y"), ("a", 1, 2, None),
                              ("a", 1, 2, b"z"), ("b", 1, 2, b"q"), ("a", 1, 2, b"w"),
                              ("a", 9, 2, b"v"), ("b", 1, 2, b""), ("b", 1, 2, b"r"),
                              ("b", 1, 2, b"s")])
    assert _coalesced(jobs) == [("a", 1, 2, b"xy"), ("a", 1, 2, None), ("a", 1, 2, b"z"),
                                ("b", 1, 2, b"q"), ("a", 1, 2, b"w"), ("a", 9, 2, b"v"),
                                ("b", 1, 2, b""), ("b", 1, 2, b"rs")]


def test_openings_and_closings_never_pile_up_in_the_writer(tmp_path: Any) -> None:
    """A restart of a silent service queues a closing and an opening: they wait for
    output (no thread woken per restart), but never pile up past LAZY_MAX."""
    from hachain.logger import writer
    lines: list[str] = []
    w = writer.Writer(str(tmp_path), lines.append)
    for _ in range(writer.LAZY_MAX // 2):
        w.put("quiet", 1024, 2, None)
        w.put("quiet", 1024, 2, b"")
    wait_until(lambda: not w.jobs and w.busy_since is None, 30, "the writer to take them")
    assert "quiet" in w.files and not lines
    w.put("loud", 1024, 2, b"one line\n")
    assert w.flush(30)
    assert (tmp_path / "loud.log").read_bytes() == b"one line\n"
    w.close_all()
