"""The de-identification engine: one pass over the object, every sequence at any depth.

``Deidentifier(settings).deidentify_file(src, out_dir)`` reads a file, de-identifies it,
writes ``out_dir/<new SOP Instance UID>.dcm`` atomically, appends the audit log, and
quarantines the input with a reason if anything goes wrong (it never raises for bad
input). ``.deidentify(ds)`` does the same to a pydicom Dataset in place.

Speed comes from not doing work: the engine walks the file's bytes (``codec``), decides
each element from the precomputed ``tag -> action`` map, copies kept elements as slices
of the input (pixel data included, never decoded), and encodes only what it changes. The
few header values needed for decisions (SOP class, burned-in flags, patient key) are read
through pydicom from a dataset of just those elements.
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
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import pydicom
from pydicom.charset import decode_bytes, encode_string
from pydicom.datadict import dictionary_VR, get_private_entry
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import UID, UID_dictionary, ExplicitVRLittleEndian

from medsendx import __version__
from medsendx.config import Settings
from medsendx.deid import codec
from medsendx.deid import profile as P
from medsendx.deid.audit import append_audit, append_audit_lines
from medsendx.deid.codec import Element, Encoding, FormatError
from medsendx.deid.pixelrisk import IDENTIFYING_KEYWORDS, RISK_KEYWORDS, assess_header_risk, identifying_words
from medsendx.deid.uids import KeyedMapper, load_or_create_secret, shift_date, shift_datetime
from medsendx.deid.values import CODE_STRING_FORM, KEPT_CHECKS, TIME_FORM, UTC_OFFSET_FORM, check_kept
from medsendx.dicomio import DicomReadError
from medsendx.fsutil import DurableWriter, atomic_write, is_valid_uid, remove_stale_temps
from medsendx.quarantine import quarantine_file

# Our implementation UID: 2.25 + the UUID5 of the project name (stable across versions).
IMPLEMENTATION_CLASS_UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "medsendx").int)
IMPLEMENTATION_VERSION_NAME = f"MEDSENDX_{__version__}"[:16]
MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (the pixel screen's boxes)

# Dummy values for the D action, by VR. Sequences are kept with de-identified items; UIDs
# get keyed replacements; binary values are emptied (no dummy could mean anything).
DUMMY_TEXT: dict[str, str] = {
    "PN": "ANONYMOUS", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED",
    "ST": "ANONYMIZED", "UT": "ANONYMIZED", "UC": "ANONYMIZED", "CS": "ANONYMIZED",
    "AE": "ANONYMOUS", "DA": "19000101", "TM": "000000.00", "DT": "19000101000000.000000",
    "AS": "000Y", "IS": "0", "DS": "0",
}
DUMMY_BINARY: dict[str, bytes] = {"US": b"\0\0", "SS": b"\0\0", "UL": b"\0" * 4, "SL": b"\0" * 4, "FL": b"\0" * 4, "FD": b"\0" * 8, "SV": b"\0" * 8, "UV": b"\0" * 8}
CLEANABLE_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN", "CS"})
_first = itemgetter(0)  # sort (tag, chunk) pairs by tag
_WORD_SPLIT = re.compile(r"([^\w]+)")
_LONG_DIGITS = re.compile(r"\d{5,}")
_SPACES = re.compile(r"\s{2,}")

TAG_SOP_CLASS, TAG_SOP_INSTANCE = 0x00080016, 0x00080018
TAG_STUDY_UID, TAG_SERIES_UID = 0x0020000D, 0x0020000E
TAG_BURNED_IN = 0x00280301
TAG_CHARSET = 0x00080005
_TOP_UID_TAGS = frozenset({TAG_SOP_INSTANCE, TAG_STUDY_UID, TAG_SERIES_UID})
# Top-level attributes the engine reads before walking (decisions, patient key, words).
_RISK_TAGS = {keyword: pydicom.datadict.tag_for_keyword(keyword) for keyword in RISK_KEYWORDS}
_WORD_TAGS = frozenset(pydicom.datadict.tag_for_keyword(k) for k in IDENTIFYING_KEYWORDS)


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
    pixel_method: str = ""  # how the pixels were verified clean (empty: not attested)
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
class _Prepared:
    """A de-identified object waiting to be written."""

    source: Path
    digest: str
    chunks: list[bytes | memoryview]
    report: DeidReport


@dataclass
class _Context:
    """Per-object state shared by every level of the walk."""

    buf: bytes
    view: memoryview  # kept elements leave as slices of this: no copy until the write
    counts: Counter
    offset_days: int
    enhanced: bool
    derived: bool
    words: set[str] | None
    charset: list[str]
    top_uids: dict[int, str] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom's warnings quote element values; those must never reach a log."""
    logger = logging.getLogger("pydicom")
    disabled = logger.disabled  # (setLevel would clear every logger's cache: slow per file)
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled


@lru_cache(maxsize=4096)
def dict_vr(tag: int) -> str | None:
    """The data dictionary's VR of a public tag (first choice of ambiguous ones)."""
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr.split(" or ")[0] if " or " in vr else vr


def _element_vr(el: Element) -> str:
    """The VR that decides an element: explicit, else (implicit, UN) the dictionary's."""
    vr = el.vr
    if vr and vr != "UN":
        return vr
    known = dict_vr(el.tag)
    if known:
        return known
    return "SQ" if el.length == codec.UNDEFINED else "UN"


# "No cleaner given": use the one ``settings.pixels`` asks for (None for policy "quarantine").
SETTINGS_CLEANER: Any = object()


class Deidentifier:
    """PS3.15 Basic Profile plus the options in ``settings.deid``.

    ``pixel_cleaner(ds, identifying_words) -> PixelCleanResult`` (see ``medsendx.pixels``)
    is called for objects whose pixels may show identity; by default it is the cleaner of
    ``settings.pixels``; with ``pixel_cleaner=None`` such objects are quarantined. Which
    objects are at risk is ``pixelrisk.assess_header_risk``, the rule the pixel cleaner's
    ``needs_check`` applies too: with a cleaner present the check widens (a header that
    says BurnedInAnnotation NO on an ultrasound screen, and by default every object with
    pixels: ``PixelSettings.checks_every_object``).
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
        self._unlisted: dict[tuple[int, str], str] = {}
        self._needs_words = "C" in self.actions.values()
        self.station_name = settings.station_id
        self._provenance_cache: dict[Encoding, bytes] = {}
        self._check_every_object = pixel_cleaner is not None and settings.pixels.checks_every_object()
        self._options = self.profile.option_dict()  # (shared by every report: never mutated)

    # ------------------------------------------------------------------ public API
    def deidentify(self, ds: Dataset) -> DeidReport:
        """De-identify ``ds`` in place (same rules as files). Raises
        :class:`QuarantineRequired` when the object must not leave; ``ds`` is then left
        as it was."""
        with _quiet_pydicom():
            if getattr(ds, "file_meta", None) is None or "TransferSyntaxUID" not in ds.file_meta:
                ds.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            blob, report = self.deidentify_bytes(_encode(ds))
            result = pydicom.dcmread(io.BytesIO(blob))
        ds.clear()
        ds.update(result)
        ds.file_meta = result.file_meta
        ds.preamble = result.preamble
        ds.set_original_encoding(*result.original_encoding, result.original_character_set)
        return report

    def deidentify_file(
        self, src: Path, out_dir: Path, *, finish: Callable[[bytes], bytes] | None = None
    ) -> FileOutcome:
        """De-identify one file into ``out_dir/<new SOP Instance UID>.dcm`` (atomic, fsynced).

        Never raises for bad input: the outcome says ``ok``, ``quarantined`` (the object
        must not leave) or ``error`` (unreadable input, unwritable output); both failures
        copy the input to quarantine with our reason and are written to the audit log.
        ``finish`` (optional) maps the de-identified Part 10 bytes to the bytes written
        (the gateway compresses losslessly there), so the object is written only once.
        """
        prepared = self._prepare(Path(src))
        if isinstance(prepared, FileOutcome):
            return prepared
        output = Path(out_dir) / f"{prepared.report.sop_instance_uid}.dcm"
        chunks = prepared.chunks if finish is None else [finish(b"".join(prepared.chunks))]
        try:
            atomic_write(output, lambda fh: fh.writelines(chunks))
        except OSError as exc:
            return self._fail(prepared.source, prepared.digest, "error", _write_error(exc))
        return self._committed(prepared, output)

    def deidentify_files(self, sources: Iterable[Path], out_dir: Path, batch: int = 32) -> Iterator[FileOutcome]:
        """:meth:`deidentify_file` for many files, with the disk waits off the critical path.

        The same guarantee as one fsync per file (an output appears under its final name
        only once its bytes are on disk; a crash never leaves a partial output), through
        ``fsutil.DurableWriter``: background threads write and fdatasync the temp files
        while this thread de-identifies the next ones, then each batch of ``batch`` files
        is renamed into place with one folder fsync. Outcomes are yielded in input order once
        committed; the audit lines of each committed run are appended in one write."""
        out_dir = Path(out_dir)
        with contextlib.suppress(OSError):  # if this fails, each write says why
            out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(out_dir)  # half-written outputs of a run that was killed
        writer = DurableWriter(batch=batch)
        finished = False
        try:
            for src in sources:
                prepared = self._prepare(Path(src))
                if isinstance(prepared, _Prepared):
                    writer.write(out_dir / f"{prepared.report.sop_instance_uid}.dcm", prepared.chunks, prepared)
                    prepared.chunks = []  # the writer holds them until they are in the page cache
                else:
                    writer.passthrough(prepared)
                yield from self._settle(writer.ready(), out_dir)
            yield from self._settle(writer.close(), out_dir)
            finished = True
        finally:
            if not finished:  # the caller stopped early: still commit and audit what was written
                for _ in self._settle(writer.close(), out_dir):
                    pass

    def _settle(self, results: Iterable[tuple[Any, OSError | None]], out_dir: Path) -> Iterator[FileOutcome]:
        """Outcomes for the writer's results; one audit append for the committed ones."""
        outcomes: list[FileOutcome] = []
        records: list[dict[str, Any]] = []
        for token, error in results:
            if isinstance(token, FileOutcome):
                outcomes.append(token)  # failed before writing: already audited
            elif error is not None:
                outcomes.append(self._fail(token.source, token.digest, "error", _write_error(error)))
            else:
                report = token.report
                records.append(self._audit_record(token.digest, "ok", report=report))
                outcomes.append(_ok_outcome(token, out_dir / f"{report.sop_instance_uid}.dcm"))
        if records:
            with contextlib.suppress(OSError):
                append_audit_lines(self.settings.audit_log, records)
        return iter(outcomes)

    def _prepare(self, src: Path) -> _Prepared | FileOutcome:
        """Read, hash and de-identify ``src``; a failure is already a FileOutcome."""
        digest = ""
        try:
            data = src.read_bytes()  # (not mmap: a file truncated under us would SIGBUS)
            digest = hashlib.sha256(data).hexdigest()
            chunks, report = self._deidentify_chunks(data)
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
        except Exception as exc:  # values may be in library messages: report the type only
            return self._fail(src, digest, "error", f"cannot de-identify this object ({type(exc).__name__})")
        return _Prepared(src, digest, chunks, report)

    def _committed(self, prepared: _Prepared, output: Path) -> FileOutcome:
        self._audit(prepared.digest, "ok", report=prepared.report)
        return _ok_outcome(prepared, output)

    def deidentify_bytes(self, data: bytes) -> tuple[bytes, DeidReport]:
        """De-identify a Part 10 file given as bytes; returns the output file's bytes.

        Raises :class:`DicomReadError` (damaged input) or :class:`QuarantineRequired`."""
        chunks, report = self._deidentify_chunks(data)
        return b"".join(chunks), report

    def _deidentify_chunks(self, data: bytes) -> tuple[list[bytes | memoryview], DeidReport]:
        with _quiet_pydicom():
            try:
                return self._deidentify_bytes(data)
            except FormatError as exc:
                raise DicomReadError(str(exc)) from None

    # ------------------------------------------------------------------ the walk
    def _deidentify_bytes(self, data: bytes) -> tuple[list[bytes | memoryview], DeidReport]:
        """The output file as a list of chunks (slices of ``data`` for what is kept)."""
        part = codec.read_part10(data)
        buf, enc = part.body, part.encoding
        elements, _ = codec.parse_dataset(buf, part.body_start, len(buf), enc, dict_vr)
        index = {el.tag: el for el in elements}

        def text(tag: int) -> str:
            el = index.get(tag)
            if el is None or el.length == codec.UNDEFINED:
                return ""
            return buf[el.value : el.end].decode("latin-1").strip("\x00 ")

        _check_pixel_length(index, text, buf, enc)
        sop_class = text(TAG_SOP_CLASS)
        if not sop_class or TAG_SOP_INSTANCE not in index:
            media_class = part.meta.get(0x00020002, b"").decode("latin-1").strip("\x00 ")
            if media_class == MEDIA_DIRECTORY_SOP_CLASS:
                raise QuarantineRequired("media directory (DICOMDIR), not an object to send")
            raise QuarantineRequired("not a composite object (no SOP Class or SOP Instance UID)")
        header = {keyword: text(tag) for keyword, tag in _RISK_TAGS.items() if tag in index}
        has_pixels = any(tag in index for tag in (codec.PIXEL_DATA, 0x7FE00008, 0x7FE00009))
        embedded_overlay = any(
            (g << 16 | 0x0102) in index and (g << 16 | 0x3000) not in index and _us(buf, index[g << 16 | 0x0102], enc) != 0
            for g in range(0x6000, 0x6020, 2)
        )
        risk = assess_header_risk(
            header, has_pixels, embedded_overlay, checker=self.pixel_cleaner is not None, every_object=self._check_every_object
        )
        if risk is not None and (not risk.cleanable or self.pixel_cleaner is None):
            raise QuarantineRequired(risk.reason)
        words = None
        if self._needs_words:  # (otherwise only the pixel cleaner needs them, and only if it runs)
            words = identifying_words(self._header_dataset(buf, elements, enc))
        patient_id = text(0x00100020)
        if patient_id:
            key = f"id:{text(0x00100021)}|{patient_id}"
        elif text(0x00100010):
            key = f"name:{text(0x00100010)}|{text(0x00100030)}"
        else:
            key = f"study:{text(TAG_STUDY_UID)}"
        charset = [c.strip() for c in text(TAG_CHARSET).split("\\")] if TAG_CHARSET in index else ["ISO_IR 6"]
        ctx = _Context(
            buf=buf,
            view=memoryview(buf),
            counts=Counter(),
            offset_days=self.mapper.date_offset_days(key),
            enhanced=_is_enhanced(sop_class),
            derived=text(0x00080008).upper().startswith("DERIVED"),
            words=words,
            charset=charset,
        )
        out = self._walk(elements, enc, ctx, 0)
        if risk is not None and text(TAG_BURNED_IN).upper() == "NO" and not _claim_required(sop_class):
            # The pixels are ours to check: a scanner's "NO" does not travel on as if our check
            # had backed it (the cleaner writes "NO" again when it attests). Where the IOD
            # requires the attribute it stays, the scanner's word.
            out = [(tag, chunk) for tag, chunk in out if tag != TAG_BURNED_IN]
        out.extend(self._identity_and_provenance(key, enc))
        out.sort(key=_first)
        body: list[bytes | memoryview] = [chunk for _, chunk in out]
        if part.deflated:
            body = [codec.deflate(b"".join(body))]
        sop_instance = ctx.top_uids.get(TAG_SOP_INSTANCE, "")
        # These UIDs name the output file, the outbox's spool file, folder and S3 keys; with
        # Retain UIDs they are the file's own values: nothing but a UID may become a name.
        for tag, label in ((TAG_SOP_INSTANCE, "SOP Instance"), (TAG_STUDY_UID, "Study Instance"), (TAG_SERIES_UID, "Series Instance")):
            if (tag == TAG_SOP_INSTANCE or tag in ctx.top_uids) and not is_valid_uid(ctx.top_uids.get(tag, "")):
                raise QuarantineRequired(f"{label} UID is not a valid UID (digits and dots, at most 64 characters)")
        meta = codec.file_meta(
            sop_class, sop_instance, part.transfer_syntax, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
        )
        chunks: list[bytes | memoryview] = [b"\x00" * 128 + b"DICM" + meta, *body]
        report = DeidReport(
            sop_instance_uid=sop_instance,
            study_instance_uid=ctx.top_uids.get(TAG_STUDY_UID, ""),
            series_instance_uid=ctx.top_uids.get(TAG_SERIES_UID, ""),
            counts=dict(sorted(ctx.counts.items())),
            profile=self.profile.description,
            options=self._options,
        )
        if risk is not None:  # a cleaner is present and the risk is one it can fix
            # Screened only (at risk just because every object is checked): the screen runs on
            # the pixel bytes as stored; the object is parsed again and decoded only if it fires,
            # and the cleaner is handed the screen's boxes (the output's pixels are these bytes).
            screened = self._screen_native(index, buf, enc, text, part.transfer_syntax) if risk.screened_only else None
            if screened is not None and not any(screened):
                return chunks, report  # nothing found, nothing changed, nothing attested
            if words is None:
                words = identifying_words(self._header_dataset(buf, elements, enc))
            chunks, report.pixel_method = self._clean_pixels(b"".join(chunks), words, risk.reason, screened)
            report.pixel_cleaned = bool(report.pixel_method)
        return chunks, report

    def _screen_native(
        self, index: dict[int, Element], buf: bytes, enc: Encoding, text: Callable[[int], str], syntax: str
    ) -> list[list[Box]] | None:
        """The cleaner's screen (``screen_boxes``) on the uncompressed Pixel Data of the input
        (the output keeps it byte for byte): its boxes per frame, up to the first frame where
        it fires (none fires: the full check is not needed); None whenever it cannot say (no
        such screen, compressed or unusual pixel data)."""
        screen = getattr(self.pixel_cleaner, "screen_boxes", None)
        pixel = index.get(codec.PIXEL_DATA)
        if screen is None or pixel is None or pixel.length == codec.UNDEFINED:
            return None
        from medsendx.pixels.native import NativeLayout

        values: dict[str, int] = {}
        for name, tag in _LAYOUT_TAGS.items():
            el = index.get(tag)
            value = _us(buf, el, enc) if el is not None else None
            if value is None:
                return None
            values[name] = value
        try:
            frames = int(text(0x00280008) or 1)
        except ValueError:
            return None
        layout = NativeLayout(**values, frames=frames, photometric=text(0x00280004), transfer_syntax=syntax)
        try:
            return screen(layout, memoryview(buf)[pixel.value : pixel.end])
        except Exception:  # the full check decides (and says why)
            return None

    def _header_dataset(self, buf: bytes, elements: list[Element], enc: Encoding) -> Dataset:
        """A pydicom Dataset of the top-level elements whose words identify the patient."""
        raw: dict[int, RawDataElement] = {}
        for el in elements:
            if el.tag in _WORD_TAGS or el.tag == TAG_CHARSET:
                value = buf[el.value : el.end] if el.length != codec.UNDEFINED else b""
                raw[el.tag] = RawDataElement(el.tag, el.vr, len(value), value, el.value, enc.implicit, enc.little)
        return Dataset(raw)

    def _walk(self, elements: list[Element], enc: Encoding, ctx: _Context, depth: int) -> list[tuple[int, bytes | memoryview]]:
        actions, unlisted, view, buf, kept_check = self.actions, self._unlisted, ctx.view, ctx.buf, KEPT_CHECKS.get
        out: list[tuple[int, bytes | memoryview]] = []
        append = out.append
        private: list[Element] = []
        for el in elements:
            tag, vr = el[0], el[1]
            if (tag >> 16) & 1:
                private.append(el)
                continue
            if not vr or vr == "UN":
                vr = _element_vr(el)
            action = actions.get(tag)
            if action is None:
                action = unlisted.get((tag, vr)) or self._unlisted_action(tag, vr)
            if action == "K" and vr != "SQ" and (depth or tag not in _TOP_UID_TAGS):
                check = kept_check(vr)  # a damaged value must not leave as it came
                if check is not None:
                    check(buf, el)
                append((tag, view[el[2] : el[4]]))  # the common case, inlined: kept as is
                continue
            chunk = self._apply(el, vr, action, enc, ctx, depth)
            if chunk is not None:
                append((tag, chunk))
        if private:
            out.extend(self._private(private, ctx))
        return out

    def _unlisted_action(self, tag: int, vr: str) -> str:
        """The rule for attributes the table has no row for (see ``profile``)."""
        key = (tag, vr)
        action = self._unlisted.get(key)
        if action is not None:
            return action
        group, element = tag >> 16, tag & 0xFFFF
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

    def _apply(self, el: Element, vr: str, action: str, enc: Encoding, ctx: _Context, depth: int) -> bytes | memoryview | None:
        """The encoded element after ``action``, or None when it is removed."""
        counts = ctx.counts
        buf = ctx.buf
        tag = el.tag
        if action == "K":
            if vr == "SQ":
                return self._sequence(el, enc, ctx, depth)
            check_kept(buf, el, vr)
            if tag in (TAG_SOP_INSTANCE, TAG_STUDY_UID, TAG_SERIES_UID) and depth == 0:
                ctx.top_uids[tag] = "\\".join(codec.ascii_values(buf, el))
            return ctx.view[el.start : el.end]
        if action == "XU":
            counts["X_unlisted"] += 1
            return None
        if action == "X" or action == P.PROVENANCE:
            counts["X"] += 1
            return None
        if action in P.COMBINED_ACTIONS:
            return self._apply(el, vr, P.resolve_combined(action, self._iod_type(tag, ctx, depth)), enc, ctx, depth)
        out_vr = vr  # (an implicit-VR header carries no VR; it still decides the padding)
        if action == "U" or action == "UIDCHECK":
            if vr == "SQ":
                counts["U"] += 1
                return self._sequence(el, enc, ctx, depth)
            values = codec.ascii_values(buf, el)
            if action == "UIDCHECK" and all(v in UID_dictionary for v in values):
                check_kept(buf, el, vr)
                return ctx.view[el.start : el.end]
            mapped = [self.mapper.uid(v) for v in values]
            if depth == 0 and tag in (TAG_SOP_INSTANCE, TAG_STUDY_UID, TAG_SERIES_UID):
                ctx.top_uids[tag] = "\\".join(mapped)
            counts["U"] += 1
            return codec.text_element(tag, "UI", mapped, enc)
        if action == "Z":
            counts["Z"] += 1
            if vr == "SQ" or el.vr == "UN":
                return codec.header(tag, el.vr or "SQ", 0, enc)
            return codec.header(tag, out_vr, 0, enc)
        if action == "D":
            if vr == "SQ":
                counts["D"] += 1
                return self._sequence(el, enc, ctx, depth)
            if vr == "UI":
                return self._apply(el, vr, "U", enc, ctx, depth)
            counts["D"] += 1
            if vr in DUMMY_TEXT:
                return codec.text_element(tag, out_vr, DUMMY_TEXT[vr], enc)
            return codec.element(tag, out_vr, DUMMY_BINARY.get(vr, b""), enc)
        if action == P.SHIFT:
            if vr == "DA" or vr == "DT":
                shift = shift_date if vr == "DA" else shift_datetime
                shifted = [s for s in (shift(v, ctx.offset_days) for v in codec.ascii_values(buf, el)) if s]
                counts["C"] += 1
                return codec.text_element(tag, out_vr, shifted, enc)
            if vr == "SQ":
                return self._sequence(el, enc, ctx, depth)
            if vr == "TM" or vr == "SH":
                # Times of day and UTC offsets (TimezoneOffsetFromUTC, SH): whole-day shifts
                # keep them, but only in their exact form; any other value is removed.
                form = TIME_FORM if vr == "TM" else UTC_OFFSET_FORM
                values = codec.ascii_values(buf, el)
                valid = [v for v in values if form.fullmatch(v)]
                if len(valid) == len(values):
                    check_kept(buf, el, vr)
                    counts["K"] += 1
                    return ctx.view[el.start : el.end]
                counts["C"] += 1
                return codec.text_element(tag, out_vr, valid, enc)
            counts["X"] += 1  # binary timestamps cannot be shifted
            return None
        if action == "C":
            counts["C"] += 1
            if vr == "SQ":
                return self._sequence(el, enc, ctx, depth)
            if vr == "AE":
                return codec.text_element(tag, out_vr, DUMMY_TEXT["AE"], enc)
            if vr in CLEANABLE_TEXT_VRS:
                check_kept(buf, el, vr)  # (a swallowed element's words are not in ctx.words)
                text = decode_bytes(buf[el.value : el.end], ctx.charset, set()).strip("\x00 ")
                parts = [clean_text(part, ctx.words or set()) for part in text.split("\\")]
                if vr == "CS":  # a coded string stays only as one (upper case, digits, _)
                    parts = [part for part in parts if CODE_STRING_FORM.fullmatch(part)]
                return codec.element(tag, out_vr, encode_string("\\".join(parts), ctx.charset), enc)
            return None
        if action in (P.NAME, P.PSEUDONYM, P.STATION):
            counts["D"] += 1
            if depth == 0:
                return None  # written with the provenance, present or not in the input
            if action == P.NAME:
                return codec.text_element(tag, out_vr, self.settings.deid.patient_name, enc)
            if action == P.STATION:
                return codec.text_element(tag, out_vr, self.station_name, enc)
            values = codec.ascii_values(buf, el)
            return codec.text_element(tag, out_vr, self.mapper.patient_pseudonym(f"id:|{values[0]}") if values else "", enc)
        raise ValueError(f"unknown de-identification action {action!r}")  # pragma: no cover

    def _sequence(self, el: Element, enc: Encoding, ctx: _Context, depth: int) -> bytes:
        """A kept sequence, every item de-identified, re-encoded with undefined lengths.
        A UN element holding a sequence keeps VR UN and its implicit-VR items."""
        content = codec.IMPLICIT_LE if el.vr == "UN" else enc
        parts = [codec.header(el.tag, "UN" if el.vr == "UN" else "SQ", codec.UNDEFINED, enc)]
        for start, end, undefined in codec.sequence_items(ctx.buf, el, content, dict_vr, depth):
            if undefined:
                items, _ = codec.parse_dataset(ctx.buf, start, end + 8, content, dict_vr, until_item_end=True, depth=depth + 1)
            else:
                items, _ = codec.parse_dataset(ctx.buf, start, end, content, dict_vr, depth=depth + 1)
            walked = self._walk(items, content, ctx, depth + 1)
            walked.sort(key=_first)
            parts.append(codec.item_start(content))
            parts.extend(chunk for _, chunk in walked)
            parts.append(codec.item_end(content))
        parts.append(codec.sequence_end(content))
        return b"".join(parts)

    def _iod_type(self, tag: int, ctx: _Context, depth: int) -> int:
        if depth > 0:
            return 3
        classic, enhanced = P.IOD_TYPES.get(tag, (3, 3))
        if tag in (0x00082112, 0x00081140) and ctx.derived:
            return 1
        return enhanced if ctx.enhanced else classic

    def _private(self, elements: list[Element], ctx: _Context) -> list[tuple[int, bytes | memoryview]]:
        """Private elements: all removed, or with Retain Safe Private only the allow-list
        (and the creators of the blocks that hold them)."""
        keep: dict[int, bytes | memoryview] = {}
        if self.settings.deid.retain_safe_private:
            creators = {
                el.tag: "".join(codec.ascii_values(ctx.buf, el)).strip()
                for el in elements
                if 0x0010 <= (el.tag & 0xFFFF) <= 0x00FF
            }
            for el in elements:
                group, element = el.tag >> 16, el.tag & 0xFFFF
                if element < 0x1000:
                    continue
                creator_tag = (group << 16) | (element >> 8)
                creator = creators.get(creator_tag)
                if creator is None or (creator, group, element & 0xFF) not in P.SAFE_PRIVATE:
                    continue
                vr = el.vr
                if vr in (None, "UN"):
                    with contextlib.suppress(KeyError):
                        vr = get_private_entry(el.tag, creator)[0]
                if vr in P.SAFE_PRIVATE_VRS:
                    check_kept(ctx.buf, el, vr)
                    keep[el.tag] = ctx.view[el.start : el.end]
                    creator_el = next(c for c in elements if c.tag == creator_tag)
                    keep[creator_tag] = ctx.view[creator_el.start : creator_el.end]
        ctx.counts["X_private"] += len(elements) - len(keep)
        if keep:
            ctx.counts["K_private"] += len(keep)
        return list(keep.items())

    def _identity_and_provenance(self, key: str, enc: Encoding) -> list[tuple[int, bytes | memoryview]]:
        """PatientName, PatientID and StationName (always present in the output), and the
        de-identification record (constant per option set, encoded once)."""
        out_vr = None  # the dictionary VRs below; implicit-VR headers simply omit them
        identity = [
            (0x00100010, codec.text_element(0x00100010, out_vr or "PN", self.settings.deid.patient_name, enc)),
            (0x00100020, codec.text_element(0x00100020, out_vr or "LO", self.mapper.patient_pseudonym(key), enc)),
            (0x00081010, codec.text_element(0x00081010, out_vr or "SH", self.station_name, enc)),
        ]
        provenance = self._provenance_cache.get(enc)
        if provenance is None:
            codes = []
            for value, meaning in self.profile.method_codes:
                codes.append(codec.item_start(enc))
                codes.append(codec.text_element(0x00080100, out_vr or "SH", value, enc))
                codes.append(codec.text_element(0x00080102, out_vr or "SH", "DCM", enc))
                codes.append(codec.text_element(0x00080104, out_vr or "LO", meaning, enc))
                codes.append(codec.item_end(enc))
            provenance = b"".join(
                (
                    codec.text_element(0x00120062, out_vr or "CS", "YES", enc),
                    codec.text_element(0x00120063, out_vr or "LO", self.profile.method_values, enc),
                    codec.header(0x00120064, "SQ", codec.UNDEFINED, enc),
                    *codes,
                    codec.sequence_end(enc),
                )
            )
            self._provenance_cache[enc] = provenance
        temporal = {"full": "UNMODIFIED", "modified": "MODIFIED"}.get(self.settings.deid.dates, "REMOVED")
        return identity + [
            (0x00120062, provenance),  # 0012,0062..0064 in one chunk, in tag order
            (0x00280303, codec.text_element(0x00280303, out_vr or "CS", temporal, enc)),
        ]

    def _clean_pixels(
        self, blob: bytes, words: set[str], risk_reason: str, screened: list[list[Box]] | None = None
    ) -> tuple[list[bytes | memoryview], str]:
        """Hand the de-identified object to the pixel cleaner: (output chunks, how the pixels
        were cleaned; "" when nothing was attested or changed). ``screened``: the boxes its
        ``screen_boxes`` gave on these pixels (not screened again)."""
        ds = pydicom.dcmread(io.BytesIO(blob))
        if screened is not None:
            result = self.pixel_cleaner(ds, words, screened=screened)  # type: ignore[misc, call-arg]
        else:
            result = self.pixel_cleaner(ds, words)  # type: ignore[misc]
        if not getattr(result, "clean", False):
            raise QuarantineRequired(getattr(result, "reason", "") or risk_reason)
        if not getattr(result, "attest", True):
            # Nothing claimed (a screen found nothing): no attestation, and the output is
            # the header-only result unless the cleaner changed pixels.
            # (the input's "NO" was left out already, see _deidentify_bytes)
            return ([_encode(ds)] if getattr(result, "changed", False) else [blob]), ""
        ds.BurnedInAnnotation = "NO"
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator = P.CODE_CLEAN_PIXELS[0], "DCM"
        item.CodeMeaning = P.CODE_CLEAN_PIXELS[1]
        codes = list(ds.DeidentificationMethodCodeSequence)
        ds.DeidentificationMethodCodeSequence = Sequence([codes[0], item, *codes[1:]])
        return [_encode(ds)], str(getattr(result, "method", "") or "pixel cleaner")

    # ------------------------------------------------------------------ failures
    def _fail(self, src: Path, digest: str, status: Literal["quarantined", "error"], reason: str) -> FileOutcome:
        try:
            entry = quarantine_file(self.settings.quarantine_dir, src, reason, stage="deid")
            digest = digest or entry.sha256
        except OSError as exc:  # quarantine itself failed: still report, never crash the run
            reason = f"{reason}; quarantine failed ({exc.strerror or type(exc).__name__})"
        self._audit(digest, status, reason=reason)
        return FileOutcome(status=status, source=src, reason=reason)

    def _audit(self, digest: str, status: str, *, report: DeidReport | None = None, reason: str = "") -> None:
        with contextlib.suppress(OSError):
            append_audit(self.settings.audit_log, self._audit_record(digest, status, report=report, reason=reason))

    def _audit_record(self, digest: str, status: str, *, report: DeidReport | None = None, reason: str = "") -> dict[str, Any]:
        record: dict[str, Any] = {"input_sha256": digest, "status": status}
        if report is not None:
            record.update(
                output_sop_instance_uid=report.sop_instance_uid,
                profile=report.profile,
                options=report.options,
                actions=report.counts,
                pixel_cleaned=report.pixel_cleaned,
                pixel_method=report.pixel_method,
            )
        else:
            record.update(reason=reason, profile=self.profile.description, options=self._options)
        record["station"] = self.settings.station_id
        return record


def _ok_outcome(prepared: _Prepared, output: Path) -> FileOutcome:
    report = prepared.report
    return FileOutcome(
        status="ok",
        source=prepared.source,
        output=output,
        sop_instance_uid=report.sop_instance_uid,
        study_instance_uid=report.study_instance_uid,
        series_instance_uid=report.series_instance_uid,
        report=report,
    )


_ENHANCED_WORDS = ("Enhanced", "Legacy Converted", "Segmentation", "Parametric Map", " SR", "RT ", "Presentation State")


def _is_enhanced(sop_class_uid: str) -> bool:
    """Enhanced multi-frame, SR, RT and presentation-state IODs, where more attributes are
    Type 1 (see ``profile.IOD_TYPES``)."""
    name = UID(sop_class_uid).name if sop_class_uid else ""
    return any(word in name for word in _ENHANCED_WORDS)


# SOP classes whose image module makes Burned In Annotation Type 1 (DX, mammography and
# intra-oral images; the enhanced and whole-slide IODs): the attribute cannot be left out.
_CLAIM_REQUIRED_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1",  # DX for presentation / processing
    "1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.1.2.1",  # mammography
    "1.2.840.10008.5.1.4.1.1.1.3", "1.2.840.10008.5.1.4.1.1.1.3.1",  # intra-oral
    "1.2.840.10008.5.1.4.1.1.77.1.6",  # VL whole slide microscopy
})


def _claim_required(sop_class: str) -> bool:
    return sop_class in _CLAIM_REQUIRED_CLASSES or _is_enhanced(sop_class)


def _encode(ds: Dataset) -> bytes:
    """A pydicom Dataset as Part 10 bytes in its own transfer syntax."""
    buffer = io.BytesIO()
    if getattr(ds, "preamble", None) is None:
        ds.preamble = b"\x00" * 128
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def clean_text(text: str, words: set[str]) -> str:
    """Remove identifying words (whole words, any case) and digit runs of 5 or more
    (possible IDs and dates) from a free-text descriptor."""
    parts = _WORD_SPLIT.split(text)
    kept = ["" if part.upper() in words else part for part in parts]
    cleaned = _LONG_DIGITS.sub("", "".join(kept))
    return _SPACES.sub(" ", cleaned).strip()


def _write_error(exc: OSError) -> str:
    return f"cannot write the output ({exc.strerror or type(exc).__name__})"


# The Image Pixel attributes the native screen needs (US values), by NativeLayout field.
_LAYOUT_TAGS = {
    "rows": 0x00280010, "columns": 0x00280011, "samples": 0x00280002,
    "bits_allocated": 0x00280100, "bits_stored": 0x00280101, "pixel_representation": 0x00280103,
}  # fmt: skip


def _us(buf: bytes, el: Element, enc: Encoding) -> int | None:
    """An unsigned short value (US) of a raw element, or None if it is not one."""
    if el.end - el.value < 2 or el.vr not in (None, "US"):
        return None
    return enc._h.unpack_from(buf, el.value)[0]


def _check_pixel_length(index: dict[int, Element], text: Callable[[int], str], buf: bytes, enc: Encoding) -> None:
    """Refuse native pixel data shorter than its declared size (a truncated file)."""
    pixel = index.get(codec.PIXEL_DATA)
    if pixel is None or pixel.length == codec.UNDEFINED:
        return
    sizes = [index.get(tag) for tag in (0x00280010, 0x00280011, 0x00280100)]
    if any(el is None for el in sizes):
        return
    rows, columns, bits = (_us(buf, el, enc) for el in sizes)  # type: ignore[arg-type]
    samples = _us(buf, index[0x00280002], enc) if 0x00280002 in index else 1
    try:
        frames = int(text(0x00280008) or 1)
    except ValueError:
        frames = 1
    if None in (rows, columns, bits, samples):
        return
    if "422" in text(0x00280004):  # YBR_FULL_422: two chroma samples per two pixels
        samples = 2
    if pixel.length * 8 < rows * columns * samples * max(frames, 1) * bits:  # type: ignore[operator]
        raise DicomReadError("pixel data shorter than the image size (truncated file)")
