"""Per-scan quality features: the prototype's three, physics-based QC, and context.

One flat dict per image object, JSON- and Parquet-able, computed on the truck as each
object is processed (``pipeline``) and at HQ from any folder of DICOM files (``mine``).

Physics QC uses references that need no phantom:

* CT: air outside the body but inside the reconstruction circle must be -1000 HU with a
  noise (SD) that depends on dose and kernel; soft tissue and bone sit at known HU; the
  soft tissue in the middle of the body should read like that at its edge (uniformity).
* MR / mammography / others: the background (no signal) level and a signal-to-noise
  estimate (mean foreground over background SD); for MONOCHROME1 objects (most
  mammograms) "no signal" is the bright end of the stored values.

Speed matters (a whole fleet's history is re-mined from DICOM folders; target >= 150
slices/s on one core for 512x512 CT): everything works on the stored integers - exact sums
per 8x8 tile, one value histogram - and moves to modality units (a linear map) at the end;
nothing is sorted, no float copy of the image is made, one padding mask serves every step.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.values import convert_value

from medsendx.dicomio import DicomReadError, frame_count, padding_mask, stored_pixels

FEATURES_VERSION = 1
BLOCK = 8  # tile side (pixels) for local statistics: small enough to fit between objects

# HU references and windows (CT)
AIR_BLOCK_MAX_MEAN_HU = -700.0  # a tile may be air if its mean is below this (room for faults)
# ... and is air if its mean is this close to the median air tile: the selection then moves
# with the air level, so a calibration offset is measured in full, and tiles that touch an
# object's edge (means pulled up by partial volume, variance inflated) drop out.
AIR_TILE_TOLERANCE_HU = 20.0
BODY_BLOCK_MIN_MEAN_HU = -500.0  # a tile belongs to an object (body, holder) above this
SOFT_TISSUE_RANGE_HU = (-100, 100)
BONE_RANGE_HU = (300, 3000)  # bone_peak_hu: 90th percentile of this range
HIST_RANGE_HU = (-1100, 3100)  # histogram span, 1 HU bins
MIN_PEAK_PROMINENCE = 3.0  # a tissue mode must stand this many times above the window's median
# Rayleigh correction: the SD of magnitude-MR background noise is 0.655 of the true noise.
RAYLEIGH_FACTOR = 0.655

# Every row has exactly these keys (None where a feature does not apply), so Parquet files
# from different modalities share one schema; triage fields come after, prefixed triage_.
CONTEXT_KEYS = (
    "sop_instance_uid",
    "study_instance_uid",
    "series_instance_uid",
    "station",
    "manufacturer",
    "model",
    "modality",
    "body_part",
    "protocol",
    "kernel",
    "protocol_family",
    "group_key",
    "kvp",
    "tube_current_ma",
    "slice_thickness_mm",
    "pixel_spacing_mm",
    "rows",
    "columns",
    "date",
    "acquired_at",
    "instance_number",
)
IMAGE_KEYS = (
    "mean",
    "std",
    "peak",
    "air_mean_hu",
    "air_noise_hu",
    "air_fraction",
    "soft_tissue_hu",
    "bone_peak_hu",
    "uniformity_hu",
    "background_level",
    "snr",
    "features_version",
)
FEATURE_KEYS = CONTEXT_KEYS + IMAGE_KEYS
# The physics metrics that statistical process control watches, per modality family.
CT_METRICS = ("air_mean_hu", "air_noise_hu", "soft_tissue_hu", "bone_peak_hu", "uniformity_hu")
BACKGROUND_METRICS = ("background_level", "snr")
PHYSICS_METRICS = CT_METRICS + BACKGROUND_METRICS
# Human names for messages and charts.
METRIC_LABELS = {
    "air_mean_hu": "air",
    "air_noise_hu": "air noise",
    "soft_tissue_hu": "soft tissue",
    "bone_peak_hu": "bone peak",
    "uniformity_hu": "uniformity",
    "background_level": "background",
    "snr": "SNR",
    "mean": "mean density",
    "std": "contrast",
    "peak": "peak",
}

_BODY_PART_SYNONYMS = {"BRAIN": "HEAD", "SKULL": "HEAD", "HEADNECK": "HEAD", "CHESTABDOMEN": "CHEST_ABDOMEN"}
# Kernels that trade noise for resolution: their noise is not comparable with soft kernels.
_SHARP_KERNEL = re.compile(r"BONE|LUNG|EDGE|SHARP|DETAIL|^[BHIJ][5-9]\d|^Y[CD]|^[DEL]$|^FC[3-9]\d", re.IGNORECASE)


def extract_features(ds: Dataset, triage: dict | None = None) -> dict[str, Any]:
    """Quality features of one image object (first frame of a multi-frame object).

    Returns a flat dict (str -> str | int | float | None) with every key of
    :data:`FEATURE_KEYS`, plus ``triage_<field>`` for each field of ``triage`` (a
    ``TriageRecord.to_dict()``) when given. Raises :class:`DicomReadError` when the object
    has no decodable pixel data.
    """
    row: dict[str, Any] = context_features(ds)
    stored = _native_pixels(ds)
    if stored is None:
        stored = stored_pixels(ds, 0 if frame_count(ds) > 1 else None)
    if stored.ndim != 2:
        raise DicomReadError("features need single-channel (greyscale) pixels")
    row.update(image_features(ds, stored, row["modality"]))
    if triage:
        row.update(flatten_triage(triage))
    return row


_NATIVE_DTYPES = {(8, 0): "u1", (16, 0): "<u2", (16, 1): "<i2", (32, 0): "<u4", (32, 1): "<i4"}


def _native_pixels(ds: Dataset) -> np.ndarray | None:
    """Zero-copy view of uncompressed little-endian single-frame greyscale pixels.

    The common case on a CT truck; skips pydicom's generic decoder (a third of the
    per-slice time). Anything else returns None and goes through ``stored_pixels``.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or syntax.is_compressed or not syntax.is_little_endian or "PixelData" not in ds:
        return None
    if int(_get(ds, "NumberOfFrames") or 1) != 1 or int(_get(ds, "SamplesPerPixel") or 1) != 1:
        return None
    bits = int(_get(ds, "BitsAllocated") or 0)
    dtype = _NATIVE_DTYPES.get((bits, int(_get(ds, "PixelRepresentation") or 0)))
    if dtype is None or int(_get(ds, "BitsStored") or bits) != bits:
        return None  # unused high bits would need masking: leave it to pydicom
    rows, cols = int(_get(ds, "Rows")), int(_get(ds, "Columns"))
    data = ds.PixelData
    if len(data) < rows * cols * bits // 8:
        raise DicomReadError("pixel data shorter than the image size")
    return np.frombuffer(data, dtype=dtype, count=rows * cols).reshape(rows, cols)


def context_features(ds: Dataset) -> dict[str, Any]:
    """What explains normal variation between scans: device, protocol, technique, date."""
    modality = _text(ds, "Modality")
    body_part = _text(ds, "BodyPartExamined")
    if body_part:
        body_part = _BODY_PART_SYNONYMS.get(re.sub(r"[^A-Z]", "", body_part.upper()), body_part.upper())
    kernel = _text(ds, "ConvolutionKernel")
    kvp = _number(ds, "KVP")
    family = protocol_family(modality, kernel, kvp)
    spacing = _get(ds, "PixelSpacing")
    rows, columns, instance = _get(ds, "Rows"), _get(ds, "Columns"), _get(ds, "InstanceNumber")
    acquired_at = _acquired_at(ds)
    return {
        "sop_instance_uid": _text(ds, "SOPInstanceUID"),
        "study_instance_uid": _text(ds, "StudyInstanceUID"),
        "series_instance_uid": _text(ds, "SeriesInstanceUID"),
        "station": _text(ds, "StationName") or "UNKNOWN",
        "manufacturer": _text(ds, "Manufacturer"),
        "model": _text(ds, "ManufacturerModelName"),
        "modality": modality,
        "body_part": body_part,
        "protocol": _text(ds, "ProtocolName") or _text(ds, "SeriesDescription"),
        "kernel": kernel,
        "protocol_family": family,
        "group_key": group_key(modality, body_part, family),
        "kvp": kvp,
        "tube_current_ma": _number(ds, "XRayTubeCurrent"),
        "slice_thickness_mm": _number(ds, "SliceThickness"),
        "pixel_spacing_mm": float(spacing[0]) if spacing else None,
        "rows": int(rows) if rows not in (None, "") else None,
        "columns": int(columns) if columns not in (None, "") else None,
        "date": acquired_at[:10] if acquired_at else None,
        "acquired_at": acquired_at,
        "instance_number": int(instance) if instance not in (None, "") else None,
    }


def protocol_family(modality: str | None, kernel: str | None, kvp: float | None) -> str:
    """A coarse protocol class whose physics metrics are comparable across vendors.

    CT: tube voltage (changes HU of bone and the noise) and kernel sharpness (changes the
    noise several-fold). Other modalities: one family per modality.
    """
    if modality != "CT":
        return "standard"
    sharpness = "sharp" if kernel and _SHARP_KERNEL.search(kernel) else "standard"
    voltage = f"{int(round(kvp))}kV" if kvp else "kV?"
    return f"{voltage}-{sharpness}"


def group_key(modality: str | None, body_part: str | None, family: str | None) -> str:
    """The like-with-like group: modality + body part + protocol family."""
    return f"{modality or '?'}/{body_part or '?'}/{family or '?'}"


def flatten_triage(triage: dict) -> dict[str, Any]:
    """``triage_<field>`` columns: scalars as they are, lists of text joined, the rest JSON."""
    out: dict[str, Any] = {}
    for key, value in triage.items():
        name = "triage_" + re.sub(r"\W", "_", str(key))
        if value is None or isinstance(value, (bool, int, float, str)):
            out[name] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            out[name] = "; ".join(value)
        else:
            out[name] = json.dumps(value, sort_keys=True, default=str)
    return out


def image_features(ds: Dataset, stored: np.ndarray, modality: str | None) -> dict[str, Any]:
    """Pixel statistics in modality units; CT physics QC or background/SNR otherwise.

    Everything is computed on the stored integers (exact integer sums per 8x8 tile, value
    histograms) and moved to modality units at the end: units = slope * stored + intercept
    is linear, so tile means, variances, quantiles and thresholds carry over exactly,
    without a float copy of the image.
    """
    slope = float(_get(ds, "RescaleSlope") or 1)
    intercept = float(_get(ds, "RescaleIntercept") or 0)
    out: dict[str, Any] = dict.fromkeys(IMAGE_KEYS)
    out["features_version"] = FEATURES_VERSION
    pad_mask = padding_mask(ds, stored)
    n_pad = int(np.count_nonzero(pad_mask))
    n_image = stored.size - n_pad
    if n_image == 0:
        return out
    pad = pad_mask if n_pad else None  # one mask, reused by every step below

    pad_run = None
    if n_pad and "PixelPaddingRangeLimit" not in ds and stored.dtype.kind in "iu":
        # Padding is then one value: its share of the sums is a product, not a gather.
        pad_run = (n_pad, int(stored.flat[int(np.argmax(pad_mask))]))
    moments = _moments(stored, pad, pad_run)
    mean_stored = moments.total / n_image
    # Population variance of the image pixels from exact sums (Python ints do not overflow).
    var_stored = (moments.total_sq * n_image - moments.total * moments.total) / (n_image * n_image)
    out["mean"] = slope * mean_stored + intercept
    out["std"] = abs(slope) * math.sqrt(max(float(var_stored), 0.0))
    # The brightest pixel in modality units (slopes are positive in practice).
    extreme = _valid_max(stored, pad) if slope > 0 else -_valid_max(-stored.astype(np.float64), pad)
    out["peak"] = slope * extreme + intercept
    tiles = TileStats(
        means=slope * (moments.tile_sums / TILE_PIXELS) + intercept,
        variances=(slope * slope) * moments.tile_variances,
        whole=_whole_tiles(stored.shape, pad),
    )
    if modality == "CT":
        out.update(_ct_physics(ds, stored, pad, tiles, slope, intercept))
    else:
        # MONOCHROME1 (usual for mammograms): no signal is the bright end of the stored
        # values. Search the background on the inverted scale (a linear map like the
        # rescale) and report its level in the object's own units.
        sign = -1.0 if _text(ds, "PhotometricInterpretation") == "MONOCHROME1" else 1.0
        flipped = tiles._replace(means=sign * tiles.means)
        found = _background_physics(ds, stored, pad, modality, flipped, sign * slope, sign * intercept)
        if found.get("background_level") is not None:
            found["background_level"] *= sign
        out.update(found)
    return out


TILE_PIXELS = BLOCK * BLOCK


class Moments(NamedTuple):
    """Sums of stored values over the image (padding excluded) and per 8x8 tile."""

    total: int | float  # Python int for integer pixels: exact whatever the image size
    total_sq: int | float
    tile_sums: np.ndarray  # float64 (H/8, W/8); exact for integer pixels
    tile_variances: np.ndarray  # unbiased, in stored units squared


class TileStats(NamedTuple):
    """Per-8x8-tile statistics in modality units, and which tiles are usable."""

    means: np.ndarray
    variances: np.ndarray  # unbiased
    whole: np.ndarray  # inside the reconstruction circle and free of padding


def _crop(a: np.ndarray) -> np.ndarray:
    """The part of an (H, W) array covered by whole 8x8 tiles."""
    h, w = a.shape
    return a[: h - h % BLOCK, : w - w % BLOCK]


def _tile_sums(a: np.ndarray, partial: Any) -> np.ndarray:
    """Sum over each 8x8 tile of a cropped (H, W) array -> (H/8, W/8), int64 or float64.

    Rows first: adding 8 whole image rows is a fast contiguous operation (in ``partial``,
    the caller's overflow-safe type); the 8-wide second step then runs on an array 8 times
    smaller. Reducing the strided (H/8, 8, W/8, 8) view directly is several times slower.
    """
    h, w = a.shape
    rows = a.reshape(h // BLOCK, BLOCK, w).sum(axis=1, dtype=partial)
    final = np.int64 if np.dtype(partial).kind in "iu" else np.float64
    return rows.reshape(h // BLOCK, w // BLOCK, BLOCK).sum(axis=2, dtype=final)


def _moments(stored: np.ndarray, pad: np.ndarray | None, pad_run: tuple[int, int] | None = None) -> Moments:
    """Exact integer sums and sums of squares, per tile and over the image minus padding.

    ``pad_run`` = (count, value) when every padding pixel holds one integer value.
    """
    if stored.dtype.kind in "iu":
        bound = max(abs(int(stored.min())), abs(int(stored.max())))
        # int32 holds 8 squares of values below 2^14 (a tile row's partial sum); beyond, int64.
        acc = np.int32 if BLOCK * bound * bound < 2**31 else np.int64
        big = np.int64
    else:
        acc = big = np.float64
    squares = stored.astype(acc)
    np.multiply(squares, squares, out=squares)
    cropped = _crop(stored)
    sums = _tile_sums(cropped, acc)
    sums_sq = _tile_sums(_crop(squares), acc)
    if cropped.shape == stored.shape:  # the tiles cover the image: totals come free
        total, total_sq = sums.sum(dtype=big).item(), sums_sq.sum(dtype=big).item()
    else:
        total, total_sq = stored.sum(dtype=big).item(), squares.sum(dtype=big).item()
    if pad_run is not None:
        count, value = pad_run
        total -= count * value
        total_sq -= count * value * value
    elif pad is not None:
        padded = stored[pad].astype(big)
        total -= padded.sum().item()
        total_sq -= np.dot(padded, padded).item()
    sums_f = sums.astype(np.float64)
    # Tile sums of 16-bit pixels stay below 2^23, so sums^2 / 64 is exact in float64.
    variances = np.maximum(sums_sq - sums_f * sums_f / TILE_PIXELS, 0.0) / (TILE_PIXELS - 1)
    return Moments(total, total_sq, sums_f, variances)


def _valid_max(stored: np.ndarray, pad: np.ndarray | None) -> float:
    """The largest stored value outside the padding."""
    at = int(np.argmax(stored))
    # Padding is defined by value: if the brightest pixel is padding, so is its value.
    if pad is not None and pad.flat[at]:
        return float(np.max(stored, where=~pad, initial=np.min(stored)))
    return float(stored.flat[at])


def _whole_tiles(shape: tuple[int, ...], pad: np.ndarray | None) -> np.ndarray:
    """Tiles inside the reconstruction circle with no padding pixel."""
    whole = _circle_tiles(shape[0], shape[1]).copy()
    if pad is not None:
        # 8 adjacent booleans read as one uint64: non-zero iff a tile row holds padding.
        runs = np.ascontiguousarray(_crop(pad)).view(np.uint64)  # (H, W/8)
        whole &= ~runs.reshape(runs.shape[0] // BLOCK, BLOCK, -1).any(axis=1)
    return whole


@lru_cache(maxsize=16)
def _circle_tiles(h: int, w: int) -> np.ndarray:
    """Tiles entirely inside the reconstruction circle (inscribed in the matrix)."""
    yy, xx = np.mgrid[0:h, 0:w]
    radius = min(h, w) / 2.0
    inside = np.hypot(yy - (h - 1) / 2.0, xx - (w - 1) / 2.0) <= radius - 1.0
    h8, w8 = _crop(inside).shape
    return _crop(inside).reshape(h8 // BLOCK, BLOCK, w8 // BLOCK, BLOCK).all(axis=3).all(axis=1)


def _erode(mask: np.ndarray) -> np.ndarray:
    """Drop tiles with a 4-neighbour outside the mask (keeps air tiles away from edges)."""
    out = mask.copy()
    out[1:, :] &= mask[:-1, :]
    out[:-1, :] &= mask[1:, :]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` plus the background pockets that do not reach the border (4-connected).

    The same result as ``scipy.ndimage.binary_fill_holes``, by one labelling pass instead
    of its iterated dilation (several times faster on the tile grid).
    """
    from scipy.ndimage import label

    labels, count = label(~mask)
    if count == 0:
        return mask.copy()
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    outside = np.zeros(count + 1, dtype=bool)
    outside[border] = True
    outside[0] = True  # label 0 is the mask itself
    return mask | ~outside[labels]


def _value_histogram(ds: Dataset, stored: np.ndarray, pad: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(distinct stored values, their counts) over the non-padding pixels of ``stored``."""
    if stored.dtype.kind in "iu":
        low = int(stored.min())
        counts = np.bincount(np.subtract(stored, low, dtype=np.intp).ravel())
        present = np.flatnonzero(counts)
        values = (present + low).astype(stored.dtype)
        if pad is not None:
            # Padding is defined by value: drop the values that are padding (a few
            # thousand distinct values to test rather than a gather of the pixels).
            keep = ~padding_mask(ds, values)
            present, values = present[keep], values[keep]
        return values.astype(np.float64), counts[present]
    valid = stored if pad is None else stored[~pad]
    values, counts = np.unique(valid, return_counts=True)
    return values.astype(np.float64), counts


def _ct_physics(
    ds: Dataset, stored: np.ndarray, pad: np.ndarray | None, tiles: TileStats, slope: float, intercept: float
) -> dict[str, Any]:
    means, variances, whole = tiles.means, tiles.variances, tiles.whole
    body = whole & (means > BODY_BLOCK_MIN_MEAN_HU)
    # Air inside the body (sinuses, airways) is not a reference: fill the body's holes.
    inside_body = _fill_holes(body)
    air = _erode(whole & (means < AIR_BLOCK_MAX_MEAN_HU)) & ~inside_body
    if air.any():
        level = float(np.median(means[air]))
        air &= np.abs(means - level) < AIR_TILE_TOLERANCE_HU
        air &= variances <= 4.0 * float(np.median(variances[air])) if air.any() else air
    out: dict[str, Any] = {}
    n_whole = int(whole.sum())
    if air.any():
        out["air_mean_hu"] = float(means[air].mean())
        out["air_noise_hu"] = float(math.sqrt(float(variances[air].mean())))
    out["air_fraction"] = float(air.sum() / n_whole) if n_whole else None

    # One histogram in 1 HU bins gives the tissue levels. A 2x2 lattice (a quarter of the
    # pixels) locates a mode to the same HU at a quarter of the cost. It is counted on the
    # stored values and mapped to HU bins afterwards (a few thousand values, not pixels).
    lo, hi = HIST_RANGE_HU
    values, counts = _value_histogram(ds, stored[::2, ::2], None if pad is None else pad[::2, ::2])
    bins = np.clip(values * slope + intercept, lo, hi - 1).astype(np.int64) - lo
    hist = np.bincount(bins, weights=counts, minlength=hi - lo)
    out["soft_tissue_hu"] = _mode(hist, SOFT_TISSUE_RANGE_HU, lo, smooth=5, min_count=50)
    out["bone_peak_hu"] = _upper_level(hist, BONE_RANGE_HU, lo, fraction=0.9, min_count=50)

    # Uniformity: soft tissue in the middle of the body against its outer part.
    soft = whole & (means > SOFT_TISSUE_RANGE_HU[0]) & (means < SOFT_TISSUE_RANGE_HU[1])
    if body.sum() >= 16 and soft.sum() >= 8:
        ys, xs = np.nonzero(body)
        cy, cx = ys.mean(), xs.mean()
        ty, tx = np.nonzero(soft)
        dist = np.hypot(ty - cy, tx - cx)
        extent = float(np.hypot(ys - cy, xs - cx).max()) or 1.0
        central = dist < 0.35 * extent
        outer = (dist >= 0.5 * extent) & (dist < 0.9 * extent)
        if central.sum() >= 2 and outer.sum() >= 2:
            soft_means = means[ty, tx]
            out["uniformity_hu"] = float(soft_means[outer].mean() - soft_means[central].mean())
    return out


def _mode(hist: np.ndarray, window: tuple[int, int], lo: int, *, smooth: int, min_count: int) -> float | None:
    """The most frequent value of a 1-unit histogram inside ``window``, after a boxcar."""
    a, b = window[0] - lo, window[1] - lo
    segment = hist[a:b].astype(np.float64)
    if segment.sum() < min_count:
        return None
    if smooth > 1:
        segment = np.convolve(segment, np.ones(smooth) / smooth, mode="same")
    peak = int(np.argmax(segment))
    if peak < smooth or peak >= len(segment) - smooth:
        return None  # the maximum sits on the window's edge: no peak inside it
    if segment[peak] < MIN_PEAK_PROMINENCE * max(float(np.median(segment)), 1.0):
        return None  # no distinct tissue peak (e.g. a slice through the vertex: mostly bone)
    return float(peak + window[0])


def _upper_level(hist: np.ndarray, window: tuple[int, int], lo: int, *, fraction: float, min_count: int) -> float | None:
    """The value below which ``fraction`` of the histogram's counts in ``window`` lie.

    Used for bone: the distribution above 300 HU falls off from partial-volume edges to
    cortical bone, so a high quantile tracks the cortical level where a mode would not.
    """
    a, b = window[0] - lo, window[1] - lo
    cumulative = np.cumsum(hist[a:b])
    if cumulative[-1] < min_count:
        return None
    return float(int(np.searchsorted(cumulative, fraction * cumulative[-1])) + window[0])


def _background_physics(
    ds: Dataset,
    stored: np.ndarray,
    pad: np.ndarray | None,
    modality: str | None,
    tiles: TileStats,
    slope: float,
    intercept: float,
) -> dict[str, Any]:
    """Background level and SNR for modalities without an absolute scale (MR, MG, ...)."""
    values, counts = _value_histogram(ds, stored, pad)
    units = values * slope + intercept
    bottom, top = float(units.min()), float(units.max())
    if top <= bottom:
        return {}
    # Robust upper level without a sort: the 99th percentile from a 1024-bin histogram.
    hist, edges = np.histogram(units, bins=1024, range=(bottom, top), weights=counts)
    p99 = float(edges[np.searchsorted(np.cumsum(hist), 0.99 * counts.sum())])
    threshold = bottom + 0.1 * (p99 - bottom)
    means, variances, whole = tiles.means, tiles.variances, tiles.whole
    # Background: whole tiles that are entirely below the threshold, away from the object.
    cropped = _crop(stored)
    h8, w8 = cropped.shape
    rows = cropped.reshape(h8 // BLOCK, BLOCK, w8)
    # The brightest pixel of each tile in (possibly inverted) units, rows first as for sums.
    tile_extreme = (rows.max(axis=1) if slope > 0 else rows.min(axis=1)).reshape(h8 // BLOCK, w8 // BLOCK, BLOCK)
    tile_top = slope * (tile_extreme.max(axis=2) if slope > 0 else tile_extreme.min(axis=2)) + intercept
    low = whole & (tile_top < threshold)
    background = _erode(low)
    if not background.any():
        background = low
    out: dict[str, Any] = {}
    if background.any():
        level = float(means[background].mean())
        noise = math.sqrt(float(variances[background].mean()))
        out["background_level"] = level
        signal = units > threshold
        if signal.any() and noise > 0:
            signal_mean = float(np.dot(units[signal], counts[signal]) / counts[signal].sum())
            true_noise = noise / RAYLEIGH_FACTOR if modality == "MR" else noise
            out["snr"] = float((signal_mean - level) / true_noise)
    return out


@lru_cache(maxsize=None)
def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag


def _get(ds: Dataset, keyword: str) -> Any:
    """The value of a top-level element (None if absent), read once without storing it.

    On first access pydicom converts a raw element and stores the result back in the
    dataset (hooks and bookkeeping, most of the cost); the features read each value once,
    so calling pydicom's own value converter on the raw element is about three times
    faster. Elements without an explicit VR (implicit VR files) take the normal path.
    """
    elem = ds.get_item(_tag(keyword))
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        if elem.value is None:
            return None
        if elem.VR and elem.VR not in ("SQ", "UN", "OB", "OW"):
            return convert_value(elem.VR, elem, encodings=ds.original_character_set)
        return ds[elem.tag].value
    return elem.value


def _text(ds: Dataset, keyword: str) -> str | None:
    value = _get(ds, keyword)
    if value in (None, ""):
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value) or None
    return str(value).strip() or None


def _number(ds: Dataset, keyword: str) -> float | None:
    value = _get(ds, keyword)
    if value in (None, ""):
        return None
    try:
        if type(value).__name__ == "MultiValue":
            value = value[0]
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _acquired_at(ds: Dataset) -> str | None:
    """ISO date-time of the acquisition, as it stands in the (de-identified) object."""
    dt = _text(ds, "AcquisitionDateTime")
    if dt and len(dt) >= 8:
        return _iso(dt[:8], dt[8:])
    for date_kw, time_kw in (
        ("AcquisitionDate", "AcquisitionTime"),
        ("ContentDate", "ContentTime"),
        ("SeriesDate", "SeriesTime"),
        ("StudyDate", "StudyTime"),
    ):
        date = _text(ds, date_kw)
        if date and len(date) >= 8 and date[:8].isdigit():
            return _iso(date[:8], _text(ds, time_kw) or "")
    return None


def _iso(date: str, time: str) -> str:
    time = re.sub(r"[^0-9.]", "", time)
    hh, mm, ss = time[0:2] or "00", time[2:4] or "00", time[4:6] or "00"
    frac = time[7:13] if len(time) > 7 and time[6] == "." else ""
    iso = f"{date[0:4]}-{date[4:6]}-{date[6:8]}T{hh}:{mm}:{ss}"
    return iso + (f".{frac}" if frac else "")
