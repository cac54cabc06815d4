"""The simulated machine with the real chain: init as PID 1, the restarter, the tickler.

Each test boots a machine, injects one fault from the host side (the only side from
which SIGKILL/SIGSTOP reach a namespace's PID 1) and waits, with a stated bound, for the
machine to react. Needs root and unshare(1).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import channels
from hachain.cgroupfs import find_cgroup2_mount
from hachain.simulators.machine import SimMachine
from hachain.watchdog.device import WDIOF_CARDRESET
from tests.conftest import SIM_MACHINE, sim_machine_head, wait_until

pytestmark = SIM_MACHINE

TIMEOUT = 3
PET = 0.5
HB_TIMEOUT = 1.0
GRACE = 4.0
# From a hang to the reset: the heartbeat goes stale, the next tick sees it, the last pet
# ran out. The margin covers the tick period and Python's scheduling on a loaded box.
RESET_BOUND = TIMEOUT + PET + HB_TIMEOUT
MARGIN = 1.0

CONFIG = sim_machine_head(TIMEOUT, PET, HB_TIMEOUT, GRACE) + f"""
[service.db]
command = ["{sys.executable}", "-m", "hachain.simulators.demo_services", "db"]
ready = "notify"
critical = true
"""

@pytest.fixture
def machine(tmp_path: Any) -> Iterator[SimMachine]:
    cfg = tmp_path / "chain.toml"
    cfg.write_text(CONFIG)
    m = SimMachine(str(cfg), str(tmp_path / "m"), panic_delay=0.2, on_event=lambda _m: None)
    m.start()
    try:
        yield m
    finally:
        init = m.init_host_pid()
        m.stop()
        assert init is None or not channels.pid_alive(init), "the machine outlived stop()"
        assert m.cgroup is None or not os.path.exists(m.cgroup), "its cgroup outlived stop()"


def hold(m: SimMachine, seconds: float) -> None:
    """An observation window in which nothing may happen, counted in the tickler's pets
    (one every PET s when all is well) instead of wall-clock seconds: it ends once the
    same tickler has petted enough times to span `seconds`, so a slow host stretches the
    window rather than letting it pass with the chain barely running."""
    first = wait_until(lambda: m.heartbeat("tickler"), 10, "a tickler heartbeat")
    want = first.extra["pets"] + math.ceil(seconds / PET)
    wait_until(lambda: (h := m.heartbeat("tickler")) and h.pid == first.pid
               and h.extra["pets"] >= want, 3 * seconds + 10, f"{want} pets")


def chain_up(m: SimMachine) -> dict[str, channels.Heartbeat]:
    """Wait for all three layers and for the tickler to be petting with the gate ok."""
    m.wait_heartbeats(timeout=20, fresh=HB_TIMEOUT)
    return {"tickler": wait_until(
        lambda: (h := m.heartbeat("tickler")) and h.extra["pets"] >= 1
        and h.extra["gate"]["ok"] and h, 15, "the tickler to pet")}


def last_boot(m: SimMachine, boot_id: str) -> dict[str, Any]:
    """last_boot.json once the tickler of the boot `boot_id` wrote it."""
    path = os.path.join(m.persist_dir, "last_boot.json")
    return wait_until(lambda: (r := channels.read_json(path)) and r["boot_id"] == boot_id
                      and r, 20, "last_boot.json of the new boot")


def test_boot_maps_layers_and_gives_each_boot_its_own_id(machine: SimMachine) -> None:
    chain_up(machine)
    boot = machine.boots[0]
    assert boot["cause"] == "power-on" and boot["bootstatus"] == 0 and boot["boot"] == 1
    with open(os.path.join(machine.persist_dir, channels.BOOT_LOG)) as f:
        assert [json.loads(x)["cause"] for x in f] == ["power-on"]
    init = machine.init_host_pid()
    assert init is not None and machine.host_pid_of("init") == init
    for layer, module in (("restarter", "hachain.restarter"),
                          ("tickler", "hachain.watchdog.tickler")):
        host = machine.host_pid_of(layer)
        assert host is not None and host != machine.heartbeat(layer).pid
        with open(f"/proc/{host}/cmdline", "rb") as f:
            assert module.encode() in f.read()
    rec = last_boot(machine, boot["boot_id"])
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert rec["boot_id"] != f.read().strip()  # the machine has its own boot id
    assert rec["cause"] == "normal"


def _stat_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read()[:80]
    except OSError as e:
        return str(e)


def _cgroup_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return next((ln[3:].strip() for ln in f if ln.startswith("0::")), None)
    except OSError:
        return None


def test_the_machine_is_a_cgroup_and_no_process_of_a_boot_outlives_it(
        machine: SimMachine) -> None:
    """Every process of the machine (unshare, PID 1, the layers, the services) runs in the
    machine's cgroup, and a boot whose `unshare` died before its namespace (a closed
    terminal's SIGHUP reaches the whole process group) ends with all of them gone before
    the next boot starts: a restarter of the old boot left running made the cgroup root
    again after the machine had removed it."""
    mount = find_cgroup2_mount()
    if machine.cgroup is None or mount is None:
        pytest.skip("no writable cgroup v2 on this host: the machine runs without a cgroup")
    chain_up(machine)
    db = wait_until(lambda: machine.namespace_pids().get(
        (channels.read_json(os.path.join(machine.state_dir, channels.SERVICE_RECORD_DIR,
                                         "db.json")) or {}).get("pid", -1)), 20, "db's pid")
    rel = "/" + os.path.relpath(machine.cgroup, mount)
    unshare = machine._proc.pid if machine._proc else None
    assert unshare is not None
    first = {p: channels.proc_start_time(p) for p in [unshare, *machine.namespace_pids()
                                                      .values()]}
    where = {p: _cgroup_of(p) for p in first}
    assert len(first) >= 5 and all(c is not None and c.startswith(rel + "/")
                                   for c in where.values()), (rel, where)
    assert where[unshare] == rel + "/chain" and where[db] == rel + "/services/db", where

    os.kill(unshare, signal.SIGHUP)  # unshare dies first; its namespace follows
    boot2 = machine.wait_boot(2, 30)
    assert boot2["cause"] == "reboot"
    left = [p for p, t in first.items() if t is not None and channels.proc_start_time(p) == t
            and not _stat_line(p).rsplit(")", 1)[-1].startswith(" Z")]  # (a zombie ran out)
    assert left == [], ("processes of boot 1 still ran when boot 2 started: "
                        f"{[(p, _stat_line(p)) for p in left]}")
    chain_up(machine)
    assert all((c := _cgroup_of(p)) is None or c.startswith(rel + "/")
               for p in machine.namespace_pids().values())


def test_stopped_restarter_resets_the_machine(machine: SimMachine) -> None:
    chain_up(machine)
    restarter = machine.host_pid_of("restarter")
    assert restarter is not None
    t0 = time.monotonic()
    os.kill(restarter, signal.SIGSTOP)
    boot2 = machine.wait_boot(2, RESET_BOUND + MARGIN + 5)
    elapsed = boot2["mono"] - t0
    print(f"SIGSTOP restarter -> reset: {elapsed:.2f} s (bound {RESET_BOUND:g} s)")
    assert elapsed <= RESET_BOUND + MARGIN
    assert boot2["cause"] == "watchdog" and boot2["bootstatus"] == WDIOF_CARDRESET
    assert any("watchdog expired" in e and "the tickler had stopped petting: restarter "
               "heartbeat stale" in e for _, e in machine.events), machine.events
    chain_up(machine)  # and the chain comes back
    rec = last_boot(machine, boot2["boot_id"])
    assert rec["cause"] == "watchdog reset" and rec["flags"] == ["CARDRESET"]
    gate = rec["last_gate_failure"]
    assert gate["boot_id"] == machine.boots[0]["boot_id"]
    assert gate["reasons"][0].startswith("restarter heartbeat stale")
    assert "alive: hung" in gate["reasons"][0]


def test_killed_tickler_is_restarted_without_a_reset(machine: SimMachine) -> None:
    first = chain_up(machine)["tickler"]
    tickler = machine.host_pid_of("tickler")
    assert tickler is not None
    os.kill(tickler, signal.SIGKILL)
    wait_until(lambda: (h := machine.heartbeat("tickler")) and h.pid != first.pid
               and h.restarts >= 1 and h.extra["pets"] >= 1, TIMEOUT + 2,
               "a restarted tickler to pet")
    # Hold on for longer than a timeout: the restarted tickler keeps the machine up.
    hold(machine, TIMEOUT + 0.5)
    assert len(machine.boots) == 1
    assert machine.server is not None and machine.server.expirations == 0


def test_killed_init_is_a_panic_and_a_reboot(machine: SimMachine) -> None:
    chain_up(machine)
    init = machine.init_host_pid()
    assert init is not None
    os.kill(init, signal.SIGKILL)
    boot2 = machine.wait_boot(2, 10)
    assert boot2["cause"] == "panic" and boot2["bootstatus"] == 0
    assert machine.server is not None and machine.server.expirations == 0
    chain_up(machine)
    assert last_boot(machine, boot2["boot_id"])["cause"] == "normal"


def test_stopped_init_resets_the_machine(machine: SimMachine) -> None:
    chain_up(machine)
    init = machine.init_host_pid()
    assert init is not None
    t0 = time.monotonic()
    os.kill(init, signal.SIGSTOP)
    boot2 = machine.wait_boot(2, RESET_BOUND + MARGIN + 5)
    elapsed = boot2["mono"] - t0
    print(f"SIGSTOP init -> reset: {elapsed:.2f} s (bound {RESET_BOUND:g} s)")
    assert elapsed <= RESET_BOUND + MARGIN
    assert boot2["cause"] == "watchdog"
    chain_up(machine)
    gate = last_boot(machine, boot2["boot_id"])["last_gate_failure"]
    assert gate["reasons"][0].startswith("init heartbeat stale")


def test_hachain_sim_command(tmp_path: Any) -> None:
    cfg = tmp_path / "chain.toml"
    cfg.write_text(CONFIG)
    d = tmp_path / "m"
    p = subprocess.run([sys.executable, "-m", "hachain.cli", "sim", "-c", str(cfg),
                        "--dir", str(d), "--duration", "4"], check=False,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert f"sim: machine directory {d}" in lines
    assert "sim: boot 1: power on (boot status 0x0)" in lines
    assert lines[-1].startswith("sim: 1 boot(s); boot log")
    with open(d / "console.log") as f:
        assert "hachain-tickler" in f.read()


def test_hachain_sim_rejects_a_bad_config(tmp_path: Any) -> None:
    cfg = tmp_path / "chain.toml"
    cfg.write_text("[watchdog]\ntimeout = 'x'\n")
    p = subprocess.run([sys.executable, "-m", "hachain.cli", "sim", "-c", str(cfg),
                        "--dir", str(tmp_path / "m")], check=False,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "chain.toml:2: watchdog.timeout" in p.stderr


def test_sigterm_to_init_is_an_orderly_reboot(machine: SimMachine) -> None:
    chain_up(machine)
    init = machine.init_host_pid()
    assert init is not None
    os.kill(init, signal.SIGTERM)  # init has a handler, so this reaches it from the host
    boot2 = machine.wait_boot(2, 30)
    assert boot2["cause"] == "reboot" and boot2["bootstatus"] == 0
    assert machine.server is not None and machine.server.expirations == 0
    with open(machine.console) as f:
        assert "magic close: watchdog disarmed" in f.read()
    chain_up(machine)


def make_machine(tmp_path: Any, extra: str, gate_critical: bool = True) -> SimMachine:
    cfg = tmp_path / "chain.toml"
    cfg.write_text(CONFIG.replace("[service.db]", f"gate_critical = {str(gate_critical).lower()}"
                                  "\n\n[service.db]") + extra)
    m = SimMachine(str(cfg), str(tmp_path / "m"), panic_delay=0.2, on_event=lambda _m: None)
    m.start()
    return m


@pytest.mark.parametrize("gate_critical", [True, False])
def test_critical_service_in_maintenance_reboots_only_when_configured(
        tmp_path: Any, gate_critical: bool) -> None:
    m = make_machine(tmp_path, """
[service.flaky]
command = ["/bin/false"]
critical = true
backoff = { initial = 0.05, factor = 1.0, max = 0.05 }
intensity = { max_restarts = 2, window = 60, action = "maintenance" }
""", gate_critical)
    try:
        m.wait_heartbeats(timeout=20, fresh=HB_TIMEOUT)
        # the restarter publishes the critical service's state in its heartbeat
        wait_until(lambda: (h := m.heartbeat("restarter")) and
                   h.extra["critical"].get("flaky", {}).get("state") == "maintenance"
                   or len(m.boots) > 1, 20, "flaky in maintenance")
        if gate_critical:
            boot2 = m.wait_boot(2, RESET_BOUND + MARGIN + 10)
            assert boot2["cause"] == "watchdog"
        else:
            hold(m, 2 * TIMEOUT + 1)  # an observation window longer than two timeouts
            assert len(m.boots) == 1 and m.server is not None and m.server.expirations == 0
    finally:
        m.stop()


def test_healthy_chain_under_cpu_hogs_is_never_reset(machine: SimMachine) -> None:
    """60 s with every core busy in a tight loop: the tickler (SCHED_FIFO where allowed)
    and the heartbeats keep up, so there is no false reboot."""
    import subprocess
    chain_up(machine)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(os.cpu_count() or 2)]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert len(machine.boots) == 1, machine.events
            time.sleep(1)
        assert machine.server is not None and machine.server.expirations == 0
        tk = machine.heartbeat("tickler")
        assert tk is not None and tk.extra["gate"]["ok"]
    finally:
        for h in hogs:
            h.kill()
            h.wait(5)


def test_demo_tour_crashes_and_hangs_the_restarter_and_explains_the_reset(tmp_path: Any) -> None:
    """What `bash scripts/demo.sh` runs: the embedded demo appliance with the tour."""
    d = tmp_path / "m"
    p = subprocess.Popen([sys.executable, "-m", "hachain.cli", "sim", "--tour", "--dir", str(d),
                          "--status-every", "2"], stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert p.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if line.startswith("sim: tour: done"):
                break
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    out = "\n".join(lines)
    assert "sim: boot 2: watchdog reset (boot status 0x20 CARDRESET)" in out, out
    assert "boot 2 knows why it happened: last boot 'watchdog reset'" in out
    assert "restarter heartbeat stale" in out
    assert "restarter HUNG (stopped)" in out
    # the SIGKILL of the restarter before the hang did not reset the machine
    kill_at = out.index("SIGKILL to the restarter")
    assert "watchdog expired" not in out[:kill_at] + out[kill_at:out.index("SIGSTOP to the")]


def test_stopped_tickler_resets_the_machine(machine: SimMachine) -> None:
    """A hung tickler pets nothing: the watchdog itself notices, within timeout + pet."""
    chain_up(machine)
    tickler = machine.host_pid_of("tickler")
    assert tickler is not None
    t0 = time.monotonic()
    os.kill(tickler, signal.SIGSTOP)
    boot2 = machine.wait_boot(2, TIMEOUT + PET + MARGIN + 5)
    elapsed = boot2["mono"] - t0
    print(f"SIGSTOP tickler -> reset: {elapsed:.2f} s (bound {TIMEOUT + PET:g} s)")
    assert elapsed <= TIMEOUT + PET + MARGIN
    assert boot2["cause"] == "watchdog" and boot2["bootstatus"] == WDIOF_CARDRESET
    chain_up(machine)


def _psi_reason() -> str | None:
    if not os.path.exists("/proc/pressure/cpu"):
        return "the kernel keeps no pressure stall information (CONFIG_PSI, psi=1)"
    mount = find_cgroup2_mount()
    if not mount or not os.path.exists(os.path.join(mount, "cpu.pressure")):
        return "no cgroup v2 hierarchy with cpu.pressure to measure a machine's CPU wait"
    return None


@pytest.mark.skipif(_psi_reason() is not None, reason=_psi_reason() or "")
def test_the_cpu_wait_of_the_machine_is_counted_across_its_boots(machine: SimMachine) -> None:
    """SimMachine.cpu_stalled (what a chaos campaign adds to a fault's bound) grows while
    tasks of the machine wait for a CPU, and keeps what a boot's cgroup counted when the
    next boot makes a fresh one. Two busy loops on one CPU, in the machine's cgroup, wait
    half of the time each: the stall grows about as fast as the clock."""
    chain_up(machine)
    start = machine.cpu_stalled()
    assert start is not None
    assert machine.cgroup is not None
    hog_cg = os.path.join(machine.cgroup, "hog")
    os.mkdir(hog_cg)
    cpu = min(os.sched_getaffinity(0))
    hogs = [subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, "
                              f"{{{cpu}}}); open('{hog_cg}/cgroup.procs', 'w').write("
                              "str(os.getpid())); exec('while True: pass')"])
            for _ in range(2)]
    try:
        wait_until(lambda: (machine.cpu_stalled() or 0) - start >= 0.5, 30,
                   "0.5 s of CPU wait counted for two busy loops on one CPU")
    finally:
        for h in hogs:
            h.kill()
            h.wait(10)
    before = machine.cpu_stalled()
    assert before is not None
    boots = len(machine.boots)
    machine.power_cut()  # the cgroup, the hog's with it, goes; the next boot makes it anew
    machine.wait_boot(boots + 1, 30)
    chain_up(machine)
    after = machine.cpu_stalled()
    assert after is not None and after >= before, (before, after)
    assert not os.path.exists(hog_cg), "the boot kept a cgroup of the last one"
