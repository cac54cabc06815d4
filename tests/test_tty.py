"""tty_path (systemd's TTYPath= with StandardInput=tty), tty_reset and tty_vhangup: a
service that owns a terminal, as a getty on a serial console does, on every spawn path.

A real pseudo terminal stands for the console: the service must see it as its stdin,
stdout and stderr and as the controlling terminal of a session of its own; a hang-up
takes it from whoever had it open before. And the configuration's and importer's side.
"""

from __future__ import annotations

import errno
import os
import select
import time
from typing import Any

import pytest

from hachain import importer
from hachain.config import ServiceConfig
from hachain.restarter import spawn
from tests.conftest import SPAWN_PATHS, spawn_path

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="a hang-up of a terminal needs root (CAP_SYS_ADMIN)")

READ_BOUND = 30.0  # a /bin/sh starting and answering; no chain timer involved


def read_until(fd: int, want: bytes) -> bytes:
    got = b""
    end = time.monotonic() + READ_BOUND
    while want not in got:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {want!r} on the terminal within {READ_BOUND:g} s: {got!r}")
        if select.select([fd], [], [], left)[0]:
            got += os.read(fd, 4096)
    return got


def proc_stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_the_service_owns_its_terminal(cgroups: Any, tmp_path: Any, started: list[int],
                                       monkeypatch: Any, path: str) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)
    master, slave = os.openpty()
    name = os.ttyname(slave)
    before = os.open(name, os.O_RDWR | os.O_NOCTTY)  # an earlier session's, still open
    os.close(slave)
    try:
        cfg = ServiceConfig("console", ("/bin/sh", "-c", "echo tty=$(tty); read line; "
                                        "echo got $line; exec sleep 3600"),
                            tty_path=name, tty_reset=True, tty_vhangup=True)
        sp = spawn.spawn(cfg, str(tmp_path / "logs"), cgroups, None, yield_cpu=False)
        started.append(sp.pid)
        read_until(master, f"tty={name}".encode())
        os.write(master, b"hello\n")
        read_until(master, b"got hello")
        st = proc_stat(sp.pid)
        # (fields after the name: state, ppid, pgrp, session, tty_nr)
        assert int(st[3]) == sp.pid and int(st[2]) == sp.pid  # a session of its own
        assert int(st[4]) == os.stat(name).st_rdev  # the terminal is its controlling one
        with open(f"/proc/{sp.pid}/status") as f:
            ign = next(int(ln.split()[1], 16) for ln in f if ln.startswith("SigIgn:"))
        assert not ign & 1  # SIGHUP at its default again after the hang-up (a getty's due)
        with pytest.raises(OSError) as e:
            os.write(before, b"x")  # hung up: what had it before has lost it
        assert e.value.errno == errno.EIO
        assert not (tmp_path / "logs" / "console.log").exists() or \
            b"got hello" not in (tmp_path / "logs" / "console.log").read_bytes()
    finally:
        os.close(before)
        os.close(master)


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_a_terminal_that_is_not_there_fails_the_start_naming_it(
        cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any, path: str) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)
    cfg = ServiceConfig("console", ("/bin/sh", "-c", "exec sleep 3600"),
                        tty_path="/dev/hachain-no-such-tty")
    with pytest.raises(spawn.SpawnError, match=r'tty_path = "/dev/hachain-no-such-tty": No '
                       r"such file or directory \(errno ENOENT\)"):
        sp = spawn.spawn(cfg, str(tmp_path / "logs"), cgroups, None, yield_cpu=False)
        started.append(sp.pid)


def test_import_takes_a_getty_units_terminal() -> None:
    conv = importer.convert_systemd(
        "[Service]\nExecStart=-/sbin/agetty -o '-p -- \\\\u' --keep-baud 115200 - $TERM\n"
        "Type=idle\nRestart=always\nUtmpIdentifier=ttyS0\nStandardInput=tty\n"
        "StandardOutput=tty\nTTYPath=/dev/ttyS0\nTTYReset=yes\nTTYVHangup=yes\n"
        "KillMode=process\nIgnoreSIGPIPE=no\nSendSIGHUP=yes\n", "serial-getty@ttyS0.service")
    s = conv.services["serial-getty@ttyS0"]
    assert (s["tty_path"], s["tty_reset"], s["tty_vhangup"]) == ("/dev/ttyS0", True, True)
    assert not [w for w in conv.warnings if "TTY" in w or "Standard" in w], conv.warnings
    console = importer.convert_systemd("[Service]\nExecStart=/sbin/sulogin\n"
                                       "StandardInput=tty-force\n", "rescue.service")
    assert console.services["rescue"]["tty_path"] == "/dev/console"
