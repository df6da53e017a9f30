"""Identifying pixels: find burned-in text, redact it, verify (issue 7).

``make_pixel_cleaner(settings)`` gives the callable the de-identifier runs on objects at
risk (see :func:`pixel_risk`); its :class:`PixelCleanResult` says whether the object may
leave. Modules: ``risk`` (header-only decision), ``ocr`` (tesseract), ``redact`` (which
words to blank), ``encode`` (lossless write-back), ``cleaner`` (the loop that ties them).
"""

from medsendx.pixels.cleaner import PixelCleaner, PixelCleanResult, fixed_regions_for, make_pixel_cleaner
from medsendx.pixels.risk import is_photograph, pixel_risk

__all__ = [
    "PixelCleanResult",
    "PixelCleaner",
    "fixed_regions_for",
    "is_photograph",
    "make_pixel_cleaner",
    "pixel_risk",
]
