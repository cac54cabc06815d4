"""`device_allow` and `device_policy` (systemd's DeviceAllow=, DevicePolicy=): which
device nodes a service may open, read, write or make, held by the kernel.

Owns: reading the rules, resolving them against this host (the node a path names, the
majors `/proc/devices` lists for a driver's name), assembling a cgroup device program
(BPF_PROG_TYPE_CGROUP_DEVICE) from them, and loading and attaching it to a service's
cgroup in place of what an earlier start attached there. Pure but for `resolve` (reads
the host) and `attach` (system calls). Must not: decide when a program is needed (the
spawn asks at each start) or touch a cgroup other than the one it is given.

The kernel runs the program at every open, mknod and access check of a device node by
a process of the cgroup (or below it): 1 allows, 0 refuses with EPERM. Policies, as
systemd's:

- `"strict"`: only the devices `device_allow` lists;
- `"closed"`: those, and the pseudo devices every program expects (`/dev/null`,
  `zero`, `full`, `random`, `urandom`, `tty`, `ptmx`, and the pseudo terminals);
- `"auto"` (the default): as `"closed"` when `device_allow` lists anything, else no
  program at all (every device, as without this key).
"""

from __future__ import annotations

import fnmatch
import os
import stat
import struct
from typing import NamedTuple

from hachain.configtypes import ServiceConfig

# (ctypes is imported where the kernel is asked: the configuration's checks import this
# module for `split`, and so every `hachain` command)

POLICIES = ("auto", "closed", "strict")
ACCESS = {"r": 2, "w": 4, "m": 1}  # BPF_DEVCG_ACC_READ, _WRITE, _MKNOD
_BLOCK, _CHAR = 1, 2  # BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR
# the pseudo devices of "closed" (and of "auto" with a list)
STANDARD = ("/dev/null rwm", "/dev/zero rwm", "/dev/full rwm", "/dev/random rwm",
            "/dev/urandom rwm", "/dev/tty rwm", "/dev/ptmx rwm", "char-pts rw")


class Rule(NamedTuple):
    """One allowed set of devices: kind (_CHAR, _BLOCK), major and minor (-1: any), and
    the access bits it allows."""

    kind: int
    major: int
    minor: int
    access: int


def split(entry: str) -> tuple[str, int]:
    """One `device_allow` item, "SPEC [rwm]" → (SPEC, access bits). ValueError (its
    message names what is wrong) for a bad one. SPEC: an absolute path to a device node,
    or `char-NAME` / `block-NAME` (a driver's name as /proc/devices lists it, `*` and
    `?` allowed)."""
    parts = entry.split()
    if not parts or len(parts) > 2:
        raise ValueError("must be \"SPEC\" or \"SPEC ACCESS\" (\"/dev/fuse rw\", "
                         "\"char-pts rw\")")
    spec, acc = parts[0], parts[1] if len(parts) == 2 else "rwm"
    if not (spec.startswith("/") or spec.startswith(("char-", "block-"))) or \
            spec in ("char-", "block-"):
        raise ValueError(f"{spec!r}: a device node's absolute path, or char-NAME or "
                         "block-NAME (a driver's name in /proc/devices)")
    if not acc or any(ch not in ACCESS for ch in acc):
        raise ValueError(f"access {acc!r}: one or more of r (read), w (write), m (mknod)")
    return spec, sum(ACCESS[ch] for ch in set(acc))


def policy_rules(c: ServiceConfig) -> tuple[str, ...] | None:
    """The items a start of `c` is held to, or None: no program (every device)."""
    if c.device_policy == "strict":
        return c.device_allow
    if c.device_policy == "closed" or c.device_allow:
        return STANDARD + c.device_allow
    return None


def _majors(kind: str, pattern: str, proc_devices: str) -> list[int]:
    section = ""
    out = []
    for line in proc_devices.splitlines():
        if line.endswith(":"):
            section = "char" if line.startswith("Character") else "block"
            continue
        f = line.split()
        if section == kind and len(f) == 2 and f[0].isdigit() and \
                fnmatch.fnmatchcase(f[1], pattern):
            out.append(int(f[0]))
    return out


def resolve(items: tuple[str, ...], proc_devices: str | None = None
            ) -> tuple[list[Rule], list[str]]:
    """The rules `items` give on this host, and a line for each item that names nothing
    here (a missing node, a driver not loaded): left out, as systemd leaves them."""
    if proc_devices is None:
        try:
            with open("/proc/devices") as f:
                proc_devices = f.read()
        except OSError:
            proc_devices = ""
    rules: list[Rule] = []
    notes: list[str] = []
    for item in items:
        spec, acc = split(item)
        if spec.startswith("/"):
            try:
                st = os.stat(spec)
            except OSError as e:
                notes.append(f"device_allow: {spec}: {e.strerror}; left out")
                continue
            if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
                notes.append(f"device_allow: {spec}: not a device node; left out")
                continue
            rules.append(Rule(_CHAR if stat.S_ISCHR(st.st_mode) else _BLOCK,
                              os.major(st.st_rdev), os.minor(st.st_rdev), acc))
            continue
        kind, name = spec.split("-", 1)
        majors = _majors(kind, name, proc_devices)
        if not majors:
            notes.append(f"device_allow: {spec}: no such {kind} driver in /proc/devices; "
                         "left out")
        rules += [Rule(_CHAR if kind == "char" else _BLOCK, m, -1, acc) for m in majors]
    return rules, notes


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


_LDX_W, _MOV_X, _MOV_K, _AND_K, _RSH_K, _JNE_K, _EXIT = \
    0x61, 0xBF, 0xB7, 0x57, 0x77, 0x55, 0x95


def program(rules: list[Rule]) -> bytes:
    """The device program (eBPF instructions) that allows exactly what `rules` allow.
    The context is struct bpf_cgroup_dev_ctx: access_type (access << 16 | kind),
    major, minor, each a u32."""
    code = [_insn(_LDX_W, 2, 1, 0),  # r2 = access_type
            _insn(_MOV_X, 3, 2), _insn(_AND_K, 3, imm=0xFFFF),  # r3 = its kind
            _insn(_MOV_X, 4, 2), _insn(_RSH_K, 4, imm=16),  # r4 = the access asked
            _insn(_LDX_W, 5, 1, 4), _insn(_LDX_W, 6, 1, 8)]  # r5 = major, r6 = minor
    for r in rules:
        tests = [(3, r.kind)] + ([(5, r.major)] if r.major >= 0 else []) + \
            ([(6, r.minor)] if r.minor >= 0 else [])
        n = len(tests) + 3 + 2  # each test a jump; the access check 3; allow 2
        block = [_insn(_JNE_K, reg, off=n - 1 - i, imm=v) for i, (reg, v) in enumerate(tests)]
        k = len(block)
        block += [_insn(_MOV_X, 7, 4), _insn(_AND_K, 7, imm=~r.access & 7),
                  _insn(_JNE_K, 7, off=n - k - 3, imm=0),  # asks for more than allowed
                  _insn(_MOV_K, 0, imm=1), _insn(_EXIT)]
        code += block
    code += [_insn(_MOV_K, 0, imm=0), _insn(_EXIT)]
    return b"".join(code)


# --- the kernel's side ----------------------------------------------------------------------

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "riscv64": 280, "ppc64le": 361,
            "s390x": 351, "i686": 357}
_PROG_LOAD, _PROG_ATTACH, _PROG_DETACH, _GET_FD_BY_ID, _PROG_QUERY = 5, 8, 9, 13, 16
_PROG_TYPE_CGROUP_DEVICE, _CGROUP_DEVICE, _F_ALLOW_MULTI = 15, 6, 2
_ATTR = 128  # bytes of union bpf_attr passed (the kernel wants the rest zero)


def _bpf(cmd: int, attr: bytes) -> tuple[int, bytes]:
    """bpf(cmd, attr): its result and the attribute block as the kernel left it."""
    import ctypes
    nr = _SYS_BPF.get(os.uname().machine)
    if nr is None:
        raise OSError(0, f"bpf() is not known on {os.uname().machine}")
    buf = ctypes.create_string_buffer(attr.ljust(_ATTR, b"\0"), _ATTR)
    libc = ctypes.CDLL(None, use_errno=True)
    r = libc.syscall(nr, cmd, buf, _ATTR)
    if r < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(r), buf.raw


def load(code: bytes) -> int:
    """A descriptor of the loaded device program. OSError (with the verifier's last
    line) when the kernel refuses it."""
    import ctypes
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"GPL")

    def attempt(log: ctypes.Array[ctypes.c_char] | None) -> int:
        attr = struct.pack("<IIQQIIQ", _PROG_TYPE_CGROUP_DEVICE, len(code) // 8,
                           ctypes.addressof(insns), ctypes.addressof(lic),
                           0 if log is None else 1, 0 if log is None else len(log),
                           0 if log is None else ctypes.addressof(log))
        return _bpf(_PROG_LOAD, attr)[0]

    try:
        return attempt(None)  # (no log: one that fits is not needed)
    except OSError as e:
        err = e
    log = ctypes.create_string_buffer(1 << 20)
    try:
        return attempt(log)
    except OSError:
        last = log.value.decode(errors="replace").strip().splitlines()[-1:]
        why = err.strerror or os.strerror(err.errno or 0)
        raise OSError(err.errno, why + (f" ({last[0]})" if last else "")) from None


def attached(cgroup_fd: int) -> list[int]:
    """The ids of the device programs attached to this cgroup itself."""
    import ctypes
    ids = (ctypes.c_uint32 * 64)()
    attr = struct.pack("<IIIIQI", cgroup_fd, _CGROUP_DEVICE, 0, 0, ctypes.addressof(ids), 64)
    out = _bpf(_PROG_QUERY, attr)[1]
    return list(ids[:struct.unpack_from("<I", out, 24)[0]])  # prog_cnt, written back


def release(cgroup: str) -> None:
    """Detach every device program from the cgroup at `cgroup` (every device again)."""
    cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _detach(cg, attached(cg))
    finally:
        os.close(cg)


def _detach(cg: int, ids: list[int]) -> None:
    for prog_id in ids:
        fd = _bpf(_GET_FD_BY_ID, struct.pack("<I", prog_id))[0]
        try:
            _bpf(_PROG_DETACH, struct.pack("<III", cg, fd, _CGROUP_DEVICE))
        finally:
            os.close(fd)


def attach(cgroup: str, code: bytes) -> None:
    """Hold the cgroup at `cgroup` (a directory) to `code`, in place of the device
    programs attached to it before (an earlier start's, or an earlier restarter's). The
    kernel keeps it attached for as long as the cgroup exists. OSError when it cannot."""
    prog = load(code)
    cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        old = attached(cg)
        _bpf(_PROG_ATTACH, struct.pack("<IIII", cg, prog, _CGROUP_DEVICE, _F_ALLOW_MULTI))
        _detach(cg, old)  # (after: no moment without a program)
    finally:
        os.close(cg)
        os.close(prog)
