"""A stderr that stops taking lines (a hung journald, a console paused with Ctrl-S, a pipe
whose reader is stopped) never stops the restarter or the logger.

Their log lines went to stderr with blocking writes: once the pipe was full, the
restarter's loop stopped, its heartbeat went stale and the gate failed, so a healthy box
was reset. init and the tickler write theirs from threads of their own
(tests/test_init_robust.py, tests/test_tickler_robust.py); the restarter, its standby and
the logger write through channels.ErrOut, which never waits.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hachain import channels
from tests.conftest import reap, wait_until

F_SETPIPE_SZ = 1031


def small_pipe() -> tuple[int, int]:
    """A pipe of one page: a few dozen log lines fill it."""
    r, w = os.pipe2(os.O_CLOEXEC)
    fcntl.fcntl(w, F_SETPIPE_SZ, 4096)
    return r, w


def read_all(fd: int) -> bytes:
    """What the pipe holds now (its write end still open)."""
    os.set_blocking(fd, False)
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def lines(n: int, start: int = 0) -> list[bytes]:
    return [b"line %06d %s\n" % (i, b"." * 80) for i in range(start, start + n)]


def test_a_full_pipe_keeps_lines_in_order_and_counts_what_it_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channels, "ERR_PENDING_MAX", 8192)
    r, w = small_pipe()
    try:
        err = channels.ErrOut("prog", fd=w)
        sent = lines(400)
        t0 = time.monotonic()
        for line in sent:
            err.write(line)  # never waits: the pipe is full after ~45 lines
        assert time.monotonic() - t0 < 30
        assert len(err.pending) <= 8192 and err.dropped > 0
        later = lines(3, start=1000)
        got = b""
        for _ in range(1000):
            got += read_all(r)
            err.retry()
            if not err.pending and not err.dropped:
                break
        for line in later:
            err.write(line)
        got += read_all(r)
    finally:
        os.close(r)
        os.close(w)
    out = got.splitlines(keepends=True)
    n = next(i for i, line in enumerate(out) if b"dropped" in line)
    assert out[:n] == sent[:n], "what was kept comes out first, in order, whole"
    dropped = int(re.match(rb"prog: ([0-9]+) log line\(s\) dropped: stderr did not take "
                           rb"them\n", out[n]).group(1))  # type: ignore[union-attr]
    assert n + dropped == len(sent), (n, dropped)
    assert out[n + 1:] == later, "and what came after the count"


def test_a_socket_that_does_not_read_never_makes_a_write_wait() -> None:
    """journald's stream is a socket: sent to with MSG_DONTWAIT."""
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        err = channels.ErrOut("prog", fd=a.fileno())
        t0 = time.monotonic()
        for line in lines(2000):
            err.write(line)
        assert time.monotonic() - t0 < 30
        assert err.sock is not None and err.pending
        assert a.getblocking(), "the shared socket is left as it was"
        b.setblocking(False)
        got = b""
        for _ in range(1000):
            try:
                got += b.recv(1 << 20)
            except BlockingIOError:
                pass
            err.retry()
            if not err.pending and not err.dropped:
                break
        assert got.startswith(lines(1)[0])
    finally:
        a.close()
        b.close()


def test_the_shared_description_stays_blocking() -> None:
    """O_NONBLOCK is set on a description of ErrOut's own (a pipe reopened through
    /proc/self/fd), never on the one stderr shares with init and the rest."""
    r, w = small_pipe()
    try:
        err = channels.ErrOut("prog", fd=w)
        err.write(b"one\n")
        assert err.out is not None and err.out != w
        assert os.get_blocking(w) and not os.get_blocking(err.out)
        assert read_all(r) == b"one\n"
    finally:
        if err.out not in (None, w):
            os.close(err.out)
        os.close(r)
        os.close(w)


def queued(fd: int) -> int:
    """How many bytes the pipe holds, without taking them (FIONREAD)."""
    import array
    import termios
    n = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, n)
    return n[0]


@pytest.mark.slow
def test_a_stderr_nobody_reads_does_not_stop_the_restarter(tmp_path: Path) -> None:
    """The whole chain on a stderr of one page nobody reads, 20 services crash-looping
    (a few log lines each restart): the restarter beats on and keeps restarting them.
    Once stderr is read again, what it kept comes out, and the stop's last line too."""
    state = tmp_path / "run"
    svcs = "".join(f'[service.c{i}]\ncommand = ["sh", "-c", "sleep 0.05; exit 1"]\n'
                   f'intensity = {{ action = "ignore" }}\n' for i in range(20))
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[chain]\nstate_dir = "{state}"\npersist_dir = "{tmp_path / "p"}"\n'
                   f'heartbeat_interval = 0.2\nrestart_delay = 0.3\ncgroup_root = "none"\n'
                   f'[watchdog]\ndevice = "none"\n' + svcs)
    r, w = small_pipe()
    chain = subprocess.Popen([sys.executable, "-m", "hachain.cli", "run", "-c", str(cfg)],
                             stdout=w, stderr=w, stdin=subprocess.DEVNULL)
    os.close(w)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(iter(lambda: os.read(r, 65536), b"")),
                              daemon=True)

    def restarter() -> channels.Heartbeat | None:
        return channels.read_heartbeat(str(state), "restarter")
    try:
        wait_until(restarter, 60, "the restarter's first heartbeat")
        wait_until(lambda: queued(r) >= 4000, 60, "stderr to be full")
        first = restarter()
        assert first is not None
        # a restarter blocked on its stderr would write no more heartbeats
        wait_until(lambda: (hb := restarter()) is not None and hb.seq >= first.seq + 25,
                   60, "25 more restarter heartbeats with stderr full")
    finally:
        chain.send_signal(signal.SIGTERM)
        reader.start()
        try:
            chain.wait(60)
        except subprocess.TimeoutExpired:
            chain.kill()
            reap(chain, "the chain's init")
        reader.join(30)
        os.close(r)
    text = b"".join(got).decode(errors="replace")
    kept = sum(len(line) + 1 for line in text.splitlines()
               if line.startswith("hachain-restarter: "))
    assert kept > 4096, f"the restarter's lines kept while stderr was full: {kept} bytes"
    assert "all processes stopped; exiting" in text, text[-2000:]


def test_a_forked_worker_leaves_what_its_parent_kept_to_the_parent() -> None:
    """The standby forks the worker: lines the standby could not write yet are its own
    to write, or they would come out twice."""
    r, w = small_pipe()
    try:
        err = channels.ErrOut("prog", fd=w)
        sent = lines(60)  # more than the pipe takes
        for line in sent:
            err.write(line)
        assert err.pending
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                err.forget()
                err.write(b"worker line\n")
                err.drain(30)
            finally:
                os._exit(0)
        got = b""
        deadline = time.monotonic() + 60
        while (err.pending or b"worker line" not in got) and time.monotonic() < deadline:
            got += read_all(r)
            err.retry()
            time.sleep(0.01)
        got += read_all(r)
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        os.close(r)
        os.close(w)
    out = got.splitlines(keepends=True)
    assert [line for line in out if line != b"worker line\n"] == sent, "each once, in order"
    assert out.count(b"worker line\n") == 1
