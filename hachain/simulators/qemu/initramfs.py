"""Build the small initramfs that boots a guest into the host's own root.

This module owns: finding the kernel modules the guest needs (from modules.dep), writing a
cpio "newc" archive in pure Python (so device nodes need no root and no `cpio` binary),
the guest's first-stage `/init` script, and a content-addressed cache of built images.
It must not start processes or know about QEMU command lines (that is harness.py).

The image is generic: it depends only on the kernel, busybox and the init script below.
Everything that changes from one boot to the next (watchdog module and its parameters,
the PID-1 argv and environment, where the persistent share is mounted) is read at boot
from `boot.sh` in the per-machine control share, so repeated boots reuse one image.

Facts that shape the init script:
- The host root arrives as a read-only 9p share. QEMU's 9p "local" backend walks host
  paths and crosses host mounts, so the share's /proc, /dev, /sys are the *host's*; the
  guest mounts its own over them. `multidevs=remap` keeps inode numbers unique.
- A read-only root has no place for new mountpoints (e.g. /var/lib/hachain), so the
  guest root is an overlay: lower = the 9p host root, upper = a tmpfs. Writes land in
  guest RAM and vanish on reset; only the persistent share survives a reboot.
- busybox `switch_root` must run as PID 1 from the initramfs and deletes the
  initramfs's files; mounts made under the new root move with it.
- The kernel opens /dev/console for init's stdio before anything is mounted, so the
  archive carries a /dev/console character node (5, 1).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

from hachain.simulators.qemu.kernel import KernelInfo

FORMAT_VERSION = "3"

# Load order matters: each module's dependencies come before it.
SHARE_MODULES = (
    "netfs", "fscache", "9pnet", "virtio_ring", "virtio", "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev", "virtio_pci", "9pnet_virtio", "9p", "overlay",
)
WATCHDOG_MODULES = ("watchdog", "i6300esb", "softdog")

BOOT_MARKER = "HACHAIN-QEMU-BOOT"
PID1_MARKER = "HACHAIN-QEMU-PID1"
FAIL_MARKER = "HACHAIN-QEMU-FAIL"

INIT_SCRIPT = r"""#!/bin/sh
# hachain-qemu first stage: modules, mounts, guest agent, then switch_root into PID 1.
export PATH=/bin
fail() {
    echo "HACHAIN-QEMU-FAIL $*"
    sleep 1
    echo o > /proc/sysrq-trigger
    poweroff -f
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "hachain-qemu: initramfs up"
for m in $(cat /etc/share-modules); do
    if [ -e "/lib/modules/$m.ko" ]; then
        insmod "/lib/modules/$m.ko" || fail "insmod $m"
    fi
done
mkdir -p /ctl /host /newroot /ovl
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none ctl /ctl \
    || fail "mount control share"
[ -r /ctl/boot.sh ] || fail "no boot.sh in control share"
. /ctl/boot.sh
n=$(cat /ctl/boots 2>/dev/null)
n=$(( ${n:-0} + 1 ))
echo "$n" > /ctl/boots
echo "HACHAIN-QEMU-BOOT $n"
if [ -n "$WATCHDOG_MODULE" ]; then
    insmod /lib/modules/watchdog.ko 2>/dev/null
    insmod "/lib/modules/$WATCHDOG_MODULE.ko" $WATCHDOG_PARAMS \
        || fail "insmod $WATCHDOG_MODULE $WATCHDOG_PARAMS"
fi
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro,cache=$ROOT_CACHE host /host \
    || fail "mount host root"
mount -t tmpfs -o mode=0755 upper /ovl && mkdir -p /ovl/upper /ovl/work
if ! mount -t overlay -o lowerdir=/host,upperdir=/ovl/upper,workdir=/ovl/work overlay /newroot
then
    echo "hachain-qemu: overlay failed, root stays read-only"
    mount --bind /host /newroot || fail "bind host root"
fi
for d in dev proc sys; do
    mount --move "/$d" "/newroot/$d" || fail "move /$d"
done
mount -t tmpfs -o mode=0755,nosuid,nodev run /newroot/run || fail "tmpfs /run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmp /newroot/tmp || fail "tmpfs /tmp"
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
mkdir -p /newroot/run/hachain-qemu
mount --move /ctl /newroot/run/hachain-qemu || fail "move control share"
# Host directories under /tmp or /run that the guest needs (a checkout or a virtual
# environment living there): the tmpfs mounts above hid them, so bind them back from the
# read-only host root.
for p in $EXPOSE_PATHS; do
    mkdir -p "/newroot$p" && mount --bind "/host$p" "/newroot$p" || fail "expose $p"
done
if [ -n "$PERSIST_PATH" ]; then
    mkdir -p "/newroot$PERSIST_PATH" || fail "mkdir $PERSIST_PATH"
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none persist \
        "/newroot$PERSIST_PATH" || fail "mount persist share at $PERSIST_PATH"
fi
hostname "$GUEST_HOSTNAME"
run_setup || fail "setup script exited $?"
start_agent
echo "HACHAIN-QEMU-PID1 $n"
run_pid1
fail "switch_root returned"
"""


class InitramfsError(Exception):
    """The initramfs cannot be built (a module or busybox is missing)."""


def _module_name(path: str) -> str:
    name = Path(path).name
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def resolve_modules(kernel: KernelInfo, names: tuple[str, ...]) -> dict[str, Path | None]:
    """Map each module name to its file, or to None when it is built into the kernel."""
    dep = (kernel.modules_dir / "modules.dep").read_text()
    files: dict[str, str] = {}
    for line in dep.splitlines():
        path = line.split(":", 1)[0]
        files[_module_name(path)] = path
    builtin_path = kernel.modules_dir / "modules.builtin"
    builtin = set()
    if builtin_path.exists():
        builtin = {_module_name(p) for p in builtin_path.read_text().split()}
    result: dict[str, Path | None] = {}
    for name in names:
        key = name.replace("-", "_")
        if key in files:
            result[name] = kernel.modules_dir / files[key]
        elif key in builtin:
            result[name] = None
        else:
            raise InitramfsError(f"kernel {kernel.version}: module {name} not found in "
                                 f"{kernel.modules_dir}/modules.dep or modules.builtin")
    return result


def _module_bytes(path: Path) -> bytes:
    """Module contents, decompressed: busybox insmod reads only plain ELF."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        import lzma
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        import gzip
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        raise InitramfsError(f"{path}: zstd-compressed modules are not supported")
    return data


class CpioWriter:
    """A minimal writer for the cpio 'newc' format the kernel unpacks."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"",
               rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        header = b"070701" + b"".join(b"%08x" % f for f in fields)
        self._ino += 1
        self._chunks.append(_pad4(header + encoded))
        self._chunks.append(_pad4(data))

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self._chunks)


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def find_busybox(path: str | os.PathLike[str] | None = None) -> Path | None:
    """A static busybox: the given path, or the one busybox-static installs."""
    candidates = [Path(path)] if path else [Path("/bin/busybox"), Path("/usr/bin/busybox")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    which = shutil.which("busybox") if not path else None
    return Path(which) if which else None


def build_initramfs(kernel: KernelInfo, busybox: Path, cache_dir: Path) -> Path:
    """The path of a cached initramfs for this kernel and busybox, built if needed."""
    modules = resolve_modules(kernel, SHARE_MODULES + WATCHDOG_MODULES)
    busybox_data = busybox.read_bytes()
    if b"ld-linux" in busybox_data[:4096]:
        raise InitramfsError(f"{busybox}: busybox is dynamically linked; "
                             "install busybox-static")
    payload = {name: _module_bytes(path) for name, path in modules.items() if path}
    digest = hashlib.sha256(FORMAT_VERSION.encode() + INIT_SCRIPT.encode() + busybox_data)
    for name in sorted(payload):
        digest.update(name.encode() + b"\0" + hashlib.sha256(payload[name]).digest())
    target = cache_dir / f"initramfs-{kernel.version}-{digest.hexdigest()[:16]}.cpio"
    if target.exists():
        return target
    cpio = CpioWriter()
    for directory in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "run",
                      "tmp"):
        cpio.directory(directory)
    cpio.char_device("dev/console", 5, 1)
    cpio.char_device("dev/null", 1, 3)
    cpio.file("bin/busybox", busybox_data, 0o755)
    for applet in ("sh", "mount", "insmod", "mkdir", "cat", "echo", "sleep", "poweroff",
                   "switch_root", "env", "hostname", "chroot", "setsid"):
        cpio.symlink(f"bin/{applet}", "busybox")
    for name, data in payload.items():
        cpio.file(f"lib/modules/{name}.ko", data)
    present = [name for name in SHARE_MODULES if modules[name] is not None]
    cpio.file("etc/share-modules", ("\n".join(present) + "\n").encode())
    cpio.file("init", INIT_SCRIPT.encode(), 0o755)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(cpio.finish())
    os.replace(tmp, target)
    return target
