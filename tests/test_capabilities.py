"""`capabilities` (systemd's AmbientCapabilities=) and `no_new_privileges`: a service
that runs as its own user keeps exactly the capabilities it asks for, over its exec, and
can gain no privilege after. Real processes on every spawn path (clone3 with its set-up;
the fallback through subprocess), read back from /proc/PID/status, and a real bind of a
port below net.ipv4.ip_unprivileged_port_start as `nobody`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import config
from hachain.config import ServiceConfig
from hachain.restarter import spawn
from tests.conftest import SPAWN_PATHS, host_turn, spawn_path, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="switching to another user and keeping "
                                       "capabilities needs root")

NET_BIND_SERVICE = 10
# the binder needs the standard library only; `nobody` may not reach this checkout's .venv
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable


def status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(ln.rstrip("\n").split(":\t", 1) for ln in f if ":\t" in ln)


def unprivileged_port_start() -> int:
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        return int(f.read())


def free_low_port() -> int:
    """A port below the unprivileged start that nothing listens on (root may bind it)."""
    top = unprivileged_port_start()
    if top <= 1:
        pytest.skip("every port is unprivileged here (ip_unprivileged_port_start = 0)")
    for port in range(top - 1, max(top - 200, 0), -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free privileged port on 127.0.0.1")


@pytest.fixture
def low_port() -> Iterator[int]:
    """A privileged port nothing listens on, the test's until it ends (asked for before
    `started`, it is held until the services that bound it are killed): the cases that
    bind one, on several xdist workers or in two test runs on one host, take turns, or
    two would find the same port free and one be refused it (EADDRINUSE)."""
    with host_turn("low-port"):
        yield free_low_port()


# binds the port as the user it runs as, says so, and stays (or says why not and exits 3)
BINDER = ("import socket, sys, time\n"
          "s = socket.socket()\n"
          "try:\n"
          "    s.bind(('127.0.0.1', int(sys.argv[1])))\n"
          "except OSError as e:\n"
          "    print('refused', e.errno, flush=True)\n"
          "    sys.exit(3)\n"
          "s.listen()\n"
          "print('bound', flush=True)\n"
          "time.sleep(3600)\n")


@pytest.mark.parametrize("path", SPAWN_PATHS)
@pytest.mark.parametrize("caps", [(), ("CAP_NET_BIND_SERVICE",)], ids=["none", "bind"])
def test_a_user_service_keeps_exactly_the_capabilities_it_asks_for(
        low_port: int, cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any,
        path: str, caps: tuple[str, ...]) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)
    port = low_port
    logs = tmp_path / "logs"
    cfg = ServiceConfig(name="web", command=(SYSTEM_PYTHON, "-S", "-c", BINDER, str(port)),
                        user="nobody", capabilities=caps, no_new_privileges=bool(caps))
    sp = spawn.spawn(cfg, str(logs), cgroups, None, yield_cpu=False)
    started.append(sp.pid)
    st = status(sp.pid)
    want = 1 << NET_BIND_SERVICE if caps else 0
    assert int(st["Uid"].split()[0]) == pwd.getpwnam("nobody").pw_uid
    for field in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert int(st[field], 16) == want, (field, st[field])
    assert st["NoNewPrivs"].strip() == ("1" if caps else "0")
    log = logs / "web.log"
    said = wait_until(lambda: log.exists() and log.read_text().strip(), 30,
                      "the service to try its bind")
    assert said == ("bound" if caps else "refused 13"), said  # EACCES without the capability


def test_a_capability_the_restarter_lacks_fails_the_start_naming_it(
        cgroups: Any, tmp_path: Any, started: list[int]) -> None:
    with open("/proc/self/status") as f:
        bounding = next(int(ln.split()[1], 16) for ln in f if ln.startswith("CapBnd:"))
    missing = [n for i, n in enumerate(config.CAPABILITIES) if not bounding >> i & 1]
    if not missing:
        pytest.skip("this process has every capability: none can be refused")
    name = "CAP_" + missing[0]
    cfg = ServiceConfig(name="web", command=("sleep", "3600"), user="nobody",
                        capabilities=(name,))
    with pytest.raises(spawn.SpawnError) as e:
        spawn.spawn(cfg, str(tmp_path / "logs"), cgroups, None, yield_cpu=False)
    assert str(e.value) == f"capabilities = {name}: capset: Operation not permitted " \
                           "(errno EPERM)"
    assert cgroups.procs("web") == []


@pytest.mark.parametrize("body, error", [
    ('capabilities = ["CAP_NET_BIND_SERVICE"]',
     "service.web.capabilities: needs user: a service that runs as root has every capability"),
    ('user = "nobody"\ncapabilities = ["CAP_NET_BIND_SERVIC"]',
     "service.web.capabilities: must be a Linux capability such as \"CAP_NET_BIND_SERVICE\"; "
     "did you mean 'CAP_NET_BIND_SERVICE'?"),
])
def test_config_errors(body: str, error: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.parse(f'[service.web]\ncommand = ["/bin/true"]\n{body}\n', "c.toml")
    assert error in str(e.value)


def test_names_are_taken_with_or_without_the_prefix_in_any_case() -> None:
    s = config.parse('[service.web]\ncommand = ["/bin/true"]\nuser = "nobody"\n'
                     'capabilities = ["net_bind_service", "CAP_NET_RAW"]\n', "c.toml")
    assert s.services["web"].capabilities == ("CAP_NET_BIND_SERVICE", "CAP_NET_RAW")
    assert spawn.capability_mask(s.services["web"]) == (1 << 10) | (1 << 13)


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_a_bounding_set_limits_even_a_service_that_runs_as_root(
        low_port: int, cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any,
        path: str) -> None:
    """capability_bounding_set (systemd's CapabilityBoundingSet=): a root service keeps
    only those, in its bounding set and so in what it has after its exec; binding a
    privileged port as root then fails without CAP_NET_BIND_SERVICE."""
    cgroups = spawn_path(path, cgroups, monkeypatch)
    port = low_port
    # as BINDER, but it stays after a refusal too (its status is read after)
    binder = BINDER.replace("sys.exit(3)", "time.sleep(3600)")
    for keep, bound in ((("CAP_NET_BIND_SERVICE", "CAP_CHOWN"), True), ((), False)):
        cfg = ServiceConfig(name="web", command=(SYSTEM_PYTHON, "-S", "-c", binder,
                                                 str(port)),
                            capability_bounding_set=keep)
        logs = tmp_path / f"logs-{len(keep)}"
        sp = spawn.spawn(cfg, str(logs), cgroups, None, yield_cpu=False)
        started.append(sp.pid)
        log = logs / "web.log"
        said = wait_until(lambda log=log: log.exists() and log.read_text().strip(), 30,
                          "the binder's answer")
        st = status(sp.pid)
        mask = (1 << NET_BIND_SERVICE | 1) if keep else 0
        assert int(st["CapBnd"], 16) == mask, st["CapBnd"]
        assert int(st["CapEff"], 16) == mask and int(st["CapPrm"], 16) == mask, st
        assert said.startswith("bound") == bound, said
        os.kill(sp.pid, 9)  # the port is free again for the next


def test_capabilities_outside_the_bounding_set_are_refused() -> None:
    with pytest.raises(config.ConfigError) as e:
        config.parse('[service.a]\ncommand = ["/bin/true"]\nuser = "nobody"\n'
                     'capabilities = ["CAP_NET_RAW", "CAP_CHOWN"]\n'
                     'capability_bounding_set = ["CAP_CHOWN"]\n', "c.toml")
    assert "service.a.capabilities: CAP_NET_RAW not in capability_bounding_set" in \
        str(e.value)
