"""`hachain chaos` reports: the per-fault record, what a campaign prints while it runs and
at its end, the per-kind table (text), report.json and report.html.

Owns: the `Result` of one fault, the progress line or bar, the failure lines and the
verdict line, and turning a finished campaign (plain dicts, see `chaos_runner.Campaign.report`)
into text, JSON and one self-contained HTML page (inline CSS and SVG, no scripts, no
external assets). Used by the simulated machine's campaign and the QEMU one alike. Must
not: run, inject or judge anything; every verdict is already in the records.
"""

from __future__ import annotations

import contextlib
import datetime
import html
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Result:
    """One fault's outcome. Times are seconds from the campaign's start."""
    index: int
    kind: str
    target: str
    component: str
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    t_fault: float = 0.0
    t_detect: float | None = None
    t_recover: float | None = None
    t_end: float = 0.0
    detect: float | None = None
    converge: float | None = None
    bound: float = 0.0
    # seconds the chain waited for a host CPU during the fault (until it converged),
    # added to `bound` when judging: --qemu, QEMU's most-delayed thread
    # (hachain/simulators/qemu/cpuwait.py); the simulated machine, the time some task of it was
    # stalled on a CPU (its cgroup's PSI, SimMachine.cpu_stalled); None where unknown
    host_wait: float | None = None
    reboot: str | None = None
    reboot_after: float | None = None
    console: str = ""  # the machine's console log
    console_line: int = 0  # its first line written after the fault (1-based)


# --- what the campaign prints ----------------------------------------------------------------

def _clock(seconds: float) -> str:
    """12 s, 3m05s, 1h02m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def failure_lines(r: dict[str, Any]) -> list[str]:
    """What a failed fault shows: what was observed, and where the console log is."""
    head = f"fault #{r['index']} {r['kind']} {r['target']}"
    seen = r.get("problems") or ["(no problem recorded)"]
    out = [f"{head}: {p}" for p in seen]
    if r.get("console"):
        out.append(f"{head}: console log {r['console']}:{r.get('console_line') or 1} "
                   "(from the fault on)")
    return out


class Progress:
    """The campaign's progress on stderr: on a terminal one bar, rewritten in place, with
    the elapsed time and an estimate of the time left; every failure on lines of its own
    above it, so they stay on screen. Elsewhere one line per fault. Never fails: a write
    to a terminal that went away (EIO after SIGHUP) is dropped."""

    def __init__(self, stream: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        try:
            self.tty = self.stream.isatty()
        except (OSError, ValueError):
            self.tty = False
        self.clock = clock
        self.t0 = clock()
        self.t_first: float | None = None  # the first fault's start (boot time excluded)
        self.fails = 0
        self.bar = ""  # the bar as last drawn (a terminal only), to draw again after a note

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def times(self, done: int, n: int) -> str:
        """"elapsed 1m05s, ~2m10s left" (no estimate before the first fault is done)."""
        now = self.clock()
        out = f"elapsed {_clock(now - self.t0)}"
        if self.t_first is not None and 0 < done < n:
            per = (now - self.t_first) / done
            out += f", ~{_clock(per * (n - done))} left"
        return out

    def __call__(self, i: int, n: int, res: Result | None, what: str) -> None:
        if res is None and self.t_first is None:
            self.t_first = self.clock()
        if res is not None and not res.ok:
            self.fails += 1
            lines = "".join(f"chaos: FAIL {line}\n" for line in failure_lines(asdict(res)))
            self._write(("\r\033[K" if self.tty else "") + lines)
        if self.tty:
            width = 30
            done = int(width * i / max(n, 1))
            tail = what or (f"#{res.index} {res.kind} {res.target} "
                            f"{'%.2f s' % res.converge if res.ok and res.converge else 'FAIL'}"
                            if res else "")
            self.bar = (f"[{'#' * done}{'-' * (width - done)}] {i}/{n} "
                        f"fails {self.fails} | {self.times(i, n)} | {tail}")
            self._write("\r\033[K" + self.bar)
            if i == n and res is not None:
                self._write("\n")
                self.bar = ""
        elif res is not None:
            verdict = (f"converged in {res.converge:.2f} s" if res.ok and res.converge
                       is not None else "FAILED (above)" if not res.ok else "ok")
            self._write(f"chaos: {i}/{n} #{res.index} {res.kind} {res.target}: {verdict} "
                        f"| {self.times(i, n)}\n")

    def note(self, line: str) -> None:
        """A line of its own (a warning about the machine): on a terminal above the bar,
        which is drawn again under it, as it was."""
        if self.tty:
            self._write(f"\r\033[K{line}\n{self.bar}")
        else:
            self._write(line + "\n")

    def interrupted(self) -> None:
        """End the bar's line (a signal stopped the campaign)."""
        if self.tty:
            self._write("\n")


def verdict_line(rep: dict[str, Any], html_path: str) -> str:
    """The campaign's last line: PASS or FAIL, with the counts."""
    n, ran = rep["faults"], len(rep["results"])
    bad = rep["failures"]
    counts = (f"{ran - bad} held, {bad} broke an invariant"
              + (f", {n - ran} not run" if ran < n else ""))
    tail = (f"; {rep.get('boots', 0)} boot(s), {_clock(rep.get('duration', 0))}; "
            f"{'partial ' if rep.get('interrupted') else ''}report {html_path}")
    seed = rep["seed"]
    if rep["ok"]:
        return f"chaos: PASS: seed {seed}: all invariants held over {ran} fault(s) ({counts}){tail}"
    if rep.get("interrupted"):
        why = f"interrupted by {rep['interrupted']} after {ran} of {n} fault(s)"
    elif rep["baseline_problems"] and not ran:
        why = "the machine never converged before the first fault"
    elif rep["baseline_problems"]:
        why = f"the campaign stopped after {ran} of {n} fault(s)"
    else:
        why = f"{bad} of {ran} fault(s) broke an invariant"
    return f"chaos: FAIL: seed {seed}: {why} ({counts}){tail}"


# --- the per-kind table, report.json, report.html ---------------------------------------------

def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by nearest rank; None for no values."""
    if not values:
        return None
    s = sorted(values)
    rank = max(1, -(-len(s) * q // 100))  # ceil(n*q/100), at least 1
    return s[int(rank) - 1]


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{kind: {count, failures, p50, p95, max, bound}} over the faults that ran."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        d = out.setdefault(r["kind"], {"count": 0, "failures": 0, "times": [],
                                       "bound": r.get("bound")})
        d["count"] += 1
        if not r["ok"]:
            d["failures"] += 1
        if r.get("converge") is not None:
            d["times"].append(r["converge"])
            if r.get("host_wait") is not None and r["converge"] == max(d["times"]):
                d["waited"] = r["host_wait"]  # of the slowest fault, see Result
    for d in out.values():
        t = d.pop("times")
        d["p50"], d["p95"] = percentile(t, 50), percentile(t, 95)
        d["max"] = max(t) if t else None
    return dict(sorted(out.items()))


def _bound(d: dict[str, Any]) -> str:
    """The bound column: the kind's bound, and what the slowest fault of that kind had
    added to it for the time the chain waited for a host CPU."""
    return _s(d["bound"]) + _waited(d.get("waited"))


def _waited(waited: float | None) -> str:
    """" + W waited" for the time the chain waited for a host CPU, from 0.05 s."""
    return f" + {waited:.2f} waited" if waited and waited >= 0.05 else ""


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def table_text(summary: dict[str, dict[str, Any]]) -> str:
    """The per-kind table as aligned text (also valid Markdown)."""
    head = "| kind | count | failures | p50 s | p95 s | max s | bound s |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, d in summary.items():
        lines.append(f"| {kind} | {d['count']} | {d['failures']} | {_s(d['p50'])} | "
                     f"{_s(d['p95'])} | {_s(d['max'])} | {_bound(d)} |")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str) -> None:
    """report.json, written whole (tmp + rename)."""
    write_whole(path, json.dumps(report, indent=2, sort_keys=True) + "\n")


def write_whole(path: str, text: str) -> None:
    """`text` at `path`, all of it or nothing (tmp + rename; the tmp removed on error)."""
    tmp = path + ".new"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def report_dir_problem(directory: str) -> str | None:
    """None when `--report DIR` exists or can be made and is writable; else the one line
    that says why not (checked before a campaign starts, not after it ran)."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        return f"--report {directory}: cannot create the directory: {e.strerror or e}"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"--report {directory}: not writable"
    return None


def save(directory: str, files: dict[str, str]) -> str | None:
    """Write each report file whole; None, or the one line saying which could not be
    written and why (a full disk, a directory gone): the campaign's table and verdict
    are still printed, and no half-written file is left."""
    for name, text in files.items():
        path = os.path.join(directory, name)
        try:
            write_whole(path, text)
        except OSError as e:
            return f"cannot write {path}: {e.strerror or e}"
    return None


# --- HTML -----------------------------------------------------------------------------------
#
# The page must read without hovering (issue 21.4): a banner with the verdict and what
# was run; on the timeline every fault numbered on its bar, every boot labelled with its
# cause (the campaign's own resets drawn apart from the watchdog's), each fault's bound
# drawn beside its bar; and nothing drawn over anything else: labels that would touch
# go to another lane (`_lanes`), phases are segments of the bar rather than dots on it.

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px}
th{background:#f3f3f3}td.n{text-align:right}td.k{white-space:nowrap}tr.bad td{background:#fde2e2}
.ok{color:#17803d}.bad{color:#b91c1c}code{background:#f3f3f3;padding:0 3px}
.svgbox{overflow-x:auto;border:1px solid #ddd}
.banner{padding:.8em 1.2em;border-radius:6px;margin-bottom:1em;border:2px solid}
.banner.pass{background:#dcfce7;border-color:#16a34a}
.banner.fail{background:#fee2e2;border-color:#dc2626}
.banner .big{font-size:1.9em;font-weight:700;margin-right:.4em}
.banner.pass .big{color:#15803d}.banner.fail .big{color:#b91c1c}
.banner p{margin:.3em 0}
.key{display:inline-block;width:1.6em;height:.8em;vertical-align:middle;border:1px solid #555}
"""

PX_PER_S = 8.0
LEFT = 110  # the row names
CHAR_W = 6.6  # width of a character of the 11 px labels (sans-serif, a little generous)
LANE_H = 13
BAR_H = 12
PHASES = (("#fdba74", "fault to detection"), ("#93c5fd", "detection to recovery"),
          ("#86efac", "recovery to the end of the check (settle)"))
FAILED_BAR = "#fca5a5"
BOOT_STYLE = {  # cause -> (colour, dash pattern, width)
    "watchdog": ("#7c3aed", "", 2.0), "panic": ("#ea580c", "", 2.0),
    "power-cut": ("#be185d", "", 2.0), "reboot": ("#0f766e", "", 2.0),
    "power-on": ("#9ca3af", "2,3", 1.0), "campaign": ("#111827", "8,4", 2.0),
}
BOOT_WORDS = {"watchdog": "watchdog reset", "panic": "panic reboot",
              "power-cut": "after a power cut", "reboot": "reboot", "power-on": "power on"}


def _lanes(items: list[tuple[float, float]], gap: float = 4.0) -> list[int]:
    """A lane for each (x, width), in order, so that no two items of a lane touch."""
    ends: list[float] = []
    out = []
    for x, w in items:
        for i, end in enumerate(ends):
            if x >= end + gap:
                ends[i] = x + w
                out.append(i)
                break
        else:
            ends.append(x + w)
            out.append(len(ends) - 1)
    return out


def _label_lanes(items: list[tuple[float, float]], gap: float = 4.0) -> list[int]:
    """Lanes (0 at the top) for labels that each hang a vertical line down from their
    left end (x, width), in order of x: as `_lanes`, and a line never crosses the text
    of a label above it (a line that starts under a label goes to a lower lane)."""
    out: list[int] = []
    ends: list[float] = []
    for j, (x, w) in enumerate(items):
        floor = 1 + max((out[i] for i in range(j) if items[i][0] - gap <= x
                         <= items[i][0] + items[i][1] + gap), default=-1)
        lane = next((k for k in range(floor, len(ends)) if x >= ends[k] + gap), None)
        if lane is None:
            lane = max(floor, len(ends))
            ends.extend([float("-inf")] * (lane + 1 - len(ends)))
        ends[lane] = x + w
        out.append(lane)
    return out


def boots(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every boot: time, cause, label, whether the campaign forced it, and the fault it
    came in (with the delay from that fault). From `boot_causes` when the campaign wrote
    them; otherwise (older reports, --qemu) from the fault whose span holds the boot."""
    results = report.get("results", [])
    times = report.get("boot_times", [])
    causes = report.get("boot_causes") or []
    out = []
    for i, t in enumerate(times):
        inside = next((r for r in results if r["t_fault"] <= t <= r["t_end"]), None)
        cause = causes[i] if i < len(causes) else None
        if cause is None:
            if i == 0:
                cause = "power-on"
            elif inside is not None and inside.get("reboot"):
                cause = str(inside["reboot"])
            else:
                before = [r for r in results if r["t_end"] <= t and not r["ok"]]
                cause = (f"campaign reset after #{before[-1]['index']}" if before
                         else "power-on")
        forced = cause.startswith("campaign")
        label = f"boot {i + 1}: " + (cause if forced else BOOT_WORDS.get(cause, cause))
        if inside is not None and not forced and i:
            label += f", #{inside['index']} +{t - inside['t_fault']:.1f} s"
        out.append({"t": t, "cause": cause, "forced": forced, "label": label,
                    "fault": None if inside is None or forced else inside["index"]})
    return out


def _timeline_svg(report: dict[str, Any]) -> str:
    """Inline SVG: one row per component; per fault a numbered bar in three phases (to
    the detection, to the recovery, the settle check), red when it broke an invariant,
    with its bound as a thin line below; boots as labelled vertical lines."""
    e = html.escape
    results = report["results"]
    comps: list[str] = ["machine", "init", "restarter", "tickler"]
    for r in results:
        if r["component"] not in comps:
            comps.append(r["component"])
    end = max([r["t_end"] for r in results]
              + [r["t_fault"] + (r.get("bound") or 0) for r in results]
              + [report.get("duration", 1.0), 1.0])
    plot = int(max(900 - LEFT - 20, min(12000, end * PX_PER_S)))
    scale = plot / end

    def x(t: float) -> float:
        return LEFT + max(0.0, t) * scale

    # the boots' labels, in lanes above the rows
    bts = boots(report)
    blabels = [(x(b["t"]) + 3, len(b["label"]) * CHAR_W) for b in bts]
    blane = _label_lanes(blabels)
    width = int(max([LEFT + plot + 20] + [bx + w + 10 for bx, w in blabels]))
    top = 8 + (max(blane) + 1 if blane else 0) * LANE_H + 6
    # the faults' numbers in lanes above their bars, right of any boot line they would
    # touch; their bounds in lanes below
    boot_x = sorted(x(b["t"]) for b in bts)
    rows: dict[str, list[dict[str, Any]]] = {c: [] for c in comps}
    for r in results:
        rows[r["component"]].append(r)
    lanes: dict[int, int] = {}
    label_x: dict[int, float] = {}
    blanes: dict[int, int] = {}
    nlanes: dict[str, int] = {}
    nbounds: dict[str, int] = {}
    for c, rs in rows.items():
        spans = []
        for r in rs:
            lx = x(r["t_fault"])
            w = len(f"#{r['index']}") * CHAR_W
            for bx in boot_x:
                if lx - 2 <= bx <= lx + w + 1:
                    lx = bx + 3
            label_x[r["index"]] = lx
            spans.append((lx, w))
        got = _lanes(spans, 3.0)
        bgot = _lanes([(x(r["t_fault"]), (r.get("bound") or 0) * scale) for r in rs], 2.0)
        for r, lane, blane_ in zip(rs, got, bgot, strict=True):
            lanes[r["index"]] = lane
            blanes[r["index"]] = blane_
        nlanes[c] = max(got) + 1 if got else 1
        nbounds[c] = max(bgot) + 1 if bgot else 1
    ytop: dict[str, float] = {}
    rowh: dict[str, float] = {}
    y = float(top)
    for c in comps:
        ytop[c] = y
        rowh[c] = 4 + nlanes[c] * LANE_H + BAR_H + 4 + nbounds[c] * 4 + 4
        y += rowh[c]
    axis_y = y + 6
    height = axis_y + 22
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height:.0f}" '
           'font-size="11" font-family="sans-serif">']
    for i, c in enumerate(comps):
        h = rowh[c]
        out.append(f'<rect x="0" y="{ytop[c]:.1f}" width="{width}" height="{h:.1f}" '
                   f'fill="{"#f6f6f6" if i % 2 else "#fff"}"/>')
        bar_y = ytop[c] + 4 + nlanes[c] * LANE_H
        out.append(f'<text x="4" y="{bar_y + BAR_H - 2:.1f}" font-weight="bold">{e(c)}</text>')
    for b, (bx, _w), lane in zip(bts, blabels, blane, strict=True):
        key = "campaign" if b["forced"] else b["cause"]
        color, dash, sw = BOOT_STYLE.get(key, ("#555", "1,2", 1.0))
        ly = 8 + lane * LANE_H + 9
        out.append(f'<line x1="{bx - 3:.1f}" y1="{ly - 9:.1f}" x2="{bx - 3:.1f}" '
                   f'y2="{axis_y:.1f}" stroke="{color}" stroke-width="{sw}"'
                   + (f' stroke-dasharray="{dash}"' if dash else "") + ' opacity=".8"/>')
        out.append(f'<text x="{bx:.1f}" y="{ly:.1f}" fill="{color}">{e(b["label"])}</text>')
    for r in results:
        c = r["component"]
        bar_y = ytop[c] + 4 + nlanes[c] * LANE_H
        t0, t1 = r["t_fault"], r["t_end"]
        marks = [t0] + [t for t in (r.get("t_detect"), r.get("t_recover")) if t is not None]
        marks = [max(t0, min(t, t1)) for t in marks] + [t1]
        tip = e(f"#{r['index']} {r['kind']} {r['target']}")
        out.append(f"<g><title>{tip}</title>")
        if r["ok"]:
            phases = PHASES if len(marks) == 4 else PHASES[::2]
            for (color, _what), a, b in zip(phases, marks, marks[1:], strict=False):
                out.append(f'<rect x="{x(a):.1f}" y="{bar_y:.1f}" '
                           f'width="{max(0.5, (b - a) * scale):.1f}" height="{BAR_H}" '
                           f'fill="{color}"/>')
        else:
            out.append(f'<rect x="{x(t0):.1f}" y="{bar_y:.1f}" '
                       f'width="{max(2.0, (t1 - t0) * scale):.1f}" height="{BAR_H}" '
                       f'fill="{FAILED_BAR}" stroke="#b91c1c" stroke-width="1.5"/>')
        bar_w = max(2.0, (t1 - t0) * scale)
        out.append(f'<rect x="{x(t0):.1f}" y="{bar_y:.1f}" width="{bar_w:.1f}" '
                   f'height="{BAR_H}" fill="none" stroke="#444" stroke-width=".5"/>')
        # the bound: a thin line from the fault to where it runs out, with an end tick
        if r.get("bound"):
            bx1 = x(t0 + r["bound"])
            by = bar_y + BAR_H + 4 + blanes[r["index"]] * 4
            out.append(f'<line x1="{x(t0):.1f}" y1="{by:.1f}" x2="{bx1:.1f}" y2="{by:.1f}" '
                       'stroke="#6b7280" stroke-width="1"/>')
            out.append(f'<line x1="{bx1:.1f}" y1="{by - 2:.1f}" x2="{bx1:.1f}" '
                       f'y2="{by + 2:.1f}" stroke="#6b7280" stroke-width="1"/>')
        fy = ytop[c] + 4 + lanes[r["index"]] * LANE_H + 10
        out.append(f'<text x="{label_x[r["index"]]:.1f}" y="{fy:.1f}" font-weight="bold" '
                   f'fill="{"#222" if r["ok"] else "#b91c1c"}">#{r["index"]}</text>')
        out.append("</g>")
    out.append(f'<line x1="{LEFT}" y1="{axis_y:.1f}" x2="{width - 10}" y2="{axis_y:.1f}" '
               'stroke="#333"/>')
    step = next(float(s) for s in (5, 10, 20, 30, 60, 120, 300, 600, 3600, 86400)
                if s * scale >= 60 or s == 86400)
    t = 0.0
    while t <= end:
        out.append(f'<line x1="{x(t):.1f}" y1="{axis_y:.1f}" x2="{x(t):.1f}" '
                   f'y2="{axis_y + 4:.1f}" stroke="#333"/>')
        out.append(f'<text x="{x(t):.1f}" y="{axis_y + 16:.1f}" text-anchor="middle">'
                   f'{t:g} s</text>')
        t += step
    out.append("</svg>")
    return "\n".join(out)


def _date(wall: Any) -> str:
    if not isinstance(wall, (int, float)):
        return "unknown date"
    return datetime.datetime.fromtimestamp(wall, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")


def _banner(report: dict[str, Any]) -> str:
    """The verdict, what was run, and what was not."""
    e = html.escape
    ok = report["ok"]
    ran, n = len(report["results"]), report.get("faults", len(report["results"]))
    bad = report.get("failures", 0)
    if ok:
        what = f"all invariants held over {ran} fault(s)"
    elif report.get("interrupted"):
        what = (f"interrupted by {report['interrupted']} after {ran} of {n} faults: "
                "partial report")
    elif report.get("baseline_problems") and not ran:
        what = "the machine never converged before the first fault"
    else:
        what = f"{bad} of {ran} fault(s) broke an invariant"
    counts = f"{ran - bad} held, {bad} broke an invariant" + (
        f", {n - ran} not run" if ran < n else "")
    bts = boots(report)
    by: dict[str, int] = {}
    for b in bts[1:]:
        key = "campaign reset" if b["forced"] else BOOT_WORDS.get(b["cause"], b["cause"])
        by[key] = by.get(key, 0) + 1
    reboots = ", ".join(f"{v} {k}" for k, v in sorted(by.items())) or "none"
    drawn: dict[str, int] = {}
    for r in report["results"]:
        drawn[r["kind"]] = drawn.get(r["kind"], 0) + 1
    not_drawn = [k for k in report.get("kinds", []) if k not in drawn]
    skipped = report.get("skipped", {})
    nd = ", ".join([f"<code>{e(k)}</code> (not drawn by this seed)" for k in not_drawn]
                   + [f"<code>{e(k)}</code> (skipped: {e(v)})" for k, v in skipped.items()])
    machine = report.get("machine", "simulated machine")
    return f"""<div class="banner {'pass' if ok else 'fail'}">
<h1><span class="big">{'PASS' if ok else 'FAIL'}</span>{e(what)}</h1>
<p>{e(counts)}. Seed <b>{e(str(report['seed']))}</b> · hachain {e(str(report.get('version',
'?')))} · {e(_date(report.get('started_wall')))} · {e(str(machine))} ·
{report.get('duration', 0):.0f} s · {len(bts)} boot(s); reboots: {e(reboots)}</p>
<p>Kinds drawn: {', '.join(f'<code>{e(k)}</code> ×{v}' for k, v in sorted(drawn.items()))
or 'none'}</p>
<p>Kinds not drawn: {nd or 'none'}</p>
<p>Configuration <code>{e(str(report.get('config', '')))}</code></p>
</div>"""


def _fault_rows(report: dict[str, Any]) -> str:
    """One table row per fault: bound, margin, the reset and its delay, what broke."""
    e = html.escape
    rows = []
    for r in report["results"]:
        conv, bound, waited = r.get("converge"), r.get("bound"), r.get("host_wait")
        limit = None if bound is None else bound + (waited or 0.0)
        margin = None if conv is None or limit is None else limit - conv
        reset = ""
        if r.get("reboot"):
            reset = e(BOOT_WORDS.get(str(r["reboot"]), str(r["reboot"])))
            if r.get("reboot_after") is not None:
                reset += f", {r['reboot_after']:.2f} s after the fault"
        seen = e("; ".join(r["problems"]))
        if not r["ok"] and r.get("console"):
            seen += f'<br>console log <code>{e(r["console"])}:{r.get("console_line", 1)}</code>'
        rows.append(
            f'<tr class="{"" if r["ok"] else "bad"}"><td class="n">#{r["index"]}</td>'
            f'<td class="k">{e(r["kind"])}</td><td class="k">{e(r["target"])}</td>'
            f'<td>{"held" if r["ok"] else "<b>broke</b>"}</td>'
            f'<td class="n">{_s(r.get("detect"))}</td><td class="n">{_s(conv)}</td>'
            f'<td class="n">{_s(bound)}{_waited(waited)}</td>'
            f'<td class="n{" bad" if margin is not None and margin < 0 else ""}">'
            f'{_s(margin)}</td><td>{reset}</td><td>{seen}</td></tr>')
    return "".join(rows)


def html_page(report: dict[str, Any]) -> str:
    """The whole report as one HTML document."""
    e = html.escape
    summ = report["summary"]
    rows = "".join(
        f'<tr class="{"bad" if d["failures"] else ""}"><td>{e(k)}</td><td class="n">'
        f'{d["count"]}</td><td class="n">{d["failures"]}</td><td class="n">{_s(d["p50"])}</td>'
        f'<td class="n">{_s(d["p95"])}</td><td class="n">{_s(d["max"])}</td>'
        f'<td class="n">{e(_bound(d))}</td></tr>' for k, d in summ.items())
    repro = ""
    if report.get("repro"):
        repro = (f'<h2>Reproduce</h2><p><code>{e(report["repro"]["command"])}</code></p>'
                 f'<p>{e(report["repro"]["note"])}</p>')
    base = ""
    if report.get("baseline_problems"):
        base = ("<h2>Before the first fault / after a reset</h2><ul>"
                + "".join(f"<li>{e(p)}</li>" for p in report["baseline_problems"]) + "</ul>")
    key = " ".join(f'<span class="key" style="background:{c}"></span> {e(w)}'
                   for c, w in PHASES)
    boot_key = " ".join(
        f'<svg width="26" height="12"><line x1="2" y1="6" x2="24" y2="6" stroke="{c}" '
        f'stroke-width="{w}"' + (f' stroke-dasharray="{d}"' if d else "") + f'/></svg> '
        f'{e(BOOT_WORDS.get(k, "campaign reset (after a broken invariant)"))}'
        for k, (c, d, w) in BOOT_STYLE.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hachain chaos report (seed {report['seed']})
</title><style>{_CSS}</style></head><body>
{_banner(report)}
{repro}{base}
<h2>Timeline</h2>
<p>One row per component. Each fault is a bar numbered as in the table below, in three
phases: {key}. A bar that broke an invariant is <span class="key" style="background:
{FAILED_BAR};border-color:#b91c1c"></span> red. The grey line under a bar runs to the
fault's bound. Boots are vertical lines labelled with their cause: {boot_key}.</p>
<div class="svgbox">{_timeline_svg(report)}</div>
<h2>Faults</h2>
<p>Margin: the bound minus the time to converge. Reset: the reboot the fault caused and
its delay from the fault.</p>
<table><tr><th>#</th><th>kind</th><th>target</th><th>invariants</th><th>detect s</th>
<th>converge s</th><th>bound s</th><th>margin s</th><th>reset</th><th>what broke</th></tr>
{_fault_rows(report)}</table>
<h2>Time to converge per fault kind</h2>
<table><tr><th>kind</th><th>count</th><th>failures</th><th>p50 s</th><th>p95 s</th>
<th>max s</th><th>bound s</th></tr>{rows}</table>
</body></html>
"""


def write_html(report: dict[str, Any], path: str) -> None:
    """report.html, written whole."""
    write_whole(path, html_page(report))


def save_reports(report: dict[str, Any], directory: str) -> str | None:
    """report.json and report.html in `directory` (see `save`)."""
    return save(directory, {"report.json": json.dumps(report, indent=2, sort_keys=True) + "\n",
                            "report.html": html_page(report)})
