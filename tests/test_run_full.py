"""A full run directory (tmpfs /run) does not stop the layers' heartbeats.

A heartbeat is rewritten in place; a record that outgrows its slot needs a new file.
The slot is a whole page, so a record that grows while /run is full (a critical
service's reason in the restarter's `extra`, say) is still written. Needs root (a
tmpfs mount of its own).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import channels

pytestmark = pytest.mark.slow  # a whole chain on a full tmpfs


@pytest.fixture
def tiny_run(tmp_path: Any) -> Iterator[str]:
    d = tmp_path / "run"
    d.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "hc-run", str(d)],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, f"cannot mount a tmpfs: {r.stderr.strip()}"
    yield str(d)
    subprocess.run(["umount", "-l", str(d)], capture_output=True, timeout=10)


def _fill(directory: str) -> None:
    fd = os.open(os.path.join(directory, "fill"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == 0


def test_a_growing_heartbeat_is_written_on_a_full_run_dir(tiny_run: str) -> None:
    w = channels.HeartbeatWriter(tiny_run, "restarter")
    w.beat({"critical": {"db": {"ok": True, "reason": "", "state": "ready"}}})
    _fill(tiny_run)
    longer = {"critical": {"db": {"ok": False, "state": "backoff",
                                  "reason": "backoff 0.8 s after killed by SIGKILL " * 40}}}
    w.beat(longer)
    hb = channels.read_heartbeat(tiny_run, "restarter")
    assert hb is not None and hb.seq == 2 and hb.extra == longer
    assert len(channels.heartbeat_bytes(hb)) > 1024  # it did outgrow a smaller slot
    w.close()
