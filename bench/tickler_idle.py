"""The tickler's idle cost: CPU and context switches of one tickler against forged layers.

    python bench/tickler_idle.py [--seconds 60] [--fast] [--compare OLD_TICKLER.py]

The tickler pets a software watchdog in this process while a thread writes init's and
the restarter's heartbeats (tests/test_tickler.py's rig). Reported: CPU time over the run
from /proc/PID/stat (resolution one clock tick, 10 ms), and voluntary + involuntary
context switches summed over the tickler's threads. Default timings are the
configuration's defaults (tick and pets every 2 s, timeout 10); `--fast` is the tests'
(tick 0.2 s, pets 0.5 s, timeout 3). `--compare` runs an older tickler source file too
(for example `git show REV:hachain/watchdog/tickler.py > /tmp/old.py`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.test_tickler import ForgedLayers, Rig  # noqa: E402


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _switches(pid: int) -> int:
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
    return total


def measure(argv_tail: list[str], seconds: float, fast: bool) -> tuple[float, float]:
    """(% of a core, context switches/s) of one tickler over `seconds`."""
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(tmp)
        if not fast:
            with open(rig.config) as f:
                text = f.read()
            for old, new in (("heartbeat_interval = 0.2", "heartbeat_interval = 2.0"),
                             ("\ntimeout = 3\n", "\ntimeout = 10\n"),
                             ("pet_interval = 0.5", "pet_interval = 2.0"),
                             ("heartbeat_timeout = 1.0", "heartbeat_timeout = 5.0"),
                             ("restart_grace = 4.0", "restart_grace = 10.0")):
                text = text.replace(old, new)
            with open(rig.config, "w") as f:
                f.write(text)
        rig.server.start()
        try:
            with ForgedLayers(rig.state_dir, rig.sleeper.pid):
                p = subprocess.Popen([sys.executable, *argv_tail, "-c", rig.config],
                                     stderr=subprocess.DEVNULL)
                rig.procs.append(p)
                deadline = time.monotonic() + 30
                while rig.pets() < 2:
                    if time.monotonic() > deadline or p.poll() is not None:
                        raise SystemExit(f"the tickler {argv_tail} did not pet")
                    time.sleep(0.05)
                c0, s0, t0 = _cpu(p.pid), _switches(p.pid), time.monotonic()
                time.sleep(seconds)
                c1, s1, t1 = _cpu(p.pid), _switches(p.pid), time.monotonic()
            return (c1 - c0) / (t1 - t0) * 100, (s1 - s0) / (t1 - t0)
        finally:
            rig.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--fast", action="store_true", help="the tests' timings")
    ap.add_argument("--compare", metavar="OLD_TICKLER.py")
    args = ap.parse_args()
    runs = [("this tree", ["-m", "hachain.watchdog.tickler"])]
    if args.compare:
        runs.append((args.compare, [args.compare]))
    for name, tail in runs:
        pct, cs = measure(tail, args.seconds, args.fast)
        print(f"{name}: {pct:.3f} % of a core, {cs:.1f} context switches/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
