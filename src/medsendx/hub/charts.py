"""Server-rendered SVG charts for the fleet page (no JavaScript library, works offline)."""

from __future__ import annotations

import math
from html import escape
from typing import Any

import numpy as np

from medsendx.fleet.features import METRIC_LABELS

CHART_SCANS = 200  # the latest scans of a station's series shown in a control chart
MAX_POINTS = 3000
CLUSTER_COLOURS = ("#4c78a8", "#72b7b2")
ALERT_COLOUR = "#d62728"


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) / span * (b - a)


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}"


def control_chart(chart: dict[str, Any], width: int = 460, height: int = 220) -> str:
    """Values, their EWMA, the fleet baseline and +-3 robust SD, for one station's metric."""
    values = np.asarray(chart["values"], dtype=float)[-CHART_SCANS:]
    ewma = np.asarray(chart["ewma"], dtype=float)[-CHART_SCANS:]
    offset = max(0, len(chart["values"]) - CHART_SCANS)
    baseline, rsd = float(chart["baseline"]), float(chart["robust_sd"])
    finite = values[np.isfinite(values)]
    lo = min([baseline - 3 * rsd] + ([float(finite.min())] if finite.size else []))
    hi = max([baseline + 3 * rsd] + ([float(finite.max())] if finite.size else []))
    pad = (hi - lo) * 0.08 or 1.0
    lo, hi = lo - pad, hi + pad
    left, right, top, bottom = 48, width - 10, 26, height - 26
    x = _scale(0, max(len(values) - 1, 1), left, right)
    y = _scale(lo, hi, bottom, top)
    label = METRIC_LABELS.get(chart["metric"], chart["metric"])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
        f'<title>{escape(chart["station"])}: {escape(label)}</title>',
        f'<text x="{left}" y="16" class="ttl">{escape(chart["station"])} - {escape(label)}</text>',
        f'<rect x="{left}" y="{y(baseline + 3 * rsd):.1f}" width="{right - left}" height="{y(baseline - 3 * rsd) - y(baseline + 3 * rsd):.1f}" fill="#eef5ee"/>',
        f'<line x1="{left}" x2="{right}" y1="{y(baseline):.1f}" y2="{y(baseline):.1f}" stroke="#2ca02c" stroke-dasharray="4 3"/>',
        f'<text x="{right}" y="{y(baseline) - 3:.1f}" text-anchor="end" class="lbl">fleet baseline {_fmt(baseline)}</text>',
    ]
    dots = "".join(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="1.8"/>' for i, v in enumerate(values) if math.isfinite(v))
    parts.append(f'<g fill="#888">{dots}</g>')
    line = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(ewma) if math.isfinite(v))
    parts.append(f'<polyline points="{line}" fill="none" stroke="{ALERT_COLOUR}" stroke-width="1.6"/>')
    detected = int(chart.get("detected_at", -1)) - offset
    if 0 <= detected < len(values):
        parts.append(f'<line x1="{x(detected):.1f}" x2="{x(detected):.1f}" y1="{top}" y2="{bottom}" stroke="{ALERT_COLOUR}" stroke-dasharray="2 2"/>')
    for v in (lo + pad, hi - pad):
        parts.append(f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end" class="lbl">{_fmt(v)}</text>')
    parts.append(f'<text x="{left}" y="{height - 8}" class="lbl">scan {offset + 1}</text>')
    parts.append(f'<text x="{right}" y="{height - 8}" text-anchor="end" class="lbl">scan {offset + len(values)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def scatter(data: dict[str, Any] | None, alerting: set[str], width: int = 620, height: int = 380) -> str:
    """The prototype's view: standardised density (mean) against contrast (SD), coloured by
    2-means cluster; scans of alerting stations in red."""
    if not data or len(data["points"]) == 0:
        return '<p class="muted">No scans to plot yet.</p>'
    points = np.asarray(data["points"], dtype=float)
    labels = np.asarray(data["labels"])
    stations = np.asarray(data["stations"], dtype=object)
    if len(points) > MAX_POINTS:  # evenly spaced, deterministic: the sample is already hash-chosen
        keep = np.linspace(0, len(points) - 1, MAX_POINTS).astype(int)
        points, labels, stations = points[keep], labels[keep], stations[keep]
    left, right, top, bottom = 44, width - 12, 14, height - 34
    # 1-99th percentile view (+10 %): a few extreme scans are drawn at the edge instead of
    # squeezing everything else into a corner
    lo, hi = np.percentile(points, [1, 99], axis=0)
    span = np.maximum(hi - lo, 0.5)
    lo, hi = lo - 0.1 * span, hi + 0.1 * span
    x = _scale(float(lo[0]), float(hi[0]), left, right)
    y = _scale(float(lo[1]), float(hi[1]), bottom, top)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
             "<title>density / contrast by cluster</title>",
             f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#ccc"/>']
    for cluster in (0, 1):
        sel = (labels == cluster) & ~np.isin(stations, list(alerting))
        dots = "".join(f'<circle cx="{x(p[0]):.1f}" cy="{y(p[1]):.1f}" r="2"/>' for p in np.clip(points[sel], lo, hi))
        parts.append(f'<g fill="{CLUSTER_COLOURS[cluster]}" fill-opacity="0.55">{dots}</g>')
    sel = np.isin(stations, list(alerting))
    dots = "".join(f'<circle cx="{x(p[0]):.1f}" cy="{y(p[1]):.1f}" r="2.6"/>' for p in np.clip(points[sel], lo, hi))
    parts.append(f'<g fill="{ALERT_COLOUR}" class="alerting">{dots}</g>')
    for c, centre in enumerate(np.asarray(data["centres"], dtype=float)[:2]):
        cx, cy = np.clip(centre, lo, hi)
        parts.append(f'<path d="M{x(cx) - 6:.1f},{y(cy):.1f}h12M{x(cx):.1f},{y(cy) - 6:.1f}v12" stroke="#000" stroke-width="2"/>')
    sizes = data.get("sizes", [0, 0])
    parts.append(f'<text x="{left}" y="{height - 16}" class="lbl">density (mean, standardised) &#8594;</text>')
    parts.append(f'<text x="{left}" y="{height - 3}" class="lbl">clusters: {sizes[0]:,} and {sizes[1]:,} scans; '
                 f'red: stations with alerts; vertical: contrast (SD, standardised)</text>')
    parts.append("</svg>")
    return "".join(parts)
