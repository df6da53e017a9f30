"""A fast, conservative screen for burned-in text, on stored values (no window).

Devices and software burn text in with one pen value: every pixel of every stroke holds the
same stored value (the maximum, 255 in 16-bit data, the minimum for MONOCHROME1, a
colour). Anatomy does not: its histogram is smooth at the scale of a few values. So the
screen (1) looks for *spikes* in the frame's histogram (a stored value held by many more
pixels than its neighbouring values), and (2) for each spike value, checks where the pixels
holding it are *thin* (strokes: few of them have a full neighbourhood of the same value),
unlike the large flat areas a padding value or a clipped background forms. Tiles where
such thin pixels are dense are returned, merged into rectangles; the learned detector then
runs only inside those. Cost: one histogram and a few array passes per spike value
(about a millisecond on a 512 x 512 CT slice, see bench/redact.py).

What the screen cannot see: text whose pixels do not share one value (a photographed or
digitised film, heavily smoothed text). Objects where that happens (secondary capture,
ultrasound, CR/DX/XA with a silent header, declared burned-in annotation) skip the screen
and go to the detector whole (``pixelrisk``: their risk is not "every object").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Box = tuple[int, int, int, int]

TILE = 32
NEIGHBOURS = 8  # histogram values on each side a spike is compared with
SPIKE_RATIO = 3.0  # a spike holds this many times its neighbours' mean count...
SPIKE_MIN_PIXELS = 12  # ...and at least this many pixels beyond it (in every second row)
MAX_SPIKES = 12  # the strongest spikes examined per plane (text uses one or two values)
MIN_THIN_PIXELS = 30  # per tile: stroke pixels of the spike value (planted text lines: 90-180; real CT/MR anatomy: <= 13)
MAX_INTERIOR_SHARE = 0.6  # of a tile's pixels: more of one value is an area of it, not text
STROKE_OFFSETS = (2, 3)  # a stroke up to 3-5 px wide has both its sides this far from a pixel of it
MAX_LOOKS, MAX_STEP = 6000, 3
PAD = 16  # grow each firing region by this much before the detector looks


def spike_values(plane: np.ndarray) -> list[int]:
    """Stored values held by far more pixels than the values around them, strongest first."""
    sample = plane[::2]  # every second row: a line of text spans many rows
    lo = int(sample.min())
    counts = np.bincount((sample.reshape(-1).astype(np.int64) - lo))
    padded = np.concatenate([np.zeros(NEIGHBOURS, np.int64), counts, np.zeros(NEIGHBOURS, np.int64)])
    cumulative = np.concatenate([[0], np.cumsum(padded)])
    window = cumulative[2 * NEIGHBOURS + 1 :] - cumulative[: -2 * NEIGHBOURS - 1]  # x-N..x+N
    neighbours = (window - counts) / (2 * NEIGHBOURS)
    excess = counts - SPIKE_RATIO * neighbours
    spikes = np.flatnonzero(excess >= SPIKE_MIN_PIXELS)
    if spikes.size > MAX_SPIKES:
        spikes = spikes[np.argsort(excess[spikes])[::-1][:MAX_SPIKES]]
    return [int(v) + lo for v in spikes]


def contrast_threshold(plane: np.ndarray) -> int:
    """How much a stroke must differ from what lies two pixels beside it: well above the
    pixel-to-pixel noise and at least a small share of the range (text is drawn to be seen)."""
    sample = plane[::8, ::4].astype(np.int32)
    diffs = np.abs(np.diff(sample, axis=1))
    noise = float(np.median(diffs)) if diffs.size else 0.0
    span = float(sample.max() - sample.min()) if sample.size else 0.0
    return int(max(4.0 * noise, 0.04 * span, 2.0))


def _thin_tiles(plane: np.ndarray, value: int, threshold: int, th: int, tw: int) -> np.ndarray:
    """Tiles where pixels holding ``value`` form strokes (``plane`` covers whole tiles)."""
    mask = (plane == value).reshape(th, TILE, tw, TILE)
    counts = mask.sum(axis=(1, 3), dtype=np.int32)
    # A tile mostly of this value is an area of it (background, padding, a clipped region):
    # text there would be invisible. Only the remaining tiles are looked at closely, and
    # only their pixels are gathered (cost follows the candidate tiles, not the frame).
    candidates = (counts >= MIN_THIN_PIXELS) & (counts <= MAX_INTERIOR_SHARE * TILE * TILE)
    if not candidates.any():
        return candidates
    ti, tj = np.nonzero(candidates)
    k_tile, y, x = np.nonzero(mask[ti, :, tj, :])  # (n, TILE, TILE) blocks of the candidates
    rows, cols = ti[k_tile] * TILE + y, tj[k_tile] * TILE + x
    # Many candidates (the rim of a padding area): look at every few of them; a text tile
    # holds several times the strokes needed, so it still fires.
    step = min(MAX_STEP, -(-rows.size // MAX_LOOKS))
    if step > 1:
        rows, cols = rows[::step], cols[::step]
    height, width = plane.shape

    def at(dr: int, dc: int) -> np.ndarray:
        return plane[np.clip(rows + dr, 0, height - 1), np.clip(cols + dc, 0, width - 1)].astype(np.int64) - value

    # A stroke pixel contrasts with the pixels k steps away on *both* sides (left and
    # right, or above and below): a ridge or a valley, not the step of an edge...
    ridge = np.zeros(rows.size, dtype=bool)
    for k in STROKE_OFFSETS:
        left, right, up, down = at(0, -k), at(0, k), at(-k, 0), at(k, 0)
        ridge |= ((left > threshold) & (right > threshold)) | ((left < -threshold) & (right < -threshold))
        ridge |= ((up > threshold) & (down > threshold)) | ((up < -threshold) & (down < -threshold))
    # ...and continues into a neighbour of the same value (a stroke, not a speck of noise).
    ridge &= (at(0, 1) == 0) | (at(1, 0) == 0) | (at(0, -1) == 0) | (at(-1, 0) == 0)
    strokes = np.bincount(((rows // TILE) * tw + cols // TILE)[ridge], minlength=th * tw).reshape(th, tw)
    return candidates & (strokes * step >= MIN_THIN_PIXELS)


def candidate_regions(frame: np.ndarray) -> list[Box]:
    """Rectangles of ``frame`` (stored values, H x W or H x W x S) that may hold text."""
    height, width = frame.shape[:2]
    th, tw = -(-height // TILE), -(-width // TILE)
    fired = np.zeros((th, tw), dtype=bool)
    planes = [frame] if frame.ndim == 2 else [frame[..., c] for c in range(frame.shape[2])]
    for plane in planes:
        if plane.dtype.kind == "f":
            continue  # float pixel data: no pen value; such objects are not screened (see pixelrisk)
        spikes = spike_values(plane)
        if not spikes:
            continue
        threshold = contrast_threshold(plane)
        if (th * TILE, tw * TILE) != plane.shape:  # whole tiles; the added pixels hold no pen value
            filler = int(plane.min()) - 1 if plane.dtype.kind == "i" or int(plane.min()) > 0 else int(plane.max()) + 1
            grown = np.full((th * TILE, tw * TILE), filler, dtype=np.int64)
            grown[:height, :width] = plane
            plane = grown
        for value in spikes:
            fired |= _thin_tiles(plane, value, threshold, th, tw)
    if not fired.any():
        return []
    labels, _ = ndimage.label(ndimage.binary_dilation(fired, structure=np.ones((3, 3), bool)))
    boxes: list[Box] = []
    for ys, xs in ndimage.find_objects(labels):
        boxes.append((
            max(0, xs.start * TILE - PAD), max(0, ys.start * TILE - PAD),
            min(width, xs.stop * TILE + PAD), min(height, ys.stop * TILE + PAD),
        ))  # fmt: skip
    return boxes
