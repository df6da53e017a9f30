"""Which objects may show identity in their pixels: a header-only decision.

This runs on every object, so it reads a few attributes and never decodes pixel data:
ordinary CT/MR slices pay microseconds here and no OCR at all.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from medsendx.config import PixelSettings

SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # SC image storage and its multi-frame kin
ULTRASOUND_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6",  # retired US image storage
    "1.2.840.10008.5.1.4.1.1.6.1",  # US image storage
    "1.2.840.10008.5.1.4.1.1.6.2",  # enhanced US volume
    "1.2.840.10008.5.1.4.1.1.3",  # retired US multi-frame
    "1.2.840.10008.5.1.4.1.1.3.1",  # US multi-frame
}
# Visible-light photographs (faces, skin, wounds): no OCR makes these safe.
PHOTOGRAPH_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL photographic image
    "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # video photographic image
}
# Modalities whose devices paint the patient's details into the image, whatever the header says.
TEXT_BURNING_MODALITIES = {"US", "IVUS", "OT", "SC", "ES", "XC", "GM", "DOC"}
# Modalities that often burn text but whose BurnedInAnnotation "NO" we trust.
OFTEN_BURNING_MODALITIES = {"XA", "RF", "CR", "DX"}
# ImageType values scanners use for screen captures (dose pages, patient information pages).
SCREEN_IMAGE_TYPES = {"SCREEN SAVE", "SCREENSHOT", "SCREEN CAPTURE", "DOSE INFO", "DOSE_INFO", "DOSE REPORT"}


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).strip().upper() if value is not None else ""


def _image_types(ds: Dataset) -> set[str]:
    value = ds.get("ImageType")
    if value is None:
        return set()
    if isinstance(value, str):
        return {value.strip().upper()}
    return {str(v).strip().upper() for v in value}


def is_photograph(ds: Dataset) -> bool:
    """A visible-light photograph or an object flagged as showing recognizable features."""
    return _text(ds, "RecognizableVisualFeatures") == "YES" or str(ds.get("SOPClassUID", "")) in PHOTOGRAPH_CLASSES


def pixel_risk(ds: Dataset, settings: PixelSettings) -> str | None:
    """Why ``ds`` must have its pixels checked for text, or None when it need not be.

    The reason is our own wording (never a value from the object), fit for logs and audit.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return None
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = _text(ds, "Modality")
    burned = _text(ds, "BurnedInAnnotation")
    if is_photograph(ds):
        return "visible-light photograph or recognizable visual features"
    if burned == "YES":
        return "header declares burned-in annotation"
    if sop_class.startswith(SECONDARY_CAPTURE_PREFIX) or "ConversionType" in ds:
        return "secondary capture (screen-capture-like object)"
    if sop_class in ULTRASOUND_CLASSES or modality in ("US", "IVUS"):
        return "ultrasound (text is commonly burned in)"
    if _image_types(ds) & SCREEN_IMAGE_TYPES:
        return "screen capture by image type"
    if modality in TEXT_BURNING_MODALITIES:
        return "modality commonly burns text into pixels"
    if modality in OFTEN_BURNING_MODALITIES and burned != "NO":
        return "modality often burns text and the header does not say otherwise"
    if settings.ocr_every_object:
        return "configured to check every object"
    return None
