"""The PS3.15 Annex E confidentiality profile: the standard's Table E.1-1 plus our options.

The table (vendored in ``_standard/``) says, per attribute, what the Basic Profile does
and what each option changes. This module turns table + options into one dictionary
``tag -> action`` (computed once per option set), and holds the *meaning* of the actions:

* ``K`` keep, ``X`` remove, ``Z`` empty value, ``D`` dummy value, ``U`` keyed UID,
  ``C`` clean (see below), combined ``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``, ``X/Z/U*``.
* Combined actions depend on whether the attribute is Type 1, 2 or 3 in the object's IOD
  (PS3.15 E.1.1: "X unless Z/D/U is required to maintain IOD conformance"). We pick the
  STRICTEST action that keeps the object valid: Type 3 -> ``X``, Type 2 -> ``Z`` (or ``D``
  where ``Z`` is not among the choices), Type 1 -> ``D`` (``U`` for ``X/Z/U*``: the
  sequence stays and every UID inside is replaced). ``IOD_TYPES`` below lists the
  attributes with a combined action that are Type 1 or 2 in an IOD family we handle;
  everything else is treated as Type 3 and removed.
* ``C`` means "clean": for dates under the modified-dates option the value is shifted by
  the per-patient offset (times of day stay, so intervals survive); for free text the
  words that identify the patient (names, IDs, institution...) and long digit runs are
  removed; a sequence is kept and its items are de-identified; an AE title gets a dummy;
  anything else that cannot be cleaned (e.g. binary timestamps) is removed.

Attributes the table does not list (newer editions keep adding identifying ones, and
scanners write attributes from later editions before our table knows them):

* person names (VR PN) are removed;
* dates and date-times follow the dates option (removed / shifted / kept);
* UIDs are replaced by keyed UIDs unless they name a standard class (SOP class, coding
  scheme...): ``KEEP_UID_KEYWORDS`` or a UID from the registry of the standard;
* free text (LO, SH, ST, LT, UT, UC, UR, AE, and UN of unknown public tags) is removed
  unless its keyword is on ``SAFE_TEXT_KEYWORDS`` (technique, geometry and coded values);
* everything else (coded strings, numbers, binary values, pixel data) is kept;
* sequences are kept and every item, at any depth, goes through the same rules.

Repeating groups: curve data (50xx,xxxx) is removed whole. Overlays: the table removes
Overlay Data (60xx,3000) and Overlay Comments (60xx,4000); the rest of an overlay group
(rows, columns, origin, ...) would then describe an overlay that is not there, which makes
the Overlay Plane module invalid, so the whole 60xx group is removed.

Private attributes (odd groups) are removed, private creators included. With the
Retain Safe Private option only ``SAFE_PRIVATE`` (numeric acquisition parameters, PS3.15
E.3.10) stays, together with the creators of the blocks that hold them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import Any

from pydicom.datadict import keyword_dict

from medsendx.config import DeidSettings

TABLE_RESOURCE = "ps3.15-table-e1-1.json"
SIMPLE_ACTIONS = {"K", "X", "Z", "D", "U", "C"}
COMBINED_ACTIONS = {"X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}
# Our own operations beyond the table's letters, decided at compile time:
SHIFT = "SHIFT"  # "C" of the modified-dates option: shift DA/DT, keep TM
NAME = "NAME"  # PatientName -> configured placeholder
PSEUDONYM = "PSEUDONYM"  # PatientID -> keyed pseudonym
STATION = "STATION"  # StationName -> configured unit id
PROVENANCE = "PROVENANCE"  # replaced by ours after de-identification

# Option -> table column. The modified/full dates option is chosen by DeidSettings.dates.
OPTION_COLUMNS = {
    "clean_descriptors": "cleanDescOpt",
    "retain_uids": "rtnUIDsOpt",
    "retain_device_identity": "rtnDevIdOpt",
    "retain_patient_characteristics": "rtnPatCharsOpt",
    "retain_institution_identity": "rtnInstIdOpt",
    "retain_safe_private": "rtnSafePrivOpt",
}
DATE_COLUMNS = {"modified": "rtnLongModifDatesOpt", "full": "rtnLongFullDatesOpt"}

# DICOM codes (CID 7050 De-identification Method) recorded in the output.
CODE_BASIC = ("113100", "Basic Application Confidentiality Profile")
CODE_CLEAN_PIXELS = ("113101", "Clean Pixel Data Option")
OPTION_CODES = {
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "dates_full": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "dates_modified": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}


def _tag(keyword: str) -> int:
    return keyword_dict[keyword]


# Attributes with a combined action that are Type 1 or 2 somewhere in the IOD families
# we handle: keyword -> (type in classic single-frame IODs, type in enhanced multi-frame,
# SR and RT IODs). Not listed: Type 3 everywhere, so the combined action resolves to X.
IOD_TYPES: dict[int, tuple[int, int]] = {
    _tag("ContentDate"): (2, 1),  # General Image 2C; Multi-frame Functional Groups / SR 1
    _tag("ContentTime"): (2, 1),
    _tag("ContentCreatorName"): (2, 2),  # Presentation State / Segmentation identification
    _tag("ContrastBolusAgent"): (2, 2),  # Contrast/Bolus module
    _tag("InstructionPerformedDateTime"): (2, 2),
    _tag("AcquisitionDateTime"): (3, 1),  # Enhanced CT/MR/XA image modules 1C
    _tag("DeviceSerialNumber"): (3, 1),  # Enhanced General Equipment
    _tag("AcquisitionContextSequence"): (2, 2),  # Acquisition Context module
    _tag("TreatmentMachineName"): (3, 2),  # RT Beams
    _tag("ReviewerName"): (3, 2),  # RT Approval 2C
    _tag("RTPlanDate"): (3, 2),  # RT General Plan
    _tag("RTPlanTime"): (3, 2),
    _tag("FirstTreatmentDate"): (3, 2),  # RT Treatment Summary Record
    _tag("MostRecentTreatmentDate"): (3, 2),
    _tag("TreatmentDate"): (3, 2),  # RT Treatment Record
    _tag("TreatmentTime"): (3, 2),
    # Source/Referenced Image Sequence are Type 1C in derived and enhanced images.
    _tag("SourceImageSequence"): (3, 1),
    _tag("ReferencedImageSequence"): (3, 1),
}


def resolve_combined(action: str, iod_type: int) -> str:
    """The strictest single action of a combined one that keeps an attribute of the
    given IOD type (1, 2 or 3) valid."""
    choices = action.replace("*", "").split("/")
    if iod_type >= 3:
        return "X" if "X" in choices else choices[0]
    if iod_type == 2:
        if "Z" in choices:
            return "Z"
        return "D" if "D" in choices else "U"
    return "D" if "D" in choices else ("U" if "U" in choices else "Z")


# Free-text public attributes without a table row that are known to carry no identity
# (acquisition technique, geometry, coded values). Kept under every option.
SAFE_TEXT_KEYWORDS = frozenset(
    {
        "AcquisitionDeviceProcessingCode", "AttenuationCorrectionMethod", "CodeMeaning",
        "CodeValue", "CodingSchemeDesignator", "CodingSchemeName",
        "CodingSchemeResponsibleOrganization", "CodingSchemeVersion", "CollimatorGridName",
        "ContrastBolusRoute", "ConvolutionKernel", "DimensionDescriptionLabel",
        "FilterType", "ImagedNucleus", "LongCodeValue", "LUTExplanation", "LUTLabel",
        "Manufacturer", "ManufacturerModelName", "ModalityLUTType", "PhosphorType",
        "PlateType", "PositionReferenceIndicator", "ProcessingFunction",
        "PulseSequenceName", "Radiopharmaceutical", "ReceiveCoilName",
        "ReconstructionMethod", "RescaleType", "ScatterCorrectionMethod",
        "SecondaryCaptureDeviceManufacturer",
        "SecondaryCaptureDeviceManufacturerModelName",
        "SecondaryCaptureDeviceSoftwareVersions", "SegmentAlgorithmName", "SegmentLabel",
        "SequenceName", "SoftwareVersions", "StackID", "TransducerData",
        "TransmitCoilName", "URNCodeValue", "WindowCenterWidthExplanation",
    }
)
SAFE_TEXT_TAGS = frozenset(_tag(k) for k in SAFE_TEXT_KEYWORDS)

# UI attributes without a table row that name classes, not instances: never replaced.
KEEP_UID_KEYWORDS = frozenset(
    {
        "SOPClassUID", "ReferencedSOPClassUID", "CodingSchemeUID", "ContextUID",
        "MappingResourceUID", "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID",
        "ReferencedTransferSyntaxUIDInFile", "ReferencedSOPClassUIDInFile",
        "SOPClassesInStudy", "TransferSyntaxUID", "RetrieveURI",
    }
    & set(keyword_dict)
)
KEEP_UID_TAGS = frozenset(_tag(k) for k in KEEP_UID_KEYWORDS)

TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "UR", "AE", "UN"})
DATE_VRS = frozenset({"DA", "DT"})

# Retain Safe Private option: (private creator, group, element offset) of private
# attributes that hold acquisition numbers only (diffusion b-values and directions),
# after PS3.15 E.3.10 "Safe Private Attributes". Only numeric VRs are accepted.
SAFE_PRIVATE: frozenset[tuple[str, int, int]] = frozenset(
    {
        ("GEMS_PARM_01", 0x0043, 0x39),  # slop_int_6..9: b-value
        ("GEMS_ACQU_01", 0x0019, 0xBB),  # diffusion direction x
        ("GEMS_ACQU_01", 0x0019, 0xBC),  # diffusion direction y
        ("GEMS_ACQU_01", 0x0019, 0xBD),  # diffusion direction z
        ("SIEMENS MR HEADER", 0x0019, 0x0C),  # B value
        ("SIEMENS MR HEADER", 0x0019, 0x0D),  # diffusion directionality
        ("SIEMENS MR HEADER", 0x0019, 0x0E),  # diffusion gradient direction
        ("SIEMENS MR HEADER", 0x0019, 0x27),  # B matrix
        ("Philips Imaging DD 001", 0x2001, 0x03),  # diffusion b-factor
        ("Philips MR Imaging DD 001", 0x2005, 0xB0),  # diffusion direction RL
        ("Philips MR Imaging DD 001", 0x2005, 0xB1),  # diffusion direction AP
        ("Philips MR Imaging DD 001", 0x2005, 0xB2),  # diffusion direction FH
    }
)
SAFE_PRIVATE_VRS = frozenset({"DS", "IS", "FL", "FD", "SL", "SS", "UL", "US", "OF", "OD"})

# Attributes we write ourselves after de-identification (whatever the input had).
PROVENANCE_KEYWORDS = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
)


def load_table() -> list[dict[str, Any]]:
    """The vendored Table E.1-1, one dict per row."""
    text = resources.files("medsendx.deid._standard").joinpath(TABLE_RESOURCE).read_text()
    return json.loads(text)


def _is_plain_tag(row_id: str) -> bool:
    return len(row_id) == 8 and all(c in "0123456789abcdef" for c in row_id)


@dataclass(frozen=True)
class Profile:
    """Basic Profile plus the options of ``DeidSettings``, compiled to ``tag -> action``."""

    options: DeidSettings

    @cached_property
    def actions(self) -> dict[int, str]:
        table = load_table()
        columns = [col for key, col in OPTION_COLUMNS.items() if getattr(self.options, key)]
        date_column = DATE_COLUMNS.get(self.options.dates)
        actions: dict[int, str] = {}
        for row in table:
            if not _is_plain_tag(row["id"]):
                continue  # repeating groups and private attributes: see module docstring
            action = row["basicProfile"]
            if action not in SIMPLE_ACTIONS | COMBINED_ACTIONS:
                raise ValueError(f"Table E.1-1 row {row['id']}: unknown action {action!r}")
            # An enabled option overrides the Basic Profile. When two enabled options
            # both speak (e.g. Retain Device Identity K and Modified Dates C on a
            # calibration date), cleaning wins over keeping: the stricter of the two.
            chosen = [row[col] for col in columns if row.get(col)]
            if date_column and row.get(date_column):
                date_action = row[date_column]
                chosen.append(SHIFT if date_action == "C" else date_action)
            if chosen:
                action = SHIFT if SHIFT in chosen else ("C" if "C" in chosen else chosen[0])
            actions[int(row["id"], 16)] = action
        actions[_tag("PatientName")] = NAME
        actions[_tag("PatientID")] = PSEUDONYM
        actions[_tag("StationName")] = STATION
        for keyword in PROVENANCE_KEYWORDS:
            actions[_tag(keyword)] = PROVENANCE
        return actions

    @cached_property
    def method_codes(self) -> list[tuple[str, str]]:
        """DeidentificationMethodCodeSequence entries for this option set."""
        codes = [CODE_BASIC]
        if self.options.dates in ("full", "modified"):
            codes.append(OPTION_CODES[f"dates_{self.options.dates}"])
        for key in OPTION_CODES:
            if key in OPTION_COLUMNS and getattr(self.options, key):
                codes.append(OPTION_CODES[key])
        return codes

    @cached_property
    def method_values(self) -> list[str]:
        """DeidentificationMethod values (LO: at most 64 characters each): the profile,
        then one value per option."""
        return ["MedSendX PS3.15 Basic Profile"] + [meaning.removesuffix(" Option") for _, meaning in self.method_codes[1:]]

    @cached_property
    def description(self) -> str:
        """Human-readable summary (audit log)."""
        first, *names = self.method_values
        return first + (f" + {', '.join(names)}" if names else "")

    def option_dict(self) -> dict[str, Any]:
        """The options as plain JSON-able values (for the audit log)."""
        return {
            "dates": self.options.dates,
            **{key: bool(getattr(self.options, key)) for key in OPTION_COLUMNS},
        }
