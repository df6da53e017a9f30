"""Reading the results a truck sends with each study: the TID 1500 Measurement Report
(SR), the Key Object Selection (KOS) and the Segmentation (SEG).

The SR is read by the gateway's own reader (medsendx.triage.dicom_results), so the two
ends cannot drift apart; the KOS and SEG readers here need only what the standard fixes
(document title codes, per-frame functional groups).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

SR_MODALITY = "SR"
KOS_MODALITY = "KO"
SEG_MODALITY = "SEG"
DERIVED_MODALITIES = (SR_MODALITY, KOS_MODALITY, SEG_MODALITY)

# KOS document titles (CID 7010)
KOS_QUALITY_ISSUE = ("113010", "DCM")
KOS_REJECTED_FOR_QUALITY = ("113001", "DCM")


def _concept(item: Dataset) -> tuple[str, str, str]:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return "", "", ""
    code = seq[0]
    return (str(code.get("CodeValue", code.get("LongCodeValue", ""))), str(code.get("CodingSchemeDesignator", "")),
            str(code.get("CodeMeaning", "")))


def summarize_report(ds: Dataset) -> dict[str, Any]:
    """A truck's TID 1500 report -> the study's worklist values, read with the gateway's own
    reader (medsendx.triage.dicom_results.read_triage_report, one reader for both ends).

    ``priority`` (highest over the images), ``reasons`` (of the highest-priority image),
    ``flags`` ("image quality: <flag>"), ``breast_density_percent``, ``breast_composition``,
    ``top_image`` (its SOP Instance UID) and ``images`` (per image, as the reader gives
    them). Raises ValueError for a structured report that is not a MedSendX triage report.
    """
    from medsendx.triage.dicom_results import read_triage_report

    info = read_triage_report(ds)
    images = info["images"]
    top = max(images, key=lambda i: i["priority"] if i["priority"] is not None else -1) if images else None
    composition = next((i["breast_composition"] for i in ([top] if top else []) + images if i.get("breast_composition")), None)
    density = info.get("breast_density_percent")
    return {
        "priority": info["priority"],
        "reasons": list(info["reasons"]),
        "flags": [f"image quality: {f}" for f in info["flags"]],
        "breast_density_percent": round(float(density), 1) if density is not None else None,
        "breast_composition": composition,
        "top_image": top["sop_instance_uid"] if top else None,
        "images": images,
        "disclaimer": info.get("disclaimer", ""),
        "predecessors": list(info.get("predecessors", [])),  # the reports this one replaces
    }


def read_key_objects(ds: Dataset) -> dict[str, Any]:
    """A Key Object Selection -> its title, description and the images it points at."""
    code, scheme, meaning = _concept(ds)
    description = ""
    images: list[str] = []
    for item in ds.get("ContentSequence") or []:
        if str(item.get("ValueType", "")) == "TEXT":
            description = description or str(item.get("TextValue", ""))
        for ref in item.get("ReferencedSOPSequence") or []:
            uid = str(ref.get("ReferencedSOPInstanceUID", ""))
            if uid:
                images.append(uid)
    quality_issue = (code, scheme) in (KOS_QUALITY_ISSUE, KOS_REJECTED_FOR_QUALITY) or "quality" in meaning.lower()
    return {"title": meaning, "description": description, "images": images, "quality_issue": quality_issue,
            "instance_number": int(ds.get("InstanceNumber") or 0)}  # a study released in parts: the latest is the highest


@dataclass
class SegmentMask:
    number: int
    label: str
    mask: np.ndarray  # bool, rows x columns


def segments_for_image(seg: Dataset, sop_instance_uid: str) -> list[SegmentMask]:
    """The masks a BINARY (or FRACTIONAL, thresholded at half) Segmentation holds for one
    source image, read from its per-frame functional groups."""
    labels = {int(s.SegmentNumber): str(s.get("SegmentLabel", f"segment {s.SegmentNumber}"))
              for s in seg.get("SegmentSequence") or []}
    frames = seg.get("PerFrameFunctionalGroupsSequence") or []
    wanted: list[tuple[int, int]] = []
    for index, fg in enumerate(frames):
        sources = []
        for derivation in fg.get("DerivationImageSequence") or []:
            sources.extend(str(s.get("ReferencedSOPInstanceUID", "")) for s in derivation.get("SourceImageSequence") or [])
        if sop_instance_uid not in sources:
            continue
        ident = fg.get("SegmentIdentificationSequence")
        if ident:
            wanted.append((index, int(ident[0].ReferencedSegmentNumber)))
    if not wanted:
        return []
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    fractional = str(seg.get("SegmentationType", "BINARY")) == "FRACTIONAL"
    top = float(seg.get("MaximumFractionalValue", 255)) if fractional else 1.0
    out = []
    for index, number in wanted:
        frame = pixels[index]
        mask = frame >= top / 2 if fractional else frame > 0
        out.append(SegmentMask(number, labels.get(number, f"segment {number}"), mask))
    return out
