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
from medsendx.pixels import PixelCleaner

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


# Expected decisions written out by hand from the documented rule (README "Pixel
# cleaner"), not computed by the code under test (issue 13). Columns:
#   header-only:  no cleaner; "q" = quarantined, "-" = passes
#   with cleaner: "check" = handed to the cleaner, "q" = refused before any cleaner
#                 (a face, a document), "-" = passes unread (screen_every_object off)
# (SOP class, modality, BurnedInAnnotation, ImageType, ConversionType) -> (header-only, with cleaner)
EXPECTED = [
    ((CTImageStorage, "CT", None, "ORIGINAL\\PRIMARY\\AXIAL", None), ("-", "-")),
    ((CTImageStorage, "CT", "NO", "ORIGINAL\\PRIMARY\\AXIAL", None), ("-", "-")),
    ((CTImageStorage, "CT", "YES", "ORIGINAL\\PRIMARY\\AXIAL", None), ("q", "check")),
    ((CTImageStorage, "CT", None, "DERIVED\\SECONDARY\\SCREEN SAVE", None), ("q", "check")),
    ((CTImageStorage, "CT", "NO", "DERIVED\\SECONDARY\\SCREEN SAVE", None), ("-", "check")),
    ((SecondaryCaptureImageStorage, "OT", "NO", "ORIGINAL\\PRIMARY", None), ("-", "check")),
    ((CTImageStorage, "CT", None, "ORIGINAL\\PRIMARY", "WSD"), ("q", "check")),
    ((UltrasoundImageStorage, "US", None, "ORIGINAL\\PRIMARY", None), ("q", "check")),
    ((UltrasoundImageStorage, "US", "NO", "ORIGINAL\\PRIMARY", None), ("-", "check")),
    ((UltrasoundMultiFrameImageStorage, "US", "NO", "ORIGINAL\\PRIMARY", None), ("-", "check")),
    (("1.2.840.10008.5.1.4.1.1.12.1", "XA", None, "ORIGINAL\\PRIMARY", None), ("-", "check")),
    (("1.2.840.10008.5.1.4.1.1.12.1", "XA", "NO", "ORIGINAL\\PRIMARY", None), ("-", "-")),
    (("1.2.840.10008.5.1.4.1.1.1", "CR", None, "ORIGINAL\\PRIMARY", None), ("-", "check")),
    (("1.2.840.10008.5.1.4.1.1.1.1", "DX", None, "ORIGINAL\\PRIMARY", None), ("-", "check")),
    (("1.2.840.10008.5.1.4.1.1.1.1", "DX", "NO", "ORIGINAL\\PRIMARY", None), ("-", "-")),
    (("1.2.840.10008.5.1.4.1.1.1.2", "MG", None, "ORIGINAL\\PRIMARY", None), ("-", "-")),
    (("1.2.840.10008.5.1.4.1.1.77.1.6", "SM", None, "ORIGINAL\\PRIMARY", None), ("q", "check")),
    (("1.2.840.10008.5.1.4.1.1.77.1.6", "SM", "NO", "ORIGINAL\\PRIMARY", None), ("-", "-")),
    (("1.2.840.10008.5.1.4.1.1.77.1.1", "ES", "NO", "ORIGINAL\\PRIMARY", None), ("-", "check")),
    (("1.2.840.10008.5.1.4.1.1.77.1.4", "XC", "NO", "ORIGINAL\\PRIMARY", None), ("q", "q")),
    (("1.2.840.10008.5.1.4.1.1.104.1", "DOC", None, "ORIGINAL\\PRIMARY", None), ("q", "q")),
]


class RefusingCleaner:
    """Records what the engine hands over and refuses it (stands for any cleaner: the test is
    about which objects reach it, not about cleaning)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, ds: Dataset, words: set[str]):
        self.calls += 1
        from medsendx.pixels import PixelCleanResult

        return PixelCleanResult(False, "refused by the test cleaner")


@pytest.mark.parametrize("case,expected", EXPECTED, ids=lambda v: "/".join(str(x) for x in v) if isinstance(v, tuple) else str(v))
def test_which_objects_are_quarantined_or_checked(tmp_path: Path, case: tuple, expected: tuple[str, str]) -> None:
    (sop_class, modality, burned_in, image_type, conversion) = case
    ds = header_object(sop_class, modality, burned_in, None, image_type, conversion)
    data = _encode(ds)
    header_only, with_cleaner = expected
    alone = Deidentifier(settings_for(tmp_path / "a"), pixel_cleaner=None)
    assert (engine_decision(alone, data) is not None) == (header_only == "q")
    settings = settings_for(tmp_path / "b")
    settings.pixels = PixelSettings(screen_every_object=False)
    cleaner = RefusingCleaner()
    decided = engine_decision(Deidentifier(settings, pixel_cleaner=cleaner), data)
    assert (cleaner.calls == 1) == (with_cleaner == "check")
    assert (decided is not None) == (with_cleaner != "-")
    if with_cleaner == "check":
        assert decided == "refused by the test cleaner"
    # The cleaner's own needs_check agrees with the engine (it also names what is refused).
    assert (PixelCleaner(settings.pixels).needs_check(ds) is not None) == (with_cleaner != "-")
    # By default every object with pixels reaches the cleaner (issue 12), refused ones excepted.
    every = RefusingCleaner()
    decided = engine_decision(Deidentifier(settings_for(tmp_path / "c"), pixel_cleaner=every), data)
    assert every.calls == (0 if with_cleaner == "q" else 1)


def test_policy_quarantine_holds_back_at_least_what_the_default_checks(tmp_path: Path, ct_head: list[Path]) -> None:
    """Issue 13: under policy "quarantine" an ultrasound whose header says NO and XA/CR/DX
    with a silent header used to leave unread."""
    settings = settings_for(tmp_path / "q")
    settings.pixels = PixelSettings(policy="quarantine")
    deid = Deidentifier(settings)
    for case, (_, with_cleaner) in EXPECTED:
        ds = header_object(case[0], case[1], case[2], None, case[3], case[4])
        decided = engine_decision(deid, _encode(ds))
        if with_cleaner != "-":
            assert decided is not None, case
    # ...while real CT slices without text pass (the screen finds nothing there).
    for path in ct_head[:4]:
        assert engine_decision(deid, path.read_bytes()) is None, path.name


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
