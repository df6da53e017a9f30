"""Which objects may show identity in their pixels: a header-only decision.

This runs on every object, so it reads a few attributes and never decodes pixel data:
ordinary CT/MR slices pay microseconds here and no OCR at all. The rule itself is
``medsendx.deid.pixelrisk.assess_header_risk``, the one the de-identifier applies (so the
objects the de-identifier hands to the cleaner are exactly those this says need a check).
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from medsendx.config import PixelSettings
from medsendx.deid.pixelrisk import is_photograph, assess_pixel_risk

__all__ = ["is_photograph", "pixel_risk"]


def pixel_risk(ds: Dataset, settings: PixelSettings) -> str | None:
    """Why ``ds`` must have its pixels checked for text, or None when it need not be.

    The reason is our own wording (never a value from the object), fit for logs and audit.
    """
    risk = assess_pixel_risk(ds, checker=True, every_object=settings.checks_every_object())
    return risk.reason if risk else None
