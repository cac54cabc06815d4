"""Restarter benchmark: restart latency, idle cost and memory with 1, 100 and 1000 services.

    .venv/bin/python bench/restarter_bench.py [--quick] [--restarts N] [--idle SECONDS]

Restart latency: a long-running service (up > 1 s) is SIGKILLed; the time until its
replacement has exec'd, stamped by the replacement itself (bench/stamp.c, statically
linked, sends its CLOCK_MONOTONIC first thing in main()). Restart delay 0 (backoff
initial = 0), cgroups as configured by default. Idle: CPU seconds and context switches of
the restarter over the idle window with every service running. RSS: the restarter's
VmRSS. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import benchlib  # noqa: E402

from hachain import channels, client  # noqa: E402
from hachain.cgroupfs import find_cgroup2_mount, remove_cgroup_tree  # noqa: E402


def proc_cpu(pid: int) -> tuple[float, int]:
    cpu = channels.proc_cpu_seconds(pid)
    assert cpu is not None, f"pid {pid} is gone"
    ctx = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if "ctxt_switches" in line:
                ctx += int(line.split()[1])
    return cpu, ctx


class Run:
    def __init__(self, n: int, stamp: str, tmp: str, cgroups: bool = True) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"n{n}-", dir=tmp)
        self.sock_path = os.path.join(self.dir, "stamps.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.sock_path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        # the runtime directory on tmpfs, as /run is on a real system
        self.state = tempfile.mkdtemp(prefix="hachain-bench-run-", dir="/dev/shm")
        mount = find_cgroup2_mount()
        self.cg = os.path.join(mount, f"hachain-bench-{os.getpid()}-{n}") if mount and \
            os.access(mount, os.W_OK) and cgroups else None
        body = (f'[chain]\nstate_dir = "{self.state}"\npersist_dir = "{self.dir}/persist"\n'
                f'cgroup_root = "{self.cg or "none"}"\n[watchdog]\ndevice = "none"\n')
        for i in range(n):
            body += (f'[service.s{i}]\ncommand = ["{stamp}", "{self.sock_path}"]\n'
                     'backoff = { initial = 0.0, factor = 1.0, max = 0 }\n'
                     'intensity = { max_restarts = 1000000, window = 1, action = "ignore" }\n')
        self.cfg = os.path.join(self.dir, "chain.toml")
        with open(self.cfg, "w") as f:
            f.write(body)
        self.n = n
        self.pids: dict[int, int] = {}  # pid -> ns stamp
        prof = os.environ.get("BENCH_PROFILE")
        pre = ["-m", "cProfile", "-o", f"{prof}.{n}"] if prof else []
        self.proc = subprocess.Popen([sys.executable, *pre, "-m", "hachain.restarter", "-c",
                                      self.cfg],
                                     stderr=subprocess.DEVNULL, cwd=ROOT)
        self.collect(n, 60)

    def collect(self, count: int, timeout: float) -> list[tuple[int, int]]:
        got = []
        self.sock.settimeout(timeout)
        while len(got) < count:
            data = self.sock.recv(64).split()
            pid, ns = int(data[0]), int(data[1])
            self.pids[pid] = ns
            got.append((pid, ns))
        return got

    def restart_latency(self, rounds: int) -> list[float]:
        lat = []
        victims = list(self.pids)
        for i in range(rounds):
            pid = victims[i % len(victims)]
            t0 = time.monotonic_ns()
            os.kill(pid, signal.SIGKILL)
            new_pid, ns = self.collect(1, 10)[0]
            lat.append((ns - t0) / 1e6)
            victims[i % len(victims)] = new_pid
            time.sleep(0.02)  # let the loop settle (the replacement is not killed here)
        return lat

    def idle(self, seconds: float) -> tuple[float, int]:
        c0, x0 = proc_cpu(self.proc.pid)
        time.sleep(seconds)
        c1, x1 = proc_cpu(self.proc.pid)
        return c1 - c0, x1 - x0

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.cg:
            remove_cgroup_tree(self.cg)
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(self.state, ignore_errors=True)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer restarts, 10 s idle window")
    ap.add_argument("--restarts", type=int, default=0)
    ap.add_argument("--idle", type=float, default=0)
    ap.add_argument("--sizes", default="1,100,1000")
    ap.add_argument("--no-cgroups", action="store_true", help="process groups only")
    ap.add_argument("--dynamic-stamp", action="store_true",
                    help="link the service dynamically (its stamp then includes ld.so)")
    a = ap.parse_args()
    rounds = a.restarts or (50 if a.quick else 200)
    idle_s = a.idle or (10 if a.quick else 30)
    tmp = tempfile.mkdtemp(prefix="hachain-bench-")
    stamp, linkage = benchlib.compile_stamp(tmp, static=not a.dynamic_stamp)
    print(f"machine: {os.cpu_count()} cores, kernel {os.uname().release}, python "
          f"{sys.version.split()[0]}; service: bench/stamp.c, {linkage}")
    rows = []
    for n in [int(x) for x in a.sizes.split(",")]:
        r = Run(n, stamp, tmp, cgroups=not a.no_cgroups)
        try:
            client.request(r.state, {"op": "ping"})
            time.sleep(1.2)  # every service up > 1 s before it is killed
            lat = r.restart_latency(rounds)
            cpu, ctx = r.idle(idle_s) if n == max(int(x) for x in a.sizes.split(",")) else (
                float("nan"), -1)
            rows.append((n, statistics.median(lat), pct(lat, 95), pct(lat, 99), max(lat),
                         cpu, ctx, benchlib.status_mb(r.proc.pid)))
        finally:
            r.close()
    print(f"\nrestart latency over {rounds} SIGKILLs (ms), restart delay 0, cgroups "
          f"{'off' if a.no_cgroups else 'on'}; idle over {idle_s:g} s")
    print(f"{'services':>8} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7} {'idle cpu s':>10} "
          f"{'% core':>7} {'ctx sw':>7} {'RSS MB':>7}")
    for n, p50, p95, p99, mx, cpu, ctx, rss in rows:
        core = "" if cpu != cpu else f"{100 * cpu / idle_s:.3f}"
        cpus = "" if cpu != cpu else f"{cpu:.2f}"
        ctxs = "" if ctx < 0 else str(ctx)
        print(f"{n:>8} {p50:>7.2f} {p95:>7.2f} {p99:>7.2f} {mx:>7.2f} {cpus:>10} {core:>7} "
              f"{ctxs:>7} {rss:>7.1f}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
