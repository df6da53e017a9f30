"""Default-deny text redaction (policy "redact-detected") and its independent verification.

Per frame (identical frames are done once):

1. *Where to look.* Objects whose header puts them at risk (ultrasound, secondary capture,
   declared burned-in text, CR/DX/XA with a silent header...) are searched whole. Every other
   object (CT, MR, mammography...) first goes through the cheap screen
   (:mod:`medsendx.pixels.screen`); where it finds nothing, the frame is not searched
   further and the object is *not* attested clean (nothing was claimed, nothing changed).
2. *Detect.* The learned detector (:mod:`medsendx.pixels.detector`) runs on every
   window-independent rendering (:mod:`medsendx.pixels.render`) of those areas; in a
   screened area, the extreme-value renderings only for the pens (histogram spikes) the
   area holds. Flat parts of a crop (more than CONTEXT px from anything else) are not sent:
   the detector's cost follows the pixels it is given.
3. *Default deny.* Every detected region is blanked with a margin, unless the recogniser
   reads it as allowed markers only (``PixelSettings.allowed_markers``: L, R, CC, MLO...).
   Only boxes shaped like a marker are read (at most MARKER_MAX_ASPECT times as wide as
   tall; reading costs in proportion to width); wider ones are blanked unread.
   Regions covering more than ``max_blanked_share`` of a frame cannot be told from
   anatomy: the object goes to quarantine.
4. *Verify, independently.* After redaction, a second check must find no text outside the
   allow-list: on a screened frame, the screen's own stroke test for the area's pens must
   not fire again outside kept markers (a line too small for the detector, see
   ``_pen_left``); tesseract (another engine, in process: :mod:`medsendx.pixels.tesslib`) on
   the full-range rendering of the whole frame, and the detector again on the same
   renderings at another scale. Only then is the object
   attested clean (BurnedInAnnotation NO, code 113101); otherwise it goes to quarantine.

Only pixels inside blanked boxes change.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from medsendx.config import PixelSettings
from medsendx.pixels import ocr
from medsendx.pixels.detector import MAX_UPSCALE, TARGET_SHORT_SIDE, TextModels
from medsendx.pixels.render import Rendering, full_range, renderings
from medsendx.pixels.screen import MIN_THIN_PIXELS, STROKE_OFFSETS, TILE, USUAL_PENS, _dense, _Plane, candidate_regions, spike_values

Box = tuple[int, int, int, int]
log = logging.getLogger(__name__)

# A detection taller than this share of the frame's short side (and than MIN_TALL px) is
# not a line of text but a blob the detector mistook (a uniform organ in a full-range view);
# it is not blanked, and the second check still looks at the whole frame.
MAX_LINE_HEIGHT_SHARE = 0.08
MIN_TALL = 48
# Inside a detection, the rendering must show some contrast (text is drawn to be seen).
MIN_BOX_CONTRAST = 24
# ... and at least this many pixels that stand out from the box's background (ink).
MIN_INK_PIXELS = 12
# The recogniser must read a marker this confidently to leave it in place.
MARKER_MIN_CONFIDENCE = 0.8
# Only a box at most this many times as wide as it is tall is read as a possible marker
# (about 7 characters: "LATERAL", "R LAT", "L XCCL"; a detected "R MLO" measures 3.0); a
# wider one is blanked unread (default deny: a longer marker line is blanked, not kept).
MARKER_MAX_ASPECT = 4.5
# A detector crop keeps this many px of flat margin around what it holds.
CONTEXT = 16
# A pen in a screened area: a value whose stroke pixels (strokes up to 5 px wide: both sides
# 2-3 px away hold another value) are dense by the screen's rule (screen._dense: 30 in a
# tile, or 50 over 2 x 2 tiles, on the screen's tiles). After redaction the screen's own
# stroke test for those pens must not fire again (see _pen_left).
# Second check: the detector at this factor of its first scale.
VERIFY_SCALE = 0.75
# Second check, tesseract: words it is this sure of (0-100) with 2+ letters or digits.
VERIFY_MIN_CONFIDENCE = 60.0


def is_allowed_marker(text: str, allowed: list[str] | set[str]) -> bool:
    """Every word of ``text`` is an allowed marker (case-insensitive; punctuation ignored).
    An empty reading is not a marker: what we cannot read, we blank."""
    words = [w for w in re.split(r"[^0-9A-Za-z]+", text.upper()) if w]
    allow = {a.strip().upper() for a in allowed}
    return bool(words) and all(w in allow for w in words)


@dataclass
class FrameReport:
    blanked: list[Box] = field(default_factory=list)
    kept: list[Box] = field(default_factory=list)  # allowed markers left in place
    searched: bool = False  # the detector ran on (part of) this frame
    whole: bool = False  # ... on the whole frame
    renderings: set[str] | None = None  # the renderings searched (the second look uses the same)
    pens: list[int] | None = None  # a screened frame's pens (what chose those renderings)
    screened: list[Box] | None = None  # the screen's boxes on the frame as it came (not whole)


@dataclass
class Outcome:
    clean: bool
    attest: bool
    reason: str
    method: str
    regions: list[Box]
    kept: list[Box]
    changed: bool
    detector_runs: int = 0
    ocr_calls: int = 0


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(a: Box, boxes: list[Box], slack: int = 2) -> bool:
    """``a`` lies (almost) entirely within one of ``boxes``."""
    return any(a[0] >= b[0] - slack and a[1] >= b[1] - slack and a[2] <= b[2] + slack and a[3] <= b[3] + slack for b in boxes)


def _grow(box: Box, margin: int, height: int, width: int) -> Box:
    x0, y0, x1, y1 = box
    m = margin + (y1 - y0) // 5
    return (max(0, x0 - m), max(0, y0 - m), min(width, x1 + m), min(height, y1 + m))


class TextCleaner:
    """One object's frames through detect, blank, verify."""

    def __init__(self, settings: PixelSettings, models: TextModels | Callable[[], TextModels]) -> None:
        self.settings = settings
        self._models = models
        self.allowed = {a.strip().upper() for a in settings.allowed_markers}
        self.detector_runs = 0
        self.recogniser_runs = 0
        self.ocr_calls = 0

    @property
    def models(self) -> TextModels:
        """Loaded on first use: a frame the screen finds nothing in never needs them."""
        if not isinstance(self._models, TextModels):
            self._models = self._models()
        return self._models

    # ------------------------------------------------------------------ detection
    def _detections(self, rendering: Rendering, areas: list[Box], scale_factor: float = 1.0) -> list[Box]:
        """Every plausible text region of ``rendering`` in ``areas`` (not yet read)."""
        image = rendering.image
        height, width = image.shape
        tall = max(MIN_TALL, MAX_LINE_HEIGHT_SHARE * min(height, width))
        found: list[Box] = []
        # The scale follows the frame, not the crop: text keeps the size it has on screen.
        scale = min(MAX_UPSCALE, max(1.0, TARGET_SHORT_SIDE / min(height, width))) * scale_factor
        for ax0, ay0, ax1, ay1 in areas:
            crop = image[ay0:ay1, ax0:ax1]
            if crop.size == 0 or crop.max() == crop.min():
                continue
            # Parts of one flat value (black air in a window, the empty part of a binary
            # rendering) more than CONTEXT px from anything else hold no text: not sent.
            for part in _content(crop, ax0, ay0):
                found += self._detect_in(image, part, scale, tall)
        return found

    def _detect_in(self, image: np.ndarray, area: Box, scale: float, tall: float) -> list[Box]:
        """The detector on one crop of ``image``; boxes in the image's pixels, kept when they
        look like a line of text (not too tall, some contrast, enough ink)."""
        ax0, ay0, ax1, ay1 = area
        self.detector_runs += 1
        found: list[Box] = []
        for det in self.models.detect(image[ay0:ay1, ax0:ax1], scale):
            x0, y0, x1, y1 = det.box
            box = (x0 + ax0, y0 + ay0, x1 + ax0, y1 + ay0)
            if box[3] - box[1] > tall:
                continue
            patch = image[box[1] : box[3], box[0] : box[2]]
            if patch.size == 0 or int(patch.max()) - int(patch.min()) < MIN_BOX_CONTRAST:
                continue
            background = float(np.median(patch))
            if int((np.abs(patch.astype(np.float32) - background) >= MIN_BOX_CONTRAST).sum()) < MIN_INK_PIXELS:
                continue  # a few bright specks, not strokes
            found.append(box)
        return found

    def _read(self, rendering: Rendering, box: Box) -> str:
        """What the recogniser reads in ``box``, or "" when it is unsure."""
        self.recogniser_runs += 1
        text, confidence = self.models.recognise(rendering.image, box)
        return text if confidence >= MARKER_MIN_CONFIDENCE else ""

    def clean_frame(
        self, ds: Dataset, frame: np.ndarray, fill: np.ndarray | int, whole: bool, screened: list[Box] | None = None
    ) -> FrameReport:
        """Detect and blank text in ``frame`` (in place); ``screened``: the screen's boxes on
        this frame when they are known already (``candidate_regions`` of the same values)."""
        height, width = frame.shape[:2]
        report = FrameReport(whole=whole)
        if whole:
            areas = [(0, 0, width, height)]
        else:
            report.screened = candidate_regions(frame) if screened is None else screened
            areas = merge_areas(report.screened, height, width)
        if not areas:
            return report
        report.searched = True
        # A screened frame: the screen fired on strokes of one stored value (a pen); the
        # extreme-value renderings are made for the pens found in these areas only.
        pens = None
        if not whole and frame.ndim == 2:
            # The screen fires on strokes of the frame's spike values (screen.candidate_regions,
            # with its weak excess for 255/4095 and the maximum: a 255 pen over tissue of values
            # around 255 is no plain spike); an area's own spikes are added. Of those, the values
            # that form strokes in the area are its pens: they choose the extreme-value
            # renderings, and the detector gets the area around their strokes (CONTEXT px), not
            # the screen's whole tiles. An area without any (not expected where the screen
            # fired) is searched as is, in every rendering.
            frame_spikes = set(spike_values(frame)) | set(spike_values(frame, edge_aware=True, usual=USUAL_PENS, top=True))
            found_pens: set[int] = set()
            narrowed: list[Box] = []
            for x0, y0, x1, y1 in areas:
                crop = frame[y0:y1, x0:x1]
                strokes = _pen_strokes(crop, sorted(frame_spikes | set(spike_values(crop))), (x0, y0))
                if not strokes:
                    found_pens = set()
                    narrowed = areas
                    break
                found_pens |= set(strokes)
                narrowed.append(_around(np.logical_or.reduce(list(strokes.values())), x0, y0))
            if found_pens:
                pens, areas = sorted(found_pens), narrowed
        views = renderings(ds, frame, pens)
        report.renderings, report.pens = {r.name for r in views}, pens
        for rendering in views:
            for box in self._detections(rendering, areas):
                # Read only what could be a marker (the recogniser's cost grows with the box's
                # width; a long line is not "L CC"), and not what is blanked already: the
                # reading could only keep it, and what overlaps a blanked box is not kept.
                could_keep = box[2] - box[0] <= MARKER_MAX_ASPECT * (box[3] - box[1]) and not _inside(box, report.blanked, slack=0)
                if could_keep and is_allowed_marker(self._read(rendering, box), self.allowed):
                    report.kept.append(box)
                else:
                    report.blanked.append(_grow(box, self.settings.margin, height, width))
        report.kept = [k for k in report.kept if not any(_overlap(k, b) for b in report.blanked)]
        if report.blanked and frame.ndim == 2:  # greyscale: one pen value (colour pens vary per channel)
            report.blanked = _extend_along_pen(frame, report.blanked, report.kept)
        for x0, y0, x1, y1 in report.blanked:
            frame[y0:y1, x0:x1] = fill
        return report

    def blanked_share(self, report: FrameReport, height: int, width: int) -> float:
        mask = np.zeros((height, width), dtype=bool)
        for x0, y0, x1, y1 in report.blanked:
            mask[y0:y1, x0:x1] = True
        return float(mask.mean())

    # ------------------------------------------------------------------ verification
    def verify_frame(self, ds: Dataset, frame: np.ndarray, report: FrameReport) -> str | None:
        """None when a second, independent look at the redacted ``frame`` finds no text
        outside blanked boxes and allowed markers; else what it found (our own words)."""
        height, width = frame.shape[:2]
        done = report.blanked + report.kept
        if report.pens and report.screened and frame.ndim == 2 and _pen_left(frame, report.pens, report.screened, report.kept):
            return "text remains after redaction (strokes of a pen outside the blanked boxes)"
        # Another engine on the full stored range, over the whole frame.
        self.ocr_calls += 1
        for word in ocr.ocr_image(full_range(ds, frame)):
            if word.confidence < VERIFY_MIN_CONFIDENCE or sum(c.isalnum() for c in word.text) < 2:
                continue
            if is_allowed_marker(word.text, self.allowed) or _inside(word.box, done, slack=4):
                continue
            return "text remains after redaction (second reader: tesseract on the full stored range)"
        # The detector again, on every rendering of the redacted frame at another scale.
        if report.whole:
            areas = [(0, 0, width, height)]
        else:  # (a frame with nothing blanked is the one screened: its boxes still hold)
            again = report.screened if report.screened is not None and not report.blanked else None
            areas = (candidate_regions(frame) if again is None else again) + report.blanked
        areas = merge_areas([_grow(a, 16, height, width) for a in areas], height, width)
        for rendering in renderings(ds, frame, report.pens):
            if report.renderings is not None and rendering.name not in report.renderings:
                continue
            for box in self._detections(rendering, areas, VERIFY_SCALE):
                if _inside(box, done, slack=6):
                    continue
                if any(_overlap(box, b) for b in report.blanked) and _mostly_inside(box, report.blanked):
                    continue
                text = self._read(rendering, box)  # (only now: reading is the costly part)
                if is_allowed_marker(text, self.allowed):
                    continue
                if sum(c.isalnum() for c in text) < 2:
                    continue  # nothing legible there (a bright speck, the edge of a blanked box)
                log.debug("second look found a region at %s in %s", box, rendering.name)
                return "text remains after redaction (second look: detector at another scale)"
        return None


def _pen_left(frame: np.ndarray, pens: list[int], screened: list[Box], kept: list[Box]) -> bool:
    """The screen's own stroke test (``screen._Plane.thin_tiles``: thin strokes of one value
    that contrast with both sides, dense by its rule, a small line over a 2 x 2 window of
    tiles) still fires for one of ``pens`` on the redacted ``frame``, in a tile of its
    screened areas away from the kept markers: what drew the text found there drew more (a
    line too small for the detector). Blanked boxes hold one flat value: no strokes."""
    plane = _Plane(np.ascontiguousarray(frame))
    height, width = frame.shape
    looked = np.zeros((plane.th, plane.tw), dtype=bool)
    for x0, y0, x1, y1 in screened:
        looked[y0 // TILE : -(-y1 // TILE), x0 // TILE : -(-x1 // TILE)] = True
    reach = max(STROKE_OFFSETS)
    for x0, y0, x1, y1 in kept:  # (a marker's strokes are allowed to stay)
        looked[max(0, y0 - reach) // TILE : -(-min(height, y1 + reach) // TILE), max(0, x0 - reach) // TILE : -(-min(width, x1 + reach) // TILE)] = False
    return any(bool((plane.thin_tiles(value) & looked).any()) for value in pens)


def merge_areas(areas: list[Box], height: int, width: int, near: int = 32) -> list[Box]:
    """Fewer, larger crops: overlapping or close areas joined (each detector call has a fixed
    cost), and one crop of the whole frame once the areas cover much of it."""
    boxes = list(areas)
    merged = True
    while merged and len(boxes) > 1:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] - near < b[2] and b[0] - near < a[2] and a[1] - near < b[3] and b[1] - near < a[3]:
                    boxes[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    if sum((b[2] - b[0]) * (b[3] - b[1]) for b in boxes) > 0.5 * height * width:
        return [(0, 0, width, height)]
    return boxes


def _extend_along_pen(frame: np.ndarray, boxes: list[Box], kept: list[Box]) -> list[Box]:
    """Grow each box sideways over the rest of its line: where the pen value (a histogram
    spike value found inside the box) continues left or right with gaps no wider than the
    line's height. The detector can cut a line short where its first letters sit on a
    background close to the pen value; the pen's pixels still say where the letters are."""
    plane = frame if frame.ndim == 2 else frame.max(axis=2)
    height, width = plane.shape
    out: list[Box] = []
    for x0, y0, x1, y1 in boxes:
        band = plane[y0:y1]
        pens = [v for v in spike_values(band[:, x0:x1]) if int((band[:, x0:x1] == v).sum()) >= 10]
        if not pens or y1 <= y0:
            out.append((x0, y0, x1, y1))
            continue
        has_pen = np.isin(band, pens).any(axis=0)
        gap_limit = max(4, y1 - y0)
        left, gap = x0, 0
        for x in range(x0 - 1, -1, -1):
            gap = 0 if has_pen[x] else gap + 1
            if gap > gap_limit or any(k[0] <= x < k[2] and k[1] < y1 and y0 < k[3] for k in kept):
                break
            if has_pen[x]:
                left = x
        right, gap = x1, 0
        for x in range(x1, width):
            gap = 0 if has_pen[x] else gap + 1
            if gap > gap_limit or any(k[0] <= x < k[2] and k[1] < y1 and y0 < k[3] for k in kept):
                break
            if has_pen[x]:
                right = x + 1
        out.append((max(0, left - 2), y0, min(width, right + 2), y1))
    return out


def _content(crop: np.ndarray, ox: int, oy: int) -> list[Box]:
    """The parts of ``crop`` (placed at ox, oy) within CONTEXT px of a pixel that differs
    from the crop's most common value: clusters found on a grid of CONTEXT-px cells, each
    grown by CONTEXT; one box around them all when they cover most of it anyway."""
    mode = int(np.bincount(crop.reshape(-1)).argmax())
    other = crop != mode
    h, w = crop.shape
    gh, gw = -(-h // CONTEXT), -(-w // CONTEXT)
    cells = np.zeros((gh * CONTEXT, gw * CONTEXT), dtype=bool)
    cells[:h, :w] = other
    cells = cells.reshape(gh, CONTEXT, gw, CONTEXT).any(axis=(1, 3))
    # Cells one apart join (a word space, a gap between lines), then each part is grown.
    labels, count = ndimage.label(ndimage.binary_dilation(cells, structure=np.ones((3, 3), bool)))
    parts: list[Box] = []
    for ys, xs in ndimage.find_objects(labels):
        # (the dilation already added one cell, CONTEXT px, on every side)
        parts.append((ox + xs.start * CONTEXT, oy + ys.start * CONTEXT,
                      ox + min(w, xs.stop * CONTEXT), oy + min(h, ys.stop * CONTEXT)))  # fmt: skip
    rows, cols = np.flatnonzero(other.any(axis=1)), np.flatnonzero(other.any(axis=0))
    whole = (ox + max(0, cols[0] - CONTEXT), oy + max(0, rows[0] - CONTEXT),
             ox + min(w, cols[-1] + 1 + CONTEXT), oy + min(h, rows[-1] + 1 + CONTEXT))  # fmt: skip
    area = sum((b[2] - b[0]) * (b[3] - b[1]) for b in parts)
    if len(parts) <= 1 or area > 0.7 * (whole[2] - whole[0]) * (whole[3] - whole[1]):
        return [whole]
    return parts


def _pen_strokes(crop: np.ndarray, values: list[int], origin: tuple[int, int] = (0, 0)) -> dict[int, np.ndarray]:
    """Of ``values``, those whose stroke pixels in ``crop`` (placed at ``origin``, x and y, in
    its frame; see :func:`_strokes`) are dense somewhere by the screen's rule, on the
    screen's tiles of the frame (:func:`_dense_at`); each with its stroke pixels."""
    out: dict[int, np.ndarray] = {}
    for value in values:
        mask = crop == value
        if int(mask.sum()) < MIN_THIN_PIXELS:
            continue  # (too few to be dense anywhere)
        stroke = _strokes(mask)
        if _dense_at(stroke, origin):
            out[value] = stroke
    return out


def _strokes(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` with both sides, 2 or 3 px away, outside it (across a stroke up
    to 5 px wide, unlike inside or along the edge of a flat area) and a neighbour in it (a
    stroke, not a speck). Beyond the border the border pixel continues, as in the screen (a
    flat area cut by the border is no stroke there)."""
    stroke = np.zeros_like(mask)
    for d in STROKE_OFFSETS:
        padded = np.pad(mask, d, mode="edge")
        core = padded[d:-d, d:-d]
        across_x = ~padded[d:-d, : -2 * d] & ~padded[d:-d, 2 * d :]
        across_y = ~padded[: -2 * d, d:-d] & ~padded[2 * d :, d:-d]
        stroke |= core & (across_x | across_y)
    padded = np.pad(mask, 1, constant_values=False)
    return stroke & (padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:])


def _dense_at(stroke: np.ndarray, origin: tuple[int, int]) -> bool:
    """``stroke`` (placed at ``origin`` in its frame) is dense as the screen asks of its tiles
    (``screen._dense``: a line of text, not a scattered edge; a small line straddling tiles
    counts over a 2 x 2 window), counted on the screen's own tile grid of the frame."""
    oy, ox = origin[1] % TILE, origin[0] % TILE
    h, w = stroke.shape
    th, tw = -(-(h + oy) // TILE), -(-(w + ox) // TILE)
    tiles = np.zeros((th * TILE, tw * TILE), dtype=np.int32)
    tiles[oy : oy + h, ox : ox + w] = stroke
    return bool(_dense(tiles.reshape(th, TILE, tw, TILE).sum(axis=(1, 3))).any())


def _around(mask: np.ndarray, ox: int, oy: int) -> Box:
    """The box of ``mask``'s pixels grown by CONTEXT (within the mask's extent), placed at ox, oy."""
    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (ox + max(0, int(cols[0]) - CONTEXT), oy + max(0, int(rows[0]) - CONTEXT),
            ox + min(w, int(cols[-1]) + 1 + CONTEXT), oy + min(h, int(rows[-1]) + 1 + CONTEXT))  # fmt: skip


def _mostly_inside(box: Box, boxes: list[Box]) -> bool:
    """More than 80% of ``box`` is covered by ``boxes`` (a detection of a blanked patch's edge)."""
    x0, y0, x1, y1 = box
    area = max(1, (x1 - x0) * (y1 - y0))
    covered = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for b in boxes:
        cx0, cy0, cx1, cy1 = max(x0, b[0]), max(y0, b[1]), min(x1, b[2]), min(y1, b[3])
        if cx1 > cx0 and cy1 > cy0:
            covered[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = True
    return covered.sum() > 0.8 * area


def clean_frames(
    ds: Dataset, frames: np.ndarray, fill: np.ndarray | int, settings: PixelSettings,
    models: TextModels | Callable[[], TextModels], whole: bool, screened: Sequence[list[Box]] = (),
) -> Outcome:
    """Run the default-deny cleaner over every frame of ``frames`` (edited in place);
    ``screened``: the screen's boxes of the first frames, found already on these values."""
    cleaner = TextCleaner(settings, models)
    height, width = frames.shape[1:3]
    reports: dict[bytes, FrameReport] = {}
    per_frame: list[FrameReport] = []
    for index in range(len(frames)):
        # (single frames need no key: hashing half a megabyte costs more than the screen)
        key = hashlib.blake2b(frames[index].tobytes(), digest_size=16).digest() if len(frames) > 1 else b""
        if key in reports:  # identical frame (a frozen cine): same boxes
            report = reports[key]
            for x0, y0, x1, y1 in report.blanked:
                frames[index][y0:y1, x0:x1] = fill
        else:
            report = cleaner.clean_frame(ds, frames[index], fill, whole, screened[index] if index < len(screened) else None)
            reports[key] = report
            if cleaner.blanked_share(report, height, width) > settings.max_blanked_share:
                return Outcome(
                    False, False, "detected text covers too much of the image to be told from anatomy",
                    "detector", _all(per_frame + [report], "blanked"), [], False,
                    cleaner.detector_runs, cleaner.ocr_calls,
                )  # fmt: skip
        per_frame.append(report)
    regions = _all(per_frame, "blanked")
    kept = _all(per_frame, "kept")
    changed = bool(regions)
    searched = any(r.searched for r in per_frame)
    if not whole and not changed:
        how = "screen and detector found no text" if searched else "screen found no text-like structure"
        return Outcome(True, False, how, "screen" if not searched else "screen+detector", [], kept, False,
                       cleaner.detector_runs, cleaner.ocr_calls)  # fmt: skip
    verified: set[int] = set()
    for index in range(len(frames)):
        report = per_frame[index]
        if id(report) in verified:
            continue
        problem = cleaner.verify_frame(ds, frames[index], report)
        verified.add(id(report))
        if problem:
            return Outcome(False, False, problem, "detector", regions, kept, changed, cleaner.detector_runs, cleaner.ocr_calls)
    what = f"{len(regions)} text region(s) blanked" if changed else "no text found"
    if kept:
        what += f", {len(kept)} marker(s) kept"
    method = ("screen, " if not whole else "") + "PP-OCR detector on window-independent renderings; verified by tesseract and a second detector pass"
    return Outcome(True, True, f"{what}, verified independently", method, regions, kept, changed,
                   cleaner.detector_runs, cleaner.ocr_calls)  # fmt: skip


def _all(reports: list[FrameReport], attribute: str) -> list[Box]:
    return list(dict.fromkeys(box for r in reports for box in getattr(r, attribute)))
