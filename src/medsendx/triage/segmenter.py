"""One small interface for segmenters, and the pixels they work on.

A segmenter turns one frame (:class:`FrameInput`: values in modality units plus the mask of
pixels that are part of the image) into a :class:`Segmentation` (a class per pixel, class
names, centres and counts). Callers — the triage record, the overlay, the gateway — use
only these two types, so a learned model (an ONNX U-Net, say) can replace the k-means
segmenter by implementing ``segment`` without touching them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any, Protocol

import numpy as np
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from medsendx.dicomio import frame_count, modality_pixels, stored_pixels
from medsendx.triage import _native, labels
from medsendx.triage.cluster import Clustering, clustering_from, intensity_histogram, kmeans_1d


class TriageError(ValueError):
    """The object's pixels cannot be triaged; the message is in our own words."""


@dataclass
class FrameInput:
    """One frame ready for segmentation.

    ``values`` are in modality units (HU for CT): int32 when the rescale keeps integers
    (the fast, exact histogram path), float32 otherwise. ``valid`` is False for pixels that
    are not part of the patient's image: PixelPaddingValue and, for CT, pixels outside the
    reconstruction circle. Both are computed on first use: the k-means segmenter works on
    the stored pixels directly and never needs them.
    """

    stored: np.ndarray  # the decoded stored pixel values of the frame
    modality: str
    units: str
    inverted: bool  # MONOCHROME1: low values are displayed bright
    bits_stored: int
    signed: bool
    # (slope, intercept) when values == stored * slope + intercept exactly in integers
    rescale: tuple[int, int] | None
    # stored values that are padding, inclusive; None without PixelPaddingValue
    padding_range: tuple[int, int] | None
    # reconstruction circle as (rows, cols, radius_rows, radius_cols); None when it covers all
    circle: tuple[int, int, float, float] | None
    # modality values computed up front when no integer rescale describes them
    modality_values: np.ndarray | None = field(default=None, repr=False)

    @cached_property
    def values(self) -> np.ndarray:
        if self.modality_values is not None:
            return self.modality_values
        assert self.rescale is not None
        slope, intercept = self.rescale
        values = self.stored.astype(np.int32)
        if slope != 1:
            values *= slope
        if intercept:
            values += intercept
        return values

    @cached_property
    def padding(self) -> np.ndarray:
        """True where the stored value is padding (what ``dicomio.padding_mask`` gives)."""
        if self.padding_range is None:
            return np.zeros(self.stored.shape, dtype=bool)
        low, high = self.padding_range
        if low == high:
            return self.stored == low
        return (self.stored >= low) & (self.stored <= high)

    @cached_property
    def valid(self) -> np.ndarray:
        valid = ~self.padding
        if self.circle is not None:
            valid &= _circle_mask(*self.circle)
        return valid

    @cached_property
    def padding_pixels(self) -> int:
        return int(np.count_nonzero(self.padding))

    @cached_property
    def outside_circle_pixels(self) -> int:
        """Pixels outside the reconstruction circle that are not padding."""
        return int(self.stored.size - self.padding_pixels - np.count_nonzero(self.valid))


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
        """The stored-histogram path when it applies (it gives the identical result, see
        the tests), else the per-pixel path."""
        return segment_stored_histogram(frame, self.k, self.name) or segment_pixels(frame, self.k, self.name)


NO_VALID_PIXEL = "no pixel of the image is valid (all padding or outside the scan circle)"


def segment_pixels(frame: FrameInput, k: int, method: str) -> Segmentation:
    """k-means on the histogram of the valid modality values, a label per pixel: works for
    every frame (any rescale or modality LUT, any pixel type)."""
    values = frame.values[frame.valid]
    if values.size == 0:
        raise TriageError(NO_VALID_PIXEL)
    distinct, counts = intensity_histogram(values)
    clustering = kmeans_1d(distinct, counts, k)
    cluster_of = clustering.assign(frame.values)
    if frame.inverted:
        cluster_of = (clustering.k - 1) - cluster_of
    label_image = np.where(frame.valid, cluster_of, -1).astype(np.int8)
    return _named_segmentation(clustering, frame, method, label_image, (distinct, counts))


def segment_stored_histogram(frame: FrameInput, k: int, method: str) -> Segmentation | None:
    """The same result as :func:`segment_pixels`, from the stored pixels in one compiled
    call (``segment_frame_*`` in _ckmeans.c): a histogram of the stored values inside the
    reconstruction circle, padding dropped as a range of histogram values, the rescale
    applied to the histogram's few thousand values instead of to every pixel, the exact DP,
    and one label per pixel through thresholds in stored units. No modality-value image and
    no mask is built.

    None when it does not apply (no compiler, a modality LUT or non-integer or negative
    rescale, a pixel type without compiled code, k > 65): then use the per-pixel path.
    """
    lib = _native.load()
    kind = _native.FRAME_KINDS.get(frame.stored.dtype)
    if lib is None or kind is None or frame.rescale is None or frame.rescale[0] <= 0 or not 1 <= k <= 65:
        return None
    stored = np.ascontiguousarray(frame.stored)
    rows, cols = stored.shape
    spans, first, stop = _row_spans(frame.circle, rows, cols)
    pad_low, pad_high = frame.padding_range or (1, 0)  # (1, 0): no padding
    slope, intercept = frame.rescale
    labels_out = np.empty((rows, cols), dtype=np.int8)
    capacity = _HISTOGRAM_CAPACITY
    while True:
        # one buffer (each address costs microseconds to take): info (4 + k int64), stats
        # (2k + 1 float64), then the histogram's values and weights (capacity each)
        work = np.empty(4 + k + 2 * k + 1 + 2 * capacity)
        address = work.ctypes.data
        at_stats, at_values = 8 * (4 + k), 8 * (4 + k + 2 * k + 1)
        status = getattr(lib, f"segment_frame_{kind}")(
            stored.ctypes.data, rows, cols, first, stop, pad_low, pad_high, slope, intercept, k, int(frame.inverted),
            labels_out.ctypes.data, address + at_values, address + at_values + 8 * capacity, capacity,
            address, address + at_stats,
        )  # fmt: skip
        info = work[: 4 + k].view(np.int64)
        if status != 2:
            break
        capacity = int(info[0])  # more distinct values than room for them: once more, with room
    if status < 0:
        return None  # no memory: the per-pixel path needs less
    n_present, frame.padding_pixels, frame.outside_circle_pixels, k_used = info[:4].tolist()
    if status == 1:
        raise TriageError(NO_VALID_PIXEL)
    histogram = work[at_values // 8 :]
    distinct, counts = histogram[:n_present].copy(), histogram[capacity : capacity + n_present].copy()
    stats = work[at_stats // 8 : at_values // 8]
    # (the C code lays stats out for the k it used: centres, weights, SSE)
    clustering = clustering_from(distinct, info[4 : 4 + k_used], stats[: 2 * k_used + 1])
    return _named_segmentation(clustering, frame, method, labels_out, (distinct, counts))


# distinct stored values a frame usually has (12-bit CT: a few thousand); more costs a retry
_HISTOGRAM_CAPACITY = 8192


def _named_segmentation(
    clustering: Clustering,
    frame: FrameInput,
    method: str,
    label_image: np.ndarray,
    histogram: tuple[np.ndarray, np.ndarray],
) -> Segmentation:
    """Named classes (dark to bright as displayed) from a fitted clustering."""
    k = clustering.k
    order = list(range(k))[::-1] if frame.inverted else list(range(k))
    return Segmentation(
        labels=label_image,
        names=labels.class_names(frame.modality, k),
        centres=[float(clustering.centres[i]) for i in order],
        counts=[int(clustering.weights[i]) for i in order],
        method=method,
        ranges=[(float(clustering.lows[i]), float(clustering.highs[i])) for i in order],
        boundaries=[float(b) for b in clustering.boundaries()],
        sse=clustering.sse,
        histogram=histogram,
    )


def valid_histogram(frame: FrameInput, segmentation: Segmentation | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of the valid pixels, reused from the segmentation when it has one."""
    if segmentation is not None and segmentation.histogram is not None:
        return segmentation.histogram
    return intensity_histogram(frame.values[frame.valid])


def frame_input(ds: Dataset, frame: int = 0, stored: np.ndarray | None = None) -> FrameInput:
    """The pixels of one frame, with what says which of them are part of the image.

    ``stored`` is the frame's stored pixel array when the caller has already decoded it
    (then it is not decoded again).
    """
    if _tag("PixelData") not in ds:
        raise TriageError("object has no pixel data")
    if int(_value(ds, "SamplesPerPixel", 1)) != 1:
        raise TriageError("colour images are not triaged")
    n_frames = frame_count(ds)
    if not 0 <= frame < n_frames:
        raise TriageError(f"frame {frame} does not exist ({n_frames} frame(s))")
    if stored is None:
        try:
            stored = stored_pixels(ds, frame if n_frames > 1 else None)
        except Exception:
            raise TriageError("pixel data cannot be decoded") from None
    if stored.ndim != 2:
        raise TriageError("pixel data is not a 2-D greyscale frame")
    modality = str(_value(ds, "Modality", "OT")).upper()
    rescale = _integer_rescale(ds, stored)
    return FrameInput(
        stored=stored,
        modality=modality,
        units=labels.units(modality, str(_value(ds, "RescaleType", "")).upper() == "HU"),
        inverted=str(_value(ds, "PhotometricInterpretation", "")) == "MONOCHROME1",
        bits_stored=int(_value(ds, "BitsStored", 16)),
        signed=bool(int(_value(ds, "PixelRepresentation", 0))),
        rescale=rescale,
        padding_range=_padding_range(ds),
        circle=_reconstruction_circle(ds, stored.shape) if modality == "CT" else None,
        modality_values=None if rescale else modality_pixels(ds, frame if n_frames > 1 else None),
    )


@lru_cache(maxsize=64)
def _tag(keyword: str) -> BaseTag:
    return Tag(keyword)


def _value(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword, default)``, a few times faster: triage reads about fifteen
    attributes per frame, and by keyword that cost more than clustering the frame."""
    element = ds.get(_tag(keyword))  # by tag, ``get`` gives the element, not its value
    return default if element is None else element.value


def _integer_rescale(ds: Dataset, stored: np.ndarray) -> tuple[int, int] | None:
    """(slope, intercept) when the modality values are stored * slope + intercept in
    integers (exact, and lets the histogram use counting); None otherwise."""
    if _tag("ModalityLUTSequence") in ds or stored.dtype.kind not in "iu":
        return None
    slope = float(_value(ds, "RescaleSlope", 1) or 1)
    intercept = float(_value(ds, "RescaleIntercept", 0) or 0)
    if slope.is_integer() and intercept.is_integer():
        return int(slope), int(intercept)
    return None


def _padding_range(ds: Dataset) -> tuple[int, int] | None:
    """Stored values that are padding, inclusive (the rule of ``dicomio.padding_mask``)."""
    pad = _value(ds, "PixelPaddingValue")
    if pad is None:
        return None
    limit = _value(ds, "PixelPaddingRangeLimit")
    if limit is not None:
        low, high = sorted((int(pad), int(limit)))
        return low, high
    return int(pad), int(pad)


def _reconstruction_circle(ds: Dataset, shape: tuple[int, ...]) -> np.ndarray | None:
    """True inside the CT reconstruction circle (ReconstructionDiameter, centred on the
    image); None when the attributes are missing or the circle covers the whole image."""
    try:
        diameter = float(_value(ds, "ReconstructionDiameter"))
        row_mm, col_mm = (float(v) for v in _value(ds, "PixelSpacing"))
    except (AttributeError, TypeError, ValueError):
        return None
    if diameter <= 0 or row_mm <= 0 or col_mm <= 0:
        return None
    circle = (int(shape[0]), int(shape[1]), round(diameter / 2 / row_mm, 3), round(diameter / 2 / col_mm, 3))
    return circle if _circle_mask(*circle) is not None else None


@lru_cache(maxsize=8)
def _circle_mask(rows: int, cols: int, radius_rows: float, radius_cols: float) -> np.ndarray | None:
    y = (np.arange(rows) - (rows - 1) / 2.0)[:, None] / (radius_rows + 0.5)
    x = (np.arange(cols) - (cols - 1) / 2.0)[None, :] / (radius_cols + 0.5)
    inside = (y * y + x * x) <= 1.0
    if inside.all():
        return None
    inside.setflags(write=False)
    return inside


@lru_cache(maxsize=8)
def _row_spans(circle: tuple[int, int, float, float] | None, rows: int, cols: int) -> tuple[np.ndarray, int, int]:
    """Per row, the columns [first, stop) inside the reconstruction circle (an ellipse, so
    one run per row; every column when there is no circle): a read-only (2, rows) int32
    array and the addresses of its two rows for the compiled code (hold the array while
    they are in use)."""
    spans = np.empty((2, rows), dtype=np.int32)
    if circle is None:
        spans[0], spans[1] = 0, cols
    else:
        inside = _circle_mask(*circle)
        spans[0] = np.where(inside.any(axis=1), inside.argmax(axis=1), 0)
        spans[1] = spans[0] + inside.sum(axis=1)
    spans.setflags(write=False)
    address = spans.ctypes.data
    return spans, address, address + 4 * rows
