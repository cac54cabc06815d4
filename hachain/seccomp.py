"""System call filters of a service: `system_call_filter` and its kin, as systemd's
SystemCallFilter=, SystemCallErrorNumber=, SystemCallArchitectures=,
RestrictAddressFamilies=, MemoryDenyWriteExecute=, LockPersonality=, RestrictRealtime=,
RestrictSUIDSGID= and RestrictNamespaces=.

Owns: what each key means as seccomp rules — the set of system calls a filter names
(`resolve`, pure) — and the BPF programs for a service (`programs`), compiled by
libseccomp (through pyseccomp, imported only for a service that has such keys; the
restarter keeps each service's programs while its configuration is unchanged). Must
not: install a filter. The spawn's child does that as its last step before its exec
(hachain/restarter/_clone3.c, spawn._preexec), after its user switch, so the chain's own
code never runs under it; where the kernel asks for it (a service that runs as another
user has no CAP_SYS_ADMIN), with no_new_privileges first, as systemd does.

Each key is a program of its own: the kernel runs them all and takes the strictest
answer, so one never weakens another.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable
from typing import Any

from hachain.configtypes import ServiceConfig

# a filtered call that is not allowed, without system_call_error_number: the whole
# process is killed by SIGSYS (systemd's default)
KILL = "kill"

# socket()'s families run from 0 to below this (AF_MAX of Linux 6.x; more are refused too)
AF_MAX = 46

# systemd's names of the namespace kinds, and their CLONE_NEW* flags
NAMESPACE_KINDS = {"mnt": 0x00020000, "cgroup": 0x02000000, "uts": 0x04000000,
                   "ipc": 0x08000000, "user": 0x10000000, "pid": 0x20000000,
                   "net": 0x40000000, "time": 0x00000080}
_NAMESPACE_FLAGS = tuple(NAMESPACE_KINDS.values())


def forbidden_namespaces(c: ServiceConfig) -> tuple[int, ...]:
    """The CLONE_NEW* flags restrict_namespaces refuses: every kind (true, or a list of
    none allowed), all but the listed ones, or the "~" ones."""
    r = c.restrict_namespaces
    if r is True:
        return _NAMESPACE_FLAGS
    if not r:
        return ()
    if any(k.startswith("~") for k in r):
        return tuple(NAMESPACE_KINDS[k.removeprefix("~")] for k in r)
    return tuple(f for k, f in NAMESPACE_KINDS.items() if k not in r)
_PROT_WRITE, _PROT_EXEC, _SHM_EXEC = 0x2, 0x4, 0o100000
_S_ISUID, _S_ISGID = 0o4000, 0o2000
_SCHED_FIFO, _SCHED_RR, _SCHED_DEADLINE = 1, 2, 6
_SCHED_RESET_ON_FORK = 0x40000000
_PER_LINUX = 0


class FilterError(Exception):
    """A filter that cannot be built (one line: what and why)."""


def uses_seccomp(c: ServiceConfig) -> bool:
    return bool(c.system_call_filter or c.system_call_architectures or
                c.restrict_address_families or c.memory_deny_write_execute or
                c.lock_personality or c.restrict_realtime or c.restrict_suid_sgid or
                c.restrict_namespaces or bool(_protected_calls(c)))


def filter_key(c: ServiceConfig) -> tuple[object, ...]:
    """Every setting `programs` reads: two services with the same key get the same
    programs (spawn.py builds them once per key)."""
    return (c.system_call_filter, c.system_call_error_number, c.system_call_architectures,
            c.restrict_address_families, c.memory_deny_write_execute, c.lock_personality,
            c.restrict_realtime, c.restrict_suid_sgid, c.restrict_namespaces,
            tuple(_protected_calls(c)))


def _protected_calls(c: ServiceConfig) -> list[str]:
    """The calls the protect_* keys refuse with EPERM (systemd's choice for each)."""
    out: list[str] = []
    if c.protect_kernel_modules:
        out.append("@module")
    if c.protect_kernel_logs:
        out.append("syslog")
    if c.protect_clock:
        out.append("@clock")
    if c.protect_hostname:
        out += ["sethostname", "setdomainname"]
    if c.private_devices:
        out.append("@raw-io")
    return out


def _groups() -> dict[str, tuple[str, ...]]:
    from hachain.syscall_groups import GROUPS
    return GROUPS


def item_problem(item: str) -> str | None:
    """Why one system_call_filter item is not valid (None: it is)."""
    name = item.removeprefix("~")
    if name.startswith("@"):
        if name not in _groups():
            from hachain.errors import closest
            near = closest(name, _groups())
            return f"unknown group {name!r}" + (f" (did you mean {near!r}?)" if near else
                                                 " (hachain check lists none such)")
        return None
    if not name or not all(ch.isalnum() or ch == "_" for ch in name) or \
            not name[0].isalpha():
        return f"{item!r} is neither a system call name nor an @group"
    return None


def _expand(name: str, seen: set[str] | None = None) -> set[str]:
    if not name.startswith("@"):
        return {name}
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    out: set[str] = set()
    for it in _groups()[name]:
        out |= _expand(it, seen)
    return out


def resolve(items: Iterable[str]) -> tuple[bool, frozenset[str]]:
    """(allow_list, names): the system calls `items` name, as systemd reads them. The
    first item's sign decides: without `~` the set is what is allowed (and @default is
    in it, as systemd adds it: what every program's start needs), with `~` what is
    denied. Each later item adds to the set when it has the first one's sign and takes
    from it otherwise."""
    items = list(items)
    allow = not items[0].startswith("~")
    names: set[str] = _expand("@default") if allow else set()
    for it in items:
        part = _expand(it.removeprefix("~"))
        if it.startswith("~") != allow:
            names |= part
        else:
            names -= part
    return allow, frozenset(names)


def errno_number(name: str) -> int | None:
    """The number of an errno name ("EPERM"), or None."""
    n = getattr(errno, name, None) if name.isupper() and name.startswith("E") else None
    return n if isinstance(n, int) else None


def family_number(name: str) -> int | None:
    """The number of an address family name ("AF_UNIX"), or None."""
    v = getattr(socket, name, None) if name.startswith("AF_") else None
    return int(v) if isinstance(v, int) else None


# --- building the programs (libseccomp) -----------------------------------------------------

def _lib() -> Any:
    try:
        import pyseccomp
        pyseccomp.system_arch()  # the library itself, not only the binding
    except Exception as e:  # ImportError, OSError, AttributeError of a missing libseccomp
        raise FilterError("libseccomp is needed (apt-get install libseccomp2; pip "
                          f"install pyseccomp): {type(e).__name__}: {e}") from None
    return pyseccomp


_ARCH_NAMES = {"native": None, "x86-64": "X86_64", "x86": "X86", "x32": "X32",
               "arm64": "AARCH64", "arm": "ARM"}
_LOCAL = {"X86_64": ("X86", "X32"), "AARCH64": ("ARM",)}  # what the native one also runs


def arch_problem(name: str) -> str | None:
    return None if name in _ARCH_NAMES else \
        f"unknown architecture {name!r} (one of {', '.join(_ARCH_NAMES)})"


def _arches(sc: Any, c: ServiceConfig) -> list[int]:
    native = sc.system_arch()
    by_value = {v: k for k, v in vars(sc.Arch).items() if isinstance(v, int)}
    if not c.system_call_architectures:  # the native one and what it runs (systemd)
        return [native] + [getattr(sc.Arch, a) for a in
                           _LOCAL.get(by_value.get(native, ""), ())]
    out = set()
    for a in c.system_call_architectures:
        name = _ARCH_NAMES[a]
        out.add(native if name is None else getattr(sc.Arch, name))
    return sorted(out)


def _new(sc: Any, default: int, arches: list[int], badarch: int) -> Any:
    f = sc.SyscallFilter(default)
    native = sc.system_arch()
    for a in arches:
        if a != native:
            f.add_arch(a)
    if native not in arches:
        f.remove_arch(native)
    f.set_attr(sc.Attr.ACT_BADARCH, badarch)
    return f


def _nr(sc: Any, name: str) -> int | None:
    """The call's number on the native architecture (negative: known on another one,
    which libseccomp maps); None for a name libseccomp does not know at all."""
    nr = sc._libseccomp.seccomp_syscall_resolve_name(name.encode())
    return None if nr == -1 else int(nr)


def _rule(f: Any, action: int, sc: Any, call: str, *args: Any) -> None:
    nr = _nr(sc, call)
    if nr is None:
        return  # (a call this libseccomp does not know: nothing can make it here either)
    try:
        f.add_rule(action, nr, *args)
    except OSError as e:
        if e.errno in (errno.EDOM, errno.EOPNOTSUPP):
            return  # not on these architectures (libseccomp's pseudo numbers)
        raise


def _bpf(f: Any) -> bytes:
    fd = os.memfd_create("hachain-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as w:
            f.export_bpf(w)
        os.lseek(fd, 0, os.SEEK_SET)
        out = b""
        while chunk := os.read(fd, 1 << 16):
            out += chunk
        return out
    finally:
        os.close(fd)


def programs(c: ServiceConfig) -> list[bytes]:
    """The BPF programs of `c`, in the order they are installed. FilterError naming the
    key when one cannot be built (libseccomp missing, a system call it does not know)."""
    if not uses_seccomp(c):
        return []
    sc = _lib()
    arches = _arches(sc, c)
    kill = sc.KILL_PROCESS
    deny = kill if not c.system_call_error_number else \
        sc.ERRNO(errno_number(c.system_call_error_number) or errno.EPERM)
    # a call of an architecture not listed in system_call_architectures is killed by the
    # first program; the others leave such calls to it
    out: list[bytes] = []
    last = b""
    try:
        if c.system_call_filter or c.system_call_architectures:
            allow, names = resolve(c.system_call_filter) if c.system_call_filter \
                else (False, frozenset())
            f = _new(sc, deny if allow else sc.ALLOW, arches, kill)
            unknown = [n for n in sorted(names) if _nr(sc, n) is None and
                       n in _user_named(c.system_call_filter)]
            if unknown:
                raise FilterError(f"system_call_filter: unknown system call {unknown[0]!r} "
                                  "(libseccomp does not know it)")
            for n in sorted(names):
                _rule(f, sc.ALLOW if allow else deny, sc, n)
            last = _bpf(f)  # installed after the others: it need not allow prctl
        native = [sc.system_arch()]
        if c.restrict_address_families:
            f = _new(sc, sc.ALLOW, native, sc.ALLOW)
            fams = c.restrict_address_families
            refuse = sc.ERRNO(errno.EAFNOSUPPORT)
            listed = {family_number(x.removeprefix("~")) for x in fams if x != "none"}
            if fams[0].startswith("~"):
                for fam in sorted(x for x in listed if x is not None):
                    _rule(f, refuse, sc, "socket", sc.Arg(0, sc.EQ, fam))
            else:
                for fam in range(AF_MAX):
                    if fam not in listed:
                        _rule(f, refuse, sc, "socket", sc.Arg(0, sc.EQ, fam))
                _rule(f, refuse, sc, "socket", sc.Arg(0, sc.GE, AF_MAX))
            out.append(_bpf(f))
        eperm = sc.ERRNO(errno.EPERM)
        if c.memory_deny_write_execute:
            f = _new(sc, sc.ALLOW, native, sc.ALLOW)
            wx = _PROT_WRITE | _PROT_EXEC
            _rule(f, eperm, sc, "mmap", sc.Arg(2, sc.MASKED_EQ, wx, wx))
            _rule(f, eperm, sc, "mprotect", sc.Arg(2, sc.MASKED_EQ, _PROT_EXEC, _PROT_EXEC))
            _rule(f, eperm, sc, "pkey_mprotect",
                  sc.Arg(2, sc.MASKED_EQ, _PROT_EXEC, _PROT_EXEC))
            _rule(f, eperm, sc, "shmat", sc.Arg(2, sc.MASKED_EQ, _SHM_EXEC, _SHM_EXEC))
            out.append(_bpf(f))
        if c.lock_personality:
            # the default persona only (systemd's rule: even the query is refused)
            f = _new(sc, sc.ALLOW, native, sc.ALLOW)
            _rule(f, eperm, sc, "personality", sc.Arg(0, sc.NE, _PER_LINUX))
            out.append(_bpf(f))
        if c.restrict_realtime:
            f = _new(sc, sc.ALLOW, native, sc.ALLOW)
            for pol in (_SCHED_FIFO, _SCHED_RR, _SCHED_DEADLINE):
                for flag in (0, _SCHED_RESET_ON_FORK):
                    _rule(f, eperm, sc, "sched_setscheduler", sc.Arg(1, sc.EQ, pol | flag))
            # its policy is in a structure the filter cannot read: refused whole
            _rule(f, eperm, sc, "sched_setattr")
            out.append(_bpf(f))
        if c.restrict_suid_sgid:
            f = _new(sc, sc.ALLOW, native, sc.ALLOW)
            for bit in (_S_ISUID, _S_ISGID):
                m = sc.Arg
                for call, at in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2),
                                 ("mkdir", 1), ("mkdirat", 2), ("mknod", 1),
                                 ("mknodat", 2), ("creat", 1)):
                    _rule(f, eperm, sc, call, m(at, sc.MASKED_EQ, bit, bit))
                _rule(f, eperm, sc, "open", m(1, sc.MASKED_EQ, os.O_CREAT, os.O_CREAT),
                      m(2, sc.MASKED_EQ, bit, bit))
                _rule(f, eperm, sc, "openat", m(2, sc.MASKED_EQ, os.O_CREAT, os.O_CREAT),
                      m(3, sc.MASKED_EQ, bit, bit))
            out.append(_bpf(f))
        if protected := _protected_calls(c):
            f = _new(sc, sc.ALLOW, native, sc.ALLOW)
            for n in sorted(resolve(["~" + x for x in protected])[1]):
                _rule(f, eperm, sc, n)
            out.append(_bpf(f))
        if forbidden := forbidden_namespaces(c):
            f = _new(sc, sc.ALLOW, native, sc.ALLOW)
            for flag in forbidden:
                _rule(f, eperm, sc, "unshare", sc.Arg(0, sc.MASKED_EQ, flag, flag))
                _rule(f, eperm, sc, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
            if len(forbidden) == len(_NAMESPACE_FLAGS):
                _rule(f, eperm, sc, "setns")
            else:  # joining one of those kinds, or of any kind (nstype 0)
                _rule(f, eperm, sc, "setns", sc.Arg(1, sc.EQ, 0))
                for flag in forbidden:
                    _rule(f, eperm, sc, "setns", sc.Arg(1, sc.MASKED_EQ, flag, flag))
            # clone3 passes its flags in a structure the filter cannot read: "not here",
            # and the C library falls back to clone (as under systemd)
            _rule(f, sc.ERRNO(errno.ENOSYS), sc, "clone3")
            out.append(_bpf(f))
    except OSError as e:
        raise FilterError(f"seccomp: libseccomp refused a rule: {e}") from None
    return out + ([last] if last else [])


def _user_named(items: tuple[str, ...]) -> set[str]:
    return {it.removeprefix("~") for it in items if not it.removeprefix("~").startswith("@")}


__all__ = ["FilterError", "KILL", "uses_seccomp", "item_problem", "resolve", "errno_number",
           "family_number", "arch_problem", "programs"]
