"""What one idle wake-up costs, thread by thread: hachain's chain against bench/pyfloor.py.

    python bench/wakeups.py [--seconds 30] [--rounds 3] [--chains hachain,pyfloor]

An idle chain wakes only on its heartbeat grid; what it costs a machine is how often its
threads wake and what each wake-up costs. This starts, in turn, a hachain chain
(`hachain run`, one service, `device = "none"`, state on a tmpfs) and the Python floor
(bench/pyfloor.py: init, restarter and tickler that only beat and read the beats), lets
each settle, and over a window of `--seconds` reads every thread's schedstat
(/proc/PID/task/TID/schedstat: CPU time and the number of times it ran). Prints, per
thread, the median over `--rounds` windows of: times run per second, CPU per run (µs),
and % of one core; then each chain's total. The two never run at once: they beat on the
same grid and would wake together.

Every process it starts is in its own session and killed at exit, even on failure (the
script is a child subreaper).
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
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
sys.path.insert(0, HERE)

import benchlib  # noqa: E402

SETTLE = 6.0  # s after the launch: past start-up work (first beats, records, the logger)
PR_SET_CHILD_SUBREAPER = 36


def tree(root: int) -> list[int]:
    """root and its descendants, from /proc/PID/task/PID/children."""
    out, i = [root], 0
    while i < len(out):
        try:
            with open(f"/proc/{out[i]}/task/{out[i]}/children") as f:
                out += [int(k) for k in f.read().split()]
        except OSError:
            pass
        i += 1
    return out


def label(pid: int) -> str | None:
    """A chain process's name for the table; None for a service."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        return None
    if comm.startswith("hachain-"):  # named by the layer itself (the logger)
        return comm.removeprefix("hachain-")
    if "-m" in argv[:-1]:  # hachain's layers: python -S -m hachain.LAYER[.main] ...
        return argv[argv.index("-m") + 1].removeprefix("hachain.").removesuffix(".main") \
            .removeprefix("watchdog.")
    for i, a in enumerate(argv[:-1]):
        if a.endswith("pyfloor.py"):
            return argv[i + 1]  # run (then init), restarter, tickler
    return None


def sample(root: int) -> dict[tuple[int, int], tuple[str, int, int]]:
    """(pid, tid) -> (label, CPU ns, times run) for every chain thread under root."""
    out = {}
    for pid in tree(root):
        name = label(pid)
        if name is None:
            continue
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    ns, _wait, runs = (int(x) for x in f.read().split()[:3])
            except OSError:
                continue
            out[(pid, int(tid))] = (name if tid == str(pid) else f"{name}, a thread", ns,
                                    runs)
    return out


def window(root: int, seconds: float) -> dict[str, tuple[float, float]]:
    """label -> (runs/s, CPU ns) over `seconds`; threads that did not run are left out
    (the standby, the logger and helper threads that had nothing to do). Two of one label
    stay apart by their order (pid, then thread id)."""
    a = sample(root)
    time.sleep(seconds)
    b = sample(root)
    out: dict[str, tuple[float, float]] = {}
    seen: dict[str, int] = {}
    for key in sorted(b):
        if key not in a:
            continue
        name, ns, runs = b[key]
        d_ns, d_runs = ns - a[key][1], runs - a[key][2]
        if d_runs == 0:
            continue
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name += f" ({seen[name]})"
        out[name] = (d_runs / seconds, d_ns)
    return out


def hachain_chain(tmp: str) -> tuple[list[str], str]:
    state = tempfile.mkdtemp(prefix="wakeups-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                             else tmp)
    cfg = os.path.join(tmp, "chain.toml")
    with open(cfg, "w") as f:
        f.write(f'[chain]\nstate_dir = "{state}/state"\npersist_dir = "{tmp}/persist"\n'
                '[watchdog]\ndevice = "none"\n'
                '[service.s0]\ncommand = ["/bin/sleep", "3600"]\n')
    return [sys.executable, "-m", "hachain.cli", "run", "-c", cfg], state


def pyfloor_chain(tmp: str) -> tuple[list[str], str]:
    d = tempfile.mkdtemp(prefix="pyfloor-", dir=tmp)
    svc = os.path.join(d, "svc")
    with open(svc, "w") as f:
        f.write("#!/bin/sh\nexec sleep 3600\n")
    os.chmod(svc, 0o755)
    cfg = os.path.join(d, "pyfloor.toml")
    with open(cfg, "w") as f:
        f.write(f'stamp = "{svc}"\nsocket = "-"\nservices = 1\n')
    return [sys.executable, os.path.join(HERE, "pyfloor.py"), "run", cfg], ""


def measure(argv: list[str], seconds: float, log: str) -> dict[str, tuple[float, float]]:
    with open(log, "ab") as out:
        p = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                             start_new_session=True)
    try:
        time.sleep(SETTLE)
        if p.poll() is not None:
            sys.exit(f"wakeups: {argv[-1]}: the chain exited ({p.returncode}); see {log}")
        return window(p.pid, seconds)
    finally:
        stop(p)


def stop(p: subprocess.Popen[bytes]) -> None:
    """SIGTERM the chain's top process, then SIGKILL its session, whatever is left."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except OSError:
        pass
    if p.poll() is None:
        p.wait(5)


def reap_all() -> None:
    """SIGKILL and reap whatever is left below us (we are a subreaper)."""
    for pid in tree(os.getpid())[1:]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.05)
                if len(tree(os.getpid())) == 1:
                    break
        except ChildProcessError:
            break


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="each window (default 30)")
    ap.add_argument("--rounds", type=int, default=3, help="windows per chain (default 3)")
    ap.add_argument("--chains", default="hachain,pyfloor",
                    help="which of hachain,pyfloor to measure (default both)")
    args = ap.parse_args()
    benchlib.byte_compile()  # as an installed chain has it (and as compare.py measures)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    tmp = tempfile.mkdtemp(prefix="hachain-wakeups-")
    atexit.register(shutil.rmtree, tmp, True)
    atexit.register(reap_all)
    makers = {"hachain": hachain_chain, "pyfloor": pyfloor_chain}
    chains = [c for c in args.chains.split(",") if c]
    if not chains or (bad := set(chains) - set(makers)):
        ap.error(f"--chains: unknown {', '.join(sorted(bad)) if chains else 'empty list'} "
                 f"(known: {', '.join(makers)})")
    got: dict[str, list[dict[str, tuple[float, float]]]] = {c: [] for c in chains}
    states: list[str] = []
    try:
        for r in range(args.rounds):
            for name in chains:
                argv, state = makers[name](tmp)
                states.append(state)
                got[name].append(measure(argv, args.seconds, os.path.join(tmp, f"{name}.log")))
                print(f"  round {r + 1}/{args.rounds}: {name} measured", file=sys.stderr,
                      flush=True)
    finally:
        for s in states:
            if s:
                shutil.rmtree(s, ignore_errors=True)
    print(f"{args.rounds} windows of {args.seconds:g} s per chain, medians; one service; "
          "idle\n")
    head = f"{'chain':<9}{'thread':<44}{'runs/s':>8}{'µs/run':>9}{'% core':>9}"
    print(head)
    print("-" * len(head))
    for name, windows in got.items():
        threads = sorted({t for w in windows for t in w})
        total = []
        for w in windows:
            total.append(sum(ns for _, ns in w.values()) / 1e9 / args.seconds * 100)
        for t in threads:
            rows = [w[t] for w in windows if t in w]
            rate = statistics.median(x[0] for x in rows)
            per = statistics.median(x[1] / (x[0] * args.seconds) for x in rows) / 1e3
            pct = statistics.median(x[1] / 1e9 / args.seconds * 100 for x in rows)
            print(f"{name:<9}{t:<44}{rate:8.2f}{per:9.0f}{pct:9.4f}")
        rates = statistics.median(sum(x[0] for x in w.values()) for w in windows)
        print(f"{name:<9}{'all threads':<44}{rates:8.2f}{'':>9}"
              f"{statistics.median(total):9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
