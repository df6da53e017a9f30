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
that grows (released in parts: more images after the gateway's hold expired) gets a new
SR/KOS/SEG covering every image so far (other images, other UID); the new SR names the
earlier ones in its Predecessor Documents Sequence, and SR and KOS carry the release's
number as Instance Number in their per-study series: readers (the hub) take the latest.
Dates and times are the de-identified source's (ContentDate <- the image's ContentDate,
else SeriesDate, else StudyDate, else the de-identifier's dummy 19000101): the builder's
clock would reveal the real, unshifted day of the examination.

SEG content
-----------
BINARY, one segment per intensity class (label maps from the segmenter; -1 = not part of
the image = in no segment), empty frames omitted, Deflated Explicit VR LE when compression is
on. One SEG per series in a patient coordinate system (CT, MR), one per image otherwise
(MG, DX: highdicom stacks several sources only in a coordinate system); one per
multi-frame object with a position per frame (enhanced CT / MR: a SEG frame per segment
and source frame, referencing the frame's number), none for other multi-frame objects
(ultrasound cine, enhanced images without functional groups). Categories and types (SNOMED CT):

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

import functools
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
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medsendx.triage.fast_encode import pack_sequences

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


# The SEG's lossless compression: the whole dataset deflated (zlib). highdicom 0.28 offers
# only JPEG 2000 among the compressed syntaxes for BINARY (1-bit) segmentations, and its
# encoder cost 1.7x the triage of the same slices; deflate (level 1) makes the same size
# (~300 KB for 28 CT slices, 2.8 MB native) in a fifteenth of the time, and every DICOM
# toolkit reads it (dcmtk, Orthanc, pydicom, highdicom).
SEG_SYNTAX = DeflatedExplicitVRLittleEndian
DEFLATE_LEVEL = 1


def encode(ds: Dataset) -> bytes:
    """A result's Part 10 bytes (what the outbox and ``segment --dicom`` write). Deflated
    objects at zlib level 1 (pydicom's writer uses level 6: 4x the time, 25 % smaller)."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    if ds.file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    # Z_FILTERED: the same size as the default strategy on bit-packed masks, a fifth faster
    compressor = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, 8, zlib.Z_FILTERED)
    deflated = compressor.compress(body.getvalue()) + compressor.flush()
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, ds.file_meta, enforce_standard=True)
    return head.getvalue() + deflated + (b"\0" if len(deflated) % 2 else b"")


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
    _fill_type2(header)
    header.file_meta = FileMetaDataset()
    header.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    header.file_meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "")
    header.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "")
    return header


def _fill_type2(header: Dataset) -> None:
    """Type 2 attributes the de-identifier may have removed: present and empty, as the
    SEG/SR/KOS modules require (empty says nothing about the patient)."""
    for keyword in _TYPE2_PATIENT_STUDY:
        if keyword not in header:
            setattr(header, keyword, "")


_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                        "StudyDate", "StudyTime", "ReferringPhysicianName")


def head_bytes(ds: Dataset, data: bytes | None) -> bytes | None:
    """The bytes of the file ``ds`` was read from up to its Pixel Data element: a complete
    file without pixels (None when that cannot be told: then the header is encoded)."""
    if data is None:
        return None
    try:
        if ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian:
            return None
        element = ds.get_item(0x7FE00010)
        tell = getattr(element, "value_tell", None)
        if tell is not None:
            start = int(tell) - 12  # explicit VR OB/OW: tag, VR, 2 reserved bytes, 4-byte length
        else:
            # decoded already (the triage read the pixels): the element is found from the
            # end, by its tag, VR and a length equal to the value's (as transcode does)
            expected = len(element.value)
            start = data.rfind(b"\xe0\x7f\x10\x00", 132)
            while start > 132:
                if data[start + 4:start + 8] in (b"OB\0\0", b"OW\0\0") and \
                        int.from_bytes(data[start + 8:start + 12], "little") in (expected, 0xFFFFFFFF):
                    break
                start = data.rfind(b"\xe0\x7f\x10\x00", 132, start)
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
        _fill_type2(header)  # a head kept as the file's bytes (head_bytes) has only what the file had
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


@functools.lru_cache(maxsize=1)
def _software_version() -> str:
    # remembered: importlib.metadata walks every installed distribution (~1 ms a call,
    # three calls per SEG and SR)
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


def _frame_count(obj: TriagedObject) -> int:
    try:
        return max(1, int(obj.header.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _segmentable(obj: TriagedObject) -> bool:
    """Triaged, with a label map for each of its frames."""
    return obj.triaged and obj.labels is not None and obj.labels.ndim == 3 and obj.labels.shape[0] == _frame_count(obj)


def build_segmentations(objects: Sequence[TriagedObject], *, station: str = "", compress: bool = True,
                        fast: bool = True) -> list[Dataset]:
    """The Segmentations of one series' triaged images. Single-frame images: one for the
    whole series when they lie in a patient coordinate system (CT, MR: Frame of
    Reference, position, orientation), else one per image (MG, DX, CR, SC: highdicom, like
    the standard's multi-frame SEG, needs a coordinate system to stack several sources);
    images of another size than the first get none. A multi-frame object: one of its own,
    a SEG frame per segment and source frame (referencing the frame's number), when it
    lies in a patient coordinate system with a position per frame (an enhanced CT / MR);
    none otherwise (highdicom cannot place its frames), and the study's other results
    still go."""
    usable = [o for o in _order(objects) if _segmentable(o)]
    single = [o for o in usable if _frame_count(o) == 1]
    groups: list[list[TriagedObject]] = []
    if single:
        shape = single[0].labels.shape[1:]
        single = [o for o in single if o.labels.shape[1:] == shape]
        placed = ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient")
        if all(k in single[0].header for k in placed):
            groups.append(single)
        else:
            groups += [[o] for o in single]
    # highdicom places the frames of an object in a coordinate system only by their
    # per-frame positions (enhanced CT / MR); without, it would stack them unplaced
    multi = [[o] for o in usable if _frame_count(o) > 1 and all(
        k in o.header for k in ("FrameOfReferenceUID", "SharedFunctionalGroupsSequence",
                                "PerFrameFunctionalGroupsSequence"))]
    out = []
    for number, group in enumerate(groups + multi, start=1):
        try:
            seg = build_segmentation(group, station=station, compress=compress, instance_number=number, fast=fast)
        except Exception as exc:
            if _frame_count(group[0]) == 1:
                raise
            # a multi-frame object highdicom cannot place (frames without positions, or
            # at one position): no SEG for it, the study's other results still go
            log.info("no segmentation for a multi-frame object", extra={"fields": {"reason": type(exc).__name__}})
            continue
        if seg is not None:
            out.append(seg)
    return out


def _remember_iod_lookups() -> None:
    """highdicom asks, for every source image of a SEG (and for an SR's and a KOS's
    evidence), whether its IOD has a multi-frame module (``is_attribute_in_iod`` walks the
    standard's module tables: ~1 ms a call, a sixth of a CT series' SEG). The answer
    depends on the arguments only (the tables are fixed): remembered. highdicom's own
    function answers every new question."""
    try:
        import highdicom._standard_utils as standard
    except ImportError:
        return
    original = getattr(standard, "is_attribute_in_iod", None)
    if original is None or getattr(original, "medsendx_remembered", False):
        return
    answers: dict[tuple, bool] = {}

    def remembered(attribute: str, sop_class_uid: str, exclude_path_elements: Sequence[str] | None = None) -> bool:
        key = (attribute, str(sop_class_uid), None if exclude_path_elements is None else tuple(exclude_path_elements))
        if key not in answers:
            answers[key] = original(attribute, sop_class_uid, exclude_path_elements)
        return answers[key]

    remembered.medsendx_remembered = True  # type: ignore[attr-defined]
    standard.is_attribute_in_iod = remembered


def build_segmentation(objects: Sequence[TriagedObject], *, station: str = "", compress: bool = True,
                       instance_number: int = 1, fast: bool = True) -> Dataset | None:
    """One BINARY Segmentation of triaged single-frame images of one series and size, or
    of one multi-frame object (the first of ``objects``, if it is one); None when none
    qualifies. A segment per class of the first image's record. Several images, or
    several frames, need a patient coordinate system (see :func:`build_segmentations`).
    ``fast=False``: highdicom makes every frame (the reference the templated frames of
    :func:`_templated_segmentation` are tested against, byte for byte)."""
    import highdicom as hd

    usable = [o for o in _order(objects) if _segmentable(o)]
    if not usable:
        return None
    if _frame_count(usable[0]) > 1:
        usable = usable[:1]  # highdicom: one multi-frame source per SEG
    else:
        shape = usable[0].labels.shape[1:]
        usable = [o for o in usable if _frame_count(o) == 1 and o.labels.shape[1:] == shape]
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
    masks = (np.concatenate([o.labels for o in usable]).astype(np.int8, copy=False) + np.int8(1)).view(np.uint8)
    _remember_iod_lookups()
    series_uid = str(first.header.SeriesInstanceUID)
    key = _content_key(usable)
    arguments = dict(
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
        # built native; compressed (Deflated) when encoded: see SEG_SYNTAX
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    sources = [o.header for o in usable]
    seg = None
    if fast:
        reason = "scope"
        try:
            seg = _templated_segmentation(hd, sources, masks, len(names), arguments)
        except Exception as exc:
            reason = type(exc).__name__
        if seg is None:  # outside the template's scope: highdicom makes every frame
            log.debug("segmentation frames made one by one", extra={"fields": {"reason": reason}})
    if seg is None:
        seg = hd.seg.Segmentation(source_images=sources, pixel_array=masks, **arguments)
    # highdicom draws a random Dimension Organization UID: derived instead, so that the
    # same images give the same object byte for byte
    dimensions = derived_uid("seg-dimensions", series_uid, key)
    for item in [*seg.get("DimensionOrganizationSequence", []), *seg.get("DimensionIndexSequence", [])]:
        item.DimensionOrganizationUID = dimensions
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
    seg = _finish(seg, first.header, station, SEG_DESCRIPTION)
    if compress:
        seg.file_meta.TransferSyntaxUID = SEG_SYNTAX
    return pack_sequences(seg)


# The leaves of a Per-Frame Functional Groups item of highdicom's SEG of sources in a
# patient coordinate system; these vary from frame to frame (the frame number: with a
# multi-frame source; the segment number: with more than one segment), the others not.
_SEG_FRAME_SLOTS = ("DimensionIndexValues", "ImagePositionPatient", "ReferencedSOPInstanceUID",
                    "ReferencedFrameNumber", "ReferencedSegmentNumber")
_SEG_FRAME_FIXED = frozenset({"CodeValue", "CodingSchemeDesignator", "CodeMeaning", "ReferencedSOPClassUID",
                              "SpatialLocationsPreserved"})


def _templated_segmentation(hd: Any, sources: list[Dataset], masks: np.ndarray, segments: int,
                            arguments: dict[str, Any]) -> Dataset | None:
    """highdicom's BINARY SEG of single-frame ``sources``, or of one multi-frame source,
    in a patient coordinate system (``masks``: segment number per pixel, one plane per
    source or source frame), with its per-frame items made from ONE item highdicom made.

    Why: highdicom makes and checks a Per-Frame Functional Groups item per frame (a
    segment of a plane: 84 for 28 CT slices) and pydicom encodes ~20 elements in each;
    with the rest of its per-frame work that cost half the triage of the slices. The
    items differ only in a few values (dimension index, plane position, source image or
    frame, segment number). highdicom builds the SEG from every source (references, spacing,
    orientation: as always) with only the first non-empty plane of the masks, so it makes
    the frames of that plane; one of its items is the template, the frames of every plane
    are that item with their values, in highdicom's order (segments, then planes along the
    normal, empty frames and planes left out), and the pixels are the same frames packed.
    None when the sources are outside this scope (highdicom then makes every frame);
    ``tests/test_triage_results.py`` compares the encoded result byte for byte with
    highdicom's own."""
    from highdicom.spatial import VOLUME_INDEX_CONVENTION, get_normal_vector, get_volume_positions
    from highdicom.utils import get_plane_positions_of_image, get_plane_positions_of_series

    from medsendx.triage.fast_encode import ItemsPlan, raw_sequence

    frame_counts = [int(s.get("NumberOfFrames", 1) or 1) for s in sources]
    multi = len(sources) == 1 and frame_counts[0] > 1
    n = frame_counts[0] if multi else len(sources)
    if n < 2 or masks.ndim != 3 or masks.shape[0] != n or int(masks.max()) > segments:
        return None  # one plane costs little; undescribed segments: highdicom refuses them
    if (not multi and max(frame_counts) > 1) or len({str(s.SOPClassUID) for s in sources}) != 1:
        return None  # the template's source reference names one SOP class
    flat = masks.reshape(n, -1)
    present = np.zeros((segments, n), dtype=bool)  # segment s + 1 in plane i
    bits = []  # per segment, each plane's mask (packed when a plane ends on a byte)
    whole_bytes = flat.shape[1] % 8 == 0
    for s in range(segments):
        inside = flat == s + 1
        present[s] = inside.any(axis=1)
        bits.append(np.packbits(inside, axis=1, bitorder="little") if whole_bytes else inside)
    planes = present.any(axis=0)
    if not planes.any():
        return None  # all empty: highdicom then keeps every frame
    template_plane = int(np.argmax(planes))
    probe = np.zeros_like(masks)
    probe[template_plane] = masks[template_plane]
    seg = hd.seg.Segmentation(source_images=sources, pixel_array=probe, **arguments)
    if "PlaneOrientationSequence" not in seg.SharedFunctionalGroupsSequence[0] \
            or len(seg.PerFrameFunctionalGroupsSequence) != int(present[:, template_plane].sum()):
        return None
    # highdicom's frame order: planes sorted by their distance along the normal
    positions = get_plane_positions_of_image(sources[0]) if multi else get_plane_positions_of_series(sources)
    coordinates = np.array([p[0].ImagePositionPatient for p in positions])
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    normal = get_normal_vector(orientation, index_convention=VOLUME_INDEX_CONVENTION)
    distances = (normal[None] @ coordinates.T).squeeze(0)
    _, order = np.unique(distances, return_index=True)
    if len(order) != n:
        return None  # duplicate positions: highdicom refuses them
    included = [int(i) for i in order if planes[i]]
    rank = {plane: number for number, plane in enumerate(included, start=1)}

    template = seg.PerFrameFunctionalGroupsSequence[0]
    slots: dict[str, Any] = {}
    fixed = set()

    def walk(ds: Dataset) -> None:
        for elem in ds:
            if elem.VR == "SQ":
                for item in elem.value:
                    walk(item)
            elif elem.keyword in _SEG_FRAME_SLOTS and elem.keyword not in slots:
                slots[elem.keyword] = elem
            else:
                fixed.add(elem.keyword)

    walk(template)
    # (one segment: highdicom names it once, in the shared functional groups)
    expected = [k for k in _SEG_FRAME_SLOTS if (k != "ReferencedFrameNumber" or multi)
                and (k != "ReferencedSegmentNumber" or segments > 1)]
    if set(slots) != set(expected) or not fixed <= _SEG_FRAME_FIXED:
        return None  # an item of another shape than the one this was made for

    def frame_values(segment: int, plane: int) -> list[Any]:
        # as highdicom gives them: the positions' DS strings, the source's UID
        of = {"DimensionIndexValues": [segment, rank[plane]],
              "ImagePositionPatient": positions[plane][0].ImagePositionPatient,
              "ReferencedSOPInstanceUID": sources[0 if multi else plane].SOPInstanceUID,
              "ReferencedFrameNumber": plane + 1, "ReferencedSegmentNumber": segment}
        return [of[k] for k in expected]

    def plain(items: Sequence[Any]) -> list[Any]:  # as text: an IS value is not equal to its int
        return [[str(x) for x in v] if isinstance(v, (list, MultiValue)) else str(v) for v in items]

    # the template is the first frame of the probe: its plane is the only one there
    first_segment = int(np.argmax(present[:, template_plane])) + 1
    wanted = dict(zip(expected, frame_values(first_segment, template_plane)), DimensionIndexValues=[first_segment, 1])
    if plain([slots[k].value for k in expected]) != plain([wanted[k] for k in expected]):
        return None
    plan = ItemsPlan([template], [slots[k] for k in expected])
    items, frames = [], []
    for s in range(segments):
        for plane in included:
            if present[s, plane]:
                items.append(plan.encode(frame_values(s + 1, plane)))
                frames.append(bits[s][plane])
    seg[0x52009230] = raw_sequence(0x52009230, b"".join(items))  # Per-Frame Functional Groups Sequence
    seg.NumberOfFrames = len(frames)
    # highdicom packs the frames as one bit stream (a frame need not end on a byte)
    pixels = np.concatenate(frames).tobytes() if whole_bytes else \
        np.packbits(np.concatenate(frames), bitorder="little").tobytes()
    seg.PixelData = pixels + b"0" if len(pixels) % 2 else pixels  # highdicom's padding byte
    if len(included) > 1 and segments == 1:  # highdicom's rule: "3D" has no other dimension than space
        spacing, _ = get_volume_positions(image_positions=coordinates[sorted(included)], image_orientation=orientation,
                                          sort=False)
        if spacing is not None and spacing > 0.0:
            seg.DimensionOrganizationType = "3D"
    return seg


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


@dataclass(frozen=True)
class _FrameValues:
    """What one triaged frame's measurement groups say. ``shape`` (everything but the
    free values) decides the structure of the groups; the other fields are the values
    that vary between frames of the same shape (see :class:`_GroupTemplate`)."""

    sop_class: str
    sop_instance: str
    frame_number: int | None  # 1-based, for a multi-frame object
    identifier: str  # "triage image <n>[ frame <f>]"
    tracking_uid: str
    priority: float
    density: float | None
    composition: Code | None
    flags: tuple[tuple[str, str], ...]  # (code, meaning)
    reason_codes: tuple[str, ...]
    reason_texts: tuple[str, ...]
    unit: Code
    classes: tuple[tuple[str, Code], ...]  # (label, SNOMED type)
    class_identifiers: tuple[str, ...]
    class_uids: tuple[str, ...]
    centres: tuple[float, ...]
    shares: tuple[float, ...]

    @property
    def shape(self) -> tuple:
        return (self.sop_class, self.frame_number is None, self.density is None, self.composition, self.flags,
                self.reason_codes, len(self.reason_texts), self.unit, self.classes)


def _frame_values(obj: TriagedObject) -> list[_FrameValues]:
    modality = str(obj.record.get("modality", "OT")).upper()
    unit = UNIT_HU if obj.record.get("units") == "HU" else UNIT_ARBITRARY
    frames = _frames(obj)
    multi = int(obj.header.get("NumberOfFrames", 1) or 1) > 1
    out = []
    for frame in frames:
        where = f"image {_instance_number(obj)}" + (f" frame {frame['frame'] + 1}" if len(frames) > 1 else "")
        density = frame.get("breast_density_percent")
        classes = frame.get("classes") or []
        out.append(_FrameValues(
            sop_class=str(obj.header.SOPClassUID), sop_instance=obj.sop_instance_uid,
            frame_number=int(frame["frame"]) + 1 if multi else None,
            identifier=f"triage {where}",
            tracking_uid=derived_uid("sr-tracking", obj.sop_instance_uid, str(frame["frame"])),
            priority=float(frame["priority"]),
            density=None if density is None else float(density),
            composition=None if density is None else breast_composition(density),
            flags=tuple(FLAG_CODES.get(f["code"], (f["code"].upper()[:16], f["code"])) for f in frame.get("flags") or []),
            reason_codes=tuple(reason_code(r) for r in frame.get("reasons") or []),
            reason_texts=tuple(r[:1024] for r in frame.get("reasons") or []),
            unit=unit,
            classes=tuple((c["label"], _class_codes(c["label"], modality)[1]) for c in classes),
            class_identifiers=tuple(f"class {c['label']} {where}" for c in classes),
            class_uids=tuple(derived_uid("sr-class", obj.sop_instance_uid, str(frame["frame"]), c["label"])
                             for c in classes),
            centres=tuple(float(c["centre"]) for c in classes),
            shares=tuple(round(100.0 * float(c["fraction"]), 4) for c in classes),
        ))
    return out


def _frame_groups(hd: Any, v: _FrameValues, algorithm: Any) -> list[Any]:
    """The TID 1501 groups of one frame (see the module doc), made by highdicom."""
    def source():
        return hd.sr.SourceImageForMeasurementGroup(
            v.sop_class, v.sop_instance, referenced_frame_numbers=None if v.frame_number is None else [v.frame_number])

    measurements = [hd.sr.Measurement(name=_cc(PRIORITY), value=v.priority, unit=_cc(UNIT_SCORE))]
    evaluations = []
    if v.density is not None:
        measurements.append(hd.sr.Measurement(name=_cc(codes.DCM.PercentFibroglandularTissue), value=v.density,
                                              unit=_cc(UNIT_PERCENT)))
        evaluations.append(hd.sr.QualitativeEvaluation(_cc(codes.DCM.BreastComposition), _cc(v.composition)))
    for code, meaning in v.flags:
        evaluations.append(hd.sr.QualitativeEvaluation(_cc(codes.DCM.ImageQuality), _cc(Code(code, PRIVATE_SCHEME, meaning))))
    for code in v.reason_codes:
        evaluations.append(hd.sr.QualitativeEvaluation(_cc(REASON), _cc(Code(code, PRIVATE_SCHEME, REASON_CODES[code]))))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=v.tracking_uid, identifier=v.identifier),
        finding_type=_cc(TRIAGE_FINDING), algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=evaluations or None, source_images=[source()],
    )
    container = group[0]
    for text in v.reason_texts:
        container.ContentSequence.append(hd.sr.TextContentItem(_cc(COMMENT), text, "CONTAINS"))
    groups = [group]
    for (label, kind), identifier, uid, centre, share in zip(v.classes, v.class_identifiers, v.class_uids,
                                                               v.centres, v.shares):
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=identifier),
            finding_type=_cc(kind),  # the algorithm is named once, in the image's group
            measurements=[
                hd.sr.Measurement(name=_cc(codes.SCT.Mean), value=centre, unit=_cc(v.unit)),
                hd.sr.Measurement(name=_cc(CLASS_SHARE), value=share, unit=_cc(UNIT_PERCENT)),
            ],
            source_images=[source()],
        ))
    return groups


class _GroupTemplate:
    """The groups of one frame shape, made ONCE by highdicom with a distinct placeholder
    for every free value, then filled in and encoded per frame.

    Why: highdicom makes and checks ~75 elements per group (4 groups per CT slice), and
    pydicom writes each at ~35 us: 5x the triage of the slices. The structure is the
    same for every frame of a shape (same flags, reasons, classes); only the values
    differ. Each placeholder is found once in the tree highdicom made; a frame sets the
    placeholders' elements to its values (the conversions highdicom applies: DS
    auto-format, FD) and the tree is encoded by :mod:`fast_encode`. A placeholder found
    in more or fewer elements than expected refuses the template (then highdicom makes
    every frame). ``tests/test_triage_results.py`` compares the result byte for byte
    with highdicom making every frame and pydicom writing it."""

    _TEXT_FIELDS = ("sop_instance", "identifier", "tracking_uid")

    def __init__(self, hd: Any, example: _FrameValues, algorithm: Any) -> None:
        from pydicom.valuerep import DS

        self._ds = DS
        counter = iter(range(1, 1 << 30))
        texts: dict[str, tuple[str, int | None]] = {}  # placeholder -> (field, index)
        numbers: dict[float, tuple[str, int | None]] = {}

        def text(field: str, index: int | None = None, uid: bool = False) -> str:
            n = next(counter)
            value = f"2.25.{10 ** 30 + n}" if uid else f"MEDSENDX-SLOT-{n}"
            texts[value] = (field, index)
            return value

        def number(field: str, index: int | None = None) -> float:
            value = 1e12 + next(counter)
            numbers[value] = (field, index)
            return value

        n_classes, n_reasons = len(example.classes), len(example.reason_texts)
        placeholder = _FrameValues(
            sop_class=example.sop_class, sop_instance=text("sop_instance", uid=True),
            frame_number=None if example.frame_number is None else 1 << 30,
            identifier=text("identifier"), tracking_uid=text("tracking_uid", uid=True),
            priority=number("priority"), density=None if example.density is None else number("density"),
            composition=example.composition, flags=example.flags, reason_codes=example.reason_codes,
            reason_texts=tuple(text("reason_texts", i) for i in range(n_reasons)), unit=example.unit,
            classes=example.classes,
            class_identifiers=tuple(text("class_identifiers", i) for i in range(n_classes)),
            class_uids=tuple(text("class_uids", i, uid=True) for i in range(n_classes)),
            centres=tuple(number("centres", i) for i in range(n_classes)),
            shares=tuple(number("shares", i) for i in range(n_classes)),
        )
        self.groups = _frame_groups(hd, placeholder, algorithm)
        # the content items the groups (highdicom templates: lists) put in the container
        self.items = [item for group in self.groups for item in group]
        ds_text = {str(DS(value, auto_format=True)): key for value, key in numbers.items()}
        self._slots: list[tuple[Any, str, str, int | None]] = []  # (element, kind, field, index)
        found: dict[tuple[str, int | None, str], int] = {}

        def walk(ds: Dataset) -> None:
            for elem in ds.elements():
                if elem.VR == "SQ":
                    for item in elem.value:
                        walk(item)
                    continue
                value = elem.value
                if elem.VR in ("UT", "UI") and value in texts:
                    kind, key = "text", texts[value]
                elif elem.VR == "FD" and value in numbers:
                    kind, key = "fd", numbers[value]
                elif elem.VR == "DS" and str(value) in ds_text:
                    kind, key = "ds", ds_text[str(value)]
                elif elem.VR == "IS" and elem.keyword == "ReferencedFrameNumber" and value == 1 << 30:
                    kind, key = "frame", ("frame_number", None)
                else:
                    continue
                self._slots.append((elem, kind, *key))
                found[(*key, kind)] = found.get((*key, kind), 0) + 1

        for item in self.items:
            walk(item)
        # every number once as FD and once as DS, UIDs and texts as often as highdicom
        # uses them (the source image in each group), nothing left over
        expected = {(*key, k): 1 for key in numbers.values() for k in ("fd", "ds")}
        for key in texts.values():
            expected[(*key, "text")] = 1 + n_classes if key[0] == "sop_instance" else 1
        if example.frame_number is not None:
            expected[("frame_number", None, "frame")] = 1 + n_classes
        if found != expected:
            raise ValueError("template placeholders not where expected")
        from medsendx.triage.fast_encode import ItemsPlan

        self._plan = ItemsPlan(self.items, [slot[0] for slot in self._slots])

    def encode(self, v: _FrameValues) -> bytes:
        """The frame's groups as encoded sequence items (Content Sequence items)."""
        values = []
        for _, kind, field, index in self._slots:
            value = getattr(v, field)
            if index is not None:
                value = value[index]
            if kind == "ds":
                value = self._ds(value, auto_format=True)
            values.append(value)
        return self._plan.encode(values)


def _encoded_groups(hd: Any, frames: list[_FrameValues], algorithm: Any) -> tuple[bytes, list[Any]]:
    """Every frame's groups, encoded, in report order (one template per frame shape), and
    the first template's groups (highdicom's, to make the report around)."""
    templates: dict[tuple, _GroupTemplate] = {}
    parts = []
    for v in frames:
        template = templates.get(v.shape)
        if template is None:
            template = templates[v.shape] = _GroupTemplate(hd, v, algorithm)
        parts.append(template.encode(v))
    return b"".join(parts), next(iter(templates.values())).groups


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


def _release(history: Sequence[str], uid: str) -> tuple[int, list[str]]:
    """This object's release number (its Instance Number in its per-study series) and the
    earlier releases' SOP Instance UIDs, from the UIDs of the study's earlier releases in
    order (``study_results`` records them). Building a release again gives it the same."""
    earlier = list(history)
    if uid in earlier:
        earlier = earlier[:earlier.index(uid)]
    return len(earlier) + 1, earlier


def build_report(objects: Sequence[TriagedObject], *, station: str = "", fast: bool = True,
                 history: Sequence[str] = ()) -> Dataset | None:
    """One TID 1500 Measurement Report (Comprehensive SR) for a study's triaged images.
    ``fast=False``: highdicom makes every group (the reference the fast path is tested
    against, byte for byte). ``history``: the SOP Instance UIDs of the study's earlier
    reports (a study released in parts: the gateway's hold expired, more images came);
    this one, covering every image kept so far, lists them in its Predecessor Documents
    Sequence and is numbered after them (Instance Number), so a reader takes the latest."""
    import highdicom as hd

    from medsendx.triage.record import DISCLAIMER

    usable = [o for o in _order(objects) if o.triaged]
    if not usable:
        return None
    _remember_iod_lookups()
    first = usable[0]
    methods = sorted({str(o.record.get("method", "")) for o in usable})
    algorithm = hd.sr.AlgorithmIdentification(name=f"MedSendX {', '.join(methods)}"[:64], version=_software_version())
    frames = [v for o in usable for v in _frame_values(o)]
    encoded = None
    if fast:
        try:
            # with the encoded groups, the report is made around one template's groups,
            # whose place the encoded groups then take
            encoded, groups = _encoded_groups(hd, frames, algorithm)
        except Exception as exc:  # outside the fast encoder's scope (e.g. non-ASCII text)
            log.debug("report groups made one by one", extra={"fields": {"reason": type(exc).__name__}})
    if encoded is None:
        groups = [g for v in frames for g in _frame_groups(hd, v, algorithm)]
    modalities = sorted({str(o.record.get("modality", "OT")).upper() for o in usable})
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(hd, station),
        procedure_reported=[_procedure(m) for m in modalities],
        imaging_measurements=groups,
    )
    root = report[0]
    if encoded is not None:
        from medsendx.triage.fast_encode import raw_sequence

        (container,) = [item for item in root.ContentSequence if item.ValueType == "CONTAINER"]
        container[0x0040A730] = raw_sequence(0x0040A730, encoded)  # its Content Sequence
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
    series_uid, sop_uid = derived_uid("sr-series", study_uid), derived_uid("sr", study_uid, _content_key(usable))
    number, earlier = _release(history, sop_uid)
    previous = []
    for uid in earlier:
        item = Dataset()
        item.SOPClassUID, item.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.33", uid  # Comprehensive SR
        item.StudyInstanceUID, item.SeriesInstanceUID = study_uid, series_uid
        previous.append(item)
    sr = hd.sr.ComprehensiveSR(
        evidence=[o.header for o in usable],
        content=skeleton,
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=number,
        previous_versions=previous or None,
        manufacturer=MANUFACTURER,
        is_complete=True,
    )
    sr.ContentSequence = root.ContentSequence
    sr.CodingSchemeIdentificationSequence = [_coding_scheme_item()]
    sr.ManufacturerModelName = MODEL
    sr.SoftwareVersions = _software_version()
    sr = _finish(sr, first.header, station, SR_DESCRIPTION)
    return pack_sequences(sr) if fast else sr


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


def build_key_objects(objects: Sequence[TriagedObject], *, station: str = "", limit: int = 8,
                      history: Sequence[str] = (), fast: bool = True) -> Dataset | None:
    """The study's Key Object Selection: "Of Interest", or "Quality Issue" for a repeat.
    ``history``: the study's earlier selections' SOP Instance UIDs (see
    :func:`build_report`): this one is numbered after them (the KOS has no predecessor
    attribute; a reader takes the highest Instance Number of the series).
    ``fast=False``: highdicom's document is made around the whole content (the
    reference the skeleton is tested against, byte for byte)."""
    import highdicom as hd

    chosen, repeat = key_images(objects, limit)
    if not chosen:
        return None
    _remember_iod_lookups()
    title = QUALITY_ISSUE if repeat else OF_INTEREST
    assert title.value not in REJECTION_TITLES
    top = chosen[0].record
    first_reason = (top.get("reasons") or ["routine"])[0]
    description = f"Workflow priority {int(top['priority'])}/100: {first_reason}"[:1024]
    content = hd.ko.KeyObjectSelection(
        document_title=title, referenced_objects=[o.header for o in chosen], description=description)
    study_uid = str(chosen[0].header.StudyInstanceUID)
    sop_uid = derived_uid("kos", study_uid, _content_key(chosen), title.value)
    root = content[0]
    if fast:
        # as for the report: highdicom's document constructor deep-copies and re-parses the
        # tree it is given (half the KOS's cost) and searches it for references; it is
        # made around the root with its first item (the description), then given the tree
        skeleton = Dataset()
        for element in root:
            if element.keyword != "ContentSequence":
                skeleton.add(element)
        skeleton.ContentSequence = [root.ContentSequence[0]]
        content = [skeleton]
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=[o.header for o in chosen],
        content=content,
        series_instance_uid=derived_uid("kos-series", study_uid),
        series_number=KOS_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=_release(history, sop_uid)[0],
        manufacturer=MANUFACTURER,
    )
    kos.ContentSequence = root.ContentSequence
    return pack_sequences(_finish(kos, chosen[0].header, station, KOS_DESCRIPTION))


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
    "reason_codes", "flags", "breast_density_percent", "disclaimer", "images": [...],
    "predecessors": [SOP Instance UIDs of the reports this one replaces]}``;
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
        "predecessors": predecessors(sr_dataset),
    }


def predecessors(ds: Dataset) -> list[str]:
    """The SOP Instance UIDs an SR's Predecessor Documents Sequence names (reports it
    replaces: see :func:`build_report`)."""
    return [str(ref.ReferencedSOPInstanceUID)
            for study in ds.get("PredecessorDocumentsSequence") or []
            for series in study.get("ReferencedSeriesSequence") or []
            for ref in series.get("ReferencedSOPSequence") or [] if "ReferencedSOPInstanceUID" in ref]
