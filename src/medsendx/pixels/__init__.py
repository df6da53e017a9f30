"""Identifying pixels: find burned-in text, redact it, verify (issues 7 and 12).

``make_pixel_cleaner(settings)`` gives the callable the de-identifier runs on objects at
risk (see :func:`pixel_risk`); its :class:`PixelCleanResult` says whether the object may
leave. Default policy "redact-detected": ``detector`` (PP-OCR via ONNX Runtime, hash-checked
models), ``render`` (window-independent renderings), ``screen`` (cheap pen-value screen),
``textclean`` (default-deny blanking and independent verification), ``preview`` (boxes for
inspect/view). Also ``risk`` (header-only decision), ``ocr`` (tesseract), ``redact`` (the
opt-in word policies), ``encode`` (lossless write-back), ``cleaner`` (entry point).
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
