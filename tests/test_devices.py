"""device_allow and device_policy (systemd's DeviceAllow=, DevicePolicy=): the device
nodes a service may use, held by a cgroup device program.

The rules' side, pure (items, /proc/devices); then a real restarter on real cgroups:
each refused open or mknod is tried for real next to an allowed one, the pseudo devices
come with the default policy and not with "strict", a reload that drops the key gives
every device back, and a chain without cgroups refuses the start instead of running
the service with every device.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from hachain import config, devices, importer
from hachain.configtypes import ServiceConfig

RUN_BOUND = 30.0  # a restarter answering, a few /bin/sh processes; no chain timer involved

PROC_DEVICES = """Character devices:
  1 mem
136 pts
180 usb
189 usb_device
Block devices:
  7 loop
  8 sd
"""


def test_items_are_read_as_systemd_writes_them() -> None:
    assert devices.split("/dev/fuse") == ("/dev/fuse", 7)
    assert devices.split("/dev/null  rw") == ("/dev/null", 6)
    assert devices.split("char-pts r") == ("char-pts", 2)
    assert devices.split("block-loop m") == ("block-loop", 1)
    for bad, why in (("dev/null", "a device node's absolute path"),
                     ("/dev/null rx", "access 'rx': one or more of r"),
                     ("char- rw", "char-NAME or block-NAME"),
                     ("/dev/null r w", "must be \"SPEC\" or \"SPEC ACCESS\"")):
        with pytest.raises(ValueError, match=why):
            devices.split(bad)
    with pytest.raises(config.ConfigError, match=r"chain\.toml:3: service\.a\.device_allow: "
                       r"access 'rq': one or more of r \(read\), w \(write\), m \(mknod\), "
                       r"got \"/dev/null rq\""):
        config.parse('[service.a]\ncommand = ["/bin/x"]\ndevice_allow = ["/dev/null rq"]\n')


def test_driver_names_and_paths_resolve_on_this_host() -> None:
    rules, notes = devices.resolve(("char-usb* rw", "block-loop", "/dev/null r",
                                    "char-nope", "/dev/hachain-missing", "/etc/hostname"),
                                   PROC_DEVICES)
    null = os.stat("/dev/null").st_rdev
    assert rules == [devices.Rule(2, 180, -1, 6), devices.Rule(2, 189, -1, 6),
                     devices.Rule(1, 7, -1, 7),
                     devices.Rule(2, os.major(null), os.minor(null), 2)]
    assert notes == [
        "device_allow: char-nope: no such char driver in /proc/devices; left out",
        "device_allow: /dev/hachain-missing: No such file or directory; left out",
        "device_allow: /etc/hostname: not a device node; left out"]


def test_the_policies() -> None:
    c = ServiceConfig("a", ("/bin/x",))
    assert devices.policy_rules(c) is None  # auto, nothing listed: every device
    assert devices.policy_rules(ServiceConfig("a", ("/bin/x",), device_policy="strict")) == ()
    closed = devices.policy_rules(ServiceConfig("a", ("/bin/x",), device_policy="closed"))
    assert closed == devices.STANDARD and "/dev/null rwm" in closed
    auto = devices.policy_rules(ServiceConfig("a", ("/bin/x",), device_allow=("/dev/fuse",)))
    assert auto == devices.STANDARD + ("/dev/fuse",)


def test_the_program_has_one_block_per_rule() -> None:
    """7 instructions read the context; each rule is its tests, 3 for the access and 2
    to allow; 2 refuse at the end. (The kernel's verifier and the tests below run it.)"""
    code = devices.program([devices.Rule(2, 1, 3, 6), devices.Rule(1, 7, -1, 7)])
    assert len(code) == 8 * (7 + (3 + 5) + (2 + 5) + 2)


def test_import_carries_device_allow_and_device_policy(tmp_path: Any) -> None:
    unit = tmp_path / "timedated.service"
    unit.write_text("[Service]\nExecStart=/lib/systemd/systemd-timedated\n"
                    "DeviceAllow=char-rtc r\nDeviceAllow=/dev/null rw\nDevicePolicy=closed\n")
    text, conv = importer.import_files([str(unit)])
    s = config.parse(text, "imported.toml").services["timedated"]
    assert (s.device_allow, s.device_policy) == (("char-rtc r", "/dev/null rw"), "closed")
    assert not [w for w in conv.warnings if "Device" in w]
    reset = tmp_path / "r.service"
    reset.write_text("[Service]\nExecStart=/bin/x\nDeviceAllow=/dev/fuse\nDeviceAllow=\n")
    text, _ = importer.import_files([str(reset)])
    assert config.parse(text, "imported.toml").services["r"].device_allow == ()


# --- on real cgroups ------------------------------------------------------------------------

def probe(tries: str) -> str:
    """A service that tries each `what:command` in turn and says ok/no for each."""
    return "; ".join(f"if {cmd} 2>/dev/null; then echo {what}=ok; else echo {what}=no; fi"
                     for what, cmd in (t.split(":", 1) for t in tries.split("|"))) + \
        "; echo probed; exec sleep 1000"


TRIES = ("null-w:echo x > /dev/null|zero-r:head -c1 /dev/zero > /dev/null|"
         "zero-w:echo x > /dev/zero|full-r:head -c1 /dev/full > /dev/null|"
         "mknod-null:rm -f $TMPDIR/hc-null && mknod $TMPDIR/hc-null c 1 3|"
         "mknod-mem:rm -f $TMPDIR/hc-mem && mknod $TMPDIR/hc-mem c 1 1")


def conf(extra: str, tmp: Any) -> str:
    return f'''
[service.dev]
command = ["/bin/sh", "-c", "{probe(TRIES)}"]
env = {{ TMPDIR = "{tmp}" }}
restart = "never"
{extra}
'''


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="loading a cgroup device program needs root")
def test_strict_allows_only_what_is_listed(restarter: Any, tmp_path: Any) -> None:
    r = restarter(conf('device_allow = ["/dev/null rw", "/dev/zero r"]\n'
                       'device_policy = "strict"', tmp_path))
    r.needs_cgroups("the device program is attached to one")
    r.wait_state("dev", "ready")
    assert r.probed("dev") == {"null-w": "ok", "zero-r": "ok", "zero-w": "no", "full-r": "no",
                          "mknod-null": "no", "mknod-mem": "no"}
    assert not (tmp_path / "hc-null").exists()


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="loading a cgroup device program needs root")
def test_the_default_policy_adds_the_pseudo_devices_and_a_reload_gives_all_back(
        restarter: Any, tmp_path: Any) -> None:
    r = restarter(conf('device_allow = ["/dev/zero r"]', tmp_path))
    r.needs_cgroups("the device program is attached to one")
    r.wait_state("dev", "ready")
    # the pseudo devices in full (null, zero, full: read, write, mknod), not /dev/mem
    assert r.probed("dev") == {"null-w": "ok", "zero-r": "ok", "zero-w": "ok",
                               "full-r": "ok", "mknod-null": "ok", "mknod-mem": "no"}
    body = open(r.config).read().replace('device_allow = ["/dev/zero r"]', "")
    with open(r.config, "w") as f:
        f.write(body)
    assert r.req("reload")["ok"]
    assert r.probed("dev", 2) == {"null-w": "ok", "zero-r": "ok", "zero-w": "ok",
                                  "full-r": "ok", "mknod-null": "ok",
                                  "mknod-mem": "ok"}  # (every device, as the host)


@pytest.mark.slow
def test_without_cgroups_the_start_is_refused(restarter: Any, tmp_path: Any) -> None:
    r = restarter(conf('device_allow = ["/dev/null rw"]', tmp_path), cgroups=False)
    st = r.wait_state("dev", "failed", timeout=RUN_BOUND)
    assert "device_allow / device_policy need the chain's cgroups" in st["reason"], st
