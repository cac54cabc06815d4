"""`ip_address_allow` and `ip_address_deny` (systemd's IPAddressAllow=, IPAddressDeny=):
which remote addresses a service may exchange IP packets with, held by the kernel.

Owns: reading the items (an address, a prefix, or one of systemd's words), and
assembling the two cgroup socket-buffer programs (BPF_PROG_TYPE_CGROUP_SKB) that check
each packet's remote address: the destination of what the service sends (egress), the
source of what it receives (ingress). Pure; hachain/bpf.py loads and attaches them.

As systemd decides it: an address on the allow list passes; otherwise one on the deny
list is dropped; anything else passes. `ip_address_deny = ["any"]` with
`ip_address_allow = ["localhost"]` keeps a service to the loopback. A datagram the
service sends there fails its `sendto` with EPERM; a TCP connection there never opens
(its SYN is dropped: `connect` times out). Packets that are neither IPv4 nor IPv6 pass.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from hachain import bpf
from hachain.configtypes import ServiceConfig

Net = ipaddress.IPv4Network | ipaddress.IPv6Network

WORDS: dict[str, tuple[str, ...]] = {
    "any": ("0.0.0.0/0", "::/0"),
    "localhost": ("127.0.0.0/8", "::1/128"),
    "link-local": ("169.254.0.0/16", "fe80::/64"),
    "multicast": ("224.0.0.0/4", "ff00::/8"),
}


def networks(item: str) -> list[Net]:
    """One item → the prefixes it means. ValueError naming what is wrong."""
    if item in WORDS:
        return [ipaddress.ip_network(w) for w in WORDS[item]]
    try:
        return [ipaddress.ip_network(item, strict=False)]
    except ValueError:
        raise ValueError(f"{item!r}: an IPv4 or IPv6 address or prefix (\"10.0.0.0/8\", "
                         "\"::1\"), or " + ", ".join(WORDS)) from None


def used(c: ServiceConfig) -> bool:
    return bool(c.ip_address_allow or c.ip_address_deny)


def _word(b: bytes) -> int:
    """4 bytes as the signed immediate a 32-bit compare with a loaded word takes (the
    load reads them in this machine's byte order)."""
    v: int = struct.unpack("=I", b)[0]
    return v - (1 << 32) if v >= 1 << 31 else v


_PROTO = 16  # offsetof(struct __sk_buff, protocol): network byte order
_LOAD_BYTES = 26  # the helper bpf_skb_load_bytes(skb, offset, to, len)
_FP = 10  # the frame pointer register
_JEQ32_K, _JNE32_K, _JA = 0x16, 0x56, 0x05


def program(allow: list[Net], deny: list[Net], egress: bool) -> bytes:
    """The program for one direction: the remote address is the destination (egress)
    or the source (ingress) of the packet, whose data begins at its IP header."""
    code: list[bytes | tuple[int, int, int, str]] = []  # (jump code, reg, imm, label)
    labels: dict[str, int] = {}

    def label(name: str) -> None:
        labels[name] = len(code)

    def jump(op: int, reg: int, imm: int, to: str) -> None:
        code.append((op, reg, imm, to))

    ins = bpf.insn
    code += [ins(bpf.MOV_X, 6, 1),  # r6 = the skb
             ins(bpf.LDX_W, 2, 6, _PROTO)]
    jump(_JEQ32_K, 2, _word(struct.pack("=I", socket.htons(0x0800))), "v4")
    jump(_JEQ32_K, 2, _word(struct.pack("=I", socket.htons(0x86DD))), "v6")
    jump(_JA, 0, 0, "pass")
    for family, (size, off) in (("v4", (4, 16 if egress else 12)),
                                ("v6", (16, 24 if egress else 8))):
        label(family)
        code += [ins(bpf.MOV_X, 1, 6), ins(bpf.MOV_K, 2, imm=off), ins(bpf.MOV_X, 3, _FP),
                 ins(bpf.ADD_K, 3, imm=-16), ins(bpf.MOV_K, 4, imm=size),
                 ins(bpf.CALL, imm=_LOAD_BYTES)]
        jump(_JNE32_K, 0, 0, "pass")  # (not readable: no address to judge)
        version = 4 if size == 4 else 6
        rules = [(verdict, n) for verdict, nets in (("pass", allow), ("drop", deny))
                 for n in nets if n.version == version]
        for i, (verdict, net) in enumerate(rules):
            nxt = f"{family}-{i}"
            addr, mask = net.network_address.packed, net.netmask.packed
            tested = False
            for w in range(size // 4):
                m = mask[4 * w:4 * w + 4]
                if m == b"\0\0\0\0":
                    continue  # (the rest of the address is not looked at)
                code.append(ins(bpf.LDX_W, 2, _FP, -16 + 4 * w))
                if m != b"\xff\xff\xff\xff":
                    code.append(ins(bpf.AND_K, 2, imm=_word(m)))
                jump(_JNE32_K, 2, _word(addr[4 * w:4 * w + 4]), nxt)
                tested = True
            jump(_JA, 0, 0, verdict)
            if not tested:
                break  # (a /0 matches every address: what follows is never reached,
            label(nxt)  # which the verifier refuses)
        else:
            jump(_JA, 0, 0, "pass")
    label("pass")
    code += [ins(bpf.MOV_K, 0, imm=1), ins(bpf.EXIT)]
    label("drop")
    code += [ins(bpf.MOV_K, 0, imm=0), ins(bpf.EXIT)]
    out = []
    for pc, item in enumerate(code):
        if isinstance(item, tuple):
            op, reg, imm, to = item
            item = ins(op, reg, off=labels[to] - pc - 1, imm=imm)
        out.append(item)
    return b"".join(out)


def programs(c: ServiceConfig) -> tuple[bytes, bytes]:
    """(ingress, egress) programs of `c`'s lists."""
    allow = [n for item in c.ip_address_allow for n in networks(item)]
    deny = [n for item in c.ip_address_deny for n in networks(item)]
    return program(allow, deny, egress=False), program(allow, deny, egress=True)


def attach(cgroup: str, c: ServiceConfig) -> None:
    ingress, egress = programs(c)
    bpf.attach(cgroup, ingress, bpf.PROG_TYPE_CGROUP_SKB, bpf.CGROUP_INET_INGRESS)
    bpf.attach(cgroup, egress, bpf.PROG_TYPE_CGROUP_SKB, bpf.CGROUP_INET_EGRESS)


def release(cgroup: str) -> None:
    bpf.release(cgroup, bpf.CGROUP_INET_INGRESS)
    bpf.release(cgroup, bpf.CGROUP_INET_EGRESS)
