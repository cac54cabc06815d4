"""The guest kernel: which one to boot, and a faster way to boot it under emulation.

Owns: picking /boot/vmlinuz-* and its module tree, and turning a compressed bzImage into
the plain ELF `vmlinux` inside it, cached by content hash.

Why: with software emulation (TCG) the kernel's own XZ decompressor takes about five
seconds before the first printk. QEMU can boot an uncompressed ELF kernel directly
through the PVH entry point (Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY, type 18) when the
kernel was built with CONFIG_PVH, so we decompress once on the host (about a second) and
boot the result. When the image cannot be unpacked (an unknown compression) or has no
PVH note, the harness boots the bzImage as it is.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

XEN_ELFNOTE_PHYS32_ENTRY = 18


@dataclass(frozen=True)
class KernelInfo:
    """A kernel image and the matching module tree."""

    version: str
    image: Path
    modules_dir: Path


def find_kernel(image: str | os.PathLike[str] | None = None) -> KernelInfo | None:
    """The given kernel image, or the newest /boot/vmlinuz-* with a module tree."""
    if image is not None:
        path = Path(image)
        version = path.name.removeprefix("vmlinuz-")
        return KernelInfo(version, path, Path("/lib/modules") / version)
    found = []
    for path in Path("/boot").glob("vmlinuz-*"):
        version = path.name.removeprefix("vmlinuz-")
        if (Path("/lib/modules") / version / "modules.dep").exists():
            found.append(KernelInfo(version, path, Path("/lib/modules") / version))
    if not found:
        return None
    return max(found, key=lambda k: _version_key(k.version))


def _version_key(version: str) -> tuple[int | str, ...]:
    parts: list[int | str] = []
    for piece in version.replace("-", ".").split("."):
        parts.append(int(piece) if piece.isdigit() else -1)
    return tuple(parts)


def _decompress_payload(image: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage compressed with xz or gzip, else None."""
    xz_at = image.find(b"\xfd7zXZ\x00")
    if xz_at >= 0:
        try:
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(image[xz_at:])
        except lzma.LZMAError:
            return None
    gz_at = image.find(b"\x1f\x8b\x08\x00")
    if gz_at >= 0:
        try:
            return zlib.decompressobj(wbits=31).decompress(image[gz_at:])
        except zlib.error:
            return None
    return None


def has_pvh_note(elf: bytes) -> bool:
    """Whether a 64-bit little-endian ELF carries the PVH entry note."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12: pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note_type == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def pvh_kernel(kernel: KernelInfo, cache_dir: Path) -> Path | None:
    """A cached uncompressed ELF of `kernel` that QEMU can boot via PVH, or None."""
    image = kernel.image.read_bytes()
    digest = hashlib.sha256(image).hexdigest()[:16]
    target = cache_dir / f"vmlinux-{kernel.version}-{digest}.elf"
    if target.exists():
        return target
    elf = _decompress_payload(image)
    if elf is None or not has_pvh_note(elf):
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(elf)
    os.replace(tmp, target)
    return target
