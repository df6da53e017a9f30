"""Which objects may show identity in their pixels, and the words to look for there.

Header de-identification cannot clean text burned into the image (a name on an
ultrasound screen, a scanned form). Such objects either go through a pixel cleaner
(``medsendx.pixels``) or to quarantine; they never leave as they are. The decision uses
header attributes only, so it costs nothing on ordinary CT/MR slices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

# The one rule for "may these pixels show identity?", used by the de-identifier (which
# quarantines an object at risk when no pixel cleaner is configured) and by the pixel
# cleaner's ``needs_check`` (``medsendx.pixels.risk.pixel_risk``).
ENCAPSULATED_DOCUMENT_PREFIX = "1.2.840.10008.5.1.4.1.1.104."  # PDF, CDA, STL...: no pixels to check
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # SC image storage and its multi-frame kin
ULTRASOUND_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.6",  # retired US image storage
    "1.2.840.10008.5.1.4.1.1.6.1",  # US image storage
    "1.2.840.10008.5.1.4.1.1.6.2",  # enhanced US volume
    "1.2.840.10008.5.1.4.1.1.3",  # retired US multi-frame
    "1.2.840.10008.5.1.4.1.1.3.1",  # US multi-frame
})
VISIBLE_LIGHT_PREFIX = "1.2.840.10008.5.1.4.1.1.77.1."  # endoscopy, photographs, slides
# Visible-light photographs (faces, skin, wounds): no text cleaner makes these safe.
PHOTOGRAPH_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL photographic image
    "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # video photographic image
})
# Modalities whose devices paint the patient's details into the image, whatever the header
# says: with a pixel cleaner, their BurnedInAnnotation "NO" is not trusted.
TEXT_BURNING_MODALITIES = frozenset({"US", "IVUS", "OT", "SC", "ES", "XC", "GM", "DOC"})
# Screen-like or camera-like modalities whose BurnedInAnnotation "NO" we trust.
SCREEN_LIKE_MODALITIES = frozenset({"SM", "VL"})
# Modalities that often burn text: checked when the header does not say "NO".
OFTEN_BURNING_MODALITIES = frozenset({"XA", "RF", "CR", "DX"})
# ImageType values scanners use for screen captures (dose pages, patient information pages).
SCREEN_IMAGE_TYPES = frozenset({"SCREEN SAVE", "SCREENSHOT", "SCREEN CAPTURE", "DOSE INFO", "DOSE_INFO", "DOSE REPORT"})
# The header attributes the rule reads (values joined by \\ when multi-valued).
RISK_KEYWORDS = ("SOPClassUID", "RecognizableVisualFeatures", "BurnedInAnnotation", "Modality", "ImageType", "ConversionType")
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class PixelRisk:
    """Why an object's pixels may identify the patient; ``cleanable`` is False when no
    text cleaner can fix it (a face, a document); ``screened_only`` when nothing but
    ``every_object`` put it at risk (the cheap screen decides whether it is searched)."""

    reason: str
    cleanable: bool
    screened_only: bool = False


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def header_values(ds: Dataset) -> dict[str, str]:
    """The attributes the rule reads, from a pydicom Dataset (absent ones left out)."""
    return {keyword: _text(ds, keyword) for keyword in RISK_KEYWORDS if keyword in ds}


def assess_pixel_risk(ds: Dataset, *, checker: bool = False, every_object: bool = False) -> PixelRisk | None:
    """The pixel risk of ``ds`` (header only, pixels never decoded), or None; see
    :func:`assess_header_risk` for ``checker`` and ``every_object``."""
    has_pixels = any(keyword in ds for keyword in PIXEL_KEYWORDS)
    return assess_header_risk(header_values(ds), has_pixels, _embedded_overlay(ds), checker=checker, every_object=every_object)


def assess_header_risk(
    header: Mapping[str, str], has_pixels: bool, embedded_overlay: bool, *, checker: bool = False, every_object: bool = False
) -> PixelRisk | None:
    """The rule itself, on header values by keyword (multiple values joined by \\).

    Always at risk: encapsulated documents, photographs and declared recognizable
    features (not cleanable), declared burned-in annotation, and screen-capture-like
    objects (secondary capture, ultrasound, screen-save image types, text-burning or
    screen-like modalities) that do not say BurnedInAnnotation NO. With ``checker`` (a
    pixel cleaner will look at the pixels) the check widens to what is worth a look but
    would be too much to quarantine: a "NO" on modalities whose devices paint text
    anyway, X-ray modalities whose header is silent, and with ``every_object`` all.
    """
    sop_class = header.get("SOPClassUID", "").strip()
    if sop_class.startswith(ENCAPSULATED_DOCUMENT_PREFIX):
        return PixelRisk("encapsulated document: its content cannot be checked", cleanable=False)
    if not has_pixels:
        return None
    if header.get("RecognizableVisualFeatures", "").strip().upper() == "YES" or sop_class in PHOTOGRAPH_CLASSES:
        return PixelRisk("visible-light photograph or recognizable visual features", cleanable=False)
    burned_in = header.get("BurnedInAnnotation", "").strip().upper()
    if burned_in == "YES":
        return PixelRisk("burned-in annotation declared", cleanable=True)
    modality = header.get("Modality", "").strip().upper()
    image_types = {value.strip().upper() for value in header.get("ImageType", "").split("\\")}
    reason, distrust_no = None, False
    # (1.2.840.10008.5.1.4.1.1.7 and .7.1-.7.4; not the VL classes 1.2.840.10008.5.1.4.1.1.77.*)
    if sop_class == SECONDARY_CAPTURE_PREFIX or sop_class.startswith(SECONDARY_CAPTURE_PREFIX + ".") or "ConversionType" in header:
        reason, distrust_no = "secondary capture (screen-capture-like object)", True
    elif sop_class in ULTRASOUND_CLASSES or modality in ("US", "IVUS"):
        reason, distrust_no = "ultrasound (text is commonly burned in)", True
    elif image_types & SCREEN_IMAGE_TYPES:
        reason, distrust_no = "screen capture by image type", True
    elif modality in TEXT_BURNING_MODALITIES:
        reason, distrust_no = "modality commonly burns text into pixels", True
    elif sop_class.startswith(VISIBLE_LIGHT_PREFIX) or modality in SCREEN_LIKE_MODALITIES:
        reason = "screen-capture-like or camera image"
    if reason and (burned_in != "NO" or (checker and distrust_no)):
        return PixelRisk(reason, cleanable=True)
    if checker and modality in OFTEN_BURNING_MODALITIES and burned_in != "NO":
        return PixelRisk("modality often burns text and the header does not say otherwise", cleanable=True)
    if embedded_overlay:
        return PixelRisk("overlay embedded in unused pixel bits", cleanable=True)
    if checker and every_object:
        return PixelRisk("configured to check every object", cleanable=True, screened_only=True)
    return None


def is_photograph(ds: Dataset) -> bool:
    """A visible-light photograph or an object flagged as showing recognizable features."""
    return _text(ds, "RecognizableVisualFeatures").strip().upper() == "YES" or _text(ds, "SOPClassUID").strip() in PHOTOGRAPH_CLASSES


def _embedded_overlay(ds: Dataset) -> bool:
    """Retired practice: overlay bits stored in the high bits of Pixel Data."""
    for group in range(0x6000, 0x6020, 2):
        position = ds.get((group, 0x0102))
        if position is not None and (group, 0x3000) not in ds:
            try:
                if int(position.value) != 0:
                    return True
            except (TypeError, ValueError):
                return True
    return False


# Attributes whose values, if they appear as text in the pixels or in a free-text
# descriptor, identify the patient or the visit.
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientBirthDate", "PatientAddress", "PatientTelephoneNumbers",
    "AccessionNumber", "StudyID", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "ReferringPhysicianName", "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy", "OperatorsName", "RequestingPhysician",
    "PhysiciansOfRecord", "StationName", "DeviceSerialNumber", "MilitaryRank",
    "MedicalRecordLocator", "ResponsiblePerson", "StudyDate",
)
_SPLIT = re.compile(r"[\s^=,;:/\\.\-_()]+")


def identifying_words(ds: Dataset) -> set[str]:
    """Words (upper case, at least 2 characters) from the identifying attributes of the
    ORIGINAL object, plus the birth and study dates in common written forms."""
    words: set[str] = set()
    for keyword in IDENTIFYING_KEYWORDS:
        try:
            text = _text(ds, keyword)
        except Exception:  # a damaged value is simply not a source of words
            continue
        for word in _SPLIT.split(text.upper()):
            if len(word) >= 2:
                words.add(word)
        if keyword in ("PatientBirthDate", "StudyDate") and len(text) == 8 and text.isdigit():
            y, m, d = text[:4], text[4:6], text[6:8]
            words.update({f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{m}/{d}/{y}", f"{d}/{m}/{y}"})
    return words
