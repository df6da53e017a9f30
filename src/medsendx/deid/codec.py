"""Byte-level DICOM parsing and encoding for the de-identification engine.

The engine never needs most values: it needs the tag, the VR and where each element's
bytes are. Parsing only that (``struct.unpack_from`` on the file's bytes) and copying kept
elements as slices of the input is several times faster than building pydicom elements
and writing them back, and it guarantees that kept values, pixel data included, pass
through byte for byte.

Handled: the Part 10 file meta, implicit VR little endian, explicit VR little and big
endian, deflated explicit VR little endian, sequences and items of defined or undefined
length at any depth, UN elements holding sequences, encapsulated pixel data.
``FormatError`` means the bytes are damaged (truncated, bad VR, runs past the end) or use
a structure we refuse (undefined length on an element that is not a sequence or pixel
data; an implicit-VR item inside an explicit-VR file; sequences nested deeper than
``MAX_DEPTH``; a transfer syntax we do not know; a deflated dataset that would inflate
beyond ``inflate_limit``): such objects go to quarantine.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import NamedTuple

from pydicom.uid import UID_dictionary

UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010

IMPLICIT_LE_UID = "1.2.840.10008.1.2"
IMPLICIT_LE_UIDS = (IMPLICIT_LE_UID, "1.2.840.10008.1.20")  # (the second: retired Papyrus 3)
EXPLICIT_BE_UID = "1.2.840.10008.1.2.2"
# Deflated Explicit VR Little Endian: the whole dataset is deflated. (Deflated Image Frame
# Compression, 1.2.840.10008.1.2.8.1, deflates pixel frames only: an encapsulated syntax.)
DEFLATED_UIDS = ("1.2.840.10008.1.2.1.99",)
# Every transfer syntax of the standard's registry (native, deflated, encapsulated). Any
# other UID (a private or a damaged one) is refused: guessing its encoding could misread
# where elements end, and the output would declare a syntax we cannot vouch for.
KNOWN_TRANSFER_SYNTAXES = frozenset(
    {uid for uid, entry in UID_dictionary.items() if entry[1] == "Transfer Syntax"} | {"1.2.840.10008.1.2.8.1"}
)

# Deepest nesting of sequence items we walk (the top-level dataset is depth 0, the items
# of its sequences depth 1). Real objects (SR content trees included) stay far below;
# the limit keeps both walks (Python and compiled, which share this number) well inside
# their recursion budgets, so they agree at every depth instead of one of them dying.
MAX_DEPTH = 64
TOO_DEEP = f"sequences nested deeper than {MAX_DEPTH} levels"

# What a deflated dataset may inflate to: a zip bomb (a few hundred KB of zeros making
# gigabytes) must not cost the memory it asks for. Real images deflate by a few times,
# text-heavy objects by tens; both limits are far above that.
INFLATE_RATIO = 64
INFLATE_FLOOR = 32 << 20  # at least this much is always allowed
INFLATE_MAX = 1 << 30  # and never more than this


def inflate_limit(compressed_size: int) -> int:
    """The most bytes a deflated dataset of ``compressed_size`` bytes may inflate to."""
    return min(INFLATE_MAX, max(INFLATE_FLOOR, INFLATE_RATIO * compressed_size))


LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
VALID_VRS = LONG_VRS | frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US"}
)
_VR_BYTES = {vr.encode(): vr for vr in VALID_VRS}
VR_CODES = tuple(sorted(VALID_VRS))  # numbered 1.. by the compiled walk (_codec.c lists them in this order)
# Padding to an even length: UIDs and binary values with NUL, text with a space.
_NUL_PADDED = frozenset({"UI", "OB", "OD", "OF", "OL", "OV", "OW", "UN", "SV", "UV", "SL", "SS", "UL", "US", "FL", "FD", "AT"})


class FormatError(Exception):
    """The bytes are not a well-formed DICOM object (our own one-line wording)."""


@dataclass(frozen=True)
class Encoding:
    implicit: bool
    little: bool

    def __post_init__(self) -> None:
        order = "<" if self.little else ">"
        object.__setattr__(self, "_hh", struct.Struct(order + "HH"))
        object.__setattr__(self, "_h", struct.Struct(order + "H"))
        object.__setattr__(self, "_i", struct.Struct(order + "I"))
        object.__setattr__(self, "_hhi", struct.Struct(order + "HHI"))
        object.__setattr__(self, "_head", struct.Struct(order + "HH4s"))


IMPLICIT_LE = Encoding(implicit=True, little=True)
EXPLICIT_LE = Encoding(implicit=False, little=True)
EXPLICIT_BE = Encoding(implicit=False, little=False)


_new_element = tuple.__new__  # builds an Element without the Python-level NamedTuple.__new__


class Element(NamedTuple):
    """Where one element is: ``start`` of its header, ``value`` start, ``end`` (after any
    delimiter), the declared ``length`` and the explicit ``vr`` (None when implicit)."""

    tag: int
    vr: str | None
    start: int
    value: int
    end: int
    length: int


@dataclass
class Part10:
    """A Part 10 file split into its meta information and its dataset bytes."""

    meta: dict[int, bytes]
    transfer_syntax: str
    encoding: Encoding
    deflated: bool
    body: bytes  # the dataset bytes (inflated if the file was deflated)
    body_start: int  # offset of the dataset in ``body``


def read_part10(data: bytes) -> Part10:
    """Split a Part 10 file; raises :class:`FormatError` with our own wording."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise FormatError("not a DICOM file (no DICM preamble)")
    pos, size = 132, len(data)
    meta: dict[int, bytes] = {}
    unpack_hh, unpack_h, unpack_i = EXPLICIT_LE._hh.unpack_from, EXPLICIT_LE._h.unpack_from, EXPLICIT_LE._i.unpack_from
    while pos + 8 <= size:
        group, elem = unpack_hh(data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr.decode("latin-1") in LONG_VRS:
            if pos + 12 > size:
                raise FormatError("damaged file meta information (truncated)")
            length, value = unpack_i(data, pos + 8)[0], pos + 12
        elif vr in _VR_BYTES:
            length, value = unpack_h(data, pos + 6)[0], pos + 8
        else:
            raise FormatError("damaged file meta information (bad value representation)")
        if length == UNDEFINED or value + length > size:
            raise FormatError("damaged file meta information (truncated)")
        meta[(group << 16) | elem] = data[value : value + length]
        pos = value + length
    ts_bytes = meta.get(0x00020010)
    if not ts_bytes:
        raise FormatError("no transfer syntax in the file meta information")
    ts = ts_bytes.decode("latin-1").strip("\x00 ")
    if ts not in KNOWN_TRANSFER_SYNTAXES:
        raise FormatError("unknown transfer syntax (not one of the standard's)")
    if ts in DEFLATED_UIDS:
        compressed = memoryview(data)[pos:]
        limit = inflate_limit(len(compressed))
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            body = inflater.decompress(compressed, limit)
        except zlib.error:
            raise FormatError("damaged deflated dataset") from None
        if inflater.unconsumed_tail:
            raise FormatError(f"deflated dataset inflates beyond {limit >> 20} MB (refused)")
        return Part10(meta, ts, EXPLICIT_LE, True, body, 0)
    encoding = IMPLICIT_LE if ts in IMPLICIT_LE_UIDS else (EXPLICIT_BE if ts == EXPLICIT_BE_UID else EXPLICIT_LE)
    return Part10(meta, ts, encoding, False, data, pos)


def parse_dataset(
    buf: bytes, pos: int, end: int, enc: Encoding, dict_vr, *, until_item_end: bool = False, depth: int = 0
) -> tuple[list[Element], int]:
    """The elements of one dataset between ``pos`` and ``end``, or up to the item
    delimiter when ``until_item_end``. Returns the elements and the position after them
    (after the delimiter). ``dict_vr(tag)`` gives the dictionary VR of a tag or None.
    ``depth`` is the nesting level of this dataset (0 = top level; see ``MAX_DEPTH``).

    The compiled walk (``_native``) does this when it is available; the Python walk
    below is the reference it is tested against, and the fallback."""
    if type(buf) is bytes and _native.available():
        return _native.parse_dataset(buf, pos, end, enc, dict_vr, until_item_end, depth)
    return parse_dataset_python(buf, pos, end, enc, dict_vr, until_item_end=until_item_end, depth=depth)


def parse_dataset_python(
    buf: bytes, pos: int, end: int, enc: Encoding, dict_vr, *, until_item_end: bool = False, depth: int = 0
) -> tuple[list[Element], int]:
    """:func:`parse_dataset` in Python (the reference)."""
    elements: list[Element] = []
    unpack_i = enc._i.unpack_from
    # One unpack per header: (group, element, 4 bytes) = VR + short length when explicit,
    # or the 32-bit length when implicit.
    unpack_head = enc._head.unpack_from
    implicit = enc.implicit
    append = elements.append
    vr_of = _VR_BYTES.get
    short_length = enc._h.unpack_from
    while pos < end:
        if pos + 8 > end:
            raise FormatError("file ends inside an element header (truncated)")
        group, elem, rest = unpack_head(buf, pos)
        tag = (group << 16) | elem
        if group == 0xFFFE:
            if tag == ITEM_END and until_item_end:
                return elements, pos + 8
            raise FormatError("misplaced item or delimiter (damaged file)")
        if implicit:
            vr = None
            length = unpack_i(buf, pos + 4)[0]
            value = pos + 8
        else:
            vr = vr_of(rest[:2])
            if vr is None:
                raise FormatError("invalid value representation (damaged file)")
            if vr in LONG_VRS:
                if pos + 12 > end:
                    raise FormatError("file ends inside an element header (truncated)")
                length = unpack_i(buf, pos + 8)[0]
                value = pos + 12
            else:
                length = short_length(rest, 2)[0]
                value = pos + 8
        if length == UNDEFINED:
            if tag == PIXEL_DATA:
                stop = skip_fragments(buf, value, end, enc)
            elif vr in (None, "SQ", "UN"):
                content = IMPLICIT_LE if vr == "UN" else enc
                if vr is None and dict_vr(tag) not in (None, "SQ", "UN"):
                    raise FormatError("undefined length on an element that is not a sequence")
                stop = skip_sequence(buf, value, end, content, dict_vr, depth)
            else:
                raise FormatError("undefined length on an element that is not a sequence")
        else:
            stop = value + length
            if stop > end:
                raise FormatError("an element runs past the end of the file (truncated or damaged)")
        append(_new_element(Element, (tag, vr, pos, value, stop, length)))
        pos = stop
    if until_item_end:
        raise FormatError("file ends inside a sequence item (truncated)")
    return elements, pos


def _items(
    buf: bytes, pos: int, end: int, enc: Encoding, dict_vr, *, fragments: bool = False, depth: int = 0
) -> tuple[list[tuple[int, int, bool]], int]:
    """The items of a sequence (or the fragments of encapsulated pixel data) from ``pos``:
    (start, end, undefined_length) of each item's value, and the position after the
    sequence delimiter (or ``end`` for a defined-length sequence without one). ``depth``
    is the level of the dataset holding the sequence; its items are one level deeper."""
    items: list[tuple[int, int, bool]] = []
    unpack_hhi = enc._hhi.unpack_from
    while pos + 8 <= end:
        group, elem, length = unpack_hhi(buf, pos)
        tag = (group << 16) | elem
        if tag == SEQUENCE_END:
            return items, pos + 8
        if tag != ITEM or (fragments and length == UNDEFINED):
            raise FormatError("damaged encapsulated pixel data" if fragments else "damaged sequence (expected an item)")
        if not fragments and depth >= MAX_DEPTH:
            raise FormatError(TOO_DEEP)
        if length == UNDEFINED:
            _, stop = parse_dataset(buf, pos + 8, end, enc, dict_vr, until_item_end=True, depth=depth + 1)
            items.append((pos + 8, stop - 8, True))
            pos = stop
        else:
            if pos + 8 + length > end:
                raise FormatError("a sequence item runs past the end of the file (truncated)")
            items.append((pos + 8, pos + 8 + length, False))
            pos += 8 + length
    return items, -1


def skip_sequence(buf: bytes, pos: int, end: int, enc: Encoding, dict_vr, depth: int = 0) -> int:
    """Position after the sequence delimiter of an undefined-length sequence at ``pos``
    (in a dataset at level ``depth``)."""
    stop = _items(buf, pos, end, enc, dict_vr, depth=depth)[1]
    if stop < 0:
        raise FormatError("file ends inside a sequence (truncated)")
    return stop


def skip_fragments(buf: bytes, pos: int, end: int, enc: Encoding) -> int:
    """Position after the delimiter of encapsulated pixel data starting at ``pos``."""
    stop = _items(buf, pos, end, enc, None, fragments=True)[1]
    if stop < 0:
        raise FormatError("file ends inside the pixel data (truncated)")
    return stop


def sequence_items(buf: bytes, elem: Element, enc: Encoding, dict_vr, depth: int = 0) -> list[tuple[int, int, bool]]:
    """(start, end, undefined_length) of each item's dataset in a sequence element of a
    dataset at level ``depth``."""
    return _items(buf, elem.value, elem.end, enc, dict_vr, depth=depth)[0]


# ---------------------------------------------------------------- encoding


def header(tag: int, vr: str, length: int, enc: Encoding) -> bytes:
    group, elem = tag >> 16, tag & 0xFFFF
    if enc.implicit:
        return enc._hhi.pack(group, elem, length)
    if vr in LONG_VRS:
        return enc._hh.pack(group, elem) + vr.encode() + b"\x00\x00" + enc._i.pack(length)
    if length > 0xFFFF:
        raise ValueError("value too long for its VR")
    return enc._hh.pack(group, elem) + vr.encode() + enc._h.pack(length)


def element(tag: int, vr: str, value: bytes, enc: Encoding) -> bytes:
    """One encoded element; ``value`` is padded to an even length as its VR requires."""
    if len(value) & 1:
        value += b"\x00" if vr in _NUL_PADDED else b" "
    return header(tag, vr, len(value), enc) + value


def text_element(tag: int, vr: str, values: list[str] | str, enc: Encoding) -> bytes:
    """An element of an ASCII string VR (UIDs, dates, codes, our dummies)."""
    text = values if isinstance(values, str) else "\\".join(values)
    return element(tag, vr, text.encode("ascii", "replace"), enc)


def item_start(enc: Encoding) -> bytes:
    return enc._hhi.pack(0xFFFE, 0xE000, UNDEFINED)


def item_end(enc: Encoding) -> bytes:
    return enc._hhi.pack(0xFFFE, 0xE00D, 0)


def sequence_end(enc: Encoding) -> bytes:
    return enc._hhi.pack(0xFFFE, 0xE0DD, 0)


def ascii_values(buf: bytes, elem: Element) -> list[str]:
    """The backslash-separated values of an ASCII-only element (UI, DA, DT, TM, CS...)."""
    text = buf[elem.value : elem.end].decode("latin-1").strip("\x00 ")
    return [v.strip("\x00 ") for v in text.split("\\")] if text else []


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, impl_uid: str, impl_version: str) -> bytes:
    """The file meta information group (always explicit VR little endian)."""
    body = b"".join(
        (
            element(0x00020001, "OB", b"\x00\x01", EXPLICIT_LE),
            text_element(0x00020002, "UI", sop_class, EXPLICIT_LE),
            text_element(0x00020003, "UI", sop_instance, EXPLICIT_LE),
            text_element(0x00020010, "UI", transfer_syntax, EXPLICIT_LE),
            text_element(0x00020012, "UI", impl_uid, EXPLICIT_LE),
            text_element(0x00020013, "SH", impl_version, EXPLICIT_LE),
        )
    )
    return element(0x00020000, "UL", struct.pack("<I", len(body)), EXPLICIT_LE) + body


def deflate(body: bytes) -> bytes:
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()


from medsendx.deid import _native  # noqa: E402  (it imports this module's names)
