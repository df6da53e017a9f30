"""Explicit VR Little Endian encoding of the results' big sequences, byte for byte what
pydicom writes, at a tenth of its cost.

Why: a study's SEG has a Per-Frame Functional Groups item per frame and its TID 1500
report thousands of content items; pydicom spends ~35 us per element writing them (VR
correction and character-set lookups repeated at every nesting level), which alone cost
more than the triage of the slices. The builders (highdicom) still make every item; only
the encoding of a sequence element is done here and handed to pydicom as a raw element,
which pydicom writes as it is (and parses back if the dataset is read in memory).

Scope (anything else raises :class:`Unsupported` and the caller leaves the element to
pydicom): DataElements, raw elements as read from explicit VR little endian, ASCII text, the numeric and byte VRs listed
below, sequences and items of defined length (what pydicom writes for new datasets) and
of undefined length (as read from a file: pydicom writes them so again, delimited).
``tests/test_triage_results.py`` checks the result against pydicom's own encoding.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

_LONG_LENGTH = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_TEXT = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_NUMBER = {"FD": "d", "FL": "f", "US": "H", "UL": "L", "SS": "h", "SL": "l", "SV": "q", "UV": "Q"}
_BYTES = frozenset({"OB", "OW", "UN"})
_ITEM = b"\xfe\xff\x00\xe0"
_UNDEFINED = 0xFFFFFFFF
_ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"  # Item Delimitation Item, length 0
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # Sequence Delimitation Item
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")


class Unsupported(Exception):
    """An element outside this encoder's scope (pydicom encodes it instead)."""


def _text(value: object) -> str:
    original = getattr(value, "original_string", None)  # DS / IS as given (pydicom does the same)
    return original if isinstance(original, str) else str(value)


def _value(vr: str, value: object) -> bytes:
    if vr in _TEXT:
        if isinstance(value, str):
            text = _text(value)
        elif isinstance(value, (int, float)):  # DSfloat / IS
            text = _text(value)
        else:
            text = "\\".join(_text(v) for v in value)  # type: ignore[attr-defined]
        try:
            data = text.encode("ascii")
        except UnicodeEncodeError:
            raise Unsupported("non-ASCII text") from None
        return data + (b"\0" if vr == "UI" else b" ") if len(data) % 2 else data
    fmt = _NUMBER.get(vr)
    if fmt is not None:
        values = [value] if isinstance(value, (int, float)) else list(value)  # type: ignore[call-overload]
        return struct.pack(f"<{len(values)}{fmt}", *values)
    if vr == "AT":
        tags = [value] if isinstance(value, int) else list(value)  # type: ignore[call-overload]
        return b"".join(_TAG.pack(int(t) >> 16, int(t) & 0xFFFF) for t in tags)
    if vr in _BYTES and isinstance(value, bytes):
        return value + b"\0" if len(value) % 2 else value
    raise Unsupported(vr)


def _header(tag: int, vr: str, length: int) -> bytes:
    head = _TAG.pack(tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _LONG_LENGTH:
        return head + b"\0\0" + _U32.pack(length)
    if length > 0xFFFF:
        raise Unsupported("value too long for its VR")
    return head + _U16.pack(length)


def _item(body: bytes, undefined: bool) -> bytes:
    """A sequence item as pydicom writes it: of defined length, or (as it was read)
    of undefined length closed by an Item Delimitation Item."""
    return _ITEM + b"\xff\xff\xff\xff" + body + _ITEM_END if undefined else _ITEM + _U32.pack(len(body)) + body


def _sequence(tag: int, items: bytes, undefined: bool) -> bytes:
    if undefined:
        return _header(tag, "SQ", _UNDEFINED) + items + _SEQUENCE_END
    return _header(tag, "SQ", len(items)) + items


def encode_element(elem: Any) -> bytes:
    """One element (tag, VR, length, value) as pydicom writes it in explicit VR LE."""
    tag, vr = int(elem.tag), elem.VR
    if isinstance(elem, RawDataElement):
        # as read from an explicit VR little endian buffer (or made by raw_sequence):
        # written as it is, as pydicom does
        if not vr or len(vr) != 2 or elem.is_implicit_VR or not elem.is_little_endian \
                or elem.length == 0xFFFFFFFF or len(elem.value or b"") % 2:
            raise Unsupported("raw element")
        data = bytes(elem.value or b"")
    else:
        value = elem.value
        if vr == "SQ":
            return _sequence(tag, encode_items(value or []), elem.is_undefined_length)
        if value is None or (isinstance(value, (str, bytes, list, MultiValue)) and len(value) == 0):
            data = b""  # what pydicom's ``is_empty`` means for these types
        else:
            data = _value(vr, value)
    return _header(tag, vr, len(data)) + data


def _elements(ds: Dataset) -> Iterator[Any]:
    for elem in ds.elements():
        tag = int(elem.tag)
        if tag & 0xFFFF == 0 and tag >> 16 > 6:
            continue  # retired group lengths: pydicom does not write them either
        yield elem


def encode_dataset(ds: Dataset) -> bytes:
    """The elements of ``ds`` (an item's body), in tag order, as pydicom writes them."""
    return b"".join(encode_element(elem) for elem in _elements(ds))


def encode_items(items: Iterable[Dataset]) -> bytes:
    """Sequence items of defined length (the value of an SQ element)."""
    return b"".join(_item(encode_dataset(item), getattr(item, "is_undefined_length_sequence_item", False))
                    for item in items)


class _Slot:
    """A variable element's place in a plan."""

    __slots__ = ("elem", "index", "tag", "vr")

    def __init__(self, elem: Any, index: int) -> None:
        if isinstance(elem, RawDataElement) or elem.VR == "SQ":
            raise Unsupported("variable raw or sequence element")
        self.elem, self.index, self.tag, self.vr = elem, index, int(elem.tag), elem.VR


class ItemsPlan:
    """Sequence items whose structure stays and only some elements' values change
    (``variable``: those elements, in order): everything else is encoded once, here;
    :meth:`encode` encodes the variable elements and the lengths around them."""

    def __init__(self, items: Sequence[Dataset], variable: Iterable[Any]) -> None:
        index = {id(e): i for i, e in enumerate(variable)}
        self._plan = [self._dataset(item, index) for item in items]
        self.variables = len(index)

    def _dataset(self, ds: Dataset, index: dict[int, int]) -> tuple[list[Any], bool]:
        """An item's parts (bytes, variable slots, sequences holding slots) and whether
        it is of undefined length."""
        parts: list[Any] = []
        for elem in _elements(ds):
            if id(elem) in index:
                part: Any = _Slot(elem, index[id(elem)])
            elif not isinstance(elem, RawDataElement) and elem.VR == "SQ":
                items = [self._dataset(item, index) for item in elem.value or []]
                part = (int(elem.tag), elem.is_undefined_length, items)
                if all(isinstance(p, bytes) for i in items for p in i[0]):
                    part = self._sequence(part, None)
            else:
                part = encode_element(elem)
            if isinstance(part, bytes) and parts and isinstance(parts[-1], bytes):
                parts[-1] += part
            else:
                parts.append(part)
        return parts, getattr(ds, "is_undefined_length_sequence_item", False)

    def _sequence(self, part: tuple[int, bool, list[Any]], values: Sequence[Any] | None) -> bytes:
        tag, undefined, items = part
        return _sequence(tag, b"".join(_item(self._render(p, values), u) for p, u in items), undefined)

    def _render(self, parts: list[Any], values: Sequence[Any] | None) -> bytes:
        out = []
        for part in parts:
            if isinstance(part, bytes):
                out.append(part)
            elif isinstance(part, tuple):
                out.append(self._sequence(part, values))
            elif values is None:
                out.append(encode_element(part.elem))
            else:
                value = values[part.index]
                empty = value is None or (isinstance(value, (str, bytes, list, tuple, MultiValue)) and len(value) == 0)
                data = b"" if empty else _value(part.vr, value)
                out.append(_header(part.tag, part.vr, len(data)) + data)
        return b"".join(out)

    def encode(self, values: Sequence[Any] | None = None) -> bytes:
        """The items with ``values`` (one per variable element, in its order; each as
        pydicom holds it: a DS or IS value, a str, a number or a list of them) or, without
        ``values``, with the variable elements' current values."""
        return b"".join(_item(self._render(parts, values), undefined) for parts, undefined in self._plan)


def raw_sequence(tag: int, items_bytes: bytes) -> RawDataElement:
    """An SQ element holding already-encoded items: written by pydicom as it is."""
    return RawDataElement(tag, "SQ", len(items_bytes), items_bytes, 0, False, True, True, False)


def pack_sequences(ds: Dataset) -> Dataset:
    """Encode every top-level sequence of ``ds`` that is in scope (in place), and mark
    ``ds`` as Explicit VR Little Endian so that pydicom writes the raw sequences as they
    are. (Unmarked, pydicom's writer "corrects ambiguous VRs" of a new dataset, which
    parses every raw element back first.) A dataset with an element whose VR is not
    known yet stays unmarked: pydicom then resolves it, as it always did."""
    for elem in list(ds.elements()):
        if isinstance(elem, RawDataElement) or elem.VR != "SQ" or elem.is_undefined_length:
            continue  # (a raw sequence is one of defined length)
        try:
            data = encode_items(elem.value)
        except Unsupported:
            continue
        ds[elem.tag] = raw_sequence(int(elem.tag), data)
    pixels = ds.get_item(0x7FE00010)
    if pixels is not None and not isinstance(pixels, RawDataElement) and pixels.VR == "OB or OW":
        # pydicom's rule (explicit VR): OB when encapsulated or 8 bits allocated or fewer
        pixels.VR = "OW" if not pixels.is_undefined_length and int(ds.get("BitsAllocated", 8)) > 8 else "OB"
    if all(elem.VR is not None and len(elem.VR) == 2 for elem in ds.elements()):
        charset = ds.get("SpecificCharacterSet")
        ds.set_original_encoding(False, True, convert_encodings(charset) if charset else default_encoding)
    return ds
