"""CPU and I/O scheduling of a service (systemd's CPUSchedulingPolicy=,
CPUSchedulingPriority=, CPUSchedulingResetOnFork=, IOSchedulingClass=,
IOSchedulingPriority=, CPUAffinity=), on every spawn path: set in the child before its
exec, read back from the running process. And the configuration's, the importer's and
`hachain check`'s side.
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import pytest

from hachain import config, hostcheck, importer
from hachain.config import ServiceConfig
from hachain.restarter import spawn
from tests.conftest import SPAWN_PATHS, spawn_path

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="a real-time policy needs root (CAP_SYS_NICE)")


def ionice(pid: int) -> str:
    return subprocess.run(["ionice", "-p", str(pid)], capture_output=True, text=True,
                          timeout=10).stdout.strip()


def start(cfg: ServiceConfig, cgroups: Any, tmp_path: Any, started: list[int]) -> int:
    sp = spawn.spawn(cfg, str(tmp_path / "logs"), cgroups, None, yield_cpu=False)
    started.append(sp.pid)
    return sp.pid


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_batch_work_runs_idle_on_one_cpu(cgroups: Any, tmp_path: Any, started: list[int],
                                         monkeypatch: Any, path: str) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)
    cpu = max(os.sched_getaffinity(0))
    cfg = ServiceConfig(name="batch", command=("sleep", "3600"), cpu_scheduling_policy="idle",
                        io_scheduling_class="idle", cpu_affinity=(cpu,))
    pid = start(cfg, cgroups, tmp_path, started)
    assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    assert ionice(pid) == "idle"
    assert os.sched_getaffinity(pid) == {cpu}
    # the restarter itself is untouched
    assert os.sched_getscheduler(0) == os.SCHED_OTHER and ionice(os.getpid()) != "idle"


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_a_control_loop_gets_its_real_time_priority(cgroups: Any, tmp_path: Any,
                                                    started: list[int], monkeypatch: Any,
                                                    path: str) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)
    cfg = ServiceConfig(name="loop", command=("sleep", "3600"), cpu_scheduling_policy="fifo",
                        cpu_scheduling_priority=10, cpu_scheduling_reset_on_fork=True,
                        io_scheduling_class="best-effort", io_scheduling_priority=1)
    pid = start(cfg, cgroups, tmp_path, started)
    assert os.sched_getscheduler(pid) == os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
    assert os.sched_getparam(pid).sched_priority == 10
    assert ionice(pid) == "best-effort: prio 1"


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_a_cpu_the_host_lacks_fails_the_start_naming_it(cgroups: Any, tmp_path: Any,
                                                        started: list[int],
                                                        monkeypatch: Any, path: str) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)
    cfg = ServiceConfig(name="pinned", command=("sleep", "3600"), cpu_affinity=(4000,))
    with pytest.raises(spawn.SpawnError, match=r"cpu_affinity = \[4000\]: sched_setaffinity: "
                       r"Invalid argument \(errno EINVAL\)"):
        start(cfg, cgroups, tmp_path, started)


def test_config_rules() -> None:
    c = config.parse('[service.a]\ncommand = ["/bin/x"]\ncpu_scheduling_policy = "rr"\n'
                     'cpu_scheduling_priority = 50\ncpu_affinity = [0, 1]\n')
    assert spawn.scheduling(c.services["a"]) == (2, 50, -1, b"\x03" + b"\0" * 7)
    assert spawn.scheduling(ServiceConfig("a", ("/bin/x",))) is None
    assert not spawn._plain(ServiceConfig("a", ("/bin/x",), io_scheduling_class="idle"))
    for body, what in (('cpu_scheduling_policy = "fifo"\n', "is required (1-99) with "
                        'cpu_scheduling_policy = "fifo"'),
                       ("cpu_scheduling_priority = 5\n", 'only a "fifo" or "rr" '
                        "cpu_scheduling_policy has a priority"),
                       ('io_scheduling_class = "rt"\n', 'must be one of "realtime", '
                        '"best-effort", "idle"')):
        with pytest.raises(config.ConfigError, match=re.escape(what)):
            config.parse('[service.a]\ncommand = ["/bin/x"]\n' + body)


def test_import_carries_them() -> None:
    conv = importer.convert_systemd(
        "[Service]\nExecStart=/bin/x\nCPUSchedulingPolicy=idle\nIOSchedulingClass=idle\n"
        "CPUAffinity=0-2 5\nIOSchedulingPriority=7\nCPUSchedulingResetOnFork=yes\n",
        "x.service")
    s = conv.services["x"]
    assert (s["cpu_scheduling_policy"], s["io_scheduling_class"], s["cpu_affinity"],
            s["io_scheduling_priority"], s["cpu_scheduling_reset_on_fork"]) == \
        ("idle", "idle", [0, 1, 2, 5], 7, True)
    assert not conv.warnings
    conv = importer.convert_systemd("[Service]\nExecStart=/bin/x\nIOSchedulingClass=2\n"
                                    "CPUAffinity=numa\n", "y.service")
    assert conv.services["y"]["io_scheduling_class"] == "best-effort"
    assert [w.split(": ", 2)[1] for w in conv.warnings] == ["CPUAffinity"]


def test_check_names_a_cpu_this_host_lacks() -> None:
    got = hostcheck.problems(config.parse('[watchdog]\ndevice = "none"\n[service.a]\n'
                                          'command = ["true"]\ncpu_affinity = [4000]\n'))
    assert got == ["service a: cpu_affinity = [4000]: no CPU of it is one this host lets the "
                   "chain use: every start would fail"]
