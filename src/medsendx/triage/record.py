"""The triage record: tissue classes, quality flags a technician can act on, and a
reading priority from documented rules.

The priority is a WORKFLOW score, not a diagnosis: it orders the reading list and tells
the technician to repeat an unusable scan while the patient is still there. It never says
anything about disease.

Priority rules (0-100, each rule adds its reason; the record keeps every reason):

====================================  ===========================================
rule                                  effect
====================================  ===========================================
routine, nothing noticed              10
any quality flag                      at least 90: "repeat now" (technician)
classes do not make physical sense    +20: "check the image by eye"
MG density >= 50 % (dense breast)     +30: read early, lower sensitivity
MG density >= 75 % (extremely dense)  +40 instead of +30
====================================  ===========================================

Quality flags (thresholds below, each a named constant):

- ``mostly_empty``: tissue covers under 1 % of the image (all padding or air).
- ``saturated``: a spike of pixels piles up at the bright end of the value range (as
  displayed: the lowest values for MONOCHROME1) — clipped or saturated intensities.
- ``metal`` (CT): pixels far above bone (> 2500 HU): metal streak artefacts.
- ``noisy``: noise (robust, from neighbouring pixels inside the middle class) far above
  what the modality usually shows.
- ``fov_truncated``: thick tissue runs across the edge of the field of view
  (reconstruction circle or image border): part of the body is cut off. In mammography
  the chest-wall side, where the breast always meets the edge, does not count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medsendx.triage.segmenter import FrameInput, Segmentation, valid_histogram

DISCLAIMER = (
    "Workflow priority from image-quality and tissue-composition rules. "
    "NOT a diagnosis: it says nothing about the presence or absence of disease."
)

ROUTINE_PRIORITY = 10
REPEAT_NOW_PRIORITY = 90
SANITY_PENALTY = 20
DENSE_BREAST_PERCENT = 50.0
EXTREMELY_DENSE_PERCENT = 75.0
DENSE_BREAST_RAISE = 30
EXTREMELY_DENSE_RAISE = 40

MIN_TISSUE_FRACTION = 0.01
CT_TISSUE_MIN_HU = -500.0
SATURATION_MIN_FRACTION = 0.002  # of valid pixels at the very top value
SATURATION_SPIKE_RATIO = 10.0  # top value holds this many times its neighbours' mean count
METAL_MIN_HU = 2500.0
METAL_MIN_PIXELS = 30
CT_NOISE_MAX_HU = 45.0  # real head CT here shows 2-13 HU (block s.d.), body CT 10-30
RELATIVE_NOISE_MAX = 0.25  # other modalities: noise over (brightest - darkest centre)
FOV_EDGE_TISSUE_MAX = 0.10  # share of the field-of-view edge that thick tissue may touch
FOV_TISSUE_EROSION = 4  # pixels; thinner objects (holder, table) are ignored at the edge
NOISE_BLOCK = 8  # pixels
CT_NOISE_BAND_HU = (-100.0, 150.0)  # block mean: soft tissue
CT_NOISE_PIXEL_HU = (-400.0, 500.0)  # every pixel of the block: neither air nor bone
MIN_NOISE_BLOCKS = 20
NOISE_QUANTILE = 0.25


@dataclass
class QualityFlag:
    code: str
    message: str  # our own words, with measured numbers only
    action: str = "repeat now"


@dataclass
class TissueClass:
    label: str
    centre: float
    fraction: float
    pixels: int
    low: float | None = None
    high: float | None = None


@dataclass
class FrameTriage:
    """Triage of one 2-D frame."""

    frame: int
    classes: list[TissueClass]
    valid_fraction: float
    tissue_fraction: float
    noise: float | None
    boundaries: list[float] | None
    sanity_problems: list[str]
    flags: list[QualityFlag]
    priority: int
    reasons: list[str]
    breast_density_percent: float | None = None


@dataclass
class TriageRecord:
    """Triage of one DICOM object (all its frames).

    ``priority`` and ``reasons`` summarise the frames (the highest priority wins);
    ``frames`` holds per-frame results. ``status`` is "skipped" (with ``skipped_reason``)
    for objects without a greyscale image, which are not triaged.
    """

    modality: str
    units: str
    method: str
    priority: int
    reasons: list[str]
    flags: list[QualityFlag] = field(default_factory=list)
    frames: list[FrameTriage] = field(default_factory=list)
    breast_density_percent: float | None = None
    status: str = "triaged"
    skipped_reason: str | None = None
    disclaimer: str = DISCLAIMER

    @property
    def sanity_ok(self) -> bool:
        return all(not f.sanity_problems for f in self.frames)

    @property
    def worst_frame(self) -> int:
        """The frame to show a person: the highest priority, the first one on ties."""
        if not self.frames:
            return 0
        return max(self.frames, key=lambda f: (f.priority, -f.frame)).frame

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (plain floats, ints, strings, lists)."""
        out = _clean(asdict(self))
        out["sanity_ok"] = self.sanity_ok
        return out


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return round(v, 4) if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# --------------------------------------------------------------------------- frames


def triage_frame(frame_index: int, frame: FrameInput, seg: Segmentation, sanity: list[str]) -> FrameTriage:
    """Quality flags and priority of one segmented frame."""
    fractions = seg.fractions
    classes = [
        TissueClass(
            label=name,
            centre=centre,
            fraction=fraction,
            pixels=count,
            low=seg.ranges[i][0] if seg.ranges else None,
            high=seg.ranges[i][1] if seg.ranges else None,
        )
        for i, (name, centre, fraction, count) in enumerate(zip(seg.names, seg.centres, fractions, seg.counts))
    ]
    tissue = _tissue_mask(frame, seg)
    image_pixels = frame.values.size
    n_valid = int(np.count_nonzero(frame.valid))
    tissue_fraction = float(np.count_nonzero(tissue)) / image_pixels
    noise = _noise(frame, seg)

    flags: list[QualityFlag] = []
    if tissue_fraction < MIN_TISSUE_FRACTION:
        flags.append(
            QualityFlag(
                "mostly_empty",
                f"tissue covers only {100 * tissue_fraction:.1f}% of the image; the rest is padding or air",
            )
        )
    flags += _saturation_flags(frame, seg, n_valid)
    if frame.modality == "CT":
        metal = int(np.count_nonzero(frame.values[frame.valid] > METAL_MIN_HU))
        if metal >= METAL_MIN_PIXELS:
            flags.append(
                QualityFlag(
                    "metal",
                    f"{metal} pixels above {METAL_MIN_HU:.0f} HU (far above bone): metal-like streak artefacts",
                )
            )
    if noise is not None:
        limit, unit = (CT_NOISE_MAX_HU, "HU") if frame.modality == "CT" else (RELATIVE_NOISE_MAX, "of the contrast")
        if noise > limit:
            shown = f"{noise:.0f} HU" if unit == "HU" else f"{100 * noise:.0f}% {unit}"
            flags.append(QualityFlag("noisy", f"noise {shown} is far above the usual (limit {limit:g} {unit})"))
    edge = _fov_edge_tissue(frame, tissue)
    if edge > FOV_EDGE_TISSUE_MAX:
        flags.append(
            QualityFlag(
                "fov_truncated",
                f"tissue touches {100 * edge:.0f}% of the field-of-view edge: part of the body is cut off",
            )
        )

    density = None
    if frame.modality == "MG" and len(seg.counts) == 3:
        breast = seg.counts[1] + seg.counts[2]
        density = 100.0 * seg.counts[2] / breast if breast else None
    priority, reasons = _priority(flags, sanity, density)
    return FrameTriage(
        frame=frame_index,
        classes=classes,
        valid_fraction=n_valid / image_pixels,
        tissue_fraction=tissue_fraction,
        noise=noise,
        boundaries=seg.boundaries,
        sanity_problems=sanity,
        flags=flags,
        priority=priority,
        reasons=reasons,
        breast_density_percent=density,
    )


def _priority(flags: list[QualityFlag], sanity: list[str], density: float | None) -> tuple[int, list[str]]:
    priority = ROUTINE_PRIORITY
    reasons: list[str] = []
    if flags:
        priority = max(priority, REPEAT_NOW_PRIORITY)
        reasons += [f"repeat now ({flag.code}): {flag.message}" for flag in flags]
    if sanity:
        priority += SANITY_PENALTY
        reasons += [f"check the image by eye: {problem}" for problem in sanity]
    if density is not None and density >= DENSE_BREAST_PERCENT:
        extreme = density >= EXTREMELY_DENSE_PERCENT
        priority += EXTREMELY_DENSE_RAISE if extreme else DENSE_BREAST_RAISE
        kind = "extremely dense" if extreme else "dense"
        reasons.append(
            f"{kind} breast tissue ({density:.0f}% density) lowers mammographic sensitivity: read early"
        )
    if not reasons:
        reasons.append("routine: no quality problem found")
    return min(priority, 100), reasons


def summarise(
    modality: str, units: str, method: str, frames: list[FrameTriage]
) -> TriageRecord:
    """One record for an object from its frames: the worst frame sets the priority."""
    worst = max(frames, key=lambda f: (f.priority, -f.frame))
    flags: dict[str, QualityFlag] = {}
    for f in frames:
        for flag in f.flags:
            flags.setdefault(flag.code, flag)
    densities = [f.breast_density_percent for f in frames if f.breast_density_percent is not None]
    reasons = list(worst.reasons)
    if len(frames) > 1:
        reasons = [f"frame {worst.frame + 1} of {len(frames)}: {r}" for r in reasons]
    return TriageRecord(
        modality=modality,
        units=units,
        method=method,
        priority=worst.priority,
        reasons=reasons,
        flags=list(flags.values()),
        frames=frames,
        breast_density_percent=float(np.mean(densities)) if densities else None,
    )


# --------------------------------------------------------------------------- measures


def _tissue_mask(frame: FrameInput, seg: Segmentation) -> np.ndarray:
    """Pixels that show the patient: above -500 HU on CT, above the darkest class elsewhere."""
    if frame.modality == "CT":
        return frame.valid & (frame.values > CT_TISSUE_MIN_HU)
    return seg.labels > 0


def _noise(frame: FrameInput, seg: Segmentation) -> float | None:
    """Noise: the lower-quartile standard deviation of the 8x8 pixel blocks that lie wholly in soft
    tissue (CT: -100 to +150 HU; elsewhere: the middle class). An automatic version of the
    ROI standard deviation a physicist measures; whole blocks keep edges out. In HU for
    CT; elsewhere relative to the contrast (brightest - darkest class centre)."""
    if len(seg.centres) < 3:
        return None
    b = NOISE_BLOCK
    rows, cols = (frame.values.shape[0] // b) * b, (frame.values.shape[1] // b) * b
    if frame.modality == "CT":
        # blocks of soft tissue: no air or bone pixel in them, mean within soft tissue;
        # the pixel limits are wide so that heavy noise does not disqualify its own blocks
        member = frame.valid & (frame.values > CT_NOISE_PIXEL_HU[0]) & (frame.values < CT_NOISE_PIXEL_HU[1])
    else:
        member = seg.labels == 1
    inside = member[:rows, :cols].reshape(rows // b, b, cols // b, b).all(axis=(1, 3))
    blocks = frame.values[:rows, :cols].reshape(rows // b, b, cols // b, b).transpose(0, 2, 1, 3)[inside]
    blocks = blocks.reshape(len(blocks), b * b).astype(np.float64)
    if frame.modality == "CT":
        means = blocks.mean(axis=1)
        blocks = blocks[(means >= CT_NOISE_BAND_HU[0]) & (means <= CT_NOISE_BAND_HU[1])]
    if len(blocks) < MIN_NOISE_BLOCKS:
        return None
    # Remove each block's plane (a smooth ramp at an edge is not noise), then take a low
    # quantile of the residual s.d.: homogeneous blocks show the noise, structure only adds.
    yy, xx = np.divmod(np.arange(b * b, dtype=np.float64), b)
    yy -= yy.mean()
    xx -= xx.mean()
    residual = blocks - blocks.mean(axis=1, keepdims=True)
    residual -= np.outer(residual @ xx / (xx @ xx), xx) + np.outer(residual @ yy / (yy @ yy), yy)
    sd = np.sqrt((residual * residual).sum(axis=1) / (b * b - 3))
    # np.partition, not np.quantile: the latter imports numpy.ma (35 ms of start-up)
    rank = int(NOISE_QUANTILE * (sd.size - 1))
    sigma = float(np.partition(sd, rank)[rank])
    if frame.modality == "CT":
        return sigma
    contrast = abs(seg.centres[-1] - seg.centres[0])
    return sigma / contrast if contrast > 0 else None


def _erode(mask: np.ndarray, steps: int, diagonal: bool = False) -> np.ndarray:
    """Binary erosion (outside the image counts as False), 4- or 8-neighbourhood."""
    out = mask.copy()
    for _ in range(steps):
        inner = np.zeros_like(out)
        core = out[1:-1, 1:-1] & out[:-2, 1:-1] & out[2:, 1:-1] & out[1:-1, :-2] & out[1:-1, 2:]
        if diagonal:
            core &= out[:-2, :-2] & out[:-2, 2:] & out[2:, :-2] & out[2:, 2:]
        inner[1:-1, 1:-1] = core
        out = inner
    return out


def _saturation_flags(frame: FrameInput, seg: Segmentation, n_valid: int) -> list[QualityFlag]:
    distinct, counts = valid_histogram(frame, seg)
    if distinct.size < 12 or n_valid == 0:
        return []
    # the bright end as displayed: MONOCHROME1 shows its lowest values brightest (and its
    # highest, e.g. a directly exposed mammography background, black)
    top = counts[0] if frame.inverted else counts[-1]
    neighbours = float(np.mean(counts[1:11] if frame.inverted else counts[-11:-1]))
    if top >= SATURATION_MIN_FRACTION * n_valid and top >= SATURATION_SPIKE_RATIO * max(neighbours, 1.0):
        return [
            QualityFlag(
                "saturated",
                f"{100 * top / n_valid:.1f}% of the pixels sit at the bright end "
                f"({top / max(neighbours, 1.0):.0f}x their neighbours): clipped or saturated intensities",
            )
        ]
    return []


def _fov_edge_tissue(frame: FrameInput, tissue: np.ndarray) -> float:
    """Share of the field-of-view edge (outermost ring of valid pixels) where thick tissue
    reaches it. Tissue is first eroded by a few pixels so that thin objects that cross the
    edge — the head holder, the table, cables — do not count; a cut-off body does."""
    valid = frame.valid
    ring = valid & ~_erode(valid, 1)
    core = _erode(tissue, FOV_TISSUE_EROSION)
    band = valid & ~_erode(valid, FOV_TISSUE_EROSION + 2)
    if frame.modality == "MG":
        # the breast always meets the chest wall, on the image side with more tissue
        depth = FOV_TISSUE_EROSION + 3
        chest_wall = slice(0, depth) if tissue[:, :depth].sum() >= tissue[:, -depth:].sum() else slice(-depth, None)
        ring[:, chest_wall] = False
        band[:, chest_wall] = False
    n_ring = int(np.count_nonzero(ring))
    if n_ring == 0:
        return 0.0
    return min(1.0, float(np.count_nonzero(core & band)) / (2 * n_ring))
