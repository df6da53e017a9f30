"""``medsendx segment`` as a user runs it: PNG overlay and JSON records, one file or a
series folder, and a clear one-line error for a file that is not DICOM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from medsendx.dicomio import read_dataset
from medsendx.triage import render_overlay, triage_dataset
from medsendx.triage.overlay import CLASS_COLOURS

from triage_synthetic import ct_with_hu, metal_streaks, multiframe_from, save


def _has_colour(png: Path, colour: tuple[int, int, int]) -> bool:
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    return bool((pixels == np.array(colour, dtype=np.uint8)).all(axis=1).any())


def test_segment_one_slice_writes_png_and_json(cli, ct_head: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "highlighted_scan.png"
    result = cli("segment", ct_head[9], "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)  # stdout is exactly the JSON record
    assert [c["label"] for c in record["frames"][0]["classes"]] == ["Air", "Soft tissue", "Bone"]
    assert record["units"] == "HU"
    assert 0 <= record["priority"] <= 100 and record["reasons"]
    assert "NOT a diagnosis" in record["disclaimer"]
    image = Image.open(out)
    assert image.format == "PNG" and image.width > 1000 and image.height > 500
    # the legend swatches of the three classes are drawn in their exact colours
    for colour in CLASS_COLOURS[:3]:
        assert _has_colour(out, colour)


def test_segment_prints_a_readable_table_without_json(cli, ct_head: list[Path], tmp_path: Path) -> None:
    result = cli("segment", ct_head[9], "--no-png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for text in ("Air", "Soft tissue", "Bone", "priority", "NOT a"):
        assert text in result.stdout
    assert list(tmp_path.iterdir()) == []  # --no-png: not even the default PNG
    assert "wrote" not in result.stderr


def test_segment_writes_the_default_png_in_the_current_folder(cli, ct_head: list[Path], tmp_path: Path) -> None:
    result = cli("segment", ct_head[9], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "highlighted_scan.png").format == "PNG"


def test_segment_series_folder(cli, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "series.png"
    result = cli("segment", data_dir / "ct-phantom-philips", "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["summary"]["triaged"] == 28 and data["summary"]["skipped"] == 1
    assert len(data["slices"]) == 29
    assert out.is_file()


def test_segment_flags_a_metal_scan_for_repeat(cli, ct_head: list[Path], tmp_path: Path) -> None:
    scan = save(ct_with_hu(ct_head[12], metal_streaks), tmp_path / "metal.dcm")
    result = cli("segment", scan, "--no-png")
    assert result.returncode == 0, result.stderr
    assert "REPEAT NOW" in result.stdout and "metal" in result.stdout


def test_segment_rejects_a_non_dicom_file_in_one_line(cli, tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    result = cli("segment", bad, "--out", tmp_path / "x.png")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "not a DICOM file" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_overlay_shows_no_identifying_text(ct_head: list[Path], tmp_path: Path) -> None:
    """OCR (tesseract) reads our own words in the picture, never the planted identity."""
    import pytesseract

    ds = read_dataset(ct_head[9])
    ds.PatientName = "ZEBRAFINCH^QUENTIN"
    ds.InstitutionName = "WOLFSBURG MOBILE UNIT"
    out = render_overlay(ds, triage_dataset(ds), tmp_path / "overlay.png")
    text = pytesseract.image_to_string(Image.open(out)).upper()
    assert "PRIORITY" in text and "HISTOGRAM" in text  # OCR does read the picture
    for planted in ("ZEBRAFINCH", "QUENTIN", "WOLFSBURG"):
        assert planted not in text


def test_segment_multi_frame_object_reports_every_frame(cli, ct_head: list[Path], tmp_path: Path) -> None:
    scan = save(multiframe_from([ct_head[2], ct_head[12], ct_head[22]]), tmp_path / "multi.dcm")
    out = tmp_path / "multi.png"
    result = cli("segment", scan, "--json", "--out", out)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert [f["frame"] for f in record["frames"]] == [0, 1, 2]
    assert all([c["label"] for c in f["classes"]] == ["Air", "Soft tissue", "Bone"] for f in record["frames"])
    assert out.is_file()
