"""Start-up benchmark: 1000 services in a dependency DAG of depth 10, all `ready = "notify"`.

    .venv/bin/python bench/startup_bench.py [--services 1000] [--depth 10] [--runs 3]

Level 0 needs nothing; every service of level k `requires` two services of level k-1,
so a level can only start once its requirements have sent READY=1. The service is
bench/stamp.c, which sends READY=1 on $NOTIFY_SOCKET first thing. Reports the wall
time from launching the restarter until it reports every service ready, and the
restarter's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import benchlib  # noqa: E402

from hachain import client  # noqa: E402
from hachain.cgroupfs import find_cgroup2_mount, remove_cgroup_tree  # noqa: E402


def one_run(n: int, depth: int, stamp: str, seed: int) -> tuple[float, float]:
    rnd = random.Random(seed)
    tmp = tempfile.mkdtemp(prefix="hachain-startup-")
    state = tempfile.mkdtemp(prefix="hachain-startup-run-", dir="/dev/shm")
    mount = find_cgroup2_mount()
    cg = os.path.join(mount, f"hachain-startup-{os.getpid()}") if mount else "none"
    per = n // depth
    levels = [[f"l{k}s{i}" for i in range(per)] for k in range(depth)]
    body = (f'[chain]\nstate_dir = "{state}"\npersist_dir = "{tmp}/persist"\n'
            f'cgroup_root = "{cg}"\n[watchdog]\ndevice = "none"\n')
    for k, level in enumerate(levels):
        for name in level:
            req = rnd.sample(levels[k - 1], 2) if k else []
            body += (f'[service.{name}]\ncommand = ["{stamp}"]\nready = "notify"\n'
                     f'requires = {req!r}\n'.replace("'", '"'))
    cfg = os.path.join(tmp, "chain.toml")
    with open(cfg, "w") as f:
        f.write(body)
    t0 = time.monotonic()
    prof = os.environ.get("BENCH_PROFILE")
    pre = ["-m", "cProfile", "-o", prof] if prof else []
    p = subprocess.Popen([sys.executable, *pre, "-m", "hachain.restarter", "-c", cfg],
                         stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = t0 + 120
        while time.monotonic() < deadline:
            try:
                st = client.request(state, {"op": "status"}, timeout=5).get("services", {})
            except client.ControlError:
                st = {}
            if len(st) == per * depth and all(s["state"] == "ready" for s in st.values()):
                return time.monotonic() - t0, benchlib.status_mb(p.pid, "VmHWM")
            time.sleep(0.1)
        raise SystemExit("bench: not all ready within 120 s")
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(120)
        except subprocess.TimeoutExpired:
            p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        if cg != "none":
            remove_cgroup_tree(cg)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="hachain-startup-bin-")
    stamp, _ = benchlib.compile_stamp(tmp)
    print(f"machine: {os.cpu_count()} cores, kernel {os.uname().release}; {a.services} "
          f"notify services in a DAG of depth {a.depth}, {a.runs} run(s)")
    res = [one_run(a.services, a.depth, stamp, seed) for seed in range(a.runs)]
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'all ready (s), median':>22} {'min':>6} {'max':>6} {'peak RSS MB':>12}")
    ts = [r[0] for r in res]
    print(f"{statistics.median(ts):>22.2f} {min(ts):>6.2f} {max(ts):>6.2f} "
          f"{max(r[1] for r in res):>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
