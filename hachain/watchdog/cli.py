"""`hachain watchdog list | info | set-timeout`: look at (and adjust) the watchdog device.

Rule: looking must not arm. Opening /dev/watchdogN arms it, so `list` and `info` read
sysfs (or the simulator's sysfs-like attributes) and never open the device unless
sysfs has nothing or `--open` asks for the driver's own answers. When they do open
it, they leave it as they found it: a device that was inactive is magic-closed
('V' then close); one that was already armed (its petter crashed and init is about to
restart it) is closed without 'V' so it stays armed. A nowayout device is not opened
at all without `--open`, because nothing can disarm it afterwards.

Exit codes: 0 success, 1 a failed operation (one line on stderr naming device and
operation), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from hachain.channels import ENV_SIM_WATCHDOG
from hachain.watchdog.device import (
    NO_DEVICE_MESSAGE,
    WDIOF_CARDRESET,
    Watchdog,
    WatchdogError,
    WatchdogInfo,
    describe_bootstatus,
    flag_descriptions,
    flag_names,
    open_watchdog,
    sim_attributes,
    sim_socket_path,
)
from hachain.watchdog.discover import WatchdogDevice, discover, find_device

PROG = "hachain watchdog"
NOT_OPENED = "not opened"

Report = dict[str, Any]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `watchdog` and its sub-commands on an argparse sub-parsers object."""
    p = subparsers.add_parser(
        "watchdog", help="the watchdog device: list, info, set-timeout",
        description="Look at the watchdog device without arming it.")
    p.add_argument("--sysfs-root", default=None, help=argparse.SUPPRESS)  # for tests
    p.set_defaults(func=_usage(p))
    sub = p.add_subparsers(dest="watchdog_command", metavar="COMMAND")

    ls = sub.add_parser("list", help="every watchdog device (from sysfs; opens nothing)")
    ls.add_argument("--json", action="store_true", help="print a JSON list")
    ls.set_defaults(func=cmd_list)

    info = sub.add_parser("info", help="one device: identity, timeout, time left, ...")
    _device_arg(info)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.add_argument("--open", action="store_true",
                      help="open the device and ask the driver through ioctls (even when "
                           "it is nowayout, which leaves it armed)")
    info.set_defaults(func=cmd_info)

    st = sub.add_parser("set-timeout", help="set the device's timeout (opens it)")
    st.add_argument("seconds", type=_positive_int, metavar="SECONDS")
    _device_arg(st)
    st.add_argument("--open", action="store_true",
                    help="go ahead even when the device is nowayout (it stays armed)")
    st.set_defaults(func=cmd_set_timeout)
    return p


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", "-d", default="auto", metavar="D",
                   help='"auto" (first device), a path like /dev/watchdog0, "sim" '
                        f'(socket from ${ENV_SIM_WATCHDOG}) or "sim:SOCKET"')


def _positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1 second, got {value}")
    return value


def _usage(p: argparse.ArgumentParser) -> Any:
    def no_command(args: argparse.Namespace) -> int:
        p.print_usage(sys.stderr)
        print(f"{PROG}: error: a command is required (list, info, set-timeout)",
              file=sys.stderr)
        return 2
    return no_command


def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


# --- gathering ------------------------------------------------------------------------------

def _from_sysfs(dev: WatchdogDevice) -> Report:
    return {
        "device": dev.devnode, "source": "sysfs", "identity": dev.identity,
        "firmware_version": dev.fw_version, "options": dev.options, "timeout": dev.timeout,
        "timeleft": dev.timeleft, "pretimeout": dev.pretimeout, "bootstatus": dev.bootstatus,
        "nowayout": dev.nowayout, "state": dev.state, "status": dev.status,
        "driver": dev.driver, "notes": [],
    }


def _from_sim_attrs(label: str, attrs: dict[str, Any]) -> Report:
    def num(key: str) -> int | None:
        value = attrs.get(key)
        try:
            return None if value is None else int(str(value), 0)
        except ValueError:
            return None

    nowayout = num("nowayout")
    return {
        "device": label, "source": "simulator", "identity": attrs.get("identity"),
        "firmware_version": num("fw_version"), "options": num("options"),
        "timeout": num("timeout"), "timeleft": num("timeleft"),
        "pretimeout": num("pretimeout"), "bootstatus": num("bootstatus"),
        "nowayout": None if nowayout is None else bool(nowayout),
        "state": attrs.get("state"), "status": num("status"), "driver": "wdsim",
        "notes": [],
    }


def _query_open(wd: Watchdog, report: Report) -> None:
    """Fill `report` from the driver's ioctls; a failing optional ioctl becomes a note."""
    report["source"] = "ioctl" if report["source"] == "sysfs" else report["source"] + "+ioctl"
    queries = (
        ("support", wd.get_support), ("timeout", wd.get_timeout),
        ("timeleft", wd.get_timeleft), ("pretimeout", wd.get_pretimeout),
        ("status", wd.get_status), ("bootstatus", wd.get_bootstatus),
    )
    for key, query in queries:
        try:
            value = query()
        except WatchdogError as e:
            report["notes"].append(str(e))
            continue
        if isinstance(value, WatchdogInfo):
            report["identity"] = value.identity
            report["firmware_version"] = value.firmware_version
            report["options"] = value.options
        else:
            report[key] = value


def _close_as_found(wd: Watchdog, was_active: bool | None, report: Report) -> None:
    """Leave the device as it was before we opened it (see the module docstring)."""
    if was_active:
        wd.close()
        report["notes"].append("it was already armed before we opened it: closed without "
                               "the magic character, so it stays armed")
        return
    if not wd.magic_close():
        report["notes"].append("nowayout: opening armed it and it cannot be disarmed; "
                               "something must pet it or the machine resets")


def _open_and_query(spec: str, report: Report) -> None:
    was_active = None if report.get("state") is None else report["state"] == "active"
    wd = open_watchdog(spec, nowayout=bool(report.get("nowayout")))
    try:
        _query_open(wd, report)
    finally:
        _close_as_found(wd, was_active, report)
    if report.get("nowayout") is None:
        report["nowayout"] = wd.nowayout or None


def _resolve(spec: str, sysfs_root: str | None) -> str:
    if spec != "auto":
        return spec
    devices = discover(sysfs_root)
    if not devices:
        raise WatchdogError(NO_DEVICE_MESSAGE)
    return devices[0].devnode


def gather_info(spec: str, open_device: bool, sysfs_root: str | None = None) -> Report:
    """Everything `info` shows about one device. WatchdogError when it cannot be read."""
    sim_path = sim_socket_path(spec)
    if sim_path is not None:
        label = f"sim:{sim_path}"
        try:
            report = _from_sim_attrs(label, sim_attributes(sim_path))
        except OSError as e:
            raise WatchdogError.from_oserror(label, "read attributes", e) from e
        if open_device:
            _open_and_query(label, report)
        else:
            report["notes"].append(NOT_OPENED)
        return report
    path = _resolve(spec, sysfs_root)
    dev = find_device(path, sysfs_root)
    if dev is None:
        report = {"device": path, "source": "ioctl", "nowayout": None, "state": None,
                  "notes": ["no sysfs entry for this device: opened it to ask the driver"]}
        _open_and_query(path, report)
        return report
    report = _from_sysfs(dev)
    report["device"] = path
    if open_device:
        _open_and_query(path, report)
    elif dev.nowayout:
        report["notes"].append("nowayout: the device cannot be disarmed once opened, so it "
                               "was not opened (--open does it anyway)")
    else:
        report["notes"].append(NOT_OPENED)
    return report


# --- printing -------------------------------------------------------------------------------

def _seconds(value: int | None) -> str:
    return "unknown" if value is None else f"{value} second{'s' if value != 1 else ''}"


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def format_info(report: Report) -> str:
    """wdctl-like text for one report."""
    options = report.get("options")
    boot = report.get("bootstatus")
    status = report.get("status")
    ident = report.get("identity") or "unknown"
    lines = [
        f"Device:        {report['device']}",
        f"Source:        {report['source']}" + (f" (driver {report['driver']})"
                                                if report.get("driver") else ""),
        f"Identity:      {ident}",
        f"Firmware:      {_or_unknown(report.get('firmware_version'))}",
        f"Timeout:       {_seconds(report.get('timeout'))}",
        f"Pre-timeout:   {_seconds(report.get('pretimeout'))}",
        f"Timeleft:      {_seconds(report.get('timeleft'))}",
        f"State:         {report.get('state') or 'unknown'}",
        f"Nowayout:      {_yes_no(report.get('nowayout'))}",
        f"Boot status:   {_flags_line(boot)}"
        + (f": {describe_bootstatus(boot)}" if boot is not None else ""),
        f"Status:        {_flags_line(status)}",
        "Options:       " + (_flags_line(options) if options is not None else
                             "unknown: this kernel's sysfs does not offer them (--open asks "
                             "the driver)"),
    ]
    lines += _flag_table(options, status, boot)
    lines += [f"Note:          {n}" for n in report.get("notes", [])]
    return "\n".join(lines)


def _flag_table(options: int | None, status: int | None, boot: int | None) -> list[str]:
    """wdctl's table: every flag the driver supports (or, without its options, that the
    status or boot status shows), what it means, and whether it is set in the status and
    in the boot status (1/0, "-" when that word is unknown)."""
    mask = (options or 0) | (status or 0) | (boot or 0)
    rows = flag_descriptions(mask)
    if not rows:
        return []
    width = max(len(text) for _, text in rows)

    def bit(word: int | None, name: str) -> str:
        if word is None:
            return "-"
        return "1" if name in flag_names(word) else "0"

    out = [f"  {'FLAG':<14} {'DESCRIPTION':<{width}} STATUS BOOT-STATUS"]
    out += [f"  {name:<14} {text:<{width}} {bit(status, name):>6} {bit(boot, name):>11}"
            for name, text in rows]
    return out


def _or_unknown(value: Any) -> str:
    return "unknown" if value is None else str(value)


def _flags_line(mask: int | None) -> str:
    if mask is None:
        return "unknown"
    names = flag_names(mask)
    return f"0x{mask:x}" + (" " + " ".join(names) if names else "")


def _json_report(report: Report) -> Report:
    out = dict(report)
    for key in ("options", "bootstatus", "status"):
        mask = report.get(key)
        out[key + "_flags"] = None if mask is None else flag_names(mask)
    boot = report.get("bootstatus")
    out["last_reboot_by_watchdog"] = None if boot is None else bool(boot & WDIOF_CARDRESET)
    return out


# --- commands -------------------------------------------------------------------------------

def cmd_list(args: argparse.Namespace) -> int:
    rows = [_from_sysfs(dev) for dev in discover(args.sysfs_root)]
    sim_path = os.environ.get(ENV_SIM_WATCHDOG)
    if sim_path:
        try:
            rows.append(_from_sim_attrs(f"sim:{sim_path}", sim_attributes(sim_path)))
        except OSError as e:
            rows.append({"device": f"sim:{sim_path}", "source": "simulator",
                         "notes": [f"not reachable: {e.strerror or e}"]})
    if args.json:
        print(json.dumps([_json_report(r) for r in rows], sort_keys=True))
        return 0
    if not rows:
        print("no watchdog devices found (looked in /sys/class/watchdog)")
        return 0
    fmt = "{:<22} {:<24} {:>8} {:>9} {:<9} {:<9} {}"
    print(fmt.format("DEVICE", "IDENTITY", "TIMEOUT", "TIMELEFT", "STATE", "NOWAYOUT",
                     "BOOT-STATUS"))
    for r in rows:
        if "identity" not in r:
            print(f"{r['device']:<22} ({'; '.join(r['notes'])})")
            continue
        boot = r.get("bootstatus")
        print(fmt.format(
            r["device"], (r["identity"] or "unknown")[:24],
            _short_seconds(r["timeout"]), _short_seconds(r["timeleft"]),
            r["state"] or "unknown", _yes_no(r["nowayout"]),
            "unknown" if boot is None else (" ".join(flag_names(boot)) or "0")))
    return 0


def _short_seconds(value: int | None) -> str:
    return "-" if value is None else f"{value}s"


def cmd_info(args: argparse.Namespace) -> int:
    try:
        report = gather_info(args.device, args.open, args.sysfs_root)
    except WatchdogError as e:
        return _fail(str(e))
    if args.json:
        print(json.dumps(_json_report(report), sort_keys=True))
    else:
        print(format_info(report))
    return 0


def cmd_set_timeout(args: argparse.Namespace) -> int:
    try:
        applied, notes, device = set_timeout(args.device, args.seconds, args.open,
                                             args.sysfs_root)
    except WatchdogError as e:
        return _fail(str(e))
    extra = "" if applied == args.seconds else f" (asked for {args.seconds})"
    print(f"{device}: timeout set to {_seconds(applied)}{extra}")
    for note in notes:
        print(f"{device}: note: {note}")
    return 0


def set_timeout(spec: str, seconds: int, force: bool,
                sysfs_root: str | None = None) -> tuple[int, list[str], str]:
    """Open the device, set its timeout, leave it as found: (applied, notes, device)."""
    sim_path = sim_socket_path(spec)
    report: Report
    if sim_path is not None:
        label = f"sim:{sim_path}"
        try:
            report = _from_sim_attrs(label, sim_attributes(sim_path))
        except OSError as e:
            raise WatchdogError.from_oserror(label, "read attributes", e) from e
        spec = label
    else:
        spec = _resolve(spec, sysfs_root)
        dev = find_device(spec, sysfs_root)
        report = _from_sysfs(dev) if dev is not None else {"state": None, "nowayout": None,
                                                           "notes": []}
    if report.get("nowayout") and not force:
        raise WatchdogError(f"{spec}: SETTIMEOUT {seconds}: the device is nowayout, so "
                            "opening it would leave it armed for good; pass --open to do "
                            "it anyway")
    was_active = None if report.get("state") is None else report["state"] == "active"
    wd = open_watchdog(spec, nowayout=bool(report.get("nowayout")))
    try:
        applied = wd.set_timeout(seconds)
    finally:
        _close_as_found(wd, was_active, report)
    return applied, report["notes"], spec
