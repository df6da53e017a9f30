"""De-identification per DICOM PS3.15 Annex E (Basic Profile + options).

``Deidentifier(settings, pixel_cleaner=None)`` is the entry point: ``.deidentify(ds)`` in
place, ``.deidentify_file(src, out_dir)`` for files (atomic output, audit log, quarantine).
"""

from medsendx.deid.engine import Deidentifier, DeidReport, FileOutcome, QuarantineRequired, clean_text
from medsendx.deid.pixelrisk import PixelRisk, assess_pixel_risk, identifying_words
from medsendx.deid.profile import Profile

__all__ = [
    "Deidentifier",
    "DeidReport",
    "FileOutcome",
    "PixelRisk",
    "Profile",
    "QuarantineRequired",
    "assess_pixel_risk",
    "clean_text",
    "identifying_words",
]
