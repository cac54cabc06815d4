"""`private_tmp` (systemd's PrivateTmp=) and `nice` (Nice=), on every spawn path (clone3
with its set-up; the fallback through subprocess): the service has a mount namespace of
its own with a fresh tmpfs on /tmp and /var/tmp, so what it writes there is neither seen
here nor kept after it; its nice value is the one asked for. Real processes, read back
from /proc."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

from hachain import config
from hachain.config import ServiceConfig
from hachain.restarter import spawn
from tests.conftest import SPAWN_PATHS, spawn_path, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="a mount namespace needs root (CAP_SYS_ADMIN)")


def mounts_of(pid: int) -> dict[str, str]:
    """mount point -> file system type, as the process sees them."""
    out = {}
    with open(f"/proc/{pid}/mountinfo") as f:
        for ln in f:
            left, right = ln.split(" - ", 1)
            out[left.split()[4]] = right.split()[0]
    return out


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_a_private_tmp_is_its_own_and_empty(cgroups: Any, tmp_path: Any, started: list[int],
                                            monkeypatch: Any, path: str) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)
    mark = f"hachain-test-{uuid.uuid4().hex}"
    ours = f"/tmp/{mark}.host"  # a file of this host's /tmp: the service must not see it
    open(ours, "w").close()
    try:
        script = (f"test -e {ours} && echo sees-host || echo own; ls -A /tmp | wc -l; "
                  f"echo x > /tmp/{mark}; echo y > /var/tmp/{mark}; exec sleep 3600")
        cfg = ServiceConfig(name="web", command=("/bin/sh", "-c", script), private_tmp=True,
                            user="nobody")
        logs = tmp_path / "logs"
        sp = spawn.spawn(cfg, str(logs), cgroups, None, yield_cpu=False)
        started.append(sp.pid)
        log = logs / "web.log"
        said = wait_until(lambda: log.exists() and len(log.read_text().split()) == 2
                          and log.read_text().split(), 30, "the service's look at /tmp")
        assert said == ["own", "0"]  # not this host's /tmp, and empty
        assert os.readlink(f"/proc/{sp.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        m = mounts_of(sp.pid)
        assert m.get("/tmp") == "tmpfs" and m.get("/var/tmp") == "tmpfs", m
        wait_until(lambda: os.path.exists(f"/proc/{sp.pid}/root/tmp/{mark}"), 30,
                   "the service's own file")
        assert not os.path.exists(f"/tmp/{mark}") and not os.path.exists(f"/var/tmp/{mark}")
        # the host's mounts are untouched
        assert mounts_of(os.getpid()).get("/tmp") == mounts_of(1).get("/tmp")
    finally:
        os.unlink(ours)


@pytest.mark.parametrize("path", SPAWN_PATHS)
@pytest.mark.parametrize("nice", [19, -5])
def test_nice_is_what_the_service_runs_at(cgroups: Any, tmp_path: Any, started: list[int],
                                          monkeypatch: Any, path: str, nice: int) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)
    cfg = ServiceConfig(name="batch", command=("sleep", "3600"), nice=nice)
    sp = spawn.spawn(cfg, str(tmp_path / "logs"), cgroups, None, yield_cpu=False)
    started.append(sp.pid)
    assert os.getpriority(os.PRIO_PROCESS, sp.pid) == nice


def test_unset_nice_is_plain_and_bounds_are_checked() -> None:
    assert spawn._plain(ServiceConfig(name="x", command=("x",)))
    assert not spawn._plain(ServiceConfig(name="x", command=("x",), nice=0))
    with pytest.raises(config.ConfigError) as e:
        config.parse('[service.web]\ncommand = ["/bin/true"]\nnice = 20\n', "c.toml")
    assert "c.toml:3: service.web.nice: must be <= 19, got 20" in str(e.value)
