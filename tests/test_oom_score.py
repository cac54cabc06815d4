"""OOM score adjustment: the chain's own processes are the last a machine out of memory
loses, each service runs at its own `oom_score_adj` (systemd's OOMScoreAdjust=).

Real processes, read back from /proc/PID/oom_score_adj: every spawn path (clone3 into
the cgroup, with and without set-up; the fallbacks through subprocess and posix_spawn)
sets a service's value in the child before the exec, so nothing the service forks at
once inherits the restarter's; then a whole chain under `hachain run`: init, restarter,
logger and tickler at `[chain] oom_score_adj`, the services at theirs. Lowering needs
CAP_SYS_RESOURCE, which this kind of container withholds even from root: the tests
here raise the restarter's value instead (which anyone may), and the chain's default,
-900, is proven on a real kernel (tests/test_qemu_oom.py).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import channels, client
from hachain.config import ServiceConfig
from hachain.restarter import spawn
from tests.conftest import KILLED_BOUND, SPAWN_PATHS, children, reap, spawn_path, wait_until


def can_lower() -> bool:
    """Has this process CAP_SYS_RESOURCE (bit 24 of CapEff)?"""
    with open("/proc/self/status") as f:
        eff = next(int(ln.split()[1], 16) for ln in f if ln.startswith("CapEff:"))
    return bool(eff >> 24 & 1)


CAN_LOWER = can_lower()
# The restarter's value in these tests: above every service's but the last, so that a
# service's own is a lowering without CAP_SYS_RESOURCE too (back down to the 0 it
# started from is allowed), and the one below 0 shows what happens without it.
CHAIN = 300


def oom_of(pid: int) -> int:
    with open(f"/proc/{pid}/oom_score_adj") as f:
        return int(f.read())


@pytest.fixture
def as_the_restarter() -> Iterator[None]:
    """This process at the chain's value, as a restarter under init is, for the spawns
    it makes; its own value again afterwards."""
    before = channels.own_oom_score_adj()
    assert channels.set_own_oom_score_adj(CHAIN) is None
    spawn.note_own_oom_score_adj()
    try:
        yield
    finally:
        assert channels.set_own_oom_score_adj(before) is None
        spawn.note_own_oom_score_adj()


# a service that forks a child at once: the child must not run at the restarter's value
FORKS = ("/bin/sh", "-c", "sleep 3600 & exec sleep 3601")


@pytest.mark.parametrize("path", SPAWN_PATHS)
@pytest.mark.parametrize("extra", [{}, {"user": "nobody"}, {"umask": 0o22}],
                         ids=["plain", "user", "umask"])
@pytest.mark.parametrize("value", [0, 100, 1000])
def test_each_spawn_path_sets_the_services_value_before_the_exec(
        cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any,
        as_the_restarter: None, path: str, extra: dict[str, Any], value: int) -> None:
    cgroups = spawn_path(path, cgroups, monkeypatch)
    cfg = ServiceConfig(name="svc", command=FORKS, oom_score_adj=value, **extra)
    sp = spawn.spawn(cfg, str(tmp_path / "logs"), cgroups, None, yield_cpu=False)
    started.append(sp.pid)
    kid = wait_until(lambda: children(sp.pid) or None, 30, "the service's child")
    assert oom_of(sp.pid) == value
    assert [oom_of(k) for k in kid] == [value]
    assert channels.own_oom_score_adj() == CHAIN  # the spawn left the restarter's alone


@pytest.mark.parametrize("path", SPAWN_PATHS)
def test_a_value_this_host_refuses_leaves_the_service_running_and_says_so(
        cgroups: Any, tmp_path: Any, started: list[int], monkeypatch: Any,
        as_the_restarter: None, path: str) -> None:
    """-500 needs CAP_SYS_RESOURCE. Without it the service starts all the same, at the
    restarter's value, and the start's note says why (a tuning the host refuses must
    not keep a service down at every boot: an imported postgresql@.service asks for
    -900); with it, the service runs at -500."""
    cgroups = spawn_path(path, cgroups, monkeypatch)
    cfg = ServiceConfig(name="svc", command=("sleep", "3600"), oom_score_adj=-500)
    sp = spawn.spawn(cfg, str(tmp_path / "logs"), cgroups, None, yield_cpu=False)
    started.append(sp.pid)
    if CAN_LOWER:
        assert oom_of(sp.pid) == -500 and sp.notes == ()
        return
    assert oom_of(sp.pid) == CHAIN
    assert sp.notes == (f"oom_score_adj = -500 not applied (Permission denied; lowering it "
                        f"needs CAP_SYS_RESOURCE, which this host withholds): it runs at "
                        f"{CHAIN}, the restarter's",)


def test_a_service_at_the_restarters_value_writes_nothing(
        cgroups: Any, tmp_path: Any, started: list[int], as_the_restarter: None) -> None:
    cfg = ServiceConfig(name="svc", command=("sleep", "3600"), oom_score_adj=CHAIN)
    assert spawn.oom_for(cfg) is None
    assert spawn.oom_for(ServiceConfig(name="x", command=("x",))) == 0  # the default
    sp = spawn.spawn(cfg, str(tmp_path / "logs"), cgroups, None, yield_cpu=False)
    started.append(sp.pid)
    assert oom_of(sp.pid) == CHAIN


def test_config_bounds() -> None:
    from hachain import config
    with pytest.raises(config.ConfigError) as e:
        config.parse('[service.web]\ncommand = ["/bin/true"]\noom_score_adj = 1001\n', "c.toml")
    assert "c.toml:3: service.web.oom_score_adj: must be <= 1000, got 1001" in str(e.value)
    with pytest.raises(config.ConfigError) as e:
        config.parse('[chain]\noom_score_adj = -1001\n', "c.toml")
    assert "c.toml:2: chain.oom_score_adj: must be >= -1000, got -1001" in str(e.value)


@pytest.mark.slow
def test_a_chain_runs_at_its_value_and_each_service_at_its_own(tmp_path: Any) -> None:
    """`hachain run`: init takes [chain] oom_score_adj before it starts a layer, the
    layers (and the logger the restarter starts) run at it, each service at its own."""
    state, persist = tmp_path / "run", tmp_path / "persist"
    cfg = tmp_path / "chain.toml"
    cfg.write_text(f'''
[chain]
state_dir = "{state}"
persist_dir = "{persist}"
oom_score_adj = 200
[watchdog]
device = "none"
[service.db]
command = ["/bin/sleep", "3600"]
oom_score_adj = 100
[service.batch]
command = ["/bin/sh", "-c", "sleep 3600 & exec sleep 3601"]
oom_score_adj = 800
[service.web]
command = ["/bin/sleep", "3602"]
''')
    out = open(tmp_path / "run.log", "wb")
    run = subprocess.Popen([sys.executable, "-m", "hachain.cli", "run", "-c", str(cfg),
                            "--no-tickler"], stdout=out, stderr=out)
    try:
        def table() -> dict[str, Any] | None:
            try:
                t = client.request(str(state), {"op": "status"}, timeout=10)
            except client.ControlError:
                return None  # not up yet
            svcs = t.get("services", {})
            return t if all(svcs.get(n, {}).get("state") == "ready"
                            for n in ("db", "batch", "web")) else None
        t = wait_until(table, 60, "the chain's services to be ready")
        assert t is not None
        svcs = t["services"]
        assert oom_of(svcs["db"]["pid"]) == 100
        assert oom_of(svcs["web"]["pid"]) == 0
        batch = svcs["batch"]["pid"]
        assert oom_of(batch) == 800
        assert [oom_of(k) for k in children(batch)] == [800]
        # the layers: init (run became it), the restarter, the logger it started
        assert oom_of(run.pid) == 200
        layers = children(run.pid)
        assert layers and all(oom_of(p) == 200 for p in layers), layers
        log = open(tmp_path / "run.log").read()
        logger = re.search(r"started the logger \(pid (\d+)\)", log)
        assert logger is not None, log
        assert oom_of(int(logger.group(1))) == 200
    finally:
        run.terminate()
        reap(run, "hachain run", KILLED_BOUND)
        out.close()


def test_init_refuses_a_value_out_of_range() -> None:
    p = subprocess.run([sys.executable, "-m", "hachain.init.main", "--oom-score-adj", "1001",
                        "--no-tickler", "--restarter-cmd", "/bin/true"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "--oom-score-adj from -1000 to 1000" in p.stderr


def test_an_oom_kill_says_whose_limit_it_was() -> None:
    from hachain.restarter.policy import ExitStatus
    killed = ExitStatus("killed", signal=9)
    assert killed.describe() == "killed by SIGKILL"
    assert ExitStatus("killed", signal=9, oom="memory_max").describe() == \
        "killed by SIGKILL (out of memory: memory_max reached)"
    machine = ExitStatus("killed", signal=9, oom="machine")
    assert machine.describe() == "killed by SIGKILL (out of memory: the machine's OOM killer)"
    assert machine.to_json()["oom"] is True and "oom" not in killed.to_json()


@pytest.mark.slow
def test_the_restarter_starts_a_service_whose_value_it_cannot_set(restarter: Any) -> None:
    """As an imported postgresql@.service (OOMScoreAdjust=-900) on a host that withholds
    CAP_SYS_RESOURCE: the service runs, and the restarter says once why its value is not
    the one asked for."""
    if CAN_LOWER:
        pytest.skip("this host grants CAP_SYS_RESOURCE: every value can be set")
    r = restarter('[service.db]\ncommand = ["sleep", "3600"]\noom_score_adj = -900\n'
                  'backoff = { initial = 0.1, factor = 1.0, max = 0.1 }\n')
    st = r.wait_state("db", "ready")
    assert oom_of(st["pid"]) == channels.own_oom_score_adj()  # the restarter's, inherited
    os.kill(st["pid"], signal.SIGKILL)  # a restart says nothing new
    wait_until(lambda: (s := r.svc("db"))["state"] == "ready" and s["pid"] != st["pid"],
               what="db back")
    log = open(r.log).read()
    assert log.count("db: warning: oom_score_adj = -900 not applied (Permission denied; "
                     "lowering it needs CAP_SYS_RESOURCE") == 1, log
