"""Triage results as standard DICOM objects shipped with each study: a Segmentation (SEG)
per series, a TID 1500 Measurement Report (Comprehensive SR) and a Key Object Selection
(KOS) per study. Built with highdicom FROM the de-identified objects, so they carry the
same pseudonymous patient and study identity and no original identifier.

Builders (used by the pipeline's study step, ``medsendx send`` and ``segment --dicom``)::

    segs = build_segmentations(objects, station=...)    # one series (one per image for MG)
    sr = build_report(objects, station=...)              # one study
    kos = build_key_objects(objects, station=...)        # one study
    # objects: TriagedObject(header of the de-identified object, TriageRecord.to_dict(), label maps)

and the reader for HQ (the hub's worklist)::

    info = read_triage_report(pydicom.dcmread("sr.dcm"))
    info["priority"], info["reasons"], info["flags"], info["breast_density_percent"]
    info["images"][i] -> {"sop_instance_uid", "priority", "reasons", "reason_codes", "flags",
                          "breast_density_percent", "breast_composition", "classes": [...]}

UIDs are derived (keyed hash) from the de-identified study / series / SOP Instance UIDs
and the segmentation method, so building again from the same images gives the same
objects and the outbox, which refuses a SOP Instance UID it holds, sends each once. A study
that grows (more images later) gets a new SR/KOS/SEG (other images, other UID).
Dates and times are the de-identified source's (ContentDate <- the image's ContentDate,
else SeriesDate, else StudyDate, else the de-identifier's dummy 19000101): the builder's
clock would reveal the real, unshifted day of the examination.

SEG content
-----------
BINARY, one segment per intensity class (label maps from the segmenter; -1 = not part of
the image = in no segment), empty frames omitted, JPEG 2000 lossless when compression is
on. One SEG per series in a patient coordinate system (CT, MR), one per image otherwise
(MG, DX: highdicom stacks several sources only in a coordinate system). Categories and types (SNOMED CT):

==============  ====================  ===========================  ====================
modality        label                 category                     type
==============  ====================  ===========================  ====================
CT              Air                   105590001 Substance          15158005 Air
CT              Soft tissue           85756007 Tissue              87784001 Soft tissue
CT              Bone                  85756007 Tissue              272673000 Bone
MG              Background            105590001 Substance          15158005 Air
MG              Fatty                 85756007 Tissue              55603005 Adipose tissue
MG              Dense                 85756007 Tissue              85756007 Tissue (+ label)
other           Low/Medium/High sig.  85756007 Tissue              85756007 Tissue (+ label)
==============  ====================  ===========================  ====================

MG segments carry the anatomic region 76752008 Breast. Algorithm type AUTOMATIC; family
DCM 123107 Cluster Analysis for the k-means, DCM 123110 Artificial Intelligence when a
learned (ONNX) model made the labels. SeriesDescription "MedSendX triage: tissue classes".

SR content (TID 1500, "Imaging Measurement Report")
--------------------------------------------------
Private scheme ``99MEDSENDX`` (declared in CodingSchemeIdentificationSequence): there is
no standard concept for a workflow priority or its reasons; the report says so in a TEXT
item at the root, next to the disclaimer (NOT a diagnosis). Per triaged image (one frame of
a multi-frame object: its Referenced Frame Number) the Imaging Measurements container holds:

- one image group (TID 1501) with finding type ``99MEDSENDX TRIAGE`` "Workflow triage",
  tracking identifier "triage image <InstanceNumber>[ frame <n>]", the source image, the
  algorithm (name = the segmentation method), and:
    * measurement ``99MEDSENDX PRIORITY`` "Workflow priority (0-100)", unit {score}
    * MG: measurement DCM 111046 Percent Fibroglandular Tissue (%), and qualitative
      evaluation DCM 111006 Breast composition = SCT 129716005 almost entirely fat (< 25 %),
      129717001 scattered fibroglandular densities (< 50 %), 129718006 heterogeneously dense
      (< 75 %), 129719003 extremely dense (>= 75 %) -- from the percent, not a reading
    * per quality flag: qualitative evaluation DCM 111101 Image Quality =
      ``99MEDSENDX <FLAG>`` (MOSTLY-EMPTY, SATURATED, METAL, NOISY, FOV-TRUNCATED)
    * per priority reason: qualitative evaluation ``99MEDSENDX REASON`` =
      ``99MEDSENDX`` ROUTINE / REPEAT-NOW / CHECK-BY-EYE / DENSE-BREAST / EXTREMELY-DENSE,
      and the reason's full wording (our words, measured numbers) as TEXT DCM 121106 Comment
- one class group per intensity class: finding type = the class's SNOMED type (as in the
  SEG), tracking identifier "class <label> image <n>..." (the label is read from it),
  measurements SCT 373098007 Mean (the class centre; [hnsf'U] for CT, [arb'U] otherwise)
  and ``99MEDSENDX CLASS-SHARE`` "Class share of valid pixels" (%).

SeriesDescription "MedSendX triage report (not a diagnosis)"; StationName = the station.

KOS
---
Document title DCM 113000 "Of Interest" referencing the highest-priority images (at most
``triage.key_images``), or DCM 113010 "Quality Issue" when one of them carries a quality
flag (repeat advised). Never a rejection title (113001/113037/113038/113039: a PACS hides
what they reference). Key Object Description: "Workflow priority N/100: <first reason>".
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

log = logging.getLogger("medsendx.triage.results")

PRIVATE_SCHEME = "99MEDSENDX"
PRIVATE_SCHEME_NAME = "MedSendX workflow triage (private: no standard concept exists)"
MANUFACTURER = "MedSendX"
MODEL = "MedSendX triage"
SEG_SERIES_NUMBER, SR_SERIES_NUMBER, KOS_SERIES_NUMBER = 9901, 9902, 9903
SEG_DESCRIPTION = "MedSendX triage: tissue classes"
SR_DESCRIPTION = "MedSendX triage report (not a diagnosis)"
KOS_DESCRIPTION = "MedSendX triage key images"
DUMMY_DATE, DUMMY_TIME = "19000101", "000000"  # the de-identifier's dummies for Type 1 dates

SCHEME_TEXT = (
    "The workflow priority (0-100) and its reasons are coded in the private scheme "
    f"{PRIVATE_SCHEME}: DICOM and SNOMED CT have no standard concept for them."
)

PRIORITY = Code("PRIORITY", PRIVATE_SCHEME, "Workflow priority (0-100)")
REASON = Code("REASON", PRIVATE_SCHEME, "Workflow priority reason")
TRIAGE_FINDING = Code("TRIAGE", PRIVATE_SCHEME, "Workflow triage")
CLASS_SHARE = Code("CLASS-SHARE", PRIVATE_SCHEME, "Class share of valid pixels")
REASON_CODES = {
    "ROUTINE": "Routine: no quality problem found",
    "REPEAT-NOW": "Repeat now: image-quality flag",
    "CHECK-BY-EYE": "Check the image by eye: classes not physical",
    "DENSE-BREAST": "Dense breast tissue: read early",
    "EXTREMELY-DENSE": "Extremely dense breast tissue: read early",
}
FLAG_CODES = {
    "mostly_empty": ("MOSTLY-EMPTY", "Mostly empty: repeat now"),
    "saturated": ("SATURATED", "Saturated intensities: repeat now"),
    "metal": ("METAL", "Metal-like streak artefacts: repeat now"),
    "noisy": ("NOISY", "Noise far above the usual: repeat now"),
    "fov_truncated": ("FOV-TRUNCATED", "Field of view cuts the body off: repeat now"),
}
_FLAG_OF_CODE = {code: flag for flag, (code, _) in FLAG_CODES.items()}

SCT_TISSUE = Code("85756007", "SCT", "Tissue")
SCT_SUBSTANCE = Code("105590001", "SCT", "Substance")
SCT_BREAST = Code("76752008", "SCT", "Breast")
CLASS_CODES: dict[str, tuple[Code, Code]] = {
    "Air": (SCT_SUBSTANCE, Code("15158005", "SCT", "Air")),
    "Soft tissue": (SCT_TISSUE, Code("87784001", "SCT", "Soft tissue")),
    "Bone": (SCT_TISSUE, Code("272673000", "SCT", "Bone")),
    "Background": (SCT_SUBSTANCE, Code("15158005", "SCT", "Air")),
    "Fatty": (SCT_TISSUE, Code("55603005", "SCT", "Adipose tissue")),
    "Dense": (SCT_TISSUE, SCT_TISSUE),
}
BREAST_COMPOSITION = [  # (upper limit of percent density, code)
    (25.0, Code("129716005", "SCT", "Almost entirely fat")),
    (50.0, Code("129717001", "SCT", "Scattered fibroglandular densities")),
    (75.0, Code("129718006", "SCT", "Heterogeneously dense")),
    (float("inf"), Code("129719003", "SCT", "Extremely dense")),
]
UNIT_HU = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
UNIT_ARBITRARY = Code("[arb'U]", "UCUM", "arbitrary unit")
UNIT_PERCENT = Code("%", "UCUM", "percent")
UNIT_SCORE = Code("{score}", "UCUM", "score")
COMMENT = Code("121106", "DCM", "Comment")
OF_INTEREST = Code("113000", "DCM", "Of Interest")
QUALITY_ISSUE = Code("113010", "DCM", "Quality Issue")
# Titles a PACS acts on by hiding the referenced instances: never used here.
REJECTION_TITLES = frozenset({"113001", "113037", "113038", "113039"})


# --------------------------------------------------------------------------- inputs


@dataclass
class TriagedObject:
    """What the builders need of one de-identified object: its header (no pixel data),
    the triage record (``TriageRecord.to_dict()``) and the label map of each frame."""

    header: Dataset
    record: dict[str, Any]
    labels: np.ndarray | None = None  # (frames, rows, cols) int8, -1 = not part of the image

    @property
    def sop_instance_uid(self) -> str:
        return str(self.header.SOPInstanceUID)

    @property
    def triaged(self) -> bool:
        return self.record.get("status") == "triaged" and bool(self.record.get("frames"))


def header_of(ds: Dataset) -> Dataset:
    """The object without its pixel data (what a SEG/SR/KOS reference needs), little endian."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    implicit = syntax == ImplicitVRLittleEndian
    if syntax is not None and (implicit or syntax.is_little_endian):
        # a tag-range slice keeps the elements as read (no value is decoded): ten times
        # cheaper than copying element by element, and written back byte for byte
        header = ds[:0x7FE00000]
    else:
        header = Dataset()
        for element in ds:
            if element.tag.group != 0x7FE0:
                header.add(element)
        implicit = False
    # Type 2 attributes the de-identifier may have removed: present and empty, as the
    # SEG/SR/KOS modules require (empty says nothing about the patient)
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in header:
            setattr(header, keyword, "")
    header.file_meta = FileMetaDataset()
    header.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    header.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "")
    header.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "")
    return header


_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                        "StudyDate", "StudyTime", "ReferringPhysicianName")


def head_bytes(ds: Dataset, data: bytes | None) -> bytes | None:
    """The bytes of the file ``ds`` was read from up to its Pixel Data element: a complete
    file without pixels (None when that cannot be told: then the header is encoded)."""
    if data is None:
        return None
    try:
        element = ds.get_item(0x7FE00010)
        tell = getattr(element, "value_tell", None)
        if tell is None or ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian:
            return None
        start = int(tell) - 12  # explicit VR OB/OW: tag, VR, 2 reserved bytes, 4-byte length
        if start <= 132 or data[start:start + 4] != b"\xe0\x7f\x10\x00":
            return None
        return data[:start]
    except Exception:
        return None


def save_triaged(path: Path, obj: TriagedObject, head: bytes | None = None) -> None:
    """One file per object (atomic, not fsynced: it can be recomputed from the object).
    ``head``: the object's file bytes before its pixel data (:func:`head_bytes`)."""
    import pydicom

    if head is None:
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, obj.header, enforce_file_format=False)
        head = buffer.getvalue()
    arrays: dict[str, Any] = {
        "header": np.frombuffer(head, dtype=np.uint8),
        "record": np.frombuffer(json.dumps(obj.record).encode(), dtype=np.uint8),
    }
    if obj.labels is not None:
        arrays["labels"] = obj.labels
    out = io.BytesIO()
    np.savez(out, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    # zlib level 1: a label map compresses 20x at a tenth of numpy's default level's cost
    tmp.write_bytes(zlib.compress(out.getvalue(), 1))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def load_triaged(path: Path) -> TriagedObject:
    import pydicom

    with np.load(io.BytesIO(zlib.decompress(path.read_bytes())), allow_pickle=False) as data:
        header = pydicom.dcmread(io.BytesIO(data["header"].tobytes()), force=True)
        if "PixelData" in header:  # never expected; the builders reference, never copy, pixels
            del header.PixelData
        if header.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian).is_compressed:
            header.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # no pixels left to be compressed
        record = json.loads(data["record"].tobytes())
        labels = data["labels"] if "labels" in data.files else None
    return TriagedObject(header, record, labels)


# --------------------------------------------------------------------------- helpers


def derived_uid(*parts: str) -> str:
    """A UID from a hash of ``parts`` (de-identified UIDs, kinds): the same inputs give the
    same UID on every run and machine. 2.25 form (ISO/IEC 9834-8 UUID-derived)."""
    digest = hashlib.sha256("\x1f".join(("medsendx-triage-results", *parts)).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big') >> 1}"


def _content_key(objects: Sequence[TriagedObject]) -> str:
    uids = sorted(o.sop_instance_uid for o in objects)
    methods = sorted({str(o.record.get("method", "")) for o in objects})
    return hashlib.sha256("\n".join(uids + methods).encode()).hexdigest()


def _source_date_time(ds: Dataset) -> tuple[str, str]:
    for date_kw, time_kw in (("ContentDate", "ContentTime"), ("SeriesDate", "SeriesTime"), ("StudyDate", "StudyTime")):
        date = str(ds.get(date_kw, "") or "")
        if date:
            return date, str(ds.get(time_kw, "") or DUMMY_TIME)
    return DUMMY_DATE, DUMMY_TIME


def _set_dates(out: Dataset, source: Dataset) -> None:
    """Dates and times from the de-identified source, never the builder's clock."""
    date, time_ = _source_date_time(source)
    for kw in ("ContentDate", "SeriesDate", "InstanceCreationDate"):
        if kw in out or kw == "ContentDate":
            setattr(out, kw, date)
    for kw in ("ContentTime", "SeriesTime", "InstanceCreationTime"):
        if kw in out or kw == "ContentTime":
            setattr(out, kw, time_)
    for kw in ("StudyDate", "StudyTime"):
        if kw in source:
            setattr(out, kw, source.get(kw))


# The source's de-identification record: the results hold nothing but values taken from
# the de-identified source and our own text, so its attestation covers them too.
_DEID_RECORD = ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
                "LongitudinalTemporalInformationModified")


def _finish(out: Dataset, source: Dataset, station: str, description: str) -> Dataset:
    _set_dates(out, source)
    for item in out.get("ContributingEquipmentSequence", []):
        # highdicom stamps its contribution with the clock (Type 3): the real day
        if "ContributionDateTime" in item:
            del item.ContributionDateTime
    for keyword in _DEID_RECORD:
        if keyword in source:
            out[keyword] = source[keyword]
    out.SeriesDescription = description
    if station:
        out.StationName = station
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    return out


def _software_version() -> str:
    try:
        from importlib.metadata import version

        return version("medsendx")
    except Exception:
        return "0"


def _is_learned(method: str) -> bool:
    return method.startswith("onnx")


def _class_codes(label: str, modality: str) -> tuple[Code, Code]:
    return CLASS_CODES.get(label, (SCT_TISSUE, SCT_TISSUE)) if modality in ("CT", "MG") else (SCT_TISSUE, SCT_TISSUE)


def breast_composition(percent: float) -> Code:
    """The composition category of a percent density (our mapping, see the module doc)."""
    return next(code for limit, code in BREAST_COMPOSITION if percent < limit)


def reason_code(reason: str) -> str:
    """Which of the documented priority rules a reason (``record.reasons``) comes from."""
    text = reason.split(": ", 1)[1] if reason.startswith("frame ") else reason
    if text.startswith("repeat now"):
        return "REPEAT-NOW"
    if text.startswith("check the image by eye"):
        return "CHECK-BY-EYE"
    if text.startswith("extremely dense"):
        return "EXTREMELY-DENSE"
    if text.startswith("dense"):
        return "DENSE-BREAST"
    return "ROUTINE"


def _instance_number(obj: TriagedObject) -> int:
    try:
        return int(obj.header.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        return 0


def _order(objects: Sequence[TriagedObject]) -> list[TriagedObject]:
    return sorted(objects, key=lambda o: (_instance_number(o), o.sop_instance_uid))


# --------------------------------------------------------------------------- SEG


def build_segmentations(objects: Sequence[TriagedObject], *, station: str = "", compress: bool = True) -> list[Dataset]:
    """The Segmentations of one series' triaged single-frame images: one for the whole
    series when its images lie in a patient coordinate system (CT, MR: Frame of
    Reference, position, orientation), else one per image (MG, DX, CR, SC: highdicom, like
    the standard's multi-frame SEG, needs a coordinate system to stack several sources).
    Images of another size than the first, and multi-frame objects, get none."""
    usable = [o for o in _order(objects) if o.triaged and o.labels is not None and o.labels.shape[0] == 1]
    if not usable:
        return []
    shape = usable[0].labels.shape[1:]
    usable = [o for o in usable if o.labels.shape[1:] == shape]
    if all(k in usable[0].header for k in ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient")):
        groups = [usable]
    else:
        groups = [[o] for o in usable]
    out = []
    for number, group in enumerate(groups, start=1):
        seg = build_segmentation(group, station=station, compress=compress, instance_number=number)
        if seg is not None:
            out.append(seg)
    return out


def build_segmentation(objects: Sequence[TriagedObject], *, station: str = "", compress: bool = True,
                       instance_number: int = 1) -> Dataset | None:
    """One BINARY Segmentation of triaged single-frame images of one series and size
    (None when none qualifies); a segment per class of the first image's record. Several
    images need a patient coordinate system (see :func:`build_segmentations`)."""
    import highdicom as hd

    usable = [o for o in _order(objects) if o.triaged and o.labels is not None and o.labels.shape[0] == 1]
    if not usable:
        return None
    shape = usable[0].labels.shape[1:]
    usable = [o for o in usable if o.labels.shape[1:] == shape]
    first = usable[0]
    modality = str(first.record.get("modality", first.header.get("Modality", "OT"))).upper()
    names = [c["label"] for c in first.record["frames"][0]["classes"]]
    method = str(first.record.get("method", ""))
    family = codes.DCM.ArtificialIntelligence if _is_learned(method) else codes.DCM.ClusterAnalysis
    algorithm = hd.AlgorithmIdentificationSequence(name=f"MedSendX {method}"[:64], family=family,
                                                   version=_software_version())
    descriptions = []
    for number, name in enumerate(names, start=1):
        category, kind = _class_codes(name, modality)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=derived_uid("seg-tracking", str(first.header.SeriesInstanceUID), name),
            tracking_id=f"{name} (intensity class)",
            anatomic_regions=[SCT_BREAST] if modality == "MG" else None,
        ))
    # segment numbers per pixel (0: in no segment): highdicom splits them into binary
    # segments itself, and checks a label map with one max() instead of every mask
    stack = np.concatenate([o.labels for o in usable]).astype(np.int16)
    masks = (stack + 1).astype(np.uint8)  # -1 (not part of the image) -> 0
    series_uid = str(first.header.SeriesInstanceUID)
    key = _content_key(usable)
    seg = hd.seg.Segmentation(
        source_images=[o.header for o in usable],
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=derived_uid("seg-series", series_uid, method),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=derived_uid("seg", series_uid, key),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL,
        software_versions=_software_version(),
        device_serial_number=station or "0",
        content_label="TRIAGE",
        content_description="Intensity classes for workflow triage (not a diagnosis)",
        transfer_syntax_uid=JPEG2000Lossless if compress else ExplicitVRLittleEndian,
    )
    if "ImageOrientationPatient" not in first.header and "PatientOrientation" not in seg:
        # projection images (MG, DX): the General Image module then wants the source's
        # Patient Orientation (Type 2C: empty when the source has none)
        seg.PatientOrientation = first.header.get("PatientOrientation", "")
        # and a Pixel Measures item without Slice Thickness (a projection has none) is one
        # that highdicom's own reader refuses: the SEG's geometry is its source's anyway
        shared = seg.SharedFunctionalGroupsSequence[0]
        measures = shared.get("PixelMeasuresSequence")
        if measures and "SliceThickness" not in measures[0]:
            del shared.PixelMeasuresSequence
    return _finish(seg, first.header, station, SEG_DESCRIPTION)


# --------------------------------------------------------------------------- SR


_CONCEPTS: dict[tuple[str, str, str], Any] = {}


def _cc(code: Any) -> Any:
    """One highdicom CodedConcept per code, shared by every item that uses it: highdicom
    converts (and validates) each Code it is given, a fifth of the report's build time."""
    import highdicom as hd

    key = (str(code.value), str(code.scheme_designator), str(code.meaning))
    concept = _CONCEPTS.get(key)
    if concept is None:
        concept = _CONCEPTS[key] = hd.sr.CodedConcept(*key)
    return concept


def _frames(obj: TriagedObject) -> list[dict[str, Any]]:
    return list(obj.record.get("frames") or [])


def _source_image(hd: Any, obj: TriagedObject, frame: dict[str, Any]):
    multi = int(obj.header.get("NumberOfFrames", 1) or 1) > 1
    numbers = [int(frame["frame"]) + 1] if multi else None
    return hd.sr.SourceImageForMeasurementGroup.from_source_image(obj.header, referenced_frame_numbers=numbers)


def _image_groups(hd: Any, obj: TriagedObject, algorithm: Any) -> list[Any]:
    groups = []
    modality = str(obj.record.get("modality", "OT")).upper()
    unit = UNIT_HU if obj.record.get("units") == "HU" else UNIT_ARBITRARY
    frames = _frames(obj)
    for frame in frames:
        where = f"image {_instance_number(obj)}" + (f" frame {frame['frame'] + 1}" if len(frames) > 1 else "")
        measurements = [hd.sr.Measurement(name=_cc(PRIORITY), value=float(frame["priority"]), unit=_cc(UNIT_SCORE))]
        evaluations = []
        density = frame.get("breast_density_percent")
        if density is not None:
            measurements.append(hd.sr.Measurement(name=_cc(codes.DCM.PercentFibroglandularTissue), value=float(density),
                                                  unit=_cc(UNIT_PERCENT)))
            evaluations.append(hd.sr.QualitativeEvaluation(_cc(codes.DCM.BreastComposition), _cc(breast_composition(density))))
        for flag in frame.get("flags") or []:
            code, meaning = FLAG_CODES.get(flag["code"], (flag["code"].upper()[:16], flag["code"]))
            evaluations.append(hd.sr.QualitativeEvaluation(_cc(codes.DCM.ImageQuality), _cc(Code(code, PRIVATE_SCHEME, meaning))))
        for reason in frame.get("reasons") or []:
            code = reason_code(reason)
            evaluations.append(hd.sr.QualitativeEvaluation(_cc(REASON), _cc(Code(code, PRIVATE_SCHEME, REASON_CODES[code]))))
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=derived_uid("sr-tracking", obj.sop_instance_uid, str(frame["frame"])), identifier=f"triage {where}"),
            finding_type=_cc(TRIAGE_FINDING), algorithm_id=algorithm, measurements=measurements,
            qualitative_evaluations=evaluations or None, source_images=[_source_image(hd, obj, frame)],
        )
        container = group[0]
        for reason in frame.get("reasons") or []:
            container.ContentSequence.append(hd.sr.TextContentItem(_cc(COMMENT), reason[:1024], "CONTAINS"))
        groups.append(group)
        for cls in frame.get("classes") or []:
            _, kind = _class_codes(cls["label"], modality)
            class_group = hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid("sr-class", obj.sop_instance_uid, str(frame["frame"]), cls["label"]),
                    identifier=f"class {cls['label']} {where}"),
                finding_type=_cc(kind),  # the algorithm is named once, in the image's group
                measurements=[
                    hd.sr.Measurement(name=_cc(codes.SCT.Mean), value=float(cls["centre"]), unit=_cc(unit)),
                    hd.sr.Measurement(name=_cc(CLASS_SHARE), value=round(100.0 * float(cls["fraction"]), 4), unit=_cc(UNIT_PERCENT)),
                ],
                source_images=[_source_image(hd, obj, frame)],
            )
            groups.append(class_group)
    return groups


def _procedure(modality: str) -> Code:
    return {
        "CT": Code("77477000", "SCT", "Computerized axial tomography"),
        "MG": Code("71651007", "SCT", "Mammography"),
        "MR": Code("113091000", "SCT", "Magnetic resonance imaging"),
    }.get(modality, Code("363679005", "SCT", "Imaging"))


def _coding_scheme_item() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "MedSendX project"
    return item


def _observation_context(hd: Any, station: str) -> Any:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid("device", station or "medsendx"), name=(station or MANUFACTURER)[:64],
        manufacturer_name=MANUFACTURER, model_name=MODEL)
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))


def build_report(objects: Sequence[TriagedObject], *, station: str = "") -> Dataset | None:
    """One TID 1500 Measurement Report (Comprehensive SR) for a study's triaged images."""
    import highdicom as hd

    from medsendx.triage.record import DISCLAIMER

    usable = [o for o in _order(objects) if o.triaged]
    if not usable:
        return None
    first = usable[0]
    methods = sorted({str(o.record.get("method", "")) for o in usable})
    algorithm = hd.sr.AlgorithmIdentification(name=f"MedSendX {', '.join(methods)}"[:64], version=_software_version())
    groups = [g for o in usable for g in _image_groups(hd, o, algorithm)]
    modalities = sorted({str(o.record.get("modality", "OT")).upper() for o in usable})
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(hd, station),
        procedure_reported=[_procedure(m) for m in modalities],
        imaging_measurements=groups,
    )
    root = report[0]
    root.ContentSequence.append(hd.sr.TextContentItem(COMMENT, SCHEME_TEXT, "CONTAINS"))
    root.ContentSequence.append(hd.sr.TextContentItem(COMMENT, DISCLAIMER, "CONTAINS"))
    study_uid = str(first.header.StudyInstanceUID)
    # The document is made around a skeleton of the root (its first item) and then given
    # the whole tree: highdicom's document constructor deep-copies and re-parses the tree
    # it is given, which cost three times the building of it (2 s for 28 slices). The
    # evidence it records comes from ``evidence``, not from the tree, so it is the same.
    skeleton = Dataset()
    for element in root:
        if element.keyword != "ContentSequence":
            skeleton.add(element)
    skeleton.ContentSequence = [root.ContentSequence[0]]
    sr = hd.sr.ComprehensiveSR(
        evidence=[o.header for o in usable],
        content=skeleton,
        series_instance_uid=derived_uid("sr-series", study_uid),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=derived_uid("sr", study_uid, _content_key(usable)),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
    )
    sr.ContentSequence = root.ContentSequence
    sr.CodingSchemeIdentificationSequence = [_coding_scheme_item()]
    sr.ManufacturerModelName = MODEL
    sr.SoftwareVersions = _software_version()
    return _finish(sr, first.header, station, SR_DESCRIPTION)


# --------------------------------------------------------------------------- KOS


def key_images(objects: Sequence[TriagedObject], limit: int = 8) -> tuple[list[TriagedObject], bool]:
    """The highest-priority images (at most ``limit``, first by instance number) and whether
    a repeat is advised for one of them (a quality flag)."""
    usable = [o for o in _order(objects) if o.triaged]
    if not usable:
        return [], False
    top = max(int(o.record["priority"]) for o in usable)
    chosen = [o for o in usable if int(o.record["priority"]) == top][: max(1, limit)]
    repeat = any(o.record.get("flags") for o in chosen)
    return chosen, repeat


def build_key_objects(objects: Sequence[TriagedObject], *, station: str = "", limit: int = 8) -> Dataset | None:
    """The study's Key Object Selection: "Of Interest", or "Quality Issue" for a repeat."""
    import highdicom as hd

    chosen, repeat = key_images(objects, limit)
    if not chosen:
        return None
    title = QUALITY_ISSUE if repeat else OF_INTEREST
    assert title.value not in REJECTION_TITLES
    top = chosen[0].record
    first_reason = (top.get("reasons") or ["routine"])[0]
    description = f"Workflow priority {int(top['priority'])}/100: {first_reason}"[:1024]
    content = hd.ko.KeyObjectSelection(
        document_title=title, referenced_objects=[o.header for o in chosen], description=description)
    study_uid = str(chosen[0].header.StudyInstanceUID)
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=[o.header for o in chosen],
        content=content,
        series_instance_uid=derived_uid("kos-series", study_uid),
        series_number=KOS_SERIES_NUMBER,
        sop_instance_uid=derived_uid("kos", study_uid, _content_key(chosen), title.value),
        instance_number=1,
        manufacturer=MANUFACTURER,
    )
    return _finish(kos, chosen[0].header, station, KOS_DESCRIPTION)


# --------------------------------------------------------------------------- reading (HQ)


def _code_value(item: Any) -> tuple[str, str]:
    return str(item.value), str(item.scheme_designator)


def _texts(container: Dataset) -> list[str]:
    out = []
    for item in container.get("ContentSequence", []):
        if item.get("ValueType") == "TEXT":
            concept = item.ConceptNameCodeSequence[0]
            if (concept.CodeValue, concept.CodingSchemeDesignator) == ("121106", "DCM"):
                out.append(str(item.TextValue))
    return out


def read_triage_report(sr_dataset: Dataset) -> dict[str, Any]:
    """The triage values of a MedSendX TID 1500 report (see the module docstring).

    Returns ``{"study_instance_uid", "patient_id", "station", "priority", "reasons",
    "reason_codes", "flags", "breast_density_percent", "disclaimer", "images": [...]}``;
    study values are those of the highest-priority image (``reasons``) or over all images
    (``flags``: sorted union; density: mean over images that have one). Each image:
    ``{"sop_instance_uid", "frame" (1-based or None), "priority", "reasons",
    "reason_codes", "flags", "breast_density_percent", "breast_composition",
    "classes": [{"label", "centre", "share_percent"}]}`` in report order.
    Raises ValueError when the dataset is not such a report.
    """
    import highdicom as hd

    if str(sr_dataset.get("SOPClassUID", "")) not in (
        "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.34"):
        raise ValueError("not a structured report")
    try:
        report = hd.sr.ComprehensiveSR.from_dataset(sr_dataset, copy=True).content
    except Exception:
        raise ValueError("not a readable structured report") from None
    if not isinstance(report, hd.sr.MeasurementReport):
        raise ValueError("not a TID 1500 measurement report")
    images: dict[tuple[str, int | None], dict[str, Any]] = {}
    order: list[tuple[str, int | None]] = []
    for group in report.get_image_measurement_groups():
        sources = group.source_images
        if not sources:
            continue
        ref = sources[0].ReferencedSOPSequence[0]
        frames = ref.get("ReferencedFrameNumber")
        frame = int(frames if not isinstance(frames, (list, tuple)) and frames is not None else (frames or [None])[0]) \
            if frames is not None else None
        key = (str(ref.ReferencedSOPInstanceUID), frame)
        if key not in images:
            images[key] = {"sop_instance_uid": key[0], "frame": frame, "priority": None, "reasons": [],
                           "reason_codes": [], "flags": [], "breast_density_percent": None,
                           "breast_composition": None, "classes": []}
            order.append(key)
        image = images[key]
        finding = group.finding_type
        texts = _texts(group[0] if isinstance(group, Sequence) else group)
        if finding is not None and _code_value(finding) == ("TRIAGE", PRIVATE_SCHEME):
            for m in group.get_measurements(name=PRIORITY):
                image["priority"] = int(round(float(m.value)))
            for m in group.get_measurements(name=codes.DCM.PercentFibroglandularTissue):
                image["breast_density_percent"] = float(m.value)
            for e in group.get_qualitative_evaluations(name=codes.DCM.BreastComposition):
                image["breast_composition"] = str(e.value.meaning)
            for e in group.get_qualitative_evaluations(name=codes.DCM.ImageQuality):
                code, scheme = _code_value(e.value)
                if scheme == PRIVATE_SCHEME:
                    image["flags"].append(_FLAG_OF_CODE.get(code, code.lower()))
            for e in group.get_qualitative_evaluations(name=REASON):
                image["reason_codes"].append(str(e.value.value))
            image["reasons"] = texts
        else:
            tracking = str(group.tracking_identifier or "")
            label = tracking[len("class "):].rsplit(" image ", 1)[0] if tracking.startswith("class ") else None
            centre = next((float(m.value) for m in group.get_measurements(name=codes.SCT.Mean)), None)
            share = next((float(m.value) for m in group.get_measurements(name=CLASS_SHARE)), None)
            image["classes"].append({"label": label, "centre": centre, "share_percent": share})
    listed = [images[k] for k in order]
    priorities = [i["priority"] for i in listed if i["priority"] is not None]
    top = max(listed, key=lambda i: i["priority"] or -1) if listed else None
    densities = [i["breast_density_percent"] for i in listed if i["breast_density_percent"] is not None]
    root_texts = _texts(sr_dataset)
    return {
        "study_instance_uid": str(sr_dataset.get("StudyInstanceUID", "")),
        "patient_id": str(sr_dataset.get("PatientID", "")),
        "station": str(sr_dataset.get("StationName", "")),
        "priority": max(priorities) if priorities else None,
        "reasons": list(top["reasons"]) if top else [],
        "reason_codes": list(top["reason_codes"]) if top else [],
        "flags": sorted({f for i in listed for f in i["flags"]}),
        "breast_density_percent": float(np.mean(densities)) if densities else None,
        "disclaimer": next((t for t in root_texts if "NOT a diagnosis" in t), ""),
        "images": listed,
    }
