"""The de-identification engine: one pass over the dataset, every sequence at any depth.

``Deidentifier(settings).deidentify(ds)`` de-identifies a pydicom Dataset in place;
``.deidentify_file(src, out_dir)`` does it for a file: read, de-identify, write
``out_dir/<new SOP Instance UID>.dcm`` atomically, append the audit log, and quarantine the
input with a reason if anything goes wrong (it never raises for bad input).

Speed comes from not doing work: elements that are kept are never decoded (pydicom keeps
them as raw bytes and writes them back as they were), pixel data is never decoded or
copied through numpy, the ``tag -> action`` map is computed once per option set, and the
keyed UID map is cached across files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from pydicom.datadict import dictionary_VR, get_private_entry
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import UID, UID_dictionary
from pydicom.valuerep import VR as VR_

from medsendx import __version__
from medsendx.config import Settings
from medsendx.deid import profile as P
from medsendx.deid.audit import append_audit
from medsendx.deid.pixelrisk import PixelRisk, assess_pixel_risk, identifying_words
from medsendx.deid.uids import KeyedMapper, load_or_create_secret, shift_date, shift_datetime
from medsendx.dicomio import DicomReadError, read_dataset
from medsendx.fsutil import atomic_write_bytes
from medsendx.quarantine import quarantine_file

# Our implementation UID: 2.25 + the UUID5 of the project name (stable across versions).
IMPLEMENTATION_CLASS_UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "medsendx").int)
MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"
IMPLEMENTATION_VERSION_NAME = f"MEDSENDX_{__version__}"[:16]

# Dummy values for the D action, by VR. Sequences are kept with de-identified items; UIDs
# get keyed replacements; binary values are emptied (no dummy could mean anything).
DUMMY_VALUES: dict[str, Any] = {
    "PN": "ANONYMOUS", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED",
    "ST": "ANONYMIZED", "UT": "ANONYMIZED", "UC": "ANONYMIZED", "CS": "ANONYMIZED",
    "AE": "ANONYMOUS", "DA": "19000101", "TM": "000000.00", "DT": "19000101000000.000000",
    "AS": "000Y", "IS": "0", "DS": "0", "US": 0, "SS": 0, "UL": 0, "SL": 0, "UV": 0,
    "SV": 0, "FL": 0.0, "FD": 0.0, "UR": None, "OB": None, "OW": None, "OF": None,
    "OD": None, "OL": None, "OV": None, "UN": None, "AT": None,
}
CLEANABLE_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN", "CS"})
_WORD_SPLIT = re.compile(r"([^\w]+)")
_LONG_DIGITS = re.compile(r"\d{5,}")
_SPACES = re.compile(r"\s{2,}")
# File meta attributes worth nothing to the receiver that may name the sending site.
_META_DROP = (0x00020016, 0x00020017, 0x00020018, 0x00020026, 0x00020027, 0x00020028, 0x00020100, 0x00020102)


class QuarantineRequired(Exception):
    """The object must not leave (e.g. identity may be burned into its pixels).

    ``reason`` is our own wording, never a value from the object."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class DeidReport:
    """What de-identification did to one object (no values from the object)."""

    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    pixel_cleaned: bool = False
    profile: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class FileOutcome:
    """The result of :meth:`Deidentifier.deidentify_file` for one input file."""

    status: Literal["ok", "quarantined", "error"]
    source: Path
    output: Path | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    reason: str = ""
    report: DeidReport | None = None


@dataclass
class _Context:
    """Per-object state shared by every level of the walk."""

    counts: Counter
    offset_days: int
    enhanced: bool
    derived: bool
    words: set[str] | None


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom's warnings quote element values; those must never reach a log."""
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _strings(elem: DataElement | RawDataElement) -> list[str]:
    """The values of a string element without a charset round trip (ASCII VRs only)."""
    value = elem.value
    if value is None:
        return []
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("latin-1").strip("\x00 ")
        return text.split("\\") if text else []
    if isinstance(value, str):
        return value.split("\\") if value else []
    return [str(v) for v in value]


def _patient_key(ds: Dataset) -> str:
    """What makes two objects 'the same patient' for pseudonyms and date shifts."""

    def text(keyword: str) -> str:
        elem = ds.get(keyword)
        return "" if elem is None else str(elem).strip()

    with contextlib.suppress(Exception):
        patient_id = text("PatientID")
        if patient_id:
            return f"id:{text('IssuerOfPatientID')}|{patient_id}"
        name = text("PatientName")
        if name:
            return f"name:{name}|{text('PatientBirthDate')}"
    return f"study:{''.join(_strings(ds.get_item(0x0020000D))) if 0x0020000D in ds else ''}"


# "No cleaner given": use the one ``settings.pixels`` asks for (None for policy "quarantine").
SETTINGS_CLEANER: Any = object()


class Deidentifier:
    """PS3.15 Basic Profile plus the options in ``settings.deid``.

    ``pixel_cleaner(ds, identifying_words) -> PixelCleanResult`` (see ``medsendx.pixels``)
    is called for objects whose pixels may show identity; by default it is the cleaner of
    ``settings.pixels``; with ``pixel_cleaner=None`` such objects are quarantined. A cleaner
    with ``needs_check(ds)`` may widen the objects checked (a header that says
    BurnedInAnnotation NO on an ultrasound screen, or ``pixels.ocr_every_object``).
    """

    def __init__(self, settings: Settings, pixel_cleaner: Callable[[Dataset, set[str]], Any] | None = SETTINGS_CLEANER) -> None:
        self.settings = settings
        if pixel_cleaner is SETTINGS_CLEANER:
            from medsendx.pixels import make_pixel_cleaner

            pixel_cleaner = make_pixel_cleaner(settings)
        self.pixel_cleaner = pixel_cleaner
        self.profile = P.Profile(settings.deid)
        self.actions = self.profile.actions
        self.mapper = KeyedMapper(load_or_create_secret(settings.secret_file), settings.deid.max_date_shift_days)
        self._unlisted: dict[tuple[int, str | None], str] = {}
        self._needs_words = "C" in self.actions.values()
        self.station_name = station_name_for(settings.station_id)

    # ------------------------------------------------------------------ datasets
    def deidentify(self, ds: Dataset) -> DeidReport:
        """De-identify ``ds`` in place. Raises :class:`QuarantineRequired` when the object
        must not leave; ``ds`` is then half-done and must be discarded."""
        with _quiet_pydicom():
            return self._deidentify(ds)

    def _deidentify(self, ds: Dataset) -> DeidReport:
        if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
            media_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
            if media_class == MEDIA_DIRECTORY_SOP_CLASS:
                raise QuarantineRequired("media directory (DICOMDIR), not an object to send")
            raise QuarantineRequired("not a composite object (no SOP Class or SOP Instance UID)")
        risk = assess_pixel_risk(ds)
        if risk is None and hasattr(self.pixel_cleaner, "needs_check"):
            reason = self.pixel_cleaner.needs_check(ds)  # type: ignore[union-attr]
            risk = PixelRisk(reason, cleanable=True) if reason else None
        if risk is not None and (not risk.cleanable or self.pixel_cleaner is None):
            raise QuarantineRequired(risk.reason)
        words = identifying_words(ds) if (self._needs_words or risk is not None) else None
        key = _patient_key(ds)
        sop_class = str(ds.get("SOPClassUID", ""))
        image_type = ds.get("ImageType")
        ctx = _Context(
            counts=Counter(),
            offset_days=self.mapper.date_offset_days(key),
            enhanced=_is_enhanced(sop_class),
            derived=bool(image_type) and str(list(image_type)[0] if not isinstance(image_type, str) else image_type).upper().startswith("DERIVED"),
            words=words,
        )
        self._walk(ds, ctx, 0)
        # Identity attributes exist in every output so a PACS never merges patients.
        ds.PatientName = self.settings.deid.patient_name
        ds.PatientID = self.mapper.patient_pseudonym(key)
        ds.StationName = self.station_name
        cleaned = False
        if risk is not None:
            result = self.pixel_cleaner(ds, words or set())  # type: ignore[misc]
            if not getattr(result, "clean", False):
                raise QuarantineRequired(getattr(result, "reason", "") or risk.reason)
            ds.BurnedInAnnotation = "NO"
            cleaned = True
        self._provenance(ds, cleaned)
        self._fix_file_meta(ds)
        return DeidReport(
            sop_instance_uid=str(ds.SOPInstanceUID),
            study_instance_uid=str(ds.get("StudyInstanceUID", "")),
            series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
            counts=dict(sorted(ctx.counts.items())),
            pixel_cleaned=cleaned,
            profile=self.profile.description,
            options=self.profile.option_dict(),
        )

    def _walk(self, ds: Dataset, ctx: _Context, depth: int) -> None:
        actions = self.actions
        private = False
        for tag in list(ds.keys()):
            if (tag >> 16) & 1:
                private = True
                continue
            action = actions.get(tag)
            if action is None:
                action = self._unlisted_action(tag, ds.get_item(tag))
            self._apply(ds, tag, action, ctx, depth)
        if private:
            self._private(ds, ctx)

    def _unlisted_action(self, tag: int, elem: DataElement | RawDataElement) -> str:
        """The rule for attributes the table has no row for (see ``profile``)."""
        key = (tag, elem.VR)
        action = self._unlisted.get(key)
        if action is not None:
            return action
        group, element = tag >> 16, tag & 0xFFFF
        vr = _vr_of(tag, elem)
        if element == 0 or group in (0xFFFA, 0xFFFC) or 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
            action = "X"  # group lengths, padding, curves, overlays
        elif vr == "SQ":
            action = "K"
        elif vr == "PN":
            action = "X"
        elif vr == "UI":
            action = "K" if tag in P.KEEP_UID_TAGS else "UIDCHECK"
        elif vr in P.DATE_VRS:
            action = {"remove": "X", "modified": P.SHIFT}.get(self.settings.deid.dates, "K")
        elif vr in P.TEXT_VRS:
            action = "K" if tag in P.SAFE_TEXT_TAGS else "X"
        else:
            action = "K"
        if action == "X":
            action = "XU"  # removal of an unlisted attribute, counted apart
        self._unlisted[key] = action
        return action

    def _apply(self, ds: Dataset, tag: int, action: str, ctx: _Context, depth: int) -> None:
        counts = ctx.counts
        if action == "K":
            elem = ds.get_item(tag)
            if _vr_of(tag, elem) == "SQ":
                self._walk_sequence(ds, tag, ctx, depth)
            return
        if action == "X" or action == "XU" or action == P.PROVENANCE:
            del ds[tag]
            counts["X" if action != "XU" else "X_unlisted"] += 1
            return
        if action in P.COMBINED_ACTIONS:
            action = P.resolve_combined(action, self._iod_type(tag, ctx, depth))
            self._apply(ds, tag, action, ctx, depth)
            return
        elem = ds.get_item(tag)
        vr = _vr_of(tag, elem)
        if action == "U" or action == "UIDCHECK":
            if vr == "SQ":
                self._walk_sequence(ds, tag, ctx, depth)
                counts["U"] += 1
                return
            values = _strings(elem)
            if action == "UIDCHECK" and all(v in UID_dictionary for v in values):
                return
            ds[tag] = DataElement(tag, "UI", _one_or_many([self.mapper.uid(v) for v in values]))
            counts["U"] += 1
        elif action == "Z":
            ds[tag] = DataElement(tag, vr, Sequence() if vr == "SQ" else ("" if vr in _STRING_VRS else None))
            counts["Z"] += 1
        elif action == "D":
            if vr == "SQ":
                self._walk_sequence(ds, tag, ctx, depth)
            elif vr == "UI":
                self._apply(ds, tag, "U", ctx, depth)
                return
            else:
                ds[tag] = DataElement(tag, vr, DUMMY_VALUES.get(vr))
            counts["D"] += 1
        elif action == P.SHIFT:
            if vr == "DA" or vr == "DT":
                shift = shift_date if vr == "DA" else shift_datetime
                shifted = [shift(v, ctx.offset_days) for v in _strings(elem)]
                ds[tag] = DataElement(tag, vr, _one_or_many([v for v in shifted if v]))
                counts["C"] += 1
            elif vr == "TM" or vr == "SH":
                counts["K"] += 1  # times of day and UTC offsets: whole-day shifts keep them
            elif vr == "SQ":
                self._walk_sequence(ds, tag, ctx, depth)
            else:
                del ds[tag]  # binary timestamps cannot be shifted
                counts["X"] += 1
        elif action == "C":
            if vr == "SQ":
                self._walk_sequence(ds, tag, ctx, depth)
            elif vr == "AE":
                ds[tag] = DataElement(tag, vr, DUMMY_VALUES["AE"])
            elif vr in CLEANABLE_TEXT_VRS:
                value = ds[tag].value
                texts = [str(v) for v in value] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [str(value or "")]
                ds[tag] = DataElement(tag, vr, _one_or_many([clean_text(t, ctx.words or set()) for t in texts]))
            else:
                del ds[tag]
            counts["C"] += 1
        elif action == P.NAME:
            ds[tag] = DataElement(tag, "PN", self.settings.deid.patient_name)
            counts["D"] += 1
        elif action == P.PSEUDONYM:
            values = _strings(elem)
            ds[tag] = DataElement(tag, "LO", self.mapper.patient_pseudonym(f"id:|{values[0]}") if values else "")
            counts["D"] += 1
        elif action == P.STATION:
            ds[tag] = DataElement(tag, "SH", self.station_name)
            counts["D"] += 1
        else:  # pragma: no cover - profile compilation only produces the actions above
            raise ValueError(f"unknown de-identification action {action!r}")

    def _walk_sequence(self, ds: Dataset, tag: int, ctx: _Context, depth: int) -> None:
        value = ds[tag].value
        if isinstance(value, Sequence):
            for item in value:
                self._walk(item, ctx, depth + 1)

    def _iod_type(self, tag: int, ctx: _Context, depth: int) -> int:
        if depth > 0:
            return 3
        classic, enhanced = P.IOD_TYPES.get(tag, (3, 3))
        if tag in (0x00082112, 0x00081140) and ctx.derived:
            return 1
        return enhanced if ctx.enhanced else classic

    def _private(self, ds: Dataset, ctx: _Context) -> None:
        tags = [t for t in ds.keys() if (t >> 16) & 1]
        keep: set[int] = set()
        if self.settings.deid.retain_safe_private:
            for tag in tags:
                group, element = tag >> 16, tag & 0xFFFF
                if element < 0x1000:
                    continue  # creators (and invalid 0001-00FF) are decided below
                creator_tag = (group << 16) | (element >> 8)
                if creator_tag not in ds:
                    continue
                creator = "".join(_strings(ds.get_item(creator_tag))).strip()
                if (creator, group, element & 0xFF) not in P.SAFE_PRIVATE:
                    continue
                vr = ds.get_item(tag).VR
                if vr in (None, "UN"):
                    with contextlib.suppress(KeyError):
                        vr = get_private_entry(tag, creator)[0]
                if vr in P.SAFE_PRIVATE_VRS:
                    keep.update((tag, creator_tag))
        for tag in tags:
            if tag not in keep:
                del ds[tag]
        ctx.counts["X_private"] += len(tags) - len(keep)
        if keep:
            ctx.counts["K_private"] += len(keep)

    def _provenance(self, ds: Dataset, pixels_cleaned: bool) -> None:
        ds.PatientIdentityRemoved = "YES"
        description = self.profile.description
        ds.DeidentificationMethod = _one_or_many([description[i : i + 64] for i in range(0, len(description), 64)])
        codes = list(self.profile.method_codes)
        if pixels_cleaned:
            codes.insert(1, P.CODE_CLEAN_PIXELS)
        items = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        ds.LongitudinalTemporalInformationModified = {"full": "UNMODIFIED", "modified": "MODIFIED"}.get(
            self.settings.deid.dates, "REMOVED"
        )

    def _fix_file_meta(self, ds: Dataset) -> None:
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            meta = ds.file_meta = FileMetaDataset()
        for tag in _META_DROP:
            if tag in meta:
                del meta[tag]
        if "SOPClassUID" in ds:
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        ds.preamble = b"\x00" * 128  # a preamble may hold a TIFF header or anything else

    # ------------------------------------------------------------------ files
    def encode(self, ds: Dataset) -> bytes:
        """A de-identified dataset as DICOM Part 10 bytes (in its own transfer syntax)."""
        buffer = io.BytesIO()
        with _quiet_pydicom():
            dcmwrite(buffer, ds, enforce_file_format=True)
        return buffer.getvalue()

    def deidentify_file(self, src: Path, out_dir: Path) -> FileOutcome:
        """De-identify one file into ``out_dir/<new SOP Instance UID>.dcm``.

        Never raises for bad input: the outcome says ``ok``, ``quarantined`` (the object
        must not leave) or ``error`` (unreadable input, unwritable output); both failures
        copy the input to quarantine with our reason and are written to the audit log.
        """
        src = Path(src)
        digest = ""
        try:
            data = src.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            with _quiet_pydicom():
                ds = read_dataset(io.BytesIO(data))
                _check_complete(ds, data)
            report = self.deidentify(ds)
            blob = self.encode(ds)
        except QuarantineRequired as exc:
            return self._fail(src, digest, "quarantined", exc.reason)
        except DicomReadError as exc:
            return self._fail(src, digest, "error", str(exc))
        except IsADirectoryError:
            return self._fail(src, digest, "error", "is a directory, not a file")
        except FileNotFoundError:
            return self._fail(src, digest, "error", "file not found")
        except PermissionError:
            return self._fail(src, digest, "error", "permission denied reading the input")
        except OSError as exc:
            return self._fail(src, digest, "error", f"cannot read the input ({exc.strerror or type(exc).__name__})")
        except Exception as exc:  # values may be in pydicom's messages: report the type only
            return self._fail(src, digest, "error", f"cannot de-identify this object ({type(exc).__name__})")
        output = Path(out_dir) / f"{report.sop_instance_uid}.dcm"
        try:
            atomic_write_bytes(output, blob)
        except OSError as exc:
            return self._fail(src, digest, "error", f"cannot write the output ({exc.strerror or type(exc).__name__})")
        self._audit(digest, "ok", report=report)
        return FileOutcome(
            status="ok",
            source=src,
            output=output,
            sop_instance_uid=report.sop_instance_uid,
            study_instance_uid=report.study_instance_uid,
            series_instance_uid=report.series_instance_uid,
            report=report,
        )

    def _fail(self, src: Path, digest: str, status: Literal["quarantined", "error"], reason: str) -> FileOutcome:
        try:
            entry = quarantine_file(self.settings.quarantine_dir, src, reason, stage="deid")
            digest = digest or entry.sha256
        except OSError as exc:  # quarantine itself failed: still report, never crash the run
            reason = f"{reason}; quarantine failed ({exc.strerror or type(exc).__name__})"
        self._audit(digest, status, reason=reason)
        return FileOutcome(status=status, source=src, reason=reason)

    def _audit(self, digest: str, status: str, *, report: DeidReport | None = None, reason: str = "") -> None:
        record: dict[str, Any] = {"input_sha256": digest, "status": status}
        if report is not None:
            record.update(
                output_sop_instance_uid=report.sop_instance_uid,
                profile=report.profile,
                options=report.options,
                actions=report.counts,
                pixel_cleaned=report.pixel_cleaned,
            )
        else:
            record.update(reason=reason, profile=self.profile.description, options=self.profile.option_dict())
        record["station"] = self.settings.station_id
        with contextlib.suppress(OSError):
            append_audit(self.settings.audit_log, record)


_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_ENHANCED_WORDS = ("Enhanced", "Legacy Converted", "Segmentation", "Parametric Map", " SR", "RT ", "Presentation State")


def _is_enhanced(sop_class_uid: str) -> bool:
    """Enhanced multi-frame, SR, RT and presentation-state IODs, where more attributes are
    Type 1 (see ``profile.IOD_TYPES``)."""
    name = UID(sop_class_uid).name if sop_class_uid else ""
    return any(word in name for word in _ENHANCED_WORDS)


def _vr_of(tag: int, elem: DataElement | RawDataElement) -> str:
    """The element's VR; for implicit-VR and UN elements the dictionary's, when known."""
    vr = elem.VR
    if vr and vr != "UN":
        return vr
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        length = getattr(elem, "length", 0)
        return "SQ" if length == 0xFFFFFFFF else "UN"
    return vr.split(" or ")[0] if " or " in vr else vr


def _one_or_many(values: list[str]) -> Any:
    if not values:
        return ""
    return values[0] if len(values) == 1 else values


def clean_text(text: str, words: set[str]) -> str:
    """Remove identifying words (whole words, any case) and digit runs of 5 or more
    (possible IDs and dates) from a free-text descriptor."""
    parts = _WORD_SPLIT.split(text)
    kept = ["" if part.upper() in words else part for part in parts]
    cleaned = _LONG_DIGITS.sub("", "".join(kept))
    return _SPACES.sub(" ", cleaned).strip()


def station_name_for(station_id: str) -> str:
    """StationName is SH (at most 16 characters). A longer unit id keeps its last 16
    characters, where fleets put the unit number (REMOTE_MOBILE_CLINIC_01 ->
    MOBILE_CLINIC_01); the full id goes to the audit log."""
    return station_id if len(station_id) <= 16 else station_id[-16:].lstrip("_")


_KNOWN_VRS = frozenset(vr.value for vr in VR_)
_DELIMITER_END = (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")


def _check_complete(ds: Dataset, data: bytes) -> None:
    """Refuse a file that pydicom read only in part: pydicom stops quietly at a cut-off
    element, swallows the rest of the file after a bad VR, and never checks pixel sizes."""
    size = len(data)
    explicit = not ds.original_encoding[0] if ds.original_encoding[0] is not None else True
    last = None
    for tag in ds.keys():
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement):
            if explicit and elem.VR not in _KNOWN_VRS:
                raise DicomReadError("invalid value representation in the header (damaged file)")
            if elem.length != 0xFFFFFFFF and elem.value_tell + elem.length > size:
                raise DicomReadError("an element runs past the end of the file (truncated or damaged)")
        last = elem
    if isinstance(last, RawDataElement) and last.value_tell is not None:
        if last.length == 0xFFFFFFFF:
            ends = _DELIMITER_END[0] if ds.original_encoding[1] is not False else _DELIMITER_END[1]
            if not data.endswith(ends):
                raise DicomReadError("file ends inside a sequence or encapsulated pixel data (truncated)")
        elif last.value_tell + last.length != size:
            raise DicomReadError("unreadable bytes after the last element (truncated or damaged)")
    _check_pixel_length(ds)


def _check_pixel_length(ds: Dataset) -> None:
    """Refuse native pixel data shorter than its declared size (a truncated file)."""
    if "PixelData" not in ds:
        return
    elem = ds.get_item(0x7FE00010)
    length = getattr(elem, "length", None)
    if length is None or length == 0xFFFFFFFF:
        return
    try:
        expected = (
            int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
            * int(ds.get("NumberOfFrames", 1) or 1) * int(ds.BitsAllocated)
        )
    except (AttributeError, TypeError, ValueError):
        return
    value = elem.value
    actual = len(value) if isinstance(value, (bytes, bytearray)) else length
    if actual * 8 < expected:
        raise DicomReadError("pixel data shorter than the image size (truncated file)")
