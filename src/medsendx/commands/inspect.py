"""``medsendx inspect`` and ``medsendx view``: look at a DICOM file (the prototype's
inspector and viewer)."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterator

import click
import numpy as np
from rich.table import Table

from medsendx.commands._common import console, err_console, literal
from medsendx.dicomio import DicomReadError, display_image, frame_count, read_dataset, save_png, stored_pixels

SUMMARY_FIELDS = [
    ("Patient", ["PatientName", "PatientID", "PatientBirthDate", "PatientSex"]),
    ("Study", ["StudyDate", "StudyDescription", "AccessionNumber", "StudyInstanceUID"]),
    ("Series", ["Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID", "BodyPartExamined"]),
    ("Instance", ["SOPClassUID", "SOPInstanceUID", "InstanceNumber"]),
    ("Device", ["Manufacturer", "ManufacturerModelName", "StationName", "InstitutionName"]),
]

DEID_FIELDS = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "AccessionNumber",
    "StudyDate",
    "InstitutionName",
    "ReferringPhysicianName",
    "StationName",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "BurnedInAnnotation",
]


def _value(ds, keyword: str) -> str:
    """The value as markup-safe text (values are shown literally, control bytes escaped);
    one that cannot be decoded says so instead of stopping the command."""
    try:
        if keyword not in ds:
            return "[dim]absent[/dim]"
        value = ds.data_element(keyword).value
    except Exception as exc:  # e.g. an unknown VR or a number that is not one
        return f"[red]unreadable ({type(exc).__name__})[/red]"
    if value in (None, ""):
        return "[dim]empty[/dim]"
    text = str(value)
    return literal(text if len(text) < 80 else text[:77] + "...")


@contextlib.contextmanager
def _vr_warnings_counted() -> Iterator[None]:
    """pydicom checks each value against its VR as it is read and warns with the value in
    the message (a file's identity, or a raw library line on a de-identified one): count
    pydicom's warnings and say once how many there were, without values (other libraries'
    warnings, e.g. numpy's while rendering, are dropped)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    count = sum(1 for warning in caught if "pydicom" in warning.filename)
    if count:
        err_console.print(
            f"[yellow]note:[/yellow] {count} value(s) do not conform to their value representation "
            "(length or characters; `dciodvfy FILE` names them)"
        )


def _load(path: str):
    try:
        return read_dataset(path)
    except DicomReadError as exc:
        err_console.print(f"[red]error:[/red] {literal(path)}: {exc}", soft_wrap=True)
        raise SystemExit(1)


@contextlib.contextmanager
def _damage_is_one_line(path: str) -> Iterator[None]:
    """A damaged file that pydicom read but cannot interpret (a number that is none, an
    unknown VR met while printing) ends the command with one line of ours, never a
    traceback (which would quote values and library internals)."""
    try:
        yield
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as exc:
        err_console.print(f"[red]error:[/red] {literal(path)}: damaged DICOM, cannot be shown ({type(exc).__name__})", soft_wrap=True)
        raise SystemExit(1) from None


def _pixel_rows(ds) -> list[tuple[str, str]]:
    syntax = ds.file_meta.TransferSyntaxUID
    rows = [("Transfer syntax", literal(f"{syntax.name} ({syntax})"))]
    if "PixelData" not in ds:
        return rows + [("Pixel data", "none")]
    try:
        rows.append(
            (
                "Dimensions",
                literal(
                    f"{ds.get('Rows', '?')} x {ds.get('Columns', '?')}, {frame_count(ds)} frame(s), "
                    f"{ds.get('SamplesPerPixel', 1)} sample(s), {ds.get('BitsAllocated', '?')}-bit "
                    f"{'signed' if ds.get('PixelRepresentation', 0) else 'unsigned'}, "
                    f"{ds.get('PhotometricInterpretation', '?')}"
                ),
            )
        )
        arr = stored_pixels(ds)
        rows.append(("Pixel range (stored)", f"{arr.min()} .. {arr.max()}"))
        if "RescaleSlope" in ds or "RescaleIntercept" in ds:
            slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
            lo, hi = float(np.min(arr)) * slope + intercept, float(np.max(arr)) * slope + intercept
            units = ds.get("RescaleType", "HU" if ds.get("Modality") == "CT" else "")
            rows.append(("Pixel range (modality units)", literal(f"{lo:g} .. {hi:g} {units}")))
    except DicomReadError as exc:
        rows.append(("Pixel data", f"[red]{literal(exc)}[/red]"))
    except Exception as exc:  # a damaged header value (a rescale slope that is no number...)
        rows.append(("Pixel data", f"[red]damaged header values ({type(exc).__name__})[/red]"))
    return rows


def _render(ds, png: str | None, boxes: bool = False) -> None:
    if not png:
        return
    try:
        if boxes:  # what the pixel cleaner blanks (red) and keeps (green), on a copy
            from medsendx.pixels.preview import boxes_image

            image, verdict = boxes_image(ds)
            save_png(image, png)
            console.print(f"pixel cleaner: {verdict}", markup=False)
        else:
            save_png(display_image(ds), png)
    except DicomReadError as exc:
        err_console.print(f"[red]error:[/red] cannot render: {exc}")
        raise SystemExit(1)
    console.print(f"wrote {literal(png)}")


@click.command("inspect")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--all", "show_all", is_flag=True, help="Print the full dataset dump.")
@click.option("--png", type=click.Path(dir_okay=False), help="Render the image (first frame) to this PNG.")
@click.option("--boxes", is_flag=True, help="With --png: draw what the pixel cleaner blanks (red) and keeps (green).")
def inspect_cmd(file: str, show_all: bool, png: str | None, boxes: bool = False) -> None:
    """Show the key metadata of a DICOM FILE (patient, study, modality, pixels).

    The image is rendered as a radiologist would see it: rescale slope/intercept, the
    object's window or VOI LUT, MONOCHROME1 inverted, colour kept, first frame.
    """
    with _vr_warnings_counted(), _damage_is_one_line(file):
        _inspect(file, show_all, png, boxes)


def _inspect(file: str, show_all: bool, png: str | None, boxes: bool = False) -> None:
    ds = _load(file)
    if show_all:
        console.print("\n".join(literal(line) for line in str(ds).splitlines()), soft_wrap=True)
    else:
        table = Table(title=literal(Path(file).name), show_header=False)
        table.add_column("group", style="bold")
        table.add_column("attribute")
        table.add_column("value")
        for group, keywords in SUMMARY_FIELDS:
            for i, keyword in enumerate(keywords):
                table.add_row(group if i == 0 else "", keyword, _value(ds, keyword))
        for i, (name, text) in enumerate(_pixel_rows(ds)):
            table.add_row("Pixels" if i == 0 else "", name, text)
        console.print(table)
    _render(ds, png, boxes)


@click.command("view")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--png", type=click.Path(dir_okay=False), help="Render the image (first frame) to this PNG.")
@click.option("--boxes", is_flag=True, help="With --png: draw what the pixel cleaner blanks (red) and keeps (green).")
def view_cmd(file: str, png: str | None, boxes: bool = False) -> None:
    """Confirm at a glance that FILE is de-identified: identity fields, provenance and the
    de-identification options recorded in it; optionally render the image."""
    with _vr_warnings_counted(), _damage_is_one_line(file):
        _view(file, png, boxes)


def _view(file: str, png: str | None, boxes: bool = False) -> None:
    ds = _load(file)
    table = Table(title=f"de-identification of {literal(Path(file).name)}")
    table.add_column("attribute", style="bold")
    table.add_column("value")
    for keyword in DEID_FIELDS:
        table.add_row(keyword, _value(ds, keyword))
    codes = ds.get("DeidentificationMethodCodeSequence", [])
    for item in codes:
        table.add_row("  method code", literal(f"{item.get('CodeValue', '?')} {item.get('CodeMeaning', '')}"))
    private = sum(1 for elem in ds.iterall() if elem.tag.is_private)
    table.add_row("private elements", str(private))
    console.print(table)
    removed = str(ds.get("PatientIdentityRemoved", "")).upper() == "YES"
    console.print("[green]marked de-identified[/green]" if removed else "[red]NOT marked de-identified[/red]")
    _render(ds, png, boxes)
