"""requires_mounts_for (systemd's RequiresMountsFor=): a start waits until the file
systems /etc/fstab names for its paths are mounted.

A real restarter in a mount namespace of its own, with a test fstab bound over
/etc/fstab there: the service waits (not counted against its intensity, the reason
naming the mount point) until the test mounts a tmpfs at that point in the restarter's
namespace, then starts. And the parsing of fstab and mountinfo, `hachain check` and the
importer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest

from hachain import config, hostcheck, importer, mounts
from tests.conftest import wait_until

RUN_BOUND = 30.0  # a restarter answering, /bin/sleep starting; no chain timer involved

FSTAB = """# /etc/fstab: static file system information.
UUID=1234 /               ext4    errors=remount-ro 0 1
UUID=5678 /data           ext4    defaults 0 2
/dev/sdb1 /srv/my\\040files xfs   noauto 0 0
/swapfile none            swap    sw 0 0
"""
MOUNTINFO = """22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid - proc proc rw
"""


def test_missing_names_each_unmounted_point_above_a_path() -> None:
    assert mounts.missing(("/data/db", "/srv/my files/x", "/var/lib/x"), FSTAB,
                          MOUNTINFO) == [("/data/db", "/data"),
                                         ("/srv/my files/x", "/srv/my files")]
    with_data = MOUNTINFO + "30 22 8:17 / /data rw - ext4 /dev/sdb1 rw\n"
    assert mounts.missing(("/data/db",), FSTAB, with_data) == []
    assert mounts.missing(("/database",), FSTAB, MOUNTINFO) == []  # not under /data
    assert mounts.missing(("/data",), "", "") == []  # no fstab: nothing needed


def test_check_line(tmp_path: Any) -> None:
    (tmp_path / "fstab").write_text(FSTAB)
    (tmp_path / "mountinfo").write_text(MOUNTINFO)
    assert mounts.check(("/data/db", "/srv/my files"), str(tmp_path / "fstab"),
                        str(tmp_path / "mountinfo")) == (
        f"requires_mounts_for /data/db: /data ({tmp_path}/fstab) is not mounted (and 1 "
        "more); waiting for it")


@pytest.mark.slow
def test_a_start_waits_for_its_file_system(restarter: Any, tmp_path: Any) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a mount namespace of the restarter's own needs root and unshare(1)")
    data = tmp_path / "data"
    (data / "db").mkdir(parents=True)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"tmpfs {data} tmpfs defaults 0 0\n")
    r = restarter(f'''
[service.db]
command = ["/bin/sh", "-c", "test -e {data}/db/on-the-data-fs && exec sleep 3600"]
requires_mounts_for = ["{data}/db"]
intensity = {{ max_restarts = 1, window = 60 }}
''', start=False)
    wrapper = tmp_path / "own-fstab"
    wrapper.write_text(f'#!/bin/sh\nmount --bind {fstab} /etc/fstab && exec "$@"\n')
    wrapper.chmod(0o755)
    r.start(wrap=("unshare", "-m", "--propagation", "private", str(wrapper)))
    line = f"requires_mounts_for {data}/db: {data} (/etc/fstab) is not mounted"
    wait_until(lambda: line in open(r.log).read(), RUN_BOUND, "the start to wait")
    r.beats(8)  # (past intensity's 1 restart: a wait is not a failed start)
    st = r.svc("db")
    assert st["pid"] is None and st["state"] == "backoff" and line in st["reason"], st
    assert r.proc is not None
    subprocess.run(["nsenter", "-t", str(r.proc.pid), "-m", "/bin/sh", "-c",
                    f"mount -t tmpfs t {data} && mkdir {data}/db && "
                    f"touch {data}/db/on-the-data-fs"], check=True, timeout=10)
    r.wait_state("db", "ready", timeout=RUN_BOUND)
    assert not (data / "db" / "on-the-data-fs").exists()  # (the host's view: not mounted)


def test_check_and_import(tmp_path: Any) -> None:
    cfg = config.parse('[service.a]\ncommand = ["/bin/x"]\nrequires_mounts_for = ["/"]\n')
    assert not any("requires_mounts_for" in p for p in hostcheck.problems(cfg))
    (tmp_path / "a.service").write_text("[Unit]\nRequiresMountsFor=/var/lib/a /srv\n"
                                        "RequiresMountsFor=relative\n[Service]\n"
                                        "ExecStart=/bin/a\n")
    text, conv = importer.import_files([str(tmp_path / "a.service")])
    assert config.parse(text).services["a"].requires_mounts_for == ("/var/lib/a", "/srv")
    assert conv.warnings == [f"{tmp_path}/a.service:3: RequiresMountsFor: relative: not an "
                             "absolute path; dropped"]
