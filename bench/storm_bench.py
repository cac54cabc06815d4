"""Crash storm: the whole chain while every service crash-loops, with a CPU hog on each core.

    .venv/bin/python bench/storm_bench.py                  # the target: 1000 services, 300 s, hog
    .venv/bin/python bench/storm_bench.py --duration 60    # a shorter run, same size
    .venv/bin/python bench/storm_bench.py --services 200 --duration 20 --no-hog

Runs `hachain run` (init, the restarter, the tickler) against the software watchdog with
N services that exit 1 at once (`/bin/false`, a constant `--backoff`, intensity action
"ignore": they loop for the whole run) while one busy-looping process per core (the hog,
started and killed here) competes for the CPU. The harness is
`hachain.simulators.storm` (shared with tests/test_storm.py); it explains how pets, gate
failures and resets are observed. Every `--status-every` seconds `hachain status --json`
runs through the installed command (a new process each time, as an operator or a script
runs it), timed from spawn to exit: `hachain`, the native front (hachain/_front.c, which
has the restarter render the output), and `hachain-py`, the Python CLI, one after the
other. The `status` request straight on the control socket is timed too, to tell the
restarter's share, and so is `python -c pass` with the same interpreter: the floor that
any Python command pays on that host at that moment.

The CLI runs with Python's bytecode cache on (in a temporary PYTHONPYCACHEPREFIX) even
when PYTHONDONTWRITEBYTECODE is set here: an installed hachain is byte-compiled, and
compiling every module on each run would measure the compiler.

Prints one table row, and exits 1 when a pet came later than pet_interval + 0.5 s, the
gate failed or the watchdog expired. Needs root for the services' cgroup (it runs
without one otherwise) and for SCHED_FIFO of its own sampler.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from hachain import client  # noqa: E402
from hachain.simulators.storm import Storm, start_hogs, stop_procs  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def restarts_of(st: dict[str, Any] | None) -> int | None:
    if not st:
        return None
    return sum(int(s.get("restarts") or 0) for s in st.get("services", {}).values())


def wait_storm(storm: Storm, timeout: float) -> None:
    """Until every service has crashed at least once (the storm is under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            rep = client.request(storm.state, {"op": "status"}, timeout=10)
            if rep.get("ok") and all(s["restarts"] >= 1 for s in rep["services"].values()):
                return
        except client.ControlError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the storm did not get under way within {timeout:g} s")


def front_built() -> bool:
    """Whether bin/hachain is the native front (else it is the Python CLI as well)."""
    try:
        with open(os.path.join(os.path.dirname(sys.executable), "hachain"), "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def run(a: argparse.Namespace) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="hachain-storm-")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
    hogs: list[subprocess.Popen[bytes]] = []
    storm = Storm(a.services, a.backoff, tmp, timeout=a.timeout, pet_interval=a.pet_interval,
                  heartbeat_interval=a.heartbeat_interval)
    try:
        if a.hog:
            hogs = start_hogs(a.hogs or os.cpu_count() or 2)
        storm.start()
        storm.wait_petting(120)
        wait_storm(storm, 120)
        storm.status_cli(env)  # fills the bytecode cache
        storm.start_sampling()
        t0 = time.monotonic()
        lat: list[float] = []
        cpu: list[float] = []
        py_lat: list[float] = []
        py_cpu: list[float] = []
        sock: list[float] = []
        floor: list[float] = []
        bad = 0
        first = last = None
        next_at = t0
        while time.monotonic() - t0 < a.duration:
            dt, used, out = storm.status_cli(env)
            lat.append(dt)
            cpu.append(used)
            st = json.loads(out) if out else None
            if st is None or len(st.get("services", {})) != a.services:
                bad += 1
            else:
                first = first or st
                last = st
            dt, used, out = storm.status_cli(env, "hachain-py")
            py_lat.append(dt)
            py_cpu.append(used)
            if out is None or len(json.loads(out).get("services", {})) != a.services:
                bad += 1
            t1 = time.monotonic()
            try:
                client.request(storm.state, {"op": "status"}, timeout=30)
                sock.append(time.monotonic() - t1)
            except client.ControlError:
                bad += 1
            # the floor any Python CLI pays here: the same interpreter (site and the
            # venv's import hooks included) doing nothing, on the same loaded host
            t1 = time.monotonic()
            subprocess.run([sys.executable, "-c", "pass"], env=env, timeout=60, check=False)
            floor.append(time.monotonic() - t1)
            if storm.proc is not None and storm.proc.poll() is not None:
                raise RuntimeError(f"the chain exited; see {storm.log_path}")
            next_at += a.status_every
            time.sleep(max(0.0, next_at - time.monotonic()))
        wall = time.monotonic() - t0
        storm.stop_sampling()
        gaps = storm.pet_gaps()
        s = storm.samples
        r0, r1 = restarts_of(first), restarts_of(last)
        return {
            "services": a.services, "duration": wall, "hog": a.hog, "pets": s.pets,
            "max_gap": max(gaps, default=float("nan")),
            "missed": sum(1 for g in gaps if g > a.pet_interval + 0.5),
            "gate_failures": max(storm.gate_failures(), 1 if s.gate_fail_ticks else 0),
            "expirations": storm.expirations, "least_left": storm.least_left,
            "status_p50": statistics.median(lat), "status_p99": pct(lat, 99),
            "status_max": max(lat), "status_n": len(lat), "status_bad": bad,
            "cli_cpu_p50": statistics.median(cpu), "front": front_built(),
            "py_cli_p50": statistics.median(py_lat), "py_cli_p99": pct(py_lat, 99),
            "py_cli_cpu_p50": statistics.median(py_cpu),
            "socket_p50": statistics.median(sock) if sock else float("nan"),
            "socket_p99": pct(sock, 99),
            "python_p50": statistics.median(floor) if floor else float("nan"),
            "python_p99": pct(floor, 99),
            "restarts_per_s": (r1 - r0) / wall if r0 is not None and r1 is not None else None,
            "max_lag": s.max_lag, "max_restarter_hb_age": s.max_restarter_age,
            "load": os.getloadavg()[0],
        }
    finally:
        stop_procs(hogs)
        storm.close()
        if a.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=300.0, help="seconds measured (300)")
    hog = ap.add_mutually_exclusive_group()
    hog.add_argument("--hog", dest="hog", action="store_true", default=True,
                     help="a CPU hog on every core (the default)")
    hog.add_argument("--no-hog", dest="hog", action="store_false")
    ap.add_argument("--hogs", type=int, default=0, help="hog processes (default: one per core)")
    ap.add_argument("--backoff", type=float, default=0.5,
                    help="each service's constant restart delay in seconds (0.5)")
    ap.add_argument("--timeout", type=int, default=10, help="watchdog timeout (10)")
    ap.add_argument("--pet-interval", type=float, default=1.0, help="(1)")
    ap.add_argument("--heartbeat-interval", type=float, default=2.0, help="(2, the default)")
    ap.add_argument("--status-every", type=float, default=0.5,
                    help="seconds between two `hachain status --json` (0.5)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--json", action="store_true", help="also print the row as JSON")
    a = ap.parse_args()
    if not os.access("/bin/false", os.X_OK):
        sys.exit("storm_bench: needs /bin/false")
    row = run(a)
    print(f"machine: {os.cpu_count()} cores, kernel {os.uname().release}, python "
          f"{sys.version.split()[0]}, load average {row['load']:.1f} at the end; services "
          f"exit 1 at once, backoff {a.backoff:g} s; watchdog timeout {a.timeout} s, "
          f"pet_interval {a.pet_interval:g} s")
    print(f"{'services':>8} {'secs':>5} {'hog':>4} {'pets':>5} {'max pet gap s':>13} "
          f"{'missed':>6} {'gate fails':>10} {'resets':>6} {'status p50 ms':>13} "
          f"{'p99 ms':>7} {'restarts/s':>10}")
    rps = row["restarts_per_s"]
    print(f"{row['services']:>8} {row['duration']:>5.0f} {'on' if row['hog'] else 'off':>4} "
          f"{row['pets']:>5} {row['max_gap']:>13.2f} {row['missed']:>6} "
          f"{row['gate_failures']:>10} {row['expirations']:>6} "
          f"{row['status_p50'] * 1e3:>13.0f} {row['status_p99'] * 1e3:>7.0f} "
          f"{'-' if rps is None else f'{rps:.0f}':>10}")
    least = row["least_left"]
    front = "the native front" if row["front"] else "the Python CLI: the front is not built"
    print(f"(missed: pets later than pet_interval + 0.5 s; status: {row['status_n']} runs of "
          f"`hachain status --json` ({front}), {row['status_bad']} failed, max "
          f"{row['status_max'] * 1e3:.0f} ms, its CPU p50 {row['cli_cpu_p50'] * 1e3:.1f} ms; "
          f"the Python CLI (`hachain-py`) p50 {row['py_cli_p50'] * 1e3:.0f} / p99 "
          f"{row['py_cli_p99'] * 1e3:.0f} ms, CPU p50 {row['py_cli_cpu_p50'] * 1e3:.0f} ms; "
          f"the request alone on the control socket "
          f"p50 {row['socket_p50'] * 1e3:.0f} / p99 {row['socket_p99'] * 1e3:.0f} ms; "
          f"`python -c pass` (the interpreter's start, the floor of any Python CLI) p50 "
          f"{row['python_p50'] * 1e3:.0f} / p99 {row['python_p99'] * 1e3:.0f} ms; "
          f"restarter heartbeat age max {row['max_restarter_hb_age']:.2f} s, loop lag max "
          f"{row['max_lag']:.3f} s; least watchdog time left "
          f"{'-' if least is None else f'{least:.2f}'} s)")
    p99 = row["status_p99"] * 1e3
    print(f"status p99 through the CLI: {p99:.0f} ms, target <= 100 ms: "
          f"{'met' if p99 <= 100 else 'MISSED'}")
    if a.json:
        print(json.dumps(row))
    ok = row["missed"] == 0 and row["gate_failures"] == 0 and row["expirations"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
