"""A simulated machine dies with the process that owns it (issue: a killed pytest left a
machine running).

The owner here is a real process the test starts: a small Python program that boots a
SimMachine (on the host, or in a network namespace of the test's own, the cluster
machines' nsenter variant), or `hachain sim`. Once the machine runs, the test reads
every process of it from /proc (the `unshare`, and everything in its PID namespace),
SIGKILLs the owner, and waits until all of them are gone. Each known process is
identified by pid *and* start time, so a reused pid does not count as a survivor; in
`finally`, whatever of that list is still alive is killed (the machine's PID 1 first,
which takes the namespace down), nothing else.

Then what the dead owner could not remove itself: its cgroup subtree, which the next
machine's start sweeps (`sweep_stale_cgroups`). And the other side of the mechanism: a
machine started from a thread that has since ended, reset by its watchdog and cut from
a worker thread, keeps running boot after boot.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import channels
from hachain.cgroupfs import find_cgroup2_mount, remove_cgroup_tree
from hachain.simulators.machine import (
    SimMachine,
    children_of,
    pid_namespace,
    sweep_stale_cgroups,
)
from hachain.watchdog.device import WDIOF_CARDRESET
from tests.conftest import KILLED_BOUND, SIM_MACHINE, reap, sim_machine_head, wait_until

pytestmark = SIM_MACHINE

TIMEOUT = 3
PET = 0.5
HB_TIMEOUT = 1.0
# The owner's death reaches the machine through the kernel alone (a parent-death signal,
# then the PID namespace's teardown): no timer of the chain is involved, and nothing but
# that mechanism could end the machine (its watchdog died with the owner). So the bound is
# the one for a kernel that is stuck, not slow (CI once saw a SIGKILLed process still
# there after 5 s): a machine that is not gone by then never would be. The figure printed
# is what "promptly" came to (0.01-0.02 s here).
GONE_BOUND = KILLED_BOUND

CONFIG = sim_machine_head(TIMEOUT, PET, HB_TIMEOUT, 4.0) + f"""
[service.db]
command = ["{sys.executable}", "-m", "hachain.simulators.demo_services", "db"]
ready = "notify"
critical = true
"""

# The owner: boots a machine, says so, and waits to be killed.
OWNER = """\
import json, sys, threading
from hachain.simulators.machine import SimMachine
cfg, d, netns = sys.argv[1:4]
m = SimMachine(cfg, d, panic_delay=0.2, on_event=lambda _m: None, netns=netns or None)
m.start()
print(json.dumps({"cgroup": m.cgroup}), flush=True)
threading.Event().wait()
"""


# --- what the test knows of a machine -------------------------------------------------------

class Known:
    """Processes the test started (directly or through its owner), by (pid, start time)."""

    def __init__(self) -> None:
        self.procs: dict[int, int] = {}
        self.init: int | None = None

    def add(self, pid: int) -> None:
        start = channels.proc_start_time(pid)
        if start is not None:
            self.procs.setdefault(pid, start)

    def alive(self) -> list[int]:
        return [p for p, s in self.procs.items()
                if channels.proc_start_time(p) == s and channels.pid_alive(p)]

    def kill_all(self) -> None:
        """SIGKILL what is left: the machine's PID 1 first (the namespace goes with it)."""
        order = sorted(self.alive(), key=lambda p: p != self.init)
        for pid in order:
            if channels.proc_start_time(pid) == self.procs[pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def machine_procs(unshare: int) -> tuple[int, list[int]]:
    """(host pid of the machine's PID 1, every process in its PID namespace)."""
    kids = children_of(unshare)
    assert len(kids) == 1, f"unshare {unshare} has children {kids}"
    ns = pid_namespace(kids[0])
    assert ns is not None
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and pid_namespace(int(entry)) == ns:
            pids.append(int(entry))
    return kids[0], pids


def mnt_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def processes_in_mnt_namespace(ns: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and mnt_namespace(int(entry)) == ns:
            out.append(int(entry))
    return out


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def running_machine(owner: subprocess.Popen[bytes], state_dir: str, known: Known
                    ) -> tuple[int, int, list[int]]:
    """Wait until the owner's machine runs its whole chain and db; (unshare, init, pids)."""
    def unshare() -> int | None:
        kids = [p for p in children_of(owner.pid) if "unshare" in " ".join(cmdline(p)[:1])]
        return kids[0] if kids else None
    u = wait_until(unshare, 30, "the owner's unshare")
    known.add(u)
    wait_until(lambda: all(channels.read_heartbeat(state_dir, layer) is not None
                           for layer in channels.LAYERS), 60, "the chain's heartbeats")
    # init, restarter, tickler and db (the sh of the boot wrapper exec'd init)
    init, pids = wait_until(lambda: (r := machine_procs(u)) and len(r[1]) >= 4 and r, 30,
                            "db to run in the machine")
    known.init = init
    for p in pids:
        known.add(p)
    assert owner.poll() is None
    return u, init, pids


def kill_owner_and_wait(owner: subprocess.Popen[bytes], known: Known, init: int
                        ) -> float:
    """SIGKILL the owner; wait until every known process and the machine's mount
    namespace are gone; seconds it took."""
    mnt = mnt_namespace(init)
    assert mnt is not None and mnt != mnt_namespace(os.getpid())
    # Pin the namespace: a freed namespace's inode number is handed to the next one made
    # (CI saw another worker's new machine in "this" namespace), and an open nsfs file
    # keeps the number ours, whatever still runs in it.
    pin = os.open(f"/proc/{init}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert os.readlink(f"/proc/{init}/ns/mnt") == mnt
        alive_before = known.alive()
        assert len(alive_before) >= 5, alive_before  # unshare, init, restarter, tickler, db
        t0 = time.monotonic()
        owner.kill()
        reap(owner, "the owner")
        wait_until(lambda: not known.alive(), GONE_BOUND,
                   f"the machine of a SIGKILLed owner to go (left: {known.alive()})")
        elapsed = time.monotonic() - t0
        print(f"owner SIGKILL -> {len(alive_before)} machine processes gone: "
              f"{elapsed:.3f} s (bound {GONE_BOUND:g} s)")
        left = processes_in_mnt_namespace(mnt)
        assert left == [], [(p, cmdline(p)) for p in left]
    finally:
        os.close(pin)
    return elapsed


@pytest.fixture
def cfg(tmp_path: Any) -> str:
    path = tmp_path / "chain.toml"
    path.write_text(CONFIG)
    return str(path)


@pytest.fixture
def known() -> Iterator[Known]:
    k = Known()
    try:
        yield k
    finally:
        k.kill_all()
        wait_until(lambda: not k.alive(), KILLED_BOUND, "the test's leftovers to die")


def start_owner(tmp_path: Any, cfg: str, d: str, netns: str = "") -> subprocess.Popen[bytes]:
    prog = tmp_path / "owner.py"
    prog.write_text(OWNER)
    with open(tmp_path / "owner.err", "wb") as err:
        return subprocess.Popen([sys.executable, str(prog), cfg, d, netns],
                                stdout=subprocess.PIPE, stderr=err)


def leftover_cgroups(owner: int) -> list[str]:
    """The cgroup subtrees a SimMachine in process `owner` made (hachain-sim-<pid>-*)."""
    mount = find_cgroup2_mount()
    if not mount or not os.path.isdir(mount):
        return []
    return [os.path.join(mount, e) for e in os.listdir(mount)
            if e.startswith(f"hachain-sim-{owner}-")]


def owner_cgroup(owner: subprocess.Popen[bytes]) -> str | None:
    assert owner.stdout is not None
    line = owner.stdout.readline()
    assert line, "the owner exited before booting its machine"
    cg: str | None = json.loads(line)["cgroup"]
    return cg


def check_owner_death(tmp_path: Any, cfg: str, known: Known, netns: str = "") -> None:
    d = str(tmp_path / "m")
    owner = start_owner(tmp_path, cfg, d, netns)
    known.add(owner.pid)
    cg = None
    try:
        cg = owner_cgroup(owner)
        _u, init, _pids = running_machine(owner, os.path.join(d, "run", "hachain"), known)
        if netns:
            assert os.readlink(f"/proc/{init}/ns/net") != os.readlink("/proc/self/ns/net")
        kill_owner_and_wait(owner, known, init)
        with open("/proc/self/mountinfo") as f:
            assert d not in f.read()  # the machine's mounts were never the host's
        if cg is not None:
            # The owner could not remove its cgroup subtree; the next start sweeps it (or
            # a machine another test started meanwhile did already).
            sweep_stale_cgroups(os.path.dirname(cg))
            assert not os.path.exists(cg)
    finally:
        if owner.poll() is None:
            owner.kill()
        reap(owner, "the owner")
        if owner.stdout is not None:
            owner.stdout.close()
        known.kill_all()
        wait_until(lambda: not known.alive(), KILLED_BOUND, "the test's leftovers to die")
        if cg is not None:
            remove_cgroup_tree(cg)


# --- the tests ------------------------------------------------------------------------------

def test_machine_dies_with_its_sigkilled_owner(tmp_path: Any, cfg: str, known: Known) -> None:
    check_owner_death(tmp_path, cfg, known)


@pytest.mark.skipif(shutil.which("ip") is None or shutil.which("nsenter") is None,
                    reason="needs ip(8) (iproute2) and nsenter(1) (util-linux)")
def test_machine_in_its_own_network_namespace_dies_with_its_owner(
        tmp_path: Any, cfg: str, known: Known) -> None:
    ns = f"hachain-owner-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=30)
    try:
        check_owner_death(tmp_path, cfg, known, netns=ns)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def test_hachain_sim_killed_takes_its_machine_down(tmp_path: Any, cfg: str,
                                                  known: Known) -> None:
    d = str(tmp_path / "m")
    with open(tmp_path / "sim.out", "wb") as out:
        sim = subprocess.Popen([sys.executable, "-m", "hachain.cli", "sim", "-c", cfg,
                                "--dir", d, "--status-every", "0"], stdout=out, stderr=out)
    known.add(sim.pid)
    try:
        _u, init, _pids = running_machine(sim, os.path.join(d, "run", "hachain"), known)
        kill_owner_and_wait(sim, known, init)
        mount = find_cgroup2_mount()
        if mount and os.access(mount, os.W_OK):
            # The dead `hachain sim` left its (now empty) cgroup subtree; the next start
            # sweeps it. (A machine another test starts meanwhile may sweep it first:
            # whichever sweep runs, none is left.)
            assert len(leftover_cgroups(sim.pid)) <= 1
            sweep_stale_cgroups(mount)
            assert leftover_cgroups(sim.pid) == []
    finally:
        if sim.poll() is None:
            sim.kill()
        reap(sim, "hachain sim")
        known.kill_all()
        wait_until(lambda: not known.alive(), KILLED_BOUND, "the test's leftovers to die")
        for path in leftover_cgroups(sim.pid):
            remove_cgroup_tree(path)


def test_sweep_spares_the_cgroups_of_live_owners_and_busy_ones() -> None:
    mount = find_cgroup2_mount()
    if not mount or not os.access(mount, os.W_OK):
        pytest.skip("cgroup v2 is not mounted writable here: nothing to sweep")
    made: list[str] = []

    def cgroup(owner: int) -> str:
        path = os.path.join(mount, f"hachain-sim-{owner}-{uuid.uuid4().hex[:8]}")
        os.mkdir(path)
        made.append(path)
        return path

    def move(pid: int, cg: str) -> None:
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = cgroup(os.getpid())
        os.mkdir(os.path.join(mine, "svc"))
        busy = cgroup(child.pid)
        move(child.pid, busy)
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait(30)
        empty = cgroup(dead.pid)
        os.mkdir(os.path.join(empty, "svc"))
        sweep_stale_cgroups(mount)
        assert os.path.isdir(os.path.join(mine, "svc"))  # this process is alive
        assert os.path.isdir(busy)  # its owner is alive
        assert not os.path.exists(empty)  # its owner is dead and nothing runs in it
        # A dead owner's cgroup that still holds a process is left alone, unsignalled.
        stale = cgroup(dead.pid)
        move(child.pid, stale)
        sweep_stale_cgroups(mount)
        assert os.path.isdir(stale) and child.poll() is None
    finally:
        child.kill()
        reap(child, "the sleeper")
        for path in made:
            remove_cgroup_tree(path)


def pets_window(m: SimMachine, seconds: float) -> None:
    """An observation window counted in the same tickler's pets (one every PET s)."""
    first = wait_until(lambda: (h := m.heartbeat("tickler")) and h.extra["pets"] >= 1 and h,
                       20, "a petting tickler")
    want = first.extra["pets"] + math.ceil(seconds / PET)
    wait_until(lambda: (h := m.heartbeat("tickler")) and h.pid == first.pid
               and h.extra["pets"] >= want, 3 * seconds + 10, f"{want} pets")


def test_machine_started_from_an_ended_thread_lives_through_resets(cfg: str,
                                                                   tmp_path: Any) -> None:
    """The machine is tied to the thread that boots it (the machine's own), not to the
    thread that called start() or the one that reset it: both have ended here, and the
    machine keeps running through a watchdog reset and a power cut."""
    m = SimMachine(cfg, str(tmp_path / "m"), panic_delay=0.2, on_event=lambda _m: None)
    starter = threading.Thread(target=m.start, name="starter")
    starter.start()
    starter.join(30)
    assert not starter.is_alive()
    try:
        m.wait_heartbeats(timeout=30, fresh=HB_TIMEOUT)
        init1 = m.init_host_pid()
        pets_window(m, TIMEOUT + 1)  # longer than the watchdog timeout
        assert len(m.boots) == 1 and m.init_host_pid() == init1
        restarter = m.host_pid_of("restarter")
        assert restarter is not None
        os.kill(restarter, signal.SIGSTOP)  # a hang: the watchdog resets the machine
        boot2 = m.wait_boot(2, TIMEOUT + PET + HB_TIMEOUT + 10)
        assert boot2["cause"] == "watchdog" and boot2["bootstatus"] == WDIOF_CARDRESET
        m.wait_heartbeats(timeout=30, fresh=HB_TIMEOUT)
        init2 = m.init_host_pid()
        assert init2 is not None and init2 != init1
        cutter = threading.Thread(target=m.power_cut, name="cutter")
        cutter.start()
        cutter.join(30)
        boot3 = m.wait_boot(3, 20)
        assert boot3["cause"] == "power-cut"
        m.wait_heartbeats(timeout=30, fresh=HB_TIMEOUT)
        init3 = m.init_host_pid()
        pets_window(m, TIMEOUT + 1)
        assert len(m.boots) == 3 and m.init_host_pid() == init3
        assert not any("panic" in e for _, e in m.events), m.events
    finally:
        init = m.init_host_pid()
        m.stop()
        assert init is None or not channels.pid_alive(init), "the machine outlived stop()"
