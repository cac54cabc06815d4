"""Real daemons under the restarter: start to ready, and SIGKILL to ready again.

    .venv/bin/python bench/daemons_bench.py [--runs 5] [--only pg,redis,nginx,nginx-forking,sshd]

For each daemon of tests/helpers/daemons.py (PostgreSQL and redis with sd_notify, nginx in
the foreground with tcp readiness, nginx forking from Debian's nginx.service through
`hachain import`), one restarter on a temporary directory and a free 127.0.0.1 port:

- start to ready: `hachain stop`, wait until stopped, then from the `start` request until
  `hachain status` shows the service ready;
- SIGKILL to ready: from SIGKILL of the main process until status shows it ready again
  with a new pid. This includes the fixed 0.1 s restart delay the services are given
  (systemd's default RestartSec=100ms).

Status is polled every 5 ms, so each figure is late by up to ~6 ms. Prints the median,
min and max of `--runs` runs of each as a markdown table (docs/operations.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.conftest import wait_until  # noqa: E402
from tests.helpers import daemons as D  # noqa: E402

KINDS = {
    "pg": ("PostgreSQL 15", "notify", lambda tmp: D.postgres(tmp)),
    "redis": ("redis 7", "notify", lambda tmp: D.redis(tmp)),
    "nginx": ("nginx (foreground)", "tcp", lambda tmp: D.nginx_foreground(tmp)),
    "nginx-forking": ("nginx (forking, imported unit)", "launcher exit + pid file",
                      lambda tmp: D.nginx_forking(tmp)[0]),
    "sshd": ("OpenSSH sshd (kill_mode process)", "notify", lambda tmp: D.sshd(tmp)[0]),
}


def _ready(r: D.RestarterRun, name: str, not_pid: int | None) -> bool:
    s = r.status().get(name, {})
    return s.get("state") == "ready" and s.get("pid") not in (None, not_pid)


def measure(key: str, runs: int) -> tuple[list[float], list[float]]:
    starts: list[float] = []
    kills: list[float] = []
    with D.daemon_dir() as tmp:
        d = KINDS[key][2](tmp)
        with D.restarter(tmp, d.body) as r:
            D.wait_ready(r, d)
            for _ in range(runs):
                assert r.req("stop", d.name)["ok"]
                r.wait_state(d.name, "stopped", timeout=30)
                t0 = time.monotonic()
                assert r.req("start", d.name)["ok"]
                wait_until(lambda: _ready(r, d.name, None), 30, f"{d.name} ready",
                           interval=0.005)
                starts.append(time.monotonic() - t0)
                wait_until(d.check, 30, f"{d.name} answering")
            for _ in range(runs):
                took, pid = D.kill_and_time(r, d)
                r.pids_seen.add(pid)
                kills.append(took)
                wait_until(d.check, 30, f"{d.name} answering")
    return starts, kills


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default=",".join(KINDS))
    a = ap.parse_args()
    why = D.missing()
    if why:
        print(f"daemons_bench: {why}", file=sys.stderr)
        return 2
    print(f"| daemon | readiness | start → ready, median (min–max) | SIGKILL → ready again, "
          f"median (min–max) |  ({a.runs} runs each)")
    print("|---|---|---|---|")
    for key in a.only.split(","):
        title, how, _ = KINDS[key]
        starts, kills = measure(key, a.runs)

        def cell(xs: list[float]) -> str:
            return (f"{statistics.median(xs) * 1e3:.0f} ms ({min(xs) * 1e3:.0f}–"
                    f"{max(xs) * 1e3:.0f})")
        print(f"| {title} | {how} | {cell(starts)} | {cell(kills)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
