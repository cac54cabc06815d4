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
from typing import NamedTuple

from hachain import bpf
from hachain.configtypes import ServiceConfig

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


def program(rules: list[Rule]) -> bytes:
    """The device program (eBPF instructions) that allows exactly what `rules` allow.
    The context is struct bpf_cgroup_dev_ctx: access_type (access << 16 | kind),
    major, minor, each a u32."""
    code = [bpf.insn(bpf.LDX_W, 2, 1, 0),  # r2 = access_type
            bpf.insn(bpf.MOV_X, 3, 2), bpf.insn(bpf.AND_K, 3, imm=0xFFFF),  # r3 = its kind
            bpf.insn(bpf.MOV_X, 4, 2), bpf.insn(bpf.RSH_K, 4, imm=16),  # r4 = the access asked
            bpf.insn(bpf.LDX_W, 5, 1, 4), bpf.insn(bpf.LDX_W, 6, 1, 8)]  # r5 = major, r6 = minor
    for r in rules:
        tests = [(3, r.kind)] + ([(5, r.major)] if r.major >= 0 else []) + \
            ([(6, r.minor)] if r.minor >= 0 else [])
        n = len(tests) + 3 + 2  # each test a jump; the access check 3; allow 2
        block = [bpf.insn(bpf.JNE_K, reg, off=n - 1 - i, imm=v) for i, (reg, v) in enumerate(tests)]
        k = len(block)
        block += [bpf.insn(bpf.MOV_X, 7, 4), bpf.insn(bpf.AND_K, 7, imm=~r.access & 7),
                  bpf.insn(bpf.JNE_K, 7, off=n - k - 3, imm=0),  # asks for more than allowed
                  bpf.insn(bpf.MOV_K, 0, imm=1), bpf.insn(bpf.EXIT)]
        code += block
    code += [bpf.insn(bpf.MOV_K, 0, imm=0), bpf.insn(bpf.EXIT)]
    return b"".join(code)


def attach(cgroup: str, code: bytes) -> None:
    """Hold the cgroup at `cgroup` to the device program `code` (bpf.attach)."""
    bpf.attach(cgroup, code, bpf.PROG_TYPE_CGROUP_DEVICE, bpf.CGROUP_DEVICE)


def release(cgroup: str) -> None:
    """Every device again for the cgroup at `cgroup`."""
    bpf.release(cgroup, bpf.CGROUP_DEVICE)
