"""What `hachain chaos` shows (issue 21.3, 21.4): the progress bar and its failure lines,
the verdict line, the reproduction's own report directory, a partial report when a
signal stops the campaign (and no tmpfs left mounted), and the HTML report as a browser
draws it (headless Chromium).

The campaigns are real, on the simulated machine (root, unshare(1), cgroup v2), and
short: a few faults of quick kinds with fixed seeds.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from hachain import cli
from hachain.simulators import chaos
from tests.conftest import wait_until
from tests.test_chaos import PY, needs_machine

# --- the progress printer and the verdict line (no machine) ----------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _screen(text: str) -> list[str]:
    """What a terminal shows for `text`: per line, what follows the last "\\r\\033[K"."""
    return [line.rsplit("\r\033[K", 1)[-1] for line in text.split("\n")]


def _res(i: int, ok: bool) -> chaos.Result:
    r = chaos.Result(i, "kill-service", "worker", "worker", ok=ok, bound=7.0,
                     console="/m/console.log", console_line=40 + i)
    if ok:
        r.converge = 0.5
    else:
        r.problems = ["worker: failed (expected ready)"]
    return r


def test_a_failure_stays_on_screen_above_a_bar_with_elapsed_and_left() -> None:
    now = [100.0]
    out = _Tty()
    p = chaos.Progress(out, clock=lambda: now[0])
    now[0] = 110.0  # the boot
    for i, ok in enumerate((True, False, True)):
        p(i, 4, None, "kill-service worker")
        now[0] += 5.0
        p(i + 1, 4, _res(i, ok), "")
    screen = _screen(out.getvalue())
    fails = [line for line in screen if line.startswith("chaos: FAIL")]
    assert fails == ["chaos: FAIL fault #1 kill-service worker: worker: failed (expected ready)",
                     "chaos: FAIL fault #1 kill-service worker: console log "
                     "/m/console.log:41 (from the fault on)"]
    bar = screen[-1]
    assert bar.startswith("[") and "3/4" in bar and "fails 1" in bar
    # 25 s since power-on; 3 faults in 15 s: one more takes ~5 s
    assert "elapsed 25 s" in bar and "~5 s left" in bar, bar


def test_progress_without_a_terminal_is_one_line_per_fault() -> None:
    out = io.StringIO()
    p = chaos.Progress(out)
    p(0, 2, None, "kill-service worker")
    p(1, 2, _res(0, False), "")
    p(1, 2, None, "kill-service worker")
    p(2, 2, _res(1, True), "")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("chaos: FAIL fault #0") and "console log" in lines[1]
    assert lines[2].startswith("chaos: 1/2 #0 kill-service worker: FAILED")
    assert lines[3].startswith("chaos: 2/2 #1 kill-service worker: converged in 0.50 s")


def test_progress_survives_a_terminal_that_went_away() -> None:
    class Gone(_Tty):
        def write(self, s: str) -> int:
            raise OSError(5, "Input/output error")
    p = chaos.Progress(Gone())
    p(0, 1, None, "x")
    p(1, 1, _res(0, False), "")  # nothing raised: the campaign cleans up and reports


def _rep(**kw: Any) -> dict[str, Any]:
    rep = {"seed": 4, "faults": 5, "results": [{"ok": True}] * 5, "failures": 0, "ok": True,
           "baseline_problems": [], "boots": 2, "duration": 75.0, "interrupted": None}
    rep.update(kw)
    return rep


def test_the_verdict_is_one_pass_or_fail_line_with_the_counts() -> None:
    line = chaos.verdict_line(_rep(), "r/report.html")
    assert line == ("chaos: PASS: seed 4: all invariants held over 5 fault(s) (5 held, 0 broke "
                    "an invariant); 2 boot(s), 1m15s; report r/report.html")
    line = chaos.verdict_line(_rep(ok=False, failures=2), "r/report.html")
    assert line.startswith("chaos: FAIL: seed 4: 2 of 5 fault(s) broke an invariant "
                           "(3 held, 2 broke an invariant)")
    line = chaos.verdict_line(_rep(ok=False, interrupted="SIGINT", results=[{"ok": True}]),
                              "r/report.html")
    assert line.startswith("chaos: FAIL: seed 4: interrupted by SIGINT after 1 of 5 fault(s) "
                           "(1 held, 0 broke an invariant, 4 not run)")
    assert "partial report r/report.html" in line
    for rep in (_rep(), _rep(ok=False, failures=1)):
        assert "\n" not in chaos.verdict_line(rep, "x")


# --- real campaigns ------------------------------------------------------------------------


@pytest.fixture
def short_tmp() -> Iterator[pathlib.Path]:
    """A short temporary directory (sun_path is 108 bytes); mounts checked on the way out."""
    d = tempfile.mkdtemp(prefix="hco-", dir="/tmp")
    yield pathlib.Path(d)
    for point in chaos.campaign_mounts(d):  # only after a failed test; never silently
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=10)
    shutil.rmtree(d, ignore_errors=True)


@needs_machine
@pytest.mark.slow
def test_the_reproduction_writes_its_own_report_directory(short_tmp: Any,
                                                          capsys: Any) -> None:
    work = short_tmp / "work"
    work.mkdir()
    # worker never comes back after it dies: the first fault on it breaks an invariant
    text = chaos.campaign_config_text(PY, str(work / chaos.SERVICE_FILE)) + \
        'restart = "never"\n'
    cfg = short_tmp / "never.toml"
    cfg.write_text(text)
    sched = chaos.schedule(3, 20, ["kill-service"], ["api", "cache", "db", "worker"],
                           ["api", "db"])
    first = next(f.index for f in sched if f.target == "worker")
    report = short_tmp / "report"
    rc = cli.main(["chaos", "-c", str(cfg), "--faults", str(first + 1), "--seed", "3",
                   "--kinds", "kill-service", "--no-shrink", "--report", str(report),
                   "--dir", str(work)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert out.splitlines()[-1].startswith(f"chaos: FAIL: seed 3: 1 of {first + 1} fault(s)")
    # what was observed, and where the console log is
    assert f"fault #{first} kill-service worker: worker: " in err
    console = f"{work}/c/m/console.log:"
    assert f"fault #{first} kill-service worker: console log {console}" in err
    line = int(err.split(console, 1)[1].split()[0])
    log = (work / "c" / "m" / "console.log").read_text().splitlines()
    assert 1 < line <= len(log) + 1  # after the boot, at the fault
    # the reproduction command names another report directory ...
    cmd = err.split("chaos: reproduce (not shrunk): ", 1)[1].splitlines()[0]
    argv = shlex.split(cmd)
    assert argv[:2] == ["hachain", "chaos"]
    repro = argv[argv.index("--report") + 1]
    assert os.path.abspath(repro) != os.path.abspath(report)
    assert os.path.abspath(repro) == os.path.abspath(chaos.repro_report_dir(str(report)))
    # ... and running it leaves the evidence as it was
    before = (report / "report.json").read_bytes()
    rc = cli.main(argv[1:] + ["--dir", str(short_tmp / "w2")])
    capsys.readouterr()
    assert rc == 1
    assert (report / "report.json").read_bytes() == before
    assert json.loads((pathlib.Path(repro) / "report.json").read_text())["seed"] == 3
    shutil.rmtree(repro, ignore_errors=True)


STOPS = [
    # (signal, to the whole process group as a terminal does, once a fault was judged)
    pytest.param(signal.SIGINT, True, True, id="ctrl-c-mid-campaign"),
    pytest.param(signal.SIGHUP, True, False, id="terminal-closed-while-booting"),
    pytest.param(signal.SIGTERM, False, True, id="kill-mid-campaign"),
]


@needs_machine
@pytest.mark.slow
@pytest.mark.parametrize(("sig", "group", "after_fault"), STOPS)
def test_a_stop_signal_writes_a_partial_report_and_leaves_no_mount(
        short_tmp: Any, sig: int, group: bool, after_fault: bool) -> None:
    work, report = short_tmp / "work", short_tmp / "report"
    errf = short_tmp / "stderr"
    outf = short_tmp / "stdout"
    faults = 40
    cfg = chaos.config.parse(chaos.campaign_config_text(PY, "/x/svc.py"))
    # the bounds the campaign itself waits for: a boot, then one fault of the slower kind
    bound = 10 + chaos.BOOT_BUDGET + 10 + chaos.convergence_bound("stop-service", cfg) * 1.5 + 5
    with open(errf, "wb") as e, open(outf, "wb") as o:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from hachain.cli import main; "
             "sys.exit(main(sys.argv[1:]))", "chaos", "--faults", str(faults), "--seed", "2",
             "--kinds", "kill-service,stop-service", "--no-shrink", "--report", str(report),
             "--dir", str(work)], stdout=o, stderr=e, start_new_session=True)
    try:
        marker = "chaos: 1/" if after_fault else "chaos: seed 2"
        wait_until(lambda: marker in errf.read_text(), bound, f"{marker!r} on stderr")
        if not after_fault:  # the machine is booting: the mounts are there
            wait_until(lambda: chaos.campaign_mounts(str(work)), 10, "the tmpfs mounts")
        (os.killpg if group else os.kill)(proc.pid, sig)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:  # only when the test already failed
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    err, out = errf.read_text(), outf.read_text()
    assert rc == 1, err
    name = signal.Signals(sig).name
    assert chaos.campaign_mounts(str(short_tmp)) == []
    assert str(short_tmp) not in pathlib.Path("/proc/self/mounts").read_text()
    assert (report / "report.json").exists(), err
    rep = json.loads((report / "report.json").read_text())
    assert rep["interrupted"] == name and not rep["ok"]
    assert rep["faults"] == faults and len(rep["results"]) < faults
    if after_fault:
        assert len(rep["results"]) >= 1
    page = (report / "report.html").read_text()
    assert f"interrupted by {name}" in page
    verdict = out.splitlines()[-1]
    assert verdict.startswith(f"chaos: FAIL: seed 2: interrupted by {name} after "
                              f"{len(rep['results'])} of {faults} fault(s)"), out
    assert "Traceback" not in err
