"""How long a tickler that dies at every start keeps the machine up: real init, the real
tickler on the watchdog simulator, the tickler SIGKILLed right after each open.

    python bench/tickler_giveup.py [--deaths 20] [--restart-delay 1] [--timeout 5] [--runs 1]

Reported per run: from the first kill to init's give-up line, and to the simulated
watchdog firing (about deaths x (restart delay + a start) + timeout). The restarter is a
`sleep` (tests/test_tickler_loop.py's set-up).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.conftest import wait_until  # noqa: E402
from tests.test_tickler_loop import (  # noqa: E402
    GIVE_UP,
    CountingWatchdog,
    kill_after_open,
    restarter_pid,
)
from tests.test_tickler_robust import init_with_tickler  # noqa: E402


def one_run(deaths: int, restart_delay: float, timeout: int) -> tuple[float, float]:
    """(first kill to give-up, first kill to fired), seconds."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        fired: list[float] = []
        wd = CountingWatchdog(timeout)
        with init_with_tickler(tmp, tmp / "run", tmp / "persist", wd,
                               lambda: fired.append(time.monotonic()), timeout, 600.0,
                               ["--restart-delay", f"{restart_delay:g}",
                                "--tickler-deaths", str(deaths)]) as (init, err):
            restarter = restarter_pid(tmp / "run")
            kill_after_open(init, wd, restarter, 1)
            t0 = time.monotonic()
            for n in range(2, deaths + 1):
                kill_after_open(init, wd, restarter, n)
            wait_until(lambda: GIVE_UP in err.read_text(errors="replace"), 30,
                       "init to give up")
            t1 = time.monotonic()
            wait_until(lambda: fired, timeout + 5, "the simulated watchdog to fire")
            return t1 - t0, fired[0] - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deaths", type=int, default=20)
    p.add_argument("--restart-delay", type=float, default=1.0)
    p.add_argument("--timeout", type=int, default=5)
    p.add_argument("--runs", type=int, default=1)
    a = p.parse_args()
    for _ in range(a.runs):
        gave_up, fired = one_run(a.deaths, a.restart_delay, a.timeout)
        print(f"deaths {a.deaths}, restart_delay {a.restart_delay:g} s, timeout "
              f"{a.timeout} s: first kill to give-up {gave_up:.2f} s, to fired {fired:.2f} s",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
