"""``medsendx segment``: tissue classes, quality flags and reading priority of a scan, with
the overlay picture (the prototype's density_plot)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table

from medsendx.commands._common import console, err_console, literal


@click.command("segment")
@click.argument("target", metavar="FILE_OR_SERIES", type=click.Path(exists=True))
@click.option(
    "--out",
    "out_png",
    type=click.Path(dir_okay=False),
    default="highlighted_scan.png",
    show_default=True,
    help="Overlay PNG to write (for a series: the slice with the highest priority).",
)
@click.option("--no-png", is_flag=True, help="Do not write the overlay PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the triage record(s) as JSON on stdout.")
@click.option("-k", "--classes", "k", type=click.IntRange(2, 8), default=None,
              help="Number of intensity classes (default 3, or the [triage] model's classes).")
@click.option("--dicom", "dicom_dir", type=click.Path(file_okay=False), default=None,
              help="Also write the triage results as DICOM into this folder: a Segmentation per "
                   "series, a TID 1500 report and a Key Object Selection per study.")
@click.pass_context
def segment_cmd(ctx: click.Context, target: str, out_png: str, no_png: bool, as_json: bool, k: int | None,
                dicom_dir: str | None) -> None:
    """Triage a DICOM FILE, or every file of a SERIES folder, on this machine.

    Pixels are split into intensity classes by exact (globally optimal) 1-D k-means: CT in
    Hounsfield units as Air / Soft tissue / Bone, mammography as Background / Fatty / Dense
    with the percent breast density, other modalities as Low / Medium / High signal.
    Padding and pixels outside the CT reconstruction circle are left out. Quality flags
    (mostly empty, saturated, metal, noisy, cut-off field of view) tell the technician to
    repeat the scan now.

    The priority (0-100) orders the reading list. It is NOT a diagnosis.

    The overlay PNG shows the windowed image, the colour-coded classes with a legend and
    the histogram with the class boundaries; it contains no identifying text.

    --dicom OUT writes the results a study ships with (SEG, SR, KOS) built from the input
    as given: they reference it and carry its patient and study. Run it on de-identified
    files (the output of `anonymize`) for anything that leaves this machine.
    """
    _skip_download_stack()
    from medsendx.commands._common import settings_from_context
    from medsendx.dicomio import DicomReadError, iter_dicom_files, read_dataset
    from medsendx.triage import KMeansSegmenter, TriageError, segmenter_for, triage_dataset, triage_series

    settings = settings_from_context(ctx, {})
    segmenter = KMeansSegmenter(k=k) if k is not None else segmenter_for(settings)
    path = Path(target)
    if dicom_dir is not None:
        files = iter_dicom_files(path) if path.is_dir() else [path]
        _write_dicom_results(files, Path(dicom_dir), segmenter, settings)
    if path.is_dir():
        series = triage_series(iter_dicom_files(path), segmenter)
        if as_json:
            click.echo(json.dumps(series.to_dict(), indent=2))
        else:
            _print_series(series)
        for name, reason in series.errors:
            err_console.print(f"[yellow]skipped[/yellow] {literal(name)}: {literal(reason)}", soft_wrap=True)
        worst = series.worst
        if worst is None:
            err_console.print(f"[red]error:[/red] {literal(target)}: no file in the folder could be triaged", soft_wrap=True)
            raise SystemExit(1)
        if not no_png:
            name, record = worst
            _render_or_fail(read_dataset(series.sources[name]), record, out_png, segmenter, series.sources[name])
        return

    try:
        ds = read_dataset(path)
        record = triage_dataset(ds, segmenter)
    except (DicomReadError, TriageError) as exc:
        err_console.print(f"[red]error:[/red] {literal(target)}: {literal(exc)}", soft_wrap=True)
        raise SystemExit(1)
    if as_json:
        click.echo(json.dumps(record.to_dict(), indent=2))
    else:
        _print_record(path.name, record)
    if record.status != "triaged":
        return
    if not no_png:
        _render_or_fail(ds, record, out_png, segmenter, path)


def _write_dicom_results(files, out_dir: Path, segmenter, settings) -> None:
    """Triage each file keeping its label maps, then build and write SEG / SR / KOS per
    series and study (file names: the results' SOP Instance UIDs)."""
    import warnings

    import numpy as np

    from medsendx.dicomio import DicomReadError, read_dataset
    from medsendx.triage import TriageError, triage_dataset
    from medsendx.triage import dicom_results as R

    studies: dict[str, list] = {}
    for file in files:
        try:
            ds = read_dataset(file)
            maps: list = []
            record = triage_dataset(ds, segmenter, maps)
        except (DicomReadError, TriageError):
            continue  # reported by the triage table below
        if record.status == "triaged" and "StudyInstanceUID" in ds:
            labels = np.stack(maps).astype(np.int8) if maps else None
            studies.setdefault(str(ds.StudyInstanceUID), []).append(
                R.TriagedObject(R.header_of(ds), record.to_dict(), labels))
    out_dir.mkdir(parents=True, exist_ok=True)
    t, station = settings.triage, settings.station_id
    written = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom's value warnings would quote the input's values
        for objects in studies.values():
            built = []
            if t.results_seg:
                by_series: dict[str, list] = {}
                for obj in objects:
                    by_series.setdefault(str(obj.header.get("SeriesInstanceUID", "")), []).append(obj)
                built += [seg for m in by_series.values() for seg in R.build_segmentations(m, station=station)]
            if t.results_sr:
                built.append(R.build_report(objects, station=station))
            if t.results_kos:
                built.append(R.build_key_objects(objects, station=station, limit=t.key_images))
            for ds in built:
                if ds is not None:
                    (out_dir / f"{ds.SOPInstanceUID}.dcm").write_bytes(R.encode(ds))
                    written += 1
    err_console.print(f"wrote {written} DICOM result object(s) to {out_dir}", soft_wrap=True)


def _skip_download_stack() -> None:
    """pydicom imports ``requests`` and ``tqdm`` only to download its optional example
    files; this command never downloads, and importing them costs about a fifth of its
    one-second start-up budget. Mark them unavailable in this process only (pydicom then
    falls back to urllib, should it ever need to download)."""
    for name in ("requests", "tqdm"):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def _render_or_fail(ds, record, out_png: str, segmenter, source: Path) -> None:
    """Write the overlay; a damaged file (or an unwritable PNG) is one line of ours."""
    from medsendx.triage import render_overlay

    try:
        written = render_overlay(ds, record, out_png, segmenter=segmenter)
    except OSError as exc:
        err_console.print(f"[red]error:[/red] cannot write {literal(out_png)} ({exc.strerror or type(exc).__name__})", soft_wrap=True)
        raise SystemExit(1) from None
    except Exception as exc:
        err_console.print(f"[red]error:[/red] {literal(source)}: damaged DICOM, no overlay ({type(exc).__name__})", soft_wrap=True)
        raise SystemExit(1) from None
    err_console.print(f"wrote {literal(written)}", soft_wrap=True)


def _print_record(name: str, record) -> None:
    if record.status != "triaged":
        console.print(f"{literal(name)}: not triaged ({literal(record.skipped_reason)})")
        return
    for frame in record.frames:
        title = name if len(record.frames) == 1 else f"{name}, frame {frame.frame + 1} of {len(record.frames)}"
        table = Table(title=literal(f"{title}: {record.modality}, values in {record.units}"))
        table.add_column("class", style="bold")
        table.add_column(f"centre ({record.units})", justify="right")
        table.add_column(f"range ({record.units})", justify="right")
        table.add_column("share", justify="right")
        for cls in frame.classes:
            span = f"{cls.low:g} .. {cls.high:g}" if cls.low is not None else "-"
            table.add_row(cls.label, f"{cls.centre:.1f}", span, f"{100 * cls.fraction:.1f}%")
        console.print(table)
        if frame.breast_density_percent is not None:
            console.print(f"breast density: {frame.breast_density_percent:.1f}% (dense area / breast area)")
        if frame.noise is not None:
            unit = "HU" if record.units == "HU" else "of the contrast"
            shown = f"{frame.noise:.1f} HU" if unit == "HU" else f"{100 * frame.noise:.1f}% {unit}"
            console.print(f"noise: {shown}")
        for flag in frame.flags:
            console.print(f"[red]{flag.action.upper()}[/red] ({flag.code}): {literal(flag.message)}")
        for problem in frame.sanity_problems:
            console.print(f"[yellow]check[/yellow]: {literal(problem)}")
    console.print(f"[bold]priority {record.priority}/100[/bold]")
    for reason in record.reasons:
        console.print(f"  - {literal(reason)}")
    console.print(f"[dim]{record.disclaimer}[/dim]")


def _print_series(series) -> None:
    table = Table(title="series triage")
    table.add_column("file")
    table.add_column("modality")
    table.add_column("priority", justify="right")
    table.add_column("classes (centre, share)")
    table.add_column("flags")
    for name, record in series.slices:
        if record.status != "triaged":
            table.add_row(literal(name), literal(record.modality), "-", literal(f"not triaged ({record.skipped_reason})"), "")
            continue
        frame = record.frames[0]
        classes = ", ".join(f"{c.label} {c.centre:.0f} ({100 * c.fraction:.0f}%)" for c in frame.classes)
        if len(record.frames) > 1:
            classes += f" [+{len(record.frames) - 1} frames]"
        flags = ", ".join(f.code for f in record.flags) + (" check" if not record.sanity_ok else "")
        table.add_row(literal(name), literal(record.modality), str(record.priority), literal(classes), flags.strip())
    console.print(table)
    summary = series.summary()
    console.print(
        f"[bold]series priority {summary['priority']}/100[/bold]: {summary['triaged']} triaged, "
        f"{summary['skipped']} without image, {summary['errors']} unreadable"
    )
    for reason in summary["reasons"]:
        console.print(f"  - {literal(reason)}")
    if summary["slices_with_flag"]:
        counts = ", ".join(f"{code} on {n}" for code, n in summary["slices_with_flag"].items())
        console.print(f"flags: {counts} slice(s)")
    console.print(f"[dim]{summary['disclaimer']}[/dim]")
