"""The study page's picture: the de-identified image with the truck's SEG segments over it.

Two panels side by side (the image as a person reads it; the segments blended in colour)
and a legend with the segment labels. Nothing read from the object is drawn but the
segment labels, which are the sender's class names, not patient data.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

from medsendx.dicomio import display_image
from medsendx.hub.results import SegmentMask
from medsendx.triage.overlay import _font, class_colour

PANEL = 448
LEGEND_H = 40


class NotShowable(ValueError):
    """An object the hub will not draw (our words)."""


def check_deidentified(ds: Dataset) -> None:
    """Only objects that say they are de-identified and carry no burned-in text are drawn."""
    if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
        raise NotShowable("the image does not state that patient identity was removed")
    if str(ds.get("BurnedInAnnotation", "NO")).upper() == "YES":
        raise NotShowable("the image may show burned-in text")


def render_overlay_png(ds: Dataset, segments: list[SegmentMask]) -> bytes:
    check_deidentified(ds)
    grey = display_image(ds, 0)
    if grey.ndim == 3:
        grey = grey.mean(axis=2).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    blended = rgb.copy()
    for i, seg in enumerate(segments):
        if seg.mask.shape != grey.shape:
            continue  # a SEG on another grid: skip rather than draw it misplaced
        colour = np.array(class_colour(i), dtype=np.float32)
        blended[seg.mask] = 0.45 * blended[seg.mask] + 0.55 * colour
    left = Image.fromarray(rgb.astype(np.uint8)).resize((PANEL, PANEL), Image.Resampling.BILINEAR)
    right = Image.fromarray(blended.astype(np.uint8)).resize((PANEL, PANEL), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (PANEL * 2 + 12, PANEL + LEGEND_H), (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (PANEL + 12, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(15)
    x = 8
    if not segments:
        draw.text((x, PANEL + 10), "no segmentation received for this image", fill=(110, 110, 110), font=font)
    for i, seg in enumerate(segments):
        share = 100.0 * seg.mask.mean() if seg.mask.size else 0.0
        draw.rectangle([x, PANEL + 12, x + 14, PANEL + 26], fill=class_colour(i))
        text = f"{seg.label[:24]} ({share:.0f}%)"
        draw.text((x + 20, PANEL + 10), text, fill=(20, 20, 20), font=font)
        x += 34 + int(draw.textlength(text, font=font))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()
