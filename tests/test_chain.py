"""The whole chain (`hachain run`: init as subreaper, restarter, tickler) on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from hachain import channels, client
from hachain.cgroupfs import find_cgroup2_mount, remove_cgroup_tree
from tests.conftest import reap, svc, wait_until

pytestmark = pytest.mark.slow  # whole chains


class Chain:
    def __init__(self, tmp: str, body: str, restart_delay: float = 0.3,
                 chain_extra: str = "") -> None:
        self.state_dir = os.path.join(tmp, "run")
        self.persist_dir = os.path.join(tmp, "persist")
        mount = find_cgroup2_mount()
        self.cg = os.path.join(mount, f"hachain-chaintest-{os.getpid()}") if mount else None
        self.config = os.path.join(tmp, "chain.toml")
        with open(self.config, "w") as f:
            f.write(f'[chain]\nstate_dir = "{self.state_dir}"\npersist_dir = '
                    f'"{self.persist_dir}"\ncgroup_root = "{self.cg or "none"}"\n'
                    f'heartbeat_interval = 0.2\nrestart_delay = {restart_delay}\n'
                    + chain_extra + '[watchdog]\ndevice = "none"\n' + body)
        self.log = open(os.path.join(tmp, "chain.log"), "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "hachain.cli", "run", "-c",
                                      self.config], stdout=self.log, stderr=self.log)
        self.pids: set[int] = set()

    def hb(self, layer: str) -> channels.Heartbeat | None:
        return channels.read_heartbeat(self.state_dir, layer)

    def status(self) -> dict[str, Any]:
        try:
            rep = client.request(self.state_dir, {"op": "status"}, timeout=2)
        except client.ControlError:
            return {}
        st = rep.get("services", {})
        self.pids |= {s["pid"] for s in st.values() if s["pid"]}
        return st

    def all_ready(self, n: int) -> dict[str, Any] | None:
        st = self.status()
        return st if len(st) == n and all(s["state"] == "ready" for s in st.values()) else None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                reap(self.proc, "the chain's init")
        for pid in self.pids:
            try:
                if channels.pid_alive(pid):
                    os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        self.log.close()
        if self.cg:
            remove_cgroup_tree(self.cg)  # the cgroups this chain made


@pytest.fixture
def chain(tmp_path):
    made: list[Chain] = []

    def make(body: str, **kw: Any) -> Chain:
        c = Chain(str(tmp_path), body, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def fifty(tmp_path) -> str:
    rec = tmp_path / "starts"
    return "".join(f'[service.s{i}]\ncommand = {svc("record", str(rec))}\n' for i in range(50))


def test_sigkill_restarter_readopts_50_services_without_duplicates(chain, tmp_path):
    c = chain(fifty(tmp_path))
    before = wait_until(lambda: c.all_ready(50), 30, "50 services ready")
    started(tmp_path, 50)
    before_pids = {n: s["pid"] for n, s in before.items()}
    rpid = c.hb("restarter").pid
    os.kill(rpid, signal.SIGKILL)
    wait_until(lambda: (h := c.hb("restarter")) and h.pid != rpid and h.restarts == 1, 20,
               "init to restart the restarter")
    after = wait_until(lambda: c.all_ready(50), 20, "50 services ready again")
    assert {n: s["pid"] for n, s in after.items()} == before_pids
    starts = (tmp_path / "starts").read_text().split()
    assert len(starts) == 50 and len(set(starts)) == 50


def started(tmp_path, n: int) -> list[str]:
    """Wait until n services have recorded their start (a ready=none service is 'ready'
    once spawned, before its own first line of code ran)."""
    return wait_until(lambda: len(x := (tmp_path / "starts").read_text().split()) >= n and x
                      if (tmp_path / "starts").exists() else None, 20, f"{n} start records")


def test_service_killed_while_restarter_down_is_restarted(chain, tmp_path):
    c = chain(fifty(tmp_path), restart_delay=1.0)
    before = wait_until(lambda: c.all_ready(50), 30, "50 services ready")
    started(tmp_path, 50)
    rpid = c.hb("restarter").pid
    victim = before["s7"]["pid"]
    os.kill(rpid, signal.SIGKILL)
    os.killpg(victim, signal.SIGKILL)  # inside init's restart delay: nobody watches it
    after = wait_until(lambda: (st := c.all_ready(50)) and st["s7"]["pid"] != victim and st,
                       20, "s7 restarted by the new restarter")
    for n, s in after.items():
        if n != "s7":
            assert s["pid"] == before[n]["pid"]
    assert len(started(tmp_path, 51)) == 51


def test_sigkill_tickler_is_restarted_by_init(chain):
    c = chain(f'[service.a]\ncommand = {svc("sleep")}\n')
    tk = wait_until(lambda: c.hb("tickler"), 20, "the tickler's heartbeat")
    os.kill(tk.pid, signal.SIGKILL)
    new = wait_until(lambda: (h := c.hb("tickler")) and h.pid != tk.pid and h, 20,
                     "a new tickler")
    assert new.restarts == 1


def test_sigterm_leaves_nothing_behind(chain, tmp_path):
    c = chain(f'[service.a]\ncommand = {svc("sleep")}\n'
              f'[service.b]\ncommand = {svc("stubborn")}\nstop_timeout = 0.5\n'
              f'requires = ["a"]\n')
    st = wait_until(lambda: c.all_ready(2), 30, "services ready")
    layer_pids = wait_until(lambda: all(c.hb(x) for x in ("init", "restarter", "tickler")) and
                            [c.hb(x).pid for x in ("init", "restarter", "tickler")], 20,
                            "every layer's heartbeat")
    service_pids = [s["pid"] for s in st.values()]
    if c.cg:
        service_pids += [int(p) for name in ("a", "b")
                         for p in open(os.path.join(c.cg, name, "cgroup.procs")).read().split()]
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(30) == 0
    for pid in set(layer_pids + service_pids):
        wait_until(lambda pid=pid: not channels.pid_alive(pid), 10, f"pid {pid} gone")
    log = open(os.path.join(tmp_path, "chain.log")).read()
    assert log.index("b: ready -> stopping") < log.index("a: ready -> stopping")


def test_hachain_status_shows_every_layer(chain):
    c = chain(f'[service.a]\ncommand = {svc("sleep")}\n')
    wait_until(lambda: c.all_ready(1) and c.hb("tickler"), 30, "chain up")
    p = subprocess.run([sys.executable, "-m", "hachain.cli", "status", "-c", c.config],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    for layer in ("init", "restarter", "tickler"):
        assert any(line.startswith(layer) and "alive" in line for line in p.stdout.splitlines())
    assert "a " in p.stdout and "ready" in p.stdout


def test_ready_sent_while_restarter_is_down_is_not_lost(chain, tmp_path):
    flag = tmp_path / "go"
    c = chain(f"""
[service.n]
command = ["/bin/sh", "-c", "while [ ! -e {flag} ]; do sleep 0.05; done; exec {sys.executable} {os.path.join(os.path.dirname(__file__), 'svc.py')} notify 0"]
ready = "notify"
ready_timeout = 60
""", restart_delay=1.5)
    pid = wait_until(lambda: (s := c.status().get("n")) and s["state"] == "starting" and s["pid"],
                     30, "n starting")
    rpid = c.hb("restarter").pid
    os.kill(rpid, signal.SIGKILL)
    flag.write_text("")  # READY=1 goes out while no restarter runs
    s = wait_until(lambda: (x := c.status().get("n")) and x["state"] == "ready" and x, 15,
                   "n ready after the restarter came back")
    assert s["pid"] == pid


def test_json_log_format(chain, tmp_path):
    import json
    c = chain('[service.a]\ncommand = ["/bin/sleep", "1000"]\n',
              chain_extra='log_format = "json"\n')
    wait_until(lambda: c.all_ready(1) and c.hb("tickler"), 30, "chain up")

    def progs() -> set[str]:
        """Who wrote the chain's log so far; every line must be a JSON object."""
        seen = set()
        for ln in (tmp_path / "chain.log").read_text().splitlines():
            if not ln.strip() or not ln.endswith("}"):
                continue  # blank, or a line still being written
            d = json.loads(ln)
            assert {"time", "prog", "pid", "msg"} <= set(d)
            seen.add(d["prog"])
        return seen
    # the tickler writes its lines from a thread of its own (a stuck stderr must not
    # block its loop), so its first line may come after its first heartbeat
    want = {"hachain-init", "hachain-restarter", "hachain-tickler"}
    wait_until(lambda: want <= progs(), 30, f"lines from each of {sorted(want)}")
    for ln in (tmp_path / "chain.log").read_text().splitlines()[:-1]:
        if ln.strip():
            json.loads(ln)  # every complete line, whoever wrote it
