"""The overlay PNG a person looks at: image, segmentation with legend, histogram.

Drawn with Pillow rather than matplotlib: importing matplotlib alone takes longer than
the whole ``segment`` command may (one second, interpreter start included), and three
panels of rectangles, lines and text need nothing more. The font is the DejaVu Sans that
matplotlib ships (found without importing matplotlib), else Pillow's built-in font.

Only our own words and measured numbers are drawn: no name, date, UID or other value
read from the DICOM object appears in the picture.
"""

from __future__ import annotations

import importlib.util
import struct
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from medsendx.dicomio import display_image, frame_count
from medsendx.fsutil import atomic_write_bytes
from medsendx.triage.record import DISCLAIMER, FrameTriage, TriageRecord
from medsendx.triage.segmenter import FrameInput, Segmentation, valid_histogram

PANEL = 448  # side of the image panels, pixels
MARGIN = 24
TITLE_H = 58
LEGEND_H = 112
FOOTER_H = 86
HIST_W = 520
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)
EXCLUDED = (60, 60, 60)
# colour per class, dark to bright as displayed (colour-blind-safe Okabe-Ito hues)
CLASS_COLOURS = [(0, 114, 178), (230, 159, 0), (204, 121, 167), (0, 158, 115), (213, 94, 0), (86, 180, 233)]


def class_colour(index: int) -> tuple[int, int, int]:
    return CLASS_COLOURS[index % len(CLASS_COLOURS)]


def render(
    ds: Dataset,
    frame: int,
    pixels: FrameInput,
    seg: Segmentation,
    record: TriageRecord,
    frame_record: FrameTriage | None,
    out_png: Path,
) -> Path:
    """Compose and atomically write the overlay PNG for one frame; returns its path."""
    grey = display_image(ds, frame)
    if grey.ndim == 3:  # colour is never segmented, but keep the renderer total
        grey = grey.mean(axis=2).astype(np.uint8)
    width = MARGIN * 4 + PANEL * 2 + HIST_W
    height = TITLE_H + PANEL + LEGEND_H + FOOTER_H + MARGIN
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    n_frames = frame_count(ds)
    where = f", frame {frame + 1} of {n_frames}" if n_frames > 1 else ""
    title = f"{record.modality} triage{where}: priority {record.priority}/100"
    _text(draw, (MARGIN, 10), title, 22, True, fill=INK)
    _text(draw, (MARGIN, 36), "Workflow priority, NOT a diagnosis", 14, fill=(170, 30, 30))

    top = TITLE_H
    left_x, seg_x, hist_x = MARGIN, MARGIN * 2 + PANEL, MARGIN * 3 + PANEL * 2
    # resize once, at panel size: the grey image smoothly, the class labels without mixing
    grey_panel = _fit(Image.fromarray(grey), Image.Resampling.BILINEAR)
    label_panel = _fit(Image.fromarray((seg.labels + 2).astype(np.uint8)), Image.Resampling.NEAREST)
    grey_rgb = grey_panel.convert("RGB")
    canvas.paste(grey_rgb, (left_x, top + 22))
    _text(draw, (left_x, top), _image_title(ds, record), 15, True, fill=INK)

    canvas.paste(_segmentation_image(grey_rgb, np.asarray(label_panel), len(seg.names)), (seg_x, top + 22))
    _text(draw, (seg_x, top), f"Segmentation ({_method_title(seg)})", 15, True, fill=INK)
    _legend(draw, seg, pixels, seg_x, top + 22 + PANEL + 10)
    _excluded_note(draw, pixels, left_x, top + 22 + PANEL + 10)

    _histogram(canvas, draw, pixels, seg, hist_x, top, HIST_W, PANEL + 22)
    _footer(draw, record, frame_record, MARGIN, height - FOOTER_H, width - 2 * MARGIN)

    return atomic_write_bytes(out_png, png_bytes(np.asarray(canvas)))


def png_bytes(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB array as PNG, rows unfiltered and zlib level 1.

    Pillow's encoder tries every PNG row filter on every row, which costs about half of
    the 100 ms budget for this 1.1-megapixel picture; a chart with flat colours
    compresses about as well without filters, at half the time.
    """
    height, width, _ = rgb.shape
    raw = np.zeros((height, width * 3 + 1), dtype=np.uint8)  # leading 0: filter "None"
    raw[:, 1:] = rgb.reshape(height, width * 3)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 1)) + chunk(b"IEND", b"")


def _image_title(ds: Dataset, record: TriageRecord) -> str:
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return "Image (scanner's display window)"
    return "Image (window 0.5-99.5 percentile)"


def _method_title(seg: Segmentation) -> str:
    return "exact k-means" if seg.method.startswith("kmeans") else seg.method


def _fit(image: Image.Image, resample: Image.Resampling) -> Image.Image:
    """Scale to fit the square panel, keeping the aspect ratio, centred on value 0."""
    scale = PANEL / max(image.size)
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    resized = image.resize(size, resample) if size != image.size else image
    panel = Image.new(image.mode, (PANEL, PANEL), 0)
    panel.paste(resized, ((PANEL - size[0]) // 2, (PANEL - size[1]) // 2))
    return panel


def _segmentation_image(grey_rgb: Image.Image, codes: np.ndarray, k: int) -> Image.Image:
    """Class colours blended over the image (so anatomy stays visible). ``codes`` are
    label + 2: 0 outside the picture, 1 excluded pixels (padding, outside the
    reconstruction circle, drawn dark grey), 2.. the classes."""
    palette = [(0, 0, 0), EXCLUDED] + [class_colour(i) for i in range(k)]
    coloured = Image.fromarray(codes, mode="P")
    coloured.putpalette([channel for colour in palette for channel in colour])
    return Image.blend(coloured.convert("RGB"), grey_rgb, 0.35)


def _legend(draw: ImageDraw.ImageDraw, seg: Segmentation, pixels: FrameInput, x: int, y: int) -> None:
    unit = "HU" if pixels.units == "HU" else "signal"
    _text(draw, (x, y), "class", 13, True, fill=MUTED)
    _text(draw, (x + 160, y), f"centre ({unit})", 13, True, fill=MUTED)
    _text(draw, (x + 290, y), "share of scan area", 13, True, fill=MUTED)
    for i in range(len(seg.names)):
        row = y + 20 + i * 22
        draw.rectangle((x, row + 2, x + 16, row + 18), fill=class_colour(i), outline=INK)
    # one text call per column: FreeType rendering dominates the cost of drawing text
    for i, (name, centre, fraction) in enumerate(zip(seg.names, seg.centres, seg.fractions)):
        row = y + 20 + i * 22
        _text(draw, (x + 24, row), name, 15)
        _text(draw, (x + 160, row), _number(centre), 15)
        _text(draw, (x + 290, row), f"{100 * fraction:.1f}%", 15)


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


def _excluded_note(draw: ImageDraw.ImageDraw, pixels: FrameInput, x: int, y: int) -> None:
    total = pixels.values.size
    lines = []
    if pixels.padding_pixels:
        lines.append(f"padding: {100 * pixels.padding_pixels / total:.1f}% of pixels (excluded)")
    if pixels.outside_circle_pixels:
        lines.append(f"outside scan circle: {100 * pixels.outside_circle_pixels / total:.1f}% (excluded)")
    if not lines:
        lines.append("no padding or out-of-circle pixels")
    draw.rectangle((x, y + 3, x + 14, y + 17), fill=EXCLUDED)
    for i, line in enumerate(lines):
        _text(draw, (x + 22, y + i * 20), line, 14, fill=MUTED)
    _text(draw, (x, y + 44), f"{pixels.modality} values in {pixels.units}", 14, fill=MUTED)


def _histogram(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    pixels: FrameInput,
    seg: Segmentation,
    x0: int,
    y0: int,
    width: int,
    height: int,
) -> None:
    """Pixel counts per intensity (log scale), coloured by class, with the boundaries."""
    _text(draw, (x0, y0), "Intensity histogram and class boundaries", 15, True, fill=INK)
    values, counts = valid_histogram(pixels, seg)
    left, right = x0 + 58, x0 + width - 12
    top, bottom = y0 + 34, y0 + height - 40
    draw.rectangle((left, top, right, bottom), outline=MUTED)
    if values.size == 0:
        return
    lo, hi = float(values[0]), float(values[-1])
    if hi <= lo:
        hi = lo + 1.0
    n_bins = right - left - 2
    # one bar per screen column: sum the counts falling in it
    columns = np.minimum(((values - lo) / (hi - lo) * n_bins).astype(np.int64), n_bins - 1)
    per_column = np.bincount(columns, weights=counts, minlength=n_bins)
    label_of_value = np.zeros(values.size, dtype=np.int64)
    for boundary in seg.boundaries or []:
        label_of_value += values > boundary
    if pixels.inverted:
        label_of_value = (len(seg.names) - 1) - label_of_value
    column_class = np.zeros(n_bins, dtype=np.int64)
    column_class[columns] = label_of_value  # last value in a column decides its colour
    log_max = np.log10(per_column.max() + 1.0)
    plot_h = bottom - top - 1
    bar_h = np.round(np.log10(per_column + 1.0) / log_max * (plot_h - 3)).astype(np.int64)
    rows = np.arange(plot_h)[::-1, None]  # height above the x axis of each plot row
    lit = rows < bar_h[None, :]
    colours = np.array([class_colour(i) for i in range(len(seg.names))], dtype=np.uint8)
    bars = np.where(lit[:, :, None], colours[column_class][None, :, :], np.uint8(255)).astype(np.uint8)
    canvas.paste(Image.fromarray(bars), (left + 1, top + 1))

    def x_of(value: float) -> float:
        return left + 1 + (value - lo) / (hi - lo) * n_bins

    for boundary in seg.boundaries or []:
        bx = x_of(boundary)
        for y in range(top, bottom, 8):  # dashed
            draw.line((bx, y, bx, min(y + 4, bottom)), fill=INK, width=2)
        _text(draw, (bx + 4, top + 4), _number(boundary), 13, fill=INK)
    for value in _ticks(lo, hi):
        tx = x_of(value)
        draw.line((tx, bottom, tx, bottom + 5), fill=MUTED)
        label = f"{value:,.0f}" if abs(value) >= 10 or value == 0 else f"{value:g}"
        _text(draw, (tx - 3 * len(label), bottom + 7), label, 12, fill=MUTED)
    unit = "Hounsfield units (HU)" if pixels.units == "HU" else pixels.units
    _text(draw, ((left + right) // 2 - 60, bottom + 22), unit, 13, fill=INK)
    mask, _ = _text_mask("pixels (log scale)", 13, False)
    draw.bitmap((x0 + 8, (top + bottom) // 2 - 60), mask.rotate(90, expand=True), fill=INK)
    for power in range(int(log_max) + 1):
        ty = bottom - 1 - power / log_max * (bottom - top - 4)
        draw.line((left - 5, ty, left, ty), fill=MUTED)
        _text(draw, (left - 34, ty - 8), f"1e{power}", 12, fill=MUTED)


def _ticks(lo: float, hi: float) -> list[float]:
    span = hi - lo
    step = 10 ** np.floor(np.log10(span / 4)) if span > 0 else 1.0
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= 6:
            step *= factor
            break
    first = np.ceil(lo / step) * step
    return [float(v) for v in np.arange(first, hi + step / 2, step) if lo <= v <= hi]


def _footer(
    draw: ImageDraw.ImageDraw, record: TriageRecord, frame_record: FrameTriage | None, x: int, y: int, width: int
) -> None:
    reasons = frame_record.reasons if frame_record is not None else record.reasons
    flagged = bool(frame_record.flags) if frame_record is not None else bool(record.flags)
    colour = (170, 30, 30) if flagged else INK
    _text(draw, (x, y), "Why this priority:", 14, True, fill=INK)
    for i, reason in enumerate(reasons[:2]):
        _text(draw, (x + 150, y + i * 19), _clip(reason, 150), 14, fill=colour)
    if len(reasons) > 2:
        _text(draw, (x + 150, y + 38), f"... and {len(reasons) - 2} more (see --json)", 14, fill=MUTED)
    _text(draw, (x, y + 60), DISCLAIMER, 12, fill=MUTED)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int = 15, bold: bool = False, fill=INK) -> None:
    """Draw text from a cache of rendered masks: FreeType rendering is the slowest part of
    the picture, and titles, headers, ticks and labels repeat from one slice to the next."""
    for i, line in enumerate(text.split("\n")):
        mask, (dx, dy) = _text_mask(line, size, bold)
        draw.bitmap((round(xy[0]) + dx, round(xy[1]) + dy + i * (size + 7)), mask, fill=fill)


@lru_cache(maxsize=1024)
def _text_mask(text: str, size: int, bold: bool) -> tuple[Image.Image, tuple[int, int]]:
    font = _font(size, bold)
    left, top, right, bottom = font.getbbox(text or " ")
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, font=font, fill=255)
    return mask, (left, top)


@lru_cache(maxsize=8)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    spec = importlib.util.find_spec("matplotlib")  # locates the package without importing it
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / name
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)
