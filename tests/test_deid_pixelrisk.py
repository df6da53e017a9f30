"""One pixel-risk rule: the de-identifier's decision and the pixel cleaner's ``needs_check``
must agree on every header, because both apply ``deid.pixelrisk.assess_header_risk``
(the engine on the raw bytes, the cleaner on a pydicom Dataset). If either grows its own
rule again, these tests fail."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage, UltrasoundImageStorage, UltrasoundMultiFrameImageStorage

from deid_helpers import planted_ct, settings_for
from medsendx.config import PixelSettings
from medsendx.deid import Deidentifier, QuarantineRequired, assess_pixel_risk
from medsendx.deid.engine import _encode
from medsendx.pixels import PixelCleaner, pixel_risk

# (SOP class, modality): ordinary slices, screens, ultrasound, X-ray, camera images, a PDF.
CLASSES = [
    (CTImageStorage, "CT"),
    (SecondaryCaptureImageStorage, "OT"),
    (UltrasoundImageStorage, "US"),
    (UltrasoundMultiFrameImageStorage, "US"),
    (CTImageStorage, "IVUS"),
    ("1.2.840.10008.5.1.4.1.1.12.1", "XA"),
    ("1.2.840.10008.5.1.4.1.1.1.1", "DX"),
    ("1.2.840.10008.5.1.4.1.1.77.1.1", "ES"),  # VL endoscopic
    ("1.2.840.10008.5.1.4.1.1.77.1.4", "XC"),  # VL photographic
    ("1.2.840.10008.5.1.4.1.1.77.1.6", "SM"),  # VL whole slide microscopy
    ("1.2.840.10008.5.1.4.1.1.104.1", "DOC"),  # encapsulated PDF (no pixel data)
]
HEADERS = list(
    itertools.product(
        CLASSES,
        (None, "YES", "NO"),  # BurnedInAnnotation
        (None, "YES"),  # RecognizableVisualFeatures
        ("ORIGINAL\\PRIMARY\\AXIAL", "DERIVED\\SECONDARY\\SCREEN SAVE"),
        (None, "WSD"),  # ConversionType
    )
)


def header_object(sop_class: str, modality: str, burned_in: str | None, faces: str | None, image_type: str, conversion: str | None) -> Dataset:
    ds = planted_ct(sop_class=sop_class, image_type=image_type)
    ds.Modality = modality
    for keyword, value in (("BurnedInAnnotation", burned_in), ("RecognizableVisualFeatures", faces), ("ConversionType", conversion)):
        if value is not None:
            setattr(ds, keyword, value)
    if sop_class.startswith("1.2.840.10008.5.1.4.1.1.104."):
        del ds.PixelData
    return ds


@pytest.fixture(scope="module")
def objects() -> list[tuple[tuple, Dataset, bytes]]:
    """Every header of the grid as (case, dataset, Part 10 bytes)."""
    made = []
    for (sop_class, modality), *rest in HEADERS:
        ds = header_object(sop_class, modality, *rest)
        made.append(((modality, *rest), ds, _encode(ds)))
    return made


def engine_decision(deid: Deidentifier, data: bytes) -> str | None:
    """None if the engine lets the object through, else the quarantine reason."""
    try:
        deid.deidentify_bytes(data)
    except QuarantineRequired as exc:
        return exc.reason
    return None


@pytest.mark.parametrize("every_object", [False, True])
def test_engine_and_pixel_cleaner_apply_the_same_rule(tmp_path: Path, objects, every_object: bool) -> None:
    """With a cleaner, the engine hands an object to it exactly when the cleaner's own
    ``needs_check`` says it must be checked (a cleaner under policy "quarantine" refuses
    each one, so every hand-over shows as a quarantine)."""
    pixel_settings = PixelSettings(policy="quarantine", ocr_every_object=every_object)
    cleaner = PixelCleaner(pixel_settings)
    settings = settings_for(tmp_path / "state")
    settings.pixels = pixel_settings
    deid = Deidentifier(settings, pixel_cleaner=cleaner)
    at_risk = 0
    for case, ds, data in objects:
        wanted = cleaner.needs_check(ds)
        assert wanted == pixel_risk(ds, pixel_settings)
        decided = engine_decision(deid, data)
        assert (decided is None) == (wanted is None), case
        risk = assess_pixel_risk(ds, checker=True, every_object=every_object)
        assert (risk.reason if risk else None) == wanted, case
        if risk is not None and not risk.cleanable:  # refused before any cleaner: our reason
            assert decided == wanted, case
        at_risk += wanted is not None
    # The grid holds both kinds (the assertions above are not vacuous); with every_object
    # a cleaner checks all of them.
    assert at_risk == len(HEADERS) if every_object else 0 < at_risk < len(HEADERS)


def test_without_a_cleaner_the_engine_quarantines_exactly_the_objects_at_risk(tmp_path: Path, objects) -> None:
    deid = Deidentifier(settings_for(tmp_path / "state"), pixel_cleaner=None)
    passed = 0
    for case, ds, data in objects:
        risk = assess_pixel_risk(ds)
        assert engine_decision(deid, data) == (risk.reason if risk else None), case
        passed += risk is None
    assert 0 < passed < len(HEADERS)


def test_a_cleaner_widens_the_check_to_headers_it_does_not_trust() -> None:
    """What changes with a cleaner present: a "NO" on an ultrasound screen and a silent
    X-ray header get checked; without a cleaner they are not quarantined for it."""
    us_says_no = header_object(UltrasoundImageStorage, "US", "NO", None, "ORIGINAL\\PRIMARY", None)
    xa_silent = header_object("1.2.840.10008.5.1.4.1.1.12.1", "XA", None, None, "ORIGINAL\\PRIMARY", None)
    ct_says_no = header_object(CTImageStorage, "CT", "NO", None, "ORIGINAL\\PRIMARY", None)
    for ds in (us_says_no, xa_silent):
        assert assess_pixel_risk(ds) is None
        assert assess_pixel_risk(ds, checker=True) is not None
    assert assess_pixel_risk(ct_says_no, checker=True) is None
    assert assess_pixel_risk(ct_says_no, checker=True, every_object=True) is not None
    photo = header_object("1.2.840.10008.5.1.4.1.1.77.1.4", "XC", "NO", None, "ORIGINAL\\PRIMARY", None)
    assert not assess_pixel_risk(photo).cleanable  # a face: no cleaner helps, header or not
