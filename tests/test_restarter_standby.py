"""The restarter's standby (hachain/restarter/standby.py), on whole chains of real processes:
init starts the standby, the standby forks the working restarter and forks its replacement
the moment it dies; nothing ever runs twice, whichever of the two is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from hachain import channels
from hachain.restarter import standby
from tests.conftest import svc, wait_until
from tests.test_chain import Chain

pytestmark = pytest.mark.slow  # whole chains

N = 12


@pytest.fixture
def chain(tmp_path: Any) -> Any:
    made: list[Chain] = []

    def make(body: str, **kw: Any) -> Chain:
        c = Chain(str(tmp_path), body, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def services(tmp_path: Any) -> str:
    rec = tmp_path / "starts"
    return "".join(f'[service.s{i}]\ncommand = {svc("record", str(rec))}\n' for i in range(N))


def starts(tmp_path: Any) -> list[str]:
    p = tmp_path / "starts"
    return p.read_text().split() if p.exists() else []


def init_child(c: Chain) -> tuple[int, int] | None:
    """(pid, restarts) of the restarter process init started: the standby."""
    hb = c.hb("init")
    r = (hb.extra.get("children") or {}).get("restarter") if hb else None
    return (r["pid"], r["restarts"]) if r and r.get("pid") else None


def worker(c: Chain, standby_pid: int, not_pid: int = 0) -> int | None:
    """The restarter that writes the heartbeat, when it is a child of `standby_pid`."""
    hb = c.hb("restarter")
    if hb is None or hb.pid == not_pid or channels.proc_ppid(hb.pid) != standby_pid:
        return None
    c.pids.add(hb.pid)
    return hb.pid


def up_for(c: Chain, seconds: float) -> bool:
    hb = c.hb("restarter")
    return hb is not None and time.monotonic() - hb.started_mono >= seconds


def one_process_each(c: Chain) -> dict[str, list[int]]:
    """Each service's cgroup members: exactly one process each, or fail."""
    assert c.cg is not None
    procs = {}
    for i in range(N):
        with open(os.path.join(c.cg, f"s{i}", "cgroup.procs")) as f:
            procs[f"s{i}"] = [int(x) for x in f.read().split()]
    assert all(len(p) == 1 for p in procs.values()), procs
    return procs


def chain_up(chain: Any, tmp_path: Any) -> tuple[Chain, dict[str, Any], int, int]:
    c = chain(services(tmp_path), restart_delay=1.0)
    before = wait_until(lambda: c.all_ready(N), 30, f"{N} services ready")
    wait_until(lambda: len(starts(tmp_path)) == N, 20, f"{N} start records")
    sb, restarts = wait_until(lambda: init_child(c), 10, "init's restarter child")
    assert restarts == 0
    w = wait_until(lambda: worker(c, sb), 10, "the worker forked by the standby")
    c.pids.add(sb)
    return c, before, sb, w


def test_a_killed_restarter_is_replaced_by_its_standby(chain, tmp_path):
    c, before, sb, w = chain_up(chain, tmp_path)
    if c.cg is None:
        pytest.skip("needs a writable cgroup2 mount (the standby holds the services' cgroups)")
    # the standby opens each service's cgroup.procs for the next worker
    want = {os.path.join(c.cg, f"s{i}", "cgroup.procs") for i in range(N)}
    wait_until(lambda: want <= {os.path.realpath(f"/proc/{sb}/fd/{fd}")
                                for fd in os.listdir(f"/proc/{sb}/fd")},
               5 * standby.HOLD_AFTER, "the standby to hold every service's cgroup.procs")
    wait_until(lambda: up_for(c, standby.REFORK_AFTER), 10, "the worker up long enough")
    victim = before["s3"]["pid"]
    os.kill(w, signal.SIGKILL)
    os.kill(victim, signal.SIGKILL)
    w2 = wait_until(lambda: worker(c, sb, not_pid=w), 20, "a new worker under the same standby")
    after = wait_until(lambda: (st := c.all_ready(N)) and st["s3"]["pid"] != victim and st,
                       20, "every service ready, the victim restarted")
    assert {n: s["pid"] for n, s in after.items() if n != "s3"} == \
        {n: s["pid"] for n, s in before.items() if n != "s3"}
    assert init_child(c) == (sb, 0)  # init restarted nothing
    assert c.hb("restarter").restarts == 1  # type: ignore[union-attr]
    wait_until(lambda: len(starts(tmp_path)) > N, 20, "the victim's replacement to record")
    assert len(starts(tmp_path)) == N + 1 and len(set(starts(tmp_path))) == N + 1
    one_process_each(c)
    log = open(c.log.name, "rb").read().decode()
    assert f"the restarter (pid {w}) was killed by SIGKILL" in log
    assert f"(pid {w2})" in log


def test_a_replacement_killed_at_once_goes_back_to_init(chain, tmp_path):
    """A worker that dies sooner than REFORK_AFTER ends its standby; init restarts the
    restarter with its own policy, and the new one re-adopts: nothing twice."""
    c, before, sb, w = chain_up(chain, tmp_path)
    wait_until(lambda: up_for(c, standby.REFORK_AFTER), 10, "the worker up long enough")
    os.kill(w, signal.SIGKILL)
    w2 = wait_until(lambda: worker(c, sb, not_pid=w), 20, "the replacement")
    os.kill(w2, signal.SIGKILL)  # within REFORK_AFTER of its fork: a crash loop
    sb2, restarts = wait_until(lambda: (x := init_child(c)) and x[0] != sb and x, 20,
                               "init to start a new standby")
    c.pids.add(sb2)
    assert restarts == 1 and not channels.pid_alive(sb)
    wait_until(lambda: worker(c, sb2), 20, "its worker")
    after = wait_until(lambda: c.all_ready(N), 20, f"{N} services ready again")
    assert {n: s["pid"] for n, s in after.items()} == {n: s["pid"] for n, s in before.items()}
    assert len(starts(tmp_path)) == N
    if c.cg is not None:
        one_process_each(c)


def test_a_killed_standby_is_restarted_and_its_worker_waits_for_the_old_one(chain, tmp_path):
    """SIGKILL the standby: its worker keeps supervising; init starts a new standby whose
    worker waits for the restarter lock; when the old worker dies, it takes over."""
    c, before, sb, w = chain_up(chain, tmp_path)
    os.kill(sb, signal.SIGKILL)
    sb2, restarts = wait_until(lambda: (x := init_child(c)) and x[0] != sb and x, 20,
                               "init to start a new standby")
    c.pids.add(sb2)
    assert restarts == 1
    wait_until(lambda: "waiting for it to end" in open(c.log.name, "rb").read().decode(), 20,
               "the new worker to wait for the lock")
    assert c.hb("restarter").pid == w and c.all_ready(N)  # type: ignore[union-attr]
    os.kill(w, signal.SIGKILL)
    wait_until(lambda: worker(c, sb2, not_pid=w), 20, "the waiting worker to take over")
    after = wait_until(lambda: c.all_ready(N), 20, f"{N} services ready again")
    assert {n: s["pid"] for n, s in after.items()} == {n: s["pid"] for n, s in before.items()}
    assert len(starts(tmp_path)) == N
    if c.cg is not None:
        one_process_each(c)


def test_a_stopped_chain_stops_through_the_standby_and_forks_nothing(chain, tmp_path):
    c, before, sb, w = chain_up(chain, tmp_path)
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(30) == 0
    assert not channels.pid_alive(sb) and not channels.pid_alive(w)
    assert not any(channels.pid_alive(s["pid"]) for s in before.values())
    log = open(c.log.name, "rb").read().decode()
    assert "forks the replacement" not in log
    assert f"restarter (pid {sb}) exited with status 0" in log


def test_without_the_standby_init_starts_the_restarter_itself(chain, tmp_path):
    """[chain] restarter_standby = false: init's child is the restarter; a SIGKILL of it
    goes through init (restarts 1), and nothing runs twice."""
    c = chain(services(tmp_path), restart_delay=1.0, chain_extra="restarter_standby = false\n")
    before = wait_until(lambda: c.all_ready(N), 30, f"{N} services ready")
    wait_until(lambda: len(starts(tmp_path)) == N, 20, f"{N} start records")
    pid, _ = wait_until(lambda: init_child(c), 10, "init's restarter child")
    assert c.hb("restarter").pid == pid  # type: ignore[union-attr]
    c.pids.add(pid)
    os.kill(pid, signal.SIGKILL)
    pid2, restarts = wait_until(lambda: (x := init_child(c)) and x[0] != pid and x, 20,
                                "init to restart the restarter")
    c.pids.add(pid2)
    assert restarts == 1
    wait_until(lambda: (h := c.hb("restarter")) and h.pid == pid2, 20, "its heartbeat")
    after = wait_until(lambda: c.all_ready(N), 20, f"{N} services ready again")
    assert {n: s["pid"] for n, s in after.items()} == {n: s["pid"] for n, s in before.items()}
    assert len(starts(tmp_path)) == N


def test_a_replacement_after_a_reload_runs_the_reloaded_configuration(chain, tmp_path):
    """The standby loaded the running snapshot before the reload; the replacement sees
    that the file in place is another one and loads it: the added service is supervised
    (adopted, same pid), nothing twice."""
    c, before, sb, w = chain_up(chain, tmp_path)
    rec = tmp_path / "starts"
    with open(c.config, "a") as f:
        f.write(f'[service.extra]\ncommand = {svc("record", str(rec))}\n')
    r = subprocess.run([sys.executable, "-m", "hachain.cli", "reload", "-c", c.config],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    grown = wait_until(lambda: c.all_ready(N + 1), 20, "the added service ready")
    wait_until(lambda: len(starts(tmp_path)) == N + 1, 20, "its start record")
    wait_until(lambda: up_for(c, standby.REFORK_AFTER), 10, "the worker up long enough")
    os.kill(w, signal.SIGKILL)
    wait_until(lambda: worker(c, sb, not_pid=w), 20, "the replacement")
    after = wait_until(lambda: c.all_ready(N + 1), 20, f"{N + 1} services ready again")
    assert {n: s["pid"] for n, s in after.items()} == {n: s["pid"] for n, s in grown.items()}
    assert len(starts(tmp_path)) == N + 1


def test_a_held_descriptor_of_a_removed_cgroup_is_read_anew(tmp_path):
    """Cgroups.members with a standby's descriptor: one pread while the cgroup is the
    same; ENODEV after it was removed and made again, and the path is opened anew."""
    from hachain.cgroupfs import find_cgroup2_mount, remove_cgroup_tree
    from hachain.restarter.spawn import Cgroups
    mount = find_cgroup2_mount()
    if mount is None or not os.access(mount, os.W_OK):
        pytest.skip("needs a writable cgroup2 mount")
    root = os.path.join(mount, f"hachain-standbytest-{os.getpid()}")
    os.makedirs(os.path.join(root, "a"))
    p = subprocess.Popen(["sleep", "60"])
    try:
        cg = Cgroups(root)
        path = os.path.join(root, "a")
        cg.held[path] = os.open(os.path.join(path, "cgroup.procs"), os.O_RDONLY | os.O_CLOEXEC)
        assert cg.members("a") == []
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(p.pid))
        assert cg.members("a") == [p.pid] and path in cg.held  # the same descriptor
        with open(os.path.join(mount, "cgroup.procs"), "w") as f:
            f.write(str(p.pid))  # out again, then the cgroup goes and comes back
        os.rmdir(path)
        os.mkdir(path)
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(p.pid))
        assert cg.members("a") == [p.pid] and path not in cg.held
        cg.drop_held()
    finally:
        p.kill()
        p.wait()
        remove_cgroup_tree(root)
