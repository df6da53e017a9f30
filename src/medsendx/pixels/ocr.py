"""Finding text in an image with tesseract, with word boxes in the image's own pixels.

Scanner text is usually small, light on dark, sometimes coloured; tesseract reads dark text
on a light page best. :func:`prepare_for_ocr` turns a display image into that (one grey
channel that keeps the text's contrast, stretched, inverted when the page is dark, upscaled
when the image is small) and :func:`ocr_image` maps the boxes back to the original pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from medsendx.pixels import tesslib

# Tesseract's OpenMP threads make small images slower and fight other work on a shared edge
# box; one thread per call is the faster setting here (callers parallelise across files).
os.environ.setdefault("OMP_THREAD_LIMIT", "1")

# Sparse text: find as much text as possible in no particular order (overlay text is scattered).
TESSERACT_CONFIG = "--psm 11"
OCR_TIMEOUT_SECONDS = 120
# Images whose short side is below this are upscaled so that small scanner fonts are read.
TARGET_SHORT_SIDE = 600
MAX_UPSCALE = 4


class OcrUnavailable(RuntimeError):
    """Tesseract is not installed or failed; the message is our own wording."""


@dataclass(frozen=True)
class OcrWord:
    """One word tesseract found, with its box in the original image's pixel coordinates."""

    text: str
    confidence: float  # 0-100; -1 when tesseract gives none
    left: int
    top: int
    width: int
    height: int
    line: tuple[int, int, int]  # (block, paragraph, line): words of one text line share it

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), x1/y1 exclusive."""
        return (self.left, self.top, self.left + self.width, self.top + self.height)


def upscale_factor(height: int, width: int) -> int:
    short = max(1, min(height, width))
    return int(max(1, min(MAX_UPSCALE, round(TARGET_SHORT_SIDE / short))))


def prepare_for_ocr(image: np.ndarray) -> tuple[Image.Image, int]:
    """An 8-bit display image (H x W or H x W x 3) as dark-on-light grey, and the upscale factor."""
    if image.ndim == 3:
        luminance = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        dark_page = float(np.median(luminance)) < 128
        # On a dark page text is bright in *some* channel (blue or red text is dim in
        # luminance); on a light page text is dark in some channel.
        grey = image.max(axis=2) if dark_page else image.min(axis=2)
    else:
        grey = image
        dark_page = float(np.median(grey)) < 128
    grey = grey.astype(np.float32)
    lo, hi = np.percentile(grey, [1, 99])
    if hi - lo < 16:  # a page that is almost one colour: stretch on the full range instead
        lo, hi = float(grey.min()), float(grey.max())
    if hi > lo:
        grey = (grey - lo) * (255.0 / (hi - lo))
    grey = np.clip(grey, 0, 255).astype(np.uint8)
    if dark_page:
        grey = 255 - grey
    pil = Image.fromarray(grey)
    scale = upscale_factor(*grey.shape[:2])
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.BICUBIC)
    return pil, scale


def ocr_image(image: np.ndarray, bands: list[tuple[int, int]] | None = None) -> list[OcrWord]:
    """Every word tesseract finds in an 8-bit display image, boxes in the image's pixels.

    ``bands``: read only these row ranges [y0, y1) (prepared exactly as for the whole
    image, stacked into one tesseract call); used to re-read redacted lines cheaply.
    Raises :class:`OcrUnavailable` if tesseract is missing or fails.
    """
    import pytesseract

    if image.size == 0 or min(image.shape[:2]) < 4:
        return []
    pil, scale = prepare_for_ocr(image)
    height, width = image.shape[:2]
    # (row offset in the image sent to tesseract, row offset in the original image) per band
    placements: list[tuple[int, int]] = [(0, 0)]
    if bands:
        gap = 8 * scale  # blank rows between bands so tesseract does not join their lines
        crops = [pil.crop((0, y0 * scale, pil.width, y1 * scale)) for y0, y1 in bands]
        stacked = Image.new("L", (pil.width, sum(c.height for c in crops) + gap * len(crops)), 255)
        placements, row = [], 0
        for (y0, _), crop in zip(bands, crops):
            stacked.paste(crop, (0, row))
            placements.append((row, y0 * scale))
            row += crop.height + gap
        pil = stacked
    try:
        if tesslib.available():  # same library and model in process: no 0.2 s model load per call
            data = tesslib.image_to_data(pil, OCR_TIMEOUT_SECONDS)
        else:
            data = pytesseract.image_to_data(
                pil, config=TESSERACT_CONFIG, output_type=pytesseract.Output.DICT, timeout=OCR_TIMEOUT_SECONDS
            )
    except tesslib.TessError:
        raise OcrUnavailable("OCR engine (tesseract) failed on this image") from None
    except pytesseract.TesseractNotFoundError:
        raise OcrUnavailable("OCR engine (tesseract) is not installed") from None
    except pytesseract.TesseractError:
        raise OcrUnavailable("OCR engine (tesseract) failed on this image") from None
    except RuntimeError:  # pytesseract's timeout (TesseractError, a subclass, is caught above)
        raise OcrUnavailable(f"OCR did not finish within {OCR_TIMEOUT_SECONDS} s") from None
    words: list[OcrWord] = []
    for i, text in enumerate(data["text"]):
        text = text.strip()
        if not text or int(data["level"][i]) != 5:
            continue
        top = int(data["top"][i])
        sent_row, original_row = max((p for p in placements if p[0] <= top), default=placements[0])
        top += original_row - sent_row
        # Map back to original pixels, rounding outwards so the box covers the whole word.
        x0 = int(data["left"][i]) // scale
        y0 = top // scale
        x1 = min(width, -(-(int(data["left"][i]) + int(data["width"][i])) // scale))
        y1 = min(height, -(-(top + int(data["height"][i])) // scale))
        words.append(
            OcrWord(
                text=text,
                confidence=float(data["conf"][i]),
                left=x0,
                top=y0,
                width=max(1, x1 - x0),
                height=max(1, y1 - y0),
                line=(int(data["block_num"][i]), int(data["par_num"][i]), int(data["line_num"][i])),
            )
        )
    return words
