"""`hachain logs`: the tail across rotated files, and following through copy-truncate.

Rotation is done with the restarter's own `spawn.rotate_log`, so the follower is tested
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
from hachain.restarter.spawn import rotate_log
from tests.conftest import RestarterRun, wait_until

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
    _write(os.path.join(d, "a.log"), b"one\ntw")
    assert rotate_log(d, "a", 0, 3) is True
    _write(os.path.join(d, "a.log"), b"o\nthree\n")
    assert logs.last_lines(logs.log_files(d, "a"), 2)[0] == [b"two\n", b"three\n"]


def test_real_rotation_loses_nothing_written_between_rotations(tmp_path: Any) -> None:
    d = str(tmp_path)
    expect = []
    for i in range(200):
        line = b"%04d %s\n" % (i, b"x" * 40)
        expect.append(line)
        _write(os.path.join(d, "svc.log"), line)
        rotate_log(d, "svc", 1024, 100)
    got, _ = logs.last_lines(logs.log_files(d, "svc"), None)
    assert got == expect


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


def test_follow_catches_up_from_the_rotated_copy(tmp_path: Any) -> None:
    """Read up to offset 7, then the file was rotated: the rest of it is in .1."""
    d = str(tmp_path)
    live = os.path.join(d, "w.log")
    _write(live, b"seen 1\nunseen\n")
    rotate_log(d, "w", 0, 3)
    _write(live, b"new\n")
    out: list[bytes] = []
    logs.follow(live, 7, out.append, stop=lambda: b"new\n" in b"".join(out), poll=0.01)
    assert b"".join(out) == b"unseen\nnew\n"


def test_follow_sees_a_rotation_the_live_size_hides(tmp_path: Any) -> None:
    """After the truncation the service wrote more than had been read before it: the live
    file never looks shorter, the new .1 gives the rotation away."""
    d = str(tmp_path)
    live = os.path.join(d, "w.log")
    _write(live, b"before\n")
    release = threading.Event()
    got: list[bytes] = []

    def write(b: bytes) -> None:
        got.append(b)
        if len(got) == 1:
            release.wait(10)  # hold the follower while the file is rotated under it

    done = threading.Event()
    t = threading.Thread(target=logs.follow, args=(live, 7, write, done.is_set, 0.01))
    t.start()
    try:
        _write(live, b"a1\n")
        wait_until(lambda: got, 10, "the first write")
        _write(live, b"a2\n" + b"p" * 2000 + b"\n")
        rotate_log(d, "w", 1024, 3)
        _write(live, b"b1\n" + b"q" * 50 + b"\n")  # 55 bytes > the 10 read before
        release.set()
        wait_until(lambda: b"b1\n" in b"".join(got), 10, "b1 to be followed")
    finally:
        release.set()
        done.set()
        t.join(10)
    out = b"".join(got)
    assert out == b"a1\na2\n" + b"p" * 2000 + b"\nb1\n" + b"q" * 50 + b"\n"


def test_follow_through_copy_truncate_while_writing(tmp_path: Any, follower: Any) -> None:
    d = str(tmp_path)
    live = os.path.join(d, "w.log")
    _write(live, b"before\n")
    f = follower(live, os.path.getsize(live))
    _write(live, b"a1\n")
    f.wait_for(b"a1\n")
    _write(live, b"a2\n" + b"p" * 2000 + b"\n")
    rotate_log(d, "w", 1024, 3)
    _write(live, b"b1\n")
    f.wait_for(b"b1\n")
    _write(live, b"c" * 3000 + b"\n")
    rotate_log(d, "w", 1024, 3)
    _write(live, b"q" * 5000 + b"\nd1\n")
    f.wait_for(b"d1\n")
    out = f.text()
    assert out.startswith(b"a1\n") and b"before" not in out
    for token in (b"a1\n", b"a2\n", b"b1\n", b"d1\n"):
        assert out.count(token) == 1, (token, out[:200])
    assert out.index(b"a2\n") < out.index(b"b1\n") < out.index(b"d1\n")


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
            proc.wait(5)
    assert proc.returncode == 0
