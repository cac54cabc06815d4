"""An orphaned chain (issue 20.7): `hachain run` (init as a subreaper) is SIGKILLed.

The restarter and the tickler notice within a heartbeat that init is gone and exit,
stopping nothing; the next `hachain run` re-adopts the services (same pids, no second
start). Real processes: a whole chain on a config with device "none" in a temp dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import channels, client
from hachain.cgroupfs import find_cgroup2_mount, remove_cgroup_tree
from tests.conftest import KILLED_BOUND, reap, svc, wait_until

pytestmark = pytest.mark.slow  # whole chains

HEARTBEAT = 0.2  # [chain] heartbeat_interval: the restarter looks for init once per beat
HB_TIMEOUT = 3.0  # [watchdog] heartbeat_timeout: the bound for an orphaned layer to exit


class Chains:
    """`hachain run` on one configuration, started as often as a test asks; cleans up
    every init, layer and service it saw."""

    def __init__(self, tmp: str, body: str) -> None:
        self.tmp = tmp
        self.state_dir = os.path.join(tmp, "run")
        mount = find_cgroup2_mount()
        self.cg = os.path.join(mount, f"hachain-orphantest-{os.getpid()}") \
            if mount and os.access(mount, os.W_OK) else None
        self.config = os.path.join(tmp, "chain.toml")
        with open(self.config, "w") as f:
            f.write(f'[chain]\nstate_dir = "{self.state_dir}"\n'
                    f'persist_dir = "{os.path.join(tmp, "persist")}"\n'
                    f'cgroup_root = "{self.cg or "none"}"\n'
                    f'heartbeat_interval = {HEARTBEAT}\nrestart_delay = 0.3\n'
                    f'[watchdog]\ndevice = "none"\nheartbeat_timeout = {HB_TIMEOUT}\n' + body)
        self.inits: list[subprocess.Popen[bytes]] = []
        self.pids: set[int] = set()  # layers and services seen

    def run(self) -> subprocess.Popen[bytes]:
        with open(os.path.join(self.tmp, "chain.log"), "ab") as log:
            p = subprocess.Popen([sys.executable, "-m", "hachain.cli", "run", "-c",
                                  self.config], stdout=log, stderr=log)
        self.inits.append(p)
        return p

    def layer_pid(self, layer: str, init: subprocess.Popen[bytes]) -> int | None:
        """The pid of `layer` as started by `init` (from init's heartbeat)."""
        hb = channels.read_heartbeat(self.state_dir, "init")
        if hb is None or hb.pid != init.pid:
            return None
        pid = (hb.extra.get("children", {}).get(layer) or {}).get("pid")
        if pid:
            self.pids.add(pid)
        return pid

    def status(self) -> dict[str, Any]:
        try:
            st = client.request(self.state_dir, {"op": "status"}, timeout=2).get("services", {})
        except client.ControlError:
            return {}
        self.pids |= {s["pid"] for s in st.values() if s["pid"]}
        return st

    def ready(self, n: int) -> dict[str, Any] | None:
        st = self.status()
        return st if len(st) == n and all(s["state"] == "ready" for s in st.values()) else None

    def log(self) -> str:
        with open(os.path.join(self.tmp, "chain.log"), errors="replace") as f:
            return f.read()

    def cleanup(self) -> None:
        for p in reversed(self.inits):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    reap(p, "the chain's init")
        for pid in self.pids:  # only processes this test's chains started
            try:
                if channels.pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.cg:
            remove_cgroup_tree(self.cg)


@pytest.fixture
def chains(tmp_path: Any) -> Iterator[Chains]:
    made: list[Chains] = []

    def make(body: str) -> Chains:
        c = Chains(str(tmp_path), body)
        made.append(c)
        return c

    yield make  # type: ignore[misc]
    for c in made:
        c.cleanup()


def services(tmp_path: Any) -> str:
    return (f'[service.a]\ncommand = {svc("record", str(tmp_path / "starts"))}\n'
            f'[service.b]\ncommand = {svc("record", str(tmp_path / "starts"))}\n'
            f'[service.n]\ncommand = {svc("notify")}\nready = "notify"\n'
            '[service.t]\ncommand = ["/bin/sh", "-c", "while :; do echo tick; sleep 0.05; '
            'done"]\n')


def starts(tmp_path: Any) -> list[str]:
    p = tmp_path / "starts"
    return p.read_text().split() if p.exists() else []


def kill_init(c: Chains, init: subprocess.Popen[bytes]) -> tuple[int, int]:
    """SIGKILL `init`; its restarter and tickler pids."""
    rpid = wait_until(lambda: c.layer_pid("restarter", init), 10, "the restarter's pid")
    tpid = wait_until(lambda: c.layer_pid("tickler", init), 10, "the tickler's pid")
    init.kill()
    reap(init, "init")
    return rpid, tpid


def test_sigkilled_init_layers_exit_and_the_next_run_readopts(chains: Any, tmp_path: Any) -> None:
    c = chains(services(tmp_path))
    init = c.run()
    before = wait_until(lambda: c.ready(4), 30, "4 services ready")
    wait_until(lambda: len(starts(tmp_path)) == 2, 10, "a and b to record their start")
    pids = {n: s["pid"] for n, s in before.items()}
    rpid, tpid = kill_init(c, init)
    t0 = time.monotonic()
    wait_until(lambda: not channels.pid_alive(rpid) and not channels.pid_alive(tpid),
               HB_TIMEOUT, "the orphaned restarter and tickler to exit")
    took = time.monotonic() - t0
    print(f"orphaned layers exited {took * 1e3:.0f} ms after init's SIGKILL "
          f"(heartbeat_interval {HEARTBEAT} s)")
    log = c.log()
    assert f"init (pid {init.pid}) is gone" in log and "leaving 4 running service(s)" in log
    assert "without the magic close" not in log  # device "none": nothing to leave armed
    assert all(channels.pid_alive(p) for p in pids.values())  # nothing was stopped

    c.run()
    after = wait_until(lambda: c.ready(4), 30, "4 services ready under the new chain")
    assert {n: s["pid"] for n, s in after.items()} == pids
    assert all(s["reason"] == "adopted" for s in after.values())
    assert sorted(starts(tmp_path)) == sorted(str(pids[n]) for n in ("a", "b"))
    # t's output still reaches its log through the logger the new restarter took over
    log_t = tmp_path / "persist" / "log" / "t.log"
    size = log_t.stat().st_size
    wait_until(lambda: log_t.stat().st_size > size + 20, 10, "t's log to grow")


def test_new_run_while_the_old_restarter_lingers_runs_nothing_twice(chains: Any,
                                                                  tmp_path: Any) -> None:
    """`hachain run` again while the orphaned restarter still runs (held with SIGSTOP):
    the new restarter cannot take the lock and exits (its init retries); once the old one
    has seen that init is gone and left, the new one re-adopts. No second start."""
    c = chains(services(tmp_path))
    init = c.run()
    before = wait_until(lambda: c.ready(4), 30, "4 services ready")
    wait_until(lambda: len(starts(tmp_path)) == 2, 10, "a and b to record their start")
    pids = {n: s["pid"] for n, s in before.items()}
    standby = wait_until(lambda: c.layer_pid("restarter", init), 10, "the restarter's pid")
    # the restarter holding the lock is the worker its standby (init's child) forked
    rpid = wait_until(lambda: (hb := channels.read_heartbeat(c.state_dir, "restarter")) and
                      channels.proc_ppid(hb.pid) == standby and hb.pid, 10, "the worker")
    c.pids.add(rpid)
    os.kill(rpid, signal.SIGSTOP)
    _, tpid = kill_init(c, init)
    init2 = c.run()
    wait_until(lambda: "another restarter is already running" in c.log(), 30,
               "the new restarter to find the old one's lock")
    assert c.status() == {}  # nobody answers: the old restarter is stopped, the new one out
    os.kill(rpid, signal.SIGCONT)
    wait_until(lambda: not channels.pid_alive(rpid) and not channels.pid_alive(tpid),
               HB_TIMEOUT, "the orphaned restarter and tickler to exit")
    wait_until(lambda: (p := c.layer_pid("restarter", init2)) and p != rpid and
               c.ready(4), 30, "the new chain's restarter with 4 services ready")
    after = c.status()
    assert {n: s["pid"] for n, s in after.items()} == pids
    assert sorted(starts(tmp_path)) == sorted(str(pids[n]) for n in ("a", "b"))


def test_orphaned_tickler_leaves_a_sim_watchdog_armed_and_it_fires(tmp_path: Any) -> None:
    """device "sim": when the init that started it is gone, the tickler stops petting and
    closes without the magic close, so the software watchdog fires within its timeout
    (a real device behaves the same; a new chain's tickler would take it over first)."""
    from tests.test_tickler import BOUND, TIMEOUT, ForgedLayers, Rig
    rig = Rig(str(tmp_path))
    rig.server.start()
    fake_init = subprocess.Popen(["sleep", "600"])  # stands for init: its pid + start time
    try:
        with ForgedLayers(rig.state_dir, rig.sleeper.pid):
            env = dict(os.environ, **{channels.ENV_INIT_PID: str(fake_init.pid)})
            with open(rig.log, "ab") as logf:
                tickler = subprocess.Popen([sys.executable, "-m", "hachain.watchdog.tickler",
                                            "-c", rig.config], stdout=logf, stderr=logf,
                                           env=env)
            rig.procs.append(tickler)
            wait_until(lambda: rig.pets() >= 2, 10, "the tickler to pet")
            fake_init.kill()
            reap(fake_init, "the stand-in init")
            t0 = time.monotonic()
            tickler.wait(TIMEOUT)  # one tick (min(pet_interval, heartbeat_interval)) + exit
            print(f"orphaned tickler exited {(time.monotonic() - t0) * 1e3:.0f} ms after "
                  "its init died")
            assert tickler.returncode == 0
            assert f"init (pid {fake_init.pid}) is gone" in rig.log_text()
            assert "without the magic close" in rig.log_text()
            assert rig.wd.armed
            assert rig.expired.wait(BOUND), "the software watchdog did not fire"
            assert rig.expired_at[0] - t0 <= BOUND  # the last pet came before t0
    finally:
        if fake_init.poll() is None:
            fake_init.kill()
            reap(fake_init, "the stand-in init")
        rig.close()


def test_init_gone_by_pid_and_start_time_never_on_a_read_error() -> None:
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        os.environ[channels.ENV_INIT_PID] = str(sleeper.pid)
        init = channels.init_from_env()
        assert init is not None and init[1] is not None
        assert channels.init_gone(init) is None
        assert channels.init_gone((os.getpid(), 1)) is not None  # a pid now used by another
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))  # no descriptor left to read
        try:
            assert channels.init_gone(init) is None  # cannot tell: not taken for gone
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        sleeper.kill()
        wait_until(lambda: channels.init_gone(init), KILLED_BOUND,
                   "a dead init to be seen as gone")
    finally:
        os.environ.pop(channels.ENV_INIT_PID, None)
        if sleeper.poll() is None:
            sleeper.kill()
        reap(sleeper, "the stand-in init")
