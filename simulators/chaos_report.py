"""`hachain chaos` reports: the per-kind table (text), report.json and report.html.

Owns: turning a finished campaign (plain dicts, see `chaos.Campaign.report`) into text,
JSON and one self-contained HTML page (inline CSS and SVG, no scripts, no external
assets). Must not: run, inject or judge anything; every verdict is already in the dicts.
"""

from __future__ import annotations

import html
import json
import os
from typing import Any


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
    for d in out.values():
        t = d.pop("times")
        d["p50"], d["p95"] = percentile(t, 50), percentile(t, 95)
        d["max"] = max(t) if t else None
    return dict(sorted(out.items()))


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def table_text(summary: dict[str, dict[str, Any]]) -> str:
    """The per-kind table as aligned text (also valid Markdown)."""
    head = "| kind | count | failures | p50 s | p95 s | max s | bound s |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, d in summary.items():
        lines.append(f"| {kind} | {d['count']} | {d['failures']} | {_s(d['p50'])} | "
                     f"{_s(d['p95'])} | {_s(d['max'])} | {_s(d['bound'])} |")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str) -> None:
    """report.json, written whole (tmp + rename)."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


# --- HTML -----------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px}
th{background:#f3f3f3}td.n{text-align:right}tr.bad td{background:#fde2e2}
.ok{color:#17803d}.bad{color:#b91c1c}code{background:#f3f3f3;padding:0 3px}
.svgbox{overflow-x:auto;border:1px solid #ddd}
"""

ROW_H = 22
LEFT = 110


def _timeline_svg(report: dict[str, Any]) -> str:
    """Inline SVG: one row per component; per fault a bar from the fault (red) through the
    detection (orange) to the recovery (green); machine boots as grey vertical lines."""
    results = report["results"]
    comps: list[str] = ["machine", "init", "restarter", "tickler"]
    for r in results:
        if r["component"] not in comps:
            comps.append(r["component"])
    end = max([r["t_end"] for r in results] + [report.get("duration", 1.0), 1.0])
    width = max(900, min(6000, int(end * 6)))
    scale = (width - LEFT - 10) / end
    height = ROW_H * len(comps) + 40
    row = {c: i for i, c in enumerate(comps)}

    def x(t: float) -> float:
        return LEFT + max(0.0, t) * scale

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-size="11" font-family="sans-serif">']
    for c, i in row.items():
        y = 10 + i * ROW_H
        out.append(f'<rect x="0" y="{y}" width="{width}" height="{ROW_H}" '
                   f'fill="{"#fafafa" if i % 2 else "#fff"}"/>')
        out.append(f'<text x="4" y="{y + 15}">{html.escape(c)}</text>')
    for b in report.get("boot_times", []):
        out.append(f'<line x1="{x(b):.1f}" y1="10" x2="{x(b):.1f}" y2="{height - 30}" '
                   f'stroke="#999" stroke-dasharray="3,2"><title>boot at {b:.2f} s</title>'
                   '</line>')
    for r in results:
        y = 10 + row[r["component"]] * ROW_H
        t0, t1 = r["t_fault"], r["t_end"]
        color = "#86efac" if r["ok"] else "#fca5a5"
        tip = html.escape(f"#{r['index']} {r['kind']} {r['target']}: "
                          + (f"converged in {r['converge']:.2f} s" if r.get("converge")
                             is not None else "did not converge")
                          + ("" if r["ok"] else " — " + "; ".join(r["problems"][:3])))
        out.append(f'<g><title>{tip}</title>')
        out.append(f'<rect x="{x(t0):.1f}" y="{y + 5}" width="{max(2.0, (t1 - t0) * scale):.1f}" '
                   f'height="{ROW_H - 10}" fill="{color}" stroke="#555" stroke-width=".4"/>')
        out.append(f'<circle cx="{x(t0):.1f}" cy="{y + ROW_H / 2}" r="3" fill="#dc2626"/>')
        if r.get("t_detect") is not None:
            out.append(f'<circle cx="{x(r["t_detect"]):.1f}" cy="{y + ROW_H / 2}" r="3" '
                       'fill="#f59e0b"/>')
        if r.get("t_recover") is not None:
            out.append(f'<circle cx="{x(r["t_recover"]):.1f}" cy="{y + ROW_H / 2}" r="3" '
                       'fill="#16a34a"/>')
        out.append('</g>')
    axis_y = height - 22
    out.append(f'<line x1="{LEFT}" y1="{axis_y}" x2="{width - 10}" y2="{axis_y}" stroke="#333"/>')
    step = 10 if end < 200 else 60
    t = 0
    while t <= end:
        out.append(f'<text x="{x(t):.1f}" y="{axis_y + 14}" text-anchor="middle">{t} s</text>')
        t += step
    out.append('</svg>')
    return "\n".join(out)


def html_page(report: dict[str, Any]) -> str:
    """The whole report as one HTML document."""
    e = html.escape
    summ = report["summary"]
    ok = report["ok"]
    rows = "".join(
        f'<tr class="{"bad" if d["failures"] else ""}"><td>{e(k)}</td><td class="n">'
        f'{d["count"]}</td><td class="n">{d["failures"]}</td><td class="n">{_s(d["p50"])}</td>'
        f'<td class="n">{_s(d["p95"])}</td><td class="n">{_s(d["max"])}</td>'
        f'<td class="n">{_s(d["bound"])}</td></tr>' for k, d in summ.items())
    skipped = "".join(f"<li><code>{e(k)}</code>: {e(v)}</li>"
                      for k, v in report.get("skipped", {}).items()) or "<li>none</li>"
    faults = "".join(
        f'<tr class="{"" if r["ok"] else "bad"}"><td class="n">{r["index"]}</td>'
        f'<td>{e(r["kind"])}</td><td>{e(r["target"])}</td>'
        f'<td class="n">{_s(r.get("detect"))}</td><td class="n">{_s(r.get("converge"))}</td>'
        f'<td>{"reboot " + e(str(r["reboot"])) if r.get("reboot") else ""}</td>'
        f'<td>{e("; ".join(r["problems"]))}</td></tr>' for r in report["results"])
    repro = ""
    if report.get("repro"):
        repro = (f'<h2>Reproduce</h2><p><code>{e(report["repro"]["command"])}</code></p>'
                 f'<p>{e(report["repro"]["note"])}</p>')
    verdict = ('<span class="ok">all invariants held</span>' if ok else
               f'<span class="bad">{report["failures"]} fault(s) broke an invariant</span>')
    if report.get("interrupted"):
        verdict += (f' <span class="bad">(interrupted by {e(report["interrupted"])} after '
                    f'{len(report["results"])} of {report["faults"]} faults: partial)</span>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hachain chaos report (seed {report['seed']})
</title><style>{_CSS}</style></head><body>
<h1>hachain chaos: {len(report['results'])} faults, seed {report['seed']}</h1>
<p>{verdict}. Duration {report.get('duration', 0):.0f} s, {report.get('boots', 0)} boot(s).
Configuration <code>{e(report.get('config', ''))}</code>.</p>
<h2>Time to converge per fault kind</h2>
<table><tr><th>kind</th><th>count</th><th>failures</th><th>p50 s</th><th>p95 s</th>
<th>max s</th><th>bound s</th></tr>{rows}</table>
<h2>Timeline</h2>
<p>Per component: <span style="color:#dc2626">&#9679;</span> fault,
<span style="color:#f59e0b">&#9679;</span> detection, <span style="color:#16a34a">&#9679;
</span> recovery (all invariants hold); red bars broke an invariant; dashed lines are
boots. Hover for details.</p>
<div class="svgbox">{_timeline_svg(report)}</div>
{repro}
<h2>Skipped fault kinds</h2><ul>{skipped}</ul>
<h2>Faults</h2>
<table><tr><th>#</th><th>kind</th><th>target</th><th>detect s</th><th>converge s</th>
<th>reboot</th><th>problems</th></tr>{faults}</table>
</body></html>
"""


def write_html(report: dict[str, Any], path: str) -> None:
    """report.html, written whole."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(html_page(report))
    os.replace(tmp, path)
