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
from functools import lru_cache
from io import BytesIO
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
    draw.text(
        (MARGIN, 10),
        f"{record.modality} triage{where}: priority {record.priority}/100",
        font=_font(22, bold=True),
        fill=INK,
    )
    draw.text((MARGIN, 36), "Workflow priority, NOT a diagnosis", font=_font(14), fill=(170, 30, 30))

    top = TITLE_H
    left_x, seg_x, hist_x = MARGIN, MARGIN * 2 + PANEL, MARGIN * 3 + PANEL * 2
    image = _fit(Image.fromarray(grey).convert("RGB"))
    canvas.paste(image, (left_x, top + 22))
    draw.text((left_x, top), _image_title(ds, record), font=_font(15, bold=True), fill=INK)

    canvas.paste(_fit(_segmentation_image(grey, seg)), (seg_x, top + 22))
    draw.text((seg_x, top), f"Segmentation ({_method_title(seg)})", font=_font(15, bold=True), fill=INK)
    _legend(draw, seg, pixels, seg_x, top + 22 + PANEL + 10)
    _excluded_note(draw, pixels, left_x, top + 22 + PANEL + 10)

    _histogram(canvas, draw, pixels, seg, hist_x, top, HIST_W, PANEL + 22)
    _footer(draw, record, frame_record, MARGIN, height - FOOTER_H, width - 2 * MARGIN)

    buffer = BytesIO()
    canvas.save(buffer, format="PNG", compress_level=1)
    return atomic_write_bytes(out_png, buffer.getvalue())


def _image_title(ds: Dataset, record: TriageRecord) -> str:
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return "Image (scanner's display window)"
    return "Image (window 0.5-99.5 percentile)"


def _method_title(seg: Segmentation) -> str:
    return "exact k-means" if seg.method.startswith("kmeans") else seg.method


def _fit(image: Image.Image) -> Image.Image:
    """Scale to fit the square panel, keeping the aspect ratio, centred on black."""
    scale = PANEL / max(image.size)
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    resized = image.resize(size, Image.Resampling.BILINEAR)
    panel = Image.new("RGB", (PANEL, PANEL), (0, 0, 0))
    panel.paste(resized, ((PANEL - size[0]) // 2, (PANEL - size[1]) // 2))
    return panel


def _segmentation_image(grey: np.ndarray, seg: Segmentation) -> Image.Image:
    """Class colours blended over the image (so anatomy stays visible); excluded pixels
    (padding, outside the reconstruction circle) dark grey."""
    lut = np.array([class_colour(i) for i in range(len(seg.names))] + [EXCLUDED], dtype=np.uint8)
    colours = Image.fromarray(lut[seg.labels])  # label -1 picks the last row: excluded
    return Image.blend(colours, Image.fromarray(grey).convert("RGB"), 0.35)


def _legend(draw: ImageDraw.ImageDraw, seg: Segmentation, pixels: FrameInput, x: int, y: int) -> None:
    unit = "HU" if pixels.units == "HU" else "signal"
    font = _font(15)
    draw.text((x, y), "class", font=_font(13, bold=True), fill=MUTED)
    draw.text((x + 160, y), f"centre ({unit})", font=_font(13, bold=True), fill=MUTED)
    draw.text((x + 290, y), "share of scan area", font=_font(13, bold=True), fill=MUTED)
    for i in range(len(seg.names)):
        row = y + 20 + i * 22
        draw.rectangle((x, row + 2, x + 16, row + 18), fill=class_colour(i), outline=INK)
    # one text call per column: FreeType rendering dominates the cost of drawing text
    column = {"font": font, "fill": INK, "spacing": 22 - font.size + 1}
    draw.multiline_text((x + 24, y + 20), "\n".join(seg.names), **column)
    draw.multiline_text((x + 160, y + 20), "\n".join(_number(c) for c in seg.centres), **column)
    draw.multiline_text((x + 290, y + 20), "\n".join(f"{100 * f:.1f}%" for f in seg.fractions), **column)


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
        draw.text((x + 22, y + i * 20), line, font=_font(14), fill=MUTED)
    draw.text((x, y + 44), f"{pixels.modality} values in {pixels.units}", font=_font(14), fill=MUTED)


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
    draw.text((x0, y0), "Intensity histogram and class boundaries", font=_font(15, bold=True), fill=INK)
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
    bars = np.full((plot_h, n_bins, 3), 255, dtype=np.uint8)
    bars[lit] = np.broadcast_to(colours[column_class][None, :, :], bars.shape)[lit]
    canvas.paste(Image.fromarray(bars), (left + 1, top + 1))

    def x_of(value: float) -> float:
        return left + 1 + (value - lo) / (hi - lo) * n_bins

    for boundary in seg.boundaries or []:
        bx = x_of(boundary)
        for y in range(top, bottom, 8):  # dashed
            draw.line((bx, y, bx, min(y + 4, bottom)), fill=INK, width=2)
        draw.text((bx + 4, top + 4), _number(boundary), font=_font(13), fill=INK)
    tick_font = _font(12)
    for value in _ticks(lo, hi):
        tx = x_of(value)
        draw.line((tx, bottom, tx, bottom + 5), fill=MUTED)
        label = f"{value:,.0f}" if abs(value) >= 10 or value == 0 else f"{value:g}"
        draw.text((tx - 3 * len(label), bottom + 7), label, font=tick_font, fill=MUTED)
    unit = "Hounsfield units (HU)" if pixels.units == "HU" else pixels.units
    draw.text(((left + right) // 2 - 60, bottom + 22), unit, font=_font(13), fill=INK)
    label = Image.new("RGBA", (160, 18), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((0, 0), "pixels (log scale)", font=_font(13), fill=INK)
    rotated = label.rotate(90, expand=True)
    canvas.paste(rotated, (x0 + 8, (top + bottom) // 2 - 80), rotated)
    for power in range(int(log_max) + 1):
        ty = bottom - 1 - power / log_max * (bottom - top - 4)
        draw.line((left - 5, ty, left, ty), fill=MUTED)
        draw.text((left - 34, ty - 8), f"1e{power}", font=tick_font, fill=MUTED)


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
    draw.text((x, y), "Why this priority:", font=_font(14, bold=True), fill=INK)
    for i, reason in enumerate(reasons[:2]):
        draw.text((x + 150, y + i * 19), _clip(reason, 150), font=_font(14), fill=colour)
    if len(reasons) > 2:
        draw.text((x + 150, y + 38), f"... and {len(reasons) - 2} more (see --json)", font=_font(14), fill=MUTED)
    draw.text((x, y + 60), DISCLAIMER, font=_font(12), fill=MUTED)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


@lru_cache(maxsize=8)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    spec = importlib.util.find_spec("matplotlib")  # locates the package without importing it
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / name
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)
