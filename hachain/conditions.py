"""`condition` and `assert`: what must hold on the host for a service to start.

Owns: the checks a service's `condition` and `assert` tables name (systemd's
`ConditionPathExists=`, `AssertPathExists=` and their kin), their prefixes, and the
verdict on one table: "" when it holds, else one line saying which check failed and what
was found. Imported by the configuration (to validate an argument), by the restarter
(asked before every start) and by `hachain check`. Must not: start, stop or signal
anything; the checks only look (stat, statvfs, listdir, /proc/cmdline, /proc/self/status).

The rules, as systemd's:

- an argument is a path (absolute), a kernel command-line word, or a capability, after
  an optional prefix: `!` negates the check; `|` makes it a *triggering* one; both are
  written `|!`;
- a table holds when every check without `|` holds and, if there is any with `|`, at
  least one of those does.

What the restarter does with the verdict is the state table's: a `condition` that does
not hold leaves the service `skipped` (no process, its dependents go on, as systemd's
"start condition failed"); an `assert` that does not hold is a failed start, answered by
the restart policy (docs/configuration.md).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import fields
from typing import Any

TRIGGER, NEGATE = "|", "!"


def split(arg: str) -> tuple[bool, bool, str]:
    """(triggering, negated, the argument without its prefix)."""
    trigger = arg.startswith(TRIGGER)
    if trigger:
        arg = arg[1:]
    negate = arg.startswith(NEGATE)
    return trigger, negate, arg[1:] if negate else arg


# --- the checks: each (value) -> (holds, what was found) -------------------------------------

def _stat(p: str, follow: bool = True) -> os.stat_result | None:
    try:
        return os.stat(p) if follow else os.lstat(p)
    except OSError:
        return None


def _found(st: os.stat_result | None) -> str:
    if st is None:
        return "no such path"
    kind = ("a directory" if stat.S_ISDIR(st.st_mode) else
            "a regular file" if stat.S_ISREG(st.st_mode) else
            "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a special file")
    return f"it is {kind}"


def path_exists(p: str) -> tuple[bool, str]:
    st = _stat(p)
    return st is not None, _found(st)


def path_exists_glob(p: str) -> tuple[bool, str]:
    import glob  # only for a service that uses it
    hits = glob.glob(p)
    return bool(hits), f"{len(hits)} match(es)" if hits else "no match"


def path_is_directory(p: str) -> tuple[bool, str]:
    st = _stat(p)
    return st is not None and stat.S_ISDIR(st.st_mode), _found(st)


def path_is_symbolic_link(p: str) -> tuple[bool, str]:
    st = _stat(p, follow=False)
    return st is not None and stat.S_ISLNK(st.st_mode), _found(st)


def path_is_mount_point(p: str) -> tuple[bool, str]:
    if _stat(p) is None:
        return False, "no such path"
    mounted = os.path.ismount(p)
    return mounted, "it is a mount point" if mounted else "it is not a mount point"


def path_is_read_write(p: str) -> tuple[bool, str]:
    try:
        ro = bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except OSError:
        return False, "no such path"
    return not ro, "its file system is read-only" if ro else "its file system is writable"


def directory_not_empty(p: str) -> tuple[bool, str]:
    """A directory with an entry whose name does not start with a dot (systemd leaves
    hidden files out too)."""
    try:
        with os.scandir(p) as it:
            n = sum(1 for e in it if not e.name.startswith("."))
    except NotADirectoryError:
        return False, "it is not a directory"
    except OSError:
        return False, "no such directory"
    return n > 0, f"{n} entries" if n else "it is empty"


def file_not_empty(p: str) -> tuple[bool, str]:
    st = _stat(p)
    if st is None or not stat.S_ISREG(st.st_mode):
        return False, _found(st)
    return st.st_size > 0, f"{st.st_size} bytes"


def file_is_executable(p: str) -> tuple[bool, str]:
    st = _stat(p)
    if st is None or not stat.S_ISREG(st.st_mode):
        return False, _found(st)
    x = bool(st.st_mode & 0o111)
    return x, f"mode {stat.S_IMODE(st.st_mode):04o}"


CMDLINE = "/proc/cmdline"


def kernel_command_line(word: str, path: str = CMDLINE) -> tuple[bool, str]:
    """`NAME=VALUE`: that very word; `NAME`: the word alone or as `NAME=...`."""
    try:
        with open(path) as f:
            words = f.read().split()
    except OSError as e:
        return False, f"{path}: {e.strerror}"
    if "=" in word:
        ok = word in words
    else:
        ok = any(w == word or w.startswith(word + "=") for w in words)
    return ok, "it is there" if ok else "it is not there"


def _bounding_set() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    return 0


def capability(name: str) -> tuple[bool, str]:
    from hachain.configtypes import CAPABILITIES
    bit = CAPABILITIES.index(name.removeprefix("CAP_"))
    ok = bool(_bounding_set() >> bit & 1)
    return ok, "in the bounding set" if ok else "not in the bounding set"


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


# security frameworks (systemd's ConditionSecurity=): what says each one is on
_SECURITY: dict[str, Callable[[], bool]] = {
    "selinux": lambda: os.path.exists("/sys/fs/selinux/enforce"),
    "apparmor": lambda: _read("/sys/module/apparmor/parameters/enabled") == "Y",
    "tomoyo": lambda: os.path.exists("/sys/kernel/security/tomoyo"),
    "ima": lambda: os.path.exists("/sys/kernel/security/ima"),
    "smack": lambda: os.path.exists("/sys/fs/smackfs"),
    "audit": lambda: _audit(),
    "uefi-secureboot": lambda: _secure_boot(),
    "tpm2": lambda: bool(os.path.isdir("/sys/class/tpmrm") and os.listdir("/sys/class/tpmrm")),
}
SECURITY = tuple(_SECURITY)


def _audit() -> bool:
    import socket
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 9).close()  # NETLINK_AUDIT
    except OSError:
        return False
    return True


def _secure_boot() -> bool:
    try:
        with open("/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c",
                  "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[-1:] == b"\x01"  # (4 bytes of attributes, then the value)


def security(name: str) -> tuple[bool, str]:
    ok = _SECURITY[name]()
    return ok, f"{name} is {'on' if ok else 'not on'} here"


# what DMI's vendor or product name says, by the names systemd-detect-virt prints
_DMI_VM = (("KVM", "kvm"), ("QEMU", "qemu"), ("VMware", "vmware"),
           ("VirtualBox", "oracle"), ("innotek", "oracle"), ("Xen", "xen"),
           ("Bochs", "bochs"), ("Parallels", "parallels"), ("BHYVE", "bhyve"),
           ("Microsoft Corporation", "microsoft"), ("Amazon EC2", "amazon"),
           ("Google Compute Engine", "google"))


def detect_virtualization() -> tuple[str, str]:
    """(the virtual machine, the container) this runs in, "" for none, as far as the
    container managers' marks (/run/systemd/container, /.dockerenv, /run/.containerenv,
    the `container=` of PID 1), DMI and the CPU's hypervisor flag tell."""
    container = _read("/run/systemd/container")
    if not container:
        env = _read("/proc/1/environ").split("\0")
        container = next((e[10:] for e in env if e.startswith("container=")), "")
    if not container and os.path.exists("/.dockerenv"):
        container = "docker"
    if not container and os.path.exists("/run/.containerenv"):
        container = "podman"
    vm = ""
    dmi = " ".join(_read(f"/sys/class/dmi/id/{k}") for k in ("sys_vendor", "product_name",
                                                              "bios_vendor"))
    for mark, name in _DMI_VM:
        if mark in dmi:
            vm = name
            break
    if not vm and _read("/sys/hypervisor/type") == "xen":
        vm = "xen"
    if not vm and " hypervisor" in _read("/proc/cpuinfo"):
        vm = "vm-other"
    return vm, container


def virtualization(word: str) -> tuple[bool, str]:
    """`yes`/`no` (any at all), `vm`, `container`, or one by name (`kvm`, `docker`, ...),
    as systemd's ConditionVirtualization= reads them."""
    vm, container = detect_virtualization()
    found = "none" if not (vm or container) else " in ".join(x for x in (container, vm) if x)
    w = word.lower()
    if w in ("yes", "true", "1", "on"):
        ok = bool(vm or container)
    elif w in ("no", "false", "0", "off"):
        ok = not (vm or container)
    elif w == "vm":
        ok = bool(vm)
    elif w == "container":
        ok = bool(container)
    else:
        ok = w in (vm, container)
    return ok, f"found {found}"


def ac_power(word: str) -> tuple[bool, str]:
    """`true`: on mains power (or no power supply is known, as systemd reads it)."""
    base = "/sys/class/power_supply"
    try:
        names = os.listdir(base)
    except OSError:
        names = []
    mains = [n for n in names if _read(f"{base}/{n}/type") == "Mains"]
    on = not mains or any(_read(f"{base}/{n}/online") == "1" for n in mains)
    want = word.lower() in ("yes", "true", "1", "on")
    return on == want, "on mains power" if on else "on battery"


# name -> (the check, what its argument is, what the check asks: for the docs)
CHECKS: dict[str, tuple[Callable[[str], tuple[bool, str]], str, str]] = {
    "path_exists": (path_exists, "path", "the path exists"),
    "path_exists_glob": (path_exists_glob, "path", "the glob pattern matches a path"),
    "path_is_directory": (path_is_directory, "path", "the path is a directory"),
    "path_is_symbolic_link": (path_is_symbolic_link, "path",
                              "the path is a symbolic link"),
    "path_is_mount_point": (path_is_mount_point, "path", "the path is a mount point"),
    "path_is_read_write": (path_is_read_write, "path",
                           "the path is on a file system mounted read-write"),
    "directory_not_empty": (directory_not_empty, "path", "the path is a directory "
                            "with an entry whose name does not start with a dot"),
    "file_not_empty": (file_not_empty, "path",
                       "the path is a regular file of more than 0 bytes"),
    "file_is_executable": (file_is_executable, "path",
                           "the path is a regular file with an execute bit set"),
    "kernel_command_line": (kernel_command_line, "word", "the kernel command line "
                            "(/proc/cmdline) has the word `NAME=VALUE`, or for `NAME` the "
                            "word `NAME` or `NAME=...`"),
    "capability": (capability, "capability", "the capability is in the restarter's "
                   "bounding set"),
    "security": (security, "security", "that security framework is on: " +
                 ", ".join(f"`{x}`" for x in SECURITY)),
    "virtualization": (virtualization, "word", "the host is virtual: `yes`, `no`, `vm`, "
                       "`container`, or one by name as systemd-detect-virt prints it "
                       "(`kvm`, `qemu`, `docker`, `lxc`, ...)"),
    "ac_power": (ac_power, "boolean", "`true`: on mains power (or no power supply is "
                 "known); `false`: on battery"),
}


def items(checks: Any) -> list[tuple[str, str]]:
    """(check, argument with its prefix) of a `StartChecks`, in the table's order."""
    return [(f.name, a) for f in fields(checks) for a in getattr(checks, f.name)]


def verdict(checks: Any, what: str = "condition") -> str:
    """"" when `checks` (a `StartChecks`) holds; else why not, as one line:
    `condition path_exists=!/etc/x failed: it is a regular file`."""
    triggered, missed = False, []
    for name, arg in items(checks):
        trigger, negate, value = split(arg)
        if trigger and triggered:
            continue  # one triggering check held: the others need not be looked at
        try:
            ok, found = CHECKS[name][0](value)
        except Exception as e:  # a check that cannot look fails, saying why
            ok, found = False, f"{type(e).__name__}: {e}"
        if ok is not negate:
            triggered = triggered or trigger
        elif not trigger:
            return f"{what} {name}={arg} failed: {found}"
        else:
            missed.append(f"{name}={arg}: {found}")
    if missed and not triggered:
        return f"{what} failed: none of its \"|\" checks holds ({'; '.join(missed)})"
    return ""
