"""``driftline report``: one self-contained HTML file from what storage holds.

Per model: a timeline of windows with each detector's verdict, each detector's p-value (or
distance, against its threshold) over time, and for the windows that matter (drift
starting, drifted windows, the last one) every feature's reference against current (a
histogram for numeric features, bars for categorical ones, drawn from the bounded summary
stored with each window), its raw and corrected p-values or distances against thresholds,
the verdict and what drove it. Delayed-label performance and label-shift weights appear
where the model has them.

No network is needed to open it: plain HTML, inline SVG and a few lines of inline
JavaScript (the "PNG" button under each plot draws that SVG onto a canvas and downloads
it, for tickets). No third-party package is needed to write it.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from monitor import __version__
from monitor.errors import ConfigError
from monitor.storage.reader import StorageReader, StoredFeature, StoredResult, WindowResults

__all__ = ["MAX_DETAILED_WINDOWS", "build_report"]

#: Windows drawn feature by feature; the timeline and charts always show every window.
MAX_DETAILED_WINDOWS = 30

DRIFT, OK, UNTESTED, FAILED = "#d62728", "#2ca02c", "#b0b0b0", "#222222"
REF_COLOUR, CUR_COLOUR = "#1f77b4", "#ff7f0e"
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")


def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def when(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return str(ts)


def is_distance(results: Iterable[StoredResult]) -> bool:
    """A distance detector (psi, kl, js, wasserstein, ...) never has a p-value."""
    tested = [r for r in results if not r.insufficient_data]
    return bool(tested) and all(r.p_value is None for r in tested)


def verdict(r: StoredResult) -> tuple[str, str]:
    if r.insufficient_data:
        return "insufficient data", UNTESTED
    return ("DRIFT", DRIFT) if r.drifted else ("ok", OK)


def window_id(model: str, stream: str, index: int) -> str:
    safe = "".join(c if c.isalnum() else "-" for c in model)
    return f"w-{safe}-{stream}-{index}"


# --- SVG pieces --------------------------------------------------------------------------------

class Figures:
    """Numbers the figures of a page, each with a PNG button."""

    def __init__(self) -> None:
        self.n = 0

    def figure(self, svg: str, caption: str, name: str) -> str:
        self.n += 1
        slug = "".join(c if c.isalnum() else "-" for c in name)[:80]
        return (f'<figure class="plot" id="fig-{self.n}" data-name="{esc(slug)}">{svg}'
                f'<figcaption>{esc(caption)} <button type="button" class="png" '
                f'onclick="driftlinePng(this)">PNG</button></figcaption></figure>')


def svg_open(w: int, h: int, label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            f'viewBox="0 0 {w} {h}" role="img" aria-label="{esc(label)}" '
            f'font-family="sans-serif" font-size="11"><rect width="{w}" height="{h}" '
            f'fill="#ffffff"/>')


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def timeline_svg(model: str, wins: Sequence[WindowResults], detectors: Sequence[str]) -> str:
    left, top, row, width = 130, 22, 20, 860
    n = max(len(wins), 1)
    cell = max(min((width - left - 10) / n, 40.0), 1.0)
    h = top + row * max(len(detectors), 1) + 30
    w = int(left + cell * n + 10)
    out = [svg_open(max(w, 320), h, f"window timeline of {model}")]
    for j, det in enumerate(detectors):
        y = top + j * row
        out.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{esc(det)}</text>')
        for i, wr in enumerate(wins):
            x = left + i * cell
            res = {r.detector: r for r in wr.results}
            if wr.window.error is not None:
                colour, text = FAILED, f"evaluation failed: {wr.window.error}"
            elif det in res:
                label, colour = verdict(res[det])
                r = res[det]
                value = (f"p={fmt(r.p_value)}" if r.p_value is not None
                         else f"statistic={fmt(r.statistic)} (threshold {fmt(r.threshold)})")
                text = f"{det}: {label}, {value}"
            else:
                colour, text = "#ffffff", f"{det}: not run"
            out.append(
                f'<a href="#{window_id(model, wr.window.stream, wr.window.window_index)}">'
                f'<rect class="cell" x="{x:.1f}" y="{y}" width="{max(cell - 1, 0.8):.1f}" '
                f'height="{row - 3}" fill="{colour}"><title>window {wr.window.window_index} '
                f'({when(wr.window.window_start)}): {esc(text)}</title></rect></a>')
    step = max(1, math.ceil(n / 12))
    for i in range(0, len(wins), step):
        x = left + i * cell + cell / 2
        out.append(f'<text x="{x:.1f}" y="{h - 8}" text-anchor="middle">'
                   f'{wins[i].window.window_index}</text>')
    out.append(f'<text x="{left - 6}" y="{h - 8}" text-anchor="end" fill="#555">window</text>')
    out.append("</svg>")
    return "".join(out)


def series_svg(title: str, wins: Sequence[WindowResults], detector: str) -> str:
    """A detector's corrected p-value (log scale, with alpha) or distance (with its
    threshold) per window; points coloured by verdict."""
    points: list[tuple[int, float | None, StoredResult]] = []
    for i, wr in enumerate(wins):
        for r in wr.results:
            if r.detector == detector:
                points.append((i, None if r.insufficient_data else
                               (r.statistic if is_distance([r]) else r.p_value), r))
    distance = is_distance(p[2] for p in points)
    w, h, left, right, top, bottom = 860, 200, 70, 20, 16, 34
    n = max(len(wins), 1)
    xs = (w - left - right) / max(n - 1, 1)
    threshold = next((p[2].threshold for p in points), None)
    values = [v for _i, v, _r in points if v is not None and math.isfinite(v)]
    if distance:
        hi = max([*values, threshold or 0.0, 1e-9]) * 1.1
        lo = 0.0

        def y_of(v: float) -> float:
            return top + (h - top - bottom) * (1 - (v - lo) / (hi - lo))
        grid = ticks(lo, hi)
        label = "distance"
    else:
        smallest = min([v for v in values if v > 0] + [threshold or 1e-3, 1e-3])
        lo_exp = math.floor(math.log10(max(smallest, 1e-300)))
        lo, hi = float(lo_exp), 0.0

        def y_of(v: float) -> float:
            lv = math.log10(max(v, 10.0 ** lo_exp))
            return top + (h - top - bottom) * (1 - (lv - lo) / (hi - lo))
        stride = max(1, math.ceil((hi - lo) / 6))
        grid = [10.0 ** e for e in range(lo_exp, 1, stride)]
        label = "corrected p-value"
    out = [svg_open(w, h, title)]
    for g in grid:
        y = y_of(g)
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="#eee"/><text x="{left - 5}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{fmt(g, 2)}</text>')
    if threshold is not None:
        y = y_of(threshold)
        name = "threshold" if distance else "alpha"
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="{DRIFT}" stroke-dasharray="5,4"/><text x="{w - right}" '
                   f'y="{y - 4:.1f}" text-anchor="end" fill="{DRIFT}">{name} '
                   f'{fmt(threshold)}</text>')
    path = [f"{left + i * xs:.1f},{y_of(v):.1f}" for i, v, _r in points
            if v is not None and math.isfinite(v)]
    if len(path) > 1:
        out.append(f'<polyline fill="none" stroke="#777" stroke-width="1" '
                   f'points="{" ".join(path)}"/>')
    for i, v, r in points:
        if v is None or not math.isfinite(v):
            continue
        _label, colour = verdict(r)
        out.append(f'<circle cx="{left + i * xs:.1f}" cy="{y_of(v):.1f}" r="3.5" '
                   f'fill="{colour}"><title>window {r.window_index}: {fmt(v)}</title></circle>')
    step = max(1, math.ceil(n / 12))
    for i in range(0, len(wins), step):
        out.append(f'<text x="{left + i * xs:.1f}" y="{h - 16}" text-anchor="middle">'
                   f'{wins[i].window.window_index}</text>')
    for ep in episodes(wins):
        x = left + ep.start * xs
        out.append(f'<line class="drift-start" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" '
                   f'y2="{h - bottom}" stroke="{DRIFT}" stroke-width="1.5" '
                   f'stroke-dasharray="2,2"/><text x="{x + 3:.1f}" y="{h - bottom - 4}" '
                   f'fill="{DRIFT}">drift starts</text>')
    mid = (top + h - bottom) / 2
    out.append(f'<text x="{(left + w - right) / 2:.0f}" y="{h - 3}" text-anchor="middle" '
               f'fill="#555">window</text><text x="14" y="{mid:.0f}" fill="#555" '
               f'text-anchor="middle" transform="rotate(-90 14 {mid:.0f})">{label}</text></svg>')
    return "".join(out)


def lines_svg(title: str, x_labels: Sequence[int], series: Mapping[str, Sequence[float | None]],
              y_label: str) -> str:
    """Several named series over windows (label-shift weights per class)."""
    w, h, left, right, top, bottom = 860, 200, 70, 140, 16, 34
    values = [v for s in series.values() for v in s if v is not None and math.isfinite(v)]
    lo, hi = min([*values, 0.0]), max([*values, 1.0]) * 1.1
    n = max(len(x_labels), 1)
    xs = (w - left - right) / max(n - 1, 1)

    def y_of(v: float) -> float:
        return top + (h - top - bottom) * (1 - (v - lo) / (hi - lo))
    out = [svg_open(w, h, title)]
    for g in ticks(lo, hi):
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{y_of(g):.1f}" '
                   f'y2="{y_of(g):.1f}" stroke="#eee"/><text x="{left - 5}" '
                   f'y="{y_of(g) + 4:.1f}" text-anchor="end">{fmt(g, 2)}</text>')
    for k, (name, vals) in enumerate(series.items()):
        colour = _PALETTE[k % len(_PALETTE)]
        pts = [f"{left + i * xs:.1f},{y_of(v):.1f}" for i, v in enumerate(vals)
               if v is not None and math.isfinite(v)]
        if pts:
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                       f'points="{" ".join(pts)}"/>')
        out.append(f'<rect x="{w - right + 10}" y="{top + k * 16}" width="10" height="10" '
                   f'fill="{colour}"/><text x="{w - right + 24}" y="{top + k * 16 + 9}">'
                   f'{esc(name)}</text>')
    step = max(1, math.ceil(n / 12))
    for i in range(0, len(x_labels), step):
        out.append(f'<text x="{left + i * xs:.1f}" y="{h - 16}" text-anchor="middle">'
                   f'{x_labels[i]}</text>')
    mid = (top + h - bottom) / 2
    out.append(f'<text x="14" y="{mid:.0f}" fill="#555" text-anchor="middle" '
               f'transform="rotate(-90 14 {mid:.0f})">{esc(y_label)}</text></svg>')
    return "".join(out)


def _bars(title: str, labels: Sequence[str], ref: Sequence[float], cur: Sequence[float],
          note: str) -> str:
    """Paired bars: the reference's and the window's share of each bin or category."""
    w, h, left, right, top, bottom = 420, 220, 44, 10, 24, 58
    n = max(len(labels), 1)
    slot = (w - left - right) / n
    hi = max([*ref, *cur, 1e-9]) * 1.1
    out = [svg_open(w, h, title)]
    out.append(f'<rect x="{left}" y="4" width="10" height="10" fill="{REF_COLOUR}" '
               f'fill-opacity="0.6"/><text x="{left + 14}" y="13">reference</text>'
               f'<rect x="{left + 90}" y="4" width="10" height="10" fill="{CUR_COLOUR}" '
               f'fill-opacity="0.8"/><text x="{left + 104}" y="13">window</text>'
               f'<text x="{w - right}" y="13" text-anchor="end" fill="#555">{esc(note)}</text>')
    for g in ticks(0, hi, 4):
        y = top + (h - top - bottom) * (1 - g / hi)
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="#eee"/><text x="{left - 4}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{g:.0%}</text>')
    base = h - bottom
    for i, name in enumerate(labels):
        x = left + i * slot
        for j, (vals, colour, opacity) in enumerate(((ref, REF_COLOUR, 0.6),
                                                     (cur, CUR_COLOUR, 0.8))):
            v = vals[i]
            bh = (h - top - bottom) * v / hi
            bw = max(slot / 2 - 1, 0.5)
            out.append(f'<rect class="bar" x="{x + j * slot / 2:.1f}" y="{base - bh:.1f}" '
                       f'width="{bw:.1f}" height="{bh:.1f}" fill="{colour}" '
                       f'fill-opacity="{opacity}"><title>{esc(name)}: '
                       f'{"reference" if j == 0 else "window"} {v:.1%}</title></rect>')
        if n <= 24 and (n <= 12 or i % 2 == 0):
            out.append(f'<text x="{x + slot / 2:.1f}" y="{base + 10}" text-anchor="end" '
                       f'transform="rotate(-45 {x + slot / 2:.1f} {base + 10})">'
                       f'{esc(name[:14])}</text>')
    out.append("</svg>")
    return "".join(out)


def summary_svg(feature: str, summary: Mapping[str, Any]) -> str:
    ref = [float(c) for c in summary.get("reference", [])]
    cur = [float(c) for c in summary.get("current", [])]
    if summary.get("kind") == "numeric":
        edges = [float(e) for e in summary["edges"]]
        labels = [fmt((a + b) / 2) for a, b in itertools.pairwise(edges)]
        below, above = int(summary.get("current_below", 0)), int(summary.get("current_above", 0))
        if below:
            labels, ref, cur = [f"<{fmt(edges[0])}", *labels], [0.0, *ref], [below, *cur]
        if above:
            labels, ref, cur = [*labels, f">{fmt(edges[-1])}"], [*ref, 0.0], [*cur, above]
        note = (f"mean {fmt(summary.get('reference_mean'))} -> "
                f"{fmt(summary.get('current_mean'))}")
    else:
        labels = [str(c) for c in summary.get("categories", [])]
        if summary.get("reference_other") or summary.get("current_other"):
            labels = [*labels, "(other)"]
            ref = [*ref, float(summary.get("reference_other", 0))]
            cur = [*cur, float(summary.get("current_other", 0))]
        note = f"{len(labels)} categories"
    n_ref, n_cur = max(sum(ref), 1.0), max(sum(cur), 1.0)
    return _bars(f"{feature}: reference against window", labels,
                 [v / n_ref for v in ref], [v / n_cur for v in cur], note)


# --- the page ----------------------------------------------------------------------------------

@dataclass
class _Episode:
    start: int  # position in the window list
    end: int | None  # position of the first window after it that did not drift


def episodes(wins: Sequence[WindowResults]) -> list[_Episode]:
    out: list[_Episode] = []
    current: _Episode | None = None
    for i, wr in enumerate(wins):
        drifted = any(r.drifted for r in wr.results)
        if drifted and current is None:
            current = _Episode(i, None)
            out.append(current)
        elif not drifted and current is not None and wr.window.error is None:
            current.end = i
            current = None
    return out


def detailed_positions(wins: Sequence[WindowResults], limit: int) -> list[int]:
    if len(wins) <= limit:
        return list(range(len(wins)))
    chosen: list[int] = []

    def add(i: int) -> None:
        if 0 <= i < len(wins) and i not in chosen and len(chosen) < limit:
            chosen.append(i)
    for ep in episodes(wins):
        add(ep.start - 1)
        add(ep.start)
        if ep.end is not None:
            add(ep.end)
    add(len(wins) - 1)
    for i, wr in enumerate(wins):
        if any(r.drifted for r in wr.results):
            add(i)
    return sorted(chosen)


def _driver(r: StoredResult) -> str:
    drifted = [f for f in r.features if f.drifted]
    if not drifted:
        return ""
    if is_distance([r]):
        drifted.sort(key=lambda f: -(f.statistic or 0.0))
        parts = [f"{f.feature} ({fmt(f.statistic)} > {fmt(r.threshold)})" for f in drifted]
    else:
        drifted.sort(key=lambda f: f.adjusted_p_value if f.adjusted_p_value is not None else 1)
        parts = [f"{f.feature} (corrected p {fmt(f.adjusted_p_value)} < {fmt(r.threshold)})"
                 for f in drifted]
    return f"{r.detector}: " + ", ".join(parts[:10]) + (
        f" and {len(parts) - 10} more" if len(parts) > 10 else "")


def _feature_rows(wr: WindowResults) -> dict[str, list[tuple[StoredResult, StoredFeature]]]:
    rows: dict[str, list[tuple[StoredResult, StoredFeature]]] = {}
    for r in wr.results:
        if r.detector == "label_shift":
            continue
        for f in r.features:
            rows.setdefault(f.feature, []).append((r, f))
    return rows


def feature_cards(model: str, wr: WindowResults, figs: Figures, *, only_drifted: bool = False,
                  limit: int | None = None) -> str:
    """One card per feature of the window: its picture, its tests, its verdict."""
    w = wr.window
    rows = _feature_rows(wr)
    drifted_first = sorted(rows, key=lambda name: (not any(f.drifted for _r, f in rows[name]),
                                                   list(rows).index(name)))
    if only_drifted:
        drifted_first = [n for n in drifted_first if any(f.drifted for _r, f in rows[n])]
    out = ['<div class="features">']
    for name in drifted_first[:limit]:
        entries = rows[name]
        summary = next((f.summary for _r, f in entries if f.summary), None)
        drifted = any(f.drifted for _r, f in entries)
        out.append(f'<div class="feature{" drifted" if drifted else ""}" '
                   f'data-feature="{esc(name)}"><h4>{esc(name)} '
                   f'<span class="badge" style="background:{DRIFT if drifted else OK}">'
                   f'{"DRIFT" if drifted else "ok"}</span></h4>')
        if summary:
            out.append(figs.figure(summary_svg(name, summary),
                                   f"{name}, window {w.window_index}: share of records per "
                                   f"{'bin' if summary.get('kind') == 'numeric' else 'category'}",
                                   f"{model}-w{w.window_index}-{name}"))
        out.append("<table><tr><th>detector</th><th>statistic</th><th>raw p</th>"
                   "<th>corrected p</th><th>threshold</th><th>verdict</th></tr>")
        for r, f in entries:
            distance = r.p_value is None and not r.insufficient_data
            threshold = (f"distance &gt; {fmt(r.threshold)}" if distance
                         else f"&alpha; {fmt(r.threshold)} ({esc(r.correction)})")
            v = ("insufficient data" if r.insufficient_data
                 else "DRIFT" if f.drifted else "ok")
            out.append(f'<tr class="{"drift" if f.drifted else ""}"><td>{esc(r.detector)}</td>'
                       f"<td>{fmt(f.statistic)}</td><td>{fmt(f.p_value)}</td>"
                       f"<td>{fmt(f.adjusted_p_value)}</td><td>{threshold}</td>"
                       f"<td>{v}</td></tr>")
        out.append("</table></div>")
    out.append("</div>")
    return "".join(out)


def window_section(model: str, wr: WindowResults, figs: Figures) -> str:
    w = wr.window
    out = [f'<section class="window" id="{window_id(model, w.stream, w.window_index)}">'
           f'<h3>Window {w.window_index} <small>{esc(when(w.window_start))} to '
           f'{esc(when(w.window_end))}, {w.n_records} records</small></h3>']
    if w.error is not None:
        out.append(f'<p class="failed">Evaluation failed: {esc(w.error)}</p></section>')
        return "".join(out)
    badges = []
    for r in wr.results:
        label, colour = verdict(r)
        badges.append(f'<span class="badge" style="background:{colour}">{esc(r.detector)}: '
                      f'{esc(label)}</span>')
    out.append(f'<p class="verdicts">{" ".join(badges)}</p>')
    drivers = [d for d in (_driver(r) for r in wr.results) if d]
    out.append("<p class=\"driver\"><b>What drove it:</b> " + esc("; ".join(drivers)) + "</p>"
               if drivers else "<p class=\"driver\">No detector flagged drift.</p>")
    out.append(feature_cards(model, wr, figs))
    out.append("</section>")
    return "".join(out)


def _labels_section(model: str, labels: Sequence[WindowResults], figs: Figures) -> str:
    if not labels:
        return ""
    out = ["<h3>Delayed-label performance</h3>"]
    detectors = sorted({r.detector for wr in labels for r in wr.results})
    out.append(figs.figure(timeline_svg(model, labels, detectors),
                           f"{model}: label windows", f"{model}-label-timeline"))
    for det in detectors:
        out.append(figs.figure(series_svg(f"{model} {det}", labels, det),
                               f"{model}: {det} per label window", f"{model}-labels-{det}"))
    out.append("<table><tr><th>label window</th><th>end</th><th>pairs</th><th>detector</th>"
               "<th>statistic</th><th>p-value</th><th>verdict</th></tr>")
    for wr in labels[-20:]:
        for r in wr.results:
            out.append(f'<tr id="{window_id(model, "labels", wr.window.window_index)}">'
                       f"<td>{wr.window.window_index}</td><td>{esc(when(wr.window.window_end))}"
                       f"</td><td>{wr.window.n_records}</td><td>{esc(r.detector)}</td>"
                       f"<td>{fmt(r.statistic)}</td><td>{fmt(r.p_value)}</td>"
                       f"<td>{esc(verdict(r)[0])}</td></tr>")
    out.append("</table>")
    return "".join(out)


def _label_shift_section(model: str, wins: Sequence[WindowResults], figs: Figures) -> str:
    shift = [(wr.window.window_index, r) for wr in wins for r in wr.results
             if r.detector == "label_shift"]
    if not shift:
        return ""
    classes = list(dict.fromkeys(f.feature for _i, r in shift for f in r.features))
    series = {c: [next((f.statistic for f in r.features if f.feature == c), None)
                  for _i, r in shift] for c in classes}
    return ("<h3>Label-shift weights</h3>" + figs.figure(
        lines_svg(f"{model} label-shift weights", [i for i, _r in shift], series,
                  "weight q(y)/p(y)"),
        f"{model}: estimated class weights per window (1 = no shift)",
        f"{model}-label-shift"))


def model_section(model: str, wins: Sequence[WindowResults], labels: Sequence[WindowResults],
                  figs: Figures, limit: int) -> str:
    detectors = list(dict.fromkeys(r.detector for wr in wins for r in wr.results))
    eps = episodes(wins)
    glance = ""
    drifted = [wr for wr in wins if any(r.drifted for r in wr.results)]
    first, last = wins[0].window, wins[-1].window
    out = [f'<section class="model" id="model-{esc(model)}"><h2>Model {esc(model)}</h2>',
           f'<p>Windows {first.window_index} to {last.window_index} ({len(wins)} stored, '
           f"{esc(when(first.window_start))} to {esc(when(last.window_end))}); "
           f"<b>{len(drifted)}</b> drifted.</p>"]
    if eps:
        items = []
        for ep in eps:
            s = wins[ep.start]
            moved = sorted({f.feature for r in s.results for f in r.features if f.drifted})
            end = ("still drifting in the last window" if ep.end is None else
                   f"until window {wins[ep.end].window.window_index} "
                   f"({esc(when(wins[ep.end].window.window_start))})")
            by = ", ".join(r.detector for r in s.results if r.drifted)
            items.append(f'<li class="episode">Drift started in <a href="#'
                         f'{window_id(model, "features", s.window.window_index)}">window '
                         f"{s.window.window_index}</a> ({esc(when(s.window.window_start))}), "
                         f"{end}; features that moved: <b>{esc(', '.join(moved) or '-')}</b>"
                         f"; detectors: {esc(by)}</li>")
        out.append(f'<ul class="episodes">{"".join(items)}</ul>')
        s0 = wins[eps[0].start]
        glance = (f'<div class="glance"><h3>What moved when drift started (window '
                   f'{s0.window.window_index})</h3>'
                   + feature_cards(model, s0, figs, only_drifted=True, limit=4) + "</div>")
    else:
        out.append('<p class="nodrift">No drift in these windows.</p>')
    out.append(figs.figure(timeline_svg(model, wins, detectors),
                           f"{model}: verdict of each detector per window (red: drift, "
                           "green: no drift, grey: insufficient data, black: evaluation "
                           "failed); click a cell for the window",
                           f"{model}-timeline"))
    out.append(glance)
    for det in detectors:
        dist = is_distance(r for wr in wins for r in wr.results if r.detector == det)
        what = ("distance against its threshold" if dist
                else "smallest corrected p-value against alpha")
        out.append(figs.figure(series_svg(f"{model} {det}", wins, det),
                               f"{model}: {det} {what} per window", f"{model}-{det}"))
    out.append(_label_shift_section(model, wins, figs))
    out.append(_labels_section(model, labels, figs))
    positions = detailed_positions(wins, limit)
    out.append("<h3>Windows, feature by feature</h3>")
    if len(positions) < len(wins):
        out.append(f"<p>{len(positions)} of {len(wins)} windows are drawn here (drift starts "
                   "and ends, drifted windows, the last one); choose others with "
                   "<code>--first</code>/<code>--last</code>.</p>")
    for i in positions:
        out.append(window_section(model, wins[i], figs))
    out.append("</section>")
    return "".join(out)


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{margin-bottom:4px} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
small{color:#666;font-weight:normal} .badge{color:#fff;border-radius:3px;padding:1px 6px;
font-size:12px;margin-right:4px} figure.plot{margin:8px 0} figcaption{font-size:12px;
color:#555} button.png{font-size:11px;margin-left:6px} .features{display:flex;
flex-wrap:wrap;gap:12px} .feature{border:1px solid #ddd;border-radius:4px;padding:6px;
width:440px} .feature.drifted{border-color:#d62728} .feature h4{margin:2px 0}
table{border-collapse:collapse;font-size:12px} td,th{border:1px solid #ddd;padding:2px 6px;
text-align:left} tr.drift td{background:#fde8e8} section.window{border-top:1px solid #eee;
margin-top:16px} .episode{margin:4px 0} .failed{color:#a00}
"""

_JS = """
window.addEventListener('error', function (e) {
  document.body.setAttribute('data-js-error', String(e.message));
});
function driftlineSvgToPng(svg) {
  var w = svg.viewBox.baseVal.width, h = svg.viewBox.baseVal.height;
  var xml = new XMLSerializer().serializeToString(svg);
  return new Promise(function (resolve, reject) {
    var img = new Image();
    img.onload = function () {
      var c = document.createElement('canvas');
      c.width = w * 2; c.height = h * 2;
      var ctx = c.getContext('2d');
      ctx.fillStyle = '#ffffff'; ctx.fillRect(0, 0, c.width, c.height);
      ctx.scale(2, 2); ctx.drawImage(img, 0, 0, w, h);
      resolve(c.toDataURL('image/png'));
    };
    img.onerror = function () { reject(new Error('could not draw the SVG')); };
    img.src = 'data:image/svg+xml;charset=utf-8,' + encodeURIComponent(xml);
  });
}
function driftlinePng(button) {
  var fig = button.closest('figure');
  driftlineSvgToPng(fig.querySelector('svg')).then(function (url) {
    var a = document.createElement('a');
    a.href = url; a.download = 'driftline-' + fig.getAttribute('data-name') + '.png';
    document.body.appendChild(a); a.click(); a.remove();
  });
}
if (location.hash === '#selftest') {
  var first = document.querySelector('figure.plot svg');
  var out = document.getElementById('selftest');
  if (first) {
    driftlineSvgToPng(first).then(function (url) { out.textContent = url.slice(0, 64); },
                                  function (err) { out.textContent = 'error: ' + err; });
  } else { out.textContent = 'no figure'; }
}
"""


def build_report(reader: StorageReader, *, model: str | None = None, first: int | None = None,
                 last: int | None = None, source: str = "",
                 max_detailed: int = MAX_DETAILED_WINDOWS) -> str:
    """The HTML page; ConfigError for an unknown model or a range without windows."""
    stored = reader.models("features")
    if not stored:
        raise ConfigError(f"{source or 'the database'}: no windows stored yet (has the "
                          "daemon or the demo run against it?)")
    if model is not None and model not in stored:
        raise ConfigError(f"unknown model '{model}'; {source or 'the database'} holds: "
                          f"{', '.join(stored)}")
    if first is not None and last is not None and first > last:
        raise ConfigError(f"empty window range: --first {first} is after --last {last}")
    figs = Figures()
    sections = []
    for name in [model] if model is not None else stored:
        wins = reader.window_results(name, "features", first=first, last=last)
        if not wins:
            every = reader.windows(name, "features")
            raise ConfigError(
                f"model '{name}' has no windows in the range {first if first is not None else ''}"
                f"..{last if last is not None else ''} (stored: windows "
                f"{every[0].window_index} to {every[-1].window_index})")
        start, end = wins[0].window.window_start, wins[-1].window.window_end
        labels = [wr for wr in reader.window_results(name, "labels")
                  if start <= wr.window.window_end and wr.window.window_start <= end]
        sections.append(model_section(name, wins, labels, figs, max_detailed))
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>driftline report</title><style>{_CSS}</style></head><body>"
        f"<h1>driftline drift report</h1><p><small>{esc(source)} - generated {generated} by "
        f"driftline {esc(__version__)}. Everything is in this file: it opens offline. "
        "The PNG button under a plot saves it as an image.</small></p>"
        + "".join(sections)
        + f'<pre id="selftest" hidden></pre><script>{_JS}</script></body></html>')
