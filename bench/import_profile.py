"""What each layer's Python start-up costs before it does anything: import time, and the
share of it spent creating dataclasses and enums (issue 19, start-up).

    .venv/bin/python bench/import_profile.py [--runs 9]

Every run is a fresh interpreter started the way the chain starts the layer (`python -S`
with hachain's PYTHONPATH; the `hachain run` process with `site`, as the command line
has it), after byte-compiling hachain. In it, `dataclasses._process_class` and
`enum.EnumType.__new__` are wrapped with a clock before the layer's module is imported,
so the table splits the import into class creation and the rest. Prints medians over
the runs, wall time, in ms. The layers run one after another on the way to the first
service (`hachain run` → init → restarter), so their imports add up on that path; the
tickler and the logger start beside the restarter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import benchlib  # noqa: E402

# (label, module imported, runs with site?)
LAYERS = [
    # what `hachain run` imports before it execs init (cmd_run: snapshot, config, tomllib)
    ("hachain run (CLI + configuration)", "hachain.cli,hachain.snapshot,hachain.config,tomllib",
     True),
    ("init", "hachain.init.main", False),
    ("restarter", "hachain.restarter.__main__", False),
    ("tickler", "hachain.watchdog.tickler", False),
    ("logger", "hachain.logger.main", False),
]

# Runs in the measured interpreter: wrap class creation, import, print one JSON line.
PROBE = r"""
import sys, time, json
t0 = time.perf_counter()
import dataclasses, enum
spent = {"dataclass": [0.0, 0], "enum": [0.0, 0]}
def timed(kind, fn):
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            spent[kind][0] += time.perf_counter() - t
            spent[kind][1] += 1
    return wrapper
dataclasses._process_class = timed("dataclass", dataclasses._process_class)
enum.EnumType.__new__ = timed("enum", enum.EnumType.__new__)
t1 = time.perf_counter()
for name in sys.argv[1].split(","):
    __import__(name)
t2 = time.perf_counter()
print(json.dumps({"base": t1 - t0, "import": t2 - t1, "modules": len(sys.modules),
                  "dataclass": spent["dataclass"], "enum": spent["enum"]}))
"""


def one(module: str, site: bool) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    argv = [sys.executable, *([] if site else ["-S"]), "-c", PROBE, module]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    benchlib.byte_compile()
    print(f"{'layer':36} {'import ms':>10} {'dataclasses ms (n)':>20} {'enums ms (n)':>14} "
          f"{'rest ms':>8} {'modules':>8}")
    for label, module, site in LAYERS:
        runs = [one(module, site) for _ in range(args.runs)]
        imp = statistics.median(float(r["import"]) * 1000 for r in runs)  # type: ignore[arg-type]
        dc = statistics.median(r["dataclass"][0] * 1000 for r in runs)  # type: ignore[index]
        en = statistics.median(r["enum"][0] * 1000 for r in runs)  # type: ignore[index]
        ndc, nen = runs[0]["dataclass"][1], runs[0]["enum"][1]  # type: ignore[index]
        print(f"{label:36} {imp:10.1f} {f'{dc:.1f} ({ndc})':>20} {f'{en:.1f} ({nen})':>14} "
              f"{imp - dc - en:8.1f} {runs[0]['modules']:>8}")
    print(f"medians of {args.runs} runs each; wall time; `import dataclasses, enum` "
          "themselves are not in the import column")
    return 0


if __name__ == "__main__":
    sys.exit(main())
