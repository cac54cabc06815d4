"""Where the restarter spends its CPU while it restarts services: a py-spy profile.

    .venv/bin/python bench/profile_restarter.py [--services 1000] [--restarts 300]
                                                [--out DIR]

Starts a restarter with N services (as bench/restarter_bench.py does: bench/stamp.c,
restart delay 0), lets py-spy sample it while the services are SIGKILLed one after
another, and prints two tables: the functions where the samples were taken ("self") and
the functions on the stack ("total"), each as a share of the samples. py-spy drops the
samples in which the restarter sleeps in epoll, so the shares are of its busy time. The
raw collapsed stacks (`DIR/restarter.txt`) and a speedscope profile
(`DIR/restarter.speedscope.json`, open it at https://www.speedscope.app) are kept.

Needs py-spy (in the `test` and `bench` extras) and ptrace rights over the restarter
(root, or the same user with kernel.yama.ptrace_scope = 0).
"""

from __future__ import annotations

import argparse
import collections
import os
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
from restarter_bench import Run  # noqa: E402

from hachain import client  # noqa: E402


def find_py_spy() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.access(here, os.X_OK) else shutil.which("py-spy")


def frame_name(frame: str) -> str:
    """'run (hachain/restarter/loop.py:812)' -> 'loop.py:run'."""
    name, _, where = frame.partition(" (")
    path = where.split(":")[0]
    return f"{os.path.basename(path)}:{name}" if path else name


def summarise(collapsed: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Samples, and per function the samples taken in it (self) and under it (total)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";")[1:]]  # [0] is the thread
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    return samples, own, total


def record(pid: int, out: str, fmt: str, rate: int) -> subprocess.Popen[bytes]:
    py_spy = find_py_spy()
    assert py_spy is not None
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", str(rate),
                             "--format", fmt, "--output", out, "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(p: subprocess.Popen[bytes]) -> str:
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return err.decode(errors="replace").strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--restarts", type=int, default=300)
    ap.add_argument("--rate", type=int, default=1000, help="samples per second")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(),
                                                  "hachain-profile"))
    ap.add_argument("--no-cgroups", action="store_true", help="process groups only")
    a = ap.parse_args()
    if find_py_spy() is None:
        sys.exit("profile_restarter: py-spy not found (pip install py-spy, or "
                 "bash scripts/setup.sh --test)")
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="hachain-profile-")
    stamp, _ = benchlib.compile_stamp(tmp, "profile_restarter")
    r = Run(a.services, stamp, tmp, cgroups=not a.no_cgroups)
    raw_path = os.path.join(a.out, "restarter.txt")
    scope_path = os.path.join(a.out, "restarter.speedscope.json")
    try:
        client.request(r.state, {"op": "ping"})
        time.sleep(1.2)
        spies = [record(r.proc.pid, raw_path, "raw", a.rate),
                 record(r.proc.pid, scope_path, "speedscope", a.rate)]
        time.sleep(1.0)  # py-spy attaches
        t0 = time.monotonic()
        lat = r.restart_latency(a.restarts)
        wall = time.monotonic() - t0
        errors = [stop(p) for p in spies]
    finally:
        r.close()
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        with open(raw_path) as f:
            samples, own, total = summarise(f.read())
    except OSError:
        sys.exit(f"profile_restarter: py-spy wrote no profile: {' / '.join(errors)}")
    print(f"{a.restarts} restarts with {a.services} services in {wall:.1f} s; restart p50 "
          f"{statistics.median(lat):.2f} ms; {samples} busy samples at {a.rate}/s "
          f"({samples / a.rate / a.restarts * 1e3:.2f} ms of Python-visible CPU per restart)")
    for title, counter in (("self", own), ("total", total)):
        print(f"\n{title:>6} %  function")
        for name, n in counter.most_common(a.top):
            print(f"{100 * n / max(samples, 1):>8.1f}  {name}")
    print(f"\nprofiles: {raw_path} (collapsed stacks), {scope_path} (speedscope)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
