"""`hachain import watchdog.conf`: the `watchdog` daemon's configuration becomes
`[watchdog]` and one `[check.NAME]` per test, every option it cannot carry over named on
one warning line, and the result loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hachain import config, importer, importer_watchdog

CONF = """\
# as Debian ships it, with its tests switched on
ping                   = 127.0.0.1
ping                   = gateway.lan
interface              = lo
file                   = {log}
change                 = 1407
max-load-1             = 24
max-load-15            = 12
min-memory             = 1
allocatable-memory     = 1
repair-binary          = /bin/true
repair-timeout         = 30
test-binary            = /bin/true
test-timeout           = 5
watchdog-device        = /dev/watchdog0
watchdog-timeout       = 60
temperature-sensor     = /sys/class/hwmon/hwmon0/temp1_input
max-temperature        = 85
interval               = 10
realtime               = yes
retry-timeout          = 120
repair-maximum         = 2
pidfile                = /run/sshd.pid
bogus-option           = 3
"""


def run_import(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hachain.cli", "import", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_a_watchdog_conf_becomes_the_watchdog_table_and_checks(tmp_path: Path) -> None:
    src = tmp_path / "watchdog.conf"
    src.write_text(CONF.format(log=tmp_path / "messages"))
    p = run_import(src)
    assert p.returncode == 1, p.stderr  # converted, with warnings to read
    cfg = config.parse(p.stdout, "imported.toml")
    assert (cfg.watchdog.device, cfg.watchdog.timeout, cfg.watchdog.pet_interval) == \
        ("/dev/watchdog0", 60, 10.0)
    assert sorted(cfg.checks) == sorted([
        "load-1", "load-15", "memory-available", "ping-127.0.0.1", "interface-lo",
        "file-messages", "test-true", "temperature-hwmon0", "pidfile-sshd.pid"])
    c = cfg.checks
    assert (c["load-15"].kind, c["load-15"].max_load, c["load-15"].average) == \
        ("load", 12.0, 15)
    assert c["memory-available"].min_available == os.sysconf("SC_PAGE_SIZE")  # 1 page
    assert (c["file-messages"].path, c["file-messages"].max_age) == \
        (str(tmp_path / "messages"), 1407.0)
    assert c["temperature-hwmon0"].max_temperature == 85.0
    assert c["test-true"].command == ("/bin/true",) and c["test-true"].timeout == 5.0
    for chk in c.values():
        assert chk.retry_timeout == 120.0 and chk.interval == 10.0
        # repair-maximum = 2; the daemon's argument, the error number, from the environment
        assert chk.repair == (tuple(importer_watchdog.repair_with_error("/bin/true")),) * 2
        assert chk.repair_timeout == 30.0 and chk.action == "reboot"
    warned = [line.split(": warning: ", 1)[1] for line in p.stderr.splitlines()]
    assert warned == [
        f"{src}:3: ping: 'gateway.lan' is a name: a ping check takes an address (a lookup "
        "could hang with the network); dropped",
        f"{src}:10: allocatable-memory: not carried over: not a check kind: a `kind = "
        "\"command\"` check can allocate",
        f"{src}:20: realtime: not carried over: the tickler always runs at real-time "
        "priority",
        f"{src}:24: bogus-option: not a watchdog.conf option hachain knows; dropped"]


def test_the_test_directory_scripts_become_checks_with_their_repair(tmp_path: Path) -> None:
    d = tmp_path / "watchdog.d"
    d.mkdir()
    for name in ("20-net", "10-disk"):
        (d / name).write_text("#!/bin/sh\nexit 0\n")
        (d / name).chmod(0o755)
    (d / "README").write_text("not a script")
    src = tmp_path / "watchdog.conf"
    src.write_text(f"watchdog-device = /dev/watchdog\ntest-directory = {d}\n")
    text, conv = importer.import_files([str(src)])
    assert not conv.errors and not conv.warnings, conv.warnings
    cfg = config.parse(text, "x.toml")
    assert list(cfg.checks) == ["test-10-disk", "test-20-net"]
    assert cfg.checks["test-20-net"].command == (str(d / "20-net"), "test")
    repair = cfg.checks["test-20-net"].repair
    assert repair == (tuple(importer_watchdog.repair_with_error(str(d / "20-net"), "repair")),)


def test_an_imported_repair_gets_the_daemons_arguments(tmp_path: Path) -> None:
    """The script as the daemon calls it: `script repair ERRNO` (test-directory) and
    `repair-binary ERRNO`, ERRNO being what the restarter puts in $HACHAIN_CHECK_ERROR."""
    d = tmp_path / "watchdog.d"
    d.mkdir()
    script = d / "net"
    script.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/args\n')
    script.chmod(0o755)
    src = tmp_path / "watchdog.conf"
    src.write_text(f"test-directory = {d}\nrepair-binary = {script}\nmax-load-1 = 9\n")
    text, conv = importer.import_files([str(src)])
    cfg = config.parse(text, "x.toml")
    for name in ("test-net", "load-1"):
        for argv in cfg.checks[name].repair:
            subprocess.run(argv, env={"PATH": "/usr/bin:/bin", "HACHAIN_CHECK_ERROR": "42"},
                           check=True, timeout=30)
    assert (tmp_path / "args").read_text().splitlines() == ["repair 42", "42"]


def test_a_file_without_change_only_has_to_exist_and_says_so(tmp_path: Path) -> None:
    src = tmp_path / "watchdog.conf"
    src.write_text("file = /var/log/syslog\n")
    text, conv = importer.import_files([str(src)], "watchdog")
    assert "# no `change =` for this file: it only has to exist" in text
    assert config.parse(text, "x.toml").checks["file-syslog"].command == \
        ("/usr/bin/test", "-e", "/var/log/syslog")


def test_nothing_to_carry_over_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "watchdog.conf"
    src.write_text("realtime = yes\npriority = 1\nwatchdog-device =\n")
    p = subprocess.run([sys.executable, "-m", "hachain.cli", "import", "--format",
                        "watchdog", str(src)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "refused" in p.stderr, p.stderr


def test_detection_leaves_units_and_supervisord_alone() -> None:
    assert importer.detect_format("watchdog-device = /dev/watchdog\n") == "watchdog"
    assert importer.detect_format("max-load-1 = 24\n") == "watchdog"
    assert importer.detect_format("[Service]\nExecStart=/bin/x\n") == "systemd"
    assert importer.detect_format("[program:x]\ncommand=/bin/x\n") == "supervisord"
    assert importer.detect_format("interval = 1\n") is None  # not enough to say
