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

# SOP classes whose pixels are typically a screen or a camera picture.
_SCREEN_CAPTURE_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (all kinds)
    "1.2.840.10008.5.1.4.1.1.6.",  # Ultrasound image / multi-frame / enhanced
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound multi-frame
    "1.2.840.10008.5.1.4.1.1.77.1.",  # Visible light (endoscopy, photographs, slides)
    "1.2.840.10008.5.1.4.1.1.104.",  # Encapsulated documents (PDF, CDA, STL...)
)
_SCREEN_CAPTURE_MODALITIES = frozenset({"US", "OT", "SC", "XC", "ES", "GM", "SM", "DOC", "VL"})


@dataclass(frozen=True)
class PixelRisk:
    """Why an object's pixels may identify the patient; ``cleanable`` is False when no
    text cleaner can fix it (a face, a document)."""

    reason: str
    cleanable: bool


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


RISK_KEYWORDS = ("SOPClassUID", "RecognizableVisualFeatures", "BurnedInAnnotation", "Modality", "ImageType")


def assess_pixel_risk(ds: Dataset) -> PixelRisk | None:
    """The pixel risk of ``ds`` (header only), or None for an object safe to pass on."""
    header = {keyword: _text(ds, keyword) for keyword in RISK_KEYWORDS}
    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    return assess_header_risk(header, has_pixels, _embedded_overlay(ds))


def assess_header_risk(header: Mapping[str, str], has_pixels: bool, embedded_overlay: bool) -> PixelRisk | None:
    """The rule itself, on header values by keyword (multiple values joined by \\)."""
    sop_class = header.get("SOPClassUID", "")
    if sop_class.startswith("1.2.840.10008.5.1.4.1.1.104."):
        return PixelRisk("encapsulated document: its content cannot be checked", cleanable=False)
    if not has_pixels:
        return None
    if header.get("RecognizableVisualFeatures", "").strip().upper() == "YES":
        return PixelRisk("recognizable visual features declared (e.g. a face)", cleanable=False)
    burned_in = header.get("BurnedInAnnotation", "").strip().upper()
    if burned_in == "YES":
        return PixelRisk("burned-in annotation declared", cleanable=True)
    if burned_in != "NO":
        modality = header.get("Modality", "").strip().upper()
        if sop_class.startswith(_SCREEN_CAPTURE_PREFIXES) or modality in _SCREEN_CAPTURE_MODALITIES:
            return PixelRisk("screen-capture-like object without BurnedInAnnotation NO", cleanable=True)
        if "SCREEN SAVE" in header.get("ImageType", "").upper():
            return PixelRisk("screen save image without BurnedInAnnotation NO", cleanable=True)
    if embedded_overlay:
        return PixelRisk("overlay embedded in unused pixel bits", cleanable=True)
    return None


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
