"""What machine checks cost an idle chain: CPU, context switches and memory.

    python bench/checks_idle.py [--checks 5] [--interval 10] [--seconds 30] [--rounds 3]

Two chains run side by side (`hachain run`, one service, `device = "none"`, no cgroups):
one with no `[check.NAME]`, one with `--checks` checks at `--interval` (kinds in turn:
load, memory, interface lo, a file, a command). Over each shared window of `--seconds`
the CPU time of every chain process (all threads, /proc/PID/task/TID/schedstat) and
their context switches are summed; PSS at the end. Prints the medians of `--rounds`
windows as a table. Every process it starts is killed at exit (it is a subreaper).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import benchlib  # noqa: E402
import compare  # noqa: E402  (its process helpers: cpu_ctx, pss_rss_kb, descendants)

from hachain import channels, client  # noqa: E402

KINDS = (
    'kind = "load"\nmax_load = 1000\n',
    'kind = "memory"\nmin_available = "1M"\n',
    'kind = "interface"\ninterface = "lo"\nretry_timeout = 86400\n',
    'kind = "file"\npath = "{tmp}/alive"\nmax_age = 86400\n',
    'command = ["/bin/true"]\n',
)


def chain_config(tmp: str, name: str, checks: int, interval: float) -> str:
    state, persist = os.path.join(tmp, name, "run"), os.path.join(tmp, name, "persist")
    text = (f'[chain]\nstate_dir = "{state}"\npersist_dir = "{persist}"\n'
            'cgroup_root = "none"\n[watchdog]\ndevice = "none"\n'
            '[service.a]\ncommand = ["/bin/sleep", "100000"]\n')
    for i in range(checks):
        text += f"[check.c{i}]\ninterval = {interval}\n" + \
            KINDS[i % len(KINDS)].format(tmp=tmp)
    path = os.path.join(tmp, f"{name}.toml")
    with open(path, "w") as f:
        f.write(text)
    return state


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checks", type=int, default=5)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    compare.become_subreaper()
    benchlib.byte_compile()
    tmp = tempfile.mkdtemp(prefix="checks-idle-")
    with open(os.path.join(tmp, "alive"), "w") as f:
        f.write("x")
    procs = {}
    states = {}
    try:
        for name, n in (("without", 0), ("with", args.checks)):
            states[name] = chain_config(tmp, name, n, args.interval)
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "hachain.cli", "run", "-c",
                 os.path.join(tmp, f"{name}.toml")], cwd=ROOT,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,
                env=compare.child_env(PYTHONPATH=ROOT))
        for name, state in states.items():
            def ready(state: str = state) -> bool:
                try:
                    st = client.request(state, {"op": "status"}, timeout=5)
                except client.ControlError:
                    return False
                return st.get("services", {}).get("a", {}).get("state") == "ready"
            if not compare.wait_for(ready, 60):
                raise SystemExit(f"checks_idle: the {name} chain did not come up")
        time.sleep(args.interval + 2)  # every check tried once, the GC frozen
        rows: dict[str, dict[str, list[float]]] = {n: {"cpu": [], "ctx": []} for n in procs}
        for _ in range(args.rounds):
            pids = {n: [p.pid, *compare.descendants(p.pid)] for n, p in procs.items()}
            pids = {n: [x for x in ps if not _is_service(x)] for n, ps in pids.items()}
            before = {n: [compare.cpu_ctx(x) for x in ps] for n, ps in pids.items()}
            t0 = time.monotonic()
            time.sleep(args.seconds)
            dt = time.monotonic() - t0
            for n, ps in pids.items():
                after = [compare.cpu_ctx(x) for x in ps]
                rows[n]["cpu"].append(100 * sum(a[0] - b[0] for a, b in
                                                zip(after, before[n], strict=True)) / dt)
                rows[n]["ctx"].append(sum(a[1] - b[1] for a, b in
                                          zip(after, before[n], strict=True)) / dt)
        pss = {n: sum(compare.pss_rss_kb(x)[0] for x in [p.pid, *compare.descendants(p.pid)]
                      if not _is_service(x)) / 1024 for n, p in procs.items()}
        checks = [channels.read_heartbeat(states["with"], "restarter")]
        seen = (checks[0].extra.get("checks") or {}) if checks[0] is not None else {}
        states = sorted({str(c.get("state")) for c in seen.values()})
        lo = " (an idle lo receives nothing: its interface check fails, but counts only " \
            "after a day)" if args.checks > 2 else ""
        print(f"{args.checks} checks every {args.interval:g} s, {args.rounds} windows of "
              f"{args.seconds:g} s, medians; their states: {', '.join(states)}{lo}")
        print(f"{'chain':<10}{'CPU % of a core':>17}{'ctx switches/s':>16}{'PSS MB':>9}")
        for n in procs:
            print(f"{n:<10}{statistics.median(rows[n]['cpu']):>17.4f}"
                  f"{statistics.median(rows[n]['ctx']):>16.2f}{pss[n]:>9.1f}")
        d = statistics.median(rows["with"]["cpu"]) - statistics.median(rows["without"]["cpu"])
        print(f"difference: {d:+.4f} % of a core")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        compare.kill_all_descendants()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _is_service(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"/bin/sleep")
    except OSError:
        return True


if __name__ == "__main__":
    sys.exit(main())
