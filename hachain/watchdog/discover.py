"""Finding watchdog devices and reading what sysfs says about them, without opening them.

This module owns discovery only. It never opens /dev/watchdogN (opening arms the
device; see the facts essay in `hachain.watchdog.device`), so everything here is safe to
run on a production box while the tickler holds the device.

Discovery asks udev (through pyudev) for the devices of subsystem "watchdog"; each
is a `watchdogN` class device with a `/dev/watchdogN` node. The legacy `/dev/watchdog`
node (misc minor 130) is the same hardware as `watchdog0` and is not listed separately.
When udev cannot be asked (no /sys, a container without udev data), or when tests pass
their own `sysfs_root`, the class directory is scanned directly instead.

Attributes of /sys/class/watchdog/watchdogN that the kernel may provide (each only when
the driver supports it, so every field here is optional):

    identity    the driver's identity string          e.g. "i6300ESB timer"
    timeout     current timeout, seconds              decimal
    timeleft    seconds before it fires               decimal (only with get_timeleft)
    pretimeout  pretimeout, seconds                   decimal (only with WDIOF_PRETIMEOUT)
    bootstatus  WDIOF_* flags of the last reset       decimal (32 = WDIOF_CARDRESET)
    nowayout    1 when it can never be disarmed       0/1
    state       "active" or "inactive"
    status      WDIOF_* status flags                  "0x%x"
    fw_version  firmware version                      decimal
    options     WDIOF_* option flags                  "0x%x"
    min_timeout, max_timeout                          decimal
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

SYSFS_ROOT = "/sys"
CLASS_DIR = "class/watchdog"

INT_ATTRIBUTES = (
    "timeout", "timeleft", "pretimeout", "bootstatus", "status", "fw_version", "options",
    "min_timeout", "max_timeout",
)


@dataclass(frozen=True)
class WatchdogDevice:
    """One watchdog as sysfs describes it. None means "the driver does not say"."""

    name: str  # "watchdog0"
    devnode: str  # "/dev/watchdog0"
    sys_path: str
    identity: str | None = None
    timeout: int | None = None
    timeleft: int | None = None
    pretimeout: int | None = None
    bootstatus: int | None = None
    nowayout: bool | None = None
    state: str | None = None
    status: int | None = None
    fw_version: int | None = None
    options: int | None = None
    min_timeout: int | None = None
    max_timeout: int | None = None
    driver: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _read_attr(sys_path: str, name: str) -> str | None:
    """The stripped text of one sysfs attribute; None when missing or unreadable.

    Some attributes exist but fail to read (EOPNOTSUPP from a driver without the
    callback, EACCES for non-root): treat those as absent too.
    """
    try:
        with open(os.path.join(sys_path, name), "rb") as f:
            raw = f.read(4096)
    except OSError:
        return None
    return raw.decode("utf-8", "replace").strip()


def _parse_int(text: str | None) -> int | None:
    """Decimal or 0x-hex integer, as the kernel prints them; None when not a number."""
    if text is None or text == "":
        return None
    try:
        return int(text, 0)
    except ValueError:
        try:
            return int(text, 10)  # "010" is decimal 10 to the kernel, not an error
        except ValueError:
            return None


def _driver_name(sys_path: str) -> str | None:
    """Name of the bound driver (device/driver symlink), e.g. "i6300esb" or "softdog"."""
    try:
        target = os.readlink(os.path.join(sys_path, "device", "driver"))
    except OSError:
        return None
    return os.path.basename(target) or None


def read_sysfs(sys_path: str, devnode: str | None = None) -> WatchdogDevice:
    """Parse every attribute that exists under one `watchdogN` sysfs directory."""
    name = os.path.basename(os.path.normpath(sys_path))
    ints: dict[str, int | None] = {a: _parse_int(_read_attr(sys_path, a)) for a in INT_ATTRIBUTES}
    nowayout_raw = _parse_int(_read_attr(sys_path, "nowayout"))
    return WatchdogDevice(
        name=name,
        devnode=devnode or "/dev/" + name,
        sys_path=sys_path,
        identity=_read_attr(sys_path, "identity"),
        nowayout=None if nowayout_raw is None else bool(nowayout_raw),
        state=_read_attr(sys_path, "state"),
        driver=_driver_name(sys_path),
        **ints,
    )


def _sort_key(dev: WatchdogDevice) -> tuple[int, str]:
    digits = dev.name[len("watchdog"):]
    return (int(digits) if digits.isdigit() else 1 << 30, dev.name)


def _scan_class_dir(sysfs_root: str) -> list[WatchdogDevice]:
    class_dir = os.path.join(sysfs_root, CLASS_DIR)
    try:
        names = os.listdir(class_dir)
    except OSError:
        return []
    return [read_sysfs(os.path.join(class_dir, n)) for n in names if n.startswith("watchdog")]


def _scan_udev() -> list[WatchdogDevice]:
    import pyudev

    context = pyudev.Context()
    found = []
    for udev_dev in context.list_devices(subsystem="watchdog"):
        sys_name = udev_dev.sys_name or ""
        if not sys_name.startswith("watchdog"):
            continue
        found.append(read_sysfs(udev_dev.sys_path, udev_dev.device_node))
    return found


def discover(sysfs_root: str | None = None) -> list[WatchdogDevice]:
    """Every watchdog device, lowest number first; [] when there are none.

    With `sysfs_root` (tests), scan `<root>/class/watchdog` directly. Otherwise ask
    udev, and fall back to scanning /sys when udev cannot be asked.
    """
    if sysfs_root is not None:
        devices = _scan_class_dir(sysfs_root)
    else:
        try:
            devices = _scan_udev()
        except (ImportError, OSError):  # no libudev, no /sys, no udev data: scan by hand
            devices = _scan_class_dir(SYSFS_ROOT)
    return sorted(devices, key=_sort_key)


def find_device(path: str, sysfs_root: str | None = None) -> WatchdogDevice | None:
    """The sysfs description of the device node `path`, or None when sysfs has none.

    Matches the node path, then the `watchdogN` base name; the legacy `/dev/watchdog`
    node is watchdog0.
    """
    devices = discover(sysfs_root)
    real = os.path.realpath(path)
    for dev in devices:
        if path == dev.devnode or real == os.path.realpath(dev.devnode):
            return dev
    base = os.path.basename(path)
    if base == "watchdog":
        base = "watchdog0"
    for dev in devices:
        if dev.name == base:
            return dev
    return None
