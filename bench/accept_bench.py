"""What `hachain run` spends before it execs init (issue 19, start-up): a fresh Python
process (with `site`, as the command line has it) that imports the CLI and accepts the
configuration, for the first run of a file and for a file that ran before (its parsed
copy kept with the last-known-good snapshot, docs/configuration.md).

    .venv/bin/python bench/accept_bench.py [--sizes 1,100,1000] [--runs 7]

The two cases alternate, run after run, in a temporary directory; prints the median
wall time per size and case, in ms, and the ratio.
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import benchlib  # noqa: E402

from hachain import channels  # noqa: E402

ACCEPT = ("import sys; from hachain import cli, snapshot; "
          "snapshot.accept(sys.argv[1], chain_id='bench', last_good=False, kept=True)")


def one_size(n: int, runs: int) -> tuple[float, float]:
    d = tempfile.mkdtemp(prefix=f"hachain-accept-{n}-")
    try:
        body = [f'[chain]\nstate_dir = "{d}/run"\npersist_dir = "{d}/persist"\n'
                'cgroup_root = "none"\n[watchdog]\ndevice = "none"\n']
        body += [f'[service.s{i}]\ncommand = ["/bin/sleep", "1000"]\n' for i in range(n)]
        cfg = os.path.join(d, "chain.toml")
        with open(cfg, "w") as f:
            f.write("".join(body))
        kept = os.path.join(d, "persist", channels.LAST_GOOD_PARSED)

        def accept() -> float:
            shutil.rmtree(os.path.join(d, "run"), ignore_errors=True)  # a boot's empty /run
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-c", ACCEPT, cfg], cwd=ROOT, check=True,
                           timeout=120)
            return time.monotonic() - t0

        # the first accept that keeps the copy (as `hachain run` does, from a child)
        subprocess.run([sys.executable, "-c", "import sys; from hachain import snapshot; "
                        "snapshot.accept(sys.argv[1])", cfg], cwd=ROOT, check=True,
                       timeout=120)
        assert os.path.exists(kept), "no parsed copy kept"
        first, again = [], []
        for _ in range(runs):
            os.rename(kept, kept + ".aside")
            first.append(accept())
            os.rename(kept + ".aside", kept)
            again.append(accept())
        return statistics.median(first), statistics.median(again)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,100,1000")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    benchlib.byte_compile()
    print(f"{'services':>8} {'first run ms':>13} {'ran before ms':>14} {'ratio':>6}")
    for n in (int(x) for x in args.sizes.split(",")):
        first, again = one_size(n, args.runs)
        print(f"{n:>8} {first * 1000:>13.1f} {again * 1000:>14.1f} {again / first:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
