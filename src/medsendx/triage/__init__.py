"""Clinical triage on the device: tissue classes, quality flags, reading priority.

Public API (used by the gateway pipeline and fleet analytics)::

    from medsendx.triage import triage_dataset, render_overlay
    record = triage_dataset(ds)          # TriageRecord: .priority (0-100), .reasons, .to_dict()
    render_overlay(ds, record, "highlighted_scan.png")

    series = triage_series(paths)        # SeriesTriage: per-slice records + summary

The priority is a workflow score (read first / repeat now), NOT a diagnosis; see
``medsendx.triage.record`` for the rules.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from medsendx.dicomio import DicomReadError, frame_count, read_dataset
from medsendx.triage import labels
from medsendx.triage.record import DISCLAIMER, FrameTriage, QualityFlag, TriageRecord, summarise, triage_frame
from medsendx.triage.segmenter import (
    FrameInput,
    KMeansSegmenter,
    Segmentation,
    Segmenter,
    TriageError,
    frame_input,
)

__all__ = [
    "DISCLAIMER",
    "FrameInput",
    "KMeansSegmenter",
    "QualityFlag",
    "Segmentation",
    "Segmenter",
    "SeriesTriage",
    "TriageError",
    "TriageRecord",
    "render_overlay",
    "segment_frame",
    "segmenter_for",
    "triage_dataset",
    "triage_series",
]

DEFAULT_SEGMENTER: Segmenter = KMeansSegmenter(k=3)
_LOADED: dict[str, Segmenter] = {}


def segmenter_for(settings: Any) -> Segmenter:
    """The segmenter the settings ask for: ``[triage] model_path`` (an ONNX model, with
    exact k-means as its fallback; see ``onnx_segmenter``) or the exact k-means. Loaded
    once per process and model."""
    path = str(getattr(getattr(settings, "triage", None), "model_path", "") or "")
    if not path:
        return DEFAULT_SEGMENTER
    if path not in _LOADED:
        from medsendx.triage.onnx_segmenter import load_segmenter

        _LOADED[path] = load_segmenter(path)
    return _LOADED[path]


def segment_frame(ds: Dataset, frame: int = 0, segmenter: Segmenter | None = None) -> tuple[FrameInput, Segmentation]:
    """Pixels and segmentation of one frame (raises :class:`TriageError`)."""
    pixels = frame_input(ds, frame)
    return pixels, (segmenter or DEFAULT_SEGMENTER).segment(pixels)


def triage_dataset(
    ds: Dataset, segmenter: Segmenter | None = None, label_maps: list[Any] | None = None
) -> TriageRecord:
    """Triage every frame of one DICOM object.

    ``label_maps``, when given, receives each frame's label image (int8, -1 where not part
    of the image), for the DICOM Segmentation (``medsendx.triage.dicom_results``).
    Objects without a greyscale image (no pixel data, colour) come back with
    ``status == "skipped"`` and priority 0; undecodable pixel data raises
    :class:`TriageError` (a one-line reason in our own words).
    """
    try:
        return _triage_dataset(ds, segmenter or DEFAULT_SEGMENTER, label_maps)
    except TriageError:
        raise
    except DicomReadError as exc:  # (our own words)
        raise TriageError(str(exc)) from None
    except Exception as exc:  # a damaged header value (a rescale slope that is no number...)
        raise TriageError(f"damaged header values, cannot be triaged ({type(exc).__name__})") from None


def _triage_dataset(ds: Dataset, segmenter: Segmenter, label_maps: list[Any] | None) -> TriageRecord:
    modality = str(ds.get("Modality", "OT")).upper()
    if "PixelData" not in ds or int(ds.get("SamplesPerPixel", 1)) != 1:
        reason = "object has no pixel data" if "PixelData" not in ds else "colour images are not triaged"
        return TriageRecord(
            modality=modality,
            units="",
            method=segmenter.name,
            priority=0,
            reasons=[f"not triaged: {reason}"],
            status="skipped",
            skipped_reason=reason,
        )
    frames: list[FrameTriage] = []
    units = ""
    methods: list[str] = []
    for index in range(frame_count(ds)):
        pixels, seg = segment_frame(ds, index, segmenter)
        if seg.method not in methods:
            methods.append(seg.method)  # a learned model's fallback names itself
        if label_maps is not None:
            label_maps.append(seg.labels)
        units = pixels.units
        sanity = labels.sanity_problems(pixels.modality, seg.centres, seg.fractions)
        frames.append(triage_frame(index, pixels, seg, sanity))
    return summarise(modality, units, "+".join(methods) or segmenter.name, frames)


@dataclass
class SeriesTriage:
    """Per-slice records of a series (a folder of files) and a summary.

    ``errors`` lists files that could not be read or triaged, with our own reason.
    """

    slices: list[tuple[str, TriageRecord]]
    errors: list[tuple[str, str]] = field(default_factory=list)
    sources: dict[str, Path] = field(default_factory=dict)  # name -> file, for rendering

    @property
    def triaged(self) -> list[tuple[str, TriageRecord]]:
        return [(name, r) for name, r in self.slices if r.status == "triaged"]

    @property
    def priority(self) -> int:
        return max((r.priority for _, r in self.slices), default=0)

    @property
    def worst(self) -> tuple[str, TriageRecord] | None:
        """The slice to show: highest priority; on ties the one nearest the middle."""
        triaged = self.triaged
        if not triaged:
            return None
        middle = (len(triaged) - 1) / 2
        best = max(range(len(triaged)), key=lambda i: (triaged[i][1].priority, -abs(i - middle)))
        return triaged[best]

    def summary(self) -> dict[str, Any]:
        triaged = self.triaged
        flagged: dict[str, int] = {}
        for _, record in triaged:
            for flag in record.flags:
                flagged[flag.code] = flagged.get(flag.code, 0) + 1
        worst = self.worst
        reasons = [f"{worst[0]}: {r}" for r in worst[1].reasons] if worst else []
        densities = [r.breast_density_percent for _, r in triaged if r.breast_density_percent is not None]
        mean_fractions: dict[str, float] = {}
        for _, record in triaged:
            for frame in record.frames:
                for cls in frame.classes:
                    mean_fractions[cls.label] = mean_fractions.get(cls.label, 0.0) + cls.fraction
        n_frames = sum(len(r.frames) for _, r in triaged) or 1
        return {
            "objects": len(self.slices) + len(self.errors),
            "triaged": len(triaged),
            "skipped": len(self.slices) - len(triaged),
            "errors": len(self.errors),
            "priority": self.priority,
            "reasons": reasons,
            "slices_with_flag": flagged,
            "slices_failing_sanity": sum(1 for _, r in triaged if not r.sanity_ok),
            "mean_class_fractions": {k: round(v / n_frames, 4) for k, v in mean_fractions.items()},
            "breast_density_percent": round(sum(densities) / len(densities), 2) if densities else None,
            "disclaimer": DISCLAIMER,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "slices": [{"file": name, **record.to_dict()} for name, record in self.slices],
            "errors": [{"file": name, "reason": reason} for name, reason in self.errors],
        }


def triage_series(paths: Iterable[str | os.PathLike[str]], segmenter: Segmenter | None = None) -> SeriesTriage:
    """Triage each file; unreadable files are listed in ``errors`` and the rest go on."""
    series = SeriesTriage(slices=[])
    for path in paths:
        name = Path(path).name
        if name in series.sources:  # same file name in two sub-folders
            name = str(path)
        try:
            record = triage_dataset(read_dataset(path), segmenter)
        except (DicomReadError, TriageError) as exc:
            series.errors.append((name, str(exc)))
            continue
        series.slices.append((name, record))
        series.sources[name] = Path(path)
    return series


def render_overlay(
    ds: Dataset,
    record: TriageRecord,
    out_png: str | os.PathLike[str],
    frame: int | None = None,
    segmenter: Segmenter | None = None,
) -> Path:
    """Write the overlay PNG (image, segmentation with legend, histogram) for one frame
    (default: the record's highest-priority frame). Returns the path."""
    from medsendx.triage.overlay import render

    index = record.worst_frame if frame is None else frame
    pixels, seg = segment_frame(ds, index, segmenter)
    frame_record = next((f for f in record.frames if f.frame == index), None)
    return render(ds, index, pixels, seg, record, frame_record, Path(out_png))
