"""Bad input on the chain's sockets, sent to a real restarter (and its logger): the control
socket, the sd_notify socket and the logger's hand-over socket. The rule each case holds:
refused with a one-line error (a reply where one is possible, a log line naming what and
from where), and nothing lost — the services keep running, the restarter keeps answering,
no traceback, no descriptor kept."""

from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hachain import channels, client
from tests.conftest import PY, RestarterRun, svc, wait_until

# Generous bounds: a loaded CI host must stretch them, not fail them. A stalled control
# connection is closed REQUEST_TIMEOUT after it was accepted, at the next heartbeat.
REPLY_TIMEOUT = 30.0
CLOSE_TIMEOUT = channels.REQUEST_TIMEOUT + 20.0

# A notify service that forwards every datagram it receives on the socket named by its
# argument (descriptors included) to $NOTIFY_SOCKET: what the test sends there reaches the
# restarter from a process of the service.
RELAY = r"""
import array, os, socket, sys
r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
r.bind(sys.argv[1])
out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
target = os.environ["NOTIFY_SOCKET"]
out.sendto(b"READY=1", target)
while True:
    data, fds, _f, _a = socket.recv_fds(r, 1 << 16, 16)
    if fds:  # (socket.send_fds ignores its address before Python 3.12)
        out.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
                    0, target)
    else:
        out.sendto(data, target)
    for fd in fds:
        os.close(fd)
"""


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def log_text(r: RestarterRun) -> str:
    with open(r.log, errors="replace") as f:
        return f.read()


def assert_clean_log(r: RestarterRun) -> None:
    text = log_text(r)
    assert "Traceback" not in text, text[-3000:]
    assert "error: handling" not in text, text[-3000:]


def connect(path: str) -> socket.socket:
    """A control connection, made as client.request makes it: a full backlog (a loaded
    host, 200 idle clients) is waited out up to REPLY_TIMEOUT instead of failing."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                 struct.pack("ll", int(REPLY_TIMEOUT), 0))
    try:
        s.connect(path)
    except BaseException:
        s.close()
        raise
    s.settimeout(REPLY_TIMEOUT)
    return s


def exchange(r: RestarterRun, data: bytes, fds: tuple[int, ...] = ()) -> bytes:
    """Send `data` (with `fds`) on a fresh control connection; everything read back."""
    s = connect(os.path.join(r.state_dir, channels.CONTROL_SOCKET))
    try:
        if fds:
            socket.send_fds(s, [data], list(fds))
        else:
            s.sendall(data)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf
    except OSError:
        return b""
    finally:
        s.close()


def refused(rep: bytes) -> str:
    """The error of a one-line refusal."""
    assert rep.endswith(b"\n") and rep.count(b"\n") == 1, rep[:300]
    obj = json.loads(rep)
    assert obj["ok"] is False and isinstance(obj["error"], str), obj
    assert "\n" not in obj["error"] and len(obj["error"]) < 400, obj
    return str(obj["error"])


def closed_everywhere(rfd: int) -> bool:
    """The pipe read end `rfd` sees EOF: no process holds a write end any more."""
    if not select.select([rfd], [], [], 0)[0]:
        return False
    return os.read(rfd, 1) == b""


@pytest.fixture
def one(restarter: Callable[..., RestarterRun]) -> Iterator[tuple[RestarterRun, int]]:
    r = restarter(f"""
[service.a]
command = {svc("sleep")}
""")
    yield r, r.wait_state("a", "ready")["pid"]


# --- the control socket ---------------------------------------------------------------------

def _logger_connection(r: RestarterRun) -> socket.socket:
    """A connection to the logger's hand-over socket, once it is there: the logger names
    itself in its lock file before it binds the socket (a connect in between failed in
    CI with ENOENT)."""
    path = os.path.join(r.state_dir, channels.LOGGER_SOCKET)

    def attempt() -> socket.socket | None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.settimeout(REPLY_TIMEOUT)
        try:
            s.connect(path)
            return s
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            return None
    return wait_until(attempt, REPLY_TIMEOUT, f"the logger listening on {path}")


def test_control_requests_of_wrong_shape_get_one_line_refusals(one: tuple[RestarterRun, int]
                                                               ) -> None:
    r, pid = one
    depth = channels.MAX_REQUEST_BYTES // 2 - 10
    cases: list[tuple[bytes, str]] = [
        (b"[" * depth + b"]" * depth + b"\n", "nested too deeply"),  # was: no reply
        (b'{"op":"status","x":' + b"[" * depth + b"\n", "nested too deeply"),
        (b'{"op":"status","x":' + b'{"a":' * (depth // 5) + b"\n", "nested too deeply"),
        (b'{"op":' + b"9" * 60000 + b"}\n", "digits"),
        (b'{"op":"start","name":12}\n', "no string 'name'"),
        (b'{"op":["status"]}\n', "no string 'op'"),
        (b'{"op":"status"}\xff\xfe\n', "not a JSON object"),
        (b'\xc3\x28\n', "not a JSON object"),
        (json.dumps({"op": "status-doc", "pidns": os.readlink("/proc/self/ns/pid"),
                     "persist_dir": "/tmp/\x00x"}).encode() + b"\n",
         "another persist_dir"),
        (b'{"op":"status-doc","pidns":5,"json":"yes"}\n', "another PID namespace"),
    ]
    for data, want in cases:
        err = refused(exchange(r, data))
        assert want in err, (data[:60], err)
    assert r.svc("a")["pid"] == pid
    assert_clean_log(r)


def test_control_stalled_idle_huge_and_rude_clients_lose_nothing(
        one: tuple[RestarterRun, int]) -> None:
    r, pid = one
    assert r.proc is not None
    rpid = r.proc.pid
    base = fd_count(rpid)
    path = os.path.join(r.state_dir, channels.CONTROL_SOCKET)
    held: list[socket.socket] = []
    try:
        for i in range(200):  # idle, never closing; a fifth send half a request
            s = connect(path)
            held.append(s)
            if i % 5 == 0:
                s.sendall(b'{"op": "sta')
        t0 = time.monotonic()
        st = client.request(r.state_dir, {"op": "status"}, timeout=REPLY_TIMEOUT)
        assert st["ok"] and st["services"]["a"]["pid"] == pid, st
        assert time.monotonic() - t0 < REPLY_TIMEOUT
        # Many MB with no newline: refused once over the limit, the connection closed.
        big = connect(path)
        held.append(big)
        sent = 0
        try:
            while sent < 8 << 20:
                sent += big.send(b"x" * (1 << 20))
        except OSError:
            pass  # closed by the restarter after its refusal
        rep = b""
        try:
            while not rep.endswith(b"\n"):
                chunk = big.recv(65536)
                if not chunk:
                    break
                rep += chunk
        except OSError:
            pass
        if rep:
            assert "request too large" in refused(rep)
        # Clients gone before the reply: nothing for the restarter to trip on.
        for _ in range(50):
            with connect(path) as s:
                s.sendall(b'{"op":"status"}\n')
        assert r.ping()
        # Every stalled connection is closed by the restarter within its bound.
        pending = set(held[:-1])

        def all_closed() -> bool:
            for s in [s for s in pending if select.select([s], [], [], 0)[0]]:
                try:
                    data = s.recv(4096)
                except ConnectionResetError:  # closed with part of its request unread
                    data = b""
                if data == b"":
                    pending.discard(s)
                else:  # past MAX_CONNS: the oldest are closed with a word
                    assert b"this was the oldest" in data, data
            return not pending
        wait_until(all_closed, CLOSE_TIMEOUT, "the stalled connections to be closed")
    finally:
        for s in held:
            s.close()
    wait_until(lambda: fd_count(rpid) <= base + 2, CLOSE_TIMEOUT,
               "the restarter's descriptors back to their number before")
    assert r.svc("a")["pid"] == pid
    assert_clean_log(r)


def test_control_descriptors_sent_with_a_request_are_closed(one: tuple[RestarterRun, int]
                                                            ) -> None:
    r, pid = one
    assert r.proc is not None
    base = fd_count(r.proc.pid)
    for data in (b'{"op":"ping"}\n', b"garbage\n", b'{"op":"sta'):
        rfd, wfd = os.pipe()
        try:
            extra = [os.dup(wfd) for _ in range(20)]
            rep = exchange(r, data, (wfd, *extra))
            if data.endswith(b"\n"):
                assert rep.count(b"\n") == 1
            os.close(wfd)
            for fd in extra:
                os.close(fd)
            wait_until(lambda fd=rfd: closed_everywhere(fd), CLOSE_TIMEOUT,  # type: ignore
                       f"the descriptors sent with {data!r} to be closed")
        finally:
            os.close(rfd)
    assert fd_count(r.proc.pid) <= base + 2
    assert r.svc("a")["pid"] == pid
    assert_clean_log(r)


# --- the notify socket ----------------------------------------------------------------------

@pytest.fixture
def relayed(restarter: Callable[..., RestarterRun], tmp_path: Any
            ) -> Iterator[tuple[RestarterRun, Callable[..., None]]]:
    script = tmp_path / "relay.py"
    script.write_text(RELAY)
    relay = str(tmp_path / "relay.sock")
    r = restarter(f"""
[service.relay]
command = ["{PY}", "{script}", "{relay}"]
ready = "notify"
[service.a]
command = {svc("sleep")}
""")
    r.wait_state("relay", "ready")
    out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    out.settimeout(REPLY_TIMEOUT)

    def send(data: bytes, fds: tuple[int, ...] = ()) -> None:
        if fds:
            out.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                  array.array("i", fds))], 0, relay)
        else:
            out.sendto(data, relay)
    try:
        yield r, send
    finally:
        out.close()


def status_text(r: RestarterRun) -> str:
    return str(r.svc("relay")["status_text"])


def test_notify_bad_datagrams_from_a_service_are_refused_and_the_rest_read(
        relayed: tuple[RestarterRun, Callable[..., None]]) -> None:
    r, send = relayed
    pid, apid = r.svc("relay")["pid"], r.svc("a")["pid"]
    bad = [b"\x00\xff\xfe garbage", b"x" * 10000, b"", b"lower=case", b"NOEQUALS",
           b"MAINPID=1",  # a process outside the service
           b"MAINPID=99999999999999999999",  # was: OverflowError, a traceback
           b"MAINPID=-5", b"MAINPID=0", b"MAINPID=\xd9\xa1\xd9\xa2",
           b"EXTEND_TIMEOUT_USEC=" + b"9" * 400,  # was: OverflowError, a traceback
           b"EXTEND_TIMEOUT_USEC=-5000000", b"EXTEND_TIMEOUT_USEC=nan",
           b"WATCHDOG=1\nSTATUS=" + b"s" * 3000]
    for i, data in enumerate(bad):
        send(data)
        send(f"STATUS=mark-{i}".encode())  # read in the same round as the bad one, or after
        wait_until(lambda i=i: status_text(r) == f"mark-{i}", REPLY_TIMEOUT,  # type: ignore
                   f"the datagram after {data[:40]!r}")
    st = r.status()
    assert st["relay"]["pid"] == pid and st["relay"]["state"] == "ready"
    assert st["a"]["pid"] == apid
    text = log_text(r)
    assert "relay: bad notify message: oversized datagram" in text
    assert "relay: MAINPID=1 is not a process of this service: ignored" in text
    assert "relay: MAINPID='99999999999999999999' is not a pid: ignored" in text
    assert "relay: EXTEND_TIMEOUT_USEC='-5000000' is not a number of microseconds: " \
        "ignored" in text
    assert_clean_log(r)


def test_notify_descriptors_are_closed_and_strangers_ignored(
        relayed: tuple[RestarterRun, Callable[..., None]]) -> None:
    r, send = relayed
    assert r.proc is not None
    base = fd_count(r.proc.pid)
    for i, data in enumerate((b"FDSTORE=1\nFDNAME=x", b"STATUS=fds", b"")):
        rfd, wfd = os.pipe()
        try:
            dup = os.dup(wfd)
            send(data, (wfd, dup))
            os.close(wfd)
            os.close(dup)
            send(f"STATUS=fd-{i}".encode())
            wait_until(lambda i=i: status_text(r) == f"fd-{i}", REPLY_TIMEOUT,  # type: ignore
                       "the datagram after one with descriptors")
            wait_until(lambda fd=rfd: closed_everywhere(fd), CLOSE_TIMEOUT,  # type: ignore
                       f"the descriptors sent with {data!r} to be closed")
        finally:
            os.close(rfd)
    # From a process of no service (this test): one line, and nothing changes.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.sendto(b"READY=1\nSTATUS=stranger", os.path.join(r.state_dir,
                                                             channels.NOTIFY_SOCKET))
    finally:
        s.close()
    wait_until(lambda: f"(READY,STATUS) from pid {os.getpid()} that belongs to no service"
               in log_text(r), REPLY_TIMEOUT, "the stranger's message to be logged")
    assert status_text(r) == "fd-2"
    assert fd_count(r.proc.pid) <= base + 2
    assert_clean_log(r)


def test_notify_flood_from_one_service_does_not_starve_the_loop(
        relayed: tuple[RestarterRun, Callable[..., None]]) -> None:
    r, send = relayed
    n = 3000
    errors: list[BaseException] = []

    def flood() -> None:
        try:
            for i in range(n):
                send(f"STATUS=flood-{i}\nWATCHDOG=1".encode())
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)
    t = threading.Thread(target=flood)
    t.start()
    try:
        answered = 0
        while t.is_alive() or answered < 3:
            t0 = time.monotonic()
            assert client.request(r.state_dir, {"op": "ping"}, timeout=REPLY_TIMEOUT)["ok"]
            assert time.monotonic() - t0 < REPLY_TIMEOUT
            answered += 1
    finally:
        t.join(60)
    assert not errors, errors
    wait_until(lambda: status_text(r) == f"flood-{n - 1}", REPLY_TIMEOUT, "the last datagram")
    r.beats(2)
    assert_clean_log(r)


# --- the logger's hand-over socket ----------------------------------------------------------

def test_logger_handover_socket_garbage_and_a_stalled_client(
        restarter: Callable[..., RestarterRun]) -> None:
    r = restarter(f"""
[service.a]
command = {svc("sleep")}
""")
    r.wait_state("a", "ready")
    lpid = wait_until(r.logger_pid, REPLY_TIMEOUT, "the logger's pid")
    s = _logger_connection(r)
    try:
        try:
            s.send(b"\xff" * 1000)  # garbage, then stall without reading or closing
        except OSError:
            pass  # (the logger may have handed over and closed already: it reads nothing)
        r.beats(3)
        assert channels.pid_alive(lpid) and r.logger_pid() == lpid
        # It got the sockets (root may), but the logger still follows the restarter (was:
        # it followed this test's pid instead, and took its exit for the restarter's).
        assert r.proc is not None
        rpid = r.proc.pid
        wait_until(lambda: f"sockets handed over to pid {os.getpid()}, which is not the "
                   f"chain's restarter (restarter.lock names pid {rpid}): still "
                   f"following pid {rpid}" in log_text(r), REPLY_TIMEOUT,
                   "the logger's line about the hand-over")
    finally:
        s.close()
    assert r.ping()
    assert_clean_log(r)


# --- a full listen backlog ------------------------------------------------------------------

def _in_connect(tid: int) -> bool:
    """Thread `tid` of this process sleeps in connect(2) (x86_64 42, aarch64 203)."""
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            nr = f.read().split()[0]
    except (OSError, IndexError):
        return False
    return nr in ("42", "203")


def test_client_waits_for_room_in_a_full_backlog(one: tuple[RestarterRun, int]) -> None:
    """200 idle connections fill the backlog while the restarter is stopped; `hachain
    status` (client.request) waits for room within its timeout (was: 'cannot connect:
    Resource temporarily unavailable' at once)."""
    r, pid = one
    assert r.proc is not None
    path = os.path.join(r.state_dir, channels.CONTROL_SOCKET)
    held: list[socket.socket] = []
    got: list[Any] = []
    tid: list[int] = []

    def ask() -> None:
        tid.append(threading.get_native_id())
        try:
            got.append(client.request(r.state_dir, {"op": "ping"}, timeout=CLOSE_TIMEOUT))
        except client.ControlError as e:
            got.append(e)
    t = threading.Thread(target=ask)
    os.kill(r.proc.pid, signal.SIGSTOP)
    try:
        while True:  # until the backlog is full
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            try:
                s.connect(path)
            except BlockingIOError:
                s.close()
                break
            held.append(s)
            assert len(held) < 10000
        t.start()
        wait_until(lambda: got or (tid and _in_connect(tid[0])), REPLY_TIMEOUT,
                   "the client to wait in connect()")
    finally:
        os.kill(r.proc.pid, signal.SIGCONT)
        t.join(CLOSE_TIMEOUT + 10)
        for s in held:
            s.close()
    assert len(got) == 1 and isinstance(got[0], dict) and got[0]["ok"], got
    assert r.svc("a")["pid"] == pid


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_control_many_half_requests_hold_bounded_memory(one: tuple[RestarterRun, int]) -> None:
    """2000 clients each send 60 KiB of a request and stall: the restarter holds at most
    MAX_CONNS of them (the oldest get a one-line reply and are closed), so its memory
    stays bounded (was: every one kept, +120 MB RSS)."""
    import resource

    from hachain.restarter.control import MAX_CONNS
    r, pid = one
    assert r.proc is not None
    rpid = r.proc.pid
    n = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < n + 200:
        pytest.skip(f"this test needs {n + 200} descriptors (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, n + 200), hard))
    path = os.path.join(r.state_dir, channels.CONTROL_SOCKET)
    before, fds_before = rss_kb(rpid), fd_count(rpid)
    held: list[socket.socket] = []
    try:
        for _ in range(n):
            s = connect(path)
            held.append(s)
            s.setblocking(False)
            try:
                s.send(b'{"op":"status","x":"' + b"y" * (60 * 1024))
            except OSError:
                pass
        assert r.ping()
        grown = rss_kb(rpid) - before
        assert grown < 48 * 1024, f"the restarter grew by {grown} kB"
        assert fd_count(rpid) <= fds_before + MAX_CONNS + 8
        told = 0  # (an early one may have reached its deadline before it was the oldest)
        for s in held[:200]:
            if select.select([s], [], [], 0)[0]:
                try:
                    told += b"this was the oldest" in s.recv(4096)
                except ConnectionResetError:
                    pass
        assert told, "no connection was told it was closed as the oldest"
        wait_until(lambda: "connection(s) closed as the oldest of more than" in log_text(r),
                   REPLY_TIMEOUT, "the evictions to be logged")
    finally:
        for s in held:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert r.svc("a")["pid"] == pid
    assert_clean_log(r)


def test_notify_flood_of_bad_datagrams_is_logged_within_a_quota(
        relayed: tuple[RestarterRun, Callable[..., None]]) -> None:
    """2000 bad datagrams from a service and 500 from a process of no service: a few
    lines each per second and one line saying how many more (was: a line per datagram)."""
    from hachain.restarter.notify import WarnQuota
    r, send = relayed
    for _ in range(2000):
        send(b"\xff bad")
    send(b"STATUS=after the flood")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.settimeout(REPLY_TIMEOUT)
    try:
        for _ in range(500):
            s.sendto(b"READY=1", os.path.join(r.state_dir, channels.NOTIFY_SOCKET))
    finally:
        s.close()
    wait_until(lambda: status_text(r) == "after the flood", REPLY_TIMEOUT, "the flood read")
    wait_until(lambda: "more bad notify message(s) in the last" in log_text(r)
               and "processes of no service:" in log_text(r), REPLY_TIMEOUT,
               "the lines saying how many were not logged")
    text = log_text(r)
    windows = 2 + text.count("more bad notify message(s)")  # (a slow host: more windows)
    per = WarnQuota().per_window
    assert text.count("relay: bad notify message") <= per * windows, text[-2000:]
    assert text.count("that belongs to no service") <= per * windows, text[-2000:]
    assert r.svc("relay")["state"] == "ready"
    assert_clean_log(r)


def test_logger_inbox_garbage_frames_are_dropped_and_their_descriptors_closed(
        restarter: Callable[..., RestarterRun]) -> None:
    """Frames of the wrong shape on the logger's inbox (sent by whoever got the sockets
    through its hand-over socket): each dropped with one line, its descriptors closed,
    the logger running on (was: max 1e400 or deep nesting ended it with a traceback)."""
    r = restarter(f"""
[service.a]
command = {svc("sleep")}
""")
    r.wait_state("a", "ready")
    lpid = wait_until(r.logger_pid, REPLY_TIMEOUT, "the logger's pid")
    s = _logger_connection(r)
    _msg, fds, _f, _a = socket.recv_fds(s, 1024, 8)
    s.close()
    try:
        assert len(fds) == 4
        inbox_w = fds[1]
        frames = [b'{"pipes":[{"name":"a","max":1e400,"keep":0}]}', b"[" * 30000,
                  b"\xff\xfe", b'{"pipes":[{"name":"../x","max":1,"keep":0}]}',
                  b'{"pipes":[{"name":"a","max":1,"keep":0},{"name":"b","max":1,"keep":0}]}']
        for frame in frames:
            rfd, wfd = os.pipe()
            try:
                with socket.socket(fileno=os.dup(inbox_w)) as w:
                    w.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                         array.array("i", [rfd]))])
                os.close(rfd)
                rfd = -1

                def write_fails(w: int = wfd) -> bool:
                    try:
                        os.write(w, b"x")
                    except BrokenPipeError:
                        return True
                    return False
                wait_until(write_fails, REPLY_TIMEOUT,
                           f"the read end sent with {frame[:30]!r} to be closed")
            finally:
                os.close(wfd)
                if rfd >= 0:
                    os.close(rfd)
    finally:
        for fd in fds:
            os.close(fd)
    assert channels.pid_alive(lpid) and r.logger_pid() == lpid
    assert log_text(r).count("malformed inbox message") == len(frames)
    assert_clean_log(r)


def test_a_nested_hand_over_answer_is_a_bad_answer(tmp_path) -> None:
    """Whatever answers on the logger's hand-over socket, JSON nested too deeply (a 4 KiB
    answer is enough to reach the parser's recursion limit) is a bad answer: one line, the
    descriptors that came with it closed, and a logger of its own started instead; it used
    to be a RecursionError out of the restarter's start."""
    import socket
    import threading

    from hachain.logger import wire
    from hachain.restarter.logpipe import LogPipes
    path = os.path.join(str(tmp_path), wire.HANDOVER_SOCKET)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(10)
    sent = [os.open(os.devnull, os.O_RDONLY) for _ in range(4)]
    inodes = {os.fstat(fd).st_ino for fd in sent}

    def answer() -> None:
        conn, _ = srv.accept()
        with conn:
            socket.send_fds(conn, [b"[" * 2000 + b"]" * 2000], sent)

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    lines: list[str] = []
    lp = LogPipes(str(tmp_path), str(tmp_path / "logs"), lines.append)
    # the restarter runs with CPython's default recursion limit; a test process may have
    # raised it (then 2000 levels parse, and the answer is merely of the wrong shape)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        before = set(os.listdir("/proc/self/fd"))
        assert lp.adopt() is False
        t.join(10)
        assert any("bad answer" in ln and "nested too deeply" in ln for ln in lines), lines
        # nothing of what came with the answer is left open here
        for fd in set(os.listdir("/proc/self/fd")) - before:
            try:
                assert os.fstat(int(fd)).st_ino not in inodes
            except OSError:
                pass
    finally:
        sys.setrecursionlimit(limit)
        srv.close()
        for fd in sent:
            os.close(fd)
