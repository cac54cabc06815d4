"""A service's credentials: secrets copied for it at each start (systemd's
LoadCredential=).

Owns: reading each source as the restarter (root) can, and writing the copies into a
directory of the service's own, `<state_dir>/credentials/NAME` (on the tmpfs under /run
where state_dir is: never on a disk), each file mode 0400 and the directory 0500, both
owned by the service's user; the service finds it in `$CREDENTIALS_DIRECTORY`. The
directory is made anew at each start (a changed source is read again) and removed when
the service stops. Must not: decide when — the restarter calls `prepare` before a start
and `remove` when the service is down.

A source is an absolute path (a leading `-`: it may be missing), or a bare name looked
for in the credential stores below, as systemd's `LoadCredential=NAME` is; a name found
in none is left out.
"""

from __future__ import annotations

import errno
import os
import shutil

from hachain.configtypes import ServiceConfig

SEARCH = ("/etc/credstore", "/run/credstore", "/usr/lib/credstore")
MAX_BYTES = 1 << 20  # one credential at most (systemd's limit too)
DIR = "credentials"


class CredentialError(Exception):
    """One line naming the credential and what went wrong; `transient` when the host
    refused for now (full, out of memory), not the configuration."""

    def __init__(self, text: str, transient: bool = False) -> None:
        super().__init__(text)
        self.transient = transient


def directory(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, DIR, name)


def _source(cred: str, src: str) -> str | None:
    """The file to read for `cred` (None: an optional or searched one that is missing);
    CredentialError for a required one that is."""
    optional = src.startswith("-")
    path = src.removeprefix("-")
    if not os.path.isabs(path):
        for d in SEARCH:
            p = os.path.join(d, path)
            if os.path.exists(p):
                return p
        return None
    if not os.path.exists(path):
        if optional:
            return None
        raise CredentialError(f"credentials.{cred}: {path}: No such file or directory")
    return path


def _read(cred: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise CredentialError(f"credentials.{cred}: {path}: {e.strerror or e}") from None
    if len(data) > MAX_BYTES:
        raise CredentialError(f"credentials.{cred}: {path}: larger than {MAX_BYTES} bytes")
    return data


def prepare(state_dir: str, name: str, cfg: ServiceConfig, uid: int | None,
            gid: int | None) -> str:
    """Write `cfg`'s credentials for a start of `name`, owned by uid/gid (None: root's),
    replacing what an earlier start left; the directory's path. CredentialError (one
    line) when a required source is missing or unreadable, or the copy fails."""
    root = os.path.join(state_dir, DIR)
    final = directory(state_dir, name)
    new = final + ".new"
    try:
        os.makedirs(root, mode=0o711, exist_ok=True)
        os.chmod(root, 0o711)  # others may pass through to their own, and list nothing
        shutil.rmtree(new, ignore_errors=True)
        os.mkdir(new, 0o700)
        for cred, src in cfg.credentials:
            path = _source(cred, src)
            if path is None:
                continue
            data = _read(cred, path)
            fd = os.open(os.path.join(new, cred),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o400)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if uid is not None or gid is not None:
                    os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
            finally:
                os.close(fd)
        if uid is not None or gid is not None:
            os.chown(new, -1 if uid is None else uid, -1 if gid is None else gid)
        os.chmod(new, 0o500)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(new, final)
    except CredentialError:
        shutil.rmtree(new, ignore_errors=True)
        raise
    except OSError as e:
        shutil.rmtree(new, ignore_errors=True)
        raise CredentialError(f"credentials: {e.filename or root}: {e.strerror or e}",
                              transient=e.errno in (errno.ENOSPC, errno.ENOMEM,
                                                    errno.EDQUOT)) from None
    return final


def remove(state_dir: str, name: str) -> None:
    """The service is down: its copies go (nothing is said if there were none)."""
    shutil.rmtree(directory(state_dir, name), ignore_errors=True)


__all__ = ["CredentialError", "SEARCH", "MAX_BYTES", "directory", "prepare", "remove"]
