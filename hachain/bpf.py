"""The kernel's BPF system call, for the cgroup programs of hachain/devices.py and
hachain/ipfilter.py: assembling instructions, loading a program, attaching it to a
service's cgroup in place of the one attached there before, detaching.

Owns: the bpf() call and the layout of its attribute blocks. Must not: know what a
program says (its callers assemble it). ctypes is imported only where the kernel is
asked: the configuration's checks import the callers for their parsing, and so every
`hachain` command.
"""

from __future__ import annotations

import os
import struct

# eBPF instructions (linux/bpf.h): the opcodes the programs use
LDX_W, LDX_B, MOV_X, MOV_K, AND_K, RSH_K, JNE_K, JEQ_K, CALL, EXIT = \
    0x61, 0x71, 0xBF, 0xB7, 0x57, 0x77, 0x55, 0x15, 0x85, 0x95
ADD_K = 0x07  # (64-bit add of an immediate)


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One eBPF instruction (8 bytes)."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "riscv64": 280, "ppc64le": 361,
            "s390x": 351, "i686": 357}
_PROG_LOAD, _PROG_ATTACH, _PROG_DETACH, _GET_FD_BY_ID, _PROG_QUERY = 5, 8, 9, 13, 16
PROG_TYPE_CGROUP_SKB, PROG_TYPE_CGROUP_DEVICE = 8, 15
CGROUP_INET_INGRESS, CGROUP_INET_EGRESS, CGROUP_DEVICE = 0, 1, 6
_F_ALLOW_MULTI = 2
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


def load(code: bytes, prog_type: int) -> int:
    """A descriptor of the loaded program. OSError (with the verifier's last line) when
    the kernel refuses it."""
    import ctypes
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"GPL")

    def attempt(log: ctypes.Array[ctypes.c_char] | None) -> int:
        attr = struct.pack("<IIQQIIQ", prog_type, len(code) // 8,
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


def attached(cgroup_fd: int, attach_type: int) -> list[int]:
    """The ids of the programs of `attach_type` attached to this cgroup itself."""
    import ctypes
    ids = (ctypes.c_uint32 * 64)()
    attr = struct.pack("<IIIIQI", cgroup_fd, attach_type, 0, 0, ctypes.addressof(ids), 64)
    out = _bpf(_PROG_QUERY, attr)[1]
    return list(ids[:struct.unpack_from("<I", out, 24)[0]])  # prog_cnt, written back


def _detach(cg: int, ids: list[int], attach_type: int) -> None:
    for prog_id in ids:
        fd = _bpf(_GET_FD_BY_ID, struct.pack("<I", prog_id))[0]
        try:
            _bpf(_PROG_DETACH, struct.pack("<III", cg, fd, attach_type))
        finally:
            os.close(fd)


def release(cgroup: str, attach_type: int) -> None:
    """Detach every program of `attach_type` from the cgroup at `cgroup`."""
    cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _detach(cg, attached(cg, attach_type), attach_type)
    finally:
        os.close(cg)


def attach(cgroup: str, code: bytes, prog_type: int, attach_type: int) -> None:
    """Hold the cgroup at `cgroup` (a directory) to `code`, in place of the programs of
    `attach_type` attached to it before (an earlier start's, or an earlier restarter's):
    the new one first, then the old ones go, so there is no moment without one. The
    kernel keeps it attached for as long as the cgroup exists. OSError when it cannot."""
    prog = load(code, prog_type)
    cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        old = attached(cg, attach_type)
        _bpf(_PROG_ATTACH, struct.pack("<IIII", cg, prog, attach_type, _F_ALLOW_MULTI))
        _detach(cg, old, attach_type)
    finally:
        os.close(cg)
        os.close(prog)
