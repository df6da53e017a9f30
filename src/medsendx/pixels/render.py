"""Window-independent 8-bit renderings of one frame, for text detection.

Burned-in text is invisible in some renderings and plain in others: 8-bit text in a 12-bit
CT is black in a 40/400 window; text at the maximum stored value is one grey among many
in a full-range view of a bright image; text over a noisy mammogram stands out only as
"exactly the brightest value". So the detector looks at several renderings, each a plain
8-bit grey image of the same size as the frame (boxes map 1:1 to the stored pixels):

- ``window``: what a viewer shows first (the object's window / VOI LUT, MONOCHROME1
  inverted; colour as RGB luminance-free channel extremes, see below); left out when the
  window clips nothing (then it is ``full`` with less contrast);
- ``full``: the frame's full stored range, linearly;
- ``high`` / ``low``: what lies at or near the extreme stored values (white on black);
  for a screened frame only where a pen the screen found lies there (see ``renderings``);
- ``byte``: stored values clipped to 0..255, for data of more than 8 bits (what an
  8-bit-minded tool writes into 16-bit data shows here and nowhere else); for a screened
  frame only where a pen lies in 0..255;
- ``pen`` (screened frames): the pixels holding a pen found inside the range, white on
  black (a 255 pen in 12-bit data over tissue of values around it shows nowhere else);
- colour frames: the brightest and the darkest channel per pixel (coloured text is bright
  in *some* channel), each in full range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from medsendx.dicomio import display_array

# "Near the extreme": within this share of the frame's stored range from its max (or min).
EXTREME_SHARE = 0.02


@dataclass(frozen=True)
class Rendering:
    name: str
    image: np.ndarray  # uint8, H x W


def stretch(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Linear map of [lo, hi] (default: the array's own range) to 0..255, as uint8."""
    values = np.asarray(values, dtype=np.float32)
    lo = float(values.min()) if lo is None else lo
    hi = float(values.max()) if hi is None else hi
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip((values - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def _grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else image.max(axis=2)


def renderings(ds: Dataset, frame: np.ndarray, pens: list[int] | None = None) -> list[Rendering]:
    """Every rendering of ``frame`` (stored values, H x W or H x W x 3) worth a look.
    Renderings identical to an earlier one are left out.

    ``pens``: the histogram spike values where the screen found strokes (a screened frame);
    then ``high``, ``low`` and ``byte`` are made only for a pen they show: at the top of the
    range, at its bottom, inside 0..255, and ``pen`` (the pixels holding a pen inside the
    range) for the others. (``window`` and ``full`` always: they show every value.) None:
    every rendering but ``pen`` (a frame searched whole, where text need not be one pen)."""
    out: list[Rendering] = []
    seen: set[bytes] = set()

    def add(name: str, image: np.ndarray) -> None:
        image = np.ascontiguousarray(image, dtype=np.uint8)
        key = image.tobytes()[:: max(1, image.size // 65536)] + image.tobytes()[-64:]
        if image.max() == image.min() or key in seen:
            return
        seen.add(key)
        out.append(Rendering(name, image))

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if frame.ndim == 3:  # colour (decoded to RGB)
        add("window-max-channel", stretch(frame.max(axis=2)))
        add("window-min-channel", stretch(frame.min(axis=2)))
        return out
    shown = display_array(ds, frame)
    if photometric == "PALETTE COLOR":
        add("window", _grey(shown))
        return out
    values = frame.astype(np.float32, copy=False)
    lo, hi = float(values.min()), float(values.max())
    if not _window_is_full_range(ds, lo, hi):
        add("window", _grey(shown))
    inverted = photometric == "MONOCHROME1"
    full = stretch(values, lo, hi)
    add("full", 255 - full if inverted else full)
    band = max(1.0, (hi - lo) * EXTREME_SHARE)
    if pens is None or any(p >= hi - band for p in pens):
        add("high", np.where(values >= hi - band, 255, 0))
    if pens is None or any(p <= lo + band for p in pens):
        add("low", np.where(values <= lo + band, 255, 0))
    if int(ds.get("BitsStored", 8)) > 8 and (hi > 255 or lo < 0) and (pens is None or any(0 <= p <= 255 for p in pens)):
        add("byte", stretch(values, 0.0, 255.0))
    if pens:
        # A pen inside the range (an 8-bit 255 in 12-bit MR over tissue of similar values) is
        # one grey among many in every rendering above; its own pixels, white on black, are
        # the strokes themselves.
        inside = [p for p in pens if lo + band < p < hi - band]
        if inside:
            add("pen", np.where(np.isin(frame, inside), 255, 0))
    return out


def _window_is_full_range(ds: Dataset, lo: float, hi: float) -> bool:
    """The display window is a plain linear map that clips nothing of [lo, hi] (stored
    values): then the ``window`` rendering is the ``full`` one with less (or the same)
    contrast, plus an offset; it shows nothing ``full`` does not show more plainly, and the
    detector need not look at it twice (an MR whose window is wider than its values)."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds or hi <= lo:
        return False
    if any(k in ds for k in ("VOILUTSequence", "ModalityLUTSequence", "PixelPaddingValue")):
        return False
    if str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper() != "LINEAR":
        return False
    try:
        center = float(_first(ds.WindowCenter))
        width = float(_first(ds.WindowWidth))
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        return False
    if slope <= 0 or width <= 1:
        return False
    mlo, mhi = lo * slope + intercept, hi * slope + intercept
    wlo, whi = center - width / 2 - 1, center + width / 2 + 1  # (a unit of slack for DICOM's -0.5 / -1 terms)
    return wlo <= mlo and mhi <= whi


def _first(value: object) -> object:
    return value[0] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else value


def full_range(ds: Dataset, frame: np.ndarray) -> np.ndarray:
    """The full stored range as a person would see it (MONOCHROME1 inverted), uint8; the
    rendering the independent verification reads."""
    if frame.ndim == 3:
        return stretch(frame.max(axis=2))
    full = stretch(frame)
    return 255 - full if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1" else full
