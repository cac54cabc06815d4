"""`requires_mounts_for`: the file systems a service's paths live on must be mounted
before it starts (systemd's `RequiresMountsFor=`).

systemd makes the service require and come after the mount unit of every prefix of the
path that has one. hachain mounts nothing; it asks before each start which of those
mount points `/etc/fstab` names (the host's mount units), and whether each is mounted
now (`/proc/self/mountinfo`). One that is not holds the start back: the restarter tries
again, not counting it against the restart intensity, and says which. So a database
whose data partition failed to mount waits for it, instead of writing into the empty
directory below it on the root file system.

`missing` is pure; `check` reads the two files. Standard library only.
"""

from __future__ import annotations

import os

FSTAB = "/etc/fstab"
MOUNTINFO = "/proc/self/mountinfo"


def _unescape(field: str) -> str:
    r"""fstab and mountinfo write a space as \040, a tab as \011 (octal escapes)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and set(field[i + 1:i + 4]) <= set("01234567"):
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
            continue
        out.append(field[i])
        i += 1
    return "".join(out)


def fstab_points(text: str) -> list[str]:
    """The mount points /etc/fstab names (not swap, not "none")."""
    points = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#") or len(words) < 3:
            continue
        point, fstype = _unescape(words[1]), words[2]
        if fstype == "swap" or not point.startswith("/"):
            continue
        points.append(os.path.normpath(point))
    return points


def mounted_points(text: str) -> set[str]:
    """The mount points of /proc/self/mountinfo (its fifth field)."""
    out = set()
    for line in text.splitlines():
        words = line.split()
        if len(words) > 4:
            out.add(os.path.normpath(_unescape(words[4])))
    return out


def _under(path: str, point: str) -> bool:
    return point == "/" or path == point or path.startswith(point + "/")


def missing(paths: tuple[str, ...], fstab: str, mountinfo: str) -> list[tuple[str, str]]:
    """(path, mount point) for each fstab mount point below which a path lies that is not
    mounted, the outermost first."""
    points = sorted(set(fstab_points(fstab)), key=len)
    mounted = mounted_points(mountinfo)
    out = []
    for p in paths:
        p = os.path.normpath(p)
        for point in points:
            if _under(p, point) and point not in mounted:
                out.append((p, point))
    return out


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def check(paths: tuple[str, ...], fstab: str = FSTAB, mountinfo: str = MOUNTINFO) -> str:
    """"" when every file system the paths need is mounted, else one line naming the
    first that is not (no fstab: nothing is needed)."""
    gone = missing(paths, _read(fstab), _read(mountinfo))
    if not gone:
        return ""
    path, point = gone[0]
    more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
    return (f"requires_mounts_for {path}: {point} ({fstab}) is not mounted{more}; "
            "waiting for it")
