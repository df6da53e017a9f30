"""Per-scan quality features: the prototype's three, physics-based QC, and context.

One flat dict per image object, JSON- and Parquet-able, computed on the truck as each
object is processed (``pipeline``) and at HQ from any folder of DICOM files (``mine``).

Physics QC uses references that need no phantom:

* CT: air outside the body but inside the reconstruction circle must be -1000 HU with a
  noise (SD) that depends on dose and kernel; soft tissue and bone sit at known HU; the
  soft tissue in the middle of the body should read like that at its edge (uniformity).
* MR / mammography / others: the background (no signal) level and a signal-to-noise
  estimate (mean foreground over background SD).

Speed matters (a whole fleet's history is re-mined from DICOM folders): everything is one
pass of block reductions over 8x8 tiles plus one integer histogram; nothing is sorted.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
from pydicom.dataset import Dataset

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
    if frame_count(ds) != 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        return None
    bits = int(ds.get("BitsAllocated", 0))
    dtype = _NATIVE_DTYPES.get((bits, int(ds.get("PixelRepresentation", 0))))
    if dtype is None or int(ds.get("BitsStored", bits)) != bits:
        return None  # unused high bits would need masking: leave it to pydicom
    rows, cols = int(ds.Rows), int(ds.Columns)
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
    spacing = ds.get("PixelSpacing")
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
        "rows": int(ds.Rows) if "Rows" in ds else None,
        "columns": int(ds.Columns) if "Columns" in ds else None,
        "date": acquired_at[:10] if acquired_at else None,
        "acquired_at": acquired_at,
        "instance_number": int(ds.InstanceNumber) if ds.get("InstanceNumber") not in (None, "") else None,
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
    """Pixel statistics in modality units; CT physics QC or background/SNR otherwise."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    values = stored.astype(np.float32)
    if slope != 1.0:
        values *= slope
    if intercept != 0.0:
        values += intercept
    pad = padding_mask(ds, stored)
    has_pad = bool(pad.any())
    pad_or_none = pad if has_pad else None
    out: dict[str, Any] = dict.fromkeys(IMAGE_KEYS)
    out["features_version"] = FEATURES_VERSION
    n_image = values.size - int(pad.sum())
    if n_image == 0:
        return out
    h, w = values.shape
    offset = -1000.0 if modality == "CT" else float(values.min())
    tiles = _tile_stats(values, pad_or_none, offset)
    if h % BLOCK == 0 and w % BLOCK == 0:
        # Whole-image moments from the tile sums (already paid for), minus the padding.
        total, total_sq = float(tiles.sums.sum()), float(tiles.sumsq.sum())
        if has_pad:
            padded = values[pad].astype(np.float64) - offset
            total -= float(padded.sum())
            total_sq -= float(np.dot(padded, padded))
        mean_shifted = total / n_image
        out["mean"] = mean_shifted + offset
        out["std"] = math.sqrt(max(total_sq / n_image - mean_shifted * mean_shifted, 0.0))
    else:
        image = values[~pad] if has_pad else values.ravel()
        out["mean"] = float(image.mean(dtype=np.float64))
        out["std"] = float(image.std(dtype=np.float64))
    out["peak"] = float(np.max(values, where=~pad, initial=-np.inf)) if has_pad else float(values.max())
    if modality == "CT":
        out.update(_ct_physics(values, pad_or_none, tiles))
    else:
        out.update(_background_physics(values, pad_or_none, modality, tiles))
    return out


def _tiles(values: np.ndarray) -> np.ndarray:
    """(H, W) -> (H/8, 8, W/8, 8) view, cropping the ragged edge."""
    h, w = values.shape
    h8, w8 = h - h % BLOCK, w - w % BLOCK
    return values[:h8, :w8].reshape(h8 // BLOCK, BLOCK, w8 // BLOCK, BLOCK)


@lru_cache(maxsize=16)
def _circle_tiles(h: int, w: int) -> np.ndarray:
    """Tiles entirely inside the reconstruction circle (inscribed in the matrix)."""
    yy, xx = np.mgrid[0:h, 0:w]
    radius = min(h, w) / 2.0
    inside = np.hypot(yy - (h - 1) / 2.0, xx - (w - 1) / 2.0) <= radius - 1.0
    return _tiles(inside).all(axis=3).all(axis=1)


_ONES = np.ones(BLOCK, dtype=np.float32)


def _tile_sums(values: np.ndarray) -> np.ndarray:
    """Sum over 8x8 tiles of a float32 (H, W) array with H and W multiples of 8.

    A batched product with a ones vector (BLAS) sums each row's 8-pixel runs several times
    faster than reducing a strided (H/8, 8, W/8, 8) view; the 8 rows of a tile follow.
    """
    h, w = values.shape
    runs = values.reshape(h, w // BLOCK, BLOCK) @ _ONES
    return runs.reshape(h // BLOCK, BLOCK, w // BLOCK).sum(axis=1)


class TileStats(NamedTuple):
    """Per-8x8-tile moments of ``values - offset`` and what follows from them."""

    offset: float
    sums: np.ndarray  # float64 (H/8, W/8)
    sumsq: np.ndarray
    means: np.ndarray  # of the values themselves (offset added back)
    variances: np.ndarray  # unbiased
    whole: np.ndarray  # inside the reconstruction circle and free of padding


def _tile_stats(values: np.ndarray, pad: np.ndarray | None, offset: float) -> TileStats:
    """Per-tile sums, mean and unbiased variance of ``values``, and which tiles are whole.

    Centring on ``offset`` keeps float32 sums of squares exact enough for noise of a few HU.
    """
    h, w = values.shape
    h8, w8 = h - h % BLOCK, w - w % BLOCK
    shifted = values[:h8, :w8] - np.float32(offset)
    n = BLOCK * BLOCK
    sums = _tile_sums(shifted).astype(np.float64)
    sumsq = _tile_sums(np.square(shifted)).astype(np.float64)
    means = sums / n
    variances = np.maximum(sumsq - sums * means, 0.0) / (n - 1)
    whole = _circle_tiles(h, w).copy()
    if pad is not None:
        whole &= _tile_sums(pad[:h8, :w8].astype(np.float32)) == 0
    return TileStats(offset, sums, sumsq, means + offset, variances, whole)


def _erode(mask: np.ndarray) -> np.ndarray:
    """Drop tiles with a 4-neighbour outside the mask (keeps air tiles away from edges)."""
    out = mask.copy()
    out[1:, :] &= mask[:-1, :]
    out[:-1, :] &= mask[1:, :]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def _ct_physics(hu: np.ndarray, pad: np.ndarray | None, tiles: TileStats) -> dict[str, Any]:
    from scipy.ndimage import binary_fill_holes

    means, variances, whole = tiles.means, tiles.variances, tiles.whole
    body = whole & (means > BODY_BLOCK_MIN_MEAN_HU)
    # Air inside the body (sinuses, airways) is not a reference: fill the body's holes.
    inside_body = binary_fill_holes(body)
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

    # One integer histogram gives the tissue levels. A 2x2 lattice (a quarter of the
    # pixels) locates a mode to the same HU at a quarter of the cost.
    lo, hi = HIST_RANGE_HU
    lattice = hu[::2, ::2]
    if pad is not None:
        lattice = lattice[~pad[::2, ::2]]
    idx = np.clip(lattice, lo, hi - 1).astype(np.int32) - lo
    hist = np.bincount(idx.ravel(), minlength=hi - lo)
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


def _background_physics(values: np.ndarray, pad: np.ndarray | None, modality: str | None, tiles: TileStats) -> dict[str, Any]:
    """Background level and SNR for modalities without an absolute scale (MR, MG, ...)."""
    valid = values if pad is None else values[~pad]
    top = float(valid.max())
    bottom = float(valid.min())
    if top <= bottom:
        return {}
    # Robust upper level without a sort: the 99th percentile from a 1024-bin histogram.
    hist, edges = np.histogram(valid, bins=1024, range=(bottom, top))
    p99 = float(edges[np.searchsorted(np.cumsum(hist), 0.99 * valid.size)])
    threshold = bottom + 0.1 * (p99 - bottom)
    means, variances, whole = tiles.means, tiles.variances, tiles.whole
    # Background: whole tiles that are entirely below the threshold, away from the object.
    blocks = _tiles(values)
    low = whole & (blocks.max(axis=3).max(axis=1) < threshold)
    background = _erode(low)
    if not background.any():
        background = low
    out: dict[str, Any] = {}
    if background.any():
        level = float(means[background].mean())
        noise = math.sqrt(float(variances[background].mean()))
        out["background_level"] = level
        signal = valid[valid > threshold]
        if signal.size and noise > 0:
            true_noise = noise / RAYLEIGH_FACTOR if modality == "MR" else noise
            out["snr"] = float((signal.mean() - level) / true_noise)
    return out


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value in (None, ""):
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value) or None
    return str(value).strip() or None


def _number(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
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
