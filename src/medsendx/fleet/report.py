"""``medsendx mine``: load feature rows from anywhere, find failing scanners, write the report.

Sources (any mix): folders of DICOM files (features are extracted here), Parquet files or
folders of them (a :class:`FeatureStore`), and ``s3://bucket/prefix`` locations. Everything
is queried with DuckDB; the heavy work (de-duplication, ordering, robust baselines) happens
there, and only numeric columns come back to numpy for the vectorised control charts.

S3: DuckDB's ``httpfs`` extension is used when it is already installed; it is not
downloaded at run time (trucks and CI may be offline), so otherwise the Parquet objects are
read through ``pyarrow.fs.S3FileSystem`` with ``settings.s3`` and scanned by DuckDB as an
Arrow dataset (lazily, column by column).
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from medsendx.config import Settings
from medsendx.fleet import detect
from medsendx.fleet.features import BACKGROUND_METRICS, CT_METRICS, METRIC_LABELS, extract_features
from medsendx.fleet.store import rows_to_table, split_s3_uri

REPORT_JSON = "fleet_report.json"
REPORT_PNG = "mining_report.png"
FEATURES_PARQUET = "features.parquet"
SPC_METRICS = CT_METRICS + BACKGROUND_METRICS
# Physics metrics only: density, contrast and peak mostly tell anatomy apart (a slice near
# the vertex against one through the skull base), which is not a fault.
OUTLIER_FEATURES = {"CT": CT_METRICS, "other": BACKGROUND_METRICS}
MAX_OUTLIERS = 25
OUTLIER_P = 1e-4  # chi-square tail probability for a scan to be listed as an outlier
UNITS = {m: "HU" for m in CT_METRICS}


@dataclass
class SourceSet:
    """What ``load_sources`` found: counts for the user, and the files that were skipped."""

    dicom_files: int = 0
    parquet_files: int = 0
    s3_objects: int = 0
    skipped: list[str] = field(default_factory=list)  # one line per file: "path: reason"


ProgressFactory = Callable[[int, str], Any]


def features_from_files(paths: list[Path], progress: bool = True) -> tuple[list[dict], list[str]]:
    """Extract features from DICOM files; unreadable ones are skipped with a one-line reason."""
    from medsendx.dicomio import DicomReadError, read_dataset

    rows: list[dict] = []
    skipped: list[str] = []
    iterator: Iterable[Path] = paths
    bar = None
    if progress and paths:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("features"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        )
        bar.start()
        task = bar.add_task("features", total=len(paths))
    try:
        for path in iterator:
            try:
                rows.append(extract_features(read_dataset(path)))
            except DicomReadError as exc:
                skipped.append(f"{path}: {exc}")
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    return rows, skipped


def connect(memory_limit: str = "1GB", threads: int | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET threads = {int(threads or min(os.cpu_count() or 1, 4))}")
    con.execute("SET preserve_insertion_order = false")  # lets DuckDB stream big scans
    return con


def load_sources(con: duckdb.DuckDBPyConnection, sources: list[str], settings: Settings, progress: bool = True) -> SourceSet:
    """Create the DuckDB view ``raw`` over every source (one row per feature row)."""
    found = SourceSet()
    relations: list[str] = []
    parquet_files: list[str] = []
    dicom_files: list[Path] = []
    for source in sources:
        if source.startswith("s3://"):
            name = f"s3_{len(relations)}"
            count = _register_s3(con, source, settings, name)
            found.s3_objects += count
            if count:
                relations.append(name)
            continue
        path = Path(source)
        if path.is_file() and path.suffix == ".parquet":
            parquet_files.append(str(path))
        elif path.is_file():
            dicom_files.append(path)
        elif path.is_dir():
            from medsendx.dicomio import iter_dicom_files

            for file in iter_dicom_files(path):
                (parquet_files.append(str(file)) if file.suffix == ".parquet" else dicom_files.append(file))
        else:
            raise FileNotFoundError(f"no such file, folder or s3:// location: {source}")
    if parquet_files:
        con.execute(f"CREATE OR REPLACE TEMP VIEW local_parquet AS SELECT * FROM {_read_parquet_sql(parquet_files)}")
        relations.append("local_parquet")
        found.parquet_files = len(parquet_files)
    if dicom_files:
        rows, skipped = features_from_files(dicom_files, progress=progress)
        found.dicom_files = len(rows)
        found.skipped.extend(skipped)
        if rows:
            con.register("dicom_rows", rows_to_table(rows))
            relations.append("dicom_rows")
    if not relations:
        con.register("empty_rows", rows_to_table([]))
        relations.append("empty_rows")
    union = " UNION ALL BY NAME ".join(f"SELECT * FROM {r}" for r in relations)
    con.execute(f"CREATE OR REPLACE TEMP VIEW raw AS {union}")
    return found


def _register_s3(con: duckdb.DuckDBPyConnection, uri: str, settings: Settings, name: str) -> int:
    """Expose the Parquet objects under an s3:// prefix to DuckDB as ``name``."""
    from medsendx.fleet.store import FeatureStore

    files = FeatureStore(uri, settings).files()
    if not files:
        return 0
    if _httpfs_available(con, settings):
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM {_read_parquet_sql(files)}")
        return len(files)
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    s3 = settings.s3
    endpoint = s3.endpoint_url or os.environ.get("AWS_ENDPOINT_URL", "")
    scheme = "http" if endpoint.startswith("http://") else "https"
    filesystem = pafs.S3FileSystem(
        access_key=s3.access_key_id or os.environ.get("AWS_ACCESS_KEY_ID") or None,
        secret_key=s3.secret_access_key or os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
        region=s3.region or "us-east-1",
        endpoint_override=endpoint.split("://", 1)[-1] or None,
        scheme=scheme,
    )
    keys = [f[len("s3://") :] for f in files]
    # Files from different modalities / triage versions may differ in columns: unify.
    schema = pa.unify_schemas([pq.read_schema(k, filesystem=filesystem) for k in keys], promote_options="permissive")
    dataset = pads.dataset(keys, schema=schema, format="parquet", filesystem=filesystem)
    con.register(name, dataset)
    return len(files)


def _httpfs_available(con: duckdb.DuckDBPyConnection, settings: Settings) -> bool:
    """Load httpfs if it is installed locally (never downloads) and point it at settings.s3."""
    try:
        con.execute("LOAD httpfs")
    except duckdb.Error:
        return False
    s3 = settings.s3
    endpoint = s3.endpoint_url
    params = [
        "TYPE s3",
        f"KEY_ID '{s3.access_key_id}'" if s3.access_key_id else "",
        f"SECRET '{s3.secret_access_key}'" if s3.secret_access_key else "",
        f"REGION '{s3.region}'" if s3.region else "",
    ]
    if endpoint:
        params += [
            f"ENDPOINT '{endpoint.split('://', 1)[-1]}'",
            f"USE_SSL {'false' if endpoint.startswith('http://') else 'true'}",
            "URL_STYLE 'path'",
        ]
    con.execute(f"CREATE OR REPLACE SECRET medsendx_s3 ({', '.join(p for p in params if p)})")
    return True


def mine(
    sources: list[str],
    out_dir: Path,
    settings: Settings,
    *,
    progress: bool = True,
    con: duckdb.DuckDBPyConnection | None = None,
) -> dict[str, Any]:
    """Run the whole mining job; write the PNG, JSON and Parquet into ``out_dir``.

    Returns the report dict (as written to ``fleet_report.json``) with an extra
    ``"_sources"`` key describing what was read (not written to the file).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    con = con or connect()
    found = load_sources(con, sources, settings, progress=progress)
    return analyse(con, out_dir, found)


def analyse(con: duckdb.DuckDBPyConnection, out_dir: Path, found: SourceSet | None = None) -> dict[str, Any]:
    """Mine the rows of the DuckDB relation ``raw`` into the three outputs."""
    found = found or SourceSet()
    # One row per scan: a re-sent scan (same SOP Instance UID) counts once.
    con.execute(
        """CREATE OR REPLACE TEMP TABLE scans AS
           SELECT DISTINCT ON (sop_instance_uid) * FROM raw WHERE sop_instance_uid IS NOT NULL
           UNION ALL BY NAME SELECT * FROM raw WHERE sop_instance_uid IS NULL"""
    )
    columns = {name for (name,) in con.execute("SELECT column_name FROM (DESCRIBE scans)").fetchall()}
    for needed in ("station", "group_key", "acquired_at", "instance_number", "mean", "std", "peak") + SPC_METRICS:
        if needed not in columns:
            raise ValueError(f"the feature rows have no column {needed!r}; are these MedSendX feature files?")
    _write_parquet(con, out_dir / FEATURES_PARQUET)
    n_scans = con.execute("SELECT count(*) FROM scans").fetchone()[0]

    metrics = list(SPC_METRICS)
    all_features = ["mean", "std", "peak"] + metrics
    baselines = _baselines(con, all_features)
    con.execute(
        """CREATE OR REPLACE TEMP TABLE series AS
           SELECT (row_number() OVER (ORDER BY station, group_key) - 1)::INTEGER AS series_id, station, group_key, n
           FROM (SELECT coalesce(station, 'UNKNOWN') AS station, coalesce(group_key, '?') AS group_key, count(*) AS n
                 FROM scans GROUP BY ALL)"""
    )
    series = con.execute("SELECT series_id, station, group_key, n FROM series ORDER BY series_id").fetchall()
    select = ", ".join(f'CAST(s."{c}" AS DOUBLE) AS "{c}"' for c in all_features)
    ordered = con.sql(
        f"""SELECT r.series_id, s.sop_instance_uid, {select}
            FROM scans s JOIN series r
              ON coalesce(s.station, 'UNKNOWN') = r.station AND coalesce(s.group_key, '?') = r.group_key
            ORDER BY r.series_id, s.acquired_at NULLS LAST, s.instance_number NULLS LAST, s.sop_instance_uid"""
    ).to_arrow_table()
    values = np.column_stack(
        [ordered.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in all_features]
    ) if n_scans else np.zeros((0, len(all_features)))
    uids = ordered.column("sop_instance_uid")
    del ordered

    lengths = np.array([row[3] for row in series], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(series) else np.zeros(0, np.int64)
    group_names = sorted({row[2] for row in series})
    group_index = {g: i for i, g in enumerate(group_names)}
    series_group = np.array([group_index[row[2]] for row in series], dtype=np.int64)
    row_group = np.repeat(series_group, lengths) if len(series) else np.zeros(0, np.int64)
    med = np.array([[baselines.get(g, {}).get(f, (math.nan, math.nan))[0] for f in all_features] for g in group_names])
    rsd = np.array([[baselines.get(g, {}).get(f, (math.nan, math.nan))[1] for f in all_features] for g in group_names])
    if not len(group_names):
        med = rsd = np.zeros((0, len(all_features)))
    z_all = detect.robust_z(values, med[row_group], rsd[row_group]) if n_scans else values

    # Per-station SPC on the physics metrics.
    spc_cols = [all_features.index(m) for m in metrics]
    z_spc = np.clip(z_all[:, spc_cols], -detect.Z_CLIP, detect.Z_CLIP)
    ewma = detect.segmented_ewma(z_spc, starts)
    scale = detect.within_series_sd(z_spc, starts, lengths, series_group)
    alerts = detect.find_alerts(ewma, starts, lengths, scale)
    station_alerts: dict[str, list[dict[str, Any]]] = {}
    charts: list[dict[str, Any]] = []
    for alert in alerts:
        sid, station, group, _n = series[alert.series]
        metric = metrics[alert.metric]
        col = spc_cols[alert.metric]
        g = group_index[group]
        lo = starts[alert.series]
        window = values[lo + alert.window_start : lo + alert.length, col]
        value = float(np.nanmean(window)) if np.isfinite(window).any() else math.nan
        baseline, robust_sd = float(med[g, col]), float(rsd[g, col])
        score = (value - baseline) / robust_sd if robust_sd > 0 else math.nan
        if not (abs(score) >= detect.MIN_ALERT_SCORE):
            continue  # out of control by a hair at the last scan: not worth a person's time
        n_window = alert.length - alert.window_start
        message = (
            f"station {station}: {METRIC_LABELS[metric]} {_fmt(value, metric)} over its last {n_window} "
            f"{describe_group(group)}, fleet baseline {_fmt(baseline, metric)}, {abs(score):.1f} robust SD "
            f"{'above' if score > 0 else 'below'} (out of control since scan {alert.detected_at + 1} of {alert.length})"
        )
        station_alerts.setdefault(station, []).append(
            {
                "metric": metric,
                "message": message,
                "value": _num(value),
                "baseline": _num(baseline),
                "score": _num(score),
                "group": group,
                "detected_at_scan": alert.detected_at + 1,
                "change_start_scan": alert.change_start + 1,
                "series_scans": alert.length,
            }
        )
        charts.append(
            {
                "station": station,
                "metric": metric,
                "group": group,
                "values": values[lo : lo + alert.length, col],
                "ewma": ewma[lo : lo + alert.length, alert.metric],
                "baseline": baseline,
                "robust_sd": robust_sd,
                "detected_at": alert.detected_at,
                "limit": alert.limit,
                "score": score,
            }
        )

    stations: dict[str, int] = {}
    for _sid, station, _group, n in series:
        stations[station] = stations.get(station, 0) + int(n)
    station_list = [
        {
            "station": station,
            "scans": count,
            "status": "alert" if station_alerts.get(station) else "ok",
            "alerts": sorted(station_alerts.get(station, []), key=lambda a: -abs(a["score"] or 0)),
        }
        for station, count in sorted(stations.items())
    ]

    # The prototype's view: 2-means on standardised density and contrast.
    density_contrast = values[:, :2]
    finite = np.isfinite(density_contrast).all(axis=1)
    dc = density_contrast[finite]
    centre, scale = (dc.mean(axis=0), dc.std(axis=0)) if len(dc) else (np.zeros(2), np.ones(2))
    scale = np.where(scale > 0, scale, 1.0)
    standardised = (dc - centre) / scale
    labels, centres = detect.two_means(standardised)
    sizes = [int((labels == 0).sum()), int((labels == 1).sum())]

    outliers = _outliers(values, z_all, med, all_features, row_group, group_names, series, lengths, uids)

    report: dict[str, Any] = {
        "scans": int(n_scans),
        "stations": station_list,
        "outliers": outliers,
        "clusters": {"k": 2, "sizes": sizes, "features": ["mean", "std"], "centres_standardised": centres.tolist()},
        "baselines": {
            g: {f: {"median": _num(baselines[g][f][0]), "robust_sd": _num(baselines[g][f][1])} for f in all_features if f in baselines.get(g, {})}
            for g in group_names
        },
        "method": {
            "baseline": "median and 1.4826*MAD per group (modality/body part/protocol family) over the fleet",
            "spc": f"EWMA lambda={detect.EWMA_LAMBDA} on robust z (clipped to +-{detect.Z_CLIP}), limit {detect.EWMA_L} sigma, alert when out of control at the latest scan",
            "outliers": f"robust Mahalanobis (MCD) on robust z per group, chi-square p < {OUTLIER_P}",
        },
    }
    from medsendx.fsutil import atomic_write_bytes

    atomic_write_bytes(out_dir / REPORT_JSON, (json.dumps(report, indent=2) + "\n").encode())
    # Scatter: a sample is enough for the eye and keeps the PNG fast at a million scans.
    station_codes = np.repeat(np.arange(len(series)), lengths)[finite] if len(series) else np.zeros(0, int)
    series_station = [row[1] for row in series]
    from medsendx.fleet.plot import render_report

    render_report(
        out_dir / REPORT_PNG,
        standardised,
        labels,
        centres,
        station_codes,
        series_station,
        charts,
        station_list,
        int(n_scans),
    )
    report["_sources"] = found
    return report


def describe_group(group: str) -> str:
    """``CT/HEAD/120kV-standard`` -> ``head CTs`` (for sentences)."""
    modality, body_part, _family = (group.split("/") + ["?", "?"])[:3]
    modality_word = (modality if modality != "?" else "scan") + "s"
    return f"{body_part.lower()} {modality_word}" if body_part not in ("?", "") else modality_word


def _baselines(con: duckdb.DuckDBPyConnection, features: list[str]) -> dict[str, dict[str, tuple[float, float]]]:
    """Fleet median and robust SD (1.4826 MAD) per group and feature, computed in DuckDB."""
    aggs = ", ".join(f'median("{f}"), mad("{f}"), count("{f}")' for f in features)
    rows = con.execute(f"SELECT coalesce(group_key, '?') AS g, {aggs} FROM scans GROUP BY ALL").fetchall()
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for row in rows:
        group = row[0]
        out[group] = {}
        for i, feature in enumerate(features):
            median, mad, count = row[1 + 3 * i : 4 + 3 * i]
            if not count:
                continue
            median = float(median)
            # A floor on the spread: a perfectly constant feature (MAD 0) must not turn
            # a rounding difference into an infinite score.
            floor = max(0.5 if feature in UNITS else 1e-6, 0.005 * abs(median))
            out[group][feature] = (median, max(1.4826 * float(mad or 0.0), floor))
    return out


def _outliers(
    values: np.ndarray,
    z_all: np.ndarray,
    med: np.ndarray,
    features: list[str],
    row_group: np.ndarray,
    group_names: list[str],
    series: list[tuple],
    lengths: np.ndarray,
    uids: pa.ChunkedArray,
) -> list[dict[str, Any]]:
    """Scans far from their group in several features at once, with the features why."""
    from scipy.stats import chi2

    found: list[tuple[float, int, list[str]]] = []
    for g, group in enumerate(group_names):
        rows = np.nonzero(row_group == g)[0]
        if len(rows) == 0:
            continue
        kind = "CT" if group.startswith("CT/") else "other"
        cols = [features.index(f) for f in OUTLIER_FEATURES[kind]]
        present = [c for c in cols if np.isfinite(values[rows, c]).mean() > 0.5]
        if len(present) < 2:
            continue
        z = z_all[np.ix_(rows, present)]
        distance = detect.robust_mahalanobis(z)
        threshold = math.sqrt(chi2.ppf(1.0 - OUTLIER_P, df=len(present)))
        candidates = np.nonzero(distance > threshold)[0]
        top = candidates[np.argsort(-distance[candidates])][:MAX_OUTLIERS]
        for i in top:
            row = rows[i]
            zr = z[i]
            order = np.argsort(-np.abs(zr))
            reasons = []
            for j in order[:3]:
                if abs(zr[j]) < 3 and reasons:
                    break
                name = features[present[j]]
                reasons.append(
                    f"{METRIC_LABELS.get(name, name)} {_fmt(values[row, present[j]], name)}, group median "
                    f"{_fmt(med[g, present[j]], name)} ({zr[j]:+.1f} robust SD)"
                )
            found.append((float(distance[i]), int(row), reasons))
    found.sort(key=lambda t: -t[0])
    series_of_row = np.repeat(np.arange(len(series)), lengths) if len(series) else np.zeros(0, int)
    return [
        {
            "sop_instance_uid": uids[row].as_py(),
            "station": series[int(series_of_row[row])][1],
            "score": round(score, 2),
            "reasons": reasons,
        }
        for score, row, reasons in found[:MAX_OUTLIERS]
    ]


def _write_parquet(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    con.execute(f"COPY scans TO '{_sql_path(tmp)}' (FORMAT parquet, COMPRESSION zstd)")
    os.replace(tmp, path)


def _sql_path(path: Path | str) -> str:
    """A path as the inside of an SQL string literal (views cannot take parameters)."""
    return str(path).replace("'", "''")


def _read_parquet_sql(files: list[str]) -> str:
    listed = ", ".join(f"'{_sql_path(f)}'" for f in files)
    return f"read_parquet([{listed}], union_by_name = true, hive_partitioning = false)"


def _fmt(value: float, metric: str) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    unit = UNITS.get(metric, "")
    text = f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"
    return f"{text} {unit}".strip()


def _num(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 3)
