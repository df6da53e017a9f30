"""A fast, conservative screen for burned-in text, on stored values (no window).

Devices and software burn text in with one pen value: every pixel of every stroke holds the
same stored value (the maximum, 255 in 16-bit data, the minimum for MONOCHROME1, a
colour). Anatomy does not: its histogram is smooth at the scale of a few values. So the
screen (1) looks for *spikes* in the frame's histogram (a stored value held by many more
pixels than its neighbouring values), and (2) for each spike value, checks where the pixels
holding it are *thin* (strokes: few of them have a full neighbourhood of the same value),
unlike the large flat areas a padding value or a clipped background forms. Tiles where
such thin pixels are dense (in the tile, or over a 2 x 2 window of tiles: a small line
straddles tile boundaries), or where fewer or fainter ones run both ways (vertical and
horizontal strokes: letters, not a straight line), are returned, merged into rectangles;
the learned detector then runs only inside those. Cost: one histogram and a few passes per
spike value, compiled (``_screen.c``: about 0.7 ms on a 512 x 512 CT slice; the numpy
passes here, about twice that, are the reference and the fallback; see bench/redact.py).

What the screen cannot see: text whose pixels do not share one value (a photographed or
digitised film, heavily smoothed text). Objects where that happens (secondary capture,
ultrasound, CR/DX/XA with a silent header, declared burned-in annotation) skip the screen
and go to the detector whole (``pixelrisk``: their risk is not "every object").
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medsendx.pixels import _screen_native

Box = tuple[int, int, int, int]

TILE = 32
NEIGHBOURS = 8  # histogram values on each side a spike is compared with
SPIKE_RATIO = 3.0  # a spike holds this many times its neighbours' mean count...
SPIKE_MIN_PIXELS = 12  # ...and at least this many pixels beyond it (in every second row)
MAX_SPIKES = 12  # the strongest spikes examined per plane (text uses one or two values)
MIN_THIN_PIXELS = 30  # per tile: stroke pixels of the spike value (planted text lines: 90-180; real CT/MR anatomy: <= 17)
MIN_TILE_PIXELS = 8  # a tile is looked at closely only with this many of its own (cost: the scattered rest)
MIN_WINDOW_PIXELS = 50  # or per 2 x 2 tiles (a small line straddling tiles; real CT/MR anatomy: <= 43)
MAX_INTERIOR_SHARE = 0.6  # of a tile's pixels: more of one value is an area of it, not text
STROKE_OFFSETS = (2, 3)  # a stroke up to 3-5 px wide has both its sides this far from a pixel of it
EXTREME_NOISE = 10  # a pen at the frame's minimum or maximum need only contrast this many times the noise
# A second look at the candidate tiles the test above left, counting stroke pixels with
# contrast across (left and right: vertical strokes) and along (above and below: horizontal
# ones) apart. Letters have both; the thin straight lines a scan can hold (a reconstruction's
# dark lines at a phantom's edge) have one. Where both run, with BOTH_EACH_PIXELS each in a
# 2 x 2 window, less is asked: BOTH_TILE strokes a tile or BOTH_WINDOW a window (8-px lines
# hold 20-30 a tile), and at an extreme a contrast of FAINT_NOISE times the noise (0 over a
# phantom's air at 20-28, noise 3-4). Set on seeds 7 and 11 of bench/screen_recall.py, seed
# 23 held out; no more of the real text-free slices fire.
BOTH_EACH_PIXELS = 12
BOTH_TILE, BOTH_WINDOW = 24, 40
FAINT_NOISE = 4
USUAL_PENS = (255, 4095)  # pens software often uses: examined on a weaker spike (see spike_values)
MAX_LOOKS, MAX_STEP = 6000, 3
PAD = 16  # grow each firing region by this much before the detector looks
_EDGE = max(STROKE_OFFSETS)  # the plane is edge-padded this much so neighbours need no clipping
# The compiled passes (_screen.c) are written for these two; changed, numpy does the work.
_COMPILED = TILE == 32 and STROKE_OFFSETS == (2, 3)


HISTOGRAM_BLOCK = 12_000  # pixels per bincount call (see _histogram)


def _histogram(sample: np.ndarray) -> tuple[np.ndarray, int]:
    """(counts per stored value from the lowest, the lowest value) of an integer array.

    Counted in blocks of rows, in one pass: ``np.bincount`` copies its input to 8-byte
    integers, and one call over a whole slice needs a fresh megabyte each time (in a
    process that reads files, that memory is mapped anew per slice: page faults cost more
    than the counting); each block is offset by its own minimum while it is in cache."""
    compiled = _screen_native.histogram(sample, 1)
    if compiled is not None:
        return compiled
    rows = max(1, HISTOGRAM_BLOCK // max(1, sample[:1].size))
    parts: list[tuple[int, np.ndarray]] = []
    for start in range(0, sample.shape[0], rows):
        block = sample[start : start + rows].reshape(-1)
        if block.dtype == np.int16:  # offset binary: order-preserving and non-negative, no up-cast
            block = block.view(np.uint16) ^ np.uint16(0x8000)
            low = int(block.min())
            parts.append((low - 0x8000, np.bincount(block - np.uint16(low))))
        elif block.dtype in (np.uint8, np.uint16):
            low = int(block.min())
            parts.append((low, np.bincount(block - block.dtype.type(low))))
        else:
            low = int(block.min())
            parts.append((low, np.bincount(block.astype(np.int64) - low)))
    lo = min(low for low, _ in parts)
    counts = np.zeros(max(low + part.size for low, part in parts) - lo, dtype=np.int64)
    for low, part in parts:
        counts[low - lo : low - lo + part.size] += part
    return counts, lo


def spike_values(plane: np.ndarray, *, edge_aware: bool = False, usual: tuple[int, ...] = (), top: bool = False
) -> list[int]:
    """Stored values held by far more pixels than the values around them, strongest first.

    With ``edge_aware`` a value near the ends of the plane's range (not at them) is compared
    with the values that exist beside it only: otherwise values beyond the range count as
    empty neighbours, and the second-lowest value of a steep noise floor looks like a spike
    (a real MR slice fired so). The lowest and highest values, where pens usually are, keep
    the empty neighbours beyond them (a pen at the minimum of a phantom is found so).

    A value in ``usual`` (pens software often uses: 255, 4095) counts with a weaker excess,
    over its neighbours' mean once rather than SPIKE_RATIO times: a line at 255 in a phantom
    where anatomy holds 255 too adds about as many pixels as its neighbours hold. With
    ``top`` the maximum, where pens usually are, counts if it holds SPIKE_MIN_PIXELS at all: a
    line at the maximum of a low-range MR (stored 0..9), whose anatomy holds every value
    below, makes no spike. (The minimum is a background: always looking at it cost 0.6 ms
    a slice and found no more lines in the stress runs.)"""
    if plane.size == 0:
        return []
    # Every second row: a line of text spans many (every second column too would lose
    # thin lines written with a pen value that anatomy also holds).
    counts, lo = _histogram(plane[::2])  # (the compiled pass reads the view as it is)
    padded = np.zeros(counts.size + 2 * NEIGHBOURS + 1, np.int64)
    np.cumsum(counts, out=padded[NEIGHBOURS + 1 : NEIGHBOURS + 1 + counts.size])
    padded[NEIGHBOURS + 1 + counts.size :] = padded[NEIGHBOURS + counts.size]
    window = padded[2 * NEIGHBOURS + 1 :] - padded[: -2 * NEIGHBOURS - 1]  # x-N..x+N
    if edge_aware:
        index = np.arange(counts.size)
        beside = np.minimum(index, NEIGHBOURS) + np.minimum(counts.size - 1 - index, NEIGHBOURS)
        beside[[0, -1]] = 2 * NEIGHBOURS  # the extremes, where pens are: as without edge_aware
        neighbours = (window - counts) / np.maximum(beside, 1)
    else:
        neighbours = (window - counts) / (2 * NEIGHBOURS)
    excess = counts - SPIKE_RATIO * neighbours
    spikes = np.flatnonzero(excess >= SPIKE_MIN_PIXELS)
    if spikes.size > MAX_SPIKES:
        spikes = spikes[np.argsort(excess[spikes])[::-1][:MAX_SPIKES]]
    found = [int(v) + lo for v in spikes]
    for value in usual:
        i = value - lo
        if 0 <= i < counts.size and value not in found and counts[i] - neighbours[i] >= SPIKE_MIN_PIXELS:
            found.append(value)
    if top and counts[-1] >= SPIKE_MIN_PIXELS and counts.size - 1 + lo not in found:
        found.append(counts.size - 1 + lo)
    return found


def noise_level(plane: np.ndarray) -> float:
    """The median difference of neighbouring pixels (on a sample of rows and columns)."""
    diffs = np.abs(np.diff(plane[::8, ::4].astype(np.int32), axis=1))
    return _median(diffs.reshape(-1)) if diffs.size else 0.0


def _median(values: np.ndarray) -> float:
    """``np.median`` of non-negative integers, from their counts (no sort: the differences of
    a slice take few distinct values, and partitioning them cost more than the screen's
    compiled passes)."""
    ranks = np.cumsum(np.bincount(values))
    n = values.size
    low, high = np.searchsorted(ranks, [(n - 1) // 2 + 1, n // 2 + 1])  # the middle one or two
    return (float(low) + float(high)) / 2


def contrast_threshold(plane: np.ndarray, noise: float | None = None) -> int:
    """How much a stroke must differ from what lies two pixels beside it: well above the
    pixel-to-pixel noise (``noise``: :func:`noise_level`, computed when not given) and at
    least a small share of the range (text is drawn to be seen)."""
    sample = plane[::8, ::4]
    noise = noise_level(plane) if noise is None else noise
    span = float(int(sample.max()) - int(sample.min())) if sample.size else 0.0
    return int(max(4.0 * noise, 0.04 * span, 2.0))


class _Plane:
    """One plane prepared for the per-spike passes: whole tiles (padded with a value no pen
    has) and, around them, an edge-replicated rim so a neighbour k pixels away is a fixed
    offset in the flat array (no clipping, no up-cast of the whole plane)."""

    def __init__(self, plane: np.ndarray) -> None:
        self.source = plane  # (the contrast threshold is taken from the plane as given)
        self._threshold: int | None = None
        self._noise: float | None = None
        self.low, self.high = int(plane.min()), int(plane.max())
        height, width = plane.shape
        self.th, self.tw = -(-height // TILE), -(-width // TILE)
        info = np.iinfo(plane.dtype)
        # The value of the pixels that make the last row and column of tiles whole: one no
        # pen has (beyond the type when every value of it is used).
        self.filler = self.low - 1 if self.low > info.min else self.high + 1
        self.stride = self.tw * TILE + 2 * _EDGE
        self._grown: np.ndarray | None = None
        self._flat: np.ndarray | None = None

    @property
    def plane(self) -> np.ndarray:
        """The plane in whole tiles (the numpy passes' layout; the compiled ones read
        ``source`` and treat the pixels beyond it as ``filler``)."""
        if self._grown is None:
            plane = self.source
            if (self.th * TILE, self.tw * TILE) != plane.shape:
                if self.filler > np.iinfo(plane.dtype).max:  # every value of the type is used: widen
                    plane = plane.astype(np.int64)
                grown = np.full((self.th * TILE, self.tw * TILE), self.filler, dtype=plane.dtype)
                grown[: plane.shape[0], : plane.shape[1]] = plane
                plane = grown
            self._grown = plane
        return self._grown

    @property
    def flat(self) -> np.ndarray:
        """The plane with its edge replicated ``_EDGE`` pixels out, flattened (made on first
        use: most spikes of a text-free slice have no candidate tile and never need it)."""
        if self._flat is None:
            plane, e = self.plane, _EDGE
            out = np.empty((plane.shape[0] + 2 * e, self.stride), dtype=plane.dtype)
            out[e:-e, e:-e] = plane
            out[:e, e:-e] = plane[0]
            out[-e:, e:-e] = plane[-1]
            out[:, :e] = out[:, e : e + 1]  # (a neighbour beyond the border is the border pixel,
            out[:, -e:] = out[:, -e - 1 : -e]  # as clipping the index would give)
            self._flat = out.reshape(-1)
        return self._flat

    @property
    def noise(self) -> float:
        if self._noise is None:
            self._noise = noise_level(self.source)
        return self._noise

    @property
    def threshold(self) -> int:
        if self._threshold is None:
            self._threshold = contrast_threshold(self.source, self.noise)
        return self._threshold

    def thin_tiles(self, value: int) -> np.ndarray:
        """Tiles where pixels holding ``value`` form strokes."""
        th, tw = self.th, self.tw
        counts = _screen_native.tile_counts(self.source, value, self.filler, th, tw) if _COMPILED else None
        mask = None  # (the numpy passes' pixels of this value, made once for both)
        if counts is None:
            mask = self.plane == value
            counts = self._tile_counts(mask)
        # A tile mostly of this value is an area of it (background, padding, a clipped region):
        # text there would be invisible. Only the remaining tiles are looked at closely, and
        # only their pixels are gathered (cost follows the candidate tiles, not the frame).
        fits = counts <= MAX_INTERIOR_SHARE * TILE * TILE
        candidates = fits & (counts >= MIN_TILE_PIXELS) & _dense(np.where(fits, counts, 0))
        if not candidates.any():
            return candidates
        # Many candidates (the rim of a padding area): look at every few of them; a text tile
        # holds several times the strokes needed, so it still fires.
        step = min(MAX_STEP, -(-int(counts[candidates].sum()) // MAX_LOOKS))
        threshold = faint = self.threshold
        if value in (self.low, self.high):
            # Nothing lies beyond an extreme, so a stroke there stands out of the anatomy on
            # one side only: ask contrast over the noise, not a share of the range (a line
            # at 0 over a phantom's air at about 25, range 0..1805, is legible in a window).
            threshold = min(threshold, max(2, int(EXTREME_NOISE * self.noise)))
            faint = min(threshold, max(2, int(FAINT_NOISE * self.noise)))  # (strokes both ways)
        counted = None
        if _COMPILED:
            counted = _screen_native.strokes(self.source, value, threshold, faint, self.filler, candidates, step)
        if counted is None:
            counted = self._strokes(self.plane == value if mask is None else mask, value, threshold, faint, candidates, step)
        strokes, across, along = counted
        fired = candidates & (strokes > 0) & _dense(strokes * step)
        # The second look, at the tiles left (see BOTH_EACH_PIXELS): strokes both ways.
        each = np.where(fired, 0, np.minimum(across, along)) * step
        if int(each.sum()) < BOTH_EACH_PIXELS:  # (the usual case: a text-free slice's rim tiles)
            return fired
        most = np.where(fired, 0, np.maximum(across, along)) * step
        both_ways = (each > 0) & _window_reaches(each, BOTH_EACH_PIXELS)
        return fired | (both_ways & ((most >= BOTH_TILE) | _window_reaches(most, BOTH_WINDOW)))

    def _tile_counts(self, mask: np.ndarray) -> np.ndarray:
        """(numpy) Per tile: the pixels of ``mask`` (the whole-tile plane's pixels of a value)."""
        th, tw = self.th, self.tw
        # Add the 32 rows of each band of tiles first (contiguous rows, in bytes: at most 32
        # per column fits), then the 32 columns of each tile.
        columns = np.add.reduce(mask.view(np.uint8).reshape(th, TILE, tw * TILE), axis=1, dtype=np.uint8)
        return columns.reshape(th, tw, TILE).sum(axis=2, dtype=np.int32)

    def _strokes(
        self, mask: np.ndarray, value: int, threshold: int, faint: int, candidates: np.ndarray, step: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(numpy) Per candidate tile: every ``step``-th pixel of ``mask`` (the pixels holding
        ``value``) that is a stroke pixel (the test below) with contrast ``threshold`` either
        way; and with contrast ``faint`` (<= ``threshold``) across, and along."""
        th, tw = self.th, self.tw
        ti, tj = np.nonzero(candidates)
        k_tile, y, x = np.nonzero(mask.reshape(th, TILE, tw, TILE)[ti, :, tj, :])  # (n, TILE, TILE) blocks
        tile = ti[k_tile] * tw + tj[k_tile]
        if step > 1:
            tile, k_tile, y, x = tile[::step], k_tile[::step], y[::step], x[::step]
        at = (ti[k_tile] * TILE + y + _EDGE) * self.stride + (tj[k_tile] * TILE + x + _EDGE)
        flat, stride = self.flat, self.stride
        info = np.iinfo(flat.dtype)

        # (limits clamped to the type: nothing is above its maximum, as nothing is above value + threshold)
        strong, weak = ((min(value + c, int(info.max)), max(value - c, int(info.min))) for c in (threshold, faint))

        # A stroke pixel contrasts with the pixels k steps away on *both* sides (left and
        # right, or above and below): a ridge or a valley, not the step of an edge...
        ridge, across, along = (np.zeros(at.size, dtype=bool) for _ in range(3))
        for k in STROKE_OFFSETS:
            for offset, one_way in ((k, across), (k * stride, along)):
                before, after = flat[at - offset], flat[at + offset]
                for (above, below), hits in ((strong, ridge), (weak, one_way)):
                    hits |= ((before > above) & (after > above)) | ((before < below) & (after < below))
        # ...and continues into a neighbour of the same value (a stroke, not a speck of noise).
        same = (flat[at + 1] == value) | (flat[at - 1] == value) | (flat[at + stride] == value) | (flat[at - stride] == value)
        return tuple(np.bincount(tile[hits & same], minlength=th * tw).reshape(th, tw) for hits in (ridge, across, along))


def _dense(counts: np.ndarray) -> np.ndarray:
    """Tiles with MIN_THIN_PIXELS of their own, or in a 2 x 2 window with MIN_WINDOW_PIXELS."""
    return (counts >= MIN_THIN_PIXELS) | _window_reaches(counts, MIN_WINDOW_PIXELS)


def _window_reaches(counts: np.ndarray, minimum: int) -> np.ndarray:
    """Tiles that lie in some 2 x 2 window of tiles holding ``minimum`` in all.

    A line of small text rarely sits inside one tile: it straddles a tile boundary across
    (its strokes split between two bands of tiles) and along (letters split between two
    tiles), so a per-tile count would ask a line several times the strokes it has."""
    th, tw = counts.shape
    padded = np.zeros((th + 2, tw + 2), dtype=np.int64)
    padded[1:-1, 1:-1] = counts
    sums = padded[:-1, :-1] + padded[1:, :-1] + padded[:-1, 1:] + padded[1:, 1:]  # window at each corner
    hit = sums >= minimum
    return hit[:-1, :-1] | hit[1:, :-1] | hit[:-1, 1:] | hit[1:, 1:]


def candidate_regions(frame: np.ndarray) -> list[Box]:
    """Rectangles of ``frame`` (stored values, H x W or H x W x S) that may hold text."""
    height, width = frame.shape[:2]
    th, tw = -(-height // TILE), -(-width // TILE)
    fired = np.zeros((th, tw), dtype=bool)
    planes = [frame] if frame.ndim == 2 else [frame[..., c] for c in range(frame.shape[2])]
    for plane in planes:
        if plane.dtype.kind == "f" or plane.size == 0:
            continue  # float pixel data: no pen value; such objects are not screened (see pixelrisk)
        spikes = spike_values(plane, edge_aware=True, usual=USUAL_PENS, top=True)
        if not spikes:
            continue
        prepared = _Plane(np.ascontiguousarray(plane))
        for value in spikes:
            fired |= prepared.thin_tiles(value)
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
