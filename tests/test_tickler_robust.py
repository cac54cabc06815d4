"""The tickler after the device is armed: nothing may end it or stall its pet loop but
the device itself (docs/tickler.md, "A loop that never blocks").

A tickler that dies after the open is restarted by init, and every restart pets the
device (the close without 'V' gives it one last pet, the new tickler's SETTIMEOUT
another): a tickler that keeps dying keeps the machine from ever being reset, with no
gate evaluated at all. A pet loop that blocks stops petting a healthy machine. Each test
drives the real tickler against the watchdog simulator.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hachain import bootrecord, channels, snapshot
from hachain.simulators.wdsim import SoftWatchdog, WatchdogServer
from tests.conftest import end_init, heartbeat_window, wait_until
from tests.test_tickler import HB_TIMEOUT, PET, TIMEOUT, ForgedLayers, Rig

PY = sys.executable
pytestmark = pytest.mark.timeout(90)


@contextlib.contextmanager
def init_with_tickler(tmp_path: Any, state_dir: Any, persist_dir: Any, wd: SoftWatchdog,
                      on_fire: Callable[[], object], timeout: int, restart_grace: float,
                      init_args: list[str], tickler_prefix: tuple[str, ...] = ()
                      ) -> Iterator[tuple[subprocess.Popen[bytes], Any]]:
    """Real init (the restarter a `sleep`) and the real tickler on the simulated `wd`
    (its command after `tickler_prefix`, a wrapper that execs it): yields init and its
    stderr's path; stops init and its children, then the simulator."""
    sock = str(tmp_path / "wd.sock")
    server = WatchdogServer(sock, wd, on_fire)
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'[chain]\nstate_dir = "{state_dir}"\npersist_dir = "{persist_dir}"\n'
                   f'heartbeat_interval = 0.2\n[watchdog]\ndevice = "sim:{sock}"\n'
                   f"timeout = {timeout}\npet_interval = {PET}\n"
                   f"heartbeat_timeout = {HB_TIMEOUT}\nrestart_grace = {restart_grace}\n")
    tickler = shlex.join([*tickler_prefix, PY, "-m", "hachain.watchdog.tickler", "-c",
                          str(cfg), "--no-realtime"])
    err = tmp_path / "init.err"
    server.start()
    try:
        with open(err, "wb") as errf:
            init = subprocess.Popen(
                [PY, "-m", "hachain.init.main", "--state-dir", str(state_dir), "--config",
                 str(cfg), "--heartbeat-interval", "0.2", *init_args,
                 "--restarter-cmd", "sleep 600", "--tickler-cmd", tickler], stderr=errf)
        try:
            yield init, err
        finally:
            end_init(init)
    finally:
        server.stop()


@pytest.mark.slow
def test_unusable_state_dir_under_init_ends_in_a_reset(tmp_path: Any) -> None:
    """<state_dir>/hb cannot be made (a file is in the way; a read-only or full state_dir
    fails the same way): no layer can write a heartbeat, so the gate must fail and the
    watchdog fire. The tickler used to die on it right after arming the device, and init's
    restarts of it petted the device for ever."""
    timeout, grace = 5, 2.0
    state_dir, persist_dir = tmp_path / "run", tmp_path / "persist"
    state_dir.mkdir()
    (state_dir / channels.HEARTBEAT_DIR).write_text("not a directory\n")
    fired = threading.Event()
    wd = SoftWatchdog(timeout=10)
    with init_with_tickler(tmp_path, state_dir, persist_dir, wd, fired.set, timeout, grace,
                           ["--restart-delay", "1"]) as (init, err):
        wait_until(lambda: wd.armed, 30, "the tickler to arm the device")
        # the gate fails restart_grace after the tickler started; then one timeout
        assert fired.wait(grace + timeout + 15), (
            "the watchdog never fired:\n" + err.read_text(errors="replace")[-3000:])
        text = err.read_text(errors="replace")
        assert text.count("started tickler") == 1, text[-3000:]
        gate = channels.read_json(str(persist_dir / channels.GATE_RECORD))
        assert any("init heartbeat missing" in r for r in gate["reasons"]), gate


@pytest.mark.slow
def test_a_full_notify_socket_does_not_stop_the_pets(tmp_path: Any) -> None:
    """Under systemd the tickler sends READY=1 and WATCHDOG=1 on $NOTIFY_SOCKET. When the
    socket's queue is full (systemd busy: one socket serves every unit), the send must not
    wait: it used to block the pet loop, and a healthy machine was reset."""
    rig = Rig(str(tmp_path))
    path = str(tmp_path / "notify")
    nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    nsock.bind(path)
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.setblocking(False)
    queued = 0
    try:
        while True:
            filler.sendto(b"X=1", path)
            queued += 1
    except BlockingIOError:
        pass
    rig.server.start()
    try:
        with ForgedLayers(rig.state_dir, rig.sleeper.pid), open(rig.log, "ab") as logf:
            p = subprocess.Popen([PY, "-m", "hachain.watchdog.tickler", "-c", rig.config],
                                 stdout=logf, stderr=logf,
                                 env=dict(os.environ, NOTIFY_SOCKET=path))
            rig.procs.append(p)
            wait_until(lambda: rig.pets() >= 2, TIMEOUT + 5,
                       "the tickler to pet with systemd's socket full")
            heartbeat_window(rig.tickler_hb, 2 * TIMEOUT, "the tickler")
            assert rig.server.expirations == 0, rig.log_text()
            # systemd reads again: READY=1 gets through
            nsock.settimeout(10)
            got = b""
            deadline = time.monotonic() + 10
            while b"READY=1" not in got and time.monotonic() < deadline:
                got = nsock.recv(4096)
            assert b"READY=1" in got
    finally:
        rig.close()
        nsock.close()
        filler.close()
    assert queued > 0


@pytest.mark.slow
def test_a_record_that_raises_leaves_the_writer_running(tmp_path: Any) -> None:
    """A boot record the tickler cannot write is logged; the writer thread goes on and
    gate.json is still written when the gate fails. The thread used to die on a record
    that raised something else than OSError (a boot number that was no integer: a
    ValueError in the read), and every later record was lost. Such a number now reads
    as a damaged entry (tests/test_state_readers.py), so nothing a file holds makes the
    read raise; what is left to raise in the thread is the write, made to fail here by
    a directory where the record's temporary file goes (the thread catches any
    exception alike: the one it raises is no matter)."""
    rig = Rig(str(tmp_path))
    os.makedirs(os.path.join(rig.persist_dir, bootrecord.RECORD + ".new"))
    rig.server.start()
    try:
        with ForgedLayers(rig.state_dir, rig.sleeper.pid) as layers:
            rig.start_tickler()
            wait_until(lambda: rig.pets() >= 2, 10, "petting")
            rig.wait_log(f"cannot write {bootrecord.RECORD}: ")  # in the writer thread
            layers.beating("restarter", False)  # alive but silent: hung
            assert rig.expired.wait(TIMEOUT + PET + HB_TIMEOUT + 2)
        gate = wait_until(lambda: channels.read_json(
            os.path.join(rig.persist_dir, channels.GATE_RECORD)), 5, "gate.json")
        assert gate["reasons"][0].startswith("restarter heartbeat stale"), gate
    finally:
        rig.close()


@pytest.mark.slow
def test_a_hung_persist_dir_does_not_keep_the_armed_device_from_its_pets(
        tmp_path: Any) -> None:
    """last_boot.json is read and written (fsync'd) once the device is armed. A FIFO in its
    place stands for a persist_dir that hangs (a hung NFS or FUSE mount, a disk in error
    recovery): the tickler used to wait there on its main thread, before its first pet,
    and the watchdog reset a healthy machine."""
    rig = Rig(str(tmp_path))
    os.makedirs(rig.persist_dir)
    path = os.path.join(rig.persist_dir, "last_boot.json")
    os.mkfifo(path)
    rig.server.start()
    try:
        with ForgedLayers(rig.state_dir, rig.sleeper.pid):
            rig.start_tickler()
            wait_until(lambda: rig.pets() >= 2, TIMEOUT + 5, "the tickler to pet")
            heartbeat_window(rig.tickler_hb, 2 * TIMEOUT, "the tickler")
            assert rig.server.expirations == 0, rig.log_text()
            assert rig.pets() >= 2 * TIMEOUT / PET - 2
            # The loop says that a record is stuck (once), so a reset that comes first
            # leaves a line on the console, and says when it was written after all.
            log = rig.wait_log(f"{path}: still being written after ")
            assert log.count("still being written") == 1, log
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # the read returns: EOF
            os.close(fd)
            rig.wait_log(f"{path}: written after ")
            with open(path) as f:
                assert json.load(f)["bootstatus"] == 0  # a regular file again, whole
    finally:
        rig.close()


MNT_DETACH = 2


def tickler_that_pets(rig: Rig) -> subprocess.Popen[bytes]:
    """Start the rig's tickler and wait until it has petted twice, still running."""
    p = rig.start_tickler()
    wait_until(lambda: rig.pets() >= 2 or p.poll() is not None, TIMEOUT + 10,
               "the tickler to pet")
    assert p.poll() is None, rig.log_text()
    return p


@contextlib.contextmanager
def hung_mount(mnt: Any) -> Iterator[None]:
    """A FUSE mount at `mnt` whose server never answers (a hung NFS or FUSE mount, a
    dead disk); at exit the connection is aborted (anything still waiting gets ENOTCONN)
    and the mount detached."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("a hung FUSE mount needs root and /dev/fuse")
    mnt.mkdir()
    libc = ctypes.CDLL(None, use_errno=True)
    fuse = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    opts = f"fd={fuse},rootmode=40000,user_id=0,group_id=0".encode()
    if libc.mount(b"hung", str(mnt).encode(), b"fuse.hung", 0, opts) != 0:
        os.close(fuse)
        pytest.skip(f"cannot mount FUSE here: {os.strerror(ctypes.get_errno())}")
    try:
        yield
    finally:
        os.close(fuse)
        libc.umount2(str(mnt).encode(), MNT_DETACH)


@pytest.mark.slow
def test_a_hung_persist_dir_does_not_keep_the_device_from_being_armed(
        tmp_path: Any) -> None:
    """persist_dir on a FUSE mount whose server never answers (what a hung NFS or FUSE
    mount, or a dead disk, does to a lookup). The boot record before the open has a
    deadline; the tickler used to make persist_dir before that, with none, and hung
    there: the device was never opened, so nothing would ever reset the machine."""
    mnt = tmp_path / "hung"
    with hung_mount(mnt):
        _armed_with_a_hung_persist_dir(tmp_path, mnt)


def _armed_with_a_hung_persist_dir(tmp_path: Any, mnt: Any) -> None:
    rig = Rig(str(tmp_path))
    try:
        cfg = open(rig.config).read().replace(rig.persist_dir, str(mnt / "persist"))
        with open(rig.config, "w") as f:
            f.write(cfg)
        # as `hachain run` does: this run's snapshot is accepted before the layers start
        # (with none, the tickler's parser accepts the file itself and writes the
        # last-known-good copy into persist_dir before the open: docs/tickler.md, step 1)
        cid = channels.chain_id(os.getpid())
        snapshot.accept(rig.config, chain_id=cid, last_good=False)
        rig.server.start()
        with ForgedLayers(rig.state_dir, rig.sleeper.pid), open(rig.log, "ab") as logf:
            rig.procs.append(subprocess.Popen(
                [PY, "-m", "hachain.watchdog.tickler", "-c", rig.config], stdout=logf,
                stderr=logf, env=dict(os.environ, **{channels.ENV_CHAIN_ID: cid,
                                                     channels.ENV_STATE_DIR: rig.state_dir})))
            # the boot record's deadline (5 s), then the open
            wait_until(lambda: rig.pets() >= 2, 5 + TIMEOUT + 10,
                       "the tickler to arm the device and pet it")
            heartbeat_window(rig.tickler_hb, 2 * TIMEOUT, "the tickler")
            assert rig.server.expirations == 0, rig.log_text()
        rig.wait_log("cannot write the boot record in")
    finally:
        rig.close()  # SIGKILL: a process waiting on FUSE dies of it


@pytest.mark.slow
def test_an_orderly_stop_with_slow_records_still_disarms(tmp_path: Any) -> None:
    """init gives the tickler min(stop_timeout, 5) s between SIGTERM and SIGKILL; the
    tickler waits up to 5 s for its records (the boot record's "shutdown") before it
    exits. The magic close used to come after that wait: with a persist_dir that does not
    answer (a FIFO in place of the boot record here), init's SIGKILL came first and the
    stopped chain left the watchdog armed, to reset the machine."""
    timeout, stop_timeout = 10, 2
    state_dir, persist_dir = tmp_path / "run", tmp_path / "persist"
    persist_dir.mkdir()
    os.mkfifo(persist_dir / bootrecord.RECORD)
    wd = SoftWatchdog(timeout=30)
    with init_with_tickler(tmp_path, state_dir, persist_dir, wd, lambda: None, timeout, 60,
                           ["--stop-timeout", str(stop_timeout)]) as (init, err):
        # armed after the boot record's 5 s deadline; then petting
        wait_until(lambda: (h := channels.read_heartbeat(str(state_dir), "tickler"))
                   and h.extra.get("pets", 0) >= 1, 30, "the tickler to pet")
        init.send_signal(signal.SIGTERM)
        assert init.wait(30) == 0
        text = err.read_text(errors="replace")
        assert "magic close: watchdog disarmed" in text, text[-3000:]
        wait_until(lambda: not wd.armed, 5, "the simulator to see the magic close")


@pytest.mark.slow
def test_sigterm_between_the_open_and_the_loop_still_disarms(tmp_path: Any) -> None:
    """A SIGTERM that comes after the open and before the loop (init stopping a chain
    whose tickler it has just started) is an orderly stop: magic close, exit 0. It used to
    kill the tickler with the default action, which left the watchdog armed. A FIFO in
    place of the tickler's old heartbeat holds the tickler there for its read deadline
    (0.5 s here) after the open."""
    rig = Rig(str(tmp_path))
    os.makedirs(os.path.join(rig.state_dir, channels.HEARTBEAT_DIR))
    os.mkfifo(channels.heartbeat_path(rig.state_dir, "tickler"))
    rig.server.start()
    try:
        with ForgedLayers(rig.state_dir, rig.sleeper.pid):
            p = rig.start_tickler()
            wait_until(lambda: rig.wd.armed, 30, "the tickler to open the device")
            p.send_signal(signal.SIGTERM)
            assert p.wait(10) == 0, rig.log_text()
            assert "magic close: watchdog disarmed" in rig.log_text()
            wait_until(lambda: not rig.wd.armed, 5, "the simulator to see the magic close")
    finally:
        rig.close()


@pytest.mark.slow
def test_a_malformed_rescue_in_the_boot_record_does_not_end_the_tickler(
        tmp_path: Any) -> None:
    """This boot's entry in the boot record with a `rescue` that is not a table (the file
    is JSON, a field has the wrong type). Its summary raised AttributeError on the main
    thread before the open (every restart died there: the device was never opened), and
    the boot-loop check after the open could raise it too (init's restarts of a tickler
    that dies there pet the device for ever). It now pets as usual."""
    rig = Rig(str(tmp_path))
    os.makedirs(rig.persist_dir)
    entry = {"boot": 1, "boot_id": bootrecord.current_boot_id(), "started_wall": 1.0,
             "reason": "unknown", "rescue": "disarm", "bootstatus": 0, "device": "x"}
    channels.write_json(os.path.join(rig.persist_dir, bootrecord.RECORD),
                        {"version": 1, "counter": 1, "boots": [entry]})
    rig.server.start()
    try:
        with ForgedLayers(rig.state_dir, rig.sleeper.pid):
            tickler_that_pets(rig)
    finally:
        rig.close()


@pytest.mark.slow
def test_a_heartbeat_that_cannot_be_parsed_leaves_the_reader_running(
        tmp_path: Any) -> None:
    """A restarter heartbeat whose pid is 1e999 (JSON for infinity: int() raises
    OverflowError, which the parser did not expect). The reader thread died on it, every
    later tick failed with 'did not answer', and the machine was reset although the
    heartbeats were good again. Now it reads as missing, and the gate passes once a good
    heartbeat is back."""
    rig = Rig(str(tmp_path))
    rig.server.start()
    try:
        with ForgedLayers(rig.state_dir, rig.sleeper.pid) as layers:
            rig.start_tickler()
            wait_until(lambda: rig.pets() >= 2, TIMEOUT + 10, "petting")
            layers.beating("restarter", False)
            path = channels.heartbeat_path(rig.state_dir, "restarter")
            bad = (b'{"layer": "restarter", "pid": 1e999, "mono": 1.0, "started_mono": 1.0,'
                   b' "seq": 1}\n')
            with open(path + ".bad", "wb") as f:
                f.write(bad)
            os.rename(path + ".bad", path)
            seen = rig.tickler_hb().seq  # type: ignore[union-attr]
            # two of the tickler's ticks: a round of reads has met the bad file
            wait_until(lambda: (h := rig.tickler_hb()) is not None and h.seq >= seen + 2, 10,
                       "two ticks")
            layers.beating("restarter", True)
            heartbeat_window(rig.tickler_hb, 2 * TIMEOUT, "the tickler")
            assert rig.server.expirations == 0, rig.log_text()
            hb = rig.tickler_hb()
            assert hb is not None and hb.extra["gate"]["ok"], hb and hb.extra["gate"]
    finally:
        rig.close()


@pytest.mark.slow
def test_a_stderr_nobody_reads_does_not_stop_the_pets(tmp_path: Any) -> None:
    """The tickler's stderr is a pipe whose reader is stuck (a hung journald, a console
    nobody drains), already full. Its log lines ("armed, ...") were written by the pet
    loop's own thread, which blocked there: no pet, and a healthy machine was reset."""
    rig = Rig(str(tmp_path))
    r, w = os.pipe()
    # fill it through a second, non-blocking open of the same pipe: the tickler's end
    # stays blocking, as a real stderr is
    filler = os.open(f"/proc/self/fd/{w}", os.O_WRONLY | os.O_NONBLOCK)
    try:
        while True:
            os.write(filler, b"x" * 4096)
    except BlockingIOError:
        pass
    os.close(filler)
    rig.server.start()
    try:
        with ForgedLayers(rig.state_dir, rig.sleeper.pid):
            p = subprocess.Popen([PY, "-m", "hachain.watchdog.tickler", "-c", rig.config],
                                 stdout=w, stderr=w)
            rig.procs.append(p)
            wait_until(lambda: rig.pets() >= 2, TIMEOUT + 10, "the tickler to pet")
            heartbeat_window(rig.tickler_hb, 2 * TIMEOUT, "the tickler")
            assert rig.server.expirations == 0
    finally:
        rig.close()
        os.close(r)
        os.close(w)
