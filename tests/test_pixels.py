"""Identifying pixels (issue 7): detection, redaction and verification with real tesseract on
synthetic screens and ultrasound frames drawn with real fonts, and on real files."""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytesseract
import pytest
from PIL import Image, ImageDraw
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import JPEGLSLossless

import synthetic_screens as ss
from medsendx.config import PixelSettings, Settings, load_settings
from medsendx.dicomio import display_image, frame_count, read_dataset, stored_pixels
from medsendx.pixels import PixelCleaner, PixelCleanResult, make_pixel_cleaner, pixel_risk
from medsendx.pixels import cleaner as cleaner_module
from medsendx.pixels import ocr
from medsendx.pixels.redact import IdentityMatcher, identifying_words, looks_like_date_time_or_number
from medsendx.pixels.ocr import OcrWord

IDENTITY_VALUES = set(ss.IDENTITY.values())
# The older tesseract word policy (opt-in since issue 12); most tests here are about it.
WORDS = PixelSettings(policy="redact-identifying")


def reread(ds: Dataset) -> Dataset:
    """Save and read back, so checks see what a receiver would decode."""
    return pydicom.dcmread(io.BytesIO(ss.saved_bytes(ds)))


def all_frames(ds: Dataset) -> np.ndarray:
    arr = stored_pixels(ds)
    return arr[np.newaxis] if frame_count(ds) == 1 else arr


def text_read_in(ds: Dataset) -> str:
    """Everything two independent readers find in every frame: our OCR path and a plain
    tesseract call on the image as a person sees it. Upper-case, letters and digits only."""
    found = []
    for index in range(frame_count(ds)):
        image = display_image(ds, index)
        found += [w.text for w in ocr.ocr_image(image)]
        found.append(pytesseract.image_to_string(Image.fromarray(image)))
    return re.sub(r"[^0-9A-Z]", "", " ".join(found).upper())


def region_mask(shape: tuple[int, int], regions: list[tuple[int, int, int, int]]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in regions:
        mask[y0:y1, x0:x1] = True
    return mask


@dataclass
class Cleaned:
    planted: ss.Planted
    before: np.ndarray  # frames as decoded before cleaning
    result: PixelCleanResult
    out: Dataset  # the cleaned dataset, saved and read back
    after: np.ndarray
    text: str  # what OCR reads in the output


def clean(planted: ss.Planted, policy: str = "redact-identifying", compress: str | None = None) -> Cleaned:
    ds = reread(planted.ds)
    if compress:
        ds.compress(compress, generate_instance_uid=False)
        ds = reread(ds)
    before = all_frames(ds).copy()
    result = PixelCleaner(PixelSettings(policy=policy))(ds, IDENTITY_VALUES)
    out = reread(ds)
    return Cleaned(planted, before, result, out, all_frames(out), text_read_in(out))


def assert_identity_gone(c: Cleaned) -> None:
    assert c.result.clean, c.result.reason
    assert c.result.changed
    for word in ss.PLANTED_WORDS:
        assert word not in c.text, f"planted {word!r} still readable"
    for ink, frame_after in zip(c.planted.ink, c.after):
        blanked = np.all(frame_after == 0, axis=-1) if frame_after.ndim == 3 else frame_after == frame_after.min()
        assert blanked[ink].all(), "ink of planted identifying text not blanked"


def assert_untouched_outside_regions(c: Cleaned) -> None:
    mask = region_mask(c.before.shape[1:3], c.result.regions)
    assert mask.any()
    assert np.array_equal(c.before[:, ~mask], c.after[:, ~mask])


# --- redaction rules (no OCR) -----------------------------------------------------------


def _word(text: str, left: int = 0, line: int = 1, conf: float = 90.0) -> OcrWord:
    return OcrWord(text, conf, left, 0, 10 * len(text), 12, (1, 1, line))


def test_identity_matching_survives_ocr_misreads() -> None:
    m = IdentityMatcher.from_values({"MCALLISTER^FIONA", "48213977", "ACC55102"})
    for read_as in ["MCALLISTER“", "Fiona", "MCALLISTER,FIONA", "ACC5S102", "4821397", "48213977.", "MCALLlSTER"]:
        assert m.matches(read_as), read_as
    for other in ["CTDIvol", "Dose", "Report", "45.2", "FIONx_", "Helical"]:
        assert not m.matches(other), other


@pytest.mark.parametrize(
    "text, identifying",
    [
        ("03/14/2024", True), ("1961-07-22", True), ("22.07.1961", True), ("22-JUL-1961", True),
        ("10:22:51", True), ("19610722", True), ("123-45-6789", True), ("630P630", True),
        ("45.2", False), ("1312.77", False), ("mGy-cm", False), ("5.0MHz", False), ("C5-1", False),
        ("MI=0.8", False), ("I12.5-I380.0", False), ("Page", False),
    ],
)  # fmt: skip
def test_dates_times_and_long_numbers_look_identifying(text: str, identifying: bool) -> None:
    assert looks_like_date_time_or_number(text) is identifying


def test_words_after_a_label_and_beside_a_month_are_identifying() -> None:
    words = [_word("Patient", 0), _word("Name:", 80), _word("SMITH", 160), _word("JANE", 240),
             _word("DLP", 0, line=2), _word("45.2", 60, line=2), _word("22", 0, line=3), _word("Jul", 40, line=3),
             _word("1961", 80, line=3)]  # fmt: skip
    flagged = [w.text for w in identifying_words(words, IdentityMatcher.from_values(set()))]
    assert flagged == ["SMITH", "JANE", "22", "Jul", "1961"]


# --- which objects are checked ----------------------------------------------------------


def test_ordinary_ct_and_mr_slices_are_not_at_risk(data_dir: Path) -> None:
    files = [p for sub in ("ct-head-ge", "ct-phantom-philips", "mr-brain-ge") for p in sorted((data_dir / sub).glob("*"))]
    checked = 0
    for path in files:
        try:
            ds = read_dataset(path, stop_before_pixels=False)
        except Exception:
            continue
        if ds.get("Modality") in ("CT", "MR") and "PixelData" in ds:
            assert pixel_risk(ds, PixelSettings(screen_every_object=False)) is None, path.name
            assert pixel_risk(ds, WORDS) is None, path.name
            # The default screens every object with pixels (issue 12).
            assert pixel_risk(ds, PixelSettings()) == "configured to check every object", path.name
            checked += 1
    assert checked >= 70


def test_screens_ultrasound_and_lying_headers_are_at_risk(data_dir: Path) -> None:
    settings = WORDS
    assert "secondary capture" in pixel_risk(ss.dose_report_screen(burned_in="NO").ds, settings)
    assert "ultrasound" in pixel_risk(ss.ultrasound_cine(frames=1, burned_in="NO").ds, settings)
    assert "burned-in" in pixel_risk(ss.greyscale16_with_text(burned_in="YES").ds, settings)
    assert pixel_risk(ss.greyscale16_with_text(burned_in=None).ds, settings)  # XA, header silent
    assert pixel_risk(ss.greyscale16_with_text(burned_in="NO").ds, settings) is None
    ct = read_dataset(sorted((data_dir / "ct-head-ge").glob("*.dcm"))[0])
    assert pixel_risk(ct, PixelSettings(ocr_every_object=True)) == "configured to check every object"


def test_photographs_stay_quarantined_and_policy_quarantine_has_no_cleaner() -> None:
    photo = ss.base_dataset("1.2.840.10008.5.1.4.1.1.77.1.4", "XC")
    photo.PixelData = b"\0" * 16
    result = PixelCleaner(PixelSettings())(photo, IDENTITY_VALUES)
    assert not result.clean and "photograph" in result.reason
    us = ss.ultrasound_cine(frames=1).ds
    us.RecognizableVisualFeatures = "YES"
    assert not PixelCleaner(PixelSettings())(us, IDENTITY_VALUES).clean
    # Policy "quarantine" has a cleaner too: one that refuses what the default would search.
    refusing = make_pixel_cleaner(load_settings(environ={"MEDSENDX_PIXELS__POLICY": "quarantine"}))
    result = refusing(reread(ss.ultrasound_cine(frames=1, burned_in="NO").ds), IDENTITY_VALUES)
    assert not result.clean and "quarantine" in result.reason
    assert isinstance(make_pixel_cleaner(Settings()), PixelCleaner)


# --- synthetic screens and frames through real tesseract ---------------------------------


@pytest.fixture(scope="module")
def dose_screen() -> Cleaned:
    return clean(ss.dose_report_screen())


@pytest.fixture(scope="module")
def dose_screen_all_text() -> Cleaned:
    return clean(ss.dose_report_screen(), policy="redact-all-text")


@pytest.fixture(scope="module")
def grey_cine_jpegls() -> Cleaned:
    return clean(ss.ultrasound_cine(frames=3), compress=JPEGLSLossless)


@pytest.fixture(scope="module")
def colour_cine_jpeg_baseline() -> Cleaned:
    return clean(ss.ultrasound_cine(frames=2, colour=True, lossy=True))


def test_dose_screen_identity_is_blanked_and_verified(dose_screen: Cleaned) -> None:
    assert "MCALLISTER" in text_read_in(reread(dose_screen.planted.ds))  # the reader can read it
    assert_identity_gone(dose_screen)
    assert "verified" in dose_screen.result.reason
    assert dose_screen.result.ocr_calls == 2  # detect, then verify the redacted page


def test_dose_screen_keeps_dose_values_and_other_pixels(dose_screen: Cleaned) -> None:
    assert_untouched_outside_regions(dose_screen)
    for text, (x0, y0, x1, y1) in dose_screen.planted.keep.items():
        assert np.array_equal(dose_screen.before[0, y0:y1, x0:x1], dose_screen.after[0, y0:y1, x0:x1]), text
    for survivor in ["CTDIVOL", "452MGY", "DOSEREPORT", "TOTALDLP", "131277"]:
        assert survivor in dose_screen.text, survivor
    assert dose_screen.out.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian


def test_redact_all_text_leaves_no_readable_word(dose_screen_all_text: Cleaned) -> None:
    assert_identity_gone(dose_screen_all_text)
    for gone in ["CTDIVOL", "DOSEREPORT", "PHANTOM"]:
        assert gone not in dose_screen_all_text.text, gone


def test_every_frame_of_a_compressed_greyscale_cine_is_cleaned(grey_cine_jpegls: Cleaned) -> None:
    c = grey_cine_jpegls
    assert_identity_gone(c)
    assert_untouched_outside_regions(c)
    assert c.out.file_meta.TransferSyntaxUID == JPEGLSLossless  # re-encoded in its own lossless syntax
    assert int(c.out.NumberOfFrames) == 3
    for text in ("5 cm", "MI 1.1"):
        x0, y0, x1, y1 = c.planted.keep[text]
        assert np.array_equal(c.before[:, y0:y1, x0:x1], c.after[:, y0:y1, x0:x1]), text
    assert "MI11" in c.text and "TIS04" in c.text


def test_lossy_colour_cine_is_stored_losslessly_as_rgb(colour_cine_jpeg_baseline: Cleaned) -> None:
    c = colour_cine_jpeg_baseline
    assert_identity_gone(c)
    assert_untouched_outside_regions(c)
    syntax = c.out.file_meta.TransferSyntaxUID
    assert not syntax.is_compressed or syntax == JPEGLSLossless
    assert c.out.PhotometricInterpretation == "RGB"
    assert c.out.LossyImageCompression == "01"  # it was lossy once; that stays on record


def test_16_bit_greyscale_with_burned_in_name() -> None:
    c = clean(ss.greyscale16_with_text())
    assert_identity_gone(c)
    assert_untouched_outside_regions(c)
    x0, y0, x1, y1 = c.planted.keep["LAO 30"]
    assert np.array_equal(c.before[0, y0:y1, x0:x1], c.after[0, y0:y1, x0:x1])
    assert c.out.BitsAllocated == 16 and c.out.BitsStored == 12


def paint_date_on_ct(ct: Dataset) -> Dataset:
    """A real CT slice whose header says BurnedInAnnotation NO, with an exam date painted in."""
    arr = stored_pixels(ct).copy()
    canvas = Image.new("L", (arr.shape[1], arr.shape[0]), 0)
    ImageDraw.Draw(canvas).text((20, 470), "03/14/2024 10:22", font=ss.font(20), fill=255)
    arr[np.array(canvas) > 0] = arr.max()
    ct.PixelData = arr.astype(arr.dtype).tobytes()
    ct.BurnedInAnnotation = "NO"
    return ct


def test_a_header_saying_no_burned_in_text_does_not_hide_a_painted_date(ct_head: list[Path]) -> None:
    ct = paint_date_on_ct(read_dataset(ct_head[5]))
    assert pixel_risk(ct, WORDS) is None  # a CT slice that says NO is trusted by the word policy
    every = PixelSettings(policy="redact-identifying", ocr_every_object=True)
    assert pixel_risk(ct, every) is not None
    result = PixelCleaner(every)(ct, IDENTITY_VALUES)
    assert result.clean and result.changed, result.reason
    assert "2024" not in text_read_in(reread(ct))

    us = ss.ultrasound_cine(frames=1, burned_in="NO")  # a modality that burns text: never trusted
    assert pixel_risk(us.ds, WORDS) is not None
    assert_identity_gone(clean(us))


def test_text_hidden_outside_the_window_is_found(ct_head: list[Path]) -> None:
    # A date painted at -500 HU on the air around the head: black in the object's own
    # window, plain to anyone who widens it.
    ct = read_dataset(ct_head[5])
    arr = stored_pixels(ct).copy()
    slope, intercept = float(ct.RescaleSlope), float(ct.RescaleIntercept)
    canvas = Image.new("L", (arr.shape[1], arr.shape[0]), 0)
    ImageDraw.Draw(canvas).text((20, 470), "03/14/2024", font=ss.font(22), fill=255)
    ink = np.array(canvas) > 0
    arr[ink] = int((-500 - intercept) / slope)
    ct.PixelData = arr.tobytes()
    ct.BurnedInAnnotation = "YES"
    assert float(ct.WindowCenter) + float(ct.WindowWidth) / 2 < 1000  # a narrow window
    shown = display_image(ct, 0)
    assert len(np.unique(shown[ink])) == 1 and shown[ink][0] == 0  # invisible as shown
    result = PixelCleaner(WORDS)(ct, IDENTITY_VALUES)
    assert result.clean and result.changed, result.reason
    after = stored_pixels(ct)
    assert (after[ink] == after.min()).all()


def test_verification_catches_text_a_redaction_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    # A broken redaction step (boxes of zero size): verification must refuse the object.
    monkeypatch.setattr(cleaner_module, "redaction_box", lambda word, h, w: (word.left, word.top, word.left, word.top))
    ds = reread(ss.dose_report_screen().ds)
    before = bytes(ds.PixelData)
    result = PixelCleaner(WORDS)(ds, IDENTITY_VALUES)
    assert not result.clean
    assert "identifying text remains" in result.reason
    assert not any(word.lower() in result.reason.lower() for word in ss.PLANTED_WORDS)
    assert bytes(ds.PixelData) == before  # a refused object is left as it was


def test_fixed_regions_are_blanked_without_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = ocr.ocr_image
    monkeypatch.setattr(ocr, "ocr_image", lambda image, bands=None: calls.append(1) or real(image, bands))
    settings = PixelSettings(policy="redact-identifying", fixed_regions={"acme medical/screenmaker 1": [[0, 0, 640, 26]]})
    planted = ss.ultrasound_cine(frames=1)
    ds = reread(planted.ds)
    result = PixelCleaner(settings)(ds, IDENTITY_VALUES)
    assert result.clean and result.changed
    assert result.regions == [(0, 0, 640, 26)]  # OCR verified and found nothing more to blank
    assert len(calls) == 1  # the verification pass only
    assert not stored_pixels(ds)[0:26].any()


def test_real_ct_and_mr_slices_never_reach_ocr(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(ocr, "ocr_image", lambda image, bands=None: calls.append(1) or [])
    cleaner = make_pixel_cleaner(WORDS)
    paths = sorted((data_dir / "ct-head-ge").glob("*.dcm"))[:5] + sorted((data_dir / "mr-brain-ge").glob("*"))[:5]
    for path in paths:
        ds = read_dataset(path)
        pixels = bytes(ds.PixelData)
        if cleaner.needs_check(ds):
            cleaner(ds, IDENTITY_VALUES)
        assert bytes(ds.PixelData) == pixels
    assert calls == []


# --- the pydicom-data ultrasound files -----------------------------------------------

PYDICOM_ULTRASOUND = [
    "US1_UNCR.dcm", "US1_J2KR.dcm", "US1_J2KI.dcm", "examples_jpeg2k.dcm", "examples_palette.dcm",
    "examples_rgb_color.dcm", "examples_ybr_color.dcm", "OBXXXX1A_rle_2frame.dcm", "OBXXXX1A_expb_2frame.dcm",
    "gdcm-US-ALOKA-16_big.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "color-pl.dcm", "ExplVR_BigEnd.dcm",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", PYDICOM_ULTRASOUND)
def test_pydicom_ultrasound_files_go_through(name: str) -> None:
    """Real ultrasound files through the default cleaner. Either it refuses (and then leaves
    the pixels as they were and says why in our own words), or it attests clean, and then
    an independent reader (tesseract on the full stored range) finds none of the header's
    identifying words, and only pixels inside the reported boxes changed. (Issue 13: the
    former version only checked that a reason was given, which a cleaner doing nothing passes.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(get_testdata_file(name))
        assert pixel_risk(ds, PixelSettings()) is not None
        before = all_frames(ds).copy()
        header = {str(ds.get(k, "")) for k in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")}
        words = {w for value in header for w in re.split(r"[^0-9A-Za-z]+", value.upper()) if len(w) >= 3}
        result = PixelCleaner(PixelSettings())(ds, header)
        if not result.clean:
            assert not result.changed and not result.attest
            assert np.array_equal(all_frames(ds), before)
            assert not any(w in result.reason.upper() for w in words)
            return
        assert result.attest  # objects at risk are searched whole: a clean result is attested
        out = reread(ds)
        after = all_frames(out)
        if result.changed:
            assert not out.file_meta.TransferSyntaxUID.name.startswith("JPEG Baseline")
            mask = region_mask(before.shape[1:3], result.regions)
            assert np.array_equal(before[:, ~mask], after[:, ~mask])
        else:
            assert np.array_equal(before, after)
        from medsendx.pixels.render import full_range

        for frame in after:
            read = pytesseract.image_to_string(Image.fromarray(full_range(out, frame))).upper()
            assert not [w for w in words if w in read], name
