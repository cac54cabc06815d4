"""remove_ipc (systemd's RemoveIPC=): what a service's user owns in System V and POSIX
IPC is removed once the service is down, unless another running service has that user.

A real restarter and services that run as `nobody` and make a shared memory segment, a
semaphore set, a message queue (ipcmk) and a POSIX shared memory file; a stop removes
exactly those. And the parsing of /proc/sysvipc on its own, and the configuration's rule.
"""

from __future__ import annotations

import os
import pwd
from typing import Any

import pytest

from hachain import config
from hachain.restarter import ipc
from tests.conftest import host_turn, wait_until

RUN_BOUND = 30.0  # a restarter answering, a shell making four objects; no chain timer
SHM = "0x00000000      1 600 4096 10 0 0 {u} {g} {u} {g} 0 0 0 0 0"


def test_owned_reads_each_table_by_its_header() -> None:
    head = {"shm": "key shmid perms size cpid lpid nattch uid gid cuid cgid atime",
            "sem": "key semid perms nsems uid gid cuid cgid otime ctime",
            "msg": "key msqid perms cbytes qnum lspid lrpid uid gid cuid cgid stime"}
    tables = {"shm": head["shm"] + "\n0x0 7 600 4096 1 0 0 1000 1000 1000 1000 0\n"
                                   "0x0 8 600 4096 1 0 0 0 0 0 0 0\n",
              "sem": head["sem"] + "\n0x0 9 600 1 0 0 0 1001 0 0\n",
              "msg": head["msg"] + "\n0x0 10 600 0 0 0 0 0 0 1000 0 0\n"}
    assert ipc.owned(tables, 1000, -1) == [("shm", 7), ("msg", 10)]
    assert ipc.owned(tables, -1, 1001) == [("sem", 9)]


def test_config_needs_a_user_other_than_root() -> None:
    with pytest.raises(config.ConfigError, match=r"service\.a\.remove_ipc: needs user or "
                       r"group, other than root"):
        config.parse('[service.a]\ncommand = ["/bin/x"]\nremove_ipc = true\n')
    config.parse('[service.a]\ncommand = ["/bin/x"]\nremove_ipc = true\nuser = "nobody"\n')


def objects(uid: int) -> set[str]:
    """What `uid` owns now: System V ("shm ID", ...) and /dev/shm files."""
    tables = {}
    for kind in ("shm", "sem", "msg"):
        with open(f"/proc/sysvipc/{kind}") as f:
            tables[kind] = f.read()
    out = {f"{k} {i}" for k, i in ipc.owned(tables, uid, -1)}
    return out | {f"/dev/shm/{n}" for n in os.listdir("/dev/shm")
                  if os.lstat(f"/dev/shm/{n}").st_uid == uid}


def maker(name: str) -> str:
    return f'''
[service.{name}]
command = ["/bin/sh", "-c", "ipcmk -M 4096 && ipcmk -S 1 && ipcmk -Q && touch /dev/shm/hachain-{name}-$$ && exec sleep 3600"]
user = "nobody"
remove_ipc = true
'''


@pytest.fixture
def nobody_ipc() -> Any:
    """The host's IPC objects of `nobody` are one resource: a stop with remove_ipc removes
    all of them, so the two cases below (on two xdist workers, or in two test runs on one
    host) take turns by an exclusive lock; a case may not see the other's objects either."""
    with host_turn("nobody-ipc"):
        yield


@pytest.mark.slow
@pytest.mark.parametrize("other_runs", [False, True])
def test_a_stop_removes_what_its_user_made(nobody_ipc: None, restarter: Any,
                                           other_runs: bool) -> None:
    # (the lock first: it is released after the restarter fixture has stopped its chain)
    if os.geteuid() != 0:
        pytest.skip("running a service as nobody needs root")
    uid = pwd.getpwnam("nobody").pw_uid
    before = objects(uid)
    body = maker("a") + ('[service.b]\ncommand = ["sleep", "3600"]\nuser = "nobody"\n'
                         if other_runs else "")
    r = restarter(body)
    made: set[str] = set()
    try:
        made = wait_until(lambda: len(x := objects(uid) - before) == 4 and x, RUN_BOUND,
                          "the four objects")
        assert r.req("stop", "a")["ok"]
        r.wait_state("a", "stopped", timeout=RUN_BOUND)
        r.beats(2)
        left = objects(uid) & made
        if other_runs:  # b runs as nobody too: nothing is removed under it
            assert left == made
        else:
            assert left == set()
            assert "a: remove_ipc: removed " in open(r.log).read()
    finally:
        for obj in made & objects(uid):
            kind, _, ident = obj.partition(" ")
            if obj.startswith("/"):
                os.unlink(obj)
            else:
                ipc._rmid(kind, int(ident))


def test_import_carries_it_for_a_service_with_a_user(tmp_path: Any) -> None:
    from hachain import importer
    (tmp_path / "r.service").write_text("[Service]\nExecStart=/bin/r\nRemoveIPC=yes\n"
                                        "User=redis\n")
    (tmp_path / "s.service").write_text("[Service]\nExecStart=/bin/s\nRemoveIPC=yes\n")
    text, conv = importer.import_files([str(tmp_path / "r.service"),
                                        str(tmp_path / "s.service")])
    c = config.parse(text)
    assert c.services["r"].remove_ipc and not c.services["s"].remove_ipc
    assert conv.warnings == [f"{tmp_path}/s.service:3: RemoveIPC: has no effect for a "
                             "service that runs as root; dropped"]
