"""The pixel cleaner wired into de-identification: ``medsendx anonymize`` and
``medsendx inspect --png`` on screens with planted identities, and real CT/MR untouched."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytesseract
import pytest
from PIL import Image

import synthetic_screens as ss
from medsendx.config import load_settings
from medsendx.deid import Deidentifier
from medsendx.dicomio import display_image, read_dataset
from medsendx.pixels import ocr
from medsendx.quarantine import list_quarantine


def readable(image: np.ndarray) -> str:
    words = [w.text for w in ocr.ocr_image(image)] + [pytesseract.image_to_string(Image.fromarray(image))]
    return re.sub(r"[^0-9A-Z]", "", " ".join(words).upper())


def method_codes(ds: pydicom.Dataset) -> list[str]:
    return [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]


@pytest.fixture(scope="module")
def anonymized(tmp_path_factory: pytest.TempPathFactory, ct_head: list[Path]):
    """One ``medsendx anonymize`` run over a dose screen, an ultrasound frame whose header
    says BurnedInAnnotation NO, a face photograph and a real CT slice."""
    from conftest import run_cli

    root = tmp_path_factory.mktemp("e2e")
    inbox = root / "in"
    inbox.mkdir()
    (inbox / "dose.dcm").write_bytes(ss.saved_bytes(ss.dose_report_screen().ds))
    (inbox / "us.dcm").write_bytes(ss.saved_bytes(ss.ultrasound_cine(frames=1, burned_in="NO").ds))
    photo = ss.ultrasound_cine(frames=1).ds
    photo.SOPClassUID = photo.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.4"
    photo.Modality = "XC"
    (inbox / "photo.dcm").write_bytes(ss.saved_bytes(photo))
    shutil.copy(ct_head[3], inbox / "ct.dcm")
    state = root / "state"
    result = run_cli("anonymize", inbox, root / "out", "--workers", "1", env={"MEDSENDX_STATE_DIR": str(state)})
    outputs = [(path, pydicom.dcmread(path)) for path in sorted((root / "out").glob("*.dcm"))]
    return result, outputs, state, root


def test_anonymize_delivers_verified_screens_and_quarantines_the_face(anonymized) -> None:
    result, outputs, state, _ = anonymized
    assert "3 de-identified, 1 quarantined, 0 failed" in result.stdout, result.stdout + result.stderr
    kinds = sorted("screen" if "ConversionType" in ds else str(ds.Modality) for _, ds in outputs)
    assert kinds == ["CT", "US", "screen"]
    (record,) = list_quarantine(state / "quarantine")
    assert "photograph" in record["reason"]
    for word in ss.PLANTED_WORDS:
        assert word not in result.stdout + result.stderr + record["reason"]


def test_cleaned_screens_are_marked_and_unreadable(anonymized) -> None:
    _, outputs, _, _ = anonymized
    cleaned = [ds for _, ds in outputs if "ConversionType" in ds or ds.Modality == "US"]
    assert len(cleaned) == 2
    for ds in cleaned:
        assert ds.BurnedInAnnotation == "NO"
        assert "113101" in method_codes(ds)  # Clean Pixel Data Option
        assert ds.PatientName != ss.IDENTITY["PatientName"]
        text = readable(display_image(ds, 0))
        for word in ss.PLANTED_WORDS:
            assert word not in text, word
        if "ConversionType" in ds:
            # Default deny (issue 12): every text region goes, dose values included (the
            # opt-in word policy "redact-identifying" keeps them; see test_pixels.py).
            assert "CTDIVOL" not in text and "452MGY" not in text
    (ct,) = [ds for _, ds in outputs if ds.Modality == "CT" and "ConversionType" not in ds]
    assert "113101" not in method_codes(ct)


def test_inspect_png_shows_the_redacted_page(anonymized, cli) -> None:
    _, outputs, _, root = anonymized
    (screen,) = [path for path, ds in outputs if "ConversionType" in ds]
    png = root / "screen.png"
    result = cli("inspect", screen, "--png", png)
    assert result.returncode == 0, result.stderr
    image = np.array(Image.open(png))
    assert image.shape[:2] == (screen_rows := int(pydicom.dcmread(screen).Rows), int(pydicom.dcmread(screen).Columns))
    assert screen_rows and image.std() > 0  # a picture, not an empty page
    text = readable(image)
    for word in ss.PLANTED_WORDS:
        assert word not in text, word


def test_ordinary_ct_and_mr_pass_with_pixels_untouched_and_no_ocr(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = ocr.ocr_image
    monkeypatch.setattr(ocr, "ocr_image", lambda image, bands=None: calls.append(1) or real(image, bands))
    deid = Deidentifier(load_settings(overrides={"state_dir": str(tmp_path / "state")}, environ={}))
    assert deid.pixel_cleaner is not None  # the default: the cleaner the settings ask for
    paths = sorted((data_dir / "ct-head-ge").glob("*.dcm")) + sorted((data_dir / "mr-brain-ge").glob("*.dcm"))
    for path in paths:
        outcome = deid.deidentify_file(path, tmp_path / "out")
        assert outcome.status == "ok", outcome.reason
        out = pydicom.dcmread(outcome.output)
        assert out.PixelData == read_dataset(path).PixelData
        assert "113101" not in method_codes(out)
    assert len(paths) >= 50 and calls == []


def test_a_scanners_no_is_not_passed_on_as_if_checked(data_dir: Path, tmp_path: Path, cli) -> None:
    """A CT slice whose header says BurnedInAnnotation NO, and nothing the screen finds: no
    check of ours backs the "NO", so it does not leave (the attribute is Type 3 for CT)."""
    (tmp_path / "in").mkdir()
    ct = read_dataset(sorted((data_dir / "ct-head-ge").glob("*.dcm"))[3])
    ct.BurnedInAnnotation = "NO"
    ct.save_as(tmp_path / "in" / "ct.dcm")
    result = cli("anonymize", tmp_path / "in", tmp_path / "out", env={"MEDSENDX_STATE_DIR": str(tmp_path / "state")})
    assert result.returncode == 0, result.stdout + result.stderr
    (output,) = (tmp_path / "out").rglob("*.dcm")
    out = pydicom.dcmread(output)
    assert "BurnedInAnnotation" not in out and "113101" not in method_codes(out)
    assert out.PixelData == ct.PixelData


def test_policy_quarantine_sends_screens_to_quarantine_without_ocr(tmp_path: Path, cli) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "dose.dcm").write_bytes(ss.saved_bytes(ss.dose_report_screen().ds))
    result = cli("anonymize", tmp_path / "in", tmp_path / "out", env={"MEDSENDX_PIXELS__POLICY": "quarantine"})
    assert result.returncode == 1
    assert "0 de-identified, 1 quarantined" in result.stdout


def test_overlay_bits_hidden_above_bits_stored_are_cleared(tmp_path: Path) -> None:
    planted = ss.greyscale16_with_text(burned_in="NO", text="LAO")  # 12 bits stored in 16
    ds = planted.ds
    arr = ds.pixel_array.copy()
    arr[100:140, 100:300] |= 0x8000  # a retired embedded overlay in bit 15
    ds.PixelData = arr.tobytes()
    ds.add_new(0x60000102, "US", 15)  # Overlay Bit Position
    ds.add_new(0x60000010, "US", 512)
    ds.add_new(0x60000011, "US", 512)
    src = tmp_path / "overlay.dcm"
    src.write_bytes(ss.saved_bytes(ds))
    outcome = Deidentifier(load_settings(overrides={"state_dir": str(tmp_path / "s")}, environ={})).deidentify_file(
        src, tmp_path / "out"
    )
    assert outcome.status == "ok", outcome.reason
    raw = np.frombuffer(pydicom.dcmread(outcome.output).PixelData, dtype="<u2")
    assert int(raw.max()) < 4096  # nothing above bit 11 leaves
