"""Namespaces of a service's own beside its file system and network (systemd's
ProtectHostname=, PrivateIPC=, PrivateMounts=), on every spawn path: the namespace is
the service's (its /proc/PID/ns link differs from the restarter's), what it does there
stays there, and its commands join it. And the configuration's and the importer's side.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from hachain import config, importer
from hachain.config import ServiceConfig
from hachain.restarter import spawn
from tests.conftest import SPAWN_PATHS, spawn_path, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="a namespace of its own needs root (CAP_SYS_ADMIN)")
BOUND = 30.0  # a shell starting and writing a line; no chain timer involved


def ns(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def queues() -> list[str]:
    """The ids of the System V message queues of this (the host's) IPC namespace."""
    with open("/proc/sysvipc/msg") as f:
        return [line.split()[1] for line in f.read().splitlines()[1:]]


def start(cfg: ServiceConfig, cgroups: Any, tmp_path: Any, started: list[int]) -> int:
    sp = spawn.spawn(cfg, str(tmp_path / "logs"), cgroups, None, yield_cpu=False)
    started.append(sp.pid)
    return sp.pid


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_its_own_uts_ipc_and_mounts(cgroups: Any, tmp_path: Any, started: list[int],
                                    monkeypatch: Any, path: str) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir()
    script = (f"mount -t tmpfs t {mnt} && touch {mnt}/mine && "
              f"(hostname evil; echo hostname=$?) > {out} 2>&1; "
              f"ipcmk -Q > /dev/null && echo queues=$(ipcs -q | grep -c 0x) >> {out}; "
              "exec sleep 3600")
    cfg = ServiceConfig(name="box", command=("/bin/sh", "-c", script), protect_hostname=True,
                        private_ipc=True, private_mounts=True)
    host_before = queues()
    pid = start(cfg, cgroups, tmp_path, started)
    text = wait_until(lambda: out.exists() and "queues=" in (t := out.read_text()) and t,
                      BOUND, "the service's checks")
    for kind in ("uts", "ipc", "mnt"):
        assert ns(pid, kind) != ns("self", kind), kind
    assert "hostname=1" in text  # refused (EPERM) in its own namespace too
    assert "queues=1" in text  # its queue, in an IPC namespace that had none
    assert os.path.exists(f"/proc/{pid}/root{mnt}/mine")  # its mount, seen from inside
    assert not (mnt / "mine").exists()  # and not from the host
    assert os.uname().nodename != "evil"
    assert queues() == host_before  # not made in the host's IPC namespace


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_a_command_joins_its_namespaces(cgroups: Any, tmp_path: Any, started: list[int],
                                        monkeypatch: Any, path: str) -> None:
    """Its stop, reload and check commands see what it sees (spawn.join_namespaces)."""
    cgroups = spawn_path(path, cgroups, monkeypatch)
    cfg = ServiceConfig(name="box", command=("sleep", "3600"), protect_hostname=True,
                        private_ipc=True)
    pid = start(cfg, cgroups, tmp_path, started)
    join = spawn.join_namespaces(cfg, pid)
    assert join is not None
    out = tmp_path / "cmd"
    cmd = ServiceConfig(name="box", command=("/bin/sh", "-c", f"readlink /proc/self/ns/uts "
                                             f"/proc/self/ns/ipc > {out}; exec sleep 3600"),
                        protect_hostname=True, private_ipc=True)
    try:
        sp = spawn.spawn(cmd, str(tmp_path / "logs"), cgroups, None, join=join)
        started.append(sp.pid)
    finally:
        os.close(join[0])
    got = wait_until(lambda: out.exists() and len(t := out.read_text().split()) == 2 and t,
                     BOUND, "the command's namespaces")
    assert got == [ns(pid, "uts"), ns(pid, "ipc")]


def test_config_and_import() -> None:
    c = config.parse('[service.a]\ncommand = ["/bin/x"]\nprivate_mounts = true\n'
                     'private_ipc = true\n').services["a"]
    assert c.private_mounts and c.private_ipc
    svc = importer.convert_systemd(
        "[Service]\nExecStart=/bin/x\nPrivateMounts=yes\nPrivateIPC=yes\n", "a.service"
    ).services["a"]
    assert svc["private_mounts"] is True and svc["private_ipc"] is True
    assert spawn.unshare_flags(c) == spawn._CLONE_NEWIPC | spawn._CLONE_NEWNS
