"""``medsendx mine``: load feature rows from anywhere, find failing scanners, write the report.

Sources (any mix): folders of DICOM files (features are extracted here), Parquet files or
folders of them (a :class:`FeatureStore`), and ``s3://bucket/prefix`` locations. Everything
is queried with DuckDB; the heavy work (de-duplication, ordering, robust baselines) happens
there, and only numeric columns come back to numpy for the vectorised control charts.

S3: the Parquet objects are fetched through the project's one S3 client
(:func:`medsendx.s3client.s3_client`: ``settings.s3``, TLS verified as ``[outbox]`` says)
into a private temp folder and scanned by DuckDB like local files. DuckDB's ``httpfs``
is not used: it cannot be downloaded offline, and it would need the keys pasted into SQL.
"""

from __future__ import annotations

import json
import math
import os
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
from medsendx.fleet.store import rows_to_table

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
    temp_dirs: list[Path] = field(default_factory=list)  # fetched S3 objects; removed by :func:`mine`

    def cleanup(self) -> None:
        import shutil

        for folder in self.temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        self.temp_dirs.clear()


ProgressFactory = Callable[[int, str], Any]


def _features_of(path: Path) -> tuple[dict | None, str | None]:
    """(row, None) or (None, "path: reason"); the reason is our own words."""
    from medsendx.dicomio import DicomReadError, read_dataset

    try:
        return extract_features(read_dataset(path)), None
    except DicomReadError as exc:
        return None, f"{path}: {exc}"
    except Exception as exc:  # odd but readable objects must not stop a fleet-wide job
        return None, f"{path}: features could not be computed ({type(exc).__name__})"


PARALLEL_MIN_FILES = 64  # below this, starting worker processes costs more than it saves


def features_from_files(paths: list[Path], progress: bool = True, jobs: int = 1) -> tuple[list[dict], list[str]]:
    """Extract features from DICOM files, in order, with ``jobs`` worker processes.

    Unreadable files are skipped with a one-line reason ("path: reason").
    """
    rows: list[dict] = []
    skipped: list[str] = []
    bar = None
    if progress and paths:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("features"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        )
        bar.start()
        task = bar.add_task("features", total=len(paths))
    pool = None
    try:
        if jobs > 1 and len(paths) >= PARALLEL_MIN_FILES:
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(max_workers=jobs)
            results: Iterable[tuple[dict | None, str | None]] = pool.map(_features_of, paths, chunksize=16)
        else:
            results = map(_features_of, paths)
        for row, reason in results:
            if row is not None:
                rows.append(row)
            else:
                skipped.append(reason or "")
            if bar is not None:
                bar.advance(task)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.stop()
    return rows, skipped


def connect(memory_limit: str = "512MB", threads: int | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{memory_limit}'")  # DuckDB spills to disk beyond this
    con.execute(f"SET threads = {int(threads or min(os.cpu_count() or 1, 4))}")
    con.execute("SET preserve_insertion_order = false")  # lets DuckDB stream big scans
    return con


def load_sources(
    con: duckdb.DuckDBPyConnection, sources: list[str], settings: Settings, progress: bool = True, jobs: int = 1
) -> SourceSet:
    """Create the DuckDB view ``raw`` over every source (one row per feature row)."""
    found = SourceSet()
    relations: list[str] = []
    parquet_files: list[str] = []
    dicom_files: list[Path] = []
    for source in sources:
        if source.startswith("s3://"):
            name = f"s3_{len(relations)}"
            count = _register_s3(con, source, settings, name, found)
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
        rows, skipped = features_from_files(dicom_files, progress=progress, jobs=jobs)
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


def _register_s3(con: duckdb.DuckDBPyConnection, uri: str, settings: Settings, name: str, found: SourceSet) -> int:
    """Expose the Parquet objects under an s3:// prefix to DuckDB as ``name``.

    The objects are fetched through the project's one S3 client (``settings.s3``, TLS
    verified as ``[outbox]`` says) into a private temp folder and scanned by DuckDB like
    local files: memory stays bounded (the disk holds the objects), and no S3 key or secret
    is ever pasted into SQL (DuckDB's own S3 support would need both)."""
    import tempfile

    from medsendx.fleet.store import FeatureStore, split_s3_uri

    store = FeatureStore(uri, settings)
    files = store.files()
    if not files:
        return 0
    folder = Path(tempfile.mkdtemp(prefix="medsendx-s3-"))  # 0700
    found.temp_dirs.append(folder)
    client = store.s3_client()
    local: list[str] = []
    for number, uri_file in enumerate(files):
        bucket, key = split_s3_uri(uri_file)
        target = folder / f"{number:08d}.parquet"  # our own names, never the object's key
        client.download_file(bucket, key, str(target))
        local.append(str(target))
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM {_read_parquet_sql(local)}")
    return len(files)


def mine(
    sources: list[str],
    out_dir: Path,
    settings: Settings,
    *,
    progress: bool = True,
    jobs: int = 1,
    con: duckdb.DuckDBPyConnection | None = None,
) -> dict[str, Any]:
    """Run the whole mining job; write the PNG, JSON and Parquet into ``out_dir``.

    Returns the report dict (as written to ``fleet_report.json``) with an extra
    ``"_sources"`` key describing what was read (not written to the file).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    con = con or connect()
    found = load_sources(con, sources, settings, progress=progress, jobs=jobs)
    try:
        return analyse(con, out_dir, found)
    finally:
        found.cleanup()


def analyse(
    con: duckdb.DuckDBPyConnection, out_dir: Path, found: SourceSet | None = None, *, render_png: bool = True
) -> dict[str, Any]:
    """Mine the rows of the DuckDB relation ``raw`` into the three outputs.

    ``render_png=False`` skips ``mining_report.png`` (the hub draws its own charts) and the
    report then also carries ``"_charts"`` (one per alert: values, EWMA, baseline) and
    ``"_scatter"`` (the sampled standardised density/contrast, labels, stations, centres).

    Memory stays bounded whatever the fleet's size: DuckDB does the aggregation (baselines,
    per-series spread, samples), and the per-scan work (control charts, cluster labels,
    outlier scores) runs over batches of whole station series of at most BATCH_ROWS rows.
    """
    found = found or SourceSet()
    columns = {name for (name,) in con.execute("SELECT column_name FROM (DESCRIBE raw)").fetchall()}
    for needed in ("sop_instance_uid", "station", "group_key", "acquired_at", "instance_number", "mean", "std", "peak") + SPC_METRICS:
        if needed not in columns:
            raise ValueError(f"the feature rows have no column {needed!r}; are these MedSendX feature files?")
    # features.parquet (one row per scan) is written first, straight from the sources, and
    # then is the only thing the analysis reads.
    features_path = out_dir / FEATURES_PARQUET
    _write_unique_scans(con, features_path)
    con.execute(
        f"""CREATE OR REPLACE TEMP VIEW scans AS
            SELECT * REPLACE (coalesce(station, 'UNKNOWN') AS station, coalesce(group_key, '?') AS group_key)
            FROM read_parquet('{_sql_path(features_path)}')"""
    )
    n_scans = int(con.execute("SELECT count(*) FROM scans").fetchall()[0][0])

    metrics = list(SPC_METRICS)
    all_features = ["mean", "std", "peak"] + metrics
    baselines = _baselines(con, all_features)
    group_names = sorted(baselines)
    group_index = {g: i for i, g in enumerate(group_names)}
    nan = (math.nan, math.nan)
    med = np.array([[baselines[g].get(f, nan)[0] for f in metrics] for g in group_names]).reshape(-1, len(metrics))
    rsd = np.array([[baselines[g].get(f, nan)[1] for f in metrics] for g in group_names]).reshape(-1, len(metrics))

    series = _series_table(con, group_names, med, rsd, metrics)
    lengths = np.array([row[3] for row in series], dtype=np.int64)
    series_group = np.array([group_index[row[2]] for row in series], dtype=np.int64)
    spread = np.array([row[4:] for row in series], dtype=np.float64).reshape(-1, len(metrics))
    scale = detect.group_scale(spread, lengths, series_group)

    # Samples (a deterministic hash of the UID) fit the 2-means and the outlier yardsticks
    # and feed the scatter; the fitted scikit-learn models then label and score every scan.
    sample = _sample(con, metrics, n_scans)
    centre, spread_dc = _density_contrast_scale(con)
    sample_dc = (np.column_stack([sample["mean"], sample["std"]]) - centre) / spread_dc
    finite_sample = np.isfinite(sample_dc).all(axis=1)
    kmeans = detect.fit_two_means(sample_dc[finite_sample])
    sample_group = np.array([group_index.get(g, -1) for g in sample["group_key"]], dtype=np.int64)
    sample_metrics = np.column_stack([sample[m] for m in metrics]) if len(sample_group) else np.zeros((0, len(metrics)))
    models = _outlier_models(con, group_names, sample_metrics, sample_group, med, rsd, metrics)

    station_alerts: dict[str, list[dict[str, Any]]] = {}
    charts: list[dict[str, Any]] = []
    cluster_sizes = np.zeros(2, dtype=np.int64)
    candidates: list[tuple[float, str, str, list[str]]] = []
    for first, last in _batches(lengths, BATCH_ROWS):
        uids, values = _fetch_series(con, first, last, metrics)
        b_lengths = lengths[first : last + 1]
        b_starts = np.concatenate([[0], np.cumsum(b_lengths)[:-1]]).astype(np.int64)
        row_group = np.repeat(series_group[first : last + 1], b_lengths)
        z = detect.robust_z(values[:, 2:], med[row_group], rsd[row_group])

        # 1. per-station SPC on the physics metrics
        ewma = detect.segmented_ewma(np.clip(z, -detect.Z_CLIP, detect.Z_CLIP), b_starts)
        for alert in detect.find_alerts(ewma, b_starts, b_lengths, scale[first : last + 1]):
            _sid, station, group, _n = series[first + alert.series][:4]
            g, m = group_index[group], alert.metric
            lo = b_starts[alert.series]
            history = values[lo : lo + alert.length, 2 + m]
            window = history[alert.window_start :]
            value = float(np.nanmean(window)) if np.isfinite(window).any() else math.nan
            baseline, robust_sd = float(med[g, m]), float(rsd[g, m])
            score = (value - baseline) / robust_sd if robust_sd > 0 else math.nan
            if not (abs(score) >= detect.MIN_ALERT_SCORE):
                continue  # out of control by a hair at the last scan: not worth a person's time
            metric = metrics[m]
            message = (
                f"station {station}: {METRIC_LABELS[metric]} {_fmt(value, metric)} over its last {len(window)} "
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
                    "values": history.copy(),
                    # for people: the EWMA of the values themselves, in the metric's units
                    "ewma": baseline + detect.ewma(np.nan_to_num(history - baseline)[:, None])[:, 0],
                    "baseline": baseline,
                    "robust_sd": robust_sd,
                    "detected_at": alert.detected_at,
                    "limit": alert.limit,
                    "score": score,
                }
            )
        del ewma

        # 2. the prototype's view: 2-means labels for every scan
        dc = (values[:, :2] - centre) / spread_dc
        finite = np.isfinite(dc).all(axis=1)
        cluster_sizes += np.bincount(detect.two_means_labels(kmeans, dc[finite]), minlength=2)[:2]

        # 3. multivariate outliers, with the features that make them stand out
        row_series = np.repeat(np.arange(first, last + 1), b_lengths)
        candidates.extend(_outliers(models, z, values[:, 2:], row_group, med, metrics, uids, row_series, series))
        candidates = sorted(candidates, key=lambda c: -c[0])[:MAX_OUTLIERS]

    # Clusters are numbered by size, largest first.
    centres = kmeans.cluster_centers_ if kmeans is not None else np.zeros((2, 2))
    sample_labels = detect.two_means_labels(kmeans, sample_dc[finite_sample])
    if cluster_sizes[1] > cluster_sizes[0]:
        cluster_sizes, centres, sample_labels = cluster_sizes[::-1].copy(), centres[::-1].copy(), 1 - sample_labels

    stations: dict[str, int] = {}
    for row in series:
        stations[row[1]] = stations.get(row[1], 0) + int(row[3])
    station_list = [
        {
            "station": station,
            "scans": count,
            "status": "alert" if station_alerts.get(station) else "ok",
            "alerts": sorted(station_alerts.get(station, []), key=lambda a: -abs(a["score"] or 0)),
        }
        for station, count in sorted(stations.items())
    ]
    report: dict[str, Any] = {
        "scans": n_scans,
        "stations": station_list,
        "outliers": [
            {"sop_instance_uid": uid, "station": station, "score": round(score, 2), "reasons": reasons}
            for score, uid, station, reasons in candidates
        ],
        "clusters": {
            "k": 2,
            "sizes": [int(cluster_sizes[0]), int(cluster_sizes[1])],
            "features": ["mean", "std"],
            "centres_standardised": centres.tolist(),
        },
        "baselines": {
            g: {f: {"median": _num(baselines[g][f][0]), "robust_sd": _num(baselines[g][f][1])} for f in all_features if f in baselines[g]}
            for g in group_names
        },
        "method": {
            "baseline": "median and 1.4826*MAD per group (modality/body part/protocol family) over the fleet",
            "spc": (
                f"EWMA lambda={detect.EWMA_LAMBDA} on robust z clipped to +-{detect.Z_CLIP}, limit {detect.EWMA_L} sigma "
                f"(scaled by the group's typical scan-to-scan spread); alert when out of control at the latest scan "
                f"and the scans since the change average >= {detect.MIN_ALERT_SCORE} robust SD off the baseline"
            ),
            "clusters": (
                "scikit-learn KMeans (k=2, 4 restarts) on standardised density and contrast, fitted on a "
                f"hash-chosen sample of about {SAMPLE_ROWS} scans, every scan labelled by predict"
            ),
            "outliers": (
                f"robust Mahalanobis distance from scikit-learn MinCovDet fitted per group on robust z of a seeded "
                f"sample of at most {detect.MCD_MAX_ROWS} scans, every scan scored, chi-square p < {OUTLIER_P}"
            ),
        },
    }
    from medsendx.fsutil import atomic_write_bytes

    atomic_write_bytes(out_dir / REPORT_JSON, (json.dumps(report, indent=2) + "\n").encode())
    if not render_png:
        report["_charts"] = charts
        report["_scatter"] = {
            "points": sample_dc[finite_sample],
            "labels": sample_labels,
            "stations": np.asarray(sample["station"], dtype=object)[finite_sample],
            "centres": centres,
            "sizes": cluster_sizes.tolist(),
        }
        report["_sources"] = found
        return report
    from medsendx.fleet.plot import render_report

    render_report(
        out_dir / REPORT_PNG,
        sample_dc[finite_sample],
        sample_labels,
        centres,
        cluster_sizes.tolist(),
        np.asarray(sample["station"], dtype=object)[finite_sample],
        charts,
        station_list,
        n_scans,
    )
    report["_sources"] = found
    return report


BATCH_ROWS = 250_000
SAMPLE_ROWS = 20_000
MIN_GROUP_SAMPLE = detect.MCD_MAX_ROWS  # below this many sampled rows, a group gets its own sample query


def _series_table(con: duckdb.DuckDBPyConnection, group_names: list[str], med: np.ndarray, rsd: np.ndarray, metrics: list[str]) -> list[tuple]:
    """One row per (station, group) in order: id, station, group, scans, and per metric the
    scan-to-scan SD of the clipped robust z (computed in DuckDB against the baselines)."""
    baseline = pa.table(
        {"group_key": group_names}
        | {f"med_{i}": med[:, i] for i in range(len(metrics))}
        | {f"rsd_{i}": rsd[:, i] for i in range(len(metrics))}
    )
    con.register("baseline_table", baseline)
    clip = detect.Z_CLIP
    spreads = ", ".join(
        f'stddev_samp(coalesce(greatest(-{clip}, least({clip}, (s."{m}" - b.med_{i}) / b.rsd_{i})), 0)) AS sd_{i}'
        for i, m in enumerate(metrics)
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE series AS
            SELECT (row_number() OVER (ORDER BY station, group_key) - 1)::INTEGER AS series_id, *
            FROM (SELECT s.station, s.group_key, count(*) AS n, {spreads}
                  FROM scans s JOIN baseline_table b ON s.group_key = b.group_key GROUP BY ALL)"""
    )
    con.unregister("baseline_table")
    return con.execute("SELECT * FROM series ORDER BY series_id").fetchall()


def _batches(lengths: np.ndarray, max_rows: int) -> list[tuple[int, int]]:
    """Runs of whole series (first, last index) of at most ``max_rows`` rows (one long
    series may exceed it alone)."""
    out: list[tuple[int, int]] = []
    first, rows = 0, 0
    for i, n in enumerate(lengths.tolist()):
        if rows and rows + n > max_rows:
            out.append((first, i - 1))
            first, rows = i, 0
        rows += n
    if len(lengths):
        out.append((first, len(lengths) - 1))
    return out


def _fetch_series(con: duckdb.DuckDBPyConnection, first: int, last: int, metrics: list[str]) -> tuple[pa.ChunkedArray, np.ndarray]:
    """The scans of series ``first..last`` in series then time order: UIDs, and a float
    matrix with columns mean, std, then the metrics."""
    fetched = ["mean", "std"] + metrics
    select = ", ".join(f's."{c}"::DOUBLE AS "{c}"' for c in fetched)
    table = con.sql(
        f"""SELECT s.sop_instance_uid, {select}
            FROM scans s JOIN series r ON s.station = r.station AND s.group_key = r.group_key
            WHERE r.series_id BETWEEN {int(first)} AND {int(last)}
            ORDER BY r.series_id, s.acquired_at NULLS LAST, s.instance_number NULLS LAST, s.sop_instance_uid"""
    ).to_arrow_table()
    values = np.empty((table.num_rows, len(fetched)))
    for i, name in enumerate(fetched):
        values[:, i] = table.column(name).to_numpy(zero_copy_only=False)
    return table.column("sop_instance_uid"), values


def _sample_filter(rows: int) -> str:
    """A WHERE condition keeping about SAMPLE_ROWS of ``rows`` scans, chosen by a hash of
    the SOP Instance UID: the same scans on every run and with any number of threads (a
    reservoir sample is only repeatable single-threaded), so the report is reproducible."""
    keep = min(1_000_000, -(-SAMPLE_ROWS * 1_000_000 // max(rows, 1)))
    return f"hash(coalesce(sop_instance_uid, '')) % 1000000 < {keep}"


def _sample(con: duckdb.DuckDBPyConnection, metrics: list[str], n_scans: int) -> dict[str, np.ndarray]:
    cols = ", ".join(f'"{c}"::DOUBLE AS "{c}"' for c in ["mean", "std"] + metrics)
    # In UID order: DuckDB's threads return rows in any order, and the seeded fits must see
    # the same rows in the same order on every run.
    table = con.sql(
        f"SELECT station, group_key, {cols} FROM scans WHERE {_sample_filter(n_scans)} ORDER BY sop_instance_uid"
    ).to_arrow_table()
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _density_contrast_scale(con: duckdb.DuckDBPyConnection) -> tuple[np.ndarray, np.ndarray]:
    """Mean and SD of density and contrast over the fleet, for standardising."""
    row = con.execute(
        "SELECT avg(mean), stddev_pop(mean), avg(std), stddev_pop(std) FROM scans WHERE mean IS NOT NULL AND std IS NOT NULL"
    ).fetchall()[0]
    values = [float(v) if v is not None else math.nan for v in row]
    centre = np.nan_to_num(np.array([values[0], values[2]]))
    spread = np.array([values[1], values[3]])
    return centre, np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)


def _outlier_models(con, group_names, sample_metrics, sample_group, med, rsd, metrics) -> dict[int, tuple[list[int], detect.RobustCovariance, float]]:
    """Per group: the metric columns it has, the robust covariance fit, the distance limit."""
    from scipy.special import chdtri  # chi-square quantile, without scipy.stats' start-up

    models: dict[int, tuple[list[int], detect.RobustCovariance, float]] = {}
    for g, group in enumerate(group_names):
        rows = sample_metrics[sample_group == g]
        if len(rows) < MIN_GROUP_SAMPLE:
            cols = ", ".join(f'"{m}"::DOUBLE' for m in metrics)
            group_rows = con.execute("SELECT count(*) FROM scans WHERE group_key = ?", [group]).fetchall()[0][0]
            rows = con.execute(
                f"SELECT {cols} FROM scans WHERE group_key = ? AND {_sample_filter(group_rows)} ORDER BY sop_instance_uid", [group]
            ).fetchnumpy()
            rows = np.column_stack([np.asarray(rows[k], dtype=np.float64) for k in rows]) if len(rows) else np.zeros((0, len(metrics)))
        if len(rows) == 0:
            continue
        wanted = [metrics.index(f) for f in OUTLIER_FEATURES["CT" if group.startswith("CT/") else "other"]]
        present = [c for c in wanted if np.isfinite(rows[:, c]).mean() > 0.5]
        if len(present) < 2:
            continue
        z = detect.robust_z(rows[:, present], med[g, present], rsd[g, present])
        model = detect.fit_robust_covariance(z)
        if model is not None:
            models[g] = (present, model, math.sqrt(float(chdtri(int(model.keep.sum()), OUTLIER_P))))
    return models


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


def _outliers(models, z, values, row_group, med, metrics, uids, row_series, series) -> list[tuple[float, str, str, list[str]]]:
    """Scans of one batch far from their group in several metrics at once: (score, UID,
    station, reasons), at most MAX_OUTLIERS per group, strongest first."""
    found: list[tuple[float, str, str, list[str]]] = []
    for g, (present, model, threshold) in models.items():
        rows = np.nonzero(row_group == g)[0]
        if len(rows) == 0:
            continue
        zg = z[np.ix_(rows, present)]
        distance = model.distance(zg)
        hits = np.nonzero((distance > threshold) & (np.abs(zg).max(axis=1) >= 3))[0]  # a feature to point at
        for i in hits[np.argsort(-distance[hits])][:MAX_OUTLIERS]:
            row = rows[i]
            reasons = []
            for j in np.argsort(-np.abs(zg[i]))[:3]:
                if abs(zg[i, j]) < 3 and reasons:
                    break
                name = metrics[present[j]]
                reasons.append(
                    f"{METRIC_LABELS.get(name, name)} {_fmt(values[row, present[j]], name)}, group median "
                    f"{_fmt(med[g, present[j]], name)} ({zg[i, j]:+.1f} robust SD)"
                )
            found.append((float(distance[i]), uids[int(row)].as_py(), series[int(row_series[row])][1], reasons))
    return found


def _write_unique_scans(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Copy ``raw`` to Parquet, keeping one row per SOP Instance UID (a re-sent scan counts once).

    Only the UIDs that occur more than once go through DISTINCT ON; de-duplicating every row
    would cost a hash table over the whole fleet.
    """
    con.execute(
        """CREATE OR REPLACE TEMP TABLE repeated_uids AS
           SELECT sop_instance_uid FROM raw WHERE sop_instance_uid IS NOT NULL GROUP BY 1 HAVING count(*) > 1"""
    )
    if con.execute("SELECT count(*) FROM repeated_uids").fetchall()[0][0]:
        query = """SELECT * FROM raw WHERE sop_instance_uid IS NULL
                      OR sop_instance_uid NOT IN (SELECT sop_instance_uid FROM repeated_uids)
                   UNION ALL BY NAME
                   SELECT DISTINCT ON (sop_instance_uid) * FROM raw
                   WHERE sop_instance_uid IN (SELECT sop_instance_uid FROM repeated_uids)"""
    else:
        query = "SELECT * FROM raw"
    tmp = path.with_name(f".{path.name}.tmp")
    con.execute(f"COPY ({query}) TO '{_sql_path(tmp)}' (FORMAT parquet, COMPRESSION zstd)")
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
