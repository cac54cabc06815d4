"""The real-kernel harness, proven with the emulated i6300esb and with softdog.

Each boot is a real Debian kernel under QEMU software emulation (no KVM), so these tests
take seconds, not milliseconds; the whole file is about a minute on two cores. Without
QEMU, a kernel or busybox they skip with the harness's one-line reason, except in CI
(`CI=true`), where that is a failure. Timings are printed (`pytest -s`) and recorded as
junit properties.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hachain.simulators.qemu.harness import (
    PETTER_SCRIPT,
    QemuError,
    QemuMachine,
    QemuTimeout,
    QemuUnavailable,
    unavailable_reason,
)
from hachain.simulators.qemu.initramfs import CpioWriter
from tests.conftest import wait_until

PYTHON = os.path.realpath(sys.executable)
PETTER = [PYTHON, os.fspath(PETTER_SCRIPT)]

MachineFactory = Callable[..., QemuMachine]


@pytest.fixture
def machine(qemu_available: None, tmp_path: Path) -> Iterator[MachineFactory]:
    """Makes booted machines; every one is closed (QEMU killed and reaped) afterwards."""
    made: list[QemuMachine] = []

    def make(argv: list[str], **kwargs: Any) -> QemuMachine:
        vm = QemuMachine(argv, workdir=tmp_path / f"vm{len(made)}", **kwargs)
        made.append(vm)
        vm.boot()
        return vm

    yield make
    for vm in made:
        pid = vm.pid
        vm.close()
        if pid is not None:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def _note(record_property: Callable[[str, object], None], name: str, value: float) -> None:
    record_property(name, round(value, 2))
    print(f"qemu timing: {name} = {value:.2f}s")


@pytest.mark.qemu
def test_i6300esb_resets_a_guest_that_stops_petting(
        machine: MachineFactory, record_property: Callable[[str, object], None]) -> None:
    vm = machine(PETTER + ["--pets", "4", "--interval", "1.5"], heartbeat=2)
    first = vm.wait_boot(1, timeout=60)
    assert first.pid1_at is not None
    _note(record_property, "boot_to_pid1", first.pid1_at - vm.started_at)
    assert vm.wait_for(r"bootstatus (\d+)", timeout=30).group(1) == "0"
    assert vm.wait_for(r"opened /dev/watchdog0 timeout (\d+)", timeout=30).group(1) == "2"
    last_pet = vm.wait_for(r"pet 4 timeleft", timeout=30)
    stopped = vm.wait_for("stopped petting", timeout=30)
    # Four pets 1.5 s apart outlast the 2 x 2 s heartbeat: petting held the reset off.
    assert [e.name for e in vm.events] == []
    assert len(vm.boots) == 1
    fired = vm.wait_event("WATCHDOG", timeout=30)
    assert fired.data["action"] == "reset"
    assert fired.at > vm.time_at(stopped.start())
    reset_after = fired.at - vm.time_at(last_pet.start())
    _note(record_property, "last_pet_to_watchdog_reset", reset_after)
    assert 1.0 < reset_after < 8.0
    second = vm.wait_boot(2, timeout=60)
    assert second.pid1_at is not None
    _note(record_property, "reset_to_pid1", second.pid1_at - fired.at)
    assert vm.wait_for(r"bootstatus (\d+)", timeout=30, since=stopped.end()).group(1) == "32"
    rc, out = vm.run("cat /sys/class/watchdog/watchdog0/bootstatus", timeout=40)
    assert (rc, out.strip()) == (0, "32")
    # what the host took from QEMU over the whole run: known, and within the wall time
    now = time.monotonic()
    waited = vm.host_wait(vm.started_at, now)
    assert waited is not None and 0 <= waited <= now - vm.started_at, waited


@pytest.mark.qemu
def test_agent_runs_commands_in_the_guest(machine: MachineFactory, tmp_path: Path) -> None:
    persist = tmp_path / "persist"
    vm = machine(PETTER + ["--device", ""], watchdog=None, env={"HACHAIN_TEST": "yes"},
                 persist_dir=persist, setup="mkdir -p /etc/hachain; echo set > /etc/hachain/x")
    vm.wait_for("idle, no watchdog", timeout=60)
    assert vm.run("echo out; echo err >&2; exit 3", timeout=40) == (3, "out\nerr\n")
    result = vm.run_result(["/bin/sh", "-c", "echo out; echo err >&2"])
    assert (result.rc, result.stdout, result.stderr, result.boot) == (0, "out\n", "err\n", 1)
    rc, environ = vm.run("tr '\\0' '\\n' < /proc/1/environ")
    assert rc == 0 and "HACHAIN_TEST=yes" in environ.split()
    assert "HACHAIN_QEMU_BOOT=1" in environ.split()
    # PID 1 has no handler for SIGSTOP, so from inside its namespace it is not stopped:
    # asleep or, on a busy host, running (CI with both cores loaded saw R), never T
    state = vm.run("kill -STOP 1; sleep 0.2; grep ^State: /proc/1/status")[1].split()[1]
    assert state in ("S", "R"), state
    # The persistent share is writable and is the host directory; the root is an overlay.
    assert vm.run("echo kept > /var/lib/hachain/note && touch /etc/hachain-was-here")[0] == 0
    assert (persist / "note").read_text() == "kept\n"
    assert not Path("/etc/hachain-was-here").exists()
    assert vm.run("cat /etc/hachain/x") == (0, "set\n")
    assert vm.run_result("exec sleep 30", timeout=3).timed_out
    assert vm.run_result(["/no/such/program"]).rc == 127
    with pytest.raises(QemuTimeout, match="waiting for 'never printed'"):
        vm.wait_for("never printed", timeout=0.5)
    # What a failure shows of a boot: the console lines with when each came, and the
    # agent's last snapshot of the guest's processes (itself among them, with its threads)
    assert re.search(r"^ +-\d+\.\ds \| .*idle, no watchdog", vm._tail(40), re.M), vm._tail(40)
    wait_until(lambda: "guest_agent.py" in vm._procs_of(1), 30, "the agent's snapshot")
    procs = vm._procs_of(1)
    assert "guest processes of boot 1" in procs and re.search(r"^ +thread \d+ ", procs, re.M), \
        procs
    assert vm._procs_of(2) == ""


@pytest.mark.qemu
def test_softdog_exposes_watchdog0_and_no_reboot_ends_qemu(machine: MachineFactory) -> None:
    vm = machine(PETTER + ["--pets", "3", "--interval", "1"], watchdog="softdog",
                 heartbeat=3, no_reboot=True)
    assert "Software Watchdog" in vm.wait_for(r"identity (.*)", timeout=60).group(1)
    assert vm.wait_for(r"opened /dev/watchdog0 timeout (\d+)", timeout=30).group(1) == "3"
    vm.wait_for("stopped petting", timeout=30)
    assert vm.wait_exit(timeout=30) == 0
    assert [e.name for e in vm.events if e.name == "SHUTDOWN"] == ["SHUTDOWN"]
    assert len(vm.boots) == 1


@pytest.mark.qemu
def test_without_panic_reboot_only_the_watchdog_brings_the_machine_back(
        machine: MachineFactory) -> None:
    vm = machine(PETTER + ["--pets", "1", "--then", "exit"], heartbeat=2, panic=None)
    # No driver here implements time left: the ioctl fails with EOPNOTSUPP.
    left = vm.wait_for(r"pet 1 timeleft (.*)", timeout=60).group(1)
    assert left == f"unsupported ({errno.errorcode[errno.EOPNOTSUPP]})"
    panicked = vm.wait_for("Attempted to kill init", timeout=30)
    fired = vm.wait_event("WATCHDOG", timeout=30)
    assert fired.at > vm.time_at(panicked.start())
    vm.wait_boot(2, timeout=60)
    assert vm.wait_for(r"bootstatus (\d+)", timeout=30, since=panicked.end()).group(1) == "32"


def test_missing_qemu_gives_one_clear_line(tmp_path: Path) -> None:
    vm = QemuMachine(["/bin/true"], qemu="/nonexistent/qemu-system-x86_64",
                     workdir=tmp_path)
    with pytest.raises(QemuUnavailable) as info:
        vm.boot()
    message = str(info.value)
    assert "\n" not in message
    assert "missing /nonexistent/qemu-system-x86_64" in message
    assert "apt-get install -y qemu-system-x86 linux-image-amd64 busybox-static" in message
    assert vm.pid is None
    reason = unavailable_reason(qemu="/nonexistent/qemu-system-x86_64")
    assert reason == message


def test_guest_paths_follow_the_shares(tmp_path: Path) -> None:
    vm = QemuMachine(["/bin/true"], workdir=tmp_path, persist_dir=tmp_path / "keep",
                     persist_path="/var/lib/hachain")
    assert vm.guest_path(tmp_path / "ctl" / "x") == "/run/hachain-qemu/x"
    assert vm.guest_path(tmp_path / "keep" / "a" / "b") == "/var/lib/hachain/a/b"
    assert vm.guest_path("/usr/bin/env") == "/usr/bin/env"
    with pytest.raises(ValueError, match="not visible in the guest"):
        vm.guest_path("/tmp/elsewhere")
    assert vm.put_file("s.sh", "echo hi\n", 0o755) == "/run/hachain-qemu/files/s.sh"


def test_cpio_archive_lists_with_cpio(tmp_path: Path) -> None:
    cpio_bin = "/usr/bin/cpio"
    if not os.path.exists(cpio_bin):
        pytest.skip("cpio is not installed")
    writer = CpioWriter()
    writer.directory("bin")
    writer.file("bin/hello", b"hi\n", 0o755)
    writer.symlink("bin/sh", "hello")
    writer.char_device("console", 5, 1)
    archive = tmp_path / "a.cpio"
    archive.write_bytes(writer.finish())
    import subprocess
    listing = subprocess.run([cpio_bin, "-itv", "-F", os.fspath(archive)], check=True,
                             capture_output=True, text=True).stdout
    assert re.search(r"^-rwxr-xr-x .* bin/hello$", listing, re.MULTILINE)
    assert re.search(r"^lrwxrwxrwx .* bin/sh -> hello$", listing, re.MULTILINE)
    assert re.search(r"^crw------- .* 5,\s+1 .* console$", listing, re.MULTILINE)


# A stand-in for QEMU whose QMP server fumbles the handshake: each start takes the next
# mode from a file ("silent": takes the connection and says nothing; "mute": greets and
# never replies). With no modes left it becomes the real QEMU (exec), so the retried boot
# is a real one.
FUMBLING_QEMU = """#!{python}
import os, socket, sys, time
modes_file = {modes!r}
with open(modes_file) as f:
    modes = f.read().split()
if not modes:
    os.execv({qemu!r}, [{qemu!r}] + sys.argv[1:])
with open(modes_file, "w") as f:
    f.write(" ".join(modes[1:]))
spec = sys.argv[sys.argv.index("-qmp") + 1]
path = spec[len("unix:"):].split(",")[0]
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(1)
conn, _ = server.accept()
if modes[0] == "mute":
    conn.sendall(b'{{"QMP": {{"version": {{}}, "capabilities": []}}}}\\n')
time.sleep(600)
"""


def _fumbling_qemu(tmp_path: Path, modes: list[str]) -> Path:
    real = shutil.which("qemu-system-x86_64")
    assert real is not None
    modes_file = tmp_path / "modes"
    modes_file.write_text(" ".join(modes))
    fake = tmp_path / "qemu-system-x86_64"
    fake.write_text(FUMBLING_QEMU.format(python=PYTHON, modes=os.fspath(modes_file),
                                         qemu=real))
    fake.chmod(0o755)
    return fake


@pytest.mark.qemu
def test_a_qemu_that_fumbles_the_qmp_handshake_is_started_again(
        qemu_available: None, tmp_path: Path) -> None:
    """CI once saw QEMU greet and then not answer qmp_capabilities for 15 s; a client
    that reads the greeting with no deadline would wait for ever on one that says
    nothing. Each is killed and started again, and the next start is a working guest."""
    fake = _fumbling_qemu(tmp_path, ["silent", "mute"])
    with QemuMachine(PETTER + ["--device", ""], watchdog=None, qemu=fake,
                     workdir=tmp_path / "vm") as vm:
        vm.boot(timeout=2.0)
        assert len(vm.boot_retries) == 2, vm.boot_retries
        assert "no greeting within 2.0s" in vm.boot_retries[0]
        assert "qmp qmp_capabilities: no reply within 2.0s" in vm.boot_retries[1]
        assert all("threads:" in why for why in vm.boot_retries), vm.boot_retries
        vm.wait_for("idle, no watchdog", timeout=60)
        assert vm.qmp("query-status")["running"] is True


@pytest.mark.qemu
def test_a_qemu_that_never_answers_fails_the_boot_in_bounded_time(
        qemu_available: None, tmp_path: Path) -> None:
    fake = _fumbling_qemu(tmp_path, ["mute"] * 3)
    vm = QemuMachine(PETTER, watchdog=None, qemu=fake, workdir=tmp_path / "vm")
    with pytest.raises(QemuError, match=r"no reply within 1.0s .*; qemu: pid \d+ threads: .*"
                                        r"attempt 3 of 3") as info:
        vm.boot(timeout=1.0, attempts=3)
    assert len(vm.boot_retries) == 2
    assert vm.pid is None
    assert "\n" not in str(info.value).split("; console:")[0]
