"""One small interface for segmenters, and the pixels they work on.

A segmenter turns one frame (:class:`FrameInput`: values in modality units plus the mask of
pixels that are part of the image) into a :class:`Segmentation` (a class per pixel, class
names, centres and counts). Callers — the triage record, the overlay, the gateway — use
only these two types, so a learned model (an ONNX U-Net, say) can replace the k-means
segmenter by implementing ``segment`` without touching them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
from pydicom.dataset import Dataset

from medsendx.dicomio import frame_count, modality_pixels, padding_mask, stored_pixels
from medsendx.triage import labels
from medsendx.triage.cluster import Clustering, intensity_histogram, kmeans_1d


class TriageError(ValueError):
    """The object's pixels cannot be triaged; the message is in our own words."""


@dataclass
class FrameInput:
    """One frame ready for segmentation.

    ``values`` are in modality units (HU for CT): int32 when the rescale keeps integers
    (the fast, exact histogram path), float32 otherwise. ``valid`` is False for pixels that
    are not part of the patient's image: PixelPaddingValue and, for CT, pixels outside the
    reconstruction circle.
    """

    values: np.ndarray
    valid: np.ndarray
    modality: str
    units: str
    inverted: bool  # MONOCHROME1: low values are displayed bright
    padding_pixels: int
    outside_circle_pixels: int
    bits_stored: int
    signed: bool


@dataclass
class Segmentation:
    """Classes ordered dark to bright as displayed; ``labels`` is -1 where not valid."""

    labels: np.ndarray
    names: list[str]
    centres: list[float]
    counts: list[int]
    method: str
    # value range (min, max) of each class and the decision boundaries between them, in
    # modality units; None for segmenters that do not work by thresholds
    ranges: list[tuple[float, float]] | None = None
    boundaries: list[float] | None = None
    sse: float | None = None
    # the intensity histogram of the valid pixels (distinct values, counts), when known
    histogram: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def fractions(self) -> list[float]:
        total = sum(self.counts)
        return [c / total if total else 0.0 for c in self.counts]


class Segmenter(Protocol):
    """Anything that segments a frame; ``name`` goes into the triage record."""

    name: str

    def segment(self, frame: FrameInput) -> Segmentation: ...


class KMeansSegmenter:
    """Exact 1-D k-means on the intensity histogram of the valid pixels (see ``cluster``)."""

    def __init__(self, k: int = 3) -> None:
        self.k = k
        self.name = f"kmeans-1d-exact(k={k})"

    def segment(self, frame: FrameInput) -> Segmentation:
        values = frame.values[frame.valid]
        if values.size == 0:
            raise TriageError("no pixel of the image is valid (all padding or outside the scan circle)")
        distinct, counts = intensity_histogram(values)
        clustering = kmeans_1d(distinct, counts, self.k)
        segmentation = segmentation_from_clustering(clustering, frame, self.name)
        segmentation.histogram = (distinct, counts)
        return segmentation


def segmentation_from_clustering(clustering: Clustering, frame: FrameInput, method: str) -> Segmentation:
    """Label image and named classes from a fitted clustering (ascending in value)."""
    k = clustering.k
    cluster_of = clustering.assign(frame.values)
    order = list(range(k))[::-1] if frame.inverted else list(range(k))
    if frame.inverted:
        cluster_of = (k - 1) - cluster_of
    label_image = np.where(frame.valid, cluster_of, -1).astype(np.int8)
    return Segmentation(
        labels=label_image,
        names=labels.class_names(frame.modality, k),
        centres=[float(clustering.centres[i]) for i in order],
        counts=[int(clustering.weights[i]) for i in order],
        method=method,
        ranges=[(float(clustering.lows[i]), float(clustering.highs[i])) for i in order],
        boundaries=[float(b) for b in clustering.boundaries()],
        sse=clustering.sse,
    )


def valid_histogram(frame: FrameInput, segmentation: Segmentation | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of the valid pixels, reused from the segmentation when it has one."""
    if segmentation is not None and segmentation.histogram is not None:
        return segmentation.histogram
    return intensity_histogram(frame.values[frame.valid])


def frame_input(ds: Dataset, frame: int = 0) -> FrameInput:
    """The pixels of one frame in modality units, with the mask of valid pixels."""
    if "PixelData" not in ds:
        raise TriageError("object has no pixel data")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise TriageError("colour images are not triaged")
    n_frames = frame_count(ds)
    if not 0 <= frame < n_frames:
        raise TriageError(f"frame {frame} does not exist ({n_frames} frame(s))")
    try:
        stored = stored_pixels(ds, frame if n_frames > 1 else None)
    except Exception:
        raise TriageError("pixel data cannot be decoded") from None
    if stored.ndim != 2:
        raise TriageError("pixel data is not a 2-D greyscale frame")
    modality = str(ds.get("Modality", "OT")).upper()
    values = _modality_values(ds, stored, frame)
    valid = ~padding_mask(ds, stored)
    padding = int(stored.size - np.count_nonzero(valid))
    outside = 0
    circle = _reconstruction_circle(ds, stored.shape) if modality == "CT" else None
    if circle is not None:
        before = int(np.count_nonzero(valid))
        valid &= circle
        outside = before - int(np.count_nonzero(valid))
    return FrameInput(
        values=values,
        valid=valid,
        modality=modality,
        units=labels.units(modality, str(ds.get("RescaleType", "")).upper() == "HU"),
        inverted=str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1",
        padding_pixels=padding,
        outside_circle_pixels=outside,
        bits_stored=int(ds.get("BitsStored", 16)),
        signed=bool(int(ds.get("PixelRepresentation", 0))),
    )


def _modality_values(ds: Dataset, stored: np.ndarray, frame: int) -> np.ndarray:
    """Modality values; integers when slope and intercept are whole numbers (exact and
    lets the histogram use one bincount pass)."""
    if "ModalityLUTSequence" not in ds and stored.dtype.kind in "iu":
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        if slope.is_integer() and intercept.is_integer():
            values = stored.astype(np.int32)
            if slope != 1:
                values *= int(slope)
            if intercept:
                values += int(intercept)
            return values
    return modality_pixels(ds, frame if frame_count(ds) > 1 else None)


def _reconstruction_circle(ds: Dataset, shape: tuple[int, ...]) -> np.ndarray | None:
    """True inside the CT reconstruction circle (ReconstructionDiameter, centred on the
    image); None when the attributes are missing or the circle covers the whole image."""
    try:
        diameter = float(ds.ReconstructionDiameter)
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        return None
    if diameter <= 0 or row_mm <= 0 or col_mm <= 0:
        return None
    return _circle_mask(int(shape[0]), int(shape[1]), round(diameter / 2 / row_mm, 3), round(diameter / 2 / col_mm, 3))


@lru_cache(maxsize=8)
def _circle_mask(rows: int, cols: int, radius_rows: float, radius_cols: float) -> np.ndarray | None:
    y = (np.arange(rows) - (rows - 1) / 2.0)[:, None] / (radius_rows + 0.5)
    x = (np.arange(cols) - (cols - 1) / 2.0)[None, :] / (radius_cols + 0.5)
    inside = (y * y + x * x) <= 1.0
    if inside.all():
        return None
    inside.setflags(write=False)
    return inside
