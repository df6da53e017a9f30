"""``mining_report.png``: the 2-means scatter by station, one control chart per alert, the
alert list. Meant to be read by a fleet manager without explanation."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from medsendx.fleet.features import METRIC_LABELS

MAX_CHARTS = 9
MAX_SCATTER_POINTS = 6000
MAX_LEGEND_STATIONS = 12
CHART_SCANS = 200


def render_report(
    path: Path,
    standardised: np.ndarray,
    labels: np.ndarray,
    centres: np.ndarray,
    cluster_sizes: list[int],
    point_stations: np.ndarray,
    charts: list[dict[str, Any]],
    stations: list[dict[str, Any]],
    n_scans: int,
) -> Path:
    """Draw the report. The scatter shows ``standardised`` (a sample of the scans) with
    their 2-means ``labels`` and ``point_stations``; ``cluster_sizes`` count every scan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medsendx.fsutil import atomic_write_bytes

    charts = sorted(charts, key=lambda c: -abs(c["score"]) if np.isfinite(c["score"]) else 0)[:MAX_CHARTS]
    chart_rows = (len(charts) + 2) // 3
    fig_h = 6.0 + 3.2 * chart_rows
    fig = plt.figure(figsize=(17, fig_h), dpi=90)
    grid = fig.add_gridspec(
        1 + chart_rows, 3, height_ratios=[6.0] + [3.2] * chart_rows, hspace=0.55, wspace=0.28,
        left=0.05, right=0.98, top=1 - 1.0 / fig_h, bottom=0.5 / fig_h,
    )
    alerting = [s for s in stations if s["status"] == "alert"]
    fig.suptitle(
        f"MedSendX fleet report: {n_scans:,} scans, {len(stations):,} stations, "
        f"{len(alerting)} station(s) with alerts",
        fontsize=15,
        fontweight="bold",
    )

    # 1. the prototype's view, coloured by station
    ax = fig.add_subplot(grid[0, 0:2])
    _scatter(ax, standardised, labels, centres, cluster_sizes, point_stations, n_scans, {s["station"] for s in alerting})

    # 2. the alert list
    ax_text = fig.add_subplot(grid[0, 2])
    ax_text.axis("off")
    ax_text.set_title("Alerts", fontsize=13, fontweight="bold", loc="left")
    lines: list[str] = []
    for station in alerting:
        for alert in station["alerts"]:
            lines.extend(textwrap.wrap(alert["message"], 52, subsequent_indent="   "))
    if not lines:
        lines = ["No station is out of control.", "", f"{len(stations)} stations checked."]
    max_lines = 30
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + ["... and more: see fleet_report.json"]
    ax_text.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=9, family="monospace", transform=ax_text.transAxes)

    # 3. control charts
    for i, chart in enumerate(charts):
        ax = fig.add_subplot(grid[1 + i // 3, i % 3])
        _control_chart(ax, chart)
        if i == 0:  # one legend for every chart, between the scatter and the charts
            handles, names = ax.get_legend_handles_labels()
            above_titles = ax.get_position().y1 + 0.55 / fig_h
            fig.legend(handles, names, loc="center", ncol=len(names), fontsize=10, frameon=False,
                       bbox_to_anchor=(0.5, above_titles))
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(Path(path), buf.getvalue())


def _scatter(ax, points, labels, centres, cluster_sizes, point_stations, n_scans, alerting: set[str]) -> None:
    import matplotlib.pyplot as plt

    n = len(points)
    rng = np.random.default_rng(0)
    shown = np.arange(n) if n <= MAX_SCATTER_POINTS else np.sort(rng.choice(n, MAX_SCATTER_POINTS, replace=False))
    names = np.asarray(point_stations, dtype=object)[shown]
    unique = sorted(set(names.tolist()))
    legend_stations = unique if len(unique) <= MAX_LEGEND_STATIONS else sorted(alerting)[:MAX_LEGEND_STATIONS]
    cmap = plt.get_cmap("tab10" if len(legend_stations) <= 10 else "tab20")
    markers = ["o", "^"]
    for cluster in (0, 1):
        in_cluster = labels[shown] == cluster
        # stations without a legend entry: grey, underneath
        rest = in_cluster & ~np.isin(names, legend_stations)
        if rest.any():
            ax.scatter(points[shown][rest, 0], points[shown][rest, 1], s=8, c="0.75", marker=markers[cluster], linewidths=0)
        for k, station in enumerate(legend_stations):
            sel = in_cluster & (names == station)
            if sel.any():
                label = station + (" (alert)" if station in alerting else "") if cluster == 0 or not (labels[shown][names == station] == 0).any() else None
                ax.scatter(
                    points[shown][sel, 0], points[shown][sel, 1], s=18, color=cmap(k % cmap.N),
                    marker=markers[cluster], label=label, alpha=0.8, linewidths=0,
                )
    for cluster, centre in enumerate(centres):
        size = int(cluster_sizes[cluster])
        ax.scatter([centre[0]], [centre[1]], s=260, marker="X", c="black", edgecolors="white", linewidths=1.5, zorder=5)
        ax.annotate(f"cluster {cluster + 1} ({markers[cluster]}): {size} scans", (centre[0], centre[1]),
                    xytext=(10, 10), textcoords="offset points", fontsize=10, fontweight="bold")
    ax.set_xlabel("average density (mean, standardised)", fontsize=11)
    ax.set_ylabel("contrast (SD, standardised)", fontsize=11)
    title = "2-means on density and contrast, coloured by station"
    if len(unique) > MAX_LEGEND_STATIONS:
        title += f" ({len(unique)} stations: alerting ones coloured, others grey)"
    if n_scans > len(shown):
        title += f"\n{len(shown):,} of {n_scans:,} scans drawn (a random sample)"
    ax.set_title(title, fontsize=12)
    ax.grid(alpha=0.3)
    if legend_stations:
        ax.legend(fontsize=9, loc="lower right", framealpha=0.85, markerscale=1.5, title="station", ncol=2 if len(legend_stations) > 6 else 1)


def _control_chart(ax, chart: dict[str, Any]) -> None:
    # A long history is unreadable: show the last CHART_SCANS scans, or from a little
    # before the detection if that is earlier.
    first = max(0, min(chart["detected_at"] - CHART_SCANS // 4, len(chart["values"]) - CHART_SCANS))
    values = chart["values"][first:]
    limit = chart["limit"]
    x = np.arange(first + 1, first + len(values) + 1)
    baseline, rsd = chart["baseline"], chart["robust_sd"]
    ewma_units = chart["ewma"][first:]
    label = METRIC_LABELS.get(chart["metric"], chart["metric"])
    unit = " (HU)" if chart["metric"].endswith("_hu") else ""
    ax.plot(x, values, "o", ms=3 if len(values) <= 300 else 1.5, color="0.55", label="each scan")
    ax.plot(x, ewma_units, "-", lw=2, color="tab:blue", label="EWMA")
    ax.axhline(baseline, color="green", lw=1.2, label="fleet baseline")
    ax.axhline(baseline + limit * rsd, color="red", ls="--", lw=1, label="control limits")
    ax.axhline(baseline - limit * rsd, color="red", ls="--", lw=1)
    ax.axvline(chart["detected_at"] + 1, color="red", lw=1, alpha=0.6, label="alarm")
    ax.set_title(f"{chart['station']}: {label}{unit}", fontsize=11, fontweight="bold")
    shown = f", scans {first + 1}-{first + len(values)} of {len(chart['values'])}" if first else ""
    ax.set_xlabel(f"scan # ({chart['group']}{shown})", fontsize=9)
    lo = min(np.nanmin(ewma_units), baseline - 1.5 * limit * rsd)
    hi = max(np.nanmax(ewma_units), baseline + 1.5 * limit * rsd)
    finite = values[np.isfinite(values)]
    if finite.size:
        lo, hi = min(lo, np.percentile(finite, 1)), max(hi, np.percentile(finite, 99))
    pad = 0.08 * (hi - lo or 1.0)
    ax.set_ylim(lo - pad, hi + pad)
    ax.grid(alpha=0.3)
