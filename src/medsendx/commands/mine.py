"""``medsendx mine``: fleet analytics over feature rows or DICOM folders (issue 5)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from medsendx.commands._common import console, err_console, literal, settings_from_context


@click.command("mine")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default="current directory",
    help="Where to write mining_report.png, fleet_report.json and features.parquet.",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(1, 64),
    default=lambda: os.cpu_count() or 1,
    show_default="number of CPUs",
    help="Worker processes for extracting features from DICOM folders.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs and scripts).")
@click.option("--fail-on-alert", is_flag=True, help="Exit with status 3 when any station has an alert (for cron jobs).")
@click.pass_context
def mine_cmd(
    ctx: click.Context, sources: tuple[str, ...], out_dir: Path, jobs: int, no_progress: bool, fail_on_alert: bool
) -> None:
    """Find failing scanners across the fleet.

    SOURCES are folders of DICOM files (features are extracted), Parquet feature files or
    folders of them (a feature store), and s3://bucket/prefix locations (endpoint and keys
    from the [s3] settings / MEDSENDX_S3__*). All are queried together with DuckDB.

    \b
    Writes into --out:
      mining_report.png   2-means scatter by station, control charts, alert list
      fleet_report.json   scans, per-station status and alerts, outliers, clusters
      features.parquet    one row per scan (duplicates by SOP Instance UID dropped)

    Exit status: 0 on success (3 with --fail-on-alert when a station has an alert), 1 on
    an error.
    """
    from medsendx.fleet.report import REPORT_JSON, REPORT_PNG, mine

    settings = settings_from_context(ctx)
    try:
        report = mine(list(sources), out_dir, settings, progress=not no_progress, jobs=jobs)
    except (FileNotFoundError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {literal(exc)}", soft_wrap=True)
        raise SystemExit(1) from None
    found = report.pop("_sources")
    for line in found.skipped:
        err_console.print(f"[yellow]skipped[/yellow] {literal(line)}", soft_wrap=True)
    console.print(
        f"read {found.dicom_files} DICOM file(s), {found.parquet_files} Parquet file(s), "
        f"{found.s3_objects} S3 object(s): {report['scans']} scans from {len(report['stations'])} station(s)"
    )
    alerts = [a for s in report["stations"] for a in s["alerts"]]
    for alert in alerts:
        console.print(f"[red]ALERT[/red] {literal(alert['message'])}")
    if not alerts:
        console.print("[green]all stations in control[/green]")
    console.print(f"{len(report['outliers'])} outlier scan(s); clusters of {report['clusters']['sizes'][0]} and {report['clusters']['sizes'][1]} scans")
    console.print(f"wrote {literal(out_dir / REPORT_PNG)}, {literal(out_dir / REPORT_JSON)}, {literal(out_dir / 'features.parquet')}")
    if alerts and fail_on_alert:
        raise SystemExit(3)
