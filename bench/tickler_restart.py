"""How soon a killed tickler is back at the watchdog: real init, the real tickler on the
watchdog simulator, the tickler SIGKILLed after each open, 10.2 s apart (so that init
restarts it at once: a layer that ran 10 s is restarted without a delay).

    python bench/tickler_restart.py [--kills 5] [--gap 10.2]

Reported: SIGKILL to the next open of the device, in ms (median, min, max), with the
parsed tables the tickler before kept (`<state_dir>/config/tickler.json`, the default
path) and with that copy removed before each kill (the parser process every time), in
the same run, alternating. The restart must reach the device within the watchdog's
timeout (docs/tickler.md). The restarter is a `sleep` (tests/test_tickler_loop.py's
set-up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hachain import channels  # noqa: E402
from hachain.init import main as init_main  # noqa: E402
from hachain.watchdog import tickler  # noqa: E402
from tests.conftest import children, wait_until  # noqa: E402
from tests.test_tickler_loop import CountingWatchdog, restarter_pid  # noqa: E402
from tests.test_tickler_robust import init_with_tickler  # noqa: E402


class StampedWatchdog(CountingWatchdog):
    """The counting simulator, with the time of each open."""

    def __init__(self, timeout: int) -> None:
        super().__init__(timeout)
        self.opened: list[float] = []

    def open(self, now: float) -> None:
        super().open(now)
        self.opened.append(time.monotonic())


def kill_and_time(init: Any, wd: StampedWatchdog, restarter: int) -> float:
    """SIGKILL the running tickler; seconds to the next open."""
    n = wd.opens
    pid = wait_until(lambda: next((p for p in children(init.pid) if p != restarter
                                   and channels.proc_state(p) not in (None, "Z")), None),
                     10, "the tickler")
    t0 = time.monotonic()
    init_main.Init.signal_pid(pid, 9)
    wait_until(lambda: wd.opens > n, 30, "the restarted tickler to open the device")
    return wd.opened[-1] - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=5, help="per mode")
    p.add_argument("--gap", type=float, default=10.2, help="s between kills")
    a = p.parse_args()
    got: dict[str, list[float]] = {"with the kept tables": [], "parsed every time": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        wd = StampedWatchdog(200)
        with init_with_tickler(tmp, tmp / "run", tmp / "persist", wd, lambda: None, 200,
                               600.0, ["--tickler-deaths", "0"]) as (init, _err):
            restarter = restarter_pid(tmp / "run")
            cache = tmp / "run" / tickler.TABLES_CACHE
            wait_until(lambda: wd.opens >= 1, 30, "the first open")
            # a restart to warm up the page cache (the first tickler accepted the file
            # itself, as a run started by init alone has no running snapshot before it)
            for _ in range(1):
                time.sleep(a.gap)
                kill_and_time(init, wd, restarter)
            wait_until(cache.exists, 10, "the kept tables")
            for i in range(2 * a.kills):
                mode = list(got)[i % 2]
                time.sleep(a.gap)
                if mode == "parsed every time":
                    cache.unlink(missing_ok=True)
                else:
                    wait_until(cache.exists, 10, "the kept tables")
                got[mode].append(kill_and_time(init, wd, restarter))
                print(f"{mode}: {got[mode][-1] * 1000:.0f} ms", file=sys.stderr, flush=True)
    print(f"{'SIGKILL to the next open, ms':<34}{'median':>8}{'min':>8}{'max':>8}{'n':>4}")
    for mode, xs in got.items():
        print(f"{mode:<34}{statistics.median(xs) * 1000:8.0f}{min(xs) * 1000:8.0f}"
              f"{max(xs) * 1000:8.0f}{len(xs):4d}")
    a_, b_ = (statistics.median(x) for x in got.values())
    print(f"ratio kept / parsed: {a_ / b_:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
