"""Reading the results a truck sends with each study: the TID 1500 Measurement Report
(SR), the Key Object Selection (KOS) and the Segmentation (SEG).

The SR is read by walking its content tree with pydicom, keyed on what the standard fixes
(value types, the TID 1500 measurement groups, DCM codes such as 111046 Percent
Fibroglandular Tissue and 111031 Breast Composition) and on concept names for our private
concepts (the workflow priority and its reasons, for which no standard concept exists).
That keeps the hub reading reports from any sender that follows TID 1500, not only ours.
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

PERCENT_FIBROGLANDULAR = ("111046", "DCM")
BREAST_COMPOSITION = ("111031", "DCM")
MEASUREMENT_GROUP = ("125007", "DCM")
TRACKING_ID = ("112039", "DCM")
# KOS document titles (CID 7010)
KOS_QUALITY_ISSUE = ("113010", "DCM")
KOS_REJECTED_FOR_QUALITY = ("113001", "DCM")
# Qualitative values that mean "nothing found" (an evaluation per flag may say so).
NEGATIVE_VALUES = {"no", "absent", "normal", "acceptable", "good", "none", "not present", "false"}


def _concept(item: Dataset) -> tuple[str, str, str]:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return "", "", ""
    code = seq[0]
    return (str(code.get("CodeValue", code.get("LongCodeValue", ""))), str(code.get("CodingSchemeDesignator", "")),
            str(code.get("CodeMeaning", "")))


def _code_value(item: Dataset) -> tuple[str, str, str]:
    seq = item.get("ConceptCodeSequence")
    if not seq:
        return "", "", ""
    code = seq[0]
    return (str(code.get("CodeValue", code.get("LongCodeValue", ""))), str(code.get("CodingSchemeDesignator", "")),
            str(code.get("CodeMeaning", "")))


def _walk(items: Any, group: dict[str, Any] | None, groups: list[dict[str, Any]], loose: dict[str, Any]) -> None:
    for item in items or []:
        value_type = str(item.get("ValueType", ""))
        code, scheme, meaning = _concept(item)
        target = group if group is not None else loose
        if value_type == "CONTAINER" and (code, scheme) == MEASUREMENT_GROUP:
            new = {"tracking_id": "", "images": [], "measurements": [], "evaluations": [], "texts": []}
            groups.append(new)
            _walk(item.get("ContentSequence"), new, groups, loose)
            continue
        if value_type == "NUM":
            measured = item.get("MeasuredValueSequence")
            if measured:
                mv = measured[0]
                units = mv.get("MeasurementUnitsCodeSequence")
                unit = str(units[0].get("CodeValue", "")) if units else ""
                try:
                    value = float(mv.NumericValue)
                except (AttributeError, TypeError, ValueError):
                    value = None
                if value is not None:
                    target["measurements"].append(
                        {"name": meaning, "code": code, "scheme": scheme, "value": value, "unit": unit}
                    )
        elif value_type == "CODE":
            v_code, v_scheme, v_meaning = _code_value(item)
            target["evaluations"].append(
                {"name": meaning, "code": code, "scheme": scheme, "value": v_meaning, "value_code": v_code,
                 "value_scheme": v_scheme}
            )
        elif value_type == "TEXT":
            text = str(item.get("TextValue", ""))
            if (code, scheme) == TRACKING_ID and group is not None:
                group["tracking_id"] = text
            else:
                target["texts"].append({"name": meaning, "value": text})
        elif value_type == "IMAGE" and group is not None:
            for ref in item.get("ReferencedSOPSequence") or []:
                uid = str(ref.get("ReferencedSOPInstanceUID", ""))
                if uid and uid not in group["images"]:
                    group["images"].append(uid)
        _walk(item.get("ContentSequence"), group, groups, loose)


def _is_priority(name: str) -> bool:
    return "priority" in name.lower()


def _is_reason(name: str) -> bool:
    return "reason" in name.lower()


def _is_quality(name: str) -> bool:
    lowered = name.lower()
    return "quality" in lowered or "repeat" in lowered


def read_triage_report(ds: Dataset) -> dict[str, Any]:
    """A TID 1500 Measurement Report -> the study's triage summary.

    Returns ``priority`` (highest over the images, or None), ``reasons``, ``flags``
    (quality findings, "name: value"), ``breast_density_percent`` (the highest Percent
    Fibroglandular Tissue), ``breast_composition``, ``groups`` (per image: referenced SOP
    Instance UIDs, measurements, evaluations, its own priority) and ``top_image`` (the SOP
    Instance UID of the highest-priority image).
    """
    groups: list[dict[str, Any]] = []
    loose: dict[str, Any] = {"measurements": [], "evaluations": [], "texts": []}
    _walk(ds.get("ContentSequence"), None, groups, loose)
    reasons_by_group: list[tuple[float | None, list[str]]] = []
    flags: list[str] = []
    priority: float | None = None
    density: float | None = None
    composition: str | None = None
    top_image: str | None = None
    top_priority = -1.0
    for group in groups + [loose]:
        group_priority = None
        reasons: list[str] = []
        for m in group["measurements"]:
            if _is_priority(m["name"]):
                group_priority = m["value"] if group_priority is None else max(group_priority, m["value"])
            if (m["code"], m["scheme"]) == PERCENT_FIBROGLANDULAR or "fibroglandular" in m["name"].lower():
                density = m["value"] if density is None else max(density, m["value"])
        for e in group["evaluations"]:
            if (e["code"], e["scheme"]) == BREAST_COMPOSITION or "breast composition" in e["name"].lower():
                composition = e["value"]
            elif _is_reason(e["name"]):
                reasons.append(e["value"])
            elif _is_quality(e["name"]) and e["value"].strip().lower() not in NEGATIVE_VALUES:
                flags.append(f"{e['name']}: {e['value']}")
        for t in group["texts"]:
            if _is_reason(t["name"]):
                reasons.append(t["value"])
            elif _is_quality(t["name"]):
                flags.append(f"{t['name']}: {t['value']}")
        group["priority"] = group_priority
        reasons_by_group.append((group_priority, reasons))
        if group_priority is not None:
            priority = group_priority if priority is None else max(priority, group_priority)
            if group_priority > top_priority and group.get("images"):
                top_priority, top_image = group_priority, group["images"][0]
    # The study's reasons are those of its highest-priority images (a routine slice's
    # "nothing found" is not a reason to read a study with a metal artefact first).
    top_reasons = [r for p, rs in reasons_by_group if p is not None and p == priority for r in rs]
    reasons = top_reasons or [r for _p, rs in reasons_by_group for r in rs]
    if top_image is None:
        top_image = next((g["images"][0] for g in groups if g["images"]), None)
    return {
        "priority": int(round(priority)) if priority is not None else None,
        "reasons": _unique(reasons),
        "flags": _unique(flags),
        "breast_density_percent": round(density, 1) if density is not None else None,
        "breast_composition": composition,
        "top_image": top_image,
        "groups": [g for g in groups],
        "title": _concept_meaning(ds),
    }


def _concept_meaning(ds: Dataset) -> str:
    return _concept(ds)[2]


def _unique(values: list[str]) -> list[str]:
    seen: list[str] = []
    for v in values:
        if v and v not in seen:
            seen.append(v)
    return seen


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
    return {"title": meaning, "description": description, "images": images, "quality_issue": quality_issue}


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
