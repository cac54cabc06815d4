"""The watchdog device layer: byte-level ioctl packing, errors, discovery, the CLI."""

from __future__ import annotations

import argparse
import errno
import json
import os
import struct
from pathlib import Path

import pytest

from hachain.watchdog import device as d
from hachain.watchdog import discover as disc
from hachain.watchdog.cli import add_parser
from hachain.watchdog.device import (
    FdTransport,
    Watchdog,
    WatchdogError,
    WatchdogInfo,
    flag_names,
    open_watchdog,
)

# --- a Transport that records every call ------------------------------------------------------


class FakeTransport:
    """Records (request, arg) pairs; replies come from `replies` (bytes or an OSError)."""

    def __init__(self, replies: dict[int, bytes | OSError] | None = None) -> None:
        self.replies = replies or {}
        self.ioctls: list[tuple[int, bytes]] = []
        self.writes: list[bytes] = []
        self.closed = 0

    def ioctl(self, request: int, arg: bytes) -> bytes:
        self.ioctls.append((request, arg))
        reply = self.replies.get(request, arg)
        if isinstance(reply, OSError):
            raise reply
        return reply

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed += 1


def u32(v: int) -> bytes:
    return struct.pack("=I", v)


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("W") << 8) | nr


READ, READWRITE = 2, 3


def test_ioctl_numbers_follow_the_ioc_encoding() -> None:
    assert d.WDIOC_GETSUPPORT == _ioc(READ, 0, 40)
    assert d.WDIOC_GETSTATUS == _ioc(READ, 1, 4)
    assert d.WDIOC_GETBOOTSTATUS == _ioc(READ, 2, 4)
    assert d.WDIOC_SETOPTIONS == _ioc(READ, 4, 4)
    assert d.WDIOC_KEEPALIVE == _ioc(READ, 5, 4)
    assert d.WDIOC_SETTIMEOUT == _ioc(READWRITE, 6, 4)
    assert d.WDIOC_GETTIMEOUT == _ioc(READ, 7, 4)
    assert d.WDIOC_SETPRETIMEOUT == _ioc(READWRITE, 8, 4)
    assert d.WDIOC_GETPRETIMEOUT == _ioc(READ, 9, 4)
    assert d.WDIOC_GETTIMELEFT == _ioc(READ, 10, 4)


def test_flag_names() -> None:
    assert flag_names(0) == []
    assert flag_names(0x20) == ["CARDRESET"]
    assert flag_names(0x8180) == ["SETTIMEOUT", "MAGICCLOSE", "KEEPALIVEPING"]
    assert flag_names(0x0400 | 0x10000) == ["ALARMONLY", "0x10000"]
    assert "last reboot caused by this watchdog" in d.describe_bootstatus(0x20)


def test_get_support_unpacks_struct_watchdog_info() -> None:
    raw = struct.pack("=II32s", 0x8180, 7, b"i6300ESB timer")
    assert len(raw) == 40
    t = FakeTransport({d.WDIOC_GETSUPPORT: raw})
    info = Watchdog(t, "/dev/watchdog0").get_support()
    assert info == WatchdogInfo(options=0x8180, firmware_version=7, identity="i6300ESB timer")
    assert t.ioctls == [(d.WDIOC_GETSUPPORT, bytes(40))]
    assert WatchdogInfo.unpack(info.pack()) == info


def test_get_support_full_32_byte_identity_without_nul() -> None:
    raw = struct.pack("=II32s", 0, 0, b"x" * 32)
    info = Watchdog(FakeTransport({d.WDIOC_GETSUPPORT: raw}), "w").get_support()
    assert info.identity == "x" * 32


def test_short_reply_is_a_protocol_error() -> None:
    t = FakeTransport({d.WDIOC_GETSUPPORT: b"\0" * 8, d.WDIOC_GETTIMEOUT: b"\0"})
    wd = Watchdog(t, "/dev/watchdog0")
    with pytest.raises(WatchdogError, match="GETSUPPORT: reply of 8 bytes"):
        wd.get_support()
    with pytest.raises(WatchdogError, match="GETTIMEOUT"):
        wd.get_timeout()


def test_int_ioctls_pack_native_unsigned_ints() -> None:
    t = FakeTransport({d.WDIOC_SETTIMEOUT: u32(28), d.WDIOC_GETTIMEOUT: u32(28),
                       d.WDIOC_GETSTATUS: u32(0x8000), d.WDIOC_GETBOOTSTATUS: u32(0x20),
                       d.WDIOC_GETTIMELEFT: u32(27), d.WDIOC_GETPRETIMEOUT: u32(5)})
    wd = Watchdog(t, "/dev/watchdog0")
    assert wd.set_timeout(30) == 28  # the driver rounded
    assert wd.get_timeout() == 28
    assert wd.get_status() == 0x8000
    assert wd.get_bootstatus() == 0x20
    assert wd.get_timeleft() == 27
    wd.keepalive()
    wd.set_options(d.WDIOS_DISABLECARD)
    assert wd.set_pretimeout(5) == 5
    assert t.ioctls == [
        (d.WDIOC_SETTIMEOUT, u32(30)),
        (d.WDIOC_GETTIMEOUT, u32(0)),
        (d.WDIOC_GETSTATUS, u32(0)),
        (d.WDIOC_GETBOOTSTATUS, u32(0)),
        (d.WDIOC_GETTIMELEFT, u32(0)),
        (d.WDIOC_KEEPALIVE, u32(0)),
        (d.WDIOC_SETOPTIONS, u32(1)),
        (d.WDIOC_SETPRETIMEOUT, u32(5)),  # SET writes nothing back: read it with GET
        (d.WDIOC_GETPRETIMEOUT, u32(0)),
    ]


def test_negative_value_reaches_the_driver_as_unsigned() -> None:
    t = FakeTransport({d.WDIOC_SETTIMEOUT: OSError(errno.EINVAL, "Invalid argument")})
    with pytest.raises(WatchdogError):
        Watchdog(t, "w").set_timeout(-1)
    assert t.ioctls == [(d.WDIOC_SETTIMEOUT, b"\xff\xff\xff\xff")]


def test_out_of_range_value_fails_without_calling_the_driver() -> None:
    t = FakeTransport()
    with pytest.raises(WatchdogError, match="w: SETTIMEOUT 4294967296: Invalid argument"):
        Watchdog(t, "w").set_timeout(1 << 32)
    assert t.ioctls == []


def test_errors_name_device_and_operation() -> None:
    t = FakeTransport({d.WDIOC_SETTIMEOUT: OSError(errno.EINVAL, "Invalid argument"),
                       d.WDIOC_KEEPALIVE: OSError(errno.ENODEV, "gone")})
    wd = Watchdog(t, "/dev/watchdog0")
    with pytest.raises(WatchdogError) as info:
        wd.set_timeout(9999)
    assert str(info.value) == "/dev/watchdog0: SETTIMEOUT 9999: Invalid argument"
    assert info.value.errno == errno.EINVAL
    assert isinstance(info.value, OSError)
    with pytest.raises(WatchdogError, match="^/dev/watchdog0: KEEPALIVE: No such device$"):
        wd.keepalive()


def test_busy_open_message() -> None:
    e = WatchdogError.from_oserror("/dev/watchdog0", "open", OSError(errno.EBUSY, "busy"))
    assert str(e) == "/dev/watchdog0: open: device busy (another process holds it open)"
    assert e.errno == errno.EBUSY


@pytest.mark.parametrize("err", [errno.ENOTTY, errno.EOPNOTSUPP])
def test_timeleft_unsupported_is_none(err: int) -> None:
    t = FakeTransport({d.WDIOC_GETTIMELEFT: OSError(err, os.strerror(err))})
    assert Watchdog(t, "w").get_timeleft() is None


def test_timeleft_other_errors_raise() -> None:
    t = FakeTransport({d.WDIOC_GETTIMELEFT: OSError(errno.EIO, "I/O")})
    with pytest.raises(WatchdogError, match="GETTIMELEFT"):
        Watchdog(t, "w").get_timeleft()


def test_pet_by_write_is_not_the_magic_char() -> None:
    t = FakeTransport()
    Watchdog(t, "w").pet_by_write()
    assert len(t.writes) == 1 and len(t.writes[0]) == 1 and t.writes[0] != b"V"


def test_magic_close_writes_v_then_closes() -> None:
    t = FakeTransport()
    wd = Watchdog(t, "w")
    assert wd.magic_close() is True
    assert t.writes == [b"V"] and t.closed == 1
    assert wd.magic_close() is True and t.closed == 1  # idempotent


def test_magic_close_on_nowayout_returns_false_and_still_closes() -> None:
    t = FakeTransport()
    assert Watchdog(t, "w", nowayout=True).magic_close() is False
    assert t.closed == 1


def test_magic_close_write_failure_still_closes() -> None:
    class Failing(FakeTransport):
        def write(self, data: bytes) -> None:
            raise OSError(errno.EIO, "I/O error")

    t = Failing()
    with pytest.raises(WatchdogError, match="^w: magic close: Input/output error$"):
        Watchdog(t, "w").magic_close()
    assert t.closed == 1


def test_plain_close_never_writes_the_magic_char() -> None:
    t = FakeTransport()
    wd = Watchdog(t, "w")
    wd.close()
    wd.close()
    assert t.writes == [] and t.closed == 1
    with pytest.raises(WatchdogError, match="closed") as info:
        wd.keepalive()
    assert info.value.errno == errno.EBADF
    assert t.ioctls == []


def test_fd_transport_on_a_pipe_writes_and_reports_enotty() -> None:
    r, w = os.pipe()
    try:
        wd = Watchdog(FdTransport(w), "pipe")
        wd.pet_by_write()
        assert wd.get_timeleft() is None  # a pipe answers ENOTTY, like an old driver
        with pytest.raises(WatchdogError, match="^pipe: GETTIMEOUT: Inappropriate ioctl"):
            wd.get_timeout()
        assert wd.magic_close() is True
        assert os.read(r, 16) == b"\nV"
    finally:
        os.close(r)


# --- opening --------------------------------------------------------------------------------


def test_open_missing_path() -> None:
    with pytest.raises(WatchdogError, match="^/nonexistent/watchdog9: open: No such file"):
        open_watchdog("/nonexistent/watchdog9")


def test_open_sim_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HACHAIN_SIM_WATCHDOG", raising=False)
    with pytest.raises(WatchdogError, match="HACHAIN_SIM_WATCHDOG is not set"):
        open_watchdog("sim")


def test_open_sim_socket_missing(tmp_path: Path) -> None:
    sock = str(tmp_path / "none.sock")
    with pytest.raises(WatchdogError, match=f"^sim:{sock}: open: No such file"):
        open_watchdog("sim:" + sock)


def test_the_lookup_comes_before_the_open_and_the_timeout_right_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The open arms a real device with the driver's initial timeout: the sysfs/udev
    lookup of its nowayout (a pyudev import, files from a disk) comes before it, and
    SETTIMEOUT right after it. A cold pyudev import on a QEMU guest's first boot once took
    that whole initial timeout (CI, 2026-12-03), and over a stalled 9p root it took the
    configured one too (2026-12-06). /dev/null stands in for the node (a character device:
    a regular file is refused); the ioctl is what only a chip can answer."""
    node = os.devnull
    order: list[str] = []

    class Chip(FdTransport):
        def __init__(self, fd: int) -> None:
            order.append("open")
            super().__init__(fd)

        def ioctl(self, request: int, arg: bytes) -> bytes:
            order.append(d.IOCTL_NAMES.get(request, hex(request)))
            return arg  # the driver applied what was asked

    def lookup(path: str, sysfs_root: str | None = None) -> disc.WatchdogDevice:
        order.append("lookup")
        return disc.WatchdogDevice("watchdog7", path, "/sys/class/watchdog/watchdog7",
                                   nowayout=True)

    monkeypatch.setattr(d, "FdTransport", Chip)
    monkeypatch.setattr(disc, "find_device", lookup)
    wd = open_watchdog(str(node), timeout=10)
    try:
        assert order == ["lookup", "open", "SETTIMEOUT"] and wd.nowayout is True
    finally:
        wd.close()
    order.clear()
    wd = open_watchdog(str(node))  # without a timeout (hachain watchdog info): no ioctl
    wd.close()
    assert order == ["lookup", "open"]
    order.clear()
    wd = open_watchdog(str(node), nowayout=True, timeout=10)  # known: no lookup
    wd.close()
    assert order == ["open", "SETTIMEOUT"] and wd.nowayout is True


def test_open_auto_without_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disc, "discover", lambda sysfs_root=None: [])
    with pytest.raises(WatchdogError) as info:
        open_watchdog("auto")
    assert str(info.value) == d.NO_DEVICE_MESSAGE
    assert 'use device = "sim" or load softdog' in str(info.value)


# --- discovery ------------------------------------------------------------------------------


def make_fake_sysfs(root: Path, name: str, attrs: dict[str, str]) -> Path:
    dev = root / "class" / "watchdog" / name
    dev.mkdir(parents=True)
    for key, value in attrs.items():
        (dev / key).write_text(value + "\n")
    return dev


I6300 = {"identity": "i6300ESB timer", "timeout": "30", "bootstatus": "32", "nowayout": "0",
         "state": "inactive", "status": "0x0", "fw_version": "0", "options": "0x8180"}


def test_discover_on_this_machine_does_not_fail() -> None:
    devices = disc.discover()
    assert isinstance(devices, list)
    assert all(dev.devnode.startswith("/dev/") for dev in devices)


def test_discover_empty_or_missing_sysfs(tmp_path: Path) -> None:
    assert disc.discover(str(tmp_path)) == []
    (tmp_path / "class" / "watchdog").mkdir(parents=True)
    assert disc.discover(str(tmp_path)) == []


def test_read_sysfs_parses_what_exists(tmp_path: Path) -> None:
    make_fake_sysfs(tmp_path, "watchdog10", {"identity": "softdog", "timeout": "60"})
    make_fake_sysfs(tmp_path, "watchdog2", I6300 | {"timeleft": "29", "pretimeout": "0"})
    devices = disc.discover(str(tmp_path))
    assert [dev.name for dev in devices] == ["watchdog2", "watchdog10"]
    esb, soft = devices
    assert esb.devnode == "/dev/watchdog2"
    assert (esb.identity, esb.timeout, esb.timeleft, esb.bootstatus) == ("i6300ESB timer",
                                                                          30, 29, 32)
    assert (esb.nowayout, esb.state, esb.status, esb.options) == (False, "inactive", 0, 0x8180)
    assert soft.timeout == 60 and soft.timeleft is None and soft.nowayout is None
    assert soft.options is None and soft.driver is None
    assert json.loads(json.dumps(esb.to_json()))["bootstatus"] == 32


def test_read_sysfs_driver_link_and_garbage(tmp_path: Path) -> None:
    dev = make_fake_sysfs(tmp_path, "watchdog0", {"timeout": "abc", "nowayout": "1"})
    (tmp_path / "drivers" / "softdog").mkdir(parents=True)
    (dev / "device").mkdir()
    os.symlink(tmp_path / "drivers" / "softdog", dev / "device" / "driver")
    parsed = disc.read_sysfs(str(dev))
    assert parsed.timeout is None and parsed.nowayout is True and parsed.driver == "softdog"


def test_find_device(tmp_path: Path) -> None:
    make_fake_sysfs(tmp_path, "watchdog0", I6300)
    root = str(tmp_path)
    found = disc.find_device("/dev/watchdog0", root)
    assert found is not None and found.name == "watchdog0"
    legacy = disc.find_device("/dev/watchdog", root)
    assert legacy is not None and legacy.name == "watchdog0"
    assert disc.find_device("/nonexistent", root) is None


# --- the CLI (sysfs side; the simulator side is in test_wdsim.py) ------------------------------


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="hachain")
    add_parser(parser.add_subparsers(dest="command"))
    try:
        args = parser.parse_args(argv)
        rc = args.func(args)
    except SystemExit as e:
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_list_without_devices(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HACHAIN_SIM_WATCHDOG", raising=False)
    rc, out, _ = run_cli(["watchdog", "--sysfs-root", str(tmp_path), "list"], capsys)
    assert rc == 0
    assert out == "no watchdog devices found (looked in /sys/class/watchdog)\n"
    rc, out, _ = run_cli(["watchdog", "--sysfs-root", str(tmp_path), "list", "--json"], capsys)
    assert rc == 0 and json.loads(out) == []


def test_cli_list_on_this_machine_exits_0(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HACHAIN_SIM_WATCHDOG", raising=False)
    rc, out, _ = run_cli(["watchdog", "list"], capsys)
    assert rc == 0 and out.strip()


def test_cli_list_and_info_from_fake_sysfs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HACHAIN_SIM_WATCHDOG", raising=False)
    make_fake_sysfs(tmp_path, "watchdog0", I6300 | {"timeleft": "12"})
    root = ["watchdog", "--sysfs-root", str(tmp_path)]
    rc, out, _ = run_cli(root + ["list"], capsys)
    assert rc == 0
    assert "/dev/watchdog0" in out and "i6300ESB timer" in out and "CARDRESET" in out
    # /dev/watchdog0 does not exist here: sysfs alone answers, nothing is opened.
    rc, out, err = run_cli(root + ["info"], capsys)
    assert rc == 0, err
    assert "Identity:      i6300ESB timer" in out
    assert "Timeout:       30 seconds" in out and "Timeleft:      12 seconds" in out
    assert "CARDRESET: last reboot caused by this watchdog" in out
    assert "SETTIMEOUT" in out and "MAGICCLOSE" in out and "KEEPALIVEPING" in out
    assert "Nowayout:      no" in out and "not opened" in out
    rc, out, _ = run_cli(root + ["info", "--json", "--device", "/dev/watchdog0"], capsys)
    report = json.loads(out)
    assert rc == 0 and report["last_reboot_by_watchdog"] is True
    assert report["options_flags"] == ["SETTIMEOUT", "MAGICCLOSE", "KEEPALIVEPING"]


def test_info_flag_table_is_wdctls() -> None:
    """Issue 21.7: one row per flag the driver supports or the status words show, with
    1/0 for the status and the boot status, as wdctl prints them."""
    from hachain.watchdog.cli import format_info
    report = {"device": "/dev/watchdog0", "source": "ioctl", "identity": "i6300ESB timer",
              "options": 0x8180, "status": 0x200, "bootstatus": 0x20, "notes": []}
    lines = format_info(report).splitlines()
    head = next(ln for ln in lines if ln.strip().startswith("FLAG"))
    assert head.split() == ["FLAG", "DESCRIPTION", "STATUS", "BOOT-STATUS"]
    rows = {ln.split()[0]: ln.split()[-2:] for ln in lines[lines.index(head) + 1:]
            if ln.startswith("  ")}
    assert rows == {"CARDRESET": ["0", "1"], "PRETIMEOUT": ["1", "0"],
                    "MAGICCLOSE": ["0", "0"], "KEEPALIVEPING": ["0", "0"],
                    "SETTIMEOUT": ["0", "0"]}, rows
    unknown = format_info({**report, "options": None, "source": "sysfs"})
    assert "Options:       unknown: this kernel's sysfs does not offer them (--open asks " \
        "the driver)" in unknown
    assert "PRETIMEOUT" in unknown and "SETTIMEOUT" not in unknown


def test_cli_info_nowayout_is_not_opened(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    make_fake_sysfs(tmp_path, "watchdog0", I6300 | {"nowayout": "1"})
    rc, out, _ = run_cli(["watchdog", "--sysfs-root", str(tmp_path), "info"], capsys)
    assert rc == 0
    assert "Nowayout:      yes" in out and "was not opened" in out
    rc, _, err = run_cli(["watchdog", "--sysfs-root", str(tmp_path), "set-timeout", "5"],
                         capsys)
    assert rc == 1 and "nowayout" in err and err.count("\n") == 1


def test_cli_info_missing_device(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli(["watchdog", "info", "--device", "/nonexistent"], capsys)
    assert rc == 1 and out == ""
    assert err == "hachain watchdog: /nonexistent: open: No such file or directory\n"


def test_cli_info_auto_without_devices(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(["watchdog", "--sysfs-root", str(tmp_path), "info"], capsys)
    assert rc == 1 and "no watchdog device found" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ["watchdog"], ["watchdog", "set-timeout"], ["watchdog", "set-timeout", "abc"],
    ["watchdog", "set-timeout", "0"], ["watchdog", "info", "--bogus"],
])
def test_cli_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(argv, capsys)
    assert rc == 2 and err
