"""bench/compare.py --smoke: the side-by-side benchmark runs end to end on tiny sizes.

Checks the shape of the output, not the numbers: the table prints, every supervisor has
its column and its footer row, and a supervisor is left out only when its Debian package
could not be installed (the script installs missing ones itself, which needs root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

pytestmark = pytest.mark.slow  # a benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = ("hachain", "s6", "runit", "supervisord")


def test_compare_smoke_prints_every_peer() -> None:
    """One --smoke run: a row per metric, a column and a footer line per supervisor."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler for bench/stamp.c")
    # its temporary directory (hence every process of its own) in one of ours, short
    # enough for the socket paths in it: another run of the benchmark on the same
    # machine is not this one's leftover
    tmp = tempfile.mkdtemp(prefix="hcs-", dir="/tmp")
    try:
        p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "compare.py"),
                            "--smoke"], capture_output=True, text=True, timeout=240, cwd=ROOT,
                           env=dict(os.environ, TMPDIR=tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert out.startswith("machine: ") and "versions: " in out
    lines = out.splitlines()
    header = next(ln for ln in lines if ln.startswith("metric"))
    footers = {ln.split()[0]: ln for ln in lines
               if ln.split() and ln.split()[0] in PEERS and ("top process" in ln or "SKIPPED" in ln)}
    for peer in PEERS:
        assert peer in footers, f"no row for {peer}:\n{out}"
        if "SKIPPED" in footers[peer]:
            assert peer != "hachain"
            assert "could not be installed" in footers[peer], footers[peer]
        else:
            assert f" {peer}" in header, header
    for metric in ("restart after idle p50 ms", "restart back-to-back p50 ms", "idle CPU % of a core", "PSS MB", "start-up s",
                   "top killed: duplicate services", "top killed: lost services"):
        assert any(ln.startswith(metric) for ln in lines), f"no {metric!r} row:\n{out}"
    assert "targets (hachain" in out
    # nothing of the benchmark may outlive it
    leftovers = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert tmp not in leftovers, leftovers


def test_profile_restarter_names_the_spawn_path(tmp_path) -> None:
    """bench/profile_restarter.py on 20 services: py-spy samples the restarter while it
    restarts them, and the busy time shows the restart path (_on_exit -> _launch -> spawn:
    since the replacement first, a restart is spawned by _launch, ahead of _spawn)."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler for bench/stamp.c")
    if not os.access(os.path.join(os.path.dirname(sys.executable), "py-spy"), os.X_OK) \
            and shutil.which("py-spy") is None:
        pytest.skip("py-spy is not installed (it is in the test extra)")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "profile_restarter.py"),
                        "--services", "20", "--restarts", "60", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "60 restarts with 20 services" in p.stdout, p.stdout
    total = p.stdout.split(" total %")[1]
    for fn in ("loop.py:Restarter._launch", "spawn.py:spawn"):
        assert fn in total, p.stdout
    assert (tmp_path / "restarter.txt").stat().st_size > 0
    assert (tmp_path / "restarter.speedscope.json").stat().st_size > 0


def test_import_profile_covers_every_layer_and_only_the_restarter_builds_dataclasses() -> None:
    """bench/import_profile.py, one run per layer: a row for each layer of the chain; init,
    the tickler and the logger create no dataclass at import (docs/benchmarks.md: they keep
    their memory and start-up small that way), the restarter and `hachain run` do."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "import_profile.py"),
                        "--runs", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = {line[:36].strip(): line[36:].split() for line in p.stdout.splitlines()[1:6]}
    assert set(rows) == {"hachain run (CLI + configuration)", "init", "restarter", "tickler",
                         "logger"}, p.stdout
    for layer in ("init", "tickler", "logger"):
        assert rows[layer][2] == "(0)", p.stdout  # dataclasses created at import
    assert int(rows["restarter"][2].strip("()")) > 0, p.stdout
