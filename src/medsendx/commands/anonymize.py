"""``medsendx anonymize INPUT OUTPUT``: de-identify a file or a folder tree (PS3.15)."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from medsendx.commands._common import console, err_console, literal, settings_from_context
from medsendx.config import Settings
from medsendx.deid import Deidentifier, FileOutcome
from medsendx.deid.audit import sync_audit
from medsendx.deid.uids import SecretError
from medsendx.dicomio import iter_dicom_files
from medsendx.quarantine import quarantine_file

_worker: Deidentifier | None = None
_BATCH = 32  # files per rename + folder fsync (see Deidentifier.deidentify_files)


def _worker_init(settings: Settings) -> None:
    global _worker
    _worker = Deidentifier(settings)


def _worker_run(job: tuple[list[Path], Path]) -> list[FileOutcome]:
    assert _worker is not None
    paths, out_dir = job
    return list(_worker.deidentify_files(paths, out_dir, batch=_BATCH))


def _outcomes(settings: Settings, files: list[Path], out_dir: Path, workers: int) -> Iterator[FileOutcome]:
    """The outcome of every file, in input order. The audit lines are appended unflushed
    as the outputs are committed and made durable by one fsync once the last outcome is
    given (OSError if that fails), and, best effort, when the caller stops early."""
    finished = False
    try:
        yield from _unsynced_outcomes(settings, files, out_dir, workers)
        finished = True
    finally:
        if not finished:
            with contextlib.suppress(OSError):
                sync_audit(settings.audit_log)
    sync_audit(settings.audit_log)


def _unsynced_outcomes(settings: Settings, files: list[Path], out_dir: Path, workers: int) -> Iterator[FileOutcome]:
    if workers <= 1 or len(files) <= 8 * _BATCH:
        yield from Deidentifier(settings).deidentify_files(files, out_dir, batch=_BATCH)
        return
    from concurrent.futures import ProcessPoolExecutor  # (only here: its import is not free)

    # One Deidentifier per process (secret read once, action map compiled once), fed
    # jobs of whole batches: at least 8 batches, since a worker waits for the disk at the
    # end of each job (its writer overlaps syncs with work only within a job), and up to
    # 4 jobs per worker to balance the load and move the progress bar. Input order kept.
    per_job = max(8 * _BATCH, -(-len(files) // (workers * 4 * _BATCH)) * _BATCH)
    jobs = [(files[i : i + per_job], out_dir) for i in range(0, len(files), per_job)]
    with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, initargs=(settings,)) as pool:
        for outcomes in pool.map(_worker_run, jobs):
            yield from outcomes


@click.command("anonymize")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output_dir", metavar="OUTPUT", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--dates",
    type=click.Choice(["remove", "modified", "full"]),
    default=None,
    help="Dates: remove (Basic Profile), modified (shifted per patient, intervals kept; the default) or full (kept).",
)
@click.option("--retain-patient-characteristics/--no-retain-patient-characteristics", default=None, help="Keep sex, age, size, weight (Retain Patient Characteristics Option).")
@click.option("--retain-device-identity/--no-retain-device-identity", default=None, help="Keep device serial numbers and names (Retain Device Identity Option).")
@click.option("--retain-institution-identity/--no-retain-institution-identity", default=None, help="Keep institution name and address (Retain Institution Identity Option).")
@click.option("--retain-uids/--no-retain-uids", default=None, help="Keep the original UIDs instead of keyed replacements (Retain UIDs Option).")
@click.option("--clean-descriptors/--no-clean-descriptors", default=None, help="Keep descriptions with identifying words removed, instead of removing them (Clean Descriptors Option).")
@click.option("--retain-safe-private/--no-retain-safe-private", default=None, help="Keep the documented allow-list of safe private attributes (Retain Safe Private Option).")
@click.option("--patient-name", default=None, help="Placeholder written to PatientName (default ANONYMIZED).")
@click.option("--station-id", default=None, help="This unit's id, written to StationName (default from settings).")
@click.option("--workers", "-j", type=click.IntRange(1, 256), default=1, show_default=True, help="Worker processes for a folder (use the number of cores).")
@click.pass_context
def anonymize_cmd(
    ctx: click.Context,
    input_path: Path,
    output_dir: Path,
    dates: str | None,
    retain_patient_characteristics: bool | None,
    retain_device_identity: bool | None,
    retain_institution_identity: bool | None,
    retain_uids: bool | None,
    clean_descriptors: bool | None,
    retain_safe_private: bool | None,
    patient_name: str | None,
    station_id: str | None,
    workers: int,
) -> None:
    """De-identify DICOM files per DICOM PS3.15 Annex E.

    INPUT is a file or a folder (searched recursively); the de-identified objects are
    written to the folder OUTPUT as <new SOP Instance UID>.dcm. The Basic Profile is
    always applied; the options above add the standard's options (defaults come from the
    [deid] settings: modified dates, nothing else retained). UIDs and patient IDs are
    replaced by keyed pseudonyms from the site secret (created on first use), so re-runs
    and other slices of a series map to the same values.

    Objects whose pixels may show identity (burned-in annotation, screen captures,
    ultrasound) go through the pixel cleaner of the [pixels] settings (OCR, redaction,
    verification; MEDSENDX_PIXELS__POLICY=quarantine turns it off); those it cannot
    verify clean, faces, and files that cannot be read go to quarantine with a reason;
    the run goes on. The exit status is 1 if any file was not de-identified. Every object is recorded
    in the audit log (see the settings' state directory).
    """
    settings = settings_from_context(
        ctx,
        {
            "station_id": station_id,
            "deid": {
                "dates": dates,
                "retain_patient_characteristics": retain_patient_characteristics,
                "retain_device_identity": retain_device_identity,
                "retain_institution_identity": retain_institution_identity,
                "retain_uids": retain_uids,
                "clean_descriptors": clean_descriptors,
                "retain_safe_private": retain_safe_private,
                "patient_name": patient_name,
            },
        },
    )
    try:
        files = iter_dicom_files(input_path)
    except FileNotFoundError:
        reason = "input file or folder does not exist"
        quarantine_file(settings.quarantine_dir, input_path, reason, stage="deid")
        err_console.print(f"[red]error:[/red] {literal(input_path)}: {reason}", soft_wrap=True)
        raise SystemExit(1)
    try:
        Deidentifier(settings)  # creates the secret once, before any worker starts
    except SecretError as exc:
        err_console.print(f"[red]error:[/red] {literal(exc)}", soft_wrap=True)
        raise SystemExit(1)

    counts = {"ok": 0, "quarantined": 0, "error": 0}
    started = time.perf_counter()
    progress = Progress(
        TextColumn("de-identifying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err_console, transient=True,
    )
    try:
        with progress:
            task = progress.add_task("files", total=len(files))
            for outcome in _outcomes(settings, files, output_dir, workers):
                counts[outcome.status] += 1
                if outcome.status != "ok":
                    label = "quarantined" if outcome.status == "quarantined" else "error"
                    progress.console.print(
                        f"[yellow]{label}:[/yellow] {literal(_shown(outcome.source, input_path))}: {literal(outcome.reason)}", soft_wrap=True
                    )
                progress.advance(task)
    except OSError as exc:  # (only the audit log's final fsync raises)
        err_console.print(f"[red]error:[/red] the audit log could not be written to disk ({literal(exc.strerror or type(exc).__name__)})", soft_wrap=True)
        raise SystemExit(1)
    elapsed = max(time.perf_counter() - started, 1e-9)
    console.print(
        f"{counts['ok']} de-identified, {counts['quarantined']} quarantined, {counts['error']} failed "
        f"in {elapsed:.1f}s ({len(files) / elapsed:.0f} files/s) -> {literal(output_dir)}",
        soft_wrap=True,
    )
    if counts["quarantined"] or counts["error"]:
        console.print(f"quarantine: {literal(settings.quarantine_dir)}", soft_wrap=True)
    console.print(f"audit log: {literal(settings.audit_log)}", soft_wrap=True)
    raise SystemExit(1 if counts["quarantined"] or counts["error"] else 0)


def _shown(path: Path, root: Path) -> str:
    """The input path as the user typed it (relative to INPUT when inside it)."""
    try:
        return str(Path(root) / path.relative_to(root)) if root.is_dir() else str(path)
    except ValueError:
        return os.fspath(path)
