"""The software watchdog simulator: pure driver semantics, then the socket server end to end."""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hachain.simulators.wdsim import SoftWatchdog, WatchdogServer
from hachain.watchdog import device as d
from hachain.watchdog.cli import add_parser
from hachain.watchdog.device import SimTransport, Watchdog, WatchdogError, open_watchdog
from tests.conftest import wait_until


def u32(v: int) -> bytes:
    return struct.pack("=I", v)


def int_ioctl(wd: SoftWatchdog, request: int, value: int, now: float) -> int:
    return int(struct.unpack("=I", wd.ioctl(request, u32(value), now))[0])


def oserror(fn: Callable[[], object]) -> int | None:
    try:
        fn()
    except OSError as e:
        return e.errno
    return None


# --- SoftWatchdog: pure, clock passed in -------------------------------------------------------


def test_open_arms_and_deadline() -> None:
    wd = SoftWatchdog(timeout=10)
    assert not wd.armed and wd.deadline() is None and not wd.expired(1e9)
    wd.open(100.0)
    assert wd.armed and wd.deadline() == 110.0
    assert not wd.expired(109.999) and wd.expired(110.0)


def test_pet_by_write_and_keepalive_extend() -> None:
    wd = SoftWatchdog(timeout=10)
    wd.open(0.0)
    wd.write(b"x", 5.0)
    assert wd.deadline() == 15.0
    int_ioctl(wd, d.WDIOC_KEEPALIVE, 0, 12.0)
    assert wd.deadline() == 22.0
    wd.write(b"", 20.0)  # an empty write does nothing
    assert wd.deadline() == 22.0


def test_magic_close_disarms() -> None:
    wd = SoftWatchdog(timeout=10)
    wd.open(0.0)
    wd.write(b"V", 1.0)
    wd.close(2.0)
    assert not wd.armed and wd.deadline() is None and not wd.is_open


def test_close_without_v_stays_armed_with_one_last_pet() -> None:
    wd = SoftWatchdog(timeout=10)
    wd.open(0.0)
    wd.close(3.0)
    assert wd.armed and wd.deadline() == 13.0


def test_v_is_forgotten_by_a_later_write() -> None:
    wd = SoftWatchdog(timeout=10)
    wd.open(0.0)
    wd.write(b"V", 1.0)
    wd.write(b"x", 2.0)
    wd.close(3.0)
    assert wd.armed


def test_v_anywhere_in_the_last_write_counts() -> None:
    wd = SoftWatchdog(timeout=10)
    wd.open(0.0)
    wd.write(b"abVcd", 1.0)
    int_ioctl(wd, d.WDIOC_KEEPALIVE, 0, 2.0)  # an ioctl ping does not forget it
    wd.close(3.0)
    assert not wd.armed


def test_nowayout_keeps_it_armed() -> None:
    wd = SoftWatchdog(timeout=10, nowayout=True)
    wd.open(0.0)
    wd.write(b"V", 1.0)
    wd.close(2.0)
    assert wd.armed and wd.deadline() == 12.0
    wd.open(3.0)
    assert oserror(lambda: wd.ioctl(d.WDIOC_SETOPTIONS, u32(d.WDIOS_DISABLECARD), 4.0)) \
        == errno.EBUSY
    assert wd.armed


def test_reopen_of_armed_device_does_not_pet() -> None:
    wd = SoftWatchdog(timeout=10)
    wd.open(0.0)
    wd.close(1.0)  # a tickler crashed: deadline 11
    wd.open(5.0)  # init restarted it
    assert wd.deadline() == 11.0


def test_second_open_is_ebusy() -> None:
    wd = SoftWatchdog()
    wd.open(0.0)
    assert oserror(lambda: wd.open(1.0)) == errno.EBUSY
    wd.close(2.0)
    wd.open(3.0)


def test_operations_need_an_open_device() -> None:
    wd = SoftWatchdog()
    assert oserror(lambda: wd.write(b"x", 0.0)) == errno.EBADF
    assert oserror(lambda: wd.ioctl(d.WDIOC_KEEPALIVE, u32(0), 0.0)) == errno.EBADF


def test_settimeout_range_applies_and_pets() -> None:
    wd = SoftWatchdog(timeout=10, pretimeout=5)
    wd.open(0.0)
    for bad in (0, 3601, 0xFFFFFFFF):
        assert oserror(partial(wd.ioctl, d.WDIOC_SETTIMEOUT, u32(bad), 1.0)) == errno.EINVAL
    assert wd.timeout == 10 and wd.deadline() == 10.0
    assert int_ioctl(wd, d.WDIOC_SETTIMEOUT, 3, 2.0) == 3
    assert wd.deadline() == 5.0
    assert wd.pretimeout == 0  # no longer smaller than the timeout
    assert int_ioctl(wd, d.WDIOC_GETTIMEOUT, 0, 2.0) == 3
    assert int_ioctl(wd, d.WDIOC_SETTIMEOUT, 3600, 2.0) == 3600


def test_pretimeout_rules() -> None:
    wd = SoftWatchdog(timeout=10)
    wd.open(0.0)
    assert oserror(lambda: wd.ioctl(d.WDIOC_SETPRETIMEOUT, u32(10), 0.0)) == errno.EINVAL
    assert wd.ioctl(d.WDIOC_SETPRETIMEOUT, u32(4), 0.0) == u32(4)  # nothing written back
    assert int_ioctl(wd, d.WDIOC_GETPRETIMEOUT, 0, 0.0) == 4
    assert wd.pretimeout_at() == 6.0
    wd.ioctl(d.WDIOC_SETPRETIMEOUT, u32(0), 0.0)
    assert wd.pretimeout_at() is None


def test_timeleft_rounds_up_and_is_zero_when_disarmed() -> None:
    wd = SoftWatchdog(timeout=10)
    assert wd.timeleft(0.0) == 0
    wd.open(0.0)
    assert int_ioctl(wd, d.WDIOC_GETTIMELEFT, 0, 0.0) == 10
    assert int_ioctl(wd, d.WDIOC_GETTIMELEFT, 0, 0.5) == 10
    assert int_ioctl(wd, d.WDIOC_GETTIMELEFT, 0, 9.5) == 1
    assert int_ioctl(wd, d.WDIOC_GETTIMELEFT, 0, 12.0) == 0


def test_setoptions() -> None:
    wd = SoftWatchdog(timeout=10)
    wd.open(0.0)
    wd.ioctl(d.WDIOC_SETOPTIONS, u32(d.WDIOS_DISABLECARD), 1.0)
    assert not wd.armed
    wd.ioctl(d.WDIOC_SETOPTIONS, u32(d.WDIOS_ENABLECARD), 2.0)
    assert wd.deadline() == 12.0
    assert oserror(lambda: wd.ioctl(d.WDIOC_SETOPTIONS, u32(0x4), 3.0)) == errno.EINVAL


def test_getstatus_getbootstatus_getsupport() -> None:
    wd = SoftWatchdog(bootstatus=d.WDIOF_CARDRESET, identity="test dog")
    wd.open(0.0)
    assert int_ioctl(wd, d.WDIOC_GETBOOTSTATUS, 0, 0.0) == 0x20
    assert int_ioctl(wd, d.WDIOC_GETSTATUS, 0, 0.0) == d.WDIOF_KEEPALIVEPING  # open started it
    assert int_ioctl(wd, d.WDIOC_GETSTATUS, 0, 0.0) == 0  # read clears it
    wd.write(b"V", 1.0)
    assert int_ioctl(wd, d.WDIOC_GETSTATUS, 0, 1.0) == d.WDIOF_MAGICCLOSE | d.WDIOF_KEEPALIVEPING
    info = d.WatchdogInfo.unpack(wd.ioctl(d.WDIOC_GETSUPPORT, bytes(40), 1.0))
    assert info.identity == "test dog"
    assert info.options & d.WDIOF_MAGICCLOSE and info.options & d.WDIOF_SETTIMEOUT


def test_unknown_request_and_wrong_size() -> None:
    wd = SoftWatchdog()
    wd.open(0.0)
    assert oserror(lambda: wd.ioctl(0x80045799, u32(0), 0.0)) == errno.ENOTTY
    assert oserror(lambda: wd.ioctl(d.WDIOC_GETTIMEOUT, b"\0", 0.0)) == errno.EFAULT
    assert oserror(lambda: wd.ioctl(d.WDIOC_GETSUPPORT, u32(0), 0.0)) == errno.EFAULT


def test_constructor_validation() -> None:
    for kwargs in ({"timeout": 0}, {"timeout": 3601}, {"timeout": 5, "pretimeout": 5},
                   {"identity": "x" * 32}):
        with pytest.raises(ValueError):
            SoftWatchdog(**kwargs)  # type: ignore[arg-type]


def test_power_on_resets_runtime_state() -> None:
    wd = SoftWatchdog(timeout=7)
    wd.open(0.0)
    wd.power_on(d.WDIOF_CARDRESET)
    assert not wd.armed and not wd.is_open and wd.bootstatus == 0x20 and wd.timeout == 7
    wd.open(1.0)  # a fresh boot may open it again


# Each step: (delay before it, action). The model: the deadline is the last pet + timeout,
# and the watchdog fires iff some gap between pets reaches the timeout.
steps = st.lists(st.tuples(st.floats(min_value=0.0, max_value=20.0),
                           st.sampled_from(["write", "keepalive", "V", "none"])),
                 max_size=30)


@given(timeout=st.integers(1, 15), start=st.floats(0, 1e6), plan=steps)
def test_deadline_is_last_pet_plus_timeout(timeout: int, start: float,
                                           plan: list[tuple[float, str]]) -> None:
    wd = SoftWatchdog(timeout=timeout)
    wd.open(start)
    now, last_pet, fired = start, start, False
    for delay, action in plan:
        now += delay
        if now >= last_pet + timeout:
            fired = True
        assert wd.expired(now) == fired
        if fired:
            return
        if action == "write":
            wd.write(b"x", now)
        elif action == "V":
            wd.write(b"V", now)
        elif action == "keepalive":
            wd.ioctl(d.WDIOC_KEEPALIVE, u32(0), now)
        if action != "none":
            last_pet = now
        assert wd.deadline() == last_pet + timeout
        assert 0 <= wd.timeleft(now) <= timeout


@given(data=st.binary(max_size=8), nowayout=st.booleans())
def test_close_disarms_iff_last_write_had_v_and_not_nowayout(data: bytes,
                                                             nowayout: bool) -> None:
    wd = SoftWatchdog(nowayout=nowayout)
    wd.open(0.0)
    wd.write(b"x", 0.5)
    wd.write(data, 1.0)
    wd.close(2.0)
    has_v = b"V" in data if data else False
    assert wd.armed == (nowayout or not has_v)


# --- the server over a real unix socket ----------------------------------------------------


class Events:
    def __init__(self) -> None:
        self.expired = threading.Event()
        self.pretimeout = threading.Event()
        self.expired_at: list[float] = []

    def on_expire(self) -> None:
        self.expired_at.append(time.monotonic())
        self.expired.set()

    def on_pretimeout(self) -> None:
        self.pretimeout.set()


@pytest.fixture
def server(short_dir: str) -> Iterator[tuple[WatchdogServer, Events]]:
    events = Events()
    srv = WatchdogServer(os.path.join(short_dir, "wd.sock"), SoftWatchdog(timeout=1),
                         events.on_expire, events.on_pretimeout)
    srv.start()
    yield srv, events
    srv.stop()
    assert not os.path.exists(srv.socket_path)
    assert not srv.callback_errors

@pytest.mark.slow
def test_keepalive_keeps_it_alive_past_the_timeout(server: tuple[WatchdogServer, Events]) -> None:
    srv, events = server
    wd = Watchdog(SimTransport(srv.socket_path), "sim")
    opened = time.monotonic()
    while time.monotonic() < opened + 2.5:  # 2.5 timeouts
        wd.keepalive()
        wd.pet_by_write()
        assert not events.expired.wait(0.2)
    assert srv.expirations == 0
    assert 0 < wd.get_timeleft() <= 1  # type: ignore[operator]
    assert wd.magic_close() is True
    wait_until(lambda: not srv.watchdog.armed, 5, "the watchdog state")


@pytest.mark.slow
def test_stopping_petting_expires_within_the_timeout(
        server: tuple[WatchdogServer, Events]) -> None:
    srv, events = server
    wd = open_watchdog("sim:" + srv.socket_path)
    wd.keepalive()
    last_pet = time.monotonic()
    assert events.expired.wait(timeout=1 + 2.0), "on_expire was not called"
    assert 1.0 - 0.05 <= events.expired_at[0] - last_pet <= 1.0 + 0.5
    assert srv.expirations == 1
    # The reset killed every process: the old client is gone.
    with pytest.raises(WatchdogError):
        for _ in range(3):
            wd.keepalive()
    wd.close()
    # Next boot: the boot status says why, and the device is free and disarmed.
    assert not srv.watchdog.armed
    wd2 = open_watchdog("sim:" + srv.socket_path)
    assert wd2.get_bootstatus() == d.WDIOF_CARDRESET
    assert wd2.magic_close()
    assert srv.expirations == 1


@pytest.mark.slow
def test_dropped_client_without_v_leaves_it_armed(server: tuple[WatchdogServer, Events]) -> None:
    srv, events = server
    t = SimTransport(srv.socket_path)
    t.close()  # the process died
    assert events.expired.wait(timeout=3.0)
    assert srv.expirations == 1


def test_second_opener_gets_ebusy(server: tuple[WatchdogServer, Events]) -> None:
    srv, _ = server
    first = open_watchdog("sim:" + srv.socket_path)
    with pytest.raises(WatchdogError) as info:
        open_watchdog("sim:" + srv.socket_path)
    assert info.value.errno == errno.EBUSY
    assert "device busy (another process holds it open)" in str(info.value)
    assert first.magic_close()
    wait_until(lambda: not srv.watchdog.is_open, 5, "the device closed")
    open_watchdog("sim:" + srv.socket_path).magic_close()


@pytest.mark.slow
def test_server_magic_close_disarms(server: tuple[WatchdogServer, Events]) -> None:
    srv, events = server
    wd = open_watchdog("sim:" + srv.socket_path)
    assert srv.watchdog.armed
    assert wd.magic_close() is True
    wait_until(lambda: not srv.watchdog.armed and not srv.watchdog.is_open, 5, "closed")
    assert not events.expired.wait(1.5)  # past the 1 s timeout
    assert srv.expirations == 0


def test_errors_come_back_with_the_driver_errno(server: tuple[WatchdogServer, Events]) -> None:
    srv, _ = server
    wd = open_watchdog("sim:" + srv.socket_path)
    with pytest.raises(WatchdogError) as info:
        wd.set_timeout(9999)
    assert str(info.value) == f"sim:{srv.socket_path}: SETTIMEOUT 9999: Invalid argument"
    assert wd.set_timeout(30) == 30
    assert wd.set_pretimeout(10) == 10
    assert wd.get_support().identity == "hachain softdog"
    assert wd.magic_close()


@pytest.mark.slow
def test_pretimeout_fires_before_expiry(short_dir: str) -> None:
    events = Events()
    srv = WatchdogServer(os.path.join(short_dir, "p.sock"), SoftWatchdog(timeout=2, pretimeout=1),
                         events.on_expire, events.on_pretimeout)
    srv.start()
    try:
        wd = open_watchdog("sim:" + srv.socket_path)
        assert events.pretimeout.wait(timeout=3.0)
        assert not events.expired.is_set()
        assert srv.pretimeouts == 1
        wd.magic_close()
    finally:
        srv.stop()


@pytest.mark.slow
def test_nowayout_sim_cannot_be_disarmed(short_dir: str) -> None:
    events = Events()
    srv = WatchdogServer(os.path.join(short_dir, "n.sock"), SoftWatchdog(timeout=1, nowayout=True),
                         events.on_expire)
    srv.start()
    try:
        wd = open_watchdog("sim:" + srv.socket_path)
        assert wd.nowayout
        assert wd.magic_close() is False
        assert events.expired.wait(timeout=3.0)
    finally:
        srv.stop()


@pytest.mark.slow
def test_reset_for_boot_forgets_clients(server: tuple[WatchdogServer, Events]) -> None:
    srv, events = server
    old = open_watchdog("sim:" + srv.socket_path)
    srv.reset_for_boot(0)
    assert not srv.watchdog.armed
    new = open_watchdog("sim:" + srv.socket_path)  # not EBUSY: the old holder died
    with pytest.raises(WatchdogError):
        old.keepalive()
    old.close()
    assert new.get_bootstatus() == 0
    assert new.magic_close()
    assert not events.expired.wait(1.5)


@pytest.mark.slow
def test_garbage_on_the_socket_changes_nothing(server: tuple[WatchdogServer, Events]) -> None:
    srv, events = server
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(srv.socket_path)
        s.sendall(b"garbage")
        assert s.recv(100) == b""  # dropped
    assert not srv.watchdog.armed
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # oversized frame
        s.settimeout(5)
        s.connect(srv.socket_path)
        s.sendall(b"O" + d.SIM_REQUEST.pack(b"W", 0, 1 << 20))
        assert s.recv(100)[: d.SIM_OPEN_REPLY.size] == d.SIM_OPEN_REPLY.pack(0, 0)
    # That client opened the device and died without 'V': armed, then it expires.
    assert events.expired.wait(timeout=3.0)


def test_stat_does_not_arm(server: tuple[WatchdogServer, Events]) -> None:
    srv, _ = server
    attrs = d.sim_attributes(srv.socket_path)
    assert attrs["identity"] == "hachain softdog" and attrs["state"] == "inactive"
    assert not srv.watchdog.armed


# --- the CLI against a running simulator -----------------------------------------------------


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="hachain")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    rc = args.func(args)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--open"]])
def test_cli_info_sim_leaves_it_disarmed(server: tuple[WatchdogServer, Events], extra: list[str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    srv, events = server
    rc, out, err = run_cli(["watchdog", "info", "--device", "sim:" + srv.socket_path] + extra,
                           capsys)
    assert rc == 0, err
    assert "Identity:      hachain softdog" in out
    assert "Timeout:       1 second" in out and "Timeleft:" in out
    if extra:
        assert "Timeleft:      1 second" in out  # it was open (armed) while we asked
    wait_until(lambda: not srv.watchdog.armed and not srv.watchdog.is_open, 5, "closed")
    assert not events.expired.wait(1.5)


def test_cli_info_sim_from_env_json(server: tuple[WatchdogServer, Events],
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    srv, _ = server
    monkeypatch.setenv("HACHAIN_SIM_WATCHDOG", srv.socket_path)
    rc, out, _ = run_cli(["watchdog", "info", "--device", "sim", "--json"], capsys)
    report = json.loads(out)
    assert rc == 0 and report["timeout"] == 1 and report["identity"] == "hachain softdog"
    rc, out, _ = run_cli(["watchdog", "list"], capsys)
    assert rc == 0 and f"sim:{srv.socket_path}" in out


def test_cli_does_not_disarm_a_device_armed_by_someone_else(
        server: tuple[WatchdogServer, Events], capsys: pytest.CaptureFixture[str]) -> None:
    srv, _ = server
    srv.watchdog.timeout = 30
    SimTransport(srv.socket_path).close()  # a tickler that crashed: armed, not held
    wait_until(lambda: srv.watchdog.armed and not srv.watchdog.is_open, 5, "the watchdog state")
    rc, out, _ = run_cli(["watchdog", "info", "--open", "--device", "sim:" + srv.socket_path],
                         capsys)
    assert rc == 0 and "stays armed" in out
    assert srv.watchdog.armed
    srv.reset_for_boot(0)


def test_cli_set_timeout_sim(server: tuple[WatchdogServer, Events],
                             capsys: pytest.CaptureFixture[str]) -> None:
    srv, _ = server
    sock = "sim:" + srv.socket_path
    rc, out, _ = run_cli(["watchdog", "set-timeout", "5", "--device", sock], capsys)
    assert rc == 0 and out == f"{sock}: timeout set to 5 seconds\n"
    assert srv.watchdog.timeout == 5
    wait_until(lambda: not srv.watchdog.armed and not srv.watchdog.is_open, 5, "closed")
    rc, out, err = run_cli(["watchdog", "set-timeout", "9999", "--device", sock], capsys)
    assert rc == 1 and out == ""
    assert err == f"hachain watchdog: {sock}: SETTIMEOUT 9999: Invalid argument\n"
    wait_until(lambda: not srv.watchdog.armed and not srv.watchdog.is_open, 5, "closed")


def test_cli_busy_device(server: tuple[WatchdogServer, Events],
                         capsys: pytest.CaptureFixture[str]) -> None:
    srv, _ = server
    holder = open_watchdog("sim:" + srv.socket_path)
    try:
        rc, out, _ = run_cli(["watchdog", "info", "--device", "sim:" + srv.socket_path], capsys)
        assert rc == 0 and "State:         active" in out  # attributes need no open
        rc, _, err = run_cli(["watchdog", "info", "--open", "--device",
                              "sim:" + srv.socket_path], capsys)
        assert rc == 1 and "device busy (another process holds it open)" in err
    finally:
        holder.magic_close()


def test_stop_after_a_start_that_a_signal_cut_short(tmp_path, monkeypatch) -> None:
    """A stop signal's handler raises in the main thread wherever it is: a chaos
    campaign stopped (SIGHUP) while its machine was booting was cut between the server
    thread's creation and its start, and stop() then failed ("cannot join thread before
    it is started"), leaving the campaign's mounts behind. stop() cleans up anyway."""
    path = str(tmp_path / "wd.sock")
    srv = WatchdogServer(path, SoftWatchdog(), on_expire=lambda: None)

    def interrupted(self: threading.Thread) -> None:
        raise KeyboardInterrupt  # what the signal handler raised, where it landed
    monkeypatch.setattr(threading.Thread, "start", interrupted)
    with pytest.raises(KeyboardInterrupt):
        srv.start()
    monkeypatch.undo()
    srv.stop()  # no RuntimeError
    assert not os.path.exists(path)
    srv.stop()  # idempotent
