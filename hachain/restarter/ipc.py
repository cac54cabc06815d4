"""`remove_ipc` (systemd's `RemoveIPC=`): the IPC objects a service's user and group own
are removed once it is down, so what it leaves behind cannot pile up over restarts or be
found by whatever runs as that user next.

Removed: System V shared memory segments, semaphore sets and message queues whose owner
or creator is the user or the group (`/proc/sysvipc/*`, then `shmctl`/`semctl`/`msgctl`
IPC_RMID), and the POSIX shared memory objects and semaphores (files in `/dev/shm`) and
message queues (files in `/dev/mqueue`, where that is mounted) they own. In the
restarter's IPC namespace: a `private_ipc` service's objects went with its namespace.

`owned` is pure (it reads the tables it is given); `remove` acts.
"""

from __future__ import annotations

import os
from typing import Any

SYSVIPC = "/proc/sysvipc"
_KINDS = {"shm": "shmid", "sem": "semid", "msg": "msqid"}
_IPC_RMID = 0
_POSIX_DIRS = ("/dev/shm", "/dev/mqueue")
_libc: Any = None


def owned(tables: dict[str, str], uid: int, gid: int) -> list[tuple[str, int]]:
    """(kind, id) of each System V object in `tables` ({"shm": the text of
    /proc/sysvipc/shm, ...}) whose owner or creator is `uid` or whose group or creator's
    group is `gid`."""
    out = []
    for kind, text in tables.items():
        lines = text.splitlines()
        if not lines:
            continue
        head = lines[0].split()
        try:
            at = {k: head.index(k) for k in (_KINDS[kind], "uid", "gid", "cuid", "cgid")}
        except (ValueError, KeyError):
            continue
        for line in lines[1:]:
            f = line.split()
            try:
                if int(f[at["uid"]]) == uid or int(f[at["cuid"]]) == uid or \
                        int(f[at["gid"]]) == gid or int(f[at["cgid"]]) == gid:
                    out.append((kind, int(f[at[_KINDS[kind]]])))
            except (IndexError, ValueError):
                continue
    return out


def _rmid(kind: str, ident: int) -> bool:
    global _libc
    if _libc is None:
        import ctypes
        _libc = ctypes.CDLL(None, use_errno=True)
    if kind == "shm":
        return int(_libc.shmctl(ident, _IPC_RMID, None)) == 0
    if kind == "sem":
        return int(_libc.semctl(ident, 0, _IPC_RMID)) == 0
    return int(_libc.msgctl(ident, _IPC_RMID, None)) == 0


def remove(uid: int, gid: int) -> list[str]:
    """Remove what `uid` and `gid` own; one word per object removed ("shm 32769",
    "/dev/shm/sem.x")."""
    tables = {}
    for kind in _KINDS:
        try:
            with open(os.path.join(SYSVIPC, kind)) as f:
                tables[kind] = f.read()
        except OSError:
            continue
    done = [f"{kind} {ident}" for kind, ident in owned(tables, uid, gid)
            if _rmid(kind, ident)]
    for d in _POSIX_DIRS:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            p = os.path.join(d, name)
            try:
                st = os.lstat(p)
                if (st.st_uid == uid or st.st_gid == gid) and not os.path.isdir(p):
                    os.unlink(p)
                    done.append(p)
            except OSError:
                continue
    return done
