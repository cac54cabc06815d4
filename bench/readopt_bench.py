"""Re-adoption benchmark: SIGKILL the restarter of a chain running N services.

    .venv/bin/python bench/readopt_bench.py [--services 1000] [--runs 3]

Runs the whole chain (`hachain run`, watchdog device "none", runtime dir on tmpfs), waits
until every service is ready, SIGKILLs the restarter and reports: how long the new
restarter took to re-adopt every service (from its own process start, and from the start
of adoption), the time from the kill until status shows all N ready again (this includes
init's restart, at once for a first death), duplicates (a service whose pid changed or
that runs twice), and the RSS of init and of the restarter.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import benchlib  # noqa: E402

from hachain import channels, client  # noqa: E402
from hachain.cgroupfs import find_cgroup2_mount, remove_cgroup_tree  # noqa: E402


def status(state: str) -> dict:
    try:
        rep = client.request(state, {"op": "status"}, timeout=5)
    except client.ControlError:
        return {}
    return rep.get("services", {}) if rep.get("ok") else {}


def wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise SystemExit(f"bench: timed out waiting for {what}")


def one_run(n: int, restart_delay: float) -> dict:
    tmp = tempfile.mkdtemp(prefix="hachain-readopt-")
    state = tempfile.mkdtemp(prefix="hachain-readopt-run-", dir="/dev/shm")
    mount = find_cgroup2_mount()
    cg = os.path.join(mount, f"hachain-readopt-{os.getpid()}") if mount else "none"
    body = (f'[chain]\nstate_dir = "{state}"\npersist_dir = "{tmp}/persist"\n'
            f'cgroup_root = "{cg}"\nrestart_delay = {restart_delay}\n'
            '[watchdog]\ndevice = "none"\n')
    body += "".join(f'[service.s{i}]\ncommand = ["/bin/sleep", "100000"]\n' for i in range(n))
    cfg = os.path.join(tmp, "chain.toml")
    with open(cfg, "w") as f:
        f.write(body)
    log_path = os.path.join(tmp, "chain.log")
    log = open(log_path, "wb")
    chain = subprocess.Popen([sys.executable, "-m", "hachain.cli", "run", "-c", cfg],
                             stdout=log, stderr=log, cwd=ROOT)
    try:
        def all_ready() -> dict:
            st = status(state)
            return st if len(st) == n and all(s["state"] == "ready" for s in st.values()) \
                else {}
        before = wait(all_ready, 120, f"{n} services ready")
        time.sleep(1.0)
        old = channels.read_heartbeat(state, "restarter")
        init = channels.read_heartbeat(state, "init")
        t_kill = time.monotonic()
        os.kill(old.pid, signal.SIGKILL)
        after = wait(lambda: (h := channels.read_heartbeat(state, "restarter")) and
                     h.pid != old.pid and all_ready(), 60, "all ready again")
        t_back = time.monotonic() - t_kill
        text = open(log_path).read()
        m = re.findall(r"re-adopted (\d+) running service\(s\) in (\d+) ms, (\d+) ms after", text)
        adopted, adopt_ms, since_start_ms = (int(x) for x in m[-1])
        new = channels.read_heartbeat(state, "restarter")
        changed = sum(1 for k, s in after.items() if s["pid"] != before[k]["pid"])
        dup = 0
        if cg != "none":
            dup = sum(1 for k in after
                      if len(open(os.path.join(cg, k, "cgroup.procs")).read().split()) > 1)
        return {"adopted": adopted, "adopt_ms": adopt_ms, "since_start_ms": since_start_ms,
                "kill_to_ready_s": t_back, "changed": changed, "duplicates": dup,
                "init_rss": benchlib.status_mb(init.pid),
                "restarter_rss": benchlib.status_mb(new.pid)}
    finally:
        chain.send_signal(signal.SIGTERM)
        try:
            chain.wait(120)
        except subprocess.TimeoutExpired:
            chain.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        if cg != "none":
            remove_cgroup_tree(cg)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--restart-delay", type=float, default=1.0)
    a = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, kernel {os.uname().release}; {a.services} "
          f"services, init restart delay {a.restart_delay:g} s, {a.runs} run(s)")
    runs = [one_run(a.services, a.restart_delay) for _ in range(a.runs)]

    def med(k: str) -> float:
        return statistics.median(r[k] for r in runs)
    print(f"{'re-adopted':>10} {'adopt ms':>9} {'from start ms':>14} {'kill->ready s':>14} "
          f"{'pid changed':>12} {'duplicates':>11} {'init RSS MB':>12} {'restarter RSS MB':>17}")
    print(f"{med('adopted'):>10.0f} {med('adopt_ms'):>9.0f} {med('since_start_ms'):>14.0f} "
          f"{med('kill_to_ready_s'):>14.2f} {max(r['changed'] for r in runs):>12} "
          f"{max(r['duplicates'] for r in runs):>11} {med('init_rss'):>12.1f} "
          f"{med('restarter_rss'):>17.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
