"""Log flood benchmark: one service writes as fast as it can; is the disk bound kept?

    .venv/bin/python bench/log_flood_bench.py [--seconds 20] [--max-bytes 1048576]
                                              [--keep 2] [--rate MBPS] [--json]

Starts a restarter (watchdog "none", no cgroups needed) with one service that writes
100-byte lines in 64 KiB writes for `--seconds` (as fast as it can, or at `--rate` MB/s),
with `log_max_bytes` and `log_keep` as given. Meanwhile a sampler adds up the sizes of the
service's log files every 5 ms, and the restarter's heartbeat is read every 20 ms.
Reports: the largest disk use seen (st_size and allocated blocks) against the bound
`max_bytes × (keep + 1)`, the bytes the service wrote and how fast, the logger's and the
restarter's CPU, and the restarter's heartbeat age and loop lag during the flood.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hachain import channels, client  # noqa: E402

# The flooding service: 100-byte lines, written 64 KiB at a time, for argv[1] seconds at
# argv[3] bytes/s (0: unlimited); then the byte count goes to argv[2] and it sleeps.
WRITER = r"""
import os, sys, time
dur, out, rate = float(sys.argv[1]), sys.argv[2], float(sys.argv[3])
line = b"flood " + b"x" * 93 + b"\n"
block = line * (65536 // len(line))
n = 0
t0 = time.monotonic()
end = t0 + dur
while True:
    now = time.monotonic()
    if now >= end:
        break
    if rate and n > (now - t0) * rate:
        time.sleep(min(0.01, n / rate - (now - t0)))
        continue
    n += os.write(1, block)
with open(out + ".tmp", "w") as f:
    f.write(f"{n} {time.monotonic() - t0:.3f}")
os.rename(out + ".tmp", out)
time.sleep(3600)
"""


def log_usage(log_dir: str, name: str) -> tuple[int, int, int]:
    """(sum of st_size, sum of allocated bytes, number of files) of NAME's logs."""
    size = blocks = files = 0
    prefix = name + ".log"
    try:
        it = os.scandir(log_dir)
    except OSError:
        return 0, 0, 0
    with it:
        for e in it:
            if e.name == prefix or e.name.startswith(prefix + "."):
                try:
                    st = e.stat()
                except OSError:
                    continue  # renamed between the listing and the stat
                size += st.st_size
                blocks += st.st_blocks * 512
                files += 1
    return size, blocks, files


def cpu_seconds(pid: int) -> float:
    return channels.proc_cpu_seconds(pid) or 0.0


class Sampler(threading.Thread):
    """Disk use every 5 ms, the restarter's heartbeat every 20 ms, until stopped."""

    def __init__(self, log_dir: str, state_dir: str) -> None:
        super().__init__(daemon=True)
        self.log_dir, self.state_dir = log_dir, state_dir
        self.stop_ev = threading.Event()
        self.max_size = self.max_blocks = self.max_files = 0
        self.samples = 0
        self.hb_age_max = 0.0
        self.lag_max = 0.0
        self.hb_samples = 0

    def run(self) -> None:
        next_hb = 0.0
        while not self.stop_ev.is_set():
            size, blocks, files = log_usage(self.log_dir, "flood")
            self.max_size = max(self.max_size, size)
            self.max_blocks = max(self.max_blocks, blocks)
            self.max_files = max(self.max_files, files)
            self.samples += 1
            now = time.monotonic()
            if now >= next_hb:
                next_hb = now + 0.02
                hb = channels.read_heartbeat(self.state_dir, "restarter")
                if hb is not None:
                    self.hb_samples += 1
                    self.hb_age_max = max(self.hb_age_max, time.monotonic() - hb.mono)
                    self.lag_max = max(self.lag_max, float(hb.extra.get("lag", 0.0)))
            time.sleep(0.005)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-bytes", type=int, default=1 << 20)
    ap.add_argument("--keep", type=int, default=2)
    ap.add_argument("--rate", type=float, default=0.0, help="MB/s; 0: as fast as it can")
    ap.add_argument("--heartbeat", type=float, default=1.0, help="heartbeat_interval")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of text")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="hachain-flood-")
    state, persist = os.path.join(tmp, "run"), os.path.join(tmp, "persist")
    log_dir = os.path.join(persist, "log")
    count = os.path.join(tmp, "written")
    argv = [sys.executable, "-c", WRITER, str(a.seconds), count, str(a.rate * 1e6)]
    cfg = os.path.join(tmp, "chain.toml")
    with open(cfg, "w") as f:
        f.write(f'[chain]\nstate_dir = "{state}"\npersist_dir = "{persist}"\n'
                f'cgroup_root = "none"\nheartbeat_interval = {a.heartbeat}\n'
                '[watchdog]\ndevice = "none"\n'
                f'[service.flood]\ncommand = {json.dumps(argv)}\n'
                f'log_max_bytes = {a.max_bytes}\nlog_keep = {a.keep}\n')
    errlog = open(os.path.join(tmp, "restarter.log"), "wb")
    r = subprocess.Popen([sys.executable, "-m", "hachain.restarter", "-c", cfg],
                         stdout=errlog, stderr=errlog)
    sampler = Sampler(log_dir, state)
    try:
        deadline = time.monotonic() + 30
        svc: dict = {}
        while time.monotonic() < deadline:
            try:
                svc = client.request(state, {"op": "status"}, timeout=2)["services"]["flood"]
                if svc.get("pid"):
                    break
            except (client.ControlError, KeyError):
                pass
            time.sleep(0.05)
        else:
            sys.exit(f"log_flood_bench: the service did not start; see {tmp}/restarter.log")
        logger_pid = 0
        while not logger_pid and time.monotonic() < deadline:
            try:
                logger_pid = int(open(os.path.join(state, "logger.lock")).read().split()[0])
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        cpu0 = {"logger": cpu_seconds(logger_pid), "restarter": cpu_seconds(r.pid)}
        t0 = time.monotonic()
        sampler.start()
        while not os.path.exists(count) and time.monotonic() < t0 + a.seconds + 30:
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        cpu = {k: (cpu_seconds(p) - cpu0[k]) / elapsed
               for k, p in (("logger", logger_pid), ("restarter", r.pid))}
        time.sleep(0.3)  # what the pipe still held reaches the files
        sampler.stop_ev.set()
        sampler.join(5)
        written, wsecs = (float(x) for x in open(count).read().split())
    finally:
        r.send_signal(signal.SIGTERM)
        try:
            r.wait(20)
        except subprocess.TimeoutExpired:
            r.kill()
            r.wait(5)
        errlog.close()
    bound = a.max_bytes * (a.keep + 1)
    res = {
        "seconds": round(wsecs, 2), "max_bytes": a.max_bytes, "keep": a.keep,
        "bound": bound, "max_disk_bytes": sampler.max_size,
        "max_disk_allocated": sampler.max_blocks, "max_files": sampler.max_files,
        "samples": sampler.samples, "written_bytes": int(written),
        "write_mb_s": round(written / wsecs / 1e6, 1),
        "logger_cpu": round(cpu["logger"], 3), "restarter_cpu": round(cpu["restarter"], 3),
        "heartbeat_interval": a.heartbeat, "heartbeat_age_max": round(sampler.hb_age_max, 3),
        "loop_lag_max": round(sampler.lag_max, 4), "heartbeat_samples": sampler.hb_samples,
        "within_bound": sampler.max_size <= bound,
    }
    shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        print(json.dumps(res))
    else:
        print(f"flood {res['seconds']} s, log_max_bytes {a.max_bytes}, log_keep {a.keep}")
        print(f"  written by the service: {written / 1e6:.0f} MB ({res['write_mb_s']} MB/s)")
        print(f"  max disk use seen: {sampler.max_size} bytes ({sampler.max_blocks} "
              f"allocated, {sampler.max_files} files) in {sampler.samples} samples; "
              f"bound {bound}: {'HELD' if res['within_bound'] else 'EXCEEDED'}")
        print(f"  CPU: logger {cpu['logger'] * 100:.0f} %, restarter "
              f"{cpu['restarter'] * 100:.1f} % of a core")
        print(f"  restarter heartbeat: max age {sampler.hb_age_max:.3f} s (interval "
              f"{a.heartbeat} s), max loop lag {sampler.lag_max * 1e3:.1f} ms")
    return 0 if res["within_bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
