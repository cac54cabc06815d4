"""What `hachain chaos` shows (issue 21.3, 21.4): the progress bar and its failure lines,
the verdict line, the reproduction's own report directory, a partial report when a
signal stops the campaign (and no tmpfs left mounted), and the HTML report as a browser
draws it (headless Chromium).

The campaigns are real, on the simulated machine (root, unshare(1), cgroup v2), and
short: a few faults of quick kinds with fixed seeds.
"""

from __future__ import annotations

import argparse
import fcntl
import html
import io
import json
import os
import pathlib
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import zlib
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import pytest

from hachain import cli
from hachain.simulators import chaos, chaos_kinds, chaos_report, chaos_runner
from tests.conftest import reap, wait_until
from tests.test_chaos import PY, needs_machine

# --- the progress printer and the verdict line (no machine) ----------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _screen(text: str) -> list[str]:
    """What a terminal shows for `text`: per line, what follows the last "\\r\\033[K"."""
    return [line.rsplit("\r\033[K", 1)[-1] for line in text.split("\n")]


def _res(i: int, ok: bool) -> chaos_report.Result:
    r = chaos_report.Result(i, "kill-service", "worker", "worker", ok=ok, bound=7.0,
                     console="/m/console.log", console_line=40 + i)
    if ok:
        r.converge = 0.5
    else:
        r.problems = ["worker: failed (expected ready)"]
    return r


def test_a_failure_stays_on_screen_above_a_bar_with_elapsed_and_left() -> None:
    now = [100.0]
    out = _Tty()
    p = chaos_report.Progress(out, clock=lambda: now[0])
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


def test_a_note_about_the_machine_goes_above_the_bar_and_the_bar_stays() -> None:
    """A warning the campaign prints while a fault runs (a bad admin.json it ignores)
    is a line of its own above the bar, and the bar is drawn again under it: before, the
    warning cleared the bar until the next fault redrew it."""
    out = _Tty()
    p = chaos_report.Progress(out)
    p(0, 3, None, "kill-service worker")
    p.note("chaos: /p/admin.json: not JSON; ignored")
    screen = _screen(out.getvalue())
    assert screen[-2] == "chaos: /p/admin.json: not JSON; ignored"
    assert screen[-1].startswith("[") and "0/3" in screen[-1] and "kill-service worker" in \
        screen[-1]
    plain = io.StringIO()
    q = chaos_report.Progress(plain)
    q.note("chaos: a warning")
    assert plain.getvalue() == "chaos: a warning\n"


def test_progress_without_a_terminal_is_one_line_per_fault() -> None:
    out = io.StringIO()
    p = chaos_report.Progress(out)
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
    p = chaos_report.Progress(Gone())
    p(0, 1, None, "x")
    p(1, 1, _res(0, False), "")  # nothing raised: the campaign cleans up and reports


def _rep(**kw: Any) -> dict[str, Any]:
    rep = {"seed": 4, "faults": 5, "results": [{"ok": True}] * 5, "failures": 0, "ok": True,
           "baseline_problems": [], "boots": 2, "duration": 75.0, "interrupted": None}
    rep.update(kw)
    return rep


def test_the_verdict_is_one_pass_or_fail_line_with_the_counts() -> None:
    line = chaos_report.verdict_line(_rep(), "r/report.html")
    assert line == ("chaos: PASS: seed 4: all invariants held over 5 fault(s) (5 held, 0 broke "
                    "an invariant); 2 boot(s), 1m15s; report r/report.html")
    line = chaos_report.verdict_line(_rep(ok=False, failures=2), "r/report.html")
    assert line.startswith("chaos: FAIL: seed 4: 2 of 5 fault(s) broke an invariant "
                           "(3 held, 2 broke an invariant)")
    line = chaos_report.verdict_line(_rep(ok=False, interrupted="SIGINT", results=[{"ok": True}]),
                              "r/report.html")
    assert line.startswith("chaos: FAIL: seed 4: interrupted by SIGINT after 1 of 5 fault(s) "
                           "(1 held, 0 broke an invariant, 4 not run)")
    assert "partial report r/report.html" in line
    for rep in (_rep(), _rep(ok=False, failures=1)):
        assert "\n" not in chaos_report.verdict_line(rep, "x")


# --- real campaigns ------------------------------------------------------------------------


@pytest.fixture
def short_tmp() -> Iterator[pathlib.Path]:
    """A short temporary directory (sun_path is 108 bytes); mounts checked on the way out."""
    d = tempfile.mkdtemp(prefix="hco-", dir="/tmp")
    yield pathlib.Path(d)
    for point in chaos_runner.campaign_mounts(d):  # only after a failed test; never silently
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
    bound = 10 + chaos_kinds.BOOT_BUDGET + 10 + chaos_kinds.convergence_bound("stop-service", cfg) * 1.5 + 5
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
            wait_until(lambda: chaos_runner.campaign_mounts(str(work)), 10, "the tmpfs mounts")
        (os.killpg if group else os.kill)(proc.pid, sig)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:  # only when the test already failed
            os.killpg(proc.pid, signal.SIGKILL)
            reap(proc, "the campaign")
    err, out = errf.read_text(), outf.read_text()
    assert rc == 1, err
    name = signal.Signals(sig).name
    assert chaos_runner.campaign_mounts(str(short_tmp)) == [], err + out
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


# --- where the report goes: a directory that cannot be made, a full disk -----------------

@pytest.mark.parametrize("mode", [[], ["--qemu"], ["--cluster"]], ids=["sim", "qemu", "cluster"])
def test_a_report_directory_that_cannot_be_made_is_one_line_before_anything_runs(
        tmp_path: Any, mode: list[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    report, work = blocker / "rep", tmp_path / "w"
    out = subprocess.run([sys.executable, "-m", "hachain.cli", "chaos", *mode, "--faults", "1",
                          "--report", str(report), "--dir", str(work)],
                         capture_output=True, text=True, timeout=60)
    who = "hachain chaos --cluster" if mode == ["--cluster"] else "hachain chaos"
    assert out.returncode == 2, out.stderr
    assert out.stderr == (f"{who}: --report {report}: cannot create the directory: "
                          "Not a directory\n")
    assert not work.exists() and blocker.read_text() == "not a directory\n"



@pytest.mark.parametrize("mode", [[], ["--qemu"]], ids=["sim", "qemu"])
def test_a_work_directory_that_cannot_be_made_is_one_line(tmp_path: Any, mode: list[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    out = subprocess.run([sys.executable, "-m", "hachain.cli", "chaos", *mode, "--faults", "1",
                          "--report", str(tmp_path / "rep"), "--dir", str(blocker / "w")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr == (f"hachain chaos: --dir {blocker / 'w'}: cannot create the "
                          "directory: Not a directory\n")


def test_a_report_file_that_cannot_be_written_leaves_no_half_file(tmp_path: Any) -> None:
    """save() says which file and why in one line, and leaves neither a .new nor a torn
    file; the files before it stay written."""
    d = tmp_path / "rep"
    d.mkdir()
    (d / "report.html").mkdir()  # the rename onto it fails: EISDIR
    err = chaos_report.save(str(d), {"report.json": "{}\n", "report.html": "<p>x</p>"})
    assert err is not None and err.startswith(f"cannot write {d / 'report.html'}: "), err
    assert sorted(os.listdir(d)) == ["report.html", "report.json"]
    assert (d / "report.json").read_text() == "{}\n"


@needs_machine
@pytest.mark.slow
def test_a_full_disk_under_the_report_is_said_and_the_verdict_still_printed(
        short_tmp: Any) -> None:
    rep = short_tmp / "rep"
    rep.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "hco-full", str(rep)],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    try:
        with open(rep / "filler", "wb", buffering=0) as f:  # fill it: the report meets ENOSPC
            with pytest.raises(OSError):
                while True:
                    f.write(b"x" * 512)
        out = subprocess.run([sys.executable, "-m", "hachain.cli", "chaos", "--faults", "1",
                              "--seed", "3", "--kinds", "kill-service", "--no-shrink",
                              "--report", str(rep), "--dir", str(short_tmp / "w")],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 1, out.stderr
        lines = [ln for ln in out.stderr.splitlines() if "cannot write" in ln]
        assert lines == [f"hachain chaos: cannot write {rep / 'report.json'}: "
                         "No space left on device"], out.stderr
        assert "Traceback" not in out.stderr
        assert sorted(os.listdir(rep)) == ["filler"]  # nothing torn, no .new left
        verdict = out.stdout.splitlines()[-1]
        assert verdict.startswith("chaos: PASS: seed 3: all invariants held over 1 fault(s)")
        assert verdict.endswith("report not written (see above)"), verdict
    finally:
        subprocess.run(["umount", "-l", str(rep)], capture_output=True, timeout=10)


# --- the HTML report (issue 21.4) -----------------------------------------------------------

_TEXT = re.compile(r'<text x="([\d.]+)" y="([\d.]+)"[^>]*>([^<]*)</text>')
_LINE = re.compile(r'<line x1="([\d.]+)" y1="([\d.]+)" x2="([\d.]+)" y2="([\d.]+)"[^>]*'
                   r'stroke-width="2\.0"')


def _boxes(svg: str) -> list[tuple[str, float, float, float, float]]:
    """(text, x0, x1, y0, y1) of every label above the time axis (the row names and axis
    ticks are laid out by a fixed grid)."""
    axis = max(float(m.group(2)) for m in _TEXT.finditer(svg))
    out = []
    for m in _TEXT.finditer(svg):
        x, y, text = float(m.group(1)), float(m.group(2)), html.unescape(m.group(3))
        if y >= axis or x < chaos_report.LEFT:
            continue
        out.append((text, x, x + len(text) * chaos_report.CHAR_W, y - 9, y + 2))
    return out


def _overlaps(svg: str) -> list[str]:
    """Labels that touch each other, and boot lines that cross a label's text."""
    boxes = _boxes(svg)
    out = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a[1] < b[2] and b[1] < a[2] and a[3] < b[4] and b[3] < a[4]:
                out.append(f"{a[0]!r} over {b[0]!r}")
    for m in _LINE.finditer(svg):
        x, y1, y2 = float(m.group(1)), float(m.group(2)), float(m.group(4))
        for t in boxes:
            if t[1] < x < t[2] and y1 < t[4] and t[3] < y2:
                out.append(f"a boot line at x={x} through {t[0]!r}")
    return out


def _busy_report() -> dict[str, Any]:
    """Many short faults on one component, boots close together, one failure."""
    results = []
    t = 2.0
    for i in range(30):
        kind = "hang-layer" if i % 5 == 0 else "kill-service"
        r = {"index": i, "kind": kind, "target": "db" if kind == "kill-service" else "init",
             "component": "db" if kind == "kill-service" else "init", "ok": i != 7,
             "problems": [] if i != 7 else ["db: failed (expected ready)"], "t_fault": t,
             "t_detect": t + 0.1, "t_recover": t + 0.3, "t_end": t + 0.8, "detect": 0.1,
             "converge": 0.3, "bound": 7.0 if kind == "kill-service" else 14.25,
             "reboot": "watchdog" if kind == "hang-layer" else None,
             "reboot_after": 0.1 if kind == "hang-layer" else None,
             "console": "/m/console.log", "console_line": 10 * i}
        results.append(r)
        t += 0.9
    boot_times = [0.5] + [r["t_fault"] + 0.1 for r in results if r["reboot"]] + [9.0]
    boot_causes = ["power-on"] + ["watchdog"] * 6 + ["campaign reset after #7"]
    order = sorted(range(len(boot_times)), key=lambda i: boot_times[i])
    return {"seed": 9, "faults": 30, "kinds": ["hang-layer", "kill-init", "kill-service"],
            "skipped": {"clock-step": "not here"}, "results": results, "ok": False,
            "failures": 1, "summary": chaos_report.summarize(results), "baseline_problems": [],
            "boot_times": [boot_times[i] for i in order],
            "boot_causes": [boot_causes[i] for i in order], "boots": 8, "duration": 30.0,
            "version": "9.9", "started_wall": 1800000000.0, "interrupted": None,
            "config": "x.toml"}


def test_the_page_explains_itself_and_nothing_overlaps() -> None:
    page = chaos_report.html_page(_busy_report())
    banner = page.split('<div class="banner fail">', 1)[1].split("</div>", 1)[0]
    assert "FAIL" in banner and "1 of 30 fault(s) broke an invariant" in banner
    assert "Seed <b>9</b>" in banner and "hachain 9.9" in banner
    assert "2027-01-15 08:00 UTC" in banner
    assert "<code>kill-service</code> ×24" in banner and "<code>hang-layer</code> ×6" in banner
    assert "<code>kill-init</code> (not drawn by this seed)" in banner
    assert "<code>clock-step</code> (skipped: not here)" in banner
    svg = page[page.index('<div class="svgbox">'):page.index("</svg>", page.index(
        '<div class="svgbox">'))]
    for i in range(30):  # every fault numbered on its bar
        assert f">#{i}</text>" in svg
    assert "boot 2: watchdog reset, #0 +0.1 s" in svg  # the cause and the delay
    assert re.search(r">boot \d+: campaign reset after #7</text>", svg)  # drawn apart:
    assert 'stroke="#111827" stroke-width="2.0" stroke-dasharray="8,4"' in svg  # dashed
    assert _overlaps(svg) == []
    # the faults table: bound, margin, the reset and its delay, the console log
    assert "<td class=\"n\">7.00</td><td class=\"n\">6.70</td>" in page
    assert "watchdog reset, 0.10 s after the fault" in page
    assert "console log <code>/m/console.log:70</code>" in page


def test_the_overlap_check_finds_an_overlap() -> None:
    svg = ('<text x="200" y="20">boot 2: watchdog reset</text>'
           '<text x="210" y="22">#4</text><text x="0" y="99">0 s</text>')
    assert _overlaps(svg) == ["'boot 2: watchdog reset' over '#4'"]


def _png_pixels(path: pathlib.Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, head = 8, b"", b""
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            head = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype = struct.unpack(">IIBB", head[:10])
    assert depth == 8 and ctype in (2, 6), (depth, ctype)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif f == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + (left + prev[i]) // 2) & 0xFF
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return w, h, rows


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@needs_machine
@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed "
                    "(Debian package chromium; scripts/setup.sh --test installs it)")
def test_a_real_report_renders_in_headless_chromium(short_tmp: Any) -> None:
    """A real campaign (a watchdog reset, a broken invariant, the campaign's reset after
    it) rendered by a browser: the screenshot exists, has the page's size, is not blank,
    and opens with the red FAIL banner."""
    work = short_tmp / "work"
    work.mkdir()
    text = chaos.campaign_config_text(PY, str(work / chaos.SERVICE_FILE)) + \
        'restart = "never"\n'
    cfg = short_tmp / "never.toml"
    cfg.write_text(text)
    chaos._campaign_setup(argparse.Namespace(config=None), str(work))  # the service program
    faults = [chaos.Fault(0, "hang-layer", "restarter"), chaos.Fault(1, "kill-service", "worker"),
              chaos.Fault(2, "kill-service", "api")]
    rep = chaos_runner.run_campaign(str(cfg), str(work / "c"), 1, faults,
                             ["hang-layer", "kill-service"], {}, False, None)
    assert [r["ok"] for r in rep["results"]] == [True, False, True], rep["results"]
    assert rep["boot_causes"] == ["power-on", "watchdog", "campaign reset after #1"]
    page = short_tmp / "report.html"
    chaos_report.write_html(rep, str(page))
    text = page.read_text()
    assert "boot 2: watchdog reset, #0 +" in text and "boot 3: campaign reset after #1" in text
    svg = text[text.index('<div class="svgbox">'):]
    assert _overlaps(svg[:svg.index("</svg>")]) == []
    shot, profile = short_tmp / "shot.png", short_tmp / "profile"
    profile.mkdir()
    r = subprocess.run(
        [_chromium() or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
         "--window-size=900,600", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    w, h, rows = _png_pixels(shot)
    assert (w, h) == (900, 600)
    bpp = len(rows[0]) // w
    px = [row[i:i + 3] for row in rows[::4] for i in range(0, len(row), bpp * 4)]
    white = sum(1 for p in px if p == b"\xff\xff\xff")
    assert white < 0.95 * len(px), "the screenshot is (almost) blank"
    assert len(set(px)) > 20, "too few colours for a page with a timeline"
    # the FAIL banner (#fee2e2 background) fills much of the top of the page
    top = [row[i:i + 3] for row in rows[40:120:4] for i in range(0, len(row), bpp * 4)]
    assert sum(1 for p in top if p == b"\xfe\xe2\xe2") > 0.5 * len(top)


@needs_machine
@pytest.mark.slow
def test_closing_the_terminal_mid_campaign_leaves_a_report_and_no_mount(short_tmp: Any) -> None:
    """The campaign on a real pseudo-terminal (its controlling terminal, the progress bar
    drawn on it); the terminal is closed mid-campaign: the kernel hangs it up (SIGHUP to
    the foreground group, later writes fail with EIO). The report is still written and
    no tmpfs stays mounted."""
    work, report = short_tmp / "work", short_tmp / "report"
    cfg = chaos.config.parse(chaos.campaign_config_text(PY, "/x/svc.py"))
    bound = 10 + chaos_kinds.BOOT_BUDGET + 10 + chaos_kinds.convergence_bound("stop-service", cfg) * 1.5 + 5
    master, slave = os.openpty()

    def controlling_tty() -> None:  # runs in the child after setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from hachain.cli import main; "
             "sys.exit(main(sys.argv[1:]))", "chaos", "--faults", "40", "--seed", "2",
             "--kinds", "kill-service,stop-service", "--no-shrink", "--report", str(report),
             "--dir", str(work)], stdin=slave, stdout=slave, stderr=slave,
            start_new_session=True, preexec_fn=controlling_tty)
    finally:
        os.close(slave)
    seen = b""
    try:
        def bar_moved() -> bool:
            nonlocal seen
            while select.select([master], [], [], 0.05)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    return False
                if not chunk:
                    return False
                seen += chunk
            return b"] 2/40 fails" in seen
        wait_until(bar_moved, bound, "the progress bar at 2/40 on the terminal")
        assert b"elapsed" in seen and b"left" in seen
        os.close(master)  # the terminal goes away
        master = -1
        rc = proc.wait(60)
    finally:
        if master >= 0:
            os.close(master)
        if proc.poll() is None:  # only when the test already failed
            os.killpg(proc.pid, signal.SIGKILL)
            reap(proc, "the campaign")
    assert rc == 1
    assert chaos_runner.campaign_mounts(str(short_tmp)) == []
    rep = json.loads((report / "report.json").read_text())
    assert rep["interrupted"] == "SIGHUP" and 2 <= len(rep["results"]) < 40
    assert (report / "report.html").exists()


def test_a_qemu_fault_shows_the_host_wait_added_to_its_bound() -> None:
    """--qemu: a fault judged against its bound plus QEMU's run-queue wait (cpuwait.py)
    says so in the text table and the page, and its margin counts the wait."""
    slow = chaos_report.Result(0, "kernel-crash", "kernel", "machine", bound=40.0,
                               converge=42.95, host_wait=16.8, reboot="panic")
    quick = chaos_report.Result(1, "kernel-crash", "kernel", "machine", bound=40.0,
                                converge=20.0, host_wait=0.5, reboot="panic")
    results = [asdict(slow), asdict(quick)]
    summary = chaos_report.summarize(results)
    assert summary["kernel-crash"]["waited"] == 16.8  # the slowest fault's wait
    assert "| 42.95 | 40.00 + 16.80 waited |" in chaos_report.table_text(summary)
    rows = chaos_report._fault_rows({"results": results})
    assert '<td class="n">40.00 + 16.80 waited</td><td class="n">13.85</td>' in rows
    # the simulated machine has no host wait: its table is as before
    sim = chaos_report.summarize([asdict(_res(0, True))])
    assert chaos_report.table_text(sim).endswith("| 0.50 | 7.00 |")
